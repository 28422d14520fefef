// Discless web viewer: entry point. Routes (router.js) pick a page: the study list (studies.js)
// or a study with its viewer (study.js). Plain ES modules served by the node, no build step.
// Nothing here logs: the pages show patients' data and the console is not a place for it.

import { installHook, setPage } from './js/debug.js';
import { h } from './js/dom.js';
import { startRouter, studiesHref } from './js/router.js';
import { studiesPage } from './js/studies.js';
import { studyPage } from './js/study.js';

const TITLES = { studies: 'Studies', study: 'Study', notfound: 'Not found' };

const root = document.getElementById('app');
let page = null;
let first = true;

function show(route) {
  if (page && page.update && page.update(route)) return;
  page?.destroy();
  if (route.name === 'studies') page = studiesPage(root);
  else if (route.name === 'study') page = studyPage(root, route);
  else page = notFoundPage(root);
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
