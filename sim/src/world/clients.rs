//! The client side of the world: honest devices driving the real client state machine,
//! and hostile actors speaking raw frames.

use heartline_core::client::{Notice, Output, Status};

use super::{sign, Phase, Sim, LONG_TOKEN_S};
use crate::agenda::Ev;
use crate::check::bad_token;
use crate::net::{End, Seg};
use crate::workload::Attack;

impl Sim {
    pub(super) fn start_client(&mut self, i: usize) {
        if self.frozen(i).is_some() {
            return self.put_off(i, Ev::Start { client: i });
        }
        let now = self.now;
        let Some(slot) = self.clients.get_mut(i) else {
            return;
        };
        for conv in &self.layout.convs_of[slot.user] {
            let id = &self.layout.conversations[*conv].0;
            slot.client.join(now, id);
        }
        slot.client.connect(now);
        self.reconnect.asked(i);
        let idle = slot.idle;
        tr!(
            self,
            "client",
            ("c{i} starts{}", if idle { " (idle)" } else { "" })
        );
        self.drain_client(i);
        if !idle {
            self.schedule_send(i);
        }
    }

    /// A new token for client `i`'s user, noted for the checker: for an expiring device
    /// during the safety phase one that runs out again within 10–70 s, else one that
    /// outlasts the run.
    fn mint(&mut self, i: usize) -> Option<String> {
        let short = self.phase == Phase::Safety;
        let slot = self.clients.get(i)?;
        let ttl = if slot.expiring && short {
            10 + self.token_rng.below(60)
        } else {
            LONG_TOKEN_S
        };
        let user = self.layout.users.get(slot.user)?;
        let exp_s = self.wall_ms() / 1000 + ttl;
        let (fresh, exp_s) = sign(user, exp_s, &mut self.token_expiry);
        if let Some(slot) = self.clients.get_mut(i) {
            slot.exp_s = exp_s;
        }
        Some(fresh)
    }

    /// Client `i` was told `auth:expired`: its application refreshes the token within the
    /// grace, or late, or (asleep, one time in four during the safety phase) not at all.
    fn auth_expired(&mut self, i: usize) {
        let Some(slot) = self.clients.get_mut(i) else {
            return;
        };
        slot.told_expired = true;
        if self.phase == Phase::Safety && self.token_rng.below(4) == 0 {
            tr!(
                self,
                "client",
                ("c{i} told auth:expired; its application is asleep")
            );
            return;
        }
        let grace = self.gw_config.auth_grace_ms;
        let window = if self.phase == Phase::Safety {
            grace + grace / 2
        } else {
            grace / 2
        };
        let at = self.now.add_ms(self.token_rng.below(window + 1));
        self.agenda.push(at, Ev::Refresh { client: i });
        tr!(
            self,
            "client",
            ("c{i} told auth:expired; refreshes at {at}")
        );
    }

    /// Client `i`'s application hands it a fresh token (`auth:refresh` if connected).
    pub(super) fn app_refreshes(&mut self, i: usize) {
        if matches!(self.phase, Phase::Leave | Phase::Done) {
            return;
        }
        if self.frozen(i).is_some() {
            return self.put_off(i, Ev::Refresh { client: i });
        }
        let Some(fresh) = self.mint(i) else { return };
        let now = self.now;
        if let Some(slot) = self.clients.get_mut(i) {
            // A client the server refused connects again with the fresh token: a connect
            // the application asked for, not a reconnection of the backoff's.
            if matches!(slot.client.status(), Status::Failed { .. }) {
                self.reconnect.asked(i);
            }
            slot.client.refresh_token(now, fresh);
        }
        tr!(self, "client", ("c{i} refreshes its token"));
        self.drain_client(i);
    }

    /// As the faults heal, every expiring device's application takes a token that outlasts
    /// the run (sent as `auth:refresh` where connected): an expiry while the run settles
    /// would close a connection and move presence inside the quiet that the final checks
    /// rely on. Refreshing is itself checked on the way.
    pub(super) fn refresh_all(&mut self) {
        for i in 0..self.clients.len() {
            if self.clients.get(i).is_some_and(|s| s.expiring) {
                self.app_refreshes(i);
            }
        }
    }

