//! The state machine: the in-memory [`ClusterState`] and its snapshots.
//!
//! Applying does not write to disk; durability comes from the log plus
//! snapshots. A snapshot file holds one line of JSON [`SnapshotMeta`]
//! (last applied log id, membership) and then the JSON of the state; it is
//! replaced atomically (temp file, fsync, rename, fsync of the directory)
//! so a crash leaves the old or the new snapshot, never half of one. On
//! start the latest snapshot is loaded and openraft replays the log after
//! it.

use super::{RaftError, TypeConfig};
use crate::state::{ClusterState, CommandResult, COMMAND_VERSION};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

type NodeId = u64;
type Meta = SnapshotMeta<NodeId, BasicNode>;
type StoreResult<T> = Result<T, StorageError<NodeId>>;

pub const SNAPSHOT_FILE: &str = "snapshot.bin";

/// The latest snapshot, kept in memory to serve followers without
/// re-reading the file.
#[derive(Clone)]
struct Current {
    meta: Meta,
    data: Arc<Vec<u8>>,
}

/// What the state machine shares with the [`RaftReplica`](super::RaftReplica).
pub struct Shared {
    pub state: Arc<RwLock<ClusterState>>,
    pub applied_tx: watch::Sender<u64>,
    dir: PathBuf,
    /// The latest snapshot; locked only to read or swap it.
    current: Mutex<Option<Current>>,
    /// Serialises snapshot file writes (held on a blocking thread).
    writing: Mutex<()>,
    seq: AtomicU64,
}

impl Shared {
    fn path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// Persists `snap` unless a newer snapshot is already current.
    fn persist(&self, snap: Current) -> Result<(), AnyError> {
        let poisoned = || AnyError::error("snapshot lock poisoned");
        let _writing = self.writing.lock().map_err(|_| poisoned())?;
        let newer = self
            .current()
            .is_some_and(|c| c.meta.last_log_id > snap.meta.last_log_id);
        if newer {
            return Ok(());
        }
        let path = self.path();
        write_atomic(&path, &snap.meta, &snap.data)
            .map_err(|e| AnyError::error(format!("write snapshot {}: {e}", path.display())))?;
        *self.current.lock().map_err(|_| poisoned())? = Some(snap);
        Ok(())
    }

    fn current(&self) -> Option<Current> {
        self.current.lock().ok().and_then(|c| c.clone())
    }

    /// The id of the latest snapshot, for tests and metrics.
    pub fn snapshot_log_id(&self) -> Option<LogId<NodeId>> {
        self.current().and_then(|c| c.meta.last_log_id)
    }
}

fn write_atomic(path: &Path, meta: &Meta, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let meta_json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&meta_json)?;
        f.write_all(b"\n")?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn read_snapshot(path: &Path) -> Result<Option<(Meta, Vec<u8>)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no metadata line")?;
    let meta: Meta = serde_json::from_slice(&bytes[..nl]).map_err(|e| format!("metadata: {e}"))?;
    Ok(Some((meta, bytes[nl + 1..].to_vec())))
}

pub struct StateMachineStore {
    shared: Arc<Shared>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
}

