//! The gateway's inputs and outputs.
//!
//! Storage is an effect: the gateway asks for a write or a read ([`Effect`]) and is later
//! handed the result ([`Input::Appended`], [`Input::Read`]). Only then does it acknowledge,
//! fan out or answer. The driver decides how (SQLite on a thread, PostgreSQL later, an
//! in-memory store with injected faults in the simulator); the rules stay here.

use std::fmt;

use serde_json::{json, Value};

use crate::engine::{self, CloseReason, Transmit};
use crate::gateway::auth::AuthError;
use crate::gateway::user_key::UserKey;
use crate::ids::SessionId;

/// Identifies one storage effect and its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op{}", self.0)
    }
}

/// A member of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    /// The user id (`sub`).
    pub user_id: String,
    /// The user type.
    pub user_type: String,
}

impl Member {
    /// A member from its user id and type.
    pub fn new(user_id: impl Into<String>, user_type: impl Into<String>) -> Self {
        Member {
            user_id: user_id.into(),
            user_type: user_type.into(),
        }
    }

    /// The user key, `userId:userType`.
    pub fn key(&self) -> UserKey {
        UserKey::new(&self.user_id, &self.user_type)
    }
}

/// A stored chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Unique id.
    pub id: String,
    /// Its conversation.
    pub conversation_id: String,
    /// Position in the conversation: from 1, without gaps.
    pub seq: u64,
    /// Sender's user id.
    pub sender_id: String,
    /// Sender's user type.
    pub sender_type: String,
    /// The text.
    pub content: String,
    /// The sender's idempotency key, if it gave one.
    pub temp_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

impl Message {
    /// The contract's message object.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "conversationId": self.conversation_id,
            "seq": self.seq,
            "senderId": self.sender_id,
            "senderType": self.sender_type,
            "content": self.content,
            "tempId": self.temp_id,
            "createdAt": self.created_at_ms,
        })
    }
}

/// A message to store. The store assigns `seq` (last + 1 in its conversation) and answers
/// [`AppendOutcome::Duplicate`] if the sender already used `temp_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    /// Unique id for the new message.
    pub id: String,
    /// Its conversation.
    pub conversation_id: String,
    /// Sender's user id.
    pub sender_id: String,
    /// Sender's user type.
    pub sender_type: String,
    /// The text.
    pub content: String,
    /// Idempotency key.
    pub temp_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// What a committed append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored as this message.
    Stored(Message),
    /// The sender's `temp_id` was used before: this is the message stored then.
    Duplicate(Message),
    /// Nothing stored: by the time the store came to it, the conversation's member list
    /// had been replaced without the sender. The gateway admits a send by the lists it
    /// has been told of, and a list the store commits reaches it only after that commit
    /// is flushed; a send admitted in between must not be stored after the list that
    /// removed its sender (the operator was told the removal is done). The store checks
    /// membership in the append's own transaction; it needs to only where a list was
    /// written since the gateway admitted the send, and answers this rather than store.
    NotMember,
}

impl AppendOutcome {
    /// The stored message, new or earlier; `None` if nothing was stored.
    pub fn message(&self) -> Option<&Message> {
        match self {
            AppendOutcome::Stored(m) | AppendOutcome::Duplicate(m) => Some(m),
            AppendOutcome::NotMember => None,
        }
    }

    /// The stored message, new or earlier; `None` if nothing was stored.
    pub fn into_message(self) -> Option<Message> {
        match self {
            AppendOutcome::Stored(m) | AppendOutcome::Duplicate(m) => Some(m),
            AppendOutcome::NotMember => None,
        }
    }

    /// Whether it was a retry of an earlier store.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, AppendOutcome::Duplicate(_))
    }
}

/// Stored messages of one conversation, ascending by `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The conversation.
    pub conversation_id: String,
    /// Only messages with a greater `seq`.
    pub after_seq: Option<u64>,
    /// Only messages with a smaller `seq`. Without `after_seq` the page is the last
    /// messages (before this one, if given), not the first.
    pub before_seq: Option<u64>,
    /// At most this many.
    pub limit: usize,
    /// The store may stop once the messages it has read hold this many bytes of content
    /// (the last one read making it more is left out, but the first is always given):
    /// what the reply can carry, so that a read for a reply of 128 KiB does not load a
    /// thousand messages of 10,000 characters. `usize::MAX` for no bound.
    pub max_content_bytes: usize,
}

