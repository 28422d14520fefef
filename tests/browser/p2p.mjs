#!/usr/bin/env node
// Drives the peer-to-peer pages of two real Discless nodes in Debian's headless Chromium, one
// tab per node, as phones (390×844, touch):
//
//   node p2p.mjs --a http://127.0.0.1:PORT_A --b http://127.0.0.1:PORT_B --study UID --out DIR
//
//   1. A's Pair page: "Show a pairing code" gives a QR image, the ticket as text and a countdown
//   2. B's Pair page, "Scan or paste a code": the camera button shows only where the browser
//      has BarcodeDetector with QR support; the ticket read from A's page is pasted and accepted;
//      B shows A's name and a 6-digit code
//   3. A's page (long-polling the node) shows B's name and the same 6-digit code
//   4. A's Contacts page lists B, online
//   5. A's Share page of --study: B is in the contact list; Share; B appears under "Shared with"
//   6. B's Transfers page, polling the node, shows the study "fetching" with its bar below 100 %
//      (the test slows the sender down), then "complete" at 100 %
//   7. B's study list shows the study, and its study page opens
//   8. A's Share page: Revoke → confirm → the share is marked revoked
//   9. no console errors or uncaught exceptions on any page
// Screenshots DIR/p2p-{pair-a,pair-b,share-a,transfers-b}.png.
//
// Prints {"ok", "checks": [{name, ok, detail}]} as JSON on stdout, progress on stderr; exits 1
// when a check fails, 2 on bad arguments.

import path from 'node:path';
import { parseArgs } from 'node:util';
import { freshContext, watchProblems } from './chromium.mjs';

const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };

function usage(message) {
  process.stderr.write(`${message}\nusage: node p2p.mjs --a URL --b URL --study UID --out DIR [--timeout MS]\n`);
  process.exit(2);
}

let args;
try {
  args = parseArgs({
    options: {
      a: { type: 'string' },
      b: { type: 'string' },
      study: { type: 'string' },
      out: { type: 'string' },
      timeout: { type: 'string', default: '60000' },
    },
  }).values;
} catch (err) {
  usage(err.message);
}
if (!args.a || !args.b || !args.study || !args.out) usage('--a, --b, --study and --out are required');
const A = args.a.replace(/\/+$/, '');
const B = args.b.replace(/\/+$/, '');
const STUDY = args.study;
const OUT = path.resolve(args.out);
const TIMEOUT = Number(args.timeout) || 60000;

const checks = [];
const log = (...parts) => process.stderr.write(`${parts.join(' ')}\n`);

function check(name, ok, detail = {}) {
  checks.push({ name, ok: !!ok, detail });
  log(ok ? 'ok  ' : 'FAIL', name, JSON.stringify(detail));
  return !!ok;
}

/** Both nodes' tabs in one fresh profile (their origins differ, so nothing is shared). */
async function launch() {
  const { context, close } = await freshContext('p2p', PHONE, TIMEOUT);
  const problems = [];
  const first = context.pages()[0] ?? (await context.newPage());
  return {
    a: watchProblems(first, problems, 'A'),
    b: watchProblems(await context.newPage(), problems, 'B'),
    problems,
    close,
  };
}

