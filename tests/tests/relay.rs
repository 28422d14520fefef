//! The relay end to end: a real `discless-relay` process and `discless serve` nodes on
//! loopback. Nodes started with `--no-listen` accept no direct connection, so the relay's
//! circuit is their only route to each other.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use discless_fixtures::{self as fx, Patient, SeriesSpec, StudySpec};
use discless_tests::{content_hashes, wait_for, Node, Relay, Served};
use serde_json::Value;

fn study(dir: &Path, name: &str, slices: u32, size: u16) -> Result<String> {
    let s = StudySpec {
        patient: Patient {
            name: name.into(),
            id: format!("PID-{name}"),
            ..Patient::default()
        },
        study_instance_uid: fx::uid(&format!("relay/{name}/{slices}/{size}")),
        ..StudySpec::default()
    };
    let ct = SeriesSpec::new(&s.study_instance_uid, 1, "CT AXIAL");
    fx::ct_series(dir, &s, &ct, slices, size, size)?;
    Ok(s.study_instance_uid)
}

fn peer_id(n: &Node) -> Result<String> {
    Ok(n.json(&["info", "--json"])?["peer_id"]
        .as_str()
        .context("peer id")?
        .to_owned())
}

/// A loopback proxy to the relay at TCP address `r` (optionally throttled to `bytes_per_s`), and
/// `r` rewritten to go through it.
fn proxied(r: &str, bytes_per_s: Option<u64>) -> Result<(discless_tests::TapProxy, String)> {
    let port: u16 = r
        .split("/tcp/")
        .nth(1)
        .and_then(|x| x.split('/').next())
        .context("relay port")?
        .parse()?;
    let proxy = discless_tests::TapProxy::start(([127, 0, 0, 1], port).into(), bytes_per_s)?;
    let through = r.replacen(
        &format!("/tcp/{port}/"),
        &format!("/tcp/{}/", proxy.port),
        1,
    );
    Ok((proxy, through))
}

fn pair(issuer: &Node, scanner: &Node) -> Result<Value> {
    let t = issuer.json(&["pair", "new", "--json"])?;
    let ticket = t["ticket"].as_str().context("ticket")?;
    scanner.json(&["pair", "accept", ticket, "--json"])
}

