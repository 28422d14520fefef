//! Sealed blobs: an instance's original bytes, chunked and sealed under the study key.
//!
//! Wire and disk format (all integers little endian):
//!
//! ```text
//! header  : "DLB1" | chunk_size u32 | chunk_count u32 | plaintext_len u64      (20 bytes)
//! chunk i : nonce (24) | XChaCha20-Poly1305(chunk i) | tag (16)       for i in 0..chunk_count
//! ```
//!
//! Every chunk but the last holds exactly `chunk_size` plaintext bytes; an empty instance still
//! has one (empty) chunk, so a blob is never just a header. The associated data of chunk `i` is
//! `"discless/blob/v1" | header | len(study) u16 | study | len(sop) u16 | sop | i u32`: binding the
//! header (and so the chunk count and length) makes truncation, reordering and cross-instance
//! swapping fail authentication. The blob id is BLAKE3 over the whole file, so a relay or a peer
//! without the key can still check that what it carries is what was asked for.
//!
//! Sealing and opening stream: memory is one chunk, whatever the instance size.

use std::io::{self, Read, Write};

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::Tag;

use super::{SecretKey, NONCE_LEN, TAG_LEN};

/// Plaintext bytes per chunk: large enough that per-chunk overhead (40 bytes, one AEAD call) is
/// negligible, small enough that a corrupted chunk costs little to re-fetch.
pub const CHUNK_SIZE: u32 = 1 << 20;
const MAGIC: &[u8; 4] = b"DLB1";
const HEADER_LEN: usize = 20;
const AAD_DOMAIN: &[u8] = b"discless/blob/v1";

/// Which instance a blob belongs to: bound into every chunk.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub study_uid: &'a str,
    pub sop_instance_uid: &'a str,
}

/// What sealing produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// BLAKE3 of the sealed bytes (the content address).
    pub blob_id: blake3::Hash,
    /// BLAKE3 of the plaintext, checked again on every export.
    pub plaintext_hash: blake3::Hash,
    pub plaintext_len: u64,
    pub sealed_len: u64,
}

/// Sealing or opening a blob failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("not a Discless blob: {0}")]
    Header(&'static str),
    #[error("chunk {index} of {count} failed authentication (altered or corrupted bytes)")]
    Chunk { index: u32, count: u32 },
    #[error("blob is truncated in chunk {index} of {count}")]
    Truncated { index: u32, count: u32 },
    #[error("blob has bytes after its last chunk")]
    TrailingBytes,
    #[error("the source changed while sealing: expected {expected} bytes, read {actual}")]
    LengthMismatch { expected: u64, actual: u64 },
}

/// Number of chunks for a plaintext of `len` bytes.
pub fn chunk_count(len: u64) -> u32 {
    let n = len.div_ceil(u64::from(CHUNK_SIZE)).max(1);
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Size of the sealed blob for a plaintext of `len` bytes.
pub fn sealed_len(len: u64) -> u64 {
    HEADER_LEN as u64 + u64::from(chunk_count(len)) * (NONCE_LEN + TAG_LEN) as u64 + len
}

fn header(chunk_count: u32, plaintext_len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&CHUNK_SIZE.to_le_bytes());
    h[8..12].copy_from_slice(&chunk_count.to_le_bytes());
    h[12..20].copy_from_slice(&plaintext_len.to_le_bytes());
    h
}

fn aad(header: &[u8; HEADER_LEN], ctx: Context<'_>, index: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(
        AAD_DOMAIN.len() + HEADER_LEN + 8 + ctx.study_uid.len() + ctx.sop_instance_uid.len(),
    );
    a.extend_from_slice(AAD_DOMAIN);
    a.extend_from_slice(header);
    for s in [ctx.study_uid, ctx.sop_instance_uid] {
        // UIDs are at most 64 bytes by the standard; longer ones are still bound, just truncated
        // in the length prefix, which stays unambiguous because the total is bound too.
        a.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_le_bytes());
        a.extend_from_slice(s.as_bytes());
    }
    a.extend_from_slice(&index.to_le_bytes());
    a
}

