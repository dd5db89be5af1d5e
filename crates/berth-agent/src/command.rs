//! Command tasks (Mesos's cgroups containerizer): `/bin/sh -c SHELL` on the
//! host, in a sandbox directory and a cgroup of its own, through a detached
//! shim (`berth __task-shim DIR`) so the task survives an agent restart and
//! its exit status is still known afterwards.

use crate::sandbox::{gc, limits_for, outcome, Sandbox, TaskRecord};
use crate::sink::{KillReason, Recovered, RecoveredState, StatusSink, TaskEvent};
use crate::util::{now_ms, sanitize_id};
use berth_api::cluster::TaskInfo;
use berth_runtime::cgroup::Cgroup;
use berth_types::cluster::{TaskKind, TaskState};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct CommandConfig {
    /// Sandboxes live in `tasks_dir/<task>/`.
    pub tasks_dir: PathBuf,
    /// The binary that answers `__task-shim` (the berth binary).
    pub shim_exe: PathBuf,
    /// Task cgroups are `cgroup_parent/<task>`.
    pub cgroup_parent: String,
    /// Time between SIGTERM and SIGKILL when a task is killed.
    pub kill_grace: Duration,
}

impl CommandConfig {
    pub fn new(tasks_dir: PathBuf, shim_exe: PathBuf, cgroup_parent: String) -> Self {
        CommandConfig {
            tasks_dir,
            shim_exe,
            cgroup_parent,
            kill_grace: Duration::from_secs(3),
        }
    }
}

struct LiveTask {
    kill: watch::Sender<Option<KillReason>>,
    sandbox: Sandbox,
}

struct Inner {
    cfg: CommandConfig,
    sink: Arc<dyn StatusSink>,
    live: Mutex<HashMap<String, LiveTask>>,
    stop: watch::Receiver<bool>,
}

/// Runs and supervises command tasks. Dropping it stops supervision but
/// leaves the tasks running, as an agent restart would; a new executor
/// re-adopts them with [`CommandExecutor::recover`].
pub struct CommandExecutor {
    inner: Arc<Inner>,
    _stop: watch::Sender<bool>,
}

