//! Greyscale display: stored value → modality value (rescale) → VOI (window or VOI LUT) →
//! MONOCHROME1 inversion → 8 bits.
//!
//! The whole chain is evaluated once per distinct stored value of the frame (at most 65 536
//! for 16-bit data) into a lookup table, then applied with one lookup per pixel; only 32-bit
//! data with a wider range falls back to evaluating it per pixel.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::pixels::{words, Attrs, Decoded};
use super::{functional_group_element, Window};

/// Largest value range turned into a lookup table (entries, one byte each).
const MAX_LUT_ENTRIES: u64 = 1 << 20;

/// VOI LUT Function (0028,1056), PS3.3 C.11.2.1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

/// A VOI LUT Sequence item: modality value `first` maps to `entries[0]`.
#[derive(Debug, Clone)]
pub(super) struct VoiLut {
    first: i64,
    entries: Vec<u16>,
    /// Largest possible entry: the scale of the output.
    max: f64,
}

/// Modality and VOI attributes for one frame.
#[derive(Debug, Clone)]
pub(super) struct Params {
    pub(super) slope: f64,
    pub(super) intercept: f64,
    pub(super) file_window: Option<(Window, VoiFunction)>,
    voi_lut: Option<VoiLut>,
    /// Pixel Padding Value .. Range Limit, in stored values: left out of the default window.
    padding: Option<(i32, i32)>,
}

impl Params {
    /// Reads the frame's parameters: top-level attributes first, then the enhanced
    /// multi-frame functional groups.
    pub(super) fn read(obj: &InMemDicomObject, attrs: &Attrs, frame: u32) -> Self {
        let find = |group: Tag, tag: Tag| {
            obj.get(tag)
                .or_else(|| functional_group_element(obj, frame, group, tag))
        };
        let float = |group: Tag, tag: Tag| {
            find(group, tag)
                .and_then(|e| e.to_float64().ok())
                .filter(|v| v.is_finite())
        };
        let transformation = tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE;
        let slope = float(transformation, tags::RESCALE_SLOPE)
            .filter(|s| *s != 0.0)
            .unwrap_or(1.0);
        let intercept = float(transformation, tags::RESCALE_INTERCEPT).unwrap_or(0.0);
        let voi = tags::FRAME_VOILUT_SEQUENCE;
        let function = match find(voi, tags::VOILUT_FUNCTION)
            .and_then(|e| e.to_str().ok())
            .as_deref()
            .map(str::trim)
        {
            Some("LINEAR_EXACT") => VoiFunction::LinearExact,
            Some("SIGMOID") => VoiFunction::Sigmoid,
            _ => VoiFunction::Linear,
        };
        let file_window = match (
            float(voi, tags::WINDOW_CENTER),
            float(voi, tags::WINDOW_WIDTH),
        ) {
            (Some(center), Some(width)) => {
                Some((Window { center, width }, function)).filter(|(w, f)| usable(w, *f))
            }
            _ => None,
        };
        let stored = |tag: Tag| {
            let v = obj.get(tag)?.to_int::<i32>().ok()?;
            // US-or-SS attributes read as US hold a signed image's negative values as > 32767.
            Some(if attrs.signed && attrs.bits_stored <= 16 && v > 0x7FFF {
                v - 0x1_0000
            } else {
                v
            })
        };
        let padding = stored(tags::PIXEL_PADDING_VALUE).map(|value| {
            let limit = stored(tags::PIXEL_PADDING_RANGE_LIMIT).unwrap_or(value);
            (value.min(limit), value.max(limit))
        });
        Self {
            slope,
            intercept,
            file_window,
            voi_lut: voi_lut(obj, attrs),
            padding,
        }
    }

    fn modality(&self, stored: i32) -> f64 {
        f64::from(stored) * self.slope + self.intercept
    }
}

/// Maps the frame to 8-bit grey, one byte per pixel.
pub(super) fn to_display(
    decoded: &Decoded,
    attrs: &Attrs,
    params: &Params,
    request: Option<Window>,
    invert: bool,
) -> Vec<u8> {
    // Frames of up to 16 bits (nearly all) go through offsets, which also give the range;
    // others through the slower per-pixel fold and map.
    let offsets = decoded.offsets(attrs);
    let range = match &offsets {
        Some(offsets) => offsets.range(),
        None => Some(
            decoded.fold_stored(attrs, (i32::MAX, i32::MIN), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            }),
        )
        .filter(|(lo, hi)| lo <= hi),
    };
    let Some((lo, hi)) = range else {
        return Vec::new();
    };
    let voi = match request.filter(|w| usable(w, VoiFunction::Linear)) {
        Some(window) => Voi::Window(window, VoiFunction::Linear),
        None => match (&params.voi_lut, params.file_window) {
            (Some(lut), _) => Voi::Lut(lut),
            (None, Some((window, function))) => Voi::Window(window, function),
            (None, None) => {
                let (content_lo, content_hi) = content_range(decoded, attrs, params, (lo, hi));
                let (a, b) = (params.modality(content_lo), params.modality(content_hi));
                Voi::Range(a.min(b), a.max(b))
            }
        },
    };
    let display = |stored: i32| {
        let y = voi.apply(params.modality(stored));
        let y = if invert { 1.0 - y } else { y };
        (y * 255.0).round().clamp(0.0, 255.0) as u8
    };
    // Offsets span at most 65 536 values, so they always get a table.
    let span = (i64::from(hi) - i64::from(lo)) as u64 + 1;
    if span > MAX_LUT_ENTRIES {
        return decoded.map_stored(attrs, display);
    }
    let lut: Vec<u8> = (lo..=hi).map(display).collect();
    match offsets {
        Some(offsets) => offsets.lookup(&lut),
        None => decoded.map_stored(attrs, |v| {
            lut.get(v.wrapping_sub(lo) as usize).copied().unwrap_or(0)
        }),
    }
}

