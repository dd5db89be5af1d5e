//! Group commit in front of the replica: proposals that arrive while a
//! write is in flight go out together in the next round, and every agent
//! status batch among them is merged into one `UpdateTasks` command. With
//! thousands of agents syncing at once that turns thousands of small log
//! entries into a few large ones.
//!
//! One round is in flight at a time, so commands reach the log in the order
//! they were proposed and results come back in log order.

use crate::replica::{Replica, ReplicaError};
use crate::state::{Command, CommandResult};
use berth_api::cluster::TaskStatus;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Most commands written in one round.
const MAX_BATCH: usize = 1024;
/// Most status updates merged into one `UpdateTasks` entry, to bound the
/// size of a log entry.
const MAX_MERGED_UPDATES: usize = 20_000;

type Reply = oneshot::Sender<Result<CommandResult, ReplicaError>>;

struct Pending {
    cmd: Command,
    reply: Reply,
}

/// Where the status updates produced by applied commands go (the master
/// forwards them to frameworks).
pub type UpdateSink = Arc<dyn Fn(Vec<(String, TaskStatus)>) + Send + Sync>;

#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    /// Starts the writer task; it ends when `stop` is cancelled.
    pub fn start(replica: Arc<dyn Replica>, sink: UpdateSink, stop: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(replica, sink, rx, stop));
        Self { tx }
    }

    /// Proposes `cmd` and waits until it is applied. The updates in the
    /// result have already been handed to the sink; a merged `UpdateTasks`
    /// answers with its error only (the caller knows its own uuids).
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, ReplicaError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { cmd, reply })
            .map_err(|_| ReplicaError::Other("the server is shutting down".into()))?;
        rx.await
            .map_err(|_| ReplicaError::Other("the server is shutting down".into()))?
    }
}

async fn run(
    replica: Arc<dyn Replica>,
    sink: UpdateSink,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            p = rx.recv() => match p {
                Some(p) => p,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (cmds, owners) = merge(batch);
        match replica.write_many(cmds).await {
            Ok(results) => {
                let mut owners = owners.into_iter();
                for mut res in results {
                    let Some(group) = owners.next() else { break };
                    if !res.updates.is_empty() {
                        sink(std::mem::take(&mut res.updates));
                    }
                    let mut group = group;
                    if group.len() == 1 {
                        if let Some(o) = group.pop() {
                            let _ = o.send(Ok(res));
                        }
                        continue;
                    }
                    for o in group {
                        let _ = o.send(Ok(CommandResult {
                            error: res.error.clone(),
                            ..CommandResult::default()
                        }));
                    }
                }
                // Owners without a result (a replica answering short) learn
                // it instead of waiting forever.
                for group in owners {
                    for o in group {
                        let _ = o.send(Err(ReplicaError::Other(
                            "the replica returned fewer results than commands".into(),
                        )));
                    }
                }
            }
            Err(e) => {
                for o in owners.into_iter().flatten() {
                    let _ = o.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Merges every `UpdateTasks` of the batch into as few commands as the
/// size bound allows; other commands keep their order.
fn merge(batch: Vec<Pending>) -> (Vec<Command>, Vec<Vec<Reply>>) {
    let mut cmds: Vec<Command> = Vec::with_capacity(batch.len());
    let mut owners: Vec<Vec<Reply>> = Vec::with_capacity(batch.len());
    let mut open: Option<usize> = None;
    for Pending { cmd, reply } in batch {
        match cmd {
            Command::UpdateTasks { updates } => {
                if let Some(i) = open {
                    if let Command::UpdateTasks { updates: merged } = &mut cmds[i] {
                        if merged.len() + updates.len() <= MAX_MERGED_UPDATES {
                            merged.extend(updates);
                            owners[i].push(reply);
                            continue;
                        }
                    }
                }
                open = Some(cmds.len());
                cmds.push(Command::UpdateTasks { updates });
                owners.push(vec![reply]);
            }
            other => {
                cmds.push(other);
                owners.push(vec![reply]);
            }
        }
    }
    (cmds, owners)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::MemoryReplica;
    use berth_types::TaskState;

    fn status(uuid: &str) -> TaskStatus {
        TaskStatus {
            task_id: "t".into(),
            agent_id: "a".into(),
            state: TaskState::Running,
            message: None,
            reason: None,
            exit_code: None,
            uuid: uuid.into(),
            timestamp_ms: 1,
        }
    }

    #[test]
    fn merges_updates_and_keeps_other_commands() {
        let mk = |cmd| {
            let (reply, _rx) = oneshot::channel();
            Pending { cmd, reply }
        };
        let batch = vec![
            mk(Command::UpdateTasks {
                updates: vec![status("1")],
            }),
            mk(Command::SetRoleWeight {
                role: "r".into(),
                weight: 2.0,
            }),
            mk(Command::UpdateTasks {
                updates: vec![status("2"), status("3")],
            }),
        ];
        let (cmds, owners) = merge(batch);
        assert_eq!(cmds.len(), 2);
        assert_eq!(owners[0].len(), 2);
        match &cmds[0] {
            Command::UpdateTasks { updates } => assert_eq!(updates.len(), 3),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn concurrent_proposals_all_answer() {
        let replica = MemoryReplica::new("127.0.0.1:1");
        let stop = CancellationToken::new();
        let p = Proposer::start(replica.clone(), Arc::new(|_| {}), stop.clone());
        let mut joins = Vec::new();
        for i in 0..50 {
            let p = p.clone();
            joins.push(tokio::spawn(async move {
                p.propose(Command::UpdateTasks {
                    updates: vec![status(&i.to_string())],
                })
                .await
            }));
        }
        for j in joins {
            assert!(j.await.unwrap().unwrap().error.is_none());
        }
        assert!(*replica.watch_applied().borrow() <= 50);
        stop.cancel();
    }
}
