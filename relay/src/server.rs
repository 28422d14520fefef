//! The relay server: circuit relay v2 with explicit limits, admission by PeerId, the mailbox,
//! and Prometheus metrics.

pub mod admission;
pub mod mailbox;
mod metrics;
mod serve_mailbox;

pub use serve_mailbox::TEST_SEND_DELAY_ENV;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::metrics::{Metrics, Recorder};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, relay, tcp, yamux, Multiaddr, PeerId};
use tokio_util::sync::CancellationToken;

pub use admission::Admission;
pub use mailbox::{Limits, Mailbox};

/// Relay settings; defaults fit studies of several GB.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<Multiaddr>,
    /// Addresses to advertise instead of the listen addresses (e.g. a public IP behind NAT).
    pub announce: Vec<Multiaddr>,
    pub data: PathBuf,
    pub allow: Vec<PeerId>,
    pub allow_file: Option<PathBuf>,
    /// Admit any peer. Off by default: a clinic's relay serves the clinic's nodes.
    pub open: bool,
    pub max_circuit_bytes: u64,
    pub max_circuit_duration: Duration,
    pub limits: Limits,
    pub metrics: Option<SocketAddr>,
}

/// 8 GiB: a large CT or a whole-slide image in one circuit.
pub const DEFAULT_MAX_CIRCUIT_BYTES: u64 = 8 * 1024 * 1024 * 1024;
pub const DEFAULT_MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(3600);

