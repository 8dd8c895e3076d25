//! The server side of the world: the gateway's inputs and outputs, the store's
//! completions, crash and restart.

use heartline_core::codec::Frame;
use heartline_core::engine::send_queue::Push;
use heartline_core::engine::{self, CloseReason, Handshake, Query, Transmit};
use heartline_core::gateway::{Gateway, Input, Member, Notice, Output};
use heartline_core::{RequestId, Seed, TransportId};
use std::collections::{BTreeMap, BTreeSet};

use super::{Phase, Sim};
use crate::agenda::Ev;
use crate::net::{End, Seg};
use crate::store::Committed;
use crate::trace::short;

fn is_text(frame: &Frame, text: &str) -> bool {
    matches!(frame, Frame::Text(b) if b.as_ref() == text.as_bytes())
}

fn frame_str(frame: &Frame) -> String {
    match frame {
        Frame::Text(b) => short(&String::from_utf8_lossy(b), 72),
        Frame::Binary(b) => format!("<binary {}B>", b.len()),
    }
}

/// The remote address a link's client end gives in its handshake: `c7` for honest client
/// 7, `h1` for hostile actor 1.
fn remote_of(end: End) -> String {
    match end {
        End::Client(c) => format!("c{c}"),
        End::Raw(a) => format!("h{a}"),
    }
}

/// The device number in a handshake's remote address (`c7` is honest client 7).
fn device_of(remote: Option<&str>) -> Option<usize> {
    remote?.strip_prefix('c')?.parse().ok()
}

impl Sim {
    /// Boots a gateway with empty memory; conversations come back from the store.
    pub(super) fn start_server(&mut self) {
        self.epoch += 1;
        let mut config = self.gw_config.clone();
        config.engine.seed =
            Seed::from(self.opts.seed ^ u64::from(self.epoch).wrapping_mul(0x9e37_79b9));
        let gw = match Gateway::new(config, self.now) {
            Ok(gw) => gw,
            Err(e) => {
                let finding = Err(("config", format!("gateway refused its config: {e}")));
                return self.found(finding);
            }
        };
        self.gw = Some(gw);
        self.rate.restarted();
        tr!(self, "server", ("start (incarnation {})", self.epoch));
        for (id, members) in self.layout.conversations.clone() {
            // The member lists the operator wrote, else the layout's.
            let members: Vec<Member> = match self.store.members_of(&id) {
                Some(written) => written.to_vec(),
                None => members
                    .iter()
                    .map(|u| self.layout.users[*u].member())
                    .collect(),
            };
            let last_seq = self.store.last_seq(&id);
            self.server_input(Input::ConversationPut {
                id,
                members,
                last_seq,
            });
        }
        // Sends of the last window come back from the store too, as the runtime does, so a
        // crash is no way around the rate limit.
        let Some(wall) = self.gw.as_ref().map(|g| g.wall_ms(self.now)) else {
            return;
        };
        let since = wall.saturating_sub(self.opts.rate_window_ms);
        let mut recent: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
        for m in self.store.all().filter(|m| m.created_at_ms > since) {
            recent
                .entry((m.sender_id.clone(), m.sender_type.clone()))
                .or_default()
                .push(m.created_at_ms);
        }
        for ((user_id, user_type), created_at_ms) in recent {
            self.server_input(Input::SendsRestored {
                sender: Member { user_id, user_type },
                created_at_ms,
            });
        }
    }

    /// The server process dies: memory, sessions and unfinished store operations go.
    pub(super) fn crash(&mut self, silent: bool) {
        if self.gw.take().is_none() {
            return;
        }
        self.crash_silent = silent;
        self.store.crash();
        self.dead_peer.forget_all();
        self.forget_polled();
        self.token_expiry.forget_all();
        self.handshake.forget_all();
        self.heartbeat.forget_all();
        self.connection_success.forget_all();
        let now = self.now;
        self.per_user.crash(now);
        self.rate.crash();
        self.ping_pong.crash();
        self.blame.crash();
        self.presence_flaps.crash();
        self.presence_frames.crash();
        for id in self.net.ids() {
            let Some(link) = self.net.link_mut(id) else {
                continue;
            };
            if link.epoch != Some(self.epoch) {
                continue;
            }
            if !link.server_open {
                // Closing: what its queue still held goes with the process.
                self.net.server_gone(id);
                self.net.collect(id);
                continue;
            }
            self.net.server_gone(id);
            let Some(link) = self.net.link_mut(id) else {
                continue;
            };
            link.server_open = false;
            if !silent && link.client_open {
                // The host's kernel resets the dead process's sockets.
                self.net.discard(id, false);
                self.send_reset(now, id, false);
            }
            self.net.collect(id);
        }
    }

