//! The gateway against a reference model of the contract.
//!
//! `Model` below is a plain, deliberately naive restatement of the contract's rules: lists
//! instead of indexes, a scan instead of a timer queue. A proptest drives the real gateway
//! (through real Socket.IO frames) and the model with the same random sequences of
//! connects, closes, replacements, joins, leaves, sends, retries, clock advances, store
//! failures and member lists replaced (as the HTTP API does), and after every step compares
//! what each client received. Two properties are also checked directly on what clients
//! saw: the rate limit holds in every sliding window, and every acknowledged message is
//! stored once and reaches each joined socket in `seq` order without a gap.

mod gw;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use gw::{config, Gw};
use heartline_core::gateway::BudgetConfig;
use heartline_core::Instant;
use proptest::prelude::*;
use serde_json::{json, Value};

const DEVICES: [(&str, &str); 4] = [
    ("alice", "customer"),
    ("alice", "customer"),
    ("bob", "agent"),
    ("carol", "customer"),
];
const CONVS: [(&str, &[&str]); 3] = [
    ("c1", &["alice:customer", "bob:agent"]),
    ("c2", &["bob:agent", "carol:customer"]),
    ("c3", &["carol:customer"]),
];
const RATE_N: usize = 3;
const RATE_W: u64 = 10_000;
const GRACE: u64 = 3_000;

#[derive(Clone, Debug)]
enum Op {
    Connect(usize),
    Close(usize),
    Join(usize, usize, Option<u64>),
    Leave(usize, usize),
    Send(usize, usize, Option<u8>),
    FailNextAppend,
    Advance(u64),
    /// Conversation `.0`'s members become the users of mask `.1` (bit i: `USERS[i]`).
    SetMembers(usize, u8),
}

/// The distinct users of `DEVICES`, for member lists.
const USERS: [&str; 3] = ["alice:customer", "bob:agent", "carol:customer"];

/// The users of `mask` (bit i: `USERS[i]`), as `userId:userType`.
fn users_in(mask: u8) -> impl Iterator<Item = &'static str> {
    USERS
        .iter()
        .enumerate()
        .filter(move |(i, _)| mask & (1 << i) != 0)
        .map(|(_, u)| *u)
}

fn op() -> impl Strategy<Value = Op> {
    let d = 0usize..4;
    let c = 0usize..3;
    prop_oneof![
        3 => d.clone().prop_map(Op::Connect),
        1 => d.clone().prop_map(Op::Close),
        2 => (d.clone(), c.clone(), proptest::option::of(0u64..4)).prop_map(|(d, c, a)| Op::Join(d, c, a)),
        1 => (d.clone(), c.clone()).prop_map(|(d, c)| Op::Leave(d, c)),
        6 => (d, c.clone(), proptest::option::of(0u8..4)).prop_map(|(d, c, t)| Op::Send(d, c, t)),
        1 => Just(Op::FailNextAppend),
        3 => prop_oneof![0u64..1_500, 2_000u64..6_000].prop_map(Op::Advance),
        1 => (c, 0u8..8).prop_map(|(c, mask)| Op::SetMembers(c, mask)),
    ]
}

fn user_of(d: usize) -> String {
    format!("{}:{}", DEVICES[d].0, DEVICES[d].1)
}

/// The contract, restated naively.
#[derive(Default)]
struct Model {
    per_user: usize,
    /// Each conversation's members as they stand.
    members: Vec<BTreeSet<String>>,
    now: u64,
    /// Live device connections: device -> (ws, joined conversations).
    conns: BTreeMap<usize, (u64, BTreeSet<usize>)>,
    /// Connection order per user: devices, oldest first.
    order: BTreeMap<String, VecDeque<usize>>,
    online: BTreeSet<String>,
    offline_at: BTreeMap<String, u64>,
    /// Accepted send times per user.
    sends: BTreeMap<String, Vec<u64>>,
    /// Stored seqs per conversation (index + 1 = seq).
    stored: BTreeMap<usize, Vec<String>>,
    /// (user, tempId) -> (conversation, seq).
    temps: BTreeMap<(String, u8), (usize, u64)>,
    fail_next: bool,
    /// What each socket should have received during the current step.
    expect: BTreeMap<u64, Vec<String>>,
}

