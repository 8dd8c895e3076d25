// Smoke test for the comparison peer: starts it on a free loopback port, drives it with
// socket.io-client through the contract's main paths, exits 0 on success and 1 on failure.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { io } from 'socket.io-client';
import jwt from 'jsonwebtoken';

const here = dirname(fileURLToPath(import.meta.url));
const SECRET = 'smoke-secret';
const API_KEY = 'smoke-api-key';
const dir = mkdtempSync(join(tmpdir(), 'heartline-peer-'));
const sockets = [];
let server;
let failures = 0;
let passes = 0;

function check(cond, what) {
  if (cond) {
    passes += 1;
    console.log(`ok   ${what}`);
  } else {
    failures += 1;
    console.log(`FAIL ${what}`);
  }
}

const token = (sub, userType, extra = {}) =>
  jwt.sign({ sub, userType, ...extra }, SECRET, { algorithm: 'HS256', expiresIn: '1h' });

function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

function once(emitter, event, ms = 3000) {
  return withTimeout(new Promise((resolve) => emitter.once(event, resolve)), ms, event);
}

function startServer() {
  return new Promise((resolve, reject) => {
    server = spawn(process.execPath, [join(here, 'server.js'), '--port', '0'], {
      env: {
        ...process.env,
        JWT_SECRET: SECRET,
        API_KEY,
        DB_PATH: join(dir, 'peer.db'),
        HEARTBEAT_INTERVAL_MS: '300',
        RATE_LIMIT_MESSAGES: '5',
        RATE_LIMIT_WINDOW_MS: '10000',
        PRESENCE_OFFLINE_GRACE_MS: '200',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    server.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(out);
      if (m) resolve(m[1]);
    });
    server.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
}

function connect(base, auth, nsp = '/chat') {
  const s = io(base + nsp, { auth, transports: ['websocket'], reconnection: false, forceNew: true });
  sockets.push(s);
  return s;
}

async function connected(base, tok) {
  const s = connect(base, { token: tok });
  const success = await once(s, 'connection:success');
  return { s, success };
}

const emitAck = (s, event, payload) => withTimeout(s.emitWithAck(event, payload), 3000, event);

async function main() {
  const base = await withTimeout(startServer(), 10000, 'server start');
  console.log(`peer at ${base}`);

  check((await fetch(`${base}/healthz`)).status === 200, 'GET /healthz 200');
  check((await fetch(`${base}/readyz`)).status === 200, 'GET /readyz 200');

  const body = JSON.stringify({
    members: [
      { userId: 'alice', userType: 'customer' },
      { userId: 'bob', userType: 'agent' },
      { userId: 'carol', userType: 'agent' },
    ],
  });
  const unauth = await fetch(`${base}/api/conversations/c1`, { method: 'PUT', body });
  check(unauth.status === 401, 'PUT /api/conversations without key is 401');
  const put = await fetch(`${base}/api/conversations/c1`, {
    method: 'PUT',
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
    body,
  });
  const conv = await put.json();
  check(put.status === 200 && conv.id === 'c1' && conv.members.length === 3 && conv.lastSeq === 0,
    'PUT /api/conversations/c1 creates it');

  // Refused connections
  const anon = connect(base, {});
  const e1 = await once(anon, 'connect_error');
  check(e1.message === 'Authentication required', 'no token: Authentication required');
  const forged = connect(base, { token: jwt.sign({ sub: 'x', userType: 'customer' }, 'wrong', { expiresIn: 60 }) });
  const e2 = await once(forged, 'connect_error');
  check(e2.message === 'Invalid authentication token', 'bad signature: Invalid authentication token');
  const noExp = connect(base, { token: jwt.sign({ sub: 'x', userType: 'customer' }, SECRET) });
  const e3 = await once(noExp, 'connect_error');
  check(e3.message === 'Invalid authentication token', 'token without exp refused');
  const root = connect(base, { token: token('x', 'customer') }, '/');
  const e4 = await once(root, 'connect_error');
  check(e4.message === 'Invalid namespace', 'namespace / refused: Invalid namespace');

  // Two users
  const { s: alice, success: aliceOk } = await connected(base, token('alice', 'customer'));
  check(aliceOk.userId === 'alice' && aliceOk.userType === 'customer' && aliceOk.socketId === alice.id &&
    typeof aliceOk.serverTime === 'number', 'connection:success payload');
  const bobOnline = once(alice, 'user:online');
  const { s: bob } = await connected(base, token('bob', 'agent'));
  const online = await bobOnline;
  check(online.userId === 'bob' && online.userType === 'agent', 'user:online to a co-member');
  const { s: carol } = await connected(base, token('carol', 'agent'));

  const hb = await once(alice, 'heartbeat', 2000);
  check(typeof hb.timestamp === 'number', 'heartbeat event');
  alice.emit('heartbeat:response', hb);
  alice.emit('ping');
  const pong = await once(alice, 'pong');
  check(typeof pong.timestamp === 'number', 'ping -> pong');

  const j1 = await emitAck(alice, 'conversation:join', { conversationId: 'c1' });
  const j2 = await emitAck(bob, 'conversation:join', { conversationId: 'c1' });
  check(j1.ok && j2.ok && j1.lastSeq === 0, 'both join c1');
  const j3 = await emitAck(bob, 'conversation:join', { conversationId: 'nope' });
  check(!j3.ok && j3.code === 'not_found', 'join unknown conversation: not_found');

  const bobNew = once(bob, 'message:new');
  const aliceNew = once(alice, 'message:new');
  const aliceSent = once(alice, 'message:sent');
  const carolNote = once(carol, 'message:notification');
  const ack = await emitAck(alice, 'message:send', { conversationId: 'c1', content: 'hello', tempId: 't1' });
  check(ack.ok === true && ack.duplicate === false && ack.message.seq === 1 && ack.message.content === 'hello' &&
    ack.message.senderId === 'alice' && ack.message.tempId === 't1', 'send acked with seq 1');
  const got = await bobNew;
  check(got.id === ack.message.id && got.seq === 1, 'message:new reaches the other member');
  check((await aliceNew).id === ack.message.id, 'message:new reaches the sender');
  check((await aliceSent).tempId === 't1', 'message:sent to the sender');
  const note = await carolNote;
  check(note.conversationId === 'c1' && note.message.id === ack.message.id, 'message:notification to a member not in the room');

  const dup = await emitAck(alice, 'message:send', { conversationId: 'c1', content: 'hello', tempId: 't1' });
  check(dup.ok && dup.duplicate === true && dup.message.id === ack.message.id, 'retry with same tempId is a duplicate');

  const bad = await emitAck(alice, 'message:send', { conversationId: 'c1', content: '' });
  check(!bad.ok && bad.code === 'invalid_payload', 'empty content: invalid_payload');

  // Replacement: a second connection of alice displaces the first.
  const replaced = once(alice, 'connection:replaced');
  const dropped = once(alice, 'disconnect');
  const { s: alice2 } = await connected(base, token('alice', 'customer'));
  check(typeof (await replaced).message === 'string', 'connection:replaced to the older connection');
  check((await dropped) === 'io server disconnect', 'older connection: io server disconnect');

  // Catch-up and rate limit (counted across the replacement).
  const rj = await emitAck(alice2, 'conversation:join', { conversationId: 'c1', afterSeq: 0 });
  check(rj.ok && rj.missed.length === 1 && rj.missed[0].seq === 1, 'join with afterSeq returns missed');
  const acks = [];
  for (let i = 2; i <= 6; i += 1) {
    acks.push(await emitAck(alice2, 'message:send', { conversationId: 'c1', content: `m${i}`, tempId: `t${i}` }));
  }
  check(acks.slice(0, 4).every((a, i) => a.ok && a.message.seq === i + 2), 'sends up to the limit accepted, seq has no gaps');
  check(!acks[4].ok && acks[4].code === 'rate_limited' && acks[4].retryAfterMs > 0, 'send over the limit: rate_limited with retryAfterMs');

  const hist = await emitAck(bob, 'message:history', { conversationId: 'c1', limit: 10 });
  check(hist.ok && hist.messages.map((m) => m.seq).join(',') === '1,2,3,4,5', 'message:history in seq order');

  const api = await fetch(`${base}/api/conversations/c1/messages?afterSeq=2&limit=10`, {
    headers: { Authorization: `Bearer ${API_KEY}` },
  });
  const apiBody = await api.json();
  check(api.status === 200 && apiBody.messages.map((m) => m.seq).join(',') === '3,4,5', 'GET messages API');

  // Presence offline after the grace.
  const offline = once(bob, 'user:offline', 2000);
  alice2.disconnect();
  const off = await offline;
  check(off.userId === 'alice', 'user:offline after the grace');

  // Shutdown closes the transport without a DISCONNECT, so clients come back by themselves.
  const closed = once(bob, 'disconnect', 7000);
  const exited = new Promise((r) => server.once('exit', r));
  server.kill('SIGTERM');
  check((await closed) === 'transport close', 'SIGTERM: clients see transport close');
  check((await withTimeout(exited, 7000, 'server exit')) === 0, 'SIGTERM: server exits 0');
}

let code = 0;
try {
  await withTimeout(main(), 30000, 'smoke test');
} catch (err) {
  failures += 1;
  console.log(`FAIL ${err.message}`);
}
for (const s of sockets) s.close();
if (server && server.exitCode === null) {
  server.removeAllListeners('exit');
  const exited = new Promise((r) => server.once('exit', r));
  server.kill('SIGTERM');
  await withTimeout(exited, 7000, 'server exit').catch(() => server.kill('SIGKILL'));
}
rmSync(dir, { recursive: true, force: true });
console.log(`${passes} passed, ${failures} failed`);
code = failures === 0 ? 0 : 1;
process.exit(code);
