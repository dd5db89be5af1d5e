//! What this node offers: resources detected from the host.

use berth_types::cluster::Resources;
use std::path::Path;

/// cpus from the available parallelism, mem (MiB) from /proc/meminfo's
/// MemTotal, disk (MiB) from the size of the file system holding
/// `data_dir` (or its nearest existing ancestor). A value that cannot be
/// read is 0.
pub fn detect_resources(data_dir: &Path) -> Resources {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_total_mib(&t))
        .unwrap_or(0);
    Resources::new(cpus as f64, mem, disk_total_mib(data_dir).unwrap_or(0))
}

fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn disk_total_mib(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|p| p.exists())?;
    let st = nix::sys::statvfs::statvfs(existing).ok()?;
    let bytes = (st.blocks() as u64).saturating_mul(st.fragment_size() as u64);
    Some(bytes >> 20)
}

/// This host's name, for registration when none is configured.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        let t = "MemTotal:       16318412 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_mib(t), Some(15935));
        assert_eq!(mem_total_mib("nothing"), None);
    }

    #[test]
    fn detects_something() {
        let r = detect_resources(Path::new("/nonexistent/dir/below"));
        assert!(r.cpus >= 1.0);
        assert!(r.mem > 0);
        assert!(r.disk > 0);
        assert!(!hostname().is_empty());
    }
}
