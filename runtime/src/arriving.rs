//! A bound on the bytes of large messages still arriving: WebSocket frames and fragmented
//! messages being read, and polling bodies being read, all connections together.
//!
//! Each connection may receive a message of up to `max_payload_bytes` (1 MB by default),
//! and the bytes of one still arriving are held until it is whole. That is harmless for
//! one connection and not for all of them: 19,900 sockets each with most of a 1 MB frame
//! in hand would hold 20 GB. The inbox's budget ([`crate::context::InboxBytes`]) counts a
//! message only once it is whole, so it does not help here.
//!
//! A connection reserves the bytes of a message of [`LARGE_MESSAGE`] or more from the
//! frame's header (or the request's `Content-Length`), before its payload is read, and
//! gives them back once the whole message is in the inbox. A reservation is all or
//! nothing, and only a connection that holds none waits for one: one that already holds
//! some (a fragmented message asking for more) and cannot have more at once is refused.
//! Waiting while holding would let connections each hold part of the budget and wait for
//! one another for ever; refusing instead keeps every wait finite, since each reservation
//! held belongs to a frame that can complete. A connection waiting reads nothing more (the
//! socket's own buffers hold what its peer sends meanwhile).
//!
//! A message that arrives too slowly does not keep the budget from the others. When a
//! reservation must wait, the messages that have been arriving for longer than [`GRACE`]
//! at less than [`FLOOR_RATE`] lately are ended, slowest first, until the bytes they
//! give back cover the wait (a WebSocket is closed 1013, a POST answered 408); a waiting
//! reservation looks again every [`RECHECK`]. "Lately" is the last half of the grace,
//! counted generously (what arrived since a moment at least that long ago, over half the
//! grace): a message that sent most of itself at once and then stopped is judged by its
//! stop, not by its start, and one that was held up and then came fast by how it comes
//! now. Without that, connections sending the
//! headers of large frames and nothing more would hold the budget until the heartbeat
//! ended them (`ping_interval + ping_timeout`, 85 s by default), then come back, while
//! every other large message waited. Nothing is ended while nothing waits, however slow.

use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::context::LARGE_MESSAGE;
use crate::metrics::RuntimeMetrics;

/// The budget's floor: 256 MiB, a few hundred large messages arriving at once.
const FLOOR: u64 = 256 << 20;

/// Room beyond two of the largest messages: a frame's header, a read's worth past it.
const SLACK: u64 = 64 << 10;

/// How long a large message may take before it can be ended for arriving too slowly.
pub const GRACE: Duration = Duration::from_secs(10);

/// The rate, bytes a second over the last half of its grace, below which a large message
/// past its [`GRACE`] is ended when another waits for the budget: a 1 MB message has a
/// minute at this rate.
pub const FLOOR_RATE: u64 = 16 << 10;

/// How often a waiting reservation looks again for messages arriving too slowly.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The bytes that large messages still arriving may hold, all connections together.
#[derive(Debug)]
pub struct ArrivingBytes {
    free: Arc<Semaphore>,
    total: u32,
    metrics: Arc<RuntimeMetrics>,
    holders: Arc<Mutex<Holders>>,
    /// [`GRACE`], unless shortened or lengthened ([`ArrivingBytes::with_grace`]).
    grace: Duration,
}

/// The least time between two looks over the holders, however many reservations wait:
/// each look goes over all of them, under the lock they take and give back under.
const MIN_SCAN_GAP: Duration = Duration::from_millis(100);

/// The reservations holding bytes and those waiting, for [`ArrivingBytes::make_room`].
#[derive(Debug, Default)]
struct Holders {
    next: u64,
    by_id: BTreeMap<u64, Arc<Holder>>,
    /// Bytes the waiting reservations ask for, all together.
    demand: u64,
    /// When the holders were last looked over.
    last_scan: Option<Instant>,
}

/// A waiting reservation's part of [`Holders::demand`], taken back when it is dropped.
struct Demand {
    bytes: u64,
    holders: Arc<Mutex<Holders>>,
}

