// The Share page of one study (#/study/{uid}/share): give it to a contact for a while, see who
// has it, revoke. The page states the limit of revoking plainly: it stops further transfers,
// it cannot make a device forget what it already received and decrypted.

import * as api from './api.js';
import { confirmButton } from './confirm.js';
import { h, uniqueId } from './dom.js';
import * as fmt from './format.js';
import { icon } from './icons.js';
import { navBar } from './nav.js';
import { notify, notifyError } from './notify.js';
import { pageHref, studyHref } from './router.js';
import { until } from './when.js';

const EXPIRY_CHOICES = [
  ['1d', '1 day'],
  ['7d', '7 days'],
  ['30d', '30 days'],
  ['365d', '1 year'],
];

export function sharePage(root, route) {
  const controller = new AbortController();
  const uid = route.study;
  const contactId = uniqueId('contact');
  const expiryId = uniqueId('share-expiry');
  const title = h('h1', { tabindex: '-1' }, 'Share study');
  const subtitle = h('p', { class: 'node-line' });
  const contact = h('select', { id: contactId, class: 'input' });
  const expiry = h(
    'select',
    { id: expiryId, class: 'input' },
    EXPIRY_CHOICES.map(([v, label]) => h('option', { value: v, selected: v === '30d' }, label)),
  );
  const shareButton = h('button', { type: 'button', class: 'button primary share-go' }, 'Share');
  const outcome = h('p', { class: 'share-outcome', role: 'status' });
  const list = h('ul', { class: 'card-list share-list' });
  const listSummary = h('p', { class: 'list-summary' });
  root.replaceChildren(
    h(
      'div',
      { class: 'page p2p-page share-page' },
      navBar('share'),
      h(
        'header',
        { class: 'page-head' },
        h(
          'div',
          { class: 'page-title with-back' },
          h('a', { class: 'icon-button back', href: studyHref(uid), 'aria-label': 'Back to the study', title: 'Back to the study' }, icon('back')),
          h('div', {}, title, subtitle),
        ),
      ),
      h(
        'section',
        { class: 'panel', 'aria-labelledby': `${contactId}-h` },
        h('h2', { id: `${contactId}-h` }, 'Share with a contact'),
        h('div', { class: 'field' }, h('label', { for: contactId }, 'Contact'), contact),
        h('div', { class: 'field' }, h('label', { for: expiryId }, 'For'), expiry),
        shareButton,
        outcome,
        h(
          'p',
          { class: 'hint truth' },
          'The study goes to that device encrypted to it alone. Revoking stops any further transfer, ',
          'but it cannot make the other device forget what it already received.',
        ),
      ),
      h('section', { class: 'panel' }, h('h2', {}, 'Shared with'), listSummary, list),
    ),
  );

  const loadShares = async () => {
    try {
      const all = await api.shares(uid, controller.signal);
      const shown = all;
      listSummary.textContent = shown.length ? '' : 'Nobody yet.';
      list.replaceChildren(...shown.map(shareItem));
    } catch (err) {
      if (err.name !== 'AbortError') notifyError(err, 'Shares could not be loaded');
    }
  };

  const shareItem = (s) =>
    h(
      'li',
      { class: 'card', dataset: { peer: s.peer_id, state: s.state } },
      h(
        'div',
        { class: 'card-main' },
        h('span', { class: 'card-title' }, s.name || '(removed contact)'),
        h(
          'span',
          { class: 'card-meta' },
          h('span', { class: `badge state-${s.state}` }, s.state),
          s.active ? `expires ${until(s.expires_unix)}` : 'no longer in force',
        ),
      ),
      s.active
        ? confirmButton(
            'Revoke',
            `Revoke for ${s.name || 'this contact'}? No further transfers; what it already received stays with it.`,
            async () => {
              try {
                const r = await api.revoke(uid, s.peer_id, controller.signal);
                notify(r.notified ? 'Revoked; the contact was told.' : 'Revoked; the contact is refused from now on.');
                await loadShares();
              } catch (err) {
                notifyError(err, 'Not revoked');
              }
            },
            { 'aria-label': `Revoke for ${s.name}` },
          )
        : '',
    );

  shareButton.addEventListener('click', async () => {
    if (!contact.value) return;
    shareButton.disabled = true;
    outcome.textContent = 'Sharing…';
    try {
      const r = await api.share(uid, contact.value, expiry.value, controller.signal);
      outcome.replaceChildren(
        `Shared with ${r.name} (${r.state}). `,
        r.note ? `${r.note}. ` : '',
        h('a', { href: pageHref('transfers') }, 'Follow the transfer'),
      );
      await loadShares();
    } catch (err) {
      if (err.name === 'AbortError') return;
      outcome.textContent = `Not shared: ${err.message}`;
    } finally {
      shareButton.disabled = !contact.value;
    }
  });

  const loaded = Promise.all([
    api.study(uid, controller.signal).then(
      (s) => {
        title.textContent = `Share: ${fmt.personName(s.patient_name) || 'Unnamed patient'}`;
        subtitle.textContent = [fmt.date(s.study_date), s.study_description].filter(Boolean).join(' · ');
      },
      (err) => notifyError(err, 'Study could not be loaded'),
    ),
    api.contacts(controller.signal).then(
      (all) => {
        contact.replaceChildren(
          ...all.map((c) => h('option', { value: c.peer_id }, `${c.name} (${c.role}${c.online ? ', online' : ''})`)),
        );
        shareButton.disabled = !all.length;
        if (!all.length)
          outcome.replaceChildren('No contacts yet. ', h('a', { href: pageHref('pair') }, 'Pair with a device'), ' first.');
      },
      (err) => notifyError(err, 'Contacts could not be loaded'),
    ),
    loadShares(),
  ]);
  return { ready: () => loaded, destroy: () => controller.abort() };
}
