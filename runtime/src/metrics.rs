//! `/metrics`: the gateway's counters and the runtime's own, in Prometheus text format.
//!
//! The core counts what it decides (connects, closes by reason, sends accepted and
//! refused, heartbeat latency) so the simulator sees exactly what production reports; the
//! runtime adds what only it can see: TCP connections, admission refusals, outbound queue
//! depth, shed frames and store batches. Rendering happens on the actor that owns the
//! gateway, so one scrape is one consistent snapshot of the core.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use heartline_core::engine::Engine;
use heartline_core::gateway::metrics::LATENCY_BUCKETS_MS;
use heartline_core::gateway::Gateway;
use heartline_core::Instant;

/// Counters and gauges kept by the runtime; shared by every task, updated lock-free.
#[derive(Debug, Default)]
pub struct RuntimeMetrics {
    /// TCP connections accepted and served.
    pub tcp_accepted: AtomicU64,
    /// Connections whose socket lingered after an error answer (see [`crate::conn`]).
    pub tcp_lingered: AtomicU64,
    /// Sockets lingering now.
    pub tcp_lingering: AtomicU64,
    /// TCP connections open now.
    pub tcp_open: AtomicU64,
    /// Refused connections whose `503` is being written (each holds a descriptor).
    pub tcp_refusing: AtomicU64,
    /// TCP connections refused because the socket bound was reached (see
    /// [`crate::admission::socket_bound`]).
    pub refused_sockets: AtomicU64,
    /// That bound.
    pub tcp_bound: AtomicU64,
    /// New clients (connections, handshakes) refused by the per-IP rate limit.
    pub refused_rate_per_ip: AtomicU64,
    /// Engine.IO handshakes refused because their `Origin` is not allowed.
    pub refused_origin: AtomicU64,
    /// Engine.IO handshakes refused while draining.
    pub refused_draining: AtomicU64,
    /// Polling POSTs whose body is being read, before they reach the actor.
    pub posts_reading: AtomicU64,
    /// Bytes reserved by large messages still arriving (see [`crate::arriving`]).
    pub arriving_bytes: AtomicU64,
    /// The arriving budget's size, in bytes.
    pub arriving_max: AtomicU64,
    /// Times a large message waited for the arriving budget before it was read further.
    pub arriving_waits: AtomicU64,
    /// Connections ended because their message needed more of the arriving budget than
    /// was free while they held some of it.
    pub arriving_refused: AtomicU64,
    /// Large messages arriving too slowly, ended to make room for one waiting.
    pub arriving_evicted: AtomicU64,
    /// Engine.IO sessions held (closed ones lingering for their client's last fetch
    /// included, as the engine counts them against `server.max_connections`), as the actor
    /// last saw them, after each of its steps.
    pub sessions: AtomicU64,
    /// WebSocket handshakes refused before the upgrade because `sessions` had reached
    /// `server.max_connections` (the engine counts the ones it refuses itself).
    pub refused_sessions_early: AtomicU64,
    /// Connections closed by the runtime before a complete request (slowloris, idle).
    pub http_timeouts: AtomicU64,
    /// Quiet connections (no request being served) closed to give their socket to a
    /// newcomer when the socket bound was reached.
    pub evicted_quiet: AtomicU64,
    /// WebSockets open now.
    pub ws_open: AtomicU64,
    /// HTTP requests handed to the core and not answered yet (held long-polls among
    /// them); set by the actor, which holds their replies, when it renders a scrape.
    pub http_waiting: AtomicU64,
    /// Bytes queued for WebSocket writers, all connections together.
    pub outbound_bytes: AtomicU64,
    /// Droppable frames (heartbeat, presence) shed for slow consumers.
    pub outbound_shed: AtomicU64,
    /// WebSockets closed because their send queue overflowed (polling sessions: the engine counts).
    pub slow_consumer_closes: AtomicU64,
    /// Group commits done by the store.
    pub store_batches: AtomicU64,
    /// Messages appended (stored or found duplicate) by those commits.
    pub store_appends: AtomicU64,
    /// Store operations that failed.
    pub store_failures: AtomicU64,
    /// 1 once the core's actor ended while the server was not shutting down (it panicked):
    /// nobody can be served until the server is restarted, and `/healthz` and `/readyz`
    /// say so.
    pub core_stopped: AtomicU64,
    /// 1 once the store's log could not be flushed (or a checkpoint failed with an I/O
    /// error): nothing can be stored until the
    /// server is restarted, and `/healthz` and `/readyz` say so.
    pub store_failed: AtomicU64,
    /// Since when (core milliseconds, plus one) the store has kept a storage operation
    /// waiting without answering any: the later of when the oldest one still waiting was
    /// asked and the store's last answer; 0 with none waiting. Set by the actor after each
    /// step; read through [`store_waiting_ms`].
    pub store_waiting_since_ms: AtomicU64,
    /// How long each group commit took: the write transaction, and with it the flush of
    /// the log unless the log is flushed apart (see `store_sync`). Every acknowledged
    /// send waits for one.
    pub store_commit: DurationHistogram,
    /// How long each flush of the store's log took, when the flushes run apart from the
    /// commits (a file-backed store): an appended message is acknowledged after the first
    /// flush that began after its commit.
    pub store_sync: DurationHistogram,
    /// How long each storage operation waited in the store's queue before its own work
    /// began: mostly the commit that was in progress when it arrived. With
    /// `store_commit` and `store_sync`, it is the store's share of an acknowledged send's
    /// latency.
    pub store_wait: DurationHistogram,
}