impl Model {
    fn tell(&mut self, ws: u64, what: String) {
        self.expect.entry(ws).or_default().push(what);
    }

    fn is_member(&self, c: usize, user: &str) -> bool {
        self.members.get(c).is_some_and(|m| m.contains(user))
    }

    fn partners(&self, user: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for members in &self.members {
            if members.contains(user) {
                out.extend(members.iter().filter(|m| *m != user).cloned());
            }
        }
        out
    }

    /// A member list replaced: sockets of users no longer in it leave its room, silently;
    /// nothing else is told.
    fn set_members(&mut self, c: usize, mask: u8) {
        let members: BTreeSet<String> = users_in(mask).map(str::to_owned).collect();
        for (d, (_, joined)) in self.conns.iter_mut() {
            if !members.contains(&user_of(*d)) {
                joined.remove(&c);
            }
        }
        if let Some(slot) = self.members.get_mut(c) {
            *slot = members;
        }
    }

    fn sockets_of(&self, user: &str) -> Vec<u64> {
        self.order
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|d| self.conns.get(d).map(|(ws, _)| *ws))
            .collect()
    }

    fn announce(&mut self, user: &str, online: bool) {
        for p in self.partners(user) {
            for ws in self.sockets_of(&p) {
                self.tell(
                    ws,
                    format!("{} {user}", if online { "online" } else { "offline" }),
                );
            }
        }
    }

    fn connect(&mut self, d: usize, ws: u64) {
        let user = user_of(d);
        self.tell(ws, "success".into());
        self.conns.insert(d, (ws, BTreeSet::new()));
        let order = self.order.entry(user.clone()).or_default();
        order.push_back(d);
        let mut displaced = vec![];
        while order.len() > self.per_user {
            if let Some(old) = order.pop_front() {
                displaced.push(old);
            }
        }
        for old in displaced {
            if let Some((old_ws, _)) = self.conns.remove(&old) {
                self.tell(old_ws, "replaced".into());
                self.tell(old_ws, "disconnect".into());
            }
        }
        self.offline_at.remove(&user);
        if self.online.insert(user.clone()) {
            self.announce(&user, true);
        }
    }

    fn close(&mut self, d: usize) {
        let user = user_of(d);
        self.conns.remove(&d);
        if let Some(order) = self.order.get_mut(&user) {
            order.retain(|x| *x != d);
            if order.is_empty() {
                self.offline_at.insert(user, self.now + GRACE);
            }
        }
    }

    fn advance(&mut self, ms: u64) {
        let target = self.now + ms;
        loop {
            let due = self
                .offline_at
                .iter()
                .filter(|(_, t)| **t <= target)
                .min_by_key(|(u, t)| (**t, (*u).clone()))
                .map(|(u, t)| (u.clone(), *t));
            let Some((user, at)) = due else { break };
            self.now = at;
            self.offline_at.remove(&user);
            self.online.remove(&user);
            self.announce(&user, false);
        }
        self.now = target;
    }

    fn join(&mut self, d: usize, c: usize, after: Option<u64>) {
        let Some((ws, _)) = self.conns.get(&d).cloned() else {
            return;
        };
        if !self.is_member(c, &user_of(d)) {
            return self.tell(ws, "ack err forbidden".into());
        }
        let last = self.stored.get(&c).map_or(0, |l| l.len() as u64);
        let missed: Vec<u64> = match after {
            Some(a) => (a + 1..=last).collect(),
            None => vec![],
        };
        self.tell(
            ws,
            format!("ack join c{} last={last} missed={missed:?}", c + 1),
        );
        if let Some((_, joined)) = self.conns.get_mut(&d) {
            joined.insert(c);
        }
    }

    fn leave(&mut self, d: usize, c: usize) {
        let Some((ws, joined)) = self.conns.get_mut(&d) else {
            return;
        };
        joined.remove(&c);
        let ws = *ws;
        self.tell(ws, "ack ok".into());
    }

    /// `store_hit`: whether the gateway took this send to the store while a failure was
    /// armed. A retry of a known tempId is answered from memory while the gateway still
    /// remembers the user, and from the store after it forgot; with the store failing, the
    /// latter is an `internal` refusal the client retries, which the contract allows. A
    /// retry is a duplicate even from a user no longer a member (its message was stored
    /// while it was one, in that conversation); any other send of a non-member with a tempId is looked up in the
    /// store first, and refused `forbidden` (`internal` if the store failed).
    fn send(&mut self, d: usize, c: usize, temp: Option<u8>, store_hit: bool) {
        let Some((ws, _)) = self.conns.get(&d).cloned() else {
            return;
        };
        let user = user_of(d);
        if !self.is_member(c, &user) {
            let known = temp.and_then(|t| self.temps.get(&(user.clone(), t)).copied());
            if store_hit {
                self.fail_next = false;
                self.tell(ws, "ack err internal".into());
                return self.tell(ws, "error internal".into());
            }
            if let Some((sc, seq)) = known.filter(|(sc, _)| *sc == c) {
                self.tell(ws, format!("ack sent c{}#{seq} dup=true", sc + 1));
                return self.tell(ws, format!("sent c{}#{seq}", sc + 1));
            }
            self.tell(ws, "ack err forbidden".into());
            return self.tell(ws, "error forbidden".into());
        }
        if let Some(t) = temp {
            if let Some(&(sc, seq)) = self.temps.get(&(user.clone(), t)) {
                if store_hit {
                    self.fail_next = false;
                    self.tell(ws, "ack err internal".into());
                    return self.tell(ws, "error internal".into());
                }
                self.tell(ws, format!("ack sent c{}#{seq} dup=true", sc + 1));
                return self.tell(ws, format!("sent c{}#{seq}", sc + 1));
            }
        }
        let now = self.now;
        let window: Vec<u64> = self
            .sends
            .get(&user)
            .into_iter()
            .flatten()
            .copied()
            .filter(|t| t + RATE_W > now)
            .collect();
        if window.len() >= RATE_N {
            let retry = (window[0] + RATE_W - now).max(1);
            self.tell(ws, format!("ack err rate_limited {retry}"));
            return self.tell(ws, format!("error rate_limited {retry}"));
        }
        if std::mem::take(&mut self.fail_next) {
            self.tell(ws, "ack err internal".into());
            return self.tell(ws, "error internal".into());
        }
        let list = self.stored.entry(c).or_default();
        list.push(user.clone());
        let seq = list.len() as u64;
        self.sends.entry(user.clone()).or_default().push(now);
        if let Some(t) = temp {
            self.temps.insert((user.clone(), t), (c, seq));
        }
        self.tell(ws, format!("ack sent c{}#{seq} dup=false", c + 1));
        self.tell(ws, format!("sent c{}#{seq}", c + 1));
        let mut deliveries = vec![];
        let members = self.members.get(c).cloned().unwrap_or_default();
        for member in &members {
            for dev in self.order.get(member).into_iter().flatten() {
                if let Some((mws, joined)) = self.conns.get(dev) {
                    let kind = if joined.contains(&c) { "new" } else { "notif" };
                    deliveries.push((*mws, format!("{kind} c{}#{seq}", c + 1)));
                }
            }
        }
        for (mws, what) in deliveries {
            self.tell(mws, what);
        }
    }
}

