//! `discless bench`: measurements printed as JSON, each with a reference measured in the same
//! run, because these machines are shared and noisy and only ratios travel well.
//!
//! `bench import` imports a generated 512x512 CT series (or a given folder) into a fresh
//! temporary home and compares import throughput with raw XChaCha20-Poly1305 sealing of the same
//! number of bytes on one core (the floor cost of encrypting at all). Peak RSS is the process's
//! high-water mark, reset (`/proc/self/clear_refs`) after the fixtures are generated and the
//! keystore is created, so it counts the import alone.
//!
//! `bench transfer` (in [`transfer`]) shares a study between two node processes and compares
//! it with a bare libp2p stream and a plain TCP copy of the same bytes.

mod dimse;
mod orthanc;
mod transfer;

pub use self::dimse::{dimse, DimseBench, RUNS as DIMSE_RUNS};
pub use self::transfer::{transfer, TransferBench};

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::crypto::{blob, SecretKey};
use crate::dicom::import;
use crate::home::Home;
use crate::keystore::{self, Role};
use crate::store::{InstanceRecord, Store};

/// Targets from the store issue: import at ≥ 40% of raw sealing, RSS under 200 MB.
const TARGET_RATIO: f64 = 0.4;
const TARGET_RSS_MB: f64 = 200.0;
/// Runs of `bench import`, by default: single runs here scattered 0.32-0.48x raw sealing.
pub const IMPORT_RUNS: usize = 3;

#[derive(Debug, Serialize)]
pub struct ImportBench {
    pub bench: &'static str,
    pub input: String,
    pub instances: u64,
    pub bytes: u64,
    pub workers: usize,
    /// Imports measured; `seconds` and the references are the best of them.
    pub runs: usize,
    pub seconds: f64,
    pub instances_per_s: f64,
    pub import_mb_per_s: f64,
    pub raw_seal_mb_per_s: f64,
    pub ratio_to_raw_seal: f64,
    /// Writing the same number of bytes as plain files (1 MiB each) and syncing them: the disk.
    pub plain_write_sync_mb_per_s: f64,
    pub ratio_to_plain_write_sync: f64,
    pub peak_rss_mb: Option<f64>,
    pub target_ratio: f64,
    pub target_rss_mb: f64,
    pub meets_targets: bool,
}

fn mb(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

/// Peak resident set size of this process, in MB, from `/proc/self/status` (Linux).
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0 / 1e6)
}

/// Resets the peak RSS counter so the next measurement counts only what follows.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Raw XChaCha20-Poly1305 throughput (MB/s) on one core, sealing 1 MiB chunks in place over at
/// least `bytes` bytes: the AEAD alone, no hashing, no I/O.
pub fn raw_seal_mb_per_s(bytes: u64) -> f64 {
    use chacha20poly1305::aead::AeadInOut;
    let cipher = SecretKey::generate().cipher();
    let mut buf: Vec<u8> = Vec::with_capacity(blob::CHUNK_SIZE as usize + 16);
    let want = bytes.max(64 << 20);
    let start = Instant::now();
    let mut done = 0u64;
    while done < want {
        buf.clear();
        buf.resize(blob::CHUNK_SIZE as usize, (done & 0xff) as u8);
        let nonce = crate::crypto::random_nonce();
        let _ = cipher.encrypt_in_place(&nonce, b"bench", &mut buf);
        done += u64::from(blob::CHUNK_SIZE);
    }
    mb(done, start.elapsed().as_secs_f64())
}

/// Plain-file write throughput (MB/s): `bytes` written as 1 MiB files in `dir`, then synced.
pub fn plain_write_sync_mb_per_s(dir: &Path, bytes: u64) -> Result<f64, String> {
    use std::io::Write;
    let err = |e: std::io::Error| format!("plain write reference: {e}");
    std::fs::create_dir_all(dir).map_err(err)?;
    let chunk: Vec<u8> = (0..1usize << 20).map(|i| (i * 13) as u8).collect();
    let start = Instant::now();
    let mut done = 0u64;
    let mut n = 0;
    while done < bytes {
        let mut f = std::fs::File::create(dir.join(format!("{n}.bin"))).map_err(err)?;
        f.write_all(&chunk).map_err(err)?;
        done += chunk.len() as u64;
        n += 1;
    }
    #[cfg(target_os = "linux")]
    rustix::fs::syncfs(std::fs::File::open(dir).map_err(err)?).map_err(|e| err(e.into()))?;
    Ok(mb(done, start.elapsed().as_secs_f64()))
}

