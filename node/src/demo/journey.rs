//! The demo's steps, in the order a patient lives them.

use std::path::Path;
use std::time::Duration;

use libp2p::Multiaddr;
use serde_json::Value;

use super::{DemoError, Options, Ports, Steps};
use crate::dicom::import;
use crate::dimse::scu::{self, Destination};
use crate::home::Home;
use crate::keystore::{self, Role};
use crate::spawned::{Launcher, Served};
use crate::store::Store;

/// Only the demo's own homes use it; it protects nothing.
const PASSPHRASE: &str = "discless demo passphrase";
/// Moving a small study between nodes on one machine takes seconds; this bounds a broken run.
const TRANSFER_LIMIT: Duration = Duration::from_secs(300);
const CALLING_AE: &str = "DEMO_CT";

/// Everything the demo started, stopped in reverse order at the end.
pub(crate) struct Cast {
    relay: Option<discless_relay::server::Running>,
    relay_addr: Multiaddr,
    nodes: Vec<(&'static str, Served)>,
}

impl Cast {
    pub(crate) fn print_urls(&self) {
        println!();
        println!("Web UIs (open them in a browser on this machine):");
        for (who, n) in &self.nodes {
            println!("  {who:<16} {}", n.url);
        }
        println!("  relay            {}", self.relay_addr);
        println!("On this machine they need no login; `discless serve --http` on another address");
        println!("asks for the access token each node prints at start.");
    }

    pub(crate) fn stop(mut self, rt: &tokio::runtime::Runtime) {
        while let Some((who, n)) = self.nodes.pop() {
            if let Err(e) = n.stop() {
                eprintln!("stopping the {who} node: {e}");
            }
        }
        if let Some(r) = self.relay.take() {
            rt.block_on(r.shutdown());
        }
    }
}

fn node<'a>(cast: &'a Cast, who: &str) -> Result<&'a Served, String> {
    cast.nodes
        .iter()
        .find(|(w, _)| *w == who)
        .map(|(_, n)| n)
        .ok_or_else(|| format!("the {who} node is not running"))
}

