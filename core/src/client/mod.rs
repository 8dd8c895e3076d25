//! Heartline's client: connection status, reconnection and delivery guarantees as a pure
//! state machine, so the simulator can prove them and any runtime can drive them.
//!
//! What it adds over a bare Socket.IO client:
//!
//! - a status a front end can show: connecting, connected, reconnecting (with the attempt
//!   number), disconnected, failed, replaced;
//! - reconnection with exponential backoff and jitter, a connect timeout per attempt, and a
//!   bounded number of attempts;
//! - an outbox: a send stays queued until the server acknowledges it and is resent after a
//!   reconnect with its original `tempId`, so a retry can never store a message twice; a
//!   `rate_limited` answer is retried after `retryAfterMs`;
//! - catch-up: joined conversations are rejoined with `afterSeq` = the last `seq` seen,
//!   [`MAX_JOINS_IN_FLIGHT`] at a time, and messages are handed to the application once,
//!   in order; a `message:notification` for a joined conversation (the server let the
//!   connection out of the room when the member list changed) rejoins it the same way,
//!   after the catch-up under way if it came during one;
//! - no reconnection after `connection:replaced` or a refused connect: two devices of one
//!   user must never take turns replacing each other.
//!
//! The driver opens a WebSocket to `/socket.io/?EIO=4&transport=websocket` when asked
//! ([`Output::Open`]), feeds frames and closes back, and drains outputs after every input,
//! exactly like the server side.

mod backoff;
mod catchup;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::{json, Value};

pub use backoff::Backoff;

use catchup::CatchUp;

use crate::codec::engine::{Data, Packet as EioPacket};
use crate::codec::socket::{Decoder, Packet as SioPacket, PacketType};
use crate::codec::Frame;
use crate::ids::Rng;
use crate::time::{Clock, Instant};

/// Sends on the wire awaiting their ack at any time. An outbox that filled up while
/// offline is not fired at the server all at once: past the rate limit each extra send
/// is refused, and enough refusals in a burst end the connection as a flood.
const MAX_SENDS_IN_FLIGHT: usize = 4;

/// Joins under way at any time. A join is under way from when it is sent until its
/// catch-up is done: its reply, the history reads that complete it, and any wait the
/// server asked for before trying again. A client in many conversations rejoins them all
/// after a reconnect, and each reply may carry up to 1,000 missed messages: sent all at
/// once, a burst of such replies can outgrow the server's send queue for a slow link, and
/// past the connection's event budget each extra join is only turned away. The rest wait
/// on the client, in the order they were asked for.
pub const MAX_JOINS_IN_FLIGHT: usize = 4;

/// Sends the outbox holds by default ([`ClientConfig::max_outbox`]).
pub const DEFAULT_MAX_OUTBOX: usize = 1_000;

/// Bytes of content and conversation ids the outbox holds by default
/// ([`ClientConfig::max_outbox_bytes`]).
pub const DEFAULT_MAX_OUTBOX_BYTES: usize = 8 << 20;

/// Pause before a join the server failed to serve is tried again.
const JOIN_RETRY_MS: u64 = 1_000;

/// Settings of one client.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    /// The application namespace.
    pub namespace: String,
    /// The token sent in the CONNECT payload.
    pub token: String,
    /// Reconnection policy.
    pub backoff: Backoff,
    /// An attempt that has not connected the namespace within this long is abandoned.
    pub connect_timeout_ms: u64,
    /// Seed of the generator behind jitter and `tempId`s. Give every client its own (drawn
    /// from the platform's entropy by the application): the server keeps the `tempId`s a
    /// user has used, so two clients of one user with the same seed (an application
    /// restarted, say) would send the same `tempId`s, and the later client's messages
    /// would be answered as duplicates of the earlier's; the same seed also means the
    /// same reconnection delays, the storm jitter exists to spread. The default is 0, which
    /// the runtime's client (`heartline_runtime::reconnecting`) replaces with a seed from
    /// the system's entropy; a driver of its own must draw one itself.
    pub seed: u64,
    /// Most sends waiting for their ack at once. An application that keeps sending while
    /// the server is out of reach would otherwise queue without end, and then, once back,
    /// wait behind the whole queue for every new message; past this, a send is refused
    /// at once ([`SendError::OutboxFull`]) and the application can tell its user.
    pub max_outbox: usize,
    /// Most bytes (content and conversation id) of the sends waiting for their ack, for
    /// the same reason: a thousand long messages are a lot of memory.
    pub max_outbox_bytes: usize,
    /// Test-only: deliberate bugs for the simulator's mutation tests. All off by default.
    #[cfg(feature = "mutations")]
    pub mutations: crate::engine::Mutations,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            namespace: "/chat".into(),
            token: String::new(),
            backoff: Backoff::default(),
            connect_timeout_ms: 20_000,
            seed: 0,
            max_outbox: DEFAULT_MAX_OUTBOX,
            max_outbox_bytes: DEFAULT_MAX_OUTBOX_BYTES,
            #[cfg(feature = "mutations")]
            mutations: crate::engine::Mutations::default(),
        }
    }
}

