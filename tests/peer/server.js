// Heartline comparison peer: a chat gateway written the way Node teams typically write it
// with socket.io 4.8 and better-sqlite3, speaking the same external contract as Heartline.
//
// Configuration: environment variables, overridden by CLI flags (see README.md).

import http from 'node:http';
import crypto from 'node:crypto';
import { parseArgs } from 'node:util';
import { Server } from 'socket.io';
import Database from 'better-sqlite3';
import jwt from 'jsonwebtoken';

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

const { values: flags } = parseArgs({
  options: {
    listen: { type: 'string' },
    port: { type: 'string' },
    host: { type: 'string' },
    'jwt-secret': { type: 'string' },
    'api-key': { type: 'string' },
    db: { type: 'string' },
    namespace: { type: 'string' },
    'ping-interval': { type: 'string' },
    'ping-timeout': { type: 'string' },
    'heartbeat-interval': { type: 'string' },
    'rate-limit-messages': { type: 'string' },
    'rate-limit-window': { type: 'string' },
    'presence-grace': { type: 'string' },
    'auth-grace': { type: 'string' },
    'max-payload': { type: 'string' },
    'sqlite-synchronous': { type: 'string' },
  },
  strict: true,
});

const env = process.env;

function intSetting(name, flag, envNames, def) {
  let raw = flags[flag];
  for (const e of envNames) {
    if (raw === undefined && env[e] !== undefined && env[e] !== '') raw = env[e];
  }
  if (raw === undefined) return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) {
    console.error(`invalid value for ${name}: ${raw}`);
    process.exit(2);
  }
  return n;
}

function strSetting(flag, envNames, def) {
  if (flags[flag] !== undefined) return flags[flag];
  for (const e of envNames) {
    if (env[e] !== undefined) return env[e];
  }
  return def;
}

let host = strSetting('host', ['HOST'], '127.0.0.1');
let port = intSetting('port', 'port', ['PORT'], 3002);
if (flags.listen) {
  const i = flags.listen.lastIndexOf(':');
  host = flags.listen.slice(0, i);
  port = Number(flags.listen.slice(i + 1));
}
if (!/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)) {
  console.error(`refusing to bind ${host}: the peer binds loopback (127.0.0.0/8) only`);
  process.exit(2);
}

const config = {
  host,
  port,
  namespace: strSetting('namespace', ['NAMESPACE'], '/chat'),
  jwtSecret: strSetting('jwt-secret', ['JWT_SECRET', 'HEARTLINE_JWT_SECRET'], ''),
  apiKey: strSetting('api-key', ['API_KEY', 'HEARTLINE_API_KEY'], ''),
  dbPath: strSetting('db', ['DB_PATH'], 'peer.db'),
  pingInterval: intSetting('ping interval', 'ping-interval', ['PING_INTERVAL_MS'], 25000),
  pingTimeout: intSetting('ping timeout', 'ping-timeout', ['PING_TIMEOUT_MS'], 60000),
  heartbeatInterval: intSetting('heartbeat interval', 'heartbeat-interval', ['HEARTBEAT_INTERVAL_MS'], 30000),
  rateLimitMessages: intSetting('rate limit messages', 'rate-limit-messages', ['RATE_LIMIT_MESSAGES'], 10),
  rateLimitWindow: intSetting('rate limit window', 'rate-limit-window', ['RATE_LIMIT_WINDOW_MS'], 10000),
  presenceGrace: intSetting('presence grace', 'presence-grace', ['PRESENCE_OFFLINE_GRACE_MS'], 3000),
  authGrace: intSetting('auth grace', 'auth-grace', ['AUTH_GRACE_MS'], 30000),
  maxPayload: intSetting('max payload', 'max-payload', ['MAX_PAYLOAD_BYTES'], 1000000),
  sqliteSynchronous: strSetting('sqlite-synchronous', ['SQLITE_SYNCHRONOUS'], 'FULL'),
  maxContentChars: 10000,
  maxTempIdBytes: 128,
  historyDefault: 50,
  historyMax: 100,
  missedMax: 1000,
};

