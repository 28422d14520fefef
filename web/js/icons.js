// Line icons (24×24, stroked with currentColor), drawn here so the viewer ships no image files.
// Every icon sits next to a visible text label or inside a button with an aria-label.

const NS = 'http://www.w3.org/2000/svg';

const PATHS = {
  scroll: 'M4 8l8-4 8 4-8 4z M4 12.5l8 4 8-4 M4 17l8 4 8-4',
  wl: 'M12 4a8 8 0 1 0 0 16a8 8 0 1 0 0-16z M12 4v16',
  pan: 'M12 3v18 M3 12h18 M9 6l3-3 3 3 M9 18l3 3 3-3 M6 9l-3 3 3 3 M18 9l3 3-3 3',
  zoom: 'M10.5 4a6.5 6.5 0 1 0 0 13a6.5 6.5 0 1 0 0-13z M15.5 15.5L21 21 M10.5 8v5 M8 10.5h5',
  measure: 'M3 17L17 3l4 4L7 21z M7 13l2 2 M10 10l2 2 M13 7l2 2',
  fit: 'M4 9V4h5 M20 9V4h-5 M4 15v5h5 M20 15v5h-5',
  reset: 'M5 12a7 7 0 1 0 2-4.9 M5 4v4h4',
  clear: 'M5 7h14 M10 7V4h4v3 M7 7l1 13h8l1-13',
  play: 'M8 5v14l11-7z',
  pause: 'M7 5h3v14H7z M14 5h3v14h-3z',
  tags: 'M4 6h16 M4 12h16 M4 18h10',
  back: 'M15 5l-7 7 7 7',
  close: 'M6 6l12 12 M18 6L6 18',
  share: 'M12 15V3 M7 8l5-5 5 5 M5 12v8h14v-8',
};

/** An inline SVG icon, hidden from assistive technology. */
export function icon(name) {
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  svg.setAttribute('class', `icon icon-${name}`);
  const path = document.createElementNS(NS, 'path');
  path.setAttribute('d', PATHS[name] ?? '');
  svg.append(path);
  return svg;
}
