//! A berth cluster for one test: three servers and N agents, each a test
//! host in its own network namespace on one bridge (berth_testkit::netns).
//! The CLI runs in the root namespace, which reaches every host through the
//! bridge. Drop stops the jobs, kills every process and removes the network,
//! also when the test panics (then it prints the tail of every log).
#![allow(dead_code)]

use berth_testkit::netns::{Host, HostProcess, Lab};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SERVER_PORT: u16 = 7070;
pub const AGENT_PORT: u16 = 7071;
/// What `--agent-timeout` the servers get; tests wait this plus slack.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a single CLI call may take; a hung call fails instead of
/// hanging the test.
const CLI_TIMEOUT_SECS: &str = "20";
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

/// A server or agent: its host, its command line and its process.
pub struct Member {
    pub proc: Option<HostProcess>,
    pub host: Host,
    pub args: Vec<String>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub hostname: String,
}

impl Member {
    pub fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = self.host.command(&bin());
        cmd.args(&self.args)
            .env_remove("BERTH_SERVERS")
            .env_remove("BERTH_TOKEN")
            .env("BERTH_LOG", "info,openraft=warn")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.proc = Some(self.host.spawn(cmd).expect("spawning berth"));
    }

    /// SIGKILL to the process and its group (detached shims survive, as
    /// they would on a real machine).
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Command lines of the processes in this host's namespace.
    pub fn cmdlines(&self) -> Vec<String> {
        self.host
            .pids()
            .into_iter()
            .filter_map(|p| fs::read(format!("/proc/{p}/cmdline")).ok())
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .trim_end_matches('\0')
                    .replace('\0', " ")
            })
            .collect()
    }

    /// How many processes here run exactly `cmdline` (e.g. "sleep 1000").
    pub fn count_processes(&self, cmdline: &str) -> usize {
        self.cmdlines().iter().filter(|c| *c == cmdline).count()
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub token: String,
    pub servers: Vec<Member>,
    pub agents: Vec<Member>,
    /// Dropped last: removes the namespaces and the bridge.
    pub lab: Lab,
}

impl Cluster {
    /// Three servers and `agents` agents, waiting until one leader leads
    /// three voters and every agent is ACTIVE.
    pub fn start(agents: usize) -> Cluster {
        let mut c = Cluster::servers_only();
        for _ in 0..agents {
            c.add_agent(&[]);
        }
        c.wait_ready(agents);
        c
    }