if (!config.jwtSecret) {
  config.jwtSecret = crypto.randomBytes(32).toString('hex');
  const devToken = jwt.sign({ sub: 'dev', userType: 'customer' }, config.jwtSecret, {
    algorithm: 'HS256',
    expiresIn: '24h',
  });
  console.log(`no JWT secret configured; generated one for this run. dev token: ${devToken}`);
}
if (!['OFF', 'NORMAL', 'FULL', 'EXTRA'].includes(config.sqliteSynchronous.toUpperCase())) {
  console.error(`invalid SQLITE_SYNCHRONOUS: ${config.sqliteSynchronous}`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------
// Database
// ---------------------------------------------------------------------------------------

const db = new Database(config.dbPath);
db.pragma('journal_mode = WAL');
db.pragma(`synchronous = ${config.sqliteSynchronous.toUpperCase()}`);
db.pragma('busy_timeout = 5000');

db.exec(`
  CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
  );
  CREATE TABLE IF NOT EXISTS conversation_members (
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    user_id TEXT NOT NULL,
    user_type TEXT NOT NULL,
    PRIMARY KEY (conversation_id, user_id, user_type)
  );
  CREATE INDEX IF NOT EXISTS idx_members_user ON conversation_members (user_id, user_type);
  CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    seq INTEGER NOT NULL,
    sender_id TEXT NOT NULL,
    sender_type TEXT NOT NULL,
    content TEXT NOT NULL,
    temp_id TEXT,
    created_at INTEGER NOT NULL
  );
  CREATE UNIQUE INDEX IF NOT EXISTS idx_messages_seq ON messages (conversation_id, seq);
  CREATE UNIQUE INDEX IF NOT EXISTS idx_messages_temp_id
    ON messages (sender_id, sender_type, temp_id) WHERE temp_id IS NOT NULL;
`);

const stmt = {
  getConversation: db.prepare('SELECT id, last_seq FROM conversations WHERE id = ?'),
  upsertConversation: db.prepare(
    'INSERT INTO conversations (id, last_seq, created_at) VALUES (?, 0, ?) ON CONFLICT(id) DO NOTHING',
  ),
  deleteMembers: db.prepare('DELETE FROM conversation_members WHERE conversation_id = ?'),
  insertMember: db.prepare(
    'INSERT OR IGNORE INTO conversation_members (conversation_id, user_id, user_type) VALUES (?, ?, ?)',
  ),
  getMembers: db.prepare(
    'SELECT user_id, user_type FROM conversation_members WHERE conversation_id = ?',
  ),
  isMember: db.prepare(
    'SELECT 1 FROM conversation_members WHERE conversation_id = ? AND user_id = ? AND user_type = ?',
  ),
  coMembers: db.prepare(`
    SELECT DISTINCT m2.user_id, m2.user_type
    FROM conversation_members m1
    JOIN conversation_members m2 ON m2.conversation_id = m1.conversation_id
    WHERE m1.user_id = ? AND m1.user_type = ?
      AND NOT (m2.user_id = m1.user_id AND m2.user_type = m1.user_type)
  `),
  bumpSeq: db.prepare('UPDATE conversations SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq'),
  insertMessage: db.prepare(`
    INSERT INTO messages (id, conversation_id, seq, sender_id, sender_type, content, temp_id, created_at)
    VALUES (@id, @conversationId, @seq, @senderId, @senderType, @content, @tempId, @createdAt)
  `),
  findByTempId: db.prepare(
    'SELECT * FROM messages WHERE sender_id = ? AND sender_type = ? AND temp_id = ?',
  ),
  messagesAfter: db.prepare(
    'SELECT * FROM messages WHERE conversation_id = ? AND seq > ? ORDER BY seq ASC LIMIT ?',
  ),
  messagesBefore: db.prepare(
    'SELECT * FROM messages WHERE conversation_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?',
  ),
  messagesBetween: db.prepare(
    'SELECT * FROM messages WHERE conversation_id = ? AND seq > ? AND seq < ? ORDER BY seq ASC LIMIT ?',
  ),
  latestMessages: db.prepare(
    'SELECT * FROM messages WHERE conversation_id = ? ORDER BY seq DESC LIMIT ?',
  ),
};

const putConversation = db.transaction((id, members) => {
  stmt.upsertConversation.run(id, Date.now());
  stmt.deleteMembers.run(id);
  for (const m of members) stmt.insertMember.run(id, m.userId, m.userType);
  return stmt.getConversation.get(id);
});

const saveMessage = db.transaction((msg) => {
  const row = stmt.bumpSeq.get(msg.conversationId);
  msg.seq = row.last_seq;
  stmt.insertMessage.run(msg);
  return msg;
});

function toMessage(row) {
  return {
    id: row.id,
    conversationId: row.conversation_id,
    seq: row.seq,
    senderId: row.sender_id,
    senderType: row.sender_type,
    content: row.content,
    tempId: row.temp_id,
    createdAt: row.created_at,
  };
}

// ---------------------------------------------------------------------------------------
// In-memory state
// ---------------------------------------------------------------------------------------

const startedAt = Date.now();
const userSockets = new Map(); // userKey -> socket (one live connection per user)
const onlineUsers = new Set(); // userKeys considered online (presence)
const offlineTimers = new Map(); // userKey -> pending user:offline timer
const heartbeats = new Map(); // socket.id -> last heartbeat:response time
const rateLimits = new Map(); // userKey -> { count, windowStart }
const counters = {
  connects: 0,
  connectsRefused: 0,
  replacements: 0,
  accepted: 0,
  duplicates: 0,
  refused: {},
  deliveries: 0,
};
let draining = false;

const userKeyOf = (u) => `${u.userId}:${u.userType}`;
const roomOf = (conversationId) => `conversation:${conversationId}`;

// Fixed-window rate limiter: the counter resets when the window that started with the
// first send of a burst has elapsed.
function checkRateLimit(userKey) {
  const now = Date.now();
  let entry = rateLimits.get(userKey);
  if (!entry || now - entry.windowStart >= config.rateLimitWindow) {
    entry = { count: 0, windowStart: now };
    rateLimits.set(userKey, entry);
  }
  if (entry.count >= config.rateLimitMessages) {
    return { allowed: false, retryAfterMs: entry.windowStart + config.rateLimitWindow - now };
  }
  entry.count += 1;
  return { allowed: true };
}

setInterval(() => {
  const now = Date.now();
  for (const [key, entry] of rateLimits) {
    if (now - entry.windowStart >= config.rateLimitWindow) rateLimits.delete(key);
  }
}, Math.max(config.rateLimitWindow, 1000)).unref();

// ---------------------------------------------------------------------------------------
// HTTP API
// ---------------------------------------------------------------------------------------

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) });
  res.end(data);
}