impl Drop for Demand {
    fn drop(&mut self) {
        let mut holders = lock(&self.holders);
        holders.demand = holders.demand.saturating_sub(self.bytes);
    }
}

/// One reservation holding bytes, as the budget sees it.
#[derive(Debug)]
struct Holder {
    /// When it first took bytes.
    since: Instant,
    /// How far back its rate looks: half its grace, in milliseconds.
    window_ms: u64,
    /// Bytes it holds.
    held: AtomicU64,
    /// Bytes of its message its connection has received.
    read: AtomicU64,
    /// When `read` last grew, milliseconds after `since`.
    grew_ms: AtomicU64,
    /// Two earlier points of its progress ([`Mark`]), the older first: the newer moves
    /// on when `read` grows with it at least `window_ms` old, so that there is always a
    /// point at least that old and not much older to count its rate from.
    marks: [AtomicU64; 2],
    /// Told to end: its message arrives too slowly and another waits.
    evicted: AtomicBool,
    /// Its message is whole (it waits for the core's inbox, not for its peer): never
    /// told to end.
    whole: AtomicBool,
    /// Its connection's task, to be woken when told.
    waker: AtomicWaker,
}

impl Holder {
    /// Whether it was told to end; if not, the task is woken when it is (registered
    /// before the flag is read, so that a telling in between is not missed).
    fn poll_told(&self, cx: &mut TaskContext<'_>) -> bool {
        self.waker.register(cx.waker());
        self.evicted.load(Ordering::Acquire)
    }

    /// Its rate lately, bytes a second, if it is past its grace, below the floor and not
    /// told yet: what it received since the newest point of its progress at least
    /// `window_ms` old (when it last grew, a mark, or its start), over `window_ms`.
    fn too_slow(&self, now: Instant, grace: Duration) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < grace
            || self.evicted.load(Ordering::Acquire)
            || self.whole.load(Ordering::Acquire)
        {
            return None;
        }
        let now_ms = millis(elapsed);
        let old_enough = |at: u64| now_ms.saturating_sub(at) >= self.window_ms;
        let read = self.read.load(Ordering::Relaxed);
        let grew = self.grew_ms.load(Ordering::Relaxed);
        let [older, newer] = [&self.marks[0], &self.marks[1]].map(Mark::of);
        let from = if old_enough(grew) {
            read
        } else if old_enough(newer.at_ms) {
            newer.read
        } else if old_enough(older.at_ms) {
            older.read
        } else {
            0
        };
        let rate = read.saturating_sub(from).saturating_mul(1000) / self.window_ms.max(1);
        (rate < FLOOR_RATE).then_some(rate)
    }

    /// Its connection has received `n` bytes of its message in all.
    fn received(&self, n: u64) {
        if self.read.fetch_max(n, Ordering::Relaxed) >= n {
            return;
        }
        let at_ms = millis(Instant::now().saturating_duration_since(self.since));
        self.grew_ms.store(at_ms, Ordering::Relaxed);
        let newer = self.marks[1].load(Ordering::Relaxed);
        if at_ms.saturating_sub(Mark::of_packed(newer).at_ms) >= self.window_ms {
            self.marks[0].store(newer, Ordering::Relaxed);
            self.marks[1].store(Mark { at_ms, read: n }.packed(), Ordering::Relaxed);
        }
    }
}

/// A point of a message's progress: `read` bytes received `at_ms` after it began. Kept in
/// one atomic word (the time in the high half, the bytes in the low half, each saturated
/// at `u32::MAX`: 49 days, 4 GiB), so that one is never read half written; the
/// connection's task writes them, the looks over the holders read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    at_ms: u64,
    read: u64,
}

impl Mark {
    fn packed(self) -> u64 {
        let half = |v: u64| v.min(u64::from(u32::MAX));
        (half(self.at_ms) << 32) | half(self.read)
    }

    fn of_packed(word: u64) -> Mark {
        Mark {
            at_ms: word >> 32,
            read: word & u64::from(u32::MAX),
        }
    }