/// Turns what one socket received into the model's vocabulary.
fn observed(g: &Gw, ws: u64, from_events: usize, from_acks: usize, was_disc: bool) -> Vec<String> {
    let v = g.view(ws);
    let mut out = vec![];
    let conv = |m: &Value| {
        format!(
            "{}#{}",
            m["conversationId"].as_str().unwrap_or("?"),
            m["seq"]
        )
    };
    for (name, p) in &v.events[from_events..] {
        match name.as_str() {
            "connection:success" => out.push("success".into()),
            "connection:replaced" => out.push("replaced".into()),
            "user:online" => out.push(format!(
                "online {}:{}",
                p["userId"].as_str().unwrap_or(""),
                p["userType"].as_str().unwrap_or("")
            )),
            "user:offline" => out.push(format!(
                "offline {}:{}",
                p["userId"].as_str().unwrap_or(""),
                p["userType"].as_str().unwrap_or("")
            )),
            "message:new" => out.push(format!("new {}", conv(p))),
            "message:notification" => out.push(format!("notif {}", conv(&p["message"]))),
            "message:sent" => out.push(format!("sent {}", conv(&p["message"]))),
            "message:error" => out.push(match p.get("retryAfterMs") {
                Some(r) => format!("error {} {r}", p["code"].as_str().unwrap_or("")),
                None => format!("error {}", p["code"].as_str().unwrap_or("")),
            }),
            _ => {}
        }
    }
    for (_, a) in &v.acks[from_acks..] {
        let s = if a.get("missed").is_some() {
            let missed: Vec<u64> = a["missed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["seq"].as_u64())
                .collect();
            format!(
                "ack join {} last={} missed={missed:?}",
                a["conversationId"].as_str().unwrap_or(""),
                a["lastSeq"]
            )
        } else if a.get("message").is_some() {
            format!("ack sent {} dup={}", conv(&a["message"]), a["duplicate"])
        } else if a["ok"] == json!(true) {
            "ack ok".into()
        } else {
            match a.get("retryAfterMs") {
                Some(r) => format!("ack err {} {r}", a["code"].as_str().unwrap_or("")),
                None => format!("ack err {}", a["code"].as_str().unwrap_or("")),
            }
        };
        out.push(s);
    }
    if v.disconnected && !was_disc {
        out.push("disconnect".into());
    }
    out
}

fn run(ops: Vec<Op>, per_user: usize) -> Result<(), TestCaseError> {
    let mut cfg = config();
    cfg.per_user = per_user;
    cfg.rate_messages = RATE_N;
    cfg.rate_window_ms = RATE_W;
    cfg.offline_grace_ms = GRACE;
    cfg.heartbeat_interval_ms = 3_600_000;
    // Four tempIds in play and two remembered: some retries are answered from memory, the
    // rest by the store (appended as duplicates, or looked up when the window is full).
    cfg.temp_ids_remembered = 2;
    cfg.event_budget = BudgetConfig {
        burst: 100_000,
        per_second: 1_000,
        refusal_milli: 1000,
    };
    let mut g = Gw::new(cfg);
    for (id, members) in CONVS {
        let pairs: Vec<(&str, &str)> = members.iter().filter_map(|m| m.split_once(':')).collect();
        g.conversation(id, &pairs);
    }
    let mut m = Model {
        per_user,
        members: CONVS
            .iter()
            .map(|(_, members)| members.iter().map(|u| u.to_string()).collect())
            .collect(),
        ..Model::default()
    };
    let mut next_ws = 1u64;
    // Socket per device as the test knows it, and per socket the last seq seen per conversation.
    let mut ws_of: BTreeMap<usize, u64> = BTreeMap::new();
    let mut accepted: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut delivered: BTreeMap<(u64, String), u64> = BTreeMap::new();
    for op in ops {
        let marks: BTreeMap<u64, (usize, usize, bool)> = g
            .views
            .iter()
            .map(|(ws, v)| (*ws, (v.events.len(), v.acks.len(), v.disconnected)))
            .collect();
        m.expect.clear();
        match op.clone() {
            Op::Connect(d) => {
                if !m.conns.contains_key(&d) {
                    let ws = next_ws;
                    next_ws += 1;
                    ws_of.insert(d, ws);
                    g.connect(ws, DEVICES[d].0, DEVICES[d].1);
                    m.connect(d, ws);
                }
            }
            Op::Close(d) => {
                if let Some((ws, _)) = m.conns.get(&d).cloned() {
                    g.peer_close(ws);
                    m.close(d);
                }
            }
            Op::Join(d, c, after) => {
                if let Some((ws, _)) = m.conns.get(&d).cloned() {
                    let mut p = json!({"conversationId": CONVS[c].0});
                    if let Some(a) = after {
                        p["afterSeq"] = json!(a);
                    }
                    g.emit(ws, "conversation:join", p);
                    m.join(d, c, after);
                }
            }
            Op::Leave(d, c) => {
                if let Some((ws, _)) = m.conns.get(&d).cloned() {
                    g.emit(
                        ws,
                        "conversation:leave",
                        json!({"conversationId": CONVS[c].0}),
                    );
                    m.leave(d, c);
                }
            }
            Op::Send(d, c, t) => {
                if let Some((ws, _)) = m.conns.get(&d).cloned() {
                    let mut p = json!({"conversationId": CONVS[c].0, "content": "hi"});
                    if let Some(t) = t {
                        p["tempId"] = json!(format!("t{t}"));
                    }
                    g.emit(ws, "message:send", p);
                    let store_hit = m.fail_next && !g.fail_next_append;
                    m.send(d, c, t, store_hit);
                }
            }
            Op::FailNextAppend => {
                g.fail_next_append = true;
                m.fail_next = true;
            }
            Op::Advance(ms) => {
                g.advance(ms);
                m.advance(ms);
            }
            Op::SetMembers(c, mask) => {
                let pairs: Vec<(&str, &str)> =
                    users_in(mask).filter_map(|u| u.split_once(':')).collect();
                g.conversation(CONVS[c].0, &pairs);
                m.set_members(c, mask);
            }
        }
        // The user counts the metrics report, kept as states change, are what walking
        // every user counts.
        prop_assert_eq!(g.gw.tally(), g.gw.recount(), "after {:?}", op);
        // Compare what every socket received in this step.
        for (ws, v) in &g.views {
            let (fe, fa, fd) = marks.get(ws).copied().unwrap_or((0, 0, false));
            let mut got = observed(&g, *ws, fe, fa, fd);
            let mut want = m.expect.get(ws).cloned().unwrap_or_default();
            got.sort();
            want.sort();
            prop_assert_eq!(
                &got,
                &want,
                "socket ws{} after {:?}\n{}",
                ws,
                op,
                g.transcript()
            );
            // Delivery in seq order, without gaps, per socket and conversation.
            for (name, p) in &v.events[fe..] {
                if name == "message:new" {
                    let key = (*ws, p["conversationId"].as_str().unwrap_or("").to_owned());
                    let seq = p["seq"].as_u64().unwrap_or(0);
                    if let Some(prev) = delivered.get(&key) {
                        prop_assert_eq!(seq, prev + 1, "gap or reorder on ws{}", ws);
                    }
                    delivered.insert(key, seq);
                }
            }
            for (_, a) in &v.acks[fa..] {
                if let Some(conv) = a["conversationId"]
                    .as_str()
                    .filter(|_| a.get("lastSeq").is_some())
                {
                    delivered.insert((*ws, conv.to_owned()), a["lastSeq"].as_u64().unwrap_or(0));
                }
                if a["duplicate"] == json!(false) {
                    let user = format!(
                        "{}:{}",
                        a["message"]["senderId"].as_str().unwrap_or(""),
                        a["message"]["senderType"].as_str().unwrap_or("")
                    );
                    accepted.entry(user).or_default().push(g.now.as_millis());
                }
            }
        }
        // The rate limit, checked on what clients saw: any window of RATE_W ms holds at most RATE_N.
        for times in accepted.values() {
            for (i, t) in times.iter().enumerate() {
                let in_window = times[i..].iter().filter(|u| **u < t + RATE_W).count();
                prop_assert!(
                    in_window <= RATE_N,
                    "{} sends within {} ms from {}",
                    in_window,
                    RATE_W,
                    t
                );
            }
        }
    }
    // Stored exactly once: one stored message per non-duplicate acknowledgement.
    let acked: usize = accepted.values().map(Vec::len).sum();
    let stored: usize = g.store.messages.values().map(Vec::len).sum();
    prop_assert_eq!(acked, stored);
    for list in g.store.messages.values() {
        for (i, msg) in list.iter().enumerate() {
            prop_assert_eq!(msg.seq, i as u64 + 1);
        }
    }
    let _ = Instant::ZERO;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn gateway_matches_model_one_connection_per_user(ops in proptest::collection::vec(op(), 1..50)) {
        run(ops, 1)?;
    }

    #[test]
    fn gateway_matches_model_two_connections_per_user(ops in proptest::collection::vec(op(), 1..50)) {
        run(ops, 2)?;
    }
}
