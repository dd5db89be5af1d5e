//! How executors report task state changes.

use berth_types::cluster::TaskState;

/// A state change of one task, before the agent stamps it with its id,
/// a uuid and the time.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    pub task_id: String,
    pub state: TaskState,
    pub message: Option<String>,
    /// Machine-readable cause (see `TaskStatus::reason`).
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
}

impl TaskEvent {
    pub fn new(task_id: &str, state: TaskState) -> Self {
        TaskEvent {
            task_id: task_id.to_string(),
            state,
            message: None,
            reason: None,
            exit_code: None,
        }
    }

    pub fn with_reason(mut self, reason: &str, message: impl Into<String>) -> Self {
        self.reason = Some(reason.to_string());
        self.message = Some(message.into());
        self
    }
}

/// Receives every state change. `report` returns once the change is durable
/// (the agent persists it), so an executor may then mark the task reported.
pub trait StatusSink: Send + Sync + 'static {
    fn report(&self, event: TaskEvent);
}

/// Why the agent kills a task.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    /// In the sync response's `kill` list (a framework's KILL, a job stop,
    /// a drain).
    KilledByUser,
    /// Running here but no longer assigned to this agent.
    Orphaned,
}

impl KillReason {
    pub fn as_str(self) -> &'static str {
        match self {
            KillReason::KilledByUser => "killed_by_user",
            KillReason::Orphaned => "orphaned",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            KillReason::KilledByUser => "killed at the request of the servers",
            KillReason::Orphaned => "killed: the servers no longer assign it to this agent",
        }
    }
}

/// A task found in its sandbox when an executor starts.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub task: berth_api::cluster::TaskInfo,
    pub state: RecoveredState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveredState {
    /// Still running: re-adopted and supervised again.
    Running,
    /// Ended while nobody watched: its terminal update was reported now.
    Ended(TaskState),
    /// Ended and reported before.
    Reported(TaskState),
}