impl StateMachineStore {
    /// Opens the state machine in `dir`, loading the latest snapshot.
    pub fn open(dir: &Path) -> Result<Self, RaftError> {
        let path = dir.join(SNAPSHOT_FILE);
        let err = |message: String| RaftError::Snapshot {
            path: path.display().to_string(),
            message,
        };
        let (state, current, last_applied, last_membership) =
            match read_snapshot(&path).map_err(err)? {
                Some((meta, data)) => {
                    let state: ClusterState =
                        serde_json::from_slice(&data).map_err(|e| err(format!("state: {e}")))?;
                    let cur = Current {
                        meta: meta.clone(),
                        data: Arc::new(data),
                    };
                    (state, Some(cur), meta.last_log_id, meta.last_membership)
                }
                None => (
                    ClusterState::default(),
                    None,
                    None,
                    StoredMembership::default(),
                ),
            };
        let applied = last_applied.map(|l| l.index).unwrap_or(0);
        Ok(Self {
            shared: Arc::new(Shared {
                state: Arc::new(RwLock::new(state)),
                applied_tx: watch::channel(applied).0,
                dir: dir.to_path_buf(),
                current: Mutex::new(current),
                writing: Mutex::new(()),
                seq: AtomicU64::new(0),
            }),
            last_applied,
            last_membership,
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn snapshot_id(&self, last: Option<LogId<NodeId>>) -> String {
        let n = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, n),
            None => format!("0-0-{n}"),
        }
    }
}

pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    meta: Meta,
    state: ClusterState,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let shared = self.shared.clone();
        let meta = self.meta.clone();
        let state = std::mem::take(&mut self.state);
        let sig = meta.signature();
        // Serialising a large state and fsyncing it is blocking work.
        let res = tokio::task::spawn_blocking(move || -> Result<Current, AnyError> {
            let data = serde_json::to_vec(&state)
                .map_err(|e| AnyError::error(format!("encode snapshot: {e}")))?;
            let cur = Current {
                meta,
                data: Arc::new(data),
            };
            shared.persist(cur.clone())?;
            Ok(cur)
        })
        .await
        .map_err(|e| AnyError::error(format!("snapshot task: {e}")))
        .and_then(|r| r);
        let cur = res.map_err(|e| StorageIOError::write_snapshot(Some(sig), e))?;
        tracing::info!(snapshot = %cur.meta, bytes = cur.data.len(), "raft snapshot built");
        Ok(Snapshot {
            meta: cur.meta,
            snapshot: Box::new(Cursor::new(cur.data.as_ref().clone())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let res = match entry.payload {
                EntryPayload::Blank => CommandResult::default(),
                EntryPayload::Normal(vc) => {
                    // An old server must stop rather than misapply a command
                    // it cannot understand.
                    if vc.version > COMMAND_VERSION {
                        return Err(StorageIOError::apply(
                            log_id,
                            AnyError::error(format!(
                                "log entry {} has command version {}, this server reads up to {COMMAND_VERSION}",
                                log_id.index, vc.version
                            )),
                        )
                        .into());
                    }
                    let mut st = self.shared.state.write().map_err(|_| {
                        StorageIOError::apply(log_id, AnyError::error("state lock poisoned"))
                    })?;
                    st.apply(log_id.index, &vc.command)
                }
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(log_id), m);
                    CommandResult::default()
                }
            };
            self.last_applied = Some(log_id);
            self.shared.applied_tx.send_replace(log_id.index);
            out.push(res);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Called between applies, so the copy is consistent with
        // `last_applied`.
        let state = self
            .shared
            .state
            .read()
            .map(|s| s.clone())
            .unwrap_or_default();
        SnapshotBuilder {
            shared: self.shared.clone(),
            meta: Meta {
                last_log_id: self.last_applied,
                last_membership: self.last_membership.clone(),
                snapshot_id: self.snapshot_id(self.last_applied),
            },
            state,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let sig = meta.signature();
        let state: ClusterState = serde_json::from_slice(&data).map_err(|e| {
            StorageIOError::read_snapshot(
                Some(sig.clone()),
                AnyError::error(format!("decode snapshot {}: {e}", meta.snapshot_id)),
            )
        })?;
        let shared = self.shared.clone();
        let cur = Current {
            meta: meta.clone(),
            data: Arc::new(data),
        };
        tokio::task::spawn_blocking(move || shared.persist(cur))
            .await
            .map_err(|e| AnyError::error(format!("snapshot task: {e}")))
            .and_then(|r| r)
            .map_err(|e| StorageIOError::write_snapshot(Some(sig.clone()), e))?;
        {
            let mut st = self.shared.state.write().map_err(|_| {
                StorageIOError::write_snapshot(Some(sig), AnyError::error("state lock poisoned"))
            })?;
            *st = state;
        }
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.shared
            .applied_tx
            .send_replace(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        tracing::info!(snapshot = %meta, "raft snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.shared.current().map(|c| Snapshot {
            meta: c.meta,
            snapshot: Box::new(Cursor::new(c.data.as_ref().clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::tests::TempDir;
    use crate::state::{Command, VersionedCommand};
    use openraft::CommittedLeaderId;

    fn entry(index: u64, version: u32) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(VersionedCommand {
                version,
                command: Command::SetRoleWeight {
                    role: format!("r{index}"),
                    weight: 2.0,
                },
            }),
        }
    }

    #[tokio::test]
    async fn snapshot_roundtrip_and_newer_version_refused() {
        let dir = TempDir::new("sm");
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        let rx = sm.shared().applied_tx.subscribe();
        sm.apply(vec![entry(1, COMMAND_VERSION), entry(2, COMMAND_VERSION)])
            .await
            .unwrap();
        assert_eq!(*rx.borrow(), 2);
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id.unwrap().index, 2);
        let err = sm
            .apply(vec![entry(3, COMMAND_VERSION + 1)])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("command version"), "{err}");

        let mut again = StateMachineStore::open(dir.path()).unwrap();
        let (applied, _) = again.applied_state().await.unwrap();
        assert_eq!(applied.unwrap().index, 2);
        assert_eq!(again.shared().state.read().unwrap().role_weights.len(), 2);
        assert!(again.get_current_snapshot().await.unwrap().is_some());
    }
}
