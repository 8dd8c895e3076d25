//! The network: ordered connections with latency, jitter and faults.
//!
//! Each connection (link) keeps TCP's promise: within one direction, segments arrive in
//! the order they were sent, never duplicated, never with a gap. Faults change *when*
//! they arrive (latency, jitter, spikes, clogs, partitions, a reader that stops reading)
//! or end the connection (a reset both sides see, a half-open connection one side never
//! hears about again). A partition is silent: no FIN crosses it; what was sent waits and
//! arrives after the heal, unless the connection has died in the meantime.
//!
//! Every direction of a link has at most one delivery armed on the agenda at a time, at
//! the time its front segment is due; delivering re-arms for the next one. A blocked
//! direction is not armed; unblocking re-arms it.
//!
//! The server's end of each link has a send queue, the core's [`SendQueue`] under the
//! slow-consumer rule, as the runtime's WebSocket has: frames leave it for the wire while
//! what the client has not read yet (the socket's buffers, [`Net::window`] bytes) has room.
//! A client that stops reading, or a path that stalls, fills the window first and then the
//! queue, which sheds droppable frames and, past its limit, tells the server to drop the
//! connection, as the runtime does.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use heartline_core::codec::Frame;
use heartline_core::engine::send_queue::{Pushed, SendQueue};
use heartline_core::{Instant, Rng};

use crate::agenda::{Agenda, Ev};

/// Who holds the client end of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    /// An honest client.
    Client(usize),
    /// A hostile actor.
    Raw(usize),
}

/// What travels on a link.
#[derive(Clone, Debug, PartialEq)]
pub enum Seg {
    /// Towards the server: the connection request. Towards the client: it was accepted.
    Open,
    /// A WebSocket message.
    Frame(Frame),
    /// The sender closed (`error`: reset rather than an orderly close).
    Fin {
        /// A reset.
        error: bool,
    },
    /// Towards the server: a polling request, the only one on its link.
    Request {
        /// A POST (sends `body`); else a GET (receives, or opens a session without `sid`).
        post: bool,
        /// The session, once the handshake has named it.
        sid: Option<String>,
        /// A POST's payload: packets joined by `\x1e`.
        body: bytes::Bytes,
    },
    /// Towards the client: the answer to the request on the link; the server closes the
    /// link behind it.
    Response {
        /// HTTP status.
        status: u16,
        /// The body: a polling payload, `ok`, or an error.
        body: bytes::Bytes,
    },
}

#[derive(Debug, Default)]
struct Dir {
    queue: VecDeque<(Instant, Seg)>,
    last_at: Instant,
    armed: Option<Instant>,
    /// Bytes of the frames in `queue`: sent, not yet read.
    unread: u64,
}

impl Dir {
    fn push(&mut self, at: Instant, seg: Seg) {
        if let Seg::Frame(f) = &seg {
            self.unread += f.len() as u64;
        }
        self.queue.push_back((at, seg));
    }

    fn pop(&mut self) -> Option<(Instant, Seg)> {
        let (at, seg) = self.queue.pop_front()?;
        if let Seg::Frame(f) = &seg {
            self.unread = self.unread.saturating_sub(f.len() as u64);
        }
        Some((at, seg))
    }

    /// Drops everything in flight; returns how many segments went.
    fn clear(&mut self) -> u64 {
        let n = self.queue.len() as u64;
        self.queue.clear();
        self.unread = 0;
        n
    }
}

/// One connection.
#[derive(Debug)]
pub struct Link {
    /// The client end.
    pub end: End,
    /// Server incarnation that accepted it (set when the open arrives).
    pub epoch: Option<u32>,
    /// The client still has the socket.
    pub client_open: bool,
    /// The server still has the socket.
    pub server_open: bool,
    /// Dead without a close: everything sent on it vanishes.
    pub black_hole: bool,
    /// The server's host already answered this link with a reset.
    pub reset_sent: bool,
    /// The server was told that the client's close is already in hand behind frames.
    pub closing_told: bool,
    /// An HTTP connection carrying one polling request, not a WebSocket.
    pub http: bool,
    /// A polling device's WebSocket, opened to upgrade its session (its `sid`): the
    /// checkers that read one connection's frames from its start leave it alone.
    pub upgrade_sid: Option<String>,
    /// The session a polling request names, as the server read it.
    pub request_sid: Option<String>,
    /// The server's send queue: frames waiting for room in the window.
    outbox: SendQueue,
    /// The server's close (a FIN, or a reset for a dropped connection), sent once the
    /// queue ahead of it is empty.
    fin_after: Option<Seg>,
    to_server: Dir,
    to_client: Dir,
}

