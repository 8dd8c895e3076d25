// heartline.js on its own, over a scripted WebSocket: what it sends and what it hands to
// the page when connections end in each way, joins are turned away or a catch-up is long.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';

class FakeSocket {
  static OPEN = 1;
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = FakeSocket.OPEN;
    this.sent = [];
    this.closed = false;
    FakeSocket.all.push(this);
  }
  send(text) { this.sent.push(text); }
  close() { this.closed = true; this.readyState = 3; }
  /** A frame from the server. */
  recv(text) { this.onmessage({ data: text }); }
  /** The Engine.IO open packet and the namespace CONNECT. */
  accept() {
    this.recv('0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}');
    this.recv('40/chat,{"sid":"x"}');
  }
  /** Events sent on this socket: [ackId, name, payload]. */
  events() {
    return this.sent.filter((t) => t.startsWith('42/chat,')).map((t) => {
      const m = /^42\/chat,(\d*)(.*)$/s.exec(t);
      const [name, payload] = JSON.parse(m[2]);
      return [m[1] === '' ? null : Number(m[1]), name, payload];
    });
  }
  ack(id, reply) { this.recv(`43/chat,${id}${JSON.stringify([reply])}`); }
}
globalThis.WebSocket = FakeSocket;
const { HeartlineClient, OutboxFullError, backoffDelay } = await import('../../runtime/assets/heartline.js');

// Every client a test made is disconnected after it, passed or failed: a failed test
// otherwise leaves its client's timers (a 60 s backoff, a ping deadline) holding the run.
const made = [];
afterEach(() => {
  for (const c of made.splice(0)) c.disconnect();
});

function client() {
  FakeSocket.all = [];
  const c = new HeartlineClient('http://127.0.0.1:1', { token: 't', initialDelayMs: 60_000 });
  made.push(c);
  c.shown = [];
  c.addEventListener('message', (e) => c.shown.push(e.detail.seq));
  return c;
}
const last = () => FakeSocket.all[FakeSocket.all.length - 1];
/** A client that joined `c` and connected, and its socket. */
function connectedIn() {
  const c = client();
  c.join('c');
  c.connect();
  const ws = last();
  ws.accept();
  return { c, ws };
}
const msg = (seq) => ({ id: `m${seq}`, conversationId: 'c', seq, senderId: 'u', content: `${seq}` });
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, k) => a + k);

test('closed and opened again, unacknowledged sends go again and acks do not cross', () => {
  const c = client();
  c.connect();
  last().accept();
  const a = c.send('c', 'first');
  assert.deepEqual(last().events().map(([id, , p]) => [id, p.tempId]), [[0, a]]);
  c.disconnect();
  c.connect();
  last().accept();
  const b = c.send('c', 'second');
  assert.deepEqual(last().events().map(([id, , p]) => [id, p.tempId]), [[0, a], [1, b]]);
  const acked = [];
  c.addEventListener('acked', (e) => acked.push(e.detail.tempId));
  last().ack(1, { ok: true, message: msg(1), duplicate: false });
  assert.deepEqual(acked, [b]);
  assert.equal(c.outbox.size, 1);
  c.disconnect();
});

test('connecting during a backoff opens one socket, and the backoff does not open another', async () => {
  const c = new HeartlineClient('http://127.0.0.1:1', { token: 't', initialDelayMs: 30, randomization: 0 });
  made.push(c);
  FakeSocket.all = [];
  c.connect();
  last().accept();
  last().onclose();
  assert.equal(c.status, 'reconnecting');
  c.connect();
  assert.equal(FakeSocket.all.length, 2);
  await new Promise((r) => setTimeout(r, 80));
  assert.equal(FakeSocket.all.length, 2, 'no second socket from the old backoff');
  c.disconnect();
});

/** A client that joined conversation `c` when it was empty, lost its connection and is
 * connected again; returns the new socket, the rejoin sent on it. */
function backAfterAbsence(c) {
  c.join('c');
  c.connect();
  const first = last();
  first.accept();
  first.ack(0, { ok: true, conversationId: 'c', lastSeq: 0, missed: [] });
  first.onclose();
  c.connect();
  last().accept();
  return last();
}

