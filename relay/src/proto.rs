//! The mailbox protocol, `/discless/mailbox/1`: one request per stream.
//!
//! Messages are a 4-byte big-endian length and JSON. After [`Request::Deposit`] the sender
//! writes each listed blob's bytes in order; after [`Request::Blobs`] is answered with
//! [`Response::Ok`], each requested blob follows as an 8-byte big-endian length and its bytes,
//! or [`MISSING`]. A cut circuit looks like a clean end of stream, so lengths are always checked.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const MAILBOX: StreamProtocol = StreamProtocol::new("/discless/mailbox/1");

/// Length marker of a blob the relay does not hold.
pub const MISSING: u64 = u64::MAX;

/// Offers are small; a 3000-instance manifest is a few MB.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A blob in a deposit: its content address and sealed length.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobMeta {
    pub id: String,
    pub len: u64,
}

/// An item waiting in a mailbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ItemMeta {
    pub item: String,
    pub sender: String,
    pub recipient: String,
    pub deposited_unix: u64,
    pub expires_unix: u64,
    pub bytes: u64,
    pub blobs: Vec<BlobMeta>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// Store an offer and its blobs for an offline recipient. The relay answers at once: `Ok`
    /// (then the blobs' bytes follow, and it answers again with `Deposited` or `Refused`) or
    /// `Refused` (over quota, not admitted…), so a refused sender never streams a study into a
    /// stream nobody reads.
    Deposit {
        recipient: String,
        /// Chosen by the sender; depositing the same item again replaces it.
        item: String,
        /// The signed offer, opaque to the relay.
        offer: String,
        blobs: Vec<BlobMeta>,
    },
    /// The items waiting for the requesting peer.
    List,
    Offer {
        item: String,
    },
    Blobs {
        item: String,
        ids: Vec<String>,
    },
    /// The recipient holds the item: the relay deletes it.
    Ack {
        item: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Refused { reason: String },
    Items { items: Vec<ItemMeta> },
    Offer { offer: String },
    Deposited { item: String, expires_unix: u64 },
}

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

/// A BLAKE3 hex digest, as blob ids are; anything else never becomes a file name.
pub fn is_blob_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Item names are chosen by senders and become directory names: keep them tame.
pub fn is_item_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !s.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_bad_frames_fail() {
        let mut buf = Vec::new();
        write(&mut buf, &Request::Ack { item: "x".into() })
            .await
            .unwrap();
        let r: Request = read(&mut buf.as_slice()).await.unwrap();
        assert!(matches!(r, Request::Ack { item } if item == "x"));
        assert!(read::<_, Request>(&mut &buf[..3]).await.is_err());
        let huge = ((MAX_MESSAGE + 1) as u32).to_be_bytes();
        assert!(matches!(
            read::<_, Request>(&mut &huge[..]).await,
            Err(WireError::TooLarge(_))
        ));
    }

    #[test]
    fn names_that_could_escape_a_directory_are_refused() {
        assert!(is_item_name("2.25.1-12D3KooW"));
        for bad in ["", "..", ".hidden", "a/b", "a\\b", &"x".repeat(200)] {
            assert!(!is_item_name(bad), "{bad}");
        }
        assert!(is_blob_id(&"ab".repeat(32)));
        assert!(!is_blob_id("../../etc/passwd"));
    }
}
