//! `discless serve`: the node's servers, until Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;

use zeroize::Zeroizing;

use super::{secret, CliError, Outcome};
use crate::home::Home;
use crate::http::{self, Announcement};
use crate::keystore::{self, KeystoreError};
use crate::store::{Store, StoreError};

fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Writes `serve.json` (mode 0600): how local CLIs reach this server.
fn announce(home: &Home, a: &Announcement) -> std::io::Result<()> {
    let path = Announcement::path(home);
    let tmp = path.with_extension("json.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(a).unwrap_or_default())?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub(super) fn run(
    home: &Home,
    addr: SocketAddr,
    cors: Vec<String>,
    p2p: crate::net::Config,
    dimse: Option<crate::dimse::Config>,
) -> Result<Outcome, CliError> {
    if !home.exists() {
        return Err(KeystoreError::Missing(home.root().to_path_buf()).into());
    }
    let pass = secret::passphrase(false)?;
    let keys = keystore::open(&home.keystore(), pass.as_bytes())?;
    let name = keys.name.clone();
    let store = match Store::open(home, keys) {
        Err(StoreError::Locked(p)) => {
            let who = std::fs::read(Announcement::path(home))
                .ok()
                .and_then(|b| serde_json::from_slice::<Announcement>(&b).ok())
                .map(|a| format!(" (pid {}, {})", a.pid, a.url))
                .unwrap_or_default();
            return Err(CliError::Remote(format!(
                "this home ({}) is already served{who}",
                p.display()
            )));
        }
        other => other?,
    };
    let token = Zeroizing::new(new_token());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)?;
    rt.block_on(async {
        let net = crate::net::start(store.clone(), p2p).await?;
        let handle = http::spawn(
            store.clone(),
            http::Config {
                addr,
                cors_origins: cors,
                net: Some(net.clone()),
            },
            token.to_string(),
        )
        .await?;
        let p2p_addrs = net.dialable_addrs().await.unwrap_or_default();
        // DICOM before the announcement, so that whoever sees serve.json can send.
        let ae_title = dimse.as_ref().map(|c| c.ae_title.clone());
        let dimse = match dimse {
            Some(config) => match crate::dimse::spawn(store.clone(), config).await {
                Ok(h) => Some(h),
                Err(e) => {
                    let _ = handle.shutdown().await;
                    return Err(e.into());
                }
            },
            None => None,
        };
        let local = if handle.addr.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), handle.addr.port())
        } else {
            handle.addr
        };
        let url = format!("http://{local}");
        announce(
            home,
            &Announcement {
                url: url.clone(),
                pid: std::process::id(),
                token: token.to_string(),
                dimse: dimse.as_ref().map(|d| d.addr.to_string()),
            },
        )
        .map_err(CliError::Output)?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "Discless node \"{name}\" is serving {}",
            home.root().display()
        );
        let _ = writeln!(out, "  web viewer  {url}/");
        let _ = writeln!(out, "  DICOMweb    {url}/dicomweb");
        let _ = writeln!(out, "  PeerId      {}", net.peer_id());
        for a in &p2p_addrs {
            let _ = writeln!(out, "  p2p         {a}");
        }
        if let (Some(d), Some(ae)) = (&dimse, &ae_title) {
            let _ = writeln!(out, "  DICOM       AE title {ae} on {}", d.addr);
        }
        if !handle.addr.ip().is_loopback() {
            let _ = writeln!(
                out,
                "  listening beyond loopback: log in with the access token {}",
                token.as_str()
            );
        }
        let _ = writeln!(out, "Press Ctrl-C to stop.");
        let _ = out.flush();
        drop(out);
        tracing::info!(addr = %handle.addr, "serving");
        shutdown_signal().await;
        tracing::info!("shutting down");
        if let Some(d) = dimse {
            d.shutdown().await;
        }
        let r = handle.shutdown().await;
        net.shutdown().await;
        let _ = std::fs::remove_file(Announcement::path(home));
        r?;
        Ok::<_, CliError>(())
    })?;
    store.flush()?;
    Ok(Outcome::Success)
}
