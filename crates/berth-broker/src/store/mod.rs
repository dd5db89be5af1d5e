//! Persistence. Two logs in the data directory:
//! - `messages/`: segment files of publish, delivered and remove records for persistent
//!   messages in durable queues ([`segment`] has the record format), written by
//!   one writer thread with group commit: publishers append encoded records to a
//!   shared pending buffer and get a [`WriteTicket`]; the writer swaps the buffer
//!   out, writes it with one `write` and one `fdatasync`, then advances the
//!   synced watermark. An in-memory index (queue → message id → segment) and
//!   per-segment live counts decide when a segment file can be deleted; sparse
//!   old segments are compacted by copying their live messages forward.
//!   `messages.rs` has the details, the crash-safety argument and what an I/O
//!   error does (the store fails until restart; confirms become nacks).
//! - `meta.log` + `meta.json`: durable metadata changes, fsynced per change, and a
//!   compacted snapshot in the definitions format ([`meta`]).
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::definitions::Definitions;
use crate::types::{Message, MessageId, MessageLog, MetaLog, MetaOp, WriteTicket};

mod messages;
pub mod meta;
pub mod segment;
#[cfg(test)]
mod tests;

/// Tuning knobs with sensible defaults.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A new segment starts after this many bytes.
    pub segment_bytes: u64,
    /// fsync after each write batch (false only for benchmarks of the fsync cost).
    pub fsync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            fsync: true,
        }
    }
}

/// A persistent message found at startup, in publish order per queue.
#[derive(Debug)]
pub struct RecoveredMessage {
    pub vhost: String,
    pub queue: String,
    pub message: Message,
    /// It had been delivered to a consumer that acks (or basic.get without
    /// no-ack) and was not acked: it comes back with redelivered=true.
    pub redelivered: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: corrupt record at offset {offset}: {reason}")]
    Corrupt {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("{path}: line {line}: {reason}")]
    BadLine {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{path}: {source}")]
    Snapshot {
        path: String,
        source: serde_json::Error,
    },
}

/// The message store.
pub struct Store {
    shared: Arc<messages::Shared>,
    next_id: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Store {
    /// Opens (creating) `dir/messages`, replays the segments and returns the
    /// messages still in queues. A torn record at the tail of the last segment
    /// (crash mid-write) is truncated away; corruption elsewhere is an error
    /// naming the file and offset.
    pub fn open(
        dir: &Path,
        options: StoreOptions,
    ) -> Result<(Store, Vec<RecoveredMessage>), StoreError> {
        let dir = dir.join("messages");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let replayed = messages::replay(&dir)?;
        let shared = Arc::new(messages::Shared {
            state: Mutex::new(replayed.state),
            wake: Condvar::new(),
            drained: Condvar::new(),
            synced: tokio::sync::watch::Sender::new(0),
            disk_bytes: AtomicU64::new(replayed.disk_bytes),
            max_pending: std::sync::atomic::AtomicUsize::new(messages::MAX_PENDING_BYTES),
            dir: dir.clone(),
            options,
            failed: std::sync::atomic::AtomicBool::new(false),
            unsaved_logged: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            fault: Mutex::new(None),
        });
        let writer = messages::Writer::new(shared.clone());
        let handle = std::thread::Builder::new()
            .name("berth-store".to_string())
            .spawn(move || writer.run())
            .map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        let store = Store {
            shared,
            next_id: AtomicU64::new(replayed.max_id + 1),
            writer: Mutex::new(Some(handle)),
        };
        Ok((store, replayed.recovered))
    }

    /// Bytes on disk (for the disk metrics).
    pub fn disk_bytes(&self) -> u64 {
        self.shared.disk_bytes.load(Ordering::Relaxed)
    }

    /// An I/O error stopped the writer: nothing more is written until restart
    /// (see [`MessageLog::failed`]).
    pub fn failed(&self) -> bool {
        self.shared.is_failed()
    }

    /// Stops the writer after flushing (graceful shutdown). Prompt after a
    /// failure: nothing is retried.
    pub fn close(&self) {
        self.shared.stop();
        if let Some(handle) = self.writer.lock().take() {
            if handle.join().is_err() {
                tracing::error!("message store writer panicked");
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

impl MessageLog for Store {
    fn next_id(&self) -> MessageId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
    fn publish(&self, vhost: &str, queues: &[&str], message: &Message) -> WriteTicket {
        WriteTicket(self.shared.publish(vhost, queues, message))
    }
    fn remove(&self, vhost: &str, queue: &str, ids: &[MessageId]) {
        self.shared.remove(vhost, queue, ids)
    }
    fn remove_queue(&self, vhost: &str, queue: &str) {
        self.shared.remove_queue(vhost, queue)
    }
    fn delivered(&self, vhost: &str, queue: &str, ids: &[MessageId]) {
        self.shared.delivered(vhost, queue, ids)
    }
    fn synced(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.synced.subscribe()
    }
    fn failed(&self) -> bool {
        self.shared.is_failed()
    }
}

/// The metadata store.
pub struct MetaStore {
    inner: meta::MetaInner,
}

impl MetaStore {
    /// Opens (creating) `dir/meta.json` + `dir/meta.log`; returns the current definitions
    /// (snapshot with the log replayed on top; a torn last line is dropped).
    pub fn open(dir: &Path) -> Result<(MetaStore, Definitions), StoreError> {
        let (inner, defs) = meta::MetaInner::open(dir)?;
        Ok((MetaStore { inner }, defs))
    }
}

impl MetaLog for MetaStore {
    fn append(&self, op: &MetaOp) -> std::io::Result<()> {
        self.inner.append(op)
    }
}

/// Applies one change to a definitions document (shared by replay and compaction).
pub fn apply_meta_op(defs: &mut Definitions, op: &MetaOp) {
    meta::apply(defs, op)
}
