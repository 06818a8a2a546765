//! The spool: the events file, rotated by size or age into files named
//! after their last line's sequence number ([`guard_api::spool`]), within
//! a bound on their total size. A rotated file is deleted once the
//! collector acknowledged its last line, and never before.
//!
//! Each file holds whole lines only ([`LineFile`], also the OCSF copy): an
//! append that fails (a full disk) is cut back off, and a torn last line
//! left by a guardd that died mid-write is cut when the file is opened, so
//! readers and `guardctl audit verify` never meet half a line.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use guard_api::spool::{Rotated, rotated, rotated_name};

/// When the events file is rotated, and how much the spool may hold.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpoolLimits {
    /// Rotate the events file once it holds this many bytes...
    pub rotate_size: Option<u64>,
    /// ...or once its first line is this old.
    pub rotate_age: Option<Duration>,
    /// The events file and the files rotated out of it never hold more.
    pub max: Option<u64>,
}

/// The name of the empty file that becomes the events file at the next
/// rotation: made, and protected as one of Guard's own files, before it
/// is needed, so that no agent ever meets an unprotected events file.
pub fn next_name(events: &Path) -> PathBuf {
    let mut name = events.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    events.with_file_name(name)
}

/// Why the spool refused lines.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the spool holds {total} bytes, its --spool-max is {max}")]
    Full { total: u64, max: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// guardd's events file and the files rotated out of it.
pub struct Spool {
    path: PathBuf,
    file: LineFile,
    limits: SpoolLimits,
    /// When the events file got its first line, if it has one.
    since: Option<Instant>,
    /// The files rotated out of it, oldest first, with their sizes.
    rotated: Vec<(Rotated, u64)>,
}

impl Spool {
    /// Opens the events file at `path` (see [`LineFile::open`]) and finds
    /// the files rotated out of it. Returns the bytes of a torn line cut.
    pub fn open(path: &Path, limits: SpoolLimits) -> io::Result<(Self, u64)> {
        let (file, cut) = LineFile::open(path)?;
        let mut spool = Spool {
            path: path.to_path_buf(),
            since: (file.len > 0).then(Instant::now),
            file,
            limits,
            rotated: Vec::new(),
        };
        spool.find_rotated()?;
        Ok((spool, cut))
    }

    fn find_rotated(&mut self) -> io::Result<()> {
        self.rotated = rotated(&self.path)?
            .into_iter()
            .map(|r| {
                let size = std::fs::metadata(&r.path).map(|m| m.len()).unwrap_or(0);
                (r, size)
            })
            .collect();
        Ok(())
    }

    /// Bytes in the events file and the files rotated out of it.
    pub fn bytes(&self) -> u64 {
        self.file.len + self.rotated.iter().map(|(_, size)| size).sum::<u64>()
    }

    /// Appends `lines` (see [`LineFile::append`]), unless the spool would
    /// then hold more than its bound.
    pub fn append(&mut self, lines: &[u8]) -> Result<(), Refused> {
        if let Some(max) = self.limits.max
            && self.bytes() + lines.len() as u64 > max
        {
            // Someone may have deleted rotated files meanwhile.
            self.find_rotated()?;
            if self.bytes() + lines.len() as u64 > max {
                return Err(Refused::Full {
                    total: self.bytes(),
                    max,
                });
            }
        }
        self.file.append(lines)?;
        self.since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Whether the events file is due for rotation.
    pub fn rotation_due(&self) -> bool {
        self.file.len > 0
            && (self
                .limits
                .rotate_size
                .is_some_and(|size| self.file.len >= size)
                || self
                    .limits
                    .rotate_age
                    .zip(self.since)
                    .is_some_and(|(age, since)| since.elapsed() >= age))
    }

    /// Moves the events file aside as the file whose last line is
    /// `last_seq`, and makes the prepared next file the events file.
    /// Returns the rotated file's name.
    pub fn rotate(&mut self, last_seq: u64) -> io::Result<PathBuf> {
        let to = rotated_name(&self.path, last_seq);
        let next = next_name(&self.path);
        if std::fs::metadata(&next)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
        {
            // Written before it was protected: not guardd's.
            tracing::warn!(file = %next.display(), "the next events file is not empty: emptied");
            File::options().write(true).open(&next)?.set_len(0)?;
        }
        std::fs::rename(&self.path, &to)?;
        if let Err(e) = std::fs::rename(&next, &self.path) {
            tracing::warn!(file = %next.display(), "no next events file to use ({e}): a new one is protected from the next generation on");
        }
        let (file, _) = LineFile::open(&self.path)?;
        self.file = file;
        self.since = None;
        self.rotated.push((
            Rotated {
                path: to.clone(),
                last_seq,
            },
            std::fs::metadata(&to).map(|m| m.len()).unwrap_or(0),
        ));
        prepare_next(&self.path)?;
        Ok(to)
    }

    /// Deletes the rotated files whose last line the collector
    /// acknowledged (`acked`); returns how many.
    pub fn delete_acked(&mut self, acked: u64) -> usize {
        let mut deleted = 0;
        self.rotated.retain(|(r, _)| {
            if r.last_seq > acked {
                return true;
            }
            match std::fs::remove_file(&r.path) {
                Ok(()) => {
                    deleted += 1;
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => {
                    tracing::warn!(file = %r.path.display(), "cannot delete a shipped file: {e}");
                    true
                }
            }
        });
        deleted
    }
}

/// Makes the empty file that the next rotation turns into the events file
/// ([`next_name`]), if it is not there.
pub fn prepare_next(events: &Path) -> io::Result<()> {
    File::options()
        .create(true)
        .append(true)
        .open(next_name(events))
        .map(drop)
}

pub struct LineFile {
    file: File,
    /// Bytes of whole lines in the file.
    len: u64,
}

impl LineFile {
    /// Opens `path` for appending (creating it), after cutting a torn last
    /// line. Returns the file and how many bytes were cut.
    pub fn open(path: &Path) -> io::Result<(Self, u64)> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let end = file.metadata()?.len();
        let len = whole_lines_end(&mut file, end)?;
        if len < end {
            file.set_len(len)?;
        }
        Ok((Self { file, len }, end - len))
    }

    /// Appends `lines` (each ending in a newline) in one write; if that
    /// fails, the file is cut back to the lines it held before.
    pub fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        match self.file.write_all(lines) {
            Ok(()) => {
                self.len += lines.len() as u64;
                Ok(())
            }
            Err(e) => {
                // A partial write leaves part of a line: cut it off. If even
                // that fails, the next open cuts it.
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }
}

/// Where the last whole line of `file` (`end` bytes long) ends: the byte
/// after its last newline, or 0.
fn whole_lines_end(file: &mut File, end: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut stop = end;
    let mut buf = Vec::new();
    while stop > 0 {
        let start = stop.saturating_sub(CHUNK);
        file.seek(SeekFrom::Start(start))?;
        buf.clear();
        Read::by_ref(file)
            .take(stop - start)
            .read_to_end(&mut buf)?;
        if let Some(at) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(start + at as u64 + 1);
        }
        stop = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_cut_at_open_and_whole_lines_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"seq\":1}\n{\"seq\":2}\n{\"se").unwrap();
        let (mut file, cut) = LineFile::open(&path).unwrap();
        assert_eq!(cut, 4);
        file.append(b"{\"seq\":3}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n"
        );

        std::fs::write(&path, "no newline at all").unwrap();
        let (_, cut) = LineFile::open(&path).unwrap();
        assert_eq!(cut, 17);
        assert_eq!(std::fs::read(&path).unwrap(), b"");

        let (_, cut) = LineFile::open(&dir.path().join("new.jsonl")).unwrap();
        assert_eq!(cut, 0);
    }

    #[test]
    fn the_spool_rotates_deletes_only_what_was_acknowledged_and_keeps_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        prepare_next(&path).unwrap();
        let limits = SpoolLimits {
            rotate_size: Some(20),
            rotate_age: None,
            max: Some(60),
        };
        let (mut spool, _) = Spool::open(&path, limits).unwrap();
        let line = |seq: u8| format!("{{\"seq\":{seq}}}\n").into_bytes();
        spool.append(&line(1)).unwrap();
        assert!(!spool.rotation_due());
        spool.append(&line(2)).unwrap();
        assert!(spool.rotation_due());
        assert_eq!(spool.rotate(2).unwrap(), dir.path().join("events.jsonl.2"));
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert!(next_name(&path).exists(), "the next one is ready");
        spool.append(&line(3)).unwrap();
        spool.append(&line(4)).unwrap();
        spool.rotate(4).unwrap();
        spool.append(&line(5)).unwrap();
        spool.append(&line(6)).unwrap();
        assert!(matches!(
            spool.append(&line(7)),
            Err(Refused::Full { total: 60, max: 60 })
        ));
        // Only what the collector has goes.
        assert_eq!(spool.delete_acked(3), 1);
        assert!(!dir.path().join("events.jsonl.2").exists());
        assert!(dir.path().join("events.jsonl.4").exists());
        spool.append(&line(7)).unwrap();
        // A rotated file deleted by hand makes room too.
        std::fs::remove_file(dir.path().join("events.jsonl.4")).unwrap();
        spool.append(&line(8)).unwrap();
        spool.append(&line(9)).unwrap();
        assert_eq!(spool.bytes(), 50);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"seq\":5}\n{\"seq\":6}\n{\"seq\":7}\n{\"seq\":8}\n{\"seq\":9}\n"
        );
    }

    #[test]
    fn a_failed_append_leaves_no_partial_line() {
        // /dev/full fails every write with ENOSPC, like a full disk; a
        // regular file on a tiny filesystem needs root to mount.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"seq\":1}\n").unwrap();
        let (mut file, _) = LineFile::open(&path).unwrap();
        file.file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let e = file.append(b"{\"seq\":2}\n").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(file.len, 10);
    }
}