    fn of(word: &AtomicU64) -> Mark {
        Mark::of_packed(word.load(Ordering::Relaxed))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lock(holders: &Mutex<Holders>) -> std::sync::MutexGuard<'_, Holders> {
    // Nothing done under the lock can leave it half changed.
    holders.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection's part of the budget was all it could have: it holds some already and
/// no more is free now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("large messages arriving have taken the server's budget for them")]
pub struct OverBudget;

impl ArrivingBytes {
    /// At least 256 MiB, and room for two of the largest messages the configuration
    /// allows, so that one message (a fragmented one, whose buffer may grow to that size
    /// while its last frame is read beside it) never waits for itself.
    pub fn new(max_payload_bytes: u64, metrics: Arc<RuntimeMetrics>) -> Self {
        let two = max_payload_bytes.saturating_add(SLACK).saturating_mul(2);
        let most = u64::try_from(Semaphore::MAX_PERMITS).unwrap_or(u64::MAX);
        let total = u32::try_from(two.max(FLOOR).min(most)).unwrap_or(u32::MAX);
        metrics
            .arriving_max
            .store(u64::from(total), Ordering::Relaxed);
        ArrivingBytes {
            free: Arc::new(Semaphore::new(total as usize)),
            total,
            metrics,
            holders: Arc::default(),
            grace: GRACE,
        }
    }

    /// The same budget, with a message ended for arriving too slowly only after `grace`
    /// instead of [`GRACE`].
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Bytes reserved now.
    pub fn held(&self) -> u64 {
        u64::from(self.total).saturating_sub(self.free.available_permits() as u64)
    }

    /// Reservations wait: the messages arriving too slowly are told to end, slowest first
    /// (the oldest first among equals), until the bytes free, with those that these and
    /// the ones told before will give back, cover what all the waiting reservations ask
    /// for. At most one look every [`MIN_SCAN_GAP`], whoever asks.
    fn make_room(&self) {
        let now = Instant::now();
        let mut told = Vec::new();
        {
            let mut holders = lock(&self.holders);
            if holders.demand == 0
                || holders
                    .last_scan
                    .is_some_and(|t| now.saturating_duration_since(t) < MIN_SCAN_GAP)
            {
                return;
            }
            holders.last_scan = Some(now);
            // Bytes a waiting reservation has been handed already are among the free:
            // the demand counts all that each asks for.
            let held: u64 = holders
                .by_id
                .values()
                .map(|h| h.held.load(Ordering::Relaxed))
                .sum();
            let coming: u64 = holders
                .by_id
                .values()
                .filter(|h| h.evicted.load(Ordering::Acquire) && !h.whole.load(Ordering::Acquire))
                .map(|h| h.held.load(Ordering::Relaxed))
                .sum();
            let mut covered = u64::from(self.total)
                .saturating_sub(held)
                .saturating_add(coming);
            let mut slow: Vec<(u64, Instant, &Arc<Holder>)> = holders
                .by_id
                .values()
                .filter_map(|h| h.too_slow(now, self.grace).map(|rate| (rate, h.since, h)))
                .collect();
            slow.sort_by_key(|(rate, since, _)| (*rate, *since));
            for (rate, since, holder) in slow {
                if covered >= holders.demand {
                    break;
                }
                holder.evicted.store(true, Ordering::Release);
                covered = covered.saturating_add(holder.held.load(Ordering::Relaxed));
                told.push((holder.clone(), rate, now.saturating_duration_since(since)));
            }
        }
        for (holder, rate, arriving_for) in told {
            RuntimeMetrics::inc(&self.metrics.arriving_evicted);
            tracing::debug!(
                rate,
                arriving_for_ms = u64::try_from(arriving_for.as_millis()).unwrap_or(u64::MAX),
                "a large message arriving too slowly is ended to make room"
            );
            holder.waker.wake();
        }
    }
}

/// What one connection holds of the budget, and its wait for more.
#[derive(Default)]
pub struct Reservation {
    holding: Option<Holding>,
    waiting: Option<Acquiring>,
    /// While waiting: when to look again for messages arriving too slowly.
    recheck: Option<Pin<Box<Sleep>>>,
    /// While waiting: what it asks for, counted in the budget's demand.
    demand: Option<Demand>,
}

/// A wait for bytes, boxed: a connection carries it only while it waits.
type Acquiring = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Bytes held, counted in `heartline_arriving_bytes` while they are, and listed among the
/// budget's holders.
struct Holding {
    permit: OwnedSemaphorePermit,
    metrics: Arc<RuntimeMetrics>,
    id: u64,
    holder: Arc<Holder>,
    holders: Arc<Mutex<Holders>>,
}

impl Drop for Holding {
    fn drop(&mut self) {
        let n = self.permit.num_permits() as u64;
        self.metrics.arriving_bytes.fetch_sub(n, Ordering::Relaxed);
        lock(&self.holders).by_id.remove(&self.id);
    }
}

impl Reservation {
    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.holding.as_ref().map_or(0, |h| h.permit.num_permits())
    }

    /// Makes it cover `want` bytes. Messages under [`LARGE_MESSAGE`] need nothing.
    /// Ready once it does; pending while a reservation that holds nothing waits for its
    /// bytes; [`OverBudget`] when it holds some and no more are free now.
    pub fn poll_cover(
        &mut self,
        cx: &mut TaskContext<'_>,
        budget: &ArrivingBytes,
        want: usize,
    ) -> Poll<Result<(), OverBudget>> {
        // Never more than the whole budget: no wait could end.
        let want = want.min(budget.total as usize);
        loop {
            let have = self.bytes();
            if want < LARGE_MESSAGE || want <= have {
                return Poll::Ready(Ok(()));
            }
            if let Some(waiting) = self.waiting.as_mut() {
                match waiting.as_mut().poll(cx) {
                    Poll::Pending => {
                        self.poll_recheck(cx, budget);
                        return Poll::Pending;
                    }
                    Poll::Ready(got) => {
                        self.waiting = None;
                        self.recheck = None;
                        self.demand = None;
                        match got {
                            Ok(permit) => self.take(permit, budget),
                            // The budget's semaphore is never closed; were it, nothing
                            // is counted any more.
                            Err(_) => return Poll::Ready(Ok(())),
                        }
                        continue;
                    }
                }
            }
            // `want - have` fits in a u32: `want` is at most the budget's total.
            let more = u32::try_from(want - have).unwrap_or(u32::MAX);
            match budget.free.clone().try_acquire_many_owned(more) {
                Ok(permit) => self.take(permit, budget),
                Err(_) if have > 0 => {
                    RuntimeMetrics::inc(&budget.metrics.arriving_refused);
                    return Poll::Ready(Err(OverBudget));
                }
                Err(_) => {
                    RuntimeMetrics::inc(&budget.metrics.arriving_waits);
                    self.waiting = Some(Box::pin(budget.free.clone().acquire_many_owned(more)));
                    lock(&budget.holders).demand += u64::from(more);
                    self.demand = Some(Demand {
                        bytes: u64::from(more),
                        holders: budget.holders.clone(),
                    });
                    budget.make_room();
                    self.recheck = Some(Box::pin(tokio::time::sleep(RECHECK)));
                }
            }
        }
    }

    /// While waiting for `more` bytes: every [`RECHECK`], the messages arriving too slowly
    /// are looked for again (those that were young at the last look may be past their
    /// grace now).
    fn poll_recheck(&mut self, cx: &mut TaskContext<'_>, budget: &ArrivingBytes) {
        let Some(sleep) = self.recheck.as_mut() else {
            return;
        };
        while sleep.as_mut().poll(cx).is_ready() {
            budget.make_room();
            sleep.as_mut().reset(Instant::now() + RECHECK);
        }
    }

    /// Its message is whole: what it holds waits for the core's inbox now, not for its
    /// peer, and is never told to end.
    pub fn arrived(&self) {
        if let Some(h) = &self.holding {
            h.holder.whole.store(true, Ordering::Release);
        }
    }

    /// Its connection has received `n` bytes of the message it holds bytes for, in all
    /// (a count that only grows; a smaller one is ignored).
    pub fn note_received(&self, n: usize) {
        if let Some(h) = &self.holding {
            h.holder.received(n as u64);
        }
    }

    /// Whether its message was told to end for arriving too slowly while another waits;
    /// if not, the task is woken when it is.
    pub fn poll_evicted(&self, cx: &mut TaskContext<'_>) -> bool {
        self.holding
            .as_ref()
            .is_some_and(|h| h.holder.poll_told(cx))
    }

    /// Ready once the message it holds bytes for is told to end
    /// ([`Reservation::poll_evicted`]); never while it holds none.
    pub fn evicted(&self) -> impl Future<Output = ()> + Send + 'static {
        let holder = self.holding.as_ref().map(|h| h.holder.clone());
        async move {
            let Some(holder) = holder else {
                return std::future::pending().await;
            };
            poll_fn(move |cx| {
                if holder.poll_told(cx) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await
        }
    }

    /// Makes it cover `want` bytes if they are free now, never waiting: for a reader that
    /// already holds bytes the budget does not count (a chunk of a body in hand).
    pub fn try_cover(&mut self, budget: &ArrivingBytes, want: usize) -> Result<(), OverBudget> {
        let want = want.min(budget.total as usize);
        let have = self.bytes();
        if want < LARGE_MESSAGE || want <= have {
            return Ok(());
        }
        let more = u32::try_from(want - have).unwrap_or(u32::MAX);
        match budget.free.clone().try_acquire_many_owned(more) {
            Ok(permit) => {
                self.take(permit, budget);
                Ok(())
            }
            Err(_) => {
                RuntimeMetrics::inc(&budget.metrics.arriving_refused);
                Err(OverBudget)
            }
        }
    }

    /// [`Reservation::poll_cover`], awaited.
    pub async fn cover(&mut self, budget: &ArrivingBytes, want: usize) -> Result<(), OverBudget> {
        poll_fn(|cx| self.poll_cover(cx, budget, want)).await
    }

    fn take(&mut self, permit: OwnedSemaphorePermit, budget: &ArrivingBytes) {
        let n = permit.num_permits() as u64;
        budget
            .metrics
            .arriving_bytes
            .fetch_add(n, Ordering::Relaxed);
        match self.holding.as_mut() {
            Some(holding) => {
                // Counted on its own first, then merged, so that the drop of `holding`
                // takes away all of it.
                holding.permit.merge(permit);
                holding.holder.held.fetch_add(n, Ordering::Relaxed);
            }
            None => {
                let holder = Arc::new(Holder {
                    since: Instant::now(),
                    window_ms: millis(budget.grace / 2),
                    held: AtomicU64::new(n),
                    read: AtomicU64::new(0),
                    grew_ms: AtomicU64::new(0),
                    marks: [AtomicU64::new(0), AtomicU64::new(0)],
                    evicted: AtomicBool::new(false),
                    whole: AtomicBool::new(false),
                    waker: AtomicWaker::new(),
                });
                let id = {
                    let mut holders = lock(&budget.holders);
                    let id = holders.next;
                    holders.next += 1;
                    holders.by_id.insert(id, holder.clone());
                    id
                };
                self.holding = Some(Holding {
                    permit,
                    metrics: budget.metrics.clone(),
                    id,
                    holder,
                    holders: budget.holders.clone(),
                })
            }
        }
    }
}

/// The capacity a buffer holding `len` bytes in `cap` grows to when `add` more arrive:
/// doubling, so that a message in many small pieces is copied no more than one in a few,
/// but never past `max` (the most it may hold), and always at least what is needed. The
/// buffers that large messages arrive in grow by this rule, so that what is reserved for
/// them is what they take.
pub fn grown_capacity(len: usize, cap: usize, add: usize, max: usize) -> usize {
    let needed = len.saturating_add(add);
    if needed <= cap {
        cap
    } else {
        needed.max(cap.saturating_mul(2).min(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn budget() -> ArrivingBytes {
        ArrivingBytes::new(1_000_000, Arc::new(RuntimeMetrics::default()))
    }

    fn gauge(b: &ArrivingBytes) -> u64 {
        b.metrics.arriving_bytes.load(Ordering::Relaxed)
    }

    /// Small messages take nothing; large ones take their size, grow, and give it all
    /// back when dropped, in the budget and in its gauge.
    #[tokio::test]
    async fn reservations_grow_and_give_back_what_they_hold() {
        let b = budget();
        let mut r = Reservation::default();
        assert_eq!(r.cover(&b, LARGE_MESSAGE - 1).await, Ok(()));
        assert_eq!((r.bytes(), b.held()), (0, 0));
        assert_eq!(r.cover(&b, 100_000).await, Ok(()));
        assert_eq!(r.cover(&b, 300_000).await, Ok(()));
        assert_eq!(r.cover(&b, 200_000).await, Ok(()), "already covered");
        assert_eq!(
            (r.bytes(), b.held(), gauge(&b)),
            (300_000, 300_000, 300_000)
        );
        drop(r);
        assert_eq!((b.held(), gauge(&b)), (0, 0));
    }

    /// With the budget taken, a connection holding nothing waits for bytes to come back;
    /// one holding some is refused rather than wait, so that no two wait for each other.
    #[tokio::test]
    async fn only_a_reservation_holding_nothing_waits() {
        let b = Arc::new(budget());
        let total = b.total as usize;
        let mut hog = Reservation::default();
        assert_eq!(hog.cover(&b, total - 500_000).await, Ok(()));
        let mut holder = Reservation::default();
        assert_eq!(holder.cover(&b, 400_000).await, Ok(()));
        // 100,000 bytes free: more than that is refused to a holder, at once.
        assert_eq!(holder.cover(&b, 600_000).await, Err(OverBudget));
        assert_eq!(holder.bytes(), 400_000, "a refusal keeps what was held");
        assert_eq!(b.metrics.arriving_refused.load(Ordering::Relaxed), 1);
        // Never waiting, even holding nothing, when asked not to.
        assert_eq!(
            Reservation::default().try_cover(&b, 200_000),
            Err(OverBudget)
        );
        assert_eq!(b.metrics.arriving_refused.load(Ordering::Relaxed), 2);
        // One holding nothing waits, and goes once enough is given back.
        let waiter = waiter(&b, 300_000);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "waits while the bytes are taken");
        assert_eq!(b.metrics.arriving_waits.load(Ordering::Relaxed), 1);
        drop(holder);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("goes once bytes come back")
            .expect("task");
        assert_eq!(got, Ok(300_000));
        drop(hog);
        assert_eq!((b.held(), gauge(&b)), (0, 0));
    }

    /// A connection holding nothing that waits for `n` bytes; its task answers what it got.
    fn waiter(
        b: &Arc<ArrivingBytes>,
        n: usize,
    ) -> tokio::task::JoinHandle<Result<usize, OverBudget>> {
        let b = b.clone();
        tokio::spawn(async move {
            let mut r = Reservation::default();
            r.cover(&b, n).await.map(|()| r.bytes())
        })
    }

    /// Whether `r`'s message was told to end, as its connection's task would see it.
    async fn told(r: &Reservation) -> bool {
        poll_fn(|cx| Poll::Ready(r.poll_evicted(cx))).await
    }

    /// Lets spawned tasks run after the paused clock moved.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// A message past its grace that has hardly arrived is ended when another waits for
    /// its bytes, which then go to the one waiting.
    #[tokio::test(start_paused = true)]
    async fn a_message_arriving_too_slowly_makes_room_for_one_waiting() {
        let b = Arc::new(budget());
        let total = b.total as usize;
        let mut slow = Reservation::default();
        assert_eq!(slow.cover(&b, total - 100_000).await, Ok(()));
        slow.note_received(1_000);
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        assert!(!told(&slow).await, "nothing waits yet, however slow");
        let waiter = waiter(&b, 300_000);
        settle().await;
        assert!(told(&slow).await, "told to make room");
        assert_eq!(b.metrics.arriving_evicted.load(Ordering::Relaxed), 1);
        assert!(
            !waiter.is_finished(),
            "its bytes come back only when it ends"
        );
        drop(slow);
        let got = waiter.await.expect("task");
        assert_eq!(got, Ok(300_000));
    }

    /// A message within its grace, or arriving at the floor's rate or faster, is left
    /// alone while another waits; once it stops, a look half a grace later ends it, long
    /// before its average since it began would fall below the floor.
    #[tokio::test(start_paused = true)]
    async fn young_or_fast_enough_messages_are_left_alone_until_they_slow() {
        let b = Arc::new(budget());
        let total = b.total as usize;
        let mut steady = Reservation::default();
        assert_eq!(steady.cover(&b, total - 100_000).await, Ok(()));
        let waiter = waiter(&b, 300_000);
        settle().await;
        // Twice the floor, for three grace periods, looked at every second meanwhile.
        for k in 1..=30 {
            steady.note_received(k * 2 * FLOOR_RATE as usize);
            tokio::time::advance(Duration::from_secs(1)).await;
            settle().await;
        }
        assert!(!told(&steady).await, "fast enough, so left alone");
        assert_eq!(b.metrics.arriving_evicted.load(Ordering::Relaxed), 0);
        // It stops after its last bytes (at 29 s): not yet ended 3 s on...
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(1)).await;
            settle().await;
        }
        assert!(!told(&steady).await, "slowed for less than half a grace");
        // ...ended by 7 s on, where its average (60 floors' worth over 36 s) is still
        // well above the floor.
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(1)).await;
            settle().await;
        }
        assert!(told(&steady).await, "ended once too slow lately");
        assert_eq!(b.metrics.arriving_evicted.load(Ordering::Relaxed), 1);
        drop(steady);
        assert_eq!(waiter.await.expect("task"), Ok(300_000));
        assert_eq!((b.held(), gauge(&b)), (0, 0));
    }

