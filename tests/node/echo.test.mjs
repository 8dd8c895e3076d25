// Binary attachments through heartline-echo (the engine and runtime without the chat
// gateway) with the unmodified socket.io-client, on both transport paths.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { EchoServer } from './server.mjs';

const server = new EchoServer();
const opened = [];

before(async () => {
  await server.start();
});

after(async () => {
  for (const s of opened) s.close();
  await server.kill();
});

function once(socket, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    socket.once(event, (...args) => {
      clearTimeout(t);
      resolve(args);
    });
  });
}

/** Connects to `/` and waits for the `auth` event the echo server emits on connect. */
async function connect(opts) {
  const s = io(server.url, { reconnection: false, auth: { token: 't' }, ...opts });
  opened.push(s);
  const [auth] = await once(s, 'auth');
  assert.deepEqual(auth, { token: 't' });
  return s;
}

// Every byte value, an empty buffer, and one large enough to matter.
const big = Buffer.alloc(64 * 1024, 0);
for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff;
const buffers = () => [
  Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
  Buffer.alloc(0),
  big,
];

function assertSameBytes(actual, expected, what) {
  assert.ok(Buffer.isBuffer(actual) || actual instanceof ArrayBuffer, `${what} is binary`);
  assert.ok(Buffer.from(actual).equals(expected), `${what} has identical bytes`);
}

async function roundTrips(s) {
  const [b0, b1, b2] = buffers();

  // message -> message-back: same arguments, attachments at any depth.
  const back = once(s, 'message-back');
  s.emit('message', b0, 'text', { nested: { bin: b1, list: [1, b2] } });
  const [r0, text, obj] = await back;
  assertSameBytes(r0, b0, 'top-level buffer');
  assert.equal(text, 'text');
  assertSameBytes(obj.nested.bin, b1, 'nested empty buffer');
  assert.equal(obj.nested.list[0], 1);
  assertSameBytes(obj.nested.list[1], b2, '64 KiB buffer in an array');

  // message-with-ack: the ack carries the same arguments (a BINARY_ACK).
  const acked = await s.emitWithAck('message-with-ack', { a: b2, b: [b0] });
  assertSameBytes(acked.a, b2, 'acked buffer');
  assertSameBytes(acked.b[0], b0, 'acked buffer in an array');
  const many = await new Promise((resolve) =>
    s.emit('message-with-ack', b0, b2, 'x', (...args) => resolve(args)),
  );
  assert.equal(many.length, 3);
  assertSameBytes(many[0], b0, 'ack argument 0');
  assertSameBytes(many[1], b2, 'ack argument 1');
  assert.equal(many[2], 'x');
}

test('binary attachments round-trip over websocket-only', async () => {
  const s = await connect({ transports: ['websocket'] });
  assert.equal(s.io.engine.transport.name, 'websocket');
  await roundTrips(s);
  s.close();
});

test('binary attachments round-trip over polling only (base64 in the payload)', async () => {
  const s = await connect({ transports: ['polling'] });
  assert.equal(s.io.engine.transport.name, 'polling');
  await roundTrips(s);
  s.close();
});

test('binary attachments round-trip with the default polling then upgrade', async () => {
  const s = io(server.url, { reconnection: false, autoConnect: false });
  opened.push(s);
  const upgraded = new Promise((r) =>
    s.io.once('open', () => s.io.engine.once('upgrade', (t) => r(t.name))),
  );
  const auth = once(s, 'auth');
  s.connect();
  assert.deepEqual((await auth)[0], {}, 'no auth option: {}');
  // One round trip while the upgrade may still be under way, one after it.
  await roundTrips(s);
  assert.equal(await upgraded, 'websocket');
  assert.equal(s.io.engine.transport.name, 'websocket');
  await roundTrips(s);
  s.close();
});
