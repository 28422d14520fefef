//! Image attributes and the decoding of one frame to native samples.
//!
//! dicom-pixeldata decodes everything it can, one frame at a time (its whole-object decode
//! refuses a large frame split into small fragments; the per-frame one gathers them). Two cases
//! are ours because it gets them wrong: 1-bit data (it truncates frames whose pixel count is
//! not a multiple of 8 and shifts every later frame) and native YBR_FULL_422 (it sizes frames
//! as 3 samples a pixel and fails). Its codecs run under `catch_unwind`: they index buffers
//! sized from attributes a file can lie about.

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};

use dicom_core::value::{PrimitiveValue, Value};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::RenderError;

/// JPEG baseline and extended: the decoder converts YCbCr to RGB itself.
const JPEG_LOSSY: [&str; 2] = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"];

/// The attributes that say how Pixel Data is laid out, checked once.
#[derive(Debug, Clone)]
pub(super) struct Attrs {
    pub(super) rows: u32,
    pub(super) columns: u32,
    pub(super) frames: u32,
    pub(super) samples_per_pixel: u16,
    pub(super) photometric: String,
    pub(super) bits_allocated: u16,
    pub(super) bits_stored: u16,
    pub(super) high_bit: u16,
    pub(super) signed: bool,
    /// Planar Configuration 1: all of one sample, then the next (native data only).
    pub(super) planar: bool,
    pub(super) transfer_syntax: String,
    /// Pixel Data is a sequence of fragments (compressed, or encapsulated uncompressed).
    pub(super) encapsulated: bool,
}

impl Attrs {
    pub(super) fn read(obj: &DefaultDicomObject) -> Result<Self, RenderError> {
        let transfer_syntax = transfer_syntax(obj);
        let Some(pixel_data) = obj.get(tags::PIXEL_DATA) else {
            if obj.get(tags::FLOAT_PIXEL_DATA).is_some()
                || obj.get(tags::DOUBLE_FLOAT_PIXEL_DATA).is_some()
            {
                return Err(RenderError::Unsupported {
                    transfer_syntax,
                    reason: "float pixel data (parametric maps) is not rendered".into(),
                });
            }
            return Err(RenderError::NoPixelData);
        };
        let encapsulated = matches!(pixel_data.value(), Value::PixelSequence(_));
        Self::read_with(obj, transfer_syntax, encapsulated)
    }

    /// The attributes of a file parsed up to its Pixel Data, which is native.
    pub(super) fn read_head(obj: &DefaultDicomObject) -> Result<Self, RenderError> {
        Self::read_with(obj, transfer_syntax(obj), false)
    }

