//! The `discless` command line: argument definitions and one function per command.
//!
//! Exit codes scripts can rely on: 0 success, 1 partial success (e.g. some files rejected by an
//! import, an audit that does not verify), 2 fatal error (wrong passphrase, unusable store, bad
//! arguments). `--json` output goes to stdout and nothing else does; progress bars and logs go to
//! stderr, and bars are hidden when stdout is not a terminal.

mod network;
mod output;
pub mod remote;
pub mod secret;
mod serve;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::dicom::{export, import};
use crate::home::{Home, ENV_HOME};
use crate::keystore::{self, KeystoreError, Role};
use crate::store::{Store, StoreError};

/// Discless: medical images without the CD. An end-to-end encrypted DICOM store that clinics,
/// patients' phones and doctors' workstations use to hand studies to each other.
#[derive(Debug, Parser)]
#[command(name = "discless", version, propagate_version = true)]
pub struct Cli {
    /// The node's data directory [default: the platform data dir, e.g. ~/.local/share/discless]
    #[arg(long, global = true, env = ENV_HOME, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// More logging on stderr (-v info, -vv debug); DISCLESS_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new node: identity, keys and an empty encrypted store.
    ///
    /// The passphrase comes from DISCLESS_PASSPHRASE or is asked twice on the terminal. Without
    /// it, nothing in the home can be read.
    Init {
        /// The name peers see when pairing (e.g. "Riverside Clinic", "Dr Lee").
        #[arg(long)]
        name: Option<String>,
        /// What this node is for.
        #[arg(long, value_enum, default_value_t = Role::Patient)]
        role: Role,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Import DICOM files, folders (recursively), a CD's DICOMDIR, or ZIP archives.
    ///
    /// Every instance is kept byte for byte, encrypted. Files that are not DICOM or are broken are
    /// listed with the reason and skipped. Exit 0: all imported; 1: some files rejected.
    Import {
        /// Files, folders, DICOMDIR files or .zip archives.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Print one JSON object: imported, duplicates, rejected, studies.
        #[arg(long)]
        json: bool,
        /// Parallel workers [default: number of CPUs, at most 4].
        #[arg(long, hide = true)]
        workers: Option<usize>,
    },
    /// List the studies in this node.
    Studies {
        #[arg(long)]
        json: bool,
    },
    /// Show one study: its series and instances.
    Show {
        /// A StudyInstanceUID or an unambiguous prefix of the short id shown by `studies`.
        study: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a study's original files out, byte for byte.
    Export {
        /// A StudyInstanceUID or short id.
        study: String,
        /// Output folder (must be new or empty); with --zip, the .zip file to create.
        out: PathBuf,
        /// Write a single ZIP file instead of a folder.
        #[arg(long)]
        zip: bool,
        /// Lay out as a CD (DICOM/S0001/I0001 + DICOMDIR) that any DICOM viewer can open.
        #[arg(long)]
        dicomdir: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show the tamper-evident audit log.
    Audit {
        /// Check the hash chain; exit 1 when an entry was edited or deleted.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// Serve the web viewer, the JSON API and DICOMweb until Ctrl-C.
    ///
    /// Other commands keep working on the same home meanwhile: they run through this server.
    Serve {
        /// Address for HTTP. Beyond loopback every request needs the access token printed at
        /// start.
        #[arg(long, default_value = crate::http::DEFAULT_ADDR)]
        http: std::net::SocketAddr,
        /// Allow browser apps served from this origin (e.g. an OHIF viewer) to use the API and
        /// DICOMweb; repeatable; `*` allows any.
        #[arg(long = "cors-origin", value_name = "ORIGIN")]
        cors_origin: Vec<String>,
        /// Peer-to-peer listen address (libp2p multiaddr), repeatable
        /// [default: /ip4/0.0.0.0/tcp/7447 and /ip4/0.0.0.0/udp/7447/quic-v1].
        #[arg(long = "p2p", value_name = "MULTIADDR")]
        p2p: Vec<libp2p::Multiaddr>,
        /// Do not announce or discover nodes on the local network (mDNS).
        #[arg(long)]
        no_mdns: bool,
        /// A clinic's relay (its full address, ending in /p2p/<relay PeerId>), repeatable: this
        /// node keeps a reservation there, so peers reach it through the relay when they cannot
        /// directly, and studies for offline contacts wait in its mailbox.
        #[arg(long = "relay", value_name = "MULTIADDR")]
        relay: Vec<libp2p::Multiaddr>,
        /// Accept no direct connections: be reachable only through relays.
        #[arg(long, conflicts_with = "p2p")]
        no_listen: bool,
        /// Also receive DICOM (C-ECHO, C-STORE) from modalities and PACS on this address,
        /// e.g. 0.0.0.0:104 or 0.0.0.0:11112.
        #[arg(long, value_name = "ADDR")]
        dimse: Option<std::net::SocketAddr>,
        /// The AE title this node answers to over DICOM.
        #[arg(long, default_value = crate::dimse::DEFAULT_AE_TITLE, value_name = "TITLE")]
        ae_title: String,
        /// Accept associations only from this calling AE title (optionally only from HOST);
        /// repeatable. Without it any calling AE may store.
        #[arg(long = "allow-ae", value_name = "TITLE[@HOST]")]
        allow_ae: Vec<crate::dimse::AllowedAe>,
    },
    /// Pair with another node by QR code: `pair new` shows a ticket, `pair accept` uses one.
    #[command(subcommand)]
    Pair(PairCommand),
    /// List paired nodes, or remove one.
    Contacts {
        #[command(subcommand)]
        action: Option<ContactsCommand>,
        #[arg(long)]
        json: bool,
    },
    /// Share a study with a contact: its key is sealed to the contact, which then fetches the
    /// encrypted study from this node.
    Share {
        /// A StudyInstanceUID or short id.
        study: String,
        /// The contact: display name, PeerId, or an unambiguous prefix of either.
        #[arg(long)]
        to: String,
        /// How long the grant lasts (e.g. 30d, 12h).
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        expires: std::time::Duration,
        /// Wait until the contact holds the whole study, showing progress.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop sharing a study with a contact. What it already received cannot be taken back.
    Revoke {
        study: String,
        /// The contact: display name, PeerId, or an unambiguous prefix of either.
        #[arg(long)]
        from: String,
        #[arg(long)]
        json: bool,
    },
    /// Studies being sent and received: progress, rate, state.
    Transfers {
        #[arg(long)]
        json: bool,
    },
    /// Send a study to a PACS or workstation by DICOM C-STORE.
    ///
    /// Each instance goes in its own transfer syntax; uncompressed ones are re-encoded in
    /// explicit or implicit VR little endian if the peer refuses theirs. Exit 0: all stored;
    /// 1: some instances refused or failed.
    Push {
        /// A StudyInstanceUID or short id.
        study: String,
        /// The receiving AE: TITLE@HOST:PORT.
        #[arg(long, value_name = "AE@HOST:PORT")]
        to: crate::dimse::scu::Destination,
        /// The AE title this node calls as (the peer may have to know it).
        #[arg(long, default_value = crate::dimse::DEFAULT_AE_TITLE, value_name = "TITLE")]
        calling_ae: String,
        #[arg(long)]
        json: bool,
    },
    /// Show this node's identity and store summary.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Run the whole journey on this machine: a clinic's relay, a clinic node receiving a CT and
    /// a radiograph from a modality over DICOM, a patient's phone pairing by QR and receiving
    /// them, and a doctor's node, offline when the patient shares, receiving the CT from the
    /// relay's mailbox. Prints each step and each web UI, and stays up until Ctrl-C.
    Demo {
        /// CT slices to generate (512x512 each).
        #[arg(long, default_value_t = 60)]
        slices: u32,
        /// Keep the demo's homes, logs and files in this folder instead of a temporary one.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        /// Listen on eight consecutive loopback ports from this one (relay, then the web UIs of
        /// clinic, phone and doctor, the clinic's DICOM port, then their peer-to-peer ports);
        /// 0 picks free ports.
        #[arg(long, default_value_t = 0, value_name = "N")]
        port_base: u16,
        /// Run straight through and exit: 0 only when every step worked and the doctor's CT is
        /// byte-identical to what the modality sent (used by the tests).
        #[arg(long)]
        check: bool,
    },
    /// Measure performance; prints JSON with ratios against references measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Tools for tests and troubleshooting.
    #[command(subcommand, hide = true)]
    Debug(DebugCommand),
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Ask a peer for blobs of a study, whether or not anything was granted, and print its
    /// answer as JSON (shows what a stranger or a revoked contact gets).
    RequestBlobs {
        /// The peer's PeerId.
        peer: String,
        /// Where to reach it (multiaddr), repeatable.
        #[arg(long)]
        addr: Vec<libp2p::Multiaddr>,
        #[arg(long)]
        study: String,
        /// Blob ids to ask for.
        ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PairCommand {
    /// Show a one-time pairing ticket (QR code and text) for another node to scan.
    ///
    /// Needs `discless serve` running: the node must be online when the ticket is scanned.
    New {
        /// Bind the ticket to this Patient ID: the paired phone receives every study of that
        /// patient held here, now and later.
        #[arg(long, value_name = "PATIENT_ID")]
        for_patient: Option<String>,
        /// How long the ticket can be used.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        expires: std::time::Duration,
        /// Also write the QR code as a PNG image.
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
        /// Also write the QR code as an SVG image.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// Wait until the ticket is used and show the confirmation code.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Pair with the node that issued TICKET (the text of its QR code).
    Accept {
        ticket: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Forget a contact and revoke everything shared with it.
    Remove {
        contact: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Serving a 512x512 CT: first image, rendered-frame latency, WADO-RS, QIDO, metadata; the
    /// same for Orthanc (+ DICOMweb plugin) when installed and run as root.
    Serve {
        /// Slices of the generated CT series.
        #[arg(long, default_value_t = 300)]
        instances: u32,
        #[arg(long)]
        json: bool,
        /// Internal: only measure the DICOMweb server at this base URL (the benchmark runs this
        /// inside Orthanc's network namespace).
        #[arg(long, hide = true, requires = "target")]
        measure: Option<String>,
        /// Internal: the study to measure, as JSON (with --measure).
        #[arg(long, hide = true)]
        target: Option<std::path::PathBuf>,
    },
    /// Where blob bytes should live: 1 MiB values in sled vs plain files (throughput, disk, RSS).
    Blobs {
        /// MiB to write with each backend.
        #[arg(long, default_value_t = 512)]
        mib: u64,
        #[arg(long)]
        json: bool,
    },
    /// Import throughput and memory against raw XChaCha20-Poly1305 sealing.
    Import {
        /// Import this folder instead of a generated CT series.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Slices of the generated 512x512 CT series.
        #[arg(long, default_value_t = 300)]
        instances: u32,
        /// Imports (each into a fresh home) and reference measurements, interleaved; the best
        /// time of each counts.
        #[arg(long, default_value_t = crate::bench::IMPORT_RUNS)]
        runs: usize,
        /// Print JSON (the only output format; accepted for symmetry with other commands).
        #[arg(long)]
        json: bool,
    },
    /// A study shared between two nodes on loopback (TCP and QUIC) vs a bare libp2p stream and
    /// a plain TCP copy of the same bytes: MB/s, first instance viewable, CPU per MB, peak RSS.
    Transfer {
        /// Slices of the generated CT series.
        #[arg(long, default_value_t = 300)]
        instances: u32,
        /// Rows and columns of each slice.
        #[arg(long, default_value_t = 512, hide = true)]
        size: u16,
        /// Also through a relay (started here): its circuit, with neither node reachable
        /// directly, and its mailbox, with the receiver offline during the share.
        #[arg(long)]
        via_relay: bool,
        #[arg(long)]
        json: bool,
    },
    /// C-STORE ingest: dcmtk's storescu into the node vs into dcmtk's storescp (and Orthanc).
    Dimse {
        /// Slices of the generated 512x512 CT series, sent in one association.
        #[arg(long, default_value_t = 300)]
        instances: u32,
        /// Times each receiver is measured (interleaved); the best time of each counts.
        #[arg(long, default_value_t = crate::bench::DIMSE_RUNS)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
}

/// How a command ended, as an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Partial,
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Partial => 1,
        }
    }
}

/// A command failed (exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    #[error("no home directory: pass --home DIR or set {ENV_HOME}")]
    NoHome,
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Import(#[from] import::ImportError),
    #[error(transparent)]
    Export(#[from] export::ExportError),
    #[error(transparent)]
    Passphrase(#[from] secret::PassphraseError),
    #[error("{0}")]
    Bench(String),
    #[error("this command cannot run through a running server")]
    NotRemote,
    #[error(transparent)]
    Serve(#[from] crate::http::ServeError),
    #[error("talking to the running server failed: {0}")]
    Remote(String),
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    #[error(transparent)]
    Push(#[from] crate::dimse::scu::PushError),
    #[error(transparent)]
    Dimse(#[from] crate::dimse::SpawnError),
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("`{0}` needs this node online: start `discless serve` on this home first")]
    Offline(&'static str),
    /// A command that ran inside the server failed; its message is already complete.
    #[error("{0}")]
    Failed(String),
    #[error("cannot draw the QR code: {0}")]
    Qr(String),
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Output(e)
    }
}

impl CliError {
    /// Whether this is only stdout being closed early (`discless studies | head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

fn home_of(cli_home: Option<&std::path::Path>) -> Result<Home, CliError> {
    Home::resolve(cli_home).ok_or(CliError::NoHome)
}

fn show_progress(json: bool) -> bool {
    !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// Runs a parsed command line.
///
/// Commands that use the store open it here; when another process (normally `discless serve`)
/// holds it, they run inside that process through its control API instead (see `remote`).
pub fn run(cli: Cli) -> Result<Outcome, CliError> {
    let home = || home_of(cli.home.as_deref());
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Init { name, role, json } => {
            let home = home()?;
            if home.exists() {
                return Err(KeystoreError::Exists(home.root().to_path_buf()).into());
            }
            let pass = secret::passphrase(true)?;
            let name = name.unwrap_or_else(default_name);
            let keys = keystore::create(&home.keystore(), pass.as_bytes(), &name, role)?;
            let peer = keys.peer_id().to_string();
            let store = Store::open(&home, keys)?;
            store
                .audit()
                .append("init", serde_json::json!({ "peer_id": peer, "role": role }))
                .map_err(StoreError::from)?;
            output::init(&mut stdout, &home, &peer, &name, role, json)?;
            Ok(Outcome::Success)
        }
        Command::Serve {
            http,
            cors_origin,
            p2p,
            no_mdns,
            relay,
            no_listen,
            dimse,
            ae_title,
            allow_ae,
        } => {
            drop(stdout);
            let mut net = crate::net::Config {
                mdns: !no_mdns,
                relays: relay,
                ..Default::default()
            };
            if !p2p.is_empty() {
                net.listen = p2p;
            }
            if no_listen {
                net.listen.clear();
            }
            let dimse = dimse.map(|addr| crate::dimse::Config {
                addr,
                ae_title,
                allow: crate::dimse::AllowList(allow_ae),
            });
            serve::run(&home()?, http, cors_origin, net, dimse)
        }
        Command::Demo {
            slices,
            keep,
            port_base,
            check,
        } => {
            let exe = std::env::current_exe()
                .map_err(|e| CliError::Failed(format!("cannot find this program's path: {e}")))?;
            crate::demo::run(&crate::demo::Options {
                slices,
                keep,
                port_base,
                check,
                exe,
            })?;
            Ok(Outcome::Success)
        }
        Command::Bench(BenchCommand::Serve {
            measure: Some(base),
            target: Some(target),
            ..
        }) => {
            let t = std::fs::read(&target)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                .map_err(|e| CliError::Bench(format!("{}: {e}", target.display())))?;
            let r = crate::bench::measure(&base, &t).map_err(CliError::Bench)?;
            output::json(&mut stdout, &r)?;
            Ok(Outcome::Success)
        }
        Command::Bench(BenchCommand::Serve { instances, .. }) => {
            // Orthanc is measured by this very binary, run inside its network namespace.
            let exe = std::env::current_exe()
                .map_err(|e| CliError::Bench(format!("cannot find this program: {e}")))?;
            let r = crate::bench::serve(&exe, instances).map_err(CliError::Bench)?;
            output::json(&mut stdout, &r)?;
            Ok(Outcome::Success)
        }
        Command::Bench(BenchCommand::Blobs { mib, json: _ }) => {
            let r = crate::bench::blobs(mib).map_err(CliError::Bench)?;
            output::json(&mut stdout, &r)?;
            Ok(Outcome::Success)
        }
        Command::Bench(BenchCommand::Import {
            input,
            instances,
            runs,
            json: _,
        }) => {
            let r = crate::bench::import(input.as_deref(), instances, default_workers(), runs)
                .map_err(CliError::Bench)?;
            output::json(&mut stdout, &r)?;
            Ok(Outcome::Success)
        }
        Command::Bench(BenchCommand::Transfer {
            instances,
            size,
            via_relay,
            json: _,
        }) => {
            // The two nodes are this very binary, started as `serve`.
            let exe = std::env::current_exe()
                .map_err(|e| CliError::Bench(format!("cannot find this program: {e}")))?;
            let r = crate::bench::transfer(&exe, instances, size, via_relay)
                .map_err(CliError::Bench)?;
            output::json(&mut stdout, &r)?;
            Ok(Outcome::Success)
        }
        Command::Bench(BenchCommand::Dimse {
            instances,
            runs,
            json: _,
        }) => {
            let r = crate::bench::dimse(instances, runs).map_err(CliError::Bench)?;
            output::json(&mut stdout, &r)?;
            Ok(Outcome::Success)
        }
        command => {
            let home = home()?;
            if !home.exists() {
                return Err(KeystoreError::Missing(home.root().to_path_buf()).into());
            }
            let pass = secret::passphrase(false)?;
            let keys = keystore::open(&home.keystore(), pass.as_bytes())?;
            match Store::open(&home, keys) {
                Ok(store) => execute(&store, None, command, &mut stdout, true),
                Err(StoreError::Locked(_)) => remote::run(&home, &mut stdout),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Runs a store command against an open store, writing its output to `w`. `interactive` shows
/// progress bars (never when the command runs inside a server on behalf of a remote CLI).
pub fn execute(
    store: &Store,
    net: Option<&crate::net::Handle>,
    command: Command,
    w: &mut dyn std::io::Write,
    interactive: bool,
) -> Result<Outcome, CliError> {
    match command {
        Command::Import {
            paths,
            json,
            workers,
        } => {
            let workers = workers.unwrap_or_else(default_workers);
            let bar = output::Bar::new(interactive && show_progress(json), "importing");
            let report = import::import(store, &paths, workers, &|p| {
                bar.set(p.done as u64, p.total as u64);
            })?;
            bar.finish();
            output::import(w, &report, json)?;
            Ok(if report.rejected.is_empty() {
                Outcome::Success
            } else {
                Outcome::Partial
            })
        }
        Command::Studies { json } => {
            output::studies(w, &store.studies()?, json)?;
            Ok(Outcome::Success)
        }
        Command::Show { study, json } => {
            let s = store.resolve_study(&study)?;
            let instances = store.instances(&s.study_instance_uid)?;
            output::show(w, &s, &instances, json)?;
            Ok(Outcome::Success)
        }
        Command::Export {
            study,
            out,
            zip,
            dicomdir,
            json,
        } => {
            let s = store.resolve_study(&study)?;
            let bar = output::Bar::new(interactive && show_progress(json), "exporting");
            let report = export::export(
                store,
                &s,
                &out,
                export::Options { zip, dicomdir },
                &|done, total| bar.set(done, total),
            )?;
            bar.finish();
            output::export(w, &report, json)?;
            Ok(Outcome::Success)
        }
        Command::Push {
            study,
            to,
            calling_ae,
            json,
        } => {
            let s = store.resolve_study(&study)?;
            let bar = output::Bar::new(interactive && show_progress(json), "pushing");
            let report = crate::dimse::scu::push(store, &s, &to, &calling_ae, &|done, total| {
                bar.set(done, total)
            })?;
            bar.finish();
            output::push(w, &report, json)?;
            Ok(if report.failed == 0 {
                Outcome::Success
            } else {
                Outcome::Partial
            })
        }
        Command::Audit { verify, json } => {
            let verified = if verify {
                Some(store.audit().verify().map_err(|e| e.to_string()))
            } else {
                None
            };
            // A log that does not authenticate cannot be listed either; report that instead.
            let entries = store.audit().entries().unwrap_or_default();
            output::audit(w, &entries, verified.as_ref(), json)?;
            Ok(match verified {
                Some(Err(_)) => Outcome::Partial,
                _ => Outcome::Success,
            })
        }
        Command::Info { json } => {
            output::info(w, store, net, json)?;
            Ok(Outcome::Success)
        }
        Command::Pair(cmd) => network::pair(net, cmd, w),
        Command::Contacts { action, json } => network::contacts(store, net, action, json, w),
        Command::Share {
            study,
            to,
            expires,
            wait,
            json,
        } => network::share(store, net, &study, &to, expires, wait, json, w, interactive),
        Command::Revoke { study, from, json } => {
            network::revoke(store, net, &study, &from, json, w)
        }
        Command::Transfers { json } => network::transfers(store, net, json, w),
        Command::Debug(DebugCommand::RequestBlobs {
            peer,
            addr,
            study,
            ids,
        }) => {
            let net = net.ok_or(CliError::Offline("debug request-blobs"))?;
            let peer = peer
                .parse()
                .map_err(|_| CliError::Failed(format!("not a PeerId: {peer}")))?;
            let r = net.block_on(net.debug_request_blobs(peer, addr, study, ids))?;
            output::json(w, &r)?;
            Ok(Outcome::Success)
        }
        Command::Init { .. } | Command::Serve { .. } | Command::Demo { .. } | Command::Bench(_) => {
            Err(CliError::NotRemote)
        }
    }
}

/// Resolves a command's relative paths against `cwd` (the CLI's directory, when the command runs
/// inside a server started elsewhere).
pub fn absolutize(command: Command, cwd: &std::path::Path) -> Command {
    let abs = |p: PathBuf| if p.is_absolute() { p } else { cwd.join(p) };
    match command {
        Command::Import {
            paths,
            json,
            workers,
        } => Command::Import {
            paths: paths.into_iter().map(abs).collect(),
            json,
            workers,
        },
        Command::Export {
            study,
            out,
            zip,
            dicomdir,
            json,
        } => Command::Export {
            study,
            out: abs(out),
            zip,
            dicomdir,
            json,
        },
        Command::Pair(PairCommand::New {
            for_patient,
            expires,
            png,
            svg,
            wait,
            json,
        }) => Command::Pair(PairCommand::New {
            for_patient,
            expires,
            png: png.map(abs),
            svg: svg.map(abs),
            wait,
            json,
        }),
        other => other,
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(4)
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "Discless node".to_owned())
}
