//! The receiving side of a share: pull the missing blobs of an offered study, verify each one
//! by its id as it arrives, decrypt-check every instance against the manifest, and make
//! instances visible in small batches so the first images can be viewed early.
//!
//! Resumable by construction: what is already on disk (and verifies) or already visible is
//! never asked for again, so a restart of either side only costs the blobs that were in flight.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use super::offer::ManifestEntry;
use super::proto::{BlobRequest, Reply, BLOBS, MISSING};
use super::{wire, Handle, Live, NetError};
use crate::crypto::{blob, SecretKey};
use crate::store::{now_unix, Inbound, InboundState, PendingInstance, Store, StoreError};

/// Streams pulling blobs at once: enough to hide round trips, few enough that libp2p-stream
/// never drops one for want of an accept slot.
const WORKERS: usize = 4;
const BATCH_BLOBS: usize = 16;
const BATCH_BYTES: u64 = 16 * 1024 * 1024;
/// A blob that fails verification this often is not retried further in this run.
const MAX_ATTEMPTS: u32 = 4;
const COMMIT_EVERY: Duration = Duration::from_millis(400);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts (or joins) the download of `study` from `peer`.
pub(crate) fn start(net: &Handle, study: String, peer: String) {
    let key = (study.clone(), peer.clone());
    {
        let Ok(mut f) = net.inner().fetching.lock() else {
            return;
        };
        if !f.insert(key.clone()) {
            return;
        }
    }
    let n = net.clone();
    net.spawn(async move {
        let r = run(&n, &study, &peer).await;
        if let Ok(mut f) = n.inner().fetching.lock() {
            f.remove(&key);
        }
        if let Err(e) = r {
            tracing::warn!(study, peer, "download stopped: {e}");
        }
    });
}

/// Restarts downloads left unfinished by the last run.
pub(crate) fn resume_all(net: &Handle) -> Result<(), NetError> {
    for i in net.store().inbound_all()? {
        if i.state == InboundState::Fetching {
            start(net, i.study_uid, i.peer_id);
        }
    }
    Ok(())
}

fn set_live(net: &Handle, study: &str, peer: &str, f: impl FnOnce(&mut Live)) {
    if let Ok(mut m) = net.inner().live.lock() {
        f(m.entry((study.to_owned(), peer.to_owned())).or_default());
    }
}

struct Plan {
    inbound: Inbound,
    key: SecretKey,
    /// Entries whose blob is already on disk: to verify and commit.
    ready: Vec<ManifestEntry>,
    /// Entries to fetch, in viewing order.
    need: Vec<ManifestEntry>,
}

fn plan(store: &Store, study: &str, peer: &str) -> Result<Option<Plan>, StoreError> {
    let Some(inbound) = store.inbound(study, peer)? else {
        return Ok(None);
    };
    if inbound.state != InboundState::Fetching {
        return Ok(None);
    }
    let key: [u8; 32] = hex::decode(&inbound.key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| StoreError::Malformed {
            slot: "r/".into(),
            reason: "study key".into(),
        })?;
    let mut ready = Vec::new();
    let mut need = Vec::new();
    for e in &inbound.manifest.instances {
        if store.instance(&e.instance.sop_instance_uid)?.is_some() {
            continue;
        }
        if store.blobs().exists(&e.instance.blob_id) && store.blobs().verify(&e.instance.blob_id) {
            ready.push(e.clone());
        } else {
            need.push(e.clone());
        }
    }
    Ok(Some(Plan {
        key: SecretKey::from_bytes(key),
        inbound,
        ready,
        need,
    }))
}

