//! A task's sandbox directory (`DATA/tasks/<task>/`) and the small files in
//! it that let a restarted agent find out what became of the task:
//!
//! - `task.json`: the task as launched (written before anything runs)
//! - `shim.json`: the shim's pid and start time, then the command's pid
//! - `exit.json`: how the command ended (written by the shim)
//! - `killed.json`: the agent asked for the kill (written before killing)
//! - `reported.json`: the terminal update is queued; nothing more to do
//! - `stdout`, `stderr`, `shim.log`: output of the command and the shim

use crate::error::AgentError;
use crate::sink::{KillReason, TaskEvent};
use crate::util::{now_ms, write_atomic_sync};
use berth_api::cluster::TaskInfo;
use berth_runtime::cgroup::CgroupLimits;
use berth_types::cluster::{Resources, TaskState};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task: TaskInfo,
    /// Command tasks: the host cgroup the command runs in.
    #[serde(default)]
    pub cgroup: Option<String>,
    #[serde(default)]
    pub limits: CgroupLimits,
    /// Container tasks: the engine's container name.
    #[serde(default)]
    pub container: Option<String>,
    pub launched_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimRecord {
    pub pid: i32,
    pub start_time: u64,
    /// Set once the command runs.
    #[serde(default)]
    pub child_pid: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code; 128 + signal when a signal ended the process.
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom: bool,
    /// The command could not be started (cgroup, spawn, exec).
    #[serde(default)]
    pub error: Option<String>,
    pub finished_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KilledRecord {
    pub reason: KillReason,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportedRecord {
    pub state: TaskState,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone)]
pub struct Sandbox {
    pub dir: PathBuf,
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| AgentError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("encoding: {e}"),
    })?;
    write_atomic_sync(path, &bytes).map_err(|e| AgentError::io("writing", path, e))
}

impl Sandbox {
    pub fn new(dir: PathBuf) -> Self {
        Sandbox { dir }
    }

    pub fn task_path(&self) -> PathBuf {
        self.dir.join("task.json")
    }
    pub fn shim_path(&self) -> PathBuf {
        self.dir.join("shim.json")
    }
    pub fn exit_path(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    pub fn killed_path(&self) -> PathBuf {
        self.dir.join("killed.json")
    }
    pub fn reported_path(&self) -> PathBuf {
        self.dir.join("reported.json")
    }
    pub fn enter_error_path(&self) -> PathBuf {
        self.dir.join("enter-error")
    }
    pub fn stdout_path(&self) -> PathBuf {
        self.dir.join("stdout")
    }
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.join("stderr")
    }
    pub fn shim_log_path(&self) -> PathBuf {
        self.dir.join("shim.log")
    }

    pub fn create(&self, record: &TaskRecord) -> Result<(), AgentError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| AgentError::io("creating", &self.dir, e))?;
        write_json(&self.task_path(), record)
    }

    pub fn task(&self) -> Option<TaskRecord> {
        read_json(&self.task_path())
    }
    pub fn shim(&self) -> Option<ShimRecord> {
        read_json(&self.shim_path())
    }
    pub fn write_shim(&self, r: &ShimRecord) -> Result<(), AgentError> {
        write_json(&self.shim_path(), r)
    }
    pub fn exit(&self) -> Option<ExitRecord> {
        read_json(&self.exit_path())
    }
    pub fn write_exit(&self, r: &ExitRecord) -> Result<(), AgentError> {
        write_json(&self.exit_path(), r)
    }
    pub fn killed(&self) -> Option<KilledRecord> {
        read_json(&self.killed_path())
    }
    pub fn mark_killed(&self, reason: KillReason) -> Result<(), AgentError> {
        if self.killed().is_some() {
            return Ok(()); // the first reason stands
        }
        write_json(
            &self.killed_path(),
            &KilledRecord {
                reason,
                at_ms: now_ms(),
            },
        )
    }
    pub fn reported(&self) -> Option<ReportedRecord> {
        read_json(&self.reported_path())
    }
    /// The terminal event recorded for this task, if it ended here.
    pub fn reported_event(&self, task_id: &str) -> Option<TaskEvent> {
        self.reported().map(|r| TaskEvent {
            task_id: task_id.to_string(),
            state: r.state,
            message: r.message,
            reason: r.reason,
            exit_code: r.exit_code,
        })
    }

    pub fn mark_reported(&self, ev: &TaskEvent) -> Result<(), AgentError> {
        write_json(
            &self.reported_path(),
            &ReportedRecord {
                state: ev.state,
                message: ev.message.clone(),
                reason: ev.reason.clone(),
                exit_code: ev.exit_code,
            },
        )
    }
}

/// Cgroup limits for a task's resources: memory is a hard limit without
/// swap, cpus a CFS quota (at least the kernel's 1 ms minimum).
pub fn limits_for(r: &Resources) -> CgroupLimits {
    CgroupLimits {
        memory_bytes: (r.mem > 0).then(|| r.mem.saturating_mul(1 << 20)),
        cpu_quota_us: (r.cpus > 0.0).then(|| ((r.cpus * 100_000.0).round() as u64).max(1_000)),
        pids_max: None,
    }
}

