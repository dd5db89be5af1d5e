//! Root test of the command executor against the real kernel: sandboxes,
//! cgroup limits, exit codes, OOM, kill, and re-adoption by a new executor
//! (as after an agent restart). This binary is also the task shim.

use berth_agent::sandbox::Sandbox;
use berth_agent::{
    CommandConfig, CommandExecutor, KillReason, RecoveredState, StatusSink, TaskEvent,
};
use berth_api::cluster::TaskInfo;
use berth_types::cluster::{Resources, TaskKind, TaskState};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__task-shim") => std::process::exit(berth_agent::task_shim_main(&args[2..])),
        // The engine's container shim, for the container test.
        Some("__shim") => {
            let bundle = args.get(2).cloned().unwrap_or_default();
            std::process::exit(berth_engine::shim::shim_main(
                &berth_runtime::Direct,
                Path::new(&bundle),
                false,
            ));
        }
        Some("__container-test") => std::process::exit(container::child_main()),
        _ => {}
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("executor tests need root; skipped");
        return;
    }
    let filter: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let tests: Vec<(&str, fn())> = vec![
        (
            "exit_codes_output_env_and_order",
            exit_codes_output_env_and_order,
        ),
        (
            "limits_applied_and_oom_reported",
            limits_applied_and_oom_reported,
        ),
        ("kill_term_then_sigkill", kill_term_then_sigkill),
        (
            "readopt_after_executor_restart",
            readopt_after_executor_restart,
        ),
        ("launch_failure_is_reported", launch_failure_is_reported),
        ("agent_against_fake_server", agent_against_fake_server),
        ("simulated_agents", simulated_agents),
        ("agent_and_server_over_mtls", agent_and_server_over_mtls),
        ("container_tasks", container::container_tasks),
    ];
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        ran += 1;
        let t0 = Instant::now();
        match std::panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(()) => println!("test {name} ... ok ({:.2}s)", t0.elapsed().as_secs_f64()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(name);
            }
        }
    }
    println!("\n{ran} run, {} failed {failed:?}", failed.len());
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

// ------------------------------------------------------------------ fixtures

#[derive(Default)]
struct Collect {
    events: Mutex<Vec<TaskEvent>>,
}

impl StatusSink for Collect {
    fn report(&self, ev: TaskEvent) {
        self.events.lock().unwrap().push(ev);
    }
}

impl Collect {
    fn of(&self, task: &str) -> Vec<TaskEvent> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.task_id == task)
            .cloned()
            .collect()
    }

    fn states(&self, task: &str) -> Vec<TaskState> {
        self.of(task).iter().map(|e| e.state).collect()
    }

    /// Waits for an event of `task` matching `pred`.
    async fn wait(&self, task: &str, what: &str, pred: impl Fn(&TaskEvent) -> bool) -> TaskEvent {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(e) = self.of(task).into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "task {task}: no {what} event; got {:?}",
                self.of(task)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn terminal(&self, task: &str) -> TaskEvent {
        self.wait(task, "terminal", |e| e.state.is_terminal()).await
    }

    async fn running(&self, task: &str) -> TaskEvent {
        self.wait(task, "RUNNING", |e| e.state == TaskState::Running)
            .await
    }
}

