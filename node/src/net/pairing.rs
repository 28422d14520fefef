//! Pairing by QR: the issuer checks the one-time token; both sides keep a contact and show the
//! same 6-digit code.

use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::PeerId;
use rand::RngCore;
use serde::Serialize;

use super::card;
use super::proto::{PairReply, PairRequest, PAIR};
use super::ticket::Ticket as Wire;
use super::{wire, Handle, NetError};
use crate::store::{now_unix, Contact, Ticket};

/// How long the scanner waits for the issuer's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// A ticket this node issued, ready to show.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    pub ticket: String,
    pub expires_unix: u64,
    pub for_patient: Option<String>,
    pub peer_id: String,
    pub addrs: Vec<String>,
    /// To recognise the pairing that used this ticket; never printed.
    #[serde(skip)]
    pub token: String,
}

/// A completed pairing.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    pub peer_id: String,
    pub name: String,
    pub role: crate::keystore::Role,
    pub sas: String,
    pub paired_unix: u64,
    /// On the issuer: the Patient ID the ticket was bound to.
    pub for_patient: Option<String>,
    /// On the issuer: the ticket used, hex; never printed.
    #[serde(skip)]
    pub token: Option<String>,
}

impl Paired {
    fn of(c: &Contact) -> Self {
        Self {
            peer_id: c.peer_id.clone(),
            name: c.name.clone(),
            role: c.role,
            sas: c.sas.clone(),
            paired_unix: c.paired_unix,
            for_patient: c.patient_id.clone(),
            token: None,
        }
    }
}

impl Handle {
    /// Issues a one-time ticket valid for `ttl`, optionally bound to a patient's studies.
    pub async fn issue_ticket(
        &self,
        ttl: Duration,
        patient_id: Option<String>,
    ) -> Result<Issued, NetError> {
        let mut token = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut token);
        let now = now_unix();
        let expires_unix = now + ttl.as_secs().max(1);
        let addrs = self.dialable_addrs().await?;
        let keys = self.store().keys();
        let wire = Wire {
            peer_id: self.peer_id(),
            addrs: addrs.clone(),
            token,
            expires_unix,
            role: keys.role,
            name: keys.name.clone(),
        };
        let t = Ticket {
            token: hex::encode(token),
            expires_unix,
            created_unix: now,
            patient_id: patient_id.clone(),
            used_by: None,
        };
        self.blocking(move |s| {
            s.put_ticket(&t)?;
            s.audit()
                .append(
                    "ticket issued",
                    serde_json::json!({ "expires_unix": expires_unix, "patient_bound": t.patient_id.is_some() }),
                )
                .map_err(crate::store::StoreError::from)
        })
        .await??;
        Ok(Issued {
            ticket: wire.encode(),
            expires_unix,
            for_patient: patient_id,
            peer_id: self.peer_id().to_string(),
            addrs: addrs.iter().map(ToString::to_string).collect(),
            token: hex::encode(token),
        })
    }

    /// Scans a ticket: dials its issuer, proves the token, and records the issuer as a contact.
    pub async fn accept_ticket(&self, text: &str) -> Result<Paired, NetError> {
        let t = Wire::decode(text)?;
        let who = format!("{} ({})", t.name, t.peer_id);
        let now = now_unix();
        if now >= t.expires_unix {
            return Err(NetError::Invalid(format!(
                "this pairing ticket from {who} expired {} ago; ask for a new one",
                humantime::format_duration(Duration::from_secs(now - t.expires_unix))
            )));
        }
        if t.peer_id == self.peer_id() {
            return Err(NetError::Invalid(
                "this ticket was issued by this node itself".into(),
            ));
        }
        self.connect(t.peer_id, t.addrs.clone(), &who).await?;
        let mut stream = self.open(t.peer_id, PAIR, &who).await?;
        let proto = |e: wire::WireError| NetError::Protocol {
            who: who.clone(),
            reason: e.to_string(),
        };
        wire::write(
            &mut stream,
            &PairRequest {
                token: hex::encode(t.token),
                card: self.card().clone(),
            },
        )
        .await
        .map_err(proto)?;
        let reply: PairReply = tokio::time::timeout(ANSWER_TIMEOUT, wire::read(&mut stream))
            .await
            .map_err(|_| NetError::Protocol {
                who: who.clone(),
                reason: "no answer to the pairing request".into(),
            })?
            .map_err(proto)?;
        let _ = stream.close().await;
        let their = match reply {
            PairReply::Accepted { card } => card,
            PairReply::Refused { reason } => {
                let w = who.clone();
                let r = reason.clone();
                let _ = self
                    .blocking(move |s| {
                        s.audit().append(
                            "pairing refused",
                            serde_json::json!({ "by": w, "reason": r }),
                        )
                    })
                    .await;
                return Err(NetError::Refused { who, reason });
            }
        };
        their.verify(&t.peer_id).map_err(|e| NetError::Protocol {
            who: who.clone(),
            reason: e.to_string(),
        })?;
        let contact = Contact {
            peer_id: t.peer_id.to_string(),
            name: their.name.clone(),
            role: their.role,
            sas: card::sas(&t.token, &their, self.card()),
            card: their,
            paired_unix: now_unix(),
            addrs: t.addrs.iter().map(ToString::to_string).collect(),
            patient_id: None,
        };
        self.record_pairing(contact, "scanned", None).await
    }

    async fn record_pairing(
        &self,
        c: Contact,
        how: &'static str,
        token: Option<String>,
    ) -> Result<Paired, NetError> {
        self.remember(&c).await;
        let mut paired = Paired::of(&c);
        paired.token = token;
        self.blocking(move |s| {
            s.put_contact(&c)?;
            s.audit()
                .append(
                    "paired",
                    serde_json::json!({
                        "peer_id": c.peer_id, "name": c.name, "role": c.role, "sas": c.sas,
                        "how": how, "patient_bound": c.patient_id.is_some(),
                    }),
                )
                .map_err(crate::store::StoreError::from)
        })
        .await??;
        tracing::info!(peer = %paired.peer_id, name = %paired.name, sas = %paired.sas, "paired");
        let _ = self.inner().paired.send(paired.clone());
        Ok(paired)
    }
}

