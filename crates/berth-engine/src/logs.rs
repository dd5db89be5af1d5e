//! Container logs: every chunk a container writes is kept as a record
//! `[stream u8][len u32 LE][unix millis i64 LE][bytes]` in `container.log`,
//! rotated to `container.log.1`, `.2`, ... once a file reaches its cap, so
//! a chatty container cannot fill the disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
const HEADER: usize = 13;

#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    pub max_file_bytes: u64,
    /// Rotated files kept besides the current one.
    pub max_rotated: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 10 << 20,
            max_rotated: 2,
        }
    }
}

pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    limits: LogLimits,
}

impl LogWriter {
    pub fn open(path: &Path, limits: LogLimits) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            limits,
        })
    }

    pub fn write(&mut self, stream: u8, data: &[u8], unix_millis: i64) -> io::Result<()> {
        // Split oversized chunks so one record never exceeds a file's cap.
        for chunk in data.chunks((self.limits.max_file_bytes as usize / 2).max(1)) {
            let len = (HEADER + chunk.len()) as u64;
            if self.size > 0 && self.size + len > self.limits.max_file_bytes {
                self.rotate()?;
            }
            let mut rec = Vec::with_capacity(HEADER + chunk.len());
            rec.push(stream);
            rec.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            rec.extend_from_slice(&unix_millis.to_le_bytes());
            rec.extend_from_slice(chunk);
            self.file.write_all(&rec)?;
            self.size += len;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let n = self.limits.max_rotated;
        if n == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = fs::remove_file(rotated(&self.path, n));
        for i in (1..n).rev() {
            let _ = fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1));
        }
        fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub stream: u8,
    pub data: Vec<u8>,
    pub unix_millis: i64,
}

/// Reads every record, oldest first, across rotated files. A torn record at
/// the end (a crash mid-write) is ignored.
pub fn read_all(path: &Path) -> io::Result<Vec<LogEntry>> {
    let mut files: Vec<PathBuf> = (1..=64)
        .map(|i| rotated(path, i))
        .filter(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    let mut out = Vec::new();
    for f in files {
        let mut bytes = Vec::new();
        match File::open(&f) {
            Ok(mut file) => file.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut at = 0;
        while at + HEADER <= bytes.len() {
            let len =
                u32::from_le_bytes(bytes[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
            let millis = i64::from_le_bytes(bytes[at + 5..at + 13].try_into().expect("8 bytes"));
            if at + HEADER + len > bytes.len() {
                break;
            }
            out.push(LogEntry {
                stream: bytes[at],
                data: bytes[at + HEADER..at + HEADER + len].to_vec(),
                unix_millis: millis,
            });
            at += HEADER + len;
        }
    }
    Ok(out)
}

/// What to replay of a log: everything, nothing, or the last N lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    All,
    Lines(usize),
}

impl Tail {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" | "" => Some(Self::All),
            "none" => Some(Self::Lines(0)),
            n => n.parse().ok().map(Self::Lines),
        }
    }
    pub fn as_param(&self) -> String {
        match self {
            Tail::All => "all".into(),
            Tail::Lines(n) => n.to_string(),
        }
    }
}

/// Splits entries into lines (each keeping its newline) and keeps the last
/// `n` when asked to.
pub fn tail(entries: Vec<LogEntry>, tail: Tail) -> Vec<LogEntry> {
    let n = match tail {
        Tail::All => return entries,
        Tail::Lines(n) => n,
    };
    let mut lines = Vec::new();
    for e in entries {
        for piece in e.data.split_inclusive(|b| *b == b'\n') {
            lines.push(LogEntry {
                stream: e.stream,
                data: piece.to_vec(),
                unix_millis: e.unix_millis,
            });
        }
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_rotates_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut w = LogWriter::open(
            &path,
            LogLimits {
                max_file_bytes: 64,
                max_rotated: 2,
            },
        )
        .unwrap();
        for i in 0..20 {
            w.write(
                if i % 2 == 0 { STDOUT } else { STDERR },
                format!("line {i}\n").as_bytes(),
                i,
            )
            .unwrap();
        }
        let all = read_all(&path).unwrap();
        // Only the newest files survive rotation, so the oldest lines are gone.
        assert!(all.len() < 20);
        assert_eq!(all.last().unwrap().data, b"line 19\n");
        let nums: Vec<i64> = all.iter().map(|e| e.unix_millis).collect();
        assert!(nums.windows(2).all(|w| w[0] < w[1]));
        let total: u64 = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 3 * 64);
    }

    #[test]
    fn tail_counts_lines_across_records() {
        let e = |s: &str| LogEntry {
            stream: STDOUT,
            data: s.as_bytes().to_vec(),
            unix_millis: 0,
        };
        let got = tail(vec![e("a\nb\n"), e("c\n"), e("d")], Tail::Lines(2));
        let text: Vec<_> = got
            .iter()
            .map(|e| String::from_utf8_lossy(&e.data).into_owned())
            .collect();
        assert_eq!(text, vec!["c\n", "d"]);
        assert_eq!(tail(vec![e("x\n")], Tail::Lines(0)), vec![]);
        assert_eq!(Tail::parse("5"), Some(Tail::Lines(5)));
        assert_eq!(Tail::parse("x"), None);
    }

    #[test]
    fn torn_record_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut w = LogWriter::open(&path, LogLimits::default()).unwrap();
        w.write(STDOUT, b"whole\n", 1).unwrap();
        drop(w);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[1, 100, 0, 0, 0, 1]).unwrap();
        assert_eq!(read_all(&path).unwrap().len(), 1);
    }
}
