//! The gateway's settings: the contract's `[heartbeat]`, `[connections]`, `[presence]`,
//! `[rate_limit]` and `[auth]` sections, plus the engine's.

use crate::engine::{ConfigError, EngineConfig};

/// A connection's event budget: `burst` events at once, refilled at `per_second`, and as
/// deep a balance again for refusals (see `gateway::budget`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Events a connection may have served back to back.
    pub burst: u32,
    /// Events per second it may sustain.
    pub per_second: u32,
    /// What one refusal costs, in thousandths of an event (at most 1,000). Below 1,000 so
    /// that a client that keeps sending into a full window (a retry loop, a rejoin burst,
    /// a test that hammers) has every refusal answered for a good while; a flood is still
    /// cut off.
    pub refusal_milli: u32,
}

/// Settings of the chat gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The Engine.IO / Socket.IO layers. Its `namespaces` is set to `[namespace]`.
    pub engine: EngineConfig,
    /// The application namespace (`server.namespace`).
    pub namespace: String,
    /// `heartbeat.interval_ms`: the `heartbeat` event's period.
    pub heartbeat_interval_ms: u64,
    /// `connections.per_user`: live connections per user key.
    pub per_user: usize,
    /// `connections.idle_timeout_ms`: close after this long without an application event
    /// (a send, join, leave or history read); 0 = never.
    pub idle_timeout_ms: u64,
    /// `presence.offline_grace_ms`: how long a user with no connection still counts as online.
    pub offline_grace_ms: u64,
    /// `rate_limit.messages`: accepted sends per user key in any window.
    pub rate_messages: usize,
    /// `rate_limit.window_ms`: the sliding window.
    pub rate_window_ms: u64,
    /// `auth.jwt_secret`, the HS256 key.
    pub jwt_secret: Vec<u8>,
    /// `auth.grace_ms`: time to refresh after `auth:expired`.
    pub auth_grace_ms: u64,
    /// Unix time in milliseconds at `Instant::ZERO`, so the core can state wall-clock times
    /// (`serverTime`, `createdAt`, token expiry) without reading a clock.
    pub wall_epoch_ms: u64,
    /// Longest message content, in characters.
    pub max_content_chars: usize,
    /// Longest `tempId`, in bytes.
    pub max_temp_id_bytes: usize,
    /// Budget for every event that is not an accepted send; an event over it is refused,
    /// and exhausting its refusals too is a flood.
    pub event_budget: BudgetConfig,
    /// Most messages one history page returns.
    pub history_limit_max: usize,
    /// Most messages a join's catch-up returns.
    pub missed_limit: usize,
    /// Accepted `tempId`s remembered per user in memory; older retries are answered from the store.
    pub temp_ids_remembered: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            engine: EngineConfig::default(),
            namespace: "/chat".into(),
            heartbeat_interval_ms: 30_000,
            per_user: 1,
            idle_timeout_ms: 0,
            offline_grace_ms: 3_000,
            rate_messages: 10,
            rate_window_ms: 10_000,
            jwt_secret: vec![],
            auth_grace_ms: 30_000,
            wall_epoch_ms: 0,
            max_content_chars: 10_000,
            max_temp_id_bytes: 128,
            // 60 events served at once and 20 a second; refusals besides: 1,200 at once
            // and 400 a second.
            event_budget: BudgetConfig {
                burst: 60,
                per_second: 20,
                refusal_milli: 50,
            },
            history_limit_max: 100,
            missed_limit: 1_000,
            temp_ids_remembered: 64,
        }
    }
}

impl GatewayConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut engine = self.engine.clone();
        engine.namespaces = vec![self.namespace.clone()];
        engine.validate()?;
        for (name, value) in [
            ("heartbeat.interval_ms", self.heartbeat_interval_ms),
            ("connections.per_user", self.per_user as u64),
            ("rate_limit.messages", self.rate_messages as u64),
            ("rate_limit.window_ms", self.rate_window_ms),
            ("event_budget.burst", u64::from(self.event_budget.burst)),
            (
                "event_budget.per_second",
                u64::from(self.event_budget.per_second),
            ),
            (
                "event_budget.refusal_milli",
                u64::from(self.event_budget.refusal_milli),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(())
    }
}
