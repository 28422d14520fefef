//! A hash-chained, sealed audit log of what happened to studies on this node.
//!
//! Entry `n` stores `hash(n) = BLAKE3(canonical JSON of {seq, at, action, detail, prev})` with
//! `prev = hash(n-1)` (zeros for the first). Each entry is sealed under the storage key in slot
//! `a/<seq>`, and the head (last seq and hash) is sealed in `m/audit_head`, written in the same
//! atomic batch. `verify` walks from 1: an edited entry fails authentication or its hash, a
//! deleted one leaves a gap or breaks the chain, and deleting the newest entries disagrees with
//! the head. Only the holder of the passphrase can write a consistent log, which is the point:
//! a copied or tampered data directory shows.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::crypto::{open_record, seal_record, SecretKey};

const HEAD_SLOT: &[u8] = b"m/audit_head";

/// One audit entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_unix_ms: u64,
    pub action: String,
    pub detail: serde_json::Value,
    pub prev: String,
    pub hash: String,
}

#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    at_unix_ms: u64,
    action: &'a str,
    detail: &'a serde_json::Value,
    prev: &'a str,
}

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

/// Appending to or checking the audit log failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit log storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("audit entry {seq} was altered (it no longer authenticates)")]
    Altered { seq: u64 },
    #[error("audit entry {seq} does not match its hash (edited)")]
    HashMismatch { seq: u64 },
    #[error("audit entry {seq} is missing (deleted): the log jumps from {prev} to {seq_found}")]
    Gap { seq: u64, prev: u64, seq_found: u64 },
    #[error("audit entry {seq} does not chain to entry {prev}")]
    Chain { seq: u64, prev: u64 },
    #[error("the audit log ends at entry {last} but its head says {head}: newest entries were deleted or the head was altered")]
    Head { last: u64, head: u64 },
    #[error("audit record is malformed: {0}")]
    Malformed(String),
}