test('a long catch-up is read through history once, even if joined twice, live messages after it', () => {
  const c = client();
  // Away while 1,100 are written; back, the page joins again on its own as well.
  const ws = backAfterAbsence(c);
  c.join('c');
  const joins = ws.events().filter(([, name]) => name === 'conversation:join');
  assert.equal(joins.length, 1, 'one join per conversation at a time');
  assert.equal(joins[0][2].afterSeq, 0);
  ws.ack(joins[0][0], { ok: true, conversationId: 'c', lastSeq: 1100, missed: range(1, 1000).map(msg) });
  // A live message before the catch-up is done is held back.
  ws.recv(`42/chat,${JSON.stringify(['message:new', msg(1101)])}`);
  for (let page = 0; page < 2; page += 1) {
    const [id, name, p] = ws.events().at(-1);
    assert.equal(name, 'message:history');
    const from = p.afterSeq + 1;
    ws.ack(id, { ok: true, messages: range(from, Math.min(from + 49, 1100)).map(msg) });
  }
  assert.deepEqual(c.shown, range(1, 1101));
  assert.equal(c.joined.get('c'), 1101);
  c.disconnect();
});

test('an outbox filled offline goes four at a time', () => {
  const c = client();
  const ids = range(1, 10).map((i) => c.send('c', `m${i}`));
  c.connect();
  const ws = last();
  ws.accept();
  assert.equal(ws.events().length, 4);
  ws.ack(0, { ok: true, message: msg(1), duplicate: false });
  assert.deepEqual(ws.events().map(([, , p]) => p.tempId), ids.slice(0, 5));
  c.disconnect();
});

test('a full outbox throws and queues nothing until the server acknowledges a send', () => {
  const c = client();
  c.opts.maxOutbox = 3;
  c.opts.maxOutboxChars = 20;
  const ids = ['a', 'b', 'c'].map((m) => c.send('c1', m));
  assert.throws(() => c.send('c1', 'd'), (e) => e instanceof OutboxFullError && e.code === 'outbox_full');
  assert.equal(c.outbox.size, 3, 'nothing queued');
  c.connect();
  const ws = last();
  ws.accept();
  assert.deepEqual(ws.events().map(([, , p]) => p.tempId), ids);
  ws.ack(0, { ok: true, message: msg(1), duplicate: false });
  ws.ack(1, { ok: false, code: 'not_a_member' });
  assert.equal(c.outbox.size, 1);
  // 3 characters in use; 16 + 2 more would pass 20, 15 + 2 reach it.
  assert.throws(() => c.send('c1', 'x'.repeat(16)), OutboxFullError);
  c.send('c1', 'x'.repeat(15));
  assert.equal(c.outbox.size, 2);
});

test('joins turned away by the event budget go again one refill apart', () => {
  const delays = [];
  const realSetTimeout = globalThis.setTimeout;
  globalThis.setTimeout = (fn, ms) => {
    delays.push(ms);
    return realSetTimeout(() => {}, 0);
  };
  try {
    const c = client();
    for (const conv of ['a', 'b', 'c', 'd']) c.join(conv);
    c.connect();
    const ws = last();
    ws.accept();
    delays.length = 0;
    for (const [id] of ws.events()) {
      ws.ack(id, { ok: false, error: 'Rate limit exceeded', code: 'rate_limited', retryAfterMs: 50 });
    }
    // Each waits 50 ms more than the one before (give or take the clock's tick).
    assert.equal(delays.length, 4);
    for (let k = 1; k < delays.length; k += 1) {
      assert.ok(Math.abs(delays[k] - delays[k - 1] - 50) <= 5, `${delays}`);
    }
    c.disconnect();
  } finally {
    globalThis.setTimeout = realSetTimeout;
  }
});

