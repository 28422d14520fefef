//! `bench transfer --via-relay`: the same study through a clinic relay, two ways, each against
//! the direct TCP node run of the same bench.
//!
//! * circuit: both nodes accept no direct connection (`--no-listen`), so the pairing ticket
//!   carries circuit addresses only and every byte crosses the relay;
//! * mailbox: the receiver is offline when the sender shares, so the sender deposits the study
//!   at the relay (timed until `share` reports it queued); then the receiver's node starts and
//!   drains it (timed from its start, start-up included, until it holds every instance).
//!
//! The relay runs in this process, on loopback, admitting anyone.

use std::time::Instant;

use serde::Serialize;

use super::{complete, fresh_receiver, mb_per_s, node_run_with, pair, NodeRun, Setup};
use discless_relay::server::{self, Config};

/// The circuit's target from the relay issue: this share of the direct transfer or better.
const TARGET_CIRCUIT_RATIO: f64 = 0.6;

#[derive(Debug, Serialize)]
pub struct MailboxRun {
    /// From the share until the sender reports the study queued at the relay.
    pub deposit_s: f64,
    /// From starting the receiver's node until it holds every instance.
    pub drain_s: f64,
    /// Study bytes over deposit + drain.
    pub mb_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct RelayRuns {
    pub circuit: NodeRun,
    pub circuit_ratio_to_direct: f64,
    pub mailbox: MailboxRun,
    pub mailbox_ratio_to_direct: f64,
    pub target_circuit_ratio: f64,
    pub meets_circuit_target: bool,
}

pub(super) fn run(s: &Setup<'_>, direct_mb_per_s: f64) -> Result<RelayRuns, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("async runtime: {e}"))?;
    let listen = "/ip4/127.0.0.1/tcp/0"
        .parse()
        .map_err(|e| format!("relay address: {e}"))?;
    let mut config = Config::new(listen, s.scratch.join("relay"));
    config.open = true;
    let running = rt
        .block_on(server::start(config))
        .map_err(|e| format!("starting the relay: {e}"))?;
    let relay = running
        .tcp_addr()
        .map(ToString::to_string)
        .ok_or_else(|| "the relay listens on no TCP address".to_owned());
    let runs = relay.and_then(|relay| {
        let only_relay: Vec<String> = [
            "--http",
            "127.0.0.1:0",
            "--no-mdns",
            "--no-listen",
            "--relay",
            &relay,
        ]
        .map(str::to_owned)
        .to_vec();
        let circuit = node_run_with(s, "circuit", &only_relay, &only_relay)?;
        let mailbox = mailbox_run(s, &relay)?;
        let circuit_ratio_to_direct = circuit.mb_per_s / direct_mb_per_s;
        Ok(RelayRuns {
            mailbox_ratio_to_direct: mailbox.mb_per_s / direct_mb_per_s,
            circuit,
            circuit_ratio_to_direct,
            mailbox,
            target_circuit_ratio: TARGET_CIRCUIT_RATIO,
            meets_circuit_target: circuit_ratio_to_direct >= TARGET_CIRCUIT_RATIO,
        })
    });
    rt.block_on(running.shutdown());
    runs
}

fn mailbox_run(s: &Setup<'_>, relay: &str) -> Result<MailboxRun, String> {
    let args: Vec<String> = [
        "--http",
        "127.0.0.1:0",
        "--no-mdns",
        "--p2p",
        "/ip4/127.0.0.1/tcp/0",
        "--relay",
        relay,
    ]
    .map(str::to_owned)
    .to_vec();
    let (home, peer) = fresh_receiver(s, "mailbox")?;
    let sender = s.launcher.serve(s.sender_home, "sender-mailbox", &args)?;
    let receiver = s.launcher.serve(&home, "receiver-mailbox-online", &args)?;
    pair(&sender, &receiver)?;
    receiver.stop()?;

    let start = Instant::now();
    let shared = sender.control(&["share", s.study, "--to", &peer, "--json"])?;
    if shared["state"] != "queued" {
        return Err(format!(
            "the share to the offline receiver was not queued at the relay: {shared}"
        ));
    }
    let deposit_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut receiver = s.launcher.serve(&home, "receiver-mailbox-back", &args)?;
    complete(
        &mut receiver,
        s.study,
        s.instances,
        start + super::TRANSFER_TIMEOUT,
    )?;
    let drain_s = start.elapsed().as_secs_f64();
    Ok(MailboxRun {
        deposit_s,
        drain_s,
        mb_per_s: mb_per_s(s.bytes, deposit_s + drain_s),
    })
}
