//! Parsing one candidate file: is it DICOM, is it whole, and what do we index.

use std::io::Read;

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};

use super::json;
use crate::store::{ImageAttributes, InstanceRecord, StudyAttributes};

/// Files up to this size are read into memory once and parsed from there (one read for parse,
/// hash and seal). Larger ones are parsed up to the pixel data only and streamed when sealing,
/// so memory stays bounded whatever the instance size.
pub const IN_MEMORY_LIMIT: u64 = 256 * 1024 * 1024;

/// The Media Storage SOP Class of a DICOMDIR.
pub const MEDIA_STORAGE_DIRECTORY: &str = "1.2.840.10008.1.3.10";

/// Why a file is not importable. The text is shown to the user next to the file's path.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    #[error("not a DICOM file (no \"DICM\" marker after the 128-byte preamble)")]
    NotDicom,
    #[error("empty file")]
    Empty,
    #[error("broken DICOM file: {0}")]
    Broken(String),
    #[error("missing required attribute {0}")]
    Missing(&'static str),
    #[error("this is a DICOMDIR (a CD's index), not an image")]
    Dicomdir,
}

/// What an instance contributes to the index.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub instance: InstanceRecord,
    pub study: StudyAttributes,
    /// DICOM JSON of the instance's attributes (bulk data as URIs).
    pub metadata: String,
}

/// Cheap first check on the leading bytes: DICM at 128 (with preamble) or at 0 (without).
pub fn looks_like_dicom(head: &[u8]) -> bool {
    head.get(128..132) == Some(b"DICM") || head.get(0..4) == Some(b"DICM")
}

fn clean(s: &str) -> String {
    s.trim_end_matches(['\0', ' ']).trim_start().to_owned()
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> String {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| clean(&s)))
        .unwrap_or_default()
}

fn floats(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    let s = text(obj, tag);
    if s.is_empty() {
        return None;
    }
    s.split('\\')
        .map(|v| v.trim().parse::<f64>().ok())
        .collect::<Option<Vec<f64>>>()
        .filter(|v| !v.is_empty())
}

fn float(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<f64> {
    floats(obj, tag).and_then(|v| v.first().copied())
}

fn int(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<i64> {
    let s = text(obj, tag);
    let first = s.split('\\').next().unwrap_or("").trim();
    first
        .parse::<i64>()
        .ok()
        .or_else(|| first.parse::<f64>().ok().map(|f| f as i64))
        .or_else(|| {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_int::<i64>().ok())
        })
}

/// Parses a whole file held in memory (checks it is complete).
pub fn parse_bytes(bytes: &[u8]) -> Result<Parsed, ParseError> {
    precheck(bytes)?;
    let walked = super::dicomdir::check_lengths(bytes).map_err(ParseError::Broken)?;
    // When the length walk covered the whole data set, the file is known to be complete, and
    // the attributes we index all come before Pixel Data: parsing stops there, which spares
    // a copy and conversion of the pixels. Otherwise the full parse is the completeness check.
    let opts = if walked {
        OpenFileOptions::new().read_until(tags::PIXEL_DATA)
    } else {
        OpenFileOptions::new()
    };
    let obj = opts
        .from_reader(bytes)
        .map_err(|e| ParseError::Broken(flatten_error(&e)))?;
    extract(&obj, bytes.len() as u64)
}

/// Parses a large file up to its pixel data.
pub fn parse_header(path: &std::path::Path, size: u64) -> Result<Parsed, ParseError> {
    let mut head = [0u8; 132];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| ParseError::Broken(e.to_string()))?;
    precheck(&head[..n])?;
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| ParseError::Broken(flatten_error(&e)))?;
    extract(&obj, size)
}

fn precheck(head: &[u8]) -> Result<(), ParseError> {
    if head.is_empty() {
        return Err(ParseError::Empty);
    }
    if !looks_like_dicom(head) {
        return Err(ParseError::NotDicom);
    }
    Ok(())
}

