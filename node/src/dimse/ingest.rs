//! From received bytes to stored instances: the spool file of one C-STORE, staging it through the
//! import path, and the committer that makes an association's staged instances visible.
//!
//! The spool is the Part-10 file the import expects: a zero preamble, `DICM`, a meta group built
//! from the C-STORE command and the presentation context, then the data set PDV bytes as they
//! arrived, written as they arrive (never a whole instance in memory on the async side). It lives
//! in the node's `tmp/` (emptied whenever the store opens) and is deleted once staged.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use dicom_object::meta::FileMetaTableBuilder;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::command::status;
use super::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, MAX_INSTANCE_BYTES};
use crate::dicom::import::{self, Source, Staged};
use crate::store::{Store, StoreError};

/// Staged instances waiting for the committer; when full, storing the next instance waits for
/// the committer to catch up (which bounds how much is acknowledged but uncommitted).
const COMMIT_QUEUE: usize = 256;

/// Writing a spool file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(super) enum SpoolError {
    #[error("cannot write the received instance: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot build the file meta group: {0}")]
    Meta(String),
    #[error("instance larger than {MAX_INSTANCE_BYTES} bytes")]
    TooLarge,
}

/// The bytes that precede a received data set: preamble, `DICM` and the meta group.
pub(super) fn file_header(
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
    calling_ae: &str,
) -> Result<Vec<u8>, SpoolError> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .source_application_entity_title(calling_ae)
        .build()
        .map_err(|e| SpoolError::Meta(e.to_string()))?;
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out)
        .map_err(|e| SpoolError::Meta(e.to_string()))?;
    Ok(out)
}

/// One instance being received into a temp file.
#[derive(Debug)]
pub(super) struct Spool {
    file: tokio::io::BufWriter<tokio::fs::File>,
    path: tempfile::TempPath,
    bytes: u64,
}

impl Spool {
    pub(super) async fn create(store: &Store, header: &[u8]) -> Result<Self, SpoolError> {
        let (file, path) = store.blobs().temp()?.into_parts();
        let mut file =
            tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
        file.write_all(header).await?;
        Ok(Self {
            file,
            path,
            bytes: 0,
        })
    }

    pub(super) async fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.bytes += data.len() as u64;
        if self.bytes > MAX_INSTANCE_BYTES {
            return Err(SpoolError::TooLarge);
        }
        Ok(self.file.write_all(data).await?)
    }

    pub(super) async fn finish(mut self) -> Result<tempfile::TempPath, SpoolError> {
        self.file.flush().await?;
        Ok(self.path)
    }
}

/// What a C-STORE-RSP says about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) comment: Option<String>,
}

impl Reply {
    pub(super) fn success() -> Self {
        Self {
            status: status::SUCCESS,
            comment: None,
        }
    }
    pub(super) fn failure(status: u16, comment: impl Into<String>) -> Self {
        Self {
            status,
            comment: Some(comment.into()),
        }
    }
}

/// What one association stored, for its audit entry and log line.
#[derive(Debug, Default)]
pub(super) struct Totals {
    pub(super) received: u64,
    pub(super) committed: u64,
    pub(super) duplicates: u64,
    pub(super) rejected: u64,
    pub(super) bytes: u64,
    pub(super) studies: BTreeSet<String>,
}

/// A staged instance on its way to the committer.
#[derive(Debug)]
struct ToCommit {
    sop: String,
    shard: Option<PathBuf>,
}

/// An association's receiving side: stages instances and owns their committer.
#[derive(Debug)]
pub(super) struct Receiver {
    store: Store,
    calling_ae: String,
    peer: IpAddr,
    /// SOP Instance UID → plaintext hash of what this association staged: the same instance
    /// sent twice is a duplicate, a different one under the same UID is refused.
    seen: Arc<Mutex<HashMap<String, String>>>,
    /// Set when a commit failed: later instances are answered "out of resources".
    broken: Arc<OnceLock<String>>,
    tx: mpsc::Sender<ToCommit>,
    committer: tokio::task::JoinHandle<Totals>,
    totals: Totals,
}

impl Receiver {
    pub(super) fn new(store: Store, calling_ae: String, peer: IpAddr) -> Self {
        let (tx, rx) = mpsc::channel(COMMIT_QUEUE);
        let broken = Arc::new(OnceLock::new());
        let committer = tokio::spawn(commit_loop(store.clone(), rx, broken.clone()));
        Self {
            store,
            calling_ae,
            peer,
            seen: Arc::default(),
            broken,
            tx,
            committer,
            totals: Totals::default(),
        }
    }

    /// Stages one received file; the answer for its C-STORE-RSP.
    pub(super) async fn store(&mut self, spool: tempfile::TempPath) -> Reply {
        self.totals.received += 1;
        if let Some(e) = self.broken.get() {
            return Reply::failure(status::OUT_OF_RESOURCES, format!("store failure: {e}"));
        }
        let store = self.store.clone();
        let seen = self.seen.clone();
        let staged = tokio::task::spawn_blocking(move || stage_one(&store, spool, &seen)).await;
        let reply = match staged {
            Ok(Ok(Stage::Stored { sop, shard, bytes })) => {
                self.totals.bytes += bytes;
                if self.tx.send(ToCommit { sop, shard }).await.is_err() {
                    return Reply::failure(status::OUT_OF_RESOURCES, "store committer stopped");
                }
                Reply::success()
            }
            Ok(Ok(Stage::Duplicate)) => {
                self.totals.duplicates += 1;
                Reply::success()
            }
            Ok(Ok(Stage::Refused(reason))) => {
                self.totals.rejected += 1;
                tracing::info!("instance refused: {reason}");
                Reply::failure(status::CANNOT_UNDERSTAND, reason)
            }
            Ok(Err(e)) => {
                self.totals.rejected += 1;
                tracing::error!("storing a received instance failed: {e}");
                Reply::failure(status::OUT_OF_RESOURCES, format!("store failure: {e}"))
            }
            Err(e) => {
                self.totals.rejected += 1;
                tracing::error!("storing a received instance failed: {e}");
                Reply::failure(status::OUT_OF_RESOURCES, "internal error")
            }
        };
        reply
    }

