//! Export: a stored study back out as its original files, byte for byte.
//!
//! Three layouts:
//! * plain: `OUT/series-001/<SOPInstanceUID>.dcm`, one folder per series in series order;
//! * `--dicomdir`: a CD layout, `OUT/DICOM/S0001/I0001` (ISO 9660-safe names) plus `OUT/DICOMDIR`;
//! * `--zip`: either layout inside one ZIP file (entries stored, not recompressed: DICOM pixel
//!   data is often compressed already, and storing keeps the export as fast as the disk).
//!
//! Every instance is decrypted chunk by chunk, written to a `.part` file and renamed only after
//! its plaintext hash matched the one recorded at import; a blob that fails authentication is
//! reported with the instance it belongs to and nothing half-written is left under a final name.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::dicomdir;
use crate::crypto::blob;
use crate::store::{InstanceRecord, Store, StoreError, StudyRecord};

/// How to lay the export out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub zip: bool,
    pub dicomdir: bool,
}

/// What an export wrote; the `--json` output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub study_instance_uid: String,
    pub output: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub dicomdir: bool,
    pub zip: bool,
}

/// Exporting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("output {0} already exists and is not empty; choose a new folder or file")]
    OutputExists(PathBuf),
    #[error("instance {sop} (series {series}): stored blob {blob} is missing")]
    MissingBlob {
        sop: String,
        series: String,
        blob: String,
    },
    #[error("instance {sop} (series {series}): stored blob {blob} is corrupted or was tampered with: {reason}")]
    Corrupt {
        sop: String,
        series: String,
        blob: String,
        reason: String,
    },
    #[error("no key for study {0}")]
    NoKey(String),
    #[error("writing the DICOMDIR failed: {0}")]
    Dicomdir(#[from] dicomdir::DicomdirError),
    #[error("writing the ZIP failed: {0}")]
    Zip(#[from] zip::result::ZipError),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Relative output names for each instance, in the order of `instances`.
fn names(instances: &[InstanceRecord], cd: bool) -> Vec<Vec<String>> {
    let mut series_index: Vec<&str> = Vec::new();
    let mut per_series_count: Vec<usize> = Vec::new();
    instances
        .iter()
        .map(|i| {
            let s = match series_index
                .iter()
                .position(|u| *u == i.series_instance_uid)
            {
                Some(p) => p,
                None => {
                    series_index.push(&i.series_instance_uid);
                    per_series_count.push(0);
                    series_index.len() - 1
                }
            };
            per_series_count[s] += 1;
            if cd {
                vec![
                    "DICOM".to_owned(),
                    format!("S{:04}", s + 1),
                    format!("I{:04}", per_series_count[s]),
                ]
            } else {
                vec![
                    format!("series-{:03}", s + 1),
                    format!("{}.dcm", i.sop_instance_uid),
                ]
            }
        })
        .collect()
}

fn is_empty_dir(p: &Path) -> bool {
    fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

/// Exports `study` to `out`.
pub fn export(
    store: &Store,
    study: &StudyRecord,
    out: &Path,
    opts: Options,
    progress: &dyn Fn(u64, u64),
) -> Result<Report, ExportError> {
    let instances = store.instances(&study.study_instance_uid)?;
    let key = store
        .study_key(&study.study_instance_uid, false)?
        .ok_or_else(|| ExportError::NoKey(study.study_instance_uid.clone()))?;
    let names = names(&instances, opts.dicomdir);
    let total = instances.len() as u64;
    let mut bytes = 0u64;

    if out.exists() && !(out.is_dir() && is_empty_dir(out)) {
        return Err(ExportError::OutputExists(out.to_path_buf()));
    }

    if opts.zip {
        let part = part_path(out);
        let result = (|| -> Result<(), ExportError> {
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(io_at(parent))?;
            }
            let f = File::create(&part).map_err(io_at(&part))?;
            let mut z = zip::ZipWriter::new(BufWriter::with_capacity(1 << 20, f));
            for (n, (inst, name)) in instances.iter().zip(&names).enumerate() {
                let o = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Stored)
                    .large_file(inst.size >= u64::from(u32::MAX));
                z.start_file(name.join("/"), o)?;
                decrypt_into(store, &key, inst, &mut z)?;
                bytes += inst.size;
                progress(n as u64 + 1, total);
            }
            if opts.dicomdir {
                let tmp = store.blobs().temp().map_err(io_at(&part))?;
                dicomdir::write(tmp.path(), &records(study, &instances, &names))?;
                z.start_file("DICOMDIR", zip::write::SimpleFileOptions::default())?;
                io::copy(
                    &mut File::open(tmp.path()).map_err(io_at(tmp.path()))?,
                    &mut z,
                )
                .map_err(io_at(&part))?;
            }
            let mut w = z.finish()?;
            w.flush().map_err(io_at(&part))?;
            w.get_ref().sync_all().map_err(io_at(&part))?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
        fs::rename(&part, out).map_err(io_at(out))?;
    } else {
        fs::create_dir_all(out).map_err(io_at(out))?;
        for (n, (inst, name)) in instances.iter().zip(&names).enumerate() {
            let dest = name.iter().fold(out.to_path_buf(), |p, c| p.join(c));
            if let Some(dir) = dest.parent() {
                fs::create_dir_all(dir).map_err(io_at(dir))?;
            }
            let part = part_path(&dest);
            let written = (|| -> Result<(), ExportError> {
                let f = File::create(&part).map_err(io_at(&part))?;
                let mut w = BufWriter::with_capacity(1 << 20, f);
                decrypt_into(store, &key, inst, &mut w)?;
                w.flush().map_err(io_at(&part))?;
                Ok(())
            })();
            if let Err(e) = written {
                let _ = fs::remove_file(&part);
                return Err(e);
            }
            fs::rename(&part, &dest).map_err(io_at(&dest))?;
            bytes += inst.size;
            progress(n as u64 + 1, total);
        }
        if opts.dicomdir {
            dicomdir::write(&out.join("DICOMDIR"), &records(study, &instances, &names))?;
        }
    }
    store
        .audit()
        .append(
            "export",
            serde_json::json!({
                "study": study.study_instance_uid,
                "files": total,
                "bytes": bytes,
                "zip": opts.zip,
                "dicomdir": opts.dicomdir,
            }),
        )
        .map_err(StoreError::from)?;
    Ok(Report {
        study_instance_uid: study.study_instance_uid.clone(),
        output: out.to_path_buf(),
        files: total,
        bytes,
        dicomdir: opts.dicomdir,
        zip: opts.zip,
    })
}

fn part_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Decrypts one instance into `w`, checking blob id and plaintext hash.
pub fn decrypt_into(
    store: &Store,
    key: &crate::crypto::SecretKey,
    inst: &InstanceRecord,
    w: &mut impl Write,
) -> Result<(), ExportError> {
    let f = open_blob(store, inst)?;
    let opened = blob::open(
        key,
        blob_context(inst),
        io::BufReader::with_capacity(1 << 20, f),
        w,
    )
    .map_err(|e| blob_error(inst, e))?;
    check_opened(inst, &opened)
}

/// One instance's plaintext in memory, decrypted in place (see [`blob::open_in_memory`]), for
/// callers that hold a whole instance anyway. Checked against the plaintext hash recorded at
/// import, which with the authenticated chunks says these are the imported bytes; the blob id
/// is not hashed again (that is for what is stored or passed on, see [`decrypt_into`]).
pub fn decrypt_in_place(
    store: &Store,
    key: &crate::crypto::SecretKey,
    inst: &InstanceRecord,
) -> Result<blob::InPlace, ExportError> {
    let mut f = open_blob(store, inst)?;
    let mut sealed = Vec::new();
    f.read_to_end(&mut sealed)
        .map_err(io_at(&store.blobs().path(&inst.blob_id)))?;
    let (plaintext, hash) =
        blob::open_in_memory(key, blob_context(inst), sealed).map_err(|e| blob_error(inst, e))?;
    check_plaintext(inst, &hash)?;
    Ok(plaintext)
}

fn open_blob(store: &Store, inst: &InstanceRecord) -> Result<std::fs::File, ExportError> {
    store.blobs().open(&inst.blob_id).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ExportError::MissingBlob {
                sop: inst.sop_instance_uid.clone(),
                series: inst.series_instance_uid.clone(),
                blob: inst.blob_id.clone(),
            }
        } else {
            io_at(&store.blobs().path(&inst.blob_id))(e)
        }
    })
}

