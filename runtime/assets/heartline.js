// Heartline's browser client: the same connection rules as heartline-core's client.
//
// It speaks Engine.IO v4 / Socket.IO v5 over a plain WebSocket (no build step, no
// dependency) and adds what front-end teams otherwise write by hand:
//  - a status to show: connecting, connected, reconnecting (attempt n of max),
//    disconnected, failed, replaced;
//  - reconnection with exponential backoff and jitter, a connect timeout, max attempts;
//  - no reconnection after `connection:replaced`, a Socket.IO DISCONNECT or a refused
//    connect, so two devices of one user never take turns replacing each other;
//  - an outbox: a send is kept until acknowledged and resent after a reconnect with its
//    original tempId (the server stores it once); `rate_limited` waits `retryAfterMs`;
//  - catch-up: joined conversations are rejoined with `afterSeq`, four at a time; what
//    the join's reply cannot hold is read through `message:history` before live messages
//    are shown, and each message is handed over once, in seq order; a join or read the
//    server asks to come back for later (`rate_limited`, `internal`) is sent again after
//    `retryAfterMs`;
//  - a `message:notification` for a joined conversation (the server let this connection
//    out of the room when its user left the member list, and the user is back) rejoins
//    it the same way, and a conversation refused for good keeps its place, so joining it
//    again later shows everything sent meanwhile.

// Joins under way at once (a join and the reads that finish its catch-up count as one):
// after a reconnect every joined conversation is rejoined, and each reply may carry up to
// 1,000 missed messages. The rest wait here, in order.
const MAX_JOINS = 4;

const DEFAULTS = {
  namespace: '/chat',
  initialDelayMs: 1000,
  factor: 2,
  maxDelayMs: 10000,
  randomization: 0.5,
  // As socket.io-client and the Rust client: an outage longer than a few attempts (a
  // deploy, a restart) must not leave pages that never come back by themselves.
  maxAttempts: Infinity,
  connectTimeoutMs: 20000,
  // Sends waiting for their ack, and their content's characters (with the conversation
  // ids'), as the Rust client: a page that keeps sending while the server is out of reach
  // must not queue without end. Past either, `send` throws an `OutboxFullError`.
  maxOutbox: 1000,
  maxOutboxChars: 8 * 1024 * 1024,
};

/** Thrown by `send` when the outbox is full; nothing was queued. */
export class OutboxFullError extends Error {
  constructor(messages, chars) {
    super(`the outbox is full: ${messages} sends of ${chars} characters wait for the server's ack`);
    this.name = 'OutboxFullError';
    this.code = 'outbox_full';
  }
}

/**
 * The delay before reconnection attempt `attempt` (1-based), `r` a uniform draw in [0, 1):
 * exponential, moved up or down by up to `randomization` of itself (at most 0.99, so no
 * delay is zero) on socket.io-client's schedule, and capped at `maxDelayMs`. A capped
 * delay keeps its jitter below the cap: capped alone, every page long into an outage
 * would retry on the same beat.
 */
export function backoffDelay(opts, attempt, r) {
  const randomization = Number.isFinite(opts.randomization) ? Math.min(Math.max(opts.randomization, 0), 0.99) : 0;
  const max = Math.max(opts.maxDelayMs, 1);
  const base = Math.max(opts.initialDelayMs, 1) * Math.pow(Math.max(opts.factor, 1), attempt - 1);
  const dev = Math.floor(r * randomization * base);
  const jittered = Math.floor(r * 10) % 2 === 0 ? base - dev : base + dev;
  if (jittered < max) return Math.max(jittered, 1);
  return Math.max(max - Math.floor(r * randomization * max), 1);
}

/**
 * Whether a value is a message this client can order: an object with its conversation and
 * a numeric seq. Anything else in a reply (a server gone wrong) is skipped, not a reason
 * to end the connection, which would only bring the same reply again.
 */
function isMessage(m) {
  return m !== null && typeof m === 'object' && typeof m.conversationId === 'string'
    && Number.isSafeInteger(m.seq);
}

/** The bytes of `text` in UTF-8, as a WebSocket text frame carries it. */
function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

