//! Signed checkpoints. The hash chain shows that a stream was changed, but
//! whoever can rewrite a store can also recompute every hash after a
//! change. So each host signs the head of its chain with its own Ed25519
//! key, now and then, in a checkpoint line of the stream itself: a stream
//! rewritten without the host's private key no longer matches a signature
//! the host made. The key lives in one file, PKCS#8 PEM, root's, mode 0600,
//! made on the host's first start.

use std::{
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

use anyhow::{Context as _, anyhow};
use ed25519_dalek::{
    Signature, Signer as _, SigningKey, VerifyingKey,
    pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, spki::der::pem::LineEnding},
};

use crate::record::{Checkpoint, CheckpointRecord};

/// How a public key is written in a checkpoint: this prefix and 64 hex
/// digits.
const KEY_PREFIX: &str = "ed25519:";

/// A host's signing key.
pub struct HostKey {
    key: SigningKey,
}

impl HostKey {
    /// Reads the key in `path`, or makes one there (mode 0600, its
    /// directory made if missing) when there is no such file. True when
    /// made.
    pub fn load_or_create(path: &Path) -> anyhow::Result<(Self, bool)> {
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
                    anyhow!(
                        "{}: not an Ed25519 private key in PKCS#8 PEM: {e}",
                        path.display()
                    )
                })?;
                Ok((Self { key }, false))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| anyhow!("no randomness for a key: {e}"))?;
                let key = SigningKey::from_bytes(&seed);
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| anyhow!("cannot encode the key: {e}"))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                file.write_all(pem.as_bytes())
                    .and_then(|()| file.sync_all())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok((Self { key }, true))
            }
            Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// The public key, as checkpoints carry it.
    pub fn public(&self) -> String {
        format!(
            "{KEY_PREFIX}{}",
            hex::encode(self.key.verifying_key().as_bytes())
        )
    }

    /// A checkpoint made at `time` over the line `covers` of the stream,
    /// whose chain hash is `head` (hex).
    pub fn checkpoint(&self, covers: u64, head: &str, time: &str) -> Checkpoint {
        let signature = self.key.sign(&message(covers, head, time));
        Checkpoint {
            covers,
            head: head.into(),
            key: self.public(),
            signature: hex::encode(signature.to_bytes()),
        }
    }
}

/// What a checkpoint's signature covers: its line, the chain hash of that
/// line (which commits to every line before it), and its time.
fn message(covers: u64, head: &str, time: &str) -> Vec<u8> {
    format!("guard checkpoint v1\ncovers {covers}\nhead {head}\ntime {time}\n").into_bytes()
}

/// A public key as checkpoints write it.
pub fn parse_key(text: &str) -> Result<VerifyingKey, String> {
    text.strip_prefix(KEY_PREFIX)
        .and_then(|digits| {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(digits, &mut bytes).ok()?;
            VerifyingKey::from_bytes(&bytes).ok()
        })
        .ok_or_else(|| {
            format!("`{text}` is not an Ed25519 public key (ed25519: and 64 hex digits)")
        })
}

/// Checks a checkpoint made at `time` against the key it names. Whether
/// that key is the host's is the caller's to decide.
pub fn check(checkpoint: &Checkpoint, time: &str) -> Result<(), String> {
    let key = parse_key(&checkpoint.key)?;
    let mut signature = [0u8; 64];
    hex::decode_to_slice(&checkpoint.signature, &mut signature)
        .map_err(|_| "the signature is not 128 hex digits".to_string())?;
    key.verify_strict(
        &message(checkpoint.covers, &checkpoint.head, time),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| format!("its signature does not match key {}", checkpoint.key))
}

/// Checks a checkpoint line: that it signs the line before it, whose chain
/// hash is `previous` (`None` where that line is not at hand: after a gap),
/// that its signature holds, and that it is by `key` when one is expected.
pub fn check_line(
    line: &CheckpointRecord,
    previous: Option<[u8; 32]>,
    key: Option<&str>,
) -> Result<(), String> {
    let checkpoint = &line.checkpoint;
    if let Some(previous) = previous
        && (checkpoint.covers + 1 != line.seq || checkpoint.head != hex::encode(previous))
    {
        return Err(format!(
            "it signs line {} with head {}, but line {} has head {}: the lines before it were changed",
            checkpoint.covers,
            checkpoint.head,
            line.seq - 1,
            hex::encode(previous)
        ));
    }
    check(checkpoint, &line.time)?;
    match key {
        Some(key) if key != checkpoint.key => Err(format!(
            "signed by key {}, not by the host's key {key}",
            checkpoint.key
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_and_signs_what_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing.key");
        let (key, made) = HostKey::load_or_create(&path).unwrap();
        assert!(made);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (again, made) = HostKey::load_or_create(&path).unwrap();
        assert!(!made);
        assert_eq!(key.public(), again.public());
        assert!(key.public().starts_with("ed25519:") && key.public().len() == 8 + 64);

        let head = "ab".repeat(32);
        let time = "2026-12-06T08:00:00Z";
        let checkpoint = key.checkpoint(41, &head, time);
        assert_eq!(check(&checkpoint, time), Ok(()));
        // Anything it covers changed: the signature no longer matches.
        assert!(check(&checkpoint, "2026-12-06T08:00:01Z").is_err());
        let moved = Checkpoint {
            covers: 40,
            ..checkpoint.clone()
        };
        assert!(check(&moved, time).is_err());
        let rehashed = Checkpoint {
            head: "cd".repeat(32),
            ..checkpoint.clone()
        };
        assert!(
            check(&rehashed, time)
                .unwrap_err()
                .contains("does not match")
        );
        // Another key's signature, passed off as this one's.
        let other = HostKey::load_or_create(&dir.path().join("other.key"))
            .unwrap()
            .0;
        let forged = Checkpoint {
            key: key.public(),
            ..other.checkpoint(41, &head, time)
        };
        assert!(check(&forged, time).is_err());

        std::fs::write(&path, "not a key").unwrap();
        let error = HostKey::load_or_create(&path).err().unwrap().to_string();
        assert!(error.contains("not an Ed25519 private key"), "{error}");
    }
}
