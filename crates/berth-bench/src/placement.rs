//! `berth-bench placement`: placement throughput through Raft with many
//! simulated agents (`berth agent --simulate --simulate-agents N`), the
//! servers' memory, and how long tasks of a killed agent process take to
//! run elsewhere.
//!
//! There is no Nomad or Kubernetes on this machine; their published numbers
//! are the anchors (docs/benchmarks.md).

use anyhow::{bail, Context};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Options {
    pub agents: usize,
    pub tasks: usize,
    pub jobs: usize,
    pub agent_processes: usize,
    pub agent_timeout_secs: u64,
}

struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("{} did not stop; killing it", self.name);
            self.kill9();
        }
    }
}

/// Resident and peak resident memory of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn cli(berth: &Path, server: &str, token: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(berth)
        .args(args)
        .env("BERTH_SERVERS", server)
        .env("BERTH_TOKEN", token)
        .output()
        .with_context(|| format!("running berth {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "berth {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn count_nodes(berth: &Path, server: &str, token: &str, state: &str) -> usize {
    cli(berth, server, token, &["node", "ls", "--json"])
        .ok()
        .and_then(|s| serde_json::from_str::<Vec<serde_json::Value>>(&s).ok())
        .map(|v| v.iter().filter(|n| n["state"] == state).count())
        .unwrap_or(0)
}

fn running_tasks(berth: &Path, server: &str, token: &str) -> u64 {
    cli(berth, server, token, &["job", "ls", "--json"])
        .ok()
        .and_then(|s| serde_json::from_str::<Vec<serde_json::Value>>(&s).ok())
        .map(|jobs| {
            jobs.iter()
                .map(|j| j["tasks"]["RUNNING"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(start.elapsed())
}

pub fn run(berth: &Path, o: Options) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = berth_testkit::free_port();
    let server = format!("127.0.0.1:{port}");
    let token = format!("placement-bench-token-{}", std::process::id());
    let timeout = format!("{}s", o.agent_timeout_secs);
    let srv = Proc {
        name: "server".into(),
        child: Command::new(berth)
            .args(["server", "--data-dir"])
            .arg(dir.path().join("server"))
            .args([
                "--listen",
                &server,
                "--agent-timeout",
                &timeout,
                "--log-format",
                "text",
            ])
            .env("BERTH_TOKEN", &token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting berth server")?,
    };
    wait_for("the server", Duration::from_secs(30), || {
        cli(berth, &server, &token, &["node", "ls", "--json"]).is_ok()
    })?;
    let (idle_rss, _) = memory_kib(srv.pid());

    let per_proc = o.agents.div_ceil(o.agent_processes);
    let mut agents = Vec::new();
    let reg_start = Instant::now();
    for i in 0..o.agent_processes {
        let n = per_proc.min(o.agents - i * per_proc);
        agents.push(Proc {
            name: format!("agents-{i}"),
            child: Command::new(berth)
                .args(["agent", "--simulate", "--simulate-agents", &n.to_string()])
                .arg("--data-dir")
                .arg(dir.path().join(format!("agents-{i}")))
                .args([
                    "--servers",
                    &server,
                    "--resources",
                    "cpus:24;mem:65536;disk:100000",
                ])
                .args(["--hostname", &format!("sim{i}")])
                .env("BERTH_TOKEN", &token)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting simulated agents")?,
        });
    }
    wait_for("agents to register", Duration::from_secs(300), || {
        count_nodes(berth, &server, &token, "ACTIVE") >= o.agents
    })?;
    let registration = reg_start.elapsed();
    let (agents_rss, _) = memory_kib(srv.pid());

    // Jobs of equal size, submitted back to back.
    let per_job = o.tasks.div_ceil(o.jobs);
    let mut total = 0;
    let start = Instant::now();
    for j in 0..o.jobs {
        let n = per_job.min(o.tasks - total);
        total += n;
        let file = dir.path().join(format!("job{j}.toml"));
        std::fs::write(
            &file,
            format!(
                "name = \"bench{j}\"\ninstances = {n}\ncommand = \"true\"\ncpus = 0.01\nmem = 1\n"
            ),
        )?;
        cli(
            berth,
            &server,
            &token,
            &["job", "run", &file.display().to_string()],
        )?;
    }
    let submitted = start.elapsed();
    let placed = wait_for("all tasks RUNNING", Duration::from_secs(600), || {
        running_tasks(berth, &server, &token) >= total as u64
    })?;
    let elapsed = start.elapsed().max(placed);
    let (loaded_rss, peak) = memory_kib(srv.pid());

    // Self-healing: kill one agent process; its agents go silent, their
    // tasks are marked LOST after the timeout and relaunched elsewhere.
    let mut heal = None;
    if agents.len() > 1 {
        let lost_agents = per_proc;
        agents[0].kill9();
        let killed = Instant::now();
        let lost_seen = wait_for("tasks LOST", Duration::from_secs(120), || {
            running_tasks(berth, &server, &token) < total as u64
        })?;
        let back = wait_for("tasks RUNNING elsewhere", Duration::from_secs(600), || {
            running_tasks(berth, &server, &token) >= total as u64
        })?;
        heal = Some((
            lost_agents,
            lost_seen,
            killed.elapsed().max(lost_seen + back),
        ));
    }

    println!("placement benchmark: {} simulated agents in {} processes, {} tasks in {} jobs, 1 server (Raft, fsync)", o.agents, o.agent_processes, total, o.jobs);
    println!(
        "  agents registered in          {:>8.2} s",
        registration.as_secs_f64()
    );
    println!(
        "  jobs submitted in             {:>8.2} s",
        submitted.as_secs_f64()
    );
    println!(
        "  all tasks RUNNING after       {:>8.2} s",
        elapsed.as_secs_f64()
    );
    println!(
        "  placement rate                {:>8.0} tasks RUNNING/s",
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  server memory idle            {:>8.1} MiB",
        idle_rss as f64 / 1024.0
    );
    println!(
        "  server memory with agents     {:>8.1} MiB",
        agents_rss as f64 / 1024.0
    );
    println!(
        "  server memory with tasks      {:>8.1} MiB (peak {:.1} MiB)",
        loaded_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    if let Some((n, lost, back)) = heal {
        println!("  killed a process of {n} agents: tasks LOST after {:.2} s (agent timeout {} s), all RUNNING again after {:.2} s", lost.as_secs_f64(), o.agent_timeout_secs, back.as_secs_f64());
    }
    println!("  anchors: Nomad ~3,750 containers/s (5 servers, 5,000 hosts); Kubernetes scheduler floor 680-810 pods/s at 5,000 nodes");
    drop(agents);
    drop(srv);
    Ok(())
}
