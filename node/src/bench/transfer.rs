//! `bench transfer`: one study shared between two nodes on loopback, against a bare libp2p
//! stream and a plain TCP copy carrying the same bytes, all measured in the same run.
//!
//! The nodes are two `discless serve` processes (this binary, passed in as `exe`) on fresh
//! temporary homes, so each one's CPU time and peak RSS can be read from `/proc/<pid>`. The
//! sender imports a generated CT once; then, for each transport (TCP+Noise+Yamux, then QUIC),
//! both nodes are started listening on that transport only, a fresh receiver pairs with the
//! sender, and the clock starts when the sender is told to share (through its control API, as
//! the CLI does, so no CLI start-up or passphrase hashing is counted):
//!
//! * first viewable: the receiver's API lists the study with an instance and the first listed
//!   instance renders (`…/instances/{sop}/rendered` answers 200), which is what a viewer needs;
//! * done: the receiver's API lists every instance, i.e. each was fetched, verified by its id,
//!   decrypt-checked and committed. MB/s is the sealed bytes carried over that time;
//! * CPU: user+system time of each node from the share until done, per MB;
//! * peak RSS: each node's high-water mark (`VmHWM`) over its whole life, start-up included
//!   (the keystore's Argon2 alone takes 64 MiB), read just before it is stopped.
//!
//! The references run in this process (see [`reference`]), just before the node run of the same
//! transport, each the best of [`REFERENCE_RUNS`]. Every process is killed by its PID and reaped
//! when its guard drops, whatever happened.

mod reference;
mod relay;

use std::path::Path;
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use serde::Serialize;
use serde_json::Value;

use self::reference::Reference;
use crate::home::Home;
use crate::spawned::{Launcher, Served};

/// Targets from the peer-to-peer issue.
const TARGET_RATIO_BARE: f64 = 0.75;
const TARGET_FIRST_VIEWABLE_MS: f64 = 1000.0;
const REFERENCE_RUNS: usize = 2;
/// Bounds a broken run; a 150 MB study takes about a second.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
const COPY_TIMEOUT: Duration = TRANSFER_TIMEOUT;
/// How often the receiver's API is asked whether the first instance is visible; short, because
/// it bounds the latency measured, and cheap (a 404 or a small JSON answer).
const FIRST_POLL: Duration = Duration::from_millis(5);
/// How often it is asked whether the whole study is visible.
const DONE_POLL: Duration = Duration::from_millis(20);
/// Only the bench's own homes exist; the passphrase protects nothing.
const PASSPHRASE: &str = "bench transfer passphrase";
/// Linux reports process times in USER_HZ ticks, 100 per second on every architecture we run on.
const TICKS_PER_S: f64 = 100.0;

/// The libp2p transport a run uses; both nodes listen on it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Quic,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp+noise+yamux",
            Transport::Quic => "quic-v1",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }

    fn listen(self) -> &'static str {
        match self {
            Transport::Tcp => "/ip4/127.0.0.1/tcp/0",
            Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
    }

    fn listen_addr(self) -> Multiaddr {
        self.listen().parse().unwrap_or_else(|_| Multiaddr::empty())
    }

    /// `serve` arguments listening on this transport alone.
    fn serve_args(self) -> Vec<String> {
        ["--http", "127.0.0.1:0", "--no-mdns", "--p2p", self.listen()]
            .map(str::to_owned)
            .to_vec()
    }
}

/// One node's share of the work.
#[derive(Debug, Serialize)]
pub struct NodeFigures {
    pub cpu_s: Option<f64>,
    pub cpu_s_per_mb: Option<f64>,
    pub peak_rss_mb: Option<f64>,
}

/// The node-to-node transfer over one transport.
#[derive(Debug, Serialize)]
pub struct NodeRun {
    /// From the share until the receiver lists every instance.
    pub seconds: f64,
    pub mb_per_s: f64,
    /// From the share until the first instance the receiver lists renders.
    pub first_viewable_ms: f64,
    pub sender: NodeFigures,
    pub receiver: NodeFigures,
    /// Both nodes together, comparable to the references' figure.
    pub cpu_s_per_mb: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Meets {
    pub ratio_to_bare_libp2p: bool,
    pub first_viewable: bool,
    pub rss: bool,
}

#[derive(Debug, Serialize)]
pub struct TransportRun {
    pub transport: &'static str,
    pub node: NodeRun,
    pub bare_libp2p: Reference,
    pub ratio_to_bare_libp2p: f64,
    pub ratio_to_tokio_tcp: f64,
    pub bare_libp2p_ratio_to_tokio_tcp: f64,
    pub meets: Meets,
}

#[derive(Debug, Serialize)]
pub struct Targets {
    pub ratio_to_bare_libp2p: f64,
    pub first_viewable_ms: f64,
    pub rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct TransferBench {
    pub bench: &'static str,
    pub input: String,
    pub instances: u64,
    /// Sealed blob bytes carried from node to node (and by each reference).
    pub bytes: u64,
    pub reference_runs: usize,
    pub transports: Vec<TransportRun>,
    pub tokio_tcp: Reference,
    /// With `--via-relay`: through a relay's circuit and its mailbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<relay::RelayRuns>,
    pub targets: Targets,
    pub meets_targets: bool,
}

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    super::mb(bytes, secs)
}

/// User+system CPU seconds of process `pid` so far, from `/proc/<pid>/stat` (Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it do not.
    let rest = s.get(s.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_S)
}

