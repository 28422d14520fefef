//! The listener and one task per association: negotiation, then the DIMSE exchange PDU by PDU.
//!
//! P-DATA PDUs are read one at a time (each bounded by the negotiated maximum); command PDVs are
//! gathered (bounded by `MAX_COMMAND_BYTES`) until their last fragment, data PDVs of a C-STORE go
//! straight to the spool. Anything out of order (data without a command, a command on a
//! context that was not accepted, a PDU other than P-DATA, release or abort) aborts this
//! association only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use dicom_ul::association::Association;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{Pdu, ServerAssociationOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::access::{AllowList, PeerAccess};
use super::command::{field, status, Command, MAX_COMMAND_BYTES};
use super::ingest::{self, Receiver, Reply, Spool};
use super::syntaxes::{STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, VERIFICATION};
use super::{IDLE_TIMEOUT, MAX_ASSOCIATIONS, MAX_PDU};
use crate::store::Store;

type Assoc = dicom_ul::association::server::AsyncServerAssociation<TcpStream>;

/// Shared by all associations of one listener.
#[derive(Debug)]
pub(super) struct Server {
    pub(super) store: Store,
    pub(super) ae_title: String,
    pub(super) allow: Arc<AllowList>,
}

impl Server {
    pub(super) async fn run(self, listener: TcpListener, cancel: CancellationToken) {
        let server = Arc::new(self);
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        if tasks.len() >= MAX_ASSOCIATIONS {
                            tracing::warn!(%peer, "too many DICOM associations; connection closed");
                            continue;
                        }
                        // dcmtk and most SCUs wait for each response: Nagle would add ~40 ms
                        // per message.
                        if let Err(e) = socket.set_nodelay(true) {
                            tracing::debug!(%peer, "TCP_NODELAY: {e}");
                        }
                        let s = server.clone();
                        let c = cancel.child_token();
                        let span = tracing::info_span!("dimse", %peer);
                        tasks.spawn(async move { s.association(socket, peer, c).await }.instrument(span));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accepting a DICOM connection failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        while tasks.join_next().await.is_some() {}
    }

    async fn association(&self, socket: TcpStream, peer: SocketAddr, cancel: CancellationToken) {
        let mut options = ServerAssociationOptions::new()
            .ae_access_control(PeerAccess {
                allow: &self.allow,
                ip: peer.ip(),
            })
            .ae_title(self.ae_title.as_str())
            .max_pdu_length(MAX_PDU)
            .read_timeout(IDLE_TIMEOUT)
            .write_timeout(IDLE_TIMEOUT)
            .with_abstract_syntax(VERIFICATION);
        for uid in STORAGE_SOP_CLASSES {
            options = options.with_abstract_syntax(*uid);
        }
        for uid in TRANSFER_SYNTAXES {
            options = options.with_transfer_syntax(*uid);
        }
        let established = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            r = options.establish_async(socket) => r,
        };
        let assoc = match established {
            Ok(a) => a,
            Err(e) => {
                tracing::info!("association not established: {e}");
                return;
            }
        };
        let calling = assoc.peer_ae_title().trim().to_owned();
        let contexts: HashMap<u8, Context> = assoc
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| {
                (
                    pc.id,
                    Context {
                        abstract_syntax: pc.abstract_syntax.clone(),
                        transfer_syntax: pc.transfer_syntax.clone(),
                    },
                )
            })
            .collect();
        tracing::info!(
            calling_ae = %calling,
            contexts = contexts.len(),
            "association accepted"
        );
        let mut session = Session {
            receiver: Receiver::new(self.store.clone(), calling.clone(), peer.ip()),
            store: self.store.clone(),
            calling,
            assoc,
            contexts,
            command: Vec::new(),
            incoming: None,
            last_data_set: 0,
        };
        let end = session.serve(&cancel).await;
        let Session {
            receiver, assoc, ..
        } = session;
        // What was acknowledged is committed whatever the ending.
        let totals = receiver.finish().await;
        tracing::info!(
            received = totals.received,
            stored = totals.committed,
            duplicates = totals.duplicates,
            refused = totals.rejected,
            "association ended: {end}"
        );
        let mut assoc = assoc;
        match end {
            End::Released => {
                if let Err(e) = assoc.send(&Pdu::ReleaseRP).await {
                    tracing::debug!("sending A-RELEASE-RP: {e}");
                }
            }
            End::Protocol(_) | End::Shutdown => {
                let _ = assoc.abort().await;
            }
            End::Aborted | End::Broken(_) => {}
        }
    }
}