/// Reads exactly `buf.len()` bytes unless the source ends first; returns how many were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Seals `plaintext_len` bytes from `src` into `dst`, streaming one chunk at a time.
pub fn seal(
    key: &SecretKey,
    ctx: Context<'_>,
    plaintext_len: u64,
    mut src: impl Read,
    mut dst: impl Write,
) -> Result<Sealed, BlobError> {
    let count = chunk_count(plaintext_len);
    let hdr = header(count, plaintext_len);
    let cipher = key.cipher();
    let mut blob_hash = blake3::Hasher::new();
    let mut pt_hash = blake3::Hasher::new();
    dst.write_all(&hdr)?;
    blob_hash.update(&hdr);
    let mut buf = Vec::with_capacity(CHUNK_SIZE as usize + TAG_LEN);
    let mut total = 0u64;
    for index in 0..count {
        let want = (plaintext_len - total).min(u64::from(CHUNK_SIZE)) as usize;
        buf.clear();
        // `read_to_end` fills spare capacity without zeroing it first (a 1 MiB memset per chunk
        // showed in profiles).
        let got = (&mut src).take(want as u64).read_to_end(&mut buf)?;
        total += got as u64;
        if got != want {
            return Err(BlobError::LengthMismatch {
                expected: plaintext_len,
                actual: total,
            });
        }
        pt_hash.update(&buf);
        let nonce = super::random_nonce();
        cipher
            .encrypt_in_place(&nonce, &aad(&hdr, ctx, index), &mut buf)
            .map_err(|_| BlobError::Header("chunk too large to seal"))?;
        dst.write_all(&nonce)?;
        dst.write_all(&buf)?;
        blob_hash.update(&nonce);
        blob_hash.update(&buf);
    }
    // The source must end where its length said: a file that grew while we sealed it would
    // otherwise be stored silently cut.
    let mut probe = [0u8; 1];
    if read_full(&mut src, &mut probe)? != 0 {
        return Err(BlobError::LengthMismatch {
            expected: plaintext_len,
            actual: total + 1,
        });
    }
    Ok(Sealed {
        blob_id: blob_hash.finalize(),
        plaintext_hash: pt_hash.finalize(),
        plaintext_len,
        sealed_len: sealed_len(plaintext_len),
    })
}

/// Reads and checks a blob header, returning `(chunk_count, plaintext_len)`.
fn read_header(src: &mut impl Read) -> Result<([u8; HEADER_LEN], u32, u64), BlobError> {
    let mut hdr = [0u8; HEADER_LEN];
    if read_full(src, &mut hdr)? != HEADER_LEN {
        return Err(BlobError::Header("shorter than its header"));
    }
    if &hdr[..4] != MAGIC {
        return Err(BlobError::Header("bad magic"));
    }
    let chunk_size = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let count = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    let len = u64::from_le_bytes([
        hdr[12], hdr[13], hdr[14], hdr[15], hdr[16], hdr[17], hdr[18], hdr[19],
    ]);
    if chunk_size != CHUNK_SIZE {
        return Err(BlobError::Header("unsupported chunk size"));
    }
    if count != chunk_count(len) {
        return Err(BlobError::Header("chunk count does not match length"));
    }
    Ok((hdr, count, len))
}

/// Opens a blob from `src`, writing the plaintext to `dst` chunk by chunk.
///
/// Bytes reach `dst` only after their chunk authenticated, but earlier chunks are already
/// written when a later one fails: callers write to a temporary file and discard it on error.
pub fn open(
    key: &SecretKey,
    ctx: Context<'_>,
    mut src: impl Read,
    mut dst: impl Write,
) -> Result<Sealed, BlobError> {
    let (hdr, count, len) = read_header(&mut src)?;
    let cipher = key.cipher();
    let mut blob_hash = blake3::Hasher::new();
    let mut pt_hash = blake3::Hasher::new();
    blob_hash.update(&hdr);
    let mut nonce = [0u8; NONCE_LEN];
    let mut buf = Vec::with_capacity(CHUNK_SIZE as usize + TAG_LEN);
    let mut remaining = len;
    for index in 0..count {
        let pt = remaining.min(u64::from(CHUNK_SIZE)) as usize;
        if read_full(&mut src, &mut nonce)? != NONCE_LEN {
            return Err(BlobError::Truncated { index, count });
        }
        buf.clear();
        buf.resize(pt + TAG_LEN, 0);
        if read_full(&mut src, &mut buf)? != buf.len() {
            return Err(BlobError::Truncated { index, count });
        }
        blob_hash.update(&nonce);
        blob_hash.update(&buf);
        cipher
            .decrypt_in_place(&nonce.into(), &aad(&hdr, ctx, index), &mut buf)
            .map_err(|_| BlobError::Chunk { index, count })?;
        pt_hash.update(&buf);
        dst.write_all(&buf)?;
        remaining -= pt as u64;
    }
    let mut probe = [0u8; 1];
    if read_full(&mut src, &mut probe)? != 0 {
        return Err(BlobError::TrailingBytes);
    }
    Ok(Sealed {
        blob_id: blob_hash.finalize(),
        plaintext_hash: pt_hash.finalize(),
        plaintext_len: len,
        sealed_len: sealed_len(len),
    })
}

