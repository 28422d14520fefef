// Discless web viewer: entry point. Routes (router.js) pick a page: the study list (studies.js),
// a study with its viewer (study.js), and the peer-to-peer pages: pairing (pair.js), contacts,
// sharing a study (share.js), transfers, and the audit log. Plain ES modules served by the node, no build step.
// Nothing here logs: the pages show patients' data and the console is not a place for it.

import { auditPage } from './js/audit.js';
import { contactsPage } from './js/contacts.js';
import { installHook, setPage } from './js/debug.js';
import { h } from './js/dom.js';
import { pairPage } from './js/pair.js';
import { startRouter, studiesHref } from './js/router.js';
import { sharePage } from './js/share.js';
import { studiesPage } from './js/studies.js';
import { studyPage } from './js/study.js';
import { transfersPage } from './js/transfers.js';

const TITLES = {
  studies: 'Studies',
  study: 'Study',
  share: 'Share',
  pair: 'Pair',
  contacts: 'Contacts',
  transfers: 'Transfers',
  audit: 'Audit log',
  notfound: 'Not found',
};
const PAGES = {
  studies: (root) => studiesPage(root),
  study: studyPage,
  share: sharePage,
  pair: (root) => pairPage(root),
  contacts: (root) => contactsPage(root),
  transfers: (root) => transfersPage(root),
  audit: (root) => auditPage(root),
};

const root = document.getElementById('app');
let page = null;
let first = true;

function show(route) {
  if (page && page.update && page.update(route)) return;
  page?.destroy();
  page = (PAGES[route.name] ?? notFoundPage)(root, route);
  setPage(page);
  // Generic titles only: the title goes into history and bookmarks, a patient's name must not.
  document.title = `${TITLES[route.name]} · Discless`;
  if (!first) (page.focus ?? (() => root.querySelector('h1')?.focus({ preventScroll: true })))();
  first = false;
}

function notFoundPage(el) {
  el.replaceChildren(
    h(
      'div',
      { class: 'page notfound-page' },
      h('h1', { tabindex: '-1' }, 'Nothing here'),
      h('p', {}, h('a', { href: studiesHref() }, 'Back to the studies')),
    ),
  );
  return { ready: () => Promise.resolve(), destroy() {} };
}

installHook();
startRouter(show);
