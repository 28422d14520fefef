// Length measurements. A line is kept in image pixel coordinates on the slice it was drawn on,
// so it follows zoom and pan. Its length in mm uses Pixel Spacing (row spacing for the vertical
// component, column spacing for the horizontal); without Pixel Spacing it is given in pixels.
// (When the node reports Imager Pixel Spacing instead, as for radiographs, the length is at the
// detector, not at the patient: the label does not pretend otherwise beyond "mm".)

const COLOUR = '#ffd54a';
const SHADOW = 'rgba(0, 0, 0, 0.85)';
/** A drag shorter than this (CSS px) is a tap, not a measurement. */
const MIN_DRAG_PX = 3;

/** Length of a→b (image px) as {px, mm}; mm is null without spacing. */
export function lengthOf(a, b, spacing) {
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const px = Math.hypot(dx, dy);
  const mm = spacing ? Math.hypot(dx * spacing.col, dy * spacing.row) : null;
  return { px, mm };
}

/** "12.3 mm", or "123.4 px" when there is no spacing. */
export function label(length) {
  return length.mm === null ? `${length.px.toFixed(1)} px` : `${length.mm.toFixed(1)} mm`;
}

export class Measurements {
  constructor() {
    this.bySlice = new Map(); // slice key → [{a, b, length}]
    this.draft = null; // {sliceKey, a, b, spacing, startClient}
    this.last = null;
  }

  begin(sliceKey, point, spacing, client) {
    this.draft = { sliceKey, a: point, b: point, spacing, startClient: client };
  }

  move(point) {
    if (this.draft) this.draft.b = point;
  }

  /** Finishes the line; returns it, or null when the drag was too short to mean anything. */
  end(client) {
    const d = this.draft;
    this.draft = null;
    if (!d || Math.hypot(client.x - d.startClient.x, client.y - d.startClient.y) < MIN_DRAG_PX) return null;
    const m = { a: d.a, b: d.b, length: lengthOf(d.a, d.b, d.spacing) };
    if (!this.bySlice.has(d.sliceKey)) this.bySlice.set(d.sliceKey, []);
    this.bySlice.get(d.sliceKey).push(m);
    this.last = m;
    return m;
  }

  cancel() {
    this.draft = null;
  }

  clear() {
    this.bySlice.clear();
    this.draft = null;
  }

  count() {
    let n = 0;
    for (const list of this.bySlice.values()) n += list.length;
    return n;
  }

  /** Lines to draw on a slice, the one being drawn included. */
  forSlice(sliceKey) {
    const list = [...(this.bySlice.get(sliceKey) ?? [])];
    if (this.draft && this.draft.sliceKey === sliceKey) {
      const d = this.draft;
      list.push({ a: d.a, b: d.b, length: lengthOf(d.a, d.b, d.spacing), draft: true });
    }
    return list;
  }
}

/** Draws lines with end ticks and labels; toCanvas maps image px → canvas CSS px. */
export function drawMeasurements(ctx, lines, toCanvas) {
  ctx.save();
  ctx.lineCap = 'round';
  ctx.font = '600 13px system-ui, sans-serif';
  ctx.textBaseline = 'middle';
  for (const line of lines) {
    const a = toCanvas(line.a.x, line.a.y);
    const b = toCanvas(line.b.x, line.b.y);
    for (const [width, colour] of [
      [4, SHADOW],
      [1.5, COLOUR],
    ]) {
      ctx.lineWidth = width;
      ctx.strokeStyle = colour;
      ctx.beginPath();
      ctx.moveTo(a.x, a.y);
      ctx.lineTo(b.x, b.y);
      ctx.stroke();
      for (const p of [a, b]) {
        ctx.beginPath();
        ctx.arc(p.x, p.y, 3, 0, 2 * Math.PI);
        ctx.stroke();
      }
    }
    const text = label(line.length);
    const tx = b.x + (b.x >= a.x ? 8 : -8);
    ctx.textAlign = b.x >= a.x ? 'left' : 'right';
    ctx.lineWidth = 3;
    ctx.strokeStyle = SHADOW;
    ctx.strokeText(text, tx, b.y);
    ctx.fillStyle = COLOUR;
    ctx.fillText(text, tx, b.y);
  }
  ctx.restore();
}
