//! Grants: a study key sealed to one recipient's X25519 key.
//!
//! An ephemeral X25519 key agrees a secret with the recipient's static key; HKDF-SHA256 (salt:
//! both public keys, info: the study UID) turns it into a one-time XChaCha20-Poly1305 key. Only
//! the recipient can open the envelope, and an envelope moved to another study does not open.
//! The granter's signature over the whole offer is checked by the caller (see `net::offer`).
//! The same construction, under its own domain, seals other messages to a contact-to-be: a
//! pairing request that waits at a relay for an offline issuer (`net::pairing`).

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use x25519_dalek::{EphemeralSecret, PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::{SecretKey, NONCE_LEN, TAG_LEN};

const INFO_DOMAIN: &[u8] = b"discless envelope v1\0";
const MESSAGE_DOMAIN: &[u8] = b"discless sealed message v1\0";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What a grant allows, sealed together with the key so that nobody but the recipient sees it
/// and nobody can change it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantTerms {
    pub study_uid: String,
    pub granter: String,
    pub recipient: String,
    pub permissions: Vec<String>,
    pub issued_unix: u64,
    pub expires_unix: u64,
}

/// A sealed grant as it travels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    /// The sender's ephemeral X25519 public key, hex.
    pub ephemeral: String,
    /// Nonce and ciphertext, base64.
    pub sealed: String,
}

#[derive(Serialize, Deserialize)]
struct Contents {
    key: String,
    terms: GrantTerms,
}

/// An envelope that cannot be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("envelope is malformed: {0}")]
    Malformed(&'static str),
    #[error("envelope does not open with this node's key (sealed for another node, or altered)")]
    Authentication,
    #[error("envelope's key agreement is degenerate (a low-order public key)")]
    Degenerate,
    #[error("envelope is for study {sealed_for}, offered as {offered}")]
    WrongStudy { sealed_for: String, offered: String },
}

fn derive(
    domain: &[u8],
    shared: &[u8; 32],
    ephemeral: &PublicKey,
    recipient: &PublicKey,
    context: &str,
) -> Zeroizing<[u8; 32]> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral.as_bytes());
    salt[32..].copy_from_slice(recipient.as_bytes());
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), shared);
    let mut info = domain.to_vec();
    info.extend_from_slice(context.as_bytes());
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(&info, okm.as_mut());
    okm
}

fn aad(domain: &[u8], ephemeral: &PublicKey, recipient: &PublicKey) -> Vec<u8> {
    let mut a = domain.to_vec();
    a.extend_from_slice(ephemeral.as_bytes());
    a.extend_from_slice(recipient.as_bytes());
    a
}

/// ECIES-style sealing under a domain and a context (the study UID for grants), which both
/// enter the key derivation: an envelope of one kind never opens as another.
fn seal_raw(domain: &[u8], context: &str, plain: &[u8], recipient: &PublicKey) -> Envelope {
    let eph = EphemeralSecret::random_from_rng(OsRng);
    let eph_pub = PublicKey::from(&eph);
    let shared = eph.diffie_hellman(recipient);
    let k = derive(domain, shared.as_bytes(), &eph_pub, recipient, context);
    let cipher = XChaCha20Poly1305::new((&*k).into());
    let nonce = super::random_nonce();
    let ct = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: &aad(domain, &eph_pub, recipient),
            },
        )
        .unwrap_or_default();
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&ct);
    Envelope {
        ephemeral: hex::encode(eph_pub.as_bytes()),
        sealed: B64.encode(sealed),
    }
}

fn open_raw(
    domain: &[u8],
    context: &str,
    env: &Envelope,
    secret: &StaticSecret,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let eph: [u8; 32] = hex::decode(&env.ephemeral)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(EnvelopeError::Malformed("ephemeral key"))?;
    let eph = PublicKey::from(eph);
    let sealed = B64
        .decode(&env.sealed)
        .map_err(|_| EnvelopeError::Malformed("sealed part is not base64"))?;
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(EnvelopeError::Malformed("sealed part is truncated"));
    }
    let me = PublicKey::from(secret);
    let shared = secret.diffie_hellman(&eph);
    if !shared.was_contributory() {
        return Err(EnvelopeError::Degenerate);
    }
    let k = derive(domain, shared.as_bytes(), &eph, &me, context);
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce =
        super::nonce_of(nonce).ok_or(EnvelopeError::Malformed("sealed part is truncated"))?;
    XChaCha20Poly1305::new((&*k).into())
        .decrypt(
            nonce,
            Payload {
                msg: ct,
                aad: &aad(domain, &eph, &me),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| EnvelopeError::Authentication)
}

