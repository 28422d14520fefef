// Measurements of the two frame strategies, and the test hook window.__discless.
//
// Every phase of getting a frame on screen is timed with performance.now() under its strategy:
//   raw.fetch     request → raw pixels in memory        rendered.fetch   request → PNG in memory
//   raw.decode    bytes → typed array                  rendered.decode  PNG → ImageBitmap
//   raw.window    LUT + windowing into ImageData       (the server windows rendered frames)
//   *.draw        drawing onto the visible canvas
//   *.wl          a window/level change → that window on screen (the number a radiologist feels)
//   *.slice       a slice change → that slice on screen (cache hits and misses alike)
//   *.first       a series opened → its first image on screen
// timings() summarises them (n, median, p95, min, max, mean in ms). Open the page with
// ?render=server to measure the server-rendered path for every image.
//
// The hook exposes read-only views of the viewer plus coordinate helpers, so a browser test can
// drive the real input methods and check what is drawn. It holds no PHI that the page does not
// already show, and nothing is logged.

const SAMPLES_KEPT = 500;
const samples = new Map(); // "raw.fetch" → [ms]

/** Records one timing sample of `phase` under `strategy` ('raw' or 'rendered'). */
export function record(strategy, phase, ms) {
  const name = `${strategy}.${phase}`;
  let list = samples.get(name);
  if (!list) samples.set(name, (list = []));
  list.push(ms);
  if (list.length > SAMPLES_KEPT) list.shift();
}

export function timings() {
  const out = {};
  for (const [name, list] of [...samples].sort(([a], [b]) => a.localeCompare(b))) {
    const [strategy, phase] = name.split('.');
    const sorted = [...list].sort((a, b) => a - b);
    const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
    out[strategy] ??= {};
    out[strategy][phase] = {
      n: sorted.length,
      median: fix(at(0.5)),
      p95: fix(at(0.95)),
      min: fix(sorted[0]),
      max: fix(sorted[sorted.length - 1]),
      mean: fix(sorted.reduce((s, v) => s + v, 0) / sorted.length),
    };
  }
  return out;
}

function fix(v) {
  return Math.round(v * 100) / 100;
}

let page = null;
let viewer = null;

/** The page now shown; it provides ready(). */
export function setPage(p) {
  page = p;
  if (!p || !p.viewer) viewer = null;
}

/** The viewer now shown, or null. */
export function setViewer(v) {
  viewer = v;
}

const NO_VIEWER = Object.freeze({
  study: null,
  series: null,
  sliceIndex: 0,
  sliceCount: 0,
  window: null,
  zoom: null,
  mode: null,
});

export function installHook() {
  window.__discless = Object.freeze({
    /** {study, series, sliceIndex (0-based), sliceCount, window: {center, width}|null, zoom, mode, ...} */
    state: () => (viewer ? viewer.state() : { ...NO_VIEWER }),
    /** The current slice windowed to 8-bit RGBA at native resolution, or null. */
    frameImageData: () => (viewer ? viewer.frameImageData() : null),
    /** {mm, px} of the last finished length measurement (mm null without Pixel Spacing), or null. */
    lastMeasurement: () => (viewer ? viewer.lastMeasurement() : null),
    /** Resolves when the page is shown and, in the viewer, the current slice is drawn. */
    ready: () => (page ? page.ready() : Promise.resolve()),
    /** Image pixel coordinates (column x, row y; pixel centres at +0.5) → client (CSS px) coordinates. */
    imageToClient: (x, y) => (viewer ? viewer.imageToClient(x, y) : null),
    clientToImage: (x, y) => (viewer ? viewer.clientToImage(x, y) : null),
    /** Geometry for tests: canvas rect, px per slice when dragging, the slice control. */
    layout: () => (viewer ? viewer.layout() : null),
    /** The current slice: {study, series, sop, frame, rows, columns, pixelSpacing, strategy}. */
    current: () => (viewer ? viewer.current() : null),
    timings,
    resetTimings: () => samples.clear(),
  });
}
