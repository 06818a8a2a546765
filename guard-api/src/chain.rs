//! Tamper evidence for the record stream: every record carries a sequence
//! number and a hash that commits to the record and to the hash of the one
//! before it, so that changing, removing or reordering a written record
//! breaks the chain from there on.
//!
//! A record line is the record's JSON object with `"chain":"<hex>"` as its
//! last member. The hash is SHA-256 over the previous record's hash (32 zero
//! bytes before the first record) followed by the line's bytes without that
//! member, exactly as written. Verifying needs the lines only, no schema.

use std::{
    io::{self, BufRead, Read, Seek, SeekFrom},
    path::Path,
};

use sha2::{Digest, Sha256};

use crate::record::{CheckpointRecord, Line};

/// The member every sealed line ends with: `,"chain":"` + 64 hex digits + `"}`.
const MEMBER: &str = ",\"chain\":\"";
const SUFFIX_LEN: usize = MEMBER.len() + 64 + 2;

/// The sealing state of one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    next_seq: u64,
    last: [u8; 32],
}

impl Default for Chain {
    fn default() -> Self {
        Self {
            next_seq: 1,
            last: [0; 32],
        }
    }
}

impl Chain {
    /// Continues the chain of the records already in `path` (an events file
    /// guardd appends to; when it holds none, the newest file rotated out of
    /// it), or starts one if there are none.
    pub fn resume(path: &Path) -> io::Result<Self> {
        let mut last = last_seal(path)?;
        if last.is_none()
            && let Some(newest) = crate::spool::rotated(path)?.pop()
        {
            last = last_seal(&newest.path)?;
        }
        Ok(match last {
            Some((seq, hash)) => Self {
                next_seq: seq + 1,
                last: hash,
            },
            None => Self::default(),
        })
    }

    /// The hash of the last sealed record, in hex.
    pub fn last_hex(&self) -> String {
        hex::encode(self.last)
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Seals a record serialized as a JSON object (whose `seq` member is
    /// [`Self::next_seq`]): appends the chain member. Returns the sealed
    /// line and its hash.
    pub fn seal(&mut self, mut json: Vec<u8>) -> (Vec<u8>, [u8; 32]) {
        debug_assert_eq!(json.last(), Some(&b'}'));
        json.pop();
        let hash = link(&self.last, &json);
        json.extend_from_slice(MEMBER.as_bytes());
        json.extend_from_slice(hex::encode(hash).as_bytes());
        json.extend_from_slice(b"\"}");
        self.last = hash;
        self.next_seq += 1;
        (json, hash)
    }
}

/// The hash that seals `body` (a line without its chain member) after a
/// record whose hash is `previous`.
pub fn link(previous: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(body);
    hasher.finalize().into()
}

/// A sealed line split into what its hash covers (the line without its
/// chain member) and its hash.
pub fn unseal(line: &str) -> Option<(&[u8], [u8; 32])> {
    let hash = parse_hex(hex_of(line)?)?;
    Some((&line.as_bytes()[..line.len() - SUFFIX_LEN], hash))
}

/// The `seq` and chain hash of a sealed line (parses the line; callers
/// that already did want [`hash_of`]).
pub fn seal_of(line: &str) -> Option<(u64, [u8; 32])> {
    /// Only `seq`: the other members are skipped, not built.
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let hash = hash_of(line)?;
    let Seq { seq } = serde_json::from_str(line).ok()?;
    Some((seq, hash))
}

/// The chain hash of a sealed line, from its last member.
pub fn hash_of(line: &str) -> Option<[u8; 32]> {
    parse_hex(hex_of(line)?)
}

/// The chain hash of a sealed line as written: the 64 hex digits of its
/// last member.
pub fn hex_of(line: &str) -> Option<&str> {
    let suffix = line.get(line.len().checked_sub(SUFFIX_LEN)?..)?;
    let digits = suffix.strip_prefix(MEMBER)?.strip_suffix("\"}")?;
    digits
        .bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then_some(digits)
}

/// A chain hash from its 64 hex digits.
pub fn parse_hex(digits: &str) -> Option<[u8; 32]> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(digits, &mut hash).ok()?;
    Some(hash)
}

/// Where a chain is broken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Break {
    /// 1-based line number in the verified input.
    pub line: usize,
    pub reason: String,
}

/// What a verification found intact.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// Lines, checkpoints included.
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Signed checkpoints, all by [`Self::key`].
    pub checkpoints: u64,
    /// The last line a checkpoint signed.
    pub signed_through: Option<u64>,
    pub key: Option<String>,
}

