// Starts and stops the real `heartline` and `heartline-echo` binaries for the Node tests.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.HEARTLINE_BIN ?? join(here, '..', '..', 'target', 'debug', 'heartline');
export const ECHO_BIN =
  process.env.HEARTLINE_ECHO_BIN ?? join(here, '..', '..', 'target', 'debug', 'heartline-echo');
export const SECRET = 'node-test-secret';
export const API_KEY = 'node-test-api-key';

export function token(sub, userType, { expInS = 3600, role, secret = SECRET, alg = 'HS256' } = {}) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const claims = { sub, userType, exp: Math.floor(Date.now() / 1000) + expInS };
  if (role) claims.role = role;
  const head = b64({ alg, typ: 'JWT' }) + '.' + b64(claims);
  const sig = createHmac('sha256', secret).update(head).digest('base64url');
  return head + '.' + sig;
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A running server. `restart()` keeps the port and the store file. */
/** A child process serving HTTP on `this.url`, ready once `/readyz` answers 200. */
class Served {
  async launch(bin, args, what) {
    this.proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.log = '';
    this.proc.stdout.on('data', (d) => (this.log += d));
    this.proc.stderr.on('data', (d) => (this.log += d));
    this.exited = new Promise((r) => this.proc.on('exit', (code, signal) => r({ code, signal })));
    for (let i = 0; i < 200; i++) {
      try {
        const res = await fetch(`${this.url}/readyz`);
        if (res.status === 200) return this;
      } catch {}
      await sleep(50);
    }
    throw new Error(`${what} did not become ready:\n${this.log}`);
  }

  async kill(signal = 'SIGTERM') {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill(signal);
    await this.exited;
  }
}

export class Server extends Served {
  /**
   * `extraToml` goes at the end of the file; `serverToml` inside its `[server]` table;
   * `drainMs` is `shutdown.drain_ms`.
   */
  constructor(extraToml = '', serverToml = '', { drainMs = 200 } = {}) {
    super();
    this.dir = mkdtempSync(join(tmpdir(), 'heartline-node-'));
    this.extraToml = extraToml;
    this.serverToml = serverToml;
    this.drainMs = drainMs;
  }

  async start() {
    this.port ??= await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    const config = `
[server]
listen = "127.0.0.1:${this.port}"
handshake_timeout_ms = 5000
${this.serverToml}
[engine]
ping_interval_ms = 1000
ping_timeout_ms = 1000
upgrade_timeout_ms = 1000
[auth]
jwt_secret = "${SECRET}"
[api]
key = "${API_KEY}"
[store]
path = "${join(this.dir, 'heartline.db')}"
[shutdown]
drain_ms = ${this.drainMs}
${this.extraToml}
`;
    const file = join(this.dir, 'heartline.toml');
    writeFileSync(file, config);
    return this.launch(BIN, ['--config', file], 'server');
  }

  async kill(signal = 'SIGKILL') {
    return super.kill(signal);
  }

  async restart() {
    await this.kill();
    return this.start();
  }

  async conversation(id, members) {
    const res = await fetch(`${this.url}/api/conversations/${encodeURIComponent(id)}`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ members: members.map(([userId, userType]) => ({ userId, userType })) }),
    });
    if (res.status !== 200) throw new Error(`PUT conversation: ${res.status} ${await res.text()}`);
    return res.json();
  }
}

/** A running `heartline-echo` (Socket.IO mode unless `engineIo`) on a free port. */
export class EchoServer extends Served {
  constructor({ engineIo = false } = {}) {
    super();
    this.engineIo = engineIo;
  }

  async start() {
    this.port ??= await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    const args = ['--listen', `127.0.0.1:${this.port}`];
    if (this.engineIo) args.push('--engine-io');
    return this.launch(ECHO_BIN, args, 'echo server');
  }
}
