// Getting frames from the node into memory, nearest first.
//
// The current slice is always requested at once (even past the concurrency limit), so the first
// image appears while the rest of the series is still on its way. Free request slots then go to
// the not-yet-cached slices nearest the current one, alternating forward and backward
// (i+1, i−1, i+2, i−2, …), up to CONCURRENCY at a time and only as far as the cache can hold. The
// queue is never stored: each free slot picks the nearest missing slice at that moment, so
// scrolling re-prioritises for free, and requests that drift out of reach are aborted (as is the
// farthest one when the current slice needs a slot, so it never queues behind prefetches).
//
// The cache is bounded in bytes. When full it drops the entries farthest from the current slice
// (entries of another series first), never the current one.
//
// Raw frames are kept as stored bit patterns and windowed by the viewer. Server-rendered frames
// are kept as ImageBitmaps together with the window they were rendered with; after a window
// change they are stale: still drawn (better than a blank screen) until the fresh one arrives.
// For the current slice at most one rendered request is in flight, which throttles a W/L drag
// to one round trip at a time; prefetching can be paused during such drags.

import * as api from './api.js';
import { record } from './debug.js';
import { storedPatterns } from './windowing.js';

/** Parallel requests: enough to hide latency, few enough to leave the browser's 6 connections room. */
const CONCURRENCY = 4;
/** A slice that failed is not asked for again for this long (the user sees the error meanwhile). */
const RETRY_AFTER_MS = 15000;

/** Cache budget: a share of the device's memory where the browser says (deviceMemory, GB). */
function defaultCapBytes() {
  const gb = navigator.deviceMemory;
  const mb = Number.isFinite(gb) ? Math.min(384, Math.max(96, gb * 48)) : 256;
  return mb * 1024 * 1024;
}

export class FrameLoader {
  /**
   * windowFor(slice) → the window a rendered frame must have ({center, width} or null for the file's);
   * onLoaded(slice), onError(slice, err) are called as frames arrive or fail.
   */
  constructor({ windowFor, onLoaded, onError, capBytes = defaultCapBytes(), concurrency = CONCURRENCY }) {
    this.windowFor = windowFor;
    this.onLoaded = onLoaded;
    this.onError = onError;
    this.capBytes = capBytes;
    this.concurrency = concurrency;
    this.stack = [];
    this.indexOf = new Map(); // slice key → index in the current stack
    this.focus = 0;
    this.prefetch = true;
    this.cache = new Map(); // slice key → entry
    this.cachedBytes = 0;
    this.inflight = new Map(); // slice key → {controller, index, windowKey}
    this.failed = new Map(); // slice key → time of failure
    this.destroyed = false;
  }

  setStack(stack) {
    for (const job of this.inflight.values()) job.controller.abort();
    this.inflight.clear();
    this.failed.clear();
    this.stack = stack;
    this.indexOf = new Map(stack.map((s) => [s.key, s.index]));
    this.focus = 0;
    this.pump();
  }

  setFocus(index) {
    this.focus = index;
    const reach = this.reach();
    for (const [key, job] of this.inflight) {
      if (Math.abs(job.index - index) > reach) {
        job.controller.abort();
        this.inflight.delete(key);
      }
    }
    this.pump();
  }

  /** Pauses (false) or resumes prefetching of neighbours; the current slice is always loaded. */
  setPrefetch(enabled) {
    this.prefetch = enabled;
    if (enabled) this.pump();
  }

  /** The window changed: rendered frames are stale and get fetched again. */
  windowChanged() {
    this.pump();
  }

  /** The cached entry of a slice (possibly stale), or null: {kind:'raw', patterns} | {kind:'bitmap', bitmap, windowKey}. */
  entry(slice) {
    return this.cache.get(slice.key) ?? null;
  }

  /** True when the slice's cached entry is what should be on screen now. */
  isFresh(slice) {
    const e = this.cache.get(slice.key);
    return !!e && (e.kind === 'raw' || e.windowKey === this.windowKeyOf(slice));
  }

  hasFailed(slice) {
    return this.failed.has(slice.key) && !this.isFresh(slice);
  }

  /** How many slices of the current stack are cached and fresh. */
  loadedCount() {
    return this.stack.reduce((n, s) => n + (this.isFresh(s) ? 1 : 0), 0);
  }

  windowKeyOf(slice) {
    if (slice.strategy === 'raw') return '';
    const w = this.windowFor(slice);
    return w ? `${w.center},${w.width}` : 'file';
  }

  destroy() {
    this.destroyed = true;
    for (const job of this.inflight.values()) job.controller.abort();
    this.inflight.clear();
    for (const e of this.cache.values()) e.bitmap?.close();
    this.cache.clear();
    this.cachedBytes = 0;
  }