/// dicom-rs errors nest their causes; show the whole chain on one line.
fn flatten_error(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn extract(obj: &DefaultDicomObject, size: u64) -> Result<Parsed, ParseError> {
    let meta = obj.meta();
    let media_class = clean(&meta.media_storage_sop_class_uid);
    if media_class == MEDIA_STORAGE_DIRECTORY {
        return Err(ParseError::Dicomdir);
    }
    let mut sop_class = text(obj, tags::SOP_CLASS_UID);
    if sop_class.is_empty() {
        sop_class = media_class;
    }
    let mut sop = text(obj, tags::SOP_INSTANCE_UID);
    if sop.is_empty() {
        sop = clean(&meta.media_storage_sop_instance_uid);
    }
    if sop.is_empty() {
        return Err(ParseError::Missing("SOPInstanceUID (0008,0018)"));
    }
    let study_uid = text(obj, tags::STUDY_INSTANCE_UID);
    if study_uid.is_empty() {
        return Err(ParseError::Missing("StudyInstanceUID (0020,000D)"));
    }
    let series_uid = text(obj, tags::SERIES_INSTANCE_UID);
    if series_uid.is_empty() {
        return Err(ParseError::Missing("SeriesInstanceUID (0020,000E)"));
    }
    let u32_of = |t| int(obj, t).and_then(|v| u32::try_from(v).ok());
    let instance = InstanceRecord {
        study_instance_uid: study_uid,
        series_instance_uid: series_uid,
        sop_instance_uid: sop,
        sop_class_uid: sop_class,
        transfer_syntax_uid: clean(&meta.transfer_syntax),
        instance_number: int(obj, tags::INSTANCE_NUMBER),
        rows: u32_of(tags::ROWS),
        columns: u32_of(tags::COLUMNS),
        number_of_frames: u32_of(tags::NUMBER_OF_FRAMES),
        series_number: int(obj, tags::SERIES_NUMBER),
        series_description: text(obj, tags::SERIES_DESCRIPTION),
        modality: text(obj, tags::MODALITY),
        body_part_examined: text(obj, tags::BODY_PART_EXAMINED),
        size,
        plaintext_hash: String::new(),
        blob_id: String::new(),
        imported_unix: 0,
        image: ImageAttributes {
            image_position_patient: floats(obj, tags::IMAGE_POSITION_PATIENT),
            slice_location: float(obj, tags::SLICE_LOCATION),
            pixel_spacing: floats(obj, tags::PIXEL_SPACING)
                .or_else(|| floats(obj, tags::IMAGER_PIXEL_SPACING)),
            window_center: float(obj, tags::WINDOW_CENTER),
            window_width: float(obj, tags::WINDOW_WIDTH),
            rescale_slope: float(obj, tags::RESCALE_SLOPE),
            rescale_intercept: float(obj, tags::RESCALE_INTERCEPT),
            photometric_interpretation: text(obj, tags::PHOTOMETRIC_INTERPRETATION),
            samples_per_pixel: int(obj, tags::SAMPLES_PER_PIXEL)
                .and_then(|v| u16::try_from(v).ok()),
            bits_allocated: int(obj, tags::BITS_ALLOCATED).and_then(|v| u16::try_from(v).ok()),
            bits_stored: int(obj, tags::BITS_STORED).and_then(|v| u16::try_from(v).ok()),
            pixel_representation: int(obj, tags::PIXEL_REPRESENTATION)
                .and_then(|v| u16::try_from(v).ok()),
        },
    };
    let study = StudyAttributes {
        patient_name: text(obj, tags::PATIENT_NAME),
        patient_id: text(obj, tags::PATIENT_ID),
        patient_birth_date: text(obj, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(obj, tags::PATIENT_SEX),
        study_date: text(obj, tags::STUDY_DATE),
        study_time: text(obj, tags::STUDY_TIME),
        study_description: text(obj, tags::STUDY_DESCRIPTION),
        accession_number: text(obj, tags::ACCESSION_NUMBER),
        referring_physician_name: text(obj, tags::REFERRING_PHYSICIAN_NAME),
        study_id: text(obj, tags::STUDY_ID),
    };
    let has_pixels = instance.rows.is_some() && instance.columns.is_some();
    let metadata = json::dataset(
        obj,
        json::Location {
            study: &instance.study_instance_uid,
            series: &instance.series_instance_uid,
            instance: &instance.sop_instance_uid,
        },
        has_pixels,
    )
    .to_string();
    Ok(Parsed {
        instance,
        study,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_dicom_and_empty_are_named() {
        assert_eq!(parse_bytes(b"").unwrap_err(), ParseError::Empty);
        assert_eq!(
            parse_bytes(b"hello, this is a text file").unwrap_err(),
            ParseError::NotDicom
        );
        let mut garbage = vec![0u8; 128];
        garbage.extend_from_slice(b"DICM");
        garbage.extend((0..500).map(|i| (i * 13) as u8));
        assert!(matches!(parse_bytes(&garbage), Err(ParseError::Broken(_))));
    }

    #[test]
    fn a_huge_declared_length_is_refused_before_parsing() {
        // Meta group + one OB element claiming ~4 GB in a tiny file: dicom-parser would
        // allocate the whole declared length; the length check refuses it first.
        let mut v = vec![0u8; 128];
        v.extend_from_slice(b"DICM");
        let ts = b"1.2.840.10008.1.2.1\0";
        let mut meta = Vec::new();
        meta.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        meta.extend_from_slice(&(ts.len() as u16).to_le_bytes());
        meta.extend_from_slice(ts);
        v.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        v.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        v.extend_from_slice(&meta);
        v.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
        v.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        v.extend_from_slice(&[0u8; 64]);
        match parse_bytes(&v) {
            Err(ParseError::Broken(r)) => assert!(r.contains("past its container"), "{r}"),
            other => panic!("expected a broken-file error, got {other:?}"),
        }
    }

    #[test]
    fn arbitrary_prefixes_never_panic() {
        let mut v = vec![0u8; 128];
        v.extend_from_slice(b"DICM\x02\x00\x00\x00UL\x04\x00");
        for n in 0..v.len() + 40 {
            let mut w = v.clone();
            w.resize(n, 0xFF);
            let _ = parse_bytes(&w);
        }
    }
}
