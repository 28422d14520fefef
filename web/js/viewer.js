// The image viewer: one series on a canvas, with its controls.
//
// State lives here and nowhere else: the stack of slices and the current index, the tool (mode),
// the window choice (the file's own window, a preset, or a custom one from a drag), the view
// transform, measurements and cine. Input (input.js), controls (toolbar.js) and cine call the
// methods below; every change ends in scheduleDraw(), which draws at most once per animation
// frame.
//
// Drawing a raw slice: the loader's stored bit patterns go through a lookup table built for the
// slice's pixel format and the current window (windowing.js) into a native-size ImageData, which
// is put on an off-screen canvas and drawn scaled onto the visible one. The windowed image is
// kept, so zoom, pan and measurement redraws do not window again. A server-rendered slice is an
// ImageBitmap drawn the same way. The overlay and measurements are drawn on top.
//
// ready() resolves when what the state says (series, slice, window) is what is drawn; the test
// hook and tests wait on it.

import { Cine } from './cine.js';
import { record, setViewer } from './debug.js';
import { h } from './dom.js';
import * as fmt from './format.js';
import { FrameLoader } from './frames.js';
import { attachInput } from './input.js';
import { Measurements, drawMeasurements, label } from './measure.js';
import { notifyError } from './notify.js';
import { Overlay } from './overlay.js';
import { buildStack } from './stack.js';
import { buildControls } from './toolbar.js';
import { ViewTransform } from './transform.js';
import { PRESETS, applyLut, rangeWindow, round, windowLut } from './windowing.js';

export const MODES = Object.freeze(['scroll', 'wl', 'pan', 'zoom', 'measure']);

/** Dragging to scroll: px per slice, so that a short stack still needs a deliberate drag. */
const MIN_PX_PER_SLICE = 4;
const MAX_PX_PER_SLICE = 24;
/** Above this zoom (screen px per image px) pixels are drawn as blocks: the true data, not blur. */
const SMOOTHING_MAX_ZOOM = 3;

export class Viewer {
  constructor({ onSliceChange = () => {}, initialMode } = {}) {
    this.onSliceChange = onSliceChange;
    this.study = null;
    this.series = null;
    this.stack = [];
    this.index = 0;
    this.mode = MODES.includes(initialMode) ? initialMode : 'scroll';
    this.choice = { preset: 'file' }; // or {preset: id|null, center, width}
    this.dpr = 1;
    this.transform = new ViewTransform();
    this.measurements = new Measurements();
    this.cine = new Cine(this);
    this.loader = new FrameLoader({
      windowFor: (s) => this.effectiveWindow(s),
      onLoaded: (s) => this.frameArrived(s),
      onError: (s, err) => this.frameFailed(s, err),
    });
    this.native = document.createElement('canvas');
    this.nativeCtx = this.native.getContext('2d');
    this.imageData = null;
    this.imageKey = '';
    this.lut = null;
    this.lutKey = '';
    this.drawnKey = '';
    this.waiters = [];
    this.pending = { first: null, slice: null, wl: null }; // performance.now() of unfinished changes
    this.drawQueued = false;
    this.idleText = ''; // shown while no series is set
    this.buildDom();
    this.detachInput = attachInput(this.canvas, this);
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(this.stage);
    this.controls.update();
    setViewer(this);
  }

  buildDom() {
    this.canvas = h('canvas', { class: 'viewer-canvas', tabindex: '0', role: 'img', 'aria-label': 'Image viewer' });
    this.ctx = this.canvas.getContext('2d', { alpha: false });
    this.overlay = new Overlay();
    this.message = h('p', { class: 'viewer-message', hidden: true });
    this.stage = h('div', { class: 'viewer-stage' }, this.canvas, this.overlay.el, this.message);
    this.controls = buildControls(this);
    this.announcer = h('p', { class: 'visually-hidden', role: 'status', 'aria-live': 'polite' });
    this.root = h(
      'section',
      { class: 'viewer', 'aria-label': 'Image viewer', 'data-empty': true, dataset: { mode: this.mode } },
      this.controls.tools,
      this.stage,
      this.controls.sliceBar,
      this.announcer,
    );
  }

