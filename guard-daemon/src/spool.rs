//! A file of lines that holds whole lines only: the events file and its
//! OCSF copy. An append that fails (a full disk) is cut back off, and a
//! torn last line left by a guardd that died mid-write is cut when the file
//! is opened, so readers and `guardctl audit verify` never meet half a line.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom, Write},
    path::Path,
};

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