    fn read_with(
        obj: &DefaultDicomObject,
        transfer_syntax: String,
        encapsulated: bool,
    ) -> Result<Self, RenderError> {
        let required = |tag, name: &str| -> Result<u16, RenderError> {
            uint(obj, tag).ok_or_else(|| RenderError::Parse(format!("missing or invalid {name}")))
        };
        let rows = required(tags::ROWS, "Rows")?;
        let columns = required(tags::COLUMNS, "Columns")?;
        let bits_allocated = required(tags::BITS_ALLOCATED, "Bits Allocated")?;
        let samples_per_pixel = uint(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        let bits_stored = uint(obj, tags::BITS_STORED)
            .filter(|b| (1..=bits_allocated).contains(b))
            .unwrap_or(bits_allocated);
        let high_bit = uint(obj, tags::HIGH_BIT)
            .filter(|h| *h >= bits_stored.saturating_sub(1) && *h < bits_allocated)
            .unwrap_or(bits_stored.saturating_sub(1));
        let photometric = obj
            .get(tags::PHOTOMETRIC_INTERPRETATION)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_else(|| "MONOCHROME2".to_string());
        let frames = obj
            .get(tags::NUMBER_OF_FRAMES)
            .and_then(|e| e.to_int::<i64>().ok())
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(1);
        let attrs = Self {
            rows: rows.into(),
            columns: columns.into(),
            frames,
            samples_per_pixel,
            photometric,
            bits_allocated,
            bits_stored,
            high_bit,
            signed: uint(obj, tags::PIXEL_REPRESENTATION) == Some(1),
            planar: uint(obj, tags::PLANAR_CONFIGURATION) == Some(1),
            transfer_syntax,
            encapsulated,
        };
        if rows == 0 || columns == 0 || bits_allocated == 0 {
            return Err(RenderError::Parse(format!(
                "image is {columns}x{rows} with {bits_allocated} bits allocated"
            )));
        }
        Ok(attrs)
    }

    /// Refuses layouts that no path here decodes; [`Attrs::read`] accepts them so that
    /// `info` still describes such images.
    fn check_supported(&self) -> Result<(), RenderError> {
        if !matches!(self.samples_per_pixel, 1 | 3) {
            let spp = self.samples_per_pixel;
            return Err(self.unsupported(format!("{spp} samples per pixel")));
        }
        if !matches!(self.bits_allocated, 1 | 8 | 16 | 32) {
            let bits = self.bits_allocated;
            return Err(self.unsupported(format!("{bits} bits allocated")));
        }
        if self.bits_allocated == 1 && (self.samples_per_pixel != 1 || self.encapsulated) {
            return Err(self.unsupported("1-bit data other than native monochrome".into()));
        }
        Ok(())
    }

    pub(super) fn check_frame(&self, frame: u32) -> Result<(), RenderError> {
        if frame < self.frames {
            Ok(())
        } else {
            Err(RenderError::FrameOutOfRange {
                frame,
                frames: self.frames,
            })
        }
    }

    pub(super) fn unsupported(&self, reason: String) -> RenderError {
        RenderError::Unsupported {
            transfer_syntax: self.transfer_syntax.clone(),
            reason,
        }
    }

    fn pixels(&self) -> usize {
        self.rows as usize * self.columns as usize
    }

    /// Bytes of one frame of interleaved samples (not for 1-bit data).
    fn frame_len(&self) -> usize {
        self.pixels() * usize::from(self.samples_per_pixel) * usize::from(self.bits_allocated / 8)
    }
}

/// How [`Decoded::data`] is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// `bits_allocated / 8` little-endian bytes per sample, samples interleaved.
    Samples,
    /// 1-bit, packed least significant bit first, the frame's first pixel at bit 0.
    Bits,
    /// Native YBR_FULL_422: Y1 Y2 Cb Cr for each pair of pixels.
    Ybr422,
}

/// One decoded frame.
#[derive(Debug)]
pub(super) struct Decoded<'a> {
    /// Borrowed where the frame lies as it is wanted: in the file's bytes, or in the parsed
    /// Pixel Data.
    pub(super) data: Cow<'a, [u8]>,
    pub(super) layout: Layout,
    /// The photometric interpretation of `data`, which the codec may have changed (JPEG and
    /// JPEG 2000 decoders turn YBR into RGB).
    pub(super) photometric: String,
}

