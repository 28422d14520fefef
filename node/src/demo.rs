//! `discless demo`: the whole journey on one machine, with real processes on loopback.
//!
//! A clinic's relay runs in this process; the clinic, the patient's phone and the doctor are
//! each a `discless serve` process of this binary on its own temporary home, talking over real
//! sockets:
//!
//! 1. the relay, the clinic (with a DICOM listener) and the phone start;
//! 2. a modality sends a CT series and a chest radiograph to the clinic by C-STORE;
//! 3. the clinic shows a pairing QR bound to the patient; the phone accepts it and both studies
//!    reach the phone;
//! 4. the doctor's node shows its QR and the phone pairs with it; the doctor's node goes
//!    offline; the phone shares the CT, which waits, encrypted, in the relay's mailbox; the
//!    doctor's node starts again and receives it;
//! 5. the doctor takes the CT out as DICOM files + DICOMDIR, and every data set is compared with
//!    what the modality sent.
//!
//! Each step prints what happened and how long it took. Without `--check` the nodes stay up
//! (their web UIs are printed) until Ctrl-C; then every process is stopped by its PID and the
//! temporary homes are removed. `--check` exits non-zero unless every step worked.

mod journey;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The demo failed at a step.
#[derive(Debug, thiserror::Error)]
#[error("demo step \"{step}\" failed: {reason}")]
pub struct DemoError {
    pub step: String,
    pub reason: String,
}

/// What `discless demo` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// CT slices to generate.
    pub slices: u32,
    /// Keep homes and files here instead of in a temporary folder removed at the end.
    pub keep: Option<PathBuf>,
    /// First of eight consecutive TCP ports to use; 0 lets the system pick free ones.
    pub port_base: u16,
    /// Run straight through and exit; do not wait for Ctrl-C.
    pub check: bool,
    /// This binary, started for each node.
    pub exe: PathBuf,
}

/// Which port each part listens on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    base: u16,
}

impl Ports {
    pub(crate) const RELAY: u16 = 0;
    pub(crate) const CLINIC_HTTP: u16 = 1;
    pub(crate) const PATIENT_HTTP: u16 = 2;
    pub(crate) const DOCTOR_HTTP: u16 = 3;
    pub(crate) const CLINIC_DICOM: u16 = 4;
    pub(crate) const CLINIC_P2P: u16 = 5;
    pub(crate) const PATIENT_P2P: u16 = 6;
    pub(crate) const DOCTOR_P2P: u16 = 7;

    /// The port for slot `n`, or 0 (any free port) when no base was given.
    pub(crate) fn port(self, n: u16) -> u16 {
        if self.base == 0 {
            0
        } else {
            self.base.saturating_add(n)
        }
    }
}

/// Prints each step with its duration, and stops waiting when Ctrl-C was pressed.
pub(crate) struct Steps {
    interrupted: Arc<AtomicBool>,
}

impl Steps {
    pub(crate) fn step<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&Self) -> Result<(T, String), String>,
    ) -> Result<T, DemoError> {
        let t = Instant::now();
        let (v, said) = f(self).map_err(|reason| DemoError {
            step: what.to_owned(),
            reason,
        })?;
        println!(
            "  ✓ {what:<52} {:>7.1} s   {said}",
            t.elapsed().as_secs_f64()
        );
        Ok(v)
    }

    /// Polls `ready` until it answers true, for at most `limit`.
    pub(crate) fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        mut ready: impl FnMut() -> Result<bool, String>,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if self.interrupted.load(Ordering::Relaxed) {
                return Err("interrupted".into());
            }
            if ready()? {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(format!("{what}: not within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Runs the demo.
pub fn run(opts: &Options) -> Result<(), DemoError> {
    let setup = |reason: String| DemoError {
        step: "prepare".into(),
        reason,
    };
    let tmp;
    let root: &Path = match &opts.keep {
        Some(p) => {
            std::fs::create_dir_all(p).map_err(|e| setup(format!("{}: {e}", p.display())))?;
            p
        }
        None => {
            tmp = tempfile::tempdir().map_err(|e| setup(format!("temporary folder: {e}")))?;
            tmp.path()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| setup(format!("async runtime: {e}")))?;
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        });
    }
    println!("Discless demo in {}", root.display());
    let mut steps = Steps {
        interrupted: interrupted.clone(),
    };
    let ports = Ports {
        base: opts.port_base,
    };
    let started = Instant::now();
    let cast = journey::run(&rt, &mut steps, opts, root, ports)?;
    println!(
        "All steps worked in {:.1} s: the doctor's CT is what the modality sent, byte for byte.",
        started.elapsed().as_secs_f64()
    );
    if !opts.check {
        cast.print_urls();
        println!("Everything stays up until you press Ctrl-C.");
        while !interrupted.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("Stopping…");
    }
    cast.stop(&rt);
    if opts.keep.is_none() {
        println!("Removed the demo's temporary homes.");
    }
    Ok(())
}