/// The terminal state of a task from what its sandbox says.
pub fn outcome(
    task_id: &str,
    exit: Option<&ExitRecord>,
    killed: Option<&KilledRecord>,
    mem_mib: u64,
) -> TaskEvent {
    let code = exit.and_then(|e| e.exit_code);
    let mut ev = if let Some(k) = killed {
        TaskEvent::new(task_id, TaskState::Killed)
            .with_reason(k.reason.as_str(), k.reason.message())
    } else {
        match exit {
            None => TaskEvent::new(task_id, TaskState::Failed).with_reason(
                "executor_lost",
                "the task's supervisor ended without recording how the task ended",
            ),
            Some(e) if e.error.is_some() => TaskEvent::new(task_id, TaskState::Failed)
                .with_reason("launch_failed", e.error.clone().unwrap_or_default()),
            Some(e) if e.oom => TaskEvent::new(task_id, TaskState::Failed).with_reason(
                "oom",
                format!("out of memory: the task exceeded its memory limit of {mem_mib} MiB"),
            ),
            Some(e) => match (e.exit_code, e.signal) {
                (Some(0), _) => TaskEvent::new(task_id, TaskState::Finished)
                    .with_reason("exit", "exited with code 0"),
                (_, Some(sig)) => TaskEvent::new(task_id, TaskState::Failed)
                    .with_reason("exit", format!("killed by signal {sig}")),
                (Some(c), None) => TaskEvent::new(task_id, TaskState::Failed)
                    .with_reason("exit", format!("exited with code {c}")),
                (None, None) => TaskEvent::new(task_id, TaskState::Failed)
                    .with_reason("exit", "ended without an exit code"),
            },
        }
    };
    ev.exit_code = code;
    ev
}

/// Deletes the sandboxes of the oldest reported (terminal) tasks beyond the
/// newest `keep`, calling `before_delete` first (container tasks remove
/// their container there). Returns how many were deleted.
pub fn gc(tasks_dir: &Path, keep: usize, mut before_delete: impl FnMut(&TaskRecord)) -> usize {
    let Ok(entries) = std::fs::read_dir(tasks_dir) else {
        return 0;
    };
    let mut done: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let meta = std::fs::metadata(dir.join("reported.json")).ok()?;
            Some((meta.modified().ok()?, dir))
        })
        .collect();
    if done.len() <= keep {
        return 0;
    }
    done.sort();
    let excess = done.len() - keep;
    let mut deleted = 0;
    for (_, dir) in done.into_iter().take(excess) {
        let sb = Sandbox::new(dir.clone());
        if let Some(rec) = sb.task() {
            before_delete(&rec);
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => deleted += 1,
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "removing old sandbox"),
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: Option<i32>, signal: Option<i32>, oom: bool, error: Option<&str>) -> ExitRecord {
        ExitRecord {
            exit_code: code,
            signal,
            oom,
            error: error.map(String::from),
            finished_ms: 1,
        }
    }

    #[test]
    fn outcomes() {
        let k = KilledRecord {
            reason: KillReason::KilledByUser,
            at_ms: 1,
        };
        type Case<'a> = (
            Option<ExitRecord>,
            Option<&'a KilledRecord>,
            TaskState,
            &'a str,
            Option<i32>,
        );
        let cases: Vec<Case> = vec![
            (
                Some(exit(Some(0), None, false, None)),
                None,
                TaskState::Finished,
                "exit",
                Some(0),
            ),
            (
                Some(exit(Some(3), None, false, None)),
                None,
                TaskState::Failed,
                "exit",
                Some(3),
            ),
            (
                Some(exit(Some(137), Some(9), false, None)),
                None,
                TaskState::Failed,
                "exit",
                Some(137),
            ),
            (
                Some(exit(Some(137), Some(9), true, None)),
                None,
                TaskState::Failed,
                "oom",
                Some(137),
            ),
            (
                Some(exit(None, None, false, Some("no sh"))),
                None,
                TaskState::Failed,
                "launch_failed",
                None,
            ),
            (
                Some(exit(Some(143), Some(15), false, None)),
                Some(&k),
                TaskState::Killed,
                "killed_by_user",
                Some(143),
            ),
            (
                Some(exit(Some(0), None, false, None)),
                Some(&k),
                TaskState::Killed,
                "killed_by_user",
                Some(0),
            ),
            (None, None, TaskState::Failed, "executor_lost", None),
            (None, Some(&k), TaskState::Killed, "killed_by_user", None),
        ];
        for (i, (e, killed, state, reason, code)) in cases.into_iter().enumerate() {
            let ev = outcome("t", e.as_ref(), killed, 64);
            assert_eq!(ev.state, state, "case {i}");
            assert_eq!(ev.reason.as_deref(), Some(reason), "case {i}");
            assert_eq!(ev.exit_code, code, "case {i}");
        }
        let ev = outcome("t", Some(&exit(Some(137), Some(9), true, None)), None, 64);
        assert!(ev.message.unwrap().contains("64 MiB"));
    }

    #[test]
    fn limits() {
        let l = limits_for(&Resources::new(1.5, 64, 0));
        assert_eq!(l.memory_bytes, Some(64 << 20));
        assert_eq!(l.cpu_quota_us, Some(150_000));
        let l = limits_for(&Resources::new(0.001, 0, 0));
        assert_eq!(l.memory_bytes, None);
        assert_eq!(l.cpu_quota_us, Some(1_000));
    }

    #[test]
    fn gc_keeps_newest_reported() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let sb = Sandbox::new(d.path().join(format!("t{i}")));
            std::fs::create_dir_all(&sb.dir).unwrap();
            if i != 2 {
                sb.mark_reported(&TaskEvent::new("x", TaskState::Finished))
                    .unwrap();
                // Distinct modification times, oldest first.
                let t =
                    std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i);
                std::fs::File::options()
                    .write(true)
                    .open(sb.reported_path())
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            }
        }
        let mut seen = 0;
        assert_eq!(gc(d.path(), 2, |_| seen += 1), 2);
        assert_eq!(seen, 0, "no task.json in these sandboxes");
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["t2", "t3", "t4"]);
    }
}
