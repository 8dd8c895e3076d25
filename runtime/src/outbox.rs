//! A WebSocket's send queue, bounded in bytes: the slow-consumer policy.
//!
//! The actor that runs the core must never wait for a client, so it hands frames to a
//! per-connection queue and a writer task drains it onto the socket. A client that reads
//! slower than it is written to would make that queue grow without bound, so the queue
//! holds at most `server.max_outbound_bytes`:
//!
//! 1. A frame is queued while the queue holds less than the limit, however large the frame
//!    (a high-water mark): one step of the core can hand a connection several frames at
//!    once (a send's ack, its `message:sent` and its `message:new`, or one large reply),
//!    and a client that reads as fast as it can is not a slow consumer because they
//!    crossed the limit together before its writer could take the first.
//! 2. Into a queue at or over the limit, a frame first makes room by shedding droppable
//!    traffic: the periodic `heartbeat` event and presence (`user:online` /
//!    `user:offline`) events, which carry no state a client cannot live without: the next
//!    heartbeat comes, and a shed presence event leaves that client's view of the user
//!    stale until the user's next transition, as it is for a client that was away when
//!    the transition happened (presence is announced as transitions only, no snapshot on
//!    connect). A droppable frame meeting a full queue is itself shed.
//! 3. If the queue is still at or over the limit, the consumer is hopeless: the queue is
//!    discarded and the connection killed (the socket is dropped; a close frame could not
//!    reach a peer that does not read). The core is told the transport failed, and the
//!    client, which sees a transport error, reconnects and catches up from the store.
//!
//! Memory per connection is therefore bounded by the limit plus one frame in the queue
//! and one in the writer's hands, and the total is exported as
//! `heartline_outbound_queue_bytes`.
//!
//! The connection has one task, which both reads and writes; every push, close or kill wakes
//! it through one registered waker. An idle connection's queue is a mutex, an empty deque,
//! a phase byte and that waker: with tens of thousands of idle connections, each byte here
//! counts.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use heartline_core::codec::Frame;

use crate::metrics::RuntimeMetrics;

/// What became of a pushed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued for the writer.
    Queued,
    /// Droppable and no room: dropped.
    Shed,
    /// No room even after shedding: the connection has been killed.
    Overflow,
    /// The connection is closing or gone: dropped.
    Closed,
}

/// What the writer should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send this frame.
    Frame(Frame),
    /// Send a close frame with this code and reason, then stop.
    Close(u16, String),
}

/// Where a connection is in its life, as its task sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Sending and receiving.
    #[default]
    Open,
    /// A close was asked for; the task lingers a little for the peer's close.
    Closing,
    /// Drop the socket now.
    Killed,
}

#[derive(Debug)]
struct Queued {
    frame: Frame,
    droppable: bool,
}

impl Queued {
    fn len(&self) -> u32 {
        u32::try_from(self.frame.len()).unwrap_or(u32::MAX)
    }
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Queued>,
    /// The connection's task, woken at the next push, close or kill. Taken when woken;
    /// the task registers again when it polls.
    waker: Option<Waker>,
    /// The close frame asked for. Boxed: it is needed once, at the end, and inline it
    /// would put every connection's outbox in a larger allocation.
    close: Option<Box<(u16, String)>>,
    /// Bytes in `frames`. A connection's queue is limited to far less than 4 GiB.
    bytes: u32,
    /// A close was requested or the connection was killed: accept nothing more.
    ended: bool,
    phase: Phase,
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

    /// Queues a frame under the slow-consumer policy (see the module docs), the queue
    /// holding at most `limit` bytes.
    pub fn push(&self, frame: Frame, limit: usize) -> Push {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let droppable = is_droppable(&frame);
        let mut st = self.lock();
        if st.ended {
            return Push::Closed;
        }
        // Taken while the queue is under the limit, however large (an empty queue takes
        // one even with a limit of 0): see the module docs.
        if !st.frames.is_empty() && u64::from(st.bytes) >= limit {
            if droppable {
                RuntimeMetrics::inc(&self.metrics.outbound_shed);
                return Push::Shed;
            }
            let mut shed_bytes = 0u32;
            let mut shed = 0u64;
            st.frames.retain(|q| {
                if q.droppable {
                    shed_bytes += q.len();
                    shed += 1;
                    false
                } else {
                    true
                }
            });
            st.bytes -= shed_bytes;
            RuntimeMetrics::sub(&self.metrics.outbound_bytes, u64::from(shed_bytes));
            self.metrics
                .outbound_shed
                .fetch_add(shed, Ordering::Relaxed);
            if !st.frames.is_empty() && u64::from(st.bytes) >= limit {
                drop(st);
                self.kill();
                RuntimeMetrics::inc(&self.metrics.slow_consumer_closes);
                return Push::Overflow;
            }
        }
        st.bytes += len;
        st.frames.push_back(Queued { frame, droppable });
        // Counted before the lock goes, so the frame's taker (the connection's task, on
        // another thread) can only take it off the gauge after it was put on: the gauge
        // stops at zero, and a subtraction first would have left the addition for good.
        self.metrics
            .outbound_bytes
            .fetch_add(u64::from(len), Ordering::Relaxed);
        let waker = st.waker.take();
        drop(st);
        wake(waker);
        Push::Queued
    }

    /// Asks the writer to send a close frame once everything queued before it is sent.
    pub fn close(&self, code: u16, reason: &str) {
        let mut st = self.lock();
        if st.ended {
            return;
        }
        let waker = Self::end_with_close(&mut st, code, reason);
        drop(st);
        wake(waker);
    }

