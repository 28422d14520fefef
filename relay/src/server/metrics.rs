//! Prometheus text on `--metrics`: libp2p's own (bandwidth by transport, relay reservations and
//! circuits, identify, ping) plus ours (mailbox items and bytes, refusals).

use std::net::SocketAddr;

use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::{Mailbox, RelayError};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct What {
    what: String,
}

/// Counters the relay keeps itself.
#[derive(Debug, Clone)]
pub(super) struct Ours {
    refusals: Family<What, Counter>,
    reservations: Gauge,
    circuits: Gauge,
    mailbox_items: Gauge,
    mailbox_bytes: Gauge,
    deposited_bytes: Counter,
    delivered_bytes: Counter,
    circuits_opened: Counter,
}

impl Ours {
    pub(super) fn new(r: &mut Registry) -> Self {
        let o = Self {
            refusals: Family::default(),
            reservations: Gauge::default(),
            circuits: Gauge::default(),
            mailbox_items: Gauge::default(),
            mailbox_bytes: Gauge::default(),
            deposited_bytes: Counter::default(),
            delivered_bytes: Counter::default(),
            circuits_opened: Counter::default(),
        };
        let r = r.sub_registry_with_prefix("discless_relay");
        r.register("refusals", "Requests refused, by kind", o.refusals.clone());
        r.register(
            "reservations_active",
            "Active reservations",
            o.reservations.clone(),
        );
        r.register("circuits_active", "Open circuits", o.circuits.clone());
        r.register(
            "circuits_opened",
            "Circuits opened since start",
            o.circuits_opened.clone(),
        );
        r.register(
            "mailbox_items",
            "Items waiting in mailboxes",
            o.mailbox_items.clone(),
        );
        r.register(
            "mailbox_bytes",
            "Bytes waiting in mailboxes",
            o.mailbox_bytes.clone(),
        );
        r.register(
            "mailbox_deposited_bytes",
            "Bytes deposited",
            o.deposited_bytes.clone(),
        );
        r.register(
            "mailbox_delivered_bytes",
            "Bytes of blobs handed to recipients",
            o.delivered_bytes.clone(),
        );
        o
    }

    pub(super) fn refused(&self, what: &str) {
        self.refusals
            .get_or_create(&What { what: what.into() })
            .inc();
    }

    pub(super) fn deposited(&self, bytes: u64) {
        self.deposited_bytes.inc_by(bytes);
    }

    pub(super) fn delivered(&self, bytes: u64) {
        self.delivered_bytes.inc_by(bytes);
    }

    pub(super) fn relay_event(&self, e: &libp2p::relay::Event) {
        use libp2p::relay::Event as E;
        match e {
            E::ReservationReqAccepted { renewed: false, .. } => {
                self.reservations.inc();
            }
            E::ReservationTimedOut { .. } | E::ReservationClosed { .. } => {
                self.reservations.dec();
            }
            E::CircuitReqAccepted { .. } => {
                self.circuits.inc();
                self.circuits_opened.inc();
            }
            E::CircuitClosed { .. } => {
                self.circuits.dec();
            }
            E::ReservationReqDenied { .. } => self.refused("reservation_denied"),
            E::CircuitReqDenied { .. } => self.refused("circuit_denied"),
            _ => {}
        }
    }
}

pub(super) async fn serve(
    addr: SocketAddr,
    registry: Registry,
    mailbox: Mailbox,
    ours: Ours,
    cancel: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), RelayError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RelayError::Metrics { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| RelayError::Metrics { addr, source })?;
    let registry = std::sync::Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let (registry, mailbox, ours) = (registry.clone(), mailbox.clone(), ours.clone());
            async move {
                let items = mailbox.all().unwrap_or_default();
                ours.mailbox_items.set(items.len() as i64);
                ours.mailbox_bytes
                    .set(items.iter().map(|i| i.bytes).sum::<u64>() as i64);
                let mut out = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    out,
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
    });
    Ok((bound, task))
}
