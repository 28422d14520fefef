//! Running a store command inside the `discless serve` that holds the store.
//!
//! sled lets one process open a home; while `serve` runs, the CLI sends its own arguments and
//! working directory to the server's control API (authenticated by the token in
//! `<home>/serve.json`, readable only by the home's owner) and prints what comes back, with the
//! same output and exit code as a local run. The passphrase was already checked locally against
//! the keystore before we get here.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::{CliError, Outcome};
use crate::home::Home;
use crate::http::Announcement;
use crate::store::StoreError;

/// What the CLI sends.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunRequest {
    pub args: Vec<String>,
    pub cwd: std::path::PathBuf,
}

/// One line of the server's streamed answer: output as it is written, then how it ended.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Frame {
    Out { out: String },
    End { code: u8, error: Option<String> },
}

pub(super) fn run(home: &Home, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let locked = || CliError::Store(StoreError::Locked(home.root().to_path_buf()));
    let a: Announcement = std::fs::read(Announcement::path(home))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(locked)?;
    let req = RunRequest {
        args: std::env::args().skip(1).collect(),
        cwd: std::env::current_dir().map_err(CliError::Output)?,
    };
    let gone = |e: &dyn std::fmt::Display| {
        CliError::Remote(format!(
            "{e} (is `discless serve` still running? pid {})",
            a.pid
        ))
    };
    let resp = ureq::post(format!("{}/api/control/run", a.url))
        .header("Authorization", format!("Bearer {}", a.token))
        .send_json(&req)
        .map_err(|e| gone(&e))?;
    let reader = std::io::BufReader::new(resp.into_body().into_reader());
    for line in std::io::BufRead::lines(reader) {
        let line = line.map_err(|e| gone(&e))?;
        match serde_json::from_str::<Frame>(&line) {
            Ok(Frame::Out { out: text }) => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            Ok(Frame::End { code, error }) => {
                return match (code, error) {
                    (0, _) => Ok(Outcome::Success),
                    (1, _) => Ok(Outcome::Partial),
                    (_, e) => Err(CliError::Failed(
                        e.unwrap_or_else(|| "the command failed".into()),
                    )),
                }
            }
            Err(e) => return Err(CliError::Remote(format!("unexpected answer: {e}"))),
        }
    }
    Err(gone(
        &"the server closed the connection before the command finished",
    ))
}