/// The store failed; the operation had no effect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("store failure: {0}")]
pub struct StoreFailure(pub String);

/// Something the gateway asks its driver to do with storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Store a message durably, then answer with [`Input::Appended`].
    Append {
        /// The operation.
        op: OpId,
        /// The message.
        request: AppendRequest,
    },
    /// Read messages, then answer with [`Input::Read`].
    Read {
        /// The operation.
        op: OpId,
        /// What to read.
        request: ReadRequest,
    },
    /// Look up the message `sender` stored under `temp_id`, then answer with
    /// [`Input::Found`]. Asked for a send the rate limit would refuse, or one from a user
    /// no longer a member of its conversation: if it is a retry of a stored message, the
    /// answer is that message (`duplicate: true`), not a refusal.
    /// It must see every append asked before it; it may also see appends asked after it
    /// (the runtime answers it once the run of appends around it is committed), which
    /// only means the tempId is stored by then.
    FindSent {
        /// The operation.
        op: OpId,
        /// Who sent it.
        sender: Member,
        /// The sender's idempotency key.
        temp_id: String,
    },
}

/// What the gateway is handed.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// The network did something.
    Network(engine::Input),
    /// An append finished.
    Appended {
        /// The operation.
        op: OpId,
        /// Its result.
        result: Result<AppendOutcome, StoreFailure>,
    },
    /// A read finished.
    Read {
        /// The operation.
        op: OpId,
        /// Its result.
        result: Result<Vec<Message>, StoreFailure>,
    },
    /// A [`Effect::FindSent`] finished: the stored message, if there is one.
    Found {
        /// The operation.
        op: OpId,
        /// Its result.
        result: Result<Option<Message>, StoreFailure>,
    },
    /// Sends a user made shortly before this process started (read from the store at start),
    /// so the rate window survives a restart: a crash is not a way around the limit.
    SendsRestored {
        /// The sender.
        sender: Member,
        /// When each was created, Unix milliseconds.
        created_at_ms: Vec<u64>,
    },
    /// A conversation was created or its members replaced (HTTP API, or loading at start).
    ConversationPut {
        /// Its id.
        id: String,
        /// Its members.
        members: Vec<Member>,
        /// The last `seq` stored in it.
        last_seq: u64,
    },
    /// The driver read the wall clock: Unix milliseconds at the `now` it hands over with
    /// this. The gateway keeps its deadlines on the monotonic `now`, and states wall-clock
    /// times (`serverTime`, `createdAt`, token expiry) as `now` plus an offset; a clock
    /// that stepped (set at last by NTP after a boot with a wrong clock, a virtual machine
    /// resumed after a pause that the monotonic clock did not count) moves that offset.
    /// Drivers read it every few seconds; differences under
    /// [`crate::gateway::WALL_CLOCK_TOLERANCE_MS`] are ignored.
    WallClock {
        /// Unix milliseconds.
        wall_ms: u64,
    },
}

/// The contract's error codes for refused requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorCode {
    /// Too many sends in the window.
    RateLimited,
    /// Malformed request.
    InvalidPayload,
    /// Not a member.
    Forbidden,
    /// No such conversation.
    NotFound,
    /// Content too long.
    TooLarge,
    /// The server failed.
    Internal,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::RateLimited,
        ErrorCode::InvalidPayload,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Something worth logging or counting; changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A user's connection is established.
    Connected {
        /// The session.
        session: SessionId,
        /// Its user key.
        user: UserKey,
    },
    /// A connect was refused.
    Refused {
        /// The session.
        session: SessionId,
        /// Why.
        error: AuthError,
    },
    /// A newer connection displaced an older one of the same user.
    Replaced {
        /// The user key.
        user: UserKey,
        /// The displaced session.
        old: SessionId,
        /// The newer session.
        new: SessionId,
    },
    /// A user came online.
    Online {
        /// The user key.
        user: UserKey,
    },
    /// A user went offline (after the grace period).
    Offline {
        /// The user key.
        user: UserKey,
    },
    /// A session ended.
    Closed {
        /// The session.
        session: SessionId,
        /// Its user key, if it had authenticated.
        user: Option<UserKey>,
        /// Why.
        reason: CloseReason,
    },
    /// A send was acknowledged.
    Accepted {
        /// The sender's user key.
        user: UserKey,
        /// The conversation.
        conversation_id: String,
        /// The stored message's seq.
        seq: u64,
        /// Whether it was a retry of an earlier send.
        duplicate: bool,
    },
    /// A send was refused.
    SendRefused {
        /// The sender's user key.
        user: UserKey,
        /// Why.
        code: ErrorCode,
    },
}

