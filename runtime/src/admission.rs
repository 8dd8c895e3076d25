//! Who gets in: the bound on sockets, and the per-IP rate of new clients.
//!
//! `server.max_connections` counts clients: Engine.IO sessions, capped by the engine
//! (`max_sessions`), whose handshakes over it are refused. Sockets are bounded too, at
//! TCP accept, before a byte is parsed, because that is where an overload is cheapest to
//! refuse: a refused connection is answered with a short 503 and closed, which
//! `socket.io-client` treats as a failed attempt and retries with backoff. That bound
//! ([`socket_bound`]) is above `max_connections`, as clients need more sockets than
//! sessions: a polling client's held GET and its POSTs come on connections of their own,
//! and health probes and API calls are connections too. Were the bound `max_connections`
//! itself, a server full of clients would answer its own health probe 503 and refuse the
//! next poll of a polling client it had admitted, which then loses its session. At the
//! bound, a newcomer first takes the socket of the longest-quiet connection, one with no
//! request being served ([`QuietConnections`]), so that sockets held by connections that
//! never send a request do not lock out the rest.
//!
//! The per-IP rate counts new clients: a connection pays with its first request, unless
//! that request belongs to a session already admitted (it names a `sid`; one the core
//! turns away pays afterwards and closes the connection), and a further handshake on a
//! kept-alive connection pays for itself ([`crate::engineio::pays_ip_rate`]);
//! over the rate the request gets 429. It is asked at the first request rather than at
//! accept because only then can a polling client's extra connections (the held GET, the
//! POSTs, the upgrade) be told from a new client. Sessions are bounded by the engine's
//! `max_sessions` (the same cap) whatever the rate.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use heartline_core::Instant;

use crate::metrics::RuntimeMetrics;

/// Sockets a server of `max_connections` clients keeps room for beyond one per client:
/// for its polling clients' second connections (with [`socket_bound`]'s doubling), its
/// health probes and API calls, and connections that have not yet sent a request.
pub const SOCKET_HEADROOM: u64 = 1024;

/// Descriptors kept for the server's own files (its listener, the store's files, the
/// runtime's: 22 on a server at rest), under the process's open-file limit.
pub const OWN_DESCRIPTORS: u64 = 48;

/// Sockets kept, under the open-file limit, for connections past the bound being
/// answered `503` ([`refusal_budget`]) when the limit is what bounds the sockets.
pub const REFUSAL_SOCKETS: u64 = 16;

/// Descriptors the socket bound leaves under the process's open-file limit: the server's
/// own, the slack of evictions, and refusals being written.
pub const RESERVED_DESCRIPTORS: u64 = OWN_DESCRIPTORS + EVICTION_SLACK + REFUSAL_SOCKETS;

/// The most refusals written at once ([`RESERVED_DESCRIPTORS`]: only sockets the bound
/// leaves free under the open-file limit, as each holds a descriptor until its `503` is
/// written and the client has closed or a second has passed); past it, a connection
/// over the bound is closed without a word.
pub const MAX_REFUSALS: u64 = 1024;

/// The most open TCP connections for `max_connections` clients: two per client plus
/// [`SOCKET_HEADROOM`], but never more than the process may open (its soft limit on
/// open files, less [`RESERVED_DESCRIPTORS`]), so that an accept past it is refused with
/// a 503 rather than failing for want of a descriptor.
pub fn socket_bound(max_connections: u64, open_file_limit: Option<u64>) -> u64 {
    let wanted = max_connections
        .saturating_mul(2)
        .saturating_add(SOCKET_HEADROOM);
    match open_file_limit {
        Some(limit) => wanted.min(limit.saturating_sub(RESERVED_DESCRIPTORS).max(1)),
        None => wanted,
    }
}

/// How many connections past `bound` may be answered `503` at once: [`MAX_REFUSALS`], or
/// fewer if the open-file limit leaves fewer descriptors beside the bound, the server's
/// own and the eviction slack.
pub fn refusal_budget(bound: u64, open_file_limit: Option<u64>) -> u64 {
    match open_file_limit {
        Some(limit) => limit
            .saturating_sub(bound)
            .saturating_sub(OWN_DESCRIPTORS + EVICTION_SLACK)
            .min(MAX_REFUSALS),
        None => MAX_REFUSALS,
    }
}