test('a rejoin burst keeps four joins and their catch-ups under way, each asked for once', () => {
  const c = client();
  const convs = range(0, 9).map((i) => `c${i}`);
  for (const conv of convs) c.join(conv);
  c.connect();
  const ws = last();
  ws.accept();
  const joins = () => ws.events().filter(([, name]) => name === 'conversation:join');
  assert.deepEqual(joins().map(([, , p]) => p.conversationId), convs.slice(0, 4));
  // Asked again by the page, in flight or waiting: nothing more is sent.
  c.join('c0');
  c.join('c9');
  assert.equal(joins().length, 4);
  // c0 has more missed than its reply holds: its read keeps its place until done.
  ws.ack(joins()[0][0], { ok: true, conversationId: 'c0', lastSeq: 3, missed: [{ ...msg(1), conversationId: 'c0' }] });
  assert.equal(joins().length, 4, 'c0 is still catching up');
  const [read] = ws.events().at(-1);
  ws.ack(read, { ok: true, messages: [2, 3].map((seq) => ({ ...msg(seq), conversationId: 'c0' })) });
  assert.equal(joins().length, 5, 'caught up: the next one goes');
  // The rest as answers come, never more than four under way.
  for (let k = 1; k < joins().length; k += 1) {
    const [id, , p] = joins()[k];
    ws.ack(id, { ok: true, conversationId: p.conversationId, lastSeq: 0, missed: [] });
    assert.ok(joins().length <= k + 1 + 4);
  }
  assert.deepEqual(joins().map(([, , p]) => p.conversationId), convs);
  assert.equal(c.joining.size, 0);
  c.disconnect();
});

test('odd server payloads end nothing but that frame, and a bare ack keeps the send', () => {
  const c = client();
  c.connect();
  const ws = last();
  ws.accept();
  const t = c.send('c', 'hello');
  ws.recv('42/chat,["message:new",null]');
  ws.recv('42/chat,null');
  assert.equal(c.status, 'connected');
  ws.recv('43/chat,0[]');
  assert.ok(c.outbox.has(t), 'kept, to be sent again');
  ws.recv('42/chat,[not json');
  assert.equal(c.status, 'reconnecting');
  c.disconnect();
});

test('a catch-up read refused for good skips nothing: the gap is read on the next rejoin', () => {
  const c = client();
  let ws = backAfterAbsence(c);
  const [[join]] = ws.events();
  ws.ack(join, { ok: true, conversationId: 'c', lastSeq: 10, missed: [msg(1), msg(2)] });
  ws.recv(`42/chat,${JSON.stringify(['message:new', msg(11)])}`);
  const [read] = ws.events().at(-1);
  ws.ack(read, { ok: false, error: 'Invalid payload', code: 'invalid_payload' });
  assert.deepEqual(c.shown, [1, 2], 'nothing past the gap');
  // Back again: the rejoin asks from the last message shown.
  ws.onclose();
  c.connect();
  ws = last();
  ws.accept();
  assert.equal(ws.events()[0][2].afterSeq, 2);
  c.disconnect();
});

test('a join refused for good is not asked for again after a reconnect', () => {
  const c = client();
  c.join('x');
  c.connect();
  let ws = last();
  ws.accept();
  const [[join]] = ws.events();
  const failed = [];
  c.addEventListener('join-failed', (e) => failed.push(e.detail.code));
  ws.ack(join, { ok: false, error: 'Not a member of this conversation', code: 'forbidden' });
  assert.deepEqual(failed, ['forbidden']);
  ws.onclose();
  c.connect();
  ws = last();
  ws.accept();
  assert.deepEqual(ws.events().filter(([, name]) => name === 'conversation:join'), []);
  assert.deepEqual(failed, ['forbidden'], 'told once');
  c.disconnect();
});

test('a catch-up read refused is tried again through a rejoin, which releases what was held', async () => {
  const c = client();
  const ws = backAfterAbsence(c);
  const [[join]] = ws.events();
  ws.ack(join, { ok: true, conversationId: 'c', lastSeq: 10, missed: [msg(1), msg(2)] });
  ws.recv(`42/chat,${JSON.stringify(['message:new', msg(11)])}`);
  const [read] = ws.events().at(-1);
  ws.ack(read, { ok: false, error: 'Not a member of this conversation', code: 'forbidden', retryAfterMs: 5 });
  assert.deepEqual(c.shown, [1, 2], 'nothing past the gap yet');
  await new Promise((r) => setTimeout(r, 50));
  const [rejoin, name, payload] = ws.events().at(-1);
  assert.equal(name, 'conversation:join');
  assert.equal(payload.afterSeq, 2);
  ws.ack(rejoin, { ok: true, conversationId: 'c', lastSeq: 11, missed: range(3, 11).map(msg) });
  assert.deepEqual(c.shown, range(1, 11));
  ws.recv(`42/chat,${JSON.stringify(['message:new', msg(12)])}`);
  assert.deepEqual(c.shown, range(1, 12), 'live again, nothing held back');
  c.disconnect();
});