impl Decoded<'_> {
    /// The frame's bytes as PS3.18 wants an uncompressed frame.
    pub(super) fn into_raw(self) -> Vec<u8> {
        self.data.into_owned()
    }

    /// Folds `f` over every stored value of a single-sample frame, masked to Bits Stored and
    /// sign-extended: the input of the modality LUT or the palette.
    pub(super) fn fold_stored<A>(
        &self,
        attrs: &Attrs,
        init: A,
        mut f: impl FnMut(A, i32) -> A,
    ) -> A {
        let pixels = attrs.pixels();
        let mut acc = init;
        if self.layout == Layout::Bits {
            let bits = self
                .data
                .iter()
                .flat_map(|byte| (0..8).map(move |i| (byte >> i) & 1));
            for bit in bits.take(pixels) {
                acc = f(acc, i32::from(bit));
            }
            return acc;
        }
        let stored = stored_value(attrs);
        // A slice of `()` to zip with: no memory, and the same loops as the passes that write.
        self.zip_samples(attrs, &mut vec![(); pixels], acc, |acc, (), raw| {
            f(acc, stored(raw))
        })
    }

    /// `f` of every stored value (as in [`Self::fold_stored`]), one per pixel: a plain zip of
    /// the output and input slices (collecting a mapped iterator instead made a rendered
    /// 512×512 CT slice twice as slow here).
    pub(super) fn map_stored<T: Copy + Default>(
        &self,
        attrs: &Attrs,
        mut f: impl FnMut(i32) -> T,
    ) -> Vec<T> {
        let mut out: Vec<T> = if self.layout == Layout::Bits {
            let mut out = Vec::with_capacity(attrs.pixels());
            self.fold_stored(attrs, (), |(), v| out.push(f(v)));
            out
        } else {
            let stored = stored_value(attrs);
            let mut out = vec![T::default(); attrs.pixels()];
            self.zip_samples(attrs, &mut out, (), |(), slot, raw| *slot = f(stored(raw)));
            out
        };
        out.resize(attrs.pixels(), T::default());
        out
    }

    /// The frame's stored values as [`Offsets`], with their range: `None` unless the frame is
    /// single-sample data of 8 or 16 bits, complete.
    pub(super) fn offsets(&self, attrs: &Attrs) -> Option<Offsets> {
        if self.layout != Layout::Samples
            || attrs.samples_per_pixel != 1
            || !matches!(attrs.bits_allocated, 8 | 16)
            || attrs.bits_stored > attrs.bits_allocated
            || self.data.len() < attrs.frame_len()
        {
            return None;
        }
        // In 16-bit lanes, which baseline x86-64 (SSE2) has every operation for, so that the
        // passes vectorise (the 32-bit unsigned min/max of `stored_value` need SSE4.1): in the
        // server's profile of cold CT frames the pass went from 6.4% to 3.0%. The offset of a
        // signed value, its distance from -2^(bits-1), is its two's complement pattern with
        // the top bit flipped.
        let bits = attrs.bits_stored;
        let shift = attrs.high_bit + 1 - bits;
        let mask = (u32::MAX >> (32 - u32::from(bits))) as u16;
        let (base, flip) = if attrs.signed {
            (-(1 << (bits - 1)), 1u16 << (bits - 1))
        } else {
            (0, 0)
        };
        // Zipped into a zeroed vector: collecting the mapped samples went through the
        // one-at-a-time path of `collect` and took twice as long. Samples of 8 or 16 bits:
        // the cast keeps all of them.
        let mut values = vec![0u16; attrs.pixels()];
        self.zip_samples(attrs, &mut values, (), |(), slot, raw| {
            *slot = ((raw as u16 >> shift) & mask) ^ flip;
        });
        let (min, max) = values.iter().fold((u16::MAX, u16::MIN), |(min, max), v| {
            (min.min(*v), max.max(*v))
        });
        Some(Offsets {
            values,
            base,
            min,
            max,
        })
    }

    /// Folds `f` over each slot of `out` with the raw sample of the same pixel (8, 16 or 32
    /// bits, little endian), as far as both go: the one loop per sample width that the
    /// per-pixel passes share, each compiled with its own closure. A fold rather than a closure
    /// over captured variables, so the accumulators stay in registers (3–7× faster). Always
    /// inlined: left to the compiler, a pass through it once took 5× as long.
    #[inline(always)]
    fn zip_samples<T, A>(
        &self,
        attrs: &Attrs,
        out: &mut [T],
        init: A,
        mut f: impl FnMut(A, &mut T, u32) -> A,
    ) -> A {
        let data = &self.data[..self.data.len().min(attrs.frame_len())];
        let mut acc = init;
        match attrs.bits_allocated {
            8 => {
                for (slot, b) in out.iter_mut().zip(data) {
                    acc = f(acc, slot, u32::from(*b));
                }
            }
            16 => {
                for (slot, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                    acc = f(acc, slot, u32::from(u16::from_le_bytes([c[0], c[1]])));
                }
            }
            _ => {
                for (slot, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                    acc = f(acc, slot, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                }
            }
        }
        acc
    }
}

/// A frame's stored values of up to 16 bits, each as its distance from the lowest value that
/// Bits Stored allows, so that it indexes a table of 65 536 entries without a bounds check.
#[derive(Debug)]
pub(super) struct Offsets {
    values: Vec<u16>,
    /// The stored value of offset 0.
    base: i32,
    min: u16,
    max: u16,
}

