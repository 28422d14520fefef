//! The node's HTTP server (axum): the web viewer, a JSON API, and DICOMweb under `/dicomweb`.
//!
//! * `/` and its files: the viewer from `web/`, embedded in the binary;
//! * `/api/...`: JSON for the viewer and for the CLI (`api.rs`); `/api/control/...` lets the CLI
//!   run imports and exports through a running server, since sled allows one process per home;
//!   it requires the token written to `<home>/serve.json` (mode 0600), even on loopback, because
//!   other local users can reach loopback too;
//! * `/dicomweb/...`: QIDO-RS, WADO-RS, STOW-RS (`dicomweb.rs` and its submodules).
//!
//! Access: when the server listens on loopback only, no login is needed for the viewer and
//! DICOMweb. When it listens beyond loopback, every request needs the token (bearer header for
//! DICOMweb clients, or a session cookie set by `/login`, HttpOnly and SameSite=Strict, which also
//! keeps other sites from riding on it).
//!
//! Store work (sled reads, decryption, parsing) is blocking and runs on `spawn_blocking`.

mod api;
mod auth;
mod dicomweb;
mod error;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ApiResult};

use crate::store::Store;

/// Default HTTP address: loopback, so a fresh node exposes nothing to the network.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// Origins allowed to call the API and DICOMweb from a browser (e.g. an OHIF deployment).
    pub cors_origins: Vec<String>,
}

/// What a running server tells local clients, written to `<home>/serve.json` (mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    pub url: String,
    pub pid: u32,
    pub token: String,
}

impl Announcement {
    pub fn path(home: &crate::home::Home) -> PathBuf {
        home.root().join("serve.json")
    }
}

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    inner: Arc<StateInner>,
}

#[derive(Debug)]
struct StateInner {
    token: String,
    /// Whether requests need the token (the server listens beyond loopback).
    remote: bool,
}

impl AppState {
    pub fn new(store: Store, token: String, remote: bool) -> Self {
        Self {
            store,
            inner: Arc::new(StateInner { token, remote }),
        }
    }
    pub(crate) fn token(&self) -> &str {
        &self.inner.token
    }
    pub(crate) fn remote(&self) -> bool {
        self.inner.remote
    }
}

/// The whole HTTP surface as a router (tests call it with `tower::ServiceExt::oneshot`).
pub fn router(state: AppState, cors_origins: &[String]) -> Router {
    let app = Router::new()
        .route("/", get(web::index))
        .route("/login", get(auth::login_page).post(auth::login))
        .nest("/api", api::router())
        .nest("/dicomweb", dicomweb::router())
        .route("/{*path}", get(web::asset))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .with_state(state);
    if cors_origins.is_empty() {
        app
    } else {
        app.layer(auth::cors(cors_origins))
    }
}

/// Starting the server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// A running server.
#[derive(Debug)]
pub struct Handle {
    pub addr: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Handle {
    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.cancel.cancel();
        match self.task.await {
            Ok(r) => Ok(r?),
            Err(e) => Err(ServeError::Io(std::io::Error::other(e))),
        }
    }
}

/// Binds and starts serving in the background.
pub async fn spawn(store: Store, config: Config, token: String) -> Result<Handle, ServeError> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    let addr = listener.local_addr()?;
    let remote = !addr.ip().is_loopback();
    let state = AppState::new(store, token, remote);
    let app = router(state, &config.cors_origins);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { c.cancelled().await })
            .await
    });
    Ok(Handle { addr, cancel, task })
}
