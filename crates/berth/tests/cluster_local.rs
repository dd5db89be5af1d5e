//! Single-host cluster tests: `berth server` on 127.0.0.1 and one or two
//! `berth agent`s in the root namespace, and `berth up` with its embedded
//! cluster, all driven through the CLI with BERTH_SERVERS/BERTH_TOKEN.
//! Each test has its own directories, ports and token; its guard stops the
//! jobs and every process it started, also when the test fails.

#[path = "cluster_local/harness.rs"]
mod harness;

use harness::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A job of `instances` × a `sleep 1000` that carries `marker` in its
/// command line (the shell stays, so `pgrep -f marker` finds the task).
fn sleeper(name: &str, instances: u32, marker: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\ninstances = {instances}\ncommand = \"sleep 1000; : {marker}\"\ncpus = 0.5\nmem = 64\n{extra}\n"
    )
}

fn running(l: &Local, job: &str) -> usize {
    l.tasks_in(job, "RUNNING").len()
}

fn one_line(s: &str) -> bool {
    s.trim().lines().count() == 1
}

/// The example from the Dominant Resource Fairness paper (Ghodsi et al.,
/// 2011) up to the first launches: a server, role a's job of tasks of
/// <1 cpu, 4 GiB> and role b's of <3 cpus, 1 GiB>, both batch frameworks
/// subscribed, `pause`, then one agent of 9 cpus and 18 GiB; returns once
/// 5 tasks run (all that fit: DRF gives a 3 and b 2, dominant shares 2/3).
fn drf_setup(mark: &str, pause: Duration) -> Local {
    let mut l = Local::server();
    l.submit(
        "drf-a",
        &format!(
            "name = \"drf-a\"\nrole = \"a\"\ninstances = 10\ncommand = \"sleep 1000; : {mark}\"\ncpus = 1\nmem = 4096\n"
        ),
    );
    l.submit(
        "drf-b",
        &format!(
            "name = \"drf-b\"\nrole = \"b\"\ninstances = 10\ncommand = \"sleep 1000; : {mark}\"\ncpus = 3\nmem = 1024\n"
        ),
    );
    // Both roles' batch frameworks subscribe before any resources exist,
    // so neither gets a head start.
    let mut fws = Vec::new();
    let subscribed = wait_until(Duration::from_secs(15), || {
        fws = as_vec(l.try_json(&["framework", "ls"]));
        [("berth-batch-a", "a"), ("berth-batch-b", "b")]
            .iter()
            .all(|(id, role)| {
                fws.iter()
                    .any(|f| f["id"] == *id && f["connected"] == true && f["role"] == *role)
            })
    });
    assert!(subscribed, "batch frameworks not subscribed: {fws:#?}");
    std::thread::sleep(pause);

    l.add_agent("drf", "cpus:9;mem:18432;disk:1000", "rack:r1");
    let ok = wait_until(Duration::from_secs(20), || {
        running(&l, "drf-a") + running(&l, "drf-b") >= 5
    });
    assert!(
        ok,
        "5 tasks not RUNNING: a {:?} b {:?}",
        l.states("drf-a"),
        l.states("drf-b")
    );
    l
}

