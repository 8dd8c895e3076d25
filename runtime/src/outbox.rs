//! A WebSocket's send queue, bounded in bytes.
//!
//! The actor that runs the core must never wait for a client, so it hands frames to a
//! per-connection queue and a writer task drains it onto the socket. The queue is the
//! core's [`SendQueue`], which holds the slow-consumer rule (a high-water mark at
//! `server.max_outbound_bytes`; droppable traffic shed first; then the consumer is
//! hopeless), the same rule the engine applies to polling buffers and the simulator
//! checks under faults. What this module adds is the sharing between two threads and what
//! the rule's verdicts mean for a socket:
//!
//! - a shed frame is counted in `heartline_outbound_shed_total`;
//! - on overflow the queue is discarded and the connection killed (the socket is dropped;
//!   a close frame could not reach a peer that does not read). The core is told the
//!   transport failed, and the client, which sees a transport error, reconnects and
//!   catches up from the store.
//!
//! Memory per connection is therefore bounded by the limit plus one frame in the queue
//! and one in the writer's hands, and the total is exported as
//! `heartline_outbound_queue_bytes`.
//!
//! The connection has one task, which both reads and writes; every push, close or kill wakes
//! it through one registered waker. An idle connection's queue is a mutex, an empty deque,
//! a phase byte and that waker: with tens of thousands of idle connections, each byte here
//! counts.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use heartline_core::codec::Frame;
pub use heartline_core::engine::send_queue::{Phase, Push};
use heartline_core::engine::SendQueue;

use crate::metrics::RuntimeMetrics;

/// What the writer should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send this frame.
    Frame(Frame),
    /// Send a close frame with this code and reason, then stop.
    Close(u16, String),
}

#[derive(Debug, Default)]
struct State {
    /// The frames, their byte count and the connection's phase.
    queue: SendQueue,
    /// The connection's task, woken at the next push, close or kill. Taken when woken;
    /// the task registers again when it polls.
    waker: Option<Waker>,
    /// The close frame asked for. Boxed: it is needed once, at the end, and inline it
    /// would put every connection's outbox in a larger allocation.
    close: Option<Box<(u16, String)>>,
}

/// One WebSocket's send queue. Shared by the actor (pushing) and the connection's task
/// (draining).
///
/// Its waker and phase sit under the queue's lock, beside the frames: an `Arc<Outbox>`
/// is then a 96-byte block (unit test), one per connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    metrics: Arc<RuntimeMetrics>,
}

impl Outbox {
    /// An empty queue.
    pub fn new(metrics: Arc<RuntimeMetrics>) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a writer panicked mid-push; the queue is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame under the slow-consumer rule (see [`SendQueue`]), the queue holding
    /// at most `limit` bytes. On [`Push::Overflow`] the connection has been killed.
    pub fn push(&self, frame: Frame, limit: usize) -> Push {
        let len = u64::try_from(frame.len()).unwrap_or(u64::MAX);
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let mut st = self.lock();
        let pushed = st.queue.push(frame, limit);
        if pushed.shed > 0 {
            self.metrics
                .outbound_shed
                .fetch_add(u64::from(pushed.shed), Ordering::Relaxed);
        }
        RuntimeMetrics::sub(&self.metrics.outbound_bytes, u64::from(pushed.shed_bytes));
        match pushed.push {
            Push::Queued => {
                // Counted before the lock goes, so the frame's taker (the connection's
                // task, on another thread) can only take it off the gauge after it was put
                // on: the gauge stops at zero, and a subtraction first would have left the
                // addition for good.
                self.metrics
                    .outbound_bytes
                    .fetch_add(len, Ordering::Relaxed);
                let waker = st.waker.take();
                drop(st);
                wake(waker);
            }
            Push::Overflow => {
                drop(st);
                self.kill();
                RuntimeMetrics::inc(&self.metrics.slow_consumer_closes);
            }
            Push::Shed | Push::Closed => {}
        }
        pushed.push
    }

    /// Asks the writer to send a close frame once everything queued before it is sent.
    pub fn close(&self, code: u16, reason: &str) {
        let mut st = self.lock();
        if st.queue.phase() != Phase::Open {
            return;
        }
        let waker = Self::end_with_close(&mut st, code, reason);
        drop(st);
        wake(waker);
    }

    /// Ends the queue with a close frame; returns the waker to wake once unlocked.
    fn end_with_close(st: &mut State, code: u16, reason: &str) -> Option<Waker> {
        st.queue.close();
        st.close = Some(Box::new((code, reason.to_owned())));
        st.waker.take()
    }

