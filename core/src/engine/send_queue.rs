//! A connection's send queue, bounded in bytes: the slow-consumer rule, in one place.
//!
//! The server must never wait for a client, so what it sends a connection waits in a queue
//! until the client takes it (a WebSocket's writer, a polling client's next GET). A client
//! that reads slower than it is written to would make that queue grow without bound, so
//! `server.max_outbound_bytes` bounds it:
//!
//! 1. A frame is taken while the queue holds less than the limit, however large the frame
//!    (a high-water mark): one step of the server can hand a connection several frames at
//!    once (a send's ack, its `message:sent` and its `message:new`, or one large reply),
//!    and a client that reads as fast as it can is not a slow consumer because they
//!    crossed the limit together before the first could be taken.
//! 2. Into a queue at or over the limit, a frame first makes room by shedding droppable
//!    traffic ([`is_droppable`]: the `heartbeat` event and presence), which carries no
//!    state a client cannot live without. A droppable frame meeting a full queue is itself
//!    shed.
//! 3. If the queue is still at or over the limit, the consumer is hopeless: [`Push::Overflow`],
//!    and the caller ends the connection. Its client reconnects and catches up from the
//!    store, which is where every message it missed is.
//!
//! One type serves the engine's polling buffers, the runtime's WebSocket queues and the
//! simulator's model of them, so the rule the simulator checks under faults is the rule
//! the server runs. Its size matters: every idle WebSocket holds one (40 bytes: the
//! deque, the byte count and the [`Phase`]).

use std::collections::VecDeque;

use crate::codec::socket::is_droppable;
use crate::codec::Frame;

/// What became of a pushed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// Droppable and no room: dropped.
    Shed,
    /// No room even after shedding: the connection must end. Nothing was queued; what was
    /// queued before stays, less what was shed.
    Overflow,
    /// The queue has ended (closing or killed): dropped.
    Closed,
}

/// A push's outcome and what it shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// What became of the frame.
    pub push: Push,
    /// Droppable frames shed by this push, the pushed frame included when it was shed.
    pub shed: u32,
    /// Bytes of the frames taken out of the queue to make room (not the pushed frame's).
    pub shed_bytes: u32,
}

/// Where the queue's connection is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Taking frames.
    #[default]
    Open,
    /// A close was asked for: nothing more is taken; what is queued still goes out.
    Closing,
    /// The connection is being dropped: nothing is taken and nothing goes out.
    Killed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    frame: Frame,
    droppable: bool,
}

impl Entry {
    fn len(&self) -> u32 {
        frame_len(&self.frame)
    }
}

/// A frame's length as the queue counts it: a queue is limited to far less than 4 GiB.
fn frame_len(frame: &Frame) -> u32 {
    u32::try_from(frame.len()).unwrap_or(u32::MAX)
}

// MUTATION (test-only): a full queue sheds whatever it holds, not only droppable frames.
// A per-thread switch rather than a field, so that the queue's size stays what every idle
// connection pays. `Engine::new` sets it from `EngineConfig::mutations` for its thread,
// where the simulator (one thread) and the runtime's actor push to the queues.
#[cfg(feature = "mutations")]
thread_local! {
    static SHEDS_ANYTHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Switches the deliberate bug "a full queue sheds anything" on or off for this thread.
#[cfg(feature = "mutations")]
pub fn mutate_sheds_anything(on: bool) {
    SHEDS_ANYTHING.with(|c| c.set(on));
}

fn sheds_anything() -> bool {
    #[cfg(feature = "mutations")]
    return SHEDS_ANYTHING.with(std::cell::Cell::get);
    #[cfg(not(feature = "mutations"))]
    false
}

/// One connection's send queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendQueue {
    frames: VecDeque<Entry>,
    bytes: u32,
    phase: Phase,
}

impl SendQueue {
    /// An empty, open queue.
    pub fn new() -> Self {
        SendQueue::default()
    }

