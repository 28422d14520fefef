//! `discless push`: a study's instances to another AE by C-STORE.
//!
//! Negotiation: for every (SOP class, transfer syntax) pair in the study one presentation context
//! proposing exactly that syntax, so the stored bytes go out as they are; and for SOP classes with
//! uncompressed instances, one more context proposing explicit then implicit VR little endian.
//! When the peer refuses an instance's own syntax but accepts the fallback, the data set is
//! re-encoded (dicom-object) into what it accepted; compressed pixel data is never transcoded, so
//! such an instance fails with the reason. A study needing more than 128 contexts is sent over
//! several associations.
//!
//! Each instance is decrypted (checked against its recorded hash) into memory, or into a temp
//! file in the node's `tmp/` when large, and its data set (the bytes after the meta group) is
//! streamed in P-DATA PDUs no larger than the peer accepts. This runs synchronously: the CLI
//! calls it directly, or `serve` on a blocking thread when the CLI runs through it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::str::FromStr;
use std::time::Duration;

use dicom_encoding::TransferSyntaxIndex;
use dicom_object::OpenFileOptions;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::{ClientAssociation, ClientAssociationOptions, Pdu};
use serde::Serialize;

use super::command::{field, status, Command};
use super::syntaxes::{is_uncompressed, EXPLICIT_VR_LE, IMPLICIT_VR_LE};
use super::{valid_ae_title, IDLE_TIMEOUT, MAX_PDU};
use crate::dicom::export;
use crate::store::{InstanceRecord, Store, StoreError, StudyRecord};

/// Presentation context ids are odd numbers 1..=255: at most 128 per association.
const MAX_CONTEXTS: usize = 128;
/// Instances up to this size are decrypted into memory; larger ones into a temp file.
const IN_MEMORY: u64 = 64 * 1024 * 1024;
/// How long to wait for the peer to accept a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to push: `AE@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub ae_title: String,
    /// `host:port`, as given.
    pub addr: String,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.ae_title, self.addr)
    }
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ae, addr) = s
            .split_once('@')
            .ok_or_else(|| format!("{s:?} is not AE@HOST:PORT"))?;
        if !valid_ae_title(ae) {
            return Err(format!("invalid AE title {ae:?}: 1 to 16 characters"));
        }
        let port = addr
            .rsplit_once(':')
            .and_then(|(host, p)| (!host.is_empty()).then_some(p))
            .ok_or_else(|| format!("{addr:?} is not HOST:PORT"))?;
        port.parse::<u16>()
            .map_err(|_| format!("invalid port {port:?}"))?;
        Ok(Self {
            ae_title: ae.trim().to_owned(),
            addr: addr.to_owned(),
        })
    }
}

/// Outcome of one instance.
#[derive(Debug, Clone, Serialize)]
pub struct Pushed {
    pub sop_instance_uid: String,
    /// The transfer syntax it was sent in (None when it was not sent).
    pub transfer_syntax: Option<String>,
    /// Whether the data set was re-encoded because the peer refused its own syntax.
    pub converted: bool,
    /// The peer's C-STORE-RSP status (None when it was not sent).
    pub status: Option<u16>,
    /// Why it failed: the peer's ErrorComment, or what went wrong here.
    pub error: Option<String>,
}

impl Pushed {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(status::stored)
    }
}

/// The `--json` output of `discless push`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub study: String,
    pub destination: String,
    pub sent: u64,
    pub failed: u64,
    pub instances: Vec<Pushed>,
}