  // ---- series and slices ------------------------------------------------------------------

  setSeries(study, series) {
    this.study = study;
    this.series = series;
    this.stack = buildStack(study, series);
    this.index = 0;
    this.cine.stop();
    this.measurements.cancel();
    this.choice = { preset: 'file' }; // a window chosen for one series means nothing in another's units
    this.imageKey = '';
    const first = this.stack[0];
    if (first) this.transform.setImage(first.fmt.columns, first.fmt.rows, aspectOf(first));
    this.transform.fit();
    if (this.mode === 'wl' && !this.canWindow()) this.setMode('scroll');
    this.pending = { first: performance.now(), slice: null, wl: null };
    this.loader.setStack(this.stack);
    this.changed();
    this.onSliceChange(first ?? null);
  }

  count() {
    return this.stack.length;
  }

  currentSlice() {
    return this.stack[this.index] ?? null;
  }

  /** Moves to slice i (clamped) as the user asked: stops cine. */
  setSlice(i) {
    if (!this.stack.length) return;
    this.cine.stop();
    this.showSlice(Math.min(this.stack.length - 1, Math.max(0, Math.round(i))));
  }

  step(delta) {
    this.setSlice(this.index + delta);
  }

  /** Moves to slice i without stopping cine. */
  showSlice(i) {
    if (i === this.index || !this.stack[i]) return;
    this.index = i;
    this.measurements.cancel();
    this.pending.slice = performance.now();
    this.loader.setFocus(i);
    this.changed();
    this.onSliceChange(this.stack[i]);
  }

  isLoaded(i) {
    const s = this.stack[i];
    return !!s && this.loader.isFresh(s);
  }

  pxPerSlice() {
    const height = this.stage.clientHeight || 600;
    return Math.min(MAX_PX_PER_SLICE, Math.max(MIN_PX_PER_SLICE, height / Math.max(1, this.stack.length)));
  }

  frameArrived(slice) {
    if (this.stack[slice.index] === slice && slice.index === this.index) this.scheduleDraw();
  }

  frameFailed(slice, err) {
    if (this.stack[slice.index] !== slice) return;
    if (slice.index === this.index) {
      notifyError(err, `Image ${slice.index + 1} could not be loaded`);
      this.scheduleDraw();
    } else {
      notifyError(err, 'Some images could not be loaded');
    }
  }

  // ---- tools and window -------------------------------------------------------------------

  setMode(mode) {
    if (!MODES.includes(mode) || (mode === 'wl' && !this.canWindow())) return;
    this.mode = mode;
    this.root.dataset.mode = mode;
    this.measurements.cancel();
    this.changed();
  }

  canWindow() {
    const s = this.currentSlice();
    return !!s && s.windowable;
  }

  /** The window of a slice now: the chosen one, the file's, or (raw, none in the file) the data's range. */
  effectiveWindow(slice) {
    if (!slice || !slice.windowable) return null;
    if (this.choice.preset !== 'file') return { center: this.choice.center, width: this.choice.width };
    if (slice.fileWindow) return slice.fileWindow;
    if (slice.strategy === 'raw') {
      const e = this.loader.entry(slice);
      if (e) return (e.range ??= rangeWindow(e.patterns, slice.fmt));
    }
    return null; // server-rendered with the server's default window
  }

  /** The current window, or a guess from the pixel format when the server picks it (start of a drag). */
  currentWindow() {
    const s = this.currentSlice();
    if (!s) return null;
    const w = this.effectiveWindow(s);
    if (w) return w;
    const f = s.fmt;
    const span = 2 ** f.bitsStored;
    const lo = f.signed ? -span / 2 : 0;
    return { center: round((lo + span / 2) * f.slope + f.intercept), width: round(span * Math.abs(f.slope)) };
  }

  /** Window units per dragged px: dragging 256 px changes the window by its own width. */
  windowSensitivity(w) {
    return Math.max(0.01, w.width / 256);
  }

  dragWindow(start, dWidth, dCenter) {
    const fine = start.width < 20;
    this.setWindow({
      center: round(start.center + dCenter, fine),
      width: Math.max(1, round(start.width + dWidth, fine)),
    });
  }

