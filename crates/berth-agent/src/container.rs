//! Container tasks: a container from an image, through the engine in this
//! process. The container is named after the task so that a restarted agent
//! finds it again (the engine itself re-adopts running containers).

use crate::sandbox::{limits_for, outcome, ExitRecord, Sandbox, TaskRecord};
use crate::sink::{KillReason, Recovered, RecoveredState, StatusSink, TaskEvent};
use crate::util::{now_ms, sanitize_id};
use berth_api::cluster::TaskInfo;
use berth_api::cluster_client::ClusterClient;
use berth_engine::Engine;
use berth_types::cluster::{TaskKind, TaskState};
use berth_types::ContainerConfig;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The engine's container name for a task.
pub fn container_name(task_id: &str) -> String {
    format!("berth-task-{}", sanitize_id(task_id))
}

struct LiveTask {
    kill: watch::Sender<Option<KillReason>>,
    sandbox: Sandbox,
}

struct Inner {
    engine: Arc<Engine>,
    client: ClusterClient,
    tasks_dir: PathBuf,
    kill_grace: Duration,
    sink: Arc<dyn StatusSink>,
    live: Mutex<HashMap<String, LiveTask>>,
    stop: watch::Receiver<bool>,
}

pub struct ContainerExecutor {
    inner: Arc<Inner>,
    _stop: watch::Sender<bool>,
}

