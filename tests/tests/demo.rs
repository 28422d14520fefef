//! `discless demo --check`: the README's main job, run as a user would, end to end.

use std::process::Command;

use anyhow::{ensure, Result};
use discless_tests::bin;

/// Every step the journey prints, in order.
const STEPS: &[&str] = &[
    "three nodes get their keys",
    "the clinic's relay starts",
    "the clinic and the phone come online",
    "a modality produces a CT series and a radiograph",
    "the modality sends them by C-STORE",
    "the clinic shows a QR bound to the patient",
    "the phone scans it; both show the same code",
    "the patient's studies reach the phone",
    "the doctor hands out a QR, then goes offline",
    "the phone scans it: the request waits at the relay",
    "the phone shares the CT: it waits at the relay",
    "the doctor comes online: paired, CT arrives",
    "the phone learns the doctor has it",
    "the doctor exports DICOM files + DICOMDIR",
    "every data set is what the modality sent",
];

fn demo(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(bin())
        .arg("demo")
        .args(args)
        .env_remove("DISCLESS_HOME")
        .env_remove("DISCLESS_PASSPHRASE")
        .output()?)
}

#[test]
fn the_demo_check_walks_the_whole_journey_and_stops_everything() -> Result<()> {
    let keep = tempfile::tempdir()?;
    let k = keep.path().display().to_string();
    let out = demo(&["--check", "--keep", &k])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "demo --check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let mut at = 0;
    for step in STEPS {
        let found = stdout[at..].find(&format!("✓ {step}"));
        ensure!(
            found.is_some(),
            "step {step:?} missing or out of order:\n{stdout}"
        );
        at += found.unwrap_or(0);
    }
    ensure!(
        stdout.contains("60 of 60 instances, BLAKE3 equal"),
        "{stdout}"
    );
    // Every node it started was stopped cleanly: a node removes its announcement on shutdown.
    for node in ["clinic", "patient", "doctor"] {
        let a = keep.path().join(node).join("serve.json");
        ensure!(
            !a.exists(),
            "the {node} node was left running ({})",
            a.display()
        );
    }
    // The doctor's copy was written as a CD would be.
    ensure!(keep.path().join("doctor-export/DICOMDIR").is_file());
    Ok(())
}

#[test]
fn a_demo_that_cannot_start_names_the_step_and_exits_non_zero() -> Result<()> {
    // Something else already listens on the port the relay is told to use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = busy.local_addr()?.port().to_string();
    let out = demo(&["--check", "--slices", "2", "--port-base", &port])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "the demo claimed success on a busy port"
    );
    ensure!(
        stderr.contains("the clinic's relay starts"),
        "the error does not name the step: {stderr}"
    );
    Ok(())
}