/// Why a send was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The outbox holds [`ClientConfig::max_outbox`] sends, or this one would take it past
    /// [`ClientConfig::max_outbox_bytes`]: the server has not acknowledged them (it is out
    /// of reach, or slow). Nothing was queued; try again once some are acknowledged.
    #[error("the outbox is full: {messages} sends of {bytes} bytes wait for the server's ack")]
    OutboxFull {
        /// Sends waiting.
        messages: usize,
        /// Their bytes.
        bytes: usize,
    },
}

/// What a front end shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not started, or closed by the application.
    Idle,
    /// The first attempt is under way.
    Connecting,
    /// Connected to the namespace.
    Connected,
    /// Waiting for, or making, reconnection attempt `attempt`.
    Reconnecting {
        /// 1-based attempt number.
        attempt: u32,
    },
    /// The server sent this client away (Socket.IO DISCONNECT); it does not come back.
    Disconnected,
    /// A newer connection of the same user took over; it does not come back.
    Replaced,
    /// Attempts used up, or the connect was refused (e.g. bad token).
    Failed {
        /// Why.
        reason: String,
    },
}

/// What the driver must do, or pass on to the application.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Open a new WebSocket to the server.
    Open,
    /// Send a frame on the current WebSocket.
    Send(Frame),
    /// Close the current WebSocket.
    Close,
    /// For the application.
    Notice(Notice),
}

/// What the application should know, in the order it happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// The status changed.
    Status(Status),
    /// A chat message, delivered once and in `seq` order per conversation.
    Message(Value),
    /// The server acknowledged a send (stored, or a duplicate of an earlier store).
    Acked {
        /// The send's idempotency key.
        temp_id: String,
        /// The stored message.
        message: Value,
    },
    /// A send refused for good (not retried): by the server, or by the client itself with
    /// `too_large` for a message larger than the server's `maxPayload`, on which the server
    /// would close the connection (and the send go again after every reconnect).
    SendFailed {
        /// The send's idempotency key.
        temp_id: String,
        /// The contract's error code.
        code: String,
    },
    /// The server answered an `auth:refresh` ([`Client::refresh_token`]): `None` if it
    /// took the token, else its error; or the client refused to send a token longer than
    /// the server's `maxPayload` (the server would close the connection on it): `too_large`.
    Refreshed {
        /// Why the token was refused: the server's error, or `too_large`.
        error: Option<String>,
    },
    /// Any other event from the server, as it came: (name, payload). Events the client
    /// acts on itself (`connection:replaced`, `message:notification`, `auth:expired`, ...)
    /// are passed on too; `message:new` is not: it comes as [`Notice::Message`].
    Event(String, Value),
}

/// A send waiting for its acknowledgement.
#[derive(Clone, Debug)]
struct Outgoing {
    temp_id: String,
    conversation_id: String,
    content: String,
    /// Ack id of the attempt on the current connection, if sent on it.
    ack: Option<u64>,
    /// Do not send before this (after `rate_limited`).
    not_before: Instant,
}

impl Outgoing {
    /// What it counts against [`ClientConfig::max_outbox_bytes`].
    fn bytes(&self) -> usize {
        self.content.len() + self.conversation_id.len()
    }
}

/// Where the current connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No transport.
    Down,
    /// Transport asked for; waiting for the Engine.IO open packet and the namespace.
    Opening,
    /// Namespace connected.
    Up,
}

/// The client state machine.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    rng: Rng,
    clock: Clock,
    status: Status,
    phase: Phase,
    /// Attempt counter while reconnecting.
    attempt: u32,
    /// Whether the last server event was `connection:replaced`.
    replaced: bool,
    /// The server refused the last connect (CONNECT_ERROR: a token missing, forged or
    /// expired): no reconnection until the application acts, as by a fresh token.
    refused: bool,
    decoder: Decoder,
    ping_deadline_ms: u64,
    /// The largest message the server takes (its open packet's `maxPayload`): a server
    /// closes the connection on a larger one, so a send that would make one is failed
    /// `too_large` rather than sent, again after every reconnect, for ever.
    max_payload: u64,
    /// Deadlines: next attempt, connect timeout, server silence, rate-limit retry.
    reconnect_at: Option<Instant>,
    connect_deadline: Option<Instant>,
    silence_deadline: Option<Instant>,
    outbox: VecDeque<Outgoing>,
    /// The outbox's [`Outgoing::bytes`], summed.
    outbox_bytes: usize,
    next_ack: u64,
    /// Ack ids of joins in flight: ack id -> conversation.
    joins: BTreeMap<u64, String>,
    /// Ack ids of `auth:refresh` requests in flight.
    refreshes: BTreeSet<u64>,
    /// The token last presented to the server (by a CONNECT or an `auth:refresh`).
    presented: String,
    /// Whether this transport carried a CONNECT (the server's open packet came).
    connect_sent: bool,
    /// Conversations with a join under way (see [`MAX_JOINS_IN_FLIGHT`]).
    joining: BTreeSet<String>,
    /// Joins waiting for room among those under way, in order.
    join_queue: VecDeque<String>,
    /// Joins the server could not serve (store failure), to try again at the given time.
    rejoin_at: BTreeMap<String, Instant>,
    /// Conversations the application asked to join again while a join of them was on the
    /// wire: that join's answer speaks for the moment it was served, so a refusal of it
    /// does not end the later request, which is sent then.
    asked_again: BTreeSet<String>,
    /// Conversations the server let this connection out of after answering their join,
    /// while the join's catch-up was still being read: joined again once it is done.
    let_out: BTreeSet<String>,
    /// Joined conversations, what has been handed to the application, what is held back.
    convs: CatchUp,
    /// Ack ids of history requests in flight: ack id -> conversation.
    history: BTreeMap<u64, String>,
    next_temp: u64,
    out: VecDeque<Output>,
}