    /// Queues `frame` under the slow-consumer rule (module docs), the queue holding at most
    /// `limit` bytes.
    pub fn push(&mut self, frame: Frame, limit: u64) -> Pushed {
        let mut out = Pushed {
            push: Push::Queued,
            shed: 0,
            shed_bytes: 0,
        };
        if self.phase != Phase::Open {
            out.push = Push::Closed;
            return out;
        }
        let droppable = is_droppable(&frame);
        if self.full(limit) {
            if droppable {
                out.push = Push::Shed;
                out.shed = 1;
                return out;
            }
            let anything = sheds_anything();
            self.frames.retain(|e| {
                if e.droppable || anything {
                    out.shed += 1;
                    out.shed_bytes = out.shed_bytes.saturating_add(e.len());
                    false
                } else {
                    true
                }
            });
            self.bytes = self.bytes.saturating_sub(out.shed_bytes);
            if self.full(limit) {
                out.push = Push::Overflow;
                return out;
            }
        }
        self.bytes = self.bytes.saturating_add(frame_len(&frame));
        self.frames.push_back(Entry { frame, droppable });
        out
    }

    /// Queues `frame` whatever the limit: the last word of an ending connection (an
    /// Engine.IO CLOSE or NOOP), which must reach the client if anything does. Taken even
    /// by a closing queue, not by a killed one.
    pub fn push_last(&mut self, frame: Frame) {
        if self.phase == Phase::Killed {
            return;
        }
        self.bytes = self.bytes.saturating_add(frame_len(&frame));
        let droppable = is_droppable(&frame);
        self.frames.push_back(Entry { frame, droppable });
    }

    /// Whether a frame pushed now would meet a full queue: something is queued and the
    /// queue holds `limit` bytes or more.
    fn full(&self, limit: u64) -> bool {
        !self.frames.is_empty() && u64::from(self.bytes) >= limit
    }

    /// Takes the oldest frame.
    pub fn pop(&mut self) -> Option<Frame> {
        let e = self.frames.pop_front()?;
        self.bytes = self.bytes.saturating_sub(e.len());
        Some(e.frame)
    }

    /// The newest frame.
    pub fn last(&self) -> Option<&Frame> {
        self.frames.back().map(|e| &e.frame)
    }

    /// Drops everything queued; returns the bytes dropped. The phase stays.
    pub fn clear(&mut self) -> u32 {
        self.frames = VecDeque::new();
        std::mem::take(&mut self.bytes)
    }

    /// Asks for a close: nothing more is taken, what is queued still goes out. Returns
    /// whether the queue was open.
    pub fn close(&mut self) -> bool {
        let open = self.phase == Phase::Open;
        if open {
            self.phase = Phase::Closing;
        }
        open
    }

    /// Kills the queue: everything queued is dropped and nothing more is taken. Returns
    /// the bytes dropped.
    pub fn kill(&mut self) -> u32 {
        self.phase = Phase::Killed;
        self.clear()
    }

    /// Gives the deque's buffer back once it is empty. Idle connections far outnumber busy
    /// ones, and each would otherwise keep room for the most frames it ever had queued.
    pub fn release_if_empty(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 0 {
            self.frames = VecDeque::new();
        }
    }