async fn run(net: &Handle, study: &str, peer_s: &str) -> Result<(), NetError> {
    let peer: PeerId = peer_s
        .parse()
        .map_err(|_| NetError::Invalid(format!("bad PeerId {peer_s}")))?;
    let mut backoff = Duration::from_secs(1);
    loop {
        let (s, p) = (study.to_owned(), peer_s.to_owned());
        let Some(plan) = net.blocking(move |st| plan(st, &s, &p)).await?? else {
            return Ok(());
        };
        if now_unix() >= plan.inbound.expires_unix {
            let (s, p) = (study.to_owned(), peer_s.to_owned());
            net.blocking(move |st| {
                st.update_inbound(&s, &p, |i| {
                    if let Some(i) = i {
                        i.state = InboundState::Failed;
                        i.error = Some("the grant expired before the study arrived".into());
                    }
                })
            })
            .await??;
            return Ok(());
        }
        let who = net
            .blocking({
                let p = peer_s.to_owned();
                move |st| st.contact(&p)
            })
            .await??
            .map(|c| super::who(&c))
            .unwrap_or_else(|| peer_s.to_owned());
        let total: u64 = plan.inbound.manifest.bytes();
        let need_bytes: u64 = plan.need.iter().map(|e| e.blob_bytes).sum();
        let blobs_total = plan.inbound.manifest.instances.len() as u64;
        set_live(net, study, peer_s, |l| {
            l.bytes_total = total;
            l.bytes_done = total - need_bytes;
            l.blobs_total = blobs_total;
            l.blobs_done = blobs_total - plan.need.len() as u64;
            l.started.get_or_insert_with(Instant::now);
        });
        let r = attempt(net, peer, &who, plan).await;
        match r {
            Ok(true) => return finish(net, study, peer_s).await,
            Ok(false) => backoff = Duration::from_secs(1),
            Err(e) => {
                tracing::info!(study, from = %who, "download interrupted, retrying in {backoff:?}: {e}");
                let msg = e.to_string();
                set_live(net, study, peer_s, |l| l.retries += 1);
                let (s, p) = (study.to_owned(), peer_s.to_owned());
                net.blocking(move |st| {
                    st.update_inbound(&s, &p, |i| {
                        if let Some(i) = i {
                            i.error = Some(msg);
                        }
                    })
                })
                .await??;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// One pass: fetch everything still needed. Ok(true) when every instance is visible.
async fn attempt(net: &Handle, peer: PeerId, who: &str, plan: Plan) -> Result<bool, NetError> {
    let study = plan.inbound.study_uid.clone();
    let peer_s = peer.to_string();
    let via = plan.inbound.via.clone();
    let key = Arc::new(plan.key);
    let study_attrs = Arc::new(plan.inbound.manifest.study.clone());
    let (tx, rx) = mpsc::channel::<ManifestEntry>(64);
    let committer = {
        let net = net.clone();
        let (key, attrs, study) = (key.clone(), study_attrs.clone(), study.clone());
        tokio::spawn(async move { commit_loop(&net, &study, &key, &attrs, rx).await })
    };
    for e in plan.ready {
        let _ = tx.send(e).await;
    }
    let queue: Arc<Mutex<VecDeque<(ManifestEntry, u32)>>> =
        Arc::new(Mutex::new(plan.need.into_iter().map(|e| (e, 0)).collect()));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (net, queue, tx) = (net.clone(), queue.clone(), tx.clone());
        let (study, peer_s, who) = (study.clone(), peer_s.clone(), who.to_owned());
        let via = via.clone();
        workers.push(tokio::spawn(async move {
            let src = Source {
                peer,
                peer_s: &peer_s,
                who: &who,
                study: &study,
                via: via.as_ref(),
            };
            worker(&net, &src, &queue, &tx).await
        }));
    }
    drop(tx);
    let mut first_err = None;
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(NetError::Stopped);
            }
        }
    }
    let committed = committer.await.map_err(|_| NetError::Stopped)??;
    if let Some(e) = first_err {
        return Err(e);
    }
    let (s, p) = (study.clone(), peer_s.clone());
    let remaining = net
        .blocking(move |st| self::plan(st, &s, &p).map(|p| p.map(|p| p.need.len() + p.ready.len())))
        .await??;
    tracing::debug!(study, committed, ?remaining, "download pass done");
    match remaining {
        Some(0) => Ok(true),
        // Revoked or finished meanwhile: the next plan sees it and stops.
        None => Ok(false),
        // Everything arrived, yet instances stay missing: they failed the decryption check.
        Some(n) if committed == 0 => Err(protocol(
            who,
            format!("{n} instances failed verification after decryption"),
        )),
        Some(_) => Ok(false),
    }
}

/// Where a download's blobs come from: the sender, or a relay's mailbox (`via`).
struct Source<'a> {
    peer: PeerId,
    peer_s: &'a str,
    who: &'a str,
    study: &'a str,
    via: Option<&'a crate::store::Via>,
}