impl Client {
    /// A client that has not started; call [`Client::connect`].
    pub fn new(config: ClientConfig) -> Self {
        Client {
            rng: Rng::from_seed(config.seed),
            config,
            clock: Clock::default(),
            status: Status::Idle,
            phase: Phase::Down,
            attempt: 0,
            replaced: false,
            refused: false,
            decoder: Decoder::new(10),
            ping_deadline_ms: 0,
            max_payload: u64::MAX,
            reconnect_at: None,
            connect_deadline: None,
            silence_deadline: None,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            next_ack: 0,
            joins: BTreeMap::new(),
            refreshes: BTreeSet::new(),
            presented: String::new(),
            connect_sent: false,
            joining: BTreeSet::new(),
            join_queue: VecDeque::new(),
            rejoin_at: BTreeMap::new(),
            asked_again: BTreeSet::new(),
            let_out: BTreeSet::new(),
            convs: CatchUp::default(),
            history: BTreeMap::new(),
            next_temp: 1,
            out: VecDeque::new(),
        }
    }

    /// The current status.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Sends not yet acknowledged.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Joined conversations with the last `seq` delivered.
    pub fn joined(&self) -> &BTreeMap<String, Option<u64>> {
        &self.convs.joined
    }

    /// The next output. Drain until `None`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (retry, rejoin) = if self.phase == Phase::Up {
            // With the window full, the next ack (not a deadline) is what lets a send go;
            // otherwise the first send not on the wire, which the others wait behind.
            let in_flight = self.outbox.iter().filter(|o| o.ack.is_some()).count();
            let retry = self
                .outbox
                .iter()
                .find(|o| o.ack.is_none())
                .filter(|_| in_flight < MAX_SENDS_IN_FLIGHT)
                .map(|o| o.not_before);
            (retry, self.rejoin_at.values().min().copied())
        } else {
            (None, None)
        };
        [
            self.reconnect_at,
            self.connect_deadline,
            self.silence_deadline,
            retry,
            rejoin,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn set_status(&mut self, status: Status) {
        if self.status != status {
            self.status = status.clone();
            self.out.push_back(Output::Notice(Notice::Status(status)));
        }
    }

    // ---- commands ------------------------------------------------------------------------

    /// Starts connecting.
    pub fn connect(&mut self, now: Instant) {
        let now = self.clock.observe(now);
        if self.phase != Phase::Down {
            return;
        }
        self.attempt = 0;
        self.replaced = false;
        self.refused = false;
        // Connecting while a reconnection is pending: this attempt replaces that one.
        self.clear_deadlines();
        self.set_status(Status::Connecting);
        self.open(now);
    }

    /// The token sent with every later connect attempt, as `socket.io-client` takes a new
    /// `socket.auth`: once the application has a fresh token (after `auth:refresh`, or
    /// from its login service when `auth:expired` came), a reconnect must not present the
    /// old one, which the server would refuse for good once it expires.
    pub fn set_token(&mut self, token: impl Into<String>) {
        self.config.token = token.into();
    }

    /// Takes a fresh token: it is presented at every later connect and, while connected,
    /// sent at once as `auth:refresh` so that the server keeps this connection past the
    /// old token's expiry (after `auth:expired`, or before it). The server's answer comes
    /// back as [`Notice::Refreshed`] (at once, `too_large`, for a token the server could
    /// not take in one message).
    ///
    /// A client whose last connect the server refused (its token expired while it was
    /// reconnecting, say) connects again with it: the fresh token is the application's
    /// answer to that refusal.
    pub fn refresh_token(&mut self, now: Instant, token: impl Into<String>) {
        self.clock.observe(now);
        self.config.token = token.into();
        if self.phase == Phase::Up {
            self.send_refresh();
        } else if self.refused {
            self.connect(now);
        }
    }

    /// Sends the current token as `auth:refresh`; the connection holds it from the answer.
    fn send_refresh(&mut self) {
        let payload = json!({ "token": self.config.token });
        let frames = self.event_frames("auth:refresh", payload, Some(self.next_ack));
        if !self.fits(&frames) {
            // Sent, it would close the connection, and the next connect would present it
            // again: refused here as the server refuses a token it cannot take.
            self.out.push_back(Output::Notice(Notice::Refreshed {
                error: Some("too_large".into()),
            }));
            return;
        }
        let id = self.take_ack_id();
        self.refreshes.insert(id);
        self.presented = self.config.token.clone();
        self.out.extend(frames.into_iter().map(Output::Send));
    }

    /// Closes for good (the application logged out, say).
    pub fn disconnect(&mut self, now: Instant) {
        self.clock.observe(now);
        if self.phase != Phase::Down {
            self.out.push_back(Output::Close);
        }
        self.phase = Phase::Down;
        self.clear_deadlines();
        self.forget_connection();
        self.set_status(Status::Idle);
    }

    /// Queues a message; it is sent now if connected, else after the next connect, and
    /// resent with the same `tempId` until acknowledged. Returns the `tempId`, or, with the
    /// outbox full ([`ClientConfig::max_outbox`], [`ClientConfig::max_outbox_bytes`]), an
    /// error and nothing queued.
    pub fn send_message(
        &mut self,
        now: Instant,
        conversation_id: &str,
        content: &str,
    ) -> Result<String, SendError> {
        let now = self.clock.observe(now);
        let bytes = content.len() + conversation_id.len();
        if self.outbox.len() >= self.config.max_outbox
            || self.outbox_bytes.saturating_add(bytes) > self.config.max_outbox_bytes
        {
            return Err(SendError::OutboxFull {
                messages: self.outbox.len(),
                bytes: self.outbox_bytes,
            });
        }
        // 128 random bits: the server keeps a user's tempIds with no end, and every start of
        // a client counts from 1 again, so the counter alone (or with 32 bits, ~1 % odds per
        // user over 10,000 past sessions) would in time answer a new message as a duplicate
        // of an old one.
        let temp_id = format!(
            "t{}-{:016x}{:016x}",
            self.next_temp,
            self.rng.next_u64(),
            self.rng.next_u64()
        );
        self.next_temp += 1;
        self.outbox.push_back(Outgoing {
            temp_id: temp_id.clone(),
            conversation_id: conversation_id.to_owned(),
            content: content.to_owned(),
            ack: None,
            not_before: now,
        });
        self.outbox_bytes += bytes;
        self.flush_outbox(now);
        Ok(temp_id)
    }

    /// Takes the send at `pos` out of the outbox (acknowledged, or refused for good).
    fn settle(&mut self, pos: usize) -> Option<Outgoing> {
        let o = self.outbox.remove(pos)?;
        self.outbox_bytes -= o.bytes();
        Some(o)
    }

    /// Leaves a conversation: `conversation:leave` is sent if connected, it is no longer
    /// rejoined after a reconnect nor on a `message:notification`, and a join or catch-up
    /// of it under way is dropped. Its position is kept, so a later [`Client::join`] resumes
    /// where it stopped. (A `conversation:leave` emitted by hand would be undone by the
    /// next notification, which rejoins a conversation the client takes for joined.)
    pub fn leave(&mut self, now: Instant, conversation_id: &str) {
        self.clock.observe(now);
        if !self.convs.joined.contains_key(conversation_id) {
            return;
        }
        self.convs.park(conversation_id);
        self.join_queue.retain(|c| c != conversation_id);
        self.rejoin_at.remove(conversation_id);
        self.asked_again.remove(conversation_id);
        self.let_out.remove(conversation_id);
        if self.phase == Phase::Up {
            let payload = json!({ "conversationId": conversation_id });
            self.send_event("conversation:leave", payload, None);
        }
        // Its join's answer and reads, if any are awaited, are ignored when they come (the
        // server's, to a join read while the leave arrived, leaves it out of the room);
        // a later join is a join of its own.
        self.joins.retain(|_, c| c != conversation_id);
        self.history.retain(|_, c| c != conversation_id);
        if self.joining.remove(conversation_id) {
            self.join_queued();
        }
    }

    /// Joins a conversation (and rejoins it with catch-up after every reconnect).
    pub fn join(&mut self, now: Instant, conversation_id: &str) {
        self.clock.observe(now);
        self.convs.start(conversation_id);
        if self.joins.values().any(|c| c == conversation_id) {
            self.asked_again.insert(conversation_id.to_owned());
        }
        if self.phase == Phase::Up {
            self.send_join(conversation_id);
        }
    }

    /// Emits any event (no ack, not queued while disconnected).
    pub fn emit(&mut self, _now: Instant, event: &str, payload: Value) {
        if self.phase == Phase::Up {
            self.send_event(event, payload, None);
        }
    }

    // ---- inputs --------------------------------------------------------------------------

    /// The WebSocket opened.
    pub fn handle_opened(&mut self, now: Instant) {
        self.clock.observe(now);
        // Nothing to do until the server's open packet arrives.
    }

    /// A frame arrived.
    pub fn handle_frame(&mut self, now: Instant, frame: &Frame) {
        let now = self.clock.observe(now);
        if self.phase == Phase::Down {
            return;
        }
        let Ok(packet) = EioPacket::from_frame(frame) else {
            return self.lost(now, "parse error");
        };
        match packet {
            EioPacket::Open(hs) => {
                // Both come from the server: added without overflowing.
                self.ping_deadline_ms = hs.ping_interval_ms.saturating_add(hs.ping_timeout_ms);
                // A server that names no limit (0) has none the client can know of.
                self.max_payload = if hs.max_payload == 0 {
                    u64::MAX
                } else {
                    hs.max_payload
                };
                self.silence_deadline = Some(now.add_ms(self.ping_deadline_ms));
                #[cfg(feature = "mutations")]
                if self.config.mutations.client_trusts_silence {
                    self.silence_deadline = None;
                }
                let auth = json!({ "token": self.config.token });
                let connect = Frame::text(format!("40{},{auth}", self.config.namespace));
                if !self.fits(std::slice::from_ref(&connect)) {
                    // The server would close the connection on it, at every attempt: a
                    // refusal, which a fresh token ([`Client::refresh_token`]) answers.
                    self.refused = true;
                    return self.sent_away(Status::Failed {
                        reason: "token too large".into(),
                    });
                }
                self.presented = self.config.token.clone();
                self.connect_sent = true;
                self.out.push_back(Output::Send(connect));
            }
            EioPacket::Ping(_) => {
                self.silence_deadline = Some(now.add_ms(self.ping_deadline_ms));
                // MUTATION (test-only): no deadline on the server's silence.
                #[cfg(feature = "mutations")]
                if self.config.mutations.client_trusts_silence {
                    self.silence_deadline = None;
                }
                self.out
                    .push_back(Output::Send(EioPacket::Pong(String::new()).to_frame()));
            }
            EioPacket::Message(data) => self.on_message(now, data),
            EioPacket::Close => self.lost(now, "transport close"),
            _ => {}
        }
    }

    /// The WebSocket closed or failed, or could not be opened.
    pub fn handle_closed(&mut self, now: Instant) {
        let now = self.clock.observe(now);
        if self.phase != Phase::Down {
            self.phase = Phase::Down;
            self.schedule_reconnect(now);
        }
    }

    /// Fires due deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock.observe(now);
        if self.reconnect_at.is_some_and(|t| t <= now) {
            self.reconnect_at = None;
            self.open(now);
        }
        if self.connect_deadline.is_some_and(|t| t <= now) {
            self.connect_deadline = None;
            self.lost(now, "connect timeout");
        }
        if self.silence_deadline.is_some_and(|t| t <= now) {
            self.silence_deadline = None;
            self.lost(now, "ping timeout");
        }
        if self.phase == Phase::Up {
            let due: Vec<String> = self
                .rejoin_at
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(c, _)| c.clone())
                .collect();
            for conv in due {
                self.rejoin_at.remove(&conv);
                if self.joining.contains(&conv) {
                    // Its place among the joins under way was kept through the wait.
                    self.join_now(&conv);
                } else {
                    self.send_join(&conv);
                }
            }
        }
        self.flush_outbox(now);
    }

    // ---- internals -----------------------------------------------------------------------

    fn clear_deadlines(&mut self) {
        self.reconnect_at = None;
        self.connect_deadline = None;
        self.silence_deadline = None;
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Opening;
        self.connect_sent = false;
        self.decoder.reset();
        self.connect_deadline = Some(now.add_ms(self.config.connect_timeout_ms));
        self.silence_deadline = None;
        self.out.push_back(Output::Open);
    }

    /// The connection is gone without a word from the server: come back later.
    fn lost(&mut self, now: Instant, _why: &str) {
        if self.phase == Phase::Down {
            return;
        }
        self.out.push_back(Output::Close);
        self.phase = Phase::Down;
        self.schedule_reconnect(now);
    }

    /// Forgets what belonged to the connection that ended: ack ids (the next connection
    /// numbers its acks from 0 again, so an old id must not match a new answer), joins and
    /// reads in flight, held messages. Sends stay queued and are sent again; every joined
    /// conversation is rejoined on the next connect.
    fn forget_connection(&mut self) {
        for o in &mut self.outbox {
            o.ack = None;
        }
        self.joins.clear();
        self.refreshes.clear();
        self.joining.clear();
        self.join_queue.clear();
        self.history.clear();
        self.convs.reset();
        self.rejoin_at.clear();
        self.asked_again.clear();
        self.let_out.clear();
    }

    fn schedule_reconnect(&mut self, now: Instant) {
        self.clear_deadlines();
        self.forget_connection();
        if self.replaced {
            return self.set_status(Status::Replaced);
        }
        if matches!(self.status, Status::Disconnected | Status::Failed { .. }) {
            return;
        }
        self.attempt += 1;
        let delay = self.config.backoff.delay(self.attempt, &mut self.rng);
        // MUTATION (test-only): no wait before a reconnection.
        #[cfg(feature = "mutations")]
        let delay = delay.map(|d| {
            if self.config.mutations.reconnect_at_once {
                1
            } else {
                d
            }
        });
        match delay {
            Some(delay) => {
                self.reconnect_at = Some(now.add_ms(delay));
                self.set_status(Status::Reconnecting {
                    attempt: self.attempt,
                });
            }
            None => self.set_status(Status::Failed {
                reason: "reconnection attempts exhausted".into(),
            }),
        }
    }

    /// The server ended this client's connection on purpose: do not come back.
    fn sent_away(&mut self, status: Status) {
        if self.phase != Phase::Down {
            self.out.push_back(Output::Close);
        }
        self.phase = Phase::Down;
        self.clear_deadlines();
        self.forget_connection();
        self.set_status(status);
    }

    fn on_message(&mut self, now: Instant, data: Data) {
        let packet = match self.decoder.feed(data) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(_) => return self.lost(now, "parse error"),
        };
        if packet.nsp != self.config.namespace {
            return;
        }
        match packet.kind {
            // A second CONNECT on a connection already up (only a broken server sends one)
            // changes nothing: taking it would restart the ack ids while answers under the
            // old ones are still due.
            PacketType::Connect if self.phase == Phase::Up => {}
            PacketType::Connect => self.on_connected(now),
            PacketType::ConnectError => {
                let reason = packet
                    .data
                    .as_ref()
                    .and_then(|d| d.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("connect error")
                    .to_owned();
                if self.connect_sent && self.presented != self.config.token {
                    // Refused for the token this CONNECT carried, which the application
                    // replaced while it was on its way (`refresh_token` during the
                    // handshake): the new one is presented at once, as it would have been
                    // had the refusal come first. Refused too, it is a refusal for good.
                    self.out.push_back(Output::Close);
                    self.clear_deadlines();
                    self.forget_connection();
                    return self.open(now);
                }
                self.sent_away(Status::Failed { reason });
                self.refused = true;
            }
            // MUTATION (test-only): a replaced client comes back as if it had lost the link.
            #[cfg(feature = "mutations")]
            PacketType::Disconnect if self.config.mutations.reconnect_after_replaced => {
                self.replaced = false;
                self.lost(now, "server disconnect")
            }
            PacketType::Disconnect => {
                let status = if self.replaced {
                    Status::Replaced
                } else {
                    Status::Disconnected
                };
                self.sent_away(status);
            }
            PacketType::Event | PacketType::BinaryEvent => self.on_event(now, &packet),
            PacketType::Ack | PacketType::BinaryAck => self.on_ack(now, &packet),
        }
    }

    fn on_connected(&mut self, now: Instant) {
        self.phase = Phase::Up;
        self.attempt = 0;
        self.connect_deadline = None;
        self.next_ack = 0;
        self.set_status(Status::Connected);
        // A token handed over while this connect was on its way: the connection holds the
        // one the CONNECT carried, so the new one follows at once.
        if self.presented != self.config.token {
            self.send_refresh();
        }
        let convs: Vec<String> = self.convs.joined.keys().cloned().collect();
        for c in convs {
            self.send_join(&c);
        }
        self.flush_outbox(now);
    }

    fn send_event(&mut self, event: &str, payload: Value, ack: Option<u64>) {
        let frames = self.event_frames(event, payload, ack);
        self.out.extend(frames.into_iter().map(Output::Send));
    }

    /// The frames of an event on the client's namespace.
    fn event_frames(&self, event: &str, payload: Value, ack: Option<u64>) -> Vec<Frame> {
        SioPacket {
            kind: PacketType::Event,
            nsp: self.config.namespace.clone(),
            id: ack,
            data: Some(json!([event, payload])),
            attachments: vec![],
        }
        .encode()
    }

    fn take_ack_id(&mut self) -> u64 {
        let id = self.next_ack;
        self.next_ack += 1;
        id
    }

    /// Joins now, or once there is room among the joins under way. A conversation is
    /// asked for once at a time.
    fn send_join(&mut self, conversation_id: &str) {
        let asked = self.joining.contains(conversation_id)
            || self.join_queue.iter().any(|c| c == conversation_id);
        if asked {
            return;
        }
        if self.joining.len() >= MAX_JOINS_IN_FLIGHT {
            self.join_queue.push_back(conversation_id.to_owned());
            return;
        }
        self.joining.insert(conversation_id.to_owned());
        self.join_now(conversation_id);
    }

    /// Sends the joins waiting for room, as far as there is room.
    fn join_queued(&mut self) {
        while self.phase == Phase::Up && self.joining.len() < MAX_JOINS_IN_FLIGHT {
            let Some(conv) = self.join_queue.pop_front() else {
                return;
            };
            // Left meanwhile by a join refused for good: nothing to ask for.
            if self.convs.joined.contains_key(&conv) {
                self.send_join(&conv);
            }
        }
    }

    /// Ends `conv`'s join if nothing of it is left: no reply, read or retry awaited. The
    /// next waiting join takes its place.
    fn join_settled(&mut self, conv: &str) {
        let pending = self.joins.values().any(|c| c == conv)
            || self.history.values().any(|c| c == conv)
            || self.rejoin_at.contains_key(conv);
        if !pending && self.joining.remove(conv) {
            if self.let_out.remove(conv) && self.convs.joined.contains_key(conv) {
                self.send_join(conv);
            }
            self.join_queued();
        }
    }

    fn join_now(&mut self, conversation_id: &str) {
        let mut payload = json!({ "conversationId": conversation_id });
        // A first join starts from now; a rejoin asks for everything after the last seen.
        if let Some(Some(last)) = self.convs.joined.get(conversation_id) {
            payload["afterSeq"] = json!(last);
        }
        let id = self.next_ack;
        let frames = self.event_frames("conversation:join", payload, Some(id));
        if !self.fits(&frames) {
            // The server would close the connection on it, and the rejoin after the
            // reconnect would close it again, for ever: refused for good, as the server
            // refuses a conversation it will not let this user into.
            self.joining.remove(conversation_id);
            self.asked_again.remove(conversation_id);
            self.rejoin_at.remove(conversation_id);
            self.let_out.remove(conversation_id);
            self.convs.park(conversation_id);
            self.out.push_back(Output::Notice(Notice::Event(
                "conversation:join_failed".into(),
                json!({ "conversationId": conversation_id, "code": "too_large" }),
            )));
            return self.join_queued();
        }
        self.take_ack_id();
        self.joins.insert(id, conversation_id.to_owned());
        self.out.extend(frames.into_iter().map(Output::Send));
    }

    /// Whether the server takes these frames: none longer than its `maxPayload`, on which
    /// it closes the connection.
    fn fits(&self, frames: &[Frame]) -> bool {
        frames.iter().all(|f| f.len() as u64 <= self.max_payload)
    }

    /// Sends the queued messages not yet sent on this connection, in the order they were
    /// queued, up to the first that must still wait: a message sent while an earlier one
    /// waits to be tried again (after `rate_limited` or `internal`) would be stored, and
    /// shown to everyone, before it. That keeps order only for what is not yet on the wire:
    /// of up to [`MAX_SENDS_IN_FLIGHT`] sends under way together, one refused while those
    /// after it are stored is stored after them when it is tried again (the price of not
    /// waiting a round trip per message).
    fn flush_outbox(&mut self, now: Instant) {
        if self.phase != Phase::Up {
            return;
        }
        let mut in_flight = self.outbox.iter().filter(|o| o.ack.is_some()).count();
        let mut i = 0;
        while i < self.outbox.len() {
            if in_flight >= MAX_SENDS_IN_FLIGHT {
                break;
            }
            if self.outbox[i].ack.is_some() {
                i += 1;
                continue;
            }
            if self.outbox[i].not_before > now {
                break;
            }
            let id = self.take_ack_id();
            let o = &self.outbox[i];
            let payload = json!({
                "conversationId": o.conversation_id,
                "content": o.content,
                "tempId": o.temp_id,
            });
            let frames = self.event_frames("message:send", payload, Some(id));
            if !self.fits(&frames) {
                // The server would close the connection on it, and the send would go
                // again after the reconnect, and again: it can never be delivered.
                if let Some(o) = self.settle(i) {
                    self.out.push_back(Output::Notice(Notice::SendFailed {
                        temp_id: o.temp_id,
                        code: "too_large".to_owned(),
                    }));
                }
                continue;
            }
            in_flight += 1;
            self.outbox[i].ack = Some(id);
            self.out.extend(frames.into_iter().map(Output::Send));
            i += 1;
        }
    }

    /// Hands messages to the application in order; fetches any gap from history.
    fn deliver(&mut self, message: &Value) {
        let mut ready = vec![];
        self.convs.take(message, &mut ready);
        self.delivered(ready);
        if let Some(conv) = message.get("conversationId").and_then(Value::as_str) {
            let conv = conv.to_owned();
            self.fetch_gap(&conv);
        }
    }

    fn delivered(&mut self, ready: Vec<Value>) {
        for m in ready {
            self.out.push_back(Output::Notice(Notice::Message(m)));
        }
    }

    /// Asks for the history after the last delivered `seq`, if the conversation is behind
    /// and no request for it is in flight.
    fn fetch_gap(&mut self, conv: &str) {
        if self.phase != Phase::Up || self.history.values().any(|c| c == conv) {
            return;
        }
        let Some(after) = self.convs.behind(conv) else {
            return;
        };
        let id = self.take_ack_id();
        self.history.insert(id, conv.to_owned());
        let payload = json!({ "conversationId": conv, "afterSeq": after, "limit": catchup::PAGE });
        self.send_event("message:history", payload, Some(id));
    }

    fn on_event(&mut self, now: Instant, packet: &SioPacket) {
        let name = packet.event_name().unwrap_or("").to_owned();
        let payload = packet.args().first().cloned().unwrap_or(Value::Null);
        match name.as_str() {
            "heartbeat" => self.send_event("heartbeat:response", payload.clone(), None),
            "connection:replaced" => self.replaced = true,
            // Handed over as `Notice::Message`, once and in order, never as an event.
            "message:new" => return self.deliver(&payload),
            "message:notification" => self.notified(&payload),
            _ => {}
        }
        let _ = now;
        self.out
            .push_back(Output::Notice(Notice::Event(name, payload)));
    }

    /// `message:notification` goes only to connections outside the conversation's room.
    /// For a conversation this client has joined, the server has let the connection out
    /// of the room (the conversation's member list was replaced without this user and
    /// then with it again), unless the notification was written before a join's answer
    /// (it arrives before it: a join still awaiting its answer is not disturbed). The
    /// client rejoins, catching up from the last message it delivered: at once, or, if
    /// the join's answer came and its catch-up is still being read, once that is done
    /// (the catch-up reads the store, not the room, and carries on where it is).
    fn notified(&mut self, payload: &Value) {
        let Some(conv) = payload.get("conversationId").and_then(Value::as_str) else {
            return;
        };
        if self.phase != Phase::Up || !self.convs.joined.contains_key(conv) {
            return;
        }
        // Answered, and not waiting to be tried again (which rejoins anyway).
        let answered =
            !self.joins.values().any(|c| c == conv) && !self.rejoin_at.contains_key(conv);
        if self.joining.contains(conv) && answered {
            self.let_out.insert(conv.to_owned());
            return;
        }
        let conv = conv.to_owned();
        self.send_join(&conv);
    }

    /// A join the server refused. A server-side failure (`internal`, `rate_limited`) is
    /// retried on this connection after a pause: until the join succeeds the client is not
    /// in the room and would miss every message. Any other refusal is final for this
    /// conversation, and the application is told; the position reached is kept, so that
    /// if the application joins again (its user let back in) nothing sent meanwhile is
    /// missed.
    fn join_refused(&mut self, now: Instant, conv: &str, reply: &Value) {
        let code = refusal_code(reply);
        if matches!(code.as_str(), "internal" | "rate_limited") {
            return self.rejoin_later(now, conv.to_owned(), reply);
        }
        if self.asked_again.remove(conv) {
            // Asked for again after this join went out (its user let back in, say).
            return self.join_now(conv);
        }
        self.convs.park(conv);
        self.out.push_back(Output::Notice(Notice::Event(
            "conversation:join_failed".into(),
            json!({ "conversationId": conv, "code": code }),
        )));
    }

    /// Schedules a rejoin the server asked to come back for. Joins turned away by the
    /// connection's event budget (a rejoin burst after a reconnect) are spaced
    /// `retryAfterMs` apart, the pace at which the budget refills, rather than all sent
    /// again at once, which would only be turned away again and spend the budget's
    /// refusals until the server counts it a flood.
    fn rejoin_later(&mut self, now: Instant, conv: String, reply: &Value) {
        let wait = reply["retryAfterMs"].as_u64().unwrap_or(JOIN_RETRY_MS);
        let from = if reply["code"] == json!("rate_limited") {
            self.rejoin_at
                .values()
                .max()
                .map_or(now, |last| now.max(*last))
        } else {
            now
        };
        self.rejoin_at.insert(conv, from.add_ms(wait));
    }

    fn on_ack(&mut self, now: Instant, packet: &SioPacket) {
        let Some(id) = packet.id else { return };
        let reply = packet
            .data
            .as_ref()
            .and_then(|d| d.get(0))
            .cloned()
            .unwrap_or(Value::Null);
        if self.refreshes.remove(&id) {
            let error = (reply["ok"] != json!(true))
                .then(|| reply["error"].as_str().unwrap_or("refused").to_owned());
            self.out
                .push_back(Output::Notice(Notice::Refreshed { error }));
            return;
        }
        if let Some(conv) = self.joins.remove(&id) {
            if reply["ok"] != json!(true) {
                self.join_refused(now, &conv, &reply);
                return self.join_settled(&conv);
            }
            self.asked_again.remove(&conv);
            let missed = reply["missed"].as_array().cloned().unwrap_or_default();
            let mut ready = vec![];
            self.convs
                .joined(&conv, &missed, reply["lastSeq"].as_u64(), &mut ready);
            self.delivered(ready);
            self.fetch_gap(&conv);
            return self.join_settled(&conv);
        }
        if let Some(conv) = self.history.remove(&id) {
            if reply["ok"] != json!(true) {
                // Try again through a rejoin, which catches up from the same point.
                return self.rejoin_later(now, conv, &reply);
            }
            if !self.convs.joined.contains_key(&conv) {
                // Left meanwhile.
                return self.join_settled(&conv);
            }
            let page = reply["messages"].as_array().cloned().unwrap_or_default();
            let mut ready = vec![];
            self.convs.page(&conv, &page, &mut ready);
            self.delivered(ready);
            self.fetch_gap(&conv);
            return self.join_settled(&conv);
        }
        let Some(pos) = self.outbox.iter().position(|o| o.ack == Some(id)) else {
            return;
        };
        if reply["ok"] == json!(true) {
            if let Some(o) = self.settle(pos) {
                self.out.push_back(Output::Notice(Notice::Acked {
                    temp_id: o.temp_id,
                    message: reply["message"].clone(),
                }));
            }
            return;
        }
        let code = refusal_code(&reply);
        match code.as_str() {
            "rate_limited" | "internal" => {
                let wait = reply["retryAfterMs"].as_u64().unwrap_or(1_000);
                // MUTATION (test-only): the wait the server asked for is ignored.
                #[cfg(feature = "mutations")]
                let wait = if self.config.mutations.retry_refused_at_once {
                    0
                } else {
                    wait
                };
                let until = now.add_ms(wait);
                if let Some(o) = self.outbox.get_mut(pos) {
                    o.ack = None;
                }
                // Every send not yet on the wire waits too: sent now it would only be
                // refused, and each refusal spends the connection's event budget.
                for o in self.outbox.iter_mut().filter(|o| o.ack.is_none()) {
                    o.not_before = o.not_before.max(until);
                }
            }
            _ => {
                if let Some(o) = self.settle(pos) {
                    self.out.push_back(Output::Notice(Notice::SendFailed {
                        temp_id: o.temp_id,
                        code,
                    }));
                }
            }
        }
    }
}

/// The error code of a reply that is not `ok: true`. A reply that is not the contract's
/// (no `ok: false` with a code: another server, a proxy) says nothing about the request,
/// so it counts as `internal`: tried again, not given up.
fn refusal_code(reply: &Value) -> String {
    match reply["code"].as_str() {
        Some(code) if reply["ok"] == json!(false) => code.to_owned(),
        _ => "internal".to_owned(),
    }
}
