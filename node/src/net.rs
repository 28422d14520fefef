//! The node on the network: libp2p swarm, pairing, offers and study transfer.
//!
//! [`start`] builds the swarm, spawns its actor task and the protocol handlers, and returns a
//! [`Handle`] that the CLI, the HTTP API and the other tasks use. Everything that touches the
//! store runs on blocking threads; the swarm task only routes connections.

pub mod card;
mod fetch;
mod mailbox;
pub mod offer;
mod pairing;
pub mod proto;
mod provide;
pub mod share;
pub mod swarm;
pub mod ticket;
pub mod transfers;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use pairing::{Issued, Paired};
pub use provide::{TEST_CORRUPT_ENV, TEST_SEND_DELAY_ENV};
pub use share::Shared as ShareOutcome;

use crate::store::{Contact, Store, StoreError};

/// Where a node listens by default: every interface (so phones on the clinic's Wi-Fi reach it),
/// TCP and QUIC on one well-known port.
pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/7447", "/ip4/0.0.0.0/udp/7447/quic-v1"];

/// Network settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<Multiaddr>,
    pub mdns: bool,
    /// Relays to keep a reservation on (full addresses with `/p2p/<relay>`).
    pub relays: Vec<Multiaddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            mdns: true,
            relays: Vec::new(),
        }
    }
}

/// A network operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Swarm(#[from] swarm::SwarmError),
    #[error(transparent)]
    Ticket(#[from] ticket::TicketError),
    #[error("cannot reach {who}: {reason}")]
    Unreachable { who: String, reason: String },
    #[error("{who} refused: {reason}")]
    Refused { who: String, reason: String },
    #[error("talking to {who} failed: {reason}")]
    Protocol { who: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the network task stopped")]
    Stopped,
}

/// Progress of one study being received.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub blobs_done: u64,
    pub blobs_total: u64,
    pub started: Option<Instant>,
    pub bytes_this_run: u64,
    pub retries: u64,
}

/// One row of `discless transfers`.
#[derive(Debug, Clone, Serialize)]
pub struct TransferView {
    /// `in` (a contact shares with us) or `out` (we share with a contact).
    pub direction: &'static str,
    pub study_uid: String,
    pub short_id: String,
    pub peer_id: String,
    pub peer_name: String,
    pub state: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub blobs_done: u64,
    pub blobs_total: u64,
    pub rate_bytes_per_sec: f64,
    pub expires_unix: u64,
    pub error: Option<String>,
    /// Outgoing: every byte sent for this grant, including bytes sent again after an
    /// interruption (compare with `bytes_total`).
    pub bytes_sent: Option<u64>,
}

/// A running network node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: Store,
    peer_id: PeerId,
    card: card::DeviceCard,
    control: libp2p_stream::Control,
    commands: mpsc::Sender<swarm::Command>,
    events: broadcast::Sender<swarm::Event>,
    paired: broadcast::Sender<Paired>,
    rt: tokio::runtime::Handle,
    cancel: CancellationToken,
    live: Mutex<HashMap<(String, String), Live>>,
    fetching: Mutex<HashSet<(String, String)>>,
    offering: tokio::sync::Mutex<()>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Relays in use: configured ones and those learned from contacts' circuit addresses.
    relays: Mutex<Vec<Multiaddr>>,
    /// What identify last told us about each peer's addresses; identify runs when a
    /// connection opens, before a pairing makes the peer a contact.
    seen: Mutex<HashMap<PeerId, Vec<String>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

