// The study list: every study on this node, newest first, with a search box that filters on the
// client (patient name, patient ID, description, modality, accession number, date). The search
// text stays in memory only: it is PHI and must not reach the URL or history.

import * as api from './api.js';
import { h, uniqueId } from './dom.js';
import * as fmt from './format.js';
import { navBar } from './nav.js';
import { notifyError } from './notify.js';
import { studyHref } from './router.js';

let query = ''; // kept across visits of the list, never written anywhere

export function studiesPage(root) {
  const searchId = uniqueId('search');
  const search = h('input', {
    id: searchId,
    type: 'search',
    class: 'search',
    placeholder: 'Name, ID, description, modality',
    autocomplete: 'off',
    spellcheck: 'false',
    value: query,
  });
  const summary = h('p', { class: 'list-summary', role: 'status' });
  const list = h('ul', { class: 'study-list', 'aria-labelledby': 'studies-title' });
  const body = h('div', { class: 'list-body', 'aria-busy': 'true' }, summary, list);
  const page = h(
    'div',
    { class: 'page studies-page' },
    navBar('studies'),
    h(
      'header',
      { class: 'page-head' },
      h(
        'div',
        { class: 'page-title' },
        h('h1', { id: 'studies-title' }, 'Studies'),
        h('p', { class: 'node-line', id: 'node-line' }),
      ),
      h(
        'div',
        { class: 'search-box' },
        h('label', { for: searchId, class: 'visually-hidden' }, 'Search studies'),
        search,
      ),
    ),
    body,
  );
  root.replaceChildren(page);

  const controller = new AbortController();
  let studies = [];

  const render = () => {
    const tokens = normalise(query).split(/\s+/).filter(Boolean);
    const shown = studies.filter((s) => tokens.every((t) => s.haystack.includes(t)));
    list.replaceChildren(...shown.map((s) => studyItem(s.study)));
    if (!studies.length) summary.textContent = 'No studies on this node yet. Import some with “discless import”.';
    else if (!tokens.length) summary.textContent = fmt.count(studies.length, 'study', 'studies');
    else summary.textContent = `${shown.length} of ${fmt.count(studies.length, 'study', 'studies')} match`;
  };

  search.addEventListener('input', () => {
    query = search.value;
    render();
  });

  const nodeInfo = api.node(controller.signal).then(
    (n) => {
      const line = document.getElementById('node-line');
      if (line)
        line.textContent = [
          n.name,
          n.role,
          n.studies != null ? fmt.count(n.studies, 'study', 'studies') : '',
          fmt.bytes(n.bytes),
        ]
          .filter(Boolean)
          .join(' · ');
    },
    (err) => notifyError(err, 'Node information could not be loaded'),
  );

  const load = async () => {
    body.setAttribute('aria-busy', 'true');
    summary.textContent = 'Loading studies…';
    try {
      const all = await api.studies(controller.signal);
      studies = (Array.isArray(all) ? all : []).map((study) => ({ study, haystack: haystackOf(study) }));
      render();
    } catch (err) {
      if (err.name === 'AbortError') return;
      summary.replaceChildren(
        'Studies could not be loaded. ',
        h('button', { type: 'button', class: 'link-button', onclick: () => load() }, 'Try again'),
      );
      notifyError(err, 'Studies could not be loaded');
    } finally {
      body.setAttribute('aria-busy', 'false');
    }
  };
  const loaded = Promise.all([load(), nodeInfo]);

  return {
    ready: () => loaded,
    destroy: () => controller.abort(),
  };
}

function studyItem(s) {
  const name = fmt.personName(s.patient_name) || 'Unnamed patient';
  const who = [s.patient_id, fmt.date(s.patient_birth_date), fmt.sex(s.patient_sex)].filter(Boolean).join(' · ');
  const counts = [
    fmt.count(s.series_count ?? 0, 'series', 'series'),
    fmt.count(s.instance_count ?? 0, 'image'),
    fmt.bytes(s.bytes),
  ]
    .filter(Boolean)
    .join(' · ');
  return h(
    'li',
    {},
    h(
      'a',
      {
        class: 'study-card',
        href: studyHref(s.study_instance_uid),
        dataset: { modalities: (s.modalities ?? []).join(' ') },
      },
      h(
        'span',
        { class: 'study-main' },
        h('span', { class: 'study-name' }, name),
        h('span', { class: 'study-who' }, who),
      ),
      h('span', { class: 'study-date' }, fmt.date(s.study_date)),
      h('span', { class: 'study-desc' }, s.study_description || 'No description'),
      h(
        'span',
        { class: 'study-meta' },
        h(
          'span',
          { class: 'modalities' },
          (s.modalities ?? []).map((m) => h('span', { class: 'modality' }, m)),
        ),
        h('span', { class: 'study-counts' }, counts),
      ),
    ),
  );
}

function haystackOf(s) {
  return normalise(
    [
      s.patient_name,
      fmt.personName(s.patient_name),
      s.patient_id,
      s.study_description,
      s.accession_number,
      (s.modalities ?? []).join(' '),
      s.study_date,
      fmt.date(s.study_date),
      s.short_id,
    ].join(' '),
  );
}

/** Lower case, no accents, DICOM's ^ as a space: "Müller^Jörg" matches "muller jorg". */
function normalise(s) {
  return String(s ?? '')
    .normalize('NFD')
    .replace(/[\u0300-\u036f]/g, '')
    .replace(/\^/g, ' ')
    .toLowerCase();
}
