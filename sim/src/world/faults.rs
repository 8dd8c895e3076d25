//! Injecting faults, and healing them all for the liveness phase.

use std::collections::BTreeSet;

use heartline_core::gateway::Input;
use heartline_core::Instant;

use super::{Phase, Sim};
use crate::agenda::Ev;
use crate::net::Seg;
use crate::schedule::Fault;

/// How far the server's wall clock may get from the true time, milliseconds: a step that
/// would take it further goes the other way.
const MAX_CLOCK_OFFSET_MS: i64 = 30 * 60_000;

impl Sim {
    /// The server machine's wall clock jumps by `step_ms`. A running server reads it as its
    /// runtime does, and a process started later starts from it; the token issuer's clock
    /// agrees with it (the step corrected the server's clock, or both moved).
    fn step_clock(&mut self, step_ms: i64) {
        let step = if (self.wall_offset_ms + step_ms).abs() > MAX_CLOCK_OFFSET_MS {
            -step_ms
        } else {
            step_ms
        };
        self.wall_offset_ms += step;
        let epoch = self.wall_epoch_ms();
        self.gw_config.wall_epoch_ms = epoch;
        self.counters.clock_steps += 1;
        tr!(
            self,
            "fault",
            ("the wall clock is now {:+}ms off", self.wall_offset_ms)
        );
        self.heartbeat.stepped(epoch);
        self.connection_success.stepped(epoch);
        // An expiry the server let pass before the step is judged by the clock it passed
        // on, before the step moves the deadlines.
        let missed = self.token_expiry.check(self.now);
        self.found(missed);
        self.token_expiry.stepped(self.now, epoch);
        self.rate.stepped(self.wall_offset_ms);
        let wall_ms = self.wall_ms();
        self.server_input(Input::WallClock { wall_ms });
    }