/// A blob's plaintext decrypted where its ciphertext was: the sealed bytes' allocation, from
/// the first chunk's plaintext on (the header and first nonce stay in front, so a one-chunk
/// blob, any instance up to 1 MiB, is never moved).
pub struct InPlace {
    buf: Vec<u8>,
    start: usize,
}

/// The length only: a plaintext has no business in a log line.
impl std::fmt::Debug for InPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InPlace({} bytes)", self.len())
    }
}

impl InPlace {
    /// The plaintext as a `Vec` of its own length (moved to the front).
    pub fn into_vec(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }

    /// The allocation and where the plaintext starts in it, for a caller that can take an
    /// offset without moving the bytes (`bytes::Bytes::slice`).
    pub fn into_parts(self) -> (Vec<u8>, usize) {
        (self.buf, self.start)
    }
}

impl From<Vec<u8>> for InPlace {
    fn from(buf: Vec<u8>) -> Self {
        Self { buf, start: 0 }
    }
}

impl std::ops::Deref for InPlace {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl AsRef<[u8]> for InPlace {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl zeroize::Zeroize for InPlace {
    fn zeroize(&mut self) {
        self.buf.zeroize();
        self.start = 0;
    }
}

/// [`open`] for a whole sealed blob already in memory, decrypted in place: the plaintext and
/// its BLAKE3 hash. No copies through a reader's and a chunk's buffer, for the callers that
/// want the whole instance in memory anyway (rendering a frame: this halved the time to get a
/// 512 KiB CT slice's plaintext).
///
/// It does not hash the sealed bytes for the blob id: the caller that compares the plaintext
/// hash with the one recorded at import knows it has exactly those bytes, as every chunk
/// authenticated under the study key with the header and the instance bound in. The blob id
/// is for what is stored or passed on ([`open`] gives it), not for what is read.
pub fn open_in_memory(
    key: &SecretKey,
    ctx: Context<'_>,
    mut sealed: Vec<u8>,
) -> Result<(InPlace, blake3::Hash), BlobError> {
    let (hdr, count, len) = read_header(&mut sealed.as_slice())?;
    let cipher = key.cipher();
    let mut pt_hash = blake3::Hasher::new();
    let start = HEADER_LEN + NONCE_LEN;
    let (mut read, mut written) = (HEADER_LEN, start);
    let mut remaining = len;
    for index in 0..count {
        let pt = remaining.min(u64::from(CHUNK_SIZE)) as usize;
        let chunk = sealed
            .get_mut(read..read + NONCE_LEN + pt + TAG_LEN)
            .ok_or(BlobError::Truncated { index, count })?;
        let (nonce, rest) = chunk.split_at_mut(NONCE_LEN);
        let (body, tag) = rest.split_at_mut(pt);
        let nonce = super::nonce_of(nonce).ok_or(BlobError::Truncated { index, count })?;
        let tag = <&Tag>::try_from(&*tag).map_err(|_| BlobError::Truncated { index, count })?;
        cipher
            .decrypt_inout_detached(nonce, &aad(&hdr, ctx, index), body.into(), tag)
            .map_err(|_| BlobError::Chunk { index, count })?;
        pt_hash.update(body);
        if index > 0 {
            sealed.copy_within(read + NONCE_LEN..read + NONCE_LEN + pt, written);
        }
        read += NONCE_LEN + pt + TAG_LEN;
        written += pt;
        remaining -= pt as u64;
    }
    if read != sealed.len() {
        return Err(BlobError::TrailingBytes);
    }
    sealed.truncate(written);
    Ok((InPlace { buf: sealed, start }, pt_hash.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: Context<'static> = Context {
        study_uid: "1.2.3",
        sop_instance_uid: "1.2.3.4",
    };

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// The edges of the chunking: iroh-blobs' "interesting sizes" idea.
    const SIZES: &[usize] = &[
        0,
        1,
        CHUNK_SIZE as usize - 1,
        CHUNK_SIZE as usize,
        CHUNK_SIZE as usize + 1,
        3 * CHUNK_SIZE as usize + 17,
    ];

    /// Opens with both entry points, which must agree; their result.
    fn open_both(
        k: &SecretKey,
        ctx: Context<'_>,
        sealed: &[u8],
    ) -> Result<(Vec<u8>, Sealed), BlobError> {
        let mut out = Vec::new();
        let streamed = open(k, ctx, sealed, &mut out).map(|s| (out, s));
        let in_memory = open_in_memory(k, ctx, sealed.to_vec());
        match (&streamed, &in_memory) {
            (Ok((plaintext, opened)), Ok((in_place, hash))) => {
                assert_eq!(plaintext.as_slice(), &in_place[..]);
                assert_eq!(opened.plaintext_hash, *hash);
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("open and open_in_memory disagree: {streamed:?} / {in_memory:?}"),
        }
        streamed
    }

    #[test]
    fn round_trips_at_interesting_sizes() {
        let k = SecretKey::generate();
        for &n in SIZES {
            let pt = data(n);
            let mut sealed = Vec::new();
            let s = seal(&k, CTX, n as u64, &pt[..], &mut sealed).unwrap();
            assert_eq!(sealed.len() as u64, s.sealed_len, "size {n}");
            assert_eq!(s.blob_id, blake3::hash(&sealed));
            assert_eq!(s.plaintext_hash, blake3::hash(&pt));
            let (out, o) = open_both(&k, CTX, &sealed).unwrap();
            assert_eq!(out, pt, "size {n}");
            assert_eq!(o, s);
            let (in_place, _) = open_in_memory(&k, CTX, sealed.clone()).unwrap();
            assert_eq!(in_place.into_vec(), pt, "size {n}");
            let (buf, start) = open_in_memory(&k, CTX, sealed).unwrap().0.into_parts();
            assert_eq!(buf[start..], pt[..], "size {n}");
        }
    }

    #[test]
    fn every_flipped_byte_region_is_detected() {
        let k = SecretKey::generate();
        let pt = data(2 * CHUNK_SIZE as usize + 5);
        let mut sealed = Vec::new();
        seal(&k, CTX, pt.len() as u64, &pt[..], &mut sealed).unwrap();
        for pos in [
            0,
            9,
            15,
            20,
            50,
            CHUNK_SIZE as usize + 100,
            sealed.len() - 1,
        ] {
            let mut bad = sealed.clone();
            bad[pos] ^= 0x40;
            assert!(open_both(&k, CTX, &bad).is_err(), "pos {pos}");
        }
    }

    #[test]
    fn truncation_swap_and_wrong_context_fail() {
        let k = SecretKey::generate();
        let pt = data(2 * CHUNK_SIZE as usize);
        let mut sealed = Vec::new();
        seal(&k, CTX, pt.len() as u64, &pt[..], &mut sealed).unwrap();
        let cut = &sealed[..sealed.len() - 10];
        assert!(matches!(
            open_both(&k, CTX, cut),
            Err(BlobError::Truncated { index: 1, count: 2 })
        ));
        let other = Context {
            study_uid: "1.2.3",
            sop_instance_uid: "9.9",
        };
        assert!(matches!(
            open_both(&k, other, &sealed),
            Err(BlobError::Chunk { index: 0, .. })
        ));
        // Swap the two chunks: each fails on its index.
        let c = NONCE_LEN + CHUNK_SIZE as usize + TAG_LEN;
        let mut swapped = sealed[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&sealed[HEADER_LEN + c..]);
        swapped.extend_from_slice(&sealed[HEADER_LEN..HEADER_LEN + c]);
        assert!(open_both(&k, CTX, &swapped).is_err());
        let mut extra = sealed.clone();
        extra.push(0);
        assert!(matches!(
            open_both(&k, CTX, &extra),
            Err(BlobError::TrailingBytes)
        ));
    }

    #[test]
    fn a_source_longer_or_shorter_than_declared_is_refused() {
        let k = SecretKey::generate();
        let pt = data(100);
        assert!(matches!(
            seal(&k, CTX, 99, &pt[..], std::io::sink()),
            Err(BlobError::LengthMismatch { .. })
        ));
        assert!(matches!(
            seal(&k, CTX, 101, &pt[..], std::io::sink()),
            Err(BlobError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let k = SecretKey::generate();
        for n in [0usize, 3, 20, 21, 100, 5000] {
            let junk: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            assert!(open_both(&k, CTX, &junk).is_err());
        }
        let mut h = header(u32::MAX, u64::MAX).to_vec();
        h.extend_from_slice(&[0; 64]);
        assert!(open_both(&k, CTX, &h).is_err());
    }
}