test('a notification for a joined conversation rejoins it from the last message shown', () => {
  const { c, ws } = connectedIn();
  const note = (seq) => ws.recv(`42/chat,${JSON.stringify(['message:notification', { conversationId: 'c', message: msg(seq) }])}`);
  // Written before the join's answer, it arrives while the join is under way: nothing more.
  note(1);
  assert.equal(ws.events().length, 1);
  const [[join]] = ws.events();
  ws.ack(join, { ok: true, conversationId: 'c', lastSeq: 1, missed: [] });
  ws.recv(`42/chat,${JSON.stringify(['message:new', msg(2)])}`);
  assert.deepEqual(c.shown, [2]);
  // Let out of the room and back in: #3 comes as a notification.
  note(3);
  const [rejoin, name, payload] = ws.events().at(-1);
  assert.equal(name, 'conversation:join');
  assert.equal(payload.afterSeq, 2);
  note(4);
  assert.equal(ws.events().length, 2, 'one rejoin');
  ws.ack(rejoin, { ok: true, conversationId: 'c', lastSeq: 4, missed: [msg(3), msg(4)] });
  assert.deepEqual(c.shown, [2, 3, 4]);
  c.disconnect();
});

test('a notification after a join\'s answer rejoins once its catch-up is read', () => {
  const { c, ws } = connectedIn();
  const [[join]] = ws.events();
  // The answer holds one page: the rest is read through history.
  ws.ack(join, { ok: true, conversationId: 'c', lastSeq: 3, missed: [msg(1)] });
  const [read, readName, readPayload] = ws.events().at(-1);
  assert.equal(readName, 'message:history');
  assert.equal(readPayload.afterSeq, 1);
  // Meanwhile the server lets the connection out of the room and back: #4 comes as a
  // notification, written after the join's answer. The catch-up carries on first.
  ws.recv(`42/chat,${JSON.stringify(['message:notification', { conversationId: 'c', message: msg(4) }])}`);
  assert.equal(ws.events().length, 2);
  ws.ack(read, { ok: true, messages: [msg(2), msg(3)] });
  assert.deepEqual(c.shown, [1, 2, 3]);
  // Then it joins again from there.
  const [rejoin, name, payload] = ws.events().at(-1);
  assert.equal(name, 'conversation:join');
  assert.equal(payload.afterSeq, 3);
  ws.ack(rejoin, { ok: true, conversationId: 'c', lastSeq: 4, missed: [msg(4)] });
  assert.deepEqual(c.shown, [1, 2, 3, 4]);
  c.disconnect();
});

test('a conversation refused for good and joined again later resumes where it stopped', () => {
  const c = client();
  c.join('c');
  c.connect();
  let ws = last();
  ws.accept();
  ws.ack(ws.events()[0][0], { ok: true, conversationId: 'c', lastSeq: 5, missed: [] });
  ws.recv(`42/chat,${JSON.stringify(['message:new', msg(6)])}`);
  ws.onclose();
  c.connect();
  ws = last();
  ws.accept();
  ws.ack(ws.events()[0][0], { ok: false, error: 'Not a member of this conversation', code: 'forbidden' });
  // Not joined any more: a notification is the page's to act on.
  ws.recv(`42/chat,${JSON.stringify(['message:notification', { conversationId: 'c', message: msg(7) }])}`);
  assert.equal(ws.events().length, 1);
  c.join('c');
  const [, name, payload] = ws.events().at(-1);
  assert.equal(name, 'conversation:join');
  assert.equal(payload.afterSeq, 6);
  c.disconnect();
});

