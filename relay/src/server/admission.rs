//! Who may use the relay: PeerIds given on the command line or listed in a file (one per line,
//! `#` comments), re-read while the relay runs so a clinic can add a node without a restart.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use libp2p::PeerId;

use super::RelayError;

#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fixed: HashSet<PeerId>,
    file: Option<PathBuf>,
    from_file: RwLock<HashSet<PeerId>>,
    open: bool,
}

fn read_file(path: &PathBuf) -> Result<HashSet<PeerId>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut set = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let peer = super::parse_peer(line)
            .ok_or_else(|| format!("{} line {}: not a PeerId: {line:?}", path.display(), n + 1))?;
        set.insert(peer);
    }
    Ok(set)
}

impl Admission {
    pub fn new(
        fixed: HashSet<PeerId>,
        file: Option<PathBuf>,
        open: bool,
    ) -> Result<Self, RelayError> {
        let from_file = match &file {
            Some(f) => read_file(f).map_err(RelayError::Config)?,
            None => HashSet::new(),
        };
        if !open && fixed.is_empty() && file.is_none() {
            return Err(RelayError::Config(
                "no peer is admitted: pass --allow PEERID or --allow-file FILE (or --open to admit anyone)".into(),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                fixed,
                file,
                from_file: RwLock::new(from_file),
                open,
            }),
        })
    }

    pub fn allows(&self, peer: &PeerId) -> bool {
        self.inner.open
            || self.inner.fixed.contains(peer)
            || self
                .inner
                .from_file
                .read()
                .map(|s| s.contains(peer))
                .unwrap_or(false)
    }

    /// Re-reads the allow file; a broken file keeps the previous list (and says why).
    pub fn reload(&self) {
        let Some(f) = &self.inner.file else { return };
        match read_file(f) {
            Ok(set) => {
                if let Ok(mut s) = self.inner.from_file.write() {
                    *s = set;
                }
            }
            Err(e) => tracing::warn!("allow file not reloaded: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_flags_admit_and_others_do_not() {
        let a = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let b = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let c = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("allow");
        std::fs::write(&f, format!("# clinic nodes\n{b}  # front desk\n\n")).unwrap();
        let adm = Admission::new([a].into(), Some(f.clone()), false).unwrap();
        assert!(adm.allows(&a) && adm.allows(&b) && !adm.allows(&c));
        std::fs::write(&f, format!("{c}\n")).unwrap();
        adm.reload();
        assert!(adm.allows(&c) && !adm.allows(&b));
        std::fs::write(&f, "garbage\n").unwrap();
        adm.reload();
        assert!(adm.allows(&c), "a broken file keeps the last good list");
        assert!(Admission::new(HashSet::new(), None, false).is_err());
    }
}
