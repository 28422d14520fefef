//! A Discless relay: a libp2p circuit relay v2 whose limits fit medical studies, plus an
//! encrypted store-and-forward mailbox for recipients that are offline.
//!
//! The relay never sees a key: it carries Noise-encrypted circuits and stores offers (whose
//! study keys are sealed to the recipient) and blobs (sealed chunks, addressed by BLAKE3).
//!
//! [`proto`] is the mailbox protocol, shared with the node; [`server`] (feature `server`) is the
//! relay itself.

pub mod proto;
#[cfg(feature = "server")]
pub mod server;