    pub(super) fn inject(&mut self, fault: Fault) {
        if self.phase != Phase::Safety {
            return;
        }
        let n = self.clients.len().max(1);
        let now = self.now;
        self.counters.faults += 1;
        tr!(self, "fault", ("{fault}"));
        match fault {
            Fault::Partition { client, ms } | Fault::Clog { client, ms } => {
                self.net.block(client % n, now.add_ms(ms), &mut self.agenda);
            }
            Fault::HalfOpen {
                client,
                client_notified,
            } => {
                let c = client % n;
                // A frozen device notices nothing until it wakes.
                let client_notified = client_notified && self.frozen(c).is_none();
                if let Some(p) = self.clients.get(c).and_then(|s| s.polling.as_ref()) {
                    // On polling: the receiving GET's connection (or the WebSocket that
                    // took the session over) dies silently.
                    let Some(id) = p.websocket().or(p.get()) else {
                        return;
                    };
                    self.net.black_hole(id);
                    if client_notified {
                        if let Some(link) = self.net.link_mut(id) {
                            link.client_open = false;
                        }
                        self.polling_fail(c, "half-open, noticed");
                        self.drain_client(c);
                    }
                    self.net.collect(id);
                    return;
                }
                let Some(id) = self.clients.get(c).and_then(|s| s.link) else {
                    return;
                };
                self.net.black_hole(id);
                if client_notified {
                    if let Some(link) = self.net.link_mut(id) {
                        link.client_open = false;
                    }
                    self.presence_frames.closed(id);
                    self.message_frames.closed(id);
                    self.send_queue.closed(id);
                    self.ping_pong.link_dropped(id);
                    if let Some(slot) = self.clients.get_mut(c) {
                        slot.link = None;
                        slot.client.handle_closed(now);
                    }
                    self.drain_client(c);
                }
                self.net.collect(id);
            }
            Fault::Reset { client } => {
                for id in self.device_links(client % n) {
                    self.reset(id);
                }
            }
            Fault::StopRead { client, ms } => {
                self.net
                    .stop_reading(client % n, now.add_ms(ms), &mut self.agenda);
            }
            Fault::Spike { extra_ms, ms } => {
                self.net.spike_ms = extra_ms;
                self.expire_at("spike", now.add_ms(ms));
            }
            Fault::Swizzle {
                clients,
                gap_ms,
                ms,
            } => {
                for (k, c) in clients.into_iter().enumerate() {
                    let start = now.add_ms(k as u64 * gap_ms);
                    // Random lengths unclog them in an order of their own.
                    let until = start.add_ms(ms / 2 + self.rng.below(ms + 1));
                    self.agenda.push(
                        start,
                        Ev::ClogStart {
                            client: c % n,
                            until,
                        },
                    );
                }
            }
            Fault::Crash { down_ms, silent } => {
                self.crash(silent);
                self.agenda.push(now.add_ms(down_ms), Ev::Restart);
            }
            Fault::StoreFail { pct, ms } => {
                self.store.fail_pct = pct;
                self.expire_at("storefail", now.add_ms(ms));
            }
            Fault::SlowStore { extra_ms, ms } => {
                self.store.extra_ms = extra_ms;
                self.expire_at("slowstore", now.add_ms(ms));
            }
            Fault::StoreDies {
                kept_pct,
                restart_ms,
                down_ms,
            } => {
                if self.gw.is_some() {
                    self.store
                        .die_at_next_append(kept_pct, (restart_ms, down_ms));
                }
            }
            Fault::Storm => {
                let links: Vec<u64> = (0..self.clients.len())
                    .flat_map(|c| self.device_links(c))
                    .collect();
                for id in links {
                    self.reset(id);
                }
            }
            Fault::ClockStep { step_ms } => self.step_clock(step_ms),
            Fault::Freeze { client, ms } => self.freeze(client % n, now.add_ms(ms)),
            Fault::Members { conversation, keep } => {
                // The API is the server's: with the server down there is no one to ask.
                let n = self.layout.conversations.len().max(1);
                let Some((id, users)) = self.layout.conversations.get(conversation % n).cloned()
                else {
                    return;
                };
                if self.gw.is_none() {
                    return;
                }
                let members = users
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| keep & (1 << (*i as u64 % 64)) != 0)
                    .map(|(_, u)| self.layout.users[*u].member())
                    .collect();
                self.members_touched.insert(id.clone());
                self.store.put(now, id, members, &mut self.rng);
            }
        }
    }

    /// Device `c` freezes until `until`: every connection it has goes silent, both ways,
    /// without a close, and it does nothing until it wakes ([`Sim::thaw`]).
    fn freeze(&mut self, c: usize, until: Instant) {
        let Some(slot) = self.clients.get_mut(c) else {
            return;
        };
        if slot.frozen_until.is_some() {
            return;
        }
        slot.frozen_until = Some(until);
        self.counters.freezes += 1;
        let mut links = self.device_links(c);
        if let Some(p) = self.clients.get(c).and_then(|s| s.polling.as_ref()) {
            links.extend_from_slice(p.detached());
        }
        for id in links {
            self.net.black_hole(id);
            self.net.collect(id);
        }
        self.agenda.push(until, Ev::Thaw { client: c, until });
    }

    /// Device `c` wakes (at its time, or as the faults heal): its deadlines, all past due,
    /// fire now, and what its application put off happens now, in order, each as its own
    /// event. Its connections stay dead; it finds out as its client does (its heartbeat
    /// deadline, a failed send).
    pub(super) fn thaw(&mut self, c: usize) {
        let Some(slot) = self.clients.get_mut(c) else {
            return;
        };
        if slot.frozen_until.take().is_none() {
            return;
        }
        slot.armed = None;
        let put_off = std::mem::take(&mut slot.put_off);
        let now = self.now;
        for ev in put_off {
            self.agenda.push(now, ev);
        }
        tr!(self, "fault", ("c{c} wakes"));
        self.drain_client(c);
    }

    /// Device `c`, frozen, puts `ev` off until it wakes.
    pub(super) fn put_off(&mut self, c: usize, ev: Ev) {
        if let Some(slot) = self.clients.get_mut(c) {
            slot.put_off.push(ev);
        }
    }

    /// If device `c` is frozen, until when; one whose time is up wakes now.
    pub(super) fn frozen(&mut self, c: usize) -> Option<Instant> {
        let until = self.clients.get(c)?.frozen_until?;
        if until <= self.now {
            self.thaw(c);
            return None;
        }
        Some(until)
    }

    /// The operator writes back the layout's member list of every conversation it
    /// changed, as the faults heal; each user's devices join their conversations again
    /// once it is written ([`Sim::members_restored`]).
    pub(super) fn restore_members(&mut self) {
        let now = self.now;
        for id in self.members_touched.clone() {
            let Some((_, users)) = self.layout.conversations.iter().find(|(c, _)| *c == id) else {
                continue;
            };
            let members = users
                .iter()
                .map(|u| self.layout.users[*u].member())
                .collect();
            tr!(self, "sim", ("operator restores the members of {id}"));
            self.store.put(now, id, members, &mut self.rng);
        }
    }

    /// A restored member list was written: the application of each of its users' devices
    /// joins the conversation again (one let out of the room still takes itself for
    /// joined, and one refused it while out stopped asking), as a front end told by its
    /// back end that its user is back in would.
    pub(super) fn members_restored(&mut self, id: &str, users: &BTreeSet<usize>) {
        let now = self.now;
        for i in 0..self.clients.len() {
            let Some(slot) = self.clients.get_mut(i) else {
                continue;
            };
            if users.contains(&slot.user) && crate::check::liveness::expected(slot.client.status())
            {
                slot.client.join(now, id);
                tr!(self, "client", ("c{i} app joins {id} again"));
                self.drain_client(i);
            }
        }
    }

    fn expire_at(&mut self, what: &'static str, at: Instant) {
        let until = self.faults_until.entry(what).or_default();
        *until = (*until).max(at);
        self.agenda.push(at, Ev::FaultsExpire);
    }

    pub(super) fn expire_faults(&mut self) {
        let now = self.now;
        let over = |s: &Self, what: &str| s.faults_until.get(what).is_none_or(|t| *t <= now);
        if over(self, "spike") {
            self.net.spike_ms = 0;
        }
        if over(self, "storefail") {
            self.store.fail_pct = 0;
        }
        if over(self, "slowstore") {
            self.store.extra_ms = 0;
        }
    }

    /// A reset: queued data is dropped and both ends see the connection fail.
    /// Sends a reset (an erroring FIN) down link `id`, towards the server or the client.
    pub(super) fn send_reset(&mut self, now: Instant, id: u64, to_server: bool) {
        self.net.send(
            now,
            id,
            to_server,
            Seg::Fin { error: true },
            &mut self.rng,
            &mut self.agenda,
        );
    }

    fn reset(&mut self, id: u64) {
        let now = self.now;
        let Some(link) = self.net.link(id) else {
            return;
        };
        let (client_open, server_open) = (link.client_open, link.server_open);
        self.net.discard(id, true);
        self.net.discard(id, false);
        self.net.server_gone(id);
        if server_open {
            self.send_reset(now, id, true);
        }
        if client_open {
            self.send_reset(now, id, false);
        }
    }

    /// The liveness phase begins: every stall ends, fault rates drop to zero, a crashed
    /// server comes back, one whose store died is restarted. Dead connections stay dead:
    /// their ends find out as they would.
    pub(super) fn heal(&mut self) {
        let now = self.now;
        for c in 0..self.clients.len() {
            self.thaw(c);
        }
        self.faults_until.clear();
        self.net.heal(now, &mut self.agenda);
        self.store.fail_pct = 0;
        self.store.extra_ms = 0;
        self.store.spare();
        if self.store.is_dead() {
            tr!(self, "fault", ("supervisor restarts the server"));
            self.crash(false);
        }
        if self.gw.is_none() {
            self.start_server();
        }
    }
}
