//! Rendering: a stored DICOM instance (a whole Part-10 file in memory) to a PNG or JPEG of
//! one frame, a thumbnail, or the decoded native bytes of one frame for DICOMweb.
//!
//! ```text
//! bytes ─parse─▶ object ─decode one frame─▶ native samples, then by photometric interpretation:
//!   grey     stored value ─rescale─▶ modality value ─VOI─▶ 0..1 ─MONOCHROME1: invert─▶ 8 bits
//!   palette  index ─red, green, blue lookup tables─▶ RGB
//!   colour   RGB as is; YBR_FULL, YBR_FULL_422 ─▶ RGB
//! ─▶ fit the viewport (area average, never up) ─▶ PNG (fast deflate) or JPEG
//! ```
//!
//! dicom-object parses; dicom-pixeldata only *decodes* (codecs, fragments, RLE planes), except for
//! 1-bit and native YBR_FULL_422 frames, which `pixels` cuts out itself because dicom-pixeldata
//! gets them wrong, and other native frames, which are read where they lie (when native Pixel Data
//! ends the file, as it nearly always does, it is not parsed at all). Everything after decoding is
//! ours (`grey`, `colour`, `resize`) because dicom-pixeldata's conversion is wrong where it
//! matters: its min/max default reads signed samples as unsigned, so a signed CT without a window
//! renders almost black; `to_vec::<u8>` fails on 16-bit data; palette colour comes out as grey
//! indices. Ours evaluates the grey chain once per distinct stored value into a lookup table and
//! then costs one lookup per pixel: on the WG04 images it matches dcmtk's `dcmj2pnm` to ±1 and is
//! no slower than dicom-pixeldata's own `to_dynamic_image`. Not using that also keeps the `image`
//! crate and its codecs out of the tree: `png` encodes with its Fastest setting (fdeflate and the
//! Up filter; a rendered 512×512 CT slice went from 1.8 to 1.1 ms against the Fast setting, whose
//! per-row filter choice cost more than the compression), and the JPEGs are libjpeg-turbo's with
//! the `turbojpeg` feature (SIMD; 0.6 against 2.0 ms for a noisy 512×512 grey picture at quality
//! 90), else `jpeg-encoder`'s (pure Rust, which the JPEG codec already brings, with its AVX2 path).
//!
//! The window is, in order: the request's; the file's VOI LUT Sequence; the file's first
//! Window Center/Width with its VOI LUT Function (LINEAR per PS3.3 C.11.2.1.2, LINEAR_EXACT,
//! SIGMOID); else the frame's own min..max modality values, Pixel Padding Value left out, so
//! an image without a window still shows its content. Colour images ignore windows.
//!
//! Decoded: native (implicit and explicit little endian, explicit big endian, deflated), RLE
//! Lossless, JPEG baseline 8-bit, JPEG lossless (.57, .70), JPEG 2000 (.90, .91, pure-Rust
//! `openjp2`); with the `gdcm` feature (GDCM, which needs cmake and C++ to build; the test
//! command builds with it) also JPEG-LS (.80, .81) and 12-bit lossy JPEG (.51). Refused with
//! [`RenderError::Unsupported`]: those two without that feature,
//! JPEG XL, video, float pixel data, segmented palettes. Photometric interpretations:
//! MONOCHROME1/2, PALETTE COLOR, RGB, YBR_FULL, YBR_FULL_422, YBR_ICT/RCT (JPEG 2000); 1, 8, 16
//! or 32 bits allocated, signed or not, any number of frames.
//!
//! Every entry point takes untrusted bytes: nothing here panics, and a codec that panics is
//! caught (`catch_unwind`) and reported as [`RenderError::Decode`]. The work is CPU-bound:
//! call it from `spawn_blocking`. Decoded buffers are read as little endian, the byte order
//! of every target we build for.

mod colour;
#[cfg(feature = "gdcm")]
mod gdcm;
mod grey;
mod pixels;
mod resize;
#[cfg(test)]
mod tests;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};

/// Output encoding of a rendered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Lossless, 8-bit grey or RGB, fast deflate.
    Png,
    /// Baseline JPEG; `quality` 1–100 (values outside are clamped).
    Jpeg {
        /// Encoder quality, 1–100.
        quality: u8,
    },
}

/// A VOI window, in modality units (after Rescale Slope/Intercept).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Window Center.
    pub center: f64,
    /// Window Width; must be positive to be used.
    pub width: f64,
}