/// The sequence number and chain hash of the last line of `path`, if it
/// has one.
fn last_seal(path: &Path) -> io::Result<Option<(u64, [u8; 32])>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // The last complete line is within the last few KiB.
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
    let mut tail = String::new();
    file.read_to_string(&mut tail)?;
    let Some(last) = tail.lines().rev().find(|l| l.ends_with('}')) else {
        return Ok(None);
    };
    seal_of(last).map(Some).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the last record in {} carries no sequence number and chain hash",
                path.display()
            ),
        )
    })
}

/// Verifies the records in `input`, a stream of sealed lines (a whole events
/// file, or a stretch of one: the first record's link to its predecessor
/// cannot be checked then), and the signature of every checkpoint line:
/// it must sign the line before it, by `key` when given, otherwise by the
/// key of the first checkpoint (a key that changes is a break). Returns the
/// first broken link.
pub fn verify(
    input: impl BufRead,
    key: Option<&str>,
) -> Result<Result<Verified, Break>, io::Error> {
    let mut previous: Option<(u64, [u8; 32])> = None;
    let mut verified = Verified {
        key: key.map(str::to_string),
        ..Verified::default()
    };
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        let number = index + 1;
        let broken = |reason: String| {
            Ok(Err(Break {
                line: number,
                reason,
            }))
        };
        if line.is_empty() {
            continue;
        }
        let Some((seq, hash)) = seal_of(&line) else {
            return broken("not a sealed record (no `seq` or `chain`)".into());
        };
        let body = &line.as_bytes()[..line.len() - SUFFIX_LEN];
        match previous {
            Some((previous_seq, _)) if seq != previous_seq + 1 => {
                return broken(format!(
                    "sequence {seq} follows {previous_seq}: {} missing or reordered",
                    if seq > previous_seq + 1 {
                        format!("{} record(s)", seq - previous_seq - 1)
                    } else {
                        "records".into()
                    }
                ));
            }
            Some((_, previous_hash)) if link(&previous_hash, body) != hash => {
                return broken(format!(
                    "record {seq} does not match its chain hash: it was changed"
                ));
            }
            None if seq == 1 && link(&[0; 32], body) != hash => {
                return broken("record 1 does not match its chain hash: it was changed".into());
            }
            _ => {}
        }
        if let Some(checkpoint) = checkpoint_of(&line) {
            let previous = previous.map(|(_, hash)| hash);
            if let Err(reason) =
                crate::signing::check_line(&checkpoint, previous, verified.key.as_deref())
            {
                return broken(format!("checkpoint {seq}: {reason}"));
            }
            // Without an expected key, the first checkpoint's holds.
            verified
                .key
                .get_or_insert_with(|| checkpoint.checkpoint.key.clone());
            verified.checkpoints += 1;
            verified.signed_through = Some(checkpoint.checkpoint.covers);
        }
        previous = Some((seq, hash));
        verified.records += 1;
        verified.first_seq.get_or_insert(seq);
        verified.last_seq = Some(seq);
    }
    Ok(Ok(verified))
}

