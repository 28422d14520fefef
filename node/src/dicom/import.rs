//! Import: files, folders, DICOMDIRs and ZIP archives into the store.
//!
//! 1. [`collect`] expands the inputs into a list of [`Source`]s: folders recursively, a DICOMDIR
//!    into the files it references (as on a patient's CD), a ZIP into its entries (folders and a
//!    DICOMDIR inside it are just more entries). Nothing is read beyond headers here.
//! 2. Worker threads take sources one at a time: parse (one instance in memory at most, see
//!    [`parse::IN_MEMORY_LIMIT`]), check for a duplicate, seal into a blob file. CPU-bound work
//!    runs on plain threads, not on an async runtime.
//! 3. The calling thread records each sealed instance as pending and, at the end, commits the
//!    whole import in one atomic batch (see `store.rs` for why that is crash-safe).
//!
//! Bad inputs never stop the import: each is reported with its path and the reason, and the rest
//! goes on. Only a failure of the store itself is fatal.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::dicomdir;
use super::parse::{self, ParseError, Parsed};
use crate::crypto::blob;
use crate::store::{PendingInstance, Store, StoreError};

/// A ZIP entry larger than this is refused: a patient CD image never holds a single instance this
/// big, and the limit stops a ZIP bomb from filling the disk.
const MAX_ZIP_ENTRY: u64 = 8 * 1024 * 1024 * 1024;

/// Unsynced blob bytes after which a background `syncfs` starts, so that disk writeback overlaps
/// with sealing instead of all landing on the final commit (with 24 GiB of RAM the kernel would
/// otherwise hold gigabytes dirty until then).
const SYNC_EVERY_BYTES: u64 = 64 * 1024 * 1024;

/// One thing to import.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    ZipEntry {
        archive: PathBuf,
        index: usize,
        name: String,
    },
}

impl Source {
    /// How the user recognises it: a path, or `archive.zip!/inner/path`.
    pub fn display(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::ZipEntry { archive, name, .. } => format!("{}!/{}", archive.display(), name),
        }
    }
}

/// A file that was not imported, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rejected {
    pub path: String,
    pub reason: String,
}

/// The outcome of an import; serialised as the `--json` output.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub imported: u64,
    pub duplicates: u64,
    pub rejected: Vec<Rejected>,
    pub studies: Vec<String>,
    /// Instances taken over from an interrupted earlier import (already sealed).
    pub resumed: u64,
    /// Plaintext bytes of the instances imported.
    pub bytes: u64,
    /// Which instance each accepted source was (stored now or already present); STOW-RS answers
    /// with these. Not printed: a large import would drown its summary.
    #[serde(skip)]
    pub accepted: Vec<Accepted>,
}

/// A source that is now in the store, and what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub source: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

impl Accepted {
    fn of(source: String, i: &crate::store::InstanceRecord) -> Self {
        Self {
            source,
            study_instance_uid: i.study_instance_uid.clone(),
            series_instance_uid: i.series_instance_uid.clone(),
            sop_class_uid: i.sop_class_uid.clone(),
            sop_instance_uid: i.sop_instance_uid.clone(),
        }
    }
}

/// Progress of an import, for a bar or a log line.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub bytes: u64,
}

/// A fatal import error: the store itself failed. Input problems are [`Rejected`] instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing to the store failed: {0}")]
    Io(#[from] io::Error),
    #[error("an import worker stopped unexpectedly")]
    Worker,
}

/// Expands inputs into sources; inputs that cannot be read are rejected right away.
pub fn collect(inputs: &[PathBuf]) -> (Vec<Source>, Vec<Rejected>) {
    let mut out = Vec::new();
    let mut rejected = Vec::new();
    let mut seen = HashSet::new();
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = Vec::new();
            for entry in walkdir::WalkDir::new(input).sort_by_file_name() {
                match entry {
                    Ok(e) if e.file_type().is_file() => files.push(e.into_path()),
                    Ok(_) => {}
                    Err(e) => rejected.push(Rejected {
                        path: e
                            .path()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| input.display().to_string()),
                        reason: format!("cannot read: {e}"),
                    }),
                }
            }
            for f in files {
                add_file(&f, false, &mut out, &mut rejected, &mut seen);
            }
        } else if input.exists() {
            add_file(input, true, &mut out, &mut rejected, &mut seen);
        } else {
            rejected.push(Rejected {
                path: input.display().to_string(),
                reason: "no such file or directory".into(),
            });
        }
    }
    (out, rejected)
}

