// The audit log: what this node did (imports, pairings, shares, deliveries, revocations), newest
// first, and whether the log's hash chain verifies, i.e. whether no entry was changed or removed.

import * as api from './api.js';
import { h } from './dom.js';
import { navBar } from './nav.js';
import { notifyError } from './notify.js';
import { dateTime } from './when.js';

/** Entries shown at once: a long log stays quick on a phone; the CLI has the rest. */
const SHOWN = 500;

export function auditPage(root) {
  const controller = new AbortController();
  const verdict = h('p', { class: 'list-summary', role: 'status' }, 'Loading the audit log…');
  const list = h('ol', { class: 'audit-list' });
  root.replaceChildren(
    h(
      'div',
      { class: 'page p2p-page audit-page' },
      navBar('audit'),
      h('header', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Audit log')),
      verdict,
      list,
    ),
  );
  const loaded = api.audit(controller.signal).then(
    (a) => {
      const entries = Array.isArray(a.entries) ? a.entries.slice().reverse() : [];
      verdict.textContent = a.verified
        ? `${entries.length} entries; the chain verifies (nothing was altered or removed).`
        : `The chain does not verify: ${a.error ?? 'unknown reason'}`;
      verdict.classList.toggle('error-text', !a.verified);
      list.replaceChildren(...entries.slice(0, SHOWN).map(entry));
    },
    (err) => {
      verdict.textContent = 'The audit log could not be loaded.';
      notifyError(err, 'Audit log');
    },
  );
  return { ready: () => loaded, destroy: () => controller.abort() };
}

function entry(e) {
  const details = e.detail && typeof e.detail === 'object' && Object.keys(e.detail).length ? e.detail : null;
  return h(
    'li',
    { class: 'audit-entry' },
    h('span', { class: 'audit-when' }, dateTime(Math.floor((e.at_unix_ms ?? 0) / 1000))),
    h('span', { class: 'audit-what' }, String(e.action ?? '')),
    details ? h('code', { class: 'audit-details' }, JSON.stringify(details)) : '',
  );
}
