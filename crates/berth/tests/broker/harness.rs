//! One AMQP broker per test: `berth broker` (the default) or, with
//! `BERTH_BROKER_TEST_PEER=rabbitmq`, a private RabbitMQ node from Debian's
//! rabbitmq-server, so every expectation can be checked against the broker
//! whose behaviour berth copies.
//!
//! Each broker gets free ports and its own temp dir; Drop stops it (by the
//! pid of the process the test started, or for RabbitMQ of its beam.smp
//! found through /proc) and prints its log tail when the test panics.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs an async test body on a fresh tokio runtime, failing after 120 s.
pub fn run<T, F: std::future::Future<Output = T>>(f: F) -> T {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), f)
            .await
            .expect("test body timed out after 120 s")
    })
}

pub fn s(v: &str) -> lapin::types::ShortString {
    v.into()
}

pub fn persistent() -> lapin::BasicProperties {
    lapin::BasicProperties::default().with_delivery_mode(2)
}

/// How long a broker may take to open its port.
const START_TIMEOUT: Duration = Duration::from_secs(40);

pub fn berth_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Berth,
    RabbitMq,
}

/// Which broker the tests run against (`BERTH_BROKER_TEST_PEER`).
pub fn peer() -> Kind {
    match std::env::var("BERTH_BROKER_TEST_PEER").as_deref() {
        Ok("rabbitmq") => Kind::RabbitMq,
        _ => Kind::Berth,
    }
}

/// True (and says so) when the test needs berth but runs against the peer.
pub fn skip_unless_berth(test: &str) -> bool {
    if peer() != Kind::Berth {
        eprintln!("{test}: berth only, skipped against {:?}", peer());
        return true;
    }
    false
}

/// Waits until `f` holds, polling every 50 ms; true if it did in time.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A short random tag for names.
pub fn tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:08x}", h.finish() as u32)
}

/// A free port below the kernel's ephemeral range (32768-60999), so that
/// the outgoing connections of tests running in parallel cannot take it
/// between this check and the broker's bind.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for i in 0..200u32 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(i);
        h.write_u32(std::process::id());
        let p = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    let p = berth_testkit::free_port();
    assert_ne!(p, 0, "no free port");
    p
}

#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// Also listen for AMQPS with a self-signed certificate (see [`Broker::ca`]).
    pub tls: bool,
    /// berth's `--memory-high-watermark` in bytes.
    pub memory_high_watermark: Option<u64>,
    /// berth's `--disk-free-limit` in bytes (RabbitMQ's
    /// `disk_free_limit.absolute`).
    pub disk_free_limit: Option<u64>,
    /// Use this data directory (e.g. a mount point the test made) instead
    /// of `data` in the broker's temp dir. Taken at the first start only;
    /// the caller cleans it up.
    pub data_dir: Option<PathBuf>,
}

/// The test's broker.
pub struct Broker {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub port: u16,
    pub mgmt_port: u16,
    pub tls_port: u16,
    /// RabbitMQ's node name (unused for berth).
    pub node: String,
    opts: Opts,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("bbrk")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let t = tag();
        let mut b = Broker {
            kind: peer(),
            data_dir,
            port: free_port(),
            mgmt_port: free_port(),
            tls_port: if opts.tls { free_port() } else { 0 },
            node: format!("bt{t}@localhost"),
            log: dir.path().join("broker.log"),
            dir,
            opts,
            child: None,
            starts: 0,
        };
        if b.opts.tls {
            b.make_cert();
        }
        b.spawn();
        b
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// amqp URI for guest on vhost `/`.
    pub fn url(&self) -> String {
        self.url_as("guest", "guest", "/")
    }

    pub fn url_as(&self, user: &str, pass: &str, vhost: &str) -> String {
        let vh = vhost.replace('%', "%25").replace('/', "%2f");
        format!("amqp://{user}:{pass}@127.0.0.1:{}/{vh}", self.port)
    }