fn is_zip(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|()| &magic == b"PK\x03\x04" || &magic == b"PK\x05\x06")
        .unwrap_or(false)
}

fn is_dicomdir_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"))
}

fn add_file(
    path: &Path,
    explicit: bool,
    out: &mut Vec<Source>,
    rejected: &mut Vec<Rejected>,
    seen: &mut HashSet<PathBuf>,
) {
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if !seen.insert(canon) {
        return;
    }
    if is_zip(path) {
        match File::open(path)
            .map_err(|e| e.to_string())
            .and_then(|f| zip::ZipArchive::new(f).map_err(|e| e.to_string()))
        {
            Ok(mut z) => {
                for index in 0..z.len() {
                    match z.by_index_raw(index) {
                        Ok(e) if e.is_dir() => {}
                        Ok(e) => out.push(Source::ZipEntry {
                            archive: path.to_path_buf(),
                            index,
                            name: e.name().to_owned(),
                        }),
                        Err(e) => rejected.push(Rejected {
                            path: format!("{}!/#{index}", path.display()),
                            reason: format!("unreadable ZIP entry: {e}"),
                        }),
                    }
                }
            }
            Err(e) => rejected.push(Rejected {
                path: path.display().to_string(),
                reason: format!("broken ZIP archive: {e}"),
            }),
        }
        return;
    }
    // A DICOMDIR named on the command line is followed to the files it lists (a CD's other
    // files, viewers and autorun, are left alone); met inside a folder, the folder's own files
    // are imported anyway and the DICOMDIR itself is skipped as an index.
    if explicit && is_dicomdir_name(path) {
        match dicomdir::referenced_files(path) {
            Ok(files) => {
                for f in files {
                    if f.is_file() {
                        add_file(&f, false, out, rejected, seen);
                    } else {
                        rejected.push(Rejected {
                            path: f.display().to_string(),
                            reason: format!("listed in {} but missing on disk", path.display()),
                        });
                    }
                }
            }
            Err(e) => rejected.push(Rejected {
                path: path.display().to_string(),
                reason: format!("unreadable DICOMDIR: {e}"),
            }),
        }
        return;
    }
    out.push(Source::File(path.to_path_buf()));
}

/// What a worker made of one source.
enum Outcome {
    Sealed {
        pending: Box<PendingInstance>,
        shard: Option<PathBuf>,
        resumed: bool,
        display: String,
    },
    Duplicate(Accepted),
    Skipped,
    Rejected(Rejected),
    Fatal(ImportError),
}