test('a join asked for again while one is on the wire outlives its refusal', () => {
  const { c, ws } = connectedIn();
  const failed = [];
  c.addEventListener('join-failed', (e) => failed.push(e.detail.code));
  const [[first]] = ws.events();
  c.join('c');
  assert.equal(ws.events().length, 1, 'one join on the wire at a time');
  ws.ack(first, { ok: false, error: 'Not a member of this conversation', code: 'forbidden' });
  assert.deepEqual(failed, []);
  const [again, name] = ws.events().at(-1);
  assert.equal(name, 'conversation:join');
  assert.notEqual(again, first);
  ws.ack(again, { ok: false, error: 'Not a member of this conversation', code: 'forbidden' });
  assert.deepEqual(failed, ['forbidden'], 'nothing asked since: it ends');
  assert.equal(ws.events().length, 2);
  c.disconnect();
});

test('reconnection never gives up by default, and delays at the ceiling keep their jitter', () => {
  const c = client();
  assert.equal(c.opts.maxAttempts, Infinity);
  const opts = { initialDelayMs: 1000, factor: 2, maxDelayMs: 10000, randomization: 0.5 };
  for (const attempt of [5, 10, 1000]) {
    const delays = new Set(range(0, 49).map((k) => backoffDelay(opts, attempt, (k + 0.5) / 50)));
    assert.ok([...delays].every((d) => d >= 5000 && d <= 10000), `${[...delays]}`);
    assert.ok(delays.size > 25, `attempt ${attempt}: ${[...delays]}`);
  }
  // A randomization that would take the delay away is read as at most 0.99.
  assert.ok(range(0, 99).every((k) => backoffDelay({ ...opts, randomization: 5 }, 1, k / 100) >= 10));
});

test('a refusal without a code is a server fault: the send is tried again, not failed', () => {
  const c = client();
  c.connect();
  const ws = last();
  ws.accept();
  const failed = [];
  c.addEventListener('send-failed', (e) => failed.push(e.detail.tempId));
  const t = c.send('c', 'hi');
  const [[id]] = ws.events();
  ws.ack(id, { ok: false, error: 'Bad Gateway' });
  assert.deepEqual(failed, []);
  assert.ok(c.outbox.has(t), 'kept for a retry');
  // A second CONNECT on the live connection does not number new acks over awaited ones.
  ws.recv('40/chat,{"sid":"y"}');
  assert.equal(c.nextAck, 1);
  c.disconnect();
});

test('a conversation left stays left, and joined again resumes where it stopped', () => {
  const { c, ws } = connectedIn();
  const [[join]] = ws.events();
  ws.ack(join, { ok: true, conversationId: 'c', lastSeq: 2, missed: [] });
  ws.recv(`42/chat,${JSON.stringify(['message:new', msg(3)])}`);
  c.leave('c');
  const [, name, payload] = ws.events().at(-1);
  assert.equal(name, 'conversation:leave');
  assert.equal(payload.conversationId, 'c');
  // Out of the room the server notifies: a left conversation is not joined again.
  ws.recv(`42/chat,${JSON.stringify(['message:notification', { conversationId: 'c', message: msg(4) }])}`);
  assert.equal(ws.events().length, 2);
  c.join('c');
  const [again, joinName, joinPayload] = ws.events().at(-1);
  assert.equal(joinName, 'conversation:join');
  assert.equal(joinPayload.afterSeq, 3);
  ws.ack(again, { ok: true, conversationId: 'c', lastSeq: 4, missed: [msg(4)] });
  assert.deepEqual(c.shown, [3, 4]);
  c.disconnect();
});

