//! Who may use the server: nobody beyond loopback without the token; the control API only with
//! the token, wherever the request comes from.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::{ApiError, AppState};

const COOKIE: &str = "discless_session";

fn presented_token(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        if let Some(t) = v.to_str().ok().and_then(|s| s.strip_prefix("Bearer ")) {
            return Some(t.trim().to_owned());
        }
    }
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The access rule, as middleware over every route.
pub(super) async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let is_control = path.starts_with("/api/control/");
    let is_login = path == "/login";
    let ok = presented_token(&req).is_some_and(|t| same(&t, state.token()));
    if (is_control || state.remote()) && !is_login && !ok {
        if !is_control
            && req.method() == Method::GET
            && !path.starts_with("/api")
            && !path.starts_with("/dicomweb")
        {
            return Redirect::to("/login").into_response();
        }
        tracing::info!(path, "refused a request without a valid token");
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "login required: present the node's access token",
        )
        .into_response();
    }
    next.run(req).await
}

pub(super) async fn login_page() -> Html<&'static str> {
    Html(
        r#"<!doctype html><html lang="en"><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Discless — log in</title><body style="font-family:system-ui;max-width:24rem;margin:4rem auto;padding:0 1rem">
<h1>Discless</h1><p>This node is reachable beyond this computer. Enter the access token that <code>discless serve</code> printed.</p>
<form method="post" action="/login"><label>Access token <input name="token" type="password" autocomplete="current-password" required style="width:100%"></label>
<p><button type="submit">Log in</button></p></form></body></html>"#,
    )
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

pub(super) async fn login(State(state): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    if !same(f.token.trim(), state.token()) {
        return ApiError::new(StatusCode::UNAUTHORIZED, "wrong access token").into_response();
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200",
        state.token()
    );
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// CORS for the configured origins (`*` allows any).
pub(super) fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::ACCEPT, header::CONTENT_TYPE, header::AUTHORIZATION])
        .expose_headers([header::CONTENT_TYPE, header::CONTENT_LENGTH])
}