async fn worker(
    net: &Handle,
    src: &Source<'_>,
    queue: &Mutex<VecDeque<(ManifestEntry, u32)>>,
    tx: &mpsc::Sender<ManifestEntry>,
) -> Result<(), NetError> {
    loop {
        let batch: Vec<(ManifestEntry, u32)> = {
            let Ok(mut q) = queue.lock() else {
                return Err(NetError::Stopped);
            };
            let mut b = Vec::new();
            let mut bytes = 0;
            while let Some((e, n)) = q.pop_front() {
                bytes += e.blob_bytes;
                b.push((e, n));
                if b.len() >= BATCH_BLOBS || bytes >= BATCH_BYTES {
                    break;
                }
            }
            b
        };
        if batch.is_empty() {
            return Ok(());
        }
        let mut pending: VecDeque<(ManifestEntry, u32)> = batch.into();
        let r = fetch_batch(net, src, &mut pending, tx).await;
        // Whatever did not arrive goes back for another worker or the next pass.
        if let Ok(mut q) = queue.lock() {
            for item in pending.into_iter().rev() {
                q.push_front(item);
            }
        }
        r?;
    }
}

fn protocol(who: &str, reason: impl std::fmt::Display) -> NetError {
    NetError::Protocol {
        who: who.to_owned(),
        reason: reason.to_string(),
    }
}

async fn read_exact_timed(
    s: &mut libp2p::Stream,
    buf: &mut [u8],
    who: &str,
) -> Result<(), NetError> {
    tokio::time::timeout(READ_TIMEOUT, s.read_exact(buf))
        .await
        .map_err(|_| protocol(who, "the sender stalled"))?
        .map_err(|e| protocol(who, e))
}

/// Fetches the blobs in `pending`, removing each from it once handled.
async fn fetch_batch(
    net: &Handle,
    src: &Source<'_>,
    pending: &mut VecDeque<(ManifestEntry, u32)>,
    tx: &mpsc::Sender<ManifestEntry>,
) -> Result<(), NetError> {
    let (peer_s, study) = (src.peer_s, src.study);
    let ids: Vec<String> = pending
        .iter()
        .map(|(e, _)| e.instance.blob_id.clone())
        .collect();
    let count = ids.len();
    let (mut stream, who) = match src.via {
        None => {
            let who = src.who.to_owned();
            let mut stream = net.open(src.peer, BLOBS, &who).await?;
            let req = BlobRequest {
                study_uid: study.to_owned(),
                ids,
            };
            wire::write(&mut stream, &req)
                .await
                .map_err(|e| protocol(&who, e))?;
            let reply: Reply = tokio::time::timeout(READ_TIMEOUT, wire::read(&mut stream))
                .await
                .map_err(|_| protocol(&who, "no answer to a blob request"))?
                .map_err(|e| protocol(&who, e))?;
            if let Reply::Refused { reason } = reply {
                return Err(NetError::Refused { who, reason });
            }
            (stream, who)
        }
        Some(via) => {
            use discless_relay::proto;
            let relay: PeerId = via
                .relay
                .parse()
                .map_err(|_| NetError::Invalid(format!("bad relay PeerId {}", via.relay)))?;
            let who = format!("relay {relay}");
            let mut stream = net.open(relay, proto::MAILBOX, &who).await?;
            let req = proto::Request::Blobs {
                item: via.item.clone(),
                ids,
            };
            proto::write(&mut stream, &req)
                .await
                .map_err(|e| protocol(&who, e))?;
            let reply: proto::Response =
                tokio::time::timeout(READ_TIMEOUT, proto::read(&mut stream))
                    .await
                    .map_err(|_| protocol(&who, "no answer to a blob request"))?
                    .map_err(|e| protocol(&who, e))?;
            match reply {
                proto::Response::Ok => {}
                proto::Response::Refused { reason } => {
                    return Err(NetError::Refused { who, reason })
                }
                other => return Err(protocol(&who, format!("unexpected answer {other:?}"))),
            }
            (stream, who)
        }
    };
    let who = who.as_str();
    let blobs = net.store().blobs().clone();
    let mut buf = vec![0u8; 256 * 1024];
    // Blobs that failed verification: asked for again in a later request, because the sender
    // answers exactly the ids of this one.
    let mut retry = Vec::new();
    let r = receive(
        net,
        &mut stream,
        &blobs,
        &mut buf,
        peer_s,
        who,
        study,
        count,
        pending,
        &mut retry,
        tx,
    )
    .await;
    pending.extend(retry);
    r?;
    let _ = stream.close().await;
    Ok(())
}

