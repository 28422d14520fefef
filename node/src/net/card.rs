//! Device cards and the pairing confirmation code.
//!
//! A card is what a node tells a peer about itself: its identity key (whose hash is its PeerId),
//! its X25519 agreement key, name and role, signed by the identity key. Noise already proved who
//! is on the other end of the connection; the card binds the agreement key to that identity.

use base64::Engine as _;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::keystore::{Keys, Role};

const CARD_DOMAIN: &[u8] = b"discless device card v1\0";
const SAS_CONTEXT: &str = "discless 2026 pairing confirmation code v1";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A node's signed self-description.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceCard {
    /// libp2p protobuf encoding of the Ed25519 identity public key, base64.
    pub identity: String,
    /// X25519 agreement public key, hex.
    pub agreement: String,
    pub name: String,
    pub role: Role,
    /// Ed25519 signature over the fields above, base64.
    pub signature: String,
}

/// A card that does not check out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CardError {
    #[error("device card is malformed: {0}")]
    Malformed(&'static str),
    #[error("device card belongs to {card}, but the connection is from {peer}")]
    WrongPeer { card: String, peer: String },
    #[error("device card signature does not verify")]
    Signature,
}

fn signed_bytes(identity: &str, agreement: &str, name: &str, role: Role) -> Vec<u8> {
    let mut b = CARD_DOMAIN.to_vec();
    // Length-prefixed fields: no two different cards have the same signed bytes.
    for f in [identity, agreement, name, role.as_str()] {
        b.extend_from_slice(&(f.len() as u32).to_be_bytes());
        b.extend_from_slice(f.as_bytes());
    }
    b
}

impl DeviceCard {
    pub fn new(keys: &Keys) -> Self {
        let identity = B64.encode(keys.identity.public().encode_protobuf());
        let agreement = hex::encode(x25519_dalek::PublicKey::from(&keys.agreement).as_bytes());
        let msg = signed_bytes(&identity, &agreement, &keys.name, keys.role);
        let signature = B64.encode(sign(&keys.identity, &msg));
        Self {
            identity,
            agreement,
            name: keys.name.clone(),
            role: keys.role,
            signature,
        }
    }

    pub fn public_key(&self) -> Result<PublicKey, CardError> {
        let raw = B64
            .decode(&self.identity)
            .map_err(|_| CardError::Malformed("identity is not base64"))?;
        PublicKey::try_decode_protobuf(&raw).map_err(|_| CardError::Malformed("identity key"))
    }

    pub fn agreement_key(&self) -> Result<x25519_dalek::PublicKey, CardError> {
        let raw: [u8; 32] = hex::decode(&self.agreement)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(CardError::Malformed("agreement key"))?;
        Ok(x25519_dalek::PublicKey::from(raw))
    }

    /// The two parts of a card that a PeerId, a name and a role do not already say: the
    /// agreement key and the signature. A pairing ticket carries them so that the scanner can
    /// seal a request to an issuer that is offline.
    pub fn compact(&self) -> Option<([u8; 32], Vec<u8>)> {
        let agreement = self.agreement_key().ok()?.to_bytes();
        let signature = B64.decode(&self.signature).ok()?;
        Some((agreement, signature))
    }

    /// Rebuilds a card from [`DeviceCard::compact`] and the PeerId (an Ed25519 PeerId holds its
    /// key inline). The result still has to pass [`DeviceCard::verify`].
    pub fn from_compact(
        peer: &PeerId,
        agreement: &[u8; 32],
        signature: &[u8],
        name: &str,
        role: Role,
    ) -> Result<Self, CardError> {
        let mh = peer.as_ref();
        if mh.code() != 0 {
            return Err(CardError::Malformed(
                "the PeerId does not hold its key inline",
            ));
        }
        let key = PublicKey::try_decode_protobuf(mh.digest())
            .map_err(|_| CardError::Malformed("identity key"))?;
        Ok(Self {
            identity: B64.encode(key.encode_protobuf()),
            agreement: hex::encode(agreement),
            name: name.to_owned(),
            role,
            signature: B64.encode(signature),
        })
    }