    /// A message that sends most of itself at once and then stops is judged by its stop:
    /// ended once it has sent nothing for half a grace (and is past its grace), where
    /// its average since it began would keep it for most of a minute.
    #[tokio::test(start_paused = true)]
    async fn a_message_that_stops_is_judged_by_its_stop_not_its_start() {
        let b = Arc::new(budget());
        let total = b.total as usize;
        let mut stopped = Reservation::default();
        assert_eq!(stopped.cover(&b, total - 100_000).await, Ok(()));
        tokio::time::advance(Duration::from_millis(500)).await;
        stopped.note_received(900_000);
        let waiter = waiter(&b, 300_000);
        for _ in 0..9 {
            tokio::time::advance(RECHECK).await;
            settle().await;
        }
        assert!(!told(&stopped).await, "within its grace");
        for _ in 0..2 {
            tokio::time::advance(RECHECK).await;
            settle().await;
        }
        assert!(
            told(&stopped).await,
            "past its grace, silent for half of it"
        );
        drop(stopped);
        assert_eq!(waiter.await.expect("task"), Ok(300_000));
    }

    /// A message held up at first and then arriving fast is judged by how it arrives now:
    /// left alone, where its average since it began is below the floor at its grace.
    #[tokio::test(start_paused = true)]
    async fn a_message_held_up_then_fast_is_judged_by_how_it_comes_now() {
        let b = Arc::new(budget());
        let total = b.total as usize;
        let mut late = Reservation::default();
        assert_eq!(late.cover(&b, total - 100_000).await, Ok(()));
        let waiter = waiter(&b, 300_000);
        tokio::time::advance(Duration::from_secs(8)).await;
        settle().await;
        // From 8 s on, four floors a second, a quarter of a second at a time: 0.8 of the
        // floor on average at 10 s, 1.6 over the last half grace.
        let mut sent = 0;
        for _ in 0..40 {
            sent += FLOOR_RATE as usize;
            late.note_received(sent);
            tokio::time::advance(Duration::from_millis(250)).await;
            settle().await;
        }
        assert!(!told(&late).await, "fast now, so left alone");
        assert_eq!(b.metrics.arriving_evicted.load(Ordering::Relaxed), 0);
        drop(late);
        assert_eq!(waiter.await.expect("task"), Ok(300_000));
    }

