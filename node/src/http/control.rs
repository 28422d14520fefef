//! `/api/control/run`: a CLI command run inside this process, because it holds the store (see
//! `cli::remote`). The command's output streams back as it is written, as JSON lines
//! (`{"out": "..."}`, then one `{"code": n, "error": ...}`), so long commands (`pair new
//! --wait`, `share --wait`) show their QR code and progress while they run.

use std::io::Write;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::AppState;
use crate::cli::remote::{Frame, RunRequest};

/// Sends whole lines of output as frames; a closed channel (the CLI went away) is a broken
/// pipe, which stops the command at its next write.
struct LineSink {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl LineSink {
    fn send(&mut self, f: &Frame) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(f).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.tx
            .blocking_send(Bytes::from(line))
            .map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }

    fn emit(&mut self, upto: usize) -> std::io::Result<()> {
        let chunk: Vec<u8> = self.buf.drain(..upto).collect();
        self.send(&Frame::Out {
            out: String::from_utf8_lossy(&chunk).into_owned(),
        })
    }
}

impl Write for LineSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if let Some(i) = self.buf.iter().rposition(|&c| c == b'\n') {
            self.emit(i + 1)?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let n = self.buf.len();
            self.emit(n)?;
        }
        Ok(())
    }
}

pub(super) async fn run(State(state): State<AppState>, Json(req): Json<RunRequest>) -> Response {
    use clap::Parser;
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let store = state.store.clone();
    let net = state.net().cloned();
    tokio::task::spawn_blocking(move || {
        let mut sink = LineSink {
            tx,
            buf: Vec::new(),
        };
        let argv = std::iter::once("discless".to_owned()).chain(req.args);
        let end = match crate::cli::Cli::try_parse_from(argv) {
            Err(e) => Frame::End {
                code: 2,
                error: Some(e.to_string()),
            },
            Ok(cli) => {
                let command = crate::cli::absolutize(cli.command, &req.cwd);
                let r = crate::cli::execute(&store, net.as_ref(), command, &mut sink, false);
                let _ = sink.flush();
                match r {
                    Ok(o) => Frame::End {
                        code: o.code(),
                        error: None,
                    },
                    Err(e) => Frame::End {
                        code: 2,
                        error: Some(e.to_string()),
                    },
                }
            }
        };
        let _ = sink.send(&end);
    });
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(Ok::<_, std::convert::Infallible>))
    }));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}