/// The benchmarks' input: a generated CT series of `slices` slices of `size`×`size` in `dir`.
fn generated_ct(
    dir: &Path,
    slices: u32,
    size: u16,
) -> Result<(discless_fixtures::StudySpec, discless_fixtures::SeriesSpec), String> {
    let study = discless_fixtures::StudySpec::default();
    let series = discless_fixtures::SeriesSpec::new(&study.study_instance_uid, 1, "BENCH CT");
    discless_fixtures::ct_series(dir, &study, &series, slices, size, size)
        .map_err(|e| format!("generating the CT series: {e}"))?;
    Ok((study, series))
}

/// A fresh store in `dir`, for a benchmark.
fn bench_store(dir: &Path, role: Role) -> Result<Store, String> {
    let home = Home::new(dir.to_path_buf());
    let keys = keystore::create(&home.keystore(), b"bench passphrase", "bench", role)
        .map_err(|e| e.to_string())?;
    Store::open(&home, keys).map_err(|e| e.to_string())
}

/// Runs the import benchmark.
pub fn import(
    input: Option<&Path>,
    slices: u32,
    workers: usize,
    runs: usize,
) -> Result<ImportBench, String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let (src, label) = match input {
        Some(p) => (p.to_path_buf(), p.display().to_string()),
        None => {
            let dir = scratch.path().join("input");
            generated_ct(&dir, slices, 512)?;
            (dir, format!("generated CT, {slices} slices of 512x512"))
        }
    };
    // Every run imports into a home of its own, and the homes stay until the end: deleting
    // one makes the next run's file creation slower (ext4 without a journal scans past
    // recently deleted inodes), which would charge the import for the bench's own cleanup.
    let runs = runs.max(1);
    let (mut seconds, mut raw, mut plain, mut peak) = (f64::MAX, 0f64, 0f64, None::<f64>);
    let mut report = None;
    for run in 0..runs {
        let store = bench_store(&scratch.path().join(format!("home-{run}")), Role::Clinic)?;
        reset_peak_rss();
        let start = Instant::now();
        let r = import::import(&store, std::slice::from_ref(&src), workers, &|_| {})
            .map_err(|e| e.to_string())?;
        seconds = seconds.min(start.elapsed().as_secs_f64());
        // The highest peak of any run whose peak could be read.
        peak = peak.into_iter().chain(peak_rss_mb()).reduce(f64::max);
        if !r.rejected.is_empty() {
            return Err(format!("{} input files were rejected", r.rejected.len()));
        }
        raw = raw.max(raw_seal_mb_per_s(r.bytes));
        let plain_dir = scratch.path().join(format!("plain-{run}"));
        plain = plain.max(plain_write_sync_mb_per_s(&plain_dir, r.bytes)?);
        report = Some(r);
    }
    let report = report.ok_or("no run")?;
    let import_mbs = mb(report.bytes, seconds);
    let ratio = import_mbs / raw;
    Ok(ImportBench {
        bench: "import",
        input: label,
        instances: report.imported,
        bytes: report.bytes,
        workers,
        runs,
        seconds,
        instances_per_s: report.imported as f64 / seconds.max(1e-9),
        import_mb_per_s: import_mbs,
        raw_seal_mb_per_s: raw,
        ratio_to_raw_seal: ratio,
        plain_write_sync_mb_per_s: plain,
        ratio_to_plain_write_sync: import_mbs / plain,
        peak_rss_mb: peak,
        target_ratio: TARGET_RATIO,
        target_rss_mb: TARGET_RSS_MB,
        meets_targets: ratio >= TARGET_RATIO && peak.is_some_and(|p| p < TARGET_RSS_MB),
    })
}