/// The audit log of one store.
#[derive(Debug, Clone)]
pub struct Audit {
    tree: sled::Tree,
    key: SecretKey,
    lock: Arc<Mutex<()>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn slot(seq: u64) -> Vec<u8> {
    let mut k = b"a/".to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn entry_hash(e: &Hashed<'_>) -> String {
    let canon = serde_json::to_vec(e).unwrap_or_default();
    blake3::hash(&canon).to_hex().to_string()
}

impl Audit {
    pub(crate) fn new(tree: sled::Tree, key: SecretKey) -> Self {
        Self {
            tree,
            key,
            lock: Arc::new(Mutex::new(())),
        }
    }

    fn head(&self) -> Result<Option<Head>, AuditError> {
        let Some(v) = self.tree.get(HEAD_SLOT)? else {
            return Ok(None);
        };
        let plain = open_record(&self.key, HEAD_SLOT, &v)
            .map_err(|_| AuditError::Head { last: 0, head: 0 })?;
        serde_json::from_slice(&plain).map_err(|e| AuditError::Malformed(e.to_string()))
    }

    /// Appends an entry and makes it durable.
    pub fn append(
        &self,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<AuditEntry, AuditError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (seq, prev) = match self.head()? {
            Some(h) => (h.seq + 1, h.hash),
            None => (1, "0".repeat(64)),
        };
        let at_unix_ms = now_ms();
        let hash = entry_hash(&Hashed {
            seq,
            at_unix_ms,
            action,
            detail: &detail,
            prev: &prev,
        });
        let entry = AuditEntry {
            seq,
            at_unix_ms,
            action: action.to_owned(),
            detail,
            prev,
            hash: hash.clone(),
        };
        let k = slot(seq);
        let seal = |slot: &[u8], v: Vec<u8>| {
            seal_record(&self.key, slot, &v).map_err(|e| AuditError::Malformed(e.to_string()))
        };
        let body = serde_json::to_vec(&entry).map_err(|e| AuditError::Malformed(e.to_string()))?;
        let head = serde_json::to_vec(&Head { seq, hash })
            .map_err(|e| AuditError::Malformed(e.to_string()))?;
        let mut batch = sled::Batch::default();
        batch.insert(k.clone(), seal(&k, body)?);
        batch.insert(HEAD_SLOT, seal(HEAD_SLOT, head)?);
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        Ok(entry)
    }

    /// Every entry in order, each checked to authenticate (not the chain; see [`Audit::verify`]).
    pub fn entries(&self) -> Result<Vec<AuditEntry>, AuditError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(b"a/") {
            let (k, v) = kv?;
            let seq = k
                .get(2..10)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| AuditError::Malformed("bad audit key".into()))?;
            let plain = open_record(&self.key, &k, &v).map_err(|_| AuditError::Altered { seq })?;
            let e: AuditEntry =
                serde_json::from_slice(&plain).map_err(|e| AuditError::Malformed(e.to_string()))?;
            if e.seq != seq {
                return Err(AuditError::Altered { seq });
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Checks the whole chain and the head; returns the number of entries.
    pub fn verify(&self) -> Result<u64, AuditError> {
        let entries = self.entries()?;
        let mut prev_hash = "0".repeat(64);
        let mut prev_seq = 0;
        for e in &entries {
            if e.seq != prev_seq + 1 {
                return Err(AuditError::Gap {
                    seq: prev_seq + 1,
                    prev: prev_seq,
                    seq_found: e.seq,
                });
            }
            if e.prev != prev_hash {
                return Err(AuditError::Chain {
                    seq: e.seq,
                    prev: prev_seq,
                });
            }
            let h = entry_hash(&Hashed {
                seq: e.seq,
                at_unix_ms: e.at_unix_ms,
                action: &e.action,
                detail: &e.detail,
                prev: &e.prev,
            });
            if h != e.hash {
                return Err(AuditError::HashMismatch { seq: e.seq });
            }
            prev_hash = h;
            prev_seq = e.seq;
        }
        let head = self.head()?;
        let (hseq, hhash) = head.map(|h| (h.seq, h.hash)).unwrap_or((0, "0".repeat(64)));
        if hseq != prev_seq || hhash != prev_hash {
            return Err(AuditError::Head {
                last: prev_seq,
                head: hseq,
            });
        }
        Ok(prev_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (tempfile::TempDir, Audit) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("index").unwrap();
        (dir, Audit::new(tree, SecretKey::generate()))
    }

    #[test]
    fn appended_entries_verify() {
        let (_d, a) = log();
        assert_eq!(a.verify().unwrap(), 0);
        for i in 0..5 {
            a.append("import", serde_json::json!({ "n": i })).unwrap();
        }
        assert_eq!(a.verify().unwrap(), 5);
        assert_eq!(a.entries().unwrap()[2].detail["n"], 2);
    }

    #[test]
    fn deleted_middle_entry_is_a_gap() {
        let (_d, a) = log();
        for i in 0..4 {
            a.append("x", serde_json::json!(i)).unwrap();
        }
        a.tree.remove(slot(2)).unwrap();
        assert!(matches!(a.verify(), Err(AuditError::Gap { seq: 2, .. })));
    }

    #[test]
    fn deleted_newest_entry_disagrees_with_head() {
        let (_d, a) = log();
        for i in 0..3 {
            a.append("x", serde_json::json!(i)).unwrap();
        }
        a.tree.remove(slot(3)).unwrap();
        assert!(matches!(
            a.verify(),
            Err(AuditError::Head { last: 2, head: 3 })
        ));
    }

    #[test]
    fn altered_entry_is_detected() {
        let (_d, a) = log();
        for i in 0..3 {
            a.append("x", serde_json::json!(i)).unwrap();
        }
        let mut v = a.tree.get(slot(2)).unwrap().unwrap().to_vec();
        let last = v.len() - 1;
        v[last] ^= 1;
        a.tree.insert(slot(2), v).unwrap();
        assert!(matches!(a.verify(), Err(AuditError::Altered { seq: 2 })));
        // Moving a valid entry into another slot also fails.
        let one = a.tree.get(slot(1)).unwrap().unwrap();
        a.tree.insert(slot(2), one).unwrap();
        assert!(a.verify().is_err());
    }
}
