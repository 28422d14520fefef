//! The libp2p swarm as an actor: one task owns it; the rest of the node sends it commands.
//!
//! Bulk work never runs here: streams are opened and accepted through `libp2p_stream::Control`
//! by other tasks, so a slow transfer cannot stall connection handling.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{autonat, dcutr, identify, mdns, noise, ping, relay, tcp, yamux, Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc, oneshot};

/// How long an idle connection to a contact stays open; longer than libp2p's 10 s default so a
/// receiver working through a large study between batches keeps its connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    relay_client: relay::client::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    autonat: autonat::Behaviour,
    dcutr: dcutr::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// What the swarm is doing, for `info` and the API.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub listen: Vec<Multiaddr>,
    pub external: Vec<Multiaddr>,
    pub connected: Vec<PeerId>,
    /// Relays with an active reservation.
    pub relays: Vec<PeerId>,
    /// Connected peers with at least one direct (not relayed) connection.
    pub direct: Vec<PeerId>,
}

impl Snapshot {
    /// How `peer` is connected now: `direct`, `relayed`, or not at all (None).
    pub fn route(&self, peer: &str) -> Option<&'static str> {
        let p: PeerId = peer.parse().ok()?;
        if self.direct.contains(&p) {
            Some("direct")
        } else if self.connected.contains(&p) {
            Some("relayed")
        } else {
            None
        }
    }
}

/// The relay's PeerId in an address like `/ip4/…/tcp/…/p2p/<relay>` (before any `/p2p-circuit`).
pub fn relay_peer(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            libp2p::multiaddr::Protocol::P2p(id) => last = Some(id),
            libp2p::multiaddr::Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    last
}

/// The relay part of a circuit address (`<relay addr>/p2p/<relay>`), if it is one.
pub fn relay_of_circuit(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut out = Multiaddr::empty();
    for p in addr.iter() {
        if matches!(p, libp2p::multiaddr::Protocol::P2pCircuit) {
            return Some(out);
        }
        out.push(p);
    }
    None
}

/// How often a lost reservation is tried again.
const RELAY_RETRY: Duration = Duration::from_secs(3);

/// After a hole punch the relayed connection to that peer is closed, so that bulk traffic goes
/// direct (libp2p-stream opens streams on any of a peer's connections); streams already open on
/// it (a pairing, the first blobs of a download) get this long to finish, and a download cut
/// after it resumes on the direct connection.
const RELAYED_GRACE: Duration = Duration::from_secs(10);

/// DCUtR tries three times, all on the relayed connection it started on, with the addresses it
/// knew when that connection opened. When those fail (the two sides' dials race each other, a
/// dial lands on the other side's listener so that both ends take the listener role, a firewall
/// drops the first packets), the side that saw the failure opens a fresh relayed connection to
/// the peer, which starts a new round with the roles swapped. At most this many rounds a peer.
const PUNCH_ROUNDS: u8 = 3;

