//! The keystore: a node's long-term secrets, sealed under a key derived from its passphrase.
//!
//! `keystore.json` holds a public header (format version, Argon2id parameters and salt, the
//! PeerId) and one XChaCha20-Poly1305 ciphertext whose associated data is that header, so the
//! parameters cannot be weakened unnoticed. Inside: the Ed25519 identity in libp2p's protobuf
//! keypair encoding (the network layer uses it as is), the X25519 agreement key, the random local
//! storage key that seals every index record, and the node's name and role (a patient's device
//! name may be PHI, so it is not in the header).
//!
//! A wrong passphrase fails authentication and is reported as such; the file is never rewritten
//! on open, so a wrong passphrase cannot damage anything. The file is written once, at `init`,
//! through a temporary file and a rename, with mode 0600.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{open_record, seal_record, SecretKey};

/// Argon2id cost: 64 MiB and 3 passes (OWASP's second recommended setting), ~0.2 s here, paid
/// once per command.
const KDF_M_COST_KIB: u32 = 64 * 1024;
const KDF_T_COST: u32 = 3;
const KDF_P_COST: u32 = 1;
const FORMAT_VERSION: u32 = 1;

/// A node's role, shown to peers when pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Clinic,
    Patient,
    Doctor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clinic => "clinic",
            Role::Patient => "patient",
            Role::Doctor => "doctor",
        }
    }

    pub fn from_u8(n: u8) -> Option<Self> {
        Some(match n {
            0 => Role::Clinic,
            1 => Role::Patient,
            2 => Role::Doctor,
            _ => return None,
        })
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Role::Clinic => 0,
            Role::Patient => 1,
            Role::Doctor => 2,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
    kdf: KdfParams,
    peer_id: String,
}

#[derive(Serialize, Deserialize, Clone)]
struct KdfParams {
    algorithm: String,
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
    salt: String,
}

#[derive(Serialize, Deserialize)]
struct File {
    #[serde(flatten)]
    header: Header,
    nonce_and_ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct Inner {
    identity: String,
    agreement: String,
    storage: String,
    name: String,
    role: Role,
    created_unix: u64,
}

/// The opened secrets of a node.
pub struct Keys {
    pub identity: libp2p_identity::Keypair,
    pub agreement: x25519_dalek::StaticSecret,
    pub storage: SecretKey,
    pub name: String,
    pub role: Role,
    pub created_unix: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("peer_id", &self.peer_id())
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Keys {
    pub fn peer_id(&self) -> libp2p_identity::PeerId {
        self.identity.public().to_peer_id()
    }

    /// Fresh keys without a keystore file, for unit tests of protocols.
    #[doc(hidden)]
    pub fn generate_for_tests(name: &str, role: Role) -> Self {
        Self {
            identity: libp2p_identity::Keypair::generate_ed25519(),
            agreement: x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng),
            storage: SecretKey::generate(),
            name: name.to_owned(),
            role,
            created_unix: 0,
        }
    }
}

/// Creating or opening the keystore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    #[error("a node already exists at {0} (remove it first, or choose another --home)")]
    Exists(PathBuf),
    #[error("no node at {0}: run `discless init` first")]
    Missing(PathBuf),
    #[error("wrong passphrase for {0}")]
    WrongPassphrase(PathBuf),
    #[error("keystore {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn derive(passphrase: &[u8], kdf: &KdfParams) -> Result<SecretKey, String> {
    let salt = B64.decode(&kdf.salt).map_err(|e| format!("salt: {e}"))?;
    if kdf.algorithm != "argon2id" {
        return Err(format!("unknown KDF {}", kdf.algorithm));
    }
    let params = argon2::Params::new(kdf.m_cost_kib, kdf.t_cost, kdf.p_cost, Some(32))
        .map_err(|e| format!("KDF parameters: {e}"))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(passphrase, &salt, out.as_mut())
        .map_err(|e| format!("KDF: {e}"))?;
    Ok(SecretKey::from_bytes(*out))
}

fn header_aad(h: &Header) -> Vec<u8> {
    serde_json::to_vec(h).unwrap_or_default()
}

