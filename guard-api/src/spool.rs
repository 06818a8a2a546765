//! The spool's files: guardd's events file and the files rotated out of
//! it, each named `<events file>.<sequence number of its last line>`. The
//! shipper, `guardctl audit verify` and guardd's chain read them as one
//! stream, oldest first.

use std::{
    io,
    path::{Path, PathBuf},
};

/// A file rotated out of the events file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotated {
    pub path: PathBuf,
    /// The sequence number of its last line.
    pub last_seq: u64,
}

/// The name of the file rotated out of `events` whose last line is
/// `last_seq`.
pub fn rotated_name(events: &Path, last_seq: u64) -> PathBuf {
    let mut name = events.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{last_seq}"));
    events.with_file_name(name)
}

/// The files rotated out of `events`, oldest first.
pub fn rotated(events: &Path) -> io::Result<Vec<Rotated>> {
    let Some(name) = events.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match events.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let prefix = format!("{name}.");
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(seq) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
        else {
            continue;
        };
        files.push(Rotated {
            path: entry.path(),
            last_seq: seq,
        });
    }
    files.sort_by_key(|r| r.last_seq);
    Ok(files)
}

/// Every file of the spool in order: the rotated ones, then `events`.
pub fn files(events: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = rotated(events)?.into_iter().map(|r| r.path).collect();
    files.push(events.to_path_buf());
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_files_are_found_by_name_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.jsonl");
        for name in [
            "events.jsonl",
            "events.jsonl.120",
            "events.jsonl.9",
            "events.jsonl.ocsf",
            "events.jsonl.",
            "other.jsonl.5",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(rotated_name(&events, 9), dir.path().join("events.jsonl.9"));
        assert_eq!(
            files(&events).unwrap(),
            ["events.jsonl.9", "events.jsonl.120", "events.jsonl"].map(|n| dir.path().join(n))
        );
        assert!(
            rotated(&dir.path().join("none/events.jsonl"))
                .unwrap()
                .is_empty()
        );
    }
}
