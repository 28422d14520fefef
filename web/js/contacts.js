// The Contacts page: every paired device with its role, whether it is connected now, and when
// and with which code it was paired. Removing one also revokes what was shared with it; what it
// already received stays with it, and the page says so.

import * as api from './api.js';
import { confirmButton } from './confirm.js';
import { h } from './dom.js';
import { navBar } from './nav.js';
import { notify, notifyError } from './notify.js';
import { pageHref } from './router.js';
import { dateTime } from './when.js';

export function contactsPage(root) {
  const controller = new AbortController();
  const summary = h('p', { class: 'list-summary', role: 'status' }, 'Loading contacts…');
  const list = h('ul', { class: 'card-list contact-list' });
  root.replaceChildren(
    h(
      'div',
      { class: 'page p2p-page contacts-page' },
      navBar('contacts'),
      h('header', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Contacts')),
      summary,
      list,
    ),
  );

  const load = async () => {
    try {
      const all = await api.contacts(controller.signal);
      list.replaceChildren(...all.map((c) => item(c)));
      summary.replaceChildren(
        all.length
          ? `${all.length} paired ${all.length === 1 ? 'device' : 'devices'}`
          : h('span', {}, 'No contacts yet. ', h('a', { href: pageHref('pair') }, 'Pair with a device'), '.'),
      );
    } catch (err) {
      if (err.name === 'AbortError') return;
      summary.textContent = 'Contacts could not be loaded.';
      notifyError(err, 'Contacts could not be loaded');
    }
  };

  const item = (c) =>
    h(
      'li',
      { class: 'card contact', dataset: { peer: c.peer_id } },
      h(
        'div',
        { class: 'card-main' },
        h('span', { class: 'card-title' }, c.name),
        h(
          'span',
          { class: 'card-meta' },
          h('span', { class: `badge role-${c.role}` }, c.role),
          c.online == null ? '' : h('span', { class: `badge ${c.online ? 'online' : 'offline'}` }, c.online ? 'online' : 'offline'),
          c.for_patient ? h('span', { class: 'badge' }, 'receives a patient’s studies') : '',
          c.awaiting ? h('span', { class: 'badge awaiting' }, 'completes when they come online') : '',
        ),
        h('span', { class: 'card-sub' }, `Paired ${dateTime(c.paired_unix)} · code ${c.sas}`),
        h('span', { class: 'card-sub peer-id' }, c.peer_id),
      ),
      confirmButton(
        'Remove',
        `Remove ${c.name}? Its shares are revoked; what it already received stays with it.`,
        async () => {
          try {
            const r = await api.removeContact(c.peer_id, controller.signal);
            notify(`Removed ${r.name}; ${r.grants_revoked} share(s) revoked.`);
            await load();
          } catch (err) {
            notifyError(err, 'Not removed');
          }
        },
        { 'aria-label': `Remove ${c.name}` },
      ),
    );

  const loaded = load();
  return { ready: () => loaded, destroy: () => controller.abort() };
}
