//! Harness for Discless end-to-end tests: real binaries, real files, temp homes, no network.
//!
//! * [`bin`] finds (or builds once) the `discless` binary of this workspace;
//! * [`Node`] is one node home with its passphrase, driving the binary;
//! * [`require_tool`] finds a third-party program, skipping a test with a notice when it is
//!   missing, except under `CI=true`, where a missing tool fails the test (the test command
//!   installs them);
//! * [`corpus`] is `../shared/corpus` when present.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The `discless` binary next to the running test executable (target/<profile>/discless),
/// built on first use if it is not there yet.
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built("discless", "discless")).clone()
}

/// The `discless-relay` binary, built like [`bin`].
pub fn relay_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built("discless-relay", "discless-relay"))
        .clone()
}

fn built(package: &str, name: &str) -> PathBuf {
    {
        let exe = std::env::current_exe().unwrap_or_default();
        // target/<profile>/deps/<test> → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let candidate = profile_dir.join(name);
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(workspace_root())
            .args(["build", "-q", "-p", package, "--bin", name]);
        // Cargo gives this test process CARGO_MANIFEST_DIR, CARGO_PKG_* and the like. Build
        // scripts (ring, aws-lc-sys) watch some of those names with rerun-if-env-changed, so
        // passing them on would rebuild half of libp2p for every test binary.
        const KEEP: [&str; 9] = [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_",
            "CARGO_TERM_",
            "CARGO_INCREMENTAL",
            "CARGO_PROFILE_",
            "CARGO_REGISTRIES_",
            "CARGO_NET_",
            "CARGO_HTTP_",
        ];
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_") && !KEEP.iter().any(|p| k.starts_with(p)) {
                cmd.env_remove(k.as_ref());
            }
        }
        if release {
            cmd.arg("--release");
        }
        // The features the library under test has, or cargo would rebuild the binary without
        // them (and the end-to-end tests would run another build than the unit tests).
        if package == "discless" && !discless::FEATURES.is_empty() {
            cmd.args(["--features", &discless::FEATURES.join(",")]);
        }
        // Always ask cargo: it is a no-op when the binary is fresh, and it keeps a stale
        // binary from being tested after a library change.
        let status = cmd
            .status()
            .expect("running cargo build for the binary under test");
        assert!(status.success(), "building {name} failed");
        assert!(candidate.is_file(), "no binary at {}", candidate.display());
        candidate
    }
}

/// `../shared/corpus` (or `DISCLESS_CORPUS`) when it exists.
pub fn corpus() -> Option<PathBuf> {
    let p = std::env::var_os("DISCLESS_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/corpus"));
    p.is_dir().then_some(p)
}

/// A third-party tool at `path`: `Some` when present; `None` (with a notice) when absent
/// outside CI; a panic when absent under `CI=true`.
pub fn require_tool(path: &str) -> Option<PathBuf> {
    let p = PathBuf::from(path);
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{path} is required under CI=true; the test command installs it (see README)");
    }
    eprintln!("SKIPPED: {path} is not installed (run the README's test command to install it)");
    None
}

/// One node: a temporary home and its passphrase.
#[derive(Debug)]
pub struct Node {
    pub dir: tempfile::TempDir,
    pub passphrase: String,
    /// The network namespace its commands run in ([`Lab`]); the host's when None.
    pub netns: Option<String>,
}

impl Node {
    /// A fresh, initialised node.
    pub fn init(role: &str) -> Result<Self> {
        Self::init_named(role, &format!("test {role}"))
    }