fn text(v: &Value, key: &str, what: &str) -> Result<String, String> {
    v[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{what} printed no {key}: {v}"))
}

/// Whether `node` lists `study` with all `instances`.
fn holds(node: &Served, study: &str, instances: usize) -> Result<bool, String> {
    let v = node.control(&["studies", "--json"])?;
    Ok(v.as_array().is_some_and(|a| {
        a.iter().any(|s| {
            s["study_instance_uid"] == study
                && s["instance_count"].as_u64() == Some(instances as u64)
        })
    }))
}

fn serve_args(ports: Ports, http: u16, p2p: u16, relay: &Multiaddr) -> Vec<String> {
    vec![
        "--http".into(),
        format!("127.0.0.1:{}", ports.port(http)),
        "--p2p".into(),
        format!("/ip4/127.0.0.1/tcp/{}", ports.port(p2p)),
        "--no-mdns".into(),
        "--relay".into(),
        relay.to_string(),
    ]
}

pub(crate) fn run(
    rt: &tokio::runtime::Runtime,
    s: &mut Steps,
    opts: &Options,
    root: &Path,
    ports: Ports,
) -> Result<Cast, DemoError> {
    let logs = root.join("logs");
    let launcher = Launcher {
        exe: opts.exe.clone(),
        logs: logs.clone(),
        passphrase: PASSPHRASE.into(),
        log: Some("info".into()),
    };
    let homes = [
        ("clinic", "Demo Clinic", "clinic"),
        ("patient", "Alex's phone", "patient"),
        ("doctor", "Dr Rivera", "doctor"),
    ];
    let ids = s.step("three nodes get their keys", |_| {
        std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
        let mut ids = Vec::new();
        for (dir, name, role) in homes {
            let v = launcher.cli(
                &root.join(dir),
                &["init", "--name", name, "--role", role, "--json"],
            )?;
            ids.push(text(&v, "peer_id", "init")?);
        }
        let said = format!("clinic, patient's phone, doctor: {} PeerIds", ids.len());
        Ok((ids, said))
    })?;

    let relay = s.step("the clinic's relay starts (admits these three)", |_| {
        let allow = ids
            .iter()
            .map(|p| p.parse().map_err(|e| format!("PeerId {p}: {e}")))
            .collect::<Result<Vec<_>, String>>()?;
        let listen: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", ports.port(Ports::RELAY))
            .parse()
            .map_err(|e| format!("relay address: {e}"))?;
        let mut config = discless_relay::server::Config::new(listen, root.join("relay"));
        config.allow = allow;
        let running = rt
            .block_on(discless_relay::server::start(config))
            .map_err(|e| e.to_string())?;
        let addr = running
            .tcp_addr()
            .cloned()
            .ok_or("the relay listens on no TCP address")?;
        let said = addr.to_string();
        Ok(((running, addr), said))
    })?;
    let (running, relay_addr) = relay;
    let mut cast = Cast {
        relay: Some(running),
        relay_addr: relay_addr.clone(),
        nodes: Vec::new(),
    };

    s.step("the clinic and the phone come online", |_| {
        let mut clinic_args = serve_args(ports, Ports::CLINIC_HTTP, Ports::CLINIC_P2P, &relay_addr);
        clinic_args.extend([
            "--dimse".into(),
            format!("127.0.0.1:{}", ports.port(Ports::CLINIC_DICOM)),
        ]);
        let clinic = launcher.serve(&root.join("clinic"), "clinic", &clinic_args)?;
        cast.nodes.push(("clinic", clinic));
        let patient = launcher.serve(
            &root.join("patient"),
            "patient",
            &serve_args(ports, Ports::PATIENT_HTTP, Ports::PATIENT_P2P, &relay_addr),
        )?;
        cast.nodes.push(("patient's phone", patient));
        let dimse = node(&cast, "clinic")?.dimse.clone().unwrap_or_default();
        Ok(((), format!("clinic receives DICOM at DISCLESS@{dimse}")))
    })?;

    let modality = root.join("modality");
    let demo = s.step("a modality produces a CT series and a radiograph", |_| {
        let d = discless_fixtures::demo_study(&modality.join("out"), opts.slices)
            .map_err(|e| e.to_string())?;
        let said = format!(
            "{} instances, patient {}",
            d.ct.files.len() + d.cr.files.len(),
            d.ct.study.patient.name
        );
        Ok((d, said))
    })?;

    s.step("the modality sends them by C-STORE", |_| {
        let dimse = node(&cast, "clinic")?
            .dimse
            .clone()
            .ok_or("the clinic runs no DICOM listener")?;
        let to = Destination {
            ae_title: crate::dimse::DEFAULT_AE_TITLE.into(),
            addr: dimse,
        };
        // The modality's own outbox: a throwaway store the C-STORE client sends from.
        let home = Home::new(modality.join("outbox"));
        let keys = keystore::create(&home.keystore(), PASSPHRASE.as_bytes(), "CT", Role::Clinic)
            .map_err(|e| e.to_string())?;
        let store = Store::open(&home, keys).map_err(|e| e.to_string())?;
        let r = import::import(&store, &[modality.join("out")], 2, &|_| {})
            .map_err(|e| e.to_string())?;
        if !r.rejected.is_empty() {
            return Err(format!("{} generated files rejected", r.rejected.len()));
        }
        let mut sent = 0;
        for uid in [
            &demo.ct.study.study_instance_uid,
            &demo.cr.study.study_instance_uid,
        ] {
            let study = store.resolve_study(uid).map_err(|e| e.to_string())?;
            let report = scu::push(&store, &study, &to, CALLING_AE, &|_, _| {})
                .map_err(|e| e.to_string())?;
            if report.failed > 0 {
                return Err(format!(
                    "{} instances refused by {to}: {:?}",
                    report.failed,
                    report.instances.iter().find_map(|i| i.error.clone())
                ));
            }
            sent += report.sent;
        }
        Ok(((), format!("{sent} instances stored by {to}")))
    })?;

    let ct_uid = demo.ct.study.study_instance_uid.clone();
    let cr_uid = demo.cr.study.study_instance_uid.clone();
    let (ct_n, cr_n) = (demo.ct.files.len(), demo.cr.files.len());
    let patient_id = demo.ct.study.patient.id.clone();

    let ticket = s.step("the clinic shows a QR bound to the patient", |_| {
        let clinic = node(&cast, "clinic")?;
        let t = clinic.control(&["pair", "new", "--for-patient", &patient_id, "--json"])?;
        let ticket = text(&t, "ticket", "pair new")?;
        let qr = crate::net::ticket::qr::terminal(&ticket)?;
        Ok((
            (ticket, qr),
            format!("Patient ID {patient_id}, single use, 15 min"),
        ))
    })?;
    let (ticket, qr) = ticket;
    if !opts.check {
        println!("{qr}");
        println!("    {ticket}");
    }

    s.step("the phone scans it; both show the same code", |_| {
        let p = node(&cast, "patient's phone")?.control(&["pair", "accept", &ticket, "--json"])?;
        let sas = text(&p, "sas", "pair accept")?;
        Ok(((), format!("paired with {}, code {sas}", p["name"])))
    })?;

    s.step("the patient's studies reach the phone", |s| {
        let phone = node(&cast, "patient's phone")?;
        s.wait_until(
            "the CT and the radiograph on the phone",
            TRANSFER_LIMIT,
            || Ok(holds(phone, &ct_uid, ct_n)? && holds(phone, &cr_uid, cr_n)?),
        )?;
        Ok((
            (),
            format!("CT ({ct_n} slices) and radiograph, end to end encrypted"),
        ))
    })?;

    let doctor_args = serve_args(ports, Ports::DOCTOR_HTTP, Ports::DOCTOR_P2P, &relay_addr);
    let doctor_home = root.join("doctor");
    let doctor_id = ids.get(2).cloned().unwrap_or_default();
    let patient_id_peer = ids.get(1).cloned().unwrap_or_default();
    let doctor_ticket = s.step("the doctor hands out a QR, then goes offline", |_| {
        let doctor = launcher.serve(&doctor_home, "doctor-1", &doctor_args)?;
        let t = doctor.control(&["pair", "new", "--expires", "1h", "--json"])?;
        let ticket = text(&t, "ticket", "pair new")?;
        let qr = crate::net::ticket::qr::terminal(&ticket)?;
        doctor.stop()?;
        Ok((
            (ticket, qr),
            "e.g. printed on the appointment letter; valid 1 h".into(),
        ))
    })?;
    let (doctor_ticket, doctor_qr) = doctor_ticket;
    if !opts.check {
        println!("{doctor_qr}");
        println!("    {doctor_ticket}");
    }

    let patient_sas = s.step("the phone scans it: the request waits at the relay", |_| {
        let p = node(&cast, "patient's phone")?.control(&[
            "pair",
            "accept",
            &doctor_ticket,
            "--json",
        ])?;
        let sas = text(&p, "sas", "pair accept")?;
        if p["queued_at"].as_str().is_none() {
            return Err(format!(
                "the doctor is offline, yet the pairing did not wait at the relay: {p}"
            ));
        }
        Ok((
            sas.clone(),
            format!("sealed to the doctor's key; code {sas}"),
        ))
    })?;

    s.step("the phone shares the CT: it waits at the relay", |_| {
        let v = node(&cast, "patient's phone")?.control(&[
            "share",
            &ct_uid,
            "--to",
            &doctor_id,
            "--expires",
            "7d",
            "--json",
        ])?;
        let state = text(&v, "state", "share")?;
        if state != "queued" {
            return Err(format!(
                "the share is {state}, not queued in the relay's mailbox: {v}"
            ));
        }
        Ok(((), "sealed to the doctor, in the relay's mailbox".into()))
    })?;

    s.step("the doctor comes online: paired, CT arrives", |s| {
        let doctor = launcher.serve(&doctor_home, "doctor-2", &doctor_args)?;
        cast.nodes.push(("doctor", doctor));
        let doctor = node(&cast, "doctor")?;
        s.wait_until("the CT on the doctor's node", TRANSFER_LIMIT, || {
            holds(doctor, &ct_uid, ct_n)
        })?;
        let contacts = doctor.control(&["contacts", "--json"])?;
        let phone = contacts
            .as_array()
            .and_then(|a| a.iter().find(|c| c["peer_id"] == patient_id_peer.as_str()))
            .ok_or_else(|| format!("the doctor has no contact for the phone: {contacts}"))?;
        if phone["sas"] != patient_sas.as_str() {
            return Err(format!(
                "the doctor shows code {}, the phone showed {patient_sas}",
                phone["sas"]
            ));
        }
        Ok((
            (),
            format!("same code {patient_sas} on both; {ct_n} slices, from the mailbox"),
        ))
    })?;

    s.step("the phone learns the doctor has it", |s| {
        let phone = node(&cast, "patient's phone")?;
        // Two messages that travel separately: the delivery receipt (through the relay's
        // mailbox) and the doctor's first answer as a contact, which completes the pairing.
        // Either may come first, so the phone is given the same time for both.
        let (mut delivered, mut paired) = (false, false);
        let waited = s.wait_until(
            "delivery and pairing noted on the phone",
            TRANSFER_LIMIT,
            || {
                let transfers = phone.control(&["transfers", "--json"])?;
                delivered = transfers.as_array().is_some_and(|a| {
                    a.iter().any(|t| {
                        t["direction"] == "out"
                            && t["study_uid"] == ct_uid.as_str()
                            && t["state"] == "delivered"
                    })
                });
                let contacts = phone.control(&["contacts", "--json"])?;
                paired = contacts.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|c| c["peer_id"] == doctor_id.as_str() && c["awaiting"].is_null())
                });
                Ok(delivered && paired)
            },
        );
        if let Err(e) = waited {
            return Err(format!(
                "{e} (delivery noted: {delivered}; pairing confirmed: {paired})"
            ));
        }
        Ok(((), "share state: delivered; pairing confirmed".into()))
    })?;

    let export = root.join("doctor-export");
    s.step("the doctor exports DICOM files + DICOMDIR", |_| {
        let out = export.display().to_string();
        let v =
            node(&cast, "doctor")?.control(&["export", &ct_uid, &out, "--dicomdir", "--json"])?;
        Ok(((), format!("{} files in {out}", v["files"])))
    })?;

    s.step("every data set is what the modality sent", |_| {
        let n = super::verify::same_data_sets(&demo.ct.files, &export)?;
        Ok(((), format!("{n} of {ct_n} instances, BLAKE3 equal")))
    })?;
    Ok(cast)
}
