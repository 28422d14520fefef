// Hash routing: #/ (study list), #/study/{uid}, #/study/{uid}/series/{uid}, #/study/{uid}/share,
// and the peer-to-peer pages #/pair, #/contacts, #/transfers, #/audit.
// Only UIDs ever go into the URL: never names, IDs or search text, which are PHI and would end up
// in browser history, bookmarks and logs.

const PLAIN = ['pair', 'contacts', 'transfers', 'audit'];

/** Parses a location hash into a route: {name: 'studies'|'study'|'share'|'pair'|…|'notfound', study?, series?}. */
export function parseHash(hash) {
  const parts = String(hash).replace(/^#\/?/, '').split('/').filter(Boolean).map(safeDecode);
  if (parts.length === 0) return { name: 'studies' };
  if (parts.length === 1 && PLAIN.includes(parts[0])) return { name: parts[0] };
  if (parts[0] === 'study' && parts.length === 2) return { name: 'study', study: parts[1] };
  if (parts[0] === 'study' && parts.length === 3 && parts[2] === 'share') return { name: 'share', study: parts[1] };
  if (parts[0] === 'study' && parts.length === 4 && parts[2] === 'series') {
    return { name: 'study', study: parts[1], series: parts[3] };
  }
  return { name: 'notfound' };
}

function safeDecode(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

export function studiesHref() {
  return '#/';
}

export function studyHref(study, series) {
  const base = `#/study/${encodeURIComponent(study)}`;
  return series ? `${base}/series/${encodeURIComponent(series)}` : base;
}

export function shareHref(study) {
  return `#/study/${encodeURIComponent(study)}/share`;
}

/** The page of one of the plain routes: pageHref('pair') → '#/pair'. */
export function pageHref(name) {
  return `#/${name}`;
}

/** Rewrites the hash without a history entry and without a hashchange (the page already shows it). */
export function replaceHash(href) {
  if (location.hash !== href) history.replaceState(history.state, '', href);
}

/** Calls onRoute(route) now and on every hash change; returns a function that stops listening. */
export function startRouter(onRoute) {
  const listener = () => onRoute(parseHash(location.hash));
  window.addEventListener('hashchange', listener);
  listener();
  return () => window.removeEventListener('hashchange', listener);
}
