// The tag panel: every attribute of the image on screen, from GET /api/instances/{sop}/tags,
// with a filter. It follows the viewer: when the slice changes while the panel is open, it loads
// that image's tags (the previous request is aborted). Values are text from the file: they are
// put into the page as text only.

import * as api from './api.js';
import { h, uniqueId } from './dom.js';
import { icon } from './icons.js';
import { notifyError } from './notify.js';

export class TagPanel {
  constructor({ onClose }) {
    this.sop = null; // the instance the panel should show
    this.shownSop = null; // the instance whose tags are in the table
    this.tags = [];
    this.controller = null;
    const filterId = uniqueId('tag-filter');
    this.filter = h('input', {
      id: filterId,
      type: 'search',
      class: 'tag-filter',
      placeholder: 'Filter by tag, name or value',
      autocomplete: 'off',
      oninput: () => this.renderRows(),
    });
    this.caption = h('p', { class: 'tag-caption' });
    this.body = h('tbody');
    this.status = h('p', { class: 'tag-status', role: 'status' });
    this.heading = h('h2', { tabindex: '-1' }, 'Tags');
    this.closeButton = h(
      'button',
      { type: 'button', class: 'icon-button', 'aria-label': 'Close tags', onclick: onClose },
      icon('close'),
    );
    this.el = h(
      'aside',
      { class: 'tag-panel', 'aria-label': 'DICOM tags', hidden: true, 'data-own-keys': true },
      h('div', { class: 'tag-head' }, this.heading, this.caption, this.closeButton),
      h('label', { class: 'visually-hidden', for: filterId }, 'Filter tags'),
      this.filter,
      this.status,
      h(
        'div',
        { class: 'tag-table-wrap', tabindex: '0', role: 'region', 'aria-label': 'Tag list' },
        h(
          'table',
          { class: 'tag-table' },
          h(
            'thead',
            {},
            h(
              'tr',
              {},
              h('th', { scope: 'col' }, 'Tag'),
              h('th', { scope: 'col' }, 'Name'),
              h('th', { scope: 'col' }, 'VR'),
              h('th', { scope: 'col' }, 'Value'),
            ),
          ),
          this.body,
        ),
      ),
    );
  }

  get open() {
    return !this.el.hidden;
  }

  setOpen(open) {
    this.el.hidden = !open;
    if (open) {
      this.load();
      // Focus moves into the panel, but not into the filter: on a phone that would pop the keyboard up.
      this.heading.focus({ preventScroll: true });
    } else {
      this.controller?.abort();
    }
  }

  /** The image on screen changed: sop of the instance, caption like "Image 10 of 120". */
  follow(sop, caption) {
    this.sop = sop;
    this.caption.textContent = caption;
    if (this.open) this.load();
  }

  async load() {
    if (!this.sop || this.sop === this.shownSop) return;
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    const sop = this.sop;
    this.status.textContent = 'Loading tags…';
    try {
      const tags = await api.tags(sop, controller.signal);
      if (controller.signal.aborted) return;
      this.tags = Array.isArray(tags) ? tags : [];
      this.shownSop = sop;
      this.status.textContent = '';
      this.renderRows();
    } catch (err) {
      if (err.name === 'AbortError') return;
      this.status.textContent = 'Tags could not be loaded.';
      notifyError(err, 'Tags could not be loaded');
    }
  }

  renderRows() {
    const q = this.filter.value.trim().toLowerCase();
    const rows = [];
    for (const t of this.tags) {
      const tag = formatTag(t.tag);
      const value = formatValue(t.value);
      if (
        q &&
        ![tag, t.tag, t.keyword, t.vr, value].some((s) =>
          String(s ?? '')
            .toLowerCase()
            .includes(q),
        )
      )
        continue;
      rows.push(
        h(
          'tr',
          {},
          h('td', { class: 'tag-id' }, tag),
          h('td', {}, t.keyword ?? ''),
          h('td', { class: 'tag-vr' }, t.vr ?? ''),
          h('td', { class: 'tag-value' }, value),
        ),
      );
    }
    this.body.replaceChildren(...rows);
    if (this.tags.length && !rows.length) this.status.textContent = 'No tag matches the filter.';
    else if (this.status.textContent === 'No tag matches the filter.') this.status.textContent = '';
  }

  destroy() {
    this.controller?.abort();
    this.el.remove();
  }
}

/** "00100010" → "(0010,0010)". */
function formatTag(tag) {
  const s = String(tag ?? '');
  return /^[0-9a-fA-F]{8}$/.test(s) ? `(${s.slice(0, 4)},${s.slice(4)})`.toUpperCase() : s;
}

function formatValue(v) {
  if (v === null || v === undefined) return '';
  if (Array.isArray(v)) return v.map(formatValue).join(' \\ ');
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}