    pub(super) fn server_input(&mut self, input: Input) {
        let now = self.now;
        let Some(gw) = self.gw.as_mut() else { return };
        if let Err(e) = gw.handle_input(now, input) {
            let finding = Err(("usage", format!("the simulator misused the gateway: {e}")));
            self.found(finding);
        }
        self.drain_server();
    }

    pub(super) fn server_timeout(&mut self) {
        let now = self.now;
        let Some(gw) = self.gw.as_mut() else { return };
        gw.handle_timeout(now);
        tr!(self, "server", ("deadline"));
        self.drain_server();
    }

    pub(super) fn store_completes(&mut self) {
        let Some((input, committed)) = self.store.complete(&mut self.rng) else {
            return;
        };
        match &input {
            Some(input) => tr!(self, "store", ("{input}")),
            None => tr!(self, "store", ("a member list failed to be written")),
        }
        if let Some((restart_ms, down_ms)) = self.store.take_died() {
            tr!(
                self,
                "fault",
                ("the store dies; restarted in {restart_ms}ms")
            );
            let at = self.now.add_ms(restart_ms);
            self.agenda.push(at, Ev::SupervisorRestart { down_ms });
        }
        if let Some(Input::Appended { op, .. }) = &input {
            let stored = matches!(committed, Committed::Stored(_));
            let finding = self.rate.completed(*op, stored);
            self.found(finding);
        }
        match &committed {
            Committed::Stored(m) => {
                let finding = self.delivery.stored(m);
                self.found(finding);
                let finding = self.members.stored(m);
                self.found(finding);
            }
            Committed::Members { id, members } => self.members_written(id, members),
            Committed::Nothing => {}
        }
        if let Some(input) = input {
            self.server_input(input);
        }
    }

    /// The store committed a member list: the checkers learn it before the gateway does
    /// (the gateway lets the users removed out of the room in that step, silently).
    fn members_written(&mut self, id: &str, members: &[Member]) {
        let users: BTreeSet<usize> = members
            .iter()
            .filter_map(|m| {
                self.layout
                    .users
                    .iter()
                    .position(|u| u.id == m.user_id && u.kind == m.user_type)
            })
            .collect();
        let before = self.members_now.insert(id.to_owned(), users.clone());
        let removed: BTreeSet<usize> = before
            .unwrap_or_default()
            .difference(&users)
            .copied()
            .collect();
        tr!(
            self,
            "store",
            ("members of {id} now {users:?} (removed {removed:?})")
        );
        let links: Vec<u64> = self
            .clients
            .iter()
            .filter(|s| removed.contains(&s.user))
            .filter_map(|s| s.link)
            .collect();
        let last = self.store.last_seq(id);
        self.message_frames.evicted(&links, id, last);
        self.members.set(id, &users);
        self.presence_frames.set_members(id, users.clone());
        let layout: Option<BTreeSet<usize>> = self
            .layout
            .conversations
            .iter()
            .find(|(c, _)| c == id)
            .map(|(_, u)| u.iter().copied().collect());
        if self.phase != Phase::Safety && layout.as_ref() == Some(&users) {
            self.members_restored(id, &users);
        }
    }

    /// The server's host accepts link `id`, or, with no server process, resets it (unless
    /// the process died silently); whether it was accepted.
    fn accept(&mut self, id: u64) -> bool {
        if self.gw.is_none() {
            if !self.crash_silent {
                self.refuse(id);
            }
            return false;
        }
        if let Some(link) = self.net.link_mut(id) {
            link.epoch = Some(self.epoch);
            link.server_open = true;
        }
        true
    }

    /// The server closes link `id` in order, behind what it has sent on it.
    fn server_fin(&mut self, id: u64) {
        let now = self.now;
        let fin = Seg::Fin { error: false };
        self.net
            .server_close(now, id, fin, &mut self.rng, &mut self.agenda);
        self.net.collect(id);
    }

    /// The client end of link `id` closed: the server's end is done with it, and what is
    /// still queued for the peer is dropped.
    fn peer_left(&mut self, id: u64) {
        if let Some(link) = self.net.link_mut(id) {
            link.server_open = false;
        }
        self.net.server_gone(id);
    }

    /// Resets a link from the server's host: the client sees an error.
    fn refuse(&mut self, id: u64) {
        let now = self.now;
        let Some(link) = self.net.link_mut(id) else {
            return;
        };
        if !link.client_open || link.reset_sent {
            return;
        }
        link.reset_sent = true;
        self.net.discard(id, true);
        self.send_reset(now, id, false);
    }

