//! The encrypted study store: a sled index of sealed records plus sealed blob files.
//!
//! Every value in sled is sealed under the node's storage key with its own sled key as
//! associated data, and sled keys are keyed hashes, so a copied `index/` reveals neither a
//! patient name nor a UID. One sled tree holds everything, with a one-byte prefix per kind, so
//! that a commit touching several kinds is a single atomic `apply_batch`:
//!
//! ```text
//! k/ H(study)            -> sealed study key (32 bytes)
//! s/ H(study)            -> sealed StudyRecord             (visible studies)
//! i/ H(study) H(sop)     -> sealed InstanceRecord          (visible instances)
//! x/ H(sop)              -> H(study)                       (dedupe lookup, hashes only)
//! q/ H(sop)              -> sealed PendingInstance         (sealed, durable, not yet visible)
//! j/ H(study) H(sop)     -> sealed DICOM JSON of the instance (WADO-RS metadata)
//! a/ seq (u64 BE)        -> sealed audit entry
//! c/ t/ g/ r/             -> contacts, tickets, grants, inbound transfers (see `peers`)
//! m/ name                -> sealed store metadata (audit head)
//! ```
//!
//! Crash safety, the order of writes: blob file renamed into place, then its `q/` record; at the
//! end of an import one batch turns every `q/` of that import into `i/` + `x/` and
//! updates the `s/` summaries, after one `syncfs` made the blobs durable, then sled is flushed. A kill at any point leaves each study either
//! as it was or with the whole import; `q/` records left behind make a re-run cheap (the sealed
//! blob is reused) and are never shown.

pub mod audit;
pub mod blobs;
pub mod peers;
pub mod records;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use audit::{Audit, AuditEntry, AuditError};
pub use blobs::Blobs;
pub use peers::{Contact, Grant, GrantState, Inbound, InboundState, Queued, Ticket, Via};
pub use records::{
    ImageAttributes, InstanceRecord, PendingInstance, SeriesSummary, StudyAttributes, StudyRecord,
    StudySummary,
};

use crate::crypto::{open_record, seal_record, SealError, SecretKey};
use crate::home::Home;
use crate::keystore::Keys;

/// sled's page cache: the index holds small records only, so a small cache keeps RSS low.
const SLED_CACHE_BYTES: u64 = 32 * 1024 * 1024;
const SLOT_CONTEXT: &str = "discless 2026 index slot v1";

/// Opening or using the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the store at {0} is in use by another discless process (is `discless serve` running on this home?)")]
    Locked(PathBuf),
    #[error("index error: {0}")]
    Sled(#[from] sled::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("index record {slot} cannot be opened: {source} (the index was altered, or belongs to another keystore)")]
    Record {
        slot: String,
        #[source]
        source: SealError,
    },
    #[error("index record {slot} is malformed: {reason}")]
    Malformed { slot: String, reason: String },
    #[error("no study matches {0:?}")]
    NoSuchStudy(String),
    #[error("{query:?} matches {count} studies; give more of the id or the full StudyInstanceUID")]
    AmbiguousStudy { query: String, count: usize },
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("no contact matches {0:?} (see `discless contacts`)")]
    NoSuchContact(String),
    #[error("{query:?} matches {count} contacts; give more of the name or PeerId")]
    AmbiguousContact { query: String, count: usize },
    #[error("study {0} is already held here under a different key (imported separately); receiving it from a peer is not supported")]
    KeyConflict(String),
}

/// What a commit made visible.
#[derive(Debug, Default, Clone)]
pub struct CommitSummary {
    pub instances: u64,
    pub duplicates: u64,
    pub studies: Vec<String>,
}

/// Handle to an open store. Cheap to clone; all clones share one sled database.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    home: Home,
    keys: Keys,
    db: sled::Db,
    index: sled::Tree,
    blobs: Blobs,
    /// Serialises study-key creation and commits within this process (sled's own lock keeps
    /// other processes out).
    write_lock: Mutex<()>,
    audit: Audit,
    /// Bumped after every commit that made instances visible, so the network layer can offer new
    /// studies to subscribed contacts without polling.
    commits: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("home", &self.home)
            .field("peer", &self.keys.peer_id())
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn slot_name(slot: &[u8]) -> String {
    let (prefix, rest) = slot.split_at(slot.len().min(2));
    format!(
        "{}{}",
        String::from_utf8_lossy(prefix),
        hex::encode(&rest[..rest.len().min(6)])
    )
}

