//! Why a server could not start.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::ConfigError;
use crate::store::StoreError;

/// A server failed to start; nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    /// The core refused its settings.
    #[error("configuration error: {0}")]
    Core(#[from] heartline_core::engine::ConfigError),
    /// The store could not be opened or loaded.
    #[error("cannot open the store at {}: {source}", path.display())]
    Store {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The operating system refused randomness or a thread.
    #[error("cannot start: {0}")]
    System(String),
}
