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

async function request(url, accept, signal, init = {}) {
  let res;
  try {
    res = await fetch(url, {
      ...init,
      headers: { Accept: accept, ...init.headers },
      signal,
      credentials: 'same-origin',
    });
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

/** Sends JSON with `method` and reads the JSON answer. */
async function send(method, url, body, signal) {
  const init = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'Content-Type': 'application/json' };
  }
  const res = await request(url, 'application/json', signal, init);
  return res.json();
}

// Peer to peer (node/src/http/p2p.rs). Pairing answers 503 when the node's network is not running.

/** GET /api/p2p → {peer_id, listen, external, contacts_online: [{peer_id, name}]}. */
export const p2p = (signal) => json('/api/p2p', signal);
/** POST /api/pair → {ticket, expires_unix, for_patient, peer_id, addrs, svg}. */
export const newTicket = (opts, signal) => send('POST', '/api/pair', opts, signal);
/** POST /api/pair/status → {state: 'waiting'|'paired'|'expired', paired}; waits up to `wait` s. */
export const ticketStatus = (ticket, wait, signal) => send('POST', '/api/pair/status', { ticket, wait }, signal);
/** POST /api/pair/accept → {peer_id, name, role, sas, paired_unix, queued_at?}. */
export const acceptTicket = (ticket, signal) => send('POST', '/api/pair/accept', { ticket }, signal);
/** GET /api/contacts → [{peer_id, name, role, paired_unix, sas, online, for_patient, awaiting}]. */
export const contacts = (signal) => json('/api/contacts', signal);
/** DELETE /api/contacts/{peer} → {removed, name, grants_revoked}. */
export const removeContact = (peer, signal) => send('DELETE', `/api/contacts/${enc(peer)}`, undefined, signal);
/** GET /api/studies/{uid}/shares → [{peer_id, name, state, active, expires_unix, delivered_unix}]. */
export const shares = (uid, signal) => json(`/api/studies/${enc(uid)}/shares`, signal);
/** POST /api/share → {study_uid, peer_id, name, state, expires_unix, note}. */
export const share = (study, to, expires, signal) => send('POST', '/api/share', { study, to, expires }, signal);
/** POST /api/revoke → {study_uid, peer_id, revoked, notified}. */
export const revoke = (study, from, signal) => send('POST', '/api/revoke', { study, from }, signal);
/** GET /api/transfers → both directions: [{direction, study_uid, peer_name, state, bytes_done, bytes_total, ...}]. */
export const transfers = (signal) => json('/api/transfers', signal);

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
