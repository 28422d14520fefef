//! DICOM networking (DIMSE over the DICOM Upper Layer, PS3.7/PS3.8): the node as a C-ECHO and
//! C-STORE service class provider, so modalities and PACS can send to it, and as a C-STORE user,
//! so `discless push` can hand a study to a practice PACS.
//!
//! dicom-ul negotiates associations and moves PDUs; everything DIMSE (command sets, the message
//! exchange) is ours: [`command`] builds and reads command sets, [`syntaxes`] says what is
//! accepted, [`access`] is the calling-AE allow list.
//!
//! Receiving (`scp.rs`, `ingest.rs`):
//! ```text
//! accept (TCP_NODELAY) ─ one task per association, at most MAX_ASSOCIATIONS at once
//!   A-ASSOCIATE-RQ → allow list (A-ASSOCIATE-RJ "calling AE not recognised") → AC
//!   C-ECHO-RQ  → C-ECHO-RSP
//!   C-STORE-RQ → data PDVs spooled behind a Part-10 meta group built from the command and the
//!                presentation context (the data set bytes exactly as received), in memory up
//!                to 8 MiB, else streamed to a temp file
//!              → import::check in place (block_in_place: parse, dedupe, study key)
//!              → C-STORE-RSP (0x0000, or 0xC000/0xA700 with an ErrorComment)
//!              → the association's sealers (2 at once): import::seal (encrypt into the blob
//!                file) → q/ record
//!              → its committer makes sealed instances visible in group commits (100 ms linger)
//!   A-RELEASE-RQ → wait for the committer → audit entry → A-RELEASE-RP
//! ```
//! Durability, the choice made: one `syncfs` per instance costs ~8 ms here, which alone would
//! cap a modality at ~100 instances/s (storescu waits for each response before sending the next).
//! So the C-STORE-RSP goes out once the instance is known readable and new (everything that
//! decides its status: parsing, the duplicate and conflict checks); sealing it (~1 ms of the
//! ~3 ms a 512 KiB CT slice took here when it came before the answer) overlaps the next
//! instance's arrival, at most `SEAL_QUEUE` + `SEALERS` behind. A committer task per
//! association commits what has been sealed meanwhile (`syncfs` + one sled batch + flush), and
//! the association's release is answered only after everything it sent is committed. A power
//! loss can therefore lose the instances of the last commit window (~100 ms) although they were
//! acknowledged, and a disk failure while sealing loses those answered but not yet sealed (at
//! most `SEAL_QUEUE` + `SEALERS`, logged) and fails the association's later ones ("out of
//! resources"); a modality that saw
//! its release confirmed has everything on disk. dcmtk's storescp does not sync at all.
//!
//! A malformed PDU, an unexpected PDU or an abort ends only that association: the instance being
//! received is dropped, those already acknowledged are still committed.

pub mod access;
pub(crate) mod command;
mod ingest;
mod scp;
pub mod scu;
pub(crate) mod syntaxes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use access::{AllowList, AllowedAe};
pub use command::CommandError;

use crate::store::Store;

/// AE title a node answers to unless configured otherwise.
pub const DEFAULT_AE_TITLE: &str = "DISCLESS";
/// Discless's Implementation Class UID (PS3.7 D.3.3.2), written into received files' meta
/// group and sent at association negotiation: a UUID-derived UID (PS3.5 B.2), fixed once.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.318090478556086387085437864137643296411";
/// Implementation Version Name (SH, at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = "DISCLESS_0_1";
/// Largest P-DATA PDU we accept: large enough that a 512 KiB slice takes a couple of PDUs,
/// small enough that a PDU buffer per association stays cheap.
pub(crate) const MAX_PDU: u32 = 256 * 1024;
/// Associations served at once; more are refused at TCP level until one ends (each holds a
/// PDU buffer, a spool file and a committer).
pub(crate) const MAX_ASSOCIATIONS: usize = 32;
/// How long an association may stay silent (between PDUs, or negotiating) before it is
/// dropped: a modality pauses between series, a dead peer must not hold a slot forever.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest single instance received: bounds the disk a peer can fill with one C-STORE.
pub(crate) const MAX_INSTANCE_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// SCP settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// The node's AE title (what modalities are configured to call).
    pub ae_title: String,
    /// Calling AE titles allowed; empty allows any.
    pub allow: AllowList,
}

/// Starting the SCP failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    #[error("cannot listen for DICOM on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid AE title {0:?}: 1 to 16 characters, no backslash or control characters")]
    AeTitle(String),
}

/// Whether `t` is a usable AE title (PS3.5 AE: 16 characters, no `\` or control characters,
/// not only spaces).
pub fn valid_ae_title(t: &str) -> bool {
    let t = t.trim();
    !t.is_empty()
        && t.len() <= 16
        && t.chars()
            .all(|c| c.is_ascii() && !c.is_ascii_control() && c != '\\')
}

/// A running SCP.
#[derive(Debug)]
pub struct Handle {
    /// Where it listens (with the real port when the configured one was 0).
    pub addr: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Stops accepting, ends open associations (committing what they acknowledged), and
    /// waits for them.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::warn!("DICOM listener ended abnormally: {e}");
        }
    }
}

/// Binds `config.addr` and serves associations until [`Handle::shutdown`].
pub async fn spawn(store: Store, config: Config) -> Result<Handle, SpawnError> {
    if !valid_ae_title(&config.ae_title) {
        return Err(SpawnError::AeTitle(config.ae_title));
    }
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| SpawnError::Bind {
            addr: config.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SpawnError::Bind {
        addr: config.addr,
        source,
    })?;
    let cancel = CancellationToken::new();
    let server = scp::Server {
        store,
        ae_title: config.ae_title.trim().to_owned(),
        allow: Arc::new(config.allow),
    };
    let task = tokio::spawn(server.run(listener, cancel.clone()));
    tracing::info!(%addr, "DICOM listener started");
    Ok(Handle { addr, cancel, task })
}
