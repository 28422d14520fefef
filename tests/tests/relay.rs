//! The relay end to end: a real `discless-relay` process and `discless serve` nodes on
//! loopback. Nodes started with `--no-listen` accept no direct connection, so the relay's
//! circuit is their only route to each other.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use discless_fixtures::{self as fx, Patient, SeriesSpec, StudySpec};
use discless_tests::{content_hashes, Node, Relay};
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

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

fn has_study(n: &Node, uid: &str, count: u64) -> Result<bool> {
    Ok(n.studies()?
        .iter()
        .any(|s| s["study_instance_uid"] == uid && s["instance_count"].as_u64() == Some(count)))
}

fn export_hashes(n: &Node, uid: &str) -> Result<std::collections::BTreeMap<String, usize>> {
    let out = tempfile::tempdir()?;
    let dest = out.path().join("x");
    let o = n.run(&["export", uid, &dest.display().to_string()])?;
    ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    content_hashes(&dest)
}

fn pair(issuer: &Node, scanner: &Node) -> Result<Value> {
    let t = issuer.json(&["pair", "new", "--json"])?;
    let ticket = t["ticket"].as_str().context("ticket")?;
    scanner.json(&["pair", "accept", ticket, "--json"])
}

fn out_state(n: &Node) -> Result<String> {
    let v = n.json(&["transfers", "--json"])?;
    Ok(v.as_array()
        .and_then(|a| a.iter().find(|t| t["direction"] == "out"))
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
    assert_eq!(export_hashes(&phone, &uid)?, content_hashes(src.path())?);
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

/// Patient and doctor pair while both are online; the doctor goes offline; the patient shares
/// (the study goes to the relay's mailbox) and goes offline too.
fn share_to_offline_doctor(
    relay: &Relay,
    patient: &Node,
    doctor: &Node,
    slices: u32,
) -> Result<(tempfile::TempDir, String)> {
    let r = relay.tcp_addr()?;
    let src = tempfile::tempdir()?;
    let uid = study(src.path(), "AHEAD^OFVISIT", slices, 256)?;
    patient.import(&[src.path()])?;
    let _p = patient.serve(&["--relay", &r])?;
    let mut d = doctor.serve(&["--relay", &r])?;
    pair(doctor, patient)?;
    d.terminate()?;
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
        || has_study(&doctor, &uid, 12),
    )?;
    assert_eq!(export_hashes(&doctor, &uid)?, content_hashes(src.path())?);
    wait_for("the mailbox to be emptied", Duration::from_secs(30), || {
        Ok(relay.metric("discless_relay_mailbox_items")? == 0.0)
    })?;
    // The patient, back online, learns that the doctor has it.
    let _p = patient.serve(&["--relay", &r])?;
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
        let v = doctor.json(&["transfers", "--json"])?;
        Ok(v.as_array()
            .and_then(|a| a.iter().find(|t| t["direction"] == "in"))
            .is_some_and(|t| t["bytes_done"].as_u64().unwrap_or(0) > 0))
    })?;
    assert!(
        !has_study(&doctor, &uid, u64::from(slices))?,
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
        has_study(&doctor, &uid, u64::from(slices))
    })?;
    assert_eq!(export_hashes(&doctor, &uid)?, content_hashes(src.path())?);
    let studies = doctor.studies()?;
    assert_eq!(studies.len(), 1, "{studies:?}");
    wait_for("the mailbox to be emptied", Duration::from_secs(30), || {
        Ok(relay.metric("discless_relay_mailbox_items")? == 0.0)
    })?;
    Ok(())
}
