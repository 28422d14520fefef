// The Transfers page: studies coming in from contacts and going out to them, with progress.
// It polls the node, quickly while something moves and slowly when all is still; a progress
// bar per transfer, a link to the study once it can be viewed.

import * as api from './api.js';
import { h } from './dom.js';
import * as fmt from './format.js';
import { navBar } from './nav.js';
import { notifyError } from './notify.js';
import { studyHref } from './router.js';

/** Polling period while a transfer runs: a bar that moves every second feels live. */
const ACTIVE_MS = 1000;
/** Polling period when nothing moves: new offers still show up soon. */
const IDLE_MS = 4000;
const MOVING = new Set(['fetching', 'offered', 'pending']);

export function transfersPage(root) {
  const controller = new AbortController();
  let timer = 0;
  const summary = h('p', { class: 'list-summary', role: 'status' }, 'Loading transfers…');
  const list = h('ul', { class: 'card-list transfer-list' });
  root.replaceChildren(
    h(
      'div',
      { class: 'page p2p-page transfers-page' },
      navBar('transfers'),
      h('header', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Transfers')),
      summary,
      list,
    ),
  );

  let firstLoad = null;
  const poll = async () => {
    let moving = false;
    try {
      const all = await api.transfers(controller.signal);
      all.sort((a, b) => (a.direction === b.direction ? 0 : a.direction === 'in' ? -1 : 1));
      list.replaceChildren(...all.map(item));
      summary.textContent = all.length ? '' : 'No transfers yet. Share a study from its page.';
      moving = all.some((t) => MOVING.has(t.state));
    } catch (err) {
      if (err.name === 'AbortError') return;
      summary.textContent = 'Transfers could not be loaded; trying again.';
      notifyError(err, 'Transfers could not be loaded');
    }
    if (!controller.signal.aborted) timer = setTimeout(poll, moving ? ACTIVE_MS : IDLE_MS);
  };
  firstLoad = poll();

  return {
    ready: () => firstLoad,
    destroy() {
      controller.abort();
      clearTimeout(timer);
    },
  };
}

function item(t) {
  const total = Math.max(0, t.bytes_total ?? 0);
  const done = Math.min(total, Math.max(0, t.bytes_done ?? 0));
  const pct = total ? Math.floor((done / total) * 100) : t.state === 'complete' || t.state === 'delivered' ? 100 : 0;
  const label = `${t.direction === 'in' ? 'From' : 'To'} ${t.peer_name}, study ${t.short_id}`;
  const viewable = t.direction === 'out' || t.state === 'complete' || (t.blobs_done ?? 0) > 0;
  const rate = t.rate_bytes_per_sec > 0 ? ` · ${fmt.bytes(t.rate_bytes_per_sec)}/s` : '';
  const blobs = t.direction === 'in' && t.blobs_total ? ` · ${t.blobs_done} of ${fmt.count(t.blobs_total, 'image')}` : '';
  return h(
    'li',
    { class: 'card transfer', dataset: { study: t.study_uid, direction: t.direction, state: t.state } },
    h(
      'div',
      { class: 'card-main' },
      h(
        'span',
        { class: 'card-title' },
        h('span', { class: `badge dir-${t.direction}` }, t.direction === 'in' ? '↓ in' : '↑ out'),
        ' ',
        t.peer_name,
        ' · ',
        viewable ? h('a', { href: studyHref(t.study_uid) }, `study ${t.short_id}`) : `study ${t.short_id}`,
      ),
      h('progress', { class: 'transfer-bar', max: 100, value: pct, 'aria-label': label }),
      h(
        'span',
        { class: 'card-meta' },
        h('span', { class: `badge state-${t.state}` }, t.state),
        `${fmt.bytes(done)} of ${fmt.bytes(total)} (${pct} %)${blobs}${rate}`,
      ),
      t.error ? h('span', { class: 'card-sub error-text' }, `Last error: ${t.error}`) : '',
    ),
  );
}
