//! What commands print: a table for people, JSON for scripts.

use std::io::{self, Write};

use serde::Serialize;

use crate::dicom::{export, import};
use crate::home::Home;
use crate::keystore::Role;
use crate::store::{AuditEntry, InstanceRecord, Store, StudyRecord, StudySummary};

/// `println!` that returns an error instead of panicking when stdout is closed (`| head`).
macro_rules! out {
    ($w:expr) => {
        writeln!($w)?
    };
    ($w:expr, $($t:tt)*) => {
        writeln!($w, $($t)*)?
    };
}

/// A progress bar on stderr, or nothing.
pub(super) struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    pub(super) fn new(visible: bool, what: &str) -> Self {
        Self(visible.then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>10} [{bar:40}] {pos}/{len} files  {elapsed_precise} (eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(what.to_owned());
            b
        }))
    }
    pub(super) fn set(&self, done: u64, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total);
            b.set_position(done);
        }
    }
    pub(super) fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

pub(super) fn json<T: Serialize>(w: &mut dyn Write, v: &T) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, v)?;
    writeln!(w)
}

/// Human-readable byte sizes (MB = 10^6 bytes, as disks and networks count).
pub(crate) fn size(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

fn date(d: &str) -> String {
    if d.len() == 8 && d.bytes().all(|c| c.is_ascii_digit()) {
        format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..])
    } else {
        d.to_owned()
    }
}

fn person(pn: &str) -> String {
    // DICOM PN "Family^Given^Middle^Prefix^Suffix" → "Family, Given Middle"
    let alphabetic = pn.split('=').next().unwrap_or("");
    let mut parts = alphabetic.split('^');
    let family = parts.next().unwrap_or("").trim();
    let given: Vec<&str> = parts
        .take(2)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if given.is_empty() {
        family.to_owned()
    } else {
        format!("{family}, {}", given.join(" "))
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub(super) fn init(
    w: &mut dyn Write,

    home: &Home,
    peer: &str,
    name: &str,
    role: Role,
    as_json: bool,
) -> io::Result<()> {
    if as_json {
        return json(
            w,
            &serde_json::json!({
                "home": home.root(),
                "peer_id": peer,
                "name": name,
                "role": role,
            }),
        );
    }
    out!(
        w,
        "Created a {role} node \"{name}\" in {}",
        home.root().display()
    );
    out!(w, "PeerId: {peer}");
    out!(
        w,
        "Keep the passphrase safe: without it nothing in this home can be read."
    );
    Ok(())
}

pub(super) fn import(w: &mut dyn Write, r: &import::Report, as_json: bool) -> io::Result<()> {
    if as_json {
        return json(w, r);
    }
    out!(
        w,
        "Imported {} instance(s) ({}) into {} study(ies); {} duplicate(s) skipped{}.",
        r.imported,
        size(r.bytes),
        r.studies.len(),
        r.duplicates,
        if r.resumed > 0 {
            format!("; {} taken over from an interrupted import", r.resumed)
        } else {
            String::new()
        }
    );
    if !r.rejected.is_empty() {
        out!(w, "Rejected {} file(s):", r.rejected.len());
        for x in &r.rejected {
            out!(w, "  {}: {}", x.path, x.reason);
        }
    }
    Ok(())
}

pub(super) fn studies(w: &mut dyn Write, list: &[StudyRecord], as_json: bool) -> io::Result<()> {
    if as_json {
        return json(w, &list.iter().map(StudySummary::from).collect::<Vec<_>>());
    }
    if list.is_empty() {
        out!(
            w,
            "No studies yet. Import some with `discless import PATH`."
        );
        return Ok(());
    }
    out!(
        w,
        "{:<8}  {:<10}  {:<24}  {:<12}  {:<8}  {:>6}  {:>6}  {:>9}  DESCRIPTION",
        "ID",
        "DATE",
        "PATIENT",
        "PATIENT ID",
        "MOD",
        "SERIES",
        "IMAGES",
        "SIZE"
    );
    for s in list {
        out!(
            w,
            "{:<8}  {:<10}  {:<24}  {:<12}  {:<8}  {:>6}  {:>6}  {:>9}  {}",
            s.short_id(),
            date(&s.study_date),
            clip(&person(&s.patient_name), 24),
            clip(&s.patient_id, 12),
            clip(&s.modalities.join(","), 8),
            s.series.len(),
            s.instance_count,
            size(s.bytes),
            s.study_description
        );
    }
    Ok(())
}

pub(super) fn show(
    w: &mut dyn Write,
    s: &StudyRecord,
    instances: &[InstanceRecord],
    as_json: bool,
) -> io::Result<()> {
    if as_json {
        #[derive(Serialize)]
        struct Series<'a> {
            #[serde(flatten)]
            summary: &'a crate::store::SeriesSummary,
            instances: Vec<&'a InstanceRecord>,
        }
        #[derive(Serialize)]
        struct Show<'a> {
            #[serde(flatten)]
            study: StudySummary,
            series: Vec<Series<'a>>,
        }
        let series = s
            .series
            .iter()
            .map(|summary| Series {
                summary,
                instances: instances
                    .iter()
                    .filter(|i| i.series_instance_uid == summary.series_instance_uid)
                    .collect(),
            })
            .collect();
        return json(
            w,
            &Show {
                study: StudySummary::from(s),
                series,
            },
        );
    }
    out!(w, "Study {}  ({})", s.short_id(), s.study_instance_uid);
    out!(
        w,
        "  Patient     {}  ID {}  born {}  sex {}",
        person(&s.patient_name),
        s.patient_id,
        date(&s.patient_birth_date),
        s.patient_sex
    );
    out!(w, "  Date        {} {}", date(&s.study_date), s.study_time);
    out!(w, "  Description {}", s.study_description);
    out!(w, "  Accession   {}", s.accession_number);
    out!(w, "  Referring   {}", person(&s.referring_physician_name));
    out!(
        w,
        "  {} series, {} instances, {}",
        s.series.len(),
        s.instance_count,
        size(s.bytes)
    );
    for se in &s.series {
        out!(w);
        out!(
            w,
            "  Series {} {} {} ({} instances, {})  {}",
            se.series_number
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            se.modality,
            se.series_description,
            se.instance_count,
            size(se.bytes),
            se.series_instance_uid
        );
        for i in instances
            .iter()
            .filter(|i| i.series_instance_uid == se.series_instance_uid)
        {
            out!(
                w,
                "    #{:<5} {:>5}x{:<5} {:>9}  {}",
                i.instance_number
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                i.columns.unwrap_or(0),
                i.rows.unwrap_or(0),
                size(i.size),
                i.sop_instance_uid
            );
        }
    }
    Ok(())
}