    #[test]
    fn a_mark_keeps_both_halves_and_saturates_each() {
        let m = Mark {
            at_ms: 12_345,
            read: 678_901,
        };
        assert_eq!(Mark::of_packed(m.packed()), m);
        let huge = Mark {
            at_ms: u64::MAX,
            read: u64::MAX,
        };
        let back = Mark::of_packed(huge.packed());
        assert_eq!(
            (back.at_ms, back.read),
            (u64::from(u32::MAX), u64::from(u32::MAX))
        );
    }

    /// A message that is whole waits for the core's inbox, not for its peer: however
    /// long that takes, it is never told to end.
    #[tokio::test(start_paused = true)]
    async fn a_whole_message_waiting_for_the_inbox_is_left_alone() {
        let b = Arc::new(budget());
        let total = b.total as usize;
        let mut whole = Reservation::default();
        assert_eq!(whole.cover(&b, total - 100_000).await, Ok(()));
        whole.arrived();
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        let waiter = waiter(&b, 300_000);
        for _ in 0..5 {
            tokio::time::advance(RECHECK).await;
            settle().await;
        }
        assert!(!told(&whole).await);
        assert_eq!(b.metrics.arriving_evicted.load(Ordering::Relaxed), 0);
        drop(whole);
        assert_eq!(waiter.await.expect("task"), Ok(300_000));
    }

