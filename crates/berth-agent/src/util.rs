//! Small helpers: ids, clocks, durable writes, names.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// A random 128-bit id in hex, for status update uuids.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    hex::encode(b)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Replaces `path` atomically and durably: temp file, fsync, rename, fsync
/// of the directory. Used for what must survive a power loss (the agent id,
/// unacknowledged updates, a task's exit status).
pub fn write_atomic_sync(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// FNV-1a: a stable hash for short name suffixes (not for security).
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A file and cgroup friendly form of a task id: letters, digits, '.',
/// '_' and '-', starting with a letter or digit, at most 100 characters.
/// Ids that had to change get a hash suffix so two ids never collide.
pub fn sanitize_id(id: &str) -> String {
    let mut out: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let bad_start = !out.starts_with(|c: char| c.is_ascii_alphanumeric());
    if out != id || bad_start || out.len() > 100 {
        out.truncate(80);
        if bad_start {
            out.insert(0, 't');
        }
        out = format!("{out}-{:016x}", fnv64(id.as_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_good_ids_and_disambiguates_bad_ones() {
        assert_eq!(sanitize_id("job.1.abc-DEF_9"), "job.1.abc-DEF_9");
        let a = sanitize_id("a/b");
        let b = sanitize_id("a_b");
        assert_ne!(a, b);
        assert!(a.starts_with("a_b-"));
        assert!(sanitize_id("..").starts_with("t..-"));
        assert!(sanitize_id("").starts_with('t'));
        let long = "x".repeat(300);
        assert!(sanitize_id(&long).len() <= 100);
    }

    #[test]
    fn atomic_write() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        write_atomic_sync(&p, b"1").unwrap();
        write_atomic_sync(&p, b"2").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"2");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        assert_eq!(new_uuid().len(), 32);
    }
}
