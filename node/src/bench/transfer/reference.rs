//! The references of `bench transfer`, measured in the bench's own process: a bare libp2p
//! stream (two swarms with nothing but `libp2p_stream`, one stream, one direction) over
//! TCP+Noise+Yamux or QUIC, and a plain tokio TCP copy, each carrying a given number of bytes
//! over 127.0.0.1.
//!
//! Both ends run in one process on a fresh runtime that is dropped afterwards, which cancels
//! every task it ran (swarms included). The CPU figure is this process's user+system time over
//! the copy, so it counts sender and receiver together, like the sum of the two nodes' figures.

use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, StreamProtocol, Swarm};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;

use super::{cpu_seconds, Transport};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/discless-bench/bytes/1");
/// The size of each write and read: the same as the node's blob reads and writes.
const CHUNK: usize = 256 * 1024;
/// Setting up a connection on loopback takes milliseconds; this only bounds a broken run.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// One reference copy.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    pub seconds: f64,
    pub mb_per_s: f64,
    /// User+system CPU of both ends together, per MB carried.
    pub cpu_s_per_mb: Option<f64>,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// Runs `copy` `runs` times and keeps the fastest: the machine is shared, and the reference
/// should be what the stack can do, not what a neighbour left of it.
pub(super) fn best_of(
    runs: usize,
    bytes: u64,
    mut copy: impl FnMut(u64) -> Result<f64, String>,
) -> Result<Reference, String> {
    let mut best: Option<Reference> = None;
    for _ in 0..runs.max(1) {
        let cpu0 = cpu_seconds(std::process::id());
        let seconds = copy(bytes)?;
        let cpu = cpu0.and_then(|c0| cpu_seconds(std::process::id()).map(|c1| c1 - c0));
        let c = Reference {
            seconds,
            mb_per_s: super::mb_per_s(bytes, seconds),
            cpu_s_per_mb: cpu.map(|c| c / (bytes as f64 / 1e6)),
        };
        if best.as_ref().is_none_or(|b| c.seconds < b.seconds) {
            best = Some(c);
        }
    }
    best.ok_or_else(|| "no reference run".to_owned())
}

fn bare_swarm() -> Result<Swarm<libp2p_stream::Behaviour>, String> {
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| format!("libp2p TCP transport: {e}"))?
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .map_err(|e| format!("libp2p behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

/// Drives `swarm` until the runtime is dropped; reports its first listen address and its first
/// established connection.
fn drive(
    mut swarm: Swarm<libp2p_stream::Behaviour>,
    listening: Option<oneshot::Sender<Multiaddr>>,
    connected: Option<oneshot::Sender<()>>,
) {
    let (mut listening, mut connected) = (listening, connected);
    tokio::spawn(async move {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => {
                    if let Some(tx) = listening.take() {
                        let _ = tx.send(address);
                    }
                }
                SwarmEvent::ConnectionEstablished { .. } => {
                    if let Some(tx) = connected.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });
}

async fn within<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, oneshot::error::RecvError>>,
) -> Result<T, String> {
    tokio::time::timeout(SETUP_TIMEOUT, f)
        .await
        .map_err(|_| format!("bare libp2p: no {what} within {SETUP_TIMEOUT:?}"))?
        .map_err(|_| format!("bare libp2p: the swarm stopped before {what}"))
}

/// One libp2p stream carrying `bytes` from one swarm to another; seconds from opening the
/// stream (on an established connection) until the receiver has read the last byte.
pub(super) fn libp2p_stream(transport: Transport, bytes: u64) -> Result<f64, String> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut listener = bare_swarm()?;
        let mut dialer = bare_swarm()?;
        let listener_id = *listener.local_peer_id();
        let mut incoming = listener
            .behaviour()
            .new_control()
            .accept(PROTOCOL)
            .map_err(|e| format!("bare libp2p: {e}"))?;
        let mut control = dialer.behaviour().new_control();
        listener
            .listen_on(transport.listen_addr())
            .map_err(|e| format!("bare libp2p: listen: {e}"))?;
        let (addr_tx, addr_rx) = oneshot::channel();
        drive(listener, Some(addr_tx), None);
        let addr = within("listen address", addr_rx).await?;
        dialer
            .dial(addr.with(Protocol::P2p(listener_id)))
            .map_err(|e| format!("bare libp2p: dial: {e}"))?;
        let (conn_tx, conn_rx) = oneshot::channel();
        drive(dialer, None, Some(conn_tx));
        within("connection", conn_rx).await?;

        // The accept loop is polled before the stream is opened, so libp2p-stream cannot
        // drop it for want of a slot.
        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(async move {
            if let Some((_, mut s)) = incoming.next().await {
                let mut buf = vec![0u8; CHUNK];
                let mut got = 0u64;
                let r = loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break Ok(got),
                        Ok(n) => got += n as u64,
                        Err(e) => break Err(e.to_string()),
                    }
                };
                let _ = done_tx.send((r, Instant::now()));
            }
        });
        let data: Vec<u8> = (0..CHUNK).map(|i| (i * 31 + 7) as u8).collect();
        let start = Instant::now();
        let mut s = control
            .open_stream(listener_id, PROTOCOL)
            .await
            .map_err(|e| format!("bare libp2p: open stream: {e}"))?;
        let mut left = bytes;
        while left > 0 {
            let n = CHUNK.min(left as usize);
            s.write_all(&data[..n])
                .await
                .map_err(|e| format!("bare libp2p: write: {e}"))?;
            left -= n as u64;
        }
        s.close()
            .await
            .map_err(|e| format!("bare libp2p: close: {e}"))?;
        let (got, end) = tokio::time::timeout(super::COPY_TIMEOUT, done_rx)
            .await
            .map_err(|_| "bare libp2p: the receiver did not finish".to_owned())?
            .map_err(|_| "bare libp2p: the receiver stopped".to_owned())?;
        let got = got.map_err(|e| format!("bare libp2p: read: {e}"))?;
        if got != bytes {
            return Err(format!("bare libp2p: received {got} of {bytes} bytes"));
        }
        Ok(end.duration_since(start).as_secs_f64())
    })
}

/// A plain tokio TCP copy of `bytes` over loopback; seconds from connecting until the reader
/// has read the last byte.
pub(super) fn tokio_tcp(bytes: u64) -> Result<f64, String> {
    let rt = runtime()?;
    rt.block_on(async {
        let err = |e: std::io::Error| format!("tokio TCP copy: {e}");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await?;
            let mut buf = vec![0u8; CHUNK];
            let mut got = 0u64;
            loop {
                match s.read(&mut buf).await? {
                    0 => return Ok::<_, std::io::Error>((got, Instant::now())),
                    n => got += n as u64,
                }
            }
        });
        let data: Vec<u8> = (0..CHUNK).map(|i| (i * 31 + 7) as u8).collect();
        let start = Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(err)?;
        let mut left = bytes;
        while left > 0 {
            let n = CHUNK.min(left as usize);
            s.write_all(&data[..n]).await.map_err(err)?;
            left -= n as u64;
        }
        s.shutdown().await.map_err(err)?;
        let (got, end) = tokio::time::timeout(super::COPY_TIMEOUT, reader)
            .await
            .map_err(|_| "tokio TCP copy: the reader did not finish".to_owned())?
            .map_err(|e| format!("tokio TCP copy: {e}"))?
            .map_err(err)?;
        if got != bytes {
            return Err(format!("tokio TCP copy: received {got} of {bytes} bytes"));
        }
        Ok(end.duration_since(start).as_secs_f64())
    })
}