/// An accepted presentation context.
#[derive(Debug)]
struct Context {
    abstract_syntax: String,
    transfer_syntax: String,
}

/// How an association ended.
#[derive(Debug)]
enum End {
    Released,
    Aborted,
    Shutdown,
    /// The peer broke the protocol: we abort.
    Protocol(String),
    /// The connection failed (closed, timed out, unreadable PDU).
    Broken(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Released => f.write_str("released"),
            End::Aborted => f.write_str("aborted by the peer"),
            End::Shutdown => f.write_str("node shutting down"),
            End::Protocol(why) => write!(f, "protocol error, aborted: {why}"),
            End::Broken(why) => write!(f, "connection lost: {why}"),
        }
    }
}

/// The data set that follows a command.
#[derive(Debug)]
enum Incoming {
    /// A C-STORE's data set, into its spool.
    Store { rq: Command, pc: u8, spool: Spool },
    /// A data set we will not keep; answered with `reply` after its last fragment.
    Discard { rq: Command, pc: u8, reply: Reply },
}

struct Session {
    receiver: Receiver,
    store: Store,
    calling: String,
    assoc: Assoc,
    contexts: HashMap<u8, Context>,
    /// Command fragments gathered so far.
    command: Vec<u8>,
    incoming: Option<Incoming>,
    /// Size of the previous C-STORE's data set, to size the next spool.
    last_data_set: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("calling", &self.calling)
            .finish_non_exhaustive()
    }
}

impl Session {
    async fn serve(&mut self, cancel: &CancellationToken) -> End {
        loop {
            let pdu = tokio::select! {
                biased;
                _ = cancel.cancelled() => return End::Shutdown,
                pdu = self.assoc.receive() => pdu,
            };
            match pdu {
                Ok(Pdu::PData { data }) => {
                    for pdv in data {
                        if let Err(why) = self.pdv(pdv).await {
                            return End::Protocol(why);
                        }
                    }
                }
                Ok(Pdu::ReleaseRQ) => return End::Released,
                Ok(Pdu::AbortRQ { .. }) => return End::Aborted,
                Ok(other) => return End::Protocol(format!("unexpected {}", pdu_name(&other))),
                Err(e) => return End::Broken(e.to_string()),
            }
        }
    }

    /// Handles one PDV; an error is a protocol violation that ends the association.
    async fn pdv(&mut self, pdv: PDataValue) -> Result<(), String> {
        let pc = pdv.presentation_context_id;
        if !self.contexts.contains_key(&pc) {
            return Err(format!(
                "PDV on presentation context {pc}, which was not accepted"
            ));
        }
        match pdv.value_type {
            PDataValueType::Command => {
                if self.incoming.is_some() {
                    return Err("a command arrived before the previous data set ended".into());
                }
                if self.command.len() + pdv.data.len() > MAX_COMMAND_BYTES {
                    return Err("command set too large".into());
                }
                self.command.extend_from_slice(&pdv.data);
                if pdv.is_last {
                    let bytes = std::mem::take(&mut self.command);
                    let rq = Command::decode(&bytes).map_err(|e| e.to_string())?;
                    self.command_received(rq, pc).await?;
                }
                Ok(())
            }
            PDataValueType::Data => {
                let Some(incoming) = self.incoming.as_mut() else {
                    return Err("a data set arrived without a command".into());
                };
                let (Incoming::Store { pc: want, .. } | Incoming::Discard { pc: want, .. }) =
                    incoming;
                if *want != pc {
                    return Err("data set on another presentation context than its command".into());
                }
                if let Incoming::Store { spool, rq, pc } = incoming {
                    if let Err(e) = spool.write(&pdv.data).await {
                        tracing::warn!("{e}");
                        let reply = Reply::failure(status::OUT_OF_RESOURCES, e.to_string());
                        *incoming = Incoming::Discard {
                            rq: rq.clone(),
                            pc: *pc,
                            reply,
                        };
                    }
                }
                if pdv.is_last {
                    if let Some(done) = self.incoming.take() {
                        self.data_set_received(done).await?;
                    }
                }
                Ok(())
            }
        }
    }

