//! Reading append-only files (`*.jsonl`, `result.json`, logs) incrementally: each call reads only
//! the bytes appended since the previous one and hands back the complete lines among them.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One append-only file, read up to `offset`.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    offset: u64,
    /// The bytes after the last newline read so far: a line still being written.
    partial: Vec<u8>,
    /// The file read so far (device and inode): a file replaced by a rename is another one,
    /// even when it has grown past `offset`.
    identity: Option<(u64, u64)>,
}

/// Which file `meta` describes.
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

impl Tail {
    pub fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            offset: 0,
            partial: Vec::new(),
            identity: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes consumed so far (complete lines and the partial one).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The complete lines appended since the last call. A missing file has no lines yet; a file
    /// replaced by another one or shorter than what was read (truncated) is read again from its
    /// start, and `restarted` says so.
    pub fn read_lines(&mut self) -> io::Result<TailRead> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TailRead::default()),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let len = meta.len();
        let mut restarted = false;
        let now = identity(&meta);
        if len < self.offset || self.identity.is_some_and(|before| before != now) {
            self.offset = 0;
            self.partial.clear();
            restarted = true;
        }
        self.identity = Some(now);
        if len == self.offset {
            return Ok(TailRead {
                lines: Vec::new(),
                restarted,
            });
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = std::mem::take(&mut self.partial);
        let read = file.take(len - self.offset).read_to_end(&mut bytes)?;
        self.offset += read as u64;
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&bytes[start..i]);
                let line = line.trim_end_matches('\r');
                if !line.trim().is_empty() {
                    lines.push(line.to_string());
                }
                start = i + 1;
            }
        }
        self.partial = bytes[start..].to_vec();
        Ok(TailRead { lines, restarted })
    }

    /// The last `max` bytes of the file as text (a log's tail), without moving `offset`.
    pub fn last_bytes(path: &Path, max: u64) -> io::Result<String> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let start = len.saturating_sub(max);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if start > 0 {
            // Drop the first, cut line.
            if let Some(pos) = text.find('\n') {
                return Ok(text[pos + 1..].to_string());
            }
        }
        Ok(text)
    }
}

/// What one [`Tail::read_lines`] found.
#[derive(Debug, Default)]
pub struct TailRead {
    pub lines: Vec<String>,
    /// The file was replaced or truncated: earlier lines are void and `lines` starts over.
    pub restarted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_only_complete_new_lines() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.jsonl");
        let mut tail = Tail::new(path.clone());
        assert!(
            tail.read_lines()?.lines.is_empty(),
            "missing file: no lines"
        );
        let mut f = File::create(&path)?;
        f.write_all(b"{\"a\":1}\n{\"a\"")?;
        assert_eq!(tail.read_lines()?.lines, vec!["{\"a\":1}"]);
        assert!(tail.read_lines()?.lines.is_empty());
        f.write_all(b":2}\n\n{\"a\":3}\n")?;
        assert_eq!(tail.read_lines()?.lines, vec!["{\"a\":2}", "{\"a\":3}"]);
        assert_eq!(tail.offset(), std::fs::metadata(&path)?.len());
        Ok(())
    }

    #[test]
    fn a_truncated_file_is_read_again() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, "one\ntwo\n")?;
        let mut tail = Tail::new(path.clone());
        assert_eq!(tail.read_lines()?.lines.len(), 2);
        std::fs::write(&path, "x\n")?;
        let read = tail.read_lines()?;
        assert!(read.restarted);
        assert_eq!(read.lines, vec!["x"]);
        Ok(())
    }

    #[test]
    fn a_file_replaced_by_a_longer_one_is_read_again() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("result.json");
        std::fs::write(&path, "1\n2\n")?;
        let mut tail = Tail::new(path.clone());
        assert_eq!(tail.read_lines()?.lines.len(), 2);
        // Rewritten through a temporary file and a rename, and longer than before.
        let tmp = dir.path().join("result.json.tmp");
        std::fs::write(&tmp, "1\n3\n4\n")?;
        std::fs::rename(&tmp, &path)?;
        let read = tail.read_lines()?;
        assert!(read.restarted);
        assert_eq!(read.lines, vec!["1", "3", "4"]);
        Ok(())
    }

    #[test]
    fn last_bytes_starts_at_a_line() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("stderr.log");
        std::fs::write(&path, "first line\nsecond\nthird\n")?;
        assert_eq!(Tail::last_bytes(&path, 10)?, "third\n");
        assert_eq!(
            Tail::last_bytes(&path, 1000)?,
            "first line\nsecond\nthird\n"
        );
        assert_eq!(Tail::last_bytes(&dir.path().join("none"), 10)?, "");
        Ok(())
    }
}
