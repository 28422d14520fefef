//! The peer-to-peer commands: pair, contacts, share, revoke, transfers.
//!
//! They need the node's network, which lives in `discless serve`; run elsewhere, the commands
//! that only record a decision (share, revoke, contacts remove) still work and the server acts
//! on them when it next runs.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::output::{self, size, Bar};
use super::{CliError, ContactsCommand, Outcome, PairCommand};
use crate::net::{self, ticket, Handle, Paired};
use crate::store::{now_unix, GrantState, Store};

macro_rules! out {
    ($w:expr, $($arg:tt)*) => { writeln!($w, $($arg)*)? };
}

fn online<'a>(net: Option<&'a Handle>, what: &'static str) -> Result<&'a Handle, CliError> {
    net.ok_or(CliError::Offline(what))
}

fn when(unix: u64) -> String {
    let now = now_unix();
    if unix > now {
        format!(
            "in {}",
            humantime::format_duration(Duration::from_secs((unix - now) / 60 * 60 + 60))
        )
    } else {
        "already".into()
    }
}

#[derive(Serialize)]
struct NewTicket<'a> {
    #[serde(flatten)]
    issued: &'a net::Issued,
    png: Option<PathBuf>,
    svg: Option<PathBuf>,
    paired: Option<Paired>,
}

pub(super) fn pair(
    net: Option<&Handle>,
    cmd: PairCommand,
    w: &mut dyn Write,
) -> Result<Outcome, CliError> {
    match cmd {
        PairCommand::New {
            for_patient,
            expires,
            png,
            svg,
            wait,
            json,
        } => {
            let net = online(net, "pair new")?;
            let mut events = net.paired_events();
            let issued = net.block_on(net.issue_ticket(expires, for_patient))?;
            if let Some(p) = &png {
                let img = ticket::qr::png(&issued.ticket, 8).map_err(CliError::Qr)?;
                std::fs::write(p, img).map_err(CliError::Output)?;
            }
            if let Some(p) = &svg {
                let img = ticket::qr::svg(&issued.ticket).map_err(CliError::Qr)?;
                std::fs::write(p, img).map_err(CliError::Output)?;
            }
            if !json {
                let qr = ticket::qr::terminal(&issued.ticket).map_err(CliError::Qr)?;
                out!(w, "{qr}");
                out!(w, "{}", issued.ticket);
                out!(w, "");
                out!(
                    w,
                    "Scan this with the Discless app, or run `discless pair accept <ticket>` on the other node."
                );
                out!(w, "Single use; expires {}.", when(issued.expires_unix));
                if let Some(pid) = &issued.for_patient {
                    out!(w, "Bound to Patient ID {pid}: the paired phone receives that patient's studies.");
                }
                if wait {
                    out!(w, "Waiting for the other node to scan it…");
                }
                w.flush()?;
            }
            let mut paired = None;
            if wait {
                let deadline = Instant::now()
                    + Duration::from_secs(issued.expires_unix.saturating_sub(now_unix()));
                let token = issued.token.clone();
                paired = net.block_on(async {
                    loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match tokio::time::timeout(left, events.recv()).await {
                            Ok(Ok(p)) if p.token.as_deref() == Some(token.as_str()) => {
                                return Some(p)
                            }
                            Ok(Ok(_))
                            | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                            _ => return None,
                        }
                    }
                });
                if paired.is_none() {
                    return Err(CliError::Net(net::NetError::Invalid(
                        "the ticket expired before anyone used it".into(),
                    )));
                }
            }
            if json {
                output::json(
                    w,
                    &NewTicket {
                        issued: &issued,
                        png,
                        svg,
                        paired,
                    },
                )?;
            } else if let Some(p) = paired {
                paired_text(w, &p)?;
            }
            Ok(Outcome::Success)
        }
        PairCommand::Accept { ticket, json } => {
            let net = online(net, "pair accept")?;
            let p = net.block_on(net.accept_ticket(&ticket))?;
            if json {
                output::json(w, &p)?;
            } else {
                paired_text(w, &p)?;
            }
            Ok(Outcome::Success)
        }
    }
}

