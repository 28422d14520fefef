//! Colour display: RGB as is, YBR_FULL and YBR_FULL_422 converted to RGB (PS3.3 C.7.6.3.1.2),
//! and PALETTE COLOR through the image's own red, green and blue lookup tables, which
//! dicom-pixeldata does not apply (it would show the indices as grey).

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::pixels::{words, Attrs, Decoded, Layout};
use super::RenderError;

/// RGB or YBR samples to interleaved 8-bit RGB.
pub(super) fn to_rgb(decoded: &Decoded, attrs: &Attrs) -> Result<Vec<u8>, RenderError> {
    if decoded.layout == Layout::Ybr422 {
        let mut out = Vec::with_capacity(decoded.data.len() / 2 * 3);
        for pair in decoded.data.chunks_exact(4) {
            let (cb, cr) = (pair[2], pair[3]);
            out.extend_from_slice(&ybr(pair[0], cb, cr));
            out.extend_from_slice(&ybr(pair[1], cb, cr));
        }
        return Ok(out);
    }
    let mut rgb = match attrs.bits_allocated {
        8 => decoded.data.to_vec(),
        16 => {
            // Scale Bits Stored to 8 bits; the decoder already put samples in the low bits.
            let shift = u32::from(attrs.high_bit + 1 - attrs.bits_stored);
            let max = (1u32 << attrs.bits_stored) - 1;
            decoded
                .data
                .chunks_exact(2)
                .map(|c| {
                    let v = (u32::from(u16::from_le_bytes([c[0], c[1]])) >> shift) & max;
                    ((v * 255 + max / 2) / max) as u8
                })
                .collect()
        }
        bits => {
            return Err(attrs.unsupported(format!("{bits}-bit colour samples")));
        }
    };
    if decoded.photometric.starts_with("YBR_FULL") {
        for pixel in rgb.chunks_exact_mut(3) {
            let converted = ybr(pixel[0], pixel[1], pixel[2]);
            pixel.copy_from_slice(&converted);
        }
    }
    Ok(rgb)
}

/// One YBR_FULL pixel to RGB.
fn ybr(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (f32::from(y), f32::from(cb) - 128.0, f32::from(cr) - 128.0);
    let clamp = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    [
        clamp(y + 1.402 * cr),
        clamp(y - 0.344_136 * cb - 0.714_136 * cr),
        clamp(y + 1.772 * cb),
    ]
}

/// PALETTE COLOR indices to interleaved 8-bit RGB.
pub(super) fn palette(
    obj: &InMemDicomObject,
    decoded: &Decoded,
    attrs: &Attrs,
) -> Result<Vec<u8>, RenderError> {
    let red = Channel::read(obj, attrs, Colour::Red)?;
    let green = Channel::read(obj, attrs, Colour::Green)?;
    let blue = Channel::read(obj, attrs, Colour::Blue)?;
    let pixels = decoded.map_stored(attrs, |index| {
        [red.get(index), green.get(index), blue.get(index)]
    });
    Ok(pixels.concat())
}

#[derive(Debug, Clone, Copy)]
enum Colour {
    Red,
    Green,
    Blue,
}

impl Colour {
    /// (descriptor, data, segmented data) tags.
    fn tags(self) -> (Tag, Tag, Tag) {
        match self {
            Colour::Red => (
                tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
                tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            ),
            Colour::Green => (
                tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
                tags::SEGMENTED_GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            ),
            Colour::Blue => (
                tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
                tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
                tags::SEGMENTED_BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            ),
        }
    }
}

/// One palette lookup table, reduced to 8-bit entries. Index `first` maps to `entries[0]`;
/// indices outside the table take its first or last entry (PS3.3 C.7.6.3.1.5).
#[derive(Debug)]
struct Channel {
    first: i32,
    entries: Vec<u8>,
}

impl Channel {
    fn read(obj: &InMemDicomObject, attrs: &Attrs, colour: Colour) -> Result<Self, RenderError> {
        let (descriptor_tag, data_tag, segmented_tag) = colour.tags();
        let bad = |what: &str| attrs.unsupported(format!("palette colour: {colour:?} {what}"));
        let descriptor = obj
            .get(descriptor_tag)
            .and_then(|e| e.to_multi_int::<i32>().ok())
            .ok_or_else(|| bad("lookup table descriptor missing"))?;
        let [count, first, bits, ..] = descriptor[..] else {
            return Err(bad("lookup table descriptor has fewer than 3 values"));
        };
        let count = usize::try_from(count)
            .ok()
            .filter(|c| *c > 0)
            .unwrap_or(65_536);
        // The first mapped value is US or SS, like the pixel data.
        let first = if attrs.signed && first > 0x7FFF {
            first - 0x1_0000
        } else {
            first
        };
        let data = match obj.get(data_tag).map(|e| e.value()) {
            Some(Value::Primitive(data)) => data,
            _ if obj.get(segmented_tag).is_some() => {
                return Err(attrs.unsupported("segmented palette colour lookup tables".into()))
            }
            _ => return Err(bad("lookup table data missing")),
        };
        let entries: Vec<u8> = match (bits, data) {
            // 8-bit entries are meant to be packed one a byte, but many writers pad each to a
            // 16-bit word: tell them apart by length.
            (8, PrimitiveValue::U8(bytes)) if bytes.len() < count * 2 => bytes.to_vec(),
            (8, data) => {
                let words = words(data);
                let wide = words.iter().take(count).any(|w| *w > 0xFF);
                words
                    .iter()
                    .map(|w| if wide { (w >> 8) as u8 } else { *w as u8 })
                    .collect()
            }
            (16, data) => {
                let words = words(data);
                // Some declare 16 bits and store 8-bit values; scaling those down would
                // give a black image.
                let narrow = words.iter().take(count).all(|w| *w <= 0xFF);
                words
                    .iter()
                    .map(|w| if narrow { *w as u8 } else { (w >> 8) as u8 })
                    .collect()
            }
            _ => return Err(bad(&format!("lookup table of {bits} bits per entry"))),
        };
        let mut entries = entries;
        entries.truncate(count);
        if entries.is_empty() {
            return Err(bad("lookup table data is empty"));
        }
        Ok(Self { first, entries })
    }

    fn get(&self, index: i32) -> u8 {
        let last = self.entries.len() - 1;
        let at = (i64::from(index) - i64::from(self.first)).clamp(0, last as i64) as usize;
        self.entries.get(at).copied().unwrap_or(0)
    }
}
