//! The providing side of `/discless/blobs/1`: a contact pulls sealed blobs of a study granted
//! to it, and nothing else.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::PeerId;
use tokio::io::AsyncReadExt;

use super::proto::{BlobRequest, Reply, MISSING, NOT_PAIRED};
use super::{wire, Handle};
use crate::store::{now_unix, Store, StoreError};

/// Test hook: the first N blobs this node sends have one byte flipped in transit, so tests can
/// show that a receiver rejects and re-fetches them. Read once at start.
pub const TEST_CORRUPT_ENV: &str = "DISCLESS_TEST_CORRUPT_BLOBS";
/// Test hook: milliseconds to pause before each blob sent, so that tests can interrupt a
/// transfer in its middle on a fast machine.
pub const TEST_SEND_DELAY_ENV: &str = "DISCLESS_TEST_SEND_DELAY_MS";
const MAX_IDS_PER_REQUEST: usize = 1024;
const READ: usize = 256 * 1024;

fn send_delay() -> Option<Duration> {
    static D: OnceLock<Option<Duration>> = OnceLock::new();
    *D.get_or_init(|| {
        std::env::var(TEST_SEND_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    })
}

fn corrupt_budget() -> &'static AtomicU64 {
    static N: OnceLock<AtomicU64> = OnceLock::new();
    N.get_or_init(|| {
        AtomicU64::new(
            std::env::var(TEST_CORRUPT_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        )
    })
}

/// Which of `ids` this peer may have: blobs of instances of a study granted to it, while the
/// grant is active. Non-contacts and contacts without a grant hear the same refusal whether or
/// not the study exists.
fn authorize(
    store: &Store,
    peer: &str,
    req: &BlobRequest,
) -> Result<Result<HashSet<String>, String>, StoreError> {
    if store.contact(peer)?.is_none() {
        return Ok(Err(NOT_PAIRED.into()));
    }
    let active = store
        .grant(&req.study_uid, peer)?
        .is_some_and(|g| g.active(now_unix()));
    if !active {
        return Ok(Err(
            "nothing is shared with you under this study id (never shared, revoked or expired)"
                .into(),
        ));
    }
    let wanted: HashSet<&str> = req.ids.iter().map(String::as_str).collect();
    Ok(Ok(store
        .instances(&req.study_uid)?
        .into_iter()
        .map(|i| i.blob_id)
        .filter(|b| wanted.contains(b.as_str()))
        .collect()))
}

pub(super) async fn handle_inbound(net: Handle, peer: PeerId, mut stream: libp2p::Stream) {
    let req: BlobRequest =
        match tokio::time::timeout(Duration::from_secs(30), wire::read(&mut stream)).await {
            Ok(Ok(r)) => r,
            _ => return,
        };
    if req.ids.len() > MAX_IDS_PER_REQUEST {
        let _ = wire::write(
            &mut stream,
            &Reply::Refused {
                reason: format!("at most {MAX_IDS_PER_REQUEST} blobs per request"),
            },
        )
        .await;
        return;
    }
    let p = peer.to_string();
    let (allowed, req) = match net.blocking(move |s| (authorize(s, &p, &req), req)).await {
        Ok((Ok(a), req)) => (a, req),
        _ => return,
    };
    let allowed = match allowed {
        Ok(a) => a,
        Err(reason) => {
            tracing::warn!(%peer, study = %req.study_uid, %reason, "blob request refused");
            let _ = wire::write(&mut stream, &Reply::Refused { reason }).await;
            let _ = stream.close().await;
            return;
        }
    };
    if wire::write(&mut stream, &Reply::Ok).await.is_err() {
        return;
    }
    let mut sent = 0u64;
    for id in &req.ids {
        let path = net.store().blobs().path(id);
        let file = if allowed.contains(id) {
            tokio::fs::File::open(&path).await.ok()
        } else {
            None
        };
        let r = match file {
            Some(f) => send_blob(&mut stream, f).await,
            None => stream.write_all(&MISSING.to_be_bytes()).await.map(|_| 0),
        };
        match r {
            Ok(n) => sent += n,
            Err(e) => {
                tracing::debug!(%peer, "blob stream ended: {e}");
                break;
            }
        }
    }
    let _ = stream.flush().await;
    let _ = stream.close().await;
    let (s, p) = (req.study_uid, peer.to_string());
    let _ = net
        .blocking(move |store| {
            store.update_grant(&s, &p, |g| {
                if let Some(g) = g {
                    g.bytes_sent += sent;
                }
            })
        })
        .await;
}

async fn send_blob(stream: &mut libp2p::Stream, mut f: tokio::fs::File) -> std::io::Result<u64> {
    if let Some(d) = send_delay() {
        tokio::time::sleep(d).await;
    }
    let len = f.metadata().await?.len();
    stream.write_all(&len.to_be_bytes()).await?;
    let mut corrupt = corrupt_budget()
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok();
    let mut buf = vec![0u8; READ];
    let mut left = len;
    while left > 0 {
        let n = f.read(&mut buf[..READ.min(left as usize)]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if corrupt {
            buf[n / 2] ^= 0x01;
            corrupt = false;
        }
        stream.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(len)
}

impl Handle {
    /// Asks `peer` for blobs whatever the grants say; for tests of authorization.
    pub async fn debug_request_blobs(
        &self,
        peer: PeerId,
        addrs: Vec<libp2p::Multiaddr>,
        study_uid: String,
        ids: Vec<String>,
    ) -> Result<serde_json::Value, super::NetError> {
        use futures::AsyncReadExt;
        let who = peer.to_string();
        self.connect(peer, addrs, &who).await?;
        let mut s = self.open(peer, super::proto::BLOBS, &who).await?;
        let err = |e: &dyn std::fmt::Display| super::NetError::Protocol {
            who: who.clone(),
            reason: e.to_string(),
        };
        let n = ids.len();
        wire::write(&mut s, &BlobRequest { study_uid, ids })
            .await
            .map_err(|e| err(&e))?;
        let reply: Reply = wire::read(&mut s).await.map_err(|e| err(&e))?;
        let mut lengths = Vec::new();
        if reply == Reply::Ok {
            for _ in 0..n {
                let mut len = [0u8; 8];
                s.read_exact(&mut len).await.map_err(|e| err(&e))?;
                let len = u64::from_be_bytes(len);
                if len == MISSING {
                    lengths.push(serde_json::Value::Null);
                    continue;
                }
                let mut sink = vec![0u8; len as usize];
                s.read_exact(&mut sink).await.map_err(|e| err(&e))?;
                lengths.push(len.into());
            }
        }
        Ok(serde_json::json!({ "reply": reply, "blobs": lengths }))
    }
}
