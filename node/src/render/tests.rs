//! Synthetic images built here with dicom-object, plus the WG04 corpus (`../shared/corpus`,
//! or `DISCLESS_CORPUS`) when it is present.

use std::path::{Path, PathBuf};

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::mem::InMemElement;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::*;

// ---- synthetic images -------------------------------------------------------------------

/// A minimal secondary-capture image; `pixels` is the whole native Pixel Data.
#[derive(Debug, Clone)]
struct Synthetic {
    rows: u16,
    columns: u16,
    frames: Option<u32>,
    samples: u16,
    photometric: &'static str,
    bits_allocated: u16,
    bits_stored: u16,
    signed: bool,
    planar: u16,
    pixels: Vec<u8>,
    extra: Vec<InMemElement>,
}

impl Synthetic {
    fn grey16(rows: u16, columns: u16, values: &[i16]) -> Self {
        Self {
            rows,
            columns,
            frames: None,
            samples: 1,
            photometric: "MONOCHROME2",
            bits_allocated: 16,
            bits_stored: 16,
            signed: true,
            planar: 0,
            pixels: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            extra: Vec::new(),
        }
    }

    fn rgb8(rows: u16, columns: u16, photometric: &'static str, pixels: Vec<u8>) -> Self {
        Self {
            samples: 3,
            photometric,
            bits_allocated: 8,
            bits_stored: 8,
            signed: false,
            pixels,
            ..Self::grey16(rows, columns, &[])
        }
    }

    fn with(mut self, tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) -> Self {
        self.extra.push(el(tag, vr, value));
        self
    }

    fn file(&self) -> Vec<u8> {
        let mut elements = vec![
            DataElement::new(
                tags::SOP_CLASS_UID,
                VR::UI,
                uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
            ),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "2.25.1"),
            DataElement::new(tags::MODALITY, VR::CS, "OT"),
            el(tags::SAMPLES_PER_PIXEL, VR::US, self.samples),
            DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, self.photometric),
            el(tags::ROWS, VR::US, self.rows),
            el(tags::COLUMNS, VR::US, self.columns),
            el(tags::BITS_ALLOCATED, VR::US, self.bits_allocated),
            el(tags::BITS_STORED, VR::US, self.bits_stored),
            el(tags::HIGH_BIT, VR::US, self.bits_stored - 1),
            el(tags::PIXEL_REPRESENTATION, VR::US, u16::from(self.signed)),
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::from(self.pixels.clone()),
            ),
        ];
        if self.samples == 3 {
            elements.push(el(tags::PLANAR_CONFIGURATION, VR::US, self.planar));
        }
        if let Some(frames) = self.frames {
            elements.push(DataElement::new(
                tags::NUMBER_OF_FRAMES,
                VR::IS,
                frames.to_string().as_str(),
            ));
        }
        elements.extend(self.extra.iter().cloned());
        let obj = InMemDicomObject::from_element_iter(elements)
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .unwrap();
        let mut out = Vec::new();
        obj.write_all(&mut out).unwrap();
        out
    }
}

fn el(tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) -> InMemElement {
    DataElement::new(tag, vr, value.into())
}

/// A 64×64 signed CT in HU + 1024 stored, air (-1000 HU) around a disc of soft tissue and
/// bone, padding (-2000 stored) in the corners, no window: what CT1 looks like.
fn ct_without_window() -> Synthetic {
    let mut values = Vec::new();
    for y in 0..64i32 {
        for x in 0..64i32 {
            let r2 = (x - 32).pow(2) + (y - 32).pow(2);
            let hu = match r2 {
                0..=99 => 700,
                100..=599 => 40,
                600..=1023 => -1000,
                _ => -3024,
            };
            values.push((hu + 1024) as i16);
        }
    }
    Synthetic::grey16(64, 64, &values)
        .with(tags::RESCALE_INTERCEPT, VR::DS, "-1024")
        .with(tags::RESCALE_SLOPE, VR::DS, "1")
        .with(tags::PIXEL_PADDING_VALUE, VR::SS, -2000i16)
}

fn try_picture(bytes: &[u8], frame: u32, window: Option<Window>) -> Result<Picture, RenderError> {
    render_picture(&open(bytes)?, frame, window)
}

fn picture(bytes: &[u8], frame: u32, window: Option<Window>) -> Picture {
    try_picture(bytes, frame, window).unwrap()
}

fn mean(data: &[u8]) -> f64 {
    data.iter().map(|v| f64::from(*v)).sum::<f64>() / data.len() as f64
}

/// Decodes a PNG produced by [`render`]: (width, height, channels, pixels).
fn decode_png(png_bytes: &[u8]) -> (u32, u32, u8, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    buf.truncate(frame.buffer_size());
    let channels = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    (frame.width, frame.height, channels, buf)
}

/// (width, height) from a JPEG's first SOF marker.
fn jpeg_size(jpeg: &[u8]) -> (u32, u32) {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "no JPEG SOI");
    assert_eq!(&jpeg[jpeg.len() - 2..], &[0xFF, 0xD9], "no JPEG EOI");
    let mut at = 2;
    loop {
        let (marker, len) = (
            jpeg[at + 1],
            u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]),
        );
        if matches!(marker, 0xC0..=0xC2) {
            let h = u16::from_be_bytes([jpeg[at + 5], jpeg[at + 6]]);
            let w = u16::from_be_bytes([jpeg[at + 7], jpeg[at + 8]]);
            return (w.into(), h.into());
        }
        at += 2 + usize::from(len);
    }
}