    /// Closes on what the peer is sending (a frame refused, a message over the budget or
    /// too slow): the close frame goes ahead of what is queued ([`Outbox::close_ahead`]).
    /// A peer busy writing a message reads nothing meanwhile, so a queue ahead of the close
    /// could outlast the time the close is given to leave, and the peer would never learn
    /// the code; what it loses it gets again as anyone does after a reconnect (a catch-up,
    /// an ack by its retry).
    pub fn refuse(&self, code: u16, reason: &str) {
        self.close_ahead(code, reason);
    }

    /// Answers the peer's close frame ahead of what is queued ([`Outbox::close_ahead`]):
    /// the peer has said it is leaving, and writing up to the queue limit to it first only
    /// delays the close it waits for.
    pub fn answer_close(&self, code: u16) {
        self.close_ahead(code, "");
    }

    /// What is still queued is dropped and the close frame goes next. A close of ours
    /// already asked for stays.
    fn close_ahead(&self, code: u16, reason: &str) {
        let mut st = self.lock();
        if st.queue.phase() != Phase::Open {
            return;
        }
        // Under one lock with the close, so nothing pushed meanwhile goes out before it.
        let bytes = st.queue.clear();
        let waker = Self::end_with_close(&mut st, code, reason);
        drop(st);
        RuntimeMetrics::sub(&self.metrics.outbound_bytes, u64::from(bytes));
        wake(waker);
    }

    /// Drops everything queued and tells the connection's tasks to drop the socket now.
    pub fn kill(&self) {
        let mut st = self.lock();
        let bytes = st.queue.kill();
        let waker = st.waker.take();
        drop(st);
        RuntimeMetrics::sub(&self.metrics.outbound_bytes, u64::from(bytes));
        wake(waker);
    }

    /// Where the connection is in its life.
    pub fn phase(&self) -> Phase {
        self.lock().queue.phase()
    }

    /// Wakes this waker at the next push, close or kill, and says whether the connection
    /// was killed already. Called first in each poll of the connection's task, before it
    /// looks at the queue, so that nothing pushed in between goes unnoticed.
    pub fn watch(&self, waker: &Waker) -> Phase {
        let mut st = self.lock();
        match &st.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => st.waker = Some(waker.clone()),
        }
        st.queue.phase()
    }

    /// The next thing to send, without waiting.
    pub fn try_next(&self) -> Option<Next> {
        let mut st = self.lock();
        if let Some(frame) = st.queue.pop() {
            drop(st);
            RuntimeMetrics::sub(
                &self.metrics.outbound_bytes,
                u64::try_from(frame.len()).unwrap_or(u64::MAX),
            );
            return Some(Next::Frame(frame));
        }
        // Drained: give the deque's buffer back (a busy connection pays one allocation per
        // drained burst, next to the write system call that burst costs anyway).
        st.queue.release_if_empty();
        if st.queue.phase() == Phase::Killed {
            return None;
        }
        st.close.take().map(|close| {
            let (code, reason) = *close;
            Next::Close(code, reason)
        })
    }

    /// Bytes queued now.
    pub fn bytes(&self) -> usize {
        self.lock().queue.bytes() as usize
    }
}

