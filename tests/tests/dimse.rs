//! DICOM networking with real dcmtk programs: `serve --dimse` receiving from `echoscu` and
//! `storescu`, and `push` sending to `storescp`.
//!
//! dcmtk's storescu re-encodes what it sends, so what the node stores is compared with what
//! dcmtk's own storescp (`+B`, bit-preserving) receives from the same storescu command: the data
//! set bytes after the meta group must be identical, and so must the transfer syntax. Every
//! process started here is stopped by its PID when its guard drops, failure or not. Everything
//! talks to 127.0.0.1 only (storescp has no bind option; it is reached on loopback and killed
//! right after).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use discless_fixtures::{self as fx, Encoding, Patient, SeriesSpec, StudySpec};
use discless_tests::{corpus, require_tool, Node, Served};

const STORESCU: &str = "/usr/bin/storescu";
const STORESCP: &str = "/usr/bin/storescp";
const ECHOSCU: &str = "/usr/bin/echoscu";

/// A child process killed and reaped (by PID) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn wait_listening(port: u16, child: &mut Child) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(s) = child.try_wait()? {
            bail!("exited early: {s}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on {port}")
}

/// dcmtk's storescp writing bit-preserved files into `dir`, on a fresh port; `prefer` is the
/// storescp option that accepts (and prefers) the syntax under test, e.g. `+xr`.
fn storescp(dir: &Path, prefer: &str) -> Result<(Guard, u16)> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let child = Command::new(STORESCP)
        .env("TCP_NODELAY", "1")
        // Promiscuous: dcmtk 3.6.7's list of storage classes lacks some (e.g. SEG).
        .args(["-aet", "REFSCP", "+B", "-pm", prefer, "-od"])
        .arg(dir)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut g = Guard(child);
    wait_listening(port, &mut g.0)?;
    Ok((g, port))
}

/// A node serving DICOM (and HTTP) on fresh loopback ports; its DIMSE port.
fn serve_dimse(node: &Node, extra: &[&str]) -> Result<(Served, u16)> {
    let mut args = vec!["--dimse", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let served = node.serve(&args)?;
    let a: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.home().join("serve.json"))?)?;
    let port = a["dimse"]
        .as_str()
        .and_then(|s| s.parse::<SocketAddr>().ok())
        .context("serve.json has no DIMSE address")?
        .port();
    Ok((served, port))
}

fn storescu(calling: &str, called: &str, port: u16, opts: &[&str], input: &Path) -> Result<Output> {
    Ok(Command::new(STORESCU)
        .env("TCP_NODELAY", "1")
        .args(["-aet", calling, "-aec", called])
        .args(opts)
        // -R: propose only the SOP classes of the files, as a modality does (storescu's
        // default list of proposals leaves out e.g. SEG).
        .args(["-R", "+sd", "+r", "127.0.0.1"])
        .arg(port.to_string())
        .arg(input)
        .stdin(Stdio::null())
        .output()?)
}