impl Offsets {
    /// Lowest and highest stored value of the frame; `None` for a frame without pixels.
    pub(super) fn range(&self) -> Option<(i32, i32)> {
        (self.min <= self.max).then(|| {
            (
                self.base + i32::from(self.min),
                self.base + i32::from(self.max),
            )
        })
    }

    /// `lut[stored - lo]` for every pixel, where `lo` is the frame's lowest stored value and
    /// `lut` has an entry for every value of [`Self::range`] (0 past its end): the grey lookup.
    pub(super) fn lookup(&self, lut: &[u8]) -> Vec<u8> {
        let mut table = Box::new([0u8; 1 << 16]);
        let from = usize::from(self.min);
        let to = (from + lut.len()).min(table.len());
        table[from..to].copy_from_slice(&lut[..to - from]);
        self.values.iter().map(|o| table[usize::from(*o)]).collect()
    }
}

/// The stored value of a raw sample: masked to Bits Stored from High Bit and sign-extended.
/// Branch-free, as a branch on the sign mispredicts all over a CT: sign extension by shifting
/// the sign bit to bit 31 and back; unsigned 32-bit values saturate at i32::MAX.
fn stored_value(attrs: &Attrs) -> impl Fn(u32) -> i32 + Copy {
    let shift = u32::from(attrs.high_bit + 1 - attrs.bits_stored);
    let bits = u32::from(attrs.bits_stored);
    let mask = u32::MAX >> (32 - bits);
    let (extend, cap) = if attrs.signed {
        (32 - bits, u32::MAX)
    } else {
        (0, i32::MAX as u32)
    };
    move |raw: u32| {
        let v = ((raw >> shift) & mask).min(cap);
        ((v << extend) as i32) >> extend
    }
}

/// Decodes frame `frame` (already range-checked) of `obj`.
pub(super) fn decode_frame<'a>(
    obj: &'a DefaultDicomObject,
    attrs: &Attrs,
    frame: u32,
    native: Option<&'a [u8]>,
) -> Result<Decoded<'a>, RenderError> {
    attrs.check_supported()?;
    // Frames that need no decoding are read where they lie: a CT slice's 512 KiB were copied
    // for every rendered frame.
    if let Some(all) = native.or_else(|| native_in_object(obj, attrs)) {
        let len = attrs.frame_len();
        let data = all
            .get(frame as usize * len..)
            .and_then(|rest| rest.get(..len))
            .ok_or_else(|| truncated(frame))?;
        return Ok(Decoded {
            data: Cow::Borrowed(data),
            layout: Layout::Samples,
            photometric: attrs.photometric.clone(),
        });
    }
    if !attrs.encapsulated && attrs.bits_allocated == 1 {
        return native_bits(obj, attrs, frame);
    }
    if !attrs.encapsulated && attrs.photometric == "YBR_FULL_422" {
        return native_ybr422(obj, attrs, frame);
    }
    let codec = check_codec(obj, attrs)?;
    let decoded = catch_unwind(AssertUnwindSafe(|| match codec {
        Codec::Registry => obj
            .decode_pixel_data_frame(frame)
            .map(|px| px.into_data())
            .map_err(|e| RenderError::Decode(error_chain(&e))),
        #[cfg(feature = "gdcm")]
        Codec::Gdcm => super::gdcm::decode(obj, attrs, frame),
    }));
    let mut data = match decoded {
        Ok(result) => result?,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            return Err(RenderError::Decode(format!("decoder panicked: {what}")));
        }
    };
    let len = attrs.frame_len();
    if data.len() < len {
        return Err(RenderError::Decode(format!(
            "frame {frame} decoded to {} bytes, expected {len}",
            data.len()
        )));
    }
    data.truncate(len);
    if attrs.planar && attrs.samples_per_pixel == 3 && !attrs.encapsulated {
        data = interleave(&data, usize::from(attrs.bits_allocated / 8));
    }
    Ok(Decoded {
        data: Cow::Owned(data),
        layout: Layout::Samples,
        photometric: decoded_photometric(attrs),
    })
}

/// Which decoder takes a frame.
#[derive(Debug, Clone, Copy)]
enum Codec {
    /// dicom-pixeldata, through the transfer syntax registry.
    Registry,
    /// GDCM, for JPEG-LS and 12-bit lossy JPEG.
    #[cfg(feature = "gdcm")]
    Gdcm,
}