/** The error code of a refusal; one without a code (a proxy, another server) is `internal`. */
function refusalCode(reply) {
  return reply && reply.ok === false && typeof reply.code === 'string' ? reply.code : 'internal';
}

export class HeartlineClient extends EventTarget {
  constructor(baseUrl, options = {}) {
    super();
    this.base = baseUrl.replace(/^http/, 'ws').replace(/\/$/, '');
    this.opts = { ...DEFAULTS, ...options };
    this.status = 'idle';
    this.attempt = 0;
    this.reason = '';
    this.ws = null;
    this.up = false;
    this.replaced = false;
    this.refused = false; // the server refused the last connect (its token)
    this.presented = ''; // the token last presented (by a CONNECT or an auth:refresh)
    this.connectSent = false; // this connection's CONNECT went out (its open packet came)
    this.maxPayload = Infinity; // the largest message the server takes (its open packet's)
    this.nextAck = 0;
    this.acks = new Map(); // ack id -> callback
    this.outbox = new Map(); // tempId -> { conversationId, content, sentOn, notBefore }
    this.joined = new Map(); // conversationId -> last seq delivered (null until known)
    this.parked = new Map(); // conversationId refused for good -> last seq delivered
    this.onWire = new Set(); // conversations with a join request awaiting its answer
    this.askedAgain = new Set(); // joined again while that answer was awaited
    this.letOut = new Set(); // let out of the room after a join's answer, during its catch-up
    this.gen = new Map(); // conversationId -> number of leaves: answers to older joins are ignored
    this.catching = new Map(); // conversationId -> live messages held while catching up
    this.joining = new Set(); // conversations with a join (or its catch-up) under way
    this.joinQueue = []; // conversations waiting for room among those joining
    this.pacedUntil = 0; // when the last request turned away by the budget goes again
    this.timers = {};
    this.seq = 0;
  }

  // ---- public API ---------------------------------------------------------------------

  connect() {
    if (this.ws) return;
    // Connecting while a reconnection is pending: this attempt replaces that one.
    this.clearTimers();
    this.attempt = 0;
    this.replaced = false;
    this.refused = false;
    this.setStatus('connecting');
    this.open();
  }

  disconnect() {
    this.drop();
    this.setStatus('idle');
  }

  /**
   * Leaves a conversation: `conversation:leave` is sent if connected, it is no longer
   * rejoined after a reconnect nor on a notification, and a join or catch-up of it under
   * way is dropped (its answers are ignored). Its place is kept for a later join().
   */
  leave(conversationId) {
    if (!this.joined.has(conversationId)) return;
    const last = this.joined.get(conversationId);
    if (last != null) this.parked.set(conversationId, last);
    this.joined.delete(conversationId);
    this.catching.delete(conversationId);
    this.gen.set(conversationId, this.genOf(conversationId) + 1);
    this.joinQueue = this.joinQueue.filter((c) => c !== conversationId);
    for (const set of [this.onWire, this.askedAgain, this.letOut]) set.delete(conversationId);
    for (const name of [`join-${conversationId}`, `read-${conversationId}`]) {
      clearTimeout(this.timers[name]);
      delete this.timers[name];
    }
    if (this.up) this.packet('2', ['conversation:leave', { conversationId }]);
    if (this.joining.has(conversationId)) this.joinEnded(conversationId);
  }

  genOf(conversationId) {
    return this.gen.get(conversationId) || 0;
  }

  /**
   * Takes a fresh token: presented at every later connect and, while connected, sent at
   * once as `auth:refresh` so the server keeps this connection past the old token's
   * expiry (after an `expired` event, or before it). The answer comes as `refreshed`.
   * A client whose last connect the server refused (its token expired while it was
   * reconnecting, say) connects again with it.
   */
  refreshToken(token) {
    this.opts.token = token;
    if (this.up) this.sendRefresh();
    else if (this.refused) this.connect();
  }