/// Raises the process's soft limit on open files to its hard limit, as far as the
/// operating system allows: every client is a socket, and a default soft limit (1,024 on
/// many systems) would hold a few hundred clients where the administrator allowed tens of
/// thousands. Returns the limit before and after when it was raised; `Err` when the
/// system refused (the limit stays as it was).
#[cfg(unix)]
pub fn raise_open_file_limit() -> std::io::Result<Option<(u64, u64)>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // An unlimited hard limit (not on Linux, whose is at most `fs.nr_open`) is not a
    // value the soft one may take everywhere (macOS refuses it): left as it is.
    if limit.rlim_cur >= limit.rlim_max || limit.rlim_max == libc::RLIM_INFINITY {
        return Ok(None);
    }
    let before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads only the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((before, limit.rlim_cur)))
}

/// Elsewhere there is no such limit to raise.
#[cfg(not(unix))]
pub fn raise_open_file_limit() -> std::io::Result<Option<(u64, u64)>> {
    Ok(None)
}

/// The process's soft limit on open files, if it has one.
#[cfg(unix)]
pub fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given, which lives on this stack.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// The process's soft limit on open files, if it has one.
#[cfg(not(unix))]
pub fn open_file_limit() -> Option<u64> {
    None
}

/// Caps the number of open TCP connections (at [`socket_bound`]); the count is the
/// `heartline_tcp_connections` gauge, upgraded WebSockets included.
#[derive(Debug)]
pub struct ConnectionCap {
    max: u64,
    metrics: Arc<RuntimeMetrics>,
}

/// One admitted connection; dropping it frees its slot.
#[derive(Debug)]
pub struct Permit {
    metrics: Arc<RuntimeMetrics>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.metrics.tcp_open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionCap {
    /// A cap of `max` open connections.
    pub fn new(max: u64, metrics: Arc<RuntimeMetrics>) -> Self {
        ConnectionCap { max, metrics }
    }

    /// A slot, unless `max` are taken.
    pub fn try_acquire(&self) -> Option<Permit> {
        self.try_acquire_below(self.max)
    }

    /// A slot for a newcomer admitted in place of a quiet connection just told to close
    /// ([`QuietConnections::evict_oldest`]): up to `max` + [`EVICTION_SLACK`] until the
    /// evicted sockets close.
    pub fn try_acquire_beyond(&self) -> Option<Permit> {
        self.try_acquire_below(self.max.saturating_add(EVICTION_SLACK))
    }

    fn try_acquire_below(&self, max: u64) -> Option<Permit> {
        self.metrics
            .tcp_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                metrics: self.metrics.clone(),
            })
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.metrics.tcp_open.load(Ordering::Acquire)
    }
}

/// How far over its bound [`ConnectionCap::try_acquire_beyond`] may take the count of
/// open connections for newcomers admitted in place of evicted quiet ones, whose sockets
/// close a moment later, when their tasks next run. Within [`RESERVED_DESCRIPTORS`].
pub const EVICTION_SLACK: u64 = 32;

/// Connections that hold a socket while none of their requests is being served: those
/// that have not completed a first request (idle, or dribbling one in) and kept-alive ones
/// between requests. Each would be closed at `server.handshake_timeout_ms` anyway; when
/// the sockets run out, the oldest of them is closed at once in favour of a newcomer
/// ([`QuietConnections::evict_oldest`]). Otherwise connections that never send a request
/// (idle or hostile) could fill the socket bound and have every new connection, a health
/// probe's or a `/metrics` scrape's included, refused until their deadline, for as long
/// as someone keeps opening them: an orchestrator would then restart a server whose
/// clients were all being served. Connections serving a request (a held polling GET)
/// and WebSockets are never taken: those are sessions, bounded by `max_connections`.
///
/// Never-served connections go first, oldest first, whatever their age: each newcomer
/// then keeps its socket until as many newer ones have come as the bound holds, far
/// longer than a client takes to send its first request even under a flood, whereas
/// sparing young ones would let a flood faster than the bound per second keep every socket
/// young and shut everyone out. Kept-alive connections belong to clients already served
/// (a polling client between polls, an API client): one is taken only when no
/// never-served one is left, and only once it has been quiet for
/// [`QuietConnections::min_quiet_ms`], so that a request on its way is rarely cut; if
/// none can go, the newcomer is refused. (A client that keeps sending requests on its
/// kept-alive connections holds them; near the bound each response tells it to close
/// instead, see `conn.rs`.)
pub struct QuietConnections {
    min_quiet_ms: u64,
    inner: Mutex<Quiet>,
}

