// The unmodified socket.io-client against the real heartline binary.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import WebSocket from 'ws';
import { createServer, connect as connectTcp } from 'node:net';
import { Server, token, sleep } from './server.mjs';

const server = new Server();
const opened = [];

before(async () => {
  await server.start();
  await server.conversation('c1', [['alice', 'customer'], ['bob', 'agent']]);
});

after(async () => {
  for (const s of opened) s.close();
  await server.kill('SIGTERM');
});

function connect(user, type, opts = {}) {
  const s = io(`${server.url}/chat`, {
    auth: { token: token(user, type) },
    reconnectionDelay: 100,
    reconnectionDelayMax: 300,
    ...opts,
  });
  opened.push(s);
  return s;
}

function once(socket, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    socket.once(event, (...args) => {
      clearTimeout(t);
      resolve(args.length > 1 ? args : args[0]);
    });
  });
}

test('websocket-only connect gets connection:success with the socket id', async () => {
  const s = connect('alice', 'customer', { transports: ['websocket'] });
  const ok = await once(s, 'connection:success');
  assert.equal(ok.userId, 'alice');
  assert.equal(ok.userType, 'customer');
  assert.equal(ok.socketId, s.id);
  assert.ok(Math.abs(ok.serverTime - Date.now()) < 60_000);
  s.close();
});

test('default transports: polling first, then upgrade to websocket', async () => {
  const s = connect('bob', 'agent', { autoConnect: false });
  const first = new Promise((r) => s.io.once('open', () => r(s.io.engine.transport.name)));
  const upgraded = new Promise((r) =>
    s.io.once('open', () => s.io.engine.once('upgrade', (t) => r(t.name))),
  );
  s.connect();
  await once(s, 'connection:success');
  assert.equal(await first, 'polling');
  assert.equal(await upgraded, 'websocket');
  assert.equal(s.io.engine.transport.name, 'websocket');
  const pong = once(s, 'pong');
  s.emit('ping', {});
  assert.ok((await pong).timestamp > 0);
  s.close();
});

test('auth refusals arrive as connect_error with the contract messages, without retries', async () => {
  const missing = io(`${server.url}/chat`, { transports: ['websocket'] });
  opened.push(missing);
  assert.equal((await once(missing, 'connect_error')).message, 'Authentication required');
  const bad = io(`${server.url}/chat`, { transports: ['websocket'], auth: { token: 'garbage' } });
  opened.push(bad);
  assert.equal((await once(bad, 'connect_error')).message, 'Invalid authentication token');
  const expired = io(`${server.url}/chat`, {
    transports: ['websocket'],
    auth: { token: token('alice', 'customer', { expInS: -10 }) },
  });
  opened.push(expired);
  assert.equal((await once(expired, 'connect_error')).message, 'Invalid authentication token');
  const hs512 = io(`${server.url}/chat`, {
    transports: ['websocket'],
    auth: { token: token('alice', 'customer', { alg: 'HS512' }) },
  });
  opened.push(hs512);
  assert.equal((await once(hs512, 'connect_error')).message, 'Invalid authentication token');
  assert.equal(missing.active, false, 'a refused connect is not retried');
  const other = io(`${server.url}/`, { transports: ['websocket'], auth: { token: token('a', 'b') } });
  opened.push(other);
  assert.equal((await once(other, 'connect_error')).message, 'Invalid namespace');
  for (const s of [missing, bad, expired, hs512, other]) s.close();
});