/// Starts the network side of a node: listeners, protocols, and the background work (offering
/// studies to contacts, resuming interrupted downloads).
pub async fn start(store: Store, config: Config) -> Result<Handle, NetError> {
    let keys = store.keys();
    let agent = format!("discless/{}", env!("CARGO_PKG_VERSION"));
    let built = swarm::build(keys.identity.clone(), config.mdns, &agent)?;
    let mut swarm = built.swarm;
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| swarm::SwarmError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, _) = broadcast::channel(256);
    let cancel = CancellationToken::new();
    let handle = Handle {
        inner: Arc::new(Inner {
            peer_id: keys.peer_id(),
            card: card::DeviceCard::new(keys),
            store: store.clone(),
            control: built.control,
            commands: cmd_tx,
            events: ev_tx.clone(),
            paired: broadcast::channel(16).0,
            rt: tokio::runtime::Handle::current(),
            cancel: cancel.clone(),
            live: Mutex::default(),
            fetching: Mutex::default(),
            offering: tokio::sync::Mutex::new(()),
            tasks: Mutex::default(),
            relays: Mutex::default(),
            seen: Mutex::default(),
        }),
    };
    handle.spawn(swarm::run(swarm, cmd_rx, ev_tx, cancel));
    handle.accept(proto::PAIR, pairing::handle_inbound)?;
    handle.accept(proto::RPC, share::handle_inbound)?;
    handle.accept(proto::BLOBS, provide::handle_inbound)?;
    // Wait for the listeners to report their addresses: a ticket made right away has them, and
    // the relay is dialed from the listening port (port reuse), so that the address it observes
    // for us, which DCUtR hole-punches to, is one we accept connections on.
    let deadline = Instant::now() + Duration::from_secs(3);
    while handle.snapshot().await?.listen.len() < config.listen.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Contacts' last known addresses, so that dialing them by PeerId works after a restart;
    // the relays behind their circuit addresses serve us too.
    for r in &config.relays {
        handle.use_relay(r.clone()).await;
    }
    for c in store.contacts()? {
        handle.remember(&c).await;
        for a in c.addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
            if let Some(r) = swarm::relay_of_circuit(&a) {
                handle.use_relay(r).await;
            }
        }
    }
    handle.spawn(share::background(handle.clone()));
    fetch::resume_all(&handle)?;
    Ok(handle)
}