/// Seals `key` and `terms` so that only the holder of `recipient`'s secret can open them.
pub fn seal(key: &SecretKey, terms: &GrantTerms, recipient: &PublicKey) -> Envelope {
    let contents = Zeroizing::new(
        serde_json::to_vec(&Contents {
            key: hex::encode(key.as_bytes()),
            terms: terms.clone(),
        })
        .unwrap_or_default(),
    );
    seal_raw(INFO_DOMAIN, &terms.study_uid, &contents, recipient)
}

/// Opens an envelope offered for `study_uid` with this node's agreement secret.
pub fn open(
    env: &Envelope,
    secret: &StaticSecret,
    study_uid: &str,
) -> Result<(SecretKey, GrantTerms), EnvelopeError> {
    let plain = open_raw(INFO_DOMAIN, study_uid, env, secret)?;
    let c: Contents =
        serde_json::from_slice(&plain).map_err(|_| EnvelopeError::Malformed("contents"))?;
    if c.terms.study_uid != study_uid {
        return Err(EnvelopeError::WrongStudy {
            sealed_for: c.terms.study_uid,
            offered: study_uid.to_owned(),
        });
    }
    let key_bytes =
        Zeroizing::new(hex::decode(&c.key).map_err(|_| EnvelopeError::Malformed("key"))?);
    let key: [u8; 32] = key_bytes
        .as_slice()
        .try_into()
        .map_err(|_| EnvelopeError::Malformed("key length"))?;
    Ok((SecretKey::from_bytes(key), c.terms))
}

/// Seals a message that is not a grant (a pairing request left at a relay) to `recipient`;
/// `context` names what it is for, and the same context must be given to open it.
pub fn seal_message(plain: &[u8], context: &str, recipient: &PublicKey) -> Envelope {
    seal_raw(MESSAGE_DOMAIN, context, plain, recipient)
}

/// Opens what [`seal_message`] sealed for this node under `context`.
pub fn open_message(
    env: &Envelope,
    secret: &StaticSecret,
    context: &str,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    open_raw(MESSAGE_DOMAIN, context, env, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(study: &str) -> GrantTerms {
        GrantTerms {
            study_uid: study.into(),
            granter: "a".into(),
            recipient: "b".into(),
            permissions: vec!["view".into()],
            issued_unix: 1,
            expires_unix: 2,
        }
    }

    #[test]
    fn only_the_recipient_opens_and_only_for_its_study() {
        let bob = StaticSecret::random_from_rng(OsRng);
        let eve = StaticSecret::random_from_rng(OsRng);
        let k = SecretKey::generate();
        let env = seal(&k, &terms("1.2.3"), &PublicKey::from(&bob));
        let (got, t) = open(&env, &bob, "1.2.3").unwrap();
        assert_eq!(got, k);
        assert_eq!(t, terms("1.2.3"));
        assert_eq!(
            open(&env, &eve, "1.2.3").unwrap_err(),
            EnvelopeError::Authentication
        );
        // The study UID is bound through the key derivation.
        assert_eq!(
            open(&env, &bob, "1.2.4").unwrap_err(),
            EnvelopeError::Authentication
        );
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let bob = StaticSecret::random_from_rng(OsRng);
        let env = seal(&SecretKey::generate(), &terms("9"), &PublicKey::from(&bob));
        let mut raw = B64.decode(&env.sealed).unwrap();
        raw[40] ^= 1;
        let bad = Envelope {
            sealed: B64.encode(raw),
            ..env.clone()
        };
        assert_eq!(
            open(&bad, &bob, "9").unwrap_err(),
            EnvelopeError::Authentication
        );
        let bad = Envelope {
            ephemeral: "zz".into(),
            ..env.clone()
        };
        assert!(matches!(
            open(&bad, &bob, "9"),
            Err(EnvelopeError::Malformed(_))
        ));
        // The all-zero point gives an all-zero shared secret.
        let bad = Envelope {
            ephemeral: hex::encode([0u8; 32]),
            ..env
        };
        assert_eq!(
            open(&bad, &bob, "9").unwrap_err(),
            EnvelopeError::Degenerate
        );
    }

    #[test]
    fn messages_open_only_for_their_recipient_and_context() {
        let bob = StaticSecret::random_from_rng(OsRng);
        let env = seal_message(b"hello", "pair 12D3", &PublicKey::from(&bob));
        assert_eq!(
            &open_message(&env, &bob, "pair 12D3").unwrap()[..],
            b"hello"
        );
        assert_eq!(
            open_message(&env, &bob, "pair 12D4").unwrap_err(),
            EnvelopeError::Authentication
        );
        let eve = StaticSecret::random_from_rng(OsRng);
        assert_eq!(
            open_message(&env, &eve, "pair 12D3").unwrap_err(),
            EnvelopeError::Authentication
        );
        // A message never opens as a grant, whatever its context.
        assert_eq!(
            open(&env, &bob, "pair 12D3").unwrap_err(),
            EnvelopeError::Authentication
        );
    }
}