/// Why a ticket cannot be used, checked and marked used in one step (single use even when two
/// phones scan the same QR at once).
fn redeem(
    store: &crate::store::Store,
    token: &str,
    peer: &PeerId,
) -> Result<Ticket, crate::store::StoreError> {
    store
        .update_ticket(token, |t| match t {
            None => Err("unknown pairing ticket (forged, or issued by another node)".to_owned()),
            Some(t) if t.used_by.is_some() => {
                Err("this pairing ticket was already used; ask for a new one".to_owned())
            }
            Some(t) if now_unix() >= t.expires_unix => Err(format!(
                "this pairing ticket expired {} ago; ask for a new one",
                humantime::format_duration(Duration::from_secs(now_unix() - t.expires_unix))
            )),
            Some(t) => {
                t.used_by = Some(peer.to_string());
                Ok(t.clone())
            }
        })?
        .map_err(|reason| crate::store::StoreError::Malformed {
            slot: "ticket".into(),
            reason,
        })
}

/// The issuer's side of `/discless/pair/1`.
pub(super) async fn handle_inbound(net: Handle, peer: PeerId, mut stream: libp2p::Stream) {
    let req: PairRequest = match tokio::time::timeout(ANSWER_TIMEOUT, wire::read(&mut stream)).await
    {
        Ok(Ok(r)) => r,
        _ => return,
    };
    let reply = match issuer_side(&net, peer, req).await {
        Ok(_) => PairReply::Accepted {
            card: net.card().clone(),
        },
        Err(reason) => {
            tracing::warn!(%peer, %reason, "pairing refused");
            let r = reason.clone();
            let p = peer.to_string();
            let _ = net
                .blocking(move |s| {
                    s.audit().append(
                        "pairing refused",
                        serde_json::json!({ "peer_id": p, "reason": r }),
                    )
                })
                .await;
            PairReply::Refused { reason }
        }
    };
    let _ = wire::write(&mut stream, &reply).await;
    let _ = stream.close().await;
}

async fn issuer_side(net: &Handle, peer: PeerId, req: PairRequest) -> Result<Paired, String> {
    req.card
        .verify(&peer)
        .map_err(|e| format!("your device card was refused: {e}"))?;
    let token_bytes = hex::decode(&req.token).map_err(|_| "malformed token".to_owned())?;
    let token = req.token.clone();
    let ticket = net
        .blocking(move |s| redeem(s, &token, &peer))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| match e {
            crate::store::StoreError::Malformed { reason, .. } => reason,
            other => other.to_string(),
        })?;
    // The scanner's addresses came with identify when it connected (`share::note_addresses`).
    let contact = Contact {
        peer_id: peer.to_string(),
        name: req.card.name.clone(),
        role: req.card.role,
        sas: card::sas(&token_bytes, net.card(), &req.card),
        card: req.card,
        paired_unix: now_unix(),
        addrs: net.seen(&peer),
        patient_id: ticket.patient_id,
    };
    net.record_pairing(contact, "issued", Some(req.token.clone()))
        .await
        .map_err(|e| e.to_string())
}