  setWindow(win, preset = null) {
    const c = this.choice;
    if (c.preset === preset && c.center === win.center && c.width === win.width) return;
    this.choice = { preset, center: win.center, width: win.width };
    this.pending.wl = performance.now();
    this.loader.windowChanged();
    this.changed();
  }

  setPreset(id) {
    const p = PRESETS.find((x) => x.id === id);
    if (!p || !this.canWindow()) return;
    if (id === 'file') {
      if (this.choice.preset === 'file') return;
      this.choice = { preset: 'file' };
      this.pending.wl = performance.now();
      this.loader.windowChanged();
      this.changed();
    } else {
      this.setWindow({ center: p.center, width: p.width }, id);
    }
  }

  /** A drag on a server-rendered image: fetch only the slice on screen until it ends. */
  beginInteraction() {
    if (this.currentSlice()?.strategy === 'rendered') this.loader.setPrefetch(false);
  }

  endInteraction() {
    this.loader.setPrefetch(true);
  }

  // ---- view -------------------------------------------------------------------------------

  zoomAt(factor, x, y) {
    this.transform.zoomAt(factor, x, y);
    this.changed();
  }

  zoomCentre(factor) {
    this.zoomAt(factor, this.transform.width / 2, this.transform.height / 2);
  }

  panBy(dx, dy) {
    this.transform.panBy(dx, dy);
    this.changed();
  }

  fit() {
    this.transform.fit();
    this.changed();
  }

  reset() {
    this.transform.fit();
    this.setPreset('file');
    this.changed();
  }

  toggleCine() {
    this.cine.toggle();
  }

  setFps(fps) {
    this.cine.setFps(fps);
    this.changed();
  }

  onCineChange() {
    this.changed();
  }

  escape() {
    if (this.measurements.draft) {
      this.measurements.cancel();
      this.changed();
    } else {
      this.cine.stop();
    }
  }

  // ---- measurement ------------------------------------------------------------------------

  measureBegin(p) {
    const s = this.currentSlice();
    if (!s || !this.loader.entry(s)) return;
    this.measurements.begin(s.key, this.transform.canvasToImage(p.x, p.y), s.spacing, p);
  }

  measureMove(p) {
    if (!this.measurements.draft) return;
    this.measurements.move(this.transform.canvasToImage(p.x, p.y));
    this.scheduleDraw();
  }

  measureEnd(p) {
    this.measureMove(p);
    const m = this.measurements.end(p);
    if (m) this.announcer.textContent = `Length ${label(m.length)}`;
    this.changed();
  }

  measureCancel() {
    this.measurements.cancel();
    this.changed();
  }

  clearMeasurements() {
    this.measurements.clear();
    this.changed();
  }

  lastMeasurement() {
    const m = this.measurements.last;
    return m ? { mm: m.length.mm, px: m.length.px } : null;
  }

  // ---- drawing ----------------------------------------------------------------------------

  changed() {
    this.root.toggleAttribute('data-empty', this.stack.length === 0);
    this.controls.update();
    this.scheduleDraw();
  }

  scheduleDraw() {
    if (this.drawQueued) return;
    this.drawQueued = true;
    requestAnimationFrame(() => {
      this.drawQueued = false;
      this.draw();
    });
  }