impl Config {
    /// A relay listening on `listen` and keeping its identity and mailbox in `data`, admitting
    /// no one yet, with the default circuit limits and generous mailbox quotas (1 TiB, 1 day):
    /// what a program embedding a relay (the demo, a benchmark) starts from.
    pub fn new(listen: Multiaddr, data: PathBuf) -> Self {
        Self {
            listen: vec![listen],
            announce: Vec::new(),
            data,
            allow: Vec::new(),
            allow_file: None,
            open: false,
            max_circuit_bytes: DEFAULT_MAX_CIRCUIT_BYTES,
            max_circuit_duration: DEFAULT_MAX_CIRCUIT_DURATION,
            limits: Limits {
                per_recipient: 1 << 40,
                per_sender: 1 << 40,
                ttl_secs: 24 * 3600,
            },
            metrics: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error("relay data directory {path}: {source}")]
    Data {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("relay identity in {0} is damaged")]
    Identity(PathBuf),
    #[error("cannot set up the transport: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error(transparent)]
    Mailbox(#[from] mailbox::MailboxError),
    #[error("{0}")]
    Config(String),
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Loads the relay's identity from `<data>/identity.key`, creating it on first start.
pub fn identity(data: &Path) -> Result<Keypair, RelayError> {
    let path = data.join("identity.key");
    let io = |source| RelayError::Data {
        path: path.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(b) => {
            Keypair::from_protobuf_encoding(&b).map_err(|_| RelayError::Identity(path.clone()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data).map_err(io)?;
            let k = Keypair::generate_ed25519();
            let bytes = k
                .to_protobuf_encoding()
                .map_err(|_| RelayError::Identity(path.clone()))?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            use std::io::Write;
            let mut f = opts.open(&path).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok(k)
        }
        Err(e) => Err(io(e)),
    }
}

/// The addresses nodes should use, with `/p2p/<relay>`: written at start for `info`.
pub fn addrs_file(data: &Path) -> PathBuf {
    data.join("addresses.json")
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// A running relay.
#[derive(Debug)]
pub struct Running {
    pub peer_id: PeerId,
    /// Full addresses, each ending in `/p2p/<relay PeerId>`.
    pub addrs: Vec<Multiaddr>,
    pub metrics_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Its first TCP address, in full (`…/tcp/N/p2p/<relay>`).
    pub fn tcp_addr(&self) -> Option<&Multiaddr> {
        self.addrs.iter().find(|a| {
            a.iter()
                .any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
        })
    }

    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// An error's message followed by its causes: libp2p's transport errors print nothing of
/// their own and keep the reason (e.g. "Address in use") in their source.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(c) = cur {
        let m = c.to_string();
        if !m.is_empty() && !parts.iter().any(|p| p.contains(&m)) {
            parts.push(m);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// Starts the relay; returns once it listens.
pub async fn start(config: Config) -> Result<Running, RelayError> {
    let key = identity(&config.data)?;
    let peer_id = key.public().to_peer_id();
    let admission = Admission::new(
        config.allow.iter().copied().collect::<HashSet<_>>(),
        config.allow_file.clone(),
        config.open,
    )?;
    let mailbox = Mailbox::open(&config.data.join("mailbox"), config.limits)?;
    let mut registry = libp2p::metrics::Registry::default();
    let ours = metrics::Ours::new(&mut registry);
    let t = |e: &dyn std::fmt::Display| RelayError::Transport(e.to_string());

    let relay_config = {
        let (a1, a2) = (admission.clone(), admission.clone());
        let (m1, m2) = (ours.clone(), ours.clone());
        relay::Config {
            max_reservations: 1024,
            max_reservations_per_peer: 8,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 256,
            max_circuits_per_peer: 32,
            max_circuit_duration: config.max_circuit_duration,
            max_circuit_bytes: config.max_circuit_bytes,
            // Admission replaces libp2p's default rate limiters, which would stop a clinic (one
            // NAT address) after 60 circuits.
            reservation_rate_limiters: vec![Box::new(move |peer: PeerId, _: &Multiaddr, _| {
                let ok = a1.allows(&peer);
                if !ok {
                    m1.refused("reservation");
                    tracing::warn!(%peer, "reservation refused: peer not admitted");
                }
                ok
            })],
            circuit_src_rate_limiters: vec![Box::new(move |peer: PeerId, _: &Multiaddr, _| {
                let ok = a2.allows(&peer);
                if !ok {
                    m2.refused("circuit");
                    tracing::warn!(%peer, "circuit refused: source peer not admitted");
                }
                ok
            })],
        }
    };
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| t(&e))?
        .with_quic()
        .with_bandwidth_metrics(&mut registry)
        .with_behaviour(|k| Behaviour {
            relay: relay::Behaviour::new(peer_id, relay_config),
            identify: identify::Behaviour::new(
                identify::Config::new("/discless/1".into(), k.public())
                    .with_agent_version(format!("discless-relay/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::new(ping::Config::new()),
            stream: libp2p_stream::Behaviour::new(),
        })
        .map_err(|e| t(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let libp2p_metrics = Metrics::new(&mut registry);
    for a in &config.listen {
        swarm.listen_on(a.clone()).map_err(|e| RelayError::Listen {
            addr: a.clone(),
            reason: with_causes(&e),
        })?;
    }
    // Wait for the listeners, then advertise: the relay refuses reservations without an
    // external address (its replies must tell clients where to reach it).
    let mut listening = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while listening.len() < config.listen.len() {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| RelayError::Transport("listeners did not start within 5 s".into()))?;
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => listening.push(address),
            SwarmEvent::ListenerError { error, .. } => return Err(t(&error)),
            _ => {}
        }
    }
    let external: Vec<Multiaddr> = if config.announce.is_empty() {
        listening
            .iter()
            .filter(|a| {
                !a.iter()
                    .any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_unspecified()))
            })
            .cloned()
            .collect()
    } else {
        config.announce.clone()
    };
    for a in &external {
        swarm.add_external_address(a.clone());
    }
    let addrs: Vec<Multiaddr> = external
        .iter()
        .map(|a| a.clone().with(Protocol::P2p(peer_id)))
        .collect();
    let _ = std::fs::write(
        addrs_file(&config.data),
        serde_json::to_vec_pretty(&serde_json::json!({
            "peer_id": peer_id.to_string(),
            "addrs": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }))
        .unwrap_or_default(),
    );

    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    let incoming = swarm
        .behaviour()
        .stream
        .new_control()
        .accept(crate::proto::MAILBOX)
        .map_err(|e| t(&e))?;
    tasks.push(tokio::spawn(serve_mailbox::accept_loop(
        incoming,
        mailbox.clone(),
        admission.clone(),
        ours.clone(),
        cancel.clone(),
    )));
    let metrics_addr = match config.metrics {
        Some(addr) => {
            let (bound, task) = metrics::serve(
                addr,
                registry,
                mailbox.clone(),
                ours.clone(),
                cancel.clone(),
            )
            .await?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };
    {
        let (mailbox, admission, cancel) = (mailbox.clone(), admission.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {
                        admission.reload();
                        match mailbox.sweep() {
                            Ok(0) => {}
                            Ok(n) => tracing::info!("{n} expired mailbox item(s) deleted"),
                            Err(e) => tracing::warn!("mailbox sweep failed: {e}"),
                        }
                    }
                }
            }
        }));
    }
    {
        let cancel = cancel.clone();
        let ours = ours.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    ev = swarm.select_next_some() => match ev {
                        SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => {
                            libp2p_metrics.record(&e);
                            ours.relay_event(&e);
                            tracing::debug!(?e, "relay");
                        }
                        SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => libp2p_metrics.record(&e),
                        SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => libp2p_metrics.record(&e),
                        SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
                        other => libp2p_metrics.record(&other),
                    }
                }
            }
        }));
    }
    Ok(Running {
        peer_id,
        addrs,
        metrics_addr,
        cancel,
        tasks,
    })
}

/// Shared so tests and `info` agree on how PeerIds are parsed from an allow file.
pub fn parse_peer(s: &str) -> Option<PeerId> {
    s.trim().parse().ok()
}