    /// Where the queue is in its life.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Bytes queued.
    pub fn bytes(&self) -> u32 {
        self.bytes
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Frames the queue has room for without allocating.
    pub fn capacity(&self) -> usize {
        self.frames.capacity()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The queued frames, oldest first.
    pub fn frames(&self) -> impl Iterator<Item = &Frame> {
        self.frames.iter().map(|e| &e.frame)
    }

    /// Every queued frame, oldest first, the queue given up.
    pub fn into_frames(self) -> impl Iterator<Item = Frame> {
        self.frames.into_iter().map(|e| e.frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb() -> Frame {
        Frame::text(format!("42/chat,[\"heartbeat\",\"{}\"]", "x".repeat(40)))
    }

    fn msg() -> Frame {
        Frame::text(format!("42/chat,[\"message:new\",\"{}\"]", "y".repeat(40)))
    }

    fn push(q: &mut SendQueue, frame: Frame) -> Push {
        q.push(frame, 100).push
    }

    #[test]
    fn an_idle_connection_pays_forty_bytes() {
        assert_eq!(std::mem::size_of::<SendQueue>(), 40);
    }

    #[test]
    fn sheds_droppable_then_overflows() {
        let mut q = SendQueue::new();
        assert!(hb().len() < 100 && msg().len() < 100 && hb().len() + msg().len() > 100);
        assert_eq!(push(&mut q, hb()), Push::Queued);
        // Under the limit before it: taken, and the queue is over it now.
        assert_eq!(push(&mut q, msg()), Push::Queued);
        // A heartbeat meeting a full queue: shed.
        let shed = q.push(hb(), 100);
        assert_eq!((shed.push, shed.shed, shed.shed_bytes), (Push::Shed, 1, 0));
        // A message makes room by shedding the queued heartbeat.
        let made_room = q.push(msg(), 100);
        assert_eq!(made_room.push, Push::Queued);
        assert_eq!(made_room.shed, 1);
        assert_eq!(made_room.shed_bytes as usize, hb().len());
        assert_eq!(q.bytes() as usize, 2 * msg().len());
        // Nothing left to shed: overflow, and what was queued stays for the caller.
        assert_eq!(push(&mut q, msg()), Push::Overflow);
        assert_eq!(q.len(), 2);
        assert_eq!(q.kill() as usize, 2 * msg().len());
        assert_eq!(q.phase(), Phase::Killed);
        assert_eq!((q.bytes(), q.pop()), (0, None));
        assert_eq!(push(&mut q, msg()), Push::Closed);
    }

    /// One step's frames cross the limit together; the next frame, if none was taken
    /// meanwhile, meets the full queue.
    #[test]
    fn a_burst_that_crosses_the_limit_is_taken_and_the_next_frame_meets_it() {
        let frame = Frame::text(format!("42/chat,[\"message:new\",\"{}\"]", "m".repeat(19)));
        assert_eq!(frame.len(), 45);
        let mut q = SendQueue::new();
        for _ in 0..3 {
            assert_eq!(push(&mut q, frame.clone()), Push::Queued);
        }
        assert_eq!(q.bytes(), 135);
        assert_eq!(push(&mut q, frame.clone()), Push::Overflow);
        // Had one been taken, the queue (90 bytes) would have taken the next.
        assert_eq!(q.pop(), Some(frame.clone()));
        assert_eq!(push(&mut q, frame), Push::Queued);
    }

    #[test]
    fn one_frame_larger_than_the_limit_is_taken_into_an_empty_queue() {
        let big = Frame::text(format!("43/chat,1[\"{}\"]", "z".repeat(500)));
        let mut q = SendQueue::new();
        assert_eq!(push(&mut q, big.clone()), Push::Queued);
        assert_eq!(q.pop(), Some(big.clone()));
        assert_eq!(push(&mut q, big.clone()), Push::Queued);
        assert_eq!(push(&mut q, big), Push::Overflow);
        // A limit of 0 still takes one frame into an empty queue.
        let mut q = SendQueue::new();
        assert_eq!(q.push(msg(), 0).push, Push::Queued);
        assert_eq!(q.push(msg(), 0).push, Push::Overflow);
    }

    #[test]
    fn a_closing_queue_takes_nothing_but_its_last_word_and_keeps_what_it_has() {
        let mut q = SendQueue::new();
        push(&mut q, msg());
        assert!(q.close());
        assert!(!q.close());
        assert_eq!(push(&mut q, msg()), Push::Closed);
        q.push_last(Frame::text("1"));
        assert_eq!(q.len(), 2);
        assert_eq!(q.last(), Some(&Frame::text("1")));
        assert_eq!(q.pop(), Some(msg()));
        assert_eq!(q.pop(), Some(Frame::text("1")));
        assert_eq!(q.bytes(), 0);
        q.kill();
        q.push_last(Frame::text("1"));
        assert!(q.is_empty());
    }

    #[test]
    fn byte_count_follows_every_operation() {
        let mut q = SendQueue::new();
        let frames = [hb(), msg(), hb(), msg(), msg(), hb()];
        for f in &frames {
            q.push(f.clone(), 1_000);
        }
        let sum = |q: &SendQueue| q.frames().map(Frame::len).sum::<usize>();
        assert_eq!(q.bytes() as usize, sum(&q));
        q.pop();
        assert_eq!(q.bytes() as usize, sum(&q));
        // Over a limit the queue now exceeds: the queued heartbeats go.
        let r = q.push(msg(), 10);
        assert_eq!((r.push, r.shed), (Push::Overflow, 2));
        assert_eq!(q.bytes() as usize, sum(&q));
        assert_eq!(q.clear() as usize, 3 * msg().len());
        q.release_if_empty();
        assert_eq!((q.bytes(), q.len()), (0, 0));
        let all: Vec<Frame> = {
            let mut q = SendQueue::new();
            q.push(msg(), 1_000);
            q.push(hb(), 1_000);
            q.into_frames().collect()
        };
        assert_eq!(all, vec![msg(), hb()]);
    }
}
