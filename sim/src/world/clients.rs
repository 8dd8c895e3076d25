//! The client side of the world: honest devices driving the real client state machine,
//! and hostile actors speaking raw frames.

use heartline_core::client::{Notice, Output, Status};

use super::{Phase, Sim};
use crate::agenda::Ev;
use crate::net::{End, Seg};
use crate::workload::Attack;

impl Sim {
    pub(super) fn start_client(&mut self, i: usize) {
        let now = self.now;
        let Some(slot) = self.clients.get_mut(i) else {
            return;
        };
        for conv in &self.layout.convs_of[slot.user] {
            let id = &self.layout.conversations[*conv].0;
            slot.client.join(now, id);
        }
        slot.client.connect(now);
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

    fn schedule_send(&mut self, i: usize) {
        let gap = 1 + self.rng.below(2 * self.opts.send_gap_ms);
        let at = self.now.add_ms(gap);
        self.agenda.push(at, Ev::Send { client: i });
    }

    pub(super) fn app_sends(&mut self, i: usize) {
        if self.phase != Phase::Safety {
            return;
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
            slot.client.send_message(now, id, &content);
            self.counters.sent += 1;
        }
        tr!(self, "client", ("c{i} app sends {n}"));
        self.drain_client(i);
        self.schedule_send(i);
    }

    pub(super) fn client_timer(&mut self, i: usize) {
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
        match link.end {
            End::Raw(a) => match &seg {
                Seg::Fin { .. } => {
                    if let Some(link) = self.net.link_mut(id) {
                        link.client_open = false;
                    }
                    self.members.closed(id);
                    self.bad_token.closed(id);
                    tr!(self, "net", ("ws{id} -> h{a} closed"));
                }
                Seg::Frame(heartline_core::codec::Frame::Text(bytes)) => {
                    let text = String::from_utf8_lossy(bytes);
                    let user = self.raws.get(a).map(|u| u.key()).unwrap_or_default();
                    let finding = self.members.hostile_received(id, &user, &text);
                    self.found(finding);
                    let finding = self.bad_token.received(id, &text);
                    self.found(finding);
                }
                _ => {}
            },
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
                        let text = match f {
                            heartline_core::codec::Frame::Text(b) => {
                                let text = String::from_utf8_lossy(b);
                                seen = self
                                    .members
                                    .honest_received(slot.user, &text)
                                    .and(self.presence_frames.received(id, slot.user, &text));
                                crate::trace::short(&text, 72)
                            }
                            heartline_core::codec::Frame::Binary(b) => format!("<{}B>", b.len()),
                        };
                        tr!(self, "net", ("ws{id} -> c{i} {text}"));
                    }
                    Seg::Fin { error } => {
                        slot.link = None;
                        self.presence_frames.closed(id);
                        slot.client.handle_closed(now);
                        if let Some(link) = self.net.link_mut(id) {
                            link.client_open = false;
                        }
                        tr!(self, "net", ("ws{id} -> c{i} closed (error={error})"));
                    }
                }
                self.found(seen);
                self.drain_client(i);
            }
        }
    }

    /// Routes everything a client wants done, then re-arms its deadline.
    pub(super) fn drain_client(&mut self, i: usize) {
        let now = self.now;
        loop {
            let Some(slot) = self.clients.get_mut(i) else {
                return;
            };
            let Some(out) = slot.client.poll_output() else {
                break;
            };
            match out {
                Output::Open => {
                    if let Some(old) = slot.link.take() {
                        tr!(self, "client", ("c{i} opens without closing ws{old}"));
                        self.client_closes(old);
                    }
                    let id = self
                        .net
                        .open(now, End::Client(i), &mut self.rng, &mut self.agenda);
                    if let Some(slot) = self.clients.get_mut(i) {
                        slot.link = Some(id);
                    }
                    tr!(self, "client", ("c{i} opens ws{id}"));
                }
                Output::Send(frame) => {
                    if let Some(id) = slot.link {
                        if self.net.link(id).is_some_and(|l| l.client_open) {
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
                    if status == Status::Connected {
                        slot.connects += 1;
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
                }
                Output::Notice(Notice::Event(name, _)) => {
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
    fn client_closes(&mut self, id: u64) {
        let now = self.now;
        let Some(link) = self.net.link_mut(id) else {
            return;
        };
        if !link.client_open {
            return;
        }
        link.client_open = false;
        self.presence_frames.closed(id);
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
        for k in 0..conns {
            let at = now.add_ms(k as u64 * (1 + self.rng.below(300)));
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
            match attack {
                Attack::NoToken | Attack::ForgedToken | Attack::ExpiredToken => {
                    self.bad_token.presented(id);
                }
                Attack::Trespass => self.members.trespasses(id, user.key()),
                _ => {}
            }
            // Half close on their own after a while; the rest leave it to the server.
            if self.rng.below(2) == 0 {
                let at = now.add_ms(100 + self.rng.below(5_000));
                self.agenda.push(at, Ev::RawClose { link: id });
            }
        }
        let next = now.add_ms(2_000 + self.rng.below(20_000));
        self.agenda.push(next, Ev::Attack { actor });
    }

    pub(super) fn raw_close(&mut self, id: u64) {
        self.client_closes(id);
    }

    pub(super) fn close_raws(&mut self) {
        for id in self.net.ids() {
            if self
                .net
                .link(id)
                .is_some_and(|l| matches!(l.end, End::Raw(_)))
            {
                self.client_closes(id);
            }
        }
    }
}
