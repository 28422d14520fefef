// The node's HTTP interface: the JSON API under /api and DICOMweb (PS3.18) under /dicomweb.
// Everything is same-origin. Failures become ApiError with the node's own message
// ({"error": "..."}), which is safe to show: the node never puts PHI in an error body.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
  }
}

const enc = encodeURIComponent;

async function request(url, accept, signal) {
  let res;
  try {
    res = await fetch(url, { headers: { Accept: accept }, signal, credentials: 'same-origin' });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError('the node did not answer', 0);
  }
  if (!res.ok) throw await errorOf(res);
  return res;
}

async function errorOf(res) {
  let message = `${res.status} ${res.statusText}`.trim();
  try {
    if ((res.headers.get('content-type') || '').includes('json')) {
      const body = await res.json();
      if (body && typeof body.error === 'string' && body.error) message = body.error;
    }
  } catch {
    // An unreadable error body: the status line says enough.
  }
  return new ApiError(message, res.status);
}

async function json(url, signal) {
  const res = await request(url, 'application/json', signal);
  return res.json();
}

/** GET /api/node → {peer_id, name, role, studies, instances, bytes}. */
export const node = (signal) => json('/api/node', signal);
/** GET /api/studies → study summaries, newest first. */
export const studies = (signal) => json('/api/studies', signal);
/** GET /api/studies/{uid} → a study with its series and their instances in viewing order. */
export const study = (uid, signal) => json(`/api/studies/${enc(uid)}`, signal);
/** GET /api/instances/{sop}/tags → [{tag, keyword, vr, value}]. */
export const tags = (sop, signal) => json(`/api/instances/${enc(sop)}/tags`, signal);
/** GET /api/audit → {entries: [...]}. */
export const audit = (signal) => json('/api/audit', signal);

/** A frame's address: {study, series, sop, frame} with frame 1-based, as in WADO-RS. */
export function frameUrl(ref) {
  return `/dicomweb/studies/${enc(ref.study)}/series/${enc(ref.series)}/instances/${enc(ref.sop)}/frames/${ref.frame}`;
}

/** The server-rendered frame, windowed with {center, width} in modality units, or the file default when null. */
export function renderedUrl(ref, window) {
  const url = `${frameUrl(ref)}/rendered`;
  return window ? `${url}?window=${window.center},${window.width},linear` : url;
}

export function thumbnailUrl(study, series, size = 128) {
  return `/dicomweb/studies/${enc(study)}/series/${enc(series)}/thumbnail?viewport=${size},${size}`;
}

/** Fetches a frame's decoded native pixels (little endian) as an ArrayBuffer of `expectedBytes`. */
export async function rawFrame(ref, expectedBytes, signal) {
  const res = await request(frameUrl(ref), 'application/octet-stream', signal);
  const type = res.headers.get('content-type') || '';
  let body = await res.arrayBuffer();
  if (body.byteLength !== expectedBytes && type.startsWith('multipart/related')) {
    // WADO-RS may wrap frames in multipart/related; take the first part's body.
    body = firstPart(body, type) ?? body;
  }
  if (body.byteLength !== expectedBytes) {
    throw new ApiError(`frame has ${body.byteLength} bytes, expected ${expectedBytes}`, res.status);
  }
  return body;
}

/** Fetches a server-rendered frame as an image Blob. */
export async function renderedFrame(ref, window, signal) {
  const res = await request(renderedUrl(ref, window), 'image/png', signal);
  return res.blob();
}

function firstPart(buffer, contentType) {
  const m = /boundary="?([^";]+)"?/i.exec(contentType);
  if (!m) return null;
  const bytes = new Uint8Array(buffer);
  const delimiter = new TextEncoder().encode(`--${m[1]}`);
  const start = indexOf(bytes, delimiter, 0);
  if (start < 0) return null;
  const headersEnd = indexOf(bytes, new Uint8Array([13, 10, 13, 10]), start);
  if (headersEnd < 0) return null;
  const bodyStart = headersEnd + 4;
  const next = indexOf(bytes, new Uint8Array([13, 10, ...delimiter]), bodyStart);
  if (next < 0) return null;
  return buffer.slice(bodyStart, next);
}

function indexOf(haystack, needle, from) {
  outer: for (let i = from; i <= haystack.length - needle.length; i += 1) {
    for (let j = 0; j < needle.length; j += 1) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