/// Peak resident set size of process `pid` in MB, from `/proc/<pid>/status` (Linux).
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0 / 1e6)
}

/// Waits until the receiver lists `study` with an instance and that instance renders.
fn first_viewable(receiver: &mut Served, study: &str, deadline: Instant) -> Result<(), String> {
    let mut first: Option<(String, String)> = None;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = receiver.guard.0.try_wait() {
            return Err(receiver.failed(&format!("exited during the transfer ({s})")));
        }
        match &first {
            None => {
                if let Some(body) = receiver.get(&format!("/api/studies/{study}"))? {
                    let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                    first = v["series"].as_array().and_then(|series| {
                        series.iter().find_map(|se| {
                            let sop = se["instances"].get(0)?["sop_instance_uid"].as_str()?;
                            Some((
                                se["series_instance_uid"].as_str()?.to_owned(),
                                sop.to_owned(),
                            ))
                        })
                    });
                    continue;
                }
            }
            Some((series, sop)) => {
                let path =
                    format!("/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered");
                if receiver.get(&path)?.is_some() {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(FIRST_POLL);
    }
    Err(receiver.failed("showed no instance of the shared study in time"))
}

/// Waits until the receiver lists `study` with all `instances`.
fn complete(
    receiver: &mut Served,
    study: &str,
    instances: u64,
    deadline: Instant,
) -> Result<(), String> {
    while Instant::now() < deadline {
        if let Ok(Some(s)) = receiver.guard.0.try_wait() {
            return Err(receiver.failed(&format!("exited during the transfer ({s})")));
        }
        if let Some(body) = receiver.get("/api/studies")? {
            let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            let done = v.as_array().is_some_and(|a| {
                a.iter().any(|s| {
                    s["study_instance_uid"] == study
                        && s["instance_count"].as_u64() == Some(instances)
                })
            });
            if done {
                return Ok(());
            }
        }
        std::thread::sleep(DONE_POLL);
    }
    Err(receiver.failed(&format!(
        "did not hold all {instances} instances within {TRANSFER_TIMEOUT:?}"
    )))
}

struct Setup<'a> {
    launcher: &'a Launcher,
    scratch: &'a Path,
    sender_home: &'a Path,
    study: &'a str,
    instances: u64,
    bytes: u64,
}

/// Creates a receiver's home; returns it and the receiver's PeerId.
fn fresh_receiver(s: &Setup<'_>, label: &str) -> Result<(std::path::PathBuf, String), String> {
    let home = s.scratch.join(format!("receiver-{label}"));
    let name = format!("bench-receiver-{label}");
    let init = s.launcher.cli(
        &home,
        &["init", "--name", &name, "--role", "doctor", "--json"],
    )?;
    let peer = init["peer_id"]
        .as_str()
        .ok_or("`init --json` printed no peer_id")?
        .to_owned();
    Ok((home, peer))
}

/// The receiver scans the sender's ticket.
fn pair(sender: &Served, receiver: &Served) -> Result<(), String> {
    let ticket = sender.control(&["pair", "new", "--json"])?;
    let ticket = ticket["ticket"]
        .as_str()
        .ok_or("`pair new --json` printed no ticket")?;
    receiver.control(&["pair", "accept", ticket, "--json"])?;
    Ok(())
}

fn node_run(s: &Setup<'_>, t: Transport) -> Result<NodeRun, String> {
    node_run_with(s, t.slug(), &t.serve_args(), &t.serve_args())
}

/// A fresh receiver pairs with the sender, both started with the given `serve` arguments, and
/// the sender shares the study: timed from the share until the receiver holds all of it.
fn node_run_with(
    s: &Setup<'_>,
    label: &str,
    sender_args: &[String],
    receiver_args: &[String],
) -> Result<NodeRun, String> {
    let (receiver_home, receiver_peer) = fresh_receiver(s, label)?;
    let sender = s
        .launcher
        .serve(s.sender_home, &format!("sender-{label}"), sender_args)?;
    let mut receiver =
        s.launcher
            .serve(&receiver_home, &format!("receiver-{label}"), receiver_args)?;
    pair(&sender, &receiver)?;
    let cpu0 = (cpu_seconds(sender.pid()), cpu_seconds(receiver.pid()));
    let start = Instant::now();
    let deadline = start + TRANSFER_TIMEOUT;
    sender.control(&["share", s.study, "--to", &receiver_peer, "--json"])?;
    first_viewable(&mut receiver, s.study, deadline)?;
    let first = start.elapsed().as_secs_f64();
    complete(&mut receiver, s.study, s.instances, deadline)?;
    let seconds = start.elapsed().as_secs_f64();
    let cpu1 = (cpu_seconds(sender.pid()), cpu_seconds(receiver.pid()));

    let mbytes = s.bytes as f64 / 1e6;
    let figures = |c0: Option<f64>, c1: Option<f64>, pid: u32| {
        let cpu = c0.zip(c1).map(|(a, b)| b - a);
        NodeFigures {
            cpu_s: cpu,
            cpu_s_per_mb: cpu.map(|c| c / mbytes),
            peak_rss_mb: peak_rss_mb(pid),
        }
    };
    let sender_f = figures(cpu0.0, cpu1.0, sender.pid());
    let receiver_f = figures(cpu0.1, cpu1.1, receiver.pid());
    drop((sender, receiver));
    let both = sender_f
        .cpu_s
        .zip(receiver_f.cpu_s)
        .map(|(a, b)| (a + b) / mbytes);
    Ok(NodeRun {
        seconds,
        mb_per_s: mb_per_s(s.bytes, seconds),
        first_viewable_ms: first * 1e3,
        sender: sender_f,
        receiver: receiver_f,
        cpu_s_per_mb: both,
    })
}

/// Runs the transfer benchmark on a generated CT of `slices` slices of `size`×`size`, with
/// `exe` (a `discless` binary) as the two nodes.
pub fn transfer(
    exe: &Path,
    slices: u32,
    size: u16,
    via_relay: bool,
) -> Result<TransferBench, String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let input = scratch.path().join("input");
    let (study, _) = super::generated_ct(&input, slices, size)?;
    let sender_home = scratch.path().join("sender");
    let input_s = input.display().to_string();
    let launcher = Launcher {
        exe: exe.to_path_buf(),
        logs: scratch.path().to_path_buf(),
        passphrase: PASSPHRASE.into(),
        log: None,
    };
    launcher.cli(
        &sender_home,
        &[
            "init",
            "--name",
            "bench-sender",
            "--role",
            "clinic",
            "--json",
        ],
    )?;
    let imported = launcher.cli(&sender_home, &["import", &input_s, "--json"])?;
    let instances = imported["imported"].as_u64().unwrap_or(0);
    if instances != u64::from(slices) {
        return Err(format!(
            "the sender imported {instances} of {slices} slices"
        ));
    }
    let bytes = super::dir_bytes(&Home::new(&sender_home).blobs());
    let setup = Setup {
        launcher: &launcher,
        scratch: scratch.path(),
        sender_home: &sender_home,
        study: &study.study_instance_uid,
        instances,
        bytes,
    };
    let mut measured = Vec::new();
    for t in [Transport::Tcp, Transport::Quic] {
        let bare = reference::best_of(REFERENCE_RUNS, bytes, |b| reference::libp2p_stream(t, b))?;
        let node = node_run(&setup, t)?;
        measured.push((t, node, bare));
    }
    let tokio_tcp = reference::best_of(REFERENCE_RUNS, bytes, reference::tokio_tcp)?;
    let transports: Vec<TransportRun> = measured
        .into_iter()
        .map(|(t, node, bare)| {
            let ratio = node.mb_per_s / bare.mb_per_s;
            let meets = Meets {
                ratio_to_bare_libp2p: ratio >= TARGET_RATIO_BARE,
                first_viewable: node.first_viewable_ms <= TARGET_FIRST_VIEWABLE_MS,
                rss: [&node.sender, &node.receiver]
                    .iter()
                    .all(|n| n.peak_rss_mb.is_some_and(|r| r < super::TARGET_RSS_MB)),
            };
            TransportRun {
                transport: t.name(),
                ratio_to_bare_libp2p: ratio,
                ratio_to_tokio_tcp: node.mb_per_s / tokio_tcp.mb_per_s,
                bare_libp2p_ratio_to_tokio_tcp: bare.mb_per_s / tokio_tcp.mb_per_s,
                node,
                bare_libp2p: bare,
                meets,
            }
        })
        .collect();
    let relay = match transports.first() {
        Some(direct) if via_relay => Some(relay::run(&setup, direct.node.mb_per_s)?),
        _ => None,
    };
    let meets_targets = transports
        .iter()
        .all(|r| r.meets.ratio_to_bare_libp2p && r.meets.first_viewable && r.meets.rss)
        && relay.as_ref().is_none_or(|r| r.meets_circuit_target);
    Ok(TransferBench {
        bench: "transfer",
        input: format!("generated CT, {slices} slices of {size}x{size}"),
        instances,
        bytes,
        reference_runs: REFERENCE_RUNS,
        transports,
        tokio_tcp,
        relay,
        targets: Targets {
            ratio_to_bare_libp2p: TARGET_RATIO_BARE,
            first_viewable_ms: TARGET_FIRST_VIEWABLE_MS,
            rss_mb: super::TARGET_RSS_MB,
        },
        meets_targets,
    })
}