test('events with and without acks: join, send, message:new, message:sent', async () => {
  const a = connect('alice', 'customer', { transports: ['websocket'] });
  const b = connect('bob', 'agent', { transports: ['websocket'] });
  await Promise.all([once(a, 'connection:success'), once(b, 'connection:success')]);
  const ja = await a.timeout(5000).emitWithAck('conversation:join', { conversationId: 'c1' });
  assert.equal(ja.ok, true);
  const jb = await b.timeout(5000).emitWithAck('conversation:join', { conversationId: 'c1' });
  assert.equal(jb.ok, true);
  const seen = once(b, 'message:new');
  const sent = once(a, 'message:sent');
  const ack = await a.timeout(5000).emitWithAck('message:send', { conversationId: 'c1', content: 'hi bob', tempId: 'n1' });
  assert.equal(ack.ok, true);
  assert.equal(ack.duplicate, false);
  assert.equal(ack.message.content, 'hi bob');
  assert.equal((await seen).seq, ack.message.seq);
  assert.equal((await sent).tempId, 'n1');
  const again = await a.timeout(5000).emitWithAck('message:send', { conversationId: 'c1', content: 'hi bob', tempId: 'n1' });
  assert.equal(again.duplicate, true);
  assert.equal(again.message.seq, ack.message.seq);
  const forbidden = await a.timeout(5000).emitWithAck('conversation:join', { conversationId: 'nope' });
  assert.equal(forbidden.ok, false);
  assert.equal(forbidden.code, 'not_found');
  a.close();
  b.close();
});

for (const transport of ['websocket', 'polling']) {
  test(`replacement on ${transport}: the older socket gets connection:replaced, then io server disconnect, and stays away`, async () => {
    const user = `carol-${transport}`;
    const first = connect(user, 'customer', { transports: [transport] });
    await once(first, 'connection:success');
    const replaced = once(first, 'connection:replaced');
    const reasons = [];
    first.on('disconnect', (reason) => reasons.push(reason));
    const second = connect(user, 'customer', { transports: [transport] });
    await once(second, 'connection:success');
    assert.ok((await replaced).message);
    for (let i = 0; i < 100 && reasons.length === 0; i++) await sleep(20);
    await sleep(500);
    // The only ending it hears: a `transport close` first would have it come back.
    assert.deepEqual(reasons, ['io server disconnect']);
    assert.equal(first.connected, false, 'the displaced client does not fight back');
    assert.equal(second.connected, true);
    second.close();
  });
}

/**
 * A TCP relay to `target` that can go dark: while it is, the bytes either way are dropped
 * and no close is passed on, as when a laptop sleeps or a phone leaves coverage.
 */
