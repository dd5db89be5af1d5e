//! The agent's state between executors and the sync loop: its id, the
//! update queue and what it knows of each task. Executors report into it
//! (it is their [`StatusSink`]); the sync loop reads it.

use crate::reconcile::LocalState;
use crate::sink::{StatusSink, TaskEvent};
use crate::updates::UpdateQueue;
use crate::util::{new_uuid, now_ms};
use berth_api::cluster::{TaskInfo, TaskStatus};
use berth_types::cluster::TaskState;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct LocalTask {
    pub info: Option<TaskInfo>,
    pub local: LocalState,
    pub state: TaskState,
}

struct State {
    agent_id: String,
    queue: UpdateQueue,
    tasks: HashMap<String, LocalTask>,
    terminal_since_gc: usize,
}

pub struct Core {
    state: Mutex<State>,
    /// Woken by every report, so a long poll is cut short to send it.
    pub notify: Notify,
}

impl Core {
    pub fn new(agent_id: String, queue: UpdateQueue) -> Self {
        let mut tasks = HashMap::new();
        // Tasks whose terminal update still waits are over here, even if
        // their sandbox is gone: never launch them again.
        for id in queue.terminal_task_ids() {
            tasks.insert(
                id,
                LocalTask {
                    info: None,
                    local: LocalState::Terminal,
                    state: TaskState::Finished,
                },
            );
        }
        Core {
            state: Mutex::new(State {
                agent_id,
                queue,
                tasks,
                terminal_since_gc: 0,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn agent_id(&self) -> String {
        self.lock().agent_id.clone()
    }

    pub fn set_agent_id(&self, id: &str) {
        self.lock().agent_id = id.to_string();
    }

    /// The agent id and the oldest `max` unacknowledged updates.
    pub fn pending(&self, max: usize) -> (String, Vec<TaskStatus>) {
        let st = self.lock();
        (st.agent_id.clone(), st.queue.pending(max))
    }

    pub fn pending_count(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn acknowledge(&self, uuids: &[String]) {
        if let Err(e) = self.lock().queue.acknowledge(uuids) {
            tracing::error!(error = %e, "persisting acknowledged updates");
        }
    }

    /// What reconciliation needs: each task's local state and the tasks
    /// with updates still waiting.
    pub fn snapshot(&self) -> (HashMap<String, LocalState>, HashSet<String>) {
        let st = self.lock();
        let local = st.tasks.iter().map(|(k, v)| (k.clone(), v.local)).collect();
        (local, st.queue.task_ids())
    }

    pub fn tasks(&self) -> Vec<(String, LocalTask)> {
        let st = self.lock();
        let mut v: Vec<(String, LocalTask)> = st
            .tasks
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Records a task (accepted for launch, or found at recovery).
    pub fn track(&self, info: TaskInfo, local: LocalState, state: TaskState) {
        let mut st = self.lock();
        st.tasks.insert(
            info.task_id.clone(),
            LocalTask {
                info: Some(info),
                local,
                state,
            },
        );
    }

    pub fn mark_killing(&self, task_id: &str) {
        if let Some(t) = self.lock().tasks.get_mut(task_id) {
            if t.local.is_active() {
                t.local = LocalState::Killing;
            }
        }
    }

    pub fn forget(&self, ids: &[String]) {
        let mut st = self.lock();
        for id in ids {
            st.tasks.remove(id);
        }
    }

    /// Terminal reports since the last call.
    pub fn take_terminal_count(&self) -> usize {
        std::mem::take(&mut self.lock().terminal_since_gc)
    }
}

impl StatusSink for Core {
    fn report(&self, ev: TaskEvent) {
        let mut st = self.lock();
        let status = TaskStatus {
            task_id: ev.task_id.clone(),
            agent_id: st.agent_id.clone(),
            state: ev.state,
            message: ev.message.clone(),
            reason: ev.reason.clone(),
            exit_code: ev.exit_code,
            uuid: new_uuid(),
            timestamp_ms: now_ms(),
        };
        tracing::debug!(task = %ev.task_id, state = %ev.state, uuid = %status.uuid, "status update queued");
        if let Err(e) = st.queue.push(status) {
            // Still queued in memory and sent; only a restart could lose it.
            tracing::error!(task = %ev.task_id, error = %e, "persisting a status update");
        }
        let terminal = ev.state.is_terminal();
        let entry = st
            .tasks
            .entry(ev.task_id.clone())
            .or_insert_with(|| LocalTask {
                info: None,
                local: LocalState::Launching,
                state: ev.state,
            });
        entry.state = ev.state;
        entry.local = match (terminal, ev.state, entry.local) {
            (true, _, _) => LocalState::Terminal,
            (false, TaskState::Running, LocalState::Launching) => LocalState::Running,
            (false, _, l) => l,
        };
        if terminal {
            st.terminal_since_gc += 1;
        }
        drop(st);
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::TaskEvent;

    #[test]
    fn reports_update_state_and_queue() {
        let core = Core::new("a1".into(), UpdateQueue::in_memory());
        core.report(TaskEvent::new("t", TaskState::Starting));
        assert_eq!(core.snapshot().0["t"], LocalState::Launching);
        core.report(TaskEvent::new("t", TaskState::Running));
        assert_eq!(core.snapshot().0["t"], LocalState::Running);
        core.mark_killing("t");
        // A late RUNNING does not undo the kill.
        core.report(TaskEvent::new("t", TaskState::Running));
        assert_eq!(core.snapshot().0["t"], LocalState::Killing);
        core.report(TaskEvent::new("t", TaskState::Killed));
        assert_eq!(core.snapshot().0["t"], LocalState::Terminal);
        let (id, pending) = core.pending(10);
        assert_eq!(id, "a1");
        let states: Vec<TaskState> = pending.iter().map(|u| u.state).collect();
        assert_eq!(
            states,
            [
                TaskState::Starting,
                TaskState::Running,
                TaskState::Running,
                TaskState::Killed
            ]
        );
        assert_eq!(core.take_terminal_count(), 1);
        assert_eq!(core.take_terminal_count(), 0);
        core.acknowledge(&pending.iter().map(|u| u.uuid.clone()).collect::<Vec<_>>());
        assert_eq!(core.pending_count(), 0);
    }

    #[test]
    fn queued_terminal_updates_block_relaunch_after_restart() {
        let mut q = UpdateQueue::in_memory();
        q.push(TaskStatus {
            task_id: "done".into(),
            agent_id: "a".into(),
            state: TaskState::Failed,
            message: None,
            reason: None,
            exit_code: Some(1),
            uuid: "u".into(),
            timestamp_ms: 0,
        })
        .unwrap();
        let core = Core::new("a".into(), q);
        assert_eq!(core.snapshot().0["done"], LocalState::Terminal);
    }
}
