//! Heartline runtime.

pub mod config;
pub mod store;