    /// A fresh node with a display name of its own.
    pub fn init_named(role: &str, name: &str) -> Result<Self> {
        let n = Self::uninitialised()?;
        let out = n.run(&["init", "--name", name, "--role", role])?;
        if !out.status.success() {
            bail!("init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(n)
    }

    /// A node directory with no keystore yet.
    pub fn uninitialised() -> Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
            passphrase: "correct horse battery staple".into(),
            netns: None,
        })
    }

    /// From now on its commands (and its server) run inside network namespace `ns`.
    pub fn in_netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_owned());
        self
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// A `discless` command for this node (home and passphrase in the environment).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        c.args(args)
            .env("DISCLESS_HOME", self.home())
            .env("DISCLESS_PASSPHRASE", &self.passphrase)
            .env_remove("DISCLESS_LOG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.cmd(args)
            .output()
            .with_context(|| format!("running discless {args:?}"))
    }

    /// Runs a command that must succeed (exit 0) and returns its stdout parsed as JSON.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "discless {args:?} exited {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "stdout of {args:?} is not JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Imports paths with `--json`, returning (exit code, report).
    pub fn import(&self, paths: &[&Path]) -> Result<(i32, serde_json::Value)> {
        let mut args: Vec<String> = vec!["import".into(), "--json".into()];
        args.extend(paths.iter().map(|p| p.display().to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(&refs)?;
        let v = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "import output is not JSON; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((out.status.code().unwrap_or(-1), v))
    }

    /// Starts `discless serve` on a free loopback port and waits until it answers.
    pub fn serve(&self, extra: &[&str]) -> Result<Served> {
        self.serve_with_env(extra, &[])
    }

    /// `serve` on loopback only (HTTP and peer-to-peer, random ports, no mDNS), with extra
    /// arguments and environment variables.
    pub fn serve_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Result<Served> {
        let announcement = self.home().join("serve.json");
        let _ = std::fs::remove_file(&announcement);
        let mut args = vec!["serve", "--http", "127.0.0.1:0"];
        if !extra.contains(&"--p2p") && !extra.contains(&"--no-listen") {
            args.extend_from_slice(&[
                "--p2p",
                "/ip4/127.0.0.1/tcp/0",
                "--p2p",
                "/ip4/127.0.0.1/udp/0/quic-v1",
            ]);
        }
        if !extra.contains(&"--no-mdns") {
            args.push("--no-mdns");
        }
        args.extend_from_slice(extra);
        let mut cmd = self.cmd(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        let mut served = Served {
            child,
            url: String::new(),
            token: String::new(),
        };
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(60) {
            if let Ok(b) = std::fs::read(&announcement) {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                    served.url = v["url"].as_str().unwrap_or_default().to_owned();
                    served.token = v["token"].as_str().unwrap_or_default().to_owned();
                    return Ok(served);
                }
            }
            if let Some(status) = served.child.try_wait()? {
                bail!("discless serve exited early with {status}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        bail!("discless serve did not start within 60 s")
    }

    /// GET `path` on this home's running server, when one answers (None otherwise).
    ///
    /// Tests poll through this rather than the CLI: every CLI run derives the passphrase key
    /// (Argon2, 64 MiB), and a few tests polling that way at once starve a 2-core machine.
    pub fn api(&self, path: &str) -> Option<serde_json::Value> {
        // Its loopback is not ours.
        if self.netns.is_some() {
            return None;
        }
        let a: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.home().join("serve.json")).ok()?).ok()?;
        let url = a["url"].as_str()?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .into();
        let mut resp = agent.get(format!("{url}{path}")).call().ok()?;
        resp.body_mut().read_json().ok()
    }

    /// The studies it holds: from its server's API when it is served, else `studies --json`.
    pub fn studies(&self) -> Result<Vec<serde_json::Value>> {
        let v = match self.api("/api/studies") {
            Some(v) => v,
            None => self.json(&["studies", "--json"])?,
        };
        match v {
            serde_json::Value::Array(a) => Ok(a),
            other => bail!("studies --json gave {other}"),
        }
    }

    /// Exports `study` (plain files) and hashes what came out: compare with
    /// [`content_hashes`] of the folder it was imported from.
    pub fn export_hashes(&self, study: &str) -> Result<BTreeMap<String, usize>> {
        let out = tempfile::tempdir()?;
        let dest = out.path().join("x");
        let o = self.run(&["export", study, &dest.display().to_string()])?;
        ensure!(
            o.status.success(),
            "export failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        content_hashes(&dest)
    }

    /// Whether it holds `study` with exactly `instances` instances.
    pub fn has_study(&self, study: &str, instances: u64) -> Result<bool> {
        Ok(self.studies()?.iter().any(|s| {
            s["study_instance_uid"] == study && s["instance_count"].as_u64() == Some(instances)
        }))
    }

    /// Its transfers, both directions: from its server's API when served, else the CLI.
    pub fn transfers(&self) -> Result<Vec<serde_json::Value>> {
        let v = match self.api("/api/transfers") {
            Some(v) => v,
            None => self.json(&["transfers", "--json"])?,
        };
        match v {
            serde_json::Value::Array(a) => Ok(a),
            other => bail!("transfers --json gave {other}"),
        }
    }
}

/// BLAKE3 of every file under `dir` (recursively), as a multiset: hash → count.
pub fn content_hashes(dir: &Path) -> Result<BTreeMap<String, usize>> {
    let mut m = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir) {
        let e = e?;
        if e.file_type().is_file() {
            let h = blake3::hash(&std::fs::read(e.path())?).to_hex().to_string();
            *m.entry(h).or_insert(0) += 1;
        }
    }
    Ok(m)
}

/// Hashes of the DICOM files under `dir` (files with "DICM" at 128 that are not DICOMDIRs),
/// as a set: the expected content of an exported store.
pub fn dicom_hashes(dir: &Path) -> Result<std::collections::BTreeSet<String>> {
    let mut s = std::collections::BTreeSet::new();
    for e in walkdir::WalkDir::new(dir) {
        let e = e?;
        if !e.file_type().is_file() || e.file_name().eq_ignore_ascii_case("DICOMDIR") {
            continue;
        }
        let bytes = std::fs::read(e.path())?;
        if bytes.get(128..132) == Some(b"DICM") {
            s.insert(blake3::hash(&bytes).to_hex().to_string());
        }
    }
    Ok(s)
}

/// Whether `needle` occurs anywhere in the file.
pub fn file_contains(path: &Path, needle: &[u8]) -> Result<bool> {
    let bytes = std::fs::read(path)?;
    Ok(!needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle))
}

/// A running `discless serve`, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Served {
    pub child: std::process::Child,
    pub url: String,
    pub token: String,
}