#[test]
fn signed_ct_without_window_is_not_black() {
    let file = ct_without_window().file();
    let info = info(&file).unwrap();
    assert_eq!((info.pixel_representation, info.window), (1, None));
    let p = picture(&file, 0, None);
    // air black, bone white, tissue in between: the default spans -1000..700 HU, not the
    // padding, and not the unsigned reading of negative samples
    let at = |x: usize, y: usize| p.data[y * 64 + x];
    assert_eq!(at(32 - 30, 32), 0, "air");
    assert_eq!(at(32, 32), 255, "bone");
    let tissue = at(32 + 15, 32);
    assert!((150..=170).contains(&tissue), "tissue at {tissue}");
    let mean = mean(&p.data);
    assert!((40.0..200.0).contains(&mean), "mean {mean}");
}

#[test]
fn window_from_request_changes_output() {
    let file = ct_without_window().file();
    let soft = picture(
        &file,
        0,
        Some(Window {
            center: 40.0,
            width: 400.0,
        }),
    );
    let wide = picture(
        &file,
        0,
        Some(Window {
            center: 0.0,
            width: 4000.0,
        }),
    );
    assert_ne!(soft, wide);
    // PS3.3 C.11.2.1.2.1 at the centre: (40 - 39.5) / 399 + 0.5 → 128
    assert_eq!(soft.data[32 * 64 + 47], 128);
    // the window in the file is overridden by the request
    let file = ct_without_window()
        .with(tags::WINDOW_CENTER, VR::DS, "40")
        .with(tags::WINDOW_WIDTH, VR::DS, "400")
        .file();
    assert_eq!(
        info(&file).unwrap().window,
        Some(Window {
            center: 40.0,
            width: 400.0
        })
    );
    assert_eq!(picture(&file, 0, None), soft);
    assert_eq!(
        picture(
            &file,
            0,
            Some(Window {
                center: 0.0,
                width: 4000.0
            })
        ),
        wide
    );
}

#[test]
fn monochrome1_is_inverted() {
    let mono2 = ct_without_window();
    let mono1 = Synthetic {
        photometric: "MONOCHROME1",
        ..mono2.clone()
    };
    let window = Some(Window {
        center: 40.0,
        width: 400.0,
    });
    for window in [None, window] {
        let a = picture(&mono2.file(), 0, window);
        let b = picture(&mono1.file(), 0, window);
        assert!(a
            .data
            .iter()
            .zip(&b.data)
            .all(|(x, y)| u16::from(*x) + u16::from(*y) == 255));
    }
}

#[test]
fn voi_lut_sequence_is_applied() {
    // 8-bit unsigned ramp; the LUT maps 0..=3 to 0, 1000, 2000, 4095 (12 bits) and saturates
    let mut lut_item = InMemDicomObject::new_empty();
    lut_item.put(el(tags::LUT_DESCRIPTOR, VR::US, [4u16, 0, 12]));
    lut_item.put(el(tags::LUT_DATA, VR::US, [0u16, 1000, 2000, 4095]));
    let mut image = Synthetic {
        bits_allocated: 8,
        bits_stored: 8,
        signed: false,
        pixels: vec![0, 1, 2, 3, 4, 200],
        ..Synthetic::grey16(1, 6, &[])
    };
    image.extra.push(DataElement::new(
        tags::VOILUT_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(vec![lut_item]),
    ));
    let p = picture(&image.file(), 0, None);
    assert_eq!(p.data, [0, 62, 125, 255, 255, 255]);
}

#[test]
fn rgb_and_ybr_render_as_rgb() {
    let rgb = [255u8, 0, 0, 0, 255, 0, 0, 0, 255, 128, 128, 128];
    let p = picture(&Synthetic::rgb8(2, 2, "RGB", rgb.to_vec()).file(), 0, None);
    assert_eq!((p.channels, p.data.as_slice()), (3, &rgb[..]));

    let planar = [255u8, 0, 0, 128, 0, 255, 0, 128, 0, 0, 255, 128];
    let image = Synthetic {
        planar: 1,
        ..Synthetic::rgb8(2, 2, "RGB", planar.to_vec())
    };
    assert_eq!(picture(&image.file(), 0, None).data, rgb);
    assert_eq!(
        raw_frame(&image.file(), 0).unwrap(),
        rgb,
        "raw frames are interleaved"
    );

    // YBR_FULL: grey stays grey; pure red is Y 76, Cb 85, Cr 255
    let ybr = [128u8, 128, 128, 76, 85, 255];
    let p = picture(
        &Synthetic::rgb8(1, 2, "YBR_FULL", ybr.to_vec()).file(),
        0,
        None,
    );
    assert_eq!(&p.data[..3], &[128, 128, 128]);
    assert!(
        p.data[3] >= 253 && p.data[4] <= 2 && p.data[5] <= 2,
        "{:?}",
        p.data
    );

    // native YBR_FULL_422: Y1 Y2 Cb Cr, two bytes a pixel
    let image = Synthetic::rgb8(1, 2, "YBR_FULL_422", vec![50, 200, 128, 128]);
    assert_eq!(
        picture(&image.file(), 0, None).data,
        [50, 50, 50, 200, 200, 200]
    );
    assert_eq!(raw_frame(&image.file(), 0).unwrap(), [50, 200, 128, 128]);
}