impl ContainerExecutor {
    pub fn new(
        engine: Arc<Engine>,
        client: ClusterClient,
        tasks_dir: PathBuf,
        sink: Arc<dyn StatusSink>,
    ) -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        ContainerExecutor {
            inner: Arc::new(Inner {
                engine,
                client,
                tasks_dir,
                kill_grace: Duration::from_secs(3),
                sink,
                live: Mutex::new(HashMap::new()),
                stop: stop_rx,
            }),
            _stop: stop_tx,
        }
    }

    pub fn launch(&self, task: TaskInfo) {
        let (tx, rx) = watch::channel(None);
        {
            let mut live = self.inner.lock();
            if live.contains_key(&task.task_id) {
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

    pub fn running(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn recover(&self) -> Vec<Recovered> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.inner.tasks_dir) else {
            return out;
        };
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for dir in dirs {
            let sb = Sandbox::new(dir);
            let Some(rec) = sb.task() else { continue };
            if !matches!(rec.task.kind, TaskKind::Container { .. }) {
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
            let name = rec
                .container
                .clone()
                .unwrap_or_else(|| container_name(&rec.task.task_id));
            let engine = &self.inner.engine;
            match engine.resolve(&name) {
                Ok(id) if engine.is_running(&id) => {
                    let (tx, rx) = watch::channel(sb.killed().map(|k| k.reason));
                    self.inner.lock().insert(
                        rec.task.task_id.clone(),
                        LiveTask {
                            kill: tx,
                            sandbox: sb.clone(),
                        },
                    );
                    tracing::info!(task = %rec.task.task_id, container = %id, "re-adopted container task");
                    out.push(Recovered {
                        task: rec.task.clone(),
                        state: RecoveredState::Running,
                    });
                    let inner = self.inner.clone();
                    tokio::spawn(async move { supervise(inner, sb, rec, id, rx).await });
                }
                found => {
                    if sb.exit().is_none() {
                        let exit = match found.map(|id| engine.inspect(&id)) {
                            Ok(Ok(d)) if d.summary.exit_code.is_some() => ExitRecord {
                                exit_code: d.summary.exit_code,
                                oom: d.summary.oom_killed,
                                finished_ms: now_ms(),
                                ..Default::default()
                            },
                            Ok(_) => ExitRecord {
                                error: Some(format!(
                                    "the agent stopped while container {name} was being started"
                                )),
                                finished_ms: now_ms(),
                                ..Default::default()
                            },
                            Err(_) => ExitRecord {
                                error: Some(format!("container {name} is gone")),
                                finished_ms: now_ms(),
                                ..Default::default()
                            },
                        };
                        let _ = sb.write_exit(&exit);
                    }
                    let task = rec.task.clone();
                    let ev = self.inner.finish(&sb, &rec, true);
                    out.push(Recovered {
                        task,
                        state: RecoveredState::Ended(ev.state),
                    });
                }
            }
        }
        out
    }

    /// Removes a task's (exited) container; sandbox garbage collection
    /// calls it for the sandboxes it deletes.
    pub async fn remove_container(&self, name: &str) {
        if let Ok(id) = self.inner.engine.resolve(name) {
            if let Err(e) = self.inner.engine.remove(&id, true).await {
                tracing::warn!(container = %name, error = %e, "removing old task container");
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveTask>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sandbox(&self, task_id: &str) -> Sandbox {
        Sandbox::new(self.tasks_dir.join(sanitize_id(task_id)))
    }

    fn finish(&self, sb: &Sandbox, rec: &TaskRecord, running_reported: bool) -> TaskEvent {
        let task_id = &rec.task.task_id;
        let exit = sb.exit();
        if !running_reported && exit.as_ref().is_some_and(|e| e.error.is_none()) {
            self.sink
                .report(TaskEvent::new(task_id, TaskState::Running));
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
        self.sink.report(ev.clone());
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

    fn fail(&self, sb: &Sandbox, rec: &TaskRecord, message: String) {
        let _ = sb.write_exit(&ExitRecord {
            error: Some(message),
            finished_ms: now_ms(),
            ..Default::default()
        });
        self.finish(sb, rec, false);
    }
}

async fn image_present(engine: &Arc<Engine>, image: &str) -> bool {
    let images = engine.images();
    let image = image.to_string();
    tokio::task::spawn_blocking(move || images.resolve(&image).is_ok())
        .await
        .unwrap_or(false)
}

async fn launch_task(inner: Arc<Inner>, task: TaskInfo, kill: watch::Receiver<Option<KillReason>>) {
    let sb = inner.sandbox(&task.task_id);
    let name = container_name(&task.task_id);
    let rec = TaskRecord {
        cgroup: None,
        limits: limits_for(&task.resources),
        container: Some(name.clone()),
        launched_ms: now_ms(),
        task,
    };
    let task_id = rec.task.task_id.clone();
    if let Some(ev) = sb.reported_event(&task_id) {
        // It ran here before and ended: a task id never runs twice.
        tracing::info!(task = %task_id, state = %ev.state, "task already ended here; reporting its end again");
        inner.lock().remove(&task_id);
        inner.sink.report(ev);
        return;
    }
    let TaskKind::Container { image, args } = rec.task.kind.clone() else {
        return;
    };
    if let Err(e) = sb.create(&rec) {
        inner.sink.report(
            TaskEvent::new(&task_id, TaskState::Failed)
                .with_reason("launch_failed", format!("creating the sandbox: {e}")),
        );
        inner.lock().remove(&task_id);
        return;
    }
    inner
        .sink
        .report(TaskEvent::new(&task_id, TaskState::Starting));
    let engine = inner.engine.clone();
    if !image_present(&engine, &image).await {
        if let Err(e) = crate::pull::ensure_image(&inner.client, &engine, &image).await {
            inner.fail(&sb, &rec, e.to_string());
            return;
        }
    }
    if kill.borrow().is_some() {
        inner.finish(&sb, &rec, false);
        return;
    }
    // Left over from a launch the agent did not finish.
    if let Ok(old) = engine.resolve(&name) {
        let _ = engine.remove(&old, true).await;
    }
    let env: Vec<String> = rec
        .task
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let config = ContainerConfig {
        image: image.clone(),
        name: Some(name.clone()),
        cmd: args,
        env,
        memory: rec.limits.memory_bytes,
        cpu_quota: rec.limits.cpu_quota_us,
        ..Default::default()
    };
    let id = match engine.create(config).await {
        Ok(id) => id,
        Err(e) => {
            inner.fail(&sb, &rec, format!("creating the container: {e}"));
            return;
        }
    };
    if let Err(e) = engine.start(&id).await {
        let _ = engine.remove(&id, true).await;
        inner.fail(&sb, &rec, format!("starting the container: {e}"));
        return;
    }
    tracing::info!(task = %task_id, container = %id, image = %image, "launched container task");
    inner
        .sink
        .report(TaskEvent::new(&task_id, TaskState::Running));
    supervise(inner, sb, rec, id, kill).await;
}

async fn supervise(
    inner: Arc<Inner>,
    sb: Sandbox,
    rec: TaskRecord,
    id: String,
    mut kill: watch::Receiver<Option<KillReason>>,
) {
    let engine = inner.engine.clone();
    let mut stop = inner.stop.clone();
    let wait = engine.wait(&id, false);
    tokio::pin!(wait);
    let mut killing = false;
    let result = loop {
        if !killing && kill.borrow().is_some() {
            killing = true;
            let engine = engine.clone();
            let id = id.clone();
            let grace = inner.kill_grace;
            tokio::spawn(async move {
                if let Err(e) = engine.stop(&id, grace).await {
                    tracing::warn!(container = %id, error = %e, "stopping task container");
                }
            });
        }
        tokio::select! {
            r = &mut wait => break r,
            r = kill.changed(), if !killing => {
                if r.is_err() {
                    return;
                }
            }
            _ = stop.changed() => return,
        }
    };
    let exit = match result {
        Ok((code, oom)) => ExitRecord {
            exit_code: Some(code),
            oom,
            finished_ms: now_ms(),
            ..Default::default()
        },
        Err(e) => ExitRecord {
            error: Some(format!("waiting for container {id}: {e}")),
            finished_ms: now_ms(),
            ..Default::default()
        },
    };
    let _ = sb.write_exit(&exit);
    inner.finish(&sb, &rec, true);
}
