//! Peer-to-peer end to end: real `discless serve` processes with real libp2p swarms on
//! loopback, pairing by ticket (and by a QR code read back from its PNG), subscriptions, shares,
//! resumption, corruption in transit, and every refusal the issue lists.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use discless_fixtures::{self as fx, Patient, SeriesSpec, StudySpec};
use discless_tests::{content_hashes, wait_for, Node};
use serde_json::Value;

fn study(dir: &Path, name: &str, pid: &str, slices: u32, size: u16) -> Result<String> {
    let s = StudySpec {
        patient: Patient {
            name: name.into(),
            id: pid.into(),
            ..Patient::default()
        },
        study_instance_uid: fx::uid(&format!("p2p/{name}/{slices}/{size}")),
        ..StudySpec::default()
    };
    let ct = SeriesSpec::new(&s.study_instance_uid, 1, "CT AXIAL");
    fx::ct_series(dir, &s, &ct, slices, size, size)?;
    Ok(s.study_instance_uid)
}

fn ok(node: &Node, args: &[&str]) -> Result<Value> {
    node.json(args)
}

/// Runs a command expected to fail; returns its stderr.
fn fails(node: &Node, args: &[&str]) -> Result<String> {
    let o = node.run(args)?;
    ensure!(
        !o.status.success(),
        "{args:?} should have failed but printed {}",
        String::from_utf8_lossy(&o.stdout)
    );
    Ok(String::from_utf8_lossy(&o.stderr).into_owned())
}

fn ticket(node: &Node, extra: &[&str]) -> Result<String> {
    let mut args = vec!["pair", "new", "--json"];
    args.extend_from_slice(extra);
    let v = ok(node, &args)?;
    Ok(v["ticket"].as_str().context("no ticket")?.to_owned())
}

fn pair(issuer: &Node, scanner: &Node, extra: &[&str]) -> Result<Value> {
    let t = ticket(issuer, extra)?;
    ok(scanner, &["pair", "accept", &t, "--json"])
}

fn audit_actions(node: &Node) -> Result<Vec<String>> {
    let v = ok(node, &["audit", "--json"])?;
    let entries = v["entries"]
        .as_array()
        .or(v.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(entries
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .collect())
}

/// Reads the QR code back from the PNG that `pair new --png` wrote.
fn read_qr(png_path: &Path) -> Result<String> {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_path)?));
    let mut reader = dec.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().context("png size")?];
    let info = reader.next_frame(&mut buf)?;
    ensure!(
        info.color_type == png::ColorType::Grayscale,
        "unexpected PNG colour type {:?}",
        info.color_type
    );
    let (w, h) = (info.width as usize, info.height as usize);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * w + x]);
    let grids = img.detect_grids();
    ensure!(grids.len() == 1, "found {} QR codes", grids.len());
    let (_, content) = grids[0].decode()?;
    Ok(content)
}

struct Three {
    clinic: Node,
    patient: Node,
    doctor: Node,
}