#[test]
fn drf_paper_example() {
    let mark = format!("drf-{}", tag());
    // A batch framework declines every offer for its first second
    // (berth_frameworks::batch::RECONCILE_GRACE_MS) with a filter as long
    // as the rest of that second, so an agent arriving then goes wholly to
    // the other role (see drf_agent_arriving_during_reconcile_grace).
    // The agent comes after the grace.
    let l = drf_setup(&mark, Duration::from_millis(1500));
    // Stays so: nothing else fits (0 cpus left), nothing is preempted.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let (a, b) = (running(&l, "drf-a"), running(&l, "drf-b"));
        assert_eq!(
            (a, b),
            (3, 2),
            "DRF split: a {:?} b {:?}",
            l.states("drf-a"),
            l.states("drf-b")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let node = l.node("drf").expect("node drf");
    assert_eq!(node["tasks"], 5, "{node}");
    assert_eq!(node["free"]["cpus"].as_f64(), Some(0.0), "{node}");
    assert_eq!(node["free"]["mem"], 18432 - 3 * 4096 - 2 * 1024, "{node}");
    // Tasks of each role are accounted to that role's framework.
    let fws = as_vec(l.try_json(&["framework", "ls"]));
    for (id, n) in [("berth-batch-a", 3), ("berth-batch-b", 2)] {
        let f = fws.iter().find(|f| f["id"] == id).expect("framework");
        assert_eq!(f["tasks"], n, "{f}");
    }

    // The 7 waiting instances of a say why.
    let mut note = String::new();
    let noted = wait_until(Duration::from_secs(10), || {
        note = l
            .job("drf-a")
            .and_then(|j| j["placement"].as_str().map(str::to_string))
            .unwrap_or_default();
        note.contains("cpus") || note.contains("mem")
    });
    assert!(noted, "no placement note naming cpus or mem: {note:?}");
    let text = l.ok(&["job", "status", "drf-a"]);
    assert!(text.contains("placement:"), "{text}");
    assert_eq!(pgrep(&mark).len(), 5, "task processes on the host");
}

#[test]
fn job_lifecycle_finished_failed_killed() {
    let mut l = Local::server();
    l.add_agent("lc", "cpus:4;mem:4096;disk:1000", "rack:r1");
    let mark = format!("stopme-{}", tag());
    l.submit(
        "hi",
        "name = \"hi\"\ninstances = 3\ncommand = \"echo hi; sleep 1\"\ncpus = 0.1\nmem = 32\n",
    );
    l.submit(
        "fail",
        "name = \"fail\"\ncommand = \"exit 3\"\nmax_retries = 1\ncpus = 0.1\nmem = 32\n",
    );
    l.submit("stopme", &sleeper("stopme", 1, &mark, ""));

    l.wait_states("hi", Duration::from_secs(30), "3 FINISHED", |s| {
        s.get("FINISHED") == Some(&3)
    });
    let jobs = as_vec(l.try_json(&["job", "ls"]));
    let hi = jobs
        .iter()
        .find(|j| j["spec"]["name"] == "hi")
        .expect("job hi listed");
    assert_eq!(hi["status"], "finished", "{hi}");
    assert_eq!(hi["tasks"]["FINISHED"], 3, "{hi}");
    let table = l.ok(&["job", "ls"]);
    assert!(
        table
            .lines()
            .any(|r| r.starts_with("hi ") && r.contains("finished")),
        "{table}"
    );

    // exit 3, launched once more (max_retries 1), then the job has failed.
    l.wait_states("fail", Duration::from_secs(30), "2 FAILED", |s| {
        s.get("FAILED") == Some(&2)
    });
    let ok = wait_until(Duration::from_secs(10), || {
        l.job("fail").is_some_and(|j| j["status"] == "failed")
    });
    assert!(ok, "job fail: {:?}", l.job("fail"));
    std::thread::sleep(Duration::from_millis(1500));
    let tasks = l.tasks("fail");
    assert_eq!(tasks.len(), 2, "attempts: {tasks:#?}");
    for t in &tasks {
        assert_eq!(t["state"], "FAILED", "{t}");
        assert_eq!(t["exit_code"], 3, "{t}");
    }

    // Stop kills the task and its process on the host.
    l.wait_states("stopme", Duration::from_secs(20), "RUNNING", |s| {
        s.get("RUNNING") == Some(&1)
    });
    assert!(!pgrep(&mark).is_empty(), "task process {mark} not found");
    let out = l.ok(&["job", "stop", "stopme"]);
    assert!(out.contains("stopme"), "{out}");
    l.wait_states("stopme", Duration::from_secs(15), "KILLED", |s| {
        s.get("KILLED") == Some(&1) && s.len() == 1
    });
    let gone = wait_until(Duration::from_secs(10), || pgrep(&mark).is_empty());
    assert!(gone, "task process still there: {:?}", pgrep(&mark));
    let stopped = l.job("stopme").expect("job stopme");
    assert_eq!(stopped["status"], "stopped", "{stopped}");

    // The JSON view of tasks, for scripts.
    let node_id = l.node("lc").expect("node lc")["id"].clone();
    let all = l.all_tasks();
    assert_eq!(all.len(), 3 + 2 + 1, "{all:#?}");
    for t in &all {
        for key in ["id", "job", "role", "node", "state"] {
            assert!(t[key].is_string(), "task lacks {key}: {t}");
        }
        assert_eq!(t["role"], "*", "{t}");
        assert_eq!(t["node"], node_id, "{t}");
    }
    let ids: BTreeSet<&str> = all.iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids.len(), all.len(), "task ids repeat: {ids:?}");
}

