//! Cryptography of Discless, built only from RustCrypto and dalek primitives.
//!
//! Two kinds of sealing live here:
//!
//! * [`SecretKey`] + [`seal_record`]/[`open_record`]: small values (index records, study keys,
//!   audit entries) sealed with XChaCha20-Poly1305 under a 32-byte key. The caller passes the
//!   *slot* (for sled, the record's key) as associated data, so a sealed value copied into
//!   another slot fails to open instead of silently meaning something else.
//! * [`blob`]: an instance's original bytes cut into 1 MiB chunks, each sealed under the study key
//!   with associated data binding study, instance, chunk index and chunk count, so chunks cannot be
//!   swapped between instances, reordered or dropped. The blob id is BLAKE3 of the whole
//!   ciphertext file, so a blob can be checked by anyone (a relay, a peer) without the key.
//!
//! Nonces are 192-bit and random (XChaCha), which is why random nonces are safe at any volume.

pub mod blob;
pub mod envelope;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of an XChaCha20-Poly1305 nonce.
pub const NONCE_LEN: usize = 24;
/// Length of a Poly1305 tag.
pub const TAG_LEN: usize = 16;

/// A 32-byte symmetric key, zeroized on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        OsRng.fill_bytes(&mut k);
        Self(k)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }

    /// A keyed hash under this key for a given purpose: used to name index slots so that sled keys
    /// reveal no UID, while lookups stay possible for the key holder.
    pub fn keyed_hash(&self, context: &str, data: &[u8]) -> [u8; 32] {
        let sub = blake3::derive_key(context, &self.0);
        *blake3::keyed_hash(&sub, data).as_bytes()
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Sealing or opening failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The authentication tag did not verify: wrong key, altered bytes, or a value moved to
    /// another slot.
    #[error("authentication failed (wrong key, or the data was altered)")]
    Authentication,
    /// The cipher refused the message (only possible beyond its 256 GiB limit).
    #[error("value too large to seal ({0} bytes)")]
    TooLarge(usize),
    /// The sealed value is shorter than a nonce and a tag.
    #[error("sealed value is truncated ({0} bytes)")]
    Truncated(usize),
}

/// A fresh random nonce from the operating system's CSPRNG (192 bits: random nonces never
/// repeat in practice, which is why XChaCha20 rather than ChaCha20).
pub(crate) fn random_nonce() -> XNonce {
    let mut n = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut n);
    n.into()
}

/// `bytes` as a nonce: `None` unless exactly [`NONCE_LEN`] long.
pub(crate) fn nonce_of(bytes: &[u8]) -> Option<&XNonce> {
    bytes.try_into().ok()
}

/// Seals `plaintext` as `nonce || ciphertext || tag`, binding `aad`.
pub fn seal_record(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let nonce = random_nonce();
    let ct = key
        .cipher()
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| SealError::TooLarge(plaintext.len()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a value made by [`seal_record`] with the same key and `aad`.
pub fn open_record(key: &SecretKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(SealError::Truncated(sealed.len()));
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = nonce_of(nonce).ok_or(SealError::Truncated(sealed.len()))?;
    key.cipher()
        .decrypt(nonce, Payload { msg: ct, aad })
        .map_err(|_| SealError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_binds_its_slot() {
        let k = SecretKey::generate();
        let sealed = seal_record(&k, b"slot-a", b"hello").unwrap();
        assert_eq!(open_record(&k, b"slot-a", &sealed).unwrap(), b"hello");
        assert!(matches!(
            open_record(&k, b"slot-b", &sealed),
            Err(SealError::Authentication)
        ));
        let other = SecretKey::generate();
        assert!(open_record(&other, b"slot-a", &sealed).is_err());
    }

    #[test]
    fn flipped_bit_and_truncation_are_refused() {
        let k = SecretKey::generate();
        let mut sealed = seal_record(&k, b"", b"patient").unwrap();
        sealed[30] ^= 1;
        assert!(open_record(&k, b"", &sealed).is_err());
        assert!(matches!(
            open_record(&k, b"", &sealed[..10]),
            Err(SealError::Truncated(10))
        ));
    }

    #[test]
    fn debug_is_redacted() {
        let k = SecretKey::from_bytes([7; 32]);
        assert_eq!(format!("{k:?}"), "SecretKey(<redacted>)");
    }
}
