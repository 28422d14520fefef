//! The node's side of a relay's mailbox: deposit a study for an offline contact, and drain what
//! waits for us.

use futures::AsyncWriteExt;
use libp2p::{Multiaddr, PeerId};
use tokio::io::AsyncReadExt;

use super::offer::Offer;
use super::proto::QueuedPair;
use super::{swarm, Handle, NetError};
use crate::store::{Contact, StoreError, Via};
use discless_relay::proto::{self, BlobMeta, Request, Response, MAILBOX};

/// Mailbox item names say nothing about the study: a keyed-free hash of study and sender.
pub(crate) fn item_name(study_uid: &str, sender: &str) -> String {
    let mut h = blake3::Hasher::new_derive_key("discless 2026 mailbox item v1");
    h.update(study_uid.as_bytes());
    h.update(&[0]);
    h.update(sender.as_bytes());
    h.finalize().to_hex()[..32].to_owned()
}

fn who(relay: &PeerId) -> String {
    format!("relay {relay}")
}

fn err(relay: &PeerId, e: impl std::fmt::Display) -> NetError {
    NetError::Protocol {
        who: who(relay),
        reason: e.to_string(),
    }
}

impl Handle {
    /// Deposits an offer and every blob of its study at `relay` for `to`. Returns the expiry.
    pub(crate) async fn deposit(
        &self,
        relay_addr: &Multiaddr,
        to: &Contact,
        offer: &Offer,
    ) -> Result<u64, NetError> {
        let study = offer.study_uid.clone();
        let instances = self.blocking(move |s| s.instances(&study)).await??;
        let blobs_dir = self.store().blobs().clone();
        let mut blobs = Vec::with_capacity(instances.len());
        for i in &instances {
            let len = std::fs::metadata(blobs_dir.path(&i.blob_id))
                .map_err(|e| NetError::Invalid(format!("blob {}: {e}", i.blob_id)))?
                .len();
            blobs.push(BlobMeta {
                id: i.blob_id.clone(),
                len,
            });
        }
        blobs.dedup_by(|a, b| a.id == b.id);
        let me = self.peer_id().to_string();
        let payload = serde_json::to_string(offer).map_err(|e| NetError::Invalid(e.to_string()))?;
        self.deposit_item(
            relay_addr,
            &to.peer_id,
            item_name(&offer.study_uid, &me),
            payload,
            blobs,
        )
        .await
    }

