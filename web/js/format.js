// Display formats for DICOM values. Dates are shown as ISO 8601 (2024-01-15): unambiguous for
// every reader, unlike 01/02/2024.

/** DICOM PN "Family^Given^Middle^Prefix^Suffix" (first component group) → "FAMILY, Given Middle". */
export function personName(pn) {
  if (!pn) return '';
  const alphabetic = String(pn).split('=')[0];
  const [family = '', given = '', middle = '', prefix = '', suffix = ''] = alphabetic.split('^');
  const first = [prefix, given, middle].filter(Boolean).join(' ');
  const last = [family, suffix].filter(Boolean).join(' ');
  if (last && first) return `${last}, ${first}`;
  return last || first;
}

/** DICOM DA "YYYYMMDD" → "YYYY-MM-DD"; anything else is shown as it came. */
export function date(da) {
  const s = String(da ?? '').trim();
  const m = /^(\d{4})\.?(\d{2})\.?(\d{2})$/.exec(s);
  return m ? `${m[1]}-${m[2]}-${m[3]}` : s;
}

/** DICOM TM "HHMMSS.frac" → "HH:MM". */
export function time(tm) {
  const s = String(tm ?? '').trim();
  const m = /^(\d{2}):?(\d{2})/.exec(s);
  return m ? `${m[1]}:${m[2]}` : '';
}

/** Patient's sex code → a word. */
export function sex(code) {
  return (
    { F: 'female', M: 'male', O: 'other' }[
      String(code ?? '')
        .trim()
        .toUpperCase()
    ] ?? ''
  );
}

/** A byte count → "12.3 MB" (SI units, as disks and networks count). */
export function bytes(n) {
  if (!Number.isFinite(n) || n < 0) return '';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** "1 series", "3 series"; "1 image", "4 images". */
export function count(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

/** A number for overlays: integers stay integers, others get at most `digits` decimals. */
export function num(v, digits = 1) {
  if (!Number.isFinite(v)) return '';
  return Number.isInteger(v) ? String(v) : v.toFixed(digits).replace(/\.?0+$/, '');
}