/// The range of stored values without the padding, for the default window; the whole range
/// when there is no padding or nothing else. A second pass over the samples, made only when
/// the default window is used and the frame has padding.
fn content_range(
    decoded: &Decoded,
    attrs: &Attrs,
    params: &Params,
    (lo, hi): (i32, i32),
) -> (i32, i32) {
    let Some((from, to)) = params.padding.filter(|(from, to)| *from <= hi && *to >= lo) else {
        return (lo, hi);
    };
    let (content_lo, content_hi) =
        decoded.fold_stored(attrs, (i32::MAX, i32::MIN), |(lo, hi), v| {
            // One unsigned compare and selects, not a branch that would mispredict at every
            // edge of the padding.
            let content = v.wrapping_sub(from) as u32 > to.wrapping_sub(from) as u32;
            (
                lo.min(if content { v } else { i32::MAX }),
                hi.max(if content { v } else { i32::MIN }),
            )
        });
    if content_lo > content_hi {
        (lo, hi)
    } else {
        (content_lo, content_hi)
    }
}

/// The VOI step, mapping a modality value to 0.0..=1.0.
#[derive(Debug)]
enum Voi<'a> {
    Window(Window, VoiFunction),
    Lut(&'a VoiLut),
    /// The default: lowest to highest modality value of the frame.
    Range(f64, f64),
}

impl Voi<'_> {
    fn apply(&self, x: f64) -> f64 {
        match *self {
            // PS3.3 C.11.2.1.2.1: the centre and width are offset by half a unit (the
            // window covers whole stored values).
            Voi::Window(Window { center, width }, VoiFunction::Linear) => {
                let (c, w) = (center - 0.5, width - 1.0);
                if x <= c - w / 2.0 {
                    0.0
                } else if x > c + w / 2.0 {
                    1.0
                } else {
                    (x - c) / w + 0.5
                }
            }
            // C.11.2.1.3.2
            Voi::Window(Window { center, width }, VoiFunction::LinearExact) => {
                ((x - center) / width + 0.5).clamp(0.0, 1.0)
            }
            // C.11.2.1.3.1
            Voi::Window(Window { center, width }, VoiFunction::Sigmoid) => {
                1.0 / (1.0 + (-4.0 * (x - center) / width).exp())
            }
            Voi::Lut(lut) => {
                let last = lut.entries.len() as i64 - 1;
                let index = (x.round() as i64 - lut.first).clamp(0, last);
                let entry = lut.entries.get(index as usize).copied().unwrap_or(0);
                f64::from(entry) / lut.max
            }
            Voi::Range(lo, hi) if hi > lo => ((x - lo) / (hi - lo)).clamp(0.0, 1.0),
            Voi::Range(..) => 0.0,
        }
    }
}

/// LINEAR needs a width of at least 1 (it divides by width − 1); the others any positive
/// width.
fn usable(window: &Window, function: VoiFunction) -> bool {
    let min = match function {
        VoiFunction::Linear => 1.0,
        _ => f64::MIN_POSITIVE,
    };
    window.center.is_finite() && window.width.is_finite() && window.width >= min
}

/// The first item of VOI LUT Sequence (0028,3010), if it is well formed.
fn voi_lut(obj: &InMemDicomObject, attrs: &Attrs) -> Option<VoiLut> {
    let item = obj.get(tags::VOILUT_SEQUENCE)?.items()?.first()?;
    let descriptor = item.get(tags::LUT_DESCRIPTOR)?.to_multi_int::<i32>().ok()?;
    let [count, first, bits, ..] = descriptor[..] else {
        return None;
    };
    let count = usize::try_from(count)
        .ok()
        .filter(|c| *c > 0)
        .unwrap_or(65_536);
    // The first mapped value is US or SS like the pixel data it applies to.
    let first = if attrs.signed && first > 0x7FFF {
        first - 0x1_0000
    } else {
        first
    };
    let Some(dicom_core::value::Value::Primitive(data)) =
        item.get(tags::LUT_DATA).map(|e| e.value())
    else {
        return None;
    };
    let mut entries = words(data);
    entries.truncate(count);
    let used = entries
        .iter()
        .max()
        .map_or(0, |m| u16::BITS - m.leading_zeros());
    // Devices declare 16 bits for entries that span 12 (dicom-rs saw Agfa CR do it): then
    // believe the data. Data wider than declared is believed too, so no entry exceeds 1.0.
    let declared = u32::try_from(bits).ok().filter(|b| (1..=16).contains(b))?;
    let bits = if used > declared || (declared == 16 && used > 0) {
        used
    } else {
        declared
    };
    (!entries.is_empty()).then(|| VoiLut {
        first: i64::from(first),
        entries,
        max: f64::from((1u32 << bits) - 1),
    })
}