#[test]
fn palette_colour_goes_through_the_lookup_tables() {
    // 8-bit indices, 256-entry 16-bit LUTs: red ramps up, green ramps down, blue is 0x8000
    let red: Vec<u16> = (0..256u16).map(|i| i << 8).collect();
    let green: Vec<u16> = (0..256u16).map(|i| (255 - i) << 8).collect();
    let blue = vec![0x8000u16; 256];
    let lut = |v: Vec<u16>| PrimitiveValue::U16(v.into());
    let image = Synthetic {
        photometric: "PALETTE COLOR",
        bits_allocated: 8,
        bits_stored: 8,
        signed: false,
        pixels: vec![0, 10, 255, 128],
        ..Synthetic::grey16(2, 2, &[])
    }
    .with(
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        VR::US,
        [0u16, 0, 16],
    )
    .with(
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        VR::US,
        [0u16, 0, 16],
    )
    .with(
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        VR::US,
        [0u16, 0, 16],
    )
    .with(tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA, VR::OW, lut(red))
    .with(
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        VR::OW,
        lut(green),
    )
    .with(
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        VR::OW,
        lut(blue),
    );
    // 0 in the descriptor means 65536 entries; ours has 256, so 0 must still work
    let p = picture(&image.file(), 0, None);
    assert_eq!(p.channels, 3);
    assert_eq!(
        p.data,
        [0, 255, 128, 10, 245, 128, 255, 0, 128, 128, 127, 128]
    );
}

#[test]
fn segmented_palette_is_unsupported_not_grey() {
    let image = Synthetic {
        photometric: "PALETTE COLOR",
        bits_allocated: 8,
        bits_stored: 8,
        signed: false,
        pixels: vec![0, 1, 2, 3],
        ..Synthetic::grey16(2, 2, &[])
    }
    .with(
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        VR::US,
        [256u16, 0, 16],
    )
    .with(
        tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        VR::OW,
        [0u16, 2, 0, 0xFFFF],
    );
    let err = render(&image.file(), 0, &RenderOptions::default()).unwrap_err();
    assert!(matches!(err, RenderError::Unsupported { .. }), "{err}");
}

#[test]
fn multi_frame_renders_and_extracts_each_frame() {
    // three 2×2 frames, 8-bit, values frame*10 + pixel
    let pixels: Vec<u8> = (0..3u8)
        .flat_map(|f| (0..4u8).map(move |p| f * 10 + p))
        .collect();
    let image = Synthetic {
        frames: Some(3),
        bits_allocated: 8,
        bits_stored: 8,
        signed: false,
        pixels: pixels.clone(),
        ..Synthetic::grey16(2, 2, &[])
    };
    let file = image.file();
    assert_eq!(info(&file).unwrap().frames, 3);
    for frame in 0..3 {
        assert_eq!(
            raw_frame(&file, frame).unwrap(),
            &pixels[frame as usize * 4..][..4]
        );
        let window = Some(Window {
            center: 12.0,
            width: 26.0,
        }); // 0..25 → 0..255
        let p = picture(&file, frame, window);
        let expected: Vec<u8> = pixels[frame as usize * 4..][..4]
            .iter()
            .map(|v| (((f64::from(*v) - 11.5) / 25.0 + 0.5) * 255.0).round() as u8)
            .collect();
        assert_eq!(p.data, expected, "frame {frame}");
    }
    assert!(matches!(
        render(&file, 3, &RenderOptions::default()),
        Err(RenderError::FrameOutOfRange {
            frame: 3,
            frames: 3
        })
    ));
    assert!(matches!(
        raw_frame(&file, 7),
        Err(RenderError::FrameOutOfRange {
            frame: 7,
            frames: 3
        })
    ));
}

/// Native frames are read without a copy, from the file's bytes where the Pixel Data ends the
/// file and else from the parsed Pixel Data: either way they must be exactly what
/// dicom-pixeldata decodes, for 8 and 16 bits, grey and colour, in every frame. An element
/// after the Pixel Data sends the file down the whole parse.
#[test]
fn native_frames_are_borrowed_and_what_the_decoder_gives() {
    use dicom_pixeldata::PixelDecoder;
    let grey: Vec<i16> = (0..3 * 4 * 5)
        .map(|v| (v * 997 % 4096) as i16 - 1024)
        .collect();
    let multi_grey = Synthetic {
        frames: Some(3),
        ..Synthetic::grey16(4, 5, &grey)
    };
    let images = [
        (multi_grey.clone(), true),
        (Synthetic::rgb8(2, 3, "RGB", (0..18).collect()), true),
        (
            Synthetic {
                frames: Some(3),
                bits_allocated: 8,
                bits_stored: 8,
                signed: false,
                pixels: (0..60).collect(),
                ..Synthetic::grey16(4, 5, &[])
            },
            true,
        ),
        (
            multi_grey.with(Tag(0x7FE1, 0x0010), VR::LO, "AFTER THE PIXELS"),
            false,
        ),
    ];
    for (image, at_the_end) in images {
        let file = image.file();
        let opened = open(&file).unwrap();
        assert_eq!(opened.native.is_some(), at_the_end);
        let obj = parse(&file).unwrap();
        let attrs = pixels::Attrs::read(&obj).unwrap();
        for frame in 0..attrs.frames {
            let len = (attrs.rows * attrs.columns) as usize
                * usize::from(attrs.samples_per_pixel * attrs.bits_allocated / 8);
            let decoded = obj.decode_pixel_data_frame(frame).unwrap().into_data();
            for ours in [
                opened.decode(frame).unwrap(),
                pixels::decode_frame(&obj, &attrs, frame, None).unwrap(),
            ] {
                assert!(matches!(ours.data, std::borrow::Cow::Borrowed(_)));
                assert_eq!(&ours.data[..], &decoded[..len]);
            }
        }
    }
}