impl Link {
    /// Whether the checkers that read one connection's frames from its start watch this
    /// link: a WebSocket, not one that took over a polling session.
    pub fn watched(&self) -> bool {
        self.upgrade_sid.is_none()
    }
}

/// Per-client path faults.
#[derive(Debug, Default, Clone, Copy)]
struct Path {
    /// Both directions stalled until then (partition or clog).
    blocked_until: Instant,
    /// Server-to-client stalled until then (the client stopped reading).
    unread_until: Instant,
}

/// The network.
#[derive(Debug, Default)]
pub struct Net {
    links: BTreeMap<u64, Link>,
    by_client: BTreeMap<usize, BTreeSet<u64>>,
    paths: BTreeMap<usize, Path>,
    next_link: u64,
    /// One-way latency.
    pub latency_ms: u64,
    /// Jitter on top.
    pub jitter_ms: u64,
    /// Extra latency during a spike.
    pub spike_ms: u64,
    /// Segments that vanished (half-open links, dead servers).
    pub lost: u64,
    /// Bytes a link holds sent but not yet read by its client, before the server's frames
    /// wait in its send queue.
    pub window: u64,
}

impl Net {
    /// A network with the given latency, whose links hold `window` bytes unread.
    pub fn new(latency_ms: u64, jitter_ms: u64, window: u64) -> Self {
        Net {
            latency_ms,
            jitter_ms,
            next_link: 1,
            window,
            ..Net::default()
        }
    }

    /// A new link from `end`, with the open request on its way to the server.
    pub fn open(&mut self, now: Instant, end: End, rng: &mut Rng, agenda: &mut Agenda) -> u64 {
        let id = self.next_link;
        self.next_link += 1;
        self.links.insert(
            id,
            Link {
                end,
                epoch: None,
                client_open: true,
                server_open: false,
                black_hole: false,
                reset_sent: false,
                closing_told: false,
                http: false,
                upgrade_sid: None,
                request_sid: None,
                outbox: SendQueue::new(),
                fin_after: None,
                to_server: Dir::default(),
                to_client: Dir::default(),
            },
        );
        if let End::Client(c) = end {
            self.by_client.entry(c).or_default().insert(id);
        }
        self.send(now, id, true, Seg::Open, rng, agenda);
        id
    }

    /// A link.
    pub fn link(&self, id: u64) -> Option<&Link> {
        self.links.get(&id)
    }

    /// A link, mutably.
    pub fn link_mut(&mut self, id: u64) -> Option<&mut Link> {
        self.links.get_mut(&id)
    }