/// Pushing could not start, or reached nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    #[error("invalid calling AE title {0:?}: 1 to 16 characters")]
    CallingAe(String),
    #[error("cannot associate with {destination}: {reason}")]
    Association { destination: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One association's worth: the contexts it proposes and the instances it carries.
#[derive(Debug, Default)]
struct Plan {
    /// (abstract syntax, transfer syntaxes); context id = 2 × index + 1.
    contexts: Vec<(String, Vec<String>)>,
    exact: HashMap<(String, String), u8>,
    fallback: HashMap<String, u8>,
    instances: Vec<usize>,
}

impl Plan {
    /// Contexts `inst` would add.
    fn needs(&self, inst: &InstanceRecord) -> usize {
        let exact = !self.exact.contains_key(&key(inst));
        let fallback = is_uncompressed(&inst.transfer_syntax_uid)
            && !self.fallback.contains_key(&inst.sop_class_uid);
        usize::from(exact) + usize::from(fallback)
    }

    fn add(&mut self, i: usize, inst: &InstanceRecord) {
        let next_id = |n: usize| (2 * n + 1) as u8;
        if !self.exact.contains_key(&key(inst)) {
            self.exact.insert(key(inst), next_id(self.contexts.len()));
            self.contexts.push((
                inst.sop_class_uid.clone(),
                vec![inst.transfer_syntax_uid.clone()],
            ));
        }
        if is_uncompressed(&inst.transfer_syntax_uid)
            && !self.fallback.contains_key(&inst.sop_class_uid)
        {
            self.fallback
                .insert(inst.sop_class_uid.clone(), next_id(self.contexts.len()));
            self.contexts.push((
                inst.sop_class_uid.clone(),
                vec![EXPLICIT_VR_LE.to_owned(), IMPLICIT_VR_LE.to_owned()],
            ));
        }
        self.instances.push(i);
    }
}

fn key(inst: &InstanceRecord) -> (String, String) {
    (inst.sop_class_uid.clone(), inst.transfer_syntax_uid.clone())
}

fn plans(instances: &[InstanceRecord]) -> Vec<Plan> {
    let mut out: Vec<Plan> = Vec::new();
    for (i, inst) in instances.iter().enumerate() {
        let fits = out
            .last()
            .is_some_and(|p| p.contexts.len() + p.needs(inst) <= MAX_CONTEXTS);
        if !fits {
            out.push(Plan::default());
        }
        if let Some(p) = out.last_mut() {
            p.add(i, inst);
        }
    }
    out
}

/// Sends every instance of `study` to `to`, calling `progress(done, total)` after each.
pub fn push(
    store: &Store,
    study: &StudyRecord,
    to: &Destination,
    calling_ae: &str,
    progress: &dyn Fn(u64, u64),
) -> Result<Report, PushError> {
    if !valid_ae_title(calling_ae) {
        return Err(PushError::CallingAe(calling_ae.to_owned()));
    }
    let mut instances = store.instances(&study.study_instance_uid)?;
    crate::store::sort_for_viewing(&mut instances);
    let total = instances.len() as u64;
    let mut results: Vec<Option<Pushed>> = vec![None; instances.len()];
    let mut done = 0u64;
    let mut unreachable: Option<String> = None;
    for plan in plans(&instances) {
        let mut assoc = match associate(&plan, to, calling_ae) {
            Ok(a) => a,
            Err(reason) => {
                tracing::warn!(destination = %to, "association failed: {reason}");
                for &i in &plan.instances {
                    results[i] = Some(failed(&instances[i], &reason));
                    done += 1;
                }
                progress(done, total);
                unreachable = Some(reason);
                continue;
            }
        };
        let accepted: HashMap<u8, String> = assoc
            .presentation_contexts()
            .iter()
            .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_owned()))
            .collect();
        let mut broken: Option<String> = None;
        for (n, &i) in plan.instances.iter().enumerate() {
            let inst = &instances[i];
            let r = match &broken {
                Some(reason) => failed(inst, reason),
                None => {
                    let message_id = (n % usize::from(u16::MAX)) as u16 + 1;
                    match send_one(store, &mut assoc, &plan, &accepted, inst, message_id) {
                        Ok(p) => p,
                        Err(Failure::Instance(reason)) => failed(inst, &reason),
                        Err(Failure::Association(reason)) => {
                            broken = Some(reason.clone());
                            failed(inst, &reason)
                        }
                    }
                }
            };
            if !r.ok() {
                tracing::info!(sop = %inst.sop_instance_uid, "not stored: {}", r.error.as_deref().unwrap_or("?"));
            }
            results[i] = Some(r);
            done += 1;
            progress(done, total);
        }
        if broken.is_none() {
            if let Err(e) = assoc.release() {
                tracing::debug!("release: {e}");
            }
        } else {
            let _ = assoc.abort();
        }
    }
    let instances: Vec<Pushed> = results.into_iter().flatten().collect();
    let sent = instances.iter().filter(|p| p.ok()).count() as u64;
    if sent == 0 && !instances.is_empty() {
        if let Some(reason) = unreachable {
            return Err(PushError::Association {
                destination: to.to_string(),
                reason,
            });
        }
    }
    Ok(Report {
        study: study.study_instance_uid.clone(),
        destination: to.to_string(),
        sent,
        failed: instances.len() as u64 - sent,
        instances,
    })
}

