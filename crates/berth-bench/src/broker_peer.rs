//! The brokers under test: berth's and a private RabbitMQ, each started
//! alone with its own data directory and ports, found by pid and stopped by
//! pid (never by name: other people run their own RabbitMQ on this machine).

use anyhow::{bail, Context};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker_mem::handshake;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Berth,
    RabbitMq,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Berth => "berth",
            Kind::RabbitMq => "RabbitMQ",
        }
    }
}

/// A running broker. Dropping it stops it.
pub struct Broker {
    pub addr: SocketAddr,
    /// The process whose memory is measured (berth itself, or beam.smp).
    pub pid: u32,
    child: Child,
    /// Set when this broker started an epmd that nobody else uses.
    epmd_before: bool,
    _dir: tempfile::TempDir,
}

/// Raises this process's open-files soft limit to the hard limit; brokers
/// and the idle-connection test inherit it.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
                return soft;
            }
            hard
        }
        Err(_) => 0,
    }
}

/// A port P such that P and P+20000 (RabbitMQ's distribution port) are free.
fn pick_port() -> anyhow::Result<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id();
    for i in 0..200u32 {
        let p = 20000 + ((seed.wrapping_mul(2654435761).wrapping_add(i * 7919)) % 25000) as u16;
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(p) && free(p + 20000) {
            return Ok(p);
        }
    }
    bail!("no free port pair in 20000..65000")
}

fn nonce() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}x{:x}", std::process::id(), n & 0xffff_ffff)
}

/// Waits until a full AMQP handshake (through connection.open-ok) succeeds.
async fn wait_amqp(addr: SocketAddr, child: &mut Child, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), handshake(addr, None)).await
        {
            drop(s);
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("broker exited while starting: {status}");
        }
        if start.elapsed() > limit {
            bail!("broker at {addr} did not accept AMQP within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Broker {
    pub async fn start_berth(berth: &Path) -> anyhow::Result<Broker> {
        let dir = tempfile::tempdir()?;
        let port = pick_port()?;
        let mgmt = pick_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(dir.path().join("berth.log"))?;
        let mut child = Command::new(berth)
            .arg("broker")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--management")
            .arg(format!("127.0.0.1:{mgmt}"))
            .env("RUST_LOG", "warn")
            .env("BERTH_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} broker", berth.display()))?;
        let pid = child.id();
        if let Err(e) = wait_amqp(addr, &mut child, Duration::from_secs(30)).await {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("berth.log")).unwrap_or_default();
            bail!("{e}; its log:\n{}", tail(&log, 20));
        }
        Ok(Broker {
            addr,
            pid,
            child,
            epmd_before: true,
            _dir: dir,
        })
    }

    /// Starts RabbitMQ as Debian's service would run it (the rabbitmq
    /// user, its home), but privately: own node name, ports, data and log
    /// directories, no plugins. The inner script is run directly rather
    /// than /usr/sbin/rabbitmq-server, whose `su` resets the open-files
    /// limit to 1024 (RabbitMQ sizes its socket limit from it at boot).
    pub async fn start_rabbitmq() -> anyhow::Result<Broker> {
        let script = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
        if !script.exists() {
            bail!(
                "{} not found: apt-get install rabbitmq-server",
                script.display()
            );
        }
        let user = nix::unistd::User::from_name("rabbitmq")
            .ok()
            .flatten()
            .context("no rabbitmq user")?;
        let dir = tempfile::Builder::new().prefix("bench-rmq").tempdir()?;
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n")?;
        for p in [dir.path().to_path_buf(), dir.path().join("enabled_plugins")] {
            nix::unistd::chown(&p, Some(user.uid), Some(user.gid))
                .with_context(|| format!("chown {}", p.display()))?;
        }
        let port = pick_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let node = format!("bench{}@localhost", nonce());
        let epmd_before = !epmd_pids().is_empty();
        let d = dir.path();
        let mut child = Command::new(&script)
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", (port + 20000).to_string())
            .env("RABBITMQ_MNESIA_BASE", d)
            .env("RABBITMQ_LOG_BASE", d)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("HOME", &user.dir)
            .env("LOGNAME", "rabbitmq")
            .env("USER", "rabbitmq")
            .current_dir(&user.dir)
            .uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("stdout.log"))?)
            .stderr(std::fs::File::create(d.join("stderr.log"))?)
            .spawn()
            .context("starting rabbitmq-server")?;
        let start = child.id();
        if let Err(e) = wait_amqp(addr, &mut child, Duration::from_secs(90)).await {
            if let Some(pid) = find_beam(start, &node) {
                stop_pid(pid);
            }
            let _ = child.kill();
            let _ = child.wait();
            let out = std::fs::read_to_string(d.join("stdout.log")).unwrap_or_default();
            bail!("{e}; its output:\n{}", tail(&out, 20));
        }
        let Some(pid) = find_beam(start, &node) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("rabbitmq started but no beam.smp with node {node} under pid {start}");
        };
        Ok(Broker {
            addr,
            pid,
            child,
            epmd_before,
            _dir: dir,
        })
    }

    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        stop_pid(self.pid);
        if self.pid != self.child.id() {
            // The wrapper script exits once beam.smp has.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if !self.epmd_before && no_other_beam() {
            // Our node started this epmd and no other Erlang node uses it.
            for pid in epmd_pids() {
                stop_pid(pid);
            }
        }
    }
}

/// SIGTERM, up to 15 s of grace, then SIGKILL.
fn stop_pid(pid: u32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let p = Pid::from_raw(pid as i32);
    if kill(p, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("pid {pid} did not stop on SIGTERM; killing it");
    let _ = kill(p, Signal::SIGKILL);
}

fn is_zombie(pid: u32) -> bool {
    stat_fields(pid)
        .map(|(state, _)| state == 'Z')
        .unwrap_or(true)
}

/// (state, ppid) from /proc/PID/stat.
fn stat_fields(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn exe_name(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| {
            let first = c.split(|b| *b == 0).next()?.to_vec();
            let s = String::from_utf8(first).ok()?;
            Some(s.rsplit('/').next().unwrap_or("").to_string())
        })
        .unwrap_or_default()
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        match stat_fields(pid) {
            Some((_, ppid)) if ppid > 1 => pid = ppid,
            _ => return false,
        }
    }
    false
}

/// The beam.smp under `root` whose environment names `node`.
fn find_beam(root: u32, node: &str) -> Option<u32> {
    let want = format!("RABBITMQ_NODENAME={node}");
    all_pids().into_iter().find(|&pid| {
        exe_name(pid) == "beam.smp"
            && descends_from(pid, root)
            && std::fs::read(format!("/proc/{pid}/environ"))
                .map(|e| e.split(|b| *b == 0).any(|v| v == want.as_bytes()))
                .unwrap_or(false)
    })
}

fn epmd_pids() -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| exe_name(p) == "epmd")
        .collect()
}

fn no_other_beam() -> bool {
    !all_pids()
        .into_iter()
        .any(|p| exe_name(p) == "beam.smp" && !is_zombie(p))
}

pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    use nix::unistd::{sysconf, SysconfVar};
    let tck = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64;
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(close) = s.rfind(')') else {
        return 0.0;
    };
    // Fields after the command: state is field 3, utime 14, stime 15.
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / tck
}