pub(super) fn export(w: &mut dyn Write, r: &export::Report, as_json: bool) -> io::Result<()> {
    if as_json {
        return json(w, r);
    }
    out!(
        w,
        "Exported {} file(s), {}, to {}{}",
        r.files,
        size(r.bytes),
        r.output.display(),
        if r.dicomdir { " (with DICOMDIR)" } else { "" }
    );
    Ok(())
}

pub(super) fn audit(
    w: &mut dyn Write,

    entries: &[AuditEntry],
    verified: Option<&Result<u64, String>>,
    as_json: bool,
) -> io::Result<()> {
    if as_json {
        return json(
            w,
            &serde_json::json!({
                "entries": entries,
                "verified": verified.map(|v| v.is_ok()),
                "error": verified.and_then(|v| v.as_ref().err()),
            }),
        );
    }
    for e in entries {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_unix_ms),
        );
        out!(w, "{:>5}  {}  {:<8}  {}", e.seq, when, e.action, e.detail);
    }
    match verified {
        Some(Ok(n)) => out!(w, "Audit log verified: {n} entries, chain intact."),
        Some(Err(e)) => out!(w, "AUDIT LOG DOES NOT VERIFY: {e}"),
        None => {}
    }
    Ok(())
}

pub(super) fn info(
    w: &mut dyn Write,
    store: &Store,
    net: Option<&crate::net::Handle>,
    as_json: bool,
) -> io::Result<()> {
    let keys = store.keys();
    let studies = store.studies().unwrap_or_default();
    let instances: u64 = studies.iter().map(|s| s.instance_count).sum();
    let bytes: u64 = studies.iter().map(|s| s.bytes).sum();
    let pending = store.pending_count();
    let contacts = store.contacts().unwrap_or_default();
    let snap = net.and_then(|n| n.block_on(n.snapshot()).ok());
    let online: Option<Vec<&crate::store::Contact>> = snap.as_ref().map(|s| {
        contacts
            .iter()
            .filter(|c| s.connected.iter().any(|p| p.to_string() == c.peer_id))
            .collect()
    });
    let addrs = |v: &[libp2p::Multiaddr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    if as_json {
        return json(
            w,
            &serde_json::json!({
                "peer_id": keys.peer_id().to_string(),
                "name": keys.name,
                "role": keys.role,
                "home": store.home().root(),
                "studies": studies.len(),
                "instances": instances,
                "bytes": bytes,
                "pending_instances": pending,
                "contacts": contacts.len(),
                "online": snap.is_some(),
                "listen_addrs": snap.as_ref().map(|s| addrs(&s.listen)),
                "external_addrs": snap.as_ref().map(|s| addrs(&s.external)),
                "contacts_online": online.as_ref().map(|v| v.iter().map(|c| serde_json::json!({"peer_id": c.peer_id, "name": c.name})).collect::<Vec<_>>()),
            }),
        );
    }
    out!(w, "Node     {} ({})", keys.name, keys.role);
    out!(w, "PeerId   {}", keys.peer_id());
    out!(w, "Home     {}", store.home().root().display());
    out!(
        w,
        "Store    {} studies, {} instances, {}",
        studies.len(),
        instances,
        size(bytes)
    );
    if pending > 0 {
        out!(w, "         {pending} instance(s) from an interrupted import: run the import again to finish it");
    }
    match (&snap, &online) {
        (Some(s), Some(on)) => {
            for a in &s.listen {
                out!(w, "Listen   {a}");
            }
            for a in &s.external {
                out!(w, "External {a}");
            }
            out!(w, "Contacts {} ({} online)", contacts.len(), on.len());
            for c in on {
                out!(w, "         online: {} ({})", c.name, c.peer_id);
            }
        }
        _ => {
            out!(w, "Contacts {}", contacts.len());
            out!(w, "Network  offline (start `discless serve` to go online)");
        }
    }
    Ok(())
}

pub(super) fn push(
    w: &mut dyn Write,
    r: &crate::dimse::scu::Report,
    as_json: bool,
) -> io::Result<()> {
    if as_json {
        return json(w, r);
    }
    for p in r.instances.iter().filter(|p| !p.ok()) {
        out!(
            w,
            "failed  {}  {}",
            p.sop_instance_uid,
            p.error.as_deref().unwrap_or("")
        );
    }
    let converted = r.instances.iter().filter(|p| p.ok() && p.converted).count();
    out!(
        w,
        "pushed {} of {} instances to {}{}",
        r.sent,
        r.sent + r.failed,
        r.destination,
        if converted > 0 {
            format!(" ({converted} re-encoded in a syntax the peer accepts)")
        } else {
            String::new()
        }
    );
    Ok(())
}
