// The study page: who and what (header), the series strip with thumbnails, the viewer, and the
// tag panel. The route #/study/{uid}/series/{uid} selects a series; choosing another one in the
// strip rewrites the hash in place (no history entry per click, no reload of the study).

import * as api from './api.js';
import { setViewer } from './debug.js';
import { h, uniqueId } from './dom.js';
import * as fmt from './format.js';
import { icon } from './icons.js';
import { notifyError } from './notify.js';
import { replaceHash, shareHref, studiesHref, studyHref } from './router.js';
import { isImage } from './stack.js';
import { TagPanel } from './tags.js';
import { Viewer } from './viewer.js';

/** Following the slice with the tag panel waits this long, so scrolling does not flood the node. */
const TAGS_FOLLOW_MS = 150;

export function studyPage(root, route) {
  const controller = new AbortController();
  let study = null;
  let selected = null;
  let tagsTimer = 0;

  const title = h('h1', { class: 'study-name', tabindex: '-1' }, 'Loading study…');
  const subtitle = h('p', { class: 'study-sub' });
  const tagPanel = new TagPanel({ onClose: () => setTags(false) });
  tagPanel.el.id = uniqueId('tag-panel');
  const tagsButton = h(
    'button',
    {
      type: 'button',
      class: 'tool tags-toggle',
      'aria-expanded': 'false',
      disabled: true,
      'aria-controls': tagPanel.el.id,
      title: 'DICOM tags of the image on screen',
      onclick: () => setTags(!tagPanel.open),
    },
    icon('tags'),
    h('span', { class: 'tool-label' }, 'Tags'),
  );
  const strip = h('ul', { class: 'series-list' });
  const body = h('div', { class: 'study-body' });
  const viewer = new Viewer({ onSliceChange: (slice) => followSlice(slice) });
  const page = h(
    'div',
    { class: 'page study-page' },
    h(
      'header',
      { class: 'study-head' },
      h(
        'a',
        { class: 'icon-button back', href: studiesHref(), 'aria-label': 'All studies', title: 'All studies' },
        icon('back'),
      ),
      h('div', { class: 'study-title' }, title, subtitle),
      h(
        'a',
        { class: 'tool share-link', href: shareHref(route.study), title: 'Share this study with a contact' },
        icon('share'),
        h('span', { class: 'tool-label' }, 'Share'),
      ),
      tagsButton,
    ),
    body,
  );
  body.append(
    h('nav', { class: 'series-strip', 'aria-label': 'Series' }, strip),
    h('div', { class: 'viewer-host' }, viewer.root),
    tagPanel.el,
  );
  root.replaceChildren(page);
  tagPanel.el.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      setTags(false);
      tagsButton.focus();
    }
  });

  function setTags(open) {
    tagPanel.setOpen(open);
    tagsButton.setAttribute('aria-expanded', String(open));
    page.classList.toggle('with-tags', open);
  }

  function followSlice(slice) {
    clearTimeout(tagsTimer);
    tagsTimer = setTimeout(() => {
      if (slice) tagPanel.follow(slice.ref.sop, `Image ${slice.index + 1} of ${viewer.count()}`);
    }, TAGS_FOLLOW_MS);
  }

  function selectSeries(uid) {
    const series = study.series.find((s) => s.series_instance_uid === uid) ?? firstImageSeries(study);
    if (!series) return;
    if (series !== selected) {
      selected = series;
      for (const b of strip.querySelectorAll('[data-series]'))
        b.setAttribute('aria-pressed', String(b.dataset.series === series.series_instance_uid));
      viewer.setSeries(study, series);
      tagsButton.disabled = false;
    }
    replaceHash(studyHref(study.study_instance_uid, series.series_instance_uid));
  }

  const loaded = (async () => {
    try {
      study = await api.study(route.study, controller.signal);
      study.series ??= [];
    } catch (err) {
      if (err.name === 'AbortError') return;
      title.textContent = 'Study could not be loaded';
      body.replaceChildren(
        h(
          'div',
          { class: 'study-error' },
          h('p', {}, err.status === 404 ? 'This node holds no such study.' : `The node answered: ${err.message}`),
          h('p', {}, h('a', { href: studiesHref() }, 'Back to the studies')),
        ),
      );
      notifyError(err, 'Study could not be loaded');
      return;
    }
    title.textContent = fmt.personName(study.patient_name) || 'Unnamed patient';
    subtitle.textContent = [fmt.date(study.study_date), study.study_description, study.patient_id]
      .filter(Boolean)
      .join(' · ');
    strip.replaceChildren(...study.series.map((s) => seriesItem(study, s, () => selectSeries(s.series_instance_uid))));
    if (!firstImageSeries(study)) viewer.setIdleText('This study has no images to show.');
    selectSeries(route.series);
  })();

  return {
    viewer,
    async ready() {
      await loaded;
      if (selected) await viewer.ready();
    },
    /** Same study: just select the series; another study: let the app build a new page. */
    update(next) {
      if (next.name !== 'study' || next.study !== route.study || !study) return false;
      selectSeries(next.series);
      return true;
    },
    focus: () => title.focus({ preventScroll: true }),
    destroy() {
      controller.abort();
      clearTimeout(tagsTimer);
      viewer.destroy();
      tagPanel.destroy();
      setViewer(null);
    },
  };
}

function firstImageSeries(study) {
  return study.series.find((s) => (s.instances ?? []).some(isImage)) ?? null;
}

function seriesItem(study, s, onSelect) {
  const withPixels = (s.instances ?? []).filter(isImage);
  const images = withPixels.length;
  const frames = withPixels.reduce((n, i) => n + Math.max(1, i.number_of_frames ?? 1), 0);
  const heading = [s.series_number != null ? `${s.series_number}` : '', s.series_description || s.modality || 'Series']
    .filter(Boolean)
    .join(' · ');
  const meta = [
    s.modality,
    images ? fmt.count(images, 'image') : 'no images',
    frames > images ? fmt.count(frames, 'frame') : '',
  ]
    .filter(Boolean)
    .join(' · ');
  const text = h(
    'span',
    { class: 'series-text' },
    h('span', { class: 'series-desc' }, heading),
    h('span', { class: 'series-meta' }, meta),
  );
  if (!images)
    return h(
      'li',
      {},
      h('div', { class: 'series-item no-images' }, h('span', { class: 'thumb thumb-empty' }, s.modality || '—'), text),
    );
  const thumb = h('img', {
    class: 'thumb',
    alt: '',
    width: 128,
    height: 128,
    loading: 'lazy',
    decoding: 'async',
    fetchpriority: 'low',
    src: api.thumbnailUrl(study.study_instance_uid, s.series_instance_uid),
  });
  thumb.addEventListener(
    'error',
    () => thumb.replaceWith(h('span', { class: 'thumb thumb-empty' }, s.modality || '—')),
    { once: true },
  );
  return h(
    'li',
    {},
    h(
      'button',
      {
        type: 'button',
        class: 'series-item',
        'aria-pressed': 'false',
        dataset: { series: s.series_instance_uid },
        onclick: onSelect,
      },
      thumb,
      text,
    ),
  );
}