    /// Waits until everything staged is committed, writes the association's audit entry, and
    /// returns its totals.
    pub(super) async fn finish(self) -> Totals {
        let Self {
            store,
            calling_ae,
            peer,
            tx,
            committer,
            mut totals,
            ..
        } = self;
        drop(tx);
        match committer.await {
            Ok(c) => {
                totals.committed = c.committed;
                totals.duplicates += c.duplicates;
                totals.studies = c.studies;
            }
            Err(e) => tracing::error!("the committer stopped abnormally: {e}"),
        }
        if totals.received > 0 {
            let detail = serde_json::json!({
                "calling_ae": calling_ae,
                "peer": peer.to_string(),
                "studies": totals.studies,
                "instances": totals.committed,
                "duplicates": totals.duplicates,
                "rejected": totals.rejected,
                "bytes": totals.bytes,
            });
            let r =
                tokio::task::spawn_blocking(move || store.audit().append("dimse-receive", detail))
                    .await;
            if !matches!(r, Ok(Ok(_))) {
                tracing::error!("cannot write the audit entry of a DICOM association");
            }
        }
        totals
    }
}

/// What staging one file came to.
#[derive(Debug)]
enum Stage {
    Stored {
        sop: String,
        shard: Option<PathBuf>,
        bytes: u64,
    },
    Duplicate,
    Refused(String),
}

/// Blocking: parse, dedupe and seal one spooled file, and record it as pending.
fn stage_one(
    store: &Store,
    spool: tempfile::TempPath,
    seen: &Mutex<HashMap<String, String>>,
) -> Result<Stage, import::ImportError> {
    let start = std::time::Instant::now();
    let staged = import::stage(store, &Source::File(spool.to_path_buf()))?;
    drop(spool);
    tracing::debug!(elapsed_us = start.elapsed().as_micros() as u64, "staged");
    match staged {
        Staged::Rejected(r) => Ok(Stage::Refused(r.reason)),
        Staged::Duplicate(_) => Ok(Stage::Duplicate),
        Staged::Sealed { pending, shard, .. } => {
            let sop = pending.instance.sop_instance_uid.clone();
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hash) = seen.get(&sop) {
                // Sent twice in this association: a fresh blob (different content, or sealed
                // again) must not replace the pending record already acknowledged.
                if shard.is_some() {
                    let _ = store.blobs().remove(&pending.instance.blob_id);
                }
                return Ok(if *hash == pending.instance.plaintext_hash {
                    Stage::Duplicate
                } else {
                    Stage::Refused(format!(
                        "SOPInstanceUID {sop} was already sent with different content"
                    ))
                });
            }
            store
                .put_pending(&pending)
                .map_err(import::ImportError::from)?;
            seen.insert(sop.clone(), pending.instance.plaintext_hash.clone());
            Ok(Stage::Stored {
                sop,
                shard,
                bytes: pending.instance.size,
            })
        }
    }
}

/// Commits staged instances in groups: each commit takes everything queued while the previous
/// one ran, so the commit rate adapts to the arrival rate.
async fn commit_loop(
    store: Store,
    mut rx: mpsc::Receiver<ToCommit>,
    broken: Arc<OnceLock<String>>,
) -> Totals {
    let mut totals = Totals::default();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let store = store.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let sops: Vec<String> = batch.iter().map(|t| t.sop.clone()).collect();
            let dirs: BTreeSet<PathBuf> = batch.into_iter().filter_map(|t| t.shard).collect();
            let start = std::time::Instant::now();
            let r = store.commit(&sops, &dirs);
            tracing::debug!(
                instances = sops.len(),
                elapsed_ms = start.elapsed().as_millis() as u64,
                "received instances committed"
            );
            r
        })
        .await;
        match committed {
            Ok(Ok(summary)) => {
                totals.committed += summary.instances;
                totals.duplicates += summary.duplicates;
                totals.studies.extend(summary.studies);
            }
            Ok(Err(e)) => fail(&broken, e),
            Err(e) => fail(&broken, StoreError::Io(std::io::Error::other(e))),
        }
    }
    totals
}

fn fail(broken: &OnceLock<String>, e: StoreError) {
    tracing::error!("committing received instances failed: {e}");
    let _ = broken.set(e.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_a_part10_preamble_and_meta_group() {
        let h = file_header(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3.4",
            "1.2.840.10008.1.2.4.70",
            "CT01",
        )
        .unwrap();
        assert_eq!(&h[128..132], b"DICM");
        // Dataset starts right after the group, whose length element comes first.
        assert_eq!(&h[132..136], &[2, 0, 0, 0]);
        let group = u32::from_le_bytes([h[140], h[141], h[142], h[143]]) as usize;
        assert_eq!(h.len(), 144 + group);
        let meta = dicom_object::meta::FileMetaTable::from_reader(&h[128..]).unwrap();
        assert_eq!(meta.transfer_syntax(), "1.2.840.10008.1.2.4.70");
        assert_eq!(meta.media_storage_sop_instance_uid(), "1.2.3.4");
        assert_eq!(meta.implementation_class_uid(), IMPLEMENTATION_CLASS_UID);
        assert_eq!(meta.source_application_entity_title(), Some("CT01"));
    }
}