  /** Sends the current token as `auth:refresh`; the answer comes as `refreshed`. */
  sendRefresh() {
    const token = this.opts.token;
    if (this.tooLarge('auth:refresh', { token })) {
      // Sent, it would close the connection, and the next connect would present it
      // again: refused here, as the server refuses a token it cannot take.
      return this.fireLater('refreshed', { ok: false, code: 'too_large', error: 'Token larger than the server takes' });
    }
    this.presented = token;
    this.request('auth:refresh', { token }, (reply) => this.fire('refreshed', reply || {}));
  }

  /** Whether this event, as the next request, is longer than the server's maxPayload. */
  tooLarge(event, payload) {
    return utf8Length(this.frameText('2', [event, payload], this.nextAck)) > this.maxPayload;
  }

  join(conversationId) {
    if (!this.joined.has(conversationId)) {
      // Joined again after a refusal: from where it stopped.
      const resume = this.parked.has(conversationId) ? this.parked.get(conversationId) : null;
      this.joined.set(conversationId, resume);
    }
    this.parked.delete(conversationId);
    // A join already on the wire answers for the moment it is served: if it is refused,
    // this later request is sent then.
    if (this.onWire.has(conversationId)) this.askedAgain.add(conversationId);
    if (this.up) this.sendJoin(conversationId);
  }

