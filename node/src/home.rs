//! Where a node keeps its files, and the environment variables that steer it.
//!
//! ```text
//! <home>/keystore.json   identity, agreement key, storage key, sealed under the passphrase
//! <home>/index/          sled: every record sealed under the storage key
//! <home>/blobs/ab/<id>   sealed blobs, named by BLAKE3 of their bytes
//! <home>/tmp/            blobs being written; emptied when the store opens
//! ```

use std::path::{Path, PathBuf};

/// Overrides the home directory (below `--home`, above the platform data dir).
pub const ENV_HOME: &str = "DISCLESS_HOME";
/// The passphrase, for scripts and services; otherwise it is asked on the terminal.
pub const ENV_PASSPHRASE: &str = "DISCLESS_PASSPHRASE";
/// Log filter (tracing `EnvFilter` syntax), e.g. `discless=debug`.
pub const ENV_LOG: &str = "DISCLESS_LOG";

/// The files of one node.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `--home`, else `DISCLESS_HOME`, else the platform data dir (`~/.local/share/discless`).
    pub fn resolve(flag: Option<&Path>) -> Option<Self> {
        if let Some(p) = flag {
            return Some(Self::new(p));
        }
        if let Some(p) = std::env::var_os(ENV_HOME).filter(|v| !v.is_empty()) {
            return Some(Self::new(p));
        }
        dirs::data_dir().map(|d| Self::new(d.join("discless")))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn keystore(&self) -> PathBuf {
        self.root.join("keystore.json")
    }
    pub fn index(&self) -> PathBuf {
        self.root.join("index")
    }
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn exists(&self) -> bool {
        self.keystore().exists()
    }
}