#[test]
fn constraints_unique_hostname_and_equal_rack() {
    let mut l = Local::server();
    l.add_agent("h1", "cpus:4;mem:4096;disk:1000", "rack:r1");
    l.add_agent("h2", "cpus:4;mem:4096;disk:1000", "rack:r2");
    let mark = format!("cons-{}", tag());
    l.submit(
        "uniq",
        &sleeper(
            "uniq",
            3,
            &mark,
            "constraints = [[\"hostname\", \"unique\"]]",
        ),
    );
    l.submit(
        "onr2",
        &sleeper(
            "onr2",
            2,
            &mark,
            "constraints = [[\"rack\", \"equal\", \"r2\"]]",
        ),
    );

    l.wait_states("uniq", Duration::from_secs(20), "2 RUNNING", |s| {
        s.get("RUNNING") == Some(&2)
    });
    l.wait_states("onr2", Duration::from_secs(20), "2 RUNNING", |s| {
        s.get("RUNNING") == Some(&2)
    });
    let names = l.node_names();
    let uniq_hosts: BTreeSet<String> = l
        .tasks_in("uniq", "RUNNING")
        .iter()
        .filter_map(|t| names.get(t["node"].as_str()?).cloned())
        .collect();
    assert_eq!(
        uniq_hosts,
        BTreeSet::from(["h1".to_string(), "h2".to_string()]),
        "unique hostname"
    );
    for t in l.tasks_in("onr2", "RUNNING") {
        let host = names.get(t["node"].as_str().unwrap_or_default());
        assert_eq!(host.map(String::as_str), Some("h2"), "rack r2: {t}");
    }
    // The third instance waits, and says why.
    let mut note = String::new();
    let noted = wait_until(Duration::from_secs(10), || {
        note = l
            .job("uniq")
            .and_then(|j| j["placement"].as_str().map(str::to_string))
            .unwrap_or_default();
        note.contains("unique")
    });
    assert!(noted, "placement note lacks 'unique': {note:?}");
    assert_eq!(
        l.states("uniq").get("RUNNING"),
        Some(&2),
        "{:?}",
        l.tasks("uniq")
    );
    assert_eq!(pgrep(&mark).len(), 4);
}

