//! The workload: who the users are, what they talk about, and what the hostile ones try.
//!
//! Honest clients are the real [`heartline_core::client::Client`], several devices per
//! user, some idle (connected, joined, silent), the others sending chat traffic into shared
//! conversations, now and then in bursts beyond the rate limit. Hostile actors speak raw
//! frames: floods, garbage, oversize frames, missing, forged and expired tokens, and
//! connection churn with valid tokens.

use heartline_core::codec::Frame;
use heartline_core::gateway::auth::{issue, Claims};
use heartline_core::gateway::Member;
use heartline_core::Rng;
use serde_json::{json, Value};

/// The secret the simulated server signs tokens with.
pub const SECRET: &[u8] = b"heartline-sim-secret";
/// Unix time at the simulation's `Instant::ZERO`: 2026-01-01T00:00:00Z.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// Largest frame the simulated server accepts.
pub const MAX_PAYLOAD_BYTES: u64 = 16_384;

/// A user: id and type.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct User {
    /// The user id.
    pub id: String,
    /// The user type.
    pub kind: String,
}

impl User {
    /// The user key, `id:type`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.id, self.kind)
    }

    /// As a conversation member.
    pub fn member(&self) -> Member {
        Member {
            user_id: self.id.clone(),
            user_type: self.kind.clone(),
        }
    }
}

/// How long before the epoch an expired token ran out, seconds: a day, so that it is
/// expired on a server whose wall clock was stepped back, too.
const EXPIRED_AGO_S: u64 = 86_400;

/// A signed token for `user`, valid `valid_s` seconds after the epoch (0: already expired).
/// An empty token if signing fails, which the server refuses like any bad token.
pub fn token(user: &User, valid_s: u64, secret: &[u8]) -> String {
    let exp_s = match valid_s {
        0 => EPOCH_MS / 1000 - EXPIRED_AGO_S,
        valid_s => EPOCH_MS / 1000 + valid_s,
    };
    token_until(user, exp_s, secret)
}

/// A signed token for `user` that expires at `exp_s`, Unix seconds.
pub fn token_until(user: &User, exp_s: u64, secret: &[u8]) -> String {
    let claims = Claims {
        sub: user.id.clone(),
        user_type: user.kind.clone(),
        exp: exp_s,
        role: None,
    };
    issue(secret, &claims).unwrap_or_default()
}

/// A token for `user` that is invalid for the server, one way or another, drawn: signed
/// with another secret, unsigned (`alg: none`), HS512 with the server's secret, HS256
/// with the server's secret but no `exp`, or three dotted words that are not a JWT.
pub fn forged(user: &User, rng: &mut Rng) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let exp = EPOCH_MS / 1000 + 86_400;
    let claims = json!({ "sub": user.id, "userType": user.kind, "exp": exp });
    match rng.below(5) {
        0 => token(user, 86_400, b"not-the-secret"),
        1 => {
            let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
            format!(
                "{}.{}.",
                part(&json!({"alg": "none", "typ": "JWT"})),
                part(&claims)
            )
        }
        2 => encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap_or_default(),
        3 => {
            let no_exp = json!({ "sub": user.id, "userType": user.kind });
            encode(
                &Header::new(Algorithm::HS256),
                &no_exp,
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap_or_default()
        }
        _ => "not.a.jwt".to_owned(),
    }
}

/// Who is who: devices to users, users to conversations.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Users, by index.
    pub users: Vec<User>,
    /// The user of each honest client.
    pub user_of: Vec<usize>,
    /// Conversations: id and member user indexes.
    pub conversations: Vec<(String, Vec<usize>)>,
    /// Conversations of each user.
    pub convs_of: Vec<Vec<usize>>,
}

impl Layout {
    /// `clients` devices, `devices` per user; groups of up to five users share a
    /// conversation, and neighbouring groups share a second one.
    pub fn new(clients: usize, devices: usize) -> Self {
        let devices = devices.max(1);
        let n_users = clients.div_ceil(devices).max(1);
        let users: Vec<User> = (0..n_users)
            .map(|u| User {
                id: format!("u{u}"),
                kind: if u % 3 == 2 { "agent" } else { "customer" }.into(),
            })
            .collect();
        let user_of = (0..clients).map(|c| c / devices).collect();
        let group = 5;
        let mut conversations = vec![];
        for (g, start) in (0..n_users).step_by(group).enumerate() {
            let members: Vec<usize> = (start..(start + group).min(n_users)).collect();
            conversations.push((format!("g{g}"), members));
        }
        let groups = conversations.len();
        for g in 0..groups.saturating_sub(1) {
            // The last user of a group and the first of the next one.
            let a = (g * group + group - 1).min(n_users - 1);
            let b = ((g + 1) * group).min(n_users - 1);
            conversations.push((format!("x{g}"), vec![a, b]));
        }
        let mut convs_of = vec![vec![]; n_users];
        for (i, (_, members)) in conversations.iter().enumerate() {
            for m in members {
                convs_of[*m].push(i);
            }
        }
        Layout {
            users,
            user_of,
            conversations,
            convs_of,
        }
    }
}

