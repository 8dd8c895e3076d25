//! A slow consumer loses only droppable frames, and costs the server a bounded queue.
//!
//! The contract bounds each connection's send queue (`server.max_outbound_bytes`): past it,
//! droppable traffic (`heartbeat`, presence) is shed first, then the connection is closed.
//! Watched from both ends of each honest link, not from the queue's own bookkeeping:
//!
//! - what the client reads is what the server wrote, in order, less droppable frames only:
//!   a message, an ack, a PING or a DISCONNECT that the server wrote and the client did
//!   not get, while later frames did arrive, is a violation at once;
//! - what the server holds for a link, queued and not yet on the wire, never exceeds the
//!   limit by more than the largest frame written on it (a queue takes a frame while it
//!   holds less than the limit).
//!
//! The droppable frames that went missing are handed back to the caller, so that the
//! presence checker can count a shed announcement as made to that connection but never
//! seen by it.

use std::collections::{BTreeMap, VecDeque};

use heartline_core::codec::socket::is_droppable;
use heartline_core::codec::Frame;

use super::Finding;
use crate::trace::short;

/// The checker's name.
pub const NAME: &str = "send-queue";

#[derive(Debug, Default)]
struct Link {
    /// Written by the server, not yet read by the client: each frame and whether it is
    /// droppable.
    unread: VecDeque<(Frame, bool)>,
    /// The largest frame written on the link.
    largest: u64,
}

/// What was written to each honest link and not yet read.
#[derive(Debug, Default)]
pub struct SendQueueCheck {
    links: BTreeMap<u64, Link>,
    /// Droppable frames written and never read on a link that went on (shed).
    pub shed: u64,
    /// Connections the server dropped as slow consumers.
    pub dropped: u64,
}

fn text(frame: &Frame) -> String {
    match frame.as_text() {
        Some(t) => short(t, 72),
        None => format!("<binary {}B>", frame.len()),
    }
}

impl SendQueueCheck {
    /// The server wrote `frame` on honest link `link`.
    pub fn written(&mut self, link: u64, frame: &Frame) {
        let l = self.links.entry(link).or_default();
        l.largest = l.largest.max(frame.len() as u64);
        l.unread.push_back((frame.clone(), is_droppable(frame)));
    }

    /// After a write, the server holds `queued` bytes for `link` under `limit`.
    pub fn holds(&self, link: u64, queued: u64, limit: u64) -> Finding {
        let largest = self.links.get(&link).map_or(0, |l| l.largest);
        if queued > limit.saturating_add(largest) {
            return Err((
                NAME,
                format!(
                    "the server holds {queued} bytes for ws{link}, over the limit of {limit} \
                     by more than its largest frame ({largest})"
                ),
            ));
        }
        Ok(())
    }

    /// The client of `link` read `frame`. Returns the droppable frames written before it
    /// that it never got (shed), oldest first.
    pub fn read(&mut self, link: u64, frame: &Frame) -> Result<Vec<Frame>, (&'static str, String)> {
        let Some(l) = self.links.get_mut(&link) else {
            return Err((
                NAME,
                format!("ws{link} read {} that the server never wrote", text(frame)),
            ));
        };
        let mut shed = Vec::new();
        while let Some((front, droppable)) = l.unread.pop_front() {
            if &front == frame {
                self.shed += shed.len() as u64;
                return Ok(shed);
            }
            if !droppable {
                return Err((
                    NAME,
                    format!(
                        "ws{link} read {} but never got {}, written before it",
                        text(frame),
                        text(&front)
                    ),
                ));
            }
            shed.push(front);
        }
        Err((
            NAME,
            format!(
                "ws{link} read {}, which the server did not write (or not since what came before it)",
                text(frame)
            ),
        ))
    }