/// Reads the `count` blobs answered on `stream`, in request order.
#[allow(clippy::too_many_arguments)]
async fn receive(
    net: &Handle,
    stream: &mut libp2p::Stream,
    blobs: &crate::store::Blobs,
    buf: &mut [u8],
    peer_s: &str,
    who: &str,
    study: &str,
    count: usize,
    pending: &mut VecDeque<(ManifestEntry, u32)>,
    retry: &mut Vec<(ManifestEntry, u32)>,
    tx: &mpsc::Sender<ManifestEntry>,
) -> Result<(), NetError> {
    for _ in 0..count {
        let Some((entry, attempts)) = pending.pop_front() else {
            break;
        };
        let mut len = [0u8; 8];
        if let Err(e) = read_exact_timed(stream, &mut len, who).await {
            pending.push_front((entry, attempts));
            return Err(e);
        }
        let len = u64::from_be_bytes(len);
        if len == MISSING {
            let msg = format!("it does not have blob {}", entry.instance.blob_id);
            pending.push_front((entry, attempts));
            return Err(protocol(who, msg));
        }
        if len != entry.blob_bytes {
            pending.push_front((entry, attempts));
            return Err(protocol(who, "a blob's length differs from the manifest"));
        }
        let tmp = blobs.temp().map_err(|e| NetError::Invalid(e.to_string()))?;
        let mut file = tokio::fs::File::from_std(
            tmp.as_file()
                .try_clone()
                .map_err(|e| NetError::Invalid(e.to_string()))?,
        );
        let mut hasher = blake3::Hasher::new();
        let mut left = len;
        while left > 0 {
            let n = buf.len().min(left as usize);
            if let Err(e) = read_exact_timed(stream, &mut buf[..n], who).await {
                pending.push_front((entry, attempts));
                return Err(e);
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .await
                .map_err(|e| NetError::Invalid(format!("writing a blob: {e}")))?;
            left -= n as u64;
            set_live(net, study, peer_s, |l| {
                l.bytes_this_run += n as u64;
            });
        }
        file.flush()
            .await
            .map_err(|e| NetError::Invalid(format!("writing a blob: {e}")))?;
        drop(file);
        let id = &entry.instance.blob_id;
        if hasher.finalize().to_hex().as_str() != id {
            tracing::warn!(from = who, blob = %id, attempt = attempts + 1, "blob failed verification in transit; fetching it again");
            set_live(net, study, peer_s, |l| l.retries += 1);
            let _ = net.store().audit().append(
                "blob rejected",
                serde_json::json!({ "study": study, "from": peer_s, "blob": id, "reason": "content hash mismatch" }),
            );
            if attempts + 1 >= MAX_ATTEMPTS {
                return Err(protocol(
                    who,
                    format!("blob {id} arrived corrupted {MAX_ATTEMPTS} times"),
                ));
            }
            retry.push((entry, attempts + 1));
            continue;
        }
        let dest = blobs.path(id);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| NetError::Invalid(e.to_string()))?;
        }
        tmp.persist(&dest)
            .map_err(|e| NetError::Invalid(format!("storing a blob: {}", e.error)))?;
        set_live(net, study, peer_s, |l| {
            l.bytes_done += len;
            l.blobs_done += 1;
        });
        if tx.send(entry).await.is_err() {
            return Err(NetError::Stopped);
        }
    }
    Ok(())
}

