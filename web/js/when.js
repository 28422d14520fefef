// Times the peer-to-peer pages show: instants from the node (Unix seconds) and what is left
// until one. Local time, ISO-like, so every reader reads it the same way.

/** Unix seconds → "2024-01-15 14:03" in local time. */
export function dateTime(unix) {
  if (!Number.isFinite(unix)) return '';
  const d = new Date(unix * 1000);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** Seconds → "3 days", "5 h", "12 min", "40 s": the largest unit that fits. */
export function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s >= 2 * 86400) return `${Math.floor(s / 86400)} days`;
  if (s >= 3600) return `${Math.floor(s / 3600)} h`;
  if (s >= 60) return `${Math.floor(s / 60)} min`;
  return `${s} s`;
}

/** "in 3 days" or "expired". */
export function until(unix) {
  const left = unix - Date.now() / 1000;
  return left > 0 ? `in ${span(left)}` : 'expired';
}
