//! Reading and writing DICOMDIR files (PS3.10 §8, PS3.3 Annex F).
//!
//! A DICOMDIR is the index at the root of a DICOM file-set: a patient's CD, or the folder we burn
//! for one. dicom-rs 0.10 has no DICOMDIR API, and it cannot write one through `InMemDicomObject`:
//! the records are linked by **byte offsets** (Next, Lower, and the root First/Last offsets), and
//! dicom-object re-encodes sequences and items with undefined length, so the offsets it would keep
//! point into the void. We therefore encode the data set ourselves, in two passes: encode every
//! record's keys and so learn its exact size, then assign offsets and stream the file out.
//!
//! Layout written (Explicit VR Little Endian throughout, every length explicit):
//! ```text
//! 128-byte zero preamble, "DICM", file meta group (0002): Media Storage Directory Storage,
//!   a fresh 2.25 UID, Explicit VR LE, our implementation class UID and version name
//! (0004,1130) FileSetID "DISCLESS"
//! (0004,1200) / (0004,1202) offsets of the first and last PATIENT record
//! (0004,1212) FileSetConsistencyFlag 0
//! (0004,1220) DirectoryRecordSequence, explicit length, items in depth-first order:
//!   PATIENT → its STUDYs → their SERIES → their IMAGEs, then the next PATIENT
//!   each item: (0004,1400) Next, (0004,1410) RecordInUseFlag FFFFH, (0004,1420) Lower,
//!   (0004,1430) record type, then the record's keys in tag order
//! ```
//! Offsets count from the first byte of the file (the preamble): PS3.3 F.3.2.1 counts them "from
//! the first byte of the File Meta Information", which PS3.10 §7.1 defines to start with the
//! preamble, and dcmtk's `dcmmkdir` puts its first record at 406 = 128 + 4 + 204 + 70. Siblings are
//! chained by Next (0 ends the chain), Lower points at a record's first child.
//!
//! The keys are those PS3.3 F.5 requires and the General Purpose CD-R profile (STD-GEN-CD,
//! PS3.11 Annex D) relies on: PATIENT (PatientName, PatientID), STUDY (StudyDate, StudyTime,
//! AccessionNumber, StudyDescription, StudyInstanceUID, StudyID), SERIES (Modality,
//! SeriesInstanceUID, SeriesNumber), IMAGE (ReferencedFileID, the three Referenced…InFile UIDs,
//! InstanceNumber). SpecificCharacterSet (Type 1C) is added to a record whose keys are not plain
//! ASCII: ISO_IR 100 when every value of the file-set fits Latin-1, else ISO_IR 192 (UTF-8).
//!
//! Limits, on purpose: records are grouped by PatientID, then StudyInstanceUID, then
//! SeriesInstanceUID, and the first record seen names its patient, study and series. Every
//! instance gets an IMAGE record, also SR or PDF objects (readers cope; the richer record types
//! need keys we do not carry). Empty Type 1 keys stay empty: we do not invent dates or numbers a
//! reader would take for real. STD-GEN-CD strictly means Explicit VR LE files; we reference each
//! file in the transfer syntax it has, as most burners do.
//!
//! Reading takes what patients' CDs hold, so it is defensive: the file is bounded
//! ([`MAX_DICOMDIR_BYTES`]) and parsed by a small walker of our own rather than dicom-object,
//! which trusts declared lengths (see `parse`); it accepts explicit and undefined lengths,
//! nested sequences and Implicit VR LE. It follows the record sequence, not the offsets, so a
//! DICOMDIR with broken offsets still yields its files, and it refuses file ids that would
//! leave the CD's folder.
//!
//! One file on purpose, reader and writer beside the encoding they share; over half of it is
//! tests. Should it grow, the seam is `dicomdir/read.rs` and `dicomdir/write.rs`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use dicom_core::Tag;
use dicom_dictionary_std::{tags, uids};

/// The FileSetID we write: CS, at most 16 characters.
const FILE_SET_ID: &str = "DISCLESS";

/// Discless's implementation class UID (a 2.25 UUID-derived root, generated once for the project).
const IMPLEMENTATION_CLASS_UID: &str = "2.25.276850999684860862727329665528788386865";

/// ImplementationVersionName (SH, at most 16 characters); a unit test keeps it short enough.
const IMPLEMENTATION_VERSION_NAME: &str = concat!("DISCLESS ", env!("CARGO_PKG_VERSION"));

/// Largest DICOMDIR we read. dcmmkdir writes about 250 bytes per image, so 256 MiB is a million
/// images: anything bigger is hostile or broken, and we hold the whole file in memory.
pub const MAX_DICOMDIR_BYTES: u64 = 256 * 1024 * 1024;

/// The item tag (PS3.5 §7.5); dictionary-std lists only data element tags.
const ITEM: Tag = Tag(0xFFFE, 0xE000);

/// PS3.10 §8.2: a File ID has at most eight components.
const MAX_FILE_ID_COMPONENTS: usize = 8;

/// PS3.10 §8.2: each component is at most eight characters.
const MAX_FILE_ID_COMPONENT_LEN: usize = 8;

/// PS3.5 §9.1: a UID is at most 64 characters.
const MAX_UID_LEN: usize = 64;

/// One image (instance) of the file-set, with the keys its DICOMDIR records need.
///
/// Values are written as given, minus trailing spaces and NULs (so values read from files, padded
/// or not, fit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub patient_id: String,
    pub patient_name: String,
    pub study_instance_uid: String,
    pub study_date: String,
    pub study_time: String,
    pub study_description: String,
    pub study_id: String,
    pub accession_number: String,
    pub series_instance_uid: String,
    pub modality: String,
    pub series_number: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub instance_number: String,
    /// Path components relative to the DICOMDIR, e.g. `["DICOM", "S0001", "I0001"]`: 1 to 8
    /// components of 1 to 8 characters from `A-Z`, `0-9` and `_` (PS3.10 §8.2, ISO 9660 level 1).
    pub file_id: Vec<String>,
}

/// Why a DICOMDIR could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DicomdirError {
    /// A record cannot go into a DICOMDIR as it is.
    #[error("cannot write DICOMDIR {path}: record {index} (SOP instance {sop_instance_uid:?}): {reason}")]
    InvalidRecord {
        path: PathBuf,
        index: usize,
        sop_instance_uid: String,
        reason: String,
    },
    /// Writing: no records were given. Reading: no in-use record references a file.
    #[error("DICOMDIR {path} references no files")]
    Empty { path: PathBuf },
    /// Reading: the file is over [`MAX_DICOMDIR_BYTES`]. Writing: offsets would not fit 32 bits.
    #[error("DICOMDIR {path} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("I/O error on DICOMDIR {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file parses but its Media Storage SOP Class is not Media Storage Directory Storage.
    #[error("{path} is not a DICOMDIR (Media Storage SOP Class {sop_class:?})")]
    NotDicomdir { path: PathBuf, sop_class: String },
    /// Not a well-formed DICOMDIR; the reason says what, and at which byte.
    #[error("malformed DICOMDIR {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    /// A Referenced File ID that would leave the file-set's folder (`..`, separators, drives).
    #[error("DICOMDIR {path} references an unsafe file id {file_id:?}")]
    UnsafeFileId { path: PathBuf, file_id: String },
}

/// Whether a file's Media Storage SOP Class (from its meta group) marks it as a DICOMDIR.
pub fn is_dicomdir(meta_media_storage_sop_class: &str) -> bool {
    trim_value(meta_media_storage_sop_class).trim_start() == uids::MEDIA_STORAGE_DIRECTORY_STORAGE
}