test('leaving during a join ignores its answer; a fresh token goes as auth:refresh', () => {
  const { c, ws } = connectedIn();
  const [[first]] = ws.events();
  c.leave('c');
  c.join('c');
  const names = ws.events().map(([, n]) => n);
  assert.deepEqual(names, ['conversation:join', 'conversation:leave', 'conversation:join']);
  const [second] = ws.events().at(-1);
  ws.ack(first, { ok: true, conversationId: 'c', lastSeq: 1, missed: [msg(1)] });
  assert.deepEqual(c.shown, [], 'the answer to the join before the leave is not this one');
  ws.ack(second, { ok: true, conversationId: 'c', lastSeq: 1, missed: [] });
  ws.recv(`42/chat,${JSON.stringify(['message:new', msg(2)])}`);
  assert.deepEqual(c.shown, [2]);
  const expired = [];
  c.addEventListener('expired', () => expired.push(true));
  ws.recv(`42/chat,${JSON.stringify(['auth:expired', {}])}`);
  assert.equal(expired.length, 1);
  const refreshed = [];
  c.addEventListener('refreshed', (e) => refreshed.push(e.detail.ok));
  c.refreshToken('t2');
  const [id, refreshName, refreshPayload] = ws.events().at(-1);
  assert.equal(refreshName, 'auth:refresh');
  assert.equal(refreshPayload.token, 't2');
  ws.ack(id, { ok: true });
  assert.deepEqual(refreshed, [true]);
  assert.equal(c.opts.token, 't2', 'presented at the next connect');
  c.disconnect();
});

test('a rejoin answered with nothing missed short of lastSeq reads on from its position', () => {
  const c = client();
  c.join('c');
  c.connect();
  let ws = last();
  ws.accept();
  const [[join]] = ws.events();
  ws.ack(join, { ok: true, conversationId: 'c', lastSeq: 2, missed: [] });
  c.disconnect();
  c.connect();
  ws = last();
  ws.accept();
  const [[rejoin, , payload]] = ws.events();
  assert.equal(payload.afterSeq, 2);
  ws.ack(rejoin, { ok: true, conversationId: 'c', lastSeq: 4, missed: [] });
  const [read, name, readPayload] = ws.events().at(-1);
  assert.equal(name, 'message:history');
  assert.equal(readPayload.afterSeq, 2);
  ws.ack(read, { ok: true, messages: [msg(3), msg(4)] });
  assert.deepEqual(c.shown, [3, 4]);
  c.disconnect();
});

test('a client the server refused connects again with a fresh token', () => {
  const c = client();
  c.connect();
  const ws = last();
  ws.recv('0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}');
  ws.recv('44/chat,{"message":"Invalid authentication token"}');
  assert.equal(c.status, 'failed');
  assert.equal(FakeSocket.all.length, 1);
  c.refreshToken('fresh');
  assert.equal(FakeSocket.all.length, 2, 'connects with it');
  assert.equal(c.status, 'connecting');
  last().accept();
  assert.equal(c.status, 'connected');
  assert.match(last().sent.find((t) => t.startsWith('40/chat,')), /"token":"fresh"/);
  c.disconnect();
});

test('a message still on its way after a leave is shown once, not again when joined again', () => {
  const { c, ws } = connectedIn();
  const [[join]] = ws.events();
  ws.ack(join, { ok: true, conversationId: 'c', lastSeq: 10, missed: [] });
  c.leave('c');
  // Written before the server took the leave: the next one is shown, a later one is not.
  ws.recv(`42/chat,${JSON.stringify(['message:new', msg(11)])}`);
  ws.recv(`42/chat,${JSON.stringify(['message:new', msg(13)])}`);
  assert.deepEqual(c.shown, [11]);
  c.join('c');
  const [again, , payload] = ws.events().at(-1);
  assert.equal(payload.afterSeq, 11, 'resumes after what was shown');
  ws.ack(again, { ok: true, conversationId: 'c', lastSeq: 13, missed: [msg(12), msg(13)] });
  assert.deepEqual(c.shown, [11, 12, 13], 'each once, in order');
});

