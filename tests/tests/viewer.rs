//! The web viewer in real headless Chromium (Debian's, driven by playwright-core), against a real
//! `discless serve`: phone and desktop, slice scrolling, window/level, pixels equal to the
//! server's own rendering, a length measurement in mm; and the peer-to-peer pages across two
//! real nodes: pair by pasting the ticket, the same code on both screens, share, watch the
//! transfer complete, revoke. Screenshots go to `target/browser-screenshots/`.

use std::path::PathBuf;

use anyhow::Result;
use discless_fixtures::{self as fx, SeriesSpec, StudySpec};
use discless_tests::{require_tool, workspace_root, Node};

/// `path` when `present`; otherwise None to skip the test, or a failure under `CI=true`, where
/// tests/run.sh must have installed `what`.
fn installed(path: PathBuf, present: bool, what: &str) -> Option<PathBuf> {
    if present {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing under CI=true: tests/run.sh installs it");
    }
    eprintln!("SKIPPED: {what} is missing (tests/run.sh installs it)");
    None
}

fn browser_ready() -> Option<PathBuf> {
    require_tool("/usr/bin/chromium")?;
    let dir = workspace_root().join("tests/browser");
    let present = dir.join("node_modules/playwright-core").is_dir();
    installed(dir, present, "tests/browser/node_modules (`npm ci`)")
}

/// OHIF Viewer v3's built `dist/` (npm `@ohif/app`, fetched by tests/run.sh), or None to skip.
fn ohif_dist(browser_dir: &std::path::Path) -> Option<PathBuf> {
    let dist = browser_dir.join("ohif/dist");
    let present = dist.join("index.html").is_file();
    installed(dist, present, "tests/browser/ohif/dist (OHIF's build)")
}

/// A doctor's node holding a 24-slice 512×512 CT series of `study`.
fn node_with_ct(study: &StudySpec) -> Result<Node> {
    let work = tempfile::tempdir()?;
    fx::ct_series(
        work.path(),
        study,
        &SeriesSpec::new(&study.study_instance_uid, 1, "CT AXIAL"),
        24,
        512,
        512,
    )?;
    let node = Node::init("doctor")?;
    let (code, r) = node.import(&[work.path()])?;
    assert_eq!(code, 0, "{r}");
    Ok(node)
}

/// Where the browser tests leave their screenshots.
fn screenshots() -> Result<PathBuf> {
    let shots = workspace_root().join("target/browser-screenshots");
    std::fs::create_dir_all(&shots)?;
    Ok(shots)
}

#[test]
fn viewer_scrolls_windows_and_measures_on_phone_and_desktop() -> Result<()> {
    let Some(browser_dir) = browser_ready() else {
        return Ok(());
    };
    let study = StudySpec {
        study_instance_uid: fx::uid("tests/viewer/ct"),
        ..StudySpec::default()
    };
    let node = node_with_ct(&study)?;
    let served = node.serve(&[])?;
    let shots = screenshots()?;
    run_script(
        &browser_dir,
        "viewer.mjs",
        &[
            "--base",
            &served.url,
            "--study",
            &study.study_instance_uid,
            "--out",
            &shots.to_string_lossy(),
        ],
    )?;
    for f in ["viewer-phone.png", "viewer-desktop.png"] {
        assert!(shots.join(f).is_file(), "missing screenshot {f}");
    }
    Ok(())
}

/// Runs one script of `tests/browser` and checks its JSON verdict.
fn run_script(browser_dir: &std::path::Path, script: &str, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("node")
        .current_dir(browser_dir)
        .arg(script)
        .args(args)
        .output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "{script} checks failed:\n{report}");
    let v: serde_json::Value = serde_json::from_str(&report)?;
    assert_eq!(v["ok"], true);
    Ok(())
}

#[test]
fn two_nodes_pair_share_and_transfer_through_the_web_ui() -> Result<()> {
    let Some(browser_dir) = browser_ready() else {
        return Ok(());
    };
    let work = tempfile::tempdir()?;
    let study = StudySpec {
        study_instance_uid: fx::uid("tests/viewer/p2p"),
        ..StudySpec::default()
    };
    fx::ct_series(
        work.path(),
        &study,
        &SeriesSpec::new(&study.study_instance_uid, 1, "CT AXIAL"),
        24,
        256,
        256,
    )?;
    let clinic = Node::init_named("clinic", "Riverside Clinic")?;
    let (code, r) = clinic.import(&[work.path()])?;
    assert_eq!(code, 0, "{r}");
    let phone = Node::init_named("patient", "Ann phone")?;
    // Slowed down (each blob waits before it is sent), so that the page sees the transfer move.
    let a = clinic.serve_with_env(&[], &[(discless::net::TEST_SEND_DELAY_ENV, "400")])?;
    let b = phone.serve(&[])?;
    let shots = screenshots()?;
    run_script(
        &browser_dir,
        "p2p.mjs",
        &[
            "--a",
            &a.url,
            "--b",
            &b.url,
            "--study",
            &study.study_instance_uid,
            "--out",
            &shots.to_string_lossy(),
        ],
    )?;
    // What the browser saw is what the nodes hold: B has the study, A's audit has the story.
    drop(b);
    let held: Vec<String> = phone
        .studies()?
        .iter()
        .filter_map(|s| s["study_instance_uid"].as_str().map(str::to_owned))
        .collect();
    assert!(held.contains(&study.study_instance_uid), "{held:?}");
    drop(a);
    let audit = clinic.json(&["audit", "--json"])?.to_string();
    for action in ["ticket issued", "paired", "shared", "revoked"] {
        assert!(audit.contains(action), "audit lacks {action:?}: {audit}");
    }
    Ok(())
}

/// OHIF, served from another origin, reaches the node through DICOMweb only (CORS): its study
/// list shows the node's study and a CT series displays (pixels on its canvas).
#[test]
fn ohif_lists_the_studies_and_displays_a_ct_series() -> Result<()> {
    let Some(browser_dir) = browser_ready() else {
        return Ok(());
    };
    let Some(dist) = ohif_dist(&browser_dir) else {
        return Ok(());
    };
    let study = StudySpec {
        study_instance_uid: fx::uid("tests/viewer/ohif"),
        patient: fx::Patient {
            name: "OHIFCHECK^ANNA".into(),
            ..fx::Patient::default()
        },
        ..StudySpec::default()
    };
    let node = node_with_ct(&study)?;
    // OHIF's own origin: a port free now, for the script's static server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let origin = format!("http://127.0.0.1:{port}");
    let served = node.serve(&["--cors-origin", &origin])?;
    let shots = screenshots()?;
    run_script(
        &browser_dir,
        "ohif.mjs",
        &[
            "--dist",
            &dist.to_string_lossy(),
            "--dicomweb",
            &format!("{}/dicomweb", served.url),
            "--port",
            &port.to_string(),
            "--study",
            &study.study_instance_uid,
            // OHIF shows a PN as "Family, Given".
            "--expect",
            "OHIFCHECK, ANNA",
            "--out",
            &shots.to_string_lossy(),
        ],
    )?;
    assert!(shots.join("ohif-viewer.png").is_file());
    Ok(())
}