    async fn command_received(&mut self, rq: Command, pc: u8) -> Result<(), String> {
        match rq.field {
            field::C_ECHO_RQ => {
                tracing::debug!("C-ECHO");
                self.respond(pc, &Command::echo_rsp(&rq)).await
            }
            field::C_STORE_RQ if rq.has_data_set => {
                let Some(ctx) = self.contexts.get(&pc) else {
                    return Err("unknown presentation context".into());
                };
                let sop_class = rq
                    .affected_sop_class
                    .clone()
                    .unwrap_or_else(|| ctx.abstract_syntax.clone());
                let sop_instance = rq.affected_sop_instance.clone().unwrap_or_default();
                let spool = ingest::file_header(
                    &sop_class,
                    &sop_instance,
                    &ctx.transfer_syntax,
                    &self.calling,
                )
                .map(|header| Spool::new(&self.store, header, self.last_data_set));
                self.incoming = Some(match spool {
                    Ok(spool) => Incoming::Store { rq, pc, spool },
                    Err(e) => {
                        tracing::warn!("cannot receive an instance: {e}");
                        let reply = Reply::failure(status::OUT_OF_RESOURCES, e.to_string());
                        Incoming::Discard { rq, pc, reply }
                    }
                });
                Ok(())
            }
            other => {
                // A command we do not perform (or a C-STORE without a data set): refuse it.
                let reply = Reply::failure(status::UNRECOGNIZED_OPERATION, "not supported");
                if rq.has_data_set && other != field::C_STORE_RQ {
                    self.incoming = Some(Incoming::Discard { rq, pc, reply });
                    Ok(())
                } else {
                    self.reply(pc, &rq, &reply).await
                }
            }
        }
    }

    async fn data_set_received(&mut self, done: Incoming) -> Result<(), String> {
        let (rq, pc, reply) = match done {
            Incoming::Store { rq, pc, spool } => {
                self.last_data_set = spool.len();
                let reply = match spool.finish().await {
                    Ok(path) => self.receiver.store(path).await,
                    Err(e) => Reply::failure(status::OUT_OF_RESOURCES, e.to_string()),
                };
                (rq, pc, reply)
            }
            Incoming::Discard { rq, pc, reply } => (rq, pc, reply),
        };
        tracing::debug!(
            sop = rq.affected_sop_instance.as_deref().unwrap_or(""),
            status = reply.status,
            "C-STORE"
        );
        self.reply(pc, &rq, &reply).await
    }

    async fn reply(&mut self, pc: u8, rq: &Command, reply: &Reply) -> Result<(), String> {
        let rsp = Command::response(
            rq,
            rq.field | 0x8000,
            reply.status,
            reply.comment.as_deref(),
        );
        self.respond(pc, &rsp).await
    }

    async fn respond(&mut self, pc: u8, rsp: &Command) -> Result<(), String> {
        let data = rsp.encode().map_err(|e| e.to_string())?;
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data,
            }],
        };
        self.assoc
            .send(&pdu)
            .await
            .map_err(|e| format!("sending a response failed: {e}"))
    }
}

fn pdu_name(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::Unknown { .. } => "unknown PDU",
        Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC(_) => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ",
        Pdu::PData { .. } => "P-DATA-TF",
        Pdu::ReleaseRQ => "A-RELEASE-RQ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::AbortRQ { .. } => "A-ABORT",
    }
}
