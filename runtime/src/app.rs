//! What the actor drives: an application on top of the core's engine.
//!
//! The runtime's plumbing (admission, HTTP, WebSocket, outboxes, the paced shutdown) does
//! not depend on what the sessions are for. Heartline's chat gateway is one application;
//! the protocol suites' echo server ([`crate::echo`]) is another, and serving it through
//! the very same plumbing is what lets the official Engine.IO and Socket.IO suites test the
//! transport code the gateway runs on. [`App`] is the little the actor needs from either.
//!
//! The vocabulary is the gateway's [`Input`] and [`Output`]: network inputs in, frames,
//! storage effects and notices out. An application without storage only ever sees
//! [`Input::Network`] and never emits [`Output::Effect`].

use heartline_core::engine::UsageError;
use heartline_core::gateway::{Gateway, Input, Output};
use heartline_core::Instant;

use crate::metrics::{self, RuntimeMetrics};

/// A sans-IO application the actor owns and drives; see the module docs.
pub trait App: Send + 'static {
    /// Feeds one input; an error means the runtime misused the core, never a bad peer.
    fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), UsageError>;
    /// Fires every deadline due at `now`.
    fn handle_timeout(&mut self, now: Instant);
    /// The earliest deadline, if any.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next thing to do; drained until `None` after every call above.
    fn poll_output(&mut self) -> Option<Output>;
    /// Closes up to `max` live sessions so that their clients come back; returns how many
    /// remain.
    fn shutdown_some(&mut self, now: Instant, max: usize) -> usize;
    /// Live Engine.IO sessions.
    fn session_count(&self) -> usize;
    /// Engine.IO sessions held, closed ones still lingering for their client's last fetch
    /// included: what the engine compares with `server.max_connections` when it admits one.
    fn sessions_held(&self) -> usize {
        self.session_count()
    }
    /// Sessions held that a client has still to hear from (see
    /// [`heartline_core::engine::Engine::sessions_owing`]): what a drain waits for.
    fn sessions_owing(&self) -> usize {
        self.sessions_held()
    }
    /// Whether the core holds a session with this `sid` (asked before a WebSocket upgrade
    /// naming one is answered 101). By default yes: the core then decides after the 101.
    fn knows_sid(&self, _sid: &str) -> bool {
        true
    }
    /// The `/metrics` page at `now`, the runtime's counters included.
    fn render_metrics(&self, rt: &RuntimeMetrics, draining: bool, now: Instant) -> String;
}

impl App for Gateway {
    fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), UsageError> {
        Gateway::handle_input(self, now, input)
    }

    fn handle_timeout(&mut self, now: Instant) {
        Gateway::handle_timeout(self, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Gateway::poll_timeout(self)
    }

    fn poll_output(&mut self) -> Option<Output> {
        Gateway::poll_output(self)
    }

    fn shutdown_some(&mut self, now: Instant, max: usize) -> usize {
        Gateway::shutdown_some(self, now, max)
    }

    fn session_count(&self) -> usize {
        self.engine().session_count()
    }

    fn sessions_held(&self) -> usize {
        self.engine().sessions_held()
    }

    fn sessions_owing(&self) -> usize {
        self.engine().sessions_owing()
    }

    fn knows_sid(&self, sid: &str) -> bool {
        self.engine().knows_sid(sid)
    }

    fn render_metrics(&self, rt: &RuntimeMetrics, draining: bool, now: Instant) -> String {
        metrics::render(self, rt, draining, now)
    }
}