/// What [`render`] draws and how it encodes it.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// Window to apply (grey images only); `None` means the file's, else a min/max default.
    pub window: Option<Window>,
    /// Output encoding.
    pub format: Format,
    /// Fit inside (width, height), keeping the aspect ratio; never upscales.
    pub viewport: Option<(u32, u32)>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            window: None,
            format: Format::Png,
            viewport: None,
        }
    }
}

/// Image attributes of an instance, as a viewer needs them before asking for frames.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameInfo {
    /// Rows (height).
    pub rows: u32,
    /// Columns (width).
    pub columns: u32,
    /// Number of Frames (1 when absent).
    pub frames: u32,
    /// Samples per Pixel.
    pub samples_per_pixel: u16,
    /// Photometric Interpretation as stored (a JPEG-compressed YBR image still says YBR here).
    pub photometric: String,
    /// Bits Allocated.
    pub bits_allocated: u16,
    /// Bits Stored.
    pub bits_stored: u16,
    /// Pixel Representation: 0 unsigned, 1 two's complement.
    pub pixel_representation: u16,
    /// Rescale Slope of the first frame (1 when absent).
    pub rescale_slope: f64,
    /// Rescale Intercept of the first frame (0 when absent).
    pub rescale_intercept: f64,
    /// First Window Center/Width of the first frame, if the file has one.
    pub window: Option<Window>,
    /// Pixel Spacing (row spacing, column spacing) in mm, if the file has it.
    pub pixel_spacing: Option<(f64, f64)>,
}

/// Why an instance could not be described, rendered or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The instance has no Pixel Data (a structured report, a presentation state...).
    #[error("the instance has no pixel data")]
    NoPixelData,
    /// The frame number (0-based) is not below the number of frames.
    #[error("frame {frame} is out of range: the instance has {frames} frame(s)")]
    FrameOutOfRange {
        /// The frame asked for, 0-based.
        frame: u32,
        /// How many frames there are.
        frames: u32,
    },
    /// The pixel data is valid but this build cannot decode or draw it.
    #[error("cannot render this image (transfer syntax {transfer_syntax}): {reason}")]
    Unsupported {
        /// The transfer syntax UID of the file.
        transfer_syntax: String,
        /// What exactly is not supported.
        reason: String,
    },
    /// The pixel data could not be decoded (corrupt, truncated, or a codec failure).
    #[error("could not decode pixel data: {0}")]
    Decode(String),
    /// The picture could not be encoded.
    #[error("could not encode picture: {0}")]
    Encode(String),
    /// The bytes are not a readable DICOM file, or required image attributes are missing.
    #[error("could not parse DICOM: {0}")]
    Parse(String),
}

/// JPEG quality of [`thumbnail`]: small files, artefacts invisible at thumbnail size.
const THUMBNAIL_QUALITY: u8 = 80;

/// Describes the image in a whole Part-10 file held in memory.
pub fn info(bytes: &[u8]) -> Result<FrameInfo, RenderError> {
    let obj = parse(bytes)?;
    let attrs = pixels::Attrs::read(&obj)?;
    let params = grey::Params::read(&obj, &attrs, 0);
    Ok(FrameInfo {
        rows: attrs.rows,
        columns: attrs.columns,
        frames: attrs.frames,
        samples_per_pixel: attrs.samples_per_pixel,
        photometric: attrs.photometric.clone(),
        bits_allocated: attrs.bits_allocated,
        bits_stored: attrs.bits_stored,
        pixel_representation: u16::from(attrs.signed),
        rescale_slope: params.slope,
        rescale_intercept: params.intercept,
        window: params.file_window.map(|(window, _)| window),
        pixel_spacing: pixel_spacing(&obj),
    })
}

/// Renders frame `frame` (0-based) of a whole Part-10 file to an encoded PNG or JPEG.
pub fn render(bytes: &[u8], frame: u32, opts: &RenderOptions) -> Result<Vec<u8>, RenderError> {
    let image = open(bytes)?;
    let picture = render_picture(&image, frame, opts.window)?;
    let picture = match opts.viewport {
        Some((width, height)) => resize::fit(picture, width, height),
        None => picture,
    };
    encode(&picture, opts.format)
}

/// The decoded native bytes of one frame, as PS3.18 uncompressed frames carry them: little
/// endian, samples interleaved, `rows * columns * samples * bits_allocated / 8` bytes.
///
/// Exceptions, where the stored form is kept: 1-bit data comes packed, `ceil(rows * columns /
/// 8)` bytes starting at the frame's first pixel; native YBR_FULL_422 comes as stored, 2 bytes a
/// pixel. A JPEG-lossy or JPEG 2000 YBR image comes as RGB, because that is what its decoder
/// yields.
pub fn raw_frame(bytes: &[u8], frame: u32) -> Result<Vec<u8>, RenderError> {
    let image = open(bytes)?;
    image.attrs.check_frame(frame)?;
    Ok(image.decode(frame)?.into_raw())
}