    /// Client `i` was sent away after `auth:expired`: its application logs in again a
    /// little later.
    fn sent_away(&mut self, i: usize) {
        if matches!(self.phase, Phase::Leave | Phase::Done) {
            return;
        }
        let at = self.now.add_ms(1_000 + self.token_rng.below(4_000));
        self.agenda.push(at, Ev::Relogin { client: i });
        tr!(self, "client", ("c{i} sent away; logs in again at {at}"));
    }

    /// Client `i`'s application, its client sent away for an expired token, connects it
    /// again with a fresh token.
    pub(super) fn log_in_again(&mut self, i: usize) {
        if matches!(self.phase, Phase::Leave | Phase::Done) {
            return;
        }
        if self.frozen(i).is_some() {
            return self.put_off(i, Ev::Relogin { client: i });
        }
        let sent_away = self
            .clients
            .get(i)
            .is_some_and(|s| s.told_expired && *s.client.status() == Status::Disconnected);
        if !sent_away {
            return;
        }
        let Some(fresh) = self.mint(i) else { return };
        let now = self.now;
        if let Some(slot) = self.clients.get_mut(i) {
            slot.client.set_token(fresh);
            slot.client.connect(now);
        }
        self.reconnect.asked(i);
        tr!(self, "client", ("c{i} logs in again"));
        self.drain_client(i);
    }

    fn schedule_send(&mut self, i: usize) {
        let gap = 1 + self.rng.below(2 * self.opts.send_gap_ms);
        let at = self.now.add_ms(gap);
        self.agenda.push(at, Ev::Send { client: i });
    }

    pub(super) fn app_sends(&mut self, i: usize) {
        if self.phase != Phase::Safety {
            return;
        }
        if self.frozen(i).is_some() {
            return self.put_off(i, Ev::Send { client: i });
        }
        let now = self.now;
        let burst = self.rng.below(100) < self.opts.burst_pct;
        let n = if burst {
            self.opts.rate_messages as u64 + 3
        } else {
            1
        };
        let Some(slot) = self.clients.get_mut(i) else {
            return;
        };
        if !crate::check::liveness::in_use(slot.client.status()) {
            return; // the application gave up with its client
        }
        let convs = &self.layout.convs_of[slot.user];
        for _ in 0..n {
            let conv = convs[self.rng.below(convs.len() as u64) as usize];
            let id = &self.layout.conversations[conv].0;
            slot.sent += 1;
            let content = format!("m{i}.{}", slot.sent);
            // A full outbox refuses the send and queues nothing: there is nothing to
            // check of it (the bound is far above what a seed's offline spell queues).
            if slot.client.send_message(now, id, &content).is_ok() {
                self.counters.sent += 1;
            }
        }
        tr!(self, "client", ("c{i} app sends {n}"));
        self.drain_client(i);
        self.schedule_send(i);
    }

    pub(super) fn client_timer(&mut self, i: usize) {
        if self.frozen(i).is_some() {
            return; // armed again as it wakes
        }
        let now = self.now;
        let Some(slot) = self.clients.get_mut(i) else {
            return;
        };
        if slot.armed.is_none_or(|t| t > now) {
            return; // superseded
        }
        slot.armed = None;
        slot.client.handle_timeout(now);
        if slot.client.poll_timeout().is_some_and(|t| t <= now) {
            // A deadline that stays due after firing would spin the client forever.
            let finding = Err((
                "client-deadline-advances",
                format!("c{i}: deadline still due after handle_timeout at {now}"),
            ));
            self.found(finding);
        }
        tr!(self, "client", ("c{i} deadline"));
        self.drain_client(i);
    }