/// Picks the decoder, or refuses with the reason what this build has no decoder for (12-bit
/// lossy JPEG included, which the registry's JPEG decoder would refuse with a less helpful
/// message).
fn check_codec(obj: &DefaultDicomObject, attrs: &Attrs) -> Result<Codec, RenderError> {
    let ts = attrs.transfer_syntax.as_str();
    #[cfg(feature = "gdcm")]
    if super::gdcm::JPEG_LS.contains(&ts) {
        return Ok(Codec::Gdcm);
    }
    let Some(entry) = TransferSyntaxRegistry.get(ts) else {
        return Err(attrs.unsupported("unknown transfer syntax".into()));
    };
    if !entry.can_decode_all() {
        let reason = match ts {
            "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => {
                "JPEG-LS needs GDCM, which is not in this build (build with `--features gdcm`, \
                 which needs cmake and a C++ compiler)"
                    .to_string()
            }
            _ => format!("no decoder for {} in this build", entry.name()),
        };
        return Err(attrs.unsupported(reason));
    }
    let jpeg_bits = Some(ts)
        .filter(|ts| JPEG_LOSSY.contains(ts))
        .and_then(|_| jpeg_frame_header(first_fragment(obj)?))
        .map(|header| header.precision)
        .filter(|bits| *bits > 8);
    #[cfg(feature = "gdcm")]
    if jpeg_bits.is_some() {
        return Ok(Codec::Gdcm);
    }
    #[cfg(not(feature = "gdcm"))]
    if let Some(bits) = jpeg_bits {
        return Err(attrs.unsupported(format!(
            "{bits}-bit lossy JPEG needs GDCM, which is not in this build (build with \
             `--features gdcm`, which needs cmake and a C++ compiler)"
        )));
    }
    Ok(Codec::Registry)
}

/// What the codec leaves: JPEG lossy and JPEG 2000 (YBR_ICT/RCT) output RGB; lossless codecs
/// and RLE leave the samples as they were.
fn decoded_photometric(attrs: &Attrs) -> String {
    let pi = attrs.photometric.as_str();
    let ybr_to_rgb = attrs.samples_per_pixel == 3
        && (matches!(pi, "YBR_ICT" | "YBR_RCT")
            || (pi.starts_with("YBR") && JPEG_LOSSY.contains(&attrs.transfer_syntax.as_str())));
    if ybr_to_rgb {
        "RGB".into()
    } else {
        pi.into()
    }
}

fn first_fragment(obj: &InMemDicomObject) -> Option<&[u8]> {
    match obj.get(tags::PIXEL_DATA)?.value() {
        Value::PixelSequence(seq) => seq.fragments().first().map(|f| f.as_slice()),
        _ => None,
    }
}

/// What a JPEG frame header (SOF) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct JpegFrameHeader {
    /// Sample precision in bits.
    pub(super) precision: u8,
    pub(super) height: u16,
    pub(super) width: u16,
    pub(super) components: u8,
}

/// The first frame header (SOF marker) of a JPEG or JPEG-LS stream.
pub(super) fn jpeg_frame_header(stream: &[u8]) -> Option<JpegFrameHeader> {
    let mut at = 2; // after SOI
    while at + 4 < stream.len() {
        if stream[at] != 0xFF {
            return None;
        }
        let marker = stream[at + 1];
        if marker == 0xFF {
            at += 1;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([stream[at + 2], stream[at + 3]]));
        // SOF0–SOF15 but DHT, JPG and DAC; SOF55 (JPEG-LS).
        if matches!(marker, 0xC0..=0xCF | 0xF7) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let sof = stream.get(at + 4..at + 10)?;
            return Some(JpegFrameHeader {
                precision: sof[0],
                height: u16::from_be_bytes([sof[1], sof[2]]),
                width: u16::from_be_bytes([sof[3], sof[4]]),
                components: sof[5],
            });
        }
        at += 2 + len;
    }
    None
}