async function relay(target) {
  const port = Number(new URL(target).port);
  let dark = false;
  const sockets = new Set();
  const srv = createServer((down) => {
    const up = connectTcp(port, '127.0.0.1');
    const pair = [[down, up], [up, down]];
    for (const [from, to] of pair) {
      sockets.add(from);
      from.on('data', (d) => {
        if (!dark) to.write(d);
      });
      from.on('error', () => {});
      from.on('close', () => {
        sockets.delete(from);
        if (!dark) to.destroy();
      });
    }
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${srv.address().port}`,
    setDark(v) {
      dark = v;
    },
    close() {
      for (const s of sockets) s.destroy();
      srv.close();
    },
  };
}

async function closesFor(reason) {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`heartline_closes_total{reason="${reason}"}`));
  return line ? Number(line.split(' ').pop()) : 0;
}

for (const transport of ['websocket', 'polling']) {
  test(`a client whose network goes dark on ${transport} is let go by the heartbeat, its partner told, and it comes back with the network`, async () => {
    const user = `dora-${transport}`;
    const partner = `pat-${transport}`;
    await server.conversation(`dark-${transport}`, [[user, 'customer'], [partner, 'agent']]);
    const r = await relay(server.url);
    try {
      const p = connect(partner, 'agent', { transports: ['websocket'] });
      await once(p, 'connection:success');
      const online = once(p, 'user:online');
      const d = io(`${r.url}/chat`, {
        auth: { token: token(user, 'customer') },
        transports: [transport],
        reconnectionDelay: 100,
        reconnectionDelayMax: 300,
        // A connect attempt into the dark gives up and goes again.
        timeout: 2000,
      });
      opened.push(d);
      await once(d, 'connection:success');
      assert.equal((await online).userId, user);
      const timedOut = await closesFor('ping_timeout');
      const gone = once(d, 'disconnect', 10_000);
      const offline = once(p, 'user:offline', 15_000);
      r.setDark(true);
      // The client finds out by its own heartbeat; nothing it says reaches the server,
      // which finds out by its own: the session ends for a ping timeout, and the partner
      // hears the user is offline once the grace has passed.
      const [reason] = [await gone].flat();
      assert.equal(reason, 'ping timeout');
      assert.equal((await offline).userId, user);
      assert.ok((await closesFor('ping_timeout')) > timedOut, 'closed for a ping timeout');
      const back = once(d, 'connection:success', 15_000);
      const onlineAgain = once(p, 'user:online', 15_000);
      r.setDark(false);
      await back;
      assert.equal((await onlineAgain).userId, user);
      d.close();
      p.close();
    } finally {
      r.close();
    }
  });
}

test('the client reconnects by itself after a crash and catches up with afterSeq', async () => {
  const a = connect('alice', 'customer', { transports: ['websocket'] });
  const b = connect('bob', 'agent', { transports: ['websocket'] });
  await Promise.all([once(a, 'connection:success'), once(b, 'connection:success')]);
  await b.timeout(5000).emitWithAck('conversation:join', { conversationId: 'c1' });
  const first = await a.timeout(5000).emitWithAck('message:send', { conversationId: 'c1', content: 'before' });
  const lastSeen = first.message.seq;
  const reasons = [];
  b.on('disconnect', (r) => reasons.push(r));
  await server.restart();
  // Alice comes back on her own and sends while Bob may still be away.
  if (!a.connected) await once(a, 'connect', 20_000);
  const during = await a.timeout(5000).emitWithAck('message:send', { conversationId: 'c1', content: 'while bob was away' });
  assert.equal(during.ok, true);
  if (!b.connected) await once(b, 'connect', 10_000);
  assert.ok(reasons.includes('transport close') || reasons.includes('transport error'), `reasons: ${reasons}`);
  const rejoin = await b.timeout(5000).emitWithAck('conversation:join', { conversationId: 'c1', afterSeq: lastSeen });
  assert.equal(rejoin.ok, true);
  assert.deepEqual(rejoin.missed.map((m) => m.content), ['while bob was away']);
  assert.equal(rejoin.lastSeq, during.message.seq);
  a.close();
  b.close();
});

test('an unknown binary event does not break the connection', async () => {
  // The gateway has no binary events; a binary packet on an unknown event must not hurt the connection.
  const a = connect('dave', 'customer', { transports: ['websocket'] });
  await once(a, 'connection:success');
  a.emit('unknown:binary', Buffer.from([1, 2, 3, 4]));
  const pong = once(a, 'pong');
  a.emit('ping', {});
  assert.ok((await pong).timestamp > 0);
  assert.equal(a.connected, true);
  a.close();
});

test('an upgrade that never completes is dropped after upgrade_timeout_ms; polling goes on', async () => {
  const base = `${server.url}/socket.io/?EIO=4&transport=polling`;
  const open = await (await fetch(base)).text();
  const sid = JSON.parse(open.slice(1)).sid;
  // Before the socket opens: the upgrade's time counts from then, never earlier.
  const t0 = Date.now();
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/socket.io/?EIO=4&transport=websocket&sid=${sid}`);
  await new Promise((r, j) => { ws.once('open', r); ws.once('error', j); });
  const got = new Promise((r) => ws.once('message', (m) => r(m.toString())));
  ws.send('2probe');
  assert.equal(await got, '3probe');
  const closed = new Promise((r) => ws.once('close', r));
  await closed;
  const waited = Date.now() - t0;
  assert.ok(waited >= 500, `probe closed after ${waited} ms`);
  const post = await fetch(`${base}&sid=${sid}`, { method: 'POST', body: '3' });
  assert.equal(post.status, 200, 'the polling session survived');
});