    /// Two reservations waiting: what both ask for is made room for, and no more; the
    /// oldest of equally slow messages go first.
    #[tokio::test(start_paused = true)]
    async fn every_waiter_is_made_room_for_and_no_more() {
        let b = Arc::new(budget());
        let quarter = b.total as usize / 4;
        let mut slow = Vec::new();
        for _ in 0..4 {
            let mut r = Reservation::default();
            assert_eq!(r.cover(&b, quarter).await, Ok(()));
            slow.push(r);
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        tokio::time::advance(GRACE).await;
        let first = waiter(&b, quarter);
        settle().await;
        let second = waiter(&b, quarter);
        settle().await;
        // The second's first look came too soon after the first's; its next one counts it.
        tokio::time::advance(RECHECK).await;
        settle().await;
        let mut told_now = Vec::new();
        for r in &slow {
            told_now.push(told(r).await);
        }
        assert_eq!(told_now, [true, true, false, false]);
        assert_eq!(b.metrics.arriving_evicted.load(Ordering::Relaxed), 2);
        let mut slow = slow.into_iter();
        drop(slow.next());
        drop(slow.next());
        assert_eq!(first.await.expect("task"), Ok(quarter));
        assert_eq!(second.await.expect("task"), Ok(quarter));
        // Nothing waits now: the rest are left alone, however slow.
        for _ in 0..5 {
            tokio::time::advance(RECHECK).await;
            settle().await;
        }
        for r in slow {
            assert!(!told(&r).await);
        }
        assert_eq!(b.metrics.arriving_evicted.load(Ordering::Relaxed), 2);
    }

    /// However large the configured payload, two of its messages fit at once.
    #[test]
    fn the_budget_holds_two_of_the_largest_messages() {
        for max in [1_000_000, 200 << 20, crate::config::MAX_PAYLOAD_LIMIT] {
            let b = ArrivingBytes::new(max, Arc::new(RuntimeMetrics::default()));
            assert!(u64::from(b.total) >= 2 * max + 2 * 1024, "{max}");
        }
    }

    #[test]
    fn buffers_grow_by_doubling_within_their_bound() {
        assert_eq!(grown_capacity(10, 100, 50, 1000), 100, "fits");
        assert_eq!(grown_capacity(100, 100, 1, 1000), 200, "doubles");
        assert_eq!(
            grown_capacity(100, 100, 500, 1000),
            600,
            "at least what is needed"
        );
        assert_eq!(
            grown_capacity(600, 600, 100, 1000),
            1000,
            "never past the bound"
        );
        assert_eq!(grown_capacity(0, 0, 7, 1000), 7);
    }
}
