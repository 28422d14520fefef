//! DCUtR across firewalls. Two hosts in network namespaces, each behind a stateful firewall that
//! drops every inbound connection it did not start, with a relay in the "wan" between them
//! ([`Lab`]). They can only meet through the relay; once paired, they punch a hole, the relayed
//! connection closes, and the study moves on the direct connection.
//!
//! Each node keeps a connection to the relay on TCP and on QUIC, so that DCUtR has an observed
//! address of each: over TCP the punch loses a race in about one run in three here (a SYN that
//! reaches the other side's listener instead of its dial leaves two listener ends), over QUIC
//! it does not. When a round of DCUtR fails anyway, the node starts another on a fresh relayed
//! connection (`PUNCH_ROUNDS` in node/src/net/swarm.rs), which is why the wait for a direct
//! connection is long. `DISCLESS_TEST_LOG=info,libp2p_dcutr=debug` shows the attempts.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use discless_fixtures::{self as fx, Patient, SeriesSpec, StudySpec};
use discless_tests::{content_hashes, wait_for, Lab, Node, Relay};

fn peer_id(n: &Node) -> Result<String> {
    Ok(n.json(&["info", "--json"])?["peer_id"]
        .as_str()
        .context("peer id")?
        .to_owned())
}

/// How `node` is connected to `peer` now: "direct", "relayed", or None.
fn route(node: &Node, peer: &str) -> Result<Option<String>> {
    let c = node.json(&["contacts", "--json"])?;
    Ok(c.as_array()
        .and_then(|a| a.iter().find(|c| c["peer_id"] == peer))
        .and_then(|c| c["route"].as_str().map(str::to_owned)))
}

fn has_circuit_address(node: &Node) -> Result<bool> {
    Ok(node
        .json(&["info", "--json"])?
        .to_string()
        .contains("/p2p-circuit"))
}

/// Bytes the relay's transports carried, both directions.
fn relay_bytes(relay: &Relay) -> Result<f64> {
    relay.metric("libp2p_bandwidth_bytes_total")
}

#[test]
fn firewalled_nodes_meet_through_the_relay_then_hole_punch_and_transfer_direct() -> Result<()> {
    let Some(lab) = Lab::firewalled_hosts()? else {
        return Ok(());
    };
    let clinic = Node::init_named("clinic", "Firewalled clinic")?.in_netns(&lab.a);
    let phone = Node::init_named("patient", "Firewalled phone")?.in_netns(&lab.b);
    let (c, p) = (peer_id(&clinic)?, peer_id(&phone)?);
    let data = tempfile::tempdir()?;
    let relay = Relay::start_in(
        Some(&lab.wan),
        data.path(),
        &format!("/ip4/{}/tcp/4001", Lab::WAN),
        &[&c, &p],
        &["--listen", &format!("/ip4/{}/udp/4001/quic-v1", Lab::WAN)],
        &[],
    )?;
    let r = relay.tcp_addr()?;
    let rq = relay
        .addrs
        .iter()
        .find(|a| a.contains("/quic-v1"))
        .context("relay has no QUIC address")?
        .clone();

    let src = tempfile::tempdir()?;
    let s = StudySpec {
        patient: Patient {
            name: "PUNCHED^THROUGH".into(),
            id: "PID-PUNCH".into(),
            ..Patient::default()
        },
        study_instance_uid: fx::uid("holepunch/study"),
        ..StudySpec::default()
    };
    let ct = SeriesSpec::new(&s.study_instance_uid, 1, "CT AXIAL");
    fx::ct_series(src.path(), &s, &ct, 24, 256, 256)?;
    let study_bytes: u64 = walkdir::WalkDir::new(src.path())
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    clinic.import(&[src.path()])?;

    // TCP and QUIC, each with its relay address: DCUtR punches with the addresses the relay
    // observed on each transport (QUIC over UDP is the more reliable of the two).
    let tcp = |ip: &str| format!("/ip4/{ip}/tcp/4001");
    let quic = |ip: &str| format!("/ip4/{ip}/udp/4001/quic-v1");
    // DISCLESS_TEST_LOG=<filter> shows the nodes' logs (e.g. libp2p_dcutr=debug) in the output.
    let log = std::env::var("DISCLESS_TEST_LOG").ok();
    let env: Vec<(&str, &str)> = log.iter().map(|l| ("DISCLESS_LOG", l.as_str())).collect();
    let serve = |n: &Node, ip: &str| {
        n.serve_with_env(
            &[
                "--p2p",
                &tcp(ip),
                "--p2p",
                &quic(ip),
                "--relay",
                &r,
                "--relay",
                &rq,
            ],
            &env,
        )
    };
    let _c = serve(&clinic, Lab::A)?;
    let _p = serve(&phone, Lab::B)?;
    // The firewalls hold: neither host takes a connection it did not start, the relay does.
    ensure!(
        !lab.tcp_connects(&lab.b, Lab::A, 4001)?,
        "the clinic's firewall let the phone in"
    );
    ensure!(
        !lab.tcp_connects(&lab.a, Lab::B, 4001)?,
        "the phone's firewall let the clinic in"
    );
    ensure!(
        lab.tcp_connects(&lab.b, Lab::WAN, 4001)?,
        "the relay is unreachable"
    );
    wait_for("both relay reservations", Duration::from_secs(60), || {
        Ok(has_circuit_address(&clinic)? && has_circuit_address(&phone)?)
    })?;

    let t = clinic.json(&["pair", "new", "--json"])?;
    let ticket = t["ticket"].as_str().context("ticket")?;
    let paired = phone.json(&["pair", "accept", ticket, "--json"])?;
    ensure!(paired["queued_at"].is_null(), "paired live: {paired}");

    // DCUtR: a direct connection appears, then the relayed one is closed.
    wait_for(
        "a hole-punched connection",
        Duration::from_secs(150),
        || Ok(route(&clinic, &p)?.as_deref() == Some("direct")),
    )?;
    wait_for(
        "the relayed connection to close",
        Duration::from_secs(60),
        || Ok(relay.metric("discless_relay_circuits_active")? == 0.0),
    )?;
    ensure!(route(&phone, &c)?.as_deref() == Some("direct"));

    let before = relay_bytes(&relay)?;
    ensure!(before > 0.0, "the relay's byte counters are missing");
    let uid = s.study_instance_uid.as_str();
    let shared = clinic.json(&["share", uid, "--to", "Firewalled phone", "--json"])?;
    ensure!(shared["state"] != "queued", "the phone is online: {shared}");
    wait_for("the study on the phone", Duration::from_secs(120), || {
        phone.has_study(uid, 24)
    })?;
    assert_eq!(phone.export_hashes(uid)?, content_hashes(src.path())?);
    let through_relay = relay_bytes(&relay)? - before;
    ensure!(
        through_relay < study_bytes as f64 / 10.0,
        "{through_relay} bytes went through the relay for a {study_bytes}-byte study"
    );
    Ok(())
}