test('connect_rate_per_ip counts clients, not their HTTP requests: polling clients get in and stay', async () => {
  // Default transports: each client makes a handshake GET, a POST, a held GET and an
  // upgrade, over several TCP connections. The limit is on new clients, not on those.
  const limited = new Server('', 'connect_rate_per_ip = 3');
  await limited.start();
  // The readiness probes were new connections too: let the tokens refill.
  await sleep(1100);
  const sockets = [];
  try {
    const n = 20;
    for (let i = 0; i < n; i++) {
      sockets.push(
        io(`${limited.url}/chat`, {
          auth: { token: token(`rate${i}`, 'customer') },
          reconnection: false,
        }),
      );
    }
    const outcome = (s) =>
      new Promise((r) => {
        s.once('connection:success', () => r('ok'));
        s.once('connect_error', () => r('refused'));
        setTimeout(() => r('timeout'), 5000);
      });
    const results = await Promise.all(sockets.map(outcome));
    const ok = results.filter((r) => r === 'ok').length;
    // Three tokens at once, then one every third of a second: all twenty only if their
    // handshakes, sent together, were spread over more than 5.6 s.
    assert.ok(ok >= 3 && ok < n, `admitted ${ok}: ${results}`);
    assert.equal(results.filter((r) => r === 'refused').length, n - ok, `${results}`);
    // The admitted clients upgrade and keep working, more than a second later.
    await sleep(1500);
    for (const [i, s] of sockets.entries()) {
      if (results[i] !== 'ok') continue;
      assert.ok(s.connected, `client ${i} still connected`);
      assert.equal(s.io.engine.transport.name, 'websocket');
      const pong = once(s, 'pong');
      s.emit('ping', {});
      assert.ok((await pong).timestamp > 0);
    }
  } finally {
    for (const s of sockets) s.close();
    await limited.kill('SIGTERM');
  }
});

test('a numeric tempId is echoed as sent; its retry into a full window is a duplicate', async () => {
  const limited = new Server('[rate_limit]\nmessages = 1\nwindow_ms = 60000');
  await limited.start();
  await limited.conversation('n1', [['numeric', 'customer']]);
  const s = io(`${limited.url}/chat`, {
    auth: { token: token('numeric', 'customer') },
    transports: ['websocket'],
    reconnection: false,
  });
  try {
    await once(s, 'connection:success');
    const tempId = Date.now();
    const sent = once(s, 'message:sent');
    const first = await s.timeout(5000).emitWithAck('message:send', { conversationId: 'n1', content: 'hi', tempId });
    assert.equal(first.ok, true, JSON.stringify(first));
    assert.equal(first.duplicate, false);
    assert.equal((await sent).tempId, tempId, 'matched by the number the client sent');
    // The window (one send) is full: a retry is still answered with the stored message.
    const again = await s.timeout(5000).emitWithAck('message:send', { conversationId: 'n1', content: 'hi', tempId });
    assert.equal(again.duplicate, true, JSON.stringify(again));
    assert.equal(again.message.seq, first.message.seq);
    const other = await s
      .timeout(5000)
      .emitWithAck('message:send', { conversationId: 'n1', content: 'hi', tempId: tempId + 1 });
    assert.equal(other.code, 'rate_limited', JSON.stringify(other));
  } finally {
    s.close();
    await limited.kill('SIGTERM');
  }
});

