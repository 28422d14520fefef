//! What a node remembers about other nodes: contacts, pairing tickets, the grants it gave and
//! the studies it is receiving. All of it is sealed like every other index record; slots are
//! keyed hashes of PeerIds, tokens and UIDs.
//!
//! ```text
//! c/ H(peer)               -> Contact
//! t/ H(token)              -> Ticket          (issued, not yet used or expired)
//! g/ H(study) H(peer)      -> Grant           (a study we share with a contact)
//! r/ H(study) H(peer)      -> Inbound         (a study a contact shares with us)
//! ```

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::keystore::Role;

/// A paired node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Contact {
    pub peer_id: String,
    pub name: String,
    pub role: Role,
    /// The contact's signed device card (identity key, X25519 key, name, role), as received.
    pub card: crate::net::card::DeviceCard,
    pub paired_unix: u64,
    /// The 6-digit code both screens showed at pairing.
    pub sas: String,
    /// Addresses this contact was last seen at, to dial it again.
    #[serde(default)]
    pub addrs: Vec<String>,
    /// Set on a clinic: this contact (a patient's phone) receives every study with this Patient
    /// ID, present and future.
    #[serde(default)]
    pub patient_id: Option<String>,
    /// Set on the scanner of a ticket whose issuer was offline: the relay where the pairing
    /// request waits. Cleared when the issuer is first heard from as a contact.
    #[serde(default)]
    pub awaiting: Option<String>,
}

/// A pairing ticket this node issued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ticket {
    pub token: String,
    pub expires_unix: u64,
    pub created_unix: u64,
    pub patient_id: Option<String>,
    /// Set once a peer paired with it; a used ticket is refused.
    pub used_by: Option<String>,
}

/// Where a shared study stands on the sending side.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// Not yet offered (the contact was offline).
    Pending,
    /// The contact accepted the offer and is fetching.
    Offered,
    /// The contact was offline: the offer and the study's blobs wait in a relay's mailbox.
    Queued,
    /// The contact confirmed it holds every instance.
    Delivered,
    Revoked,
}

/// A study this node shares with a contact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Grant {
    pub study_uid: String,
    pub peer_id: String,
    pub permissions: Vec<String>,
    pub created_unix: u64,
    pub expires_unix: u64,
    pub state: GrantState,
    /// Instances in the last offer; a study that grew since is offered again.
    pub offered_instances: u64,
    pub delivered_unix: Option<u64>,
    /// Bytes of blobs this node sent for the grant.
    #[serde(default)]
    pub bytes_sent: u64,
    /// Where the study waits when the contact was offline.
    #[serde(default)]
    pub queued: Option<Queued>,
}

/// A deposit in a relay's mailbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Queued {
    /// The relay's address, with `/p2p/<relay>`.
    pub relay: String,
    pub expires_unix: u64,
}

/// Where an inbound study's blobs come from when not from the sender itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Via {
    /// The relay's PeerId.
    pub relay: String,
    /// The mailbox item.
    pub item: String,
}

impl Grant {
    pub fn active(&self, now: u64) -> bool {
        self.state != GrantState::Revoked && now < self.expires_unix
    }
}

/// Where a study being received stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InboundState {
    Fetching,
    Complete,
    /// The sender revoked the grant before everything arrived.
    Revoked,
    Failed,
}

/// A study a contact shares with this node: the opened offer and how far the fetch got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inbound {
    pub study_uid: String,
    pub peer_id: String,
    /// The study key from the envelope, hex.
    pub key: String,
    pub manifest: crate::net::offer::Manifest,
    pub expires_unix: u64,
    pub state: InboundState,
    pub created_unix: u64,
    pub completed_unix: Option<u64>,
    pub error: Option<String>,
    /// Whether the sender has been told the study arrived complete.
    #[serde(default)]
    pub acknowledged: bool,
    /// Set when the study is drained from a relay's mailbox.
    #[serde(default)]
    pub via: Option<Via>,
}

impl Store {
    fn peer_slot(&self, prefix: &[u8; 2], parts: &[&str]) -> Vec<u8> {
        let hs: Vec<[u8; 32]> = parts.iter().map(|p| self.h(p)).collect();
        let refs: Vec<&[u8; 32]> = hs.iter().collect();
        Self::slot(prefix, &refs)
    }

    fn put_at<T: Serialize>(&self, slot: Vec<u8>, v: &T) -> Result<(), StoreError> {
        let sealed = self.seal(&slot, v)?;
        self.inner.index.insert(slot, sealed)?;
        self.inner.db.flush()?;
        Ok(())
    }