    /// Checks the signature and that the card is `peer`'s.
    pub fn verify(&self, peer: &PeerId) -> Result<PublicKey, CardError> {
        let key = self.public_key()?;
        if key.to_peer_id() != *peer {
            return Err(CardError::WrongPeer {
                card: key.to_peer_id().to_string(),
                peer: peer.to_string(),
            });
        }
        self.agreement_key()?;
        let sig = B64
            .decode(&self.signature)
            .map_err(|_| CardError::Malformed("signature is not base64"))?;
        let msg = signed_bytes(&self.identity, &self.agreement, &self.name, self.role);
        if !key.verify(&msg, &sig) {
            return Err(CardError::Signature);
        }
        Ok(key)
    }
}

/// Signs with the node's Ed25519 identity (which cannot fail for Ed25519 keys).
pub fn sign(keypair: &Keypair, msg: &[u8]) -> Vec<u8> {
    keypair.sign(msg).unwrap_or_default()
}

/// The 6-digit code both screens show: it changes if either card or the token differs, so a
/// swapped QR code or a peer in the middle shows a different code on one of the two screens.
pub fn sas(token: &[u8], issuer: &DeviceCard, scanner: &DeviceCard) -> String {
    let mut h = blake3::Hasher::new_derive_key(SAS_CONTEXT);
    h.update(&(token.len() as u32).to_be_bytes());
    h.update(token);
    for c in [issuer, scanner] {
        h.update(&signed_bytes(&c.identity, &c.agreement, &c.name, c.role));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&h.finalize().as_bytes()[..8]);
    format!("{:06}", u64::from_be_bytes(n) % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(name: &str) -> Keys {
        Keys::generate_for_tests(name, Role::Doctor)
    }

    #[test]
    fn a_card_verifies_for_its_peer_only() {
        let a = keys("A");
        let b = keys("B");
        let card = DeviceCard::new(&a);
        assert!(card.verify(&a.peer_id()).is_ok());
        assert!(matches!(
            card.verify(&b.peer_id()),
            Err(CardError::WrongPeer { .. })
        ));
        let mut forged = card.clone();
        forged.name = "Dr Mallory".into();
        assert_eq!(forged.verify(&a.peer_id()), Err(CardError::Signature));
        let mut swapped = card;
        swapped.agreement = DeviceCard::new(&b).agreement;
        assert_eq!(swapped.verify(&a.peer_id()), Err(CardError::Signature));
    }

    #[test]
    fn a_compact_card_rebuilds_to_the_same_card() {
        let a = keys("Dr Ada Lovelace");
        let card = DeviceCard::new(&a);
        let (agreement, sig) = card.compact().unwrap();
        let back = DeviceCard::from_compact(&a.peer_id(), &agreement, &sig, &card.name, card.role)
            .unwrap();
        assert_eq!(back, card);
        assert!(back.verify(&a.peer_id()).is_ok());
        // Another name with the same signature does not verify.
        let renamed =
            DeviceCard::from_compact(&a.peer_id(), &agreement, &sig, "Dr Mallory", card.role)
                .unwrap();
        assert_eq!(renamed.verify(&a.peer_id()), Err(CardError::Signature));
    }

    #[test]
    fn sas_is_six_digits_and_depends_on_everything() {
        let (a, b, c) = (keys("A"), keys("B"), keys("C"));
        let (ca, cb, cc) = (
            DeviceCard::new(&a),
            DeviceCard::new(&b),
            DeviceCard::new(&c),
        );
        let s = sas(b"token", &ca, &cb);
        assert_eq!(s.len(), 6);
        assert!(s.chars().all(|c| c.is_ascii_digit()));
        assert_eq!(s, sas(b"token", &ca, &cb));
        assert_ne!(s, sas(b"tokem", &ca, &cb));
        assert_ne!(s, sas(b"token", &ca, &cc));
        assert_ne!(s, sas(b"token", &cb, &ca));
    }
}