/// Imports `inputs` into `store`, calling `progress` after each source.
pub fn import(
    store: &Store,
    inputs: &[PathBuf],
    workers: usize,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, ImportError> {
    let (sources, early_rejects) = collect(inputs);
    run(store, &sources, early_rejects, workers, progress)
}

/// Imports already collected sources.
pub fn run(
    store: &Store,
    sources: &[Source],
    early_rejects: Vec<Rejected>,
    workers: usize,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, ImportError> {
    let mut report = Report {
        rejected: early_rejects,
        ..Report::default()
    };
    let total = sources.len();
    let next = AtomicUsize::new(0);
    let workers = workers.clamp(1, 16).min(total.max(1));
    let (tx, rx) = mpsc::sync_channel::<Outcome>(workers * 2);
    let mut sops: Vec<String> = Vec::new();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut by_sop: HashMap<String, (String, String)> = HashMap::new(); // sop -> (hash, blob)
    let mut fatal: Option<ImportError> = None;
    std::thread::scope(|scope| {
        let (sync_tx, sync_rx) = mpsc::sync_channel::<()>(1);
        scope.spawn(move || {
            for () in sync_rx {
                if let Err(e) = store.blobs().sync(&BTreeSet::new()) {
                    tracing::warn!("background sync failed (the commit will retry): {e}");
                }
            }
        });
        let mut unsynced = 0u64;
        for _ in 0..workers {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || {
                let mut zips: HashMap<PathBuf, zip::ZipArchive<File>> = HashMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(src) = sources.get(i) else { break };
                    let outcome = process(store, src, &mut zips);
                    if tx.send(outcome).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (n, outcome) in rx.into_iter().enumerate() {
            let done = n + 1;
            match outcome {
                Outcome::Sealed {
                    pending,
                    shard,
                    resumed,
                    display,
                } => {
                    let sop = pending.instance.sop_instance_uid.clone();
                    let accepted = Accepted::of(display.clone(), &pending.instance);
                    if let Some((hash, blob)) = by_sop.get(&sop) {
                        // The same instance twice in one import (e.g. a folder and a ZIP of it).
                        if *blob != pending.instance.blob_id {
                            let _ = store.blobs().remove(&pending.instance.blob_id);
                        }
                        if *hash == pending.instance.plaintext_hash {
                            report.duplicates += 1;
                            report.accepted.push(accepted);
                        } else {
                            report.rejected.push(Rejected {
                                path: display,
                                reason: format!("SOPInstanceUID {sop} appears twice in this import with different content; the first one was kept"),
                            });
                        }
                    } else {
                        if let Err(e) = store.put_pending(&pending) {
                            fatal.get_or_insert(e.into());
                            continue;
                        }
                        by_sop.insert(
                            sop.clone(),
                            (
                                pending.instance.plaintext_hash.clone(),
                                pending.instance.blob_id.clone(),
                            ),
                        );
                        if let Some(d) = shard {
                            dirs.insert(d);
                        }
                        report.resumed += u64::from(resumed);
                        report.bytes += pending.instance.size;
                        report.accepted.push(accepted);
                        unsynced += pending.instance.size;
                        // A sync already running will cover these bytes too; never queue more.
                        if unsynced >= SYNC_EVERY_BYTES && sync_tx.try_send(()).is_ok() {
                            unsynced = 0;
                        }
                        sops.push(sop);
                    }
                }
                Outcome::Duplicate(a) => {
                    report.duplicates += 1;
                    report.accepted.push(a);
                }
                Outcome::Skipped => {}
                Outcome::Rejected(r) => report.rejected.push(r),
                Outcome::Fatal(e) => {
                    fatal.get_or_insert(e);
                }
            }
            progress(Progress {
                done,
                total,
                bytes: report.bytes,
            });
        }
        drop(sync_tx);
    });
    if let Some(e) = fatal {
        return Err(e);
    }
    let commit_start = std::time::Instant::now();
    let summary = store.commit(&sops, &dirs)?;
    tracing::info!(
        instances = summary.instances,
        elapsed_ms = commit_start.elapsed().as_millis() as u64,
        "import committed"
    );
    report.imported = summary.instances;
    report.duplicates += summary.duplicates;
    report.studies = summary.studies;
    if report.imported > 0 || !report.rejected.is_empty() {
        store
            .audit()
            .append(
                "import",
                serde_json::json!({
                    "studies": report.studies,
                    "instances": report.imported,
                    "duplicates": report.duplicates,
                    "rejected": report.rejected.len(),
                    "bytes": report.bytes,
                }),
            )
            .map_err(StoreError::from)?;
    }
    Ok(report)
}

/// One source taken as far as a sealed blob, but not recorded or made visible: for receivers
/// that take instances one at a time and commit them in batches (the DIMSE C-STORE SCP), and
/// so must answer for each instance before the batch is committed.
#[derive(Debug)]
pub enum Staged {
    /// Sealed into its blob file; the caller records it with [`Store::put_pending`] and makes
    /// it visible with [`Store::commit`].
    Sealed {
        pending: Box<PendingInstance>,
        /// The blob's shard directory, for [`Store::commit`] (None when an earlier sealing was
        /// reused).
        shard: Option<PathBuf>,
        accepted: Accepted,
    },
    /// Already stored with the same content.
    Duplicate(Accepted),
    Rejected(Rejected),
}

/// Parses, dedupes and seals one source (see [`Staged`]). Only a failure of the store is an
/// error; bad input is [`Staged::Rejected`].
pub fn stage(store: &Store, src: &Source) -> Result<Staged, ImportError> {
    let mut zips = HashMap::new();
    staged(&src.display(), process(store, src, &mut zips))
}

fn staged(display: &str, outcome: Outcome) -> Result<Staged, ImportError> {
    match outcome {
        Outcome::Sealed {
            pending,
            shard,
            display,
            ..
        } => {
            let accepted = Accepted::of(display, &pending.instance);
            Ok(Staged::Sealed {
                pending,
                shard,
                accepted,
            })
        }
        Outcome::Duplicate(a) => Ok(Staged::Duplicate(a)),
        Outcome::Skipped => Ok(Staged::Rejected(Rejected {
            path: display.to_owned(),
            reason: ParseError::Dicomdir.to_string(),
        })),
        Outcome::Rejected(r) => Ok(Staged::Rejected(r)),
        Outcome::Fatal(e) => Err(e),
    }
}

/// What [`check`] found: an instance to seal, or an answer already (duplicate, rejected, or
/// sealed by an interrupted earlier run).
#[derive(Debug)]
pub enum Checked {
    Ready(Box<Prepared>),
    Staged(Staged),
}

/// The first half of [`stage`]: parses and dedupes one source, and fetches its study key. A
/// receiver can answer its sender from this (the instance is readable and new) and seal with
/// [`seal`] while the next one arrives.
pub fn check(store: &Store, src: &Source) -> Result<Checked, ImportError> {
    let mut zips = HashMap::new();
    checked(&src.display(), prepare(store, src, &mut zips))
}

/// [`check`] for an instance already in memory (a received one, shown as `display`): no
/// file is written or read for it.
pub fn check_bytes(store: &Store, display: &str, bytes: Vec<u8>) -> Result<Checked, ImportError> {
    checked(
        display,
        prepare_body(store, display.to_owned(), Body::Memory(bytes)),
    )
}

fn checked(display: &str, step: Step) -> Result<Checked, ImportError> {
    match step {
        Step::Ready(p) => Ok(Checked::Ready(p)),
        Step::Done(outcome) => staged(display, outcome).map(Checked::Staged),
    }
}

/// The second half of [`stage`]: seals what [`check`] prepared. Only the store's disk can
/// fail it now (or the source changing underneath).
pub fn seal(store: &Store, prepared: Prepared) -> Result<Staged, ImportError> {
    let display = prepared.display.clone();
    staged(&display, seal_prepared(store, prepared))
}

/// The bytes of a source, either in memory or as a file to stream.
enum Body {
    Memory(Vec<u8>),
    /// A file to stream; the temporary path (an extracted ZIP entry) is deleted on drop.
    File(PathBuf, #[allow(dead_code)] Option<tempfile::TempPath>),
}

fn process(
    store: &Store,
    src: &Source,
    zips: &mut HashMap<PathBuf, zip::ZipArchive<File>>,
) -> Outcome {
    match prepare(store, src, zips) {
        Step::Ready(p) => seal_prepared(store, *p),
        Step::Done(outcome) => outcome,
    }
}

/// A source parsed and found new, with its study's key: all that is left is sealing it.
pub struct Prepared {
    body: Body,
    size: u64,
    instance: crate::store::records::InstanceRecord,
    study: crate::store::records::StudyAttributes,
    metadata: String,
    key: crate::crypto::SecretKey,
    display: String,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("display", &self.display)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    pub fn sop_instance_uid(&self) -> &str {
        &self.instance.sop_instance_uid
    }

    /// Bytes of the instance as received.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// BLAKE3 of the instance's bytes as received.
    pub fn plaintext_hash(&self) -> io::Result<String> {
        hash_body(&self.body)
    }
}

enum Step {
    Ready(Box<Prepared>),
    Done(Outcome),
}

fn hash_body(body: &Body) -> io::Result<String> {
    Ok(match body {
        Body::Memory(b) => blake3::hash(b).to_hex().to_string(),
        Body::File(p, _) => {
            let mut h = blake3::Hasher::new();
            h.update_reader(File::open(p)?)?;
            h.finalize().to_hex().to_string()
        }
    })
}

/// Loads, parses and dedupes a source, and fetches (or creates) its study's key.
fn prepare(
    store: &Store,
    src: &Source,
    zips: &mut HashMap<PathBuf, zip::ZipArchive<File>>,
) -> Step {
    let display = src.display();
    match load(store, src, zips) {
        Ok(body) => prepare_body(store, display, body),
        Err(reason) => Step::Done(Outcome::Rejected(Rejected {
            path: display,
            reason,
        })),
    }
}

/// Parses and dedupes a loaded source, and fetches (or creates) its study's key.
fn prepare_body(store: &Store, display: String, body: Body) -> Step {
    let reject = |reason: String| {
        Outcome::Rejected(Rejected {
            path: display.clone(),
            reason,
        })
    };
    let (parsed, size) = match &body {
        Body::Memory(bytes) => (parse::parse_bytes(bytes), bytes.len() as u64),
        Body::File(p, _) => {
            let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            (parse::parse_header(p, size), size)
        }
    };
    let Parsed {
        instance,
        study,
        metadata,
    } = match parsed {
        Ok(p) => p,
        Err(ParseError::Dicomdir) => return Step::Done(Outcome::Skipped),
        Err(e) => return Step::Done(reject(e.to_string())),
    };
    let plain_hash = || hash_body(&body);
    // Already stored? Then this is a duplicate, or a conflicting instance we refuse to replace.
    match store.instance(&instance.sop_instance_uid) {
        Ok(Some(existing)) => {
            return Step::Done(match plain_hash() {
                Ok(h) if h == existing.plaintext_hash => {
                    Outcome::Duplicate(Accepted::of(display.clone(), &existing))
                }
                Ok(_) => reject(format!(
                    "another instance with SOPInstanceUID {} is already stored with different content; it was not replaced",
                    instance.sop_instance_uid
                )),
                Err(e) => reject(format!("cannot read: {e}")),
            });
        }
        Ok(None) => {}
        Err(e) => return Step::Done(Outcome::Fatal(e.into())),
    }
    // Sealed by an interrupted earlier import? Reuse it.
    match store.pending(&instance.sop_instance_uid) {
        Ok(Some(p)) if p.instance.size == size && store.blobs().exists(&p.instance.blob_id) => {
            if let Ok(h) = plain_hash() {
                if h == p.instance.plaintext_hash {
                    return Step::Done(Outcome::Sealed {
                        pending: Box::new(p),
                        shard: None,
                        resumed: true,
                        display,
                    });
                }
            }
        }
        Ok(_) => {}
        Err(e) => return Step::Done(Outcome::Fatal(e.into())),
    }
    let key = match store.study_key(&instance.study_instance_uid, true) {
        Ok(Some(k)) => k,
        Ok(None) => return Step::Done(Outcome::Fatal(ImportError::Worker)),
        Err(e) => return Step::Done(Outcome::Fatal(e.into())),
    };
    Step::Ready(Box::new(Prepared {
        body,
        size,
        instance,
        study,
        metadata,
        key,
        display,
    }))
}

/// Seals a prepared source into its blob file.
fn seal_prepared(store: &Store, p: Prepared) -> Outcome {
    let Prepared {
        body,
        size,
        mut instance,
        study,
        metadata,
        key,
        display,
    } = p;
    let reject = |reason: String| {
        Outcome::Rejected(Rejected {
            path: display.clone(),
            reason,
        })
    };
    let ctx = blob::Context {
        study_uid: &instance.study_instance_uid,
        sop_instance_uid: &instance.sop_instance_uid,
    };
    let mut sealed = None;
    let written = store.blobs().write(|w| -> Result<String, SealFailure> {
        let s = match &body {
            Body::Memory(b) => blob::seal(&key, ctx, size, &b[..], w)?,
            Body::File(p, _) => blob::seal(&key, ctx, size, io::BufReader::new(File::open(p)?), w)?,
        };
        let id = s.blob_id.to_hex().to_string();
        sealed = Some(s);
        Ok(id)
    });
    let (id, shard) = match written {
        Ok(x) => x,
        Err(SealFailure::Source(e)) => {
            return reject(format!("changed or unreadable while importing: {e}"))
        }
        Err(SealFailure::Io(e)) => return Outcome::Fatal(e.into()),
    };
    let Some(sealed) = sealed else {
        return Outcome::Fatal(ImportError::Worker);
    };
    instance.blob_id = id;
    instance.plaintext_hash = sealed.plaintext_hash.to_hex().to_string();
    instance.imported_unix = crate::store::records::now_unix_secs();
    Outcome::Sealed {
        pending: Box::new(PendingInstance {
            instance,
            study,
            metadata,
        }),
        shard: Some(shard),
        resumed: false,
        display,
    }
}

/// Sealing failed: because of the input (reject it) or the store's disk (fatal).
#[derive(Debug)]
enum SealFailure {
    Source(blob::BlobError),
    Io(io::Error),
}

impl From<io::Error> for SealFailure {
    fn from(e: io::Error) -> Self {
        SealFailure::Io(e)
    }
}

impl From<blob::BlobError> for SealFailure {
    fn from(e: blob::BlobError) -> Self {
        match e {
            blob::BlobError::Io(e) => SealFailure::Io(e),
            other => SealFailure::Source(other),
        }
    }
}

/// Reads a source into memory, or points at a file to stream (extracting ZIP entries first).
fn load(
    store: &Store,
    src: &Source,
    zips: &mut HashMap<PathBuf, zip::ZipArchive<File>>,
) -> Result<Body, String> {
    match src {
        Source::File(p) => {
            let size = std::fs::metadata(p)
                .map_err(|e| format!("cannot read: {e}"))?
                .len();
            if size <= parse::IN_MEMORY_LIMIT {
                std::fs::read(p)
                    .map(Body::Memory)
                    .map_err(|e| format!("cannot read: {e}"))
            } else {
                Ok(Body::File(p.clone(), None))
            }
        }
        Source::ZipEntry { archive, index, .. } => {
            if !zips.contains_key(archive) {
                let z = File::open(archive)
                    .map_err(|e| e.to_string())
                    .and_then(|f| zip::ZipArchive::new(f).map_err(|e| e.to_string()))
                    .map_err(|e| format!("broken ZIP archive: {e}"))?;
                zips.insert(archive.clone(), z);
            }
            let z = zips
                .get_mut(archive)
                .ok_or_else(|| "ZIP archive vanished".to_string())?;
            let mut entry = z
                .by_index(*index)
                .map_err(|e| format!("unreadable ZIP entry: {e}"))?;
            let size = entry.size();
            if size > MAX_ZIP_ENTRY {
                return Err(format!(
                    "ZIP entry of {size} bytes is larger than the {MAX_ZIP_ENTRY}-byte limit"
                ));
            }
            let mut limited = (&mut entry).take(MAX_ZIP_ENTRY + 1);
            if size <= parse::IN_MEMORY_LIMIT {
                let mut v = Vec::with_capacity(size as usize);
                limited
                    .read_to_end(&mut v)
                    .map_err(|e| format!("broken ZIP entry: {e}"))?;
                Ok(Body::Memory(v))
            } else {
                let tmp = store.blobs().temp().map_err(|e| e.to_string())?;
                let (mut f, path) = tmp.into_parts();
                io::copy(&mut limited, &mut f).map_err(|e| format!("broken ZIP entry: {e}"))?;
                Ok(Body::File(path.to_path_buf(), Some(path)))
            }
        }
    }
}
