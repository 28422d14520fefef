#!/usr/bin/env node
// Drives the Discless web viewer in Debian's headless Chromium, as a phone and as a desktop,
// through the real input methods, and checks what it draws against the node's own rendering.
//
//   node viewer.mjs --base http://127.0.0.1:PORT --out DIR [--study UID] [--timeout MS]
//
// For each of a phone (390×844, touch, DPR 3) and a desktop (1440×900, mouse and keyboard):
//   1. open /, see the study list (screenshot DIR/list-<device>.png)
//   2. open the CT study (the first whose modalities include CT, or --study) and wait for the image
//   3. go to slice 10 (index 9): wheel + ArrowDown on the desktop, a touch swipe on the phone
//   4. change window/level: right-drag on the desktop; the Lung preset and a one-finger drag in
//      W/L mode on the phone
//   5. check the windowed pixels (window.__discless.frameImageData()) equal the node's rendering
//      of that frame with the same window (/dicomweb/.../rendered as PNG): max channel difference
//      ≤ 1 over all pixels
//   6. measure a 100-pixel horizontal line with the Measure tool and check its length is
//      100 × Pixel Spacing (column) within 1 % (in px when the image has no spacing)
//   7. no console errors or uncaught exceptions; screenshot DIR/viewer-<device>.png
// Then, on the desktop, the same study with ?render=server (every frame server-rendered) to
// check that path works and to time it against the raw path.
//
// Prints a JSON summary {"ok", "checks": [{name, ok, detail}], "timings"} on stdout, progress on
// stderr, and exits 1 when any check fails (2 on bad arguments).

import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { freshContext, watchProblems } from './chromium.mjs';

const TARGET_INDEX = 9;
const MEASURE_PX = 100;
const MEASURE_TOLERANCE = 0.01;

const DEVICES = {
  phone: { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 3 },
  desktop: { viewport: { width: 1440, height: 900 }, isMobile: false, hasTouch: false, deviceScaleFactor: 1 },
};

function usage(message) {
  process.stderr.write(
    `${message}\nusage: node viewer.mjs --base http://127.0.0.1:PORT --out DIR [--study UID] [--timeout MS]\n`,
  );
  process.exit(2);
}

let args;
try {
  args = parseArgs({
    options: {
      base: { type: 'string' },
      out: { type: 'string' },
      study: { type: 'string' },
      timeout: { type: 'string', default: '30000' },
    },
  }).values;
} catch (err) {
  usage(err.message);
}
if (!args.base || !args.out) usage('--base and --out are required');
const BASE = args.base.replace(/\/+$/, '');
const OUT = path.resolve(args.out);
const TIMEOUT = Number(args.timeout) || 30000;

const checks = [];
const timings = {};
const log = (...parts) => process.stderr.write(`${parts.join(' ')}\n`);