    /// Deposits one item (an opaque payload and the listed blobs of our store) at `relay` for
    /// `recipient`. Returns the expiry.
    pub(crate) async fn deposit_item(
        &self,
        relay_addr: &Multiaddr,
        recipient: &str,
        item: String,
        payload: String,
        blobs: Vec<BlobMeta>,
    ) -> Result<u64, NetError> {
        let relay = swarm::relay_peer(relay_addr)
            .ok_or_else(|| NetError::Invalid(format!("not a relay address: {relay_addr}")))?;
        let blobs_dir = self.store().blobs().clone();
        let mut s = self.open(relay, MAILBOX, &who(&relay)).await?;
        let req = Request::Deposit {
            recipient: recipient.to_owned(),
            item,
            offer: payload,
            blobs: blobs.clone(),
        };
        proto::write(&mut s, &req)
            .await
            .map_err(|e| err(&relay, e))?;
        s.flush().await.map_err(|e| err(&relay, e))?;
        // The relay says whether it takes the item before any blob is sent.
        match proto::read::<_, Response>(&mut s)
            .await
            .map_err(|e| err(&relay, e))?
        {
            Response::Ok => {}
            Response::Refused { reason } => {
                return Err(NetError::Refused {
                    who: who(&relay),
                    reason,
                })
            }
            other => return Err(err(&relay, format!("unexpected answer {other:?}"))),
        }
        let mut buf = vec![0u8; 256 * 1024];
        for b in &blobs {
            let mut f = tokio::fs::File::open(blobs_dir.path(&b.id))
                .await
                .map_err(|e| NetError::Invalid(format!("blob {}: {e}", b.id)))?;
            let mut left = b.len;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = f
                    .read(&mut buf[..want])
                    .await
                    .map_err(|e| NetError::Invalid(e.to_string()))?;
                if n == 0 {
                    return Err(NetError::Invalid(format!("blob {} shrank", b.id)));
                }
                s.write_all(&buf[..n]).await.map_err(|e| err(&relay, e))?;
                left -= n as u64;
            }
        }
        s.flush().await.map_err(|e| err(&relay, e))?;
        match proto::read::<_, Response>(&mut s)
            .await
            .map_err(|e| err(&relay, e))?
        {
            Response::Deposited { expires_unix, .. } => Ok(expires_unix),
            Response::Refused { reason } => Err(NetError::Refused {
                who: who(&relay),
                reason,
            }),
            other => Err(err(&relay, format!("unexpected answer {other:?}"))),
        }
    }

    async fn mailbox_request(&self, relay: PeerId, req: &Request) -> Result<Response, NetError> {
        let mut s = self.open(relay, MAILBOX, &who(&relay)).await?;
        proto::write(&mut s, req)
            .await
            .map_err(|e| err(&relay, e))?;
        let r = proto::read(&mut s).await.map_err(|e| err(&relay, e))?;
        let _ = s.close().await;
        Ok(r)
    }

    /// Takes in every offer waiting for us at `relay` from a contact; the blobs are then
    /// fetched from the relay like from a peer.
    pub(crate) async fn drain(&self, relay: PeerId) -> Result<(), NetError> {
        let items = match self.mailbox_request(relay, &Request::List).await? {
            Response::Items { items } => items,
            Response::Refused { reason } => {
                return Err(NetError::Refused {
                    who: who(&relay),
                    reason,
                })
            }
            other => return Err(err(&relay, format!("unexpected answer {other:?}"))),
        };
        // Pairing requests first: a scanner whose issuer was offline left its request before
        // its offers, and those offers are only readable once it is a contact.
        let (pairs, offers): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|i| i.item.starts_with(super::pairing::PAIR_ITEM_PREFIX));
        for item in pairs {
            let Some(payload) = self.item_payload(relay, &item).await? else {
                continue;
            };
            match serde_json::from_str::<QueuedPair>(&payload) {
                Ok(q) => self.redeem_queued(relay, &item, q).await,
                Err(e) => {
                    tracing::warn!(item = %item.item, "queued pairing request malformed: {e}")
                }
            }
        }
        for item in offers {
            let sender = item.sender.clone();
            let Some(contact) = self.blocking(move |s| s.contact(&sender)).await?? else {
                tracing::warn!(sender = %item.sender, "mailbox item from a peer that is not a contact left alone");
                continue;
            };
            let Some(offer) = self.item_payload(relay, &item).await? else {
                continue;
            };
            let offer: Offer = match serde_json::from_str(&offer) {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(item = %item.item, "mailbox offer malformed: {e}");
                    continue;
                }
            };
            let via = Via {
                relay: relay.to_string(),
                item: item.item.clone(),
            };
            let study = offer.study_uid.clone();
            let c = contact.clone();
            let already = {
                let (s, p, v) = (study.clone(), contact.peer_id.clone(), via.clone());
                self.blocking(move |st| -> Result<bool, StoreError> {
                    Ok(st.inbound(&s, &p)?.is_some_and(|i| {
                        i.via.as_ref() == Some(&v)
                            && i.state != crate::store::InboundState::Fetching
                    }))
                })
                .await??
            };
            if already {
                // Received (or refused) before the ack reached the relay: ack again.
                self.ack_mailbox(&via).await;
                continue;
            }
            match self
                .blocking(move |s| super::share::accept_offer(s, &c, &offer, Some(via)))
                .await?
            {
                Ok(()) => super::fetch::start(self, study, contact.peer_id.clone()),
                Err(reason) => tracing::warn!(item = %item.item, "mailbox offer refused: {reason}"),
            }
        }
        Ok(())
    }

    /// What an item carries (an offer, a pairing request), or None when the relay cannot give
    /// it (logged).
    async fn item_payload(
        &self,
        relay: PeerId,
        item: &discless_relay::proto::ItemMeta,
    ) -> Result<Option<String>, NetError> {
        let req = Request::Offer {
            item: item.item.clone(),
        };
        Ok(match self.mailbox_request(relay, &req).await? {
            Response::Offer { offer } => Some(offer),
            other => {
                tracing::warn!(item = %item.item, "mailbox item unreadable: {other:?}");
                None
            }
        })
    }

    /// Tells the relay an item arrived, so it deletes it.
    pub(crate) async fn ack_mailbox(&self, via: &Via) {
        let Ok(relay) = via.relay.parse::<PeerId>() else {
            return;
        };
        match self
            .mailbox_request(
                relay,
                &Request::Ack {
                    item: via.item.clone(),
                },
            )
            .await
        {
            Ok(Response::Ok) => {}
            other => tracing::warn!(item = %via.item, "mailbox ack not confirmed: {other:?}"),
        }
    }
}