/// A file cut anywhere from its Pixel Data's header on, or with any byte of that header (read
/// from the raw bytes, see `open`) or of the frames flipped, renders or is an error, never a
/// panic. (Only there: with `RUST_BACKTRACE` set, each parse error records a backtrace, and
/// every byte of the file took 90 s.)
#[test]
fn cut_or_flipped_pixel_data_never_panics() {
    let grey: Vec<i16> = (0..3 * 4 * 5).map(|v| v as i16 * 13 - 300).collect();
    let file = Synthetic {
        frames: Some(3),
        ..Synthetic::grey16(4, 5, &grey)
    }
    .file();
    let header = file.len() - grey.len() * 2 - 12;
    let try_all = |bytes: &[u8]| {
        for frame in [0, 2] {
            let _ = render(bytes, frame, &RenderOptions::default());
            let _ = raw_frame(bytes, frame);
        }
    };
    for len in (header..file.len()).step_by(5) {
        try_all(&file[..len]);
    }
    for i in (header..header + 12).chain([file.len() - 1]) {
        let mut flipped = file.clone();
        flipped[i] ^= 0xFF;
        try_all(&flipped);
    }
    // the header found where it should be, so the last test exercised the in-place path
    assert_eq!(
        &file[header..header + 6],
        &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W']
    );
}

#[test]
fn one_bit_frames_that_do_not_end_on_a_byte_are_found() {
    // 3×3 = 9 pixels a frame, 2 frames: frame 1 starts at bit 9
    let frame0 = [1u8, 0, 1, 0, 1, 0, 1, 0, 1];
    let frame1 = [0u8, 1, 1, 0, 0, 0, 0, 0, 1];
    let mut packed = vec![0u8; 4];
    for (i, bit) in frame0.iter().chain(&frame1).enumerate() {
        packed[i / 8] |= bit << (i % 8);
    }
    let image = Synthetic {
        frames: Some(2),
        bits_allocated: 1,
        bits_stored: 1,
        signed: false,
        pixels: packed,
        ..Synthetic::grey16(3, 3, &[])
    };
    let file = image.file();
    let p = picture(&file, 1, None);
    let expected: Vec<u8> = frame1.iter().map(|b| b * 255).collect();
    assert_eq!(p.data, expected);
    assert_eq!(raw_frame(&file, 1).unwrap(), [0b0000_0110, 0b1]);
}

#[test]
fn broken_input_is_an_error_not_a_panic() {
    for bytes in [&b""[..], b"DICM", &[0u8; 300], &[0xFFu8; 1000]] {
        assert!(matches!(info(bytes), Err(RenderError::Parse(_))));
        assert!(render(bytes, 0, &RenderOptions::default()).is_err());
        assert!(raw_frame(bytes, 0).is_err());
        assert!(thumbnail(bytes, 64).is_err());
    }
    // float pixel data (parametric maps) is refused, not called missing
    let float = InMemDicomObject::from_element_iter([
        el(tags::ROWS, VR::US, 1u16),
        el(tags::COLUMNS, VR::US, 1u16),
        el(tags::FLOAT_PIXEL_DATA, VR::OF, PrimitiveValue::from(0.5f32)),
    ])
    .with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.30")
            .media_storage_sop_instance_uid("2.25.3"),
    )
    .unwrap();
    let mut file = Vec::new();
    float.write_all(&mut file).unwrap();
    assert!(matches!(info(&file), Err(RenderError::Unsupported { .. })));
    // pixel data shorter than the attributes promise
    let mut image = ct_without_window();
    image.pixels.truncate(100);
    let err = render(&image.file(), 0, &RenderOptions::default()).unwrap_err();
    assert!(matches!(err, RenderError::Decode(_)), "{err}");
    // a header without pixel data
    let image = InMemDicomObject::from_element_iter([DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        "2.25.2",
    )])
    .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
    .unwrap();
    let mut file = Vec::new();
    image.write_all(&mut file).unwrap();
    assert!(matches!(info(&file), Err(RenderError::NoPixelData)));
    assert!(matches!(raw_frame(&file, 0), Err(RenderError::NoPixelData)));
}

#[test]
fn viewport_keeps_aspect_and_fits() {
    let values: Vec<i16> = (0..300 * 100).map(|i| (i % 300) as i16).collect();
    let file = Synthetic::grey16(100, 300, &values).file();
    let sized = |viewport| {
        let png = render(
            &file,
            0,
            &RenderOptions {
                viewport,
                ..Default::default()
            },
        )
        .unwrap();
        let (w, h, _, _) = decode_png(&png);
        (w, h)
    };
    assert_eq!(sized(None), (300, 100));
    assert_eq!(sized(Some((64, 64))), (64, 21));
    assert_eq!(sized(Some((1000, 30))), (90, 30));
    assert_eq!(sized(Some((1000, 1000))), (300, 100), "never upscaled");
    assert_eq!(sized(Some((0, 0))), (1, 1));
    // the mean survives area averaging
    let full = picture(&file, 0, None);
    let small = resize::fit(full.clone(), 60, 60);
    assert!((mean(&full.data) - mean(&small.data)).abs() < 1.0);

    let jpeg = thumbnail(&file, 50).unwrap();
    assert_eq!(jpeg_size(&jpeg), (50, 17));
}

#[test]
fn png_holds_the_rendered_pixels() {
    let file = ct_without_window().file();
    let png = render(&file, 0, &RenderOptions::default()).unwrap();
    let (w, h, channels, data) = decode_png(&png);
    let p = picture(&file, 0, None);
    assert_eq!(
        (w, h, channels, data),
        (p.width, p.height, p.channels, p.data)
    );
    let jpeg = render(
        &file,
        0,
        &RenderOptions {
            format: Format::Jpeg { quality: 90 },
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(jpeg_size(&jpeg), (64, 64));
}

// ---- the WG04 corpus ----------------------------------------------------------------------

fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("DISCLESS_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: no corpus at {}", dir.display());
        None
    }
}