fn ok(out: &Output, what: &str) -> Result<()> {
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A Part-10 file split into what matters: SOP Instance UID and transfer syntax from the meta
/// group, and the data set bytes after it.
struct Split {
    sop: String,
    ts: String,
    data_set: Vec<u8>,
}

fn split(bytes: &[u8]) -> Result<Split> {
    let mut pos = if bytes.get(128..132) == Some(b"DICM") {
        132
    } else {
        bail!("no DICM marker")
    };
    let (mut sop, mut ts) = (String::new(), String::new());
    while bytes.get(pos..pos + 2) == Some(&[2, 0]) {
        let h = bytes.get(pos..pos + 8).context("truncated meta")?;
        let elem = u16::from_le_bytes([h[2], h[3]]);
        let long = matches!(&h[4..6], b"OB" | b"UN" | b"SQ" | b"UT" | b"OW");
        let (len, hl) = if long {
            let l = bytes.get(pos + 8..pos + 12).context("truncated meta")?;
            (u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize, 12)
        } else {
            (u16::from_le_bytes([h[6], h[7]]) as usize, 8)
        };
        let v = bytes
            .get(pos + hl..pos + hl + len)
            .context("truncated meta")?;
        let text = String::from_utf8_lossy(v)
            .trim_end_matches(['\0', ' '])
            .to_owned();
        match elem {
            0x0003 => sop = text,
            0x0010 => ts = text,
            _ => {}
        }
        pos += hl + len;
    }
    Ok(Split {
        sop,
        ts,
        data_set: bytes[pos..].to_vec(),
    })
}

/// Every DICOM file under `dir`, by SOP Instance UID.
fn by_sop(dir: &Path) -> Result<BTreeMap<String, Split>> {
    let mut m = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir) {
        let e = e?;
        if !e.file_type().is_file() || e.file_name().eq_ignore_ascii_case("DICOMDIR") {
            continue;
        }
        let bytes = std::fs::read(e.path())?;
        if bytes.get(128..132) == Some(b"DICM") {
            let s = split(&bytes).with_context(|| e.path().display().to_string())?;
            m.insert(s.sop.clone(), s);
        }
    }
    Ok(m)
}

/// Exports every study of `node` into `out`.
fn export_all(node: &Node, out: &Path) -> Result<()> {
    for (i, s) in node.studies()?.iter().enumerate() {
        let uid = s["study_instance_uid"].as_str().context("study uid")?;
        let dir = out.join(format!("s{i}"));
        ok(
            &node.run(&["export", uid, &dir.display().to_string()])?,
            "export",
        )?;
    }
    Ok(())
}

/// Sends `input` with the same storescu options to dcmtk's storescp and to a fresh node, and
/// checks the node gives back exactly what storescp received. Returns how many instances.
fn round_trip(work: &Path, input: &Path, opts: &[&str]) -> Result<usize> {
    let node = Node::init("clinic")?;
    let reference = work.join("reference");
    {
        // storescu's "-xr" proposes RLE; storescp's "+xr" prefers it.
        let prefer = opts
            .iter()
            .find(|o| o.starts_with("-x"))
            .map_or("+xa".to_owned(), |o| o.replacen('-', "+", 1));
        let (_scp, port) = storescp(&reference, &prefer)?;
        ok(
            &storescu("MODALITY", "REFSCP", port, opts, input)?,
            "storescu → storescp",
        )?;
    }
    {
        let (mut served, port) = serve_dimse(&node, &[])?;
        ok(
            &storescu("MODALITY", "DISCLESS", port, opts, input)?,
            "storescu → node",
        )?;
        served.terminate()?;
    }
    let exported = work.join("exported");
    export_all(&node, &exported)?;
    let want = by_sop(&reference)?;
    let got = by_sop(&exported)?;
    ensure!(
        !want.is_empty(),
        "storescp received nothing from {}",
        input.display()
    );
    ensure!(
        want.keys().eq(got.keys()),
        "{opts:?}: the node has {} instances, storescp {}",
        got.len(),
        want.len()
    );
    for (sop, w) in &want {
        let g = &got[sop];
        ensure!(g.ts == w.ts, "{sop}: transfer syntax {} vs {}", g.ts, w.ts);
        ensure!(
            g.data_set == w.data_set,
            "{sop} ({}): the stored data set differs from what storescp received",
            w.ts
        );
    }
    Ok(want.len())
}

fn study(dir: &Path, seed: &str, slices: u32, encoding: Encoding) -> Result<()> {
    let spec = StudySpec {
        patient: Patient {
            name: format!("DIMSE^{seed}"),
            id: format!("DM-{seed}"),
            ..Patient::default()
        },
        study_instance_uid: fx::uid(&format!("tests/dimse/{seed}")),
        ..StudySpec::default()
    };
    let series = SeriesSpec {
        encoding,
        ..SeriesSpec::new(&spec.study_instance_uid, 1, "CT")
    };
    fx::ct_series(dir, &spec, &series, slices, 64, 64)?;
    fx::cr_image(
        dir,
        &spec,
        &SeriesSpec {
            encoding,
            ..SeriesSpec::new(&spec.study_instance_uid, 2, "CR")
        },
        96,
        80,
    )?;
    Ok(())
}

