//! `bench dimse`: C-STORE ingest of a generated 512x512 CT, sent by dcmtk's `storescu` in one
//! association, into this node (decrypt-free path: parse, seal, commit) and into dcmtk's
//! `storescp` writing plain files, in the same run, each `--runs` times (interleaved) with the
//! best time kept. Five runs by default: on this shared machine kind single runs of either side
//! scattered by 2×, and the ratio with them.
//!
//! Both listen on fresh ports and are reached on 127.0.0.1 only. dcmtk gets `TCP_NODELAY=1`, or
//! Nagle adds ~40 ms per message. dcmtk 3.6.7's storescp has no option to bind one address, so
//! while it runs it listens on all of them; it is stopped by its PID right after.
//!
//! Debian's Orthanc (when installed and this runs as root) is measured the same way, in a network
//! namespace of its own ([`Orthanc`]) with `storescu` started in there too. Otherwise the result
//! says why there is no Orthanc figure.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::orthanc::{self, Netns, Orthanc};
use crate::dimse::{self, AllowList};
use crate::keystore::Role;

const STORESCU: &str = "/usr/bin/storescu";
const STORESCP: &str = "/usr/bin/storescp";
/// Targets from the DIMSE issue.
const TARGET_RATIO_STORESCP: f64 = 0.5;
const TARGET_RATIO_ORTHANC: f64 = 1.5;
/// Runs of each side, by default.
pub const RUNS: usize = 5;

#[derive(Debug, Serialize)]
pub struct Receiver {
    pub seconds: f64,
    pub instances_per_s: f64,
    pub mb_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct DimseBench {
    pub bench: &'static str,
    pub input: String,
    pub instances: u64,
    pub bytes: u64,
    pub runs: usize,
    pub node: Receiver,
    pub storescp: Receiver,
    pub ratio_to_storescp: f64,
    pub orthanc: Option<Receiver>,
    /// Node's rate over Orthanc's, when Orthanc was measured.
    pub ratio_to_orthanc: Option<f64>,
    pub orthanc_note: Option<String>,
    pub target_ratio_storescp: f64,
    pub target_ratio_orthanc: f64,
    pub meets_targets: bool,
}

use super::orthanc::Guard;

fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn wait_listening(port: u16, child: &mut Child) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(s)) = child.try_wait() {
            return Err(format!("the receiver exited early: {s}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on port {port} after 20 s"))
}

/// Runs storescu on `dir` to `aec@127.0.0.1:port` in one association (inside `netns` if
/// given); its wall time.
fn storescu(dir: &Path, aec: &str, port: u16, netns: Option<&Netns>) -> Result<f64, String> {
    let start = Instant::now();
    let mut cmd = match netns {
        Some(ns) => ns.command(STORESCU),
        None => Command::new(STORESCU),
    };
    let out = cmd
        .env("TCP_NODELAY", "1")
        .args(["-aet", "BENCHSCU", "-aec", aec, "+sd", "+r", "127.0.0.1"])
        .arg(port.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {STORESCU}: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "storescu failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(secs)
}

fn into_node(dir: &Path, scratch: &Path, run: usize, expected: u64) -> Result<f64, String> {
    let store = super::bench_store(&scratch.join(format!("home{run}")), Role::Clinic)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let handle = rt
        .block_on(dimse::spawn(
            store.clone(),
            dimse::Config {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                ae_title: "DISCLESS".into(),
                allow: AllowList::default(),
            },
        ))
        .map_err(|e| e.to_string())?;
    let secs = storescu(dir, "DISCLESS", handle.addr.port(), None);
    rt.block_on(handle.shutdown());
    let secs = secs?;
    let stored: u64 = store
        .studies()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|s| s.instance_count)
        .sum();
    if stored != expected {
        return Err(format!("the node stored {stored} of {expected} instances"));
    }
    Ok(secs)
}

fn into_storescp(dir: &Path, scratch: &Path, run: usize, expected: u64) -> Result<f64, String> {
    let out = scratch.join(format!("storescp{run}"));
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let port = free_port()?;
    let child = Command::new(STORESCP)
        .env("TCP_NODELAY", "1")
        .args(["-aet", "STORESCP", "-od"])
        .arg(&out)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {STORESCP}: {e}"))?;
    let mut guard = Guard(child);
    wait_listening(port, &mut guard.0)?;
    let secs = storescu(dir, "STORESCP", port, None)?;
    drop(guard);
    let files = std::fs::read_dir(&out).map_err(|e| e.to_string())?.count() as u64;
    if files != expected {
        return Err(format!("storescp wrote {files} of {expected} files"));
    }
    Ok(secs)
}

fn into_orthanc(dir: &Path, scratch: &Path, run: usize, expected: u64) -> Result<f64, String> {
    let orthanc = Orthanc::start(&scratch.join(format!("orthanc{run}")), false)?;
    let secs = storescu(
        dir,
        orthanc::AET,
        orthanc::DICOM_PORT,
        Some(orthanc.netns()),
    )?;
    let stored = orthanc.stored_files();
    drop(orthanc);
    if stored < expected {
        return Err(format!("Orthanc stored {stored} of {expected} instances"));
    }
    Ok(secs)
}

fn figures(secs: f64, instances: u64, bytes: u64) -> Receiver {
    Receiver {
        seconds: secs,
        instances_per_s: instances as f64 / secs.max(1e-9),
        mb_per_s: bytes as f64 / 1e6 / secs.max(1e-9),
    }
}

pub fn dimse(slices: u32, runs: usize) -> Result<DimseBench, String> {
    let runs = runs.max(1);
    for tool in [STORESCU, STORESCP] {
        if !Path::new(tool).is_file() {
            return Err(format!("{tool} is missing: install Debian's dcmtk"));
        }
    }
    let scratch = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let input = scratch.path().join("input");
    super::generated_ct(&input, slices, 512)?;
    let (mut instances, mut bytes) = (0u64, 0u64);
    for e in walkdir::WalkDir::new(&input)
        .into_iter()
        .filter_map(Result::ok)
    {
        if e.file_type().is_file() {
            instances += 1;
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    let orthanc_note = orthanc::missing(false);
    let (mut node, mut scp, mut orthanc) = (f64::MAX, f64::MAX, f64::MAX);
    for run in 0..runs {
        scp = scp.min(into_storescp(&input, scratch.path(), run, instances)?);
        node = node.min(into_node(&input, scratch.path(), run, instances)?);
        if orthanc_note.is_none() {
            orthanc = orthanc.min(into_orthanc(&input, scratch.path(), run, instances)?);
        }
    }
    let ratio = scp / node;
    let ratio_orthanc = (orthanc_note.is_none()).then(|| orthanc / node);
    Ok(DimseBench {
        bench: "dimse",
        input: format!("generated CT, {slices} slices of 512x512, one association"),
        instances,
        bytes,
        runs,
        node: figures(node, instances, bytes),
        storescp: figures(scp, instances, bytes),
        ratio_to_storescp: ratio,
        orthanc: ratio_orthanc.map(|_| figures(orthanc, instances, bytes)),
        ratio_to_orthanc: ratio_orthanc,
        orthanc_note,
        target_ratio_storescp: TARGET_RATIO_STORESCP,
        target_ratio_orthanc: TARGET_RATIO_ORTHANC,
        meets_targets: ratio >= TARGET_RATIO_STORESCP
            && ratio_orthanc.is_none_or(|r| r >= TARGET_RATIO_ORTHANC),
    })
}