test('a token handed over during the handshake is presented: as auth:refresh, or again if refused', () => {
  const OPEN = '0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}';
  // The CONNECT with the old token succeeds: the new one follows as auth:refresh.
  let c = client();
  c.connect();
  last().recv(OPEN);
  c.refreshToken('fresh');
  last().recv('40/chat,{"sid":"x"}');
  const refresh = last().events().find(([, name]) => name === 'auth:refresh');
  assert.equal(refresh && refresh[2].token, 'fresh');
  c.disconnect();
  // It is refused: the new token is presented at once, not a failure.
  c = client();
  c.connect();
  last().recv(OPEN);
  c.refreshToken('fresh');
  last().recv('44/chat,{"message":"Invalid authentication token"}');
  assert.equal(FakeSocket.all.length, 2, 'connects again at once');
  assert.notEqual(c.status, 'failed');
  last().recv(OPEN);
  assert.match(last().sent.find((t) => t.startsWith('40/chat,')), /"token":"fresh"/);
  last().recv('44/chat,{"message":"Invalid authentication token"}');
  assert.equal(c.status, 'failed', 'refused with the new one too: for good');
  assert.equal(FakeSocket.all.length, 2);
});

test('entries of a catch-up that are not messages are skipped, and the join goes live', () => {
  const { c, ws } = connectedIn();
  const [[join]] = ws.events();
  ws.ack(join, { ok: true, conversationId: 'c', lastSeq: 2, missed: [null, msg(1), 'x', msg(2)] });
  assert.deepEqual(c.shown, [1, 2]);
  assert.equal(c.status, 'connected', 'not a reason to reconnect');
  assert.equal(c.joined.get('c'), 2);
  assert.equal(FakeSocket.all.length, 1);
});

test('a listener that leaves or disconnects mid-step does not leave the client half done', () => {
  // Leaving from a message listener during a catch-up: the rest is not shown, and the
  // conversation stays left.
  let { c, ws } = connectedIn();
  c.addEventListener('message', (e) => e.detail.seq === 1 && c.leave('c'));
  const [[join]] = ws.events();
  ws.ack(join, { ok: true, conversationId: 'c', lastSeq: 3, missed: [msg(1), msg(2), msg(3)] });
  assert.deepEqual(c.shown, [1]);
  assert.equal(c.joined.has('c'), false, 'still left');
  c.disconnect();
  // Disconnecting from the status listener as it turns connected: the next connect
  // still joins.
  c = client();
  c.join('c');
  let once = true;
  c.addEventListener('status', (e) => {
    if (e.detail.status === 'connected' && once) {
      once = false;
      c.disconnect();
    }
  });
  c.connect();
  last().accept();
  c.connect();
  last().accept();
  const joins = last().events().filter(([, name]) => name === 'conversation:join');
  assert.equal(joins.length, 1, 'the join goes on the next connection');
});

/** Lets the timers due now run: the failures the client finds itself are told then. */
const tick = () => new Promise((r) => setTimeout(r, 0));

test('a send larger than the server takes fails at once as too_large, and the rest go', async () => {
  const c = client();
  const failed = [];
  c.addEventListener('send-failed', (e) => failed.push([e.detail.tempId, e.detail.code]));
  // The server's maxPayload (1,000,000 bytes) counts bytes: 400,000 three-byte characters.
  const big = c.send('c', '€'.repeat(400_000));
  const small = c.send('c', 'fits');
  c.connect();
  last().accept();
  assert.deepEqual(last().events().map(([, , p]) => p.tempId), [small], 'only the one that fits');
  assert.deepEqual(failed, [], 'told after the call that found it has returned');
  await tick();
  assert.deepEqual(failed, [[big, 'too_large']]);
  assert.equal(last().closed, false, 'the connection goes on');
  assert.deepEqual([...c.outbox.keys()], [small]);
});

test('a join larger than the server takes fails at once as too_large and is not rejoined', async () => {
  const c = client();
  const failed = [];
  c.addEventListener('join-failed', (e) => failed.push([e.detail.conversationId.length, e.detail.code]));
  const big = 'c'.repeat(1_000_001);
  c.join(big);
  c.join('small');
  c.connect();
  last().accept();
  const joins = () => last().events().filter(([, name]) => name === 'conversation:join').map(([, , p]) => p.conversationId);
  assert.deepEqual(joins(), ['small'], 'only the one that fits');
  assert.deepEqual(failed, [], 'told after the call that found it has returned');
  await tick();
  assert.deepEqual(failed, [[big.length, 'too_large']]);
  assert.equal(last().closed, false, 'the connection goes on');
  assert.equal(c.joined.has(big), false);
  // Not asked for again on the next connection.
  last().onclose();
  c.connect();
  last().accept();
  assert.deepEqual(joins(), ['small']);
});

