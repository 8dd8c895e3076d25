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
//! socket's own buffers hold what its peer sends meanwhile), and one that never completes
//! its frame is ended by the heartbeat like any silent peer, giving its bytes back.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::context::LARGE_MESSAGE;
use crate::metrics::RuntimeMetrics;

/// The budget's floor: 256 MiB, a few hundred large messages arriving at once.
const FLOOR: u64 = 256 << 20;

/// Room beyond two of the largest messages: a frame's header, a read's worth past it.
const SLACK: u64 = 64 << 10;

/// The bytes that large messages still arriving may hold, all connections together.
#[derive(Debug)]
pub struct ArrivingBytes {
    free: Arc<Semaphore>,
    total: u32,
    metrics: Arc<RuntimeMetrics>,
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
        }
    }

    /// Bytes reserved now.
    pub fn held(&self) -> u64 {
        u64::from(self.total).saturating_sub(self.free.available_permits() as u64)
    }
}

/// What one connection holds of the budget, and its wait for more.
#[derive(Default)]
pub struct Reservation {
    holding: Option<Holding>,
    waiting: Option<Acquiring>,
}

/// A wait for bytes, boxed: a connection carries it only while it waits.
type Acquiring = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Bytes held, counted in `heartline_arriving_bytes` while they are.
struct Holding {
    permit: OwnedSemaphorePermit,
    metrics: Arc<RuntimeMetrics>,
}

impl Drop for Holding {
    fn drop(&mut self) {
        let n = self.permit.num_permits() as u64;
        self.metrics.arriving_bytes.fetch_sub(n, Ordering::Relaxed);
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
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(got) => {
                        self.waiting = None;
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
                }
            }
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
            }
            None => {
                self.holding = Some(Holding {
                    permit,
                    metrics: budget.metrics.clone(),
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
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                let mut r = Reservation::default();
                r.cover(&b, 300_000).await.map(|()| r.bytes())
            })
        };
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