impl Handle {
    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let cancel = self.inner.cancel.clone();
        let t = self.inner.rt.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = f => {}
            }
        });
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(t);
        }
    }

    /// Serves `protocol` with `handler`, one task per stream, accepting promptly: libp2p-stream
    /// drops streams that wait to be accepted.
    fn accept<F, Fut>(&self, protocol: StreamProtocol, handler: F) -> Result<(), NetError>
    where
        F: Fn(Handle, PeerId, libp2p::Stream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut incoming = self
            .inner
            .control
            .clone()
            .accept(protocol.clone())
            .map_err(|e| NetError::Invalid(format!("{protocol}: {e}")))?;
        let me = self.clone();
        self.spawn(async move {
            while let Some((peer, stream)) = incoming.next().await {
                me.spawn(handler(me.clone(), peer, stream));
            }
        });
        Ok(())
    }

    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// Keeps a reservation on `relay` (an address ending in `/p2p/<relay PeerId>`).
    pub async fn use_relay(&self, relay: Multiaddr) {
        if swarm::relay_peer(&relay).is_none() {
            tracing::warn!(%relay, "relay address without /p2p/<PeerId> ignored");
            return;
        }
        {
            let Ok(mut r) = self.inner.relays.lock() else {
                return;
            };
            if r.contains(&relay) {
                return;
            }
            r.push(relay.clone());
        }
        let _ = self
            .inner
            .commands
            .send(swarm::Command::UseRelay(relay))
            .await;
    }

    /// The relays in use, as given (with `/p2p/<relay>`).
    pub fn relays(&self) -> Vec<Multiaddr> {
        self.inner
            .relays
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn card(&self) -> &card::DeviceCard {
        &self.inner.card
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Runs `f` on this node's runtime from a thread outside it (the CLI, a blocking API
    /// handler).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.inner.rt.block_on(f)
    }

    pub async fn snapshot(&self) -> Result<swarm::Snapshot, NetError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(swarm::Command::Snapshot(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Addresses worth giving to a peer: specific ones (not 0.0.0.0), LAN before loopback.
    pub async fn dialable_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        let s = self.snapshot().await?;
        let mut v: Vec<Multiaddr> = s
            .external
            .into_iter()
            .chain(s.listen)
            .filter(|a| !is_unspecified(a))
            .collect();
        v.sort_by_key(is_loopback);
        v.dedup();
        Ok(v)
    }

    /// Makes sure there is a connection to `peer`, dialing `addrs` and what the swarm knows.
    pub(crate) async fn connect(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        who: &str,
    ) -> Result<(), NetError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(swarm::Command::Connect {
                peer,
                addrs,
                reply: tx,
            })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await
            .map_err(|_| NetError::Stopped)?
            .map_err(|reason| NetError::Unreachable {
                who: who.to_owned(),
                reason,
            })
    }

    /// Where `peer` was last seen: a contact's recorded addresses (direct and circuit), or a
    /// relay's configured address. libp2p itself only remembers what identify told it in this
    /// run, so after a restart these are what make a contact dialable again.
    async fn known_addrs(&self, peer: PeerId) -> Vec<Multiaddr> {
        let mut v: Vec<Multiaddr> = self
            .relays()
            .into_iter()
            .filter(|r| swarm::relay_peer(r) == Some(peer))
            .collect();
        let p = peer.to_string();
        if let Ok(Ok(Some(c))) = self.blocking(move |s| s.contact(&p)).await {
            v.extend(c.addrs.iter().filter_map(|a| a.parse().ok()));
        }
        // A contact that restarted has new direct ports, and its circuit address may never
        // have reached us; if it holds a reservation at one of our relays, this finds it.
        for relay in self.relays() {
            if swarm::relay_peer(&relay) == Some(peer) {
                continue;
            }
            let circuit = relay
                .with(libp2p::multiaddr::Protocol::P2pCircuit)
                .with(libp2p::multiaddr::Protocol::P2p(peer));
            if !v.contains(&circuit) {
                v.push(circuit);
            }
        }
        v
    }

    pub(crate) fn note_seen(&self, peer: PeerId, addrs: Vec<String>) {
        if let Ok(mut m) = self.inner.seen.lock() {
            m.insert(peer, addrs);
        }
    }

    pub(crate) fn seen(&self, peer: &PeerId) -> Vec<String> {
        self.inner
            .seen
            .lock()
            .ok()
            .and_then(|m| m.get(peer).cloned())
            .unwrap_or_default()
    }

    /// Tells the swarm where a contact was last seen.
    pub(crate) async fn remember(&self, c: &Contact) {
        let Ok(peer) = c.peer_id.parse::<PeerId>() else {
            return;
        };
        let addrs: Vec<Multiaddr> = c.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        let _ = self
            .inner
            .commands
            .send(swarm::Command::AddAddrs { peer, addrs })
            .await;
    }

    /// Opens a stream to a contact (dialing it first), with a clear error when it is offline.
    pub(crate) async fn open(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        who: &str,
    ) -> Result<libp2p::Stream, NetError> {
        let addrs = self.known_addrs(peer).await;
        self.connect(peer, addrs, who).await?;
        self.inner
            .control
            .clone()
            .open_stream(peer, protocol)
            .await
            .map_err(|e| NetError::Protocol {
                who: who.to_owned(),
                reason: e.to_string(),
            })
    }

    pub(crate) fn events(&self) -> broadcast::Receiver<swarm::Event> {
        self.inner.events.subscribe()
    }

    /// Pairings completed on this node (both as issuer and as scanner).
    pub fn paired_events(&self) -> broadcast::Receiver<Paired> {
        self.inner.paired.subscribe()
    }

    /// Stops every network task.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let tasks: Vec<_> = self
            .inner
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Both directions of every transfer, with live progress.
    pub async fn transfers(&self) -> Result<Vec<TransferView>, NetError> {
        let live = fetch::live(self);
        Ok(self.blocking(move |s| transfers::list(s, &live)).await??)
    }

    /// Runs blocking store work off the async threads.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Result<T, NetError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| NetError::Stopped)
    }
}

fn is_unspecified(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_unspecified(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// A contact's display for messages: "Dr Lee (12D3KooW…abcd)".
pub fn who(c: &Contact) -> String {
    let p = &c.peer_id;
    format!(
        "{} ({}…{})",
        c.name,
        &p[..p.len().min(8)],
        &p[p.len().saturating_sub(4)..]
    )
}