function sendText(res, status, text, type = 'text/plain') {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function bearer(header) {
  if (typeof header !== 'string') return null;
  const m = /^Bearer\s+(.+)$/i.exec(header.trim());
  return m ? m[1] : null;
}

function apiAuthorized(req) {
  const key = bearer(req.headers.authorization);
  if (!key) return false;
  const a = Buffer.from(key);
  const b = Buffer.from(config.apiKey);
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

function readBody(req, limit = 1024 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

const validId = (id) => typeof id === 'string' && id.length > 0 && id.length <= 128;

function metricsText() {
  const lines = [
    '# TYPE heartline_connections gauge',
    `heartline_connections ${chat ? chat.sockets.size : 0}`,
    '# TYPE heartline_users_connected gauge',
    `heartline_users_connected ${userSockets.size}`,
    '# TYPE heartline_users_online gauge',
    `heartline_users_online ${onlineUsers.size}`,
    '# TYPE heartline_rate_limit_entries gauge',
    `heartline_rate_limit_entries ${rateLimits.size}`,
    '# TYPE heartline_connects_total counter',
    `heartline_connects_total ${counters.connects}`,
    '# TYPE heartline_connects_refused_total counter',
    `heartline_connects_refused_total ${counters.connectsRefused}`,
    '# TYPE heartline_replacements_total counter',
    `heartline_replacements_total ${counters.replacements}`,
    '# TYPE heartline_messages_accepted_total counter',
    `heartline_messages_accepted_total ${counters.accepted}`,
    '# TYPE heartline_messages_duplicate_total counter',
    `heartline_messages_duplicate_total ${counters.duplicates}`,
    '# TYPE heartline_messages_refused_total counter',
    ...Object.entries(counters.refused).map(
      ([code, n]) => `heartline_messages_refused_total{code="${code}"} ${n}`,
    ),
    '# TYPE heartline_deliveries_total counter',
    `heartline_deliveries_total ${counters.deliveries}`,
    '# TYPE heartline_draining gauge',
    `heartline_draining ${draining ? 1 : 0}`,
  ];
  return lines.join('\n') + '\n';
}

async function handleHttp(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const path = url.pathname;
  try {
    if (req.method === 'GET' && path === '/healthz') return sendText(res, 200, 'ok');
    if (req.method === 'GET' && path === '/readyz') {
      return draining ? sendText(res, 503, 'draining') : sendText(res, 200, 'ready');
    }
    if (req.method === 'GET' && path === '/metrics') {
      return sendText(res, 200, metricsText(), 'text/plain; version=0.0.4');
    }

    const conv = /^\/api\/conversations\/([^/]+)$/.exec(path);
    const msgs = /^\/api\/conversations\/([^/]+)\/messages$/.exec(path);
    if (conv || msgs) {
      if (!config.apiKey) return sendJson(res, 404, { error: 'Not found' });
      if (!apiAuthorized(req)) return sendJson(res, 401, { error: 'Unauthorized' });
      let id;
      try {
        id = decodeURIComponent((conv || msgs)[1]);
      } catch {
        return sendJson(res, 400, { error: 'Invalid conversation id' });
      }
      if (!validId(id)) return sendJson(res, 400, { error: 'Invalid conversation id' });

      if (conv && req.method === 'PUT') {
        let body;
        try {
          body = JSON.parse(await readBody(req));
        } catch {
          return sendJson(res, 400, { error: 'Malformed body' });
        }
        const members = body && body.members;
        if (
          !Array.isArray(members) ||
          !members.every((m) => m && validId(m.userId) && validId(m.userType))
        ) {
          return sendJson(res, 400, { error: 'Malformed body' });
        }
        const row = putConversation(id, members);
        const stored = stmt.getMembers.all(id).map((m) => ({ userId: m.user_id, userType: m.user_type }));
        return sendJson(res, 200, { id, members: stored, lastSeq: row.last_seq });
      }

      if (msgs && req.method === 'GET') {
        if (!stmt.getConversation.get(id)) return sendJson(res, 404, { error: 'Conversation not found' });
        const afterSeq = Number(url.searchParams.get('afterSeq') ?? 0);
        let limit = Number(url.searchParams.get('limit') ?? 100);
        if (!Number.isInteger(afterSeq) || afterSeq < 0 || !Number.isInteger(limit) || limit < 1) {
          return sendJson(res, 400, { error: 'Invalid query' });
        }
        limit = Math.min(limit, 1000);
        const messages = stmt.messagesAfter.all(id, afterSeq, limit).map(toMessage);
        return sendJson(res, 200, { conversationId: id, messages });
      }
      return sendJson(res, 405, { error: 'Method not allowed' });
    }
    return sendJson(res, 404, { error: 'Not found' });
  } catch (err) {
    console.error('http error', err);
    if (!res.headersSent) sendJson(res, 500, { error: 'Internal error' });
  }
}

// ---------------------------------------------------------------------------------------
// Socket.IO
// ---------------------------------------------------------------------------------------

const httpServer = http.createServer((req, res) => {
  handleHttp(req, res);
});

const io = new Server(httpServer, {
  path: '/socket.io/',
  pingInterval: config.pingInterval,
  pingTimeout: config.pingTimeout,
  maxHttpBufferSize: config.maxPayload,
  connectTimeout: 10000,
  cors: { origin: '*' },
});

// The application lives on one namespace; the main namespace is refused.
io.of('/').use((_socket, next) => next(new Error('Invalid namespace')));

const chat = io.of(config.namespace);

function verifyToken(token) {
  const claims = jwt.verify(token, config.jwtSecret, { algorithms: ['HS256'] });
  if (typeof claims.sub !== 'string' || !claims.sub) throw new Error('missing sub');
  if (typeof claims.userType !== 'string' || !claims.userType) throw new Error('missing userType');
  if (typeof claims.exp !== 'number') throw new Error('missing exp');
  return claims;
}

// Auth middleware
chat.use((socket, next) => {
  if (draining) return next(new Error('Server is shutting down'));
  const token =
    (socket.handshake.auth && socket.handshake.auth.token) ||
    bearer(socket.handshake.headers.authorization);
  if (!token) {
    counters.connectsRefused += 1;
    return next(new Error('Authentication required'));
  }
  try {
    const claims = verifyToken(String(token));
    socket.data.user = {
      userId: claims.sub,
      userType: claims.userType,
      role: claims.role,
      exp: claims.exp,
    };
    next();
  } catch {
    counters.connectsRefused += 1;
    next(new Error('Invalid authentication token'));
  }
});

function notifyCoMembers(user, event) {
  const others = stmt.coMembers.all(user.userId, user.userType);
  for (const m of others) {
    const s = userSockets.get(`${m.user_id}:${m.user_type}`);
    if (s) s.emit(event, { userId: user.userId, userType: user.userType });
  }
}

const MAX_TIMEOUT = 2 ** 31 - 1;

function scheduleExpiry(socket) {
  clearTimeout(socket.data.expiryTimer);
  clearTimeout(socket.data.graceTimer);
  const delay = socket.data.user.exp * 1000 - Date.now();
  if (delay > MAX_TIMEOUT) {
    socket.data.expiryTimer = setTimeout(() => scheduleExpiry(socket), MAX_TIMEOUT);
    return;
  }
  socket.data.expiryTimer = setTimeout(() => {
    socket.emit('auth:expired', {});
    socket.data.graceTimer = setTimeout(() => socket.disconnect(true), config.authGrace);
  }, Math.max(delay, 0));
}

function refuse(socket, ack, code, error, tempId, retryAfterMs) {
  counters.refused[code] = (counters.refused[code] || 0) + 1;
  const reply = { ok: false, error, code };
  if (retryAfterMs !== undefined) reply.retryAfterMs = retryAfterMs;
  if (typeof ack === 'function') ack(reply);
  const err = { error, code, tempId: tempId ?? null };
  if (retryAfterMs !== undefined) err.retryAfterMs = retryAfterMs;
  socket.emit('message:error', err);
}

function checkAccess(conversationId, user) {
  if (!stmt.getConversation.get(conversationId)) return { code: 'not_found', error: 'Conversation not found' };
  if (!stmt.isMember.get(conversationId, user.userId, user.userType)) {
    return { code: 'forbidden', error: 'Not a member of this conversation' };
  }
  return null;
}

chat.on('connection', (socket) => {
  const user = socket.data.user;
  const userKey = userKeyOf(user);
  counters.connects += 1;

  // One live connection per user: the newer one replaces the older.
  const previous = userSockets.get(userKey);
  userSockets.set(userKey, socket);
  if (previous && previous.id !== socket.id) {
    counters.replacements += 1;
    previous.emit('connection:replaced', { message: 'Connected from another location' });
    previous.disconnect(true);
  }

  // Presence: cancel a pending offline, otherwise announce online.
  const pendingOffline = offlineTimers.get(userKey);
  if (pendingOffline) {
    clearTimeout(pendingOffline);
    offlineTimers.delete(userKey);
  }
  if (!onlineUsers.has(userKey)) {
    onlineUsers.add(userKey);
    notifyCoMembers(user, 'user:online');
  }

  socket.emit('connection:success', {
    userId: user.userId,
    userType: user.userType,
    socketId: socket.id,
    serverTime: Date.now(),
  });

  // Application heartbeat
  heartbeats.set(socket.id, Date.now());
  socket.data.heartbeatTimer = setInterval(() => {
    socket.emit('heartbeat', { timestamp: Date.now() });
  }, config.heartbeatInterval);
  socket.on('heartbeat:response', () => {
    heartbeats.set(socket.id, Date.now());
  });

  socket.on('ping', () => {
    socket.emit('pong', { timestamp: Date.now() });
  });

  scheduleExpiry(socket);

  socket.on('auth:refresh', (payload, ack) => {
    const reply = typeof ack === 'function' ? ack : () => {};
    try {
      const claims = verifyToken(String(payload && payload.token));
      if (claims.sub !== user.userId || claims.userType !== user.userType) {
        return reply({ ok: false, error: 'Token is for another user' });
      }
      if (claims.exp <= user.exp) return reply({ ok: false, error: 'Token does not extend the session' });
      user.exp = claims.exp;
      user.role = claims.role;
      scheduleExpiry(socket);
      reply({ ok: true });
    } catch {
      reply({ ok: false, error: 'Invalid authentication token' });
    }
  });

  socket.on('conversation:join', (payload, ack) => {
    const reply = typeof ack === 'function' ? ack : () => {};
    try {
      const conversationId = payload && payload.conversationId;
      const afterSeq = payload ? payload.afterSeq : undefined;
      if (!validId(conversationId) || (afterSeq != null && !(Number.isInteger(afterSeq) && afterSeq >= 0))) {
        return reply({ ok: false, error: 'Invalid payload', code: 'invalid_payload' });
      }
      const denied = checkAccess(conversationId, user);
      if (denied) return reply({ ok: false, ...denied });
      socket.join(roomOf(conversationId));
      const conversation = stmt.getConversation.get(conversationId);
      const missed =
        afterSeq != null
          ? stmt.messagesAfter.all(conversationId, afterSeq, config.missedMax).map(toMessage)
          : [];
      reply({ ok: true, conversationId, lastSeq: conversation.last_seq, missed });
    } catch (err) {
      console.error('join failed', err);
      reply({ ok: false, error: 'Internal error', code: 'internal' });
    }
  });

  socket.on('conversation:leave', (payload, ack) => {
    const reply = typeof ack === 'function' ? ack : () => {};
    const conversationId = payload && payload.conversationId;
    if (!validId(conversationId)) return reply({ ok: false, error: 'Invalid payload', code: 'invalid_payload' });
    socket.leave(roomOf(conversationId));
    reply({ ok: true });
  });

  socket.on('message:send', (payload, ack) => {
    const tempId = payload && typeof payload.tempId === 'string' ? payload.tempId : undefined;
    try {
      const conversationId = payload && payload.conversationId;
      const content = payload && payload.content;
      if (!validId(conversationId) || typeof content !== 'string') {
        return refuse(socket, ack, 'invalid_payload', 'Invalid payload', tempId);
      }
      if (!content.trim()) return refuse(socket, ack, 'invalid_payload', 'Content is empty', tempId);
      if (content.length > config.maxContentChars) {
        return refuse(socket, ack, 'too_large', 'Message too large', tempId);
      }
      if (
        payload.tempId != null &&
        !(typeof payload.tempId === 'string' && payload.tempId && Buffer.byteLength(payload.tempId) <= config.maxTempIdBytes)
      ) {
        return refuse(socket, ack, 'invalid_payload', 'Invalid tempId', tempId);
      }
      const denied = checkAccess(conversationId, user);
      if (denied) return refuse(socket, ack, denied.code, denied.error, tempId);

      // Idempotent retry: the tempId was already used by this user.
      if (tempId) {
        const existing = stmt.findByTempId.get(user.userId, user.userType, tempId);
        if (existing) {
          const message = toMessage(existing);
          counters.accepted += 1;
          counters.duplicates += 1;
          if (typeof ack === 'function') ack({ ok: true, message, duplicate: true });
          socket.emit('message:sent', { tempId, message });
          return;
        }
      }

      const limit = checkRateLimit(userKey);
      if (!limit.allowed) {
        return refuse(socket, ack, 'rate_limited', 'Rate limit exceeded', tempId, limit.retryAfterMs);
      }

      let message;
      try {
        message = saveMessage({
          id: crypto.randomUUID(),
          conversationId,
          seq: 0,
          senderId: user.userId,
          senderType: user.userType,
          content,
          tempId: tempId ?? null,
          createdAt: Date.now(),
        });
      } catch (err) {
        if (err && err.code === 'SQLITE_CONSTRAINT_UNIQUE' && tempId) {
          const existing = stmt.findByTempId.get(user.userId, user.userType, tempId);
          if (existing) {
            const dup = toMessage(existing);
            if (typeof ack === 'function') ack({ ok: true, message: dup, duplicate: true });
            socket.emit('message:sent', { tempId, message: dup });
            return;
          }
        }
        throw err;
      }

      counters.accepted += 1;
      if (typeof ack === 'function') ack({ ok: true, message, duplicate: false });
      socket.emit('message:sent', { tempId: message.tempId, message });

      const room = roomOf(conversationId);
      chat.to(room).emit('message:new', message);
      const inRoom = chat.adapter.rooms.get(room);
      counters.deliveries += inRoom ? inRoom.size : 0;

      // Members who are connected but not looking at this conversation.
      for (const m of stmt.getMembers.all(conversationId)) {
        const s = userSockets.get(`${m.user_id}:${m.user_type}`);
        if (s && !s.rooms.has(room)) {
          s.emit('message:notification', { conversationId, message });
          counters.deliveries += 1;
        }
      }
    } catch (err) {
      console.error('send failed', err);
      refuse(socket, ack, 'internal', 'Internal error', tempId);
    }
  });

  socket.on('message:history', (payload, ack) => {
    const reply = typeof ack === 'function' ? ack : () => {};
    try {
      const conversationId = payload && payload.conversationId;
      const { beforeSeq, afterSeq } = payload || {};
      let limit = payload && payload.limit != null ? payload.limit : config.historyDefault;
      const okSeq = (v) => v == null || (Number.isInteger(v) && v >= 0);
      if (!validId(conversationId) || !okSeq(beforeSeq) || !okSeq(afterSeq) || !Number.isInteger(limit) || limit < 1) {
        return reply({ ok: false, error: 'Invalid payload', code: 'invalid_payload' });
      }
      limit = Math.min(limit, config.historyMax);
      const denied = checkAccess(conversationId, user);
      if (denied) return reply({ ok: false, ...denied });
      let rows;
      if (afterSeq != null && beforeSeq != null) {
        rows = stmt.messagesBetween.all(conversationId, afterSeq, beforeSeq, limit);
      } else if (afterSeq != null) {
        rows = stmt.messagesAfter.all(conversationId, afterSeq, limit);
      } else if (beforeSeq != null) {
        rows = stmt.messagesBefore.all(conversationId, beforeSeq, limit).reverse();
      } else {
        rows = stmt.latestMessages.all(conversationId, limit).reverse();
      }
      reply({ ok: true, messages: rows.map(toMessage) });
    } catch (err) {
      console.error('history failed', err);
      reply({ ok: false, error: 'Internal error', code: 'internal' });
    }
  });

  socket.on('metrics:request', () => {
    if (user.role !== 'admin') return;
    socket.emit('metrics:response', {
      connectedUsers: userSockets.size,
      heartbeats: heartbeats.size,
      rateLimitEntries: rateLimits.size,
      uptime: (Date.now() - startedAt) / 1000,
    });
  });

  socket.on('disconnect', () => {
    clearInterval(socket.data.heartbeatTimer);
    clearTimeout(socket.data.expiryTimer);
    clearTimeout(socket.data.graceTimer);
    heartbeats.delete(socket.id);
    if (userSockets.get(userKey) !== socket) return; // replaced by a newer connection
    userSockets.delete(userKey);
    if (draining) return;
    const timer = setTimeout(() => {
      offlineTimers.delete(userKey);
      if (userSockets.has(userKey)) return;
      onlineUsers.delete(userKey);
      notifyCoMembers(user, 'user:offline');
    }, config.presenceGrace);
    offlineTimers.set(userKey, timer);
  });
});

// ---------------------------------------------------------------------------------------
// Start and shutdown
// ---------------------------------------------------------------------------------------

httpServer.listen(config.port, config.host, () => {
  const addr = httpServer.address();
  console.log(`heartline-peer listening on http://${addr.address}:${addr.port} namespace ${config.namespace}`);
});

function shutdown(signal) {
  if (draining) {
    process.exit(1);
  }
  draining = true;
  console.log(`${signal} received, shutting down`);
  // io.close() ends every session without a Socket.IO DISCONNECT, so clients reconnect.
  io.close(() => {
    db.close();
    process.exit(0);
  });
  setTimeout(() => process.exit(0), 5000).unref();
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