async function run() {
  const browser = await launch();
  const { a, b } = browser;
  try {
    // 1. A shows a pairing code.
    await a.goto(`${A}/#/pair`);
    await a.getByRole('button', { name: 'Show a pairing code' }).click();
    const ticketBox = a.locator('.ticket-text');
    await ticketBox.waitFor();
    const ticket = await ticketBox.inputValue();
    const qrLoaded = await a
      .locator('img.qr')
      .evaluate((img) => img.complete && img.naturalWidth > 0)
      .catch(() => false);
    const countdown = await a.locator('.countdown').textContent();
    check('A shows a ticket, its QR and a countdown', ticket.startsWith('discless:pair/') && qrLoaded && /^1[45]:\d\d$/.test(countdown), {
      ticket_chars: ticket.length,
      qrLoaded,
      countdown,
    });
    await a.screenshot({ path: path.join(OUT, 'p2p-pair-a.png'), fullPage: true });

    // 2. B pastes it.
    await b.goto(`${B}/#/pair`);
    await b.getByRole('tab', { name: 'Scan or paste a code' }).click();
    const camera = await b.evaluate(async () => {
      const has = 'BarcodeDetector' in window;
      const formats = has ? await window.BarcodeDetector.getSupportedFormats().catch(() => []) : [];
      return { has, qr: formats.includes('qr_code') };
    });
    // Give the page's own feature detection a moment to settle before reading the button.
    await b.waitForTimeout(200);
    const cameraShown = await b.locator('.camera-toggle').isVisible();
    check('the camera button shows exactly when the browser can read QR codes', cameraShown === camera.qr, {
      ...camera,
      cameraShown,
    });
    await b.locator('textarea.paste').fill(ticket);
    await b.getByRole('button', { name: 'Pair', exact: true }).click();
    const sasB = await b.locator('.paired .sas').getAttribute('data-sas');
    const nameOnB = await b.locator('.paired .peer-name').textContent();
    check('B pairs and shows a 6-digit code and A\'s name', /^\d{6}$/.test(sasB ?? '') && nameOnB === 'Riverside Clinic', {
      sasB,
      nameOnB,
    });
    await b.screenshot({ path: path.join(OUT, 'p2p-pair-b.png'), fullPage: true });

    // 3. A learns it by itself.
    const sasA = await a.locator('.paired .sas').getAttribute('data-sas');
    const nameOnA = await a.locator('.paired .peer-name').textContent();
    check('A shows the same code and B\'s name', sasA === sasB && nameOnA === 'Ann phone', { sasA, sasB, nameOnA });

    // 4. A's contacts.
    await a.goto(`${A}/#/contacts`);
    const contact = a.locator('.contact', { hasText: 'Ann phone' });
    await contact.waitFor();
    const contactText = await contact.textContent();
    check('A lists B as a contact, online', /patient/.test(contactText) && /online/.test(contactText), {
      contactText,
    });

    // 5. A shares the study with B.
    await a.goto(`${A}/#/study/${encodeURIComponent(STUDY)}`);
    await a.getByRole('link', { name: /Share/ }).click();
    await a.waitForURL(/\/share$/);
    const option = a.locator('select option', { hasText: 'Ann phone' });
    await option.waitFor({ state: 'attached' });
    await a.locator('select').first().selectOption({ label: await option.textContent() });
    const truth = await a.locator('.truth').textContent();
    check('the Share page says revoking cannot make the recipient forget', /cannot make the other device forget/.test(truth), {
      truth,
    });
    await a.getByRole('button', { name: 'Share', exact: true }).click();
    await a.locator('.share-outcome', { hasText: 'Shared with Ann phone' }).waitFor();
    const shared = a.locator('.share-list .card', { hasText: 'Ann phone' });
    await shared.waitFor();
    check('A shows the share', true, { state: await shared.getAttribute('data-state') });
    await a.screenshot({ path: path.join(OUT, 'p2p-share-a.png'), fullPage: true });

    // 6. B's transfers reach complete.
    await b.goto(`${B}/#/transfers`);
    const t0 = Date.now();
    const incoming = b.locator(`.transfer[data-direction="in"][data-study="${STUDY}"]`);
    await incoming.waitFor();
    const states = new Set();
    const progress = [];
    while (Date.now() - t0 < TIMEOUT) {
      const state = await incoming.getAttribute('data-state').catch(() => null);
      const value = await incoming.locator('progress').evaluate((p) => p.value).catch(() => null);
      if (state) states.add(state);
      if (value != null && progress[progress.length - 1] !== value) progress.push(value);
      if (state === 'complete') break;
      await b.waitForTimeout(100);
    }
    const finalState = await incoming.getAttribute('data-state');
    const finalValue = await incoming.locator('progress').evaluate((p) => p.value);
    // The node sends slowly in this test (a test hook), so the page must have shown it moving.
    const moved = states.has('fetching') && progress.some((v) => v < 100);
    check('B\'s Transfers page shows the transfer moving, then complete at 100 %', moved && finalState === 'complete' && finalValue === 100, {
      states: [...states],
      progress,
      seconds: (Date.now() - t0) / 1000,
    });
    await b.screenshot({ path: path.join(OUT, 'p2p-transfers-b.png'), fullPage: true });

    // 7. B's study list has the study, and it opens.
    await b.goto(`${B}/#/`);
    const card = b.locator(`a.study-card[href="#/study/${encodeURIComponent(STUDY)}"]`);
    await card.waitFor();
    await card.click();
    await b.waitForFunction(() => {
      const t = document.querySelector('h1.study-name')?.textContent;
      return t && t !== 'Loading study…';
    });
    const titleB = await b.locator('h1.study-name').textContent();
    check('B\'s study list shows the study and it opens', titleB && titleB !== 'Loading study…' && titleB !== 'Study could not be loaded', {
      titleB,
    });

    // 8. A revokes.
    await a.goto(`${A}/#/study/${encodeURIComponent(STUDY)}/share`);
    const row = a.locator('.share-list .card', { hasText: 'Ann phone' });
    await row.getByRole('button', { name: /Revoke/ }).click();
    await row.getByRole('button', { name: 'Yes' }).click();
    await a.locator('.share-list .card[data-state="revoked"]').waitFor();
    check('A revokes the share', true);
  } catch (err) {
    check('the journey runs to its end', false, { error: String(err.message ?? err).split('\n')[0] });
  } finally {
    check('no console errors or exceptions', browser.problems.length === 0, { problems: browser.problems });
    await browser.close();
  }
}

await run();
const ok = checks.length > 0 && checks.every((c) => c.ok);
process.stdout.write(`${JSON.stringify({ ok, checks }, null, 2)}\n`);
process.exit(ok ? 0 : 1);
