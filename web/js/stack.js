// What the viewer scrolls through: the frames of one series, in the order the node gave its
// instances (already viewing order), each frame of a multi-frame instance a slice of its own.
// Each slice knows how it is fetched: raw pixels windowed in the browser, or the server's
// rendering (colour, unusual bit depths, or when the page is opened with ?render=server).

import { browserCanWindow, fileWindow, frameBytes, pixelFormat } from './windowing.js';

/** True when the page was opened with ?render=server: every frame comes server-rendered. */
export function serverRenderForced() {
  return new URLSearchParams(location.search).get('render') === 'server';
}

/** True when an instance has pixels to show (SR, PDF and the like have no rows/columns). */
export function isImage(inst) {
  return inst.rows > 0 && inst.columns > 0;
}

/** The slices of `series` in `study`: [{index, ref, instance, fmt, strategy, bytes, fileWindow, spacing, key}]. */
export function buildStack(study, series, { forceServer = serverRenderForced() } = {}) {
  const slices = [];
  for (const inst of series.instances ?? []) {
    if (!isImage(inst)) continue;
    const fmt = pixelFormat(inst);
    const raw = !forceServer && browserCanWindow(fmt);
    const frames = Math.max(1, inst.number_of_frames ?? 1);
    for (let frame = 1; frame <= frames; frame += 1) {
      slices.push({
        index: slices.length,
        key: `${inst.sop_instance_uid}/${frame}`,
        ref: {
          study: study.study_instance_uid,
          series: series.series_instance_uid,
          sop: inst.sop_instance_uid,
          frame,
        },
        frames,
        instance: inst,
        fmt,
        strategy: raw ? 'raw' : 'rendered',
        // What one cached frame costs in memory: raw patterns, or a decoded RGBA bitmap.
        bytes: raw ? frameBytes(fmt) : fmt.rows * fmt.columns * 4,
        fileWindow: fileWindow(inst),
        spacing: pixelSpacing(inst),
        windowable: fmt.samples === 1,
      });
    }
  }
  return slices;
}

/** Pixel Spacing as {row, col} in mm (row = between rows, col = between columns), or null. */
function pixelSpacing(inst) {
  const ps = inst.pixel_spacing;
  if (!Array.isArray(ps) || ps.length < 2) return null;
  const row = Number(ps[0]);
  const col = Number(ps[1]);
  return row > 0 && col > 0 ? { row, col } : null;
}