impl Served {
    /// Asks the server to stop as Ctrl-C would, and waits for its exit status.
    /// Kills the server with SIGKILL, as a crash or a pulled battery would, and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(30) {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.child.kill()?;
        bail!("serve did not stop within 30 s of SIGTERM")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.terminate();
        }
    }
}

/// A Python interpreter with `dicomweb-client` importable: `Some` when available; `None` with a
/// notice outside CI; a panic under `CI=true` (the test command installs it).
pub fn python_with(module: &str) -> Option<PathBuf> {
    for py in ["python3", "python"] {
        let ok = Command::new(py)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(PathBuf::from(py));
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("Python module {module} is required under CI=true; the test command installs it");
    }
    eprintln!("SKIPPED: Python module {module} is not installed");
    None
}

/// A `discless-relay serve` process on loopback, stopped (by PID) when dropped.
#[derive(Debug)]
pub struct Relay {
    pub child: std::process::Child,
    pub data: PathBuf,
    /// The addresses it printed, each ending in `/p2p/<relay>`.
    pub addrs: Vec<String>,
    pub metrics: String,
    /// The network namespace it runs in; the host's when None.
    pub netns: Option<String>,
}

impl Relay {
    /// Starts a relay admitting `allow` (written to an allow file in `data`), listening on
    /// `listen` (e.g. `/ip4/127.0.0.1/tcp/0`), with extra environment variables.
    pub fn start(data: &Path, listen: &str, allow: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::start_with(data, listen, allow, &[], env)
    }

    /// [`Relay::start`] with extra `discless-relay serve` arguments (quotas, TTL…).
    pub fn start_with(
        data: &Path,
        listen: &str,
        allow: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_in(None, data, listen, allow, args, env)
    }

    /// [`Relay::start_with`] inside network namespace `netns`.
    pub fn start_in(
        netns: Option<&str>,
        data: &Path,
        listen: &str,
        allow: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        use std::io::BufRead;
        std::fs::create_dir_all(data)?;
        let allow_file = data.join("allow.txt");
        std::fs::write(&allow_file, allow.join("\n"))?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(relay_bin());
                c
            }
            None => Command::new(relay_bin()),
        };
        cmd.args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .arg("--allow-file")
            .arg(&allow_file)
            .args(["--metrics", "127.0.0.1:0"])
            .args(args)
            .env_remove("DISCLESS_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().context("relay stdout")?;
        let mut relay = Relay {
            child,
            data: data.to_path_buf(),
            addrs: Vec::new(),
            metrics: String::new(),
            netns: netns.map(str::to_owned),
        };
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line?;
            let t = line.trim();
            if t.starts_with('/') {
                relay.addrs.push(t.to_owned());
            } else if let Some(m) = t.strip_prefix("Metrics: ") {
                relay.metrics = m.to_owned();
            } else if t.starts_with("Press Ctrl-C") {
                return Ok(relay);
            }
        }
        bail!("discless-relay exited before it was ready")
    }

    /// The relay's TCP address (with `/p2p/<relay>`).
    pub fn tcp_addr(&self) -> Result<String> {
        self.addrs
            .iter()
            .find(|a| a.contains("/tcp/"))
            .cloned()
            .context("relay has no TCP address")
    }

    /// One value from its Prometheus metrics (0 when the series is absent).
    pub fn metric(&self, name: &str) -> Result<f64> {
        let text = match &self.netns {
            // Its metrics listen on its namespace's loopback: ask from inside.
            Some(ns) => {
                let out = Command::new("ip")
                    .args(["netns", "exec", ns, "python3", "-c"])
                    .arg("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")
                    .arg(&self.metrics)
                    .output()?;
                ensure!(
                    out.status.success(),
                    "metrics in {ns}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout)?
            }
            None => {
                let mut resp = ureq::get(&self.metrics).call()?;
                ensure!(
                    resp.status() == 200,
                    "metrics endpoint answered {}",
                    resp.status()
                );
                resp.body_mut().read_to_string()?
            }
        };
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum())
    }

    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `ready` until it answers true, failing after `limit` with what was awaited.
