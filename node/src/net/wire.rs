//! Framing on our libp2p streams: a 4-byte big-endian length, then JSON.
//!
//! A relayed circuit that is cut looks like a clean end of stream to the reader, so every
//! message is length-prefixed and a short read is an error, never "done".

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{de::DeserializeOwned, Serialize};

/// Control messages are small; a manifest of a 3000-instance study is a few MB.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer sent a {0}-byte message (limit {MAX_MESSAGE})")]
    TooLarge(usize),
    #[error("peer sent a malformed message: {0}")]
    Malformed(String),
}

pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), WireError> {
    let body = serde_json::to_vec(msg).map_err(|e| WireError::Malformed(e.to_string()))?;
    if body.len() > MAX_MESSAGE {
        return Err(WireError::TooLarge(body.len()));
    }
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<T, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| WireError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let mut buf = Vec::new();
        write(&mut buf, &vec!["a", "b"]).await.unwrap();
        let got: Vec<String> = read(&mut buf.as_slice()).await.unwrap();
        assert_eq!(got, ["a", "b"]);
        // Truncated: an error, not an empty message.
        assert!(read::<_, Vec<String>>(&mut &buf[..buf.len() - 1])
            .await
            .is_err());
        let huge = ((MAX_MESSAGE + 1) as u32).to_be_bytes();
        assert!(matches!(
            read::<_, Vec<String>>(&mut &huge[..]).await,
            Err(WireError::TooLarge(_))
        ));
        let garbage = [0, 0, 0, 2, b'{', b'x'];
        assert!(matches!(
            read::<_, Vec<String>>(&mut &garbage[..]).await,
            Err(WireError::Malformed(_))
        ));
    }
}