/// One storage backend's figures in [`blobs`].
#[derive(Debug, Serialize)]
pub struct BackendFigures {
    pub backend: &'static str,
    pub mb_per_s: f64,
    pub disk_bytes: u64,
    pub disk_ratio: f64,
    pub peak_rss_mb: Option<f64>,
}

/// `bench blobs`: where sealed blob bytes should live, measured: 1 MiB values in sled against
/// plain files with one `syncfs`, same bytes, same process, one after the other (files first,
/// so that sled's retained heap does not count against them).
#[derive(Debug, Serialize)]
pub struct BlobsBench {
    pub bench: &'static str,
    pub bytes: u64,
    pub sled: BackendFigures,
    pub files: BackendFigures,
    pub files_speedup: f64,
}

fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Runs the blob-backend comparison over `mib` MiB.
pub fn blobs(mib: u64) -> Result<BlobsBench, String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bytes = mib << 20;
    let chunk: Vec<u8> = (0..1usize << 20).map(|i| (i * 31 + 7) as u8).collect();

    reset_peak_rss();
    let files_dir = scratch.path().join("files");
    let files_mbs = plain_write_sync_mb_per_s(&files_dir, bytes)?;
    let files_rss = peak_rss_mb();
    let files_disk = dir_bytes(&files_dir);
    reset_peak_rss();
    let sled_dir = scratch.path().join("sled");
    let start = Instant::now();
    {
        let db = sled::open(&sled_dir).map_err(|e| e.to_string())?;
        for i in 0..mib {
            db.insert(i.to_be_bytes(), chunk.as_slice())
                .map_err(|e| e.to_string())?;
        }
        db.flush().map_err(|e| e.to_string())?;
    }
    let sled_s = start.elapsed().as_secs_f64();
    let sled_rss = peak_rss_mb();
    let sled_disk = dir_bytes(&sled_dir);

    let sled_mbs = mb(bytes, sled_s);
    Ok(BlobsBench {
        bench: "blobs",
        bytes,
        sled: BackendFigures {
            backend: "sled 0.34, 1 MiB values, flush",
            mb_per_s: sled_mbs,
            disk_bytes: sled_disk,
            disk_ratio: sled_disk as f64 / bytes as f64,
            peak_rss_mb: sled_rss,
        },
        files: BackendFigures {
            backend: "plain files of 1 MiB, syncfs",
            mb_per_s: files_mbs,
            disk_bytes: files_disk,
            disk_ratio: files_disk as f64 / bytes as f64,
            peak_rss_mb: files_rss,
        },
        files_speedup: files_mbs / sled_mbs,
    })
}

/// Latency summary in milliseconds.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Latency {
    pub n: usize,
    pub median_ms: f64,
    pub p95_ms: f64,
}

fn latency(mut v: Vec<f64>) -> Latency {
    v.sort_by(f64::total_cmp);
    Latency {
        n: v.len(),
        median_ms: quantile(&v, 0.5),
        p95_ms: quantile(&v, 0.95),
    }
}

/// The `q` quantile (nearest rank) of `sorted`; 0 when it is empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// `bench serve` figures.
#[derive(Debug, Serialize)]
pub struct ServeBench {
    pub bench: &'static str,
    pub input: String,
    pub instances: u64,
    pub study_bytes: u64,
    /// Ours, at the top level of the JSON.
    #[serde(flatten)]
    pub node: ServeFigures,
    /// The same figures for Orthanc + its DICOMweb plugin on the same study, when measured.
    pub orthanc: Option<ServeFigures>,
    /// Why there is no Orthanc figure, if there is none.
    pub orthanc_note: Option<String>,
    /// Orthanc's median over ours (above 1: we are faster).
    pub speedup_rendered_png: Option<f64>,
    pub speedup_rendered_jpeg: Option<f64>,
    pub speedup_rendered_png_again: Option<f64>,
    pub speedup_rendered_jpeg_again: Option<f64>,
    pub speedup_series_metadata: Option<f64>,
    pub target_speedup: f64,
    pub target_first_image_ms: f64,
}

