// The viewer's controls: tools, window presets and view actions (the tool row), and the slice
// bar (cine play/pause, speed, slice slider, position). They only call viewer methods and
// reflect viewer state in update(); no state lives here.

import { FPS_CHOICES } from './cine.js';
import { h, uniqueId } from './dom.js';
import { icon } from './icons.js';
import { PRESETS } from './windowing.js';

const TOOLS = [
  { mode: 'scroll', label: 'Scroll', key: 's' },
  { mode: 'wl', label: 'W/L', key: 'w', title: 'Window/level (right-drag with a mouse)' },
  { mode: 'pan', label: 'Pan', key: 'p' },
  { mode: 'zoom', label: 'Zoom', key: 'z', title: 'Zoom (Ctrl + wheel, or pinch)' },
  { mode: 'measure', label: 'Measure', key: 'm', title: 'Measure a length' },
];

function toolButton({ label, iconName, title, key, onclick, cls = 'tool' }) {
  return h(
    'button',
    {
      type: 'button',
      class: cls,
      title: title ? `${title}${key ? ` [${key}]` : ''}` : null,
      'aria-keyshortcuts': key ?? null,
      onclick,
    },
    icon(iconName),
    h('span', { class: 'tool-label' }, label),
  );
}

export function buildControls(viewer) {
  const modeButtons = new Map(
    TOOLS.map((t) => [
      t.mode,
      toolButton({
        label: t.label,
        iconName: t.mode,
        title: t.title ?? t.label,
        key: t.key,
        onclick: () => viewer.setMode(t.mode),
      }),
    ]),
  );
  for (const b of modeButtons.values()) b.setAttribute('aria-pressed', 'false');

  const presetButtons = new Map(
    PRESETS.map((p) => [
      p.id,
      h(
        'button',
        {
          type: 'button',
          class: 'chip',
          'aria-pressed': 'false',
          title: p.center === undefined ? p.title : `Level ${p.center}, width ${p.width}`,
          dataset: { preset: p.id },
          onclick: () => viewer.setPreset(p.id),
        },
        p.label,
      ),
    ]),
  );

  const fit = toolButton({
    label: 'Fit',
    iconName: 'fit',
    title: 'Fit to screen',
    key: 'f',
    onclick: () => viewer.fit(),
    cls: 'tool action',
  });
  const reset = toolButton({
    label: 'Reset',
    iconName: 'reset',
    title: 'Reset view and window',
    key: 'r',
    onclick: () => viewer.reset(),
    cls: 'tool action',
  });
  const clear = toolButton({
    label: 'Clear',
    iconName: 'clear',
    title: 'Remove all measurements',
    onclick: () => viewer.clearMeasurements(),
    cls: 'tool action',
  });

  const presets = h('div', { class: 'presets', role: 'group', 'aria-label': 'Window presets' }, [
    ...presetButtons.values(),
  ]);
  // On a phone the presets sit in their own row, shown while the W/L tool is active (CSS).
  const tools = h(
    'div',
    { class: 'viewer-tools' },
    h(
      'div',
      { class: 'tool-scroller' },
      h('div', { class: 'tool-group', role: 'group', 'aria-label': 'Tool' }, [...modeButtons.values()]),
      h('div', { class: 'tool-group', role: 'group', 'aria-label': 'View' }, fit, reset, clear),
    ),
    presets,
  );

  const play = h('button', {
    type: 'button',
    class: 'tool play',
    'aria-pressed': 'false',
    onclick: () => viewer.toggleCine(),
  });
  const fpsId = uniqueId('fps');
  const fps = h(
    'select',
    { id: fpsId, class: 'fps', onchange: (e) => viewer.setFps(Number(e.target.value)) },
    FPS_CHOICES.map((f) => h('option', { value: f }, `${f} fps`)),
  );
  const sliderId = uniqueId('slice');
  const slider = h('input', {
    id: sliderId,
    class: 'slice-slider',
    type: 'range',
    min: 1,
    max: 1,
    step: 1,
    value: 1,
    oninput: (e) => viewer.setSlice(Number(e.target.value) - 1),
  });
  const position = h('output', { class: 'slice-pos', for: sliderId, 'aria-live': 'off' });
  const sliceBar = h(
    'div',
    { class: 'slice-bar' },
    play,
    h('label', { class: 'visually-hidden', for: fpsId }, 'Cine speed'),
    fps,
    h('label', { class: 'visually-hidden', for: sliderId }, 'Slice'),
    slider,
    position,
  );

  let shownPlaying = null;
  function update() {
    const s = viewer.controlState();
    for (const [mode, b] of modeButtons) b.setAttribute('aria-pressed', String(mode === s.mode));
    modeButtons.get('wl').disabled = !s.canWindow;
    presets.hidden = !s.canWindow;
    for (const p of PRESETS) {
      const b = presetButtons.get(p.id);
      b.setAttribute('aria-pressed', String(p.id === s.preset));
      b.hidden = p.ct && !s.hounsfield;
    }
    clear.disabled = s.measurements === 0;
    if (shownPlaying !== s.playing) {
      shownPlaying = s.playing;
      play.replaceChildren(
        icon(s.playing ? 'pause' : 'play'),
        h('span', { class: 'visually-hidden' }, s.playing ? 'Pause cine' : 'Play cine'),
      );
      play.setAttribute('aria-pressed', String(s.playing));
      play.title = `${s.playing ? 'Pause' : 'Play'} cine [Space]`;
    }
    play.disabled = s.count < 2;
    if (fps.value !== String(s.fps)) fps.value = String(s.fps);
    slider.max = String(Math.max(1, s.count));
    slider.disabled = s.count < 2;
    if (slider.value !== String(s.index + 1)) slider.value = String(s.index + 1);
    slider.setAttribute('aria-valuetext', s.count ? `Slice ${s.index + 1} of ${s.count}` : 'No slices');
    position.textContent = s.count ? `${s.index + 1} / ${s.count}` : '–';
  }

  return { tools, sliceBar, slider, update };
}