    pub(super) fn client_receives(&mut self, id: u64, seg: Seg) {
        let Some(link) = self.net.link(id) else {
            return;
        };
        if !link.client_open {
            return;
        }
        let now = self.now;
        if self.is_raw_poll(id) {
            return self.raw_poll_receives(id, seg);
        }
        match link.end {
            End::Raw(a) => match &seg {
                Seg::Fin { .. } => {
                    if let Some(link) = self.net.link_mut(id) {
                        link.client_open = false;
                    }
                    self.pongers.remove(&id);
                    self.members.closed(id);
                    self.bad_token.closed(id);
                    self.presence_frames.closed(id);
                    tr!(self, "net", ("ws{id} -> h{a} closed"));
                }
                Seg::Frame(heartline_core::codec::Frame::Text(bytes)) => {
                    if &bytes[..] == b"2" && self.pongers.contains(&id) {
                        let pong = Seg::Frame(heartline_core::codec::Frame::text("3"));
                        self.net
                            .send(now, id, true, pong, &mut self.rng, &mut self.agenda);
                    }
                    let text = String::from_utf8_lossy(bytes);
                    let user = self.raws.get(a).map(|u| u.key()).unwrap_or_default();
                    let finding = self.members.hostile_received(id, &user, &text);
                    self.found(finding);
                    let finding = self.bad_token.received(id, &text);
                    self.found(finding);
                }
                _ => {}
            },
            End::Client(i) if link.http || link.upgrade_sid.is_some() => {
                self.polling_receives(i, id, seg);
                self.drain_client(i);
            }
            End::Client(i) => {
                let Some(slot) = self.clients.get_mut(i) else {
                    return;
                };
                if slot.link != Some(id) {
                    return; // a connection the client already left
                }
                let mut seen = Ok(());
                match &seg {
                    Seg::Open => {
                        slot.client.handle_opened(now);
                        tr!(self, "net", ("ws{id} -> c{i} accepted"));
                    }
                    Seg::Frame(f) => {
                        slot.client.handle_frame(now, f);
                        // Droppable frames written before this one and never read were
                        // shed: presence counts them as told, unseen.
                        seen = match self.send_queue.read(id, f) {
                            Ok(shed) => shed
                                .iter()
                                .filter_map(|s| s.as_text())
                                .try_for_each(|s| self.presence_frames.shed(id, slot.user, s)),
                            Err(v) => Err(v),
                        };
                        let text = match f {
                            heartline_core::codec::Frame::Text(b) => {
                                let text = String::from_utf8_lossy(b);
                                seen = seen
                                    .and(self.presence_frames.received(id, slot.user, &text))
                                    .and(self.message_frames.received(id, &text, &self.store));
                                self.ping_pong.link_frame(id, &text);
                                crate::trace::short(&text, 72)
                            }
                            heartline_core::codec::Frame::Binary(b) => format!("<{}B>", b.len()),
                        };
                        tr!(self, "net", ("ws{id} -> c{i} {text}"));
                    }
                    Seg::Fin { error } => {
                        seen = self.ping_pong.link_closed(id, *error);
                        slot.link = None;
                        self.presence_frames.closed(id);
                        self.message_frames.closed(id);
                        self.send_queue.closed(id);
                        slot.client.handle_closed(now);
                        if let Some(link) = self.net.link_mut(id) {
                            link.client_open = false;
                        }
                        tr!(self, "net", ("ws{id} -> c{i} closed (error={error})"));
                    }
                    Seg::Request { .. } | Seg::Response { .. } => {}
                }
                self.found(seen);
                self.drain_client(i);
            }
        }
    }