    /// The run is quiet: of what was written to `link` and is still unread, only
    /// `in_flight` (on the wire or queued, oldest first) may still arrive; the rest was
    /// shed. Returns the shed frames and forgets them; a frame that is not droppable among
    /// them is a violation.
    pub fn settled(
        &mut self,
        link: u64,
        in_flight: &[Frame],
    ) -> Result<Vec<Frame>, (&'static str, String)> {
        let Some(l) = self.links.get_mut(&link) else {
            return Ok(Vec::new());
        };
        let mut coming = in_flight.iter().peekable();
        let mut kept = VecDeque::new();
        let mut shed = Vec::new();
        for (frame, droppable) in l.unread.drain(..) {
            if coming.peek() == Some(&&frame) {
                coming.next();
                kept.push_back((frame, droppable));
            } else if droppable {
                shed.push(frame);
            } else {
                return Err((
                    NAME,
                    format!(
                        "ws{link} never got {}, though the run has gone quiet",
                        text(&frame)
                    ),
                ));
            }
        }
        l.unread = kept;
        self.shed += shed.len() as u64;
        Ok(shed)
    }

    /// The server dropped `link` as a slow consumer (what was on the wire still arrives,
    /// then the reset).
    pub fn dropped(&mut self) {
        self.dropped += 1;
    }

    /// `link` is gone at the client's end (what was in flight went with it).
    pub fn closed(&mut self, link: u64) {
        self.links.remove(&link);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Frame {
        Frame::text(s)
    }

    const HB: &str = r#"42/chat,["heartbeat",{"timestamp":1}]"#;
    const ON: &str = r#"42/chat,["user:online",{"userId":"u1","userType":"customer"}]"#;
    const MSG: &str = r#"42/chat,["message:new",{"seq":1}]"#;
    const MSG2: &str = r#"42/chat,["message:new",{"seq":2}]"#;

    #[test]
    fn droppable_frames_may_go_missing_others_may_not() {
        let mut check = SendQueueCheck::default();
        for s in [HB, ON, MSG, MSG2] {
            check.written(1, &f(s));
        }
        // The heartbeat and the presence frame were shed: handed back.
        assert_eq!(check.read(1, &f(MSG)), Ok(vec![f(HB), f(ON)]));
        assert_eq!(check.shed, 2);
        assert_eq!(check.read(1, &f(MSG2)), Ok(vec![]));
        // A message that went missing while a later one arrived.
        check.written(2, &f(MSG));
        check.written(2, &f(MSG2));
        assert!(check.read(2, &f(MSG2)).is_err());
        // A frame the server never wrote.
        assert!(check.read(3, &f(MSG)).is_err());
    }

    #[test]
    fn at_quiet_only_droppable_frames_may_be_left() {
        let mut check = SendQueueCheck::default();
        check.written(1, &f(MSG));
        check.written(1, &f(HB));
        assert_eq!(check.read(1, &f(MSG)), Ok(vec![]));
        assert_eq!(check.settled(1, &[]), Ok(vec![f(HB)]));
        check.written(2, &f(MSG));
        assert!(check.settled(2, &[]).is_err());
        // Still on its way: not shed, and it may be read later.
        assert_eq!(check.settled(2, &[f(MSG)]), Ok(vec![]));
        check.written(4, &f(HB));
        check.written(4, &f(ON));
        check.written(4, &f(MSG));
        assert_eq!(check.settled(4, &[f(MSG)]), Ok(vec![f(HB), f(ON)]));
        assert_eq!(check.read(4, &f(MSG)), Ok(vec![]));
        // A closed link is forgotten.
        check.written(3, &f(MSG));
        check.closed(3);
        assert_eq!(check.settled(3, &[]), Ok(vec![]));
    }

    #[test]
    fn the_queue_may_exceed_its_limit_by_one_frame_only() {
        let mut check = SendQueueCheck::default();
        check.written(1, &f(MSG));
        let largest = MSG.len() as u64;
        assert!(check.holds(1, 100 + largest, 100).is_ok());
        assert!(check.holds(1, 101 + largest, 100).is_err());
    }
}
