//! The queue of status updates not yet acknowledged by the servers.
//!
//! Every update is appended, persisted (atomically, with fsync) and resent
//! on every sync until its uuid comes back in `acknowledged`, so none is
//! lost over a server failover or an agent restart. The queue is FIFO and
//! only acknowledged entries leave it, so updates of one task keep their
//! order.

use crate::error::AgentError;
use crate::util::write_atomic_sync;
use berth_api::cluster::TaskStatus;
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueFile {
    version: u32,
    updates: Vec<TaskStatus>,
}

const FILE_VERSION: u32 = 1;

#[derive(Debug, Default)]
pub struct UpdateQueue {
    /// None for a queue that is not persisted (simulated agents).
    path: Option<PathBuf>,
    updates: VecDeque<TaskStatus>,
}

impl UpdateQueue {
    /// Loads the queue saved at `path`; a missing file is an empty queue.
    pub fn open(path: PathBuf) -> Result<Self, AgentError> {
        let updates = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: QueueFile =
                    serde_json::from_slice(&bytes).map_err(|e| AgentError::Corrupt {
                        path: path.clone(),
                        detail: e.to_string(),
                    })?;
                if file.version != FILE_VERSION {
                    return Err(AgentError::Corrupt {
                        path,
                        detail: format!("unknown version {}", file.version),
                    });
                }
                file.updates.into()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => VecDeque::new(),
            Err(e) => return Err(AgentError::io("reading", path, e)),
        };
        Ok(UpdateQueue {
            path: Some(path),
            updates,
        })
    }

    pub fn in_memory() -> Self {
        Self::default()
    }

    fn persist(&self) -> Result<(), AgentError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = QueueFile {
            version: FILE_VERSION,
            updates: self.updates.iter().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| AgentError::Corrupt {
            path: path.clone(),
            detail: format!("encoding: {e}"),
        })?;
        write_atomic_sync(path, &bytes).map_err(|e| AgentError::io("writing", path, e))
    }

    /// Appends and persists. On a persistence error the update is still
    /// queued in memory (and sent); the error says it may not survive a
    /// restart.
    pub fn push(&mut self, update: TaskStatus) -> Result<(), AgentError> {
        self.updates.push_back(update);
        self.persist()
    }

    /// The oldest `max` updates, in order.
    pub fn pending(&self, max: usize) -> Vec<TaskStatus> {
        self.updates.iter().take(max).cloned().collect()
    }

    /// Drops the acknowledged updates; returns how many were dropped.
    pub fn acknowledge(&mut self, uuids: &[String]) -> Result<usize, AgentError> {
        if uuids.is_empty() {
            return Ok(0);
        }
        let acked: HashSet<&str> = uuids.iter().map(String::as_str).collect();
        let before = self.updates.len();
        self.updates.retain(|u| !acked.contains(u.uuid.as_str()));
        let dropped = before - self.updates.len();
        if dropped > 0 {
            self.persist()?;
        }
        Ok(dropped)
    }

    pub fn len(&self) -> usize {
        self.updates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    /// Ids of tasks with an update still waiting.
    pub fn task_ids(&self) -> HashSet<String> {
        self.updates.iter().map(|u| u.task_id.clone()).collect()
    }

    /// Ids of tasks whose terminal update is still waiting.
    pub fn terminal_task_ids(&self) -> HashSet<String> {
        self.updates
            .iter()
            .filter(|u| u.state.is_terminal())
            .map(|u| u.task_id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_types::cluster::TaskState;

    fn status(task: &str, state: TaskState, uuid: &str) -> TaskStatus {
        TaskStatus {
            task_id: task.into(),
            agent_id: "a1".into(),
            state,
            message: None,
            reason: None,
            exit_code: None,
            uuid: uuid.into(),
            timestamp_ms: 1,
        }
    }

    #[test]
    fn persists_across_reopen_and_acks_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("updates.json");
        let mut q = UpdateQueue::open(path.clone()).unwrap();
        assert!(q.is_empty());
        q.push(status("t1", TaskState::Starting, "u1")).unwrap();
        q.push(status("t1", TaskState::Running, "u2")).unwrap();
        q.push(status("t2", TaskState::Running, "u3")).unwrap();
        q.push(status("t1", TaskState::Finished, "u4")).unwrap();
        drop(q);

        let mut q = UpdateQueue::open(path.clone()).unwrap();
        let uuids: Vec<String> = q.pending(10).into_iter().map(|u| u.uuid).collect();
        assert_eq!(uuids, ["u1", "u2", "u3", "u4"]);
        assert_eq!(q.pending(2).len(), 2);
        assert_eq!(q.terminal_task_ids(), HashSet::from(["t1".to_string()]));

        // Partial and unknown acknowledgements: order of the rest is kept.
        assert_eq!(q.acknowledge(&["u2".into(), "nope".into()]).unwrap(), 1);
        drop(q);
        let mut q = UpdateQueue::open(path.clone()).unwrap();
        let uuids: Vec<String> = q.pending(10).into_iter().map(|u| u.uuid).collect();
        assert_eq!(uuids, ["u1", "u3", "u4"]);
        assert_eq!(
            q.acknowledge(&["u1".into(), "u3".into(), "u4".into()])
                .unwrap(),
            3
        );
        assert!(q.is_empty());
        drop(q);
        assert!(UpdateQueue::open(path).unwrap().is_empty());
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("updates.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = UpdateQueue::open(path.clone()).unwrap_err();
        assert!(err.to_string().contains("updates.json"), "{err}");
        std::fs::write(&path, br#"{"version":9,"updates":[]}"#).unwrap();
        assert!(UpdateQueue::open(path).is_err());
    }

    #[test]
    fn in_memory_queue_does_not_touch_disk() {
        let mut q = UpdateQueue::in_memory();
        q.push(status("t", TaskState::Running, "u")).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q.task_ids(), HashSet::from(["t".to_string()]));
        assert_eq!(q.acknowledge(&["u".into()]).unwrap(), 1);
    }
}