    /// Routes everything a client wants done, then re-arms its deadline.
    pub(super) fn drain_client(&mut self, i: usize) {
        let now = self.now;
        let wall_ms = self.wall_ms();
        loop {
            let Some(slot) = self.clients.get_mut(i) else {
                return;
            };
            let Some(out) = slot.client.poll_output() else {
                break;
            };
            match out {
                Output::Open => {
                    let paced = self.reconnect.opened(now, i);
                    // Like `socket.auth` as a callback: a token about to run out is
                    // renewed before it is presented.
                    let stale = slot.exp_s.saturating_mul(1000) <= wall_ms.saturating_add(2_000);
                    let old = slot.link.take();
                    if stale {
                        if let Some(fresh) = self.mint(i) {
                            if let Some(slot) = self.clients.get_mut(i) {
                                slot.client.set_token(fresh);
                            }
                            tr!(self, "client", ("c{i} renews its token before connecting"));
                        }
                    }
                    if let Some(old) = old {
                        tr!(self, "client", ("c{i} opens without closing ws{old}"));
                        self.client_closes(old);
                    }
                    if self.clients.get(i).is_some_and(|s| s.polling.is_some()) {
                        self.polling_open(i);
                        self.found(paced);
                        continue;
                    }
                    let id = self
                        .net
                        .open(now, End::Client(i), &mut self.rng, &mut self.agenda);
                    if let Some(slot) = self.clients.get_mut(i) {
                        slot.link = Some(id);
                    }
                    tr!(self, "client", ("c{i} opens ws{id}"));
                    self.found(paced);
                }
                Output::Send(frame) if slot.polling.is_some() => self.polling_send(i, frame),
                Output::Close if slot.polling.is_some() => {
                    tr!(self, "client", ("c{i} closes its polling transport"));
                    self.polling_close(i);
                }
                Output::Send(frame) => {
                    if let Some(id) = slot.link {
                        if self.net.link(id).is_some_and(|l| l.client_open) {
                            if let heartline_core::codec::Frame::Text(bytes) = &frame {
                                let text = String::from_utf8_lossy(bytes);
                                self.message_frames.sent(id, &text);
                            }
                            self.net.send(
                                now,
                                id,
                                true,
                                Seg::Frame(frame),
                                &mut self.rng,
                                &mut self.agenda,
                            );
                        }
                    }
                }
                Output::Close => {
                    if let Some(id) = slot.link.take() {
                        tr!(self, "client", ("c{i} closes ws{id}"));
                        self.client_closes(id);
                    }
                }
                Output::Notice(Notice::Status(status)) => {
                    self.reconnect.status(now, i, &status);
                    if status == Status::Connected {
                        slot.connects += 1;
                        slot.told_expired = false;
                    }
                    if status == Status::Disconnected && slot.told_expired {
                        self.sent_away(i);
                    }
                    tr!(self, "client", ("c{i} status {status:?}"));
                }
                Output::Notice(Notice::Message(m)) => {
                    let finding = self.delivery.delivered(i, &m, &self.store);
                    self.found(finding);
                }
                Output::Notice(Notice::Acked { temp_id, message }) => {
                    let user = &self.layout.users[slot.user];
                    let finding = self.delivery.acked(
                        i,
                        (&user.id, &user.kind),
                        &temp_id,
                        &message,
                        &self.store,
                    );
                    self.found(finding);
                }
                Output::Notice(Notice::SendFailed { temp_id, code }) => {
                    tr!(self, "client", ("c{i} send {temp_id} failed: {code}"));
                    let user = &self.layout.users[slot.user];
                    let finding = self.delivery.refused(
                        i,
                        (&user.id, &user.kind),
                        &temp_id,
                        &code,
                        &self.store,
                    );
                    self.found(finding);
                }
                Output::Notice(Notice::Refreshed { error }) => {
                    if error.is_none() {
                        slot.told_expired = false;
                    }
                    tr!(self, "client", ("c{i} refresh answered: {error:?}"));
                }
                Output::Notice(Notice::Event(name, payload)) => {
                    if name == "message:notification" {
                        // Notified of a conversation of its user's that it is not in (its
                        // join refused while its user was out of it): back in, it joins.
                        let conv = payload["conversationId"].as_str().unwrap_or("");
                        let ours = self.layout.convs_of[slot.user]
                            .iter()
                            .any(|c| self.layout.conversations[*c].0 == conv);
                        if ours && !slot.client.joined().contains_key(conv) {
                            slot.client.join(now, conv);
                            tr!(self, "client", ("c{i} app joins {conv} again"));
                        }
                    }
                    if name == "auth:expired" {
                        self.auth_expired(i);
                    }
                    if name == "connection:replaced" {
                        self.ping_pong.told(i);
                        tr!(self, "client", ("c{i} told it was replaced"));
                    }
                }
            }
        }
        let Some(slot) = self.clients.get_mut(i) else {
            return;
        };
        let mut baseline = Ok(());
        for (conv, last) in slot.client.joined() {
            if let Some(last) = last {
                baseline = baseline.and(self.delivery.baseline(i, conv, *last, &self.store));
            }
        }
        match slot.client.poll_timeout() {
            Some(t) if slot.armed != Some(t) => {
                slot.armed = Some(t);
                self.agenda.push(t.max(now), Ev::ClientTimer { client: i });
            }
            Some(_) => {}
            None => slot.armed = None,
        }
        self.found(baseline);
    }