/// What one DICOMweb server scores on one study.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ServeFigures {
    pub first_image_ms: f64,
    /// Frames asked for the first time.
    pub rendered_png: Latency,
    pub rendered_jpeg: Latency,
    /// Frames asked for again, in the other format, right after.
    pub rendered_png_again: Latency,
    pub rendered_jpeg_again: Latency,
    /// The median of 3 whole-study retrievals.
    pub wado_study_mb_per_s: f64,
    pub qido_study_search: Latency,
    pub series_metadata: Latency,
}

/// The study a [`measure`] run asks for.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ServeTarget {
    pub study: String,
    pub series: String,
    pub instances: Vec<String>,
}

/// Measures the DICOMweb server at `base` (…/dicomweb or …/dicom-web) on `t`: the first rendered
/// frame (cold), rendered PNG and JPEG frames, whole-study WADO-RS, QIDO by UID, series metadata.
pub fn measure(base: &str, t: &ServeTarget) -> Result<ServeFigures, String> {
    let (st, se) = (&t.study, &t.series);
    let frame_url =
        |sop: &str| format!("{base}/studies/{st}/series/{se}/instances/{sop}/frames/1/rendered");
    let mid = t
        .instances
        .get(t.instances.len() / 2)
        .ok_or("no instances to measure")?;
    // One agent, so connections are kept alive as a browser keeps them (a use-once agent
    // would add a TCP handshake to every figure, on both servers).
    let agent = ureq::Agent::new_with_defaults();
    let (first, _) = get(&agent, &frame_url(mid), "image/png")?;
    // Each frame is asked for twice, as a viewer does (a PNG and a JPEG, or another window):
    // first cold, then again. Half the frames start with the PNG and half with the JPEG, so
    // that each format has cold and repeated figures; both servers keep recent instances in
    // memory (Orthanc its storage cache, the node its plaintext cache).
    let (mut png, mut jpeg, mut png_again, mut jpeg_again) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, i) in t.instances.iter().take(200).enumerate() {
        let url = format!("{}?window=40,400,linear", frame_url(i));
        if n % 2 == 0 {
            png.push(get(&agent, &url, "image/png")?.0);
            jpeg_again.push(get(&agent, &url, "image/jpeg")?.0);
        } else {
            jpeg.push(get(&agent, &url, "image/jpeg")?.0);
            png_again.push(get(&agent, &url, "image/png")?.0);
        }
    }
    // One retrieval scattered by half between runs: the median of three.
    let mut wado = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let (_, n) = get(
            &agent,
            &format!("{base}/studies/{st}"),
            "multipart/related; type=\"application/dicom\"",
        )?;
        wado.push(mb(n, start.elapsed().as_secs_f64()));
    }
    wado.sort_by(f64::total_cmp);
    let wado = quantile(&wado, 0.5);
    let mut qido = Vec::new();
    for _ in 0..50 {
        qido.push(
            get(
                &agent,
                &format!("{base}/studies?StudyInstanceUID={st}"),
                "application/dicom+json",
            )?
            .0,
        );
    }
    let mut meta = Vec::new();
    for _ in 0..10 {
        meta.push(
            get(
                &agent,
                &format!("{base}/studies/{st}/series/{se}/metadata"),
                "application/dicom+json",
            )?
            .0,
        );
    }
    Ok(ServeFigures {
        first_image_ms: first,
        rendered_png: latency(png),
        rendered_jpeg: latency(jpeg),
        rendered_png_again: latency(png_again),
        rendered_jpeg_again: latency(jpeg_again),
        wado_study_mb_per_s: wado,
        qido_study_search: latency(qido),
        series_metadata: latency(meta),
    })
}