#[test]
fn clinic_to_patient_to_doctor_byte_exact() -> Result<()> {
    let t = Three {
        clinic: Node::init_named("clinic", "Riverside Clinic")?,
        patient: Node::init_named("patient", "Alice phone")?,
        doctor: Node::init_named("doctor", "Dr Lee")?,
    };
    let src = tempfile::tempdir()?;
    let ct_dir = src.path().join("ct");
    let other_dir = src.path().join("other");
    let later_dir = src.path().join("later");
    let ct = study(&ct_dir, "SMITH^ALICE", "PID-ALICE", 12, 128)?;
    let other = study(&other_dir, "DOE^BOB", "PID-BOB", 3, 64)?;
    let later = study(&later_dir, "SMITH^ALICE", "PID-ALICE", 4, 96)?;
    t.clinic.import(&[&ct_dir, &other_dir])?;
    let mut clinic = t.clinic.serve(&[])?;
    let mut patient = t.patient.serve(&[])?;
    let mut doctor = t.doctor.serve(&[])?;

    // The clinic's QR, read back from its PNG, pairs the phone and binds it to Alice.
    let png_path = src.path().join("ticket.png");
    let issued = ok(
        &t.clinic,
        &[
            "pair",
            "new",
            "--for-patient",
            "PID-ALICE",
            "--png",
            &png_path.display().to_string(),
            "--json",
        ],
    )?;
    let from_qr = read_qr(&png_path)?;
    assert_eq!(from_qr, issued["ticket"].as_str().unwrap_or_default());
    let paired = ok(&t.patient, &["pair", "accept", &from_qr, "--json"])?;
    assert_eq!(paired["name"], "Riverside Clinic");
    assert_eq!(paired["role"], "clinic");
    let sas = paired["sas"].as_str().unwrap_or_default().to_owned();
    assert_eq!(sas.len(), 6);
    let clinic_contacts = ok(&t.clinic, &["contacts", "--json"])?;
    assert_eq!(clinic_contacts[0]["name"], "Alice phone");
    assert_eq!(
        clinic_contacts[0]["sas"],
        sas.as_str(),
        "both sides show the same code"
    );
    assert_eq!(clinic_contacts[0]["for_patient"], "PID-ALICE");

    // Alice's study arrives by itself; Bob's never does.
    wait_for("Alice's CT on the phone", Duration::from_secs(90), || {
        t.patient.has_study(&ct, 12)
    })?;
    // A study imported later for the same patient follows.
    t.clinic.import(&[&later_dir])?;
    wait_for(
        "the later study on the phone",
        Duration::from_secs(90),
        || t.patient.has_study(&later, 4),
    )?;
    assert!(
        !t.patient.has_study(&other, 3)?,
        "another patient's study reached the phone"
    );
    assert_eq!(t.patient.export_hashes(&ct)?, content_hashes(&ct_dir)?);

    // The phone pairs with the doctor and shares the CT, waiting for delivery.
    let p = pair(&t.doctor, &t.patient, &[])?;
    assert_eq!(p["name"], "Dr Lee");
    let shared = ok(
        &t.patient,
        &[
            "share",
            &ct,
            "--to",
            "Dr",
            "--expires",
            "7d",
            "--wait",
            "--json",
        ],
    )?;
    assert_eq!(shared["state"], "delivered", "{shared}");
    assert!(t.doctor.has_study(&ct, 12)?);
    assert_eq!(
        t.doctor.export_hashes(&ct)?,
        content_hashes(&ct_dir)?,
        "the doctor's export must be byte-identical to the clinic's originals"
    );
    let doctor_transfers = ok(&t.doctor, &["transfers", "--json"])?;
    assert_eq!(
        doctor_transfers[0]["state"], "complete",
        "{doctor_transfers}"
    );
    for (node, want) in [
        (&t.clinic, &["paired", "shared", "delivered"][..]),
        (
            &t.patient,
            &[
                "paired",
                "offer received",
                "received",
                "shared",
                "delivered",
            ][..],
        ),
        (&t.doctor, &["paired", "offer received", "received"][..]),
    ] {
        let actions = audit_actions(node)?;
        for a in want {
            assert!(
                actions.iter().any(|x| x == a),
                "audit lacks {a:?}: {actions:?}"
            );
        }
    }

    // Revocation: the doctor can no longer fetch anything of the CT.
    let blob = ok(&t.doctor, &["show", &ct, "--json"])?;
    let blob_id = blob["series"][0]["instances"][0]["blob_id"]
        .as_str()
        .context("show --json lists blob ids")?
        .to_owned();
    let patient_peer = ok(&t.patient, &["info", "--json"])?;
    let patient_id = patient_peer["peer_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let addrs: Vec<String> = patient_peer["listen_addrs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut probe = vec![
        "debug",
        "request-blobs",
        patient_id.as_str(),
        "--study",
        ct.as_str(),
    ];
    for a in &addrs {
        probe.extend_from_slice(&["--addr", a]);
    }
    probe.push(&blob_id);
    let before = ok(&t.doctor, &probe)?;
    assert_eq!(before["reply"]["result"], "ok", "{before}");
    assert!(before["blobs"][0].as_u64().is_some(), "{before}");
    let r = ok(&t.patient, &["revoke", &ct, "--from", "Dr Lee", "--json"])?;
    assert_eq!(r["revoked"], true);
    let after = ok(&t.doctor, &probe)?;
    assert_eq!(after["reply"]["result"], "refused", "{after}");
    assert!(audit_actions(&t.doctor)?
        .iter()
        .any(|a| a == "revoked by sender"));

    for s in [&mut clinic, &mut patient, &mut doctor] {
        s.terminate()?;
    }
    Ok(())
}

#[test]
fn strangers_and_bad_tickets_are_refused() -> Result<()> {
    let clinic = Node::init_named("clinic", "Hilltop Clinic")?;
    let phone = Node::init_named("patient", "Phone A")?;
    let other = Node::init_named("patient", "Phone B")?;
    let src = tempfile::tempdir()?;
    let uid = study(src.path(), "ROE^CAROL", "PID-C", 2, 64)?;
    clinic.import(&[src.path()])?;
    let _c = clinic.serve(&[])?;
    let _p = phone.serve(&[])?;
    let _o = other.serve(&[])?;

    // A stranger asking for blobs learns nothing, not even whether the study exists.
    let info = ok(&clinic, &["info", "--json"])?;
    let peer = info["peer_id"].as_str().unwrap_or_default().to_owned();
    let addr = info["listen_addrs"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let blob = ok(&clinic, &["show", &uid, "--json"])?["series"][0]["instances"][0]["blob_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let asked = ok(
        &other,
        &[
            "debug",
            "request-blobs",
            &peer,
            "--addr",
            &addr,
            "--study",
            &uid,
            &blob,
        ],
    )?;
    assert_eq!(asked["reply"]["result"], "refused");
    assert_eq!(asked["reply"]["reason"], "this node is not paired with you");
    let asked_missing = ok(
        &other,
        &[
            "debug",
            "request-blobs",
            &peer,
            "--addr",
            &addr,
            "--study",
            "1.2.3.4",
            &blob,
        ],
    )?;
    assert_eq!(
        asked_missing["reply"], asked["reply"],
        "existence must not leak"
    );

    // A used ticket is refused, on both sides.
    let t = ticket(&clinic, &[])?;
    ok(&phone, &["pair", "accept", &t, "--json"])?;
    let e = fails(&other, &["pair", "accept", &t])?;
    assert!(e.contains("already used"), "{e}");
    assert!(audit_actions(&clinic)?
        .iter()
        .any(|a| a == "pairing refused"));

    // An expired ticket.
    let t = ticket(&clinic, &["--expires", "1s"])?;
    std::thread::sleep(Duration::from_millis(2100));
    let e = fails(&other, &["pair", "accept", &t])?;
    assert!(e.contains("expired"), "{e}");

    // A forged ticket: a valid one with another token.
    let t = ticket(&clinic, &[])?;
    let mut forged = discless::net::ticket::Ticket::decode(&t)?;
    forged.token[0] ^= 0xff;
    let e = fails(&other, &["pair", "accept", &forged.encode()])?;
    assert!(e.contains("unknown pairing ticket"), "{e}");
    // A malformed one.
    let e = fails(&other, &["pair", "accept", "discless:pair/NOTATICKET"])?;
    assert!(e.contains("malformed"), "{e}");
    let contacts = ok(&clinic, &["contacts", "--json"])?;
    assert_eq!(contacts.as_array().map(Vec::len), Some(1), "{contacts}");
    Ok(())
}

fn transfer_out(node: &Node) -> Result<Value> {
    let v = node.transfers()?;
    v.iter()
        .find(|t| t["direction"] == "out")
        .cloned()
        .context("no outgoing transfer")
}

#[test]
fn receiver_killed_midway_resumes_without_resending_much() -> Result<()> {
    let clinic = Node::init_named("clinic", "Big Clinic")?;
    let phone = Node::init_named("patient", "Slow phone")?;
    let src = tempfile::tempdir()?;
    // 160 slices of 512x512 16-bit: ~84 MB of blobs.
    let uid = study(src.path(), "LARGE^STUDY", "PID-L", 160, 512)?;
    clinic.import(&[src.path()])?;
    // 40 ms per blob keeps the transfer a few seconds long, so the kill lands in its middle.
    let _c = clinic.serve_with_env(&[], &[(discless::net::TEST_SEND_DELAY_ENV, "40")])?;
    let mut p = phone.serve(&[])?;
    pair(&clinic, &phone, &[])?;
    ok(&clinic, &["share", &uid, "--to", "Slow phone", "--json"])?;
    let mut total = 0;
    let mut at_kill = 0;
    wait_for("half of the study sent", Duration::from_secs(120), || {
        let t = transfer_out(&clinic)?;
        total = t["bytes_total"].as_u64().unwrap_or(0);
        at_kill = t["bytes_sent"].as_u64().unwrap_or(0);
        Ok(at_kill * 2 >= total && total > 0)
    })?;
    p.kill()?;
    assert!(
        at_kill < total * 9 / 10,
        "the receiver must die mid-transfer (sent {at_kill} of {total})"
    );
    let partial = phone.studies();
    assert!(
        partial.is_err() || !phone.has_study(&uid, 160)?,
        "the study cannot be complete yet"
    );
    let _p2 = phone.serve(&[])?;
    wait_for(
        "delivery after the restart",
        Duration::from_secs(180),
        || Ok(transfer_out(&clinic)?["state"] == "delivered"),
    )?;
    let sent = transfer_out(&clinic)?["bytes_sent"].as_u64().unwrap_or(0);
    assert!(
        (sent as f64) < 1.6 * total as f64,
        "sent {sent} bytes for a {total}-byte study: more than 60% sent again"
    );
    assert_eq!(phone.export_hashes(&uid)?, content_hashes(src.path())?);
    Ok(())
}

#[test]
fn blobs_corrupted_in_transit_are_fetched_again() -> Result<()> {
    let clinic = Node::init_named("clinic", "Flaky Clinic")?;
    let phone = Node::init_named("patient", "Careful phone")?;
    let src = tempfile::tempdir()?;
    let uid = study(src.path(), "FLIP^BITS", "PID-F", 8, 128)?;
    clinic.import(&[src.path()])?;
    let _c = clinic.serve_with_env(&[], &[(discless::net::TEST_CORRUPT_ENV, "3")])?;
    let _p = phone.serve(&[])?;
    pair(&clinic, &phone, &[])?;
    let r = ok(
        &clinic,
        &["share", &uid, "--to", "Careful", "--wait", "--json"],
    )?;
    assert_eq!(r["state"], "delivered", "{r}");
    assert_eq!(phone.export_hashes(&uid)?, content_hashes(src.path())?);
    let rejected = audit_actions(&phone)?
        .iter()
        .filter(|a| *a == "blob rejected")
        .count();
    assert_eq!(
        rejected, 3,
        "each corrupted blob is rejected once, then re-fetched"
    );
    Ok(())
}
