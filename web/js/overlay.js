// The text in the image's corners, as radiologists expect it: patient top left, study and series
// top right, slice position bottom left, window and zoom bottom right. It is DOM text over the
// canvas (crisp at any pixel ratio) and ignores pointers; the canvas label carries the same
// essentials for screen readers.

import { h } from './dom.js';

const CORNERS = ['tl', 'tr', 'bl', 'br'];

export class Overlay {
  constructor() {
    this.corners = Object.fromEntries(CORNERS.map((c) => [c, h('div', { class: `ov ov-${c}` })]));
    this.el = h('div', { class: 'overlay', 'aria-hidden': 'true' }, Object.values(this.corners));
    this.shown = {};
  }

  /** lines: {tl: [...], tr: [...], bl: [...], br: [...]} of strings (empty ones are skipped). */
  update(lines) {
    for (const c of CORNERS) {
      const text = (lines[c] ?? []).filter(Boolean);
      const joined = text.join('\n');
      if (this.shown[c] === joined) continue;
      this.shown[c] = joined;
      this.corners[c].replaceChildren(...text.map((t) => h('div', {}, t)));
    }
  }
}