/// (name such as "CT1", bytes) of every file in a WG04 folder.
fn wg04(corpus: &Path, folder: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus.join("wg04").join(folder))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            let name = name.split('_').next().unwrap().to_string();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

#[test]
fn lossless_encodings_render_identically_to_reference() {
    let Some(corpus) = corpus() else { return };
    let reference = wg04(&corpus, "REF");
    assert_eq!(reference.len(), 16);
    let mut compared = 0;
    for folder in ["RLE", "JPLL"] {
        for (name, bytes) in wg04(&corpus, folder) {
            let (_, ref_bytes) = reference.iter().find(|(n, _)| *n == name).unwrap();
            let expected = picture(ref_bytes, 0, None);
            assert_eq!(picture(&bytes, 0, None), expected, "{folder} {name}");
            // and through the PNG encoder
            let (w, h, _, data) =
                decode_png(&render(&bytes, 0, &RenderOptions::default()).unwrap());
            assert_eq!(
                (w, h, data),
                (expected.width, expected.height, expected.data),
                "{name}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 27);
}

#[test]
fn raw_frames_match_reference_pixel_data() {
    let Some(corpus) = corpus() else { return };
    let reference = wg04(&corpus, "REF");
    for (name, bytes) in &reference {
        let info = info(bytes).unwrap();
        let raw = raw_frame(bytes, 0).unwrap();
        let len = info.rows as usize
            * info.columns as usize
            * usize::from(info.samples_per_pixel)
            * usize::from(info.bits_allocated / 8);
        assert_eq!(raw.len(), len, "{name}");
        let obj = parse(bytes).unwrap();
        let stored = obj
            .element(tags::PIXEL_DATA)
            .unwrap()
            .value()
            .to_bytes()
            .unwrap();
        assert_eq!(raw, stored[..len], "{name}");
    }
    for folder in ["RLE", "JPLL"] {
        for (name, bytes) in wg04(&corpus, folder) {
            let (_, ref_bytes) = reference.iter().find(|(n, _)| *n == name).unwrap();
            assert!(
                raw_frame(&bytes, 0).unwrap() == raw_frame(ref_bytes, 0).unwrap(),
                "{folder} {name}"
            );
        }
    }
}

/// Lossy JPEG: 8-bit renders with the registry's decoder; 12-bit (most of WG04's JPLY) with
/// GDCM when built with the `gdcm` feature, else it is refused with the reason. Decoded samples
/// must equal those of `gdcmconv --raw` (dcmtk's `dcmdjpeg` refuses several of these streams);
/// the rendered picture must stay within the compression's loss of the uncompressed original.
#[test]
fn lossy_jpeg_decodes_like_gdcm_and_renders_close_to_reference_or_fails_cleanly() {
    let Some(corpus) = corpus() else { return };
    let dir = tempfile::tempdir().unwrap();
    let reference = wg04(&corpus, "REF");
    let (mut rendered, mut refused) = (0, 0);
    for (name, bytes) in wg04(&corpus, "JPLY") {
        let info = info(&bytes).unwrap();
        match try_picture(&bytes, 0, None) {
            Ok(p) => {
                rendered += 1;
                let input = corpus.join("wg04/JPLY").join(format!("{name}_JPLY"));
                if let Some(raw) = transcode(dir.path(), "gdcmconv", &["--raw"], &input) {
                    assert!(
                        raw_frame(&bytes, 0).unwrap() == raw_frame(&raw, 0).unwrap(),
                        "{name}: decoded otherwise than gdcmconv --raw"
                    );
                }
                // MG1's reference is not in the corpus (too large).
                let Some((_, ref_bytes)) = reference.iter().find(|(n, _)| *n == name) else {
                    continue;
                };
                let diff = mean_difference(&p.data, &picture(ref_bytes, 0, None).data);
                eprintln!("{name}: mean difference {diff:.2} from REF");
                assert!(diff < 8.0, "{name}: mean difference {diff} from REF");
            }
            Err(RenderError::Unsupported { reason, .. }) => {
                refused += 1;
                if cfg!(feature = "gdcm") {
                    panic!("{name} refused: {reason}");
                }
                assert!(info.bits_stored > 8, "{name} refused: {reason}");
                assert!(
                    reason.contains("12-bit lossy JPEG needs GDCM"),
                    "{name}: {reason}"
                );
            }
            Err(other) => panic!("{name}: {other}"),
        }
    }
    eprintln!("JPLY: {rendered} rendered, {refused} refused");
    assert_eq!(rendered + refused, 10);
}

#[test]
fn corpus_ct_without_window_is_not_black() {
    let Some(corpus) = corpus() else { return };
    let ct1 = std::fs::read(corpus.join("wg04/REF/CT1_UNC")).unwrap();
    assert_eq!(info(&ct1).unwrap().window, None);
    let mean = mean(&picture(&ct1, 0, None).data);
    assert!((30.0..200.0).contains(&mean), "mean {mean}");
    let rg3 = std::fs::read(corpus.join("wg04/REF/RG3_UNC")).unwrap();
    let info = info(&rg3).unwrap();
    assert_eq!(
        (info.photometric.as_str(), info.window),
        (
            "MONOCHROME1",
            Some(Window {
                center: 550.0,
                width: 1024.0
            })
        )
    );
}

#[test]
fn corpus_objects_without_pixels_and_segmentations() {
    let Some(corpus) = corpus() else { return };
    let dcmqi = corpus.join("dcmqi");
    for sr in ["sr-example/sr.dcm", "sr-example/rwvm.dcm"] {
        let bytes = std::fs::read(dcmqi.join(sr)).unwrap();
        assert!(
            matches!(info(&bytes), Err(RenderError::NoPixelData)),
            "{sr}"
        );
        assert!(matches!(
            render(&bytes, 0, &RenderOptions::default()),
            Err(RenderError::NoPixelData)
        ));
    }
    // 1-bit SEG whose frames do not end on a byte boundary: every frame renders
    let seg = std::fs::read(dcmqi.join("segmentations/23x38x3/seg/label.seg")).unwrap();
    let info = info(&seg).unwrap();
    assert_eq!(
        (info.bits_allocated, info.frames, info.rows * info.columns),
        (1, 3, 874)
    );
    for frame in 0..info.frames {
        render(&seg, frame, &RenderOptions::default()).unwrap();
        assert_eq!(raw_frame(&seg, frame).unwrap().len(), 874usize.div_ceil(8));
    }
    // a 16-bit multi-frame: each raw frame is its slice of the pixel data
    let mf = std::fs::read(dcmqi.join("segmentations/23x38x3/multiframe/mf.dcm")).unwrap();
    let stored = parse(&mf)
        .unwrap()
        .element(tags::PIXEL_DATA)
        .unwrap()
        .value()
        .to_bytes()
        .unwrap()
        .to_vec();
    assert_eq!(
        raw_frames(&mf, &[0, 1, 2]).unwrap().concat(),
        stored[..3 * 1748]
    );
    assert!(matches!(
        raw_frames(&mf, &[2, 3]),
        Err(RenderError::FrameOutOfRange { frame: 3, .. })
    ));
    for frame in 0..3 {
        assert_eq!(
            raw_frame(&mf, frame).unwrap(),
            stored[frame as usize * 1748..][..1748]
        );
        render(&mf, frame, &RenderOptions::default()).unwrap();
    }
    assert!(matches!(
        raw_frame(&mf, 3),
        Err(RenderError::FrameOutOfRange {
            frame: 3,
            frames: 3
        })
    ));
}

// ---- JPEG baseline built here, and files transcoded by dcmtk and GDCM -------------------

/// An encapsulated single-frame file holding `fragments` as Pixel Data.
fn encapsulated(image: &Synthetic, transfer_syntax: &str, fragments: Vec<Vec<u8>>) -> Vec<u8> {
    let native = parse(&image.file()).unwrap();
    let mut obj: InMemDicomObject = (*native).clone();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        dicom_core::value::Value::PixelSequence(dicom_core::value::PixelFragmentSequence::new(
            Vec::new(),
            fragments,
        )),
    ));
    let obj = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(transfer_syntax))
        .unwrap();
    let mut out = Vec::new();
    obj.write_all(&mut out).unwrap();
    out
}