fn paired_text(w: &mut dyn Write, p: &Paired) -> std::io::Result<()> {
    out!(
        w,
        "Paired with {} ({}), PeerId {}",
        p.name,
        p.role,
        p.peer_id
    );
    out!(
        w,
        "Confirmation code: {} {}  (the other screen must show the same code; if not, remove this contact)",
        &p.sas[..3],
        &p.sas[3..]
    );
    if let Some(relay) = &p.queued_at {
        out!(
            w,
            "{} is offline: the pairing request waits, encrypted, at relay {relay}.",
            p.name
        );
        out!(
            w,
            "It completes when {} comes online; you can share studies with them now (they wait at the relay too).",
            p.name
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct ContactRow {
    peer_id: String,
    name: String,
    role: crate::keystore::Role,
    paired_unix: u64,
    sas: String,
    online: Option<bool>,
    /// `direct` or `relayed` while online.
    route: Option<&'static str>,
    for_patient: Option<String>,
    addrs: Vec<String>,
    /// The relay where our pairing request waits for this (offline) issuer.
    awaiting: Option<String>,
}

pub(super) fn contacts(
    store: &Store,
    net: Option<&Handle>,
    action: Option<ContactsCommand>,
    json: bool,
    w: &mut dyn Write,
) -> Result<Outcome, CliError> {
    if let Some(ContactsCommand::Remove { contact, json }) = action {
        let c = store.resolve_contact(&contact)?;
        let revoked = match net {
            Some(n) => n.block_on(n.remove_contact(&c))?,
            None => crate::net::share::record_remove_contact(store, &c)?,
        };
        if json {
            output::json(
                w,
                &serde_json::json!({ "removed": c.peer_id, "name": c.name, "grants_revoked": revoked }),
            )?;
        } else {
            out!(
                w,
                "Removed {} ({}); {revoked} share(s) revoked.",
                c.name,
                c.peer_id
            );
            out!(w, "What they already received stays with them.");
        }
        return Ok(Outcome::Success);
    }
    let snap = net.and_then(|n| n.block_on(n.snapshot()).ok());
    let rows: Vec<ContactRow> = store
        .contacts()?
        .into_iter()
        .map(|c| ContactRow {
            online: snap.as_ref().map(|s| s.route(&c.peer_id).is_some()),
            route: snap.as_ref().and_then(|s| s.route(&c.peer_id)),
            peer_id: c.peer_id,
            name: c.name,
            role: c.role,
            paired_unix: c.paired_unix,
            sas: c.sas,
            for_patient: c.patient_id,
            addrs: c.addrs,
            awaiting: c.awaiting,
        })
        .collect();
    if json {
        output::json(w, &rows)?;
        return Ok(Outcome::Success);
    }
    if rows.is_empty() {
        out!(
            w,
            "No contacts yet: pair with `discless pair new` / `discless pair accept`."
        );
    }
    for r in rows {
        let state = match (r.online, r.route) {
            (Some(true), Some("relayed")) => "online via relay",
            (Some(true), _) => "online",
            (Some(false), _) => "offline",
            (None, _) => "",
        };
        out!(
            w,
            "{:<24} {:<8} {:<16} {}",
            r.name,
            r.role,
            state,
            r.peer_id
        );
        if r.awaiting.is_some() {
            out!(
                w,
                "{:<24} pairing completes when {} next comes online",
                "",
                r.name
            );
        }
    }
    Ok(Outcome::Success)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn share(
    store: &Store,
    net: Option<&Handle>,
    study: &str,
    to: &str,
    expires: Duration,
    wait: bool,
    json: bool,
    w: &mut dyn Write,
    interactive: bool,
) -> Result<Outcome, CliError> {
    let s = store.resolve_study(study)?;
    let c = store.resolve_contact(to)?;
    let expires_unix = now_unix() + expires.as_secs();
    let uid = s.study_instance_uid.clone();
    let shared = match net {
        Some(n) => n.block_on(n.share(uid.clone(), c.clone(), expires_unix))?,
        None => {
            if wait {
                return Err(CliError::Offline("share --wait"));
            }
            crate::net::share::record_grant(store, &uid, &c, expires_unix)?;
            net::ShareOutcome {
                study_uid: uid.clone(),
                peer_id: c.peer_id.clone(),
                name: c.name.clone(),
                state: GrantState::Pending,
                expires_unix,
                queued: None,
                note: Some(
                    "recorded; it is offered when `discless serve` runs on this node".into(),
                ),
            }
        }
    };
    if !json {
        out!(
            w,
            "Shared study {} with {} until {} ({}).",
            s.short_id(),
            c.name,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(expires_unix)
            ),
            match shared.state {
                GrantState::Offered => "offered; they are fetching it",
                GrantState::Queued => "they are offline; it waits at the relay",
                GrantState::Delivered => "delivered",
                GrantState::Pending => "waiting for them to come online",
                GrantState::Revoked => "revoked",
            }
        );
        if let Some(q) = &shared.queued {
            out!(
                w,
                "  queued at relay {}, expires {}",
                q.relay,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(q.expires_unix)
                )
            );
        } else if let Some(n) = &shared.note {
            out!(w, "  {n}");
        }
        w.flush()?;
    }
    let mut state = shared.state;
    if wait {
        let total: u64 = store
            .instances(&uid)?
            .iter()
            .map(|i| crate::crypto::blob::sealed_len(i.size))
            .sum();
        let bar = Bar::new(interactive && !json, "sending");
        let mut last_line = Instant::now();
        let mut last_sent = 0;
        loop {
            let g = store.grant(&uid, &c.peer_id)?;
            let Some(g) = g else { break };
            state = g.state;
            bar.set(g.bytes_sent.min(total), total);
            if g.state == GrantState::Delivered || !g.active(now_unix()) {
                break;
            }
            if !interactive
                && !json
                && last_line.elapsed() > Duration::from_secs(2)
                && g.bytes_sent != last_sent
            {
                last_sent = g.bytes_sent;
                // Also tells us when a remote CLI went away: the write fails.
                out!(
                    w,
                    "  sent {} of {}",
                    size(g.bytes_sent.min(total)),
                    size(total)
                );
                w.flush()?;
                last_line = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bar.finish();
        if !json {
            match state {
                GrantState::Delivered => {
                    out!(w, "Delivered: {} holds the whole study, checked.", c.name)
                }
                other => out!(w, "Stopped waiting: the share is {other:?}."),
            }
        }
    }
    if json {
        let mut v = serde_json::to_value(&shared).unwrap_or_default();
        v["state"] = serde_json::to_value(state).unwrap_or_default();
        output::json(w, &v)?;
    }
    Ok(if wait && state != GrantState::Delivered {
        Outcome::Partial
    } else {
        Outcome::Success
    })
}

pub(super) fn revoke(
    store: &Store,
    net: Option<&Handle>,
    study: &str,
    from: &str,
    json: bool,
    w: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let s = store.resolve_study(study)?;
    let c = store.resolve_contact(from)?;
    let uid = s.study_instance_uid.clone();
    let notified = match net {
        Some(n) => n.block_on(n.revoke(&uid, &c))?,
        None => {
            if !crate::net::share::record_revoke(store, &uid, &c)? {
                return Err(CliError::Net(net::NetError::Invalid(format!(
                    "study {} is not shared with {}",
                    s.short_id(),
                    c.name
                ))));
            }
            false
        }
    };
    if json {
        output::json(
            w,
            &serde_json::json!({ "study_uid": uid, "peer_id": c.peer_id, "revoked": true, "notified": notified }),
        )?;
    } else {
        out!(
            w,
            "Revoked study {} for {}; no further transfers. What they already received cannot be taken back.",
            s.short_id(),
            c.name
        );
        if !notified {
            out!(
                w,
                "  ({} was not told now; its requests are refused from now on.)",
                c.name
            );
        }
    }
    Ok(Outcome::Success)
}

pub(super) fn transfers(
    store: &Store,
    net: Option<&Handle>,
    json: bool,
    w: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let list = match net {
        Some(n) => n.block_on(n.transfers())?,
        None => crate::net::transfers::list(store, &Default::default())?,
    };
    if json {
        output::json(w, &list)?;
        return Ok(Outcome::Success);
    }
    if list.is_empty() {
        out!(w, "No transfers.");
    }
    for t in list {
        let arrow = if t.direction == "in" { "from" } else { "to  " };
        let rate = if t.rate_bytes_per_sec > 0.0 {
            format!(" {}/s", size(t.rate_bytes_per_sec as u64))
        } else {
            String::new()
        };
        out!(
            w,
            "{}  {arrow} {:<20} {:<10} {} / {}{rate}",
            t.short_id,
            t.peer_name,
            t.state,
            size(t.bytes_done),
            size(t.bytes_total)
        );
        if let Some(e) = t.error {
            out!(w, "          last error: {e}");
        }
    }
    Ok(Outcome::Success)
}
