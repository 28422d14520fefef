//! Discless node: an end-to-end encrypted DICOM study store that replaces the patient CD.
//!
//! How the pieces fit (this crate is a library first; `main.rs` only parses the command line):
//!
//! * [`keystore`] opens the node's secrets with the passphrase: the Ed25519 identity (its
//!   PeerId), the X25519 agreement key and the local storage key.
//! * [`store::Store`] owns the sled index (every record sealed under the storage key) and the
//!   sealed blob files; it is the only thing that touches the data directory.
//! * [`crypto`] seals records and blobs (XChaCha20-Poly1305, 1 MiB chunks, BLAKE3 ids).
//! * [`dicom`] turns files, folders, DICOMDIRs and ZIPs into stored instances (import) and
//!   stored instances back into byte-identical files, ZIPs or a CD layout with a DICOMDIR
//!   (export).
//! * [`cli`] is the `discless` command line on top of all this; [`bench`] measures it.
//!
//! Data flow of an import: walk inputs → parse each file (bounded, one instance in memory) →
//! seal it under its study's key into a blob file → record it as pending → one atomic commit
//! makes the whole import visible. Export reverses it and checks every byte against the
//! plaintext hash recorded at import.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

/// The optional Cargo features this library was built with: the test harness builds the
/// binary under test with the same ones.
pub const FEATURES: &[&str] = &[
    #[cfg(feature = "gdcm")]
    "gdcm",
];

pub mod background;
pub mod bench;
pub mod cli;
pub mod crypto;
pub mod demo;
pub mod dicom;
pub mod dimse;
pub mod home;
pub mod http;
pub mod keystore;
pub mod net;
pub mod render;
pub mod spawned;
pub mod store;