/// [`raw_frame`] for several frames (0-based) of one file, which is parsed once, not once per
/// frame.
pub fn raw_frames(bytes: &[u8], frames: &[u32]) -> Result<Vec<Vec<u8>>, RenderError> {
    let image = open(bytes)?;
    frames
        .iter()
        .map(|&frame| {
            image.attrs.check_frame(frame)?;
            Ok(image.decode(frame)?.into_raw())
        })
        .collect()
}

/// A JPEG thumbnail fitting `max_side`×`max_side`, of the middle frame (in a multi-frame
/// series or clip the middle shows more of the content than the first), with the default
/// window.
pub fn thumbnail(bytes: &[u8], max_side: u32) -> Result<Vec<u8>, RenderError> {
    let image = open(bytes)?;
    let picture = render_picture(&image, image.attrs.frames / 2, None)?;
    let picture = resize::fit(picture, max_side, max_side);
    encode(
        &picture,
        Format::Jpeg {
            quality: THUMBNAIL_QUALITY,
        },
    )
}

/// An 8-bit picture before encoding: `channels` interleaved samples per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Picture {
    width: u32,
    height: u32,
    /// 1 (grey) or 3 (RGB).
    channels: u8,
    data: Vec<u8>,
}

/// A file opened for its pixels.
struct Image<'a> {
    obj: DefaultDicomObject,
    attrs: pixels::Attrs,
    /// Native Pixel Data straight from the file's bytes (see [`open`]); `obj` then holds
    /// everything before it.
    native: Option<&'a [u8]>,
}

impl<'a> Image<'a> {
    fn decode(&'a self, frame: u32) -> Result<pixels::Decoded<'a>, RenderError> {
        pixels::decode_frame(&self.obj, &self.attrs, frame, self.native)
    }
}

/// Opens a whole Part-10 file for its pixels. Where the Pixel Data is native and ends the file,
/// as in nearly every uncompressed image, only what comes before it is parsed and the frames
/// are read where they are: parsing the Pixel Data too copied a CT slice's 512 KiB into 16-bit
/// words first.
fn open(bytes: &[u8]) -> Result<Image<'_>, RenderError> {
    let head = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Auto)
        .read_until(tags::PIXEL_DATA)
        .from_reader(bytes);
    if let Ok(head) = head {
        if let Ok(attrs) = pixels::Attrs::read_head(&head) {
            if let Some(native) = pixels::native_tail(bytes, &attrs) {
                return Ok(Image {
                    obj: head,
                    attrs,
                    native: Some(native),
                });
            }
        }
    }
    let obj = parse(bytes)?;
    let attrs = pixels::Attrs::read(&obj)?;
    Ok(Image {
        obj,
        attrs,
        native: None,
    })
}

/// Decodes and converts one frame to 8-bit grey or RGB at full size.
fn render_picture(
    image: &Image<'_>,
    frame: u32,
    window: Option<Window>,
) -> Result<Picture, RenderError> {
    let (obj, attrs) = (&image.obj, &image.attrs);
    attrs.check_frame(frame)?;
    let decoded = image.decode(frame)?;
    let (channels, data) = match decoded.photometric.as_str() {
        "MONOCHROME1" | "MONOCHROME2" if attrs.samples_per_pixel == 1 => {
            let params = grey::Params::read(obj, attrs, frame);
            let invert = decoded.photometric == "MONOCHROME1";
            (
                1,
                grey::to_display(&decoded, attrs, &params, window, invert),
            )
        }
        "PALETTE COLOR" if attrs.samples_per_pixel == 1 => {
            (3, colour::palette(obj, &decoded, attrs)?)
        }
        "RGB" | "YBR_FULL" | "YBR_FULL_422" if attrs.samples_per_pixel == 3 => {
            (3, colour::to_rgb(&decoded, attrs)?)
        }
        other => {
            return Err(attrs.unsupported(format!(
                "photometric interpretation {other} with {} sample(s) per pixel",
                attrs.samples_per_pixel
            )))
        }
    };
    Ok(Picture {
        width: attrs.columns,
        height: attrs.rows,
        channels,
        data,
    })
}

/// Parses a whole Part-10 file, with or without its 128-byte preamble.
fn parse(bytes: &[u8]) -> Result<DefaultDicomObject, RenderError> {
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Auto)
        .from_reader(bytes)
        .map_err(|e| RenderError::Parse(e.to_string()))
}