/// Upper bounds, in microseconds, of the store's duration buckets: a flush takes from tens
/// of microseconds on a fast SSD to tens of milliseconds on a busy disk, and a queued
/// operation waits about as long as the flush in progress.
pub const STORE_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// A histogram of durations over [`STORE_BUCKETS_US`], written by the store's threads,
/// read by scrapes; lock-free.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Observations at or under each bound (not cumulative; rendering sums).
    buckets: [AtomicU64; STORE_BUCKETS_US.len()],
    /// Sum of all observations, in microseconds.
    sum_us: AtomicU64,
    /// Number of observations.
    count: AtomicU64,
}

impl DurationHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = STORE_BUCKETS_US.iter().position(|&b| us <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_add(us))
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        get(&self.count)
    }

    /// Appends the Prometheus histogram `name` (in seconds).
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let buckets = STORE_BUCKETS_US
            .iter()
            .zip(self.buckets.iter())
            .map(|(bound, n)| (*bound as f64 / 1e6, get(n)));
        // The count is read after the buckets (see `histogram`).
        let sum = get(&self.sum_us) as f64 / 1e6;
        histogram(out, name, help, buckets, sum, || get(&self.count));
    }
}

/// How long, at `now` (core milliseconds), the store has kept an operation waiting
/// without answering any, from [`RuntimeMetrics::store_waiting_since_ms`]; 0 with none
/// waiting.
pub fn store_waiting_ms(since: u64, now: u64) -> u64 {
    match since {
        0 => 0,
        since => now.saturating_sub(since - 1),
    }
}

/// How long a storage operation may wait for the store before `/healthz`, `/readyz` and
/// `heartline_store_stalled` call it stalled: far beyond a slow flush (milliseconds) or
/// the database's busy timeout (5 s, after which an operation is answered as failed), so
/// that only a store that has stopped answering is.
pub const STORE_STALL: Duration = Duration::from_secs(30);

/// Whether the store, waiting since `since`, has been past [`STORE_STALL`] at `now`.
pub fn store_stalled(since: u64, now: u64) -> bool {
    store_waiting_ms(since, now) > STORE_STALL.as_millis() as u64
}