#[derive(Debug, Default)]
struct Quiet {
    next: u64,
    /// By tier, then in the order each was listed, which is the order each became quiet
    /// but for a kept-alive one listed again after declining an eviction (listed last, as
    /// it wrote just before): the first entry of a tier is, near enough, its oldest.
    by_age: BTreeMap<QuietKey, QuietSince>,
}

#[derive(Debug)]
struct QuietSince {
    since_ms: u64,
    entry: Arc<QuietEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    NeverServed,
    KeptAlive,
}

type QuietKey = (Tier, u64);

/// One connection's place among the quiet ones, and its notice of eviction.
#[derive(Debug)]
struct QuietEntry {
    /// Its key while listed; changed only under the registry's lock.
    key: Mutex<Option<QuietKey>>,
    evict: tokio::sync::Notify,
}

/// A connection's handle on [`QuietConnections`]: quiet from accept, busy while a request
/// is served, quiet again after it; unlisted when dropped.
#[derive(Debug)]
pub struct QuietHandle {
    registry: Arc<QuietConnections>,
    entry: Arc<QuietEntry>,
}

impl std::fmt::Debug for QuietConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuietConnections")
            .field("min_quiet_ms", &self.min_quiet_ms)
            .field("listed", &self.len())
            .finish()
    }
}

impl QuietConnections {
    /// A registry that evicts kept-alive connections quiet for at least `min_quiet_ms`.
    pub fn new(min_quiet_ms: u64) -> Arc<Self> {
        Arc::new(QuietConnections {
            min_quiet_ms,
            inner: Mutex::new(Quiet::default()),
        })
    }

    /// How long a kept-alive connection must have been quiet before it can be evicted.
    pub fn min_quiet_ms(&self) -> u64 {
        self.min_quiet_ms
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Quiet> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists a connection just accepted at `now_ms`.
    pub fn accepted(self: &Arc<Self>, now_ms: u64) -> QuietHandle {
        let entry = Arc::new(QuietEntry {
            key: Mutex::new(None),
            evict: tokio::sync::Notify::new(),
        });
        self.lock().insert(Tier::NeverServed, now_ms, &entry);
        QuietHandle {
            registry: self.clone(),
            entry,
        }
    }

    /// Tells the oldest never-served connection, or if there is none the kept-alive one
    /// quiet longest, provided since `min_quiet_ms` before `now_ms`, to close (it does
    /// when its task next runs, if it is still quiet) and unlists it; `false` if there is
    /// none.
    pub fn evict_oldest(&self, now_ms: u64) -> bool {
        let mut quiet = self.lock();
        let first = |tier| {
            quiet
                .by_age
                .range((tier, 0)..=(tier, u64::MAX))
                .next()
                .map(|(key, since)| (*key, since.since_ms))
        };
        let oldest = first(Tier::NeverServed).map(|(key, _)| key).or_else(|| {
            first(Tier::KeptAlive)
                .filter(|(_, since)| since.saturating_add(self.min_quiet_ms) <= now_ms)
                .map(|(key, _)| key)
        });
        let Some(key) = oldest else {
            return false;
        };
        let Some(evicted) = quiet.by_age.remove(&key) else {
            return false;
        };
        *evicted.entry.key.lock().unwrap_or_else(|e| e.into_inner()) = None;
        evicted.entry.evict.notify_one();
        true
    }

    /// Connections listed now.
    pub fn len(&self) -> usize {
        self.lock().by_age.len()
    }

    /// Whether none is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Quiet {
    fn insert(&mut self, tier: Tier, now_ms: u64, entry: &Arc<QuietEntry>) {
        let mut key = entry.key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = key.take() {
            self.by_age.remove(&old);
        }
        self.next += 1;
        let new = (tier, self.next);
        self.by_age.insert(
            new,
            QuietSince {
                since_ms: now_ms,
                entry: entry.clone(),
            },
        );
        *key = Some(new);
    }

    fn remove(&mut self, entry: &QuietEntry) {
        let mut key = entry.key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = key.take() {
            self.by_age.remove(&old);
        }
    }
}

impl QuietHandle {
    /// A request of this connection is being served: it cannot be evicted.
    pub fn busy(&self) {
        self.registry.lock().remove(&self.entry);
    }

