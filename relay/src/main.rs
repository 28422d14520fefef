//! `discless-relay`: the relay a clinic runs for its nodes.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use discless_relay::server::{self, Config, Limits};
use libp2p::{Multiaddr, PeerId};

/// A Discless relay: carries encrypted circuits between a clinic's nodes and the phones and
/// workstations they pair with, and holds encrypted studies for recipients that are offline.
/// It never holds a key.
#[derive(Debug, Parser)]
#[command(name = "discless-relay", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay until Ctrl-C or SIGTERM.
    Serve {
        /// Address to listen on (libp2p multiaddr), repeatable.
        #[arg(long, required = true, value_name = "MULTIADDR")]
        listen: Vec<Multiaddr>,
        /// Where the relay keeps its identity and mailbox.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// A node allowed to use this relay (PeerId), repeatable.
        #[arg(long, value_name = "PEERID")]
        allow: Vec<PeerId>,
        /// A file of allowed PeerIds, one per line (re-read every 10 s).
        #[arg(long, value_name = "FILE")]
        allow_file: Option<PathBuf>,
        /// Admit any node (not for a clinic's production relay).
        #[arg(long)]
        open: bool,
        /// Address to advertise instead of the listen addresses (e.g. the public one), repeatable.
        #[arg(long, value_name = "MULTIADDR")]
        announce: Vec<Multiaddr>,
        /// Most bytes one circuit may carry (both directions), e.g. 8GiB; 0 = unlimited.
        #[arg(long, default_value = "8GiB", value_parser = parse_bytes)]
        max_circuit_bytes: u64,
        /// Longest a circuit may stay open.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        max_circuit_duration: Duration,
        /// Most bytes waiting for one recipient.
        #[arg(long, default_value = "20GiB", value_parser = parse_bytes)]
        mailbox_quota: u64,
        /// Most bytes one sender may have waiting in all mailboxes.
        #[arg(long, default_value = "20GiB", value_parser = parse_bytes)]
        sender_quota: u64,
        /// How long an undelivered item is kept.
        #[arg(long, default_value = "14d", value_parser = humantime::parse_duration)]
        mailbox_ttl: Duration,
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Print the relay's PeerId and the addresses nodes should use.
    Info {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// "8GiB", "500MB", "1048576".
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} (use B, KB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("too large: {s:?}"))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DISCLESS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,discless_relay=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            data,
            allow,
            allow_file,
            open,
            announce,
            max_circuit_bytes,
            max_circuit_duration,
            mailbox_quota,
            sender_quota,
            mailbox_ttl,
            metrics,
        } => {
            if max_circuit_duration.is_zero()
                || max_circuit_duration.as_secs() > u64::from(u32::MAX)
            {
                anyhow::bail!("--max-circuit-duration must be between 1 s and 136 years");
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let running = server::start(Config {
                    listen,
                    announce,
                    data,
                    allow,
                    allow_file,
                    open,
                    max_circuit_bytes,
                    max_circuit_duration,
                    limits: Limits {
                        per_recipient: mailbox_quota,
                        per_sender: sender_quota,
                        ttl_secs: mailbox_ttl.as_secs(),
                    },
                    metrics,
                })
                .await?;
                let mut out = std::io::stdout().lock();
                writeln!(out, "Discless relay {} is running.", running.peer_id)?;
                writeln!(
                    out,
                    "Point nodes at it with `discless serve --relay ADDR`, using:"
                )?;
                for a in &running.addrs {
                    writeln!(out, "  {a}")?;
                }
                if let Some(m) = running.metrics_addr {
                    writeln!(out, "Metrics: http://{m}/metrics")?;
                }
                writeln!(out, "Press Ctrl-C to stop.")?;
                out.flush()?;
                drop(out);
                shutdown_signal().await;
                running.shutdown().await;
                Ok::<_, anyhow::Error>(())
            })
        }
        Command::Info { data, json } => {
            let key = server::identity(&data).context("reading the relay identity")?;
            let peer = key.public().to_peer_id();
            let addrs: Vec<String> = std::fs::read(server::addrs_file(&data))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| {
                    v["addrs"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                })
                .unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "peer_id": peer.to_string(), "addrs": addrs })
                    )?
                );
            } else {
                println!("PeerId {peer}");
                if addrs.is_empty() {
                    println!("No addresses yet: start it with `discless-relay serve`.");
                }
                for a in addrs {
                    println!("  {a}");
                }
            }
            Ok(())
        }
    }
}