fn mean_difference(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn jpeg_baseline_decodes_to_rgb_even_in_many_fragments() {
    let (w, h) = (48u16, 32u16);
    let rgb: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| [(x * 5) as u8, (y * 7) as u8, 128]))
        .collect();
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, 95)
        .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    let image = Synthetic::rgb8(h, w, "YBR_FULL_422", Vec::new());
    let baseline = "1.2.840.10008.1.2.4.50";
    for fragments in [
        vec![jpeg.clone()],
        jpeg.chunks(100).map(<[u8]>::to_vec).collect(),
    ] {
        let file = encapsulated(&image, baseline, fragments);
        let p = picture(&file, 0, None);
        assert_eq!((p.width, p.height, p.channels), (48, 32, 3));
        let diff = mean_difference(&p.data, &rgb);
        assert!(diff < 3.0, "mean difference {diff}");
        assert_eq!(raw_frame(&file, 0).unwrap().len(), 48 * 32 * 3);
    }
    // a stream cut short, and one with its entropy-coded data scrambled
    let cut = encapsulated(&image, baseline, vec![jpeg[..jpeg.len() / 2].to_vec()]);
    let mut scrambled = jpeg.clone();
    let middle = scrambled.len() / 2;
    scrambled[middle - 50..middle + 50].fill(0xFF);
    let scrambled = encapsulated(&image, baseline, vec![scrambled]);
    for file in [cut, scrambled] {
        if let Err(err) = render(&file, 0, &RenderOptions::default()) {
            assert!(matches!(err, RenderError::Decode(_)), "{err}");
        }
    }
}

/// Runs a dcmtk or GDCM tool (Debian's `dcmtk`, `libgdcm-tools`) on `input`: the output
/// file's bytes. A missing tool skips the case, except under CI=true, where tests/run.sh
/// installs them.
fn transcode(dir: &Path, tool: &str, args: &[&str], input: &Path) -> Option<Vec<u8>> {
    let program = Path::new("/usr/bin").join(tool);
    if !program.is_file() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "{} is required under CI=true",
            program.display()
        );
        eprintln!("SKIPPED: {} is not installed", program.display());
        return None;
    }
    let out = dir.join(format!("{}-{}", tool, args.join("")));
    let status = std::process::Command::new(&program)
        .args(args)
        .arg(input)
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{tool} {args:?} {}", input.display());
    Some(std::fs::read(&out).unwrap())
}

