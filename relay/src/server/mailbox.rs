//! The mailbox store: items (an offer and its blobs) kept for offline recipients.
//!
//! sled holds one small record per item (`<recipient>/<item>` → [`ItemMeta`]); each item's
//! offer and blobs are files in `items/<recipient>/<item>/`. A deposit is written into a
//! temporary directory, every blob checked against its id, and only then renamed into place and
//! indexed, so a cut deposit leaves nothing behind and a restart never shows a half item.

use std::path::{Path, PathBuf};

use crate::proto::{BlobMeta, ItemMeta};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailboxError {
    #[error("mailbox index: {0}")]
    Sled(#[from] sled::Error),
    #[error("mailbox files: {0}")]
    Io(#[from] std::io::Error),
    #[error("mailbox record is malformed: {0}")]
    Malformed(String),
}

/// Quotas and retention.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_recipient: u64,
    pub per_sender: u64,
    pub ttl_secs: u64,
}

#[derive(Debug, Clone)]
pub struct Mailbox {
    db: sled::Db,
    dir: PathBuf,
    pub limits: Limits,
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn key(recipient: &str, item: &str) -> Vec<u8> {
    format!("{recipient}/{item}").into_bytes()
}

impl Mailbox {
    pub fn open(dir: &Path, limits: Limits) -> Result<Self, MailboxError> {
        std::fs::create_dir_all(dir.join("items"))?;
        let tmp = dir.join("tmp");
        // Deposits cut by a crash or a restart: nothing in tmp/ was ever indexed.
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let db = sled::Config::new()
            .path(dir.join("index"))
            .cache_capacity(8 * 1024 * 1024)
            .open()?;
        Ok(Self {
            db,
            dir: dir.to_path_buf(),
            limits,
        })
    }

    fn item_dir(&self, recipient: &str, item: &str) -> PathBuf {
        self.dir.join("items").join(recipient).join(item)
    }

    pub fn blob_path(&self, recipient: &str, item: &str, id: &str) -> PathBuf {
        self.item_dir(recipient, item).join(id)
    }

    pub fn temp_dir(&self) -> Result<tempfile::TempDir, MailboxError> {
        Ok(tempfile::tempdir_in(self.dir.join("tmp"))?)
    }

    pub fn all(&self) -> Result<Vec<ItemMeta>, MailboxError> {
        let mut v = Vec::new();
        for kv in self.db.iter() {
            let (_, val) = kv?;
            v.push(
                serde_json::from_slice(&val).map_err(|e| MailboxError::Malformed(e.to_string()))?,
            );
        }
        Ok(v)
    }

    pub fn items_for(&self, recipient: &str) -> Result<Vec<ItemMeta>, MailboxError> {
        let mut v = Vec::new();
        for kv in self.db.scan_prefix(format!("{recipient}/")) {
            let (_, val) = kv?;
            v.push(
                serde_json::from_slice(&val).map_err(|e| MailboxError::Malformed(e.to_string()))?,
            );
        }
        v.sort_by_key(|i: &ItemMeta| i.deposited_unix);
        Ok(v)
    }

    pub fn item(&self, recipient: &str, item: &str) -> Result<Option<ItemMeta>, MailboxError> {
        match self.db.get(key(recipient, item))? {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).map_err(|e| MailboxError::Malformed(e.to_string()))?,
            )),
            None => Ok(None),
        }
    }

    pub fn offer(&self, recipient: &str, item: &str) -> Result<Option<String>, MailboxError> {
        if self.item(recipient, item)?.is_none() {
            return Ok(None);
        }
        Ok(Some(std::fs::read_to_string(
            self.item_dir(recipient, item).join("offer.json"),
        )?))
    }

    /// Whether `sender` may deposit `item` for `recipient`: a sender replaces only its own
    /// items, never another sender's of the same name.
    pub fn may_deposit(
        &self,
        recipient: &str,
        item: &str,
        sender: &str,
    ) -> Result<bool, MailboxError> {
        Ok(self
            .item(recipient, item)?
            .is_none_or(|existing| existing.sender == sender))
    }

    /// Bytes a recipient and a sender hold now, not counting `replacing`.
    pub fn usage(
        &self,
        recipient: &str,
        sender: &str,
        replacing: &str,
    ) -> Result<(u64, u64), MailboxError> {
        let (mut r, mut s) = (0, 0);
        for i in self.all()? {
            if i.recipient == recipient && i.item == replacing {
                continue;
            }
            if i.recipient == recipient {
                r += i.bytes;
            }
            if i.sender == sender {
                s += i.bytes;
            }
        }
        Ok((r, s))
    }

    /// Moves a fully received and verified deposit into place and indexes it.
    pub fn commit(
        &self,
        staged: tempfile::TempDir,
        offer: &str,
        recipient: &str,
        sender: &str,
        item: &str,
        blobs: Vec<BlobMeta>,
    ) -> Result<ItemMeta, MailboxError> {
        std::fs::write(staged.path().join("offer.json"), offer)?;
        let dest = self.item_dir(recipient, item);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_dir_all(&dest);
        let staged = staged.keep();
        std::fs::rename(&staged, &dest)?;
        let now = now_unix();
        let meta = ItemMeta {
            item: item.to_owned(),
            sender: sender.to_owned(),
            recipient: recipient.to_owned(),
            deposited_unix: now,
            expires_unix: now + self.limits.ttl_secs,
            bytes: blobs.iter().map(|b| b.len).sum::<u64>() + offer.len() as u64,
            blobs,
        };
        self.db.insert(
            key(recipient, item),
            serde_json::to_vec(&meta).map_err(|e| MailboxError::Malformed(e.to_string()))?,
        )?;
        self.db.flush()?;
        Ok(meta)
    }

    pub fn remove(&self, recipient: &str, item: &str) -> Result<bool, MailboxError> {
        let existed = self.db.remove(key(recipient, item))?.is_some();
        self.db.flush()?;
        let _ = std::fs::remove_dir_all(self.item_dir(recipient, item));
        Ok(existed)
    }

    /// Deletes expired items; returns how many.
    pub fn sweep(&self) -> Result<usize, MailboxError> {
        let now = now_unix();
        let mut n = 0;
        for i in self.all()? {
            if i.expires_unix <= now {
                self.remove(&i.recipient, &i.item)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_replaces_its_own_items_only() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            per_recipient: 1 << 20,
            per_sender: 1 << 20,
            ttl_secs: 60,
        };
        let m = Mailbox::open(dir.path(), limits).unwrap();
        assert!(m.may_deposit("doc", "x", "alice").unwrap());
        m.commit(m.temp_dir().unwrap(), "{}", "doc", "alice", "x", Vec::new())
            .unwrap();
        assert!(m.may_deposit("doc", "x", "alice").unwrap());
        assert!(!m.may_deposit("doc", "x", "mallory").unwrap());
        assert!(m.may_deposit("other", "x", "mallory").unwrap());
        assert_eq!(m.offer("doc", "x").unwrap().as_deref(), Some("{}"));
    }
}