/// Rewrites every file under `src` into the same place under `dst` with a dcmtk converter (`tool [args] in out`).
fn convert(tool: &str, args: &[&str], src: &Path, dst: &Path) -> Result<()> {
    for e in walkdir::WalkDir::new(src) {
        let e = e?;
        if !e.file_type().is_file() {
            continue;
        }
        let out = dst.join(e.path().strip_prefix(src)?);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let o = Command::new(tool)
            .args(args)
            .arg(e.path())
            .arg(&out)
            .output()?;
        ok(&o, tool)?;
    }
    Ok(())
}

fn dcmtk() -> bool {
    require_tool(STORESCU).is_some() && require_tool(STORESCP).is_some()
}

#[test]
fn echoscu_is_answered() -> Result<()> {
    if require_tool(ECHOSCU).is_none() {
        return Ok(());
    }
    let node = Node::init("clinic")?;
    let (_served, port) = serve_dimse(&node, &["--ae-title", "CLINIC"])?;
    let out = Command::new(ECHOSCU)
        .env("TCP_NODELAY", "1")
        .args(["-aec", "CLINIC", "127.0.0.1", &port.to_string()])
        .output()?;
    ok(&out, "echoscu")
}

/// Generated fixtures in the transfer syntaxes dcmtk can make here, each sent with the storescu
/// option that proposes it.
#[test]
fn storescu_fixtures_arrive_as_sent_in_each_transfer_syntax() -> Result<()> {
    if !dcmtk() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let explicit = work.path().join("explicit");
    study(&explicit, "explicit", 4, Encoding::ExplicitVrLittleEndian)?;
    let mut cases: Vec<(PathBuf, Vec<&str>)> = vec![(explicit, vec![])];
    let implicit = work.path().join("implicit");
    study(&implicit, "implicit", 3, Encoding::ImplicitVrLittleEndian)?;
    cases.push((implicit, vec!["-xi"]));
    // Each compressed variant is its own study (same UIDs with other bytes would be refused
    // as conflicting, rightly).
    let variants: [(&str, &str, &[&str], &str); 4] = [
        ("rle", "/usr/bin/dcmcrle", &[], "-xr"),
        ("jpll", "/usr/bin/dcmcjpeg", &["+e1"], "-xs"),
        ("jls", "/usr/bin/dcmcjpls", &[], "-xt"),
        ("deflate", "/usr/bin/dcmconv", &["+td"], "-xd"),
    ];
    for (name, tool, args, opt) in variants {
        if require_tool(tool).is_none() {
            continue;
        }
        let plain = work.path().join(format!("{name}-plain"));
        study(&plain, name, 3, Encoding::ExplicitVrLittleEndian)?;
        let dst = work.path().join(name);
        convert(tool, args, &plain, &dst)?;
        cases.push((dst, vec![opt]));
    }
    for (i, (input, opts)) in cases.iter().enumerate() {
        let n = round_trip(&work.path().join(format!("case{i}")), input, opts)
            .with_context(|| format!("{} with {opts:?}", input.display()))?;
        ensure!(n >= 4, "{}: only {n} instances", input.display());
    }
    Ok(())
}

/// The shared corpus, when present: real files in several syntaxes, multi-frame, SEG, SR.
#[test]
fn storescu_corpus_arrives_as_sent() -> Result<()> {
    let Some(corpus) = corpus() else {
        eprintln!("SKIPPED: no ../shared/corpus");
        return Ok(());
    };
    if !dcmtk() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    for (sub, opts) in [
        ("wg04/REF", vec![]),
        ("wg04/RLE", vec!["-xr"]),
        ("wg04/JPLL", vec!["-xs"]),
        // Only the DICOM files (the folder holds a licence text too).
        ("dcmqi", vec!["+sp", "*.dcm"]),
    ] {
        let input = corpus.join(sub);
        if !input.is_dir() {
            continue;
        }
        round_trip(&work.path().join(sub.replace('/', "-")), &input, &opts)
            .with_context(|| format!("corpus {sub} with {opts:?}"))?;
    }
    Ok(())
}