fn failed(inst: &InstanceRecord, reason: &str) -> Pushed {
    Pushed {
        sop_instance_uid: inst.sop_instance_uid.clone(),
        transfer_syntax: None,
        converted: false,
        status: None,
        error: Some(reason.to_owned()),
    }
}

fn associate(
    plan: &Plan,
    to: &Destination,
    calling_ae: &str,
) -> Result<ClientAssociation<std::net::TcpStream>, String> {
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(calling_ae.trim())
        .called_ae_title(to.ae_title.as_str())
        .max_pdu_length(MAX_PDU)
        .connection_timeout(CONNECT_TIMEOUT)
        .read_timeout(IDLE_TIMEOUT)
        .write_timeout(IDLE_TIMEOUT);
    for (abstract_syntax, ts) in &plan.contexts {
        options = options.with_presentation_context(
            abstract_syntax.as_str(),
            ts.iter().map(String::as_str).collect(),
        );
    }
    let mut assoc = options
        .establish(to.addr.as_str())
        .map_err(|e| flatten(&e))?;
    // One outstanding C-STORE at a time: without this every response waits for Nagle.
    let _ = assoc.inner_stream().set_nodelay(true);
    Ok(assoc)
}

/// An error's message with its causes (dicom-ul's top-level messages are terse).
fn flatten(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

enum Failure {
    /// This instance could not be sent; the association is fine.
    Instance(String),
    /// The association is gone.
    Association(String),
}

/// A decrypted instance: in memory or in a temp file.
enum Plain {
    Memory(io::Cursor<crate::crypto::blob::InPlace>),
    File(File, #[allow(dead_code)] tempfile::TempPath),
}

impl Read for Plain {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Plain::Memory(c) => c.read(buf),
            Plain::File(f, _) => f.read(buf),
        }
    }
}

impl Seek for Plain {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            Plain::Memory(c) => c.seek(pos),
            Plain::File(f, _) => f.seek(pos),
        }
    }
}

fn decrypt(store: &Store, inst: &InstanceRecord) -> Result<Plain, String> {
    let key = store
        .study_key(&inst.study_instance_uid, false)
        .map_err(|e| e.to_string())?
        .ok_or("the study key is missing")?;
    if inst.size <= IN_MEMORY {
        let v = export::decrypt_in_place(store, &key, inst).map_err(|e| e.to_string())?;
        Ok(Plain::Memory(io::Cursor::new(v)))
    } else {
        let (file, path) = store
            .blobs()
            .temp()
            .map_err(|e| e.to_string())?
            .into_parts();
        let mut w = io::BufWriter::new(file);
        export::decrypt_into(store, &key, inst, &mut w).map_err(|e| e.to_string())?;
        let mut file = w.into_inner().map_err(|e| e.error().to_string())?;
        file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        Ok(Plain::File(file, path))
    }
}

/// Where the data set starts in a Part-10 file: after the preamble, `DICM` and the meta group
/// (always explicit VR little endian, PS3.10 7.1), found by walking its elements.
pub(crate) fn data_set_offset(head: &[u8]) -> Option<usize> {
    let mut pos = if head.get(128..132) == Some(b"DICM") {
        132
    } else if head.get(0..4) == Some(b"DICM") {
        4
    } else {
        return None;
    };
    loop {
        // Running out of bytes inside the meta group: not an instance we can send.
        let g = head.get(pos..pos + 2)?;
        if u16::from_le_bytes([g[0], g[1]]) != 0x0002 {
            return Some(pos);
        }
        let h = head.get(pos..pos + 8)?;
        let vr = [h[4], h[5]];
        let long = matches!(
            &vr,
            b"OB"
                | b"OD"
                | b"OF"
                | b"OL"
                | b"OV"
                | b"OW"
                | b"SQ"
                | b"SV"
                | b"UC"
                | b"UN"
                | b"UR"
                | b"UT"
                | b"UV"
        );
        let (len, header) = if long {
            let l = head.get(pos + 8..pos + 12)?;
            (u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize, 12)
        } else {
            (usize::from(u16::from_le_bytes([h[6], h[7]])), 8)
        };
        pos = pos.checked_add(header)?.checked_add(len)?;
    }
}

