//! Test helpers shared by berth's integration tests and benchmarks: a
//! busybox rootfs built from Debian's busybox-static, a throwaway daemon
//! with its own data directory, socket and bridge, and a CLI runner.
//!
//! Everything a helper creates is removed when its guard drops, also when
//! a test fails.
#![forbid(unsafe_code)]

pub mod netns;

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Builds a minimal busybox root filesystem in `dir`: the static busybox,
/// a symlink per applet, /etc/passwd and /etc/group with root and nobody.
pub fn busybox_rootfs(dir: &Path) -> io::Result<()> {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "var", "proc", "sys", "dev",
        "www",
    ] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy(BUSYBOX, dir.join("bin/busybox"))?;
    let list = Command::new(BUSYBOX).arg("--list-full").output()?;
    if !list.status.success() {
        return Err(io::Error::other("busybox --list-full failed"));
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let target = dir.join(applet);
        if applet == "bin/busybox" || target.exists() {
            continue;
        }
        let depth = applet.matches('/').count();
        let rel = format!("{}bin/busybox", "../".repeat(depth));
        symlink(rel, &target)?;
    }
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    fs::write(dir.join("www/index.html"), "hello from berth\n")?;
    let mut perms = fs::metadata(dir.join("tmp"))?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o1777);
    fs::set_permissions(dir.join("tmp"), perms)?;
    Ok(())
}

/// Packs a busybox rootfs into a tarball at `out`.
pub fn busybox_tarball(out: &Path) -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    busybox_rootfs(dir.path())?;
    let file = fs::File::create(out)?;
    let mut b = tar::Builder::new(io::BufWriter::new(file));
    b.follow_symlinks(false);
    b.append_dir_all(".", dir.path())?;
    b.into_inner()?;
    Ok(())
}

/// A free TCP port on 127.0.0.1 (racy by nature; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A berth daemon for one test: own data dir, socket and bridge.
pub struct Daemon {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub bridge: String,
    pub cidr: String,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `berth up` and waits until its socket answers.
    pub fn start(bin: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bt")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let n: u8 = rand::random::<u8>() % 200 + 20;
        let tag: u32 = rand::random::<u32>() % 1_000_000;
        let mut d = Daemon {
            bin: bin.to_path_buf(),
            socket: dir.path().join("berth.sock"),
            data_dir: dir.path().join("data"),
            bridge: format!("bt{tag}"),
            cidr: format!("10.{}.{}.1/24", 100 + (tag % 50), n),
            dir,
            child: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("log file");
        let child = Command::new(&self.bin)
            .args(["up", "--data-dir"])
            .arg(&self.data_dir)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--bridge", &self.bridge, "--bridge-cidr", &self.cidr])
            .arg("--no-cluster")
            .arg("--no-broker")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting berth up");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.cli(&["info"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("berth up did not come up; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("BERTH_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .output()
            .expect("running berth")
    }

    /// Runs the CLI and returns stdout, panicking with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI expecting a failure whose stderr contains `needle`;
    /// returns the output for further checks.
    pub fn fails(&self, args: &[&str], needle: &str) -> Output {
        let out = self.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(
            out.status.code(),
            Some(0),
            "berth {args:?} should fail; stderr: {err}"
        );
        assert!(
            err.contains(needle),
            "berth {args:?}: stderr lacks {needle:?}: {err}"
        );
        out
    }

    /// Kills the daemon with SIGKILL (containers keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Imports a busybox image tagged `busybox:latest`.
    pub fn import_busybox(&self) {
        let tarball = self.dir.path().join("busybox.tar");
        if !tarball.exists() {
            busybox_tarball(&tarball).expect("building busybox tarball");
        }
        self.ok(&[
            "image",
            "import",
            tarball.to_str().expect("utf-8 path"),
            "--tag",
            "busybox",
        ]);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Remove every container (this stops them and their shims), then
        // stop the daemon, then remove the bridge and its rules.
        if self.child.is_some() {
            let ids = self.cli(&["ps", "-aq", "--no-trunc"]);
            for id in String::from_utf8_lossy(&ids.stdout).lines() {
                let _ = self.cli(&["rm", "-f", id]);
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(&self.bin)
            .args(["__bridge-down", &self.bridge, &self.cidr])
            .status();
    }
}