#[test]
fn two_storescu_runs_at_once_both_complete() -> Result<()> {
    if !dcmtk() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    study(&a, "concurrent-a", 20, Encoding::ExplicitVrLittleEndian)?;
    study(&b, "concurrent-b", 20, Encoding::ImplicitVrLittleEndian)?;
    let node = Node::init("clinic")?;
    let (_served, port) = serve_dimse(&node, &[])?;
    let run = |dir: PathBuf, aet: &'static str| {
        std::thread::spawn(move || storescu(aet, "DISCLESS", port, &[], &dir))
    };
    let (ta, tb) = (run(a, "CT_A"), run(b, "CT_B"));
    let oa = ta.join().map_err(|_| anyhow::anyhow!("thread"))??;
    let ob = tb.join().map_err(|_| anyhow::anyhow!("thread"))??;
    ok(&oa, "storescu A")?;
    ok(&ob, "storescu B")?;
    let studies = node.studies()?;
    ensure!(studies.len() == 2, "{} studies", studies.len());
    for s in &studies {
        ensure!(s["instance_count"] == 21, "study {s}");
    }
    // Both associations are in the audit log.
    let audit = node.json(&["audit", "--json"])?.to_string();
    ensure!(
        audit.contains("CT_A") && audit.contains("CT_B"),
        "audit: {audit}"
    );
    Ok(())
}

#[test]
fn unknown_calling_ae_is_rejected_and_nothing_stored() -> Result<()> {
    if !dcmtk() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let input = work.path().join("in");
    study(&input, "refused", 2, Encoding::ExplicitVrLittleEndian)?;
    let node = Node::init("clinic")?;
    let (_served, port) = serve_dimse(
        &node,
        &["--allow-ae", "CT01@127.0.0.1", "--allow-ae", "PACS"],
    )?;
    let refused = storescu("INTRUDER", "DISCLESS", port, &[], &input)?;
    ensure!(
        !refused.status.success(),
        "an unknown calling AE was accepted"
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    ensure!(text.contains("Rejected"), "storescu said: {text}");
    ensure!(node.studies()?.is_empty(), "something was stored");
    // The allowed one gets in (so the refusal above is the allow list, not a broken SCP).
    ok(
        &storescu("CT01", "DISCLESS", port, &[], &input)?,
        "allowed storescu",
    )?;
    ensure!(node.studies()?.len() == 1);
    Ok(())
}

#[test]
fn garbage_on_the_port_does_not_disturb_a_good_association() -> Result<()> {
    if !dcmtk() || require_tool(ECHOSCU).is_none() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let input = work.path().join("in");
    study(&input, "garbage", 30, Encoding::ExplicitVrLittleEndian)?;
    let node = Node::init("clinic")?;
    let (_served, port) = serve_dimse(&node, &[])?;
    let good = std::thread::spawn(move || storescu("CT01", "DISCLESS", port, &[], &input));
    // Noise, a PDU claiming 4 GB, and a connection left open mid-PDU, while it runs.
    for junk in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x01],
        (0..70_000u32).map(|i| (i * 7919 % 251) as u8).collect(),
    ] {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        let _ = s.write_all(&junk);
    }
    let mut held = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    held.write_all(&[0x01, 0x00, 0x00, 0x00, 0x01, 0x00])?;
    ok(
        &good.join().map_err(|_| anyhow::anyhow!("thread"))??,
        "storescu beside garbage",
    )?;
    let echo = Command::new(ECHOSCU)
        .args(["-aec", "DISCLESS", "127.0.0.1", &port.to_string()])
        .output()?;
    ok(&echo, "echoscu after garbage")?;
    drop(held);
    let studies = node.studies()?;
    ensure!(studies.len() == 1 && studies[0]["instance_count"] == 31);
    Ok(())
}