fn send_one(
    store: &Store,
    assoc: &mut ClientAssociation<std::net::TcpStream>,
    plan: &Plan,
    accepted: &HashMap<u8, String>,
    inst: &InstanceRecord,
    message_id: u16,
) -> Result<Pushed, Failure> {
    let own = plan
        .exact
        .get(&key(inst))
        .filter(|id| accepted.contains_key(id))
        .map(|id| (*id, inst.transfer_syntax_uid.clone()));
    let fallback = || {
        plan.fallback
            .get(&inst.sop_class_uid)
            .and_then(|id| accepted.get(id).map(|ts| (*id, ts.clone())))
    };
    let (pc, ts, convert) = match own {
        Some((pc, ts)) => (pc, ts, false),
        None => match fallback() {
            Some((pc, ts)) if is_uncompressed(&inst.transfer_syntax_uid) => (pc, ts, true),
            _ => {
                return Err(Failure::Instance(format!(
                "the peer accepted no presentation context for SOP class {} in transfer syntax {}",
                inst.sop_class_uid, inst.transfer_syntax_uid
            )))
            }
        },
    };
    let mut plain = decrypt(store, inst).map_err(Failure::Instance)?;
    let mut head = vec![0u8; 64 * 1024];
    let n = read_up_to(&mut plain, &mut head).map_err(|e| Failure::Instance(e.to_string()))?;
    head.truncate(n);
    let offset = data_set_offset(&head)
        .ok_or_else(|| Failure::Instance("the stored file has no readable meta group".into()))?;
    plain
        .seek(SeekFrom::Start(offset as u64))
        .map_err(|e| Failure::Instance(e.to_string()))?;

    // Re-encode before anything goes on the wire, so a failure leaves the association usable.
    let converted: Option<Vec<u8>> = if convert {
        plain
            .seek(SeekFrom::Start(0))
            .map_err(|e| Failure::Instance(e.to_string()))?;
        Some(reencode(&mut plain, &ts).map_err(Failure::Instance)?)
    } else {
        None
    };

    let command = Command::store_rq(message_id, &inst.sop_class_uid, &inst.sop_instance_uid)
        .encode()
        .map_err(|e| Failure::Instance(e.to_string()))?;
    let lost = |e: &dyn std::error::Error| Failure::Association(flatten(e));
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        })
        .map_err(|e| lost(&e))?;
    {
        let mut w = assoc.send_pdata(pc);
        match &converted {
            Some(bytes) => w.write_all(bytes).map_err(|e| lost(&e))?,
            None => {
                io::copy(&mut plain, &mut w).map_err(|e| lost(&e))?;
            }
        }
        w.finish().map_err(|e| lost(&e))?;
    }
    let rsp = receive_command(assoc)?;
    if rsp.field != field::C_STORE_RSP || rsp.responded_to != Some(message_id) {
        return Err(Failure::Association(format!(
            "unexpected response (command 0x{:04x} to message {:?})",
            rsp.field, rsp.responded_to
        )));
    }
    let st = rsp.status.unwrap_or(status::OUT_OF_RESOURCES);
    Ok(Pushed {
        sop_instance_uid: inst.sop_instance_uid.clone(),
        transfer_syntax: Some(ts),
        converted: convert,
        status: Some(st),
        error: (!status::stored(st)).then(|| {
            rsp.error_comment
                .unwrap_or_else(|| format!("refused with status 0x{st:04X}"))
        }),
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The data set of a Part-10 file, written in another (uncompressed) transfer syntax.
fn reencode(file: &mut impl Read, ts_uid: &str) -> Result<Vec<u8>, String> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| format!("unknown transfer syntax {ts_uid}"))?;
    let obj = OpenFileOptions::new()
        .from_reader(file)
        .map_err(|e| format!("cannot re-encode: {}", flatten(&e)))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| format!("cannot re-encode into {ts_uid}: {}", flatten(&e)))?;
    Ok(out)
}