    /// Its requests are all served, at `now_ms`: quiet again, as kept-alive.
    pub fn idle(&self, now_ms: u64) {
        self.registry
            .lock()
            .insert(Tier::KeptAlive, now_ms, &self.entry);
    }

    /// Resolves once the connection has been chosen for eviction (also if that happened
    /// before this was called).
    pub async fn evicted(&self) {
        self.entry.evict.notified().await
    }
}

impl Drop for QuietHandle {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.entry);
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens, in thousandths, so refills stay exact in integer milliseconds.
    milli_tokens: u64,
    at: Instant,
}

/// Allows each IP `rate` new clients per second (see [`crate::engineio::pays_ip_rate`]),
/// with a burst of `rate`
/// (`server.connect_rate_per_ip`; 0 turns it off).
#[derive(Debug)]
pub struct IpRate {
    rate: u64,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    by_client: HashMap<IpAddr, Bucket>,
    /// Past this many tracked clients, full buckets are forgotten on the next check: at
    /// least [`PRUNE_ABOVE`], and twice what the last pruning kept, so that while many
    /// clients are mid-refill (a flood from many addresses) the walk over all of them
    /// comes once per doubling, not at every new client.
    prune_at: usize,
}

/// The fewest tracked clients at which full buckets are forgotten.
const PRUNE_ABOVE: usize = 10_000;

impl IpRate {
    /// A limiter of `rate` new clients per second per IP; 0 allows everything.
    pub fn new(rate: u64) -> Self {
        IpRate {
            rate,
            buckets: Mutex::new(Buckets {
                by_client: HashMap::new(),
                prune_at: PRUNE_ABOVE,
            }),
        }
    }