/// `push` (through a running `serve`) to dcmtk's storescp: every data set arrives as stored,
/// in its own transfer syntax; then with storescp accepting only implicit VR, the explicit
/// instances are re-encoded and still arrive.
#[test]
fn push_to_storescp_delivers_the_original_datasets() -> Result<()> {
    if !dcmtk() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let input = work.path().join("in");
    study(&input, "push", 5, Encoding::ExplicitVrLittleEndian)?;
    let rle = work.path().join("rle");
    if require_tool("/usr/bin/dcmcrle").is_some() {
        // Same study, another series, compressed: pushed in its own syntax.
        let plain = work.path().join("rle-plain");
        let spec = StudySpec {
            study_instance_uid: fx::uid("tests/dimse/push"),
            ..StudySpec::default()
        };
        fx::ct_series(
            &plain,
            &spec,
            &SeriesSpec::new(&spec.study_instance_uid, 3, "CT RLE"),
            2,
            64,
            64,
        )?;
        convert("/usr/bin/dcmcrle", &[], &plain, &rle)?;
    }
    let node = Node::init("doctor")?;
    let (code, report) = node.import(&[&input, &rle])?;
    ensure!(code == 0, "import: {report}");
    let original = by_sop(&input)?
        .into_iter()
        .chain(by_sop(&rle).unwrap_or_default())
        .collect::<BTreeMap<_, _>>();
    let studies = node.studies()?;
    ensure!(studies.len() == 1, "{} studies", studies.len());
    let uid = studies[0]["study_instance_uid"]
        .as_str()
        .context("uid")?
        .to_owned();

    let _served = node.serve(&[])?;
    let received = work.path().join("received");
    {
        let (_scp, port) = storescp(&received, "+xa")?;
        let out = node.run(&[
            "push",
            &uid,
            "--to",
            &format!("REFSCP@127.0.0.1:{port}"),
            "--calling-ae",
            "DOCTOR",
            "--json",
        ])?;
        ok(&out, "push")?;
        let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ensure!(r["failed"] == 0 && r["sent"] == original.len(), "push: {r}");
    }
    let got = by_sop(&received)?;
    ensure!(
        got.keys().eq(original.keys()),
        "storescp got {} of {}",
        got.len(),
        original.len()
    );
    for (sop, o) in &original {
        let g = &got[sop];
        ensure!(
            g.ts == o.ts && g.data_set == o.data_set,
            "{sop}: pushed data set differs"
        );
    }

    // A peer that takes implicit VR only: uncompressed instances are re-encoded, the RLE ones
    // cannot be and fail, and the exit code says so.
    let implicit_only = work.path().join("implicit-only");
    std::fs::create_dir_all(&implicit_only)?;
    let port = free_port()?;
    let child = Command::new(STORESCP)
        .args(["-aet", "IMPLSCP", "+xi", "-od"])
        .arg(&implicit_only)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut g = Guard(child);
    wait_listening(port, &mut g.0)?;
    let out = node.run(&[
        "push",
        &uid,
        "--to",
        &format!("IMPLSCP@127.0.0.1:{port}"),
        "--json",
    ])?;
    drop(g);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    let rle_count = by_sop(&rle).map(|m| m.len()).unwrap_or(0);
    ensure!(
        r["sent"] == original.len() - rle_count,
        "implicit-only push: {r}"
    );
    ensure!(
        out.status.code() == Some(if rle_count > 0 { 1 } else { 0 }),
        "exit {:?}",
        out.status
    );
    let received = by_sop(&implicit_only)?;
    ensure!(
        received.values().all(|s| s.ts == "1.2.840.10008.1.2"),
        "not implicit VR"
    );
    ensure!(received.len() == original.len() - rle_count);
    Ok(())
}