/// Writes a DICOMDIR for `records` at `path`.
///
/// The file is written beside `path` under a temporary name and renamed into place, so a failed
/// write never leaves a half DICOMDIR that a viewer would trust.
pub fn write(path: &Path, records: &[Record]) -> Result<(), DicomdirError> {
    let plan = Plan::new(path, records)?;
    let tmp = temp_path(path);
    let io_err = |source| DicomdirError::Io {
        path: path.to_path_buf(),
        source,
    };
    let result = File::create(&tmp).and_then(|file| {
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        plan.write_to(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    });
    if let Err(e) = result.and_then(|()| std::fs::rename(&tmp, path)) {
        // Best effort: the original error is the one worth reporting.
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    Ok(())
}

/// The files a DICOMDIR references, joined to the DICOMDIR's folder, in record order.
///
/// Records not in use (RecordInUseFlag 0) are skipped, and a file referenced twice is listed
/// once. CDs written by other systems are often read back with lower-case names (or ISO 9660
/// `;1` versions) on case-sensitive file systems, so a component that does not exist as written
/// is matched case-insensitively against its folder's entries. A file that cannot be found is
/// still returned as written: the caller reports it.
pub fn referenced_files(path: &Path) -> Result<Vec<PathBuf>, DicomdirError> {
    let file_ids = read_file_ids(path)?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut listings = Listings::default();
    Ok(file_ids
        .iter()
        .map(|id| resolve(base, id, &mut listings))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Reading

/// The Referenced File IDs of the in-use records, deduplicated, each validated as safe to join.
fn read_file_ids(path: &Path) -> Result<Vec<Vec<String>>, DicomdirError> {
    let io_err = |source| DicomdirError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if size > MAX_DICOMDIR_BYTES {
        return Err(DicomdirError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit: MAX_DICOMDIR_BYTES,
        });
    }
    let mut bytes = Vec::new();
    // `take` keeps the bound even if the file grows while we read it.
    file.take(MAX_DICOMDIR_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    let records = parse(&bytes).map_err(|e| match e {
        ParseError::NotDicomdir(sop_class) => DicomdirError::NotDicomdir {
            path: path.to_path_buf(),
            sop_class,
        },
        ParseError::Malformed(reason) => DicomdirError::Malformed {
            path: path.to_path_buf(),
            reason,
        },
    })?;

    let mut seen = HashSet::new();
    let mut file_ids = Vec::new();
    for record in records {
        let Some(raw) = record.file_id.filter(|_| record.in_use) else {
            continue;
        };
        let components: Vec<String> = raw
            .split('\\')
            .map(|c| c.trim_matches([' ', '\0']).to_owned())
            .collect();
        if components.iter().all(String::is_empty) {
            continue;
        }
        if !components.iter().all(|c| is_safe_component(c)) {
            return Err(DicomdirError::UnsafeFileId {
                path: path.to_path_buf(),
                file_id: raw,
            });
        }
        if seen.insert(components.clone()) {
            file_ids.push(components);
        }
    }
    if file_ids.is_empty() {
        return Err(DicomdirError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(file_ids)
}

/// What [`parse`] keeps of a directory record.
#[derive(Debug)]
struct RawRecord {
    in_use: bool,
    file_id: Option<String>,
}

#[derive(Debug)]
enum ParseError {
    NotDicomdir(String),
    Malformed(String),
}

/// Nesting we follow before calling a file hostile; real DICOMDIRs nest two or three deep.
const MAX_DEPTH: usize = 32;

/// Value length meaning "until the delimiter" (PS3.5 §7.1.1).
const UNDEFINED: u32 = u32::MAX;
const ITEM_DELIMITER: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: Tag = Tag(0xFFFE, 0xE0DD);

/// Parses a DICOMDIR held in memory: file meta group, then the Directory Record Sequence.
///
/// We do not hand these bytes to dicom-object: 0.10 believes declared lengths and fills a buffer
/// of that size before reading, so one corrupt byte in a 1.5 KB file made it allocate and zero
/// 1.2 GB (up to 4 GiB per element). Here every length is checked against what contains it.
fn parse(bytes: &[u8]) -> Result<Vec<RawRecord>, ParseError> {
    let mut pos = if bytes.get(128..132) == Some(b"DICM") {
        132
    } else if bytes.get(..4) == Some(b"DICM") {
        4
    } else {
        return Err(malformed(0, "not a DICOM file (no DICM magic)"));
    };
    // The meta group is Explicit VR LE whatever the data set uses.
    let meta = Walker {
        bytes,
        explicit: true,
    };
    let (mut sop_class, mut transfer_syntax) = (String::new(), String::new());
    while let Some(tag) = bytes.get(pos..pos + 4).map(|_| tag_at(bytes, pos)) {
        if tag.group() != 0x0002 {
            break;
        }
        let h = meta.header(pos, bytes.len())?;
        let value = h.value(bytes)?;
        match tag {
            tags::MEDIA_STORAGE_SOP_CLASS_UID => sop_class = text(value),
            tags::TRANSFER_SYNTAX_UID => transfer_syntax = text(value),
            _ => {}
        }
        pos = h.end;
    }
    if !is_dicomdir(&sop_class) {
        return Err(ParseError::NotDicomdir(trim_value(&sop_class).to_owned()));
    }
    let walker = Walker {
        bytes,
        // PS3.10 §8.6 asks for Explicit VR LE; Implicit VR LE ones exist and are easy to read.
        explicit: match trim_value(&transfer_syntax) {
            uids::EXPLICIT_VR_LITTLE_ENDIAN => true,
            uids::IMPLICIT_VR_LITTLE_ENDIAN => false,
            other => {
                let reason = format!("transfer syntax {other:?} is not one a DICOMDIR uses");
                return Err(malformed(pos, &reason));
            }
        },
    };
    let mut records = None;
    walker.dataset(pos, Until::End(bytes.len()), 0, &mut |h| {
        if h.tag == tags::DIRECTORY_RECORD_SEQUENCE && records.is_none() {
            records = Some(walker.records(h)?);
        }
        Ok(())
    })?;
    records.ok_or_else(|| malformed(pos, "no Directory Record Sequence (0004,1220)"))
}

/// Checks, without allocating for any value, that every element length of a Part-10 file in
/// little endian (explicit or implicit VR) fits inside what contains it, descending into
/// sequences. Other transfer syntaxes (big endian, deflate) are not checked here. Returns
/// whether the whole data set was walked (so it is known to be complete).
///
/// The importer runs this before dicom-object parses, because dicom-parser 0.10 fills a
/// buffer of the declared size before reading: one corrupt length in a 7 KB file made it
/// allocate and zero 4 GB. The DICOMDIR reader above is built on the same walker.
pub(crate) fn check_lengths(bytes: &[u8]) -> Result<bool, String> {
    let mut pos = if bytes.get(128..132) == Some(b"DICM") {
        132
    } else if bytes.get(..4) == Some(b"DICM") {
        4
    } else {
        return Ok(false); // not ours to judge: the parser reports "not DICOM"
    };
    let meta = Walker {
        bytes,
        explicit: true,
    };
    let mut transfer_syntax = String::new();
    while let Some(tag) = bytes.get(pos..pos + 4).map(|_| tag_at(bytes, pos)) {
        if tag.group() != 0x0002 {
            break;
        }
        let h = meta.header(pos, bytes.len()).map_err(reason)?;
        if tag == tags::TRANSFER_SYNTAX_UID {
            transfer_syntax = text(h.value(bytes).map_err(reason)?);
        }
        pos = h.end;
    }
    let explicit = match trim_value(&transfer_syntax) {
        uids::IMPLICIT_VR_LITTLE_ENDIAN => false,
        // Explicit VR big endian (retired) and deflate: not walked here.
        "1.2.840.10008.1.2.2" | uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN => return Ok(false),
        _ => true,
    };
    let walker = Walker { bytes, explicit };
    walker
        .nested(pos, Until::End(bytes.len()), 0)
        .map(|_| true)
        .map_err(reason)
}

fn reason(e: ParseError) -> String {
    match e {
        ParseError::Malformed(r) | ParseError::NotDicomdir(r) => r,
    }
}

impl Walker<'_> {
    /// Like `dataset`, but also descends into explicit-VR sequences of defined length.
    fn nested(&self, pos: usize, until: Until, depth: usize) -> Result<usize, ParseError> {
        if depth > MAX_DEPTH {
            return Err(malformed(
                pos,
                &format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.dataset(pos, until, depth, &mut |h| {
            if &h.vr == b"SQ" && h.len != UNDEFINED {
                self.sequence(
                    h.value_start,
                    Until::End(h.end),
                    depth + 1,
                    &mut |s, u| match u {
                        Until::End(_) => self.nested(s, u, depth + 2),
                        Until::Delimiter => self.skip_item(s, u, depth + 2),
                    },
                )?;
            }
            Ok(())
        })
    }
}

fn malformed(pos: usize, reason: &str) -> ParseError {
    ParseError::Malformed(format!("at byte {pos}: {reason}"))
}

fn tag_at(bytes: &[u8], pos: usize) -> Tag {
    Tag(le_u16(bytes, pos), le_u16(bytes, pos + 2))
}

/// Little-endian integers; callers have checked the bounds, and a short read gives 0.
fn le_u16(bytes: &[u8], pos: usize) -> u16 {
    bytes
        .get(pos..pos + 2)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

fn le_u32(bytes: &[u8], pos: usize) -> u32 {
    bytes
        .get(pos..pos + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// A value as text, without its padding; CS and UI are ASCII, anything else is shown lossily.
fn text(value: &[u8]) -> String {
    trim_value(&String::from_utf8_lossy(value)).to_owned()
}

/// Where a data set or sequence ends: at a known byte, or at its delimiter item.
#[derive(Debug, Clone, Copy)]
enum Until {
    End(usize),
    Delimiter,
}

/// An element header, with where its value starts and (for a defined length) ends.
#[derive(Debug)]
struct Header {
    tag: Tag,
    /// The explicit VR, or blanks where there is none (items, Implicit VR).
    vr: [u8; 2],
    len: u32,
    value_start: usize,
    /// End of the value; for an undefined length, end of the value's delimiter once walked.
    end: usize,
}

impl Header {
    fn value<'a>(&self, bytes: &'a [u8]) -> Result<&'a [u8], ParseError> {
        if self.len == UNDEFINED {
            let reason = format!("{} has an undefined length", self.tag);
            return Err(malformed(self.value_start, &reason));
        }
        Ok(bytes.get(self.value_start..self.end).unwrap_or_default())
    }
}

/// Walks encoded elements without allocating for them, each length checked against its container.
#[derive(Debug, Clone, Copy)]
struct Walker<'a> {
    bytes: &'a [u8],
    explicit: bool,
}

impl Walker<'_> {
    /// The header at `pos`, whose value must end by `limit`.
    fn header(&self, pos: usize, limit: usize) -> Result<Header, ParseError> {
        let fits = |n: usize| pos.checked_add(n).is_some_and(|e| e <= limit);
        if !fits(8) {
            return Err(malformed(pos, "truncated element header"));
        }
        let tag = tag_at(self.bytes, pos);
        let mut vr = *b"  ";
        let (len, value_start) = if tag.group() == 0xFFFE || !self.explicit {
            (le_u32(self.bytes, pos + 4), pos + 8)
        } else {
            vr = le_u16(self.bytes, pos + 4).to_le_bytes();
            if !vr.iter().all(u8::is_ascii_uppercase) {
                return Err(malformed(pos, &format!("{tag} has no valid VR")));
            }
            // PS3.5 Table 7.1-1; VRs we do not know are taken to be long ones, as new VRs are.
            let short = [
                b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
                b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
            ];
            if short.contains(&&vr) {
                (u32::from(le_u16(self.bytes, pos + 6)), pos + 8)
            } else if fits(12) {
                (le_u32(self.bytes, pos + 8), pos + 12)
            } else {
                return Err(malformed(pos, "truncated element header"));
            }
        };
        let end = if len == UNDEFINED {
            value_start
        } else {
            value_start
                .checked_add(len as usize)
                .filter(|&e| e <= limit)
                .ok_or_else(|| {
                    malformed(
                        pos,
                        &format!("{tag} claims {len} bytes, past its container"),
                    )
                })?
        };
        Ok(Header {
            tag,
            vr,
            len,
            value_start,
            end,
        })
    }

    /// Walks the elements of a data set (or item) from `pos`, calling `visit` for each; an
    /// element of undefined length is walked to its delimiter first. Returns the end position.
    fn dataset(
        &self,
        mut pos: usize,
        until: Until,
        depth: usize,
        visit: &mut dyn FnMut(&Header) -> Result<(), ParseError>,
    ) -> Result<usize, ParseError> {
        let limit = match until {
            Until::End(end) => end,
            Until::Delimiter => self.bytes.len(),
        };
        loop {
            if matches!(until, Until::End(end) if pos >= end) {
                return Ok(pos);
            }
            let mut h = self.header(pos, limit)?;
            if h.tag == ITEM_DELIMITER {
                match until {
                    Until::Delimiter => return Ok(h.value_start),
                    // Some writers end even defined-length items with one; it carries nothing.
                    Until::End(_) => {
                        pos = h.value_start;
                        continue;
                    }
                }
            }
            if h.len == UNDEFINED {
                // PS3.5 §6.2.2: the items of an undefined-length UN are Implicit VR LE.
                let inner = Walker {
                    explicit: self.explicit && &h.vr != b"UN",
                    ..*self
                };
                h.end =
                    inner.sequence(h.value_start, Until::Delimiter, depth + 1, &mut |s, u| {
                        inner.skip_item(s, u, depth + 1)
                    })?;
                if h.end > limit {
                    return Err(malformed(
                        pos,
                        &format!("{} runs past its container", h.tag),
                    ));
                }
            }
            visit(&h)?;
            pos = h.end;
        }
    }

    /// Finds the end of an item's content without looking inside when its length is known.
    fn skip_item(&self, start: usize, until: Until, depth: usize) -> Result<usize, ParseError> {
        match until {
            Until::End(end) => Ok(end),
            Until::Delimiter => self.dataset(start, until, depth, &mut |_| Ok(())),
        }
    }

    /// Walks the items of a sequence from `pos`, calling `item` with each item's content start
    /// and extent; `item` returns where the item ended. Returns the end of the sequence (after
    /// its delimiter, if any).
    fn sequence(
        &self,
        mut pos: usize,
        until: Until,
        depth: usize,
        item: &mut dyn FnMut(usize, Until) -> Result<usize, ParseError>,
    ) -> Result<usize, ParseError> {
        if depth > MAX_DEPTH {
            return Err(malformed(
                pos,
                &format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let limit = match until {
            Until::End(end) => end,
            Until::Delimiter => self.bytes.len(),
        };
        loop {
            if matches!(until, Until::End(end) if pos >= end) {
                return Ok(pos);
            }
            let h = self.header(pos, limit)?;
            pos = match h.tag {
                SEQUENCE_DELIMITER if matches!(until, Until::Delimiter) => return Ok(h.value_start),
                ITEM if h.len == UNDEFINED => item(h.value_start, Until::Delimiter)?,
                ITEM => item(h.value_start, Until::End(h.end))?,
                other => return Err(malformed(pos, &format!("{other} where an item belongs"))),
            };
            if pos > limit {
                return Err(malformed(h.value_start, "item runs past its sequence"));
            }
        }
    }

    /// The directory records of the Directory Record Sequence `h`.
    fn records(&self, h: &Header) -> Result<Vec<RawRecord>, ParseError> {
        let until = if h.len == UNDEFINED {
            Until::Delimiter
        } else {
            Until::End(h.end)
        };
        let mut records = Vec::new();
        self.sequence(h.value_start, until, 1, &mut |start, until| {
            let mut record = RawRecord {
                in_use: true,
                file_id: None,
            };
            let end = self.dataset(start, until, 2, &mut |e| {
                match e.tag {
                    tags::RECORD_IN_USE_FLAG => {
                        record.in_use = le_u16(e.value(self.bytes)?, 0) != 0;
                    }
                    tags::REFERENCED_FILE_ID => {
                        record.file_id = Some(text(e.value(self.bytes)?));
                    }
                    _ => {}
                }
                Ok(())
            })?;
            records.push(record);
            Ok(end)
        })?;
        Ok(records)
    }
}

/// A component that, joined to a folder, stays inside it on every platform we run on.
fn is_safe_component(c: &str) -> bool {
    !c.is_empty()
        && c != "."
        && c != ".."
        && !c
            .chars()
            .any(|ch| matches!(ch, '/' | '\\' | ':') || ch.is_control())
}

/// Directory listings by folder, keyed by [`fold_name`], read once each on first need.
#[derive(Debug, Default)]
struct Listings(HashMap<PathBuf, HashMap<String, OsString>>);

impl Listings {
    /// The actual name in `dir` that matches `component` when case and ISO 9660 decorations are
    /// ignored; the smallest one if several do, so the answer does not depend on listing order.
    fn find(&mut self, dir: &Path, component: &str) -> Option<&OsString> {
        let listing = self.0.entry(dir.to_path_buf()).or_insert_with(|| {
            let mut names: HashMap<String, OsString> = HashMap::new();
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = entry.file_name();
                let key = fold_name(&name.to_string_lossy());
                match names.get(&key) {
                    Some(existing) if *existing <= name => {}
                    _ => {
                        names.insert(key, name);
                    }
                }
            }
            names
        });
        listing.get(&fold_name(component))
    }
}

/// Upper-case, without an ISO 9660 version (`;1`) or a bare trailing dot, as CD drivers show them.
fn fold_name(name: &str) -> String {
    let name = match name.rsplit_once(';') {
        Some((stem, version)) if version.bytes().all(|b| b.is_ascii_digit()) => stem,
        _ => name,
    };
    name.strip_suffix('.').unwrap_or(name).to_ascii_uppercase()
}

/// Joins `components` to `base`, taking each as written when it exists and else the entry of its
/// folder that matches it case-insensitively; past the first component found neither way, the
/// rest are joined as written.
fn resolve(base: &Path, components: &[String], listings: &mut Listings) -> PathBuf {
    let mut path = base.to_path_buf();
    let mut found = true;
    for component in components {
        let exact = path.join(component);
        if !found || exact.symlink_metadata().is_ok() {
            path = exact;
            continue;
        }
        match listings.find(&path, component) {
            Some(name) => path.push(name),
            None => {
                path = exact;
                found = false;
            }
        }
    }
    path
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Which character set the file-set's text is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    /// The default repertoire; no SpecificCharacterSet needed.
    Ascii,
    /// ISO_IR 100: every value fits the printable part of ISO 8859-1.
    Latin1,
    /// ISO_IR 192: UTF-8, for everything else.
    Utf8,
}

impl Charset {
    fn for_values<'a>(values: impl Iterator<Item = &'a str>) -> Self {
        let mut charset = Charset::Ascii;
        for value in values.filter(|v| !v.is_ascii()) {
            if value
                .chars()
                .all(|c| c.is_ascii() || ('\u{a0}'..='\u{ff}').contains(&c))
            {
                charset = Charset::Latin1;
            } else {
                return Charset::Utf8;
            }
        }
        charset
    }

    /// The SpecificCharacterSet value (already of even length).
    fn term(self) -> &'static str {
        match self {
            Charset::Ascii => "",
            Charset::Latin1 => "ISO_IR 100",
            Charset::Utf8 => "ISO_IR 192",
        }
    }

    fn encode(self, value: &str) -> Vec<u8> {
        match self {
            // Only chosen when every char is at most U+00FF, so the cast cannot truncate.
            Charset::Latin1 => value.chars().map(|c| c as u8).collect(),
            Charset::Ascii | Charset::Utf8 => value.as_bytes().to_vec(),
        }
    }
}

/// One directory record, encoded except for its three link elements.
#[derive(Debug)]
struct Entry {
    /// DirectoryRecordType and the keys, in tag order.
    body: Vec<u8>,
    next: Option<usize>,
    lower: Option<usize>,
}

/// Bytes of an item's header and its Next, RecordInUseFlag and Lower elements.
const ITEM_FIXED_LEN: u64 = 8 + 12 + 10 + 12;

impl Entry {
    fn item_len(&self) -> u64 {
        ITEM_FIXED_LEN + self.body.len() as u64
    }
}

/// Everything needed to write the file, with sizes known: the first pass.
#[derive(Debug)]
struct Plan {
    meta: Vec<u8>,
    /// Entries in depth-first order, the order they are written.
    entries: Vec<Entry>,
    /// Byte offset of each entry's item tag from the start of the file.
    offsets: Vec<u32>,
    first_root: Option<usize>,
    last_root: Option<usize>,
    sequence_len: u32,
}

/// Sort key for IS values: numbers first, by value, then anything else by text.
fn number_key(value: &str) -> (bool, i64, &str) {
    match value.trim().parse::<i64>() {
        Ok(n) => (false, n, value),
        Err(_) => (true, 0, value),
    }
}

/// Records grouped PATIENT → STUDY → SERIES → IMAGE, each level in the order we write it.
type Tree<'a> = Vec<(
    &'a Record,
    Vec<(&'a Record, Vec<(&'a Record, Vec<&'a Record>)>)>,
)>;

fn group(records: &[Record]) -> Tree<'_> {
    let mut tree: Tree<'_> = Vec::new();
    let mut patients: HashMap<&str, usize> = HashMap::new();
    let mut studies: HashMap<(usize, &str), usize> = HashMap::new();
    let mut series: HashMap<(usize, usize, &str), usize> = HashMap::new();
    for record in records {
        let p = *patients.entry(&record.patient_id).or_insert_with(|| {
            tree.push((record, Vec::new()));
            tree.len() - 1
        });
        let study_list = &mut tree[p].1;
        let s = *studies
            .entry((p, &record.study_instance_uid))
            .or_insert_with(|| {
                study_list.push((record, Vec::new()));
                study_list.len() - 1
            });
        let series_list = &mut study_list[s].1;
        let e = *series
            .entry((p, s, &record.series_instance_uid))
            .or_insert_with(|| {
                series_list.push((record, Vec::new()));
                series_list.len() - 1
            });
        series_list[e].1.push(record);
    }
    // Sorted so that the same records always give the same DICOMDIR, whatever their order.
    tree.sort_by(|a, b| a.0.patient_id.cmp(&b.0.patient_id));
    for (_, study_list) in &mut tree {
        study_list.sort_by(|a, b| {
            (&a.0.study_date, &a.0.study_time, &a.0.study_instance_uid).cmp(&(
                &b.0.study_date,
                &b.0.study_time,
                &b.0.study_instance_uid,
            ))
        });
        for (_, series_list) in study_list {
            series_list.sort_by(|a, b| {
                (number_key(&a.0.series_number), &a.0.series_instance_uid)
                    .cmp(&(number_key(&b.0.series_number), &b.0.series_instance_uid))
            });
            for (_, images) in series_list {
                images.sort_by(|a, b| {
                    (number_key(&a.instance_number), &a.sop_instance_uid)
                        .cmp(&(number_key(&b.instance_number), &b.sop_instance_uid))
                });
            }
        }
    }
    tree
}

impl Plan {
    fn new(path: &Path, records: &[Record]) -> Result<Self, DicomdirError> {
        if records.is_empty() {
            return Err(DicomdirError::Empty {
                path: path.to_path_buf(),
            });
        }
        let records: Vec<Record> = records.iter().map(Record::trimmed).collect();
        validate(path, &records)?;
        let charset = Charset::for_values(records.iter().flat_map(Record::text_values));
        // Only patient and study keys can be long enough to fail, and a failing record is
        // reported by its position in the caller's slice.
        let index_of = |r: &Record| {
            records
                .iter()
                .position(|x| std::ptr::eq(x, r))
                .unwrap_or_default()
        };
        let invalid = |r: &Record, reason: String| DicomdirError::InvalidRecord {
            path: path.to_path_buf(),
            index: index_of(r),
            sop_instance_uid: r.sop_instance_uid.clone(),
            reason,
        };

        let mut entries: Vec<Entry> = Vec::new();
        let mut first_root = None;
        let mut prev_patient = None;
        for (patient, study_list) in group(&records) {
            let p = push(
                &mut entries,
                None,
                &mut prev_patient,
                patient_body(patient, charset),
            )
            .map_err(|e| invalid(patient, e))?;
            first_root.get_or_insert(p);
            let mut prev_study = None;
            for (study, series_list) in study_list {
                let s = push(
                    &mut entries,
                    Some(p),
                    &mut prev_study,
                    study_body(study, charset),
                )
                .map_err(|e| invalid(study, e))?;
                let mut prev_series = None;
                for (series, images) in series_list {
                    let body = series_body(series, charset);
                    let e = push(&mut entries, Some(s), &mut prev_series, body)
                        .map_err(|e| invalid(series, e))?;
                    let mut prev_image = None;
                    for image in images {
                        push(
                            &mut entries,
                            Some(e),
                            &mut prev_image,
                            image_body(image, charset),
                        )
                        .map_err(|e| invalid(image, e))?;
                    }
                }
            }
        }

        let meta = encode_meta(&fresh_uid());
        let mut dataset_header = Vec::new();
        dataset_header_into(&mut dataset_header, 0, 0, 0);
        let data_start = 128 + 4 + meta.len() as u64 + dataset_header.len() as u64;
        let too_large = |size| DicomdirError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit: u64::from(u32::MAX),
        };
        let mut offsets = Vec::with_capacity(entries.len());
        let mut position = data_start;
        for entry in &entries {
            offsets.push(u32::try_from(position).map_err(|_| too_large(position))?);
            position += entry.item_len();
        }
        // 0xFFFF_FFFF would mean "undefined length"; the end offset bounds everything else.
        if position >= u64::from(u32::MAX) {
            return Err(too_large(position));
        }
        let sequence_len = u32::try_from(position - data_start).map_err(|_| too_large(position))?;
        Ok(Plan {
            meta,
            entries,
            offsets,
            first_root,
            last_root: prev_patient,
            sequence_len,
        })
    }

    fn offset(&self, entry: Option<usize>) -> u32 {
        entry
            .and_then(|i| self.offsets.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// The second pass: everything is sized, so this only streams bytes.
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(&[0; 128])?;
        out.write_all(b"DICM")?;
        out.write_all(&self.meta)?;
        let mut header = Vec::new();
        dataset_header_into(
            &mut header,
            self.offset(self.first_root),
            self.offset(self.last_root),
            self.sequence_len,
        );
        out.write_all(&header)?;
        let mut fixed = Vec::with_capacity(ITEM_FIXED_LEN as usize);
        for entry in &self.entries {
            fixed.clear();
            // The body was bounded by the sequence length check, so this fits.
            let item_len = u32::try_from(entry.item_len() - 8).unwrap_or(u32::MAX);
            item_header_into(&mut fixed, item_len);
            put_u32(
                &mut fixed,
                tags::OFFSET_OF_THE_NEXT_DIRECTORY_RECORD,
                self.offset(entry.next),
            );
            put_u16(&mut fixed, tags::RECORD_IN_USE_FLAG, 0xFFFF);
            put_u32(
                &mut fixed,
                tags::OFFSET_OF_REFERENCED_LOWER_LEVEL_DIRECTORY_ENTITY,
                self.offset(entry.lower),
            );
            out.write_all(&fixed)?;
            out.write_all(&entry.body)?;
        }
        out.flush()
    }
}

/// Appends an entry, linking it as the first child of `parent` or the Next of `prev`.
fn push(
    entries: &mut Vec<Entry>,
    parent: Option<usize>,
    prev: &mut Option<usize>,
    body: Result<Vec<u8>, String>,
) -> Result<usize, String> {
    let index = entries.len();
    entries.push(Entry {
        body: body?,
        next: None,
        lower: None,
    });
    match (*prev, parent) {
        (Some(p), _) => {
            if let Some(e) = entries.get_mut(p) {
                e.next = Some(index);
            }
        }
        (None, Some(parent)) => {
            if let Some(e) = entries.get_mut(parent) {
                e.lower = Some(index);
            }
        }
        (None, None) => {}
    }
    *prev = Some(index);
    Ok(index)
}

impl Record {
    /// A copy without the trailing spaces and NULs that padded values read from files carry.
    fn trimmed(&self) -> Record {
        let t = |s: &String| trim_value(s).to_owned();
        let u = |s: &String| trim_value(s).trim_start().to_owned();
        Record {
            patient_id: t(&self.patient_id),
            patient_name: t(&self.patient_name),
            study_instance_uid: u(&self.study_instance_uid),
            study_date: t(&self.study_date),
            study_time: t(&self.study_time),
            study_description: t(&self.study_description),
            study_id: t(&self.study_id),
            accession_number: t(&self.accession_number),
            series_instance_uid: u(&self.series_instance_uid),
            modality: t(&self.modality),
            series_number: t(&self.series_number),
            sop_class_uid: u(&self.sop_class_uid),
            sop_instance_uid: u(&self.sop_instance_uid),
            transfer_syntax_uid: u(&self.transfer_syntax_uid),
            instance_number: t(&self.instance_number),
            file_id: self.file_id.clone(),
        }
    }

    /// Every value written with the character set (UIDs and file ids are checked ASCII).
    fn text_values(&self) -> impl Iterator<Item = &str> {
        [
            &self.patient_id,
            &self.patient_name,
            &self.study_date,
            &self.study_time,
            &self.study_description,
            &self.study_id,
            &self.accession_number,
            &self.modality,
            &self.series_number,
            &self.instance_number,
        ]
        .into_iter()
        .map(String::as_str)
    }
}

fn trim_value(s: &str) -> &str {
    s.trim_end_matches([' ', '\0'])
}

/// Refuses what would make the file-set unreadable: bad UIDs, bad or duplicate file ids.
fn validate(path: &Path, records: &[Record]) -> Result<(), DicomdirError> {
    let mut file_ids = HashSet::new();
    let mut instances = HashSet::new();
    for (index, record) in records.iter().enumerate() {
        let invalid = |reason: String| DicomdirError::InvalidRecord {
            path: path.to_path_buf(),
            index,
            sop_instance_uid: record.sop_instance_uid.clone(),
            reason,
        };
        for (name, uid) in [
            ("StudyInstanceUID", &record.study_instance_uid),
            ("SeriesInstanceUID", &record.series_instance_uid),
            ("SOPClassUID", &record.sop_class_uid),
            ("SOPInstanceUID", &record.sop_instance_uid),
            ("TransferSyntaxUID", &record.transfer_syntax_uid),
        ] {
            if !is_valid_uid(uid) {
                return Err(invalid(format!("{name} {uid:?} is not a UID")));
            }
        }
        let id = &record.file_id;
        if id.is_empty() || id.len() > MAX_FILE_ID_COMPONENTS {
            return Err(invalid(format!(
                "file id has {} components, not 1 to {MAX_FILE_ID_COMPONENTS}",
                id.len()
            )));
        }
        if let Some(bad) = id.iter().find(|c| !is_valid_component(c)) {
            return Err(invalid(format!(
                "file id component {bad:?} is not 1 to {MAX_FILE_ID_COMPONENT_LEN} of A-Z, 0-9, _"
            )));
        }
        if !file_ids.insert(id) {
            return Err(invalid(format!("file id {} is used twice", id.join("\\"))));
        }
        if !instances.insert(&record.sop_instance_uid) {
            return Err(invalid("SOP instance is listed twice".to_owned()));
        }
    }
    Ok(())
}

fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= MAX_UID_LEN
        && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn is_valid_component(c: &str) -> bool {
    (1..=MAX_FILE_ID_COMPONENT_LEN).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// The keys of one record, in ascending tag order, after its DirectoryRecordType.
#[derive(Debug)]
struct Body {
    buf: Vec<u8>,
    charset: Charset,
}

impl Body {
    /// Starts a record: its type, then SpecificCharacterSet if any of `texts` needs one.
    fn new(record_type: &str, charset: Charset, texts: &[&str]) -> Result<Self, String> {
        let mut body = Body {
            buf: Vec::with_capacity(256),
            charset,
        };
        put_str(
            &mut body.buf,
            tags::DIRECTORY_RECORD_TYPE,
            b"CS",
            record_type.as_bytes(),
            b' ',
        )?;
        if charset != Charset::Ascii && texts.iter().any(|t| !t.is_ascii()) {
            let term = charset.term().as_bytes();
            put_str(
                &mut body.buf,
                tags::SPECIFIC_CHARACTER_SET,
                b"CS",
                term,
                b' ',
            )?;
        }
        Ok(body)
    }

    fn text(mut self, tag: Tag, vr: &[u8; 2], value: &str) -> Result<Self, String> {
        let bytes = self.charset.encode(value);
        put_str(&mut self.buf, tag, vr, &bytes, b' ')?;
        Ok(self)
    }

    fn uid(mut self, tag: Tag, value: &str) -> Result<Self, String> {
        put_str(&mut self.buf, tag, b"UI", value.as_bytes(), 0)?;
        Ok(self)
    }

    fn done(self) -> Vec<u8> {
        self.buf
    }
}

fn patient_body(r: &Record, cs: Charset) -> Result<Vec<u8>, String> {
    Ok(Body::new("PATIENT", cs, &[&r.patient_name, &r.patient_id])?
        .text(tags::PATIENT_NAME, b"PN", &r.patient_name)?
        .text(tags::PATIENT_ID, b"LO", &r.patient_id)?
        .done())
}

fn study_body(r: &Record, cs: Charset) -> Result<Vec<u8>, String> {
    let texts = [
        r.study_date.as_str(),
        &r.study_time,
        &r.accession_number,
        &r.study_description,
        &r.study_id,
    ];
    Ok(Body::new("STUDY", cs, &texts)?
        .text(tags::STUDY_DATE, b"DA", &r.study_date)?
        .text(tags::STUDY_TIME, b"TM", &r.study_time)?
        .text(tags::ACCESSION_NUMBER, b"SH", &r.accession_number)?
        .text(tags::STUDY_DESCRIPTION, b"LO", &r.study_description)?
        .uid(tags::STUDY_INSTANCE_UID, &r.study_instance_uid)?
        .text(tags::STUDY_ID, b"SH", &r.study_id)?
        .done())
}

fn series_body(r: &Record, cs: Charset) -> Result<Vec<u8>, String> {
    Ok(Body::new("SERIES", cs, &[&r.modality, &r.series_number])?
        .text(tags::MODALITY, b"CS", &r.modality)?
        .uid(tags::SERIES_INSTANCE_UID, &r.series_instance_uid)?
        .text(tags::SERIES_NUMBER, b"IS", &r.series_number)?
        .done())
}

fn image_body(r: &Record, cs: Charset) -> Result<Vec<u8>, String> {
    Ok(Body::new("IMAGE", cs, &[&r.instance_number])?
        .text(tags::REFERENCED_FILE_ID, b"CS", &r.file_id.join("\\"))?
        .uid(tags::REFERENCED_SOP_CLASS_UID_IN_FILE, &r.sop_class_uid)?
        .uid(
            tags::REFERENCED_SOP_INSTANCE_UID_IN_FILE,
            &r.sop_instance_uid,
        )?
        .uid(
            tags::REFERENCED_TRANSFER_SYNTAX_UID_IN_FILE,
            &r.transfer_syntax_uid,
        )?
        .text(tags::INSTANCE_NUMBER, b"IS", &r.instance_number)?
        .done())
}

/// The file meta group (after "DICM"), Explicit VR LE, group length first.
fn encode_meta(instance_uid: &str) -> Vec<u8> {
    let mut group = Vec::with_capacity(256);
    put_long(
        &mut group,
        tags::FILE_META_INFORMATION_VERSION,
        b"OB",
        &[0, 1],
    );
    for (tag, vr, value, pad) in [
        (
            tags::MEDIA_STORAGE_SOP_CLASS_UID,
            b"UI",
            uids::MEDIA_STORAGE_DIRECTORY_STORAGE,
            0,
        ),
        (tags::MEDIA_STORAGE_SOP_INSTANCE_UID, b"UI", instance_uid, 0),
        (
            tags::TRANSFER_SYNTAX_UID,
            b"UI",
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
            0,
        ),
        (
            tags::IMPLEMENTATION_CLASS_UID,
            b"UI",
            IMPLEMENTATION_CLASS_UID,
            0,
        ),
        (
            tags::IMPLEMENTATION_VERSION_NAME,
            b"SH",
            IMPLEMENTATION_VERSION_NAME,
            b' ',
        ),
    ] {
        // Constants and a 2.25 UID: ASCII, and far below the 64 KiB an element holds.
        let _ = put_str(&mut group, tag, vr, value.as_bytes(), pad);
    }
    let mut meta = Vec::with_capacity(group.len() + 12);
    // A few hundred bytes, so the length fits.
    let group_len = u32::try_from(group.len()).unwrap_or(u32::MAX);
    put_u32(
        &mut meta,
        tags::FILE_META_INFORMATION_GROUP_LENGTH,
        group_len,
    );
    meta.extend_from_slice(&group);
    meta
}

/// The data set elements before the records, ending with the sequence header.
fn dataset_header_into(buf: &mut Vec<u8>, first: u32, last: u32, sequence_len: u32) {
    let _ = put_str(buf, tags::FILE_SET_ID, b"CS", FILE_SET_ID.as_bytes(), b' ');
    put_u32(
        buf,
        tags::OFFSET_OF_THE_FIRST_DIRECTORY_RECORD_OF_THE_ROOT_DIRECTORY_ENTITY,
        first,
    );
    put_u32(
        buf,
        tags::OFFSET_OF_THE_LAST_DIRECTORY_RECORD_OF_THE_ROOT_DIRECTORY_ENTITY,
        last,
    );
    put_u16(buf, tags::FILE_SET_CONSISTENCY_FLAG, 0);
    put_tag(buf, tags::DIRECTORY_RECORD_SEQUENCE);
    buf.extend_from_slice(b"SQ\0\0");
    buf.extend_from_slice(&sequence_len.to_le_bytes());
}

fn item_header_into(buf: &mut Vec<u8>, len: u32) {
    put_tag(buf, ITEM);
    buf.extend_from_slice(&len.to_le_bytes());
}

fn put_tag(buf: &mut Vec<u8>, tag: Tag) {
    buf.extend_from_slice(&tag.group().to_le_bytes());
    buf.extend_from_slice(&tag.element().to_le_bytes());
}

/// A short-form element (16-bit length), padded to even length with `pad`.
fn put_str(buf: &mut Vec<u8>, tag: Tag, vr: &[u8; 2], value: &[u8], pad: u8) -> Result<(), String> {
    let padded = value.len() + value.len() % 2;
    let len = u16::try_from(padded).map_err(|_| {
        format!(
            "({:04X},{:04X}) is {} bytes, over the 65534 an element can hold",
            tag.group(),
            tag.element(),
            value.len()
        )
    })?;
    put_tag(buf, tag);
    buf.extend_from_slice(vr);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(value);
    if padded != value.len() {
        buf.push(pad);
    }
    Ok(())
}

/// A long-form element (OB and friends: two reserved bytes, 32-bit length); `value` is even.
fn put_long(buf: &mut Vec<u8>, tag: Tag, vr: &[u8; 2], value: &[u8]) {
    put_tag(buf, tag);
    buf.extend_from_slice(vr);
    buf.extend_from_slice(&[0, 0]);
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(value);
}

fn put_u32(buf: &mut Vec<u8>, tag: Tag, value: u32) {
    put_tag(buf, tag);
    buf.extend_from_slice(b"UL\x04\0");
    buf.extend_from_slice(&value.to_le_bytes());
}

fn put_u16(buf: &mut Vec<u8>, tag: Tag, value: u16) {
    put_tag(buf, tag);
    buf.extend_from_slice(b"US\x02\0");
    buf.extend_from_slice(&value.to_le_bytes());
}

/// A fresh `2.25.` UID (PS3.5 B.2) from a random 128-bit value laid out as a version-4 UUID.
///
/// std's `RandomState` is seeded from the OS per process and differs per call; mixing in the
/// time, the process id and a counter keeps two DICOMDIRs from ever sharing an instance UID.
fn fresh_uid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(count);
        h.write_u8(salt);
        h.finish()
    };
    let mut v = (u128::from(half(0)) << 64) | u128::from(half(1));
    v = (v & !(0xF << 76)) | (0x4 << 76);
    v = (v & !(0x3 << 62)) | (0x2 << 62);
    format!("2.25.{v}")
}

/// `DICOMDIR` → `DICOMDIR.partial-<pid>-<n>`, beside it so the rename stays on one file system,
/// and unique so that two writers never share one.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(format!(".partial-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};

    const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

    fn record(patient: usize, study: usize, series: usize, image: usize) -> Record {
        Record {
            patient_id: format!("PID{patient}"),
            patient_name: format!("Doe^Patient{patient}"),
            study_instance_uid: format!("1.2.3.4.{patient}.{study}"),
            study_date: format!("2024010{study}"),
            study_time: "101500".to_owned(),
            study_description: format!("Study {study}"),
            study_id: format!("S{study}"),
            accession_number: format!("ACC{patient}{study}"),
            series_instance_uid: format!("1.2.3.4.{patient}.{study}.{series}"),
            modality: "CT".to_owned(),
            series_number: series.to_string(),
            sop_class_uid: SECONDARY_CAPTURE.to_owned(),
            sop_instance_uid: format!("1.2.3.4.{patient}.{study}.{series}.{image}"),
            transfer_syntax_uid: uids::EXPLICIT_VR_LITTLE_ENDIAN.to_owned(),
            instance_number: image.to_string(),
            file_id: vec![
                "DICOM".to_owned(),
                format!("P{patient}S{study}"),
                format!("E{series}"),
                format!("I{image}"),
            ],
        }
    }

    /// 2 patients, 3 studies, 4 series, 27 images, in the order the DICOMDIR must list them:
    /// series 2 before 10 and image 2 before 10 (numeric, not text, order).
    fn sample() -> Vec<Record> {
        let mut records = Vec::new();
        for (patient, studies) in [(1, &[1, 2][..]), (2, &[3][..])] {
            for &study in studies {
                let series_list: &[usize] = if study == 1 { &[2, 10] } else { &[1] };
                for &series in series_list {
                    let images = if series == 10 { 12 } else { 5 };
                    for image in 1..=images {
                        records.push(record(patient, study, series, image));
                    }
                }
            }
        }
        records
    }

    /// The expected order, shuffled deterministically so the writer has to sort.
    fn shuffled(records: &[Record]) -> Vec<Record> {
        let mut out: Vec<Record> = records.iter().rev().cloned().collect();
        let n = out.len();
        for i in 0..n {
            out.swap(i, (i * 7 + 3) % n);
        }
        out
    }

    // -- A raw reader of the bytes, independent of the writer, to find where items start. ------

    type Fields = HashMap<(u16, u16), Vec<u8>>;

    #[derive(Debug)]
    struct RawItem {
        start: u32,
        fields: Fields,
    }

    impl RawItem {
        fn text(&self, tag: Tag) -> String {
            let v = self
                .fields
                .get(&(tag.0, tag.1))
                .cloned()
                .unwrap_or_default();
            String::from_utf8_lossy(&v)
                .trim_end_matches([' ', '\0'])
                .to_owned()
        }

        fn ul(&self, tag: Tag) -> u32 {
            let v = &self.fields[&(tag.0, tag.1)];
            u32::from_le_bytes(v[..4].try_into().unwrap())
        }
    }

    fn le16(b: &[u8], pos: usize) -> u16 {
        u16::from_le_bytes([b[pos], b[pos + 1]])
    }

    fn le32(b: &[u8], pos: usize) -> u32 {
        u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap())
    }

    /// Explicit VR LE element header at `pos`: (tag, value length, header length).
    fn header(b: &[u8], pos: usize) -> ((u16, u16), usize, usize) {
        let tag = (le16(b, pos), le16(b, pos + 2));
        let vr = &b[pos + 4..pos + 6];
        let long = [
            b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR", b"SV",
            b"UV",
        ];
        if long.iter().any(|l| &l[..] == vr) {
            (tag, le32(b, pos + 8) as usize, 12)
        } else {
            (tag, le16(b, pos + 6) as usize, 8)
        }
    }

    fn flat_fields(b: &[u8], mut pos: usize, end: usize) -> Fields {
        let mut fields = HashMap::new();
        while pos < end {
            let (tag, len, hlen) = header(b, pos);
            pos += hlen;
            fields.insert(tag, b[pos..pos + len].to_vec());
            pos += len;
        }
        fields
    }

    /// The top-level data set elements and the directory records with their byte positions.
    fn raw_items(b: &[u8]) -> (Fields, Vec<RawItem>) {
        assert_eq!(&b[128..132], b"DICM");
        let mut pos = 132;
        let mut top = HashMap::new();
        let mut items = Vec::new();
        while pos < b.len() {
            let (tag, len, hlen) = header(b, pos);
            pos += hlen;
            if tag == (0x0004, 0x1220) {
                assert_ne!(len, u32::MAX as usize, "sequence length must be explicit");
                let end = pos + len;
                while pos < end {
                    assert_eq!((le16(b, pos), le16(b, pos + 2)), (0xFFFE, 0xE000));
                    let item_len = le32(b, pos + 4) as usize;
                    assert_ne!(item_len, u32::MAX as usize, "item length must be explicit");
                    let start = u32::try_from(pos).unwrap();
                    let fields = flat_fields(b, pos + 8, pos + 8 + item_len);
                    items.push(RawItem { start, fields });
                    pos += 8 + item_len;
                }
                assert_eq!(pos, end, "items fill the sequence exactly");
            } else {
                top.insert(tag, b[pos..pos + len].to_vec());
                pos += len;
            }
        }
        (top, items)
    }

    /// A record reached through the offsets: its key and its children.
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
    struct Node {
        key: String,
        children: Vec<Node>,
    }

    const LEVELS: [(&str, Tag); 4] = [
        ("PATIENT", tags::PATIENT_ID),
        ("STUDY", tags::STUDY_INSTANCE_UID),
        ("SERIES", tags::SERIES_INSTANCE_UID),
        ("IMAGE", tags::REFERENCED_SOP_INSTANCE_UID_IN_FILE),
    ];

    /// Follows a Next chain from `offset`, and every Lower below it, checking that each offset
    /// is the first byte of an item tag of a record of the right level.
    fn chain(
        bytes: &[u8],
        items: &[RawItem],
        offset: u32,
        level: usize,
        visited: &mut HashSet<u32>,
    ) -> Vec<Node> {
        let by_start: HashMap<u32, &RawItem> = items.iter().map(|i| (i.start, i)).collect();
        let mut nodes = Vec::new();
        let mut offset = offset;
        while offset != 0 {
            let at = offset as usize;
            assert_eq!(
                &bytes[at..at + 4],
                &[0xFE, 0xFF, 0x00, 0xE0],
                "offset {offset}"
            );
            let item = by_start
                .get(&offset)
                .unwrap_or_else(|| panic!("offset {offset} is not an item start"));
            assert!(visited.insert(offset), "record at {offset} reached twice");
            let (record_type, key_tag) = LEVELS[level];
            assert_eq!(
                item.text(tags::DIRECTORY_RECORD_TYPE),
                record_type,
                "at {offset}"
            );
            assert_eq!(le16(&item.fields[&(0x0004, 0x1410)], 0), 0xFFFF);
            let lower = item.ul(tags::OFFSET_OF_REFERENCED_LOWER_LEVEL_DIRECTORY_ENTITY);
            let children = if level + 1 == LEVELS.len() {
                assert_eq!(lower, 0, "an IMAGE has no lower level");
                Vec::new()
            } else {
                assert_ne!(lower, 0, "{record_type} at {offset} has no children");
                chain(bytes, items, lower, level + 1, visited)
            };
            nodes.push(Node {
                key: item.text(key_tag),
                children,
            });
            offset = item.ul(tags::OFFSET_OF_THE_NEXT_DIRECTORY_RECORD);
        }
        nodes
    }

    /// Walks the whole file through its offsets and returns the tree they describe.
    fn walk_offsets(bytes: &[u8]) -> Vec<Node> {
        let (top, items) = raw_items(bytes);
        let first = le32(&top[&(0x0004, 0x1200)], 0);
        let last = le32(&top[&(0x0004, 0x1202)], 0);
        let mut visited = HashSet::new();
        let tree = chain(bytes, &items, first, 0, &mut visited);
        assert_eq!(visited.len(), items.len(), "every record is reachable once");
        let last_patient = items
            .iter()
            .filter(|i| i.text(tags::DIRECTORY_RECORD_TYPE) == "PATIENT")
            .map(|i| i.start)
            .max()
            .unwrap();
        assert_eq!(last, last_patient);
        tree
    }

    /// The tree `records` should produce, in the given order.
    fn expected_tree(records: &[Record]) -> Vec<Node> {
        fn child<'a>(nodes: &'a mut Vec<Node>, key: &str) -> &'a mut Vec<Node> {
            if nodes.last().is_none_or(|n| n.key != key) {
                nodes.push(Node {
                    key: key.to_owned(),
                    children: Vec::new(),
                });
            }
            &mut nodes.last_mut().unwrap().children
        }
        let mut tree = Vec::new();
        for r in records {
            let studies = child(&mut tree, &r.patient_id);
            let series = child(studies, &r.study_instance_uid);
            let images = child(series, &r.series_instance_uid);
            child(images, &r.sop_instance_uid);
        }
        tree
    }

    fn sorted(tree: &[Node]) -> Vec<Node> {
        let mut nodes: Vec<Node> = tree
            .iter()
            .map(|n| Node {
                key: n.key.clone(),
                children: sorted(&n.children),
            })
            .collect();
        nodes.sort();
        nodes
    }

    fn open(path: &Path) -> dicom_object::DefaultDicomObject {
        OpenFileOptions::new().open_file(path).unwrap()
    }

    fn joined(dir: &Path, records: &[Record]) -> Vec<PathBuf> {
        records
            .iter()
            .map(|r| r.file_id.iter().fold(dir.to_path_buf(), |p, c| p.join(c)))
            .collect()
    }

    #[test]
    fn round_trip_offsets_land_on_the_right_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let records = sample();
        write(&path, &shuffled(&records)).unwrap();

        // The files, in DICOMDIR order: patient, study, series number, instance number.
        assert_eq!(
            referenced_files(&path).unwrap(),
            joined(dir.path(), &records)
        );

        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(walk_offsets(&bytes), expected_tree(&records));

        // dicom-object sees the same records, links and keys as the raw walk.
        let obj = open(&path);
        assert!(is_dicomdir(obj.meta().media_storage_sop_class_uid()));
        assert_eq!(
            obj.meta().transfer_syntax(),
            uids::EXPLICIT_VR_LITTLE_ENDIAN
        );
        assert_eq!(
            obj.meta().implementation_class_uid(),
            IMPLEMENTATION_CLASS_UID
        );
        let (top, items) = raw_items(&bytes);
        assert_eq!(
            obj.get(tags::FILE_SET_ID).unwrap().to_str().unwrap(),
            FILE_SET_ID
        );
        assert_eq!(
            obj.get(tags::FILE_SET_CONSISTENCY_FLAG)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            0
        );
        let first = obj
            .get(tags::OFFSET_OF_THE_FIRST_DIRECTORY_RECORD_OF_THE_ROOT_DIRECTORY_ENTITY)
            .unwrap()
            .to_int::<u32>()
            .unwrap();
        assert_eq!(first, le32(&top[&(0x0004, 0x1200)], 0));
        assert_eq!(first, items[0].start);
        let parsed = obj
            .get(tags::DIRECTORY_RECORD_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        assert_eq!(parsed.len(), items.len());
        assert_eq!(items.len(), 2 + 3 + 4 + records.len());
        for (item, raw) in parsed.iter().zip(&items) {
            let get = |tag| item.get(tag).unwrap().to_str().unwrap().into_owned();
            let ul = |tag| item.get(tag).unwrap().to_int::<u32>().unwrap();
            assert_eq!(
                get(tags::DIRECTORY_RECORD_TYPE),
                raw.text(tags::DIRECTORY_RECORD_TYPE)
            );
            for tag in [
                tags::OFFSET_OF_THE_NEXT_DIRECTORY_RECORD,
                tags::OFFSET_OF_REFERENCED_LOWER_LEVEL_DIRECTORY_ENTITY,
            ] {
                assert_eq!(ul(tag), raw.ul(tag));
            }
            if get(tags::DIRECTORY_RECORD_TYPE) == "STUDY" {
                assert!(get(tags::STUDY_DATE).starts_with("2024010"));
                assert_eq!(get(tags::STUDY_TIME), "101500");
                assert!(get(tags::ACCESSION_NUMBER).starts_with("ACC"));
                assert!(get(tags::STUDY_DESCRIPTION).starts_with("Study "));
                assert!(get(tags::STUDY_ID).starts_with('S'));
            }
            if get(tags::DIRECTORY_RECORD_TYPE) == "IMAGE" {
                let file_id = item.get(tags::REFERENCED_FILE_ID).unwrap();
                assert_eq!(file_id.to_multi_str().unwrap().len(), 4);
                assert_eq!(
                    get(tags::REFERENCED_SOP_CLASS_UID_IN_FILE),
                    SECONDARY_CAPTURE
                );
                assert_eq!(
                    get(tags::REFERENCED_TRANSFER_SYNTAX_UID_IN_FILE),
                    uids::EXPLICIT_VR_LITTLE_ENDIAN
                );
                assert!(
                    item.get(tags::SPECIFIC_CHARACTER_SET).is_none(),
                    "ASCII only"
                );
            }
        }
    }

    #[test]
    fn same_records_in_any_order_give_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("A"), dir.path().join("B"));
        write(&a, &sample()).unwrap();
        write(&b, &shuffled(&sample())).unwrap();
        let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
        // Only the fresh MediaStorageSOPInstanceUID may differ, and both are 2.25 UIDs.
        assert_eq!(raw_items(&a).1.len(), raw_items(&b).1.len());
        assert_eq!(walk_offsets(&a), walk_offsets(&b));
        let meta_a = open_bytes(&a);
        let meta_b = open_bytes(&b);
        assert_ne!(
            meta_a.meta().media_storage_sop_instance_uid(),
            meta_b.meta().media_storage_sop_instance_uid()
        );
    }

    fn open_bytes(bytes: &[u8]) -> dicom_object::DefaultDicomObject {
        OpenFileOptions::new().from_reader(bytes).unwrap()
    }

    #[test]
    fn one_image_file_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let mut r = record(1, 1, 1, 1);
        r.file_id = vec!["IM1".to_owned()];
        // Padded values, as read from files, are trimmed and repadded.
        r.sop_instance_uid.push('\0');
        r.patient_id.push(' ');
        write(&path, std::slice::from_ref(&r)).unwrap();
        assert_eq!(
            referenced_files(&path).unwrap(),
            vec![dir.path().join("IM1")]
        );
        let bytes = std::fs::read(&path).unwrap();
        let tree = walk_offsets(&bytes);
        assert_eq!(tree[0].key, "PID1");
        assert_eq!(
            tree[0].children[0].children[0].children[0].key,
            r.sop_instance_uid.trim_end_matches('\0')
        );
    }

    #[test]
    fn thousands_of_images() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let mut records = Vec::new();
        for series in 1..=5 {
            for image in 1..=1000 {
                let mut r = record(1, 1, series, image);
                r.file_id = vec![
                    "DICOM".to_owned(),
                    format!("S{series:04}"),
                    format!("I{image:04}"),
                ];
                records.push(r);
            }
        }
        write(&path, &records).unwrap();
        assert_eq!(referenced_files(&path).unwrap().len(), 5000);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(walk_offsets(&bytes), expected_tree(&records));
    }

    #[test]
    fn latin1_names_are_written_as_iso_ir_100() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let mut r = record(1, 1, 1, 1);
        r.patient_name = "Buc^Jérôme".to_owned();
        write(&path, &[r]).unwrap();
        let obj = open(&path);
        let items = obj
            .get(tags::DIRECTORY_RECORD_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        let patient = &items[0];
        assert_eq!(
            patient
                .get(tags::SPECIFIC_CHARACTER_SET)
                .unwrap()
                .to_str()
                .unwrap(),
            "ISO_IR 100"
        );
        assert_eq!(
            patient.get(tags::PATIENT_NAME).unwrap().to_str().unwrap(),
            "Buc^Jérôme"
        );
        // The other records are plain ASCII and say nothing.
        assert!(items[1].get(tags::SPECIFIC_CHARACTER_SET).is_none());
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.windows(10).any(|w| w == b"Buc^J\xe9r\xf4me"));
    }

    #[test]
    fn other_scripts_are_written_as_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let mut r = record(1, 1, 1, 1);
        r.patient_name = "Yamada^Tarou=山田^太郎".to_owned();
        r.study_description = "Thorax é".to_owned();
        write(&path, &[r]).unwrap();
        let obj = open(&path);
        let items = obj
            .get(tags::DIRECTORY_RECORD_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        for item in &items[..2] {
            assert_eq!(
                item.get(tags::SPECIFIC_CHARACTER_SET)
                    .unwrap()
                    .to_str()
                    .unwrap(),
                "ISO_IR 192"
            );
        }
        assert_eq!(
            items[0].get(tags::PATIENT_NAME).unwrap().to_str().unwrap(),
            "Yamada^Tarou=山田^太郎"
        );
        assert_eq!(
            items[1]
                .get(tags::STUDY_DESCRIPTION)
                .unwrap()
                .to_str()
                .unwrap(),
            "Thorax é"
        );
    }

    #[test]
    fn invalid_records_are_refused_with_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let good = record(1, 1, 1, 1);
        let mut cases: Vec<(&str, Record)> = Vec::new();
        for (why, file_id) in [
            ("lower case", vec!["dicom".to_owned()]),
            ("too long", vec!["ABCDEFGHI".to_owned()]),
            ("dot", vec!["IM1.DCM".to_owned()]),
            ("empty component", vec![String::new()]),
            ("no components", vec![]),
            ("nine components", vec!["A".to_owned(); 9]),
        ] {
            cases.push((
                why,
                Record {
                    file_id,
                    ..record(1, 1, 1, 2)
                },
            ));
        }
        cases.push((
            "bad uid",
            Record {
                sop_instance_uid: "1.2.x".to_owned(),
                ..record(1, 1, 1, 2)
            },
        ));
        cases.push((
            "empty uid",
            Record {
                transfer_syntax_uid: String::new(),
                ..record(1, 1, 1, 2)
            },
        ));
        cases.push((
            "long uid",
            Record {
                study_instance_uid: "1.".repeat(40),
                ..record(1, 1, 1, 2)
            },
        ));
        cases.push((
            "duplicate file",
            Record {
                file_id: good.file_id.clone(),
                ..record(1, 1, 1, 2)
            },
        ));
        cases.push((
            "duplicate instance",
            Record {
                file_id: vec!["X".to_owned()],
                ..good.clone()
            },
        ));
        cases.push((
            "too long value",
            Record {
                // A new study, so that its description is the one written.
                study_description: "x".repeat(70_000),
                ..record(1, 2, 1, 2)
            },
        ));
        for (why, bad) in cases {
            let Err(err) = write(&path, &[good.clone(), bad]) else {
                panic!("{why}: written");
            };
            match err {
                DicomdirError::InvalidRecord { index, .. } => assert_eq!(index, 1, "{why}"),
                other => panic!("{why}: {other}"),
            }
            assert!(!path.exists(), "{why}: nothing written");
        }
        assert!(matches!(
            write(&path, &[]),
            Err(DicomdirError::Empty { .. })
        ));
        assert!(!path.exists());
        // Nor is a temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn write_replaces_an_existing_dicomdir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        std::fs::write(&path, b"old").unwrap();
        write(&path, &sample()).unwrap();
        assert_eq!(referenced_files(&path).unwrap().len(), sample().len());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("no/such/dir/DICOMDIR");
        assert!(matches!(
            write(&missing, &sample()),
            Err(DicomdirError::Io { .. })
        ));
    }

    #[test]
    fn lower_case_names_on_disk_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let records = sample();
        write(&path, &records[..3]).unwrap();
        // As a CD may appear on Linux: lower case, an ISO 9660 version, and one file missing.
        let folder = dir.path().join("dicom").join("p1s1").join("e2");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("i1"), b"").unwrap();
        std::fs::write(folder.join("I2;1"), b"").unwrap();
        let found = referenced_files(&path).unwrap();
        assert_eq!(
            found,
            vec![
                folder.join("i1"),
                folder.join("I2;1"),
                folder.join("I3"), // missing: the next component as written
            ]
        );
        // An exact match wins over a case-insensitive one.
        std::fs::write(folder.join("I3"), b"").unwrap();
        std::fs::write(folder.join("i3"), b"").unwrap();
        assert_eq!(referenced_files(&path).unwrap()[2], folder.join("I3"));
        // A path missing from the first component stays as written all the way.
        std::fs::remove_dir_all(dir.path().join("dicom")).unwrap();
        assert_eq!(
            referenced_files(&path).unwrap(),
            joined(dir.path(), &records[..3])
        );
    }

    // -- DICOMDIRs from elsewhere, built with dicom-object (offsets not needed to read). -------

    fn item(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
        InMemDicomObject::from_element_iter(elements)
    }

    fn cs(tag: Tag, value: &str) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, VR::CS, PrimitiveValue::from(value))
    }

    fn foreign_dicomdir(path: &Path, sop_class: &str, records: Vec<InMemDicomObject>) {
        foreign_dicomdir_in(path, sop_class, records, uids::EXPLICIT_VR_LITTLE_ENDIAN);
    }

    /// dicom-object writes sequences and items with undefined length, unlike us and dcmtk.
    fn foreign_dicomdir_in(path: &Path, sop_class: &str, records: Vec<InMemDicomObject>, ts: &str) {
        let obj = InMemDicomObject::from_element_iter([
            cs(tags::FILE_SET_ID, "OTHER"),
            DataElement::new(
                tags::DIRECTORY_RECORD_SEQUENCE,
                VR::SQ,
                dicom_core::value::DataSetSequence::from(records),
            ),
        ]);
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class)
            .media_storage_sop_instance_uid("2.25.1")
            .transfer_syntax(ts);
        obj.with_meta(meta).unwrap().write_to_file(path).unwrap();
    }

    fn image_record(file_id: &str, in_use: Option<u16>) -> InMemDicomObject {
        let mut elements = vec![cs(tags::DIRECTORY_RECORD_TYPE, "IMAGE")];
        if let Some(flag) = in_use {
            elements.push(DataElement::new(
                tags::RECORD_IN_USE_FLAG,
                VR::US,
                PrimitiveValue::from(flag),
            ));
        }
        elements.push(DataElement::new(
            tags::REFERENCED_FILE_ID,
            VR::CS,
            PrimitiveValue::Strs(file_id.split('\\').map(str::to_owned).collect()),
        ));
        item(elements)
    }

    #[test]
    fn records_not_in_use_and_repeats_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let records = vec![
            item(vec![cs(tags::DIRECTORY_RECORD_TYPE, "PATIENT")]),
            image_record("A\\B", Some(0xFFFF)),
            image_record("A\\C", Some(0)),
            image_record("D", None),
            image_record("A\\B", Some(0xFFFF)),
        ];
        foreign_dicomdir(&path, uids::MEDIA_STORAGE_DIRECTORY_STORAGE, records);
        let base = dir.path();
        assert_eq!(
            referenced_files(&path).unwrap(),
            vec![base.join("A").join("B"), base.join("D")]
        );
    }

    /// Two image records, the first with an Icon Image Sequence nested in it.
    fn nested_records() -> Vec<InMemDicomObject> {
        let icon = item(vec![
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(2u16)),
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PrimitiveValue::from(vec![1u8, 2, 3, 4]),
            ),
        ]);
        let mut with_icon = image_record("A\\B", Some(0xFFFF));
        with_icon.put(DataElement::new(
            tags::ICON_IMAGE_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![icon]),
        ));
        vec![with_icon, image_record("C", None)]
    }

    #[test]
    fn implicit_vr_and_nested_sequences_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let records = nested_records();
        let base = dir.path();
        let expected = vec![base.join("A").join("B"), base.join("C")];
        for ts in [
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        ] {
            foreign_dicomdir_in(
                &path,
                uids::MEDIA_STORAGE_DIRECTORY_STORAGE,
                records.clone(),
                ts,
            );
            assert_eq!(referenced_files(&path).unwrap(), expected, "{ts}");
        }
        let ts = "1.2.840.10008.1.2.2"; // Explicit VR Big Endian, retired
        foreign_dicomdir_in(&path, uids::MEDIA_STORAGE_DIRECTORY_STORAGE, records, ts);
        let err = referenced_files(&path).unwrap_err();
        assert!(matches!(err, DicomdirError::Malformed { .. }), "{err}");
    }

    /// One flipped VR byte once made dicom-object allocate and zero 1.2 GB; we refuse it.
    #[test]
    fn corrupt_lengths_are_refused_without_allocating_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        write(&path, &sample()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let needle = b"\x04\x00\x30\x14CS\x06\x00IMAGE ";
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        for vr in [[0x95, b'S'], *b"UN", *b"SQ"] {
            let mut bad = bytes.clone();
            bad[at + 4..at + 6].copy_from_slice(&vr);
            std::fs::write(&path, &bad).unwrap();
            let err = referenced_files(&path).unwrap_err();
            assert!(matches!(err, DicomdirError::Malformed { .. }), "{err}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let mut bytes = vec![0; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend_from_slice(&encode_meta("2.25.1"));
        for _ in 0..100_000 {
            put_tag(&mut bytes, tags::DIRECTORY_RECORD_SEQUENCE);
            bytes.extend_from_slice(b"SQ\0\0\xFF\xFF\xFF\xFF");
            item_header_into(&mut bytes, UNDEFINED);
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = referenced_files(&path).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }

    #[test]
    fn a_sequence_without_file_ids_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let records = vec![
            item(vec![cs(tags::DIRECTORY_RECORD_TYPE, "PATIENT")]),
            item(vec![cs(tags::DIRECTORY_RECORD_TYPE, "STUDY")]),
            image_record("A", Some(0)),
        ];
        foreign_dicomdir(&path, uids::MEDIA_STORAGE_DIRECTORY_STORAGE, records);
        assert!(matches!(
            referenced_files(&path),
            Err(DicomdirError::Empty { .. })
        ));
        foreign_dicomdir(&path, uids::MEDIA_STORAGE_DIRECTORY_STORAGE, Vec::new());
        assert!(matches!(
            referenced_files(&path),
            Err(DicomdirError::Empty { .. })
        ));
    }

    #[test]
    fn file_ids_that_leave_the_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        for bad in ["..\\..\\ETC\\PASSWD", "A\\.", "/ETC/PASSWD", "C:\\X", "A/B"] {
            let records = vec![image_record(bad, None)];
            foreign_dicomdir(&path, uids::MEDIA_STORAGE_DIRECTORY_STORAGE, records);
            let err = referenced_files(&path).unwrap_err();
            assert!(
                matches!(err, DicomdirError::UnsafeFileId { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn other_dicom_files_are_not_dicomdirs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("IM1");
        foreign_dicomdir(&path, SECONDARY_CAPTURE, vec![image_record("A", None)]);
        let err = referenced_files(&path).unwrap_err();
        assert!(matches!(err, DicomdirError::NotDicomdir { .. }), "{err}");
        assert!(is_dicomdir("1.2.840.10008.1.3.10\0"));
        assert!(!is_dicomdir(SECONDARY_CAPTURE));
        assert!(!is_dicomdir(""));
    }

    #[test]
    fn missing_sequence_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let obj = InMemDicomObject::from_element_iter([cs(tags::FILE_SET_ID, "X")]);
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(uids::MEDIA_STORAGE_DIRECTORY_STORAGE)
            .media_storage_sop_instance_uid("2.25.1")
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN);
        obj.with_meta(meta).unwrap().write_to_file(&path).unwrap();
        let err = referenced_files(&path).unwrap_err();
        assert!(matches!(err, DicomdirError::Malformed { .. }), "{err}");
    }

    #[test]
    fn oversized_files_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        // Sparse: no disk is used.
        File::create(&path)
            .unwrap()
            .set_len(MAX_DICOMDIR_BYTES + 1)
            .unwrap();
        let err = referenced_files(&path).unwrap_err();
        assert!(matches!(err, DicomdirError::TooLarge { .. }), "{err}");
        let err = referenced_files(&dir.path().join("NONE")).unwrap_err();
        assert!(matches!(err, DicomdirError::Io { .. }), "{err}");
    }

    /// xorshift64*: deterministic noise without a dependency.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn random_bytes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
        for round in 0..200 {
            let len = (noise.next() % 4096) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| noise.next() as u8).collect();
            if round % 2 == 0 && len > 132 {
                // Half of them get past the magic code check.
                bytes[128..132].copy_from_slice(b"DICM");
            }
            std::fs::write(&path, &bytes).unwrap();
            assert!(referenced_files(&path).is_err(), "round {round}");
        }
    }

    /// Ours (explicit lengths) and an Implicit VR one with undefined lengths and nesting.
    fn good_dicomdirs(dir: &Path) -> Vec<Vec<u8>> {
        let (ours, theirs) = (dir.join("OURS"), dir.join("THEIRS"));
        write(&ours, &sample()[..4]).unwrap();
        let sop_class = uids::MEDIA_STORAGE_DIRECTORY_STORAGE;
        let ts = uids::IMPLICIT_VR_LITTLE_ENDIAN;
        foreign_dicomdir_in(&theirs, sop_class, nested_records(), ts);
        let files = [ours, theirs];
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    }

    #[test]
    fn truncated_dicomdirs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        for bytes in good_dicomdirs(dir.path()) {
            std::fs::write(&path, &bytes).unwrap();
            assert!(referenced_files(&path).is_ok());
            for len in 0..bytes.len() {
                std::fs::write(&path, &bytes[..len]).unwrap();
                assert!(referenced_files(&path).is_err(), "truncated to {len}");
            }
        }
    }

    #[test]
    fn corrupted_dicomdirs_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let mut noise = Noise(42);
        for bytes in good_dicomdirs(dir.path()) {
            for _ in 0..2000 {
                let mut bytes = bytes.clone();
                for _ in 0..(1 + noise.next() % 4) {
                    let at = (noise.next() as usize) % bytes.len();
                    bytes[at] = noise.next() as u8;
                }
                std::fs::write(&path, &bytes).unwrap();
                // Ok or Err both fine; a panic (or a hang) fails the test.
                let _ = referenced_files(&path);
            }
        }
    }

    #[test]
    fn constants_fit_their_vrs() {
        assert!(IMPLEMENTATION_VERSION_NAME.len() <= 16);
        assert!(FILE_SET_ID.len() <= 16);
        assert!(is_valid_uid(IMPLEMENTATION_CLASS_UID));
        let uids: HashSet<String> = (0..1000).map(|_| fresh_uid()).collect();
        assert_eq!(uids.len(), 1000);
        assert!(uids
            .iter()
            .all(|u| is_valid_uid(u) && u.starts_with("2.25.")));
    }

    // -- dcmtk, the reference. --------------------------------------------------------------

    /// The dcmtk tool, or `None` (with a notice) when dcmtk is not installed; CI must have it.
    fn dcmtk(tool: &str) -> Option<PathBuf> {
        let path = Path::new("/usr/bin").join(tool);
        if path.exists() {
            return Some(path);
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} is missing and CI=true: install dcmtk",
            path.display()
        );
        eprintln!(
            "skipping: {} is not installed (apt-get install dcmtk)",
            path.display()
        );
        None
    }

    /// Runs a dcmtk tool and returns its output, failing on a bad status or any E:/W: line.
    fn run_clean(tool: &Path, args: &[&std::ffi::OsStr], cwd: &Path) -> String {
        let out = Command::new(tool)
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{} failed:\n{text}", tool.display());
        let complaints: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
            .collect();
        assert!(
            complaints.is_empty(),
            "{}:\n{}",
            tool.display(),
            complaints.join("\n")
        );
        text
    }

    #[test]
    fn dcmdump_reads_what_we_write() {
        let Some(dcmdump) = dcmtk("dcmdump") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let mut records = sample();
        records[0].patient_name = "Buc^Jérôme".to_owned();
        write(&path, &records).unwrap();
        let dump = run_clean(&dcmdump, &[path.as_os_str()], dir.path());
        assert!(dump.contains("MediaStorageDirectoryStorage"), "{dump}");
        assert!(
            dump.contains("(0004,1220) SQ (Sequence with explicit length #=36)"),
            "{dump}"
        );
        assert!(dump.contains("[DICOM\\P1S1\\E10\\I12]"), "{dump}");
        assert!(
            dump.contains("[Buc^Jérôme]") || dump.contains("Buc^J"),
            "{dump}"
        );
        // dcmdump's own view of the item positions agrees with the offsets.
        let bytes = std::fs::read(&path).unwrap();
        for item in raw_items(&bytes).1 {
            assert!(
                dump.contains(&format!("#  offset=${}", item.start)),
                "{}",
                item.start
            );
        }
    }

    /// A small image file with the attributes dcmmkdir wants for a General Purpose DICOMDIR.
    fn write_instance(path: &Path, r: &Record) {
        let el = |tag, vr, value: &str| DataElement::new(tag, vr, PrimitiveValue::from(value));
        let obj = InMemDicomObject::from_element_iter([
            el(tags::SOP_CLASS_UID, VR::UI, &r.sop_class_uid),
            el(tags::SOP_INSTANCE_UID, VR::UI, &r.sop_instance_uid),
            el(tags::STUDY_DATE, VR::DA, &r.study_date),
            el(tags::STUDY_TIME, VR::TM, &r.study_time),
            el(tags::ACCESSION_NUMBER, VR::SH, &r.accession_number),
            el(tags::MODALITY, VR::CS, &r.modality),
            el(tags::STUDY_DESCRIPTION, VR::LO, &r.study_description),
            el(tags::PATIENT_NAME, VR::PN, &r.patient_name),
            el(tags::PATIENT_ID, VR::LO, &r.patient_id),
            el(tags::STUDY_INSTANCE_UID, VR::UI, &r.study_instance_uid),
            el(tags::SERIES_INSTANCE_UID, VR::UI, &r.series_instance_uid),
            el(tags::STUDY_ID, VR::SH, &r.study_id),
            el(tags::SERIES_NUMBER, VR::IS, &r.series_number),
            el(tags::INSTANCE_NUMBER, VR::IS, &r.instance_number),
            DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
            el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(2u16)),
            DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(2u16)),
            DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8u16)),
            DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(8u16)),
            DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7u16)),
            DataElement::new(
                tags::PIXEL_REPRESENTATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ),
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PrimitiveValue::from(vec![0u8, 64, 128, 255]),
            ),
        ]);
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(r.sop_class_uid.as_str())
            .media_storage_sop_instance_uid(r.sop_instance_uid.as_str())
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        obj.with_meta(meta).unwrap().write_to_file(path).unwrap();
    }

    #[test]
    fn dcmmkdir_output_reads_back_and_matches_ours() {
        let (Some(dcmmkdir), Some(dcmdump)) = (dcmtk("dcmmkdir"), dcmtk("dcmdump")) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let records = sample();
        for (r, file) in records.iter().zip(joined(dir.path(), &records)) {
            write_instance(&file, r);
        }
        let theirs = dir.path().join("DICOMDIR");
        run_clean(
            &dcmmkdir,
            &[
                "+r".as_ref(),
                "+id".as_ref(),
                dir.path().as_os_str(),
                "+D".as_ref(),
                theirs.as_os_str(),
            ],
            dir.path(),
        );
        let mut found = referenced_files(&theirs).unwrap();
        found.sort();
        let mut expected = joined(dir.path(), &records);
        expected.sort();
        assert_eq!(found, expected);
        // Our offset walk holds on dcmtk's file too, and both describe the same tree.
        let their_tree = walk_offsets(&std::fs::read(&theirs).unwrap());

        let ours = dir.path().join("OURS");
        write(&ours, &shuffled(&records)).unwrap();
        let our_tree = walk_offsets(&std::fs::read(&ours).unwrap());
        assert_eq!(sorted(&our_tree), sorted(&their_tree));
        run_clean(&dcmdump, &[ours.as_os_str()], dir.path());
        let mut ours_found = referenced_files(&ours).unwrap();
        ours_found.sort();
        assert_eq!(ours_found, expected);

        // dcmtk rebuilds its tree from our offsets when it appends to our DICOMDIR.
        let appended = dir.path().join("APPENDED");
        write(&appended, &records[1..]).unwrap();
        let first = records[0].file_id.join("/");
        run_clean(
            &dcmmkdir,
            &[
                "+A".as_ref(),
                "+D".as_ref(),
                appended.as_os_str(),
                "+id".as_ref(),
                dir.path().as_os_str(),
                first.as_ref(),
            ],
            dir.path(),
        );
        let appended_tree = walk_offsets(&std::fs::read(&appended).unwrap());
        assert_eq!(sorted(&appended_tree), sorted(&their_tree));
    }
}