    /// Three servers, no agent yet; waits for the leader.
    pub fn servers_only() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("bcl")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let mut lab = Lab::new().expect("lab");
        let token = format!("t{:016x}", rand_u64());
        let mut hosts = Vec::new();
        for i in 1..=3 {
            hosts.push(lab.host(&format!("s{i}")).expect("server host"));
        }
        let join = hosts
            .iter()
            .map(|h| h.addr(SERVER_PORT))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for (i, host) in hosts.into_iter().enumerate() {
            let data_dir = dir.path().join(format!("s{}", i + 1));
            let addr = host.addr(SERVER_PORT);
            let args = vec![
                "server".to_string(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--listen".into(),
                addr.clone(),
                "--advertise".into(),
                addr,
                "--bootstrap-expect".into(),
                "3".into(),
                "--join".into(),
                join.clone(),
                "--token".into(),
                token.clone(),
                "--agent-timeout".into(),
                format!("{}s", AGENT_TIMEOUT.as_secs()),
            ];
            servers.push(Member {
                proc: None,
                log: dir.path().join(format!("s{}.log", i + 1)),
                hostname: format!("s{}", i + 1),
                host,
                args,
                data_dir,
            });
        }
        let mut c = Cluster {
            dir,
            token,
            servers,
            agents: Vec::new(),
            lab,
        };
        for s in &mut c.servers {
            s.start();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = c.members().is_some_and(|m| {
                m.iter().filter(|x| x["role"] == "leader").count() == 1
                    && m.iter().filter(|x| x["voter"] == true).count() == 3
            });
            if ready {
                break;
            }
            // Servers that all died (a bad flag, a crash) will not recover.
            let dead = c.servers.iter_mut().all(|s| !s.is_running());
            assert!(
                !dead && Instant::now() < deadline,
                "no leader of 3 voters (servers exited: {dead}); members: {:?}",
                c.cli(&["server", "members", "--json"])
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    pub fn server_addrs(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.host.addr(SERVER_PORT))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Adds and starts an agent `aN` (rack rN, 4 cpus, 4 GiB) with the
    /// cluster's token and `extra` flags; returns its index in `agents`.
    pub fn add_agent(&mut self, extra: &[&str]) -> usize {
        let token = self.token.clone();
        self.add_agent_with_token(Some(&token), extra)
    }

    /// Like [`Cluster::add_agent`] with another token (None: no --token).
    pub fn add_agent_with_token(&mut self, token: Option<&str>, extra: &[&str]) -> usize {
        let n = self.agents.len() + 1;
        let name = format!("a{n}");
        let host = self.lab.host(&name).expect("agent host");
        let data_dir = self.dir.path().join(&name);
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--servers".into(),
            self.server_addrs(),
            "--listen".into(),
            host.addr(AGENT_PORT),
            "--resources".into(),
            "cpus:4;mem:4096;disk:10000".into(),
            "--attributes".into(),
            format!("rack:r{n};os:linux"),
            "--hostname".into(),
            name.clone(),
        ];
        if let Some(t) = token {
            args.push("--token".into());
            args.push(t.to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut m = Member {
            proc: None,
            log: self.dir.path().join(format!("{name}.log")),
            hostname: name,
            host,
            args,
            data_dir,
        };
        m.start();
        self.agents.push(m);
        self.agents.len() - 1
    }

    /// Waits until `n` nodes are ACTIVE.
    pub fn wait_ready(&self, n: usize) {
        let ok = wait_until(Duration::from_secs(30), || {
            self.nodes()
                .is_some_and(|ns| ns.iter().filter(|x| x["state"] == "ACTIVE").count() == n)
        });
        assert!(
            ok,
            "{n} agents not ACTIVE in 30 s; nodes: {:?}",
            self.cli(&["node", "ls", "--json"])
        );
    }

    /// Runs the CLI from the root namespace against all three servers.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(args, &self.server_addrs(), Some(&self.token))
    }

    /// Runs the CLI with the given servers and token (None: no token).
    pub fn cli_with(&self, args: &[&str], servers: &str, token: Option<&str>) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "KILL", CLI_TIMEOUT_SECS])
            .arg(bin())
            .args(args)
            .env("BERTH_SERVERS", servers)
            .env_remove("BERTH_TOKEN")
            .stdin(Stdio::null());
        if let Some(t) = token {
            cmd.env("BERTH_TOKEN", t);
        }
        cmd.output().expect("running berth")
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

    /// Runs a `--json` command; None if it fails or prints no JSON.
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

    pub fn members(&self) -> Option<Vec<Value>> {
        as_vec(self.try_json(&["server", "members"]))
    }

    /// The member that is leader, as some server reports it.
    pub fn leader(&self) -> Option<Value> {
        self.members()?.into_iter().find(|m| m["role"] == "leader")
    }

    /// Index in `servers` of the server at `address` ("ip:port").
    pub fn server_index(&self, address: &str) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.host.addr(SERVER_PORT) == address)
    }

    pub fn leader_index(&self) -> Option<usize> {
        let l = self.leader()?;
        self.server_index(l["address"].as_str()?)
    }

    pub fn nodes(&self) -> Option<Vec<Value>> {
        as_vec(self.try_json(&["node", "ls"]))
    }

    pub fn tasks(&self) -> Option<Vec<Value>> {
        as_vec(self.try_json(&["task", "ls"]))
    }

    pub fn job_tasks(&self, job: &str) -> Option<Vec<Value>> {
        Some(
            self.tasks()?
                .into_iter()
                .filter(|t| t["job"] == job)
                .collect(),
        )
    }

    /// The job's tasks in `state`.
    pub fn job_tasks_in(&self, job: &str, state: &str) -> Option<Vec<Value>> {
        Some(
            self.job_tasks(job)?
                .into_iter()
                .filter(|t| t["state"] == state)
                .collect(),
        )
    }

    /// Node id -> hostname, from `node ls`.
    pub fn node_names(&self) -> BTreeMap<String, String> {
        self.nodes()
            .unwrap_or_default()
            .iter()
            .filter_map(|n| {
                Some((
                    n["id"].as_str()?.to_string(),
                    n["hostname"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// Writes `toml` to a file and runs `berth job run FILE`.
    pub fn job_run(&self, name: &str, toml: &str) -> Output {
        let file = self.dir.path().join(format!("{name}.toml"));
        fs::write(&file, toml).expect("writing job file");
        self.cli(&["job", "run", file.to_str().expect("utf-8 path")])
    }

    /// A job of `instances` × `sleep 1000` at 0.1 cpus and 32 MiB; panics
    /// if the CLI refuses it.
    pub fn run_sleepers(&self, name: &str, instances: u32, extra: &str) {
        let toml = format!(
            "name = \"{name}\"\ninstances = {instances}\ncommand = \"sleep 1000\"\ncpus = 0.1\nmem = 32\n{extra}\n"
        );
        let out = self.job_run(name, &toml);
        assert!(
            out.status.success(),
            "job run {name} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            stdout(&out),
            stderr(&out)
        );
    }

    /// Waits until the job has exactly `n` RUNNING tasks; returns them.
    pub fn wait_running(&self, job: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let mut last = Vec::new();
        let ok = wait_until(timeout, || match self.job_tasks_in(job, "RUNNING") {
            Some(t) => {
                let done = t.len() == n;
                last = t;
                done
            }
            None => false,
        });
        assert!(
            ok,
            "job {job}: {} RUNNING after {timeout:?}, want {n}; tasks: {:#?}\nstatus: {}",
            last.len(),
            self.job_tasks(job),
            stdout(&self.cli(&["job", "status", job, "--json"]))
        );
        last
    }

    /// Index in `agents` of the agent with node id `node`.
    pub fn agent_of_node(&self, node: &str) -> Option<usize> {
        let names = self.node_names();
        let host = names.get(node)?;
        self.agents.iter().position(|a| &a.hostname == host)
    }

    /// Stops every job and waits a little for their tasks to be killed, so
    /// agents remove their cgroups before being killed.
    fn stop_jobs(&self) {
        let Some(jobs) = as_vec(self.try_json(&["job", "ls"])) else {
            return;
        };
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
            wait_until(Duration::from_secs(5), || {
                self.tasks().is_some_and(|ts| {
                    ts.iter().all(|t| {
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
        for m in self.servers.iter().chain(&self.agents) {
            let text = m.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            eprintln!("----- {} ({}) log tail -----", m.hostname, m.host.ip);
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let live = self.servers.iter_mut().any(|s| s.is_running());
        if live {
            self.stop_jobs();
        }
        for a in &mut self.agents {
            a.kill9();
            a.host.kill_all();
        }
        for s in &mut self.servers {
            s.kill9();
            s.host.kill_all();
        }
        for a in &self.agents {
            remove_agent_cgroups(&a.data_dir);
        }
        // Fields drop next: hosts remove their namespaces, then the lab
        // removes the bridge.
    }
}

/// Removes the task cgroups an agent left behind (tasks orphaned by a kill
/// -9 of their agent). Mirrors berth-agent's naming, `berth-agent/<fnv64
/// of the data dir as given, low 32 bits>`, in every hierarchy.
fn remove_agent_cgroups(data_dir: &std::path::Path) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.to_string_lossy().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let parent = format!("berth-agent/{:08x}", h as u32);
    let Ok(roots) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for root in roots.flatten() {
        let dir = root.path().join(&parent);
        if dir.is_dir() {
            rmdir_tree(&dir);
        }
    }
}

/// Removes a cgroup directory tree, children first; cgroups whose last
/// process just died may be busy for a moment.
fn rmdir_tree(dir: &std::path::Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    for _ in 0..100 {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(16) => std::thread::sleep(Duration::from_millis(20)),
            _ => return,
        }
    }
}

fn as_vec(v: Option<Value>) -> Option<Vec<Value>> {
    match v? {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

fn rand_u64() -> u64 {
    // No rand dependency in berth's dev-dependencies: hash the time and pid.
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