    /// PEM of the CA that signed the TLS listener's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA and a server certificate for 127.0.0.1/localhost, by openssl.
    fn make_cert(&self) {
        let d = self.dir.path();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .stdin(Stdio::null())
                .output()
                .expect("running openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=berth test ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("writing ext.cnf");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
    }

    /// Starts the broker; a port someone took meanwhile gets a retry with
    /// fresh ports (on the first start only: a restart keeps its ports).
    fn spawn(&mut self) {
        for attempt in 1..=3 {
            let before = fs::read_to_string(&self.log).map(|t| t.len()).unwrap_or(0);
            if self.try_spawn() {
                return;
            }
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            let new = text.get(before..).unwrap_or_default().to_ascii_lowercase();
            let port_taken = ["in use", "could not bind", "eaddrinuse"]
                .iter()
                .any(|n| new.contains(n));
            if !port_taken || attempt == 3 {
                break;
            }
            eprintln!("broker start {attempt}: a port was taken, retrying");
            if self.starts == 1 {
                self.port = free_port();
                self.mgmt_port = free_port();
                if self.opts.tls {
                    self.tls_port = free_port();
                }
            }
            self.starts -= 1;
        }
        panic!(
            "{:?} broker exited at start:\n{}",
            self.kind,
            self.log_tail(60)
        );
    }

    /// One start; false if the process exited before opening its port.
    fn try_spawn(&mut self) -> bool {
        self.starts += 1;
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let _ = writeln!(&file, "===== start {} =====", self.starts);
        let mut cmd = match self.kind {
            Kind::Berth => self.berth_cmd(),
            Kind::RabbitMq => self.rabbit_cmd(),
        };
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {:?}: {e}", self.kind));
        self.child = Some(child);
        let port = self.port;
        let mut exited = None;
        let up = wait_until(START_TIMEOUT, || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                exited = Some(st);
                return true;
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if let Some(st) = exited {
            self.child = None;
            let _ = writeln!(
                &file_for_note(&self.log),
                "===== exited at start: {st} ====="
            );
            return false;
        }
        assert!(
            up,
            "{:?} broker: port {port} not open after {START_TIMEOUT:?}:\n{}",
            self.kind,
            self.log_tail(60)
        );
        if self.opts.tls {
            let tls = self.tls_port;
            let ok = wait_until(START_TIMEOUT, || {
                TcpStream::connect(("127.0.0.1", tls)).is_ok()
            });
            assert!(ok, "TLS port {tls} not open:\n{}", self.log_tail(60));
        }
        if self.kind == Kind::Berth {
            let m = self.mgmt_port;
            let ok = wait_until(START_TIMEOUT, || {
                TcpStream::connect(("127.0.0.1", m)).is_ok()
            });
            assert!(ok, "management port {m} not open:\n{}", self.log_tail(60));
        }
        true
    }

    fn berth_cmd(&self) -> Command {
        let mut cmd = Command::new(berth_bin());
        cmd.arg("broker")
            .args(["--listen", &self.addr()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--management", &format!("127.0.0.1:{}", self.mgmt_port)]);
        if self.opts.tls {
            let d = self.dir.path();
            cmd.args(["--tls-listen", &format!("127.0.0.1:{}", self.tls_port)])
                .arg("--cert")
                .arg(d.join("server.pem"))
                .arg("--key")
                .arg(d.join("server.key"));
        }
        if let Some(w) = self.opts.memory_high_watermark {
            cmd.args(["--memory-high-watermark", &w.to_string()]);
        }
        if let Some(d) = self.opts.disk_free_limit {
            cmd.args(["--disk-free-limit", &d.to_string()]);
        }
        cmd.env("BERTH_LOG", "info").env("NO_COLOR", "1");
        cmd
    }

    fn rabbit_cmd(&self) -> Command {
        let d = self.dir.path();
        let mut conf = format!(
            "listeners.tcp.default = 127.0.0.1:{}\nloopback_users.guest = true\n",
            self.port
        );
        if self.opts.tls {
            conf += &format!(
                "listeners.ssl.default = 127.0.0.1:{}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
                self.tls_port,
                d.join("ca.pem").display(),
                d.join("server.pem").display(),
                d.join("server.key").display()
            );
        }
        if let Some(w) = self.opts.memory_high_watermark {
            conf += &format!("vm_memory_high_watermark.absolute = {w}\n");
        }
        if let Some(d) = self.opts.disk_free_limit {
            conf += &format!("disk_free_limit.absolute = {d}\n");
        }
        fs::write(d.join("rabbitmq.conf"), conf).expect("rabbitmq.conf");
        fs::write(d.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        // The node name is the data dir's identity: a restart must reuse it.
        let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        self.rabbit_env(&mut cmd);
        cmd.env("RABBITMQ_DIST_PORT", free_port().to_string());
        cmd.current_dir(d);
        cmd
    }

    fn rabbit_env(&self, cmd: &mut Command) {
        let d = self.dir.path();
        cmd.env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_MNESIA_BASE", &self.data_dir)
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"));
    }

    /// The pid of the broker process: berth's, or RabbitMQ's beam.smp
    /// (the node whose environment names this test's node).
    pub fn pid(&self) -> Option<i32> {
        let child = self.child.as_ref()?;
        match self.kind {
            Kind::Berth => Some(child.id() as i32),
            Kind::RabbitMq => beam_pid(&self.node),
        }
    }

    /// SIGTERM, then SIGKILL after 20 s; waits for the exit.
    pub fn stop(&mut self) {
        self.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20));
    }

    /// SIGKILL to the broker (a crash); waits for the exit.
    pub fn kill9(&mut self) {
        self.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    }

    fn signal_and_wait(&mut self, sig: nix::sys::signal::Signal, grace: Duration) {
        let pid = self.pid();
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(p) = pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(p) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Graceful stop and start on the same data dir and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Graceful stop and start on the same data dir and ports with other
    /// options (the TLS listener, whose certificate is made at the first
    /// start, cannot be switched on here).
    pub fn restart_with(&mut self, opts: Opts) {
        assert!(
            !opts.tls || self.opts.tls,
            "restart_with cannot add a TLS listener"
        );
        self.stop();
        self.opts = opts;
        self.spawn();
    }

    /// Start again after [`Broker::kill9`] or [`Broker::stop`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "broker still running");
        self.spawn();
    }

    /// The last `n` lines of the broker's output (and RabbitMQ's log files).
    pub fn log_tail(&self, n: usize) -> String {
        let mut text = fs::read_to_string(&self.log).unwrap_or_default();
        if self.kind == Kind::RabbitMq {
            if let Ok(rd) = fs::read_dir(self.dir.path().join("log")) {
                for e in rd.flatten() {
                    text += &format!("----- {} -----\n", e.path().display());
                    text += &fs::read_to_string(e.path()).unwrap_or_default();
                }
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// VmRSS of the broker process in bytes.
    pub fn rss(&self) -> Option<u64> {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: u64 = s
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    // ----- administration: rabbitmqctl for RabbitMQ, the management API for berth

    fn rabbitmqctl(&self, args: &[&str]) {
        let mut cmd = Command::new("timeout");
        cmd.args([
            "-s",
            "KILL",
            "60",
            "/usr/lib/rabbitmq/bin/rabbitmqctl",
            "-n",
        ])
        .arg(&self.node)
        .args(args);
        self.rabbit_env(&mut cmd);
        let out = cmd.stdin(Stdio::null()).output().expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn add_vhost(&self, vhost: &str) {
        match self.kind {
            Kind::RabbitMq => self.rabbitmqctl(&["add_vhost", vhost]),
            Kind::Berth => {
                self.api_ok("PUT", &format!("/api/vhosts/{}", enc(vhost)), "{}");
            }
        }
    }

    pub fn add_user(&self, user: &str, pass: &str, tags: &str) {
        match self.kind {
            Kind::RabbitMq => {
                self.rabbitmqctl(&["add_user", user, pass]);
                if !tags.is_empty() {
                    self.rabbitmqctl(&["set_user_tags", user, tags]);
                }
            }
            Kind::Berth => {
                let body = serde_json::json!({"password": pass, "tags": tags}).to_string();
                self.api_ok("PUT", &format!("/api/users/{}", enc(user)), &body);
            }
        }
    }

    pub fn set_permissions(&self, vhost: &str, user: &str, conf: &str, write: &str, read: &str) {
        match self.kind {
            Kind::RabbitMq => {
                self.rabbitmqctl(&["set_permissions", "-p", vhost, user, conf, write, read])
            }
            Kind::Berth => {
                let body = serde_json::json!({"configure": conf, "write": write, "read": read})
                    .to_string();
                self.api_ok(
                    "PUT",
                    &format!("/api/permissions/{}/{}", enc(vhost), enc(user)),
                    &body,
                );
            }
        }
    }

    /// An HTTP request to berth's management API as guest; (status, body).
    pub fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(self.mgmt_port, method, path, body, "guest", "guest")
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log_tail(30)))
    }

    pub fn api_ok(&self, method: &str, path: &str, body: &str) -> String {
        let (st, text) = self.api(method, path, body);
        assert!(
            (200..300).contains(&st),
            "{method} {path} {body}: HTTP {st}: {text}\n{}",
            self.log_tail(30)
        );
        text
    }

    /// `berth broker ARGS --management URL --user guest --password guest`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "KILL", "30"])
            .arg(berth_bin())
            .arg("broker")
            .args(args)
            .args([
                "--management",
                &format!("http://127.0.0.1:{}", self.mgmt_port),
            ])
            .args(["--user", "guest", "--password", "guest"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd.output().expect("running berth")
    }

    /// [`Broker::cli`], panicking with its output on failure; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let so = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "berth broker {args:?} failed ({:?}):\nstdout: {so}\nstderr: {}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(30)
        );
        so
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {:?} broker log tail ({}) -----\n{}",
                self.kind,
                self.dir.path().display(),
                self.log_tail(60)
            );
        }
        // A test that failed needs no graceful stop; one that passed is
        // done with the broker either way.
        self.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    }
}

fn file_for_note(log: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file")
}

/// Percent-encodes a path segment (`/` is the default vhost).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

/// The beam.smp whose environment has RABBITMQ_NODENAME=`node`.
pub fn beam_pid(node: &str) -> Option<i32> {
    let want = format!("RABBITMQ_NODENAME={node}");
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.starts_with("beam") {
            continue;
        }
        let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// A minimal HTTP/1.1 client (Connection: close, basic auth).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    user: &str,
    pass: &str,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let auth = base64(format!("{user}:{pass}").as_bytes());
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end in {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out += &rest[..n];
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn base64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Runs `python3 tests/broker/SCRIPT ARGS`, killed after `secs`.
pub fn python(script: &str, args: &[String], secs: u32) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/broker")
        .join(script);
    Command::new("timeout")
        .args(["-s", "KILL", &secs.to_string(), "python3"])
        .arg(path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running python3")
}
