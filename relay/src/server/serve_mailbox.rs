//! The relay's side of `/discless/mailbox/1`.

use std::sync::OnceLock;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use tokio::io::AsyncReadExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

use super::metrics::Ours;
use super::{Admission, Mailbox};
use crate::proto::{self, BlobMeta, Request, Response, MISSING};

/// Test hook: milliseconds to pause before each blob handed to a recipient, so tests can
/// restart the relay in the middle of a drain.
pub const TEST_SEND_DELAY_ENV: &str = "DISCLESS_RELAY_TEST_SEND_DELAY_MS";
const IDLE: Duration = Duration::from_secs(60);

fn send_delay() -> Option<Duration> {
    static D: OnceLock<Option<Duration>> = OnceLock::new();
    *D.get_or_init(|| {
        std::env::var(TEST_SEND_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    })
}

pub(super) async fn accept_loop(
    mut incoming: libp2p_stream::IncomingStreams,
    mailbox: Mailbox,
    admission: Admission,
    ours: Ours,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                let (m, a, o) = (mailbox.clone(), admission.clone(), ours.clone());
                tokio::spawn(async move { handle(peer, stream, m, a, o).await });
            }
        }
    }
}

async fn handle(
    peer: PeerId,
    mut s: libp2p::Stream,
    mailbox: Mailbox,
    admission: Admission,
    ours: Ours,
) {
    let req: Request = match tokio::time::timeout(IDLE, proto::read(&mut s)).await {
        Ok(Ok(r)) => r,
        _ => return,
    };
    if !admission.allows(&peer) {
        ours.refused("mailbox");
        tracing::warn!(%peer, "mailbox request refused: peer not admitted");
        let _ = proto::write(
            &mut s,
            &Response::Refused {
                reason: "this relay does not admit your node (ask its operator to add your PeerId)"
                    .into(),
            },
        )
        .await;
        return;
    }
    let me = peer.to_string();
    let r = match req {
        Request::Deposit {
            recipient,
            item,
            offer,
            blobs,
        } => deposit(&mut s, &mailbox, &ours, &me, recipient, item, offer, blobs).await,
        Request::List => Ok(Response::Items {
            items: mailbox.items_for(&me).unwrap_or_default(),
        }),
        Request::Offer { item } => Ok(match mailbox.offer(&me, &item) {
            Ok(Some(offer)) => Response::Offer { offer },
            _ => Response::Refused {
                reason: "no such item in your mailbox".into(),
            },
        }),
        Request::Blobs { item, ids } => {
            let _ = send_blobs(&mut s, &mailbox, &ours, &me, &item, &ids).await;
            return;
        }
        Request::Ack { item } => {
            let _ = mailbox.remove(&me, &item);
            tracing::info!(recipient = %me, %item, "mailbox item delivered and deleted");
            Ok(Response::Ok)
        }
    };
    let resp = r.unwrap_or_else(|reason| Response::Refused { reason });
    let _ = proto::write(&mut s, &resp).await;
    let _ = s.close().await;
}

#[allow(clippy::too_many_arguments)]
async fn deposit(
    s: &mut libp2p::Stream,
    mailbox: &Mailbox,
    ours: &Ours,
    sender: &str,
    recipient: String,
    item: String,
    offer: String,
    blobs: Vec<BlobMeta>,
) -> Result<Response, String> {
    if recipient.parse::<PeerId>().is_err() {
        return Err("the recipient is not a PeerId".into());
    }
    if !proto::is_item_name(&item) || blobs.iter().any(|b| !proto::is_blob_id(&b.id)) {
        return Err("malformed item name or blob id".into());
    }
    if !mailbox
        .may_deposit(&recipient, &item, sender)
        .map_err(|e| e.to_string())?
    {
        ours.refused("item_taken");
        return Err("another sender already left an item of this name for this recipient".into());
    }
    let bytes: u64 = blobs.iter().map(|b| b.len).sum::<u64>() + offer.len() as u64;
    let (r, snd) = mailbox
        .usage(&recipient, sender, &item)
        .map_err(|e| e.to_string())?;
    let l = mailbox.limits;
    if r + bytes > l.per_recipient {
        ours.refused("quota");
        return Err(format!(
            "the recipient's mailbox is full ({r} of {} bytes used, this item needs {bytes})",
            l.per_recipient
        ));
    }
    if snd + bytes > l.per_sender {
        ours.refused("quota");
        return Err(format!(
            "your deposits would exceed this relay's per-sender quota ({snd} of {} bytes used, this item needs {bytes})",
            l.per_sender
        ));
    }
    let staged = mailbox.temp_dir().map_err(|e| e.to_string())?;
    // Accepted so far: now the sender may send the bytes.
    proto::write(s, &Response::Ok)
        .await
        .map_err(|e| format!("deposit cut: {e}"))?;
    let mut buf = vec![0u8; 256 * 1024];
    for b in &blobs {
        let path = staged.path().join(&b.id);
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| e.to_string())?;
        let mut h = blake3::Hasher::new();
        let mut left = b.len;
        while left > 0 {
            let n = buf.len().min(left as usize);
            tokio::time::timeout(IDLE, s.read_exact(&mut buf[..n]))
                .await
                .map_err(|_| "the sender stalled".to_owned())?
                .map_err(|e| format!("deposit cut: {e}"))?;
            h.update(&buf[..n]);
            f.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
            left -= n as u64;
        }
        f.sync_all().await.map_err(|e| e.to_string())?;
        if h.finalize().to_hex().as_str() != b.id {
            ours.refused("corrupt_blob");
            return Err(format!("blob {} does not match its id", b.id));
        }
    }
    let meta = mailbox
        .commit(staged, &offer, &recipient, sender, &item, blobs)
        .map_err(|e| e.to_string())?;
    ours.deposited(bytes);
    tracing::info!(%sender, %recipient, %item, bytes, "deposited");
    Ok(Response::Deposited {
        item,
        expires_unix: meta.expires_unix,
    })
}

async fn send_blobs(
    s: &mut libp2p::Stream,
    mailbox: &Mailbox,
    ours: &Ours,
    me: &str,
    item: &str,
    ids: &[String],
) -> std::io::Result<()> {
    let Ok(Some(meta)) = mailbox.item(me, item) else {
        let _ = proto::write(
            s,
            &Response::Refused {
                reason: "no such item in your mailbox".into(),
            },
        )
        .await;
        return Ok(());
    };
    if proto::write(s, &Response::Ok).await.is_err() {
        return Ok(());
    }
    let mut buf = vec![0u8; 256 * 1024];
    for id in ids {
        if let Some(d) = send_delay() {
            tokio::time::sleep(d).await;
        }
        let listed = meta.blobs.iter().any(|b| &b.id == id) && proto::is_blob_id(id);
        let file = if listed {
            tokio::fs::File::open(mailbox.blob_path(me, item, id))
                .await
                .ok()
        } else {
            None
        };
        let Some(mut f) = file else {
            s.write_all(&MISSING.to_be_bytes()).await?;
            continue;
        };
        let len = f.metadata().await?.len();
        s.write_all(&len.to_be_bytes()).await?;
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            s.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        ours.delivered(len);
    }
    s.flush().await?;
    let _ = s.close().await;
    Ok(())
}