impl CommandExecutor {
    pub fn new(cfg: CommandConfig, sink: Arc<dyn StatusSink>) -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        CommandExecutor {
            inner: Arc::new(Inner {
                cfg,
                sink,
                live: Mutex::new(HashMap::new()),
                stop: stop_rx,
            }),
            _stop: stop_tx,
        }
    }

    pub fn sandbox(&self, task_id: &str) -> Sandbox {
        self.inner.sandbox(task_id)
    }

    /// Starts the task in the background; its states arrive at the sink
    /// (STARTING, RUNNING, then a terminal one). Must be called within a
    /// tokio runtime. A task already supervised is ignored.
    pub fn launch(&self, task: TaskInfo) {
        let (tx, rx) = watch::channel(None);
        {
            let mut live = self.inner.lock();
            if live.contains_key(&task.task_id) {
                tracing::debug!(task = %task.task_id, "launch of a task already running ignored");
                return;
            }
            live.insert(
                task.task_id.clone(),
                LiveTask {
                    kill: tx,
                    sandbox: self.inner.sandbox(&task.task_id),
                },
            );
        }
        let inner = self.inner.clone();
        tokio::spawn(async move { launch_task(inner, task, rx).await });
    }

    /// Asks for the task to be killed (SIGTERM, then SIGKILL after the
    /// grace period); it is reported KILLED. False if it is not running here.
    pub fn kill(&self, task_id: &str, reason: KillReason) -> bool {
        let live = self.inner.lock();
        let Some(t) = live.get(task_id) else {
            return false;
        };
        if let Err(e) = t.sandbox.mark_killed(reason) {
            tracing::warn!(task = %task_id, error = %e, "recording the kill");
        }
        t.kill.send_replace(Some(reason));
        true
    }

    /// Ids of the tasks supervised now (starting, running or being killed).
    pub fn running(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Scans the sandboxes after a restart: re-adopts tasks whose shim
    /// still runs, reports those that ended meanwhile. Must be called within
    /// a tokio runtime.
    pub fn recover(&self) -> Vec<Recovered> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.inner.cfg.tasks_dir) else {
            return out;
        };
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for dir in dirs {
            let sb = Sandbox::new(dir);
            let Some(rec) = sb.task() else { continue };
            if !matches!(rec.task.kind, TaskKind::Command { .. }) {
                continue;
            }
            if let Some(r) = sb.reported() {
                out.push(Recovered {
                    task: rec.task,
                    state: RecoveredState::Reported(r.state),
                });
                continue;
            }
            if self.inner.lock().contains_key(&rec.task.task_id) {
                continue;
            }
            let shim = sb.shim();
            // Alive first, then exit.json: a shim writes exit.json before
            // it exits, so "dead and no exit.json" really means lost.
            let alive = shim
                .as_ref()
                .is_some_and(|s| process_alive(s.pid, s.start_time));
            if sb.exit().is_none() && alive {
                let shim = shim.expect("alive implies a shim record");
                let (tx, rx) = watch::channel(sb.killed().map(|k| k.reason));
                self.inner.lock().insert(
                    rec.task.task_id.clone(),
                    LiveTask {
                        kill: tx,
                        sandbox: sb.clone(),
                    },
                );
                let exited = watch_pid(shim.pid, shim.start_time, self.inner.stop.clone());
                let inner = self.inner.clone();
                let running = shim.child_pid.is_some();
                tracing::info!(task = %rec.task.task_id, shim_pid = shim.pid, "re-adopted command task");
                out.push(Recovered {
                    task: rec.task.clone(),
                    state: RecoveredState::Running,
                });
                tokio::spawn(async move {
                    supervise(inner, sb, rec, exited, rx, running).await;
                });
                continue;
            }
            let task = rec.task.clone();
            let ev = self.inner.finish(&sb, &rec, true);
            out.push(Recovered {
                task,
                state: RecoveredState::Ended(ev.state),
            });
        }
        out
    }

    /// Deletes sandboxes of reported tasks beyond the newest `keep` (of any
    /// kind: the agent's directory is shared with container tasks, whose
    /// containers this does not remove).
    pub fn gc(&self, keep: usize) -> usize {
        gc(&self.inner.cfg.tasks_dir, keep, |_| {})
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveTask>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sandbox(&self, task_id: &str) -> Sandbox {
        Sandbox::new(self.cfg.tasks_dir.join(sanitize_id(task_id)))
    }

    fn report(&self, ev: TaskEvent) {
        self.sink.report(ev);
    }

    /// Reports the terminal state from the sandbox and forgets the task.
    fn finish(&self, sb: &Sandbox, rec: &TaskRecord, running_reported: bool) -> TaskEvent {
        let task_id = &rec.task.task_id;
        let exit = sb.exit();
        if exit.is_none() {
            // The shim is gone without cleaning up: do it for it.
            if let Some(name) = &rec.cgroup {
                if let Ok(cg) = Cgroup::open(name) {
                    let _ = cg.kill_all(libc::SIGKILL);
                    if let Err(e) = cg.remove() {
                        tracing::warn!(task = %task_id, cgroup = %name, error = %e, "removing cgroup");
                    }
                }
            }
        }
        if !running_reported && exit.as_ref().is_some_and(|e| e.error.is_none()) {
            // It ran, however briefly: keep the STARTING, RUNNING, end order.
            self.report(TaskEvent::new(task_id, TaskState::Running));
        }
        let ev = outcome(
            task_id,
            exit.as_ref(),
            sb.killed().as_ref(),
            rec.task.resources.mem,
        );
        // Forget it before reporting: whoever sees the terminal state must
        // not find the task still killable here.
        self.lock().remove(task_id);
        self.report(ev.clone());
        if let Err(e) = sb.mark_reported(&ev) {
            tracing::warn!(task = %task_id, error = %e, "recording the report");
        }
        tracing::info!(
            task = %task_id,
            state = %ev.state,
            exit_code = ?ev.exit_code,
            reason = ?ev.reason,
            "task ended"
        );
        ev
    }
}

async fn launch_task(inner: Arc<Inner>, task: TaskInfo, kill: watch::Receiver<Option<KillReason>>) {
    let sb = inner.sandbox(&task.task_id);
    let rec = TaskRecord {
        cgroup: Some(format!(
            "{}/{}",
            inner.cfg.cgroup_parent,
            sanitize_id(&task.task_id)
        )),
        limits: limits_for(&task.resources),
        container: None,
        launched_ms: now_ms(),
        task,
    };
    let task_id = rec.task.task_id.clone();
    if let Some(ev) = sb.reported_event(&task_id) {
        // It ran here before and ended: a task id never runs twice.
        tracing::info!(task = %task_id, state = %ev.state, "task already ended here; reporting its end again");
        inner.lock().remove(&task_id);
        inner.report(ev);
        return;
    }
    if let Err(e) = sb.create(&rec) {
        inner.report(
            TaskEvent::new(&task_id, TaskState::Failed)
                .with_reason("launch_failed", format!("creating the sandbox: {e}")),
        );
        inner.lock().remove(&task_id);
        return;
    }
    inner.report(TaskEvent::new(&task_id, TaskState::Starting));
    if kill.borrow().is_some() {
        inner.finish(&sb, &rec, false);
        return;
    }
    let spawned = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sb.shim_log_path())
        .and_then(|log| {
            tokio::process::Command::new(&inner.cfg.shim_exe)
                .arg("__task-shim")
                .arg(&sb.dir)
                .current_dir(&sb.dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
        });
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let exit = crate::sandbox::ExitRecord {
                error: Some(format!(
                    "starting the task shim {}: {e}",
                    inner.cfg.shim_exe.display()
                )),
                finished_ms: now_ms(),
                ..Default::default()
            };
            let _ = sb.write_exit(&exit);
            inner.finish(&sb, &rec, false);
            return;
        }
    };
    tracing::info!(task = %task_id, shim_pid = ?child.id(), sandbox = %sb.dir.display(), "launched command task");
    let (tx, exited) = watch::channel(false);
    tokio::spawn(async move {
        let _ = child.wait().await;
        let _ = tx.send(true);
    });
    supervise(inner, sb, rec, exited, kill, false).await;
}

