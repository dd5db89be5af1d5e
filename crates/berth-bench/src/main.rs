//! `berth-bench`: measures berth and its peers in the same run and prints
//! a table of medians. Not a test: numbers go to docs/benchmarks.md.
//!
//!   berth-bench lifecycle [-n 30]   run --rm busybox true: berth vs runc vs docker
//!   berth-bench import [-n 5]       import a ~170 MB rootfs tarball: berth vs docker import
//!   berth-bench placement           tasks RUNNING per second with simulated agents
//!   berth-bench broker              AMQP broker: berth vs RabbitMQ (throughput, latency, memory)
#![forbid(unsafe_code)]

mod broker;
mod broker_load;
mod broker_mem;
mod broker_peer;
mod placement;

use anyhow::{bail, Context};
use berth_testkit::Daemon;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// The berth binary (default: next to this one)
    #[arg(long, global = true)]
    berth: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    Lifecycle {
        #[arg(short = 'n', default_value_t = 30)]
        iterations: usize,
    },
    Import {
        #[arg(short = 'n', default_value_t = 5)]
        iterations: usize,
        /// Rootfs tarball to import (default: a Debian minbase built with mmdebstrap, cached)
        #[arg(long)]
        tarball: Option<PathBuf>,
    },
    Placement {
        #[arg(long, default_value_t = 5000)]
        agents: usize,
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        #[arg(long, default_value_t = 10)]
        jobs: usize,
        /// Processes the simulated agents are spread over
        #[arg(long, default_value_t = 2)]
        agent_processes: usize,
        #[arg(long, default_value_t = 5)]
        agent_timeout: u64,
    },
    /// berth's AMQP broker against a private RabbitMQ, one after the other
    Broker {
        /// The broker to compare with
        #[arg(long, value_enum, default_value = "rabbitmq")]
        peer: broker::Peer,
        /// Measure only the peer (while berth's broker is not usable)
        #[arg(long)]
        skip_berth: bool,
        /// Measured seconds per throughput scenario
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Warm-up seconds before each measurement
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Idle connections for the memory measurement
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Empty queues for the memory measurement
        #[arg(long, default_value_t = 10_000)]
        queues: usize,
        /// Run only the scenarios whose key contains this, e.g. "transient-1q"
        #[arg(long)]
        scenario: Option<String>,
        #[arg(long)]
        no_memory: bool,
        #[arg(long)]
        no_throughput: bool,
        /// JSON on stdout instead of markdown tables
        #[arg(long)]
        json: bool,
        /// Rounds (alternating brokers); tables show per-scenario medians
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let berth = match args.berth {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("berth"),
    };
    // The broker bench checks for berth itself: it can run without it.
    if !berth.exists() && !matches!(args.what, What::Broker { .. }) {
        bail!(
            "berth binary {} not found: build it with `cargo build --release`",
            berth.display()
        );
    }
    match args.what {
        What::Lifecycle { iterations } => lifecycle(&berth, iterations),
        What::Import {
            iterations,
            tarball,
        } => import(&berth, iterations, tarball),
        What::Placement {
            agents,
            tasks,
            jobs,
            agent_processes,
            agent_timeout,
        } => placement::run(
            &berth,
            placement::Options {
                agents,
                tasks,
                jobs,
                agent_processes: agent_processes.max(1),
                agent_timeout_secs: agent_timeout,
            },
        ),
        What::Broker {
            peer,
            skip_berth,
            seconds,
            warmup,
            connections,
            queues,
            scenario,
            no_memory,
            no_throughput,
            json,
            rounds,
        } => broker::run(
            &berth,
            broker::Options {
                peer,
                skip_berth,
                seconds,
                warmup,
                connections,
                queues,
                scenario,
                no_memory,
                no_throughput,
                json,
                rounds,
            },
        ),
    }
}

struct Stats {
    median: Duration,
    p10: Duration,
    p90: Duration,
    failures: usize,
}

