//! Framing on our libp2p streams: a 4-byte big-endian length, then JSON. The relay's mailbox
//! protocol uses the same framing, so the node shares its implementation (and its tests) with
//! `discless_relay::proto` rather than keeping a copy.
//!
//! A relayed circuit that is cut looks like a clean end of stream to the reader, so every
//! message is length-prefixed and a short read is an error, never "done".

pub use discless_relay::proto::{read, write, WireError, MAX_MESSAGE};