test('a token larger than the server takes is refused, not sent, and a connect carrying it fails', async () => {
  const c = client();
  const refreshed = [];
  c.addEventListener('refreshed', (e) => refreshed.push(e.detail.code));
  c.connect();
  last().accept();
  const big = 't'.repeat(1_000_001);
  c.refreshToken(big);
  assert.deepEqual(last().events().filter(([, name]) => name === 'auth:refresh'), [], 'nothing sent');
  assert.deepEqual(refreshed, [], 'told after the call that found it has returned');
  await tick();
  assert.deepEqual(refreshed, ['too_large']);
  assert.equal(last().closed, false, 'the connection goes on');
  assert.equal(c.status, 'connected');
  // The next connect would present it: failed, without a CONNECT and without a retry.
  last().onclose();
  c.connect();
  last().recv('0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}');
  assert.equal(last().sent.some((t) => t.startsWith('40')), false, 'no CONNECT sent');
  assert.equal(c.status, 'failed');
  const sockets = FakeSocket.all.length;
  c.refreshToken('fresh');
  assert.equal(FakeSocket.all.length, sockets + 1, 'a fresh token that fits connects again');
});

test('a listener that asks again at once for a join too large does not recurse', async () => {
  const c = client();
  let told = 0;
  const big = 'c'.repeat(1_000_001);
  c.addEventListener('join-failed', () => {
    told += 1;
    if (told < 5) c.join(big);
  });
  c.connect();
  last().accept();
  c.join(big);
  assert.equal(told, 0, 'not within the call');
  for (let k = 0; k < 10 && told < 5; k += 1) await tick();
  assert.equal(told, 5, 'each asked again, each told once, one after the other');
});

test('a page that gives up on reconnecting, or connects itself, leaves no second socket', async () => {
  for (const act of ['disconnect', 'connect']) {
    const c = new HeartlineClient('http://127.0.0.1:1', { token: 't', initialDelayMs: 20, randomization: 0 });
    made.push(c);
    FakeSocket.all = [];
    c.addEventListener('status', () => {
      if (c.status === 'reconnecting') c[act]();
    });
    c.connect();
    last().accept();
    last().onclose();
    await new Promise((r) => setTimeout(r, 80));
    if (act === 'disconnect') {
      assert.equal(c.status, 'idle', act);
      assert.equal(FakeSocket.all.length, 1, `${act}: no reconnection behind the page's back`);
    } else {
      assert.equal(FakeSocket.all.length, 2, `${act}: one new socket, not two`);
    }
    c.disconnect();
  }
});

test('a connect error before the open packet fails the client, and a fresh token from the listener connects', () => {
  const c = client();
  let handedOver = false;
  c.addEventListener('status', () => {
    if (c.status === 'failed' && !handedOver) {
      handedOver = true;
      c.refreshToken('fresh');
    }
  });
  c.connect();
  // A server gone wrong: its CONNECT_ERROR before any CONNECT went out.
  last().recv('44/chat,{"message":"Invalid authentication token"}');
  assert.equal(handedOver, true, 'failed, not reopened at once');
  assert.equal(FakeSocket.all.length, 2, 'the fresh token handed over in the listener connects');
  assert.equal(c.status, 'connecting');
  last().accept();
  assert.match(last().sent.find((t) => t.startsWith('40/chat,')), /"token":"fresh"/);
});

test('a listener of a too_large failure that sends again keeps four sends on the wire at most', async () => {
  const c = client();
  let resent = false;
  c.addEventListener('send-failed', () => {
    if (!resent) {
      resent = true;
      for (let k = 0; k < 6; k += 1) c.send('c', `again ${k}`);
    }
  });
  c.send('c', 'a');
  c.send('c', '€'.repeat(400_000));
  c.send('c', 'b');
  c.connect();
  last().accept();
  await tick();
  const onWire = last().events().filter(([, name]) => name === 'message:send');
  assert.equal(resent, true);
  assert.equal(onWire.length, 4, 'four at a time, the listener\'s sends counted');
});