#[test]
fn drain_moves_tasks_to_the_other_node() {
    let mut l = Local::server();
    l.add_agent("h1", "cpus:4;mem:4096;disk:1000", "rack:r1");
    let mark = format!("drain-{}", tag());
    l.submit("drainme", &sleeper("drainme", 2, &mark, ""));
    l.wait_states("drainme", Duration::from_secs(20), "2 RUNNING", |s| {
        s.get("RUNNING") == Some(&2)
    });
    let h1 = l.node("h1").expect("node h1")["id"]
        .as_str()
        .expect("node id")
        .to_string();
    let first: BTreeSet<String> = l
        .tasks_in("drainme", "RUNNING")
        .iter()
        .map(|t| {
            assert_eq!(t["node"], h1.as_str(), "{t}");
            t["id"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    l.add_agent("h2", "cpus:4;mem:4096;disk:1000", "rack:r2");
    let h2 = l.node("h2").expect("node h2")["id"]
        .as_str()
        .expect("node id")
        .to_string();

    let out = l.ok(&["node", "drain", "h1"]);
    assert!(out.contains("draining"), "{out}");
    let moved = wait_until(Duration::from_secs(25), || {
        let tasks = l.tasks("drainme");
        let killed = tasks
            .iter()
            .filter(|t| {
                t["state"] == "KILLED" && first.contains(t["id"].as_str().unwrap_or_default())
            })
            .count();
        let on_h2 = tasks
            .iter()
            .filter(|t| t["state"] == "RUNNING" && t["node"] == h2.as_str())
            .count();
        killed == 2 && on_h2 == 2
    });
    assert!(moved, "not moved to h2: {:#?}", l.tasks("drainme"));
    for t in l.tasks("drainme") {
        if first.contains(t["id"].as_str().unwrap_or_default()) {
            assert_eq!(t["reason"], "drained", "{t}");
        }
    }
    let n1 = l.node("h1").expect("node h1");
    assert_eq!(n1["state"], "DRAINING", "{n1}");
    assert_eq!(n1["tasks"], 0, "{n1}");
    let table = l.ok(&["node", "ls"]);
    assert!(
        table
            .lines()
            .any(|r| r.contains(" h1 ") && r.contains("DRAINING")),
        "{table}"
    );
    assert_eq!(pgrep(&mark).len(), 2, "the drained processes are gone");

    l.ok(&["node", "activate", "h1"]);
    let active = wait_until(Duration::from_secs(5), || {
        l.node("h1").is_some_and(|n| n["state"] == "ACTIVE")
    });
    assert!(active, "{:?}", l.node("h1"));
}

#[test]
fn bad_input_is_refused_with_one_line() {
    let mut l = Local::server();
    let cases = [
        (
            "unknown",
            "name = \"bad\"\ncommand = \"true\"\nbogus = 1\n",
            vec![":3:", "bogus"],
        ),
        ("nocommand", "name = \"bad\"\ncpus = 1\n", vec!["command"]),
        (
            "badconstraint",
            "name = \"bad\"\ncommand = \"true\"\nconstraints = [[\"rack\", \"near\"]]\n",
            vec!["constraint"],
        ),
    ];
    for (file, toml, needles) in cases {
        let path = l.job_file(file, toml);
        let out = l.cli(&["job", "run", path.to_str().expect("utf-8 path")]);
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{file}: accepted");
        assert!(one_line(&err), "{file}: not one line: {err}");
        assert!(
            err.contains(&path.display().to_string()),
            "{file}: file not named: {err}"
        );
        for n in needles {
            assert!(err.contains(n), "{file}: lacks {n:?}: {err}");
        }
    }
    assert!(
        as_vec(l.try_json(&["job", "ls"])).is_empty(),
        "a bad job was submitted"
    );

    let out = l.cli(&["job", "status", "nope"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("job nope not found"), "{:?}", out);
    assert!(one_line(&stderr(&out)), "{}", stderr(&out));

    let wrong = "wrong-token-0123456789abcdef";
    for args in [&["job", "ls"][..], &["node", "ls"][..]] {
        let out = l.cli_with_token(args, Some(wrong));
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{args:?} with a wrong token");
        assert!(one_line(&err), "{err}");
        assert!(err.contains("token"), "{err}");
        assert!(!err.contains(wrong), "token echoed: {err}");
    }
    let out = l.cli_with_token(&["job", "ls"], None);
    assert_ne!(out.status.code(), Some(0), "no token accepted");
    assert!(stderr(&out).contains("token"), "{}", stderr(&out));

    // An agent with a wrong token gives up instead of retrying for ever.
    let i = l.spawn_agent("intruder", "cpus:1;mem:512;disk:100", "", wrong);
    let mut code = None;
    let exited = wait_until(Duration::from_secs(15), || {
        code = l.agents[i].proc.exit_code();
        code.is_some()
    });
    assert!(
        exited,
        "agent with a wrong token still runs:\n{}",
        l.agents[i].proc.log_text()
    );
    assert_ne!(code, Some(0), "{}", l.agents[i].proc.log_text());
    assert!(l.nodes().is_empty(), "node registered: {:?}", l.nodes());
    assert!(l.try_json(&["node", "ls"]).is_some());
}

#[test]
fn example_framework_runs_three_tasks() {
    let mut l = Local::server();
    l.add_agent("fw", "cpus:2;mem:2048;disk:1000", "rack:r1");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/framework.py");
    let name = format!("ex{}", tag());
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .args(["--server", &l.addr()])
        .args(["--token", &l.token])
        .args(["--name", &name])
        .args(["--tasks", "3", "--cmd", "true"]);
    // A server with a token speaks HTTPS under the cluster CA, which it
    // writes to DATA/ca.pem; the example must be told to trust it.
    let ca = l.dir.path().join("server").join("ca.pem");
    if ca.exists() {
        let help = Command::new("python3")
            .arg(&script)
            .arg("--help")
            .output()
            .expect("running framework.py --help");
        let help = stdout(&help);
        let flag = ["--cacert", "--ca-file", "--ca-cert", "--ca"]
            .into_iter()
            .find(|f| {
                help.split_whitespace()
                    .any(|w| w.trim_end_matches(',') == *f)
            });
        let Some(flag) = flag else {
            panic!(
                "the server speaks HTTPS only ({} exists) but examples/framework.py has no \
                 option for the cluster CA and speaks plain HTTP; its --help:\n{help}",
                ca.display()
            );
        };
        cmd.arg(flag).arg(&ca);
    }
    quiet_env(&mut cmd);
    let log = l.dir.path().join("framework.log");
    l.others.push(Proc::spawn("framework.py", cmd, log));
    let mut code = None;
    let done = wait_until(Duration::from_secs(60), || {
        code = l.others[0].exit_code();
        code.is_some()
    });
    assert!(
        done,
        "framework.py still runs after 60 s:\n{}",
        l.others[0].log_text()
    );
    assert_eq!(code, Some(0), "framework.py:\n{}", l.others[0].log_text());
    let tasks: Vec<Value> = l
        .all_tasks()
        .into_iter()
        .filter(|t| t["job"].is_null())
        .collect();
    let finished = tasks.iter().filter(|t| t["state"] == "FINISHED").count();
    assert_eq!(finished, 3, "{tasks:#?}");
    assert!(
        tasks
            .iter()
            .all(|t| t["id"].as_str().is_some_and(|id| id.starts_with(&name))),
        "{tasks:#?}"
    );
}

/// `berth up` with its embedded server and agent, on its own bridge.
struct Up {
    dir: tempfile::TempDir,
    data: PathBuf,
    socket: PathBuf,
    bridge: String,
    cidr: String,
    port: u16,
    broker_port: u16,
    proc: Option<Proc>,
    token: String,
}

impl Up {
    fn start() -> Up {
        let dir = tempfile::Builder::new()
            .prefix("bcup")
            .tempdir_in("/tmp")
            .expect("temp dir");
        // As berth-testkit's Daemon picks them: unlikely to collide with
        // other tests' bridges.
        let seed = u32::from_str_radix(&tag(), 16).unwrap_or(0);
        let n = (seed >> 20) % 200 + 20;
        let t = seed % 1_000_000;
        let mut up = Up {
            data: dir.path().join("data"),
            socket: dir.path().join("berth.sock"),
            bridge: format!("bc{t}"),
            cidr: format!("10.{}.{}.1/24", 100 + (t % 50), n),
            port: berth_testkit::free_port(),
            broker_port: berth_testkit::free_port(),
            proc: None,
            token: String::new(),
            dir,
        };
        let mut cmd = Command::new(bin());
        cmd.arg("up")
            .arg("--data-dir")
            .arg(&up.data)
            .arg("--socket")
            .arg(&up.socket)
            .args(["--bridge", &up.bridge, "--bridge-cidr", &up.cidr])
            .args(["--cluster-listen", &format!("127.0.0.1:{}", up.port)])
            .args(["--broker-listen", &format!("127.0.0.1:{}", up.broker_port)])
            .args([
                "--broker-management",
                &format!("127.0.0.1:{}", berth_testkit::free_port()),
            ]);
        quiet_env(&mut cmd);
        up.proc = Some(Proc::spawn(
            "berth up",
            cmd,
            up.dir.path().join("daemon.log"),
        ));
        let ok = wait_until(Duration::from_secs(20), || {
            assert!(up.proc_running(), "berth up exited:\n{}", up.log());
            up.local(&["info"]).status.success()
        });
        assert!(ok, "berth up did not come up:\n{}", up.log());
        let token_file = up.data.join("cluster-token");
        let ok = wait_until(Duration::from_secs(10), || {
            up.token = std::fs::read_to_string(&token_file)
                .unwrap_or_default()
                .trim()
                .to_string();
            !up.token.is_empty()
        });
        assert!(ok, "no {}:\n{}", token_file.display(), up.log());
        assert!(up.token.len() >= 16, "short token {:?}", up.token);
        let ok = wait_until(Duration::from_secs(20), || {
            up.cluster_json(&["node", "ls"])
                .is_some_and(|v| as_vec(Some(v)).iter().any(|n| n["state"] == "ACTIVE"))
        });
        assert!(ok, "embedded agent not ACTIVE:\n{}", up.log());
        up
    }

    fn proc_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }

    /// The node daemon's CLI (containers, images).
    fn local(&self, args: &[&str]) -> std::process::Output {
        Command::new("timeout")
            .args(["-s", "KILL", "60"])
            .arg(bin())
            .args(args)
            .env("BERTH_SOCKET", &self.socket)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running berth")
    }

    fn cluster(&self, args: &[&str]) -> std::process::Output {
        cli_env(args, &format!("127.0.0.1:{}", self.port), Some(&self.token))
    }

    fn cluster_json(&self, args: &[&str]) -> Option<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cluster(&a);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn run_job(&self, name: &str, toml: &str) {
        let file = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, toml).expect("job file");
        let out = self.cluster(&["job", "run", file.to_str().expect("utf-8 path")]);
        assert!(
            out.status.success(),
            "job run {name}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }

    /// Waits for the job's one task to end; returns it.
    fn wait_end(&self, job: &str, timeout: Duration) -> Value {
        let mut last = Vec::new();
        let ok = wait_until(timeout, || {
            last = as_vec(self.cluster_json(&["task", "ls", "--job", job]));
            last.iter().any(|t| {
                matches!(
                    t["state"].as_str(),
                    Some("FINISHED" | "FAILED" | "KILLED" | "LOST")
                )
            })
        });
        assert!(ok, "job {job} did not end: {last:#?}\n{}", self.log());
        last.into_iter().next().unwrap_or_default()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("----- berth up log tail -----");
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
        if self.proc_running() && !self.token.is_empty() {
            for j in as_vec(self.cluster_json(&["job", "ls"])) {
                if let Some(name) = j["spec"]["name"].as_str() {
                    if j["status"] == "running" || j["status"] == "pending" {
                        let _ = self.cluster(&["job", "stop", name]);
                    }
                }
            }
            wait_until(Duration::from_secs(8), || {
                as_vec(self.cluster_json(&["task", "ls"])).iter().all(|t| {
                    !matches!(
                        t["state"].as_str(),
                        Some("STAGING" | "STARTING" | "RUNNING")
                    )
                })
            });
        }
        if self.proc_running() {
            let ids = self.local(&["ps", "-aq", "--no-trunc"]);
            for id in stdout(&ids).lines() {
                let _ = self.local(&["rm", "-f", id]);
            }
        }
        if let Some(p) = &mut self.proc {
            p.stop(Duration::from_secs(5));
        }
        reap_agent_leftovers(&self.data.join("agent"));
        let _ = Command::new(bin())
            .args(["__bridge-down", &self.bridge, &self.cidr])
            .status();
    }
}

#[test]
fn berth_up_runs_command_and_container_jobs() {
    let up = Up::start();
    up.run_job(
        "uphello",
        "name = \"uphello\"\ncommand = \"echo hi\"\ncpus = 0.1\nmem = 32\n",
    );
    let t = up.wait_end("uphello", Duration::from_secs(30));
    assert_eq!(t["state"], "FINISHED", "{t}");

    let tarball = up.dir.path().join("busybox.tar");
    berth_testkit::busybox_tarball(&tarball).expect("busybox tarball");
    let out = up.local(&[
        "image",
        "import",
        tarball.to_str().expect("utf-8 path"),
        "--tag",
        "busybox",
    ]);
    assert!(out.status.success(), "image import: {}", stderr(&out));
    up.run_job(
        "upbox",
        "name = \"upbox\"\nimage = \"busybox\"\nargs = [\"echo\", \"hi\"]\ncpus = 0.1\nmem = 32\n",
    );
    let t = up.wait_end("upbox", Duration::from_secs(60));
    assert_eq!(t["state"], "FINISHED", "{t}");
    let jobs = as_vec(up.cluster_json(&["job", "ls"]));
    assert!(jobs.iter().all(|j| j["status"] == "finished"), "{jobs:#?}");

    // The embedded broker answers an AMQP 0-9-1 header with connection.start
    // (a method frame on channel 0: class 10, method 10).
    let mut amqp =
        std::net::TcpStream::connect(("127.0.0.1", up.broker_port)).expect("broker port");
    amqp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    std::io::Write::write_all(&mut amqp, b"AMQP\x00\x00\x09\x01").expect("header");
    let mut head = [0u8; 11];
    std::io::Read::read_exact(&mut amqp, &mut head).expect("connection.start");
    assert_eq!(
        (head[0], &head[7..11]),
        (1, &[0u8, 10, 0, 10][..]),
        "{head:?}"
    );
}

/// The paper's example with role b's job submitted a moment after role
/// a's framework subscribed and the agent arriving right after: each new
/// batch framework declines its offers for its first second
/// (berth_frameworks::batch::RECONCILE_GRACE_MS) with a filter as long as
/// the rest of that second, so when a's grace ends first, a is offered the
/// whole agent alone (a 4, then b 1) and DRF never gets to even it out.
/// The grace is now skipped when a framework has nothing to reconcile, but
/// the outcome still depends on whether b's framework has subscribed when
/// the agent registers: without preemption (as in Mesos), a framework alone
/// at that moment keeps what it launched. Kept, ignored, as a record.
#[test]
#[ignore = "timing: DRF without preemption depends on who is subscribed when the agent arrives"]
fn drf_agent_arriving_during_reconcile_grace() {
    let mark = format!("drfg-{}", tag());
    let mut l = Local::server();
    let job = |name: &str, role: &str, cpus: u32, mem: u32| {
        format!(
            "name = \"{name}\"\nrole = \"{role}\"\ninstances = 10\ncommand = \"sleep 1000; : {mark}\"\ncpus = {cpus}\nmem = {mem}\n"
        )
    };
    l.submit("drf-a", &job("drf-a", "a", 1, 4096));
    let subscribed = wait_until(Duration::from_secs(15), || {
        as_vec(l.try_json(&["framework", "ls"]))
            .iter()
            .any(|f| f["id"] == "berth-batch-a" && f["connected"] == true)
    });
    assert!(subscribed, "berth-batch-a not subscribed");
    std::thread::sleep(Duration::from_millis(300));
    l.submit("drf-b", &job("drf-b", "b", 3, 1024));
    let token = l.token.clone();
    l.spawn_agent("drf", "cpus:9;mem:18432;disk:1000", "rack:r1", &token);
    let ok = wait_until(Duration::from_secs(20), || {
        running(&l, "drf-a") + running(&l, "drf-b") >= 5
    });
    assert!(ok, "a {:?} b {:?}", l.states("drf-a"), l.states("drf-b"));
    std::thread::sleep(Duration::from_secs(2));
    let (a, b) = (running(&l, "drf-a"), running(&l, "drf-b"));
    assert_eq!((a, b), (3, 2), "DRF split a {a} b {b}");
}

/// An agent killed with -9 and started again on the same data directory
/// re-adopts its running tasks (their shims run in their own sessions):
/// the same task ids stay RUNNING and their processes are not restarted.
#[test]
fn agent_restart_recovers_its_running_tasks() {
    let mut l = Local::server();
    l.add_agent("h1", "cpus:4;mem:4096;disk:1000", "rack:r1");
    let mark = format!("recover-{}", tag());
    l.submit("recover", &sleeper("recover", 2, &mark, ""));
    l.wait_states("recover", Duration::from_secs(20), "2 RUNNING", |s| {
        s.get("RUNNING") == Some(&2)
    });
    let ids = |l: &Local| -> BTreeSet<String> {
        l.tasks_in("recover", "RUNNING")
            .iter()
            .map(|t| t["id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let before = ids(&l);
    let pids = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &mark])
            .output()
            .expect("pgrep");
        let mut v: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
        v.sort();
        v
    };
    let procs_before = pids();
    assert_eq!(procs_before.len(), 2, "task processes: {procs_before:?}");

    // kill -9 the agent alone.
    if let Some(c) = l.agents[0].proc.child.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!(pids(), procs_before, "tasks died with their agent");
    let (host, data_dir) = (l.agents[0].hostname.clone(), l.agents[0].data_dir.clone());
    assert!(data_dir.exists());
    l.agents.remove(0);
    let token = l.token.clone();
    let i = l.spawn_agent(&host, "cpus:4;mem:4096;disk:1000", "rack:r1", &token);
    let back = wait_until(Duration::from_secs(20), || {
        assert!(
            l.agents[i].proc.is_running(),
            "restarted agent exited:\n{}",
            l.agents[i].proc.log_text()
        );
        l.node(&host).is_some_and(|n| n["state"] == "ACTIVE") && ids(&l) == before
    });
    assert!(
        back,
        "tasks not recovered: before {before:?}, now {:?}\nagent log:\n{}",
        l.all_tasks(),
        l.agents[i].proc.log_text()
    );
    // Still the same processes, and nothing was relaunched meanwhile.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ids(&l), before);
    assert_eq!(pids(), procs_before, "task processes were restarted");
    assert_eq!(l.tasks("recover").len(), 2, "{:?}", l.tasks("recover"));
}