/// Decrypts an arrived instance and checks it against the manifest.
fn verify(store: &Store, key: &SecretKey, e: &ManifestEntry) -> Result<(), String> {
    let i = &e.instance;
    let f = store
        .blobs()
        .open(&i.blob_id)
        .map_err(|err| format!("blob {}: {err}", i.blob_id))?;
    let ctx = blob::Context {
        study_uid: &i.study_instance_uid,
        sop_instance_uid: &i.sop_instance_uid,
    };
    let opened = blob::open(
        key,
        ctx,
        io::BufReader::with_capacity(1 << 20, f),
        io::sink(),
    )
    .map_err(|err| format!("instance {} does not decrypt: {err}", i.sop_instance_uid))?;
    if opened.plaintext_hash.to_hex().as_str() != i.plaintext_hash || opened.plaintext_len != i.size
    {
        return Err(format!(
            "instance {} decrypts to bytes other than the manifest describes",
            i.sop_instance_uid
        ));
    }
    Ok(())
}

/// Verifies arrived instances and commits them in batches. Returns how many became visible.
async fn commit_loop(
    net: &Handle,
    study: &str,
    key: &Arc<SecretKey>,
    attrs: &Arc<crate::store::StudyAttributes>,
    mut rx: mpsc::Receiver<ManifestEntry>,
) -> Result<u64, NetError> {
    let mut batch: Vec<ManifestEntry> = Vec::new();
    let mut committed = 0u64;
    let mut last = Instant::now();
    loop {
        let next = tokio::time::timeout(COMMIT_EVERY, rx.recv()).await;
        let closed = matches!(next, Ok(None));
        if let Ok(Some(e)) = next {
            batch.push(e);
        }
        // Until something is visible, each arrival is committed at once, so the first image
        // can be opened while the rest is still coming; later batches amortise the sync.
        let due = committed == 0 || closed || last.elapsed() >= COMMIT_EVERY || batch.len() >= 64;
        if !batch.is_empty() && due {
            let b = std::mem::take(&mut batch);
            let (key, attrs, s) = (key.clone(), attrs.clone(), study.to_owned());
            committed += net
                .blocking(move |st| commit(st, &s, &key, &attrs, b))
                .await??;
            last = Instant::now();
        }
        if closed {
            return Ok(committed);
        }
    }
}

fn commit(
    store: &Store,
    study: &str,
    key: &SecretKey,
    attrs: &crate::store::StudyAttributes,
    batch: Vec<ManifestEntry>,
) -> Result<u64, NetError> {
    let mut sops = Vec::new();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for e in batch {
        if let Err(reason) = verify(store, key, &e) {
            tracing::warn!(study, "{reason}");
            let _ = store.blobs().remove(&e.instance.blob_id);
            let _ = store.audit().append(
                "instance rejected",
                serde_json::json!({ "study": study, "sop": e.instance.sop_instance_uid, "reason": reason }),
            );
            continue;
        }
        if let Some(d) = store.blobs().path(&e.instance.blob_id).parent() {
            dirs.insert(d.to_path_buf());
        }
        let mut instance = e.instance;
        instance.imported_unix = now_unix();
        sops.push(instance.sop_instance_uid.clone());
        store.put_pending(&PendingInstance {
            instance,
            study: attrs.clone(),
            metadata: e.metadata,
        })?;
    }
    Ok(store.commit(&sops, &dirs)?.instances)
}

async fn finish(net: &Handle, study: &str, peer_s: &str) -> Result<(), NetError> {
    let (s, p) = (study.to_owned(), peer_s.to_owned());
    let (contact, via) = net
        .blocking(move |st| -> Result<_, StoreError> {
            let mut count = 0;
            let via = st.update_inbound(&s, &p, |i| {
                i.as_mut().and_then(|i| {
                    i.state = InboundState::Complete;
                    i.completed_unix = Some(now_unix());
                    i.error = None;
                    count = i.manifest.instances.len();
                    i.via.clone()
                })
            })?;
            let c = st.contact(&p)?;
            st.audit().append(
                "received",
                serde_json::json!({ "study": s, "from": p, "name": c.as_ref().map(|c| c.name.clone()), "instances": count, "via_relay": via.as_ref().map(|v| v.relay.clone()) }),
            )?;
            Ok((c, via))
        })
        .await??;
    if let Some(v) = &via {
        net.ack_mailbox(v).await;
    }
    tracing::info!(study, from = peer_s, "study received complete");
    if let Some(c) = contact {
        net.acknowledge(study, &c).await;
    }
    Ok(())
}

/// Live progress of the downloads, by (study, peer).
pub(crate) fn live(net: &Handle) -> HashMap<(String, String), Live> {
    net.inner()
        .live
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default()
}