  resize() {
    const r = this.stage.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) return;
    this.dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(r.width * this.dpr);
    this.canvas.height = Math.round(r.height * this.dpr);
    this.transform.setViewport(r.width, r.height);
    this.draw();
  }

  draw() {
    const { ctx, canvas } = this;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const slice = this.currentSlice();
    this.overlay.update(this.overlayLines(slice));
    if (!slice) {
      this.showMessage(this.series ? 'This series has no images to show.' : this.idleText);
      this.settleWaiters();
      return;
    }
    const src = this.source(slice);
    if (!src) {
      this.showMessage(this.loader.hasFailed(slice) ? 'This image could not be loaded.' : 'Loading…');
      this.settleWaiters();
      return;
    }
    this.showMessage('');
    const t0 = performance.now();
    this.transform.setImage(slice.fmt.columns, slice.fmt.rows, aspectOf(slice));
    const r = this.transform.imageRect();
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.imageSmoothingEnabled = this.transform.zoom * this.dpr < SMOOTHING_MAX_ZOOM;
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(src.image, r.x, r.y, r.w, r.h);
    drawMeasurements(ctx, this.measurements.forSlice(slice.key), (x, y) => this.transform.imageToCanvas(x, y));
    const now = performance.now();
    record(slice.strategy, 'draw', now - t0);
    if (src.fresh) {
      this.drawnKey = this.wantedKey();
      for (const [phase, since] of Object.entries(this.pending)) {
        if (since !== null) record(slice.strategy, phase, now - since);
      }
      this.pending = { first: null, slice: null, wl: null };
    }
    this.canvas.setAttribute('aria-label', this.describe(slice));
    this.settleWaiters();
  }

  /** What to draw for a slice: {image, fresh}, or null while it is not loaded. */
  source(slice) {
    const entry = this.loader.entry(slice);
    if (!entry) return null;
    if (entry.kind === 'bitmap') return { image: entry.bitmap, fresh: this.loader.isFresh(slice) };
    this.windowed(slice, entry);
    return { image: this.native, fresh: true };
  }

  /** The raw slice windowed into this.imageData (and the off-screen canvas); cached per slice+window. */
  windowed(slice, entry) {
    const win = this.effectiveWindow(slice);
    const key = `${slice.key}|${win.center},${win.width}`;
    if (key === this.imageKey) return this.imageData;
    const t0 = performance.now();
    const f = slice.fmt;
    const lutKey = `${f.bitsAllocated},${f.bitsStored},${f.signed},${f.slope},${f.intercept},${f.photometric}|${win.center},${win.width}`;
    if (lutKey !== this.lutKey) {
      this.lut = windowLut(f, win);
      this.lutKey = lutKey;
    }
    if (!this.imageData || this.imageData.width !== f.columns || this.imageData.height !== f.rows) {
      this.imageData = new ImageData(f.columns, f.rows);
      this.native.width = f.columns;
      this.native.height = f.rows;
    }
    applyLut(entry.patterns, this.lut, this.imageData);
    this.nativeCtx.putImageData(this.imageData, 0, 0);
    this.imageKey = key;
    record('raw', 'window', performance.now() - t0);
    return this.imageData;
  }

  /** Text for the empty viewer, before (or instead of) a series. */
  setIdleText(text) {
    this.idleText = text;
    this.scheduleDraw();
  }

  showMessage(text) {
    this.message.hidden = !text;
    if (this.message.textContent !== text) this.message.textContent = text;
  }

  wantedKey() {
    const s = this.currentSlice();
    const w = this.effectiveWindow(s);
    return `${this.series?.series_instance_uid}|${this.index}|${w ? `${w.center},${w.width}` : 'file'}`;
  }

  /** Resolves when the current slice is drawn as the state says; rejects if it failed to load. */
  ready() {
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.scheduleDraw();
    });
  }

  settleWaiters() {
    if (!this.waiters.length) return;
    const s = this.currentSlice();
    let outcome = null;
    if (!s) outcome = 'ok';
    else if (this.drawnKey === this.wantedKey() && this.loader.isFresh(s)) outcome = 'ok';
    else if (this.loader.hasFailed(s)) outcome = 'failed';
    if (!outcome) return;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) {
      if (outcome === 'ok') w.resolve();
      else w.reject(new Error(`slice ${this.index + 1} could not be loaded`));
    }
  }

  overlayLines(s) {
    const st = this.study ?? {};
    const se = this.series ?? {};
    const w = this.effectiveWindow(s);
    const inst = s?.instance ?? {};
    const loc = Number.isFinite(inst.slice_location) ? `Loc ${fmt.num(inst.slice_location, 1)} mm` : '';
    const sexAge = [fmt.date(st.patient_birth_date), st.patient_sex].filter(Boolean).join(' · ');
    return {
      tl: [fmt.personName(st.patient_name), st.patient_id, sexAge],
      tr: [
        [fmt.date(st.study_date), fmt.time(st.study_time)].filter(Boolean).join(' '),
        st.study_description,
        [se.series_number != null ? `Se ${se.series_number}` : '', se.series_description].filter(Boolean).join(': '),
      ],
      bl: [s ? `Im ${s.index + 1} / ${this.stack.length}${s.frames > 1 ? ` (frame ${s.ref.frame})` : ''}` : '', loc],
      br: [
        w ? `C ${fmt.num(w.center, 2)}  W ${fmt.num(w.width, 2)}` : '',
        s ? `Zoom ${Math.round(this.transform.zoom * 100)}%` : '',
      ],
    };
  }

  describe(s) {
    const w = this.effectiveWindow(s);
    return `Image ${s.index + 1} of ${this.stack.length}${w ? `, window level ${fmt.num(w.center, 2)} width ${fmt.num(w.width, 2)}` : ''}`;
  }

  // ---- read-only views for the controls and the test hook ----------------------------------

  controlState() {
    return {
      mode: this.mode,
      preset: this.choice.preset,
      canWindow: this.canWindow(),
      // The named presets are Hounsfield windows: offered for CT only.
      hounsfield: this.series?.modality === 'CT',
      playing: this.cine.playing,
      fps: this.cine.fps,
      index: this.index,
      count: this.stack.length,
      measurements: this.measurements.count(),
    };
  }

  state() {
    const s = this.currentSlice();
    const w = this.effectiveWindow(s);
    return {
      study: this.study?.study_instance_uid ?? null,
      series: this.series?.series_instance_uid ?? null,
      sliceIndex: this.index,
      sliceCount: this.stack.length,
      window: w ? { center: w.center, width: w.width } : null,
      preset: this.choice.preset,
      zoom: this.transform.zoom,
      pan: { x: this.transform.panX, y: this.transform.panY },
      mode: this.mode,
      strategy: s?.strategy ?? null,
      playing: this.cine.playing,
      fps: this.cine.fps,
      loaded: this.loader.loadedCount(),
    };
  }

  current() {
    const s = this.currentSlice();
    if (!s) return null;
    return {
      ...s.ref,
      rows: s.fmt.rows,
      columns: s.fmt.columns,
      pixelSpacing: s.spacing ? [s.spacing.row, s.spacing.col] : null,
      strategy: s.strategy,
    };
  }

  frameImageData() {
    const s = this.currentSlice();
    const entry = s && this.loader.entry(s);
    if (!entry) return null;
    if (entry.kind === 'raw') {
      const d = this.windowed(s, entry);
      return new ImageData(new Uint8ClampedArray(d.data), d.width, d.height);
    }
    if (!this.loader.isFresh(s)) return null;
    const c = document.createElement('canvas');
    c.width = entry.bitmap.width;
    c.height = entry.bitmap.height;
    const x = c.getContext('2d', { willReadFrequently: true });
    x.drawImage(entry.bitmap, 0, 0);
    return x.getImageData(0, 0, c.width, c.height);
  }

  imageToClient(x, y) {
    const r = this.canvas.getBoundingClientRect();
    const p = this.transform.imageToCanvas(x, y);
    return { x: r.left + p.x, y: r.top + p.y };
  }

  clientToImage(x, y) {
    const r = this.canvas.getBoundingClientRect();
    return this.transform.canvasToImage(x - r.left, y - r.top);
  }

  layout() {
    const rect = (el) => {
      const r = el.getBoundingClientRect();
      return { x: r.left, y: r.top, width: r.width, height: r.height };
    };
    return {
      canvas: rect(this.canvas),
      slider: rect(this.controls.slider),
      pxPerSlice: this.pxPerSlice(),
      dpr: this.dpr,
    };
  }

  destroy() {
    this.cine.stop();
    this.detachInput();
    this.resizeObserver.disconnect();
    this.loader.destroy();
    this.root.remove();
    for (const w of this.waiters) w.resolve();
    this.waiters = [];
    setViewer(null);
  }
}

/** Displayed height of a pixel relative to its width (Pixel Spacing row / column). */
function aspectOf(slice) {
  return slice.spacing ? slice.spacing.row / slice.spacing.col : 1;
}