/// Appends one Prometheus histogram. `buckets` are (upper bound in seconds, observations
/// in that bucket alone), summed here. `count` is asked for after the buckets are read,
/// and never reported below their total: an observation recorded in between (the
/// runtime's histograms are written while a scrape reads them) makes `+Inf` at worst one
/// higher than the last bucket, never lower.
fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    buckets: impl Iterator<Item = (f64, u64)>,
    sum_seconds: f64,
    count: impl FnOnce() -> u64,
) {
    family(out, name, "histogram", help);
    let mut cumulative = 0u64;
    for (le, n) in buckets {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let count = count().max(cumulative);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum_seconds}");
    let _ = writeln!(out, "{name}_count {count}");
}

impl RuntimeMetrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one from a gauge, never below zero.
    pub fn dec(gauge: &AtomicU64) {
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    }

    /// Subtracts `n` from a gauge, never below zero.
    pub fn sub(gauge: &AtomicU64, n: u64) {
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Appends one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, value: u64) {
    let _ = writeln!(out, "{name} {value}");
}

/// The whole `/metrics` page.
pub fn render(gateway: &Gateway, rt: &RuntimeMetrics, draining: bool, now: Instant) -> String {
    let mut out = String::with_capacity(4096);
    let m = gateway.metrics();

    family(
        &mut out,
        "heartline_connections",
        "gauge",
        "Authenticated Socket.IO connections.",
    );
    sample(
        &mut out,
        "heartline_connections",
        gateway.connection_count() as u64,
    );
    family(
        &mut out,
        "heartline_engine_sessions",
        "gauge",
        "Live Engine.IO sessions.",
    );
    sample(
        &mut out,
        "heartline_engine_sessions",
        gateway.engine().session_count() as u64,
    );
    family(
        &mut out,
        "heartline_users_online",
        "gauge",
        "Users others see as online.",
    );
    sample(
        &mut out,
        "heartline_users_online",
        gateway.users_online() as u64,
    );
    family(
        &mut out,
        "heartline_users_connected",
        "gauge",
        "Users with at least one connection.",
    );
    sample(
        &mut out,
        "heartline_users_connected",
        gateway.users_connected() as u64,
    );
    family(
        &mut out,
        "heartline_rate_limit_entries",
        "gauge",
        "User keys with sends in their rate window.",
    );
    sample(
        &mut out,
        "heartline_rate_limit_entries",
        gateway.rate_limit_entries() as u64,
    );
    family(
        &mut out,
        "heartline_store_failed",
        "gauge",
        "1 once the store's log could not be flushed or checkpointed; nothing is stored until a restart.",
    );
    sample(&mut out, "heartline_store_failed", get(&rt.store_failed));
    let (since, now) = (get(&rt.store_waiting_since_ms), now.as_millis());
    family(
        &mut out,
        "heartline_store_waiting_seconds",
        "gauge",
        "How long the store has kept a storage operation waiting without answering any (0: none waiting).",
    );
    let _ = writeln!(
        out,
        "heartline_store_waiting_seconds {}",
        store_waiting_ms(since, now) as f64 / 1e3
    );
    family(
        &mut out,
        "heartline_store_stalled",
        "gauge",
        "1 while that wait is past 30 s, as /healthz and /readyz then report (\"store stalled\").",
    );
    sample(
        &mut out,
        "heartline_store_stalled",
        u64::from(store_stalled(since, now)),
    );
    family(
        &mut out,
        "heartline_store_pending_ops",
        "gauge",
        "Storage operations in flight.",
    );
    sample(
        &mut out,
        "heartline_store_pending_ops",
        gateway.pending_ops() as u64,
    );

    family(
        &mut out,
        "heartline_connects_total",
        "counter",
        "Successful namespace connects.",
    );
    sample(&mut out, "heartline_connects_total", m.connects);
    family(
        &mut out,
        "heartline_connects_refused_total",
        "counter",
        "Refused connects by reason.",
    );
    for (reason, n) in &m.refused {
        let _ = writeln!(
            out,
            "heartline_connects_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
    family(
        &mut out,
        "heartline_replacements_total",
        "counter",
        "Connections displaced by a newer one of the same user.",
    );
    sample(&mut out, "heartline_replacements_total", m.replacements);
    family(
        &mut out,
        "heartline_closes_total",
        "counter",
        "Sessions ended, by reason.",
    );
    for (reason, n) in &m.closes {
        let _ = writeln!(out, "heartline_closes_total{{reason=\"{reason}\"}} {n}");
    }
    family(
        &mut out,
        "heartline_messages_accepted_total",
        "counter",
        "Sends acknowledged, duplicates included.",
    );
    sample(&mut out, "heartline_messages_accepted_total", m.accepted);
    family(
        &mut out,
        "heartline_messages_duplicate_total",
        "counter",
        "Sends acknowledged as duplicates of an earlier one.",
    );
    sample(&mut out, "heartline_messages_duplicate_total", m.duplicates);
    family(
        &mut out,
        "heartline_messages_refused_total",
        "counter",
        "Sends refused, by code.",
    );
    for (code, n) in &m.send_refused {
        let _ = writeln!(
            out,
            "heartline_messages_refused_total{{code=\"{code}\"}} {n}"
        );
    }
    family(
        &mut out,
        "heartline_deliveries_total",
        "counter",
        "message:new and message:notification deliveries queued.",
    );
    sample(&mut out, "heartline_deliveries_total", m.deliveries);
    family(
        &mut out,
        "heartline_events_refused_total",
        "counter",
        "Events refused (rate_limited) for coming over their connection's event budget.",
    );
    sample(&mut out, "heartline_events_refused_total", m.events_refused);
    family(
        &mut out,
        "heartline_floods_total",
        "counter",
        "Connections ended for exhausting their event budget.",
    );
    sample(&mut out, "heartline_floods_total", m.floods);
    family(
        &mut out,
        "heartline_wall_clock_steps_total",
        "counter",
        "Times the wall clock was found to have stepped, and wall-clock times followed it.",
    );
    sample(
        &mut out,
        "heartline_wall_clock_steps_total",
        m.wall_clock_steps,
    );

    let h = &m.heartbeat_latency;
    let buckets = LATENCY_BUCKETS_MS
        .iter()
        .zip(h.buckets.iter())
        .map(|(bound, n)| (*bound as f64 / 1000.0, *n));
    histogram(
        &mut out,
        "heartline_heartbeat_latency_seconds",
        "Round trip of the application heartbeat.",
        buckets,
        h.sum_ms as f64 / 1000.0,
        || h.count,
    );

    render_runtime(&mut out, gateway.engine(), rt, draining);
    out
}

/// The `/metrics` page of an application that is only the engine (the echo server): its
/// live sessions and the runtime's own counters.
pub fn render_engine(engine: &Engine, rt: &RuntimeMetrics, draining: bool) -> String {
    let sessions = engine.session_count();
    let mut out = String::with_capacity(2048);
    family(
        &mut out,
        "heartline_engine_sessions",
        "gauge",
        "Live Engine.IO sessions.",
    );
    sample(&mut out, "heartline_engine_sessions", sessions as u64);
    render_runtime(&mut out, engine, rt, draining);
    out
}

/// The runtime's own families, the same whatever the application.
fn render_runtime(out: &mut String, engine: &Engine, rt: &RuntimeMetrics, draining: bool) {
    family(
        out,
        "heartline_tcp_connections",
        "gauge",
        "Open TCP connections.",
    );
    sample(out, "heartline_tcp_connections", get(&rt.tcp_open));
    family(
        out,
        "heartline_tcp_connections_max",
        "gauge",
        "Open TCP connections past which new ones are refused (twice server.max_connections and some, within the open-file limit).",
    );
    sample(out, "heartline_tcp_connections_max", get(&rt.tcp_bound));
    family(
        out,
        "heartline_tcp_refusing",
        "gauge",
        "Connections past the socket bound whose 503 is being written (not counted in heartline_tcp_connections).",
    );
    sample(out, "heartline_tcp_refusing", get(&rt.tcp_refusing));
    family(
        out,
        "heartline_tcp_accepted_total",
        "counter",
        "TCP connections served.",
    );
    sample(out, "heartline_tcp_accepted_total", get(&rt.tcp_accepted));
    family(
        out,
        "heartline_tcp_lingered_total",
        "counter",
        "Connections closed after an error answer to a request with a body, or a WebSocket closed on a frame it refused, whose peers had not closed, which read and dropped what their peers still sent before closing.",
    );
    sample(out, "heartline_tcp_lingered_total", get(&rt.tcp_lingered));
    family(
        out,
        "heartline_tcp_lingering",
        "gauge",
        "Sockets lingering now after an error answer (at most 1,024; counted in heartline_tcp_connections).",
    );
    sample(out, "heartline_tcp_lingering", get(&rt.tcp_lingering));
    family(
        out,
        "heartline_admission_refused_total",
        "counter",
        "Connections or handshakes refused at admission, by reason.",
    );
    for (reason, v) in [
        ("max_sockets", &rt.refused_sockets),
        ("rate_per_ip", &rt.refused_rate_per_ip),
        ("origin", &rt.refused_origin),
        ("draining", &rt.refused_draining),
        ("http_timeout", &rt.http_timeouts),
        ("quiet_at_bound", &rt.evicted_quiet),
    ] {
        let _ = writeln!(
            out,
            "heartline_admission_refused_total{{reason=\"{reason}\"}} {}",
            get(v)
        );
    }
    // Refused by the engine itself, which counts Engine.IO sessions.
    let _ = writeln!(
        out,
        "heartline_admission_refused_total{{reason=\"max_sessions\"}} {}",
        engine.sessions_refused() + get(&rt.refused_sessions_early)
    );
    family(out, "heartline_websockets", "gauge", "Open WebSockets.");
    sample(out, "heartline_websockets", get(&rt.ws_open));
    family(
        out,
        "heartline_http_requests_waiting",
        "gauge",
        "HTTP requests waiting for the core's answer (held long-polls among them).",
    );
    sample(
        out,
        "heartline_http_requests_waiting",
        get(&rt.http_waiting),
    );
    family(
        out,
        "heartline_polling_posts_reading",
        "gauge",
        "Polling POSTs whose body is being read (a second one of the same session ends it).",
    );
    sample(
        out,
        "heartline_polling_posts_reading",
        get(&rt.posts_reading),
    );
    family(
        out,
        "heartline_arriving_bytes",
        "gauge",
        "Bytes reserved by large messages (16 KiB or more) still arriving, WebSocket and polling.",
    );
    sample(out, "heartline_arriving_bytes", get(&rt.arriving_bytes));
    family(
        out,
        "heartline_arriving_bytes_max",
        "gauge",
        "Bytes that large messages still arriving may reserve, all connections together.",
    );
    sample(out, "heartline_arriving_bytes_max", get(&rt.arriving_max));
    family(
        out,
        "heartline_arriving_waits_total",
        "counter",
        "Large messages that waited for the arriving budget before being read further.",
    );
    sample(
        out,
        "heartline_arriving_waits_total",
        get(&rt.arriving_waits),
    );
    family(
        out,
        "heartline_arriving_refused_total",
        "counter",
        "Connections or POSTs ended because a large message needed more of the arriving budget than was free.",
    );
    sample(
        out,
        "heartline_arriving_refused_total",
        get(&rt.arriving_refused),
    );
    family(
        out,
        "heartline_arriving_evicted_total",
        "counter",
        "Large messages arriving too slowly, their connection or POST ended to make room for one waiting.",
    );
    sample(
        out,
        "heartline_arriving_evicted_total",
        get(&rt.arriving_evicted),
    );
    family(
        out,
        "heartline_outbound_queue_bytes",
        "gauge",
        "Bytes waiting in WebSocket send queues, all connections together.",
    );
    sample(
        out,
        "heartline_outbound_queue_bytes",
        get(&rt.outbound_bytes),
    );
    family(
        out,
        "heartline_outbound_shed_total",
        "counter",
        "Droppable frames (heartbeat, presence) shed for slow consumers, WebSocket and polling.",
    );
    sample(
        out,
        "heartline_outbound_shed_total",
        get(&rt.outbound_shed) + engine.frames_shed(),
    );
    family(
        out,
        "heartline_slow_consumer_closes_total",
        "counter",
        "Connections closed because their send queue overflowed (WebSocket or polling).",
    );
    sample(
        out,
        "heartline_slow_consumer_closes_total",
        get(&rt.slow_consumer_closes) + engine.polling_overflows(),
    );
    family(
        out,
        "heartline_store_batches_total",
        "counter",
        "Store group commits.",
    );
    sample(out, "heartline_store_batches_total", get(&rt.store_batches));
    family(
        out,
        "heartline_store_appends_total",
        "counter",
        "Messages appended by group commits.",
    );
    sample(out, "heartline_store_appends_total", get(&rt.store_appends));
    family(
        out,
        "heartline_store_failures_total",
        "counter",
        "Failed store operations.",
    );
    sample(
        out,
        "heartline_store_failures_total",
        get(&rt.store_failures),
    );
    rt.store_commit.render(
        out,
        "heartline_store_commit_seconds",
        "Duration of each store group commit (without the flush of the log when that runs apart).",
    );
    rt.store_sync.render(
        out,
        "heartline_store_sync_seconds",
        "Duration of each flush of the store's log to disk.",
    );
    rt.store_wait.render(
        out,
        "heartline_store_wait_seconds",
        "Time each storage operation waited in the store's queue before its work began.",
    );
    family(out, "heartline_draining", "gauge", "1 while shutting down.");
    sample(out, "heartline_draining", u64::from(draining));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_histogram_is_cumulative_in_seconds() {
        let h = DurationHistogram::default();
        for us in [50, 100, 300, 3_000, 2_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        let value = |key: &str| -> String {
            out.lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
                .unwrap_or_else(|| panic!("{key} missing in\n{out}"))
        };
        assert_eq!(value("x_bucket{le=\"0.0001\"}"), "2");
        assert_eq!(value("x_bucket{le=\"0.00025\"}"), "2");
        assert_eq!(value("x_bucket{le=\"0.0005\"}"), "3");
        assert_eq!(value("x_bucket{le=\"0.005\"}"), "4");
        assert_eq!(value("x_bucket{le=\"1\"}"), "4");
        assert_eq!(value("x_bucket{le=\"+Inf\"}"), "5");
        assert_eq!(value("x_count"), "5");
        assert_eq!(value("x_sum"), "2.00345");
        assert!(out.contains("# TYPE x histogram"));
    }

    #[test]
    fn a_store_is_stalled_once_an_operation_waited_over_30_s() {
        assert_eq!(store_waiting_ms(0, 1_000_000), 0, "nothing waiting");
        assert!(!store_stalled(0, 1_000_000));
        let asked = 5_000;
        assert_eq!(store_waiting_ms(asked + 1, asked + 30_000), 30_000);
        assert!(!store_stalled(asked + 1, asked + 30_000));
        assert!(store_stalled(asked + 1, asked + 30_001));
        assert_eq!(
            store_waiting_ms(asked + 1, 0),
            0,
            "a clock behind is no wait"
        );
        assert!(!store_stalled(asked + 1, 0));
    }
}