/// Watches one task until it ends (reporting RUNNING once the command runs
/// and the terminal state at the end), killing it when asked. Returns early,
/// leaving the task running, when the executor is dropped.
async fn supervise(
    inner: Arc<Inner>,
    sb: Sandbox,
    rec: TaskRecord,
    mut exited: watch::Receiver<bool>,
    mut kill: watch::Receiver<Option<KillReason>>,
    mut running_reported: bool,
) {
    let task_id = rec.task.task_id.clone();
    let mut stop = inner.stop.clone();
    let mut poll = Duration::from_millis(2);
    loop {
        if !running_reported && sb.exit().is_none() && sb.shim().and_then(|s| s.child_pid).is_some()
        {
            inner.report(TaskEvent::new(&task_id, TaskState::Running));
            running_reported = true;
        }
        if *exited.borrow() {
            break;
        }
        let requested = *kill.borrow();
        if let Some(reason) = requested {
            tracing::info!(task = %task_id, reason = reason.as_str(), "killing task");
            if !kill_task(&inner, &sb, &rec, &mut exited).await {
                return; // executor dropped meanwhile
            }
            break;
        }
        tokio::select! {
            r = exited.changed() => {
                if r.is_err() && !*exited.borrow() {
                    return; // the watcher stopped: the executor is going away
                }
            }
            r = kill.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = stop.changed() => return,
            _ = tokio::time::sleep(poll), if !running_reported => {
                poll = (poll * 2).min(Duration::from_millis(100));
            }
        }
    }
    inner.finish(&sb, &rec, running_reported);
}

/// SIGTERM to every process of the task, SIGKILL after the grace period,
/// and as a last resort SIGKILL to a wedged shim. Returns false if the
/// shim watch ended without the shim exiting (executor dropped).
async fn kill_task(
    inner: &Inner,
    sb: &Sandbox,
    rec: &TaskRecord,
    exited: &mut watch::Receiver<bool>,
) -> bool {
    let cgroup = rec.cgroup.clone();
    let signal_all = |sig: i32| {
        let cgroup = cgroup.clone();
        async move {
            let Some(name) = cgroup else { return };
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(cg) = Cgroup::open(&name) {
                    if let Err(e) = cg.kill_all(sig) {
                        tracing::warn!(cgroup = %name, signal = sig, error = %e, "signalling task");
                    }
                }
            })
            .await;
        }
    };
    signal_all(libc::SIGTERM).await;
    if let Some(done) = wait_exit(exited, inner.cfg.kill_grace).await {
        return done;
    }
    signal_all(libc::SIGKILL).await;
    if let Some(done) = wait_exit(exited, Duration::from_secs(10)).await {
        return done;
    }
    if let Some(shim) = sb.shim() {
        if process_alive(shim.pid, shim.start_time) {
            tracing::warn!(task = %rec.task.task_id, shim_pid = shim.pid, "task shim did not exit; killing it");
            let _ = berth_runtime::pidfd::kill(shim.pid, libc::SIGKILL);
        }
    }
    wait_exit(exited, Duration::from_secs(5))
        .await
        .unwrap_or(true)
}

/// Some(true) once the shim exited, Some(false) if the watch ended without
/// it, None on timeout.
async fn wait_exit(exited: &mut watch::Receiver<bool>, timeout: Duration) -> Option<bool> {
    let wait = async {
        loop {
            if *exited.borrow() {
                return true;
            }
            if exited.changed().await.is_err() {
                return *exited.borrow();
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.ok()
}

/// Polls a process we did not spawn (a shim re-adopted after a restart).
/// Polling rather than a pidfd on a blocking thread: such threads would
/// keep a runtime from shutting down while the task runs.
fn watch_pid(pid: i32, start_time: u64, mut stop: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            if !process_alive(pid, start_time) {
                let _ = tx.send(true);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed() => return,
            }
        }
    });
    rx
}

/// Whether `pid` is the process that started at `start_time` and has not
/// exited (a zombie has).
pub(crate) fn process_alive(pid: i32, start_time: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 1..].split_whitespace();
    let state = fields.next().unwrap_or("X");
    // Field 22 (starttime) is the 20th after the state.
    let started: Option<u64> = fields.nth(18).and_then(|s| s.parse().ok());
    !matches!(state, "Z" | "X" | "x") && started == Some(start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id() as i32;
        let start = berth_engine::fsutil::process_start_time(me).unwrap();
        assert!(process_alive(me, start));
        assert!(!process_alive(me, start + 1));
        assert!(!process_alive(i32::MAX, start));
    }
}