/// `connect`, then a join and a send asking for acks, as if it had been accepted.
fn after_connect(connect: Frame) -> Vec<Frame> {
    let g0 = json!({ "conversationId": "g0" });
    let send = json!({ "conversationId": "g0", "content": "hi", "tempId": "b1" });
    vec![
        connect,
        Frame::text(format!("42/chat,0{}", json!(["conversation:join", g0]))),
        Frame::text(format!("42/chat,1{}", json!(["message:send", send]))),
    ]
}

/// The hostile tricks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Hundreds of events as fast as possible.
    Flood,
    /// Frames that are not Engine.IO.
    Garbage,
    /// A frame over the payload limit.
    Oversize,
    /// A connect without a token.
    NoToken,
    /// A token the server must take for invalid: signed with another secret, `alg: none`,
    /// HS512 with the server's secret, HS256 with no `exp`, or not a JWT at all (one of
    /// them, drawn).
    ForgedToken,
    /// An expired token.
    ExpiredToken,
    /// A connection that says nothing.
    Silent,
    /// Tries to take a member's identity with `auth:refresh`, then joins, reads and sends
    /// to a conversation it is not a member of.
    Trespass,
    /// Many connections of one user in quick succession, each replacing the last.
    Churn,
    /// Connects, disconnects its namespace at once, and keeps the connection, answering
    /// PINGs.
    Leave,
}

impl Attack {
    /// Draws one.
    pub fn draw(rng: &mut Rng) -> Attack {
        const ALL: [Attack; 10] = [
            Attack::Flood,
            Attack::Garbage,
            Attack::Oversize,
            Attack::NoToken,
            Attack::ForgedToken,
            Attack::ExpiredToken,
            Attack::Silent,
            Attack::Trespass,
            Attack::Churn,
            Attack::Leave,
        ];
        ALL[rng.below(ALL.len() as u64) as usize]
    }

    /// The frames one connection of this attack sends after opening, and how many
    /// connections it opens.
    pub fn script(self, user: &User, rng: &mut Rng) -> (Vec<Frame>, usize) {
        let good = token(user, 86_400, SECRET);
        let connect = |t: &str| Frame::text(format!("40/chat,{}", json!({ "token": t })));
        match self {
            Attack::Flood => {
                let mut v = vec![connect(&good)];
                v.extend((0..200).map(|_| Frame::text("42/chat,[\"ping\",{}]")));
                (v, 1)
            }
            Attack::Garbage => {
                let junk: String = (0..1 + rng.below(40))
                    .map(|_| char::from(b' ' + rng.below(94) as u8))
                    .collect();
                (vec![connect(&good), Frame::text(junk)], 1)
            }
            Attack::Oversize => {
                let big = "x".repeat(MAX_PAYLOAD_BYTES as usize + 1);
                (
                    vec![
                        connect(&good),
                        Frame::text(format!("42/chat,[\"ping\",\"{big}\"]")),
                    ],
                    1,
                )
            }
            // Each bad connect is followed by what a connected client would send: none of
            // it may be served.
            Attack::NoToken => (after_connect(Frame::text("40/chat,")), 1),
            Attack::ForgedToken => (after_connect(connect(&forged(user, rng))), 1),
            Attack::ExpiredToken => (after_connect(connect(&token(user, 0, SECRET))), 1),
            Attack::Silent => (vec![], 1),
            Attack::Trespass => {
                let g0 = json!({ "conversationId": "g0" });
                // First, refreshes that would make it someone else or extend nothing: a
                // member's token, its own id as another user type, its own token again.
                let member = User {
                    id: "u0".into(),
                    kind: "customer".into(),
                };
                let retyped = User {
                    id: user.id.clone(),
                    kind: "agent".into(),
                };
                let refresh = |id: u64, t: &str| {
                    Frame::text(format!(
                        "42/chat,{id}{}",
                        json!(["auth:refresh", { "token": t }])
                    ))
                };
                let mut v = vec![
                    connect(&good),
                    refresh(200, &token(&member, 172_800, SECRET)),
                    refresh(201, &token(&retyped, 172_800, SECRET)),
                    refresh(202, &good),
                    Frame::text(format!("42/chat,100{}", json!(["conversation:join", g0]))),
                    Frame::text(format!("42/chat,101{}", json!(["message:history", g0]))),
                ];
                v.extend((0..10).map(|i| {
                    Frame::text(format!(
                        "42/chat,{i}{}",
                        json!(["message:send", { "conversationId": "g0", "content": "hi", "tempId": format!("h{i}") }])
                    ))
                }));
                (v, 1)
            }
            Attack::Churn => (vec![connect(&good)], 3 + rng.below(8) as usize),
            Attack::Leave => (vec![connect(&good), Frame::text("41/chat,")], 1),
        }
    }

    /// A short name for traces.
    pub fn name(self) -> &'static str {
        match self {
            Attack::Flood => "flood",
            Attack::Garbage => "garbage",
            Attack::Oversize => "oversize",
            Attack::NoToken => "no-token",
            Attack::ForgedToken => "forged-token",
            Attack::ExpiredToken => "expired-token",
            Attack::Silent => "silent",
            Attack::Trespass => "trespass",
            Attack::Churn => "churn",
            Attack::Leave => "leave",
        }
    }
}