/// Wakes the connection's task, outside the queue's lock.
fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let bytes = self.lock().queue.bytes();
        RuntimeMetrics::sub(&self.metrics.outbound_bytes, u64::from(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartline_core::codec::socket::is_droppable;

    struct Limited(Outbox, usize);

    impl Limited {
        fn push(&self, frame: Frame) -> Push {
            self.0.push(frame, self.1)
        }
    }

    impl std::ops::Deref for Limited {
        type Target = Outbox;
        fn deref(&self) -> &Outbox {
            &self.0
        }
    }

    fn outbox(limit: usize) -> Limited {
        Limited(Outbox::new(Arc::new(RuntimeMetrics::default())), limit)
    }

    /// Every WebSocket has one, in an `Arc` (16 bytes of counts), and the allocator serves
    /// it from the next size class up (..., 80, 96, 112, 128, 160, ...).
    #[test]
    fn a_shared_outbox_fits_a_96_byte_block() {
        assert!(std::mem::size_of::<Outbox>() + 16 <= 96);
    }

    /// Frames pushed on one thread and taken on another: once all are taken, the gauge
    /// of queued bytes is back at zero.
    #[test]
    fn the_queued_bytes_gauge_returns_to_zero_under_a_concurrent_taker() {
        let metrics = Arc::new(RuntimeMetrics::default());
        let o = Arc::new(Outbox::new(metrics.clone()));
        const FRAMES: u64 = 200_000;
        let taker = {
            let o = o.clone();
            std::thread::spawn(move || {
                let mut taken = 0u64;
                while taken < FRAMES {
                    match o.try_next() {
                        Some(Next::Frame(_)) => taken += 1,
                        _ => std::hint::spin_loop(),
                    }
                }
            })
        };
        for _ in 0..FRAMES {
            assert_eq!(
                o.push(Frame::text("42/chat,[\"x\"]"), 1 << 30),
                Push::Queued
            );
        }
        taker.join().expect("the taker ends");
        assert_eq!(metrics.outbound_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn droppable_frames_are_recognised() {
        assert!(is_droppable(&Frame::text(
            "42/chat,[\"heartbeat\",{\"timestamp\":1}]"
        )));
        assert!(is_droppable(&Frame::text("42[\"user:online\",{}]")));
        assert!(!is_droppable(&Frame::text("42/chat,[\"message:new\",{}]")));
        assert!(!is_droppable(&Frame::text("42/chat,7[\"heartbeat\",{}]")));
        assert!(!is_droppable(&Frame::text("2")));
    }

    #[test]
    fn sheds_droppable_then_overflows() {
        let o = outbox(100);
        let hb = Frame::text(format!("42/chat,[\"heartbeat\",\"{}\"]", "x".repeat(40)));
        let msg = Frame::text(format!("42/chat,[\"message:new\",\"{}\"]", "y".repeat(40)));
        assert!(hb.len() < 100 && msg.len() < 100 && hb.len() + msg.len() > 100);
        assert_eq!(o.push(hb.clone()), Push::Queued);
        // Under the limit before it: taken, and the queue is over it now.
        assert_eq!(o.push(msg.clone()), Push::Queued);
        // A heartbeat meeting a full queue: shed.
        assert_eq!(o.push(hb.clone()), Push::Shed);
        // A message makes room by shedding the queued heartbeat.
        assert_eq!(o.push(msg.clone()), Push::Queued);
        assert_eq!(o.bytes(), 2 * msg.len());
        // Nothing left to shed: overflow kills the connection.
        assert_eq!(o.push(msg.clone()), Push::Overflow);
        assert_eq!(o.phase(), Phase::Killed);
        assert_eq!(o.bytes(), 0);
        assert_eq!(o.try_next(), None);
        assert_eq!(o.push(msg), Push::Closed);
        // Counted: the heartbeat shed on arrival and the one shed from the queue, one
        // slow consumer, and nothing left on the gauge.
        let m = &o.0.metrics;
        assert_eq!(m.outbound_shed.load(Ordering::Relaxed), 2);
        assert_eq!(m.slow_consumer_closes.load(Ordering::Relaxed), 1);
        assert_eq!(m.outbound_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn close_comes_after_queued_frames() {
        let o = outbox(1000);
        o.push(Frame::text("4a"));
        o.close(1000, "bye");
        assert_eq!(o.push(Frame::text("4b")), Push::Closed);
        assert_eq!(o.try_next(), Some(Next::Frame(Frame::text("4a"))));
        assert_eq!(o.try_next(), Some(Next::Close(1000, "bye".into())));
        assert_eq!(o.try_next(), None);
    }

    #[test]
    fn a_refusing_close_skips_the_queue_and_keeps_its_reason() {
        let o = outbox(1000);
        o.push(Frame::text("4a"));
        o.refuse(1009, "too big");
        assert_eq!(o.push(Frame::text("4b")), Push::Closed);
        assert_eq!(o.bytes(), 0);
        assert_eq!(o.metrics.outbound_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(o.try_next(), Some(Next::Close(1009, "too big".into())));
        assert_eq!(o.try_next(), None);
    }

    #[test]
    fn the_answer_to_a_peer_close_skips_the_queue() {
        let o = outbox(1000);
        o.push(Frame::text("4a"));
        o.push(Frame::text("4b"));
        o.answer_close(1001);
        assert_eq!(o.bytes(), 0);
        assert_eq!(o.metrics.outbound_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(o.phase(), Phase::Closing);
        assert_eq!(o.try_next(), Some(Next::Close(1001, String::new())));
        assert_eq!(o.try_next(), None);
        // A close of ours asked for first stays, with what was queued before it.
        let o = outbox(1000);
        o.push(Frame::text("4a"));
        o.close(1000, "bye");
        o.answer_close(1001);
        assert_eq!(o.try_next(), Some(Next::Frame(Frame::text("4a"))));
        assert_eq!(o.try_next(), Some(Next::Close(1000, "bye".into())));
    }

    #[test]
    fn a_drained_queue_gives_its_buffer_back() {
        let o = outbox(1000);
        for _ in 0..3 {
            o.push(Frame::text("4a"));
        }
        assert!(o.lock().queue.capacity() >= 3);
        while let Some(Next::Frame(_)) = o.try_next() {}
        assert_eq!(o.lock().queue.capacity(), 0);
        // Still a queue: later frames are delivered, in order.
        o.push(Frame::text("4b"));
        o.push(Frame::text("4c"));
        assert_eq!(o.try_next(), Some(Next::Frame(Frame::text("4b"))));
        assert_eq!(o.try_next(), Some(Next::Frame(Frame::text("4c"))));
        assert_eq!(o.try_next(), None);
    }
}