fn transfer_syntax(obj: &DefaultDicomObject) -> String {
    obj.meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

/// Whether native frames of this layout are their own decoded bytes, to be read in place:
/// 8 or 16 bits allocated, samples interleaved, not YBR_FULL_422 (two bytes a pixel).
fn readable_in_place(attrs: &Attrs) -> bool {
    !attrs.encapsulated
        && matches!(attrs.bits_allocated, 8 | 16)
        && !(attrs.planar && attrs.samples_per_pixel == 3)
        && attrs.photometric != "YBR_FULL_422"
}

/// The value of native Pixel Data readable in place (see [`readable_in_place`]) that is the
/// last element of `bytes`, found without parsing it: explicit or implicit VR little endian,
/// exactly the frames that `attrs` describe, its header (tag, VR, length) checked just before
/// them. `None` for anything else, which is then parsed whole.
pub(super) fn native_tail<'a>(bytes: &'a [u8], attrs: &Attrs) -> Option<&'a [u8]> {
    if !readable_in_place(attrs) {
        return None;
    }
    let header = match attrs.transfer_syntax.as_str() {
        "1.2.840.10008.1.2.1" => 12,
        "1.2.840.10008.1.2" => 8,
        _ => return None,
    };
    let len = attrs.frame_len().checked_mul(attrs.frames as usize)?;
    let padded = len + (len & 1);
    let start = bytes.len().checked_sub(padded)?;
    let head = bytes.get(start.checked_sub(header)?..start)?;
    let tag = head[..4] == [0xE0, 0x7F, 0x10, 0x00];
    let vr = header == 8 || (matches!(&head[4..6], b"OW" | b"OB") && head[6..8] == [0, 0]);
    let length = head[header - 4..] == u32::try_from(padded).ok()?.to_le_bytes();
    (tag && vr && length).then(|| &bytes[start..start + len])
}

/// Parsed native Pixel Data readable in place (see [`readable_in_place`]), as bytes: held as
/// bytes, or as words, whose bytes are little endian on a little-endian machine.
fn native_in_object<'a>(obj: &'a InMemDicomObject, attrs: &Attrs) -> Option<&'a [u8]> {
    if !readable_in_place(attrs) {
        return None;
    }
    // 8-bit samples in words (OW) are in stream order only where the stream is little endian.
    let big_endian = attrs.transfer_syntax == "1.2.840.10008.1.2.2";
    match (obj.get(tags::PIXEL_DATA)?.value(), attrs.bits_allocated) {
        (Value::Primitive(PrimitiveValue::U8(bytes)), 8) => Some(bytes),
        #[cfg(target_endian = "little")]
        (Value::Primitive(PrimitiveValue::U16(words)), 16) => Some(bytemuck::cast_slice(words)),
        #[cfg(target_endian = "little")]
        (Value::Primitive(PrimitiveValue::U16(words)), 8) if !big_endian => {
            Some(bytemuck::cast_slice(words))
        }
        _ => None,
    }
}

/// Native bytes of Pixel Data; `None` for a fragment sequence.
fn native_bytes(obj: &InMemDicomObject) -> Option<std::borrow::Cow<'_, [u8]>> {
    match obj.get(tags::PIXEL_DATA)?.value() {
        Value::Primitive(p) => Some(p.to_bytes()),
        _ => None,
    }
}

fn truncated(frame: u32) -> RenderError {
    RenderError::Decode(format!("pixel data ends before the end of frame {frame}"))
}

/// 1-bit frames are not byte-aligned when rows × columns is not a multiple of 8: the frame
/// starts at bit `frame × pixels` of the whole Pixel Data.
fn native_bits(
    obj: &InMemDicomObject,
    attrs: &Attrs,
    frame: u32,
) -> Result<Decoded<'static>, RenderError> {
    let all = native_bytes(obj).ok_or_else(|| truncated(frame))?;
    let pixels = attrs.pixels();
    let start = frame as usize * pixels;
    let end = start + pixels;
    if end.div_ceil(8) > all.len() {
        return Err(truncated(frame));
    }
    let mut data = vec![0u8; pixels.div_ceil(8)];
    for (i, bit) in (start..end).enumerate() {
        if all[bit / 8] >> (bit % 8) & 1 == 1 {
            data[i / 8] |= 1 << (i % 8);
        }
    }
    Ok(Decoded {
        data: Cow::Owned(data),
        layout: Layout::Bits,
        photometric: attrs.photometric.clone(),
    })
}

