//! The node's HTTP server (axum): the web viewer, a JSON API, and DICOMweb under `/dicomweb`.
//!
//! * `/` and its files: the viewer from `web/`, embedded in the binary;
//! * `/api/...`: JSON for the viewer and for the CLI (`api.rs`), and for the pairing, contacts,
//!   sharing and transfers pages (`p2p.rs`); `/api/control/...` lets the CLI
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
mod cache;
mod control;
mod dicomweb;
mod error;
mod p2p;
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
    /// The node's network, when it runs in this process (pairing and sharing from the web UI).
    pub net: Option<crate::net::Handle>,
}

/// What a running server tells local clients, written to `<home>/serve.json` (mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    pub url: String,
    pub pid: u32,
    pub token: String,
    /// The DICOM (DIMSE) listener's address, when `serve --dimse` runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimse: Option<String>,
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
    net: Option<crate::net::Handle>,
    /// Whether requests need the token (the server listens beyond loopback).
    remote: bool,
    plaintexts: cache::PlaintextCache,
}

impl StateInner {
    fn new(token: String, remote: bool, net: Option<crate::net::Handle>) -> Self {
        Self {
            token,
            net,
            remote,
            plaintexts: cache::PlaintextCache::new(cache::DEFAULT_BYTES),
        }
    }
}

impl AppState {
    pub fn new(store: Store, token: String, remote: bool) -> Self {
        Self {
            store,
            inner: Arc::new(StateInner::new(token, remote, None)),
        }
    }

    /// The same state, with the node's network attached. A state not yet shared keeps its
    /// plaintext cache (and the cache's thread) rather than starting another.
    pub fn with_net(mut self, net: Option<crate::net::Handle>) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.net = net,
            None => {
                let (token, remote) = (self.inner.token.clone(), self.inner.remote);
                self.inner = Arc::new(StateInner::new(token, remote, net));
            }
        }
        self
    }

    pub(crate) fn net(&self) -> Option<&crate::net::Handle> {
        self.inner.net.as_ref()
    }
    pub(crate) fn token(&self) -> &str {
        &self.inner.token
    }
    pub(crate) fn remote(&self) -> bool {
        self.inner.remote
    }
    pub(crate) fn plaintexts(&self) -> &cache::PlaintextCache {
        &self.inner.plaintexts
    }
}

/// The whole HTTP surface as a router (tests call it with `tower::ServiceExt::oneshot`).
pub fn router(state: AppState, cors_origins: &[String]) -> Router {
    let app = Router::new()
        .route("/", get(web::index))
        .route("/login", get(auth::login_page).post(auth::login))
        .nest("/api", api::router().merge(p2p::router()))
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
    let state = AppState::new(store, token, remote).with_net(config.net.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::home::Home::new(dir.path().join("home"));
        let keys =
            crate::keystore::create(&home.keystore(), b"pw", "t", crate::keystore::Role::Doctor)
                .unwrap();
        let s = Store::open(&home, keys).unwrap();
        (dir, s)
    }

    async fn status(app: &Router, uri: &str, token: Option<&str>) -> StatusCode {
        let mut req = Request::builder().uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        app.clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn beyond_loopback_everything_needs_the_token() {
        let (_d, s) = store();
        let app = router(AppState::new(s, "secret-token".into(), true), &[]);
        for uri in [
            "/api/studies",
            "/dicomweb/studies",
            "/api/node",
            "/dicomweb/series",
        ] {
            assert_eq!(
                status(&app, uri, None).await,
                StatusCode::UNAUTHORIZED,
                "{uri}"
            );
            assert_eq!(
                status(&app, uri, Some("wrong")).await,
                StatusCode::UNAUTHORIZED,
                "{uri}"
            );
            assert_eq!(
                status(&app, uri, Some("secret-token")).await,
                StatusCode::OK,
                "{uri}"
            );
        }
        // Pages redirect to the login form instead.
        assert_eq!(status(&app, "/", None).await, StatusCode::SEE_OTHER);
        assert_eq!(status(&app, "/login", None).await, StatusCode::OK);
    }

    /// Attaching the network to a fresh state keeps its cache, token and mode.
    #[test]
    fn with_net_keeps_a_fresh_state_and_its_cache() {
        let (_d, s) = store();
        let state = AppState::new(s, "t".into(), true);
        let cache: *const cache::PlaintextCache = state.plaintexts();
        let state = state.with_net(None);
        assert!(std::ptr::eq(cache, state.plaintexts()));
        assert_eq!((state.token(), state.remote()), ("t", true));
    }

    #[tokio::test]
    async fn on_loopback_only_the_control_api_needs_the_token() {
        let (_d, s) = store();
        let app = router(AppState::new(s, "t0k3n".into(), false), &[]);
        assert_eq!(status(&app, "/api/studies", None).await, StatusCode::OK);
        assert_eq!(
            status(&app, "/dicomweb/studies", None).await,
            StatusCode::OK
        );
        let req = Request::builder()
            .method("POST")
            .uri("/api/control/run")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"args":["studies"],"cwd":"/"}"#))
            .unwrap();
        let r = app.clone().oneshot(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn unknown_resources_are_clean_json_404s() {
        let (_d, s) = store();
        let app = router(AppState::new(s, "t".into(), false), &[]);
        assert_eq!(
            status(&app, "/dicomweb/studies/1.2.3/metadata", None).await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(
                &app,
                "/dicomweb/studies/1.2.3/series/4/instances/5/frames/1",
                None
            )
            .await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(&app, "/api/studies/1.2.3", None).await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(
                &app,
                "/dicomweb/studies/1.2.3/series/4/instances/5/frames/x",
                None
            )
            .await,
            StatusCode::BAD_REQUEST
        );
    }
}
