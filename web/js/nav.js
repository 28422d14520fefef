// The bar that links the node's pages: studies, pairing, contacts, transfers and the audit log.
// The current page is marked with aria-current, so screen readers say where one is.

import { h } from './dom.js';
import { pageHref, studiesHref } from './router.js';

const LINKS = [
  ['studies', 'Studies', studiesHref()],
  ['pair', 'Pair', pageHref('pair')],
  ['contacts', 'Contacts', pageHref('contacts')],
  ['transfers', 'Transfers', pageHref('transfers')],
  ['audit', 'Audit', pageHref('audit')],
];

/** A <nav> with every page, `current` (a route name) marked. */
export function navBar(current) {
  return h(
    'nav',
    { class: 'main-nav', 'aria-label': 'Pages' },
    LINKS.map(([name, label, href]) =>
      h('a', { href, class: 'nav-link', 'aria-current': name === current ? 'page' : null }, label),
    ),
  );
}