/// The checkpoint a line is, if it is one.
fn checkpoint_of(line: &str) -> Option<CheckpointRecord> {
    // Only a line with the member is parsed as one.
    if !line.contains("\"checkpoint\":{") {
        return None;
    }
    match Line::parse(line) {
        Ok(Line::Checkpoint(checkpoint)) => Some(checkpoint),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(chain: &mut Chain, what: &str) -> String {
        let json = format!("{{\"seq\":{},\"what\":\"{what}\"}}", chain.next_seq());
        String::from_utf8(chain.seal(json.into_bytes()).0).unwrap()
    }

    fn stream(n: usize) -> Vec<String> {
        let mut chain = Chain::default();
        (0..n)
            .map(|i| sealed(&mut chain, &format!("r{i}")))
            .collect()
    }

    fn check(lines: &[String]) -> Result<Verified, Break> {
        verify(lines.join("\n").as_bytes(), None).unwrap()
    }

    /// A checkpoint line by `key` over what `chain` sealed last.
    fn checkpoint(chain: &mut Chain, key: &crate::signing::HostKey) -> String {
        let time = "2026-12-06T08:00:00Z".to_string();
        let line = Line::Checkpoint(CheckpointRecord {
            seq: chain.next_seq(),
            checkpoint: key.checkpoint(chain.next_seq() - 1, &chain.last_hex(), &time),
            time,
        });
        String::from_utf8(chain.seal(line.to_json().unwrap()).0).unwrap()
    }

    /// Seals `bodies` again from the start, every hash recomputed: what a
    /// writer who can change the store but has no key can do.
    fn rehash(lines: &[String]) -> Vec<String> {
        let mut previous = [0u8; 32];
        lines
            .iter()
            .map(|line| {
                let body = &line[..line.len() - SUFFIX_LEN];
                previous = link(&previous, body.as_bytes());
                format!("{body}{MEMBER}{}\"}}", hex::encode(previous))
            })
            .collect()
    }

    #[test]
    fn checkpoints_sign_the_chain_and_a_rehashed_rewrite_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = crate::signing::HostKey::load_or_create(&dir.path().join("k")).unwrap();
        let mut chain = Chain::default();
        let mut lines: Vec<String> = (0..3)
            .map(|i| sealed(&mut chain, &format!("r{i}")))
            .collect();
        lines.push(checkpoint(&mut chain, &key));
        lines.push(sealed(&mut chain, "r3"));
        let verified = check(&lines).unwrap();
        assert_eq!(
            (
                verified.records,
                verified.checkpoints,
                verified.signed_through
            ),
            (5, 1, Some(3))
        );
        assert_eq!(verified.key, Some(key.public()));
        // The expected key, and another.
        let text = lines.join("\n");
        assert!(
            verify(text.as_bytes(), Some(&key.public()))
                .unwrap()
                .is_ok()
        );
        let other = crate::signing::HostKey::load_or_create(&dir.path().join("o"))
            .unwrap()
            .0;
        let e = verify(text.as_bytes(), Some(&other.public()))
            .unwrap()
            .unwrap_err();
        assert!(e.reason.contains("not by the host's key"), "{e}");

        // A record before the checkpoint changed and every hash recomputed:
        // the chain holds, the checkpoint does not.
        let mut forged = lines.clone();
        forged[1] = forged[1].replace("r1", "rX");
        let e = check(&rehash(&forged)).unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.reason.contains("the lines before it were changed"), "{e}");
        // The checkpoint's head made to match: its signature does not.
        let mut forged = rehash(&forged);
        let old_head = serde_json::from_str::<serde_json::Value>(&lines[3]).unwrap()["checkpoint"]
            ["head"]
            .as_str()
            .unwrap()
            .to_string();
        forged[3] = forged[3].replace(&old_head, &hex::encode(hash_of(&forged[2]).unwrap()));
        let e = check(&rehash(&forged)).unwrap_err();
        assert!(e.reason.contains("signature does not match"), "{e}");

        // A later checkpoint by another key: a key change.
        let mut chain2 = chain.clone();
        let mut changed = lines.clone();
        changed.push(checkpoint(&mut chain2, &other));
        let e = check(&changed).unwrap_err();
        assert!(e.reason.contains("not by the host's key"), "{e}");
    }

    #[test]
    fn an_intact_stream_verifies() {
        let lines = stream(5);
        assert!(lines[0].ends_with("\"}") && lines[0].contains(",\"chain\":\""));
        assert_eq!(
            check(&lines),
            Ok(Verified {
                records: 5,
                first_seq: Some(1),
                last_seq: Some(5),
                ..Verified::default()
            })
        );
    }

    #[test]
    fn a_changed_record_is_found() {
        let mut lines = stream(5);
        lines[2] = lines[2].replace("r2", "r9");
        let e = check(&lines).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("changed"), "{e}");
        // The first record too.
        let mut lines = stream(2);
        lines[0] = lines[0].replace("r0", "rX");
        assert_eq!(check(&lines).unwrap_err().line, 1);
    }

    #[test]
    fn a_removed_record_is_found() {
        let mut lines = stream(5);
        lines.remove(3);
        let e = check(&lines).unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.reason.contains("1 record(s) missing"), "{e}");
    }

    #[test]
    fn a_forged_replacement_with_a_fresh_hash_breaks_the_next_link() {
        let mut lines = stream(4);
        // Rewrite record 2 and give it a correct hash over its new body: the
        // next record still commits to the old hash.
        let body = lines[1].replace("r1", "forged");
        let body = &body[..body.len() - SUFFIX_LEN];
        let previous = hash_of(&lines[0]).unwrap();
        lines[1] = format!(
            "{body}{MEMBER}{}\"}}",
            hex::encode(link(&previous, body.as_bytes()))
        );
        assert_eq!(check(&lines).unwrap_err().line, 3);
    }

    #[test]
    fn a_resumed_chain_continues_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        assert_eq!(Chain::resume(&path).unwrap(), Chain::default());
        let mut lines = stream(3);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let mut chain = Chain::resume(&path).unwrap();
        assert_eq!(chain.next_seq(), 4);
        lines.push(sealed(&mut chain, "after restart"));
        assert_eq!(check(&lines).unwrap().records, 4);
        std::fs::write(&path, "{\"unsealed\":true}\n").unwrap();
        assert!(Chain::resume(&path).is_err());

        // Just rotated: the events file is empty, the chain goes on from
        // the newest file rotated out of it.
        std::fs::write(
            crate::spool::rotated_name(&path, 4),
            lines.join("\n") + "\n",
        )
        .unwrap();
        std::fs::write(&path, "").unwrap();
        assert_eq!(Chain::resume(&path).unwrap(), chain);
    }
}
