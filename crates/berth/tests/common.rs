//! Shared by the integration tests: a daemon with busybox imported.
#![allow(dead_code)]

use berth_testkit::Daemon;
use std::process::Output;

pub fn daemon() -> Daemon {
    let d = Daemon::start(std::path::Path::new(env!("CARGO_BIN_EXE_berth")));
    d.import_busybox();
    d
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits until `f` holds, up to `secs` seconds.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

pub fn inspect(d: &Daemon, id: &str) -> serde_json::Value {
    let out = d.ok(&["inspect", id]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect gives JSON");
    v[0].clone()
}
