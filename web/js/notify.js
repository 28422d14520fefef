// Non-blocking messages (errors from the node, failed image loads) in a polite live region.
// A message repeated while it is still shown bumps a counter instead of stacking copies, so a
// burst of failed prefetches gives one toast, not fifty.

import { h } from './dom.js';

const SHOW_MS = 8000;
const shown = new Map(); // text → {el, count, timer}

function region() {
  let el = document.getElementById('toasts');
  if (!el) {
    el = h('div', { id: 'toasts', class: 'toasts', role: 'status', 'aria-live': 'polite' });
    document.body.append(el);
  }
  return el;
}

/** Shows a message; kind is 'error' or 'info'. */
export function notify(text, kind = 'info') {
  const existing = shown.get(text);
  if (existing) {
    existing.count += 1;
    existing.counter.textContent = ` (×${existing.count})`;
    clearTimeout(existing.timer);
    existing.timer = setTimeout(() => dismiss(text), SHOW_MS);
    return;
  }
  const counter = h('span', { class: 'toast-count' });
  const el = h(
    'div',
    { class: `toast toast-${kind}` },
    h('span', { class: 'toast-text' }, text, counter),
    h(
      'button',
      { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss message', onclick: () => dismiss(text) },
      '×',
    ),
  );
  region().append(el);
  shown.set(text, { el, counter, count: 1, timer: setTimeout(() => dismiss(text), SHOW_MS) });
}

/** Shows an error (an ApiError's message is already safe to show: the node never puts PHI in it). */
export function notifyError(err, context) {
  if (err && err.name === 'AbortError') return;
  const reason = err && err.message ? err.message : String(err);
  notify(context ? `${context}: ${reason}` : reason, 'error');
}

function dismiss(text) {
  const entry = shown.get(text);
  if (!entry) return;
  clearTimeout(entry.timer);
  entry.el.remove();
  shown.delete(text);
}