impl Store {
    /// Opens (creating if needed) the store of `home` with already opened keys.
    pub fn open(home: &Home, keys: Keys) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(home.index())
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked(home.root().to_path_buf())
                }
                sled::Error::Io(ref io) if io.to_string().contains("lock") => {
                    StoreError::Locked(home.root().to_path_buf())
                }
                e => StoreError::Sled(e),
            })?;
        let index = db.open_tree("index")?;
        let blobs = Blobs::new(home.blobs(), home.tmp());
        blobs.prepare()?;
        let audit = Audit::new(index.clone(), keys.storage.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                home: home.clone(),
                keys,
                db,
                index,
                blobs,
                write_lock: Mutex::new(()),
                audit,
                commits: tokio::sync::watch::channel(0).0,
            }),
        })
    }

    pub fn home(&self) -> &Home {
        &self.inner.home
    }
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }
    pub fn blobs(&self) -> &Blobs {
        &self.inner.blobs
    }
    pub fn audit(&self) -> &Audit {
        &self.inner.audit
    }
    /// The raw sled tree, for tests that tamper with records on purpose.
    #[doc(hidden)]
    pub fn raw_index(&self) -> &sled::Tree {
        &self.inner.index
    }

    fn h(&self, uid: &str) -> [u8; 32] {
        self.inner
            .keys
            .storage
            .keyed_hash(SLOT_CONTEXT, uid.as_bytes())
    }

    fn slot(prefix: &[u8; 2], parts: &[&[u8; 32]]) -> Vec<u8> {
        let mut k = Vec::with_capacity(2 + 32 * parts.len());
        k.extend_from_slice(prefix);
        for p in parts {
            k.extend_from_slice(&p[..]);
        }
        k
    }

    fn seal<T: serde::Serialize>(&self, slot: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(value).map_err(|e| {
            StoreError::Malformed {
                slot: slot_name(slot),
                reason: e.to_string(),
            }
        })?);
        seal_record(&self.inner.keys.storage, slot, &plain).map_err(|source| StoreError::Record {
            slot: slot_name(slot),
            source,
        })
    }

    fn seal_bytes(&self, slot: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        seal_record(&self.inner.keys.storage, slot, plain).map_err(|source| StoreError::Record {
            slot: slot_name(slot),
            source,
        })
    }

    /// The stored DICOM JSON of an instance (with the bulk-data placeholder prefix).
    pub fn metadata(&self, study_uid: &str, sop_uid: &str) -> Result<Option<String>, StoreError> {
        let slot = Self::slot(b"j/", &[&self.h(study_uid), &self.h(sop_uid)]);
        let Some(v) = self.inner.index.get(&slot)? else {
            return Ok(None);
        };
        let plain = open_record(&self.inner.keys.storage, &slot, &v).map_err(|source| {
            StoreError::Record {
                slot: slot_name(&slot),
                source,
            }
        })?;
        String::from_utf8(plain)
            .map(Some)
            .map_err(|e| StoreError::Malformed {
                slot: slot_name(&slot),
                reason: e.to_string(),
            })
    }

    fn open_value<T: serde::de::DeserializeOwned>(
        &self,
        slot: &[u8],
        sealed: &[u8],
    ) -> Result<T, StoreError> {
        let plain =
            zeroize::Zeroizing::new(open_record(&self.inner.keys.storage, slot, sealed).map_err(
                |source| StoreError::Record {
                    slot: slot_name(slot),
                    source,
                },
            )?);
        serde_json::from_slice(&plain).map_err(|e| StoreError::Malformed {
            slot: slot_name(slot),
            reason: e.to_string(),
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, slot: &[u8]) -> Result<Option<T>, StoreError> {
        match self.inner.index.get(slot)? {
            Some(v) => Ok(Some(self.open_value(slot, &v)?)),
            None => Ok(None),
        }
    }

    /// The key of a study, created (and made durable with the next flush) when `create` is set.
    pub fn study_key(
        &self,
        study_uid: &str,
        create: bool,
    ) -> Result<Option<SecretKey>, StoreError> {
        let slot = Self::slot(b"k/", &[&self.h(study_uid)]);
        if let Some(k) = self.get::<String>(&slot)? {
            return Ok(Some(decode_key(&slot, &k)?));
        }
        if !create {
            return Ok(None);
        }
        let _g = self
            .inner
            .write_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(k) = self.get::<String>(&slot)? {
            return Ok(Some(decode_key(&slot, &k)?));
        }
        let key = SecretKey::generate();
        let sealed = self.seal(&slot, &hex::encode(key.as_bytes()))?;
        self.inner.index.insert(slot, sealed)?;
        Ok(Some(key))
    }

    /// The visible instance with this SOP Instance UID, if any.
    pub fn instance(&self, sop_uid: &str) -> Result<Option<InstanceRecord>, StoreError> {
        let hs = self.h(sop_uid);
        let Some(hstudy) = self.inner.index.get(Self::slot(b"x/", &[&hs]))? else {
            return Ok(None);
        };
        let hstudy: [u8; 32] = hstudy
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::Malformed {
                slot: "x/".into(),
                reason: "bad length".into(),
            })?;
        self.get(&Self::slot(b"i/", &[&hstudy, &hs]))
    }

    /// An instance sealed by an unfinished import, if any.
    pub fn pending(&self, sop_uid: &str) -> Result<Option<PendingInstance>, StoreError> {
        self.get(&Self::slot(b"q/", &[&self.h(sop_uid)]))
    }

    /// Records a sealed instance as pending. Its blob must already be in place.
    pub fn put_pending(&self, p: &PendingInstance) -> Result<(), StoreError> {
        let slot = Self::slot(b"q/", &[&self.h(&p.instance.sop_instance_uid)]);
        let sealed = self.seal(&slot, p)?;
        self.inner.index.insert(slot, sealed)?;
        Ok(())
    }

    /// Makes the pending instances with these SOP Instance UIDs visible, in one atomic batch,
    /// after making their blobs durable.
    pub fn commit(
        &self,
        sop_uids: &[String],
        blob_dirs: &BTreeSet<PathBuf>,
    ) -> Result<CommitSummary, StoreError> {
        if !sop_uids.is_empty() {
            self.inner.blobs.sync(blob_dirs)?;
        }
        let _g = self
            .inner
            .write_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = now_unix();
        let mut batch = sled::Batch::default();
        let mut studies: BTreeMap<String, StudyRecord> = BTreeMap::new();
        let mut summary = CommitSummary::default();
        let mut seen = BTreeSet::new();
        for sop in sop_uids {
            if !seen.insert(sop.as_str()) {
                continue;
            }
            let hs = self.h(sop);
            let qslot = Self::slot(b"q/", &[&hs]);
            let Some(p) = self.get::<PendingInstance>(&qslot)? else {
                continue;
            };
            batch.remove(qslot);
            if self.inner.index.contains_key(Self::slot(b"x/", &[&hs]))? {
                summary.duplicates += 1;
                continue;
            }
            let uid = p.instance.study_instance_uid.clone();
            let hstudy = self.h(&uid);
            let study = match studies.entry(uid.clone()) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let existing = self.get::<StudyRecord>(&Self::slot(b"s/", &[&hstudy]))?;
                    v.insert(
                        existing
                            .unwrap_or_else(|| StudyRecord::from_attributes(&uid, &p.study, now)),
                    )
                }
            };
            study.absorb(&p.instance);
            study.updated_unix = now;
            let islot = Self::slot(b"i/", &[&hstudy, &hs]);
            batch.insert(islot.clone(), self.seal(&islot, &p.instance)?);
            let jslot = Self::slot(b"j/", &[&hstudy, &hs]);
            batch.insert(
                jslot.clone(),
                self.seal_bytes(&jslot, p.metadata.as_bytes())?,
            );
            batch.insert(Self::slot(b"x/", &[&hs]), &hstudy[..]);
            summary.instances += 1;
        }
        for (uid, rec) in &studies {
            let slot = Self::slot(b"s/", &[&self.h(uid)]);
            batch.insert(slot.clone(), self.seal(&slot, rec)?);
            summary.studies.push(uid.clone());
        }
        self.inner.index.apply_batch(batch)?;
        self.inner.db.flush()?;
        if summary.instances > 0 {
            self.inner.commits.send_modify(|n| *n += 1);
        }
        Ok(summary)
    }

    /// Every visible study, newest study date first.
    pub fn studies(&self) -> Result<Vec<StudyRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.index.scan_prefix(b"s/") {
            let (k, v) = kv?;
            out.push(self.open_value::<StudyRecord>(&k, &v)?);
        }
        out.sort_by(|a, b| {
            (&b.study_date, &b.study_time, &a.study_instance_uid).cmp(&(
                &a.study_date,
                &a.study_time,
                &b.study_instance_uid,
            ))
        });
        Ok(out)
    }

    pub fn study(&self, uid: &str) -> Result<Option<StudyRecord>, StoreError> {
        self.get(&Self::slot(b"s/", &[&self.h(uid)]))
    }

    /// A study by full StudyInstanceUID or by an unambiguous prefix of its short id.
    pub fn resolve_study(&self, query: &str) -> Result<StudyRecord, StoreError> {
        let q = query.trim();
        if let Some(s) = self.study(q)? {
            return Ok(s);
        }
        let ql = q.to_ascii_lowercase();
        let mut hits: Vec<StudyRecord> = self
            .studies()?
            .into_iter()
            .filter(|s| !ql.is_empty() && s.short_id().starts_with(&ql))
            .collect();
        match hits.len() {
            0 => Err(StoreError::NoSuchStudy(q.to_owned())),
            1 => Ok(hits.remove(0)),
            count => Err(StoreError::AmbiguousStudy {
                query: q.to_owned(),
                count,
            }),
        }
    }

    /// The visible instances of a study, by series number then instance number.
    pub fn instances(&self, study_uid: &str) -> Result<Vec<InstanceRecord>, StoreError> {
        let mut prefix = b"i/".to_vec();
        prefix.extend_from_slice(&self.h(study_uid));
        let mut out = Vec::new();
        for kv in self.inner.index.scan_prefix(prefix) {
            let (k, v) = kv?;
            out.push(self.open_value::<InstanceRecord>(&k, &v)?);
        }
        out.sort_by(|a, b| {
            (
                a.series_number,
                &a.series_instance_uid,
                a.instance_number,
                &a.sop_instance_uid,
            )
                .cmp(&(
                    b.series_number,
                    &b.series_instance_uid,
                    b.instance_number,
                    &b.sop_instance_uid,
                ))
        });
        Ok(out)
    }

    /// How many instances wait in unfinished imports.
    pub fn pending_count(&self) -> usize {
        self.inner.index.scan_prefix(b"q/").count()
    }

    /// Wakes up after each commit that made instances visible.
    pub fn subscribe_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }
}

fn decode_key(slot: &[u8], hexkey: &str) -> Result<SecretKey, StoreError> {
    let bytes =
        zeroize::Zeroizing::new(hex::decode(hexkey).map_err(|e| StoreError::Malformed {
            slot: slot_name(slot),
            reason: e.to_string(),
        })?);
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| StoreError::Malformed {
            slot: slot_name(slot),
            reason: "study key has the wrong length".into(),
        })?;
    Ok(SecretKey::from_bytes(arr))
}

/// Viewing order: series by number, then instances by Instance Number, then by position along
/// the slice axis (z), then by UID so the order is total and stable.
pub fn sort_for_viewing(v: &mut [InstanceRecord]) {
    let z = |i: &InstanceRecord| {
        i.image
            .image_position_patient
            .as_ref()
            .and_then(|p| p.get(2).copied())
            .or(i.image.slice_location)
            .unwrap_or(0.0)
    };
    v.sort_by(|a, b| {
        (a.series_number, &a.series_instance_uid, a.instance_number)
            .cmp(&(b.series_number, &b.series_instance_uid, b.instance_number))
            .then(z(b).total_cmp(&z(a)))
            .then(a.sop_instance_uid.cmp(&b.sop_instance_uid))
    });
}