    pub(super) fn server_receives(&mut self, id: u64, seg: Seg) {
        let Some(link) = self.net.link(id) else {
            return;
        };
        let (end, epoch, server_open) = (link.end, link.epoch, link.server_open);
        let up = self.gw.is_some();
        let current = up && epoch == Some(self.epoch) && server_open;
        if link.http {
            return self.server_receives_http(id, end, current, seg);
        }
        let watched = link.watched();
        let upgrade_sid = link.upgrade_sid.clone();
        match seg {
            Seg::Open => {
                if !self.accept(id) {
                    return;
                }
                let remote = remote_of(end);
                tr!(self, "net", ("ws{id} {remote} -> server open"));
                let now = self.now;
                if watched {
                    self.dead_peer.opened(now, id);
                    self.handshake.accepted(now, id);
                }
                let input = engine::Input::WsOpened {
                    transport: TransportId(id),
                    query: Query {
                        eio: Some("4".into()),
                        transport: Some("websocket".into()),
                        sid: upgrade_sid,
                    },
                    handshake: Handshake {
                        accepted_at: now,
                        authorization: None,
                        remote: Some(remote.into()),
                    },
                };
                self.net
                    .send(now, id, false, Seg::Open, &mut self.rng, &mut self.agenda);
                self.server_input(Input::Network(input));
            }
            Seg::Frame(frame) => {
                if !current {
                    if up || !self.crash_silent {
                        self.refuse(id);
                    }
                    return;
                }
                // Like the runtime, which reads ahead behind a frame when it can: the
                // client's close may have arrived with it.
                let now = self.now;
                if self.net.close_arrived(now, id) {
                    if let Some(link) = self.net.link_mut(id).filter(|l| !l.closing_told) {
                        link.closing_told = true;
                        tr!(
                            self,
                            "net",
                            ("ws{id} -> server: its close is already in hand")
                        );
                        self.server_input(Input::Network(engine::Input::WsClosing {
                            transport: TransportId(id),
                        }));
                    }
                }
                tr!(self, "net", ("ws{id} -> server {}", frame_str(&frame)));
                if is_text(&frame, "3") && watched {
                    let now = self.now;
                    self.dead_peer.pong(now, id);
                }
                if let Some(text) = frame.as_text().filter(|_| !watched) {
                    self.watch_upgraded_frame(upgrade_sid.as_deref(), true, text);
                }
                if let Some(text) = frame.as_text().filter(|_| watched) {
                    self.token_expiry.received(id, text);
                    self.per_user.server_received(id, text);
                    self.heartbeat.received(id, text);
                    self.handshake.received(now, id, text);
                }
                self.server_input(Input::Network(engine::Input::WsFrame {
                    transport: TransportId(id),
                    frame,
                }));
            }
            Seg::Request { .. } | Seg::Response { .. } => {}
            Seg::Fin { error } => {
                if !current {
                    return;
                }
                self.peer_left(id);
                self.link_ended(id, false, false);
                tr!(self, "net", ("ws{id} -> server closed (error={error})"));
                self.server_input(Input::Network(engine::Input::WsClosed {
                    transport: TransportId(id),
                    error,
                }));
            }
        }
    }

    /// A polling device's link (`polling.rs`): accepted, its one request handed to the
    /// engine, or given up before its answer.
    fn server_receives_http(&mut self, id: u64, end: End, current: bool, seg: Seg) {
        let up = self.gw.is_some();
        let now = self.now;
        match seg {
            Seg::Open => {
                // Accepted, or reset with no server process: the request that follows
                // does the rest.
                self.accept(id);
            }
            Seg::Request { post, sid, body } => {
                if !current {
                    if up || !self.crash_silent {
                        self.refuse(id);
                    }
                    return;
                }
                if let Some(link) = self.net.link_mut(id) {
                    link.request_sid.clone_from(&sid);
                }
                if post {
                    self.watch_polling_post(sid.as_deref(), &body);
                }
                let remote = remote_of(end);
                let method = if post { "POST" } else { "GET" };
                tr!(
                    self,
                    "net",
                    (
                        "http{id} {remote} -> server {method} {}",
                        short(&String::from_utf8_lossy(&body), 60)
                    )
                );
                let input = engine::Input::Http {
                    request: RequestId(id),
                    method: if post {
                        engine::Method::Post
                    } else {
                        engine::Method::Get
                    },
                    query: Query {
                        eio: Some("4".into()),
                        transport: Some("polling".into()),
                        sid,
                    },
                    body,
                    handshake: Handshake {
                        accepted_at: now,
                        authorization: None,
                        remote: Some(remote.into()),
                    },
                };
                self.server_input(Input::Network(input));
            }
            Seg::Fin { error } => {
                if !current {
                    return;
                }
                self.peer_left(id);
                tr!(self, "net", ("http{id} -> server given up (error={error})"));
                self.server_input(Input::Network(engine::Input::HttpAborted {
                    request: RequestId(id),
                }));
            }
            Seg::Frame(_) | Seg::Response { .. } => {}
        }
    }