    fn list<T: serde::de::DeserializeOwned>(&self, prefix: &[u8; 2]) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.index.scan_prefix(prefix) {
            let (k, v) = kv?;
            out.push(self.open_value::<T>(&k, &v)?);
        }
        Ok(out)
    }

    /// Reads, changes and writes one record under the store's write lock, so that concurrent
    /// updates (a fetch task and a revocation) do not lose each other's changes.
    fn update_at<T, R>(
        &self,
        slot: Vec<u8>,
        f: impl FnOnce(&mut Option<T>) -> R,
    ) -> Result<R, StoreError>
    where
        T: Serialize + serde::de::DeserializeOwned,
    {
        let _g = self
            .inner
            .write_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut v = self.get::<T>(&slot)?;
        let r = f(&mut v);
        match v {
            Some(v) => self.put_at(slot, &v)?,
            None => {
                self.inner.index.remove(&slot)?;
                self.inner.db.flush()?;
            }
        }
        Ok(r)
    }

    pub fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        let mut v: Vec<Contact> = self.list(b"c/")?;
        v.sort_by(|a, b| (&a.name, &a.peer_id).cmp(&(&b.name, &b.peer_id)));
        Ok(v)
    }

    pub fn contact(&self, peer_id: &str) -> Result<Option<Contact>, StoreError> {
        self.get(&self.peer_slot(b"c/", &[peer_id]))
    }

    pub fn put_contact(&self, c: &Contact) -> Result<(), StoreError> {
        self.put_at(self.peer_slot(b"c/", &[&c.peer_id]), c)
    }

    pub fn update_contact<R>(
        &self,
        peer_id: &str,
        f: impl FnOnce(&mut Option<Contact>) -> R,
    ) -> Result<R, StoreError> {
        self.update_at(self.peer_slot(b"c/", &[peer_id]), f)
    }

    /// A contact by display name, PeerId, or an unambiguous prefix of either.
    pub fn resolve_contact(&self, query: &str) -> Result<Contact, StoreError> {
        let q = query.trim();
        let all = self.contacts()?;
        if let Some(c) = all.iter().find(|c| c.peer_id == q) {
            return Ok(c.clone());
        }
        let exact: Vec<&Contact> = all
            .iter()
            .filter(|c| c.name.eq_ignore_ascii_case(q))
            .collect();
        if exact.len() == 1 {
            return Ok(exact[0].clone());
        }
        let ql = q.to_lowercase();
        let hits: Vec<&Contact> = all
            .iter()
            .filter(|c| {
                !q.is_empty()
                    && (c.peer_id.starts_with(q) || c.name.to_lowercase().starts_with(&ql))
            })
            .collect();
        match hits.len() {
            0 => Err(StoreError::NoSuchContact(q.to_owned())),
            1 => Ok(hits[0].clone()),
            count => Err(StoreError::AmbiguousContact {
                query: q.to_owned(),
                count,
            }),
        }
    }

    pub fn remove_contact(&self, peer_id: &str) -> Result<(), StoreError> {
        self.inner.index.remove(self.peer_slot(b"c/", &[peer_id]))?;
        self.inner.db.flush()?;
        Ok(())
    }

    pub fn put_ticket(&self, t: &Ticket) -> Result<(), StoreError> {
        self.put_at(self.peer_slot(b"t/", &[&t.token]), t)
    }

    /// A ticket this node issued, by its token (hex).
    pub fn ticket(&self, token: &str) -> Result<Option<Ticket>, StoreError> {
        self.get(&self.peer_slot(b"t/", &[token]))
    }

    pub fn update_ticket<R>(
        &self,
        token: &str,
        f: impl FnOnce(&mut Option<Ticket>) -> R,
    ) -> Result<R, StoreError> {
        self.update_at(self.peer_slot(b"t/", &[token]), f)
    }

    pub fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        self.list(b"g/")
    }

    pub fn grant(&self, study_uid: &str, peer_id: &str) -> Result<Option<Grant>, StoreError> {
        self.get(&self.peer_slot(b"g/", &[study_uid, peer_id]))
    }

    pub fn update_grant<R>(
        &self,
        study_uid: &str,
        peer_id: &str,
        f: impl FnOnce(&mut Option<Grant>) -> R,
    ) -> Result<R, StoreError> {
        self.update_at(self.peer_slot(b"g/", &[study_uid, peer_id]), f)
    }

    pub fn inbound_all(&self) -> Result<Vec<Inbound>, StoreError> {
        self.list(b"r/")
    }

    pub fn inbound(&self, study_uid: &str, peer_id: &str) -> Result<Option<Inbound>, StoreError> {
        self.get(&self.peer_slot(b"r/", &[study_uid, peer_id]))
    }

    pub fn update_inbound<R>(
        &self,
        study_uid: &str,
        peer_id: &str,
        f: impl FnOnce(&mut Option<Inbound>) -> R,
    ) -> Result<R, StoreError> {
        self.update_at(self.peer_slot(b"r/", &[study_uid, peer_id]), f)
    }

    /// Sets the key of a study that arrives from a peer. A study already held under another key
    /// (imported here independently) cannot take instances sealed under the sender's key.
    pub fn adopt_study_key(
        &self,
        study_uid: &str,
        key: &crate::crypto::SecretKey,
    ) -> Result<(), StoreError> {
        let slot = Self::slot(b"k/", &[&self.h(study_uid)]);
        let _g = self
            .inner
            .write_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(k) = self.get::<String>(&slot)? {
            let existing = super::decode_key(&slot, &k)?;
            if existing != *key {
                return Err(StoreError::KeyConflict(study_uid.to_owned()));
            }
            return Ok(());
        }
        let sealed = self.seal(&slot, &hex::encode(key.as_bytes()))?;
        self.inner.index.insert(slot, sealed)?;
        self.inner.db.flush()?;
        Ok(())
    }
}