fn measure(n: usize, mut f: impl FnMut(usize) -> bool) -> Stats {
    let samples: Vec<(Duration, bool)> = (0..n)
        .map(|i| {
            let t = Instant::now();
            let ok = f(i);
            (t.elapsed(), ok)
        })
        .collect();
    stats(&samples)
}

fn stats(samples: &[(Duration, bool)]) -> Stats {
    let failures = samples.iter().filter(|(_, ok)| !ok).count();
    let mut times: Vec<Duration> = samples.iter().map(|(t, _)| *t).collect();
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p10: at(0.1),
        p90: at(0.9),
        failures,
    }
}

fn row(name: &str, s: &Stats) {
    if s.failures > 0 {
        eprintln!("warning: {name}: {} of the iterations failed", s.failures);
    }
    println!(
        "| {name:<44} | {:>9.1} | {:>9.1} | {:>9.1} | {:>3} |",
        s.median.as_secs_f64() * 1e3,
        s.p10.as_secs_f64() * 1e3,
        s.p90.as_secs_f64() * 1e3,
        s.failures
    );
}

fn header(n: usize) {
    println!("\n{n} iterations each; times in milliseconds\n");
    println!(
        "| {:<44} | {:>9} | {:>9} | {:>9} | {:>3} |",
        "what", "median", "p10", "p90", "err"
    );
    println!(
        "|{:-<46}|{:->11}|{:->11}|{:->11}|{:->5}|",
        "", "", "", "", ""
    );
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn lifecycle(berth: &Path, n: usize) -> anyhow::Result<()> {
    let d = Daemon::start(berth);
    d.import_busybox();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["busybox", "true"]);
        let out = d.cli(&args);
        out.status.success()
    };
    for _ in 0..3 {
        run(&[]);
    }

    // runc with the same busybox rootfs, its default spec running `true`.
    let bundle = tempfile::tempdir()?;
    let have_runc = which("runc");
    if have_runc {
        berth_testkit::busybox_rootfs(&bundle.path().join("rootfs"))?;
        let ok = Command::new("runc")
            .arg("spec")
            .current_dir(bundle.path())
            .status()?
            .success();
        if !ok {
            bail!("runc spec failed");
        }
        let cfg_path = bundle.path().join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path)?)?;
        cfg["process"]["args"] = serde_json::json!(["true"]);
        cfg["process"]["terminal"] = serde_json::json!(false);
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    }
    let b = bundle.path().to_path_buf();
    let runc_run = |tag: &str| {
        quiet(
            Command::new("runc")
                .args(["run", "-b"])
                .arg(&b)
                .arg(format!("{tag}-{}", std::process::id())),
        )
    };
    if have_runc {
        for i in 0..3 {
            runc_run(&format!("warm{i}"));
        }
    }
    // Variants take turns within each iteration so that the machine's
    // drifting load hits all of them alike.
    let mut samples: Vec<Vec<(Duration, bool)>> = vec![Vec::new(); 3];
    for i in 0..n {
        let mut time = |k: usize, f: &mut dyn FnMut() -> bool| {
            let t = Instant::now();
            let ok = f();
            samples[k].push((t.elapsed(), ok));
        };
        time(0, &mut || run(&[]));
        time(1, &mut || run(&["--network", "none"]));
        if have_runc {
            time(2, &mut || runc_run(&format!("bench{i}")));
        }
    }
    let berth_bridge = stats(&samples[0]);
    let berth_none = stats(&samples[1]);
    let runc = have_runc.then(|| stats(&samples[2]));

    let docker = Dockerd::start().ok().and_then(|dk| {
        let tarball = d.dir.path().join("busybox.tar");
        if !dk.docker(&["import", tarball.to_str()?, "busybox:bench"]) {
            return None;
        }
        for _ in 0..3 {
            dk.docker(&["run", "--rm", "busybox:bench", "true"]);
        }
        Some(measure(n, |_| {
            dk.docker(&["run", "--rm", "busybox:bench", "true"])
        }))
    });

    header(n);
    row(
        "berth run --rm busybox true (bridge network)",
        &berth_bridge,
    );
    row("berth run --rm --network none busybox true", &berth_none);
    match &runc {
        Some(s) => row("runc run (default spec: new netns, no overlay)", s),
        None => println!("| runc: not installed |"),
    }
    match &docker {
        Some(s) => row("docker run --rm busybox true", s),
        None => println!("| docker: no daemon could be started |"),
    }
    if let Some(r) = &runc {
        println!(
            "\nberth/runc median ratio: {:.2} (bridge), {:.2} (none)",
            berth_bridge.median.as_secs_f64() / r.median.as_secs_f64(),
            berth_none.median.as_secs_f64() / r.median.as_secs_f64()
        );
    }
    Ok(())
}