    /// Routes everything the gateway wants done.
    fn drain_server(&mut self) {
        let Some(gw) = self.gw.as_mut() else { return };
        let outs: Vec<Output> = std::iter::from_fn(|| gw.poll_output()).collect();
        // Connections dropped as slow consumers, told to the gateway once this batch is
        // routed, as the runtime does.
        let mut dropped = Vec::new();
        for out in outs {
            match out {
                Output::Transmit(Transmit::WsSend { transport, frame }) => {
                    let id = transport.0;
                    let Some(link) = self.net.link(id).filter(|l| l.server_open) else {
                        continue;
                    };
                    let honest = matches!(link.end, End::Client(_)) && link.client_open;
                    let watched = link.watched();
                    let end = link.end;
                    let upgrading = link.upgrade_sid.clone();
                    let now = self.now;
                    if is_text(&frame, "2") && watched {
                        self.dead_peer.ping(now, id);
                    }
                    if let Some(text) = frame.as_text().filter(|_| !watched) {
                        self.watch_upgraded_frame(upgrading.as_deref(), false, text);
                    }
                    // A WebSocket that took a polling session over starts with what polling
                    // had queued, written when it was made: judged by the lists of now, it
                    // would not be what the server wrote then. Its frames are left to the
                    // checks of the device itself.
                    if let Some(text) = frame.as_text().filter(|_| watched) {
                        let user = match end {
                            End::Client(c) => self
                                .clients
                                .get(c)
                                .and_then(|s| self.layout.users.get(s.user))
                                .map(|u| u.key()),
                            End::Raw(a) => self.raws.get(a).map(|u| u.key()),
                        };
                        let finding = self.connection_success.sent(now, id, user.as_deref(), text);
                        self.found(finding);
                        if let Some(user) = user {
                            let finding = self.members.sent(&user, text);
                            self.found(finding);
                        }
                        if let End::Client(c) = end {
                            if let Some(u) = self.clients.get(c).map(|s| s.user) {
                                let finding = self.presence_frames.sent_to(u, text);
                                self.found(finding);
                            }
                        }
                        if honest {
                            let finding = self.message_frames.server_sent(id, text, &self.store);
                            self.found(finding);
                        }
                        self.token_expiry.sent(now, id, text);
                        self.handshake.sent(id, text);
                        self.presence_frames.sent(id, text);
                        self.per_user.server_sent(id, text);
                        self.heartbeat.sent(now, id, text);
                    }
                    if honest && watched {
                        self.send_queue.written(id, &frame);
                    }
                    let limit = self.opts.outbound_bytes;
                    let pushed = self.net.server_write(
                        now,
                        id,
                        frame,
                        limit,
                        &mut self.rng,
                        &mut self.agenda,
                    );
                    let Some(pushed) = pushed else { continue };
                    if honest && watched {
                        let finding = self.send_queue.holds(id, self.net.queued(id), limit);
                        self.found(finding);
                    }
                    if pushed.shed > 0 {
                        self.counters.shed += u64::from(pushed.shed);
                        tr!(
                            self,
                            "server",
                            ("ws{id} queue full: {} frame(s) shed", pushed.shed)
                        );
                    }
                    if pushed.push == Push::Overflow {
                        dropped.push(id);
                    }
                }
                Output::Transmit(Transmit::WsClose { transport, reason }) => {
                    let id = transport.0;
                    if !self.net.link(id).is_some_and(|l| l.server_open) {
                        continue;
                    }
                    let timed_out = reason == CloseReason::PingTimeout;
                    let expired = matches!(
                        &reason,
                        CloseReason::ServerDisconnect(r) if r == heartline_core::gateway::TOKEN_EXPIRED
                    );
                    self.server_closes(id, timed_out, expired);
                    tr!(self, "server", ("ws{id} close ({reason})"));
                    self.server_fin(id);
                }
                Output::Transmit(Transmit::HttpResponse {
                    request,
                    status,
                    body,
                    ..
                }) => {
                    // The answer, then the server closes the link.
                    let id = request.0;
                    let Some(link) = self.net.link_mut(id).filter(|l| l.server_open) else {
                        continue;
                    };
                    link.server_open = false;
                    let now = self.now;
                    tr!(
                        self,
                        "server",
                        (
                            "http{id} {status} {}",
                            short(&String::from_utf8_lossy(&body), 72)
                        )
                    );
                    if status == 200 {
                        self.watch_polling_answer(id, &body);
                    }
                    let seg = Seg::Response { status, body };
                    self.net
                        .send(now, id, false, seg, &mut self.rng, &mut self.agenda);
                    self.server_fin(id);
                }
                Output::Effect(effect) => {
                    let now = self.now;
                    tr!(self, "server", ("{effect}"));
                    let finding = self.members.asked(&effect);
                    self.found(finding);
                    self.rate.effect(now, &effect);
                    self.store.submit(now, effect, &mut self.rng);
                }
                Output::Notice(notice) => self.on_notice(notice),
            }
        }
        self.sweep_polled();
        for id in dropped {
            if !self.net.link(id).is_some_and(|l| l.server_open) {
                continue;
            }
            let watched = self.net.link(id).is_some_and(|l| l.watched());
            self.server_closes(id, false, false);
            tr!(self, "server", ("ws{id} dropped: slow consumer"));
            if watched {
                self.send_queue.dropped();
            }
            let now = self.now;
            self.net
                .server_drops(now, id, &mut self.rng, &mut self.agenda);
            self.net.collect(id);
            self.server_input(Input::Network(engine::Input::WsAborted {
                transport: TransportId(id),
                reason: CloseReason::SlowConsumer,
            }));
        }
    }

