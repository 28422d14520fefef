//! Getting the passphrase: `DISCLESS_PASSPHRASE`, else the terminal.

use std::io::IsTerminal;

use zeroize::Zeroizing;

use crate::home::ENV_PASSPHRASE;

/// No usable passphrase.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PassphraseError {
    #[error("no passphrase: set {ENV_PASSPHRASE} or run in a terminal")]
    NoTerminal,
    #[error("the two passphrases differ")]
    Mismatch,
    #[error("an empty passphrase is not allowed")]
    Empty,
    #[error("reading the passphrase failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The passphrase; asked twice when `confirm` (creating a node).
pub fn passphrase(confirm: bool) -> Result<Zeroizing<String>, PassphraseError> {
    if let Ok(p) = std::env::var(ENV_PASSPHRASE) {
        if p.is_empty() {
            return Err(PassphraseError::Empty);
        }
        return Ok(Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        return Err(PassphraseError::NoTerminal);
    }
    let p = Zeroizing::new(rpassword::prompt_password("Passphrase: ")?);
    if p.is_empty() {
        return Err(PassphraseError::Empty);
    }
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("Passphrase again: ")?);
        if *again != *p {
            return Err(PassphraseError::Mismatch);
        }
    }
    Ok(p)
}