    /// The client end closes a link (an orderly close, which the server sees as a FIN).
    pub(super) fn client_closes(&mut self, id: u64) {
        let now = self.now;
        let Some(link) = self.net.link_mut(id) else {
            return;
        };
        if !link.client_open {
            return;
        }
        link.client_open = false;
        self.pongers.remove(&id);
        self.presence_frames.closed(id);
        self.message_frames.closed(id);
        self.send_queue.closed(id);
        self.ping_pong.link_dropped(id);
        self.net.send(
            now,
            id,
            true,
            Seg::Fin { error: false },
            &mut self.rng,
            &mut self.agenda,
        );
        self.net.collect(id);
    }

    pub(super) fn attack(&mut self, actor: usize) {
        if self.phase != Phase::Safety {
            return;
        }
        let Some(user) = self.raws.get(actor).cloned() else {
            return;
        };
        let now = self.now;
        let attack = Attack::draw(&mut self.rng);
        let (frames, conns) = attack.script(&user, &mut self.rng);
        self.counters.attacks += 1;
        tr!(self, "hostile", ("h{actor} {} x{conns}", attack.name()));
        // Some attacks go over long-polling in the runs with devices on it.
        let polling = self.opts.polling_pct > 0
            && self.hostile_rng.below(100) < self.opts.hostile_polling_pct;
        if polling {
            self.counters.attacks_polling += 1;
            tr!(self, "hostile", ("h{actor} attacks on polling"));
        }
        for k in 0..conns {
            let at = now.add_ms(k as u64 * (1 + self.rng.below(300)));
            let id = if polling {
                self.raw_poll_open(actor, at, frames.clone())
            } else {
                let id = self.net.open(
                    at.max(now),
                    End::Raw(actor),
                    &mut self.rng,
                    &mut self.agenda,
                );
                for f in &frames {
                    self.net.send(
                        now,
                        id,
                        true,
                        Seg::Frame(f.clone()),
                        &mut self.rng,
                        &mut self.agenda,
                    );
                }
                id
            };
            match attack {
                Attack::NoToken => self.bad_token.presented(id, bad_token::MISSING),
                Attack::ForgedToken | Attack::ExpiredToken => {
                    self.bad_token.presented(id, bad_token::INVALID);
                }
                Attack::Trespass => self.members.trespasses(id, user.key()),
                // It keeps its connection alive, so only the handshake rule ends it.
                Attack::Leave if !polling => {
                    self.pongers.insert(id);
                }
                _ => {}
            }
            // Half close on their own after a while; the rest leave it to the server, as
            // every one that left its namespace to stay does.
            if self.rng.below(2) == 0 && attack != Attack::Leave {
                let at = now.add_ms(100 + self.rng.below(5_000));
                self.agenda.push(at, Ev::RawClose { link: id });
            }
        }
        let next = now.add_ms(2_000 + self.rng.below(20_000));
        self.agenda.push(next, Ev::Attack { actor });
    }

    pub(super) fn raw_close(&mut self, id: u64) {
        if self.raw_polls.contains_key(&id) {
            return self.raw_poll_end(id, false);
        }
        self.client_closes(id);
    }

    pub(super) fn close_raws(&mut self) {
        for id in self.net.ids() {
            if self
                .net
                .link(id)
                .is_some_and(|l| matches!(l.end, End::Raw(_)))
                && !self.is_raw_poll(id)
            {
                self.client_closes(id);
            }
        }
    }
}