fn native_ybr422(
    obj: &InMemDicomObject,
    attrs: &Attrs,
    frame: u32,
) -> Result<Decoded<'static>, RenderError> {
    if attrs.bits_allocated != 8 || attrs.samples_per_pixel != 3 || !attrs.columns.is_multiple_of(2)
    {
        return Err(attrs
            .unsupported("native YBR_FULL_422 other than 8-bit, 3 samples, even columns".into()));
    }
    let all = native_bytes(obj).ok_or_else(|| truncated(frame))?;
    let len = attrs.pixels() * 2;
    let start = frame as usize * len;
    let data = all
        .get(start..start + len)
        .ok_or_else(|| truncated(frame))?
        .to_vec();
    Ok(Decoded {
        data: Cow::Owned(data),
        layout: Layout::Ybr422,
        photometric: attrs.photometric.clone(),
    })
}

/// Planar configuration 1 (RRR…GGG…BBB…) to interleaved (RGBRGB…).
fn interleave(planar: &[u8], sample_bytes: usize) -> Vec<u8> {
    let plane = planar.len() / 3;
    let mut out = Vec::with_capacity(planar.len());
    for pixel in (0..plane).step_by(sample_bytes) {
        for channel in 0..3 {
            let at = channel * plane + pixel;
            out.extend_from_slice(&planar[at..at + sample_bytes]);
        }
    }
    out
}

/// A first non-negative integer value, for the image pixel module's US attributes.
fn uint(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<u16> {
    obj.get(tag)?.to_int::<u16>().ok()
}

/// The error and its causes on one line: dicom-pixeldata's top message alone ("Could not
/// decode pixel data") says nothing of why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// 16-bit words of a LUT Data element: OW may come as bytes (little endian), US as words.
pub(super) fn words(value: &PrimitiveValue) -> Vec<u16> {
    match value {
        PrimitiveValue::U8(bytes) => bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect(),
        PrimitiveValue::U16(words) => words.to_vec(),
        other => other
            .to_multi_int::<i32>()
            .map(|v| v.into_iter().map(|x| x as u16).collect())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets' range and lookup give what the per-pixel fold and map give, for every
    /// layout of stored values they take (junk bits, shifted, signed, 8 and 16 bits).
    #[test]
    fn offsets_lookup_matches_the_per_pixel_map() {
        let mut next = crate::render::tests::xorshift(0x9e37_79b9_7f4a_7c15);
        for (bits_allocated, bits_stored, high_bit, signed) in [
            (16, 16, 15, true),
            (16, 16, 15, false),
            (16, 12, 11, true),
            (16, 12, 13, false),
            (16, 10, 15, true),
            (8, 8, 7, false),
            (8, 6, 6, true),
        ] {
            let attrs = Attrs {
                rows: 7,
                columns: 9,
                frames: 1,
                samples_per_pixel: 1,
                photometric: "MONOCHROME2".into(),
                bits_allocated,
                bits_stored,
                high_bit,
                signed,
                planar: false,
                transfer_syntax: "1.2.840.10008.1.2.1".into(),
                encapsulated: false,
            };
            let decoded = Decoded {
                data: (0..attrs.frame_len()).map(|_| next() as u8).collect(),
                layout: Layout::Samples,
                photometric: attrs.photometric.clone(),
            };
            let (lo, hi) = decoded.fold_stored(&attrs, (i32::MAX, i32::MIN), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
            let case = format!("{bits_allocated}/{bits_stored}/{high_bit}/{signed}");
            let offsets = decoded.offsets(&attrs).expect(&case);
            assert_eq!(offsets.range(), Some((lo, hi)), "{case}");
            let lut: Vec<u8> = (lo..=hi).map(|v| (v.wrapping_mul(37) >> 3) as u8).collect();
            let per_pixel = decoded.map_stored(&attrs, |v| {
                lut.get(v.wrapping_sub(lo) as usize).copied().unwrap_or(0)
            });
            assert_eq!(offsets.lookup(&lut), per_pixel, "{case}");
        }
    }
}
