//! Nodes run as their own processes of this binary, for the demo and the benchmarks.
//!
//! Separate processes are what a clinic runs, and they let a benchmark read each node's CPU
//! time and RSS from `/proc/<pid>`. Every child is stopped by its PID and reaped when its guard
//! drops, whatever happened meanwhile. Output goes to files, so a chatty child can never block
//! on a full pipe, and a failure quotes the end of the child's log.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::remote::{Frame, RunRequest};
use crate::home::{Home, ENV_HOME, ENV_LOG, ENV_PASSPHRASE};

/// Starting a node hashes its passphrase (Argon2, 64 MiB) and opens its store: seconds at most.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds one CLI command; the slowest (a share with `--wait`) moves a study.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a node gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run this binary on a home: which executable, where logs go, which passphrase.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub exe: PathBuf,
    pub logs: PathBuf,
    pub passphrase: String,
    /// The children's log filter (`DISCLESS_LOG`); None keeps them quiet.
    pub log: Option<String>,
}

impl Launcher {
    fn command(&self, home: &Path) -> Command {
        let mut c = Command::new(&self.exe);
        c.env(ENV_HOME, home).env(ENV_PASSPHRASE, &self.passphrase);
        match &self.log {
            Some(filter) => c.env(ENV_LOG, filter),
            None => c.env_remove(ENV_LOG),
        };
        c
            // Test hooks that would corrupt or slow what is being shown or measured.
            .env_remove(crate::net::TEST_CORRUPT_ENV)
            .env_remove(crate::net::TEST_SEND_DELAY_ENV)
            .stdin(Stdio::null());
        c
    }

    /// Runs `discless ARGS` on `home` as its own process (for commands before `serve`) and
    /// returns its JSON output; `args` must ask for JSON.
    pub fn cli(&self, home: &Path, args: &[&str]) -> Result<Value, String> {
        let what = args.first().copied().unwrap_or("discless");
        let n = std::process::id();
        let out_path = self.logs.join(format!("{what}-{n}.out"));
        let err_path = self.logs.join(format!("{what}-{n}.err"));
        let file = |p: &Path| File::create(p).map_err(|e| format!("{}: {e}", p.display()));
        let child = self
            .command(home)
            .args(args)
            .stdout(file(&out_path)?)
            .stderr(file(&err_path)?)
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.exe.display()))?;
        let mut guard = Guard(child);
        let start = Instant::now();
        let status = loop {
            if let Some(s) = guard.0.try_wait().map_err(|e| e.to_string())? {
                break s;
            }
            if start.elapsed() > CLI_TIMEOUT {
                return Err(format!(
                    "`discless {what}` did not finish in {CLI_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let out = std::fs::read_to_string(&out_path).unwrap_or_default();
        if !status.success() {
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            return Err(format!(
                "`discless {what}` failed ({status}): {}",
                err.trim()
            ));
        }
        serde_json::from_str(&out).map_err(|e| format!("`discless {what}` printed no JSON: {e}"))
    }

    /// Starts `discless serve ARGS` on `home` and waits for its announcement; `label` names its
    /// log file (`serve-<label>.log`).
    pub fn serve(&self, home: &Path, label: &str, args: &[String]) -> Result<Served, String> {
        let announcement = crate::http::Announcement::path(&Home::new(home));
        let _ = std::fs::remove_file(&announcement);
        let log = self.logs.join(format!("serve-{label}.log"));
        let stderr = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = self
            .command(home)
            .arg("serve")
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("starting {} serve: {e}", self.exe.display()))?;
        let mut node = Served {
            guard: Guard(child),
            url: String::new(),
            token: String::new(),
            dimse: None,
            log,
            cwd: self.logs.clone(),
        };
        let start = Instant::now();
        while start.elapsed() < START_TIMEOUT {
            if let Ok(b) = std::fs::read(&announcement) {
                if let Ok(a) = serde_json::from_slice::<crate::http::Announcement>(&b) {
                    node.url = a.url;
                    node.token = a.token;
                    node.dimse = a.dimse;
                    return Ok(node);
                }
            }
            if let Ok(Some(s)) = node.guard.0.try_wait() {
                return Err(node.failed(&format!("exited at start ({s})")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(node.failed(&format!("did not start within {START_TIMEOUT:?}")))
    }
}

/// A child process killed by its PID and reaped when dropped.
#[derive(Debug)]
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A running `discless serve`.
#[derive(Debug)]
pub struct Served {
    pub guard: Guard,
    pub url: String,
    pub token: String,
    /// Its DICOM listener, when it runs one.
    pub dimse: Option<String>,
    pub log: PathBuf,
    cwd: PathBuf,
}

impl Served {
    pub fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    /// Whether it has exited, as an error naming it.
    pub fn check_alive(&mut self, during: &str) -> Result<(), String> {
        match self.guard.0.try_wait() {
            Ok(Some(s)) => Err(self.failed(&format!("exited {during} ({s})"))),
            _ => Ok(()),
        }
    }

    /// An error naming this node and quoting the end of its log.
    pub fn failed(&self, what: &str) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "the node at {} {what}; its log ({}) ends: {}",
            self.url,
            self.log.display(),
            tail.join(" | ")
        )
    }

    /// Runs a CLI command inside this server through its control API, as `discless` does when
    /// it finds the home served, and returns its JSON output.
    pub fn control(&self, args: &[&str]) -> Result<Value, String> {
        let what = args.first().copied().unwrap_or("command");
        let req = RunRequest {
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            cwd: self.cwd.clone(),
        };
        let resp = agent(CLI_TIMEOUT)
            .post(format!("{}/api/control/run", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(&req)
            .map_err(|e| self.failed(&format!("refused `{what}`: {e}")))?;
        let mut out = String::new();
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        for line in std::io::BufRead::lines(reader) {
            let line = line.map_err(|e| self.failed(&format!("broke off `{what}`: {e}")))?;
            match serde_json::from_str::<Frame>(&line) {
                Ok(Frame::Out { out: o }) => out.push_str(&o),
                Ok(Frame::End { code: 0, .. }) => {
                    return serde_json::from_str(&out)
                        .map_err(|e| format!("`{what}` printed no JSON: {e}"))
                }
                Ok(Frame::End { error, .. }) => {
                    return Err(
                        self.failed(&format!("failed `{what}`: {}", error.unwrap_or_default()))
                    )
                }
                Err(e) => return Err(format!("`{what}`: unexpected answer: {e}")),
            }
        }
        Err(self.failed(&format!("ended `{what}` without a result")))
    }

    /// GET `path` on this node's HTTP server: `Ok(None)` for any non-success answer.
    pub fn get(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
        match agent(Duration::from_secs(10))
            .get(format!("{}{path}", self.url))
            .call()
        {
            Ok(mut r) => r
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()
                .map(Some)
                .map_err(|e| self.failed(&format!("answered GET {path} badly: {e}"))),
            Err(ureq::Error::StatusCode(_)) => Ok(None),
            Err(e) => Err(self.failed(&format!("did not answer GET {path}: {e}"))),
        }
    }

    /// Stops it as Ctrl-C would (SIGTERM, so it closes its store cleanly), killing it if it
    /// has not stopped in time.
    pub fn stop(mut self) -> Result<(), String> {
        if let Ok(Some(_)) = self.guard.0.try_wait() {
            return Ok(());
        }
        let pid = rustix::process::Pid::from_child(&self.guard.0);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .map_err(|e| self.failed(&format!("could not be signalled: {e}")))?;
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = self.guard.0.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(self.failed(&format!("did not stop within {STOP_TIMEOUT:?} of SIGTERM")))
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into()
}