fn blob_context(inst: &InstanceRecord) -> blob::Context<'_> {
    blob::Context {
        study_uid: &inst.study_instance_uid,
        sop_instance_uid: &inst.sop_instance_uid,
    }
}

fn corrupt(inst: &InstanceRecord, reason: String) -> ExportError {
    ExportError::Corrupt {
        sop: inst.sop_instance_uid.clone(),
        series: inst.series_instance_uid.clone(),
        blob: inst.blob_id.clone(),
        reason,
    }
}

fn blob_error(inst: &InstanceRecord, e: blob::BlobError) -> ExportError {
    match e {
        blob::BlobError::Io(io) if io.kind() != io::ErrorKind::UnexpectedEof => ExportError::Io {
            path: PathBuf::from(&inst.sop_instance_uid),
            source: io,
        },
        other => corrupt(inst, other.to_string()),
    }
}

/// The opened blob is the one recorded: its id and its plaintext's hash.
fn check_opened(inst: &InstanceRecord, opened: &blob::Sealed) -> Result<(), ExportError> {
    if opened.blob_id.to_hex().as_str() != inst.blob_id {
        return Err(corrupt(
            inst,
            "its content hash does not match its id".into(),
        ));
    }
    check_plaintext(inst, &opened.plaintext_hash)
}

fn check_plaintext(inst: &InstanceRecord, hash: &blake3::Hash) -> Result<(), ExportError> {
    if hash.to_hex().as_str() != inst.plaintext_hash {
        return Err(corrupt(
            inst,
            "the decrypted bytes differ from those recorded at import".into(),
        ));
    }
    Ok(())
}

fn records(
    study: &StudyRecord,
    instances: &[InstanceRecord],
    names: &[Vec<String>],
) -> Vec<dicomdir::Record> {
    instances
        .iter()
        .zip(names)
        .map(|(i, n)| dicomdir::Record {
            patient_id: study.patient_id.clone(),
            patient_name: study.patient_name.clone(),
            study_instance_uid: study.study_instance_uid.clone(),
            study_date: study.study_date.clone(),
            study_time: study.study_time.clone(),
            study_description: study.study_description.clone(),
            study_id: study.study_id.clone(),
            accession_number: study.accession_number.clone(),
            series_instance_uid: i.series_instance_uid.clone(),
            modality: i.modality.clone(),
            series_number: i.series_number.map(|v| v.to_string()).unwrap_or_default(),
            sop_class_uid: i.sop_class_uid.clone(),
            sop_instance_uid: i.sop_instance_uid.clone(),
            transfer_syntax_uid: i.transfer_syntax_uid.clone(),
            instance_number: i.instance_number.map(|v| v.to_string()).unwrap_or_default(),
            file_id: n.clone(),
        })
        .collect()
}
