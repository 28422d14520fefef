// Grayscale pixel pipeline in the browser, so that window/level drags are instant.
//
// Stored bit pattern → value (mask to Bits Stored, sign-extend when Pixel Representation is 1)
// → modality value (Rescale Slope/Intercept, PS3.3 C.11.1) → linear VOI window (PS3.3
// C.11.2.1.2.1) → 8-bit grey, inverted for MONOCHROME1. All of it is folded into one lookup table
// indexed by the stored bit pattern (256 or 65536 entries of packed RGBA), so drawing a frame is
// a single typed-array pass: out32[i] = lut[pattern[i]].
//
// The server's /rendered endpoint implements the same formula; the browser test compares both.

/** Window presets: 'file' is each image's own window; the others are CT windows in Hounsfield units. */
export const PRESETS = Object.freeze([
  { id: 'file', label: 'File', title: 'Window stored in the file' },
  { id: 'brain', label: 'Brain', center: 40, width: 80, ct: true },
  { id: 'lung', label: 'Lung', center: -600, width: 1500, ct: true },
  { id: 'bone', label: 'Bone', center: 300, width: 1500, ct: true },
  { id: 'abdomen', label: 'Abdomen', center: 40, width: 400, ct: true },
]);

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The pixel description of an instance, with DICOM's defaults filled in. */
export function pixelFormat(inst) {
  const bitsAllocated = inst.bits_allocated ?? 16;
  return {
    rows: inst.rows,
    columns: inst.columns,
    samples: inst.samples_per_pixel ?? 1,
    bitsAllocated,
    bitsStored: Math.min(inst.bits_stored ?? bitsAllocated, bitsAllocated),
    signed: inst.pixel_representation === 1,
    slope: finiteOr(inst.rescale_slope, 1) || 1,
    intercept: finiteOr(inst.rescale_intercept, 0),
    photometric: String(inst.photometric_interpretation ?? '')
      .trim()
      .toUpperCase(),
  };
}

/** True when the browser can window this image itself: one sample, 8 or 16 bits, MONOCHROME1/2. */
export function browserCanWindow(fmt) {
  return (
    fmt.samples === 1 &&
    (fmt.bitsAllocated === 8 || fmt.bitsAllocated === 16) &&
    (fmt.photometric === 'MONOCHROME1' || fmt.photometric === 'MONOCHROME2') &&
    fmt.rows > 0 &&
    fmt.columns > 0
  );
}

/** Bytes of one decoded native frame. */
export function frameBytes(fmt) {
  return fmt.rows * fmt.columns * fmt.samples * Math.ceil(fmt.bitsAllocated / 8);
}

/** Views a little-endian raw frame as stored bit patterns (Uint8Array or Uint16Array). */
export function storedPatterns(buffer, fmt) {
  if (fmt.bitsAllocated === 8) return new Uint8Array(buffer);
  const words = new Uint16Array(buffer);
  if (!LITTLE_ENDIAN) {
    for (let i = 0; i < words.length; i += 1) words[i] = ((words[i] & 0xff) << 8) | (words[i] >> 8);
  }
  return words;
}

/** The window stored in the file, or null. Accepts a number or the first of several values. */
export function fileWindow(inst) {
  const center = first(inst.window_center);
  const width = first(inst.window_width);
  return Number.isFinite(center) && Number.isFinite(width) && width > 0 ? { center, width } : null;
}

/** A window spanning the frame's modality values, for images that carry none. */
export function rangeWindow(patterns, fmt) {
  const decode = decoder(fmt);
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < patterns.length; i += 1) {
    const v = decode(patterns[i]);
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo > hi) return { center: 0, width: 1 };
  const a = lo * fmt.slope + fmt.intercept;
  const b = hi * fmt.slope + fmt.intercept;
  const min = Math.min(a, b);
  const width = Math.max(1, Math.abs(b - a) + 1);
  const fine = width < 20;
  return { center: round(min + width / 2, fine), width: Math.max(1, round(width, fine)) };
}

/** PS3.3 C.11.2.1.2.1 linear VOI: modality value x → 0..255 for window (c, w). */
export function voiLinear(x, c, w) {
  const width = Math.max(1, w);
  if (x <= c - 0.5 - (width - 1) / 2) return 0;
  if (x > c - 0.5 + (width - 1) / 2) return 255;
  return Math.round(((x - (c - 0.5)) / (width - 1) + 0.5) * 255);
}

/** The RGBA lookup table for every stored bit pattern of `fmt`, windowed with `win`. */
export function windowLut(fmt, win) {
  const size = fmt.bitsAllocated === 8 ? 256 : 65536;
  const bytes = new Uint8Array(size * 4);
  const decode = decoder(fmt);
  const invert = fmt.photometric === 'MONOCHROME1';
  for (let p = 0; p < size; p += 1) {
    const grey = voiLinear(decode(p) * fmt.slope + fmt.intercept, win.center, win.width);
    const y = invert ? 255 - grey : grey;
    const o = p * 4;
    bytes[o] = y;
    bytes[o + 1] = y;
    bytes[o + 2] = y;
    bytes[o + 3] = 255;
  }
  // Built byte by byte, read as words: correct whatever the platform's byte order.
  return new Uint32Array(bytes.buffer);
}

/** Writes the windowed frame into `imageData` (same size as the frame). */
export function applyLut(patterns, lut, imageData) {
  const px = imageData.data;
  const out = new Uint32Array(px.buffer, px.byteOffset, px.length >> 2);
  const n = Math.min(out.length, patterns.length);
  for (let i = 0; i < n; i += 1) out[i] = lut[patterns[i]];
}

/** Rounds a window value the way drags and presets produce it (integers, or 0.01 for small ranges). */
export function round(v, fine = false) {
  return fine ? Math.round(v * 100) / 100 : Math.round(v);
}

function decoder(fmt) {
  const bits = fmt.bitsStored;
  const mask = bits >= 32 ? 0xffffffff : 2 ** bits - 1;
  if (!fmt.signed) return (p) => p & mask;
  const shift = 32 - bits;
  return (p) => ((p & mask) << shift) >> shift;
}

function first(v) {
  const x = Array.isArray(v) ? v[0] : v;
  return typeof x === 'string' ? Number.parseFloat(x) : x;
}

function finiteOr(v, fallback) {
  const x = typeof v === 'string' ? Number.parseFloat(v) : v;
  return Number.isFinite(x) ? x : fallback;
}
