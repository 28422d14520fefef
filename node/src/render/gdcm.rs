//! Decoding through GDCM what no Rust decoder reads (the `gdcm` feature): JPEG-LS, and 12-bit
//! lossy JPEG (JPEG extended, process 4), common in older CT and MR.
//!
//! jpeg-decoder and zune-jpeg refuse a 12-bit lossy stream, and libjpeg-turbo 3's 12-bit API
//! refuses the WG04 corpus streams, whose scan header is not the one sequential JPEG requires;
//! GDCM's bundled IJG library decodes them bit-identically to `gdcmconv --raw`. JPEG-LS has only
//! CharLS, which GDCM bundles too (dicom-pixeldata's own CharLS codec cannot be linked beside
//! it: the C symbols clash). GDCM is C++ behind an FFI, so the stream is checked here first: its
//! frame header must describe exactly the image the DICOM attributes describe, so that the
//! output buffer GDCM sizes from those attributes is the one the stream fills.
//!
//! gdcm-rs 0.6 leaks its output buffer when GDCM fails to decode (its C wrapper returns the
//! error without freeing it): a broken frame asked for again and again would leak a frame's
//! size each time. Streams that failed are remembered by their BLAKE3 hash and refused without
//! calling GDCM again, which bounds the leak to one buffer per distinct broken stream.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock, PoisonError};

use dicom_encoding::adapters::PixelDataObject;
use dicom_object::DefaultDicomObject;
use gdcm_rs::{GDCMPhotometricInterpretation, GDCMTransferSyntax};

use super::pixels::{jpeg_frame_header, Attrs};
use super::RenderError;

/// JPEG-LS lossless and near-lossless.
pub(super) const JPEG_LS: [&str; 2] = ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"];

/// Decodes frame `frame` (already range-checked) to native little-endian samples, interleaved.
pub(super) fn decode(
    obj: &DefaultDicomObject,
    attrs: &Attrs,
    frame: u32,
) -> Result<Vec<u8>, RenderError> {
    let photometric: GDCMPhotometricInterpretation =
        attrs.photometric.replace(' ', "_").parse().map_err(|_| {
            attrs.unsupported(format!("photometric {} with GDCM", attrs.photometric))
        })?;
    if !matches!(attrs.bits_allocated, 8 | 16) {
        let bits = attrs.bits_allocated;
        return Err(attrs.unsupported(format!("{bits} bits allocated with GDCM")));
    }
    let transfer_syntax: GDCMTransferSyntax = attrs
        .transfer_syntax
        .parse()
        .map_err(|_| attrs.unsupported("a transfer syntax GDCM does not know".into()))?;
    let stream = obj
        .frame_pixel_data(frame)
        .ok_or_else(|| RenderError::Decode(format!("no compressed data for frame {frame}")))?;
    let header = jpeg_frame_header(&stream)
        .ok_or_else(|| RenderError::Decode(format!("frame {frame} has no JPEG frame header")))?;
    let expected = (attrs.columns, attrs.rows, attrs.samples_per_pixel);
    let found = (
        u32::from(header.width),
        u32::from(header.height),
        u16::from(header.components),
    );
    if found != expected || u16::from(header.precision) > attrs.bits_allocated {
        return Err(RenderError::Decode(format!(
            "frame {frame}: the JPEG stream is {}x{} with {} component(s) of {} bits, but the \
             attributes say {}x{} with {} sample(s) of {} bits allocated",
            header.width,
            header.height,
            header.components,
            header.precision,
            attrs.columns,
            attrs.rows,
            attrs.samples_per_pixel,
            attrs.bits_allocated
        )));
    }
    let hash = blake3::hash(&stream);
    if failed()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&hash)
    {
        return Err(RenderError::Decode(format!(
            "GDCM could not decode frame {frame} (this stream failed before)"
        )));
    }
    let decoded = gdcm_rs::decode_single_frame_compressed(
        &stream,
        attrs.columns,
        attrs.rows,
        photometric,
        transfer_syntax,
        attrs.samples_per_pixel,
        attrs.bits_allocated,
        attrs.bits_stored,
        attrs.high_bit,
        u16::from(attrs.signed),
    )
    .map_err(|e| {
        let mut failed = failed().lock().unwrap_or_else(PoisonError::into_inner);
        if failed.len() < MAX_FAILED {
            failed.insert(hash);
        }
        RenderError::Decode(format!("GDCM could not decode frame {frame}: {e}"))
    })?;
    Ok(decoded.to_vec())
}

/// How many failed streams are remembered (32 bytes each).
const MAX_FAILED: usize = 4096;

/// Hashes of the streams GDCM failed to decode.
fn failed() -> &'static Mutex<HashSet<blake3::Hash>> {
    static FAILED: OnceLock<Mutex<HashSet<blake3::Hash>>> = OnceLock::new();
    FAILED.get_or_init(Mutex::default)
}