  /** How far from the focus prefetching may reach: what half the cache holds on each side. */
  reach() {
    const slice = this.stack[this.focus];
    if (!slice) return 0;
    const fits = Math.floor(this.capBytes / Math.max(1, slice.bytes));
    return Math.max(1, Math.floor((fits - 1) / 2));
  }

  needs(slice) {
    if (this.isFresh(slice) || this.inflight.has(slice.key)) return false;
    const failedAt = this.failed.get(slice.key);
    return failedAt === undefined || performance.now() - failedAt > RETRY_AFTER_MS;
  }

  pump() {
    if (this.destroyed || this.stack.length === 0) return;
    const current = this.stack[this.focus];
    if (current && this.needs(current)) {
      // The slice on screen goes first: make room by dropping the farthest prefetch.
      if (this.inflight.size >= this.concurrency) this.abortFarthest();
      this.start(current);
    }
    if (!this.prefetch) return;
    while (this.inflight.size < this.concurrency) {
      const next = this.nearestMissing();
      if (!next) break;
      this.start(next);
    }
  }

  abortFarthest() {
    let far = null;
    for (const [key, job] of this.inflight) {
      if (!far || Math.abs(job.index - this.focus) > Math.abs(far[1].index - this.focus)) far = [key, job];
    }
    if (!far) return;
    far[1].controller.abort();
    this.inflight.delete(far[0]);
  }

  nearestMissing() {
    const reach = Math.min(this.reach(), this.stack.length);
    for (let d = 1; d <= reach; d += 1) {
      for (const i of [this.focus + d, this.focus - d]) {
        const slice = this.stack[i];
        if (slice && this.needs(slice)) return slice;
      }
    }
    return null;
  }

  async start(slice) {
    const controller = new AbortController();
    const windowKey = this.windowKeyOf(slice);
    const job = { controller, index: slice.index, windowKey };
    this.inflight.set(slice.key, job);
    try {
      const entry =
        slice.strategy === 'raw'
          ? await fetchRaw(slice, controller.signal)
          : await fetchRendered(slice, this.windowFor(slice), windowKey, controller.signal);
      if (this.destroyed || controller.signal.aborted) {
        entry.bitmap?.close();
        return;
      }
      this.failed.delete(slice.key);
      this.store(slice.key, entry);
      this.onLoaded(slice);
    } catch (err) {
      if (err.name === 'AbortError' || this.destroyed) return;
      this.failed.set(slice.key, performance.now());
      this.onError(slice, err);
    } finally {
      if (this.inflight.get(slice.key) === job) this.inflight.delete(slice.key);
      this.pump();
    }
  }

  store(key, entry) {
    const old = this.cache.get(key);
    if (old) {
      this.cachedBytes -= old.bytes;
      if (old.bitmap && old.bitmap !== entry.bitmap) old.bitmap.close();
      this.cache.delete(key);
    }
    this.cache.set(key, entry);
    this.cachedBytes += entry.bytes;
    this.evict();
  }

  evict() {
    const focusKey = this.stack[this.focus]?.key;
    while (this.cachedBytes > this.capBytes && this.cache.size > 1) {
      let victim = null;
      let farthest = -1;
      for (const key of this.cache.keys()) {
        if (key === focusKey) continue;
        const i = this.indexOf.get(key);
        const d = i === undefined ? Infinity : Math.abs(i - this.focus);
        if (d > farthest) {
          farthest = d;
          victim = key;
        }
      }
      if (victim === null) break;
      const e = this.cache.get(victim);
      e.bitmap?.close();
      this.cache.delete(victim);
      this.cachedBytes -= e.bytes;
    }
  }
}

async function fetchRaw(slice, signal) {
  const t0 = performance.now();
  const buffer = await api.rawFrame(slice.ref, slice.bytes, signal);
  const t1 = performance.now();
  const patterns = storedPatterns(buffer, slice.fmt);
  record('raw', 'fetch', t1 - t0);
  record('raw', 'decode', performance.now() - t1);
  return { kind: 'raw', patterns, bytes: buffer.byteLength, range: null };
}

async function fetchRendered(slice, window, windowKey, signal) {
  const t0 = performance.now();
  const blob = await api.renderedFrame(slice.ref, window, signal);
  const t1 = performance.now();
  // No colour management or premultiplication: the pixel values are the server's, unchanged.
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  record('rendered', 'fetch', t1 - t0);
  record('rendered', 'decode', performance.now() - t1);
  return { kind: 'bitmap', bitmap, windowKey, bytes: bitmap.width * bitmap.height * 4 };
}