fn import(berth: &Path, n: usize, tarball: Option<PathBuf>) -> anyhow::Result<()> {
    let tarball = match tarball {
        Some(t) => t,
        None => debian_tarball()?,
    };
    let size = std::fs::metadata(&tarball)?.len();
    let d = Daemon::start(berth);
    let path = tarball.to_str().context("tarball path")?;
    let berth_stats = measure(n, |_| {
        let ok = d
            .cli(&["image", "import", path, "--tag", "deb:bench"])
            .status
            .success();
        d.cli(&["rmi", "-f", "deb:bench"]);
        d.cli(&["image", "prune"]);
        ok
    });
    let docker = Dockerd::start().ok().map(|dk| {
        measure(n, |_| {
            let ok = dk.docker(&["import", path, "deb:bench"]);
            dk.docker(&["rmi", "-f", "deb:bench"]);
            ok
        })
    });
    header(n);
    row(
        &format!("berth image import ({} MB)", size / 1_000_000),
        &berth_stats,
    );
    match &docker {
        Some(s) => row(&format!("docker import ({} MB)", size / 1_000_000), s),
        None => println!("| docker: no daemon could be started |"),
    }
    Ok(())
}

/// A Debian minbase rootfs tarball, built once with mmdebstrap and cached.
fn debian_tarball() -> anyhow::Result<PathBuf> {
    let cache = PathBuf::from("/var/cache/berth-bench/bookworm-minbase.tar");
    if cache.exists() {
        return Ok(cache);
    }
    std::fs::create_dir_all(cache.parent().context("cache dir")?)?;
    if !which("mmdebstrap") {
        bail!("mmdebstrap is not installed: apt-get install mmdebstrap, or pass --tarball");
    }
    // mmdebstrap picks the output format from the name: keep ".tar".
    let tmp = cache.with_file_name("bookworm-minbase.partial.tar");
    let ok = Command::new("mmdebstrap")
        .args(["--variant=minbase", "--quiet", "bookworm"])
        .arg(&tmp)
        .status()?
        .success();
    if !ok
        || !std::fs::metadata(&tmp)
            .map(|m| m.is_file())
            .unwrap_or(false)
    {
        let _ = std::fs::remove_file(&tmp);
        bail!("mmdebstrap failed to write {}", tmp.display());
    }
    std::fs::rename(&tmp, &cache)?;
    Ok(cache)
}

fn which(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A throwaway Docker daemon with its own data root and socket.
struct Dockerd {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Dockerd {
    fn start() -> anyhow::Result<Self> {
        if !which("dockerd") {
            bail!("dockerd not installed");
        }
        let dir = tempfile::tempdir()?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .arg("-H")
            .arg(format!(
                "unix://{}",
                dir.path().join("docker.sock").display()
            ))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dockerd.log"))?)
            .spawn()?;
        let d = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if d.docker(&["info"]) {
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("dockerd did not start")
    }

    fn docker(&self, args: &[&str]) -> bool {
        let host = format!("unix://{}", self.dir.path().join("docker.sock").display());
        quiet(Command::new("docker").arg("-H").arg(host).args(args))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        // dockerd leaves its bridge and iptables chains behind: remove them.
        let _ = Command::new("ip")
            .args(["link", "del", "docker0"])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("sh")
            .args(["-c", "iptables-save | grep -v -i docker | iptables-restore"])
            .status();
    }
}

impl Dockerd {
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