/// Creates a new keystore at `path`; refuses to overwrite one.
pub fn create(
    path: &Path,
    passphrase: &[u8],
    name: &str,
    role: Role,
) -> Result<Keys, KeystoreError> {
    if path.exists() {
        return Err(KeystoreError::Exists(
            path.parent().unwrap_or(path).to_path_buf(),
        ));
    }
    let io = |source| KeystoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let damaged = |reason: String| KeystoreError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let identity = libp2p_identity::Keypair::generate_ed25519();
    let agreement = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    let storage = SecretKey::generate();
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let header = Header {
        version: FORMAT_VERSION,
        kdf: KdfParams {
            algorithm: "argon2id".into(),
            m_cost_kib: KDF_M_COST_KIB,
            t_cost: KDF_T_COST,
            p_cost: KDF_P_COST,
            salt: B64.encode(salt),
        },
        peer_id: identity.public().to_peer_id().to_string(),
    };
    let kek = derive(passphrase, &header.kdf).map_err(damaged)?;
    let id_bytes = Zeroizing::new(
        identity
            .to_protobuf_encoding()
            .map_err(|e| damaged(format!("identity encoding: {e}")))?,
    );
    let inner = Inner {
        identity: B64.encode(&*id_bytes),
        agreement: B64.encode(agreement.to_bytes()),
        storage: B64.encode(storage.as_bytes()),
        name: name.to_owned(),
        role,
        created_unix,
    };
    let plain = Zeroizing::new(serde_json::to_vec(&inner).map_err(|e| damaged(e.to_string()))?);
    let sealed =
        seal_record(&kek, &header_aad(&header), &plain).map_err(|e| damaged(e.to_string()))?;
    let file = File {
        header,
        nonce_and_ciphertext: B64.encode(sealed),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(".keystore.json.tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        let body = serde_json::to_vec_pretty(&file).map_err(|e| damaged(e.to_string()))?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)?;
    Ok(Keys {
        identity,
        agreement,
        storage,
        name: inner.name,
        role,
        created_unix,
    })
}

/// Reads the public PeerId without the passphrase.
pub fn peer_id(path: &Path) -> Result<String, KeystoreError> {
    Ok(read_file(path)?.header.peer_id)
}

fn read_file(path: &Path) -> Result<File, KeystoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeystoreError::Missing(
                path.parent().unwrap_or(path).to_path_buf(),
            ))
        }
        Err(source) => {
            return Err(KeystoreError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| KeystoreError::Damaged {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Opens the keystore with `passphrase`.
pub fn open(path: &Path, passphrase: &[u8]) -> Result<Keys, KeystoreError> {
    let file = read_file(path)?;
    let damaged = |reason: String| KeystoreError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    if file.header.version != FORMAT_VERSION {
        return Err(damaged(format!(
            "unsupported format version {}",
            file.header.version
        )));
    }
    let kek = derive(passphrase, &file.header.kdf).map_err(damaged)?;
    let sealed = B64
        .decode(&file.nonce_and_ciphertext)
        .map_err(|e| damaged(e.to_string()))?;
    let plain = Zeroizing::new(
        open_record(&kek, &header_aad(&file.header), &sealed).map_err(|_| {
            KeystoreError::WrongPassphrase(path.parent().unwrap_or(path).to_path_buf())
        })?,
    );
    let inner: Inner = serde_json::from_slice(&plain).map_err(|e| damaged(e.to_string()))?;
    let id_bytes = Zeroizing::new(
        B64.decode(&inner.identity)
            .map_err(|e| damaged(e.to_string()))?,
    );
    let identity = libp2p_identity::Keypair::from_protobuf_encoding(&id_bytes)
        .map_err(|e| damaged(format!("identity: {e}")))?;
    let key32 = |s: &str, what: &str| -> Result<[u8; 32], KeystoreError> {
        let v = Zeroizing::new(B64.decode(s).map_err(|e| damaged(format!("{what}: {e}")))?);
        <[u8; 32]>::try_from(v.as_slice()).map_err(|_| damaged(format!("{what}: wrong length")))
    };
    let agreement = x25519_dalek::StaticSecret::from(key32(&inner.agreement, "agreement key")?);
    let storage = SecretKey::from_bytes(key32(&inner.storage, "storage key")?);
    if identity.public().to_peer_id().to_string() != file.header.peer_id {
        return Err(damaged(
            "identity does not match the PeerId in the header".into(),
        ));
    }
    Ok(Keys {
        identity,
        agreement,
        storage,
        name: inner.name,
        role: inner.role,
        created_unix: inner.created_unix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_open_gives_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keystore.json");
        let k = create(&p, b"correct horse", "Dr Lee", Role::Doctor).unwrap();
        let o = open(&p, b"correct horse").unwrap();
        assert_eq!(k.peer_id(), o.peer_id());
        assert_eq!(k.storage, o.storage);
        assert_eq!(k.agreement.to_bytes(), o.agreement.to_bytes());
        assert_eq!(o.name, "Dr Lee");
        assert_eq!(o.role, Role::Doctor);
        assert_eq!(peer_id(&p).unwrap(), k.peer_id().to_string());
    }

    #[test]
    fn wrong_passphrase_is_refused_and_file_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keystore.json");
        create(&p, b"right", "n", Role::Patient).unwrap();
        let before = fs::read(&p).unwrap();
        assert!(matches!(
            open(&p, b"wrong"),
            Err(KeystoreError::WrongPassphrase(_))
        ));
        assert_eq!(before, fs::read(&p).unwrap());
        assert!(matches!(
            create(&p, b"x", "n", Role::Patient),
            Err(KeystoreError::Exists(_))
        ));
    }

    #[test]
    fn weakened_kdf_parameters_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keystore.json");
        create(&p, b"pw", "n", Role::Clinic).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        v["kdf"]["t_cost"] = 1.into();
        fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(open(&p, b"pw").is_err());
    }
}
