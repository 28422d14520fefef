//! `discless transfers`: both directions in one list, with live progress when the network runs.

use std::collections::HashMap;

use super::{Live, TransferView};
use crate::store::{now_unix, GrantState, InboundState, Store, StoreError};

/// Every transfer this node knows of; `live` adds progress of downloads running now.
pub fn list(
    store: &Store,
    live: &HashMap<(String, String), Live>,
) -> Result<Vec<TransferView>, StoreError> {
    let names: HashMap<String, String> = store
        .contacts()?
        .into_iter()
        .map(|c| (c.peer_id, c.name))
        .collect();
    let name = |p: &str| {
        names
            .get(p)
            .cloned()
            .unwrap_or_else(|| "(removed contact)".into())
    };
    let now = now_unix();
    let mut out = Vec::new();
    for i in store.inbound_all()? {
        let total = i.manifest.bytes();
        let count = i.manifest.instances.len() as u64;
        let l = live.get(&(i.study_uid.clone(), i.peer_id.clone()));
        let (bytes_done, blobs_done) = match (i.state, l) {
            (InboundState::Complete, _) => (total, count),
            (_, Some(l)) => (l.bytes_done, l.blobs_done),
            _ => {
                let visible = store.instances(&i.study_uid)?.len() as u64;
                let bytes = i
                    .manifest
                    .instances
                    .iter()
                    .take(visible as usize)
                    .map(|e| e.blob_bytes)
                    .sum();
                (bytes, visible)
            }
        };
        let rate = l
            .and_then(|l| {
                l.started
                    .map(|s| (l.bytes_this_run, s.elapsed().as_secs_f64()))
            })
            .filter(|(_, secs)| *secs > 0.0)
            .map(|(b, secs)| b as f64 / secs)
            .unwrap_or(0.0);
        out.push(TransferView {
            direction: "in",
            short_id: crate::store::records::short_id(&i.study_uid),
            peer_name: name(&i.peer_id),
            state: match i.state {
                InboundState::Fetching if now >= i.expires_unix => "expired".into(),
                s => serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            },
            bytes_done,
            bytes_total: total,
            blobs_done,
            blobs_total: count,
            rate_bytes_per_sec: if i.state == InboundState::Fetching {
                rate
            } else {
                0.0
            },
            expires_unix: i.expires_unix,
            error: i.error.clone(),
            bytes_sent: None,
            study_uid: i.study_uid,
            peer_id: i.peer_id,
        });
    }
    for g in store.grants()? {
        let study = store.study(&g.study_uid)?;
        let total: u64 = store
            .instances(&g.study_uid)?
            .iter()
            .map(|i| crate::crypto::blob::sealed_len(i.size))
            .sum();
        let state = match g.state {
            GrantState::Revoked => "revoked",
            _ if now >= g.expires_unix => "expired",
            GrantState::Pending => "pending",
            GrantState::Offered => "offered",
            GrantState::Queued => "queued",
            GrantState::Delivered => "delivered",
        };
        out.push(TransferView {
            direction: "out",
            short_id: crate::store::records::short_id(&g.study_uid),
            peer_name: name(&g.peer_id),
            state: state.into(),
            bytes_done: if g.state == GrantState::Delivered {
                total
            } else {
                g.bytes_sent.min(total)
            },
            bytes_total: total,
            blobs_done: 0,
            blobs_total: study.map(|s| s.instance_count).unwrap_or(0),
            rate_bytes_per_sec: 0.0,
            expires_unix: g.expires_unix,
            error: g
                .queued
                .as_ref()
                .map(|q| format!("waiting at relay {}", q.relay)),
            bytes_sent: Some(g.bytes_sent),
            study_uid: g.study_uid,
            peer_id: g.peer_id,
        });
    }
    Ok(out)
}