/// Loads the study in `dir` into an Orthanc of its own and measures it from inside its namespace
/// by running this program's hidden `bench serve --measure` there.
fn serve_orthanc(
    exe: &Path,
    scratch: &Path,
    dir: &Path,
    target: &ServeTarget,
) -> Result<ServeFigures, String> {
    let o = orthanc::Orthanc::start(&scratch.join("orthanc"), true)?;
    let mut storescu = o.netns().command("/usr/bin/storescu");
    storescu
        .env("TCP_NODELAY", "1")
        .args([
            "-aet",
            "BENCHSCU",
            "-aec",
            orthanc::AET,
            "+sd",
            "+r",
            "127.0.0.1",
        ])
        .arg(orthanc::DICOM_PORT.to_string())
        .arg(dir)
        .stdin(std::process::Stdio::null());
    run_ok(storescu, "storescu into Orthanc")?;
    let target_file = scratch.join("orthanc-target.json");
    std::fs::write(
        &target_file,
        serde_json::to_vec(target).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut measure = o.netns().command(&exe.display().to_string());
    measure
        .args(["bench", "serve", "--measure"])
        .arg(format!("http://127.0.0.1:{}/dicom-web", orthanc::HTTP_PORT))
        .arg("--target")
        .arg(&target_file)
        .env_remove("DISCLESS_LOG")
        .stdin(std::process::Stdio::null());
    let out = run_ok(measure, "measuring Orthanc")?;
    serde_json::from_slice(&out.stdout).map_err(|e| format!("measuring Orthanc: {e}"))
}

/// Runs `cmd` to completion; its output when it exited 0, else `what` and its stderr.
fn run_ok(mut cmd: std::process::Command, what: &str) -> Result<std::process::Output, String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn get(agent: &ureq::Agent, url: &str, accept: &str) -> Result<(f64, u64), String> {
    let t = Instant::now();
    let mut r = agent
        .get(url)
        .header("Accept", accept)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let mut sink = std::io::sink();
    let n = std::io::copy(&mut r.body_mut().as_reader(), &mut sink).map_err(|e| e.to_string())?;
    Ok((t.elapsed().as_secs_f64() * 1e3, n))
}

/// Runs the serving benchmark on a generated CT of `slices` 512x512 slices, against this node
/// and, where it can run, Orthanc (`exe` is this program, run inside Orthanc's namespace).
pub fn serve(exe: &Path, slices: u32) -> Result<ServeBench, String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let dir = scratch.path().join("input");
    let (study, series) = generated_ct(&dir, slices, 512)?;
    let store = bench_store(&scratch.path().join("home"), Role::Doctor)?;
    let report = import::import(&store, std::slice::from_ref(&dir), 2, &|_| {})
        .map_err(|e| e.to_string())?;
    let instances = store
        .instances(&study.study_instance_uid)
        .map_err(|e| e.to_string())?;
    let target = ServeTarget {
        study: study.study_instance_uid.clone(),
        series: series.series_instance_uid.clone(),
        instances: instances
            .iter()
            .map(|i: &InstanceRecord| i.sop_instance_uid.clone())
            .collect(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let cfg = crate::http::Config {
        net: None,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        cors_origins: Vec::new(),
    };
    let handle = rt
        .block_on(crate::http::spawn(store.clone(), cfg, "bench".into()))
        .map_err(|e| e.to_string())?;
    let ours = measure(&format!("http://{}/dicomweb", handle.addr), &target);
    let _ = rt.block_on(handle.shutdown());
    let ours = ours?;
    let mut orthanc_note = orthanc::missing(true);
    let theirs = match orthanc_note {
        Some(_) => None,
        None => match serve_orthanc(exe, scratch.path(), &dir, &target) {
            Ok(f) => Some(f),
            Err(e) => {
                orthanc_note = Some(e);
                None
            }
        },
    };
    let speedup = |f: fn(&ServeFigures) -> f64| theirs.as_ref().map(|t| f(t) / f(&ours).max(1e-9));
    Ok(ServeBench {
        bench: "serve",
        input: format!("generated CT, {slices} slices of 512x512"),
        instances: report.imported,
        study_bytes: report.bytes,
        speedup_rendered_png: speedup(|f| f.rendered_png.median_ms),
        speedup_rendered_jpeg: speedup(|f| f.rendered_jpeg.median_ms),
        speedup_rendered_png_again: speedup(|f| f.rendered_png_again.median_ms),
        speedup_rendered_jpeg_again: speedup(|f| f.rendered_jpeg_again.median_ms),
        speedup_series_metadata: speedup(|f| f.series_metadata.median_ms),
        node: ours,
        orthanc: theirs,
        orthanc_note,
        target_speedup: 2.0,
        target_first_image_ms: 150.0,
    })
}