function check(name, ok, detail = {}) {
  checks.push({ name, ok: !!ok, detail });
  log(ok ? 'ok  ' : 'FAIL', name, JSON.stringify(detail));
  return !!ok;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Opens a browser with a fresh profile, set up as `device`. */
async function launch(device) {
  const { context, close } = await freshContext(device, DEVICES[device], TIMEOUT);
  const problems = [];
  const page = watchProblems(context.pages()[0] ?? (await context.newPage()), problems, device);
  return { page, problems, close };
}

const hook = (page, fn, arg) => page.evaluate(fn, arg);
const state = (page) => hook(page, () => window.__discless.state());
const ready = (page) => hook(page, () => window.__discless.ready());

/**
 * Real touch events through the DevTools protocol (what a finger on the screen produces): moves
 * at 60 Hz, and the finger rests at the end before lifting. Lifted while still moving, Chromium
 * starts a fling, and the next tap only stops the fling: no click (tap suppression).
 */
async function touchDrag(page, from, to, steps = 12) {
  const cdp = await page.context().newCDPSession(page);
  const point = (p) => [{ x: p.x, y: p.y, id: 1, radiusX: 2, radiusY: 2, force: 1 }];
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchStart', touchPoints: point(from) });
  for (let i = 1; i <= steps; i += 1) {
    const t = i / steps;
    await sleep(16);
    await cdp.send('Input.dispatchTouchEvent', {
      type: 'touchMove',
      touchPoints: point({ x: from.x + (to.x - from.x) * t, y: from.y + (to.y - from.y) * t }),
    });
  }
  for (let i = 0; i < 3; i += 1) {
    await sleep(50);
    await cdp.send('Input.dispatchTouchEvent', { type: 'touchMove', touchPoints: point(to) });
  }
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchEnd', touchPoints: [] });
  await cdp.detach();
}

/** Taps `selector`; a failure names the control and the viewer's state at that moment. */
async function tapNamed(page, selector, what) {
  try {
    await page.locator(selector).tap({ timeout: 15000 });
  } catch (e) {
    const st = await state(page).catch(() => null);
    const box = await page
      .locator(selector)
      .evaluate((el) => ({ hidden: el.closest('[hidden]') !== null, display: getComputedStyle(el).display, rect: el.getBoundingClientRect().toJSON(), disabled: el.disabled }))
      .catch((err) => String(err));
    throw new Error(`tapping ${what} (${selector}) failed; element: ${JSON.stringify(box)}; viewer: ${JSON.stringify(st)}; ${e.message}`);
  }
}

async function mouseDrag(page, from, to, { button = 'left', steps = 12 } = {}) {
  await page.mouse.move(from.x, from.y);
  await page.mouse.down({ button });
  await page.mouse.move(to.x, to.y, { steps });
  await page.mouse.up({ button });
}

/** Chooses the CT study and its CT series with the most images. */
async function chooseStudy(page) {
  return hook(
    page,
    async (wanted) => {
      const res = await fetch('/api/studies', { headers: { Accept: 'application/json' } });
      const list = await res.json();
      const summary = wanted
        ? list.find((s) => s.study_instance_uid === wanted)
        : list.find((s) => (s.modalities ?? []).includes('CT'));
      if (!summary)
        return {
          error: wanted ? `no study ${wanted} in /api/studies` : 'no study with modality CT in /api/studies',
          count: list.length,
        };
      const study = await (await fetch(`/api/studies/${encodeURIComponent(summary.study_instance_uid)}`)).json();
      const images = (se) =>
        (se.instances ?? [])
          .filter((i) => i.rows > 0 && i.columns > 0)
          .reduce((n, i) => n + Math.max(1, i.number_of_frames ?? 1), 0);
      const ranked = [...study.series].sort(
        (a, b) => (b.modality === 'CT') - (a.modality === 'CT') || images(b) - images(a),
      );
      const series = ranked[0];
      return {
        study: study.study_instance_uid,
        series: series?.series_instance_uid ?? null,
        slices: series ? images(series) : 0,
        phi: [study.patient_name, study.patient_id].filter((v) => v && v.length > 2),
        count: list.length,
      };
    },
    args.study ?? null,
  );
}

/** Compares the viewer's windowed frame with the node's rendering of it, inside the page. */
function comparePixels(page) {
  return hook(page, async () => {
    const d = window.__discless;
    await d.ready();
    const s = d.state();
    const cur = d.current();
    const mine = d.frameImageData();
    if (!mine || !cur || !s.window) return { error: 'no frame or window in the viewer' };
    const enc = encodeURIComponent;
    const url = `/dicomweb/studies/${enc(cur.study)}/series/${enc(cur.series)}/instances/${enc(cur.sop)}/frames/${cur.frame}/rendered?window=${s.window.center},${s.window.width},linear`;
    const t0 = performance.now();
    const res = await fetch(url, { headers: { Accept: 'image/png' } });
    if (!res.ok) return { error: `rendered frame: HTTP ${res.status}` };
    const bitmap = await createImageBitmap(await res.blob(), {
      colorSpaceConversion: 'none',
      premultiplyAlpha: 'none',
    });
    const ms = performance.now() - t0;
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    const theirs = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
    const out = {
      window: s.window,
      sliceIndex: s.sliceIndex,
      strategy: s.strategy,
      size: [mine.width, mine.height],
      serverSize: [theirs.width, theirs.height],
      renderedFetchMs: Math.round(ms),
    };
    if (mine.width !== theirs.width || mine.height !== theirs.height) return { ...out, error: 'sizes differ' };
    let maxDiff = 0;
    let differing = 0;
    let over1 = 0;
    const a = mine.data;
    const b = theirs.data;
    for (let i = 0; i < a.length; i += 4) {
      let px = 0;
      for (let c = 0; c < 4; c += 1) px = Math.max(px, Math.abs(a[i + c] - b[i + c]));
      if (px > 0) differing += 1;
      if (px > 1) over1 += 1;
      if (px > maxDiff) maxDiff = px;
    }
    let nonBlack = 0;
    for (let i = 0; i < a.length; i += 4) if (a[i] > 0) nonBlack += 1;
    return { ...out, pixels: a.length / 4, maxDiff, differing, over1, nonBlack };
  });
}

async function openList(page, device) {
  await page.goto(`${BASE}/`);
  await page.waitForFunction(() => !!window.__discless);
  await ready(page);
  const cards = await page.locator('a.study-card').count();
  await page.screenshot({ path: path.join(OUT, `list-${device}.png`) });
  return cards;
}

async function runDevice(device) {
  const browser = await launch(device);
  const { page, problems } = browser;
  const touch = DEVICES[device].hasTouch;
  try {
    // 1. The list.
    const cards = await openList(page, device);
    check(`${device}: study list shows studies`, cards > 0, { cards });
    const chosen = await chooseStudy(page);
    if (
      !check(`${device}: ${args.study ? 'the chosen' : 'a CT'} study to open`, !chosen.error && chosen.series, chosen)
    )
      return;

    // 2. Open it as a person would: tap or click its card.
    const card = page.locator(`a.study-card[href="#/study/${encodeURIComponent(chosen.study)}"]`);
    if (touch) await card.tap();
    else await card.click();
    await page.waitForFunction(
      (uid) => window.__discless.state().study === uid && window.__discless.state().sliceCount > 0,
      chosen.study,
    );
    if ((await state(page)).series !== chosen.series) {
      const item = page.locator(`.series-item[data-series="${chosen.series}"]`);
      if (touch) await item.tap();
      else await item.click();
      await page.waitForFunction((uid) => window.__discless.state().series === uid, chosen.series);
    }
    await ready(page);
    let s = await state(page);
    check(`${device}: viewer shows the first image`, s.sliceIndex === 0 && s.sliceCount === chosen.slices, {
      sliceCount: s.sliceCount,
      strategy: s.strategy,
      loadedAtFirstImage: s.loaded,
    });
    const href = decodeURIComponent(await page.evaluate(() => location.href));
    check(`${device}: no PHI in the URL`, !chosen.phi.some((v) => href.includes(v)), { href });
    if (
      !check(`${device}: series has at least ${TARGET_INDEX + 1} slices`, s.sliceCount > TARGET_INDEX, {
        sliceCount: s.sliceCount,
      })
    )
      return;

    // 3. Slice 10.
    const layout = await hook(page, () => window.__discless.layout());
    const c = layout.canvas;
    const centre = { x: c.x + c.width / 2, y: c.y + c.height / 2 };
    if (touch) {
      // One finger down the image moves forward; the viewer says how many px make a slice.
      const dy = (TARGET_INDEX - s.sliceIndex + 0.5) * layout.pxPerSlice;
      const from = { x: centre.x, y: Math.max(c.y + 10, centre.y - dy / 2) };
      await touchDrag(page, from, { x: from.x, y: from.y + dy }, 16);
    } else {
      await page.mouse.click(centre.x, centre.y); // focus the image
      for (let i = 0; i < 5; i += 1) {
        await page.mouse.wheel(0, 100);
        await sleep(30);
      }
      await page
        .waitForFunction(() => window.__discless.state().sliceIndex === 5, null, { timeout: 5000 })
        .catch(() => {});
      const afterWheel = (await state(page)).sliceIndex;
      check(`${device}: wheel scrolls one slice per notch`, afterWheel === 5, { sliceIndex: afterWheel });
      for (let i = afterWheel; i < TARGET_INDEX; i += 1) await page.keyboard.press('ArrowDown');
    }
    await ready(page);
    s = await state(page);
    check(`${device}: slice index is ${TARGET_INDEX}`, s.sliceIndex === TARGET_INDEX, {
      sliceIndex: s.sliceIndex,
      via: touch ? 'touch swipe' : 'wheel + ArrowDown',
    });

    // 4. Window/level.
    const before = s.window;
    if (touch) {
      await tapNamed(page, 'button[aria-keyshortcuts="w"]', 'the W/L tool');
      await tapNamed(page, '.chip[data-preset="lung"]', 'the Lung preset');
      await ready(page);
      const preset = (await state(page)).window;
      check(`${device}: Lung preset sets −600/1500`, preset && preset.center === -600 && preset.width === 1500, {
        window: preset,
      });
      await touchDrag(page, { x: centre.x - 40, y: centre.y - 30 }, { x: centre.x + 20, y: centre.y + 30 }, 10);
    } else {
      await mouseDrag(
        page,
        { x: centre.x - 40, y: centre.y },
        { x: centre.x + 40, y: centre.y - 50 },
        { button: 'right' },
      );
    }
    await ready(page);
    s = await state(page);
    const changed = s.window && before && (s.window.center !== before.center || s.window.width !== before.width);
    check(
      `${device}: window/level changed by ${touch ? 'preset and drag' : 'right-drag'}`,
      changed && s.sliceIndex === TARGET_INDEX,
      { before, after: s.window, sliceIndex: s.sliceIndex },
    );

    // 5. Pixels against the node's rendering.
    const cmp = await comparePixels(page);
    check(
      `${device}: windowed pixels equal the server rendering (max diff ≤ 1)`,
      !cmp.error && cmp.maxDiff <= 1 && cmp.nonBlack > 0,
      cmp,
    );

    // 6. Measure 100 image pixels horizontally.
    const tool = page.locator('button[aria-keyshortcuts="m"]');
    if (touch) await tool.tap();
    else await tool.click();
    const cur = await hook(page, () => window.__discless.current());
    const y = cur.rows / 2 + 0.5;
    const x1 = Math.max(0.5, cur.columns / 2 - MEASURE_PX / 2);
    const [p1, p2] = await hook(
      page,
      ([a, b, yy]) => [window.__discless.imageToClient(a, yy), window.__discless.imageToClient(b, yy)],
      [x1, x1 + MEASURE_PX, y],
    );
    if (touch) await touchDrag(page, p1, p2, 10);
    else await mouseDrag(page, p1, p2, { steps: 10 });
    await ready(page);
    const m = await hook(page, () => window.__discless.lastMeasurement());
    const spacing = cur.pixelSpacing ? cur.pixelSpacing[1] : null;
    const expected = spacing ? MEASURE_PX * spacing : MEASURE_PX;
    const got = m ? (spacing ? m.mm : m.px) : null;
    check(
      `${device}: a ${MEASURE_PX}-pixel line measures ${expected.toFixed(1)} ${spacing ? 'mm' : 'px'} (±1%)`,
      got !== null && Math.abs(got - expected) <= expected * MEASURE_TOLERANCE,
      {
        measured: m,
        expected,
        from: p1,
        to: p2,
        zoom: (await state(page)).zoom,
      },
    );

    await page.screenshot({ path: path.join(OUT, `viewer-${device}.png`) });
    timings[device] = await hook(page, () => window.__discless.timings());
    check(`${device}: no console errors`, problems.length === 0, { problems });
  } catch (err) {
    check(`${device}: run finished`, false, { error: String(err.message ?? err).split('\n')[0] });
    await page.screenshot({ path: path.join(OUT, `failure-${device}.png`) }).catch(() => {});
  } finally {
    await browser.close();
  }
}

/** The same study with ?render=server: the server-rendered path, for correctness and timing. */
async function runServerRendered() {
  const browser = await launch('desktop');
  const { page, problems } = browser;
  try {
    await page.goto(`${BASE}/?render=server#/`);
    await page.waitForFunction(() => !!window.__discless);
    await ready(page);
    const chosen = await chooseStudy(page);
    if (chosen.error) return;
    await page.goto(
      `${BASE}/?render=server#/study/${encodeURIComponent(chosen.study)}/series/${encodeURIComponent(chosen.series)}`,
    );
    await page.waitForFunction(
      (uid) => window.__discless.state().study === uid && window.__discless.state().sliceCount > 0,
      chosen.study,
    );
    await ready(page);
    const c = (await hook(page, () => window.__discless.layout())).canvas;
    const centre = { x: c.x + c.width / 2, y: c.y + c.height / 2 };
    await page.mouse.click(centre.x, centre.y);
    for (let i = 0; i < 3; i += 1) {
      await page.keyboard.press('ArrowDown');
      await ready(page);
    }
    await mouseDrag(
      page,
      { x: centre.x, y: centre.y },
      { x: centre.x + 30, y: centre.y - 20 },
      { button: 'right', steps: 6 },
    );
    await ready(page);
    const s = await state(page);
    const cmp = await comparePixels(page);
    check(
      'desktop ?render=server: frames come server-rendered and match',
      s.strategy === 'rendered' && !cmp.error && cmp.maxDiff <= 1,
      { strategy: s.strategy, sliceIndex: s.sliceIndex, ...cmp },
    );
    timings.desktopServerRendered = await hook(page, () => window.__discless.timings());
    check('desktop ?render=server: no console errors', problems.length === 0, { problems });
  } catch (err) {
    check('desktop ?render=server: run finished', false, { error: String(err.message ?? err).split('\n')[0] });
  } finally {
    await browser.close();
  }
}

await mkdir(OUT, { recursive: true });
const started = performance.now();
for (const device of Object.keys(DEVICES)) await runDevice(device);
await runServerRendered();
timings.totalMs = Math.round(performance.now() - started);
const ok = checks.length > 0 && checks.every((c) => c.ok);
process.stdout.write(`${JSON.stringify({ ok, checks, timings }, null, 2)}\n`);
process.exit(ok ? 0 : 1);
