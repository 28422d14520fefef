// OHIF Viewer v3 (the built `dist/` of npm's @ohif/app) against a Discless node's DICOMweb, in
// Debian's headless Chromium: OHIF is served from its own origin by a small static server here,
// with an app-config.js whose only data source is the node's /dicomweb (so CORS is exercised);
// the study list must show the node's studies, and a CT series must display.
//
//   node ohif.mjs --dist DIR --dicomweb URL --port N --study UID --expect TEXT [--out DIR]
//
// Prints one JSON verdict on stdout; exits non-zero when a check fails. Only loopback is ever
// contacted: any other request OHIF tries is aborted and listed in the verdict.

import { createServer } from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { freshContext, watchProblems } from './chromium.mjs';

const REQUIRED = ['dist', 'dicomweb', 'port', 'study', 'expect'];
let args;
try {
  args = parseArgs({
    options: Object.fromEntries(
      [...REQUIRED, 'out', 'timeout'].map((name) => [name, { type: 'string' }]),
    ),
  }).values;
} catch (err) {
  console.error(err.message);
  process.exit(2);
}
const missing = REQUIRED.filter((k) => !args[k]);
if (missing.length > 0) {
  console.error(`missing ${missing.map((k) => `--${k}`).join(', ')}`);
  process.exit(2);
}
const TIMEOUT = Number(args.timeout ?? 90_000);

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
};

function appConfig(dicomweb) {
  const config = {
    routerBasename: '/',
    extensions: [],
    modes: [],
    showStudyList: true,
    maxNumberOfWebWorkers: 2,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: false,
    showLoadingIndicator: true,
    investigationalUseDialog: { option: 'never' },
    defaultDataSourceName: 'discless',
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'discless',
        configuration: {
          friendlyName: 'Discless node',
          name: 'discless',
          wadoUriRoot: dicomweb,
          qidoRoot: dicomweb,
          wadoRoot: dicomweb,
          qidoSupportsIncludeField: true,
          imageRendering: 'wadors',
          thumbnailRendering: 'wadors',
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: true,
          omitQuotationForMultipartRequest: true,
        },
      },
    ],
  };
  return `window.config = ${JSON.stringify(config, null, 2)};\n`;
}

// OHIF's dist, with our app-config.js and the single-page fallback to index.html.
function serveDist(dist, port, dicomweb) {
  const config = appConfig(dicomweb);
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/app-config.js') {
      res.writeHead(200, { 'content-type': TYPES['.js'] });
      return res.end(config);
    }
    // Anything that is not a file of the dist (or not a valid path) gets the single-page app.
    let file = path.join(dist, 'index.html');
    try {
      const wanted = path.join(dist, path.normalize(decodeURIComponent(url.pathname)));
      if (wanted.startsWith(dist + path.sep) && (await stat(wanted)).isFile()) file = wanted;
    } catch {
      // keep index.html
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
      res.end(body);
    } catch (e) {
      res.writeHead(500);
      res.end(String(e));
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(port), '127.0.0.1', () => resolve(server));
  });
}

// Pixel statistics of an element as drawn on screen (works for WebGL and 2D canvases alike):
// the element's screenshot decoded by the page itself.
async function drawnStats(page, element) {
  const png = await element.screenshot();
  return page.evaluate(async (b64) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.width;
    c.height = img.height;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    const levels = new Set();
    let lit = 0;
    for (let i = 0; i < d.length; i += 4) {
      const v = (d[i] + d[i + 1] + d[i + 2]) / 3;
      levels.add(Math.round(v));
      if (v > 24) lit += 1;
    }
    return { width: c.width, height: c.height, distinct_levels: levels.size, lit_fraction: lit / (d.length / 4) };
  }, png.toString('base64'));
}

const verdict = { ok: false, steps: [], blocked: [], problems: [], frames_requested: 0 };
const server = await serveDist(path.resolve(args.dist), args.port, args.dicomweb);
const origin = `http://127.0.0.1:${args.port}`;
const browser = await freshContext('ohif', { viewport: { width: 1440, height: 900 } }, TIMEOUT);
try {
  const { context } = browser;
  await context.route('**/*', (route) => {
    const u = new URL(route.request().url());
    if (u.hostname === '127.0.0.1' || u.protocol === 'data:' || u.protocol === 'blob:') return route.continue();
    verdict.blocked.push(route.request().url());
    return route.abort();
  });
  const page = watchProblems(await context.newPage(), verdict.problems, 'ohif');
  page.on('request', (r) => {
    if (r.url().startsWith(args.dicomweb) && r.url().includes('/frames/')) verdict.frames_requested += 1;
  });
  page.on('requestfailed', (r) => verdict.problems.push({ who: 'ohif', kind: 'request failed', text: `${r.url()}: ${r.failure()?.errorText}` }));

  let t = Date.now();
  await page.goto(`${origin}/`);
  const row = page.getByText(args.expect, { exact: false }).first();
  await row.waitFor({ state: 'visible' });
  verdict.steps.push({ step: 'study list shows the node’s study', ms: Date.now() - t, text: args.expect });
  if (args.out) await page.screenshot({ path: path.join(args.out, 'ohif-study-list.png') });

  t = Date.now();
  await page.goto(`${origin}/viewer?StudyInstanceUIDs=${encodeURIComponent(args.study)}`);
  const viewport = page.locator('[data-viewport-uid] canvas, .cornerstone-viewport-element canvas').first();
  await viewport.waitFor({ state: 'visible' });
  // The image is drawn once its frames arrived: poll what is on screen until it shows structure.
  let stats = null;
  const deadline = Date.now() + TIMEOUT;
  while (Date.now() < deadline) {
    stats = await drawnStats(page, viewport);
    if (stats.distinct_levels > 32 && stats.lit_fraction > 0.05) break;
    await page.waitForTimeout(500);
  }
  verdict.steps.push({ step: 'CT series displays', ms: Date.now() - t, canvas: stats });
  if (args.out) await page.screenshot({ path: path.join(args.out, 'ohif-viewer.png') });
  const shown = stats && stats.distinct_levels > 32 && stats.lit_fraction > 0.05;
  if (!shown) verdict.error = 'the viewport never showed an image';
  else if (verdict.frames_requested === 0) verdict.error = 'no WADO-RS frame was fetched from the node';
  else if (verdict.problems.length > 0) verdict.error = 'the page reported errors';
  verdict.ok = !verdict.error;
} catch (e) {
  verdict.error = String(e.message ?? e);
  for (const p of browser.context.pages()) {
    verdict.page_text = (await p.locator('body').innerText().catch(() => '')).slice(0, 2000);
    verdict.url = p.url();
    if (args.out) await p.screenshot({ path: path.join(args.out, 'ohif-failed.png') }).catch(() => {});
  }
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(verdict, null, 2));
process.exit(verdict.ok ? 0 : 1);