test('a burst of joins over the event budget is slowed with rate_limited, not cut off', async () => {
  // A front end rejoining many conversations at once after a reconnect.
  await server.conversation('many', [['gina', 'customer']]);
  const s = connect('gina', 'customer', { transports: ['websocket'] });
  await once(s, 'connection:success');
  let disconnected = null;
  s.on('disconnect', (reason) => (disconnected = reason));
  const replies = await Promise.all(Array.from({ length: 200 }, () =>
    s.timeout(5000).emitWithAck('conversation:join', { conversationId: 'many' })));
  const served = replies.filter((r) => r.ok);
  const slowed = replies.filter((r) => !r.ok);
  // 60 at once and 20 a second: all 200 only if they took the server over 7 s.
  assert.ok(served.length >= 60 && served.length < 200, `served ${served.length}`);
  for (const r of slowed) {
    assert.equal(r.code, 'rate_limited', JSON.stringify(r));
    assert.ok(Number.isInteger(r.retryAfterMs) && r.retryAfterMs > 0, JSON.stringify(r));
  }
  // Told when to come back, it comes back and is served.
  await sleep(Math.max(...slowed.map((r) => r.retryAfterMs)));
  const again = await s.timeout(5000).emitWithAck('conversation:join', { conversationId: 'many' });
  assert.equal(again.ok, true, JSON.stringify(again));
  assert.equal(disconnected, null);
  assert.ok(s.connected);
  s.close();
});

test('SIGTERM: not ready, closes spread over drain_ms as transport closes, and every client comes back by itself', async () => {
  const drainMs = 2000;
  const draining = new Server('', '', { drainMs });
  await draining.start();
  // Each transport socket.io-client can end up on: WebSocket at once, polling upgraded to
  // WebSocket, and polling throughout.
  const kinds = [
    ...Array(6).fill({ transports: ['websocket'] }),
    ...Array(6).fill({}),
    ...Array(4).fill({ transports: ['polling'] }),
  ];
  const clients = kinds.map((opts, i) => {
    const s = io(`${draining.url}/chat`, {
      auth: { token: token(`drain${i}`, 'customer') },
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
      ...opts,
    });
    return { s, gone: null, back: 0 };
  });
  try {
    await Promise.all(clients.map(({ s }) => once(s, 'connection:success')));
    // The upgrades settle before the signal, so each client has one transport to lose.
    for (let i = 0; i < 100 && !clients.slice(6, 12).every(({ s }) => s.io.engine.transport.name === 'websocket'); i++) {
      await sleep(50);
    }
    for (const c of clients) {
      c.s.once('disconnect', (reason) => (c.gone = { reason, at: Date.now() }));
      c.s.on('connection:success', () => (c.back += 1));
    }
    draining.proc.kill('SIGTERM');
    // Not ready and refusing new clients at once, while the clients it has are let go.
    let ready = 200;
    for (let i = 0; i < 40 && ready !== 503; i++) {
      ready = (await fetch(`${draining.url}/readyz`)).status;
      if (ready !== 503) await sleep(25);
    }
    assert.equal(ready, 503, 'readyz while draining');
    const fresh = await fetch(`${draining.url}/socket.io/?EIO=4&transport=polling`);
    assert.equal(fresh.status, 503, 'a new client while draining');
    assert.equal((await fresh.json()).code, 4);
    const { code, signal } = await draining.exited;
    assert.equal(code, 0, `exit ${code} ${signal}:\n${draining.log}`);
    for (const [i, c] of clients.entries()) {
      assert.ok(c.gone, `client ${i} was told nothing`);
      // Not `io server disconnect`, which would keep socket.io-client away for good.
      assert.ok(['transport close', 'transport error'].includes(c.gone.reason), `client ${i}: ${c.gone.reason}`);
    }
    // Paced: 16 closes spread evenly over the drain's 20 batches, not all at one instant
    // nor one a batch at its start. (A lower bound only: a slow machine spreads them
    // further, never closer.)
    const times = clients.map((c) => c.gone.at);
    const spread = Math.max(...times) - Math.min(...times);
    assert.ok(spread >= drainMs / 2, `closes spread over ${spread} ms`);
    // Back on the same port and store: each client reconnects on its own, once.
    await draining.start();
    for (let i = 0; i < 200 && !clients.every((c) => c.back >= 1); i++) await sleep(50);
    assert.deepEqual(clients.map((c) => c.back), clients.map(() => 1));
    for (const { s } of clients) assert.ok(s.connected);
  } finally {
    for (const { s } of clients) s.close();
    await draining.kill('SIGTERM');
  }
});