fn encode(picture: &Picture, format: Format) -> Result<Vec<u8>, RenderError> {
    let expected = picture.width as usize * picture.height as usize * usize::from(picture.channels);
    if picture.data.len() != expected {
        return Err(RenderError::Encode(format!(
            "{} bytes of pixels for a {}x{}x{} picture",
            picture.data.len(),
            picture.width,
            picture.height,
            picture.channels
        )));
    }
    match format {
        Format::Png => png(picture),
        Format::Jpeg { quality } => jpeg(picture, quality.clamp(1, 100)),
    }
}

/// PNG with the Fastest setting: fdeflate and the Up filter for every row (the Fast setting picks
/// a filter per row, which took more time than the compression itself).
fn png(picture: &Picture) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, picture.width, picture.height);
    encoder.set_color(if picture.channels == 3 {
        png::ColorType::Rgb
    } else {
        png::ColorType::Grayscale
    });
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fastest);
    let encode_error = |e: png::EncodingError| RenderError::Encode(e.to_string());
    let mut writer = encoder.write_header().map_err(encode_error)?;
    writer
        .write_image_data(&picture.data)
        .map_err(encode_error)?;
    writer.finish().map_err(encode_error)?;
    Ok(out)
}

/// Baseline JPEG with libjpeg-turbo's SIMD code: a 512×512 grey frame at quality 90 takes
/// about a third of jpeg-encoder's time.
#[cfg(feature = "turbojpeg")]
fn jpeg(picture: &Picture, quality: u8) -> Result<Vec<u8>, RenderError> {
    let (format, subsamp) = if picture.channels == 3 {
        (turbojpeg::PixelFormat::RGB, turbojpeg::Subsamp::Sub2x2)
    } else {
        (turbojpeg::PixelFormat::GRAY, turbojpeg::Subsamp::Gray)
    };
    let width = picture.width as usize;
    let image = turbojpeg::Image {
        pixels: picture.data.as_slice(),
        width,
        pitch: width * usize::from(picture.channels),
        height: picture.height as usize,
        format,
    };
    turbojpeg::compress(image, i32::from(quality), subsamp)
        .map(|jpeg| jpeg.to_vec())
        .map_err(|e| RenderError::Encode(e.to_string()))
}

/// Baseline JPEG with jpeg-encoder (pure Rust, AVX2 where the CPU has it).
#[cfg(not(feature = "turbojpeg"))]
fn jpeg(picture: &Picture, quality: u8) -> Result<Vec<u8>, RenderError> {
    let (Ok(width), Ok(height)) = (u16::try_from(picture.width), u16::try_from(picture.height))
    else {
        return Err(RenderError::Encode(format!(
            "{}x{} is too large for JPEG",
            picture.width, picture.height
        )));
    };
    let colour = if picture.channels == 3 {
        jpeg_encoder::ColorType::Rgb
    } else {
        jpeg_encoder::ColorType::Luma
    };
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(&picture.data, width, height, colour)
        .map_err(|e| RenderError::Encode(e.to_string()))?;
    Ok(out)
}

/// Pixel Spacing from the top level, else the shared then the first per-frame functional
/// group (enhanced multi-frame objects keep it only there).
fn pixel_spacing(obj: &InMemDicomObject) -> Option<(f64, f64)> {
    let element = obj.get(tags::PIXEL_SPACING).or_else(|| {
        functional_group_element(obj, 0, tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING)
    })?;
    match element.to_multi_float64().ok()?.as_slice() {
        [row, column, ..] if *row > 0.0 && *column > 0.0 => Some((*row, *column)),
        _ => None,
    }
}

/// `tag` inside the `group` macro of the per-frame functional group item of `frame`, else of
/// the shared functional groups: where enhanced multi-frame objects keep rescale, window and
/// spacing.
fn functional_group_element(
    obj: &InMemDicomObject,
    frame: u32,
    group: Tag,
    tag: Tag,
) -> Option<&InMemElement> {
    fn in_item(item: &InMemDicomObject, group: Tag, tag: Tag) -> Option<&InMemElement> {
        item.get(group)?.items()?.first()?.get(tag)
    }
    let per_frame = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|seq| seq.items()?.get(usize::try_from(frame).ok()?))
        .and_then(|item| in_item(item, group, tag));
    per_frame.or_else(|| {
        obj.get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
            .and_then(|seq| seq.items()?.first())
            .and_then(|item| in_item(item, group, tag))
    })
}