    /// Clients tracked now (buckets not yet forgotten).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.by_client.len()
    }

    /// Takes a token for `ip` at `now`; `false` if it has none.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let full = self.rate.saturating_mul(1000);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.by_client.len() > buckets.prune_at {
            let rate = self.rate;
            buckets
                .by_client
                .retain(|_, b| refill(b, now, rate, full) < full);
            buckets.prune_at = PRUNE_ABOVE.max(buckets.by_client.len().saturating_mul(2));
        }
        let b = buckets.by_client.entry(client_of(ip)).or_insert(Bucket {
            milli_tokens: full,
            at: now,
        });
        let tokens = refill(b, now, self.rate, full);
        b.milli_tokens = tokens;
        b.at = now;
        if tokens >= 1000 {
            b.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// The client an address stands for: an IPv4 address (also when it reaches an IPv6
/// socket mapped), or an IPv6 address's /64, the smallest block a site is given: one
/// host holds a whole /64 and could draw a new address for every connection.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Tokens in a bucket at `now`: `rate` per second, i.e. `rate` thousandths per millisecond.
fn refill(b: &Bucket, now: Instant, rate: u64, full: u64) -> u64 {
    let elapsed = now.ms_since(b.at);
    b.milli_tokens
        .saturating_add(elapsed.saturating_mul(rate))
        .min(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_bounded_above_the_clients_and_under_the_open_file_limit() {
        assert_eq!(socket_bound(2, None), 4 + SOCKET_HEADROOM);
        assert_eq!(socket_bound(2, Some(1_000_000)), 4 + SOCKET_HEADROOM);
        assert_eq!(
            socket_bound(100_000, Some(20_000)),
            20_000 - RESERVED_DESCRIPTORS,
            "the default cap on a machine of 20,000 files"
        );
        assert_eq!(
            refusal_budget(20_000 - RESERVED_DESCRIPTORS, Some(20_000)),
            REFUSAL_SOCKETS
        );
        assert_eq!(refusal_budget(1_000, Some(20_000)), MAX_REFUSALS);
        assert_eq!(refusal_budget(1_000, None), MAX_REFUSALS);
        assert_eq!(
            refusal_budget(1, Some(10)),
            0,
            "no room: closed without a word"
        );
        assert_eq!(socket_bound(u64::MAX, None), u64::MAX);
        assert_eq!(
            socket_bound(5, Some(10)),
            1,
            "a tiny limit still admits one"
        );
    }

    #[test]
    fn cap_frees_slots_on_drop() {
        let cap = ConnectionCap::new(2, Arc::new(RuntimeMetrics::default()));
        let a = cap.try_acquire().expect("a");
        let _b = cap.try_acquire().expect("b");
        assert!(cap.try_acquire().is_none());
        drop(a);
        assert!(cap.try_acquire().is_some());
    }

    #[test]
    fn the_longest_quiet_connection_is_evicted_never_served_ones_first() {
        let quiet = QuietConnections::new(100);
        let kept = quiet.accepted(0);
        kept.busy();
        kept.idle(10);
        let a = quiet.accepted(20);
        let b = quiet.accepted(30);
        let busy = quiet.accepted(5);
        busy.busy();
        assert_eq!(quiet.len(), 3, "the busy one is not listed");
        assert!(quiet.evict_oldest(30), "a, however young, before kept");
        assert_eq!(quiet.len(), 2);
        assert!(quiet.evict_oldest(30), "then b");
        assert!(
            !quiet.evict_oldest(109),
            "kept has not been quiet for 100 ms"
        );
        assert!(quiet.evict_oldest(110), "now it has");
        assert!(!quiet.evict_oldest(10_000), "and no other");
        drop((a, b, kept));
        busy.idle(200);
        assert!(
            !quiet.evict_oldest(299),
            "quiet again after its request, not long enough"
        );
        assert!(quiet.evict_oldest(300));
    }

    #[test]
    fn a_dropped_connection_is_unlisted() {
        let quiet = QuietConnections::new(0);
        let a = quiet.accepted(0);
        let b = quiet.accepted(0);
        drop(a);
        assert_eq!(quiet.len(), 1);
        b.busy();
        b.idle(5);
        assert_eq!(quiet.len(), 1, "listed once, however often it goes quiet");
        drop(b);
        assert!(quiet.is_empty());
        assert!(!quiet.evict_oldest(1));
    }

    #[tokio::test]
    async fn an_evicted_connection_is_told_even_if_it_was_not_listening_yet() {
        let quiet = QuietConnections::new(0);
        let a = quiet.accepted(0);
        let b = quiet.accepted(0);
        assert!(quiet.evict_oldest(0));
        tokio::time::timeout(std::time::Duration::from_secs(5), a.evicted())
            .await
            .expect("a is told");
        let told = tokio::time::timeout(std::time::Duration::from_millis(20), b.evicted());
        assert!(told.await.is_err(), "b is not");
    }

    #[test]
    fn rate_refills_over_time() {
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let rate = IpRate::new(2);
        let t0 = Instant::from_millis(1000);
        assert!(rate.allow(ip, t0));
        assert!(rate.allow(ip, t0));
        assert!(!rate.allow(ip, t0));
        assert!(!rate.allow(ip, t0.add_ms(400)));
        assert!(rate.allow(ip, t0.add_ms(500)));
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        assert!(rate.allow(other, t0));
        assert!(IpRate::new(0).allow(ip, t0));
    }

    #[test]
    fn full_buckets_are_forgotten_once_per_doubling() {
        let rate = IpRate::new(1);
        let t0 = Instant::from_millis(1000);
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // Clients all mid-refill: nothing can be forgotten, and the next walk waits until
        // the count has doubled.
        for i in 0..=PRUNE_ABOVE as u32 + 1 {
            assert!(rate.allow(ip(i), t0));
        }
        assert_eq!(rate.tracked(), PRUNE_ABOVE + 2);
        // A second later every bucket is full again: the next pruning forgets them all,
        // but only once the count passes twice what the last one kept.
        let t1 = t0.add_ms(1000);
        let upto = 2 * (PRUNE_ABOVE as u32 + 1);
        for i in PRUNE_ABOVE as u32 + 2..=upto {
            assert!(rate.allow(ip(i), t1));
        }
        assert_eq!(rate.tracked(), upto as usize + 1);
        assert!(rate.allow(ip(upto + 1), t1));
        assert_eq!(rate.tracked(), upto as usize - PRUNE_ABOVE);
        // The refusals still hold for those mid-refill.
        assert!(!rate.allow(ip(upto + 1), t1));
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client() {
        let addr = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let rate = IpRate::new(1);
        let t0 = Instant::from_millis(1000);
        assert!(rate.allow(addr("2001:db8:1:2::1"), t0));
        // Another address of the same /64 shares the bucket; another /64 does not.
        assert!(!rate.allow(addr("2001:db8:1:2:ffff::9"), t0));
        assert!(rate.allow(addr("2001:db8:1:3::1"), t0));
        // An IPv4 address is the same client whether it comes mapped or not.
        assert!(rate.allow(addr("192.0.2.7"), t0));
        assert!(!rate.allow(addr("::ffff:192.0.2.7"), t0));
    }
}
