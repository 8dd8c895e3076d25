//! How the operator's TOML configuration becomes the core's settings.
//!
//! The configuration file speaks in the contract's keys; the core has its own settings
//! structs. This mapping is the only place that knows both, so a key cannot be read in one
//! place and forgotten in another. Two values come from the machine rather than the file:
//! the Unix time of the clock's epoch and the seed of the core's id generator, which must be
//! unpredictable in production because Engine.IO session ids are bearer capabilities.

use heartline_core::engine::{EngineConfig, Transports};
use heartline_core::gateway::GatewayConfig;
use heartline_core::Seed;

use crate::config::Config;

/// The engine's settings for a configuration: Heartline's one namespace, Socket.IO on.
pub fn engine_config(config: &Config, seed: Seed) -> EngineConfig {
    EngineConfig {
        ping_interval_ms: config.engine.ping_interval_ms,
        ping_timeout_ms: config.engine.ping_timeout_ms,
        upgrade_timeout_ms: config.engine.upgrade_timeout_ms,
        handshake_timeout_ms: config.server.handshake_timeout_ms,
        max_payload_bytes: config.engine.max_payload_bytes,
        // A polling client that does not fetch is held to the same bound as a WebSocket.
        max_buffered_bytes: config.server.max_outbound_bytes,
        // Sessions and TCP connections share one cap: a WebSocket session holds one of
        // each, and polling sessions on kept-alive connections cannot pass it either.
        max_sessions: config.server.max_connections,
        transports: Transports {
            websocket: config.engine.offers("websocket"),
            polling: config.engine.offers("polling"),
        },
        namespaces: vec![config.server.namespace.clone()],
        seed,
        ..EngineConfig::default()
    }
}

/// The core's settings for a configuration. `jwt_secret` is taken as is.
pub fn gateway_config(config: &Config, wall_epoch_ms: u64, seed: Seed) -> GatewayConfig {
    let engine = engine_config(config, seed);
    GatewayConfig {
        engine,
        namespace: config.server.namespace.clone(),
        heartbeat_interval_ms: config.heartbeat.interval_ms,
        per_user: usize::try_from(config.connections.per_user).unwrap_or(usize::MAX),
        idle_timeout_ms: config.connections.idle_timeout_ms,
        offline_grace_ms: config.presence.offline_grace_ms,
        rate_messages: usize::try_from(config.rate_limit.messages).unwrap_or(usize::MAX),
        rate_window_ms: config.rate_limit.window_ms,
        jwt_secret: config.auth.jwt_secret.as_bytes().to_vec(),
        auth_grace_ms: config.auth.grace_ms,
        wall_epoch_ms,
        ..GatewayConfig::default()
    }
}

/// A seed for the core's id generator: a whole 32-byte key from the operating system, so
/// that the ids a client has seen do not tell it the next ones.
pub fn random_seed() -> Result<Seed, getrandom::Error> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)?;
    Ok(Seed::Key(key))
}

/// `n` random bytes from the operating system, as lowercase hex.
pub fn random_hex(n: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_map_to_valid_core_settings() {
        let mut config = Config::default();
        config.auth.jwt_secret = "s".into();
        let g = gateway_config(&config, 1, Seed::from(2));
        g.validate().expect("valid");
        assert_eq!(g.engine.ping_timeout_ms, 60_000);
        assert_eq!(g.engine.handshake_timeout_ms, 10_000);
        assert_eq!(g.namespace, "/chat");
        assert!(g.engine.transports.websocket && g.engine.transports.polling);
        assert_eq!(g.wall_epoch_ms, 1);
        assert_eq!(g.engine.seed, Seed::from(2));
    }

    #[test]
    fn a_random_seed_is_a_whole_key_and_not_shown() {
        let seed = random_seed().expect("random");
        assert!(matches!(seed, Seed::Key(_)));
        assert_ne!(seed, random_seed().expect("random"));
        assert_eq!(format!("{seed:?}"), "Key(..)");
    }

    #[test]
    fn random_hex_has_the_right_length() {
        let h = random_hex(16).expect("random");
        assert_eq!(h.len(), 32);
        assert_ne!(h, random_hex(16).expect("random"));
    }
}