pub fn wait_for(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if ready()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

/// A loopback TCP proxy that records every byte it carries, both directions: what a network
/// observer between a node and its relay would see.
#[derive(Debug)]
pub struct TapProxy {
    pub port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TapProxy {
    /// Forwards connections on a fresh loopback port to `target` (`host:port`), carrying at most
    /// `bytes_per_s` in each direction of each connection when given (a slow uplink).
    pub fn start(target: std::net::SocketAddr, bytes_per_s: Option<u64>) -> Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let seen = seen2.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            if let Ok(mut s) = seen.lock() {
                                s.extend_from_slice(&buf[..n]);
                            }
                            if let Some(rate) = bytes_per_s.filter(|r| *r > 0) {
                                std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Ok(Self { port, seen, stop })
    }

    /// Every byte carried so far.
    pub fn seen(&self) -> Vec<u8> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for TapProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Network namespaces a test made: a "wan" that routes between two hosts, each behind a stateful
/// firewall that drops every inbound connection the host did not start (as a home router or a
/// hospital's firewall does). The hosts reach each other only through what runs in the wan (a
/// relay), unless they punch a hole: both dial at once, so each firewall sees the other's
/// packets as answers. Everything is removed on drop.
#[derive(Debug)]
pub struct Lab {
    pub wan: String,
    pub a: String,
    pub b: String,
}

impl Lab {
    /// The wan's address on host A's link (where a relay in the wan listens).
    pub const WAN: &'static str = "10.77.1.1";
    pub const A: &'static str = "10.77.1.2";
    pub const B: &'static str = "10.77.2.2";

    /// Builds the namespaces; None (with a SKIPPED line) when this is not root, which CI
    /// (`CI=true`) does not accept.
    pub fn firewalled_hosts() -> Result<Option<Self>> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        if !root {
            ensure!(
                std::env::var("CI").as_deref() != Ok("true"),
                "network namespaces need root, and CI=true does not allow skipping"
            );
            eprintln!("SKIPPED: network namespaces need root");
            return Ok(None);
        }
        for tool in ["/usr/sbin/ip", "/usr/sbin/nft"] {
            if require_tool(tool).is_none() {
                return Ok(None);
            }
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "dl{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let lab = Self {
            wan: format!("{id}w"),
            a: format!("{id}a"),
            b: format!("{id}b"),
        };
        lab.build()?;
        Ok(Some(lab))
    }

    fn build(&self) -> Result<()> {
        let (w, a, b) = (self.wan.as_str(), self.a.as_str(), self.b.as_str());
        for ns in [w, a, b] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        for (host, wan_if, wan_ip, host_ip) in [
            (a, "ea", "10.77.1.1/24", "10.77.1.2/24"),
            (b, "eb", "10.77.2.1/24", "10.77.2.2/24"),
        ] {
            ip(&[
                "link", "add", "eth0", "netns", host, "type", "veth", "peer", "name", wan_if,
                "netns", w,
            ])?;
            ip(&["-n", host, "addr", "add", host_ip, "dev", "eth0"])?;
            ip(&["-n", host, "link", "set", "eth0", "up"])?;
            ip(&["-n", w, "addr", "add", wan_ip, "dev", wan_if])?;
            ip(&["-n", w, "link", "set", wan_if, "up"])?;
            let gw = wan_ip.split('/').next().unwrap_or_default();
            ip(&["-n", host, "route", "add", "default", "via", gw])?;
            let fw = "table inet fw {\n chain input {\n  type filter hook input priority 0; policy drop;\n  ct state established,related accept\n  iif \"lo\" accept\n }\n}\n";
            let mut nft = Command::new("ip")
                .args(["netns", "exec", host, "nft", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()?;
            use std::io::Write as _;
            nft.stdin
                .take()
                .context("nft stdin")?
                .write_all(fw.as_bytes())?;
            ensure!(nft.wait()?.success(), "nft rules in {host} failed");
        }
        let out = Command::new("ip")
            .args(["netns", "exec", w, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .output()?;
        ensure!(
            out.status.success(),
            "forwarding in {w}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Whether a plain TCP connection from namespace `from` to `host:port` is accepted within
    /// 3 s (python3's socket, the simplest client present everywhere here).
    pub fn tcp_connects(&self, from: &str, host: &str, port: u16) -> Result<bool> {
        let out = Command::new("ip")
            .args(["netns", "exec", from, "python3", "-c"])
            .arg("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n    print('yes')\nexcept OSError:\n    print('no')")
            .args([host, &port.to_string()])
            .output()?;
        ensure!(
            out.status.success(),
            "probe from {from}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout.starts_with(b"yes"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b, &self.wan] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
