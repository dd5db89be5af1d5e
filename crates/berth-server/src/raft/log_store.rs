//! The Raft log, vote and pointers in one redb file.
//!
//! Every append, truncation, purge and vote is committed with
//! `Durability::Immediate` (fsync) before openraft is told it is done:
//! openraft acknowledges a client write only after a quorum has flushed
//! it, so an acknowledged write survives `kill -9` of any minority. The
//! commit pointer alone is written without fsync: losing it only means a
//! restart re-applies fewer entries until the leader says them committed.

use super::{RaftError, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Log index → serialized [`Entry`].
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// `vote`, `committed`, `last_purged` → JSON.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

type NodeId = u64;
type StoreResult<T> = Result<T, StorageError<NodeId>>;

/// Cheap to clone: clones share the database (openraft reads the log from
/// its replication tasks through clones).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl LogStore {
    pub fn open(path: &Path) -> Result<Self, RaftError> {
        let err = |e: &dyn std::fmt::Display| RaftError::Log {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| err(&e))?;
        // Create both tables up front so readers never meet a missing table.
        let tx = db.begin_write().map_err(|e| err(&e))?;
        {
            tx.open_table(LOGS).map_err(|e| err(&e))?;
            tx.open_table(META).map_err(|e| err(&e))?;
        }
        tx.commit().map_err(|e| err(&e))?;
        Ok(Self {
            db: Arc::new(db),
            path: Arc::new(path.to_path_buf()),
        })
    }

    fn msg(&self, what: &str, e: impl std::fmt::Display) -> AnyError {
        AnyError::error(format!("{what} {}: {e}", self.path.display()))
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, AnyError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.msg("read raft log", e))?;
        let table = tx
            .open_table(META)
            .map_err(|e| self.msg("read raft log", e))?;
        let Some(v) = table.get(key).map_err(|e| self.msg("read raft log", e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| self.msg(&format!("decode {key} in"), e))
    }

    /// Runs one write transaction on a blocking thread (fsync must not
    /// stall the async workers), committed with `durability`.
    async fn write<F>(
        &self,
        durability: Durability,
        what: &'static str,
        f: F,
    ) -> Result<(), AnyError>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    {
        let db = self.db.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let mut tx = db.begin_write()?;
            tx.set_durability(durability)?;
            f(&tx)?;
            tx.commit()?;
            Ok(())
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.msg(what, e)),
            Err(e) => Err(self.msg(what, e)),
        }
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), AnyError> {
        let bytes = serde_json::to_vec(value).map_err(|e| self.msg("encode for", e))?;
        self.write(durability, "write raft log", move |tx| {
            tx.open_table(META)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, AnyError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.msg("read raft log", e))?;
        let table = tx
            .open_table(LOGS)
            .map_err(|e| self.msg("read raft log", e))?;
        let Some((_, v)) = table.last().map_err(|e| self.msg("read raft log", e))? else {
            return Ok(None);
        };
        let entry: Entry<TypeConfig> =
            serde_json::from_slice(v.value()).map_err(|e| self.msg("decode last entry of", e))?;
        Ok(Some(*entry.get_log_id()))
    }
}

fn read_err(e: AnyError) -> StorageError<NodeId> {
    StorageIOError::read_logs(e).into()
}

fn write_err(e: AnyError) -> StorageError<NodeId> {
    StorageIOError::write_logs(e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let tx = self
            .db
            .begin_read()
            .map_err(|e| read_err(self.msg("read raft log", e)))?;
        let table = tx
            .open_table(LOGS)
            .map_err(|e| read_err(self.msg("read raft log", e)))?;
        let mut out = Vec::new();
        for item in table
            .range::<u64>(bounds)
            .map_err(|e| read_err(self.msg("read raft log", e)))?
        {
            let (k, v) = item.map_err(|e| read_err(self.msg("read raft log", e)))?;
            let entry: Entry<TypeConfig> = serde_json::from_slice(v.value())
                .map_err(|e| read_err(self.msg(&format!("decode entry {} of", k.value()), e)))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.read_meta(KEY_PURGED).map_err(read_err)?;
        let last = self.last_entry_id().map_err(read_err)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        self.put_meta(KEY_VOTE, vote, Durability::Immediate)
            .await
            .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        self.read_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        self.put_meta(KEY_COMMITTED, &committed, Durability::None)
            .await
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        let v: Option<Option<LogId<NodeId>>> = self.read_meta(KEY_COMMITTED).map_err(read_err)?;
        Ok(v.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for e in entries {
            let bytes = serde_json::to_vec(&e).map_err(|err| {
                StorageError::from(StorageIOError::write_log_entry(
                    *e.get_log_id(),
                    self.msg("encode entry for", err),
                ))
            })?;
            rows.push((e.get_log_id().index, bytes));
        }
        if !rows.is_empty() {
            self.write(Durability::Immediate, "append to raft log", move |tx| {
                let mut t = tx.open_table(LOGS)?;
                for (i, b) in &rows {
                    t.insert(*i, b.as_slice())?;
                }
                Ok(())
            })
            .await
            .map_err(write_err)?;
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let from = log_id.index;
        self.write(Durability::Immediate, "truncate raft log", move |tx| {
            tx.open_table(LOGS)?.retain_in(from.., |_, _| false)?;
            Ok(())
        })
        .await
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let upto = log_id.index;
        let purged =
            serde_json::to_vec(&Some(log_id)).map_err(|e| write_err(self.msg("encode for", e)))?;
        self.write(Durability::Immediate, "purge raft log", move |tx| {
            tx.open_table(META)?.insert(KEY_PURGED, purged.as_slice())?;
            tx.open_table(LOGS)?.retain_in(..=upto, |_, _| false)?;
            Ok(())
        })
        .await
        .map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::tests::TempDir;
    use crate::state::{Command, VersionedCommand};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(VersionedCommand::from(Command::SetRoleWeight {
                role: format!("r{index}"),
                weight: 1.0,
            })),
        }
    }

    #[tokio::test]
    async fn entries_vote_and_purge_survive_reopen() {
        let dir = TempDir::new("logstore");
        let path = dir.path().join("raft.redb");
        {
            let mut s = LogStore::open(&path).unwrap();
            let rows: Vec<_> = (1..=10).map(|i| entry(1, i)).collect();
            // Append without a running Raft: write directly like `append` does.
            let rows2 = rows
                .iter()
                .map(|e| (e.log_id.index, serde_json::to_vec(e).unwrap()))
                .collect::<Vec<_>>();
            s.write(Durability::Immediate, "append", move |tx| {
                let mut t = tx.open_table(LOGS)?;
                for (i, b) in &rows2 {
                    t.insert(*i, b.as_slice())?;
                }
                Ok(())
            })
            .await
            .unwrap();
            s.save_vote(&Vote::new(3, 1)).await.unwrap();
            s.truncate(LogId::new(CommittedLeaderId::new(1, 1), 9))
                .await
                .unwrap();
            s.purge(LogId::new(CommittedLeaderId::new(1, 1), 3))
                .await
                .unwrap();
        }
        let mut s = LogStore::open(&path).unwrap();
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id.unwrap().index, 3);
        assert_eq!(st.last_log_id.unwrap().index, 8);
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        let got = s.try_get_log_entries(0..100).await.unwrap();
        let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, vec![4, 5, 6, 7, 8]);
        let got = s.try_get_log_entries(5..=6).await.unwrap();
        assert_eq!(got.len(), 2);
    }
}
