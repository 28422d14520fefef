//! The node-to-node protocols and their messages.
//!
//! * `/discless/pair/1`: the scanner of a ticket proves it holds the token and exchanges cards.
//! * `/discless/rpc/1`: offers, delivery receipts and revocations between contacts.
//! * `/discless/blobs/1`: a contact pulls sealed blobs of a study granted to it. After the
//!   [`Reply`], each requested blob follows as an 8-byte big-endian length and its bytes, or
//!   [`MISSING`] when it is not available.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use super::card::DeviceCard;
use super::offer::Offer;

pub const PAIR: StreamProtocol = StreamProtocol::new("/discless/pair/1");
pub const RPC: StreamProtocol = StreamProtocol::new("/discless/rpc/1");
pub const BLOBS: StreamProtocol = StreamProtocol::new("/discless/blobs/1");

/// Length marker of a blob the provider does not send.
pub const MISSING: u64 = u64::MAX;

#[derive(Debug, Serialize, Deserialize)]
pub struct PairRequest {
    /// The ticket's token, hex.
    pub token: String,
    pub card: DeviceCard,
}

/// A [`PairRequest`] left in a relay mailbox for an issuer that was offline when its ticket
/// was scanned, sealed to the issuer's agreement key from the ticket: the relay sees neither the
/// token nor the card. Offers are the mailbox's other payload; the two never parse as each other.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuedPair {
    pub pair_request: crate::crypto::envelope::Envelope,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PairReply {
    Accepted { card: DeviceCard },
    Refused { reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    Offer(Box<Offer>),
    /// The receiver holds every instance of the study and checked them.
    Delivered {
        study_uid: String,
    },
    /// The sender withdrew its grant.
    Revoke {
        study_uid: String,
    },
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    Ok,
    Refused { reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BlobRequest {
    pub study_uid: String,
    pub ids: Vec<String>,
}

/// What every non-contact hears, whatever it asked: nothing about studies.
pub const NOT_PAIRED: &str = "this node is not paired with you";