fn out_state(n: &Node) -> Result<String> {
    let v = n.transfers()?;
    Ok(v.iter()
        .find(|t| t["direction"] == "out")
        .map(|t| t["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default())
}

#[test]
fn nodes_reachable_only_through_the_relay_pair_and_transfer() -> Result<()> {
    let clinic = Node::init_named("clinic", "Relay Clinic")?;
    let phone = Node::init_named("patient", "Relay phone")?;
    let stranger = Node::init_named("patient", "Stranger")?;
    let data = tempfile::tempdir()?;
    let (c, p) = (peer_id(&clinic)?, peer_id(&phone)?);
    let relay = Relay::start(data.path(), "/ip4/127.0.0.1/tcp/0", &[&c, &p], &[])?;
    let r = relay.tcp_addr()?;
    let src = tempfile::tempdir()?;
    let uid = study(src.path(), "CIRCUIT^ONLY", 20, 256)?;
    clinic.import(&[src.path()])?;
    let _c = clinic.serve(&["--no-listen", "--no-mdns", "--relay", &r])?;
    let _p = phone.serve(&["--no-listen", "--no-mdns", "--relay", &r])?;

    // The ticket carries only circuit addresses.
    let t = clinic.json(&["pair", "new", "--json"])?;
    let addrs: Vec<String> = t["addrs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ensure!(!addrs.is_empty(), "ticket without addresses: {t}");
    assert!(
        addrs.iter().all(|a| a.contains("/p2p-circuit")),
        "a relay-only node must advertise circuit addresses only: {addrs:?}"
    );
    let paired = phone.json(&[
        "pair",
        "accept",
        t["ticket"].as_str().unwrap_or_default(),
        "--json",
    ])?;
    assert_eq!(paired["name"], "Relay Clinic");

    let before = relay.metric("libp2p_bandwidth_bytes_total")?;
    let shared = clinic.json(&["share", &uid, "--to", "Relay phone", "--wait", "--json"])?;
    assert_eq!(shared["state"], "delivered", "{shared}");
    assert_eq!(phone.export_hashes(&uid)?, content_hashes(src.path())?);
    let study_bytes: f64 = phone.studies()?[0]["bytes"].as_f64().unwrap_or(0.0);
    let carried = relay.metric("libp2p_bandwidth_bytes_total")? - before;
    assert!(
        carried >= study_bytes,
        "the relay carried {carried} bytes for a {study_bytes}-byte study: not through the circuit"
    );

    // A node the relay does not admit gets no reservation.
    let _s = stranger.serve(&["--no-mdns", "--relay", &r])?;
    wait_for("the stranger's refusal", Duration::from_secs(30), || {
        Ok(relay.metric("discless_relay_refusals_total")? >= 1.0)
    })?;
    let info = stranger.json(&["info", "--json"])?;
    assert!(
        !info["listen_addrs"].to_string().contains("p2p-circuit"),
        "a refused node must not advertise a circuit: {info}"
    );
    Ok(())
}

/// Generates and imports a study on the patient, serves both with their relay address (the
/// patient's may be a tap in front of the relay), pairs them and takes the doctor offline.
/// Returns the study's source folder and UID, and the patient's server.
fn pair_then_doctor_offline(
    patient: &Node,
    doctor: &Node,
    name: &str,
    slices: u32,
    patient_relay: Option<&str>,
    doctor_relay: &str,
) -> Result<(tempfile::TempDir, String, Served)> {
    let src = tempfile::tempdir()?;
    let uid = study(src.path(), name, slices, 256)?;
    patient.import(&[src.path()])?;
    // Without a relay of its own, the patient learns the doctor's from the ticket.
    let p = match patient_relay {
        Some(r) => patient.serve(&["--relay", r])?,
        None => patient.serve(&[])?,
    };
    let mut d = doctor.serve(&["--relay", doctor_relay])?;
    pair(doctor, patient)?;
    d.terminate()?;
    Ok((src, uid, p))
}

/// Patient and doctor pair while both are online; the doctor goes offline; the patient shares
/// (the study goes to the relay's mailbox) and goes offline too.
fn share_to_offline_doctor(
    relay: &Relay,
    patient: &Node,
    doctor: &Node,
    slices: u32,
) -> Result<(tempfile::TempDir, String)> {
    let r = relay.tcp_addr()?;
    let (src, uid, _p) =
        pair_then_doctor_offline(patient, doctor, "AHEAD^OFVISIT", slices, None, &r)?;
    let shared = patient.json(&["share", &uid, "--to", "Dr Away", "--json"])?;
    assert_eq!(shared["state"], "queued", "{shared}");
    assert!(
        shared["queued"]["relay"]
            .as_str()
            .unwrap_or_default()
            .contains("/p2p/"),
        "{shared}"
    );
    assert_eq!(out_state(patient)?, "queued");
    ensure!(
        relay.metric("discless_relay_mailbox_items")? == 1.0,
        "nothing in the mailbox"
    );
    Ok((src, uid))
}

fn two_nodes() -> Result<(Node, Node, [String; 2])> {
    let patient = Node::init_named("patient", "Mailbox patient")?;
    let doctor = Node::init_named("doctor", "Dr Away")?;
    let ids = [peer_id(&patient)?, peer_id(&doctor)?];
    Ok((patient, doctor, ids))
}

#[test]
fn a_study_waits_in_the_mailbox_until_the_offline_doctor_starts() -> Result<()> {
    let (patient, doctor, ids) = two_nodes()?;
    let data = tempfile::tempdir()?;
    let relay = Relay::start(
        data.path(),
        "/ip4/127.0.0.1/tcp/0",
        &[&ids[0], &ids[1]],
        &[],
    )?;
    let r = relay.tcp_addr()?;
    let (src, uid) = share_to_offline_doctor(&relay, &patient, &doctor, 12)?;
    // Only the doctor is online now, and the patient never comes back until delivery.
    let _d = doctor.serve(&["--relay", &r])?;
    wait_for(
        "the study on the doctor's node",
        Duration::from_secs(120),
        || doctor.has_study(&uid, 12),
    )?;
    assert_eq!(doctor.export_hashes(&uid)?, content_hashes(src.path())?);
    wait_for("the mailbox to be emptied", Duration::from_secs(30), || {
        Ok(relay.metric("discless_relay_mailbox_items")? == 0.0)
    })?;
    // The patient, back online, learns that the doctor has it.
    // Its contact's circuit address brings the relay back into use after the restart.
    let _p = patient.serve(&[])?;
    wait_for(
        "delivery noted by the patient",
        Duration::from_secs(90),
        || Ok(out_state(&patient)? == "delivered"),
    )?;
    Ok(())
}

#[test]
fn a_relay_restarted_mid_drain_loses_and_duplicates_nothing() -> Result<()> {
    let (patient, doctor, ids) = two_nodes()?;
    let data = tempfile::tempdir()?;
    let slow = [(discless_relay::server::TEST_SEND_DELAY_ENV, "40")];
    let mut relay = Relay::start(
        data.path(),
        "/ip4/127.0.0.1/tcp/0",
        &[&ids[0], &ids[1]],
        &slow,
    )?;
    let r = relay.tcp_addr()?;
    let port = r
        .split("/tcp/")
        .nth(1)
        .and_then(|x| x.split('/').next())
        .context("relay port")?
        .to_owned();
    let slices = 80;
    let (src, uid) = share_to_offline_doctor(&relay, &patient, &doctor, slices)?;
    let _d = doctor.serve(&["--relay", &r])?;
    wait_for("the drain to start", Duration::from_secs(60), || {
        let v = doctor.transfers()?;
        Ok(v.iter()
            .find(|t| t["direction"] == "in")
            .is_some_and(|t| t["bytes_done"].as_u64().unwrap_or(0) > 0))
    })?;
    assert!(
        !doctor.has_study(&uid, u64::from(slices))?,
        "the drain must still be running"
    );
    relay.kill()?;
    // Same data directory and port: the same relay comes back.
    let relay = Relay::start(
        data.path(),
        &format!("/ip4/127.0.0.1/tcp/{port}"),
        &[&ids[0], &ids[1]],
        &slow,
    )?;
    assert_eq!(relay.tcp_addr()?, r);
    wait_for("the drain to finish", Duration::from_secs(180), || {
        doctor.has_study(&uid, u64::from(slices))
    })?;
    assert_eq!(doctor.export_hashes(&uid)?, content_hashes(src.path())?);
    let studies = doctor.studies()?;
    assert_eq!(studies.len(), 1, "{studies:?}");
    wait_for("the mailbox to be emptied", Duration::from_secs(30), || {
        Ok(relay.metric("discless_relay_mailbox_items")? == 0.0)
    })?;
    Ok(())
}

fn audit_text(n: &Node) -> Result<String> {
    Ok(n.json(&["audit", "--json"])?.to_string())
}

fn contact<'a>(contacts: &'a Value, peer: &str) -> Option<&'a Value> {
    contacts
        .as_array()
        .and_then(|a| a.iter().find(|c| c["peer_id"] == peer))
}

#[test]
fn a_phone_pairs_with_an_offline_doctor_through_the_relay() -> Result<()> {
    let (patient, doctor, ids) = two_nodes()?;
    let late = Node::init_named("patient", "Late scanner")?;
    let late_id = peer_id(&late)?;
    let data = tempfile::tempdir()?;
    let relay = Relay::start(
        data.path(),
        "/ip4/127.0.0.1/tcp/0",
        &[&ids[0], &ids[1], &late_id],
        &[],
    )?;
    let r = relay.tcp_addr()?;
    let src = tempfile::tempdir()?;
    let uid = study(src.path(), "PAIRED^WHILEAWAY", 6, 128)?;
    patient.import(&[src.path()])?;
    // Neither scanner is told of the relay: the ticket's circuit address is all they get.
    let _p = patient.serve(&["--no-mdns"])?;
    let _l = late.serve(&["--no-mdns"])?;
    let mut d = doctor.serve(&["--no-mdns", "--relay", &r])?;
    let t = doctor.json(&["pair", "new", "--expires", "20s", "--json"])?;
    d.terminate()?;
    let ticket = t["ticket"].as_str().context("ticket")?.to_owned();
    let expires = t["expires_unix"].as_u64().context("expiry")?;

    let paired = patient.json(&["pair", "accept", &ticket, "--json"])?;
    ensure!(
        paired["queued_at"]
            .as_str()
            .is_some_and(|q| q.contains("/p2p/")),
        "the doctor is offline: the request should wait at the relay: {paired}"
    );
    let sas = paired["sas"].as_str().context("sas")?.to_owned();
    let shared = patient.json(&["share", &uid, "--to", "Dr Away", "--json"])?;
    assert_eq!(shared["state"], "queued", "{shared}");
    let c = patient.json(&["contacts", "--json"])?;
    ensure!(
        contact(&c, &ids[1]).is_some_and(|d| d["awaiting"].is_string()),
        "{c}"
    );
    // A second phone scans the same QR later (still in time): the ticket is single use.
    std::thread::sleep(Duration::from_millis(1100));
    let second = late.json(&["pair", "accept", &ticket, "--json"])?;
    ensure!(second["queued_at"].is_string(), "{second}");
    ensure!(
        relay.metric("discless_relay_mailbox_items")? == 3.0,
        "two pairing requests and one study should wait"
    );
    // Requests are sealed: the relay's files never show who asked.
    for f in walkdir::WalkDir::new(data.path()) {
        let f = f?;
        if f.file_type().is_file() {
            ensure!(
                !discless_tests::file_contains(f.path(), b"Late scanner")?,
                "{} shows a scanner's card in clear",
                f.path().display()
            );
        }
    }

    // The doctor comes back after the ticket expired: the requests count from when they were
    // left at the relay.
    wait_for("the ticket to expire", Duration::from_secs(60), || {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            > expires)
    })?;
    let _d = doctor.serve(&["--no-mdns", "--relay", &r])?;
    wait_for(
        "the study on the doctor's node",
        Duration::from_secs(120),
        || doctor.has_study(&uid, 6),
    )?;
    assert_eq!(doctor.export_hashes(&uid)?, content_hashes(src.path())?);
    let c = doctor.json(&["contacts", "--json"])?;
    let phone = contact(&c, &ids[0]).context("the doctor has no contact for the phone")?;
    assert_eq!(phone["sas"], sas.as_str(), "both screens show one code");
    ensure!(
        contact(&c, &late_id).is_none(),
        "a second scanner of a used ticket became a contact: {c}"
    );
    let audit = audit_text(&doctor)?;
    ensure!(
        audit.contains("already used") && audit.contains("issued, queued at relay"),
        "{audit}"
    );
    wait_for("the mailbox to be emptied", Duration::from_secs(30), || {
        Ok(relay.metric("discless_relay_mailbox_items")? == 0.0)
    })?;
    // The phone hears back from the doctor: delivered, and the pairing is confirmed.
    wait_for(
        "delivery noted by the patient",
        Duration::from_secs(90),
        || Ok(out_state(&patient)? == "delivered"),
    )?;
    let c = patient.json(&["contacts", "--json"])?;
    ensure!(
        contact(&c, &ids[1]).is_some_and(|d| d["awaiting"].is_null()),
        "{c}"
    );
    ensure!(audit_text(&patient)?.contains("pairing confirmed"));
    Ok(())
}

/// 48 bytes of varied pixel data from the middle of a generated slice: what a leak would show.
fn pixel_run(file: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(file)?;
    // Pixel Data is the last element; scan back from its middle for a run with variety in it.
    let mut at = bytes.len().saturating_sub(bytes.len() / 4);
    while at > 48 {
        let run = &bytes[at..at + 48];
        let distinct: std::collections::BTreeSet<u8> = run.iter().copied().collect();
        if distinct.len() > 12 {
            return Ok(run.to_vec());
        }
        at -= 48;
    }
    anyhow::bail!("no varied pixel run in {}", file.display())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_relay_sees_ciphertext_only_and_purges_expired_items() -> Result<()> {
    let (patient, doctor, ids) = two_nodes()?;
    let data = tempfile::tempdir()?;
    let relay = Relay::start_with(
        data.path(),
        "/ip4/127.0.0.1/tcp/0",
        &[&ids[0], &ids[1]],
        &["--mailbox-ttl", "3s"],
        &[],
    )?;
    let r = relay.tcp_addr()?;
    // The patient reaches the relay only through a tap that keeps every byte on the wire.
    let (tap, tapped) = proxied(&r, None)?;
    let name = "PRIVATE^PATIENTNAME";
    let (src, uid, _p) = pair_then_doctor_offline(&patient, &doctor, name, 6, Some(&tapped), &r)?;
    let first = walkdir::WalkDir::new(src.path())
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_type().is_file())
        .context("no generated file")?;
    let run = pixel_run(first.path())?;
    let shared = patient.json(&["share", &uid, "--to", "Dr Away", "--json"])?;
    assert_eq!(shared["state"], "queued", "{shared}");
    ensure!(relay.metric("discless_relay_mailbox_items")? == 1.0);

    let wire = tap.seen();
    let study_bytes = patient.studies()?[0]["bytes"].as_u64().unwrap_or(0) as usize;
    ensure!(
        wire.len() >= study_bytes,
        "the tap saw {} bytes for a {study_bytes}-byte study: the deposit went elsewhere",
        wire.len()
    );
    ensure!(
        !contains(&wire, name.as_bytes()),
        "the patient name crossed the wire in clear"
    );
    ensure!(
        !contains(&wire, &run),
        "a pixel run crossed the wire in clear"
    );
    let mut files = 0;
    for e in walkdir::WalkDir::new(data.path()) {
        let e = e?;
        if e.file_type().is_file() {
            files += 1;
            let b = std::fs::read(e.path())?;
            ensure!(
                !contains(&b, name.as_bytes()),
                "{} holds the patient name",
                e.path().display()
            );
            ensure!(
                !contains(&b, &run),
                "{} holds a pixel run",
                e.path().display()
            );
        }
    }
    ensure!(
        files > 0,
        "the relay's data dir is empty: nothing was checked"
    );

    // Nobody collects it: after the TTL the relay deletes it, blobs and all.
    wait_for(
        "the expired item to be purged",
        Duration::from_secs(60),
        || {
            Ok(relay.metric("discless_relay_mailbox_items")? == 0.0
                && relay.metric("discless_relay_mailbox_bytes")? == 0.0)
        },
    )?;
    let items = data.path().join("mailbox").join("items");
    let left = walkdir::WalkDir::new(&items)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count();
    ensure!(
        left == 0,
        "{left} blob files are left in {} after the purge",
        items.display()
    );
    Ok(())
}

#[test]
fn a_deposit_over_quota_is_refused_with_a_reason_the_sender_sees() -> Result<()> {
    let (patient, doctor, ids) = two_nodes()?;
    let data = tempfile::tempdir()?;
    let relay = Relay::start_with(
        data.path(),
        "/ip4/127.0.0.1/tcp/0",
        &[&ids[0], &ids[1]],
        &["--mailbox-quota", "100KiB"],
        &[],
    )?;
    let r = relay.tcp_addr()?;
    let (_src, uid, _p) =
        pair_then_doctor_offline(&patient, &doctor, "OVER^QUOTA", 6, Some(&r), &r)?;
    let shared = patient.json(&["share", &uid, "--to", "Dr Away", "--json"])?;
    assert_eq!(shared["state"], "pending", "{shared}");
    let note = shared["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("mailbox is full") && note.contains("102400"),
        "the sender must be told why: {shared}"
    );
    assert!(relay.metric("discless_relay_refusals_total")? >= 1.0);
    assert_eq!(relay.metric("discless_relay_mailbox_items")?, 0.0);
    Ok(())
}

/// rust-libp2p's relay ends a circuit after 2 minutes (and 128 KiB) by default; ours allows an
/// hour and 8 GiB. Here one study takes longer than 2 minutes through one circuit: the clinic
/// reaches the relay only through a proxy throttled to 120 kB/s, and shares 17 MB. No new circuit
/// may be needed on the way (a download resumes on a new one, so arrival alone would not show it).
#[test]
fn a_circuit_carries_a_transfer_longer_than_two_minutes() -> Result<()> {
    const RATE: u64 = 120_000;
    let clinic = Node::init_named("clinic", "Slow uplink clinic")?;
    let phone = Node::init_named("patient", "Slow uplink phone")?;
    let data = tempfile::tempdir()?;
    let (c, p) = (peer_id(&clinic)?, peer_id(&phone)?);
    let relay = Relay::start(data.path(), "/ip4/127.0.0.1/tcp/0", &[&c, &p], &[])?;
    let r = relay.tcp_addr()?;
    let (_slow, throttled) = proxied(&r, Some(RATE))?;
    let src = tempfile::tempdir()?;
    let uid = study(src.path(), "LONG^CIRCUIT", 32, 512)?;
    clinic.import(&[src.path()])?;
    let _c = clinic.serve(&["--no-listen", "--no-mdns", "--relay", &throttled])?;
    let _p = phone.serve(&["--no-listen", "--no-mdns", "--relay", &r])?;
    pair(&clinic, &phone)?;
    let opened = relay.metric("discless_relay_circuits_opened_total")?;
    ensure!(opened >= 1.0, "pairing opened no circuit");

    let start = std::time::Instant::now();
    let shared = clinic.json(&[
        "share",
        &uid,
        "--to",
        "Slow uplink phone",
        "--wait",
        "--json",
    ])?;
    let took = start.elapsed();
    assert_eq!(shared["state"], "delivered", "{shared}");
    assert_eq!(phone.export_hashes(&uid)?, content_hashes(src.path())?);
    ensure!(
        took > Duration::from_secs(125),
        "the transfer took only {took:?}: the throttle no longer makes it outlast 2 minutes"
    );
    let after = relay.metric("discless_relay_circuits_opened_total")?;
    ensure!(
        after == opened,
        "{} new circuit(s) during a {took:?} transfer: the relay cut the circuit",
        after - opened
    );
    Ok(())
}
