//! Offers: a study's manifest sealed under its study key, the key in an envelope for the
//! recipient, and the granter's signature over both.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::card::{self, CardError};
use crate::crypto::envelope::{self, Envelope, EnvelopeError, GrantTerms};
use crate::crypto::{blob, open_record, seal_record, SecretKey};
use crate::keystore::Keys;
use crate::store::{Contact, InstanceRecord, Store, StoreError, StudyAttributes, StudyRecord};

const SIGN_DOMAIN: &[u8] = b"discless offer v1\0";
const MANIFEST_AAD: &[u8] = b"discless manifest v1\0";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Everything a receiver needs to fetch, check and index a study.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub study_uid: String,
    pub study: StudyAttributes,
    /// In viewing order: the receiver fetches the first images first.
    pub instances: Vec<ManifestEntry>,
    pub created_unix: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestEntry {
    pub instance: InstanceRecord,
    /// DICOM JSON for WADO-RS metadata, as the sender computed it at import.
    pub metadata: String,
    /// Exact length of the sealed blob.
    pub blob_bytes: u64,
}

impl Manifest {
    pub fn bytes(&self) -> u64 {
        self.instances.iter().map(|e| e.blob_bytes).sum()
    }
}

/// A study offered to one contact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Offer {
    pub study_uid: String,
    pub envelope: Envelope,
    /// The sealed manifest, base64.
    pub manifest: String,
    /// The granter's Ed25519 signature, base64.
    pub signature: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("study {0} has no key in this store")]
    NoKey(String),
    #[error("the contact's device card is unusable: {0}")]
    Card(#[from] CardError),
    #[error("offer signature does not verify (altered, or not from this contact)")]
    Signature,
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("the offer is for {offered}, but this node is {me}")]
    NotForMe { offered: String, me: String },
    #[error("the grant expired")]
    Expired,
    #[error("the manifest does not open with the offered key (altered)")]
    Manifest,
    #[error("the manifest is malformed: {0}")]
    Malformed(String),
}

fn signed_bytes(study_uid: &str, env: &Envelope, manifest: &str) -> Vec<u8> {
    let mut b = SIGN_DOMAIN.to_vec();
    for f in [study_uid, &env.ephemeral, &env.sealed, manifest] {
        b.extend_from_slice(&(f.len() as u64).to_be_bytes());
        b.extend_from_slice(f.as_bytes());
    }
    b
}

fn manifest_aad(study_uid: &str) -> Vec<u8> {
    let mut a = MANIFEST_AAD.to_vec();
    a.extend_from_slice(study_uid.as_bytes());
    a
}

pub fn attributes(s: &StudyRecord) -> StudyAttributes {
    StudyAttributes {
        patient_name: s.patient_name.clone(),
        patient_id: s.patient_id.clone(),
        patient_birth_date: s.patient_birth_date.clone(),
        patient_sex: s.patient_sex.clone(),
        study_date: s.study_date.clone(),
        study_time: s.study_time.clone(),
        study_description: s.study_description.clone(),
        accession_number: s.accession_number.clone(),
        referring_physician_name: s.referring_physician_name.clone(),
        study_id: s.study_id.clone(),
    }
}

/// The manifest of what this store holds of a study now.
pub fn manifest(store: &Store, study: &StudyRecord) -> Result<Manifest, StoreError> {
    let uid = &study.study_instance_uid;
    let mut instances = store.instances(uid)?;
    crate::store::sort_for_viewing(&mut instances);
    let mut entries = Vec::with_capacity(instances.len());
    for i in instances {
        let metadata = store
            .metadata(uid, &i.sop_instance_uid)?
            .unwrap_or_default();
        entries.push(ManifestEntry {
            blob_bytes: blob::sealed_len(i.size),
            metadata,
            instance: i,
        });
    }
    Ok(Manifest {
        study_uid: uid.clone(),
        study: attributes(study),
        instances: entries,
        created_unix: crate::store::now_unix(),
    })
}

/// Builds a signed offer of `manifest` for `to`.
pub fn build(
    keys: &Keys,
    study_key: &SecretKey,
    manifest: &Manifest,
    to: &Contact,
    terms: &GrantTerms,
) -> Result<Offer, OfferError> {
    let recipient = to.card.agreement_key()?;
    let env = envelope::seal(study_key, terms, &recipient);
    let plain = zeroize::Zeroizing::new(
        serde_json::to_vec(manifest).map_err(|e| OfferError::Malformed(e.to_string()))?,
    );
    let sealed = seal_record(study_key, &manifest_aad(&manifest.study_uid), &plain)
        .map_err(|e| OfferError::Malformed(e.to_string()))?;
    let manifest_b64 = B64.encode(sealed);
    let sig = card::sign(
        &keys.identity,
        &signed_bytes(&manifest.study_uid, &env, &manifest_b64),
    );
    Ok(Offer {
        study_uid: manifest.study_uid.clone(),
        envelope: env,
        manifest: manifest_b64,
        signature: B64.encode(sig),
    })
}

/// What an accepted offer gives the receiver.
#[derive(Debug)]
pub struct Opened {
    pub key: SecretKey,
    pub terms: GrantTerms,
    pub manifest: Manifest,
}

/// Verifies an offer from contact `from` and opens it with this node's keys.
pub fn open(keys: &Keys, from: &Contact, offer: &Offer, now: u64) -> Result<Opened, OfferError> {
    let signer = from.card.public_key()?;
    let sig = B64
        .decode(&offer.signature)
        .map_err(|_| OfferError::Signature)?;
    if !signer.verify(
        &signed_bytes(&offer.study_uid, &offer.envelope, &offer.manifest),
        &sig,
    ) {
        return Err(OfferError::Signature);
    }
    let (key, terms) = envelope::open(&offer.envelope, &keys.agreement, &offer.study_uid)?;
    let me = keys.peer_id().to_string();
    if terms.recipient != me || terms.granter != from.peer_id {
        return Err(OfferError::NotForMe {
            offered: terms.recipient,
            me,
        });
    }
    if now >= terms.expires_unix {
        return Err(OfferError::Expired);
    }
    let sealed = B64
        .decode(&offer.manifest)
        .map_err(|_| OfferError::Malformed("manifest is not base64".into()))?;
    let plain = zeroize::Zeroizing::new(
        open_record(&key, &manifest_aad(&offer.study_uid), &sealed)
            .map_err(|_| OfferError::Manifest)?,
    );
    let manifest: Manifest =
        serde_json::from_slice(&plain).map_err(|e| OfferError::Malformed(e.to_string()))?;
    if manifest.study_uid != offer.study_uid
        || manifest
            .instances
            .iter()
            .any(|e| e.instance.study_instance_uid != offer.study_uid)
    {
        return Err(OfferError::Malformed(
            "manifest lists instances of another study".into(),
        ));
    }
    // Blob ids become file names: only well-formed content addresses are accepted.
    if let Some(bad) = manifest
        .instances
        .iter()
        .find(|e| !is_blob_id(&e.instance.blob_id))
    {
        return Err(OfferError::Malformed(format!(
            "manifest has an invalid blob id {:?}",
            bad.instance.blob_id
        )));
    }
    Ok(Opened {
        key,
        terms,
        manifest,
    })
}

/// A BLAKE3 hex digest, as blob ids are.
pub fn is_blob_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
