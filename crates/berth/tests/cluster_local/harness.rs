//! A one-host berth cluster for one test: a server on 127.0.0.1 and agents
//! in the root namespace, each with its own data directory, driven through
//! the real binary and `BERTH_SERVERS`/`BERTH_TOKEN`.
//!
//! Drop stops the jobs (so agents kill their tasks and remove the cgroups),
//! stops every process the test started, then kills by pid whatever is
//! left in the agents' task cgroups and their task shims, also when the
//! test panics (then it prints the tail of every log).
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Longest a single CLI call may take: a hung call fails the test instead
/// of hanging it.
const CLI_TIMEOUT_SECS: &str = "20";
/// What `--agent-timeout` the server gets.
pub const AGENT_TIMEOUT: &str = "3s";
/// Linux errno for a cgroup that still has (dying) members.
const EBUSY: i32 = 16;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth"))
}

/// Waits until `f` holds, polling every 200 ms; true if it did in time.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A token of 32 hex characters, different in every test.
pub fn random_token() -> String {
    format!("{:016x}{:016x}", rand_u64(), rand_u64())
}

/// A short random tag for markers and names.
pub fn tag() -> String {
    format!("{:08x}", rand_u64() as u32)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A process this test started, with its log file.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// None while it runs, its exit code (or -signal) once it exited.
    pub fn exit_code(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => Some(st.code().unwrap_or_else(|| {
                -std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)
            })),
            _ => None,
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_code().is_none()
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Ok(None) = c.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
        }
        let _ = c.wait();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn dump_tail(&self, lines: usize) {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        eprintln!("----- {} log tail -----", self.name);
        for l in &all[all.len().saturating_sub(lines)..] {
            eprintln!("{l}");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

pub struct Agent {
    pub proc: Proc,
    pub hostname: String,
    pub data_dir: PathBuf,
}

/// A server on 127.0.0.1 and its agents.
pub struct Local {
    pub dir: tempfile::TempDir,
    pub token: String,
    pub port: u16,
    pub server: Option<Proc>,
    pub agents: Vec<Agent>,
    /// Other processes (an example framework) stopped before the agents.
    pub others: Vec<Proc>,
}

impl Local {
    /// A server with no agent yet; waits until it leads.
    pub fn server() -> Local {
        let dir = tempfile::Builder::new()
            .prefix("bcloc")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let port = berth_testkit::free_port();
        assert_ne!(port, 0, "no free port");
        let token = random_token();
        let mut cmd = Command::new(bin());
        cmd.arg("server")
            .arg("--data-dir")
            .arg(dir.path().join("server"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--token", &token])
            .args(["--agent-timeout", AGENT_TIMEOUT]);
        quiet_env(&mut cmd);
        let log = dir.path().join("server.log");
        let mut l = Local {
            server: Some(Proc::spawn("server", cmd, log)),
            dir,
            token,
            port,
            agents: Vec::new(),
            others: Vec::new(),
        };
        let ok = wait_until(Duration::from_secs(20), || {
            let alive = l.server.as_mut().is_some_and(|s| s.is_running());
            assert!(alive, "server exited:\n{}", l.server_log());
            l.try_json(&["server", "members"]).is_some_and(|m| {
                m.as_array()
                    .is_some_and(|a| a.iter().any(|x| x["role"] == "leader"))
            })
        });
        assert!(ok, "server did not lead in 20 s:\n{}", l.server_log());
        l
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn server_log(&self) -> String {
        self.server
            .as_ref()
            .map(|s| s.log_text())
            .unwrap_or_default()
    }

    /// Starts `berth agent` with `--hostname host`; does not wait.
    pub fn spawn_agent(
        &mut self,
        host: &str,
        resources: &str,
        attributes: &str,
        token: &str,
    ) -> usize {
        let data_dir = self.dir.path().join(format!("agent-{host}"));
        let mut cmd = Command::new(bin());
        cmd.arg("agent")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--servers", &self.addr()])
            .args(["--token", token])
            .args(["--resources", resources])
            .args(["--attributes", attributes])
            .args(["--hostname", host]);
        quiet_env(&mut cmd);
        let log = self.dir.path().join(format!("agent-{host}.log"));
        self.agents.push(Agent {
            proc: Proc::spawn(&format!("agent {host}"), cmd, log),
            hostname: host.to_string(),
            data_dir,
        });
        self.agents.len() - 1
    }

    /// Starts an agent and waits until its node is ACTIVE.
    pub fn add_agent(&mut self, host: &str, resources: &str, attributes: &str) -> usize {
        let token = self.token.clone();
        let i = self.spawn_agent(host, resources, attributes, &token);
        let ok = wait_until(Duration::from_secs(20), || {
            let alive = self.agents[i].proc.is_running();
            assert!(
                alive,
                "agent {host} exited:\n{}",
                self.agents[i].proc.log_text()
            );
            self.node(host).is_some_and(|n| n["state"] == "ACTIVE")
        });
        assert!(
            ok,
            "agent {host} not ACTIVE in 20 s; nodes: {:?}\nlog:\n{}",
            self.try_json(&["node", "ls"]),
            self.agents[i].proc.log_text()
        );
        i
    }

    /// Runs the CLI with this cluster's address and token.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_token(args, Some(&self.token))
    }

    /// Runs the CLI with another token (None: none at all).
    pub fn cli_with_token(&self, args: &[&str], token: Option<&str>) -> Output {
        cli_env(args, &self.addr(), token)
    }

    /// Runs the CLI, panicking with its output on failure; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// Runs a command with `--json`; None if it fails or prints no JSON.
    pub fn try_json(&self, args: &[&str]) -> Option<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli(&a);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("berth {a:?}: not JSON ({e}): {out}"))
    }

    pub fn nodes(&self) -> Vec<Value> {
        as_vec(self.try_json(&["node", "ls"]))
    }

    pub fn node(&self, host: &str) -> Option<Value> {
        self.nodes().into_iter().find(|n| n["hostname"] == host)
    }

    /// Node id -> host name.
    pub fn node_names(&self) -> BTreeMap<String, String> {
        self.nodes()
            .iter()
            .filter_map(|n| {
                Some((
                    n["id"].as_str()?.to_string(),
                    n["hostname"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// The job's tasks (via `task ls --job`).
    pub fn tasks(&self, job: &str) -> Vec<Value> {
        as_vec(self.try_json(&["task", "ls", "--job", job]))
    }

    pub fn all_tasks(&self) -> Vec<Value> {
        as_vec(self.try_json(&["task", "ls"]))
    }

    /// The job's tasks in `state`.
    pub fn tasks_in(&self, job: &str, state: &str) -> Vec<Value> {
        self.tasks(job)
            .into_iter()
            .filter(|t| t["state"] == state)
            .collect()
    }

    /// Task counts by state for the job.
    pub fn states(&self, job: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for t in self.tasks(job) {
            if let Some(s) = t["state"].as_str() {
                *m.entry(s.to_string()).or_default() += 1;
            }
        }
        m
    }

    pub fn job(&self, name: &str) -> Option<Value> {
        self.try_json(&["job", "status", name])
    }

    /// Writes `toml` to NAME.toml in the test's directory.
    pub fn job_file(&self, name: &str, toml: &str) -> PathBuf {
        let file = self.dir.path().join(format!("{name}.toml"));
        fs::write(&file, toml).expect("writing job file");
        file
    }

    /// `berth job run` of `toml`; returns the output.
    pub fn job_run(&self, name: &str, toml: &str) -> Output {
        let file = self.job_file(name, toml);
        self.cli(&["job", "run", file.to_str().expect("utf-8 path")])
    }

    /// `berth job run`, panicking if the CLI refuses it.
    pub fn submit(&self, name: &str, toml: &str) {
        let out = self.job_run(name, toml);
        assert!(
            out.status.success(),
            "job run {name} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            stdout(&out),
            stderr(&out)
        );
    }

    /// Waits until the job's task counts satisfy `pred`; panics with the
    /// tasks and the job's status otherwise. Returns the last counts.
    pub fn wait_states(
        &self,
        job: &str,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&BTreeMap<String, usize>) -> bool,
    ) -> BTreeMap<String, usize> {
        let mut last = BTreeMap::new();
        let ok = wait_until(timeout, || {
            last = self.states(job);
            pred(&last)
        });
        assert!(
            ok,
            "job {job}: not {what} after {timeout:?}: {last:?}\ntasks: {:#?}\nstatus: {:?}",
            self.tasks(job),
            self.job(job)
        );
        last
    }

    /// Stops every job that still runs and waits for its tasks to end, so
    /// agents kill them and remove their cgroups themselves.
    pub fn stop_jobs(&self) {
        let jobs = as_vec(self.try_json(&["job", "ls"]));
        let mut stopped = false;
        for j in jobs {
            let Some(name) = j["spec"]["name"].as_str() else {
                continue;
            };
            if j["status"] == "running" || j["status"] == "pending" {
                let _ = self.cli(&["job", "stop", name]);
                stopped = true;
            }
        }
        if stopped {
            wait_until(Duration::from_secs(8), || {
                self.try_json(&["task", "ls"]).is_some_and(|v| {
                    as_vec(Some(v)).iter().all(|t| {
                        !matches!(
                            t["state"].as_str(),
                            Some("STAGING" | "STARTING" | "RUNNING")
                        )
                    })
                })
            });
        }
    }

    fn dump_logs(&self) {
        for p in self
            .server
            .iter()
            .chain(self.agents.iter().map(|a| &a.proc))
            .chain(&self.others)
        {
            p.dump_tail(40);
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for p in &mut self.others {
            p.stop(Duration::from_secs(3));
        }
        let server_up = self.server.as_mut().is_some_and(|s| s.is_running());
        if server_up {
            self.stop_jobs();
        }
        for a in &mut self.agents {
            a.proc.stop(Duration::from_secs(5));
        }
        if let Some(s) = &mut self.server {
            s.stop(Duration::from_secs(5));
        }
        for a in &self.agents {
            reap_agent_leftovers(&a.data_dir);
        }
    }
}

/// Environment for a server or agent: no inherited cluster settings, plain
/// logs.
pub fn quiet_env(cmd: &mut Command) {
    cmd.env_remove("BERTH_SERVERS")
        .env_remove("BERTH_TOKEN")
        .env("BERTH_LOG", "info,openraft=warn")
        .env("NO_COLOR", "1");
}

/// Runs the CLI against `servers` with `token` (None: no token at all),
/// killed if it takes longer than [`CLI_TIMEOUT_SECS`].
pub fn cli_env(args: &[&str], servers: &str, token: Option<&str>) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", CLI_TIMEOUT_SECS])
        .arg(bin())
        .args(args)
        .env("BERTH_SERVERS", servers)
        .env_remove("BERTH_TOKEN")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.env("BERTH_TOKEN", t);
    }
    cmd.output().expect("running berth")
}

pub fn as_vec(v: Option<Value>) -> Vec<Value> {
    match v {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// The agent's task cgroup parent, as berth-agent names it:
/// `berth-agent/<low 32 bits of fnv64 of the data dir as given>`.
pub fn agent_cgroup_parent(data_dir: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.to_string_lossy().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("berth-agent/{:08x}", h as u32)
}

/// Whatever an agent left behind when it stopped with tasks running (a
/// failed test, or a kill): SIGKILL to each process in its task cgroups
/// and to its task shims (by the pid in shim.json, if that process is
/// still a `__task-shim`), then removal of the cgroups.
pub fn reap_agent_leftovers(data_dir: &Path) {
    let parent = agent_cgroup_parent(data_dir);
    let mut dirs = Vec::new();
    if let Ok(roots) = fs::read_dir("/sys/fs/cgroup") {
        for root in roots.flatten() {
            let d = root.path().join(&parent);
            if d.is_dir() {
                dirs.push(d);
            }
        }
    }
    for d in &dirs {
        kill_tree(d);
    }
    if let Ok(tasks) = fs::read_dir(data_dir.join("tasks")) {
        for t in tasks.flatten() {
            let Ok(bytes) = fs::read(t.path().join("shim.json")) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            let Some(pid) = v["pid"].as_i64() else {
                continue;
            };
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("__task-shim") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    for d in &dirs {
        rmdir_tree(d);
    }
}

/// SIGKILL to every process listed in the cgroup tree.
fn kill_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                kill_tree(&e.path());
            }
        }
    }
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Removes a cgroup directory tree, children first; cgroups whose last
/// process just died may be busy for a moment.
pub fn rmdir_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    for _ in 0..100 {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(EBUSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => return,
        }
    }
}

/// Processes whose command line contains `needle` (like `pgrep -f`),
/// excluding this test process.
pub fn pgrep(needle: &str) -> Vec<i32> {
    let out = Command::new("pgrep")
        .args(["-f", needle])
        .output()
        .expect("running pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|p: &i32| *p != std::process::id() as i32)
        .collect()
}