/// A temporary data directory and cgroup parent, removed (with every
/// process left in them) even when the test fails.
struct Env {
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

const CGROUP_TOP: &str = "berth-agent-test";

impl Env {
    fn new(name: &str) -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
            cgroup_parent: format!("{CGROUP_TOP}/{}-{name}", std::process::id()),
        }
    }

    fn tasks_dir(&self) -> PathBuf {
        self.dir.path().join("tasks")
    }

    fn config(&self) -> CommandConfig {
        let mut c = CommandConfig::new(
            self.tasks_dir(),
            std::env::current_exe().unwrap(),
            self.cgroup_parent.clone(),
        );
        c.kill_grace = Duration::from_millis(500);
        c
    }

    fn executor(&self) -> (CommandExecutor, Arc<Collect>) {
        let sink = Arc::new(Collect::default());
        (CommandExecutor::new(self.config(), sink.clone()), sink)
    }

    fn sandbox(&self, task: &str) -> Sandbox {
        Sandbox::new(self.tasks_dir().join(task))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Shims first, so none re-creates anything, then the cgroups.
        if let Ok(entries) = std::fs::read_dir(self.tasks_dir()) {
            for e in entries.flatten() {
                let sb = Sandbox::new(e.path());
                if let Some(shim) = sb.shim() {
                    let alive =
                        berth_engine::fsutil::process_start_time(shim.pid) == Some(shim.start_time);
                    if alive {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(shim.pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                if let Some(name) = sb.task().and_then(|r| r.cgroup) {
                    if let Ok(cg) = berth_runtime::Cgroup::open(&name) {
                        let _ = cg.kill_all(libc::SIGKILL);
                        let _ = cg.remove();
                    }
                    // Parents the agent created (berth-agent/<hash>), if empty.
                    for parent in Path::new(&name).ancestors().skip(1) {
                        if parent.as_os_str().is_empty() {
                            break;
                        }
                        for hier in std::fs::read_dir("/sys/fs/cgroup")
                            .into_iter()
                            .flatten()
                            .flatten()
                        {
                            let _ = std::fs::remove_dir(hier.path().join(parent));
                        }
                    }
                }
            }
        }
        for hier in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(hier.path().join(&self.cgroup_parent));
            let _ = std::fs::remove_dir(hier.path().join(CGROUP_TOP));
        }
    }
}

fn task(id: &str, shell: &str, cpus: f64, mem: u64) -> TaskInfo {
    TaskInfo {
        task_id: id.into(),
        name: id.into(),
        agent_id: "test-agent".into(),
        resources: Resources::new(cpus, mem, 0),
        kind: TaskKind::Command {
            shell: shell.into(),
        },
        env: BTreeMap::new(),
        labels: BTreeMap::new(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn cgroup_exists(name: &str) -> bool {
    ["memory", "pids", "unified", ""]
        .iter()
        .any(|h| Path::new("/sys/fs/cgroup").join(h).join(name).is_dir())
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

// ------------------------------------------------------------------ tests

fn exit_codes_output_env_and_order() {
    let env = Env::new("exit");
    rt().block_on(async {
        let (ex, sink) = env.executor();
        let mut ok = task(
            "ok",
            "echo out; echo err >&2; test \"$FOO\" = bar && pwd > cwd.txt && test \"$BERTH_TASK_ID\" = ok",
            0.5,
            64,
        );
        ok.env.insert("FOO".into(), "bar".into());
        ex.launch(ok);
        ex.launch(task("three", "exit 3", 0.1, 32));
        ex.launch(task("signalled", "kill -9 $$", 0.1, 32));

        let e = sink.terminal("ok").await;
        assert_eq!(e.state, TaskState::Finished, "{e:?}");
        assert_eq!(e.exit_code, Some(0));
        assert_eq!(
            sink.states("ok"),
            [TaskState::Starting, TaskState::Running, TaskState::Finished]
        );
        let sb = env.sandbox("ok");
        assert_eq!(read(sb.stdout_path()), "out\n");
        assert_eq!(read(sb.stderr_path()), "err\n");
        assert_eq!(read(sb.dir.join("cwd.txt")).trim(), sb.dir.to_str().unwrap());
        assert!(sb.reported().is_some());

        let e = sink.terminal("three").await;
        assert_eq!(e.state, TaskState::Failed);
        assert_eq!(e.reason.as_deref(), Some("exit"));
        assert_eq!(e.exit_code, Some(3));

        let e = sink.terminal("signalled").await;
        assert_eq!(e.state, TaskState::Failed);
        assert_eq!(e.exit_code, Some(137), "{e:?}");
        assert!(e.message.unwrap().contains("signal 9"));

        // Ended tasks leave no cgroup and are no longer supervised.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(ex.running().is_empty());
        for t in ["ok", "three", "signalled"] {
            assert!(!cgroup_exists(&format!("{}/{t}", env.cgroup_parent)), "{t}");
        }
        // Only the newest sandbox of ended tasks is kept.
        assert_eq!(ex.gc(1), 2);
    });
}

fn limits_applied_and_oom_reported() {
    let env = Env::new("oom");
    rt().block_on(async {
        let (ex, sink) = env.executor();
        ex.launch(task("limited", "sleep 30", 0.5, 16));
        sink.running("limited").await;
        let name = format!("{}/limited", env.cgroup_parent);
        let mode = berth_runtime::detect_cgroup_mode();
        let (mem, cpu, procs) = if mode == berth_runtime::CgroupMode::V2 {
            let d = Path::new("/sys/fs/cgroup").join(&name);
            (
                read(d.join("memory.max")),
                read(d.join("cpu.max")),
                read(d.join("cgroup.procs")),
            )
        } else {
            let r = Path::new("/sys/fs/cgroup");
            (
                read(r.join("memory").join(&name).join("memory.limit_in_bytes")),
                read(r.join("cpu").join(&name).join("cpu.cfs_quota_us")),
                read(r.join("memory").join(&name).join("cgroup.procs")),
            )
        };
        assert_eq!(mem.trim(), (16u64 << 20).to_string());
        assert!(cpu.trim().starts_with("50000"), "{cpu}");
        let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
        assert!(!pids.is_empty(), "the command runs inside its cgroup");
        // The shim is outside it.
        let shim = env.sandbox("limited").shim().unwrap();
        assert!(!pids.contains(&shim.pid));
        assert!(ex.kill("limited", KillReason::Orphaned));
        let e = sink.terminal("limited").await;
        assert_eq!(e.state, TaskState::Killed);
        assert_eq!(e.reason.as_deref(), Some("orphaned"));

        // 64 MiB in a shell variable under a 16 MiB limit.
        ex.launch(task(
            "hog",
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
            0.5,
            16,
        ));
        let e = sink.terminal("hog").await;
        assert_eq!(e.state, TaskState::Failed, "{e:?}");
        assert_eq!(e.reason.as_deref(), Some("oom"), "{e:?}");
        assert!(e.message.as_deref().unwrap_or("").contains("16 MiB"));
        assert!(!read(env.sandbox("hog").stdout_path()).contains("survived"));
    });
}

fn kill_term_then_sigkill() {
    let env = Env::new("kill");
    rt().block_on(async {
        let (ex, sink) = env.executor();
        ex.launch(task("polite", "sleep 30", 0.1, 32));
        ex.launch(task("stubborn", "trap '' TERM; sleep 30", 0.1, 32));
        sink.running("polite").await;
        sink.running("stubborn").await;
        assert_eq!(ex.running(), ["polite", "stubborn"]);

        let t0 = Instant::now();
        assert!(ex.kill("polite", KillReason::KilledByUser));
        let e = sink.terminal("polite").await;
        assert_eq!(e.state, TaskState::Killed);
        assert_eq!(e.reason.as_deref(), Some("killed_by_user"));
        assert!(
            t0.elapsed() < Duration::from_millis(450),
            "SIGTERM was enough: {:?} {e:?}",
            t0.elapsed()
        );

        let t0 = Instant::now();
        assert!(ex.kill("stubborn", KillReason::KilledByUser));
        let e = sink.terminal("stubborn").await;
        assert_eq!(e.state, TaskState::Killed);
        assert_eq!(e.exit_code, Some(137), "{e:?}");
        assert!(
            t0.elapsed() >= Duration::from_millis(500),
            "waited the grace period"
        );
        assert!(
            !ex.kill("stubborn", KillReason::KilledByUser),
            "already ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!cgroup_exists(&format!("{}/stubborn", env.cgroup_parent)));
        assert!(env.sandbox("stubborn").dir.is_dir(), "sandbox kept");
    });
}

fn readopt_after_executor_restart() {
    let env = Env::new("readopt");
    let rt = rt();
    rt.block_on(async {
        let (ex, sink) = env.executor();
        ex.launch(task("long", "sleep 30", 0.1, 32));
        ex.launch(task("short", "sleep 1; exit 5", 0.1, 32));
        ex.launch(task("doomed", "sleep 30", 0.1, 32));
        sink.running("long").await;
        sink.running("short").await;
        sink.running("doomed").await;
        drop(ex); // the agent goes away; its tasks do not

        // While nobody watches: one task ends, and the shim of another is
        // killed (its command goes on, unsupervised).
        let doomed = env.sandbox("doomed").shim().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(doomed.pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(sink.of("short").iter().all(|e| !e.state.is_terminal()));

        let (ex2, sink2) = env.executor();
        let mut rec: Vec<(String, RecoveredState)> = ex2
            .recover()
            .into_iter()
            .map(|r| (r.task.task_id, r.state))
            .collect();
        rec.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            rec,
            [
                (
                    "doomed".to_string(),
                    RecoveredState::Ended(TaskState::Failed)
                ),
                ("long".to_string(), RecoveredState::Running),
                (
                    "short".to_string(),
                    RecoveredState::Ended(TaskState::Failed)
                ),
            ]
        );
        let e = sink2.terminal("short").await;
        assert_eq!(e.exit_code, Some(5));
        let e = sink2.terminal("doomed").await;
        assert_eq!(e.reason.as_deref(), Some("executor_lost"), "{e:?}");
        assert!(
            !cgroup_exists(&format!("{}/doomed", env.cgroup_parent)),
            "lost task cleaned up"
        );
        assert_eq!(ex2.running(), ["long"]);

        // The re-adopted task is supervised: kill it.
        assert!(ex2.kill("long", KillReason::KilledByUser));
        let e = sink2.terminal("long").await;
        assert_eq!(e.state, TaskState::Killed);
        // The sandbox records the report right after it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while env.sandbox("long").reported().is_none() {
            assert!(Instant::now() < deadline, "reported.json never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // A third start finds everything reported.
        drop(ex2);
        let (ex3, sink3) = env.executor();
        let rec = ex3.recover();
        assert_eq!(rec.len(), 3);
        assert!(rec
            .iter()
            .all(|r| matches!(r.state, RecoveredState::Reported(_))));
        assert!(sink3.events.lock().unwrap().is_empty());
        // Relaunching a reported task does not run it again.
        ex3.launch(task("short", "exit 0", 0.1, 32));
        let e = sink3.terminal("short").await;
        assert_eq!(e.exit_code, Some(5), "the recorded end is reported again");
    });
}

fn launch_failure_is_reported() {
    let env = Env::new("fail");
    rt().block_on(async {
        let sink = Arc::new(Collect::default());
        let mut cfg = env.config();
        cfg.shim_exe = PathBuf::from("/nonexistent/berth");
        let ex = CommandExecutor::new(cfg, sink.clone());
        ex.launch(task("t", "true", 0.1, 32));
        let e = sink.terminal("t").await;
        assert_eq!(e.state, TaskState::Failed);
        assert_eq!(e.reason.as_deref(), Some("launch_failed"));
        assert!(e.message.unwrap().contains("/nonexistent/berth"));
        assert_eq!(sink.states("t"), [TaskState::Starting, TaskState::Failed]);
    });
}

// ------------------------------------------------------------------ agent loop

/// The fake cluster's token.
const TOKEN: &str = "t0123456789abcdef-agent-tests";

mod fake {
    //! A fake cluster server: just enough of the agent API to drive an
    //! agent, over mutual TLS under the cluster CA of [`super::TOKEN`] as
    //! servers with a token speak, enrolment included.
    use super::TOKEN;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::{Json, Router};
    use berth_api::cluster::*;
    use berth_types::cluster::TaskState;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Default)]
    pub struct Fake {
        pub version: u64,
        /// Task, and its last reported state.
        pub tasks: BTreeMap<String, (TaskInfo, Option<TaskState>)>,
        pub kill: BTreeSet<String>,
        pub updates: Vec<TaskStatus>,
        pub registrations: Vec<RegisterAgentRequest>,
        /// Answer syncs with 503 (no leader).
        pub unavailable: bool,
        pub unauthorized: usize,
        /// The certificate CN of each registration and sync.
        pub peers: BTreeSet<String>,
        /// Agent ids enrolled, in order.
        pub enrolled: Vec<String>,
    }

    pub type Shared = Arc<Mutex<Fake>>;

    fn authorized(s: &Shared, h: &HeaderMap) -> bool {
        let want = format!("Bearer {TOKEN}");
        let ok = h.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str());
        if !ok {
            s.lock().unwrap().unauthorized += 1;
        }
        ok
    }

    fn err(code: StatusCode, msg: &str) -> Response {
        (
            code,
            Json(ClusterError {
                message: msg.into(),
            }),
        )
            .into_response()
    }

    async fn enrol(
        State(s): State<Shared>,
        h: HeaderMap,
        Json(req): Json<berth_api::cluster_client::EnrolRequest>,
    ) -> Response {
        if !authorized(&s, &h) {
            return err(StatusCode::UNAUTHORIZED, "unauthorized: bad token");
        }
        let id = req.agent_id.unwrap_or_else(|| "agent-1".into());
        let ca = berth_tls::ClusterCa::from_token(TOKEN).unwrap();
        let cert_pem = ca.sign_agent_csr(&req.csr_pem, &id).unwrap();
        s.lock().unwrap().enrolled.push(id.clone());
        Json(berth_api::cluster_client::EnrolResponse {
            agent_id: id,
            cert_pem,
        })
        .into_response()
    }

    /// Records the CN of the caller's certificate; the refusal (403) when
    /// it has none.
    fn refuse_without_cert(s: &Shared, peer: &berth_tls::PeerIdentity) -> Option<Response> {
        match peer.agent_id() {
            Some(_) => {
                let cn = peer.common_name().unwrap_or_default().to_string();
                s.lock().unwrap().peers.insert(cn);
                None
            }
            None => Some(err(
                StatusCode::FORBIDDEN,
                "forbidden: no agent certificate",
            )),
        }
    }

    async fn register(
        State(s): State<Shared>,
        p: berth_tls::PeerIdentity,
        h: HeaderMap,
        Json(req): Json<RegisterAgentRequest>,
    ) -> Response {
        if !authorized(&s, &h) {
            return err(StatusCode::UNAUTHORIZED, "unauthorized: bad token");
        }
        if let Some(r) = refuse_without_cert(&s, &p) {
            return r;
        }
        let id = req.agent_id.clone().unwrap_or_else(|| "agent-1".into());
        s.lock().unwrap().registrations.push(req);
        Json(RegisterAgentResponse {
            agent_id: id,
            heartbeat_interval_ms: 1000,
            agent_timeout_ms: 10_000,
        })
        .into_response()
    }

    async fn sync(
        State(s): State<Shared>,
        p: berth_tls::PeerIdentity,
        h: HeaderMap,
        Json(req): Json<AgentSyncRequest>,
    ) -> Response {
        if !authorized(&s, &h) {
            return err(StatusCode::UNAUTHORIZED, "unauthorized: bad token");
        }
        if let Some(r) = refuse_without_cert(&s, &p) {
            return r;
        }
        let quiet = {
            let f = s.lock().unwrap();
            if f.unavailable {
                return err(StatusCode::SERVICE_UNAVAILABLE, "no leader");
            }
            req.updates.is_empty() && req.known_version == f.version
        };
        if quiet {
            tokio::time::sleep(Duration::from_millis(req.wait_ms.min(100))).await;
        }
        let mut f = s.lock().unwrap();
        let mut acked = Vec::new();
        for u in &req.updates {
            acked.push(u.uuid.clone());
            if f.updates.iter().any(|x| x.uuid == u.uuid) {
                continue; // a resend
            }
            f.updates.push(u.clone());
            if let Some(t) = f.tasks.get_mut(&u.task_id) {
                t.1 = Some(u.state);
            }
            f.version += 1;
        }
        let live: Vec<TaskInfo> = f
            .tasks
            .values()
            .filter(|(t, st)| t.agent_id == req.agent_id && !st.is_some_and(|s| s.is_terminal()))
            .map(|(t, _)| t.clone())
            .collect();
        let kill = live
            .iter()
            .filter(|t| f.kill.contains(&t.task_id))
            .map(|t| t.task_id.clone())
            .collect();
        Json(AgentSyncResponse {
            version: f.version,
            tasks: live,
            kill,
            acknowledged: acked,
            reregister: false,
        })
        .into_response()
    }

    pub async fn start() -> (String, Shared, tokio::task::JoinHandle<()>) {
        let shared: Shared = Arc::default();
        let app = Router::new()
            .route("/v1/agents/enrol", post(enrol))
            .route("/v1/agents/register", post(register))
            .route("/v1/agents/sync", post(sync))
            .with_state(shared.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let ca = berth_tls::ClusterCa::from_token(TOKEN).unwrap();
        let id = ca.issue_server("fake", &[]).unwrap();
        let tls = berth_tls::server_config(&ca, &id).unwrap();
        let h = tokio::spawn(berth_tls::serve_tls(l, tls, app, std::future::pending()));
        (addr, shared, h)
    }

    impl Fake {
        pub fn add(&mut self, t: TaskInfo) {
            self.tasks.insert(t.task_id.clone(), (t, None));
            self.version += 1;
        }
        pub fn states(&self, task: &str) -> Vec<TaskState> {
            self.updates
                .iter()
                .filter(|u| u.task_id == task)
                .map(|u| u.state)
                .collect()
        }
        pub fn last(&self, task: &str) -> Option<TaskStatus> {
            self.updates
                .iter()
                .rev()
                .find(|u| u.task_id == task)
                .cloned()
        }
    }
}

fn on(agent: &str, mut t: TaskInfo) -> TaskInfo {
    t.agent_id = agent.into();
    t
}

struct RunningAgent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), berth_agent::AgentError>>,
}

impl RunningAgent {
    fn start(cfg: berth_agent::AgentConfig) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(berth_agent::run_with_engine(
            cfg,
            Err("no engine in this test".into()),
            async move {
                let _ = rx.await;
            },
        ));
        RunningAgent {
            stop: Some(tx),
            handle,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.handle).await.unwrap().unwrap();
    }
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn agent_against_fake_server() {
    let env = Env::new("agent");
    rt().block_on(async {
        let (addr, fake, server) = fake::start().await;
        let mut cfg = berth_agent::AgentConfig::new(env.dir.path(), vec![addr]);
        cfg.token = Some(TOKEN.into());
        cfg.wait_ms = 200;
        cfg.resources = Some(Resources::new(2.0, 1024, 1000));
        cfg.hostname = Some("node-a".into());
        let agent = RunningAgent::start(cfg.clone());
        until("registration", || {
            !fake.lock().unwrap().registrations.is_empty()
        })
        .await;
        {
            let f = fake.lock().unwrap();
            let r = &f.registrations[0];
            // Enrolment gave the agent its id and certificate first.
            assert_eq!(f.enrolled, ["agent-1"]);
            assert_eq!(r.agent_id.as_deref(), Some("agent-1"));
            assert!(f.peers.contains("agent:agent-1"), "{:?}", f.peers);
            assert_eq!(r.hostname, "node-a");
            assert_eq!(r.resources, Resources::new(2.0, 1024, 1000));
        }
        assert!(std::fs::read_to_string(env.dir.path().join("agent.json"))
            .unwrap()
            .contains("agent-1"));
        {
            let mut f = fake.lock().unwrap();
            f.add(on("agent-1", task("quick", "echo hi", 0.1, 32)));
            f.add(on("agent-1", task("slow", "sleep 30", 0.1, 32)));
            f.add(on("agent-1", task("late", "sleep 2; exit 4", 0.1, 32)));
            let mut c = on("agent-1", task("box", "x", 0.1, 32));
            c.kind = TaskKind::Container {
                image: "busybox".into(),
                args: vec![],
            };
            f.add(c);
        }
        until("quick FINISHED, slow and late RUNNING", || {
            let f = fake.lock().unwrap();
            f.states("quick").last() == Some(&TaskState::Finished)
                && f.states("slow").last() == Some(&TaskState::Running)
                && f.states("late").last() == Some(&TaskState::Running)
        })
        .await;
        {
            let f = fake.lock().unwrap();
            assert_eq!(
                f.states("quick"),
                [TaskState::Starting, TaskState::Running, TaskState::Finished]
            );
            let b = f.last("box").unwrap();
            assert_eq!(b.state, TaskState::Failed);
            assert_eq!(b.reason.as_deref(), Some("launch_failed"));
            assert!(b.message.unwrap().contains("no engine in this test"));
            assert!(f.updates.iter().all(|u| u.agent_id == "agent-1"));
        }

        // The servers lose their leader; meanwhile the agent restarts and
        // a task ends: its update must survive both.
        fake.lock().unwrap().unavailable = true;
        agent.stop().await;
        tokio::time::sleep(Duration::from_millis(2200)).await; // "late" ends
        let agent = RunningAgent::start(cfg.clone());
        until("the end of late queued", || {
            std::fs::read_to_string(env.dir.path().join("updates.json"))
                .is_ok_and(|t| t.contains("\"FAILED\""))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        fake.lock().unwrap().unavailable = false;
        until("late FAILED delivered", || {
            fake.lock().unwrap().states("late").last() == Some(&TaskState::Failed)
        })
        .await;
        {
            let f = fake.lock().unwrap();
            let r = f.registrations.last().unwrap();
            assert_eq!(r.agent_id.as_deref(), Some("agent-1"), "saved id reused");
            assert_eq!(f.enrolled.len(), 1, "saved certificate reused");
            let running: Vec<&str> = r.running.iter().map(|s| s.task_id.as_str()).collect();
            assert_eq!(running, ["slow"], "recovered task reported at registration");
            assert_eq!(f.last("late").unwrap().exit_code, Some(4));
        }

        // Kill through the kill list; then drop a task from the desired set
        // (an orphan).
        {
            let mut f = fake.lock().unwrap();
            f.kill.insert("slow".into());
            f.version += 1;
            f.add(on("agent-1", task("orphan", "sleep 30", 0.1, 32)));
        }
        until("slow KILLED, orphan RUNNING", || {
            let f = fake.lock().unwrap();
            f.states("slow").last() == Some(&TaskState::Killed)
                && f.states("orphan").last() == Some(&TaskState::Running)
        })
        .await;
        {
            let mut f = fake.lock().unwrap();
            f.tasks.remove("orphan");
            f.version += 1;
        }
        until("orphan KILLED", || {
            fake.lock().unwrap().states("orphan").last() == Some(&TaskState::Killed)
        })
        .await;
        assert_eq!(
            fake.lock()
                .unwrap()
                .last("orphan")
                .unwrap()
                .reason
                .as_deref(),
            Some("orphaned")
        );
        until("every update acknowledged", || {
            std::fs::read_to_string(env.dir.path().join("updates.json"))
                .is_ok_and(|t| t.contains("\"updates\":[]"))
        })
        .await;
        assert_eq!(fake.lock().unwrap().unauthorized, 0);
        agent.stop().await;

        // A wrong token is fatal: the servers' certificate is not of this
        // token's cluster, and the agent says so at once instead of
        // retrying; its saved certificate stays.
        let saved = std::fs::read(env.dir.path().join("cluster-identity.pem")).unwrap();
        let mut bad = cfg.clone();
        bad.token = Some("t0123456789abcdef-another-cluster".into());
        let t0 = Instant::now();
        let err = berth_agent::run_with_engine(bad, Err("none".into()), std::future::pending())
            .await
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        let text = err.to_string();
        assert!(text.contains("wrong --token"), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(
            std::fs::read(env.dir.path().join("cluster-identity.pem")).unwrap(),
            saved
        );
        // No token against servers that have one: said too.
        let mut none = cfg.clone();
        none.token = None;
        let err = berth_agent::run_with_engine(none, Err("none".into()), std::future::pending())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--token or BERTH_TOKEN"), "{err}");
        // A token too short to be a cluster's.
        let mut short = cfg.clone();
        short.token = Some("tok".into());
        let err = berth_agent::run_with_engine(short, Err("none".into()), std::future::pending())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("token is too short"), "{err}");
        server.abort();
    });
}

fn simulated_agents() {
    rt().block_on(async {
        let (addr, fake, server) = fake::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = berth_agent::AgentConfig::new(dir.path(), vec![addr]);
        cfg.token = Some(TOKEN.into());
        cfg.wait_ms = 200;
        cfg.resources = Some(Resources::new(8.0, 8192, 0));
        const AGENTS: usize = 300;
        const TASKS: usize = 3000;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let sims = tokio::spawn(berth_agent::run_simulated(cfg, AGENTS, async move {
            let _ = rx.await;
        }));
        until("all simulated agents registered", || {
            fake.lock().unwrap().registrations.len() == AGENTS
        })
        .await;
        {
            let f = fake.lock().unwrap();
            let mut names: Vec<&str> = f
                .registrations
                .iter()
                .map(|r| r.hostname.as_str())
                .collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), AGENTS);
            assert!(f
                .registrations
                .iter()
                .all(|r| r.agent_id.as_deref() == Some(r.hostname.as_str())));
            // One enrolment and one certificate for all of them.
            assert_eq!(f.enrolled, ["sim-*"]);
            assert_eq!(
                f.peers.iter().collect::<Vec<_>>(),
                [&"agent:sim-*".to_string()]
            );
        }
        let t0 = Instant::now();
        {
            let mut f = fake.lock().unwrap();
            for i in 0..TASKS {
                f.add(on(
                    &format!("sim-{}", i % AGENTS),
                    task(&format!("t{i}"), "x", 0.1, 32),
                ));
            }
        }
        until("every task RUNNING", || {
            let f = fake.lock().unwrap();
            f.tasks
                .values()
                .all(|(_, s)| *s == Some(TaskState::Running))
        })
        .await;
        let took = t0.elapsed();
        {
            let mut f = fake.lock().unwrap();
            assert_eq!(f.updates.len(), TASKS, "one update per task, no STARTING");
            f.kill.insert("t7".into());
            f.version += 1;
        }
        until("t7 KILLED", || {
            fake.lock().unwrap().states("t7").last() == Some(&TaskState::Killed)
        })
        .await;
        println!("  {AGENTS} simulated agents ran {TASKS} tasks in {took:?}");
        let _ = tx.send(());
        sims.await.unwrap().unwrap();
        server.abort();
    });
}

/// A real server with a token (HTTPS only) and a real agent: the agent
/// enrols, registers and syncs over mutual TLS, and a job's task runs to
/// FINISHED; the CLI's kind of client (token, no certificate) drives it.
fn agent_and_server_over_mtls() {
    use berth_api::cluster::{NodeView, TaskView};
    use berth_api::cluster_client::ClusterClient;
    let env = Env::new("mtls");
    rt().block_on(async {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let server_dir = env.dir.path().join("server");
        let mut scfg = berth_server::server::ServerConfig::new(&server_dir, addr);
        scfg.token = Some(TOKEN.into());
        scfg.builtins
            .push(("batch".into(), berth_server::batch::builtin()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(berth_server::server::run(scfg, async {
            let _ = stop_rx.await;
        }));

        let mut cfg =
            berth_agent::AgentConfig::new(env.dir.path().join("agent"), vec![addr.to_string()]);
        cfg.token = Some(TOKEN.into());
        cfg.wait_ms = 200;
        cfg.resources = Some(Resources::new(2.0, 1024, 1000));
        cfg.hostname = Some("mtls-node".into());
        let t0 = Instant::now();
        let agent = RunningAgent::start(cfg.clone());

        let cli = ClusterClient::for_cluster(vec![addr.to_string()], Some(TOKEN.into()), None)
            .unwrap()
            .with_deadline(Duration::from_secs(30));
        let deadline = Instant::now() + Duration::from_secs(30);
        let node = loop {
            let nodes: Vec<NodeView> = cli.get_json("/v1/nodes").await.unwrap();
            if let Some(n) = nodes.into_iter().find(|n| n.hostname == "mtls-node") {
                break n;
            }
            assert!(Instant::now() < deadline, "the agent never registered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!("  agent enrolled and registered in {:?}", t0.elapsed());
        let saved = std::fs::read_to_string(env.dir.path().join("agent/cluster-identity.pem"))
            .expect("the agent keeps its certificate");
        let ca = berth_tls::ClusterCa::from_token(TOKEN).unwrap();
        assert_eq!(
            ca.check_issued(&saved).unwrap().common_name,
            format!("agent:{}", node.id)
        );

        let spec = berth_types::cluster::JobSpec::from_toml(
            "hello.toml",
            "name = \"hello\"\ncommand = \"exit 0\"\ncpus = 0.1\nmem = 32\n",
        )
        .unwrap();
        let _: serde_json::Value = cli.post_json("/v1/jobs", &spec).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tasks: Vec<TaskView> = cli.get_json("/v1/tasks?job=hello").await.unwrap();
            if tasks.iter().any(|t| t.state == TaskState::Finished) {
                assert_eq!(tasks[0].node, node.id);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the task never finished: {tasks:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        agent.stop().await;
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    });
}

// ------------------------------------------------------------------ containers

mod container {
    //! Container tasks through a real engine. The engine sets up a bridge
    //! and NAT rules, so the test runs in a child process in a network
    //! namespace of its own: nothing touches the host's network, and the
    //! bridge goes away with the namespace.
    use super::*;
    use berth_agent::ContainerExecutor;
    use berth_engine::engine::EngineConfig;
    use berth_engine::Engine;

    pub fn container_tasks() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("__container-test")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "container test child failed:\n{text}");
    }

    pub fn child_main() -> i32 {
        // Single-threaded here: unshare moves the whole process.
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("unshare(CLONE_NEWNET): {e}");
            return 1;
        }
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let engine = match rt.block_on(Engine::open(EngineConfig::with_defaults(
            dir.path().join("engine"),
            std::env::current_exe().unwrap(),
        ))) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("opening the engine: {e}");
                return 1;
            }
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(body(engine.clone(), dir.path()))
        }));
        // Cleanup whatever happened: every container, then the directory.
        rt.block_on(async {
            for c in engine.list(true) {
                let _ = engine.remove(&c.id, true).await;
            }
        });
        drop(engine);
        drop(rt);
        match result {
            Ok(()) => 0,
            Err(_) => 1,
        }
    }

    fn container(id: &str, image: &str, args: &[&str], mem: u64) -> TaskInfo {
        let mut t = task(id, "", 0.5, mem);
        t.kind = TaskKind::Container {
            image: image.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        t.env.insert("GREETING".into(), "hello".into());
        t
    }

    async fn body(engine: Arc<Engine>, dir: &Path) {
        let tar = dir.join("busybox.tar");
        berth_testkit::busybox_tarball(&tar).unwrap();
        let reference = berth_types::ImageRef::parse("busybox").unwrap();
        engine.images().import(&tar, Some(&reference)).unwrap();
        let tasks_dir = dir.join("tasks");
        let client =
            berth_api::cluster_client::ClusterClient::new(vec!["127.0.0.1:9".into()], None);
        let new_executor = || {
            let sink = Arc::new(Collect::default());
            (
                ContainerExecutor::new(
                    engine.clone(),
                    client.clone(),
                    tasks_dir.clone(),
                    sink.clone(),
                ),
                sink,
            )
        };
        let (ex, sink) = new_executor();
        ex.launch(container(
            "c-exit",
            "busybox",
            &["sh", "-c", "test \"$GREETING\" = hello && exit 3"],
            32,
        ));
        ex.launch(container("c-missing", "nope:1", &[], 32));
        ex.launch(container(
            "c-oom",
            "busybox",
            &[
                "sh",
                "-c",
                "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
            ],
            16,
        ));
        ex.launch(container("c-long", "busybox", &["sleep", "30"], 32));

        let e = sink.terminal("c-exit").await;
        assert_eq!(e.state, TaskState::Failed, "{e:?}");
        assert_eq!(e.exit_code, Some(3), "{e:?}");
        assert_eq!(
            sink.states("c-exit"),
            [TaskState::Starting, TaskState::Running, TaskState::Failed]
        );
        let e = sink.terminal("c-missing").await;
        assert_eq!(e.reason.as_deref(), Some("launch_failed"));
        assert!(e.message.unwrap().contains("nope:1"));
        let e = sink.terminal("c-oom").await;
        assert_eq!(e.reason.as_deref(), Some("oom"), "{e:?}");

        // Re-adoption by a new executor, then kill.
        sink.running("c-long").await;
        drop(ex);
        let (ex2, sink2) = new_executor();
        let running: Vec<String> = ex2
            .recover()
            .into_iter()
            .filter(|r| r.state == RecoveredState::Running)
            .map(|r| r.task.task_id)
            .collect();
        assert_eq!(running, ["c-long"]);
        assert!(ex2.kill("c-long", KillReason::KilledByUser));
        let e = sink2.terminal("c-long").await;
        assert_eq!(e.state, TaskState::Killed, "{e:?}");
        assert!(sink2.of("c-exit").is_empty(), "reported before, not again");
    }
}
