//! Streaming `multipart/related` bodies (RFC 2387) for WADO-RS.

use std::io::Write;

use axum::body::Body;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Bytes buffered before a chunk is handed to the HTTP body: large enough for few, cheap sends.
const CHUNK: usize = 256 * 1024;

/// A random boundary that cannot occur in the parts by accident.
pub(crate) fn boundary() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("discless-{}", hex::encode(b))
}

/// A `Write` that feeds an HTTP body from a blocking thread, with back-pressure: it waits when
/// the client reads slower than we decrypt, so memory stays at a few chunks.
pub(crate) struct BodyWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for BodyWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyWriter")
    }
}

impl BodyWriter {
    /// A writer and the body it feeds.
    pub(crate) fn new() -> (Self, Body) {
        let (tx, rx) = mpsc::channel(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        (
            Self {
                tx,
                buf: Vec::with_capacity(CHUNK),
            },
            Body::from_stream(stream),
        )
    }

    /// Ends the body with an error (the client sees a broken transfer, not a short success).
    pub(crate) fn fail(self, e: std::io::Error) {
        let _ = self.tx.blocking_send(Err(e));
    }
}

impl BodyWriter {
    /// Sends `bytes` as they are, after what is buffered: a whole part without copying it.
    pub(crate) fn send(&mut self, bytes: Bytes) -> std::io::Result<()> {
        self.flush()?;
        self.tx.blocking_send(Ok(bytes)).map_err(|_| client_gone())
    }
}

fn client_gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away")
}

impl Write for BodyWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| client_gone())
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Writes one part's headers.
pub(crate) fn part_header(
    w: &mut impl Write,
    boundary: &str,
    content_type: &str,
    location: Option<&str>,
) -> std::io::Result<()> {
    write!(w, "--{boundary}\r\nContent-Type: {content_type}\r\n")?;
    if let Some(l) = location {
        write!(w, "Content-Location: {l}\r\n")?;
    }
    write!(w, "\r\n")
}

/// Ends a part and, when `last`, the whole body.
pub(crate) fn part_end(w: &mut impl Write, boundary: &str, last: bool) -> std::io::Result<()> {
    write!(w, "\r\n")?;
    if last {
        write!(w, "--{boundary}--\r\n")?;
    }
    Ok(())
}