  /**
   * Queues a message; returns its tempId. Throws an `OutboxFullError`, queuing nothing,
   * when `maxOutbox` sends already wait for their ack or this one would take their
   * characters past `maxOutboxChars`.
   */
  send(conversationId, content) {
    // Counted as the text they are sent as, whatever the page passed.
    const size = (o) => String(o.conversationId).length + String(o.content).length;
    let chars = 0;
    for (const o of this.outbox.values()) chars += size(o);
    if (this.outbox.size >= this.opts.maxOutbox
        || chars + size({ conversationId, content }) > this.opts.maxOutboxChars) {
      throw new OutboxFullError(this.outbox.size, chars);
    }
    const tempId = `w${Date.now().toString(36)}-${(this.seq++).toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    this.outbox.set(tempId, { conversationId, content, sentOn: null, notBefore: 0 });
    this.flush();
    return tempId;
  }

  emit(event, payload) {
    if (this.up) this.packet('2', [event, payload]);
  }

  // ---- connection ---------------------------------------------------------------------

  setStatus(status, reason = '') {
    this.status = status;
    this.reason = reason;
    this.fire('status', { status, attempt: this.attempt, maxAttempts: this.opts.maxAttempts, reason });
  }

  fire(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * A failure the client found itself, inside a call of the page's (a send, join or token
   * too large for the server): told after that call has returned, as the server's answers
   * are, so that a listener that tries the same again at once cannot recurse until the
   * stack runs out.
   */
  fireLater(type, detail) {
    setTimeout(() => this.fire(type, detail), 0);
  }

  clearTimers() {
    for (const t of Object.values(this.timers)) clearTimeout(t);
    this.timers = {};
  }

  timer(name, ms, fn) {
    clearTimeout(this.timers[name]);
    this.timers[name] = setTimeout(() => {
      delete this.timers[name];
      fn();
    }, ms);
  }

  open() {
    const ws = new WebSocket(`${this.base}/socket.io/?EIO=4&transport=websocket`);
    this.ws = ws;
    this.up = false;
    this.timer('connect', this.opts.connectTimeoutMs, () => this.lost('connect timeout'));
    ws.onmessage = (e) => {
      if (this.ws !== ws) return;
      // A frame this client cannot read ends the connection, as any protocol error does.
      try {
        this.onFrame(e.data);
      } catch {
        this.lost('parse error');
      }
    };
    ws.onclose = () => this.ws === ws && this.lost('transport close');
    ws.onerror = () => {};
  }

  /**
   * Ends the current connection and forgets what belonged to it: acks (the next one
   * numbers them from 0 again), joins and catch-ups under way, timers. Sends stay in the
   * outbox and joined conversations are rejoined on the next connect.
   */
  drop() {
    const ws = this.ws;
    this.ws = null;
    this.up = false;
    this.connectSent = false;
    this.acks.clear();
    this.catching.clear();
    this.joining.clear();
    this.joinQueue = [];
    this.onWire.clear();
    this.askedAgain.clear();
    this.letOut.clear();
    this.pacedUntil = 0;
    for (const o of this.outbox.values()) o.sentOn = null;
    if (ws) ws.close();
    this.clearTimers();
  }

  /** The connection went away without the server asking: come back later. */
  lost(why) {
    this.drop();
    if (this.replaced) return this.setStatus('replaced');
    if (this.status === 'disconnected' || this.status === 'failed' || this.status === 'idle') return;
    this.attempt += 1;
    if (this.attempt > this.opts.maxAttempts) {
      return this.setStatus('failed', 'reconnection attempts exhausted');
    }
    const delay = backoffDelay(this.opts, this.attempt, Math.random());
    // Armed before the page hears of it: a listener that disconnects then clears it, and
    // one that connects replaces it, rather than a second socket opening behind it.
    this.timer('reconnect', delay, () => this.open());
    this.setStatus('reconnecting', why);
  }

  /** The server sent this client away on purpose: stay away. */
  sentAway(status, reason = '') {
    this.drop();
    this.setStatus(status, reason);
  }

  // ---- protocol -----------------------------------------------------------------------

  raw(text) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
  }

  packet(type, data, ackId) {
    this.raw(this.frameText(type, data, ackId));
  }

  frameText(type, data, ackId) {
    const nsp = this.opts.namespace === '/' ? '' : `${this.opts.namespace},`;
    return `4${type}${nsp}${ackId ?? ''}${JSON.stringify(data)}`;
  }

  onFrame(text) {
    if (typeof text !== 'string') return;
    const type = text[0];
    if (type === '0') {
      const hs = JSON.parse(text.slice(1));
      this.silence = hs.pingInterval + hs.pingTimeout;
      this.maxPayload = hs.maxPayload > 0 ? hs.maxPayload : Infinity;
      this.connectSent = true;
      this.timer('silence', this.silence, () => this.lost('ping timeout'));
      const nsp = this.opts.namespace === '/' ? '' : `${this.opts.namespace},`;
      const connect = `40${nsp}${JSON.stringify({ token: this.opts.token })}`;
      if (utf8Length(connect) > this.maxPayload) {
        // The server would close the connection on it, at every attempt: a refusal,
        // which a fresh token (refreshToken) answers.
        this.refused = true;
        return this.sentAway('failed', 'token too large');
      }
      this.presented = this.opts.token;
      this.raw(connect);
    } else if (type === '2') {
      this.timer('silence', this.silence, () => this.lost('ping timeout'));
      this.raw('3');
    } else if (type === '1') {
      this.lost('transport close');
    } else if (type === '4') {
      this.onSocketPacket(text.slice(1));
    }
  }

  onSocketPacket(text) {
    const kind = text[0];
    let rest = text.slice(1);
    const nsp = this.opts.namespace;
    if (nsp !== '/') {
      if (!rest.startsWith(nsp)) return;
      rest = rest.slice(nsp.length);
      if (rest.startsWith(',')) rest = rest.slice(1);
    }
    const m = /^(\d*)(.*)$/s.exec(rest);
    const id = m[1] === '' ? null : Number(m[1]);
    const data = m[2] ? JSON.parse(m[2]) : null;
    if (kind === '0') {
      // Once per connection: a second CONNECT (a server gone wrong) would number new acks
      // over the ones still awaited.
      if (this.up) return;
      clearTimeout(this.timers.connect);
      this.up = true;
      this.attempt = 0;
      this.nextAck = 0;
      this.setStatus('connected');
      if (!this.up) return; // a listener of the status disconnected
      // A token handed over while this CONNECT was on its way: the connection holds the
      // one it carried, so the new one goes now.
      if (this.presented !== this.opts.token) this.sendRefresh();
      for (const c of this.joined.keys()) this.sendJoin(c);
      this.flush();
    } else if (kind === '4') {
      if (this.connectSent && this.presented !== this.opts.token) {
        // Refused for the token this CONNECT carried, which the page replaced while it
        // was on its way: the new one is presented at once. Refused too, it fails.
        this.drop();
        return this.open();
      }
      // Marked before the page hears of it, so that a listener that hands over a fresh
      // token at once (refreshToken) connects with it.
      this.refused = true;
      this.sentAway('failed', (data && data.message) || 'connect error');
    } else if (kind === '1') {
      this.sentAway(this.replaced ? 'replaced' : 'disconnected');
    } else if (kind === '2' && Array.isArray(data) && typeof data[0] === 'string') {
      this.onEvent(data[0], data[1]);
    } else if (kind === '3') {
      const cb = this.acks.get(id);
      this.acks.delete(id);
      // An answer that is not an object is read as a server fault: tried again later.
      const reply = Array.isArray(data) && data[0] && typeof data[0] === 'object'
        ? data[0] : { ok: false, code: 'internal' };
      if (cb) cb(reply);
    }
  }

  request(event, payload, cb) {
    const id = this.nextAck++;
    this.acks.set(id, cb);
    this.packet('2', [event, payload], id);
  }

  onEvent(name, payload) {
    switch (name) {
      case 'heartbeat':
        this.packet('2', ['heartbeat:response', payload]);
        break;
      case 'auth:expired':
        // The page fetches a fresh token and hands it to refreshToken() within the grace.
        this.fire('expired', payload);
        break;
      case 'connection:replaced':
        this.replaced = true;
        this.fire('replaced', payload);
        break;
      case 'message:new':
        if (payload && typeof payload === 'object') this.deliver(payload);
        break;
      case 'user:online':
      case 'user:offline':
        this.fire('presence', { ...payload, online: name === 'user:online' });
        break;
      case 'message:notification':
        // Sent only outside the room: for a conversation joined, the server let this
        // connection out (its user removed, then added back), unless it was written before
        // a join's answer (it arrives before it: a join awaiting its answer is left be).
        // Rejoined from the last message shown: at once, or, if the answer came and its
        // catch-up is still being read (or waits to be tried again), once that is done.
        if (payload && this.up && this.joined.has(payload.conversationId)) {
          const id = payload.conversationId;
          const answered = !this.onWire.has(id) && !this.timers[`join-${id}`];
          if (this.joining.has(id) && answered) this.letOut.add(id);
          else this.sendJoin(id);
        }
        this.fire('notification', payload);
        break;
      case 'message:error':
        this.fire('send-error', payload);
        break;
      default:
        this.fire('event', { name, payload });
    }
  }

  /** A live message: held while its conversation is catching up, else shown. */
  deliver(message) {
    const held = this.catching.get(message.conversationId);
    if (held) return held.push(message);
    this.show(message);
  }

  /** Hands a message to the application once, in seq order. */
  show(message) {
    if (!isMessage(message)) return;
    const parked = this.parked.get(message.conversationId);
    if (parked != null) {
      // Left with its place kept: a message still on its way from the room goes only if
      // it is the next one, and moves the place, so that joining again does not show it
      // twice; any other was shown already or comes with that join's catch-up.
      if (message.seq === parked + 1) {
        this.parked.set(message.conversationId, message.seq);
        this.fire('message', message);
      }
      return;
    }
    const last = this.joined.get(message.conversationId);
    if (last != null && message.seq <= last) return; // already shown
    if (this.joined.has(message.conversationId)) this.joined.set(message.conversationId, message.seq);
    this.fire('message', message);
  }

  /** Joins on this connection, once at a time per conversation, MAX_JOINS at a time. */
  sendJoin(conversationId) {
    if (this.joining.has(conversationId) || this.joinQueue.includes(conversationId)) return;
    if (this.joining.size >= MAX_JOINS) {
      this.joinQueue.push(conversationId);
      return;
    }
    this.joining.add(conversationId);
    this.requestJoin(conversationId);
  }

  /** A join ended (caught up or failed): the next one waiting takes its place. */
  joinEnded(conversationId) {
    this.joining.delete(conversationId);
    if (this.letOut.delete(conversationId) && this.up && this.joined.has(conversationId)) {
      this.sendJoin(conversationId);
    }
    while (this.up && this.joining.size < MAX_JOINS && this.joinQueue.length) {
      const next = this.joinQueue.shift();
      if (this.joined.has(next)) this.sendJoin(next);
    }
  }

  requestJoin(conversationId) {
    const gen = this.genOf(conversationId);
    const last = this.joined.get(conversationId);
    const payload = { conversationId };
    if (last != null) payload.afterSeq = last;
    if (this.tooLarge('conversation:join', payload)) {
      // The server would close the connection on it, and the rejoin after the reconnect
      // would close it again: refused for good, kept out of later rejoins.
      if (last != null) this.parked.set(conversationId, last);
      this.joined.delete(conversationId);
      this.catching.delete(conversationId);
      this.askedAgain.delete(conversationId);
      this.joinEnded(conversationId);
      return this.fireLater('join-failed', {
        conversationId, ok: false, code: 'too_large', error: 'Conversation id larger than the server takes',
      });
    }
    this.onWire.add(conversationId);
    this.request('conversation:join', payload, (reply) => {
      if (this.genOf(conversationId) !== gen) return; // left since
      this.onWire.delete(conversationId);
      if (this.later(reply, `join-${conversationId}`, () => this.requestJoin(conversationId))) return;
      const again = this.askedAgain.delete(conversationId);
      if ((!reply || !reply.ok) && again) return this.requestJoin(conversationId);
      if (!reply || !reply.ok) {
        // Refused for good (not a member, no such conversation): not asked for again on
        // the next reconnect, and nothing of it held back any more; its place is kept for
        // a later join().
        const last = this.joined.get(conversationId);
        if (last != null) this.parked.set(conversationId, last);
        this.joined.delete(conversationId);
        this.catching.delete(conversationId);
        this.joinEnded(conversationId);
        return this.fire('join-failed', { conversationId, ...reply });
      }
      const missed = Array.isArray(reply.missed) ? reply.missed.filter(isMessage) : [];
      if (!this.showAll(missed, conversationId, gen)) return;
      // Where the reply leaves off: its last message, or with none, where this rejoin
      // asked from (a server that answers an empty `missed` short of `lastSeq` is read on
      // from there, as the Rust client does, not taken at its word).
      const upTo = missed.length ? missed[missed.length - 1].seq : last;
      if (upTo != null && upTo < reply.lastSeq) {
        // The reply holds one page of what was missed: read the rest before going live.
        if (!this.catching.has(conversationId)) this.catching.set(conversationId, []);
        return this.readOn(conversationId, upTo, reply.lastSeq);
      }
      // Caught up: live messages held by an earlier catch-up that did not finish go now
      // (those already shown are skipped).
      const held = this.catching.get(conversationId) || [];
      this.catching.delete(conversationId);
      if (!this.showAll(held, conversationId, gen)) return;
      this.caughtUp(conversationId, reply.lastSeq);
    });
  }

  /** Reads what was missed after `afterSeq`, a page at a time, up to `lastSeq`. */
  readOn(conversationId, afterSeq, lastSeq) {
    const gen = this.genOf(conversationId);
    const payload = { conversationId, afterSeq, limit: 100 };
    this.request('message:history', payload, (reply) => {
      if (this.genOf(conversationId) !== gen) return; // left since
      const again = () => this.readOn(conversationId, afterSeq, lastSeq);
      if (this.later(reply, `read-${conversationId}`, again)) return;
      const held = () => {
        const live = this.catching.get(conversationId) || [];
        this.catching.delete(conversationId);
        return live;
      };
      if (!reply || !reply.ok) {
        // Live messages stay held: shown now, they would move the cursor past what was
        // never read. A rejoin reads on from the cursor, after a pause, keeping this
        // join's place among those under way; if the user is no longer a member, the
        // rejoin's refusal ends it.
        const wait = (reply && reply.retryAfterMs) || 1000;
        return this.timer(`join-${conversationId}`, wait, () => this.requestJoin(conversationId));
      }
      const page = Array.isArray(reply.messages) ? reply.messages.filter(isMessage) : [];
      if (!this.showAll(page, conversationId, gen)) return;
      const upTo = page.length ? page[page.length - 1].seq : lastSeq;
      if (upTo < lastSeq) return this.readOn(conversationId, upTo, lastSeq);
      if (!this.showAll(held(), conversationId, gen)) return;
      this.caughtUp(conversationId, lastSeq);
    });
  }

  /**
   * Shows a catch-up's messages in order; false if a listener left the conversation or
   * closed the client meanwhile (the rest is then not this catch-up's to show).
   */
  showAll(messages, conversationId, gen) {
    for (const m of messages) {
      if (this.genOf(conversationId) !== gen || !this.up) return false;
      this.show(m);
    }
    return this.genOf(conversationId) === gen && this.up;
  }

  caughtUp(conversationId, lastSeq) {
    if (!this.joined.has(conversationId)) return; // left meanwhile
    const seen = this.joined.get(conversationId);
    if (seen == null || seen < lastSeq) this.joined.set(conversationId, lastSeq);
    this.fire('joined', { conversationId, lastSeq });
    this.joinEnded(conversationId);
  }

  /**
   * Sends a request again later if the server asked for that; says whether it did.
   * Requests turned away by the connection's event budget (`rate_limited`, a rejoin
   * burst) go again `retryAfterMs` apart, the pace at which the budget refills, not all
   * at once, which would only be turned away again; after a server fault (`internal`)
   * each waits `retryAfterMs` plus up to a second.
   */
  later(reply, name, retry) {
    if (reply && reply.ok) return false;
    const code = refusalCode(reply);
    if (code !== 'rate_limited' && code !== 'internal') return false;
    const wait = (reply && reply.retryAfterMs) || 1000;
    const now = performance.now();
    let at;
    if (code === 'rate_limited') {
      at = Math.max(now, this.pacedUntil) + wait;
      this.pacedUntil = at;
    } else {
      at = now + wait + Math.floor(Math.random() * 1000);
    }
    this.timer(name, at - now, () => this.up && retry());
    return true;
  }

  /**
   * Sends what the outbox holds, in order, at most four awaiting their ack at a time (as
   * the Rust client): an outbox that filled up offline is not fired at the server at
   * once, where past the rate limit each extra send would only be refused. A send
   * refused for the rate limit (or a server fault) holds back every send not yet on the
   * wire until `retryAfterMs` has passed.
   */
  flush() {
    if (!this.up) return;
    const now = performance.now();
    let inFlight = 0;
    for (const o of this.outbox.values()) if (o.sentOn !== null) inFlight += 1;
    for (const [tempId, o] of this.outbox) {
      if (inFlight >= 4) break;
      if (o.sentOn !== null) continue;
      if (o.notBefore > now) {
        this.timer('retry-sends', o.notBefore - now, () => this.flush());
        break;
      }
      const payload = { conversationId: o.conversationId, content: o.content, tempId };
      if (this.tooLarge('message:send', payload)) {
        // The server would close the connection on it, and it would go again after the
        // reconnect, and again: it can never be delivered.
        this.outbox.delete(tempId);
        this.fireLater('send-failed', {
          tempId, ok: false, code: 'too_large', error: 'Message larger than the server takes',
        });
        continue;
      }
      inFlight += 1;
      o.sentOn = this.nextAck;
      this.request('message:send', payload, (reply) => {
        if (!this.outbox.has(tempId)) return;
        if (reply && reply.ok) {
          this.outbox.delete(tempId);
          this.fire('acked', { tempId, message: reply.message, duplicate: reply.duplicate });
        } else if (['rate_limited', 'internal'].includes(refusalCode(reply))) {
          o.sentOn = null;
          const until = performance.now() + ((reply && reply.retryAfterMs) || 1000);
          for (const other of this.outbox.values()) {
            if (other.sentOn === null) other.notBefore = Math.max(other.notBefore, until);
          }
          this.fire('send-delayed', { tempId, ...reply });
        } else {
          this.outbox.delete(tempId);
          this.fire('send-failed', { tempId, ...(reply || {}) });
        }
        this.flush();
      });
    }
  }

}