/// One thing the driver must act on, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Bytes or a close for the network.
    Transmit(Transmit),
    /// A storage operation to perform.
    Effect(Effect),
    /// Something to log or count.
    Notice(Notice),
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::Append { op, request } => write!(
                f,
                "{op} store append {} by {}:{} {:?} tempId={:?}",
                request.conversation_id,
                request.sender_id,
                request.sender_type,
                request.content,
                request.temp_id
            ),
            Effect::Read { op, request } => write!(
                f,
                "{op} store read {} after={:?} before={:?} limit={}",
                request.conversation_id, request.after_seq, request.before_seq, request.limit
            ),
            Effect::FindSent {
                op,
                sender,
                temp_id,
            } => write!(f, "{op} store find {} tempId={temp_id:?}", sender.key()),
        }
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Connected { session, user } => write!(f, "{session} connected as {user}"),
            Notice::Refused { session, error } => write!(f, "{session} refused: {error}"),
            Notice::Replaced { user, old, new } => write!(f, "{user}: {new} replaces {old}"),
            Notice::Online { user } => write!(f, "{user} online"),
            Notice::Offline { user } => write!(f, "{user} offline"),
            Notice::Closed {
                session,
                user,
                reason,
            } => match user {
                Some(u) => write!(f, "{session} ({u}) closed: {reason}"),
                None => write!(f, "{session} closed: {reason}"),
            },
            Notice::Accepted {
                user,
                conversation_id,
                seq,
                duplicate,
            } => write!(
                f,
                "{user} send accepted {conversation_id}#{seq}{}",
                if *duplicate { " (duplicate)" } else { "" }
            ),
            Notice::SendRefused { user, code } => {
                write!(f, "{user} send refused: {}", code.as_str())
            }
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Network(i) => write!(f, "{i}"),
            Input::Appended { op, result } => match result {
                Ok(AppendOutcome::Stored(m)) => {
                    write!(f, "{op} stored {}#{}", m.conversation_id, m.seq)
                }
                Ok(AppendOutcome::Duplicate(m)) => {
                    write!(f, "{op} duplicate of {}#{}", m.conversation_id, m.seq)
                }
                Ok(AppendOutcome::NotMember) => {
                    write!(f, "{op} not stored: the sender is no longer a member")
                }
                Err(e) => write!(f, "{op} append failed: {e}"),
            },
            Input::Read { op, result } => match result {
                Ok(ms) => write!(
                    f,
                    "{op} read {} messages {:?}",
                    ms.len(),
                    ms.iter().map(|m| m.seq).collect::<Vec<_>>()
                ),
                Err(e) => write!(f, "{op} read failed: {e}"),
            },
            Input::Found { op, result } => match result {
                Ok(Some(m)) => write!(f, "{op} found {}#{}", m.conversation_id, m.seq),
                Ok(None) => write!(f, "{op} found nothing"),
                Err(e) => write!(f, "{op} find failed: {e}"),
            },
            Input::WallClock { wall_ms } => write!(f, "wall clock {wall_ms}"),
            Input::SendsRestored {
                sender,
                created_at_ms,
            } => write!(
                f,
                "{} restored {} recent sends",
                sender.key(),
                created_at_ms.len()
            ),
            Input::ConversationPut {
                id,
                members,
                last_seq,
            } => write!(
                f,
                "conversation {id} members [{}] lastSeq={last_seq}",
                members
                    .iter()
                    .map(|m| m.key().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Transmit(t) => write!(f, "<- {t}"),
            Output::Effect(e) => write!(f, ">> {e}"),
            Output::Notice(n) => write!(f, "== {n}"),
        }
    }
}