fn receive_command(assoc: &mut ClientAssociation<std::net::TcpStream>) -> Result<Command, Failure> {
    let mut buf = Vec::new();
    loop {
        match assoc.receive() {
            Ok(Pdu::PData { data }) => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command {
                        return Err(Failure::Association(
                            "the peer sent a data set instead of a response".into(),
                        ));
                    }
                    if buf.len() + pdv.data.len() > super::command::MAX_COMMAND_BYTES {
                        return Err(Failure::Association("response too large".into()));
                    }
                    buf.extend_from_slice(&pdv.data);
                    if pdv.is_last {
                        return Command::decode(&buf)
                            .map_err(|e| Failure::Association(e.to_string()));
                    }
                }
            }
            Ok(Pdu::AbortRQ { source }) => {
                return Err(Failure::Association(format!(
                    "the peer aborted the association ({source:?})"
                )))
            }
            Ok(_) => {
                return Err(Failure::Association(
                    "unexpected PDU instead of a response".into(),
                ))
            }
            Err(e) => return Err(Failure::Association(flatten(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(class: &str, ts: &str) -> InstanceRecord {
        InstanceRecord {
            study_instance_uid: "1".into(),
            series_instance_uid: "1.1".into(),
            sop_instance_uid: format!("{class}.{ts}"),
            sop_class_uid: class.into(),
            transfer_syntax_uid: ts.into(),
            instance_number: None,
            rows: None,
            columns: None,
            number_of_frames: None,
            series_number: None,
            series_description: String::new(),
            modality: String::new(),
            body_part_examined: String::new(),
            size: 0,
            plaintext_hash: String::new(),
            blob_id: String::new(),
            imported_unix: 0,
            image: Default::default(),
        }
    }

    #[test]
    fn destination_parses_ae_host_port() {
        let d: Destination = "PACS@10.1.2.3:104".parse().unwrap();
        assert_eq!(d.ae_title, "PACS");
        assert_eq!(d.addr, "10.1.2.3:104");
        assert_eq!(d.to_string(), "PACS@10.1.2.3:104");
        assert!("10.1.2.3:104".parse::<Destination>().is_err());
        assert!("PACS@10.1.2.3".parse::<Destination>().is_err());
        assert!("PACS@:104".parse::<Destination>().is_err());
        assert!("PACS@host:99999".parse::<Destination>().is_err());
    }

    #[test]
    fn contexts_propose_own_syntax_plus_fallback_for_uncompressed() {
        let list = vec![
            inst("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"),
            inst("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"),
            inst("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.4.70"),
            inst("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2"),
        ];
        let p = plans(&list);
        assert_eq!(p.len(), 1);
        let c = &p[0].contexts;
        // CT explicit, CT fallback, CT JPEG lossless, MR implicit, MR fallback.
        assert_eq!(c.len(), 5);
        assert_eq!(c[1].1, vec![EXPLICIT_VR_LE, IMPLICIT_VR_LE]);
        assert_eq!(c[2].1, vec!["1.2.840.10008.1.2.4.70"]);
        assert_eq!(p[0].instances, vec![0, 1, 2, 3]);
        assert_eq!(p[0].exact[&key(&list[3])], 7);
        assert_eq!(p[0].fallback["1.2.840.10008.5.1.4.1.1.4"], 9);
    }

    #[test]
    fn many_contexts_split_into_several_associations() {
        let list: Vec<InstanceRecord> = (0..200)
            .map(|i| inst(&format!("1.2.3.{i}"), "1.2.840.10008.1.2.4.70"))
            .collect();
        let p = plans(&list);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].contexts.len(), MAX_CONTEXTS);
        assert_eq!(p[1].instances.len(), 200 - MAX_CONTEXTS);
    }

    #[test]
    fn data_set_offset_walks_the_meta_group() {
        let header = super::super::ingest::file_header(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3",
            "1.2.840.10008.1.2.1",
            "X",
        )
        .unwrap();
        let mut file = header.clone();
        file.extend_from_slice(&[0x08, 0x00, 0x16, 0x00, b'U', b'I', 2, 0]);
        assert_eq!(data_set_offset(&file), Some(header.len()));
        // Without preamble.
        assert_eq!(data_set_offset(&file[128..]), Some(header.len() - 128));
        assert_eq!(data_set_offset(b"not dicom"), None);
        // Truncated meta group.
        assert_eq!(data_set_offset(&header[..150]), None);
    }
}