#[test]
fn transcoded_reference_images_render_identically() {
    let Some(corpus) = corpus() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lossless: [(&str, &[&str]); 6] = [
        ("dcmconv", &["+ti"]),
        ("dcmconv", &["+tb"]),
        ("dcmconv", &["+td"]),
        ("dcmcjpeg", &["+el"]),
        ("dcmcrle", &[]),
        ("gdcmconv", &["--j2k"]),
    ];
    for name in ["CT1_UNC", "MR2_UNC", "RG3_UNC", "US1_UNC", "VL1_UNC"] {
        let input = corpus.join("wg04/REF").join(name);
        let reference = std::fs::read(&input).unwrap();
        let expected = picture(&reference, 0, None);
        let expected_raw = raw_frame(&reference, 0).unwrap();
        for (tool, args) in lossless {
            let Some(bytes) = transcode(dir.path(), tool, args, &input) else {
                continue;
            };
            assert_eq!(picture(&bytes, 0, None), expected, "{tool} {args:?} {name}");
            assert!(
                raw_frame(&bytes, 0).unwrap() == expected_raw,
                "{tool} {args:?} {name}"
            );
        }
        // JPEG 2000 lossy decodes
        if let Some(bytes) = transcode(
            dir.path(),
            "gdcmconv",
            &["--j2k", "--lossy", "-q", "40"],
            &input,
        ) {
            render(&bytes, 0, &RenderOptions::default()).unwrap();
        }
        // JPEG-LS: lossless renders identically with GDCM (the `gdcm` feature), near-lossless
        // (NEAR=2) renders; without GDCM both are refused with the reason.
        for (args, lossless) in [(&[][..], true), (&["+en"][..], false)] {
            if !lossless && name == "CT1_UNC" {
                continue; // dcmcjpls encodes signed pixels only losslessly
            }
            let Some(bytes) = transcode(dir.path(), "dcmcjpls", args, &input) else {
                continue;
            };
            match (cfg!(feature = "gdcm"), lossless) {
                (true, true) => {
                    assert_eq!(picture(&bytes, 0, None), expected, "JPEG-LS {name}");
                    assert!(
                        raw_frame(&bytes, 0).unwrap() == expected_raw,
                        "JPEG-LS {name}"
                    );
                }
                (true, false) => {
                    let diff = mean_difference(&picture(&bytes, 0, None).data, &expected.data);
                    assert!(
                        diff < 3.0,
                        "JPEG-LS near-lossless {name}: mean difference {diff}"
                    );
                }
                (false, _) => {
                    let err = render(&bytes, 0, &RenderOptions::default()).unwrap_err();
                    assert!(
                        matches!(&err, RenderError::Unsupported { reason, .. } if reason.contains("JPEG-LS needs GDCM")),
                        "{err}"
                    );
                }
            }
        }
    }
    // 8-bit colour through JPEG baseline (YBR_FULL_422), and back to native YBR_FULL planar
    for name in ["US1_UNC", "VL1_UNC"] {
        let input = corpus.join("wg04/REF").join(name);
        let expected = picture(&std::fs::read(&input).unwrap(), 0, None);
        let Some(jpeg) = transcode(dir.path(), "dcmcjpeg", &["+eb"], &input) else {
            return;
        };
        let diff = mean_difference(&picture(&jpeg, 0, None).data, &expected.data);
        assert!(diff < 3.0, "{name} baseline: mean difference {diff}");
        let jpeg_path = dir.path().join(format!("{name}.jpb"));
        std::fs::write(&jpeg_path, &jpeg).unwrap();
        let Some(ybr) = transcode(dir.path(), "dcmdjpeg", &["+cn", "+pl"], &jpeg_path) else {
            return;
        };
        let info = info(&ybr).unwrap();
        assert_eq!(info.photometric, "YBR_FULL", "{name}");
        let diff = mean_difference(&picture(&ybr, 0, None).data, &expected.data);
        assert!(diff < 3.0, "{name} native YBR_FULL: mean difference {diff}");
    }
}
#[test]
fn every_corpus_file_renders_or_is_refused_cleanly() {
    let Some(corpus) = corpus() else { return };
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&corpus, &mut files);
    let (mut rendered, mut refused, mut without_pixels) = (0, 0, 0);
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let frames = match info(&bytes) {
            Ok(info) => info.frames,
            Err(RenderError::NoPixelData) => {
                without_pixels += 1;
                continue;
            }
            Err(RenderError::Parse(_)) if bytes.get(128..132).is_none_or(|m| m != b"DICM") => {
                continue; // README, LICENSE
            }
            Err(e) => panic!("{}: {e}", path.display()),
        };
        // first, middle and last frames
        for frame in [0, frames / 2, frames - 1] {
            match render(&bytes, frame, &RenderOptions::default()) {
                Ok(png) => {
                    rendered += 1;
                    decode_png(&png);
                    raw_frame(&bytes, frame).unwrap();
                }
                Err(RenderError::Unsupported { .. }) => refused += 1,
                Err(e) => panic!("{} frame {frame}: {e}", path.display()),
            }
        }
        if let Ok(jpeg) = thumbnail(&bytes, 96) {
            let (w, h) = jpeg_size(&jpeg);
            assert!(w.max(h) <= 96, "{}", path.display());
        }
    }
    eprintln!("corpus: {rendered} frames rendered, {refused} refused, {without_pixels} files without pixels");
    assert!(rendered > 0);
}

