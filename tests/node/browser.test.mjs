// The status page in headless Chromium: what a person sees when a connection drops and
// comes back, is replaced by another device, or gives up. Screenshots of each state are
// written to tests/node/artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { io } from 'socket.io-client';
import { Server, token, sleep } from './server.mjs';

const artifacts = join(dirname(fileURLToPath(import.meta.url)), 'artifacts');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

const server = new Server();
let browser;

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  await server.start();
  await server.conversation('room', [['alice', 'customer'], ['bob', 'agent']]);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await browser.close();
  await server.kill('SIGTERM');
});

function pageUrl(user, type, extra = '') {
  return `${server.url}/?token=${token(user, type)}&conversation=room&autoconnect` +
    `&initialDelayMs=200&maxDelayMs=600${extra}`;
}

async function status(page, wanted, ms = 10_000) {
  await page.waitForSelector(`#status[data-status="${wanted}"]`, { timeout: ms });
  return page.textContent('#status-text');
}

test('connected, then reconnecting with attempts, then back with queued messages shown once', async () => {
  const page = await browser.newPage();
  await page.goto(pageUrl('alice', 'customer', '&maxAttempts=30'));
  assert.equal(await status(page, 'connected'), 'Connected');
  await page.waitForFunction(() => document.querySelector('#notice').textContent.startsWith('Joined'));
  await page.fill('#text', 'before the crash');
  await page.click('#send');
  await page.waitForSelector('#messages li[data-seq="1"]');
  await page.screenshot({ path: join(artifacts, 'connected.png') });

  await server.kill('SIGKILL');
  const text = await status(page, 'reconnecting');
  assert.match(text, /^Reconnecting \(attempt \d+ of 30\)/);
  // Written while the server is away: kept in the outbox.
  await page.fill('#text', 'written while offline');
  await page.click('#send');
  await page.fill('#text', 'also offline');
  await page.click('#send');
  await page.waitForFunction(() => /attempt [2-9]/.test(document.querySelector('#status-text').textContent));
  await page.screenshot({ path: join(artifacts, 'reconnecting.png') });

  await server.start();
  assert.equal(await status(page, 'connected', 15_000), 'Connected');
  await page.waitForSelector('#messages li[data-seq="3"]', { timeout: 10_000 });
  await sleep(500);
  const items = await page.$$eval('#messages li', (lis) => lis.map((li) => li.dataset.seq));
  assert.deepEqual(items, ['1', '2', '3'], 'each message shown once, in order');
  await page.screenshot({ path: join(artifacts, 'back.png') });
  await page.close();
});

test('a second page of the same user replaces the first, which does not fight back', async () => {
  const first = await browser.newPage();
  await first.goto(pageUrl('bob', 'agent'));
  await status(first, 'connected');
  const second = await browser.newPage();
  await second.goto(pageUrl('bob', 'agent'));
  await status(second, 'connected');
  assert.equal(await status(first, 'replaced'), 'Replaced by another device');
  await sleep(1500);
  assert.equal(await first.getAttribute('#status', 'data-status'), 'replaced');
  assert.equal(await second.getAttribute('#status', 'data-status'), 'connected');
  await first.screenshot({ path: join(artifacts, 'replaced.png') });
  await first.close();
  await second.close();
});

test('after max attempts the page shows failed', async () => {
  const page = await browser.newPage();
  await page.goto(pageUrl('carol', 'customer', '&maxAttempts=2'));
  await status(page, 'connected');
  await server.kill('SIGKILL');
  assert.match(await status(page, 'failed', 15_000), /^Failed: reconnection attempts exhausted/);
  await page.screenshot({ path: join(artifacts, 'failed.png') });
  await page.close();
  await server.start();
});

test('back after a long absence, the page reads past one join reply and shows every message once, in order', async () => {
  // A join answers at most 1,000 missed messages; the page reads the rest through history.
  const busy = new Server('[rate_limit]\nmessages = 100000\nwindow_ms = 1000\n');
  await busy.start();
  await busy.conversation('busy', [['dana', 'customer'], ['erin', 'agent']]);
  const page = await browser.newPage();
  try {
    await page.goto(`${busy.url}/?token=${token('dana', 'customer')}&conversation=busy&autoconnect` +
      '&initialDelayMs=30000&randomization=0&maxAttempts=30');
    await status(page, 'connected');
    await page.waitForFunction(() => document.querySelector('#notice').textContent.startsWith('Joined'));
    // Away for one backoff (30 s, ample for a restart and 1,100 acknowledged sends even on
    // a slow machine running the debug build beside Chromium), in which 1,100 messages
    // are written.
    await busy.kill('SIGKILL');
    await status(page, 'reconnecting');
    await busy.start();
    const erin = io(`${busy.url}/chat`, {
      auth: { token: token('erin', 'agent') }, transports: ['websocket'], reconnection: false,
    });
    const send = (i) => erin.timeout(10_000).emitWithAck('message:send',
      { conversationId: 'busy', content: `m${i}`, tempId: `t${i}` });
    for (let i = 1; i <= 1100; i += 100) {
      const acks = await Promise.all(Array.from({ length: 100 }, (_, k) => send(i + k)));
      assert.ok(acks.every((a) => a.ok), JSON.stringify(acks.find((a) => !a.ok)));
    }
    assert.equal(await page.getAttribute('#status', 'data-status'), 'reconnecting', 'still away');
    assert.equal(await status(page, 'connected', 45_000), 'Connected');
    await page.waitForSelector('#messages li[data-seq="1100"]', { timeout: 15_000 });
    // And live again once caught up.
    assert.ok((await send(1101)).ok);
    await page.waitForSelector('#messages li[data-seq="1101"]', { timeout: 5_000 });
    const seqs = await page.$$eval('#messages li', (lis) => lis.map((li) => Number(li.dataset.seq)));
    assert.deepEqual(seqs, Array.from({ length: 1101 }, (_, k) => k + 1), 'each once, in order');
    erin.close();
  } finally {
    await page.close();
    await busy.kill('SIGTERM');
  }
});