    /// Every link id, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.links.keys().copied().collect()
    }

    /// Links of one honest client, ascending.
    pub fn links_of(&self, client: usize) -> Vec<u64> {
        self.by_client
            .get(&client)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Links alive at either end.
    pub fn live_links(&self) -> usize {
        self.links.len()
    }

    fn blocked(&self, now: Instant, end: End, to_server: bool) -> Option<Instant> {
        let End::Client(c) = end else { return None };
        let p = self.paths.get(&c)?;
        let mut until = p.blocked_until;
        if !to_server {
            until = until.max(p.unread_until);
        }
        (until > now).then_some(until)
    }

    /// Puts a segment on its way. Nothing happens on a black hole.
    pub fn send(
        &mut self,
        now: Instant,
        id: u64,
        to_server: bool,
        seg: Seg,
        rng: &mut Rng,
        agenda: &mut Agenda,
    ) {
        let delay = self.latency_ms + rng.below(self.jitter_ms + 1) + self.spike_ms;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        if link.black_hole {
            self.lost += 1;
            return;
        }
        let dir = if to_server {
            &mut link.to_server
        } else {
            &mut link.to_client
        };
        let at = now.add_ms(delay).max(dir.last_at);
        dir.last_at = at;
        dir.push(at, seg);
        let end = link.end;
        if self.blocked(now, end, to_server).is_none() {
            self.arm(id, to_server, at, agenda);
        }
    }

    fn arm(&mut self, id: u64, to_server: bool, at: Instant, agenda: &mut Agenda) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let dir = if to_server {
            &mut link.to_server
        } else {
            &mut link.to_client
        };
        if dir.armed.is_some_and(|a| a <= at) {
            return;
        }
        dir.armed = Some(at);
        agenda.push(
            at,
            Ev::Deliver {
                link: id,
                to_server,
            },
        );
    }

    /// A delivery came due: the segment to hand over, if any (stale, blocked or vanished
    /// deliveries give `None`).
    pub fn take(
        &mut self,
        now: Instant,
        id: u64,
        to_server: bool,
        agenda: &mut Agenda,
    ) -> Option<Seg> {
        let link = self.links.get_mut(&id)?;
        let end = link.end;
        let black_hole = link.black_hole;
        let dir = if to_server {
            &mut link.to_server
        } else {
            &mut link.to_client
        };
        if dir.armed != Some(now) {
            return None;
        }
        dir.armed = None;
        if black_hole {
            self.lost += dir.clear();
            return None;
        }
        if self.blocked(now, end, to_server).is_some() {
            return None;
        }
        let link = self.links.get_mut(&id)?;
        let dir = if to_server {
            &mut link.to_server
        } else {
            &mut link.to_client
        };
        let (at, _) = dir.queue.front()?;
        if *at > now {
            let at = *at;
            self.arm(id, to_server, at, agenda);
            return None;
        }
        let (_, seg) = dir.pop()?;
        if let Some((next, _)) = dir.queue.front() {
            let next = (*next).max(now);
            self.arm(id, to_server, next, agenda);
        }
        Some(seg)
    }

    /// Whether the client's close of link `id` has already arrived at the server, behind
    /// what is still to be handed over: what a server reading ahead would find.
    pub fn close_arrived(&self, now: Instant, id: u64) -> bool {
        self.links.get(&id).is_some_and(|l| {
            l.to_server
                .queue
                .iter()
                .take_while(|(at, _)| *at <= now)
                .any(|(_, seg)| matches!(seg, Seg::Fin { .. }))
        })
    }

    /// Drops a link once neither end holds it and nothing is in flight.
    pub fn collect(&mut self, id: u64) {
        let done = self.links.get(&id).is_some_and(|l| {
            !l.client_open
                && !l.server_open
                && (l.black_hole
                    || (l.to_server.queue.is_empty()
                        && l.to_client.queue.is_empty()
                        && l.outbox.is_empty()
                        && l.fin_after.is_none()))
        });
        if done {
            if let Some(l) = self.links.remove(&id) {
                if let End::Client(c) = l.end {
                    if let Some(set) = self.by_client.get_mut(&c) {
                        set.remove(&id);
                    }
                }
            }
        }
    }

    /// Makes a link a black hole: nothing more arrives either way, nobody is told.
    pub fn black_hole(&mut self, id: u64) {
        if let Some(l) = self.links.get_mut(&id) {
            l.black_hole = true;
            self.lost += l.to_server.clear() + l.to_client.clear() + l.outbox.len() as u64;
            l.outbox.kill();
            l.fin_after = None;
        }
    }

    /// Drops what is queued in one direction (a reset discards unsent data).
    pub fn discard(&mut self, id: u64, to_server: bool) {
        if let Some(l) = self.links.get_mut(&id) {
            let dir = if to_server {
                &mut l.to_server
            } else {
                &mut l.to_client
            };
            self.lost += dir.clear();
        }
    }

    /// The server writes `frame` on link `id`: into its send queue under the slow-consumer
    /// rule (`limit` bytes), and on to the wire as the window allows. On
    /// [`Push::Overflow`](heartline_core::engine::send_queue::Push::Overflow) the caller
    /// drops the connection ([`Net::server_drops`]).
    pub fn server_write(
        &mut self,
        now: Instant,
        id: u64,
        frame: Frame,
        limit: u64,
        rng: &mut Rng,
        agenda: &mut Agenda,
    ) -> Option<Pushed> {
        let link = self.links.get_mut(&id)?;
        let pushed = link.outbox.push(frame, limit);
        self.pump(now, id, rng, agenda);
        Some(pushed)
    }

    /// The server closes link `id` (`seg`: its FIN), behind what its queue still holds.
    pub fn server_close(
        &mut self,
        now: Instant,
        id: u64,
        seg: Seg,
        rng: &mut Rng,
        agenda: &mut Agenda,
    ) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        link.outbox.close();
        link.fin_after = Some(seg);
        self.pump(now, id, rng, agenda);
    }

    /// The server drops link `id` at once (a hopeless consumer): its queue is discarded,
    /// what is already on the wire still arrives, and then a reset.
    pub fn server_drops(&mut self, now: Instant, id: u64, rng: &mut Rng, agenda: &mut Agenda) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        self.lost += link.outbox.len() as u64;
        link.outbox.kill();
        link.fin_after = None;
        self.send(now, id, false, Seg::Fin { error: true }, rng, agenda);
    }

    /// The server's end of link `id` is gone with its process: nothing more leaves it.
    pub fn server_gone(&mut self, id: u64) {
        if let Some(link) = self.links.get_mut(&id) {
            self.lost += link.outbox.len() as u64;
            link.outbox.kill();
            link.fin_after = None;
        }
    }

    /// Moves frames from link `id`'s send queue to the wire while the window has room, and
    /// the server's close once the queue is empty. Called after each write and after each
    /// frame its client reads.
    pub fn pump(&mut self, now: Instant, id: u64, rng: &mut Rng, agenda: &mut Agenda) {
        loop {
            let window = self.window;
            let Some(link) = self.links.get_mut(&id) else {
                return;
            };
            if link.black_hole {
                return;
            }
            if !link.outbox.is_empty() {
                if link.to_client.unread >= window {
                    return;
                }
                let Some(frame) = link.outbox.pop() else {
                    return;
                };
                link.outbox.release_if_empty();
                self.send(now, id, false, Seg::Frame(frame), rng, agenda);
                continue;
            }
            if let Some(fin) = link.fin_after.take() {
                self.send(now, id, false, fin, rng, agenda);
            }
            return;
        }
    }

    /// The frames of link `id` the server has written and its client not yet read: on the
    /// wire, then in the server's queue, oldest first.
    pub fn in_flight(&self, id: u64) -> Vec<Frame> {
        let Some(l) = self.links.get(&id) else {
            return Vec::new();
        };
        let wire = l.to_client.queue.iter().filter_map(|(_, seg)| match seg {
            Seg::Frame(f) => Some(f.clone()),
            _ => None,
        });
        wire.chain(l.outbox.frames().cloned()).collect()
    }

    /// Bytes waiting in link `id`'s send queue.
    pub fn queued(&self, id: u64) -> u64 {
        self.links
            .get(&id)
            .map_or(0, |l| u64::from(l.outbox.bytes()))
    }

    /// Stalls both directions of a client's links until `until`.
    pub fn block(&mut self, client: usize, until: Instant, agenda: &mut Agenda) {
        let p = self.paths.entry(client).or_default();
        p.blocked_until = p.blocked_until.max(until);
        agenda.push(until, Ev::Unblock { client });
    }

    /// Stalls server-to-client delivery on a client's links until `until`.
    pub fn stop_reading(&mut self, client: usize, until: Instant, agenda: &mut Agenda) {
        let p = self.paths.entry(client).or_default();
        p.unread_until = p.unread_until.max(until);
        agenda.push(until, Ev::Unblock { client });
    }

    /// Re-arms a client's stalled directions whose stall has ended.
    pub fn unblock(&mut self, now: Instant, client: usize, agenda: &mut Agenda) {
        for id in self.links_of(client) {
            for to_server in [true, false] {
                let Some(link) = self.links.get(&id) else {
                    continue;
                };
                if self.blocked(now, link.end, to_server).is_some() {
                    continue;
                }
                let dir = if to_server {
                    &link.to_server
                } else {
                    &link.to_client
                };
                if let Some((at, _)) = dir.queue.front() {
                    let at = (*at).max(now);
                    self.arm(id, to_server, at, agenda);
                }
            }
        }
    }

    /// Ends every stall now.
    pub fn heal(&mut self, now: Instant, agenda: &mut Agenda) {
        let clients: Vec<usize> = self.paths.keys().copied().collect();
        for c in clients {
            if let Some(p) = self.paths.get_mut(&c) {
                p.blocked_until = p.blocked_until.min(now);
                p.unread_until = p.unread_until.min(now);
            }
            self.unblock(now, c, agenda);
        }
        self.spike_ms = 0;
    }

    /// Whether a client's path is stalled now.
    pub fn is_blocked(&self, now: Instant, client: usize) -> bool {
        self.blocked(now, End::Client(client), false).is_some()
    }
}