#[test]
fn unsupported_layouts_are_described_but_refused() {
    let cmyk = Synthetic {
        samples: 4,
        photometric: "CMYK",
        bits_allocated: 8,
        bits_stored: 8,
        signed: false,
        pixels: vec![0; 16],
        ..Synthetic::grey16(2, 2, &[])
    };
    let twelve = Synthetic {
        bits_allocated: 12,
        bits_stored: 12,
        pixels: vec![0; 6],
        ..Synthetic::grey16(2, 2, &[])
    };
    for image in [cmyk, twelve] {
        let file = image.file();
        assert_eq!(info(&file).unwrap().bits_allocated, image.bits_allocated);
        for result in [
            render(&file, 0, &RenderOptions::default()),
            raw_frame(&file, 0),
            thumbnail(&file, 32),
        ] {
            let err = result.unwrap_err();
            assert!(matches!(err, RenderError::Unsupported { .. }), "{err}");
        }
    }
}

#[test]
fn stored_values_are_masked_to_bits_stored_and_sign_extended() {
    // 12-bit signed in 16: -1 (0xFFF), 0, 2047 (0x7FF), -2048 (0x800), each with junk in the
    // unused high bits (old overlays), which must not count
    let words: [u16; 4] = [0x1FFF, 0xF000, 0x27FF, 0x4800];
    let image = Synthetic {
        bits_stored: 12,
        pixels: words.iter().flat_map(|w| w.to_le_bytes()).collect(),
        ..Synthetic::grey16(1, 4, &[])
    };
    let file = image.file();
    let p = picture(
        &file,
        0,
        Some(Window {
            center: 0.5,
            width: 4096.0,
        }),
    );
    // linear: (x - 0) / 4095 + 0.5
    let expected: Vec<u8> = [-1.0f64, 0.0, 2047.0, -2048.0]
        .iter()
        .map(|x| ((x / 4095.0 + 0.5) * 255.0).round() as u8)
        .collect();
    assert_eq!(p.data, expected);
    // raw frames keep the bytes as stored, junk included
    assert_eq!(raw_frame(&file, 0).unwrap(), image.pixels);
}

#[test]
fn voi_lut_function_of_the_file_is_honoured() {
    let image = |function: &str| {
        Synthetic {
            bits_allocated: 8,
            bits_stored: 8,
            signed: false,
            pixels: vec![90, 100, 110],
            ..Synthetic::grey16(1, 3, &[])
        }
        .with(tags::WINDOW_CENTER, VR::DS, "100")
        .with(tags::WINDOW_WIDTH, VR::DS, "20")
        .with(tags::VOILUT_FUNCTION, VR::CS, function)
        .file()
    };
    // LINEAR_EXACT: (x - 100) / 20 + 0.5 → 0, 0.5, 1
    assert_eq!(picture(&image("LINEAR_EXACT"), 0, None).data, [0, 128, 255]);
    // SIGMOID: 1 / (1 + e^(-4 (x - 100) / 20)) → 0.119, 0.5, 0.881
    assert_eq!(picture(&image("SIGMOID"), 0, None).data, [30, 128, 225]);
    // LINEAR: (x - 99.5) / 19 + 0.5 → 0, 0.526, 1
    assert_eq!(picture(&image("LINEAR"), 0, None).data, [0, 134, 255]);
}

#[test]
fn corrupted_files_give_errors_not_panics() {
    let Some(corpus) = corpus() else { return };
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    for name in [
        "RLE/CT1_RLE",
        "JPLL/CT1_JPLL",
        "RLE/US1_RLE",
        "JPLY/NM1_JPLY",
        "JPLY/MR1_JPLY", // 12-bit: GDCM with the `gdcm` feature
        "JPLY/XA1_JPLY",
    ] {
        let original = std::fs::read(corpus.join("wg04").join(name)).unwrap();
        for round in 0..40 {
            let mut bytes = original.clone();
            // Cut short anywhere, or flip bytes in the compressed pixel data. (Flipping header
            // bytes is left out: a corrupted length makes dicom-parser allocate and zero up to
            // 4 GiB before it fails, which the import's parser meets first.)
            if round % 3 == 0 {
                bytes.truncate(next() as usize % bytes.len());
            } else {
                for _ in 0..8 {
                    let at = bytes.len() / 2 + next() as usize % (bytes.len() / 2);
                    bytes[at] ^= next() as u8 | 1;
                }
            }
            let _ = render(&bytes, 0, &RenderOptions::default());
            let _ = raw_frame(&bytes, 0);
            let _ = info(&bytes);
        }
    }
}

/// A deterministic pseudo-random sequence (xorshift64) without a dependency.
pub(super) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// A stream GDCM fails on (its scan names a Huffman table that is not defined) gives a decode
/// error, and the next request for it is refused without calling GDCM again (gdcm-rs leaks its
/// output buffer on every failure).
#[cfg(feature = "gdcm")]
#[test]
fn a_stream_gdcm_failed_on_is_refused_again_without_it() {
    let Some(corpus) = corpus() else { return };
    let mut bytes = std::fs::read(corpus.join("wg04/JPLY/MR1_JPLY")).unwrap();
    let soi = bytes
        .windows(3)
        .position(|w| w == [0xFF, 0xD8, 0xFF])
        .unwrap();
    let sos = soi
        + bytes[soi..]
            .windows(2)
            .position(|w| w == [0xFF, 0xDA])
            .unwrap();
    bytes[sos + 6] = 0x33; // first component: DC and AC tables 3
    let messages: Vec<String> = (0..2)
        .map(|_| match render(&bytes, 0, &RenderOptions::default()) {
            Err(RenderError::Decode(message)) => message,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        messages[0].contains("GDCM could not decode frame 0"),
        "{messages:?}"
    );
    assert!(!messages[0].contains("failed before"), "{messages:?}");
    assert!(messages[1].contains("failed before"), "{messages:?}");
}