    /// Ends the queue with a close frame; returns the waker to wake once unlocked.
    fn end_with_close(st: &mut State, code: u16, reason: &str) -> Option<Waker> {
        st.ended = true;
        st.close = Some(Box::new((code, reason.to_owned())));
        // Open becomes Closing; Killed stays Killed.
        if st.phase == Phase::Open {
            st.phase = Phase::Closing;
        }
        st.waker.take()
    }

    /// Answers the peer's close frame: what is still queued is dropped (the peer has said
    /// it is leaving; writing up to the queue limit to it first only delays the close it
    /// waits for) and the close frame goes next. A close of ours already asked for stays.
    pub fn answer_close(&self, code: u16) {
        let mut st = self.lock();
        if st.ended {
            return;
        }
        // Under one lock with the close, so nothing pushed meanwhile goes out before it.
        let bytes = std::mem::take(&mut st.bytes);
        st.frames = VecDeque::new();
        let waker = Self::end_with_close(&mut st, code, "");
        drop(st);
        RuntimeMetrics::sub(&self.metrics.outbound_bytes, u64::from(bytes));
        wake(waker);
    }

    /// Drops everything queued and tells the connection's tasks to drop the socket now.
    pub fn kill(&self) {
        let mut st = self.lock();
        st.ended = true;
        let bytes = std::mem::take(&mut st.bytes);
        st.frames.clear();
        st.phase = Phase::Killed;
        let waker = st.waker.take();
        drop(st);
        RuntimeMetrics::sub(&self.metrics.outbound_bytes, u64::from(bytes));
        wake(waker);
    }

    /// Where the connection is in its life.
    pub fn phase(&self) -> Phase {
        self.lock().phase
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
        st.phase
    }

    /// The next thing to send, without waiting.
    pub fn try_next(&self) -> Option<Next> {
        let mut st = self.lock();
        if let Some(q) = st.frames.pop_front() {
            st.bytes -= q.len();
            drop(st);
            RuntimeMetrics::sub(&self.metrics.outbound_bytes, u64::from(q.len()));
            return Some(Next::Frame(q.frame));
        }
        // Drained: give the deque's buffer back. Idle connections far outnumber busy ones,
        // and each would otherwise keep room for the most frames it ever had queued (192
        // bytes for the first four). A busy connection pays one allocation per drained
        // burst, next to the write system call that burst costs anyway.
        if st.frames.capacity() > 0 {
            st.frames = VecDeque::new();
        }
        st.close.take().map(|close| {
            let (code, reason) = *close;
            Next::Close(code, reason)
        })
    }

    /// Bytes queued now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes as usize
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
        let bytes = self.lock().bytes;
        RuntimeMetrics::sub(&self.metrics.outbound_bytes, u64::from(bytes));
    }
}

pub use heartline_core::codec::socket::is_droppable;

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(o.push(msg), Push::Overflow);
        assert_eq!(o.phase(), Phase::Killed);
        assert_eq!(o.bytes(), 0);
        assert_eq!(o.try_next(), None);
    }

    /// A send's ack, its `message:sent` and its `message:new` come in one step: together
    /// over the limit, each pushed while the queue was under it, they are all taken; the
    /// next frame, if none was written meanwhile, meets the full queue.
    #[test]
    fn a_burst_that_crosses_the_limit_is_taken_and_the_next_frame_meets_it() {
        let o = outbox(100);
        let frame = Frame::text(format!("42/chat,[\"message:new\",\"{}\"]", "m".repeat(19)));
        assert_eq!(frame.len(), 45);
        for _ in 0..3 {
            assert_eq!(o.push(frame.clone()), Push::Queued);
        }
        assert_eq!(o.bytes(), 135);
        assert_eq!(o.push(frame.clone()), Push::Overflow);
        assert_eq!(o.phase(), Phase::Killed);
        // Had the writer taken one, the queue (90 bytes) would have taken the next.
        let o = outbox(100);
        for _ in 0..3 {
            o.push(frame.clone());
        }
        assert_eq!(o.try_next(), Some(Next::Frame(frame.clone())));
        assert_eq!(o.push(frame), Push::Queued);
    }

    #[test]
    fn one_frame_larger_than_the_limit_is_taken_into_an_empty_queue() {
        let o = outbox(100);
        let big = Frame::text(format!("43/chat,1[\"{}\"]", "z".repeat(500)));
        assert_eq!(o.push(big.clone()), Push::Queued);
        assert_eq!(o.try_next(), Some(Next::Frame(big.clone())));
        // Taken by the writer: the queue is empty again, and takes the next one too.
        assert_eq!(o.push(big.clone()), Push::Queued);
        // Behind it, the limit holds as before.
        assert_eq!(o.push(big), Push::Overflow);
        assert_eq!(o.phase(), Phase::Killed);
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
        assert!(o.lock().frames.capacity() >= 3);
        while let Some(Next::Frame(_)) = o.try_next() {}
        assert_eq!(o.lock().frames.capacity(), 0);
        // Still a queue: later frames are delivered, in order.
        o.push(Frame::text("4b"));
        o.push(Frame::text("4c"));
        assert_eq!(o.try_next(), Some(Next::Frame(Frame::text("4b"))));
        assert_eq!(o.try_next(), Some(Next::Frame(Frame::text("4c"))));
        assert_eq!(o.try_next(), None);
    }
}