    /// The server's end of link `id` closes: the checkers watching it are told.
    fn server_closes(&mut self, id: u64, timed_out: bool, expired: bool) {
        let Some(link) = self.net.link_mut(id) else {
            return;
        };
        link.server_open = false;
        self.link_ended(id, timed_out, expired);
    }

    /// The checkers watching link `id` learn that it ended, whichever end closed it
    /// (`timed_out`: for a ping timeout; `expired`: for its token).
    fn link_ended(&mut self, id: u64, timed_out: bool, expired: bool) {
        if !self.net.link(id).is_some_and(|l| l.watched()) {
            return;
        }
        let now = self.now;
        let finding = self.dead_peer.closed(now, id, timed_out);
        self.found(finding);
        self.per_user.link_gone(id);
        self.heartbeat.gone(id);
        self.connection_success.gone(id);
        self.token_expiry.closed(now, id, expired);
        self.handshake.closed(now, id);
    }

    fn on_notice(&mut self, notice: Notice) {
        tr!(self, "server", ("{notice}"));
        let now = self.now;
        match &notice {
            Notice::Connected { session, user } => {
                self.per_user.connected(now, user, *session);
                let live = self.per_user.live(user);
                self.presence_flaps.connections_changed(now, user, live);
                self.watch_polling_connected(*session);
                let device = self.device(*session);
                let finding = self.ping_pong.connected(*session, device);
                self.found(finding);
                self.blame.connected(*session, device);
            }
            Notice::Closed {
                session,
                user,
                reason,
            } => {
                if let Some(user) = user {
                    self.per_user.closed(now, user, *session);
                    let live = self.per_user.live(user);
                    self.presence_flaps.connections_changed(now, user, live);
                }
                self.ping_pong.closed(*session);
                self.watch_polling_closed(*session, reason);
                let device = self.device(*session);
                let finding = self.blame.closed(*session, device, reason);
                self.found(finding);
            }
            Notice::Replaced { user, old, new } => {
                let finding = self.ping_pong.replaced(*old, *new);
                self.found(finding);
                let finding = self.per_user.replaced(user, *old, *new);
                self.found(finding);
                self.blame.replaced(*old);
            }
            Notice::Online { user } => {
                self.presence_frames.announced(user.to_string(), true);
                let finding = self.presence_flaps.online(user);
                self.found(finding);
            }
            Notice::Offline { user } => {
                self.presence_frames.announced(user.to_string(), false);
                let finding = self.presence_flaps.offline(now, user, &self.per_user);
                self.found(finding);
            }
            _ => {}
        }
    }

    fn device(&self, session: heartline_core::SessionId) -> Option<usize> {
        let gw = self.gw.as_ref()?;
        device_of(gw.engine().handshake(session)?.remote.as_deref())
    }
}
