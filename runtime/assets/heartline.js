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
//  - catch-up: joined conversations are rejoined with `afterSeq`, what the join's reply
//    cannot hold is read through `message:history` before live messages are shown, and
//    each message is handed over once, in seq order; a join or read the server asks to
//    come back for later (`rate_limited`, `internal`) is sent again after `retryAfterMs`.

const DEFAULTS = {
  namespace: '/chat',
  initialDelayMs: 1000,
  factor: 2,
  maxDelayMs: 10000,
  randomization: 0.5,
  maxAttempts: 5,
  connectTimeoutMs: 20000,
};

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
    this.nextAck = 0;
    this.acks = new Map(); // ack id -> callback
    this.outbox = new Map(); // tempId -> { conversationId, content, sentOn, notBefore }
    this.joined = new Map(); // conversationId -> last seq delivered (null until known)
    this.catching = new Map(); // conversationId -> live messages held while catching up
    this.timers = {};
    this.seq = 0;
  }

  // ---- public API ---------------------------------------------------------------------

  connect() {
    if (this.ws) return;
    this.attempt = 0;
    this.replaced = false;
    this.setStatus('connecting');
    this.open();
  }

  disconnect() {
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    this.up = false;
    if (ws) ws.close();
    this.setStatus('idle');
  }

  join(conversationId) {
    if (!this.joined.has(conversationId)) this.joined.set(conversationId, null);
    if (this.up) this.sendJoin(conversationId);
  }

  /** Queues a message; returns its tempId. */
  send(conversationId, content) {
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
    ws.onmessage = (e) => this.ws === ws && this.onFrame(e.data);
    ws.onclose = () => this.ws === ws && this.lost('transport close');
    ws.onerror = () => {};
  }

  /** The connection went away without the server asking: come back later. */
  lost(why) {
    const ws = this.ws;
    this.ws = null;
    this.up = false;
    this.acks.clear();
    this.catching.clear();
    for (const o of this.outbox.values()) o.sentOn = null;
    if (ws) ws.close();
    this.clearTimers();
    if (this.replaced) return this.setStatus('replaced');
    if (this.status === 'disconnected' || this.status === 'failed' || this.status === 'idle') return;
    this.attempt += 1;
    if (this.attempt > this.opts.maxAttempts) {
      return this.setStatus('failed', 'reconnection attempts exhausted');
    }
    const base = this.opts.initialDelayMs * Math.pow(this.opts.factor, this.attempt - 1);
    const r = Math.random();
    const dev = Math.floor(r * this.opts.randomization * base);
    const delay = Math.min(Math.floor(r * 10) % 2 === 0 ? base - dev : base + dev, this.opts.maxDelayMs);
    this.setStatus('reconnecting', why);
    this.timer('reconnect', delay, () => this.open());
  }

  /** The server sent this client away on purpose: stay away. */
  sentAway(status, reason = '') {
    const ws = this.ws;
    this.ws = null;
    this.up = false;
    this.clearTimers();
    if (ws) ws.close();
    this.setStatus(status, reason);
  }

  // ---- protocol -----------------------------------------------------------------------

  raw(text) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
  }

  packet(type, data, ackId) {
    const nsp = this.opts.namespace === '/' ? '' : `${this.opts.namespace},`;
    this.raw(`4${type}${nsp}${ackId ?? ''}${JSON.stringify(data)}`);
  }

  onFrame(text) {
    if (typeof text !== 'string') return;
    const type = text[0];
    if (type === '0') {
      const hs = JSON.parse(text.slice(1));
      this.silence = hs.pingInterval + hs.pingTimeout;
      this.timer('silence', this.silence, () => this.lost('ping timeout'));
      const nsp = this.opts.namespace === '/' ? '' : `${this.opts.namespace},`;
      this.raw(`40${nsp}${JSON.stringify({ token: this.opts.token })}`);
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
      clearTimeout(this.timers.connect);
      this.up = true;
      this.attempt = 0;
      this.nextAck = 0;
      this.setStatus('connected');
      for (const c of this.joined.keys()) this.sendJoin(c);
      this.flush();
    } else if (kind === '4') {
      this.sentAway('failed', (data && data.message) || 'connect error');
    } else if (kind === '1') {
      this.sentAway(this.replaced ? 'replaced' : 'disconnected');
    } else if (kind === '2') {
      this.onEvent(data[0], data[1]);
    } else if (kind === '3') {
      const cb = this.acks.get(id);
      this.acks.delete(id);
      if (cb) cb(data[0]);
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
      case 'connection:replaced':
        this.replaced = true;
        this.fire('replaced', payload);
        break;
      case 'message:new':
        this.deliver(payload);
        break;
      case 'user:online':
      case 'user:offline':
        this.fire('presence', { ...payload, online: name === 'user:online' });
        break;
      case 'message:notification':
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
    const last = this.joined.get(message.conversationId);
    if (last != null && message.seq <= last) return; // already shown
    if (this.joined.has(message.conversationId)) this.joined.set(message.conversationId, message.seq);
    this.fire('message', message);
  }

  sendJoin(conversationId) {
    const last = this.joined.get(conversationId);
    const payload = { conversationId };
    if (last != null) payload.afterSeq = last;
    this.request('conversation:join', payload, (reply) => {
      if (this.later(reply, `join-${conversationId}`, () => this.sendJoin(conversationId))) return;
      if (!reply || !reply.ok) return this.fire('join-failed', { conversationId, ...reply });
      const missed = reply.missed || [];
      for (const m of missed) this.show(m);
      const upTo = missed.length ? missed[missed.length - 1].seq : null;
      if (upTo != null && upTo < reply.lastSeq) {
        // The reply holds one page of what was missed: read the rest before going live.
        this.catching.set(conversationId, []);
        return this.readOn(conversationId, upTo, reply.lastSeq);
      }
      this.caughtUp(conversationId, reply.lastSeq);
    });
  }

  /** Reads what was missed after `afterSeq`, a page at a time, up to `lastSeq`. */
  readOn(conversationId, afterSeq, lastSeq) {
    const payload = { conversationId, afterSeq, limit: 100 };
    this.request('message:history', payload, (reply) => {
      const again = () => this.readOn(conversationId, afterSeq, lastSeq);
      if (this.later(reply, `read-${conversationId}`, again)) return;
      const held = () => {
        const live = this.catching.get(conversationId) || [];
        this.catching.delete(conversationId);
        return live;
      };
      if (!reply || !reply.ok) {
        for (const m of held()) this.show(m);
        return this.fire('join-failed', { conversationId, ...reply });
      }
      const page = reply.messages || [];
      for (const m of page) this.show(m);
      const upTo = page.length ? page[page.length - 1].seq : lastSeq;
      if (upTo < lastSeq) return this.readOn(conversationId, upTo, lastSeq);
      for (const m of held()) this.show(m);
      this.caughtUp(conversationId, lastSeq);
    });
  }

  caughtUp(conversationId, lastSeq) {
    const seen = this.joined.get(conversationId);
    if (seen == null || seen < lastSeq) this.joined.set(conversationId, lastSeq);
    this.fire('joined', { conversationId, lastSeq });
  }

  /** Sends a request again later if the server asked for that; says whether it did. */
  later(reply, name, retry) {
    if (!reply || reply.ok || (reply.code !== 'rate_limited' && reply.code !== 'internal')) {
      return false;
    }
    // Spread out, so that a burst the server turned away does not come back as one.
    const wait = (reply.retryAfterMs || 1000) + Math.floor(Math.random() * 1000);
    this.timer(name, wait, () => this.up && retry());
    return true;
  }

  flush() {
    if (!this.up) return;
    const now = Date.now();
    for (const [tempId, o] of this.outbox) {
      if (o.sentOn !== null) continue;
      if (o.notBefore > now) {
        this.timer(`retry-${tempId}`, o.notBefore - now, () => this.flush());
        continue;
      }
      o.sentOn = this.nextAck;
      this.request('message:send', { conversationId: o.conversationId, content: o.content, tempId }, (reply) => {
        if (!this.outbox.has(tempId)) return;
        if (reply && reply.ok) {
          this.outbox.delete(tempId);
          this.fire('acked', { tempId, message: reply.message, duplicate: reply.duplicate });
        } else if (reply && (reply.code === 'rate_limited' || reply.code === 'internal')) {
          o.sentOn = null;
          o.notBefore = Date.now() + (reply.retryAfterMs || 1000);
          this.fire('send-delayed', { tempId, ...reply });
          this.flush();
        } else {
          this.outbox.delete(tempId);
          this.fire('send-failed', { tempId, ...(reply || {}) });
        }
      });
    }
  }
}