/// Wait before a new round (times the round number, plus up to a second of jitter), so the
/// sockets of the failed round are gone and the two sides do not start rounds in lockstep.
const PUNCH_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) enum Command {
    /// Dial `peer` at `addrs` (and whatever else is known) unless already connected.
    Connect {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    AddAddrs {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    Snapshot(oneshot::Sender<Snapshot>),
    /// Keep a reservation on this relay (full address with `/p2p/<relay>`) and advertise the
    /// circuit addresses it gives.
    UseRelay(Multiaddr),
}

/// Things other tasks react to.
#[derive(Debug, Clone)]
pub enum Event {
    Connected(PeerId),
    /// A peer told us where it listens (identify).
    Addresses(PeerId, Vec<Multiaddr>),
    /// A relay accepted our reservation: time to look into its mailbox.
    RelayReady(PeerId),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwarmError {
    #[error("cannot set up the network transport: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
}

pub(crate) struct Built {
    pub swarm: libp2p::Swarm<Behaviour>,
    pub control: libp2p_stream::Control,
}

pub(crate) fn build(
    keypair: libp2p::identity::Keypair,
    mdns_on: bool,
    agent: &str,
) -> Result<Built, SwarmError> {
    let t = |e: &dyn std::fmt::Display| SwarmError::Transport(e.to_string());
    let peer_id = keypair.public().to_peer_id();
    let agent = agent.to_owned();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| t(&e))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| t(&e))?
        .with_behaviour(|key, relay_client| {
            let mdns = if mdns_on {
                match mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!("mDNS unavailable, LAN discovery off: {e}");
                        None
                    }
                }
            } else {
                None
            };
            Behaviour {
                relay_client,
                identify: identify::Behaviour::new(
                    identify::Config::new("/discless/1".into(), key.public())
                        .with_agent_version(agent),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
                mdns: Toggle::from(mdns),
                autonat: autonat::Behaviour::new(peer_id, autonat::Config::default()),
                dcutr: dcutr::Behaviour::new(peer_id),
                stream: libp2p_stream::Behaviour::new(),
            }
        })
        .map_err(|e| t(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    let control = swarm.behaviour().stream.new_control();
    Ok(Built { swarm, control })
}

/// Runs the swarm until `commands` closes or `cancel` fires.
pub(crate) async fn run(
    mut swarm: libp2p::Swarm<Behaviour>,
    mut commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut waiting: HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>> = HashMap::new();
    let mut listen: Vec<Multiaddr> = Vec::new();
    // Relay address -> its circuit listener while one is open.
    let mut relays: HashMap<Multiaddr, Option<libp2p::core::transport::ListenerId>> =
        HashMap::new();
    let mut reserved: HashSet<PeerId> = HashSet::new();
    // Every open connection, and whether it goes through a relay.
    let mut conns: HashMap<PeerId, HashMap<libp2p::swarm::ConnectionId, bool>> = HashMap::new();
    let mut close_relayed = futures::stream::FuturesUnordered::new();
    // Hole punching: each peer's circuit addresses, the rounds begun, and rounds waiting to start.
    let mut circuits: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
    let mut punch_rounds: HashMap<PeerId, u8> = HashMap::new();
    let mut punch_again = futures::stream::FuturesUnordered::new();
    let mut retry = tokio::time::interval(RELAY_RETRY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(peer) = close_relayed.next(), if !close_relayed.is_empty() => {
                let relayed: Vec<_> = conns
                    .get(&peer)
                    .map(|m| m.iter().filter(|(_, r)| **r).map(|(id, _)| *id).collect())
                    .unwrap_or_default();
                let has_direct = has_direct(&conns, &peer);
                if has_direct {
                    for id in relayed {
                        swarm.close_connection(id);
                    }
                }
            }
            Some(peer) = punch_again.next(), if !punch_again.is_empty() => {
                let relayed_only = conns.contains_key(&peer) && !has_direct(&conns, &peer);
                let addrs = circuits.get(&peer).cloned().unwrap_or_default();
                if relayed_only && !addrs.is_empty() {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::Always)
                        .build();
                    if let Err(e) = swarm.dial(opts) {
                        tracing::info!(%peer, "cannot open a relayed connection for a new hole punch: {e}");
                    }
                }
            }
            _ = retry.tick() => {
                // One reservation per relay: a second one (another address of the same relay)
                // replaces the first, whose listener then closes, and the two would take turns.
                let mut reserving: HashSet<PeerId> = relays
                    .iter()
                    .filter(|(_, l)| l.is_some())
                    .filter_map(|(a, _)| relay_peer(a))
                    .collect();
                for (addr, listener) in relays.iter_mut() {
                    let peer = relay_peer(addr);
                    if listener.is_none() && peer.is_none_or(|p| reserving.insert(p)) {
                        let circuit = addr.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
                        match swarm.listen_on(circuit) {
                            Ok(id) => *listener = Some(id),
                            Err(e) => tracing::warn!(relay = %addr, "cannot use relay: {e}"),
                        }
                    }
                }
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Command::Connect { peer, addrs, reply } => {
                        remember_circuits(&mut circuits, peer, &addrs);
                        if swarm.is_connected(&peer) {
                            let _ = reply.send(Ok(()));
                            continue;
                        }
                        for a in &addrs {
                            swarm.add_peer_address(peer, a.clone());
                        }
                        let opts = DialOpts::peer_id(peer)
                            .addresses(addrs)
                            .extend_addresses_through_behaviour()
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        match swarm.dial(opts) {
                            Ok(()) => waiting.entry(peer).or_default().push(reply),
                            Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                                waiting.entry(peer).or_default().push(reply)
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e.to_string()));
                            }
                        }
                    }
                    Command::AddAddrs { peer, addrs } => {
                        for a in addrs {
                            swarm.add_peer_address(peer, a);
                        }
                    }
                    Command::Snapshot(reply) => {
                        let _ = reply.send(Snapshot {
                            listen: listen.clone(),
                            external: swarm.external_addresses().cloned().collect(),
                            connected: conns.keys().copied().collect(),
                            relays: reserved.iter().copied().collect(),
                            direct: conns
                                .keys()
                                .filter(|p| has_direct(&conns, p))
                                .copied()
                                .collect(),
                        });
                    }
                    Command::UseRelay(addr) => {
                        let peer = relay_peer(&addr);
                        // New to us: neither this address nor another of the same relay on the
                        // same transport (that one's connection serves).
                        let new = !relays.keys().any(|known| {
                            *known == addr
                                || (relay_peer(known) == peer && quic(known) == quic(&addr))
                        });
                        if let Some(peer) = peer {
                            let base: Multiaddr = addr
                                .iter()
                                .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                                .collect();
                            swarm.add_peer_address(peer, base.clone());
                            if new {
                                // A connection on every transport the relay offers, not just the
                                // one the reservation uses: identify then learns our address as
                                // seen on each, and DCUtR punches only with such observed
                                // addresses. Over QUIC it succeeds where TCP's simultaneous
                                // open loses the race (a SYN that meets a listener instead of
                                // the other side's dial leaves two listener ends).
                                let opts = DialOpts::peer_id(peer)
                                    .addresses(vec![base])
                                    .condition(PeerCondition::Always)
                                    .build();
                                if let Err(e) = swarm.dial(opts) {
                                    tracing::debug!(relay = %addr, "cannot dial the relay: {e}");
                                }
                            }
                        }
                        relays.entry(addr).or_insert(None);
                        retry.reset_immediately();
                    }
                }
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => {
                    tracing::info!(%address, "p2p listening");
                    listen.push(address);
                }
                SwarmEvent::ExpiredListenAddr { address, .. } => listen.retain(|a| *a != address),
                SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                    for (addr, l) in relays.iter_mut() {
                        if *l == Some(listener_id) {
                            *l = None;
                            if let Some(p) = relay_peer(addr) {
                                reserved.remove(&p);
                            }
                            match &reason {
                                Ok(()) => tracing::info!(relay = %addr, "relay reservation ended; renewing"),
                                Err(e) => tracing::warn!(relay = %addr, "relay refused or unreachable: {e}"),
                            }
                        }
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                    relay::client::Event::ReservationReqAccepted { relay_peer_id, renewal, .. },
                )) => {
                    reserved.insert(relay_peer_id);
                    if !renewal {
                        tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                    }
                    let _ = events.send(Event::RelayReady(relay_peer_id));
                }
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, connection_id, .. } => {
                    tracing::debug!(peer = %peer_id, relayed = endpoint.is_relayed(), "connected");
                    conns.entry(peer_id).or_default().insert(connection_id, endpoint.is_relayed());
                    for r in waiting.remove(&peer_id).unwrap_or_default() {
                        let _ = r.send(Ok(()));
                    }
                    let _ = events.send(Event::Connected(peer_id));
                }
                SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. } => {
                    if let Some(m) = conns.get_mut(&peer_id) {
                        m.remove(&connection_id);
                    }
                    if num_established == 0 {
                        conns.remove(&peer_id);
                        punch_rounds.remove(&peer_id);
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result })) => {
                    match result {
                        Ok(_) => {
                            punch_rounds.remove(&remote_peer_id);
                            tracing::info!(peer = %remote_peer_id, "hole punched: direct connection; the relayed one closes in {RELAYED_GRACE:?}");
                            close_relayed.push(async move {
                                tokio::time::sleep(RELAYED_GRACE).await;
                                remote_peer_id
                            });
                        }
                        Err(e) => {
                            let direct = has_direct(&conns, &remote_peer_id);
                            let round = punch_rounds.entry(remote_peer_id).or_default();
                            if direct {
                                // The other side's dial got through: nothing to retry.
                            } else if listen.iter().all(|a| relay_of_circuit(a).is_some()) {
                                // Nothing to punch with: a punch dials from a listening port.
                                tracing::info!(peer = %remote_peer_id, "no hole punch without a listen address, staying on the relay: {e}");
                            } else if *round < PUNCH_ROUNDS {
                                *round += 1;
                                let wait = PUNCH_BACKOFF * u32::from(*round)
                                    + Duration::from_millis(rand::random::<u64>() % 1000);
                                tracing::info!(peer = %remote_peer_id, "hole punch failed ({e}); a new round in {wait:?}");
                                punch_again.push(async move {
                                    tokio::time::sleep(wait).await;
                                    remote_peer_id
                                });
                            } else {
                                tracing::info!(peer = %remote_peer_id, "no hole punch, staying on the relay: {e}");
                            }
                        }
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. }
                    if !swarm.is_connected(&peer) =>
                {
                    for r in waiting.remove(&peer).unwrap_or_default() {
                        let _ = r.send(Err(error.to_string()));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    let addrs = info.listen_addrs;
                    remember_circuits(&mut circuits, peer_id, &addrs);
                    for a in &addrs {
                        swarm.add_peer_address(peer_id, a.clone());
                    }
                    let _ = events.send(Event::Addresses(peer_id, addrs));
                }
                SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                    for (peer, addr) in found {
                        swarm.add_peer_address(peer, addr);
                    }
                }
                _ => {}
            },
        }
    }
    for (_, rs) in waiting.drain() {
        for r in rs {
            let _ = r.send(Err("the node is shutting down".into()));
        }
    }
}

/// Adds `addrs`' circuit addresses (through a relay) to what is known of `peer`.
fn remember_circuits(
    circuits: &mut HashMap<PeerId, Vec<Multiaddr>>,
    peer: PeerId,
    addrs: &[Multiaddr],
) {
    for a in addrs.iter().filter(|a| relay_of_circuit(a).is_some()) {
        let known = circuits.entry(peer).or_default();
        if !known.contains(a) && known.len() < 8 {
            known.push(a.clone());
        }
    }
}

/// Whether `addr` is a QUIC address (else TCP, the node's other transport).
fn quic(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1))
}

/// Whether one of `peer`'s open connections is direct (not through a relay). `conns` holds each
/// peer's connections and whether each is relayed; a peer is in it while it has any.
fn has_direct(
    conns: &HashMap<PeerId, HashMap<libp2p::swarm::ConnectionId, bool>>,
    peer: &PeerId,
) -> bool {
    conns
        .get(peer)
        .is_some_and(|m| m.values().any(|relayed| !relayed))
}
