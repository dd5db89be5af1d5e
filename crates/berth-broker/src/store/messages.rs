//! The message store's shared state (pending records, index, segment
//! liveness), the writer thread (group commit, reclaiming, compaction) and
//! replay at startup.
//!
//! Crash safety:
//! - Records reach disk in the order they were queued (one lock assigns both
//!   the ticket and the place in the pending buffer). A segment is fdatasynced
//!   before the next one gets any data, so a torn record can only be at the
//!   end of the last segment, which replay truncates.
//! - A segment is deleted when it holds no live (message, queue) reference and
//!   every older segment holding messages its remove records removed is gone
//!   already (`SegInfo::deps`); otherwise a removed message could come back
//!   at replay. Deletions happen after the batch queued before them is synced,
//!   one at a time in order with a directory fsync each.
//! - Compaction copies a sparse segment's live publishes (same ids, only the
//!   queues still holding them) into the current segment; the old file is then
//!   deleted by the rule above, after the copies are synced. Replay treats a
//!   second publish of an id into a queue as the same message, and recovery
//!   orders each queue by message id, so the copy keeps its place.
//! - Delivered records (a message went to a consumer that acks) only set a
//!   flag on a (queue, message) that is live at that point of the replay: they
//!   never keep a message alive nor bring a removed one back. For dependencies
//!   they count like remove records (their segment lives until the segments
//!   of the messages they flag are gone, else the flag would be lost).
//!   Compaction writes a delivered record after the copies of flagged
//!   messages, since the original record may then be deleted with the segment
//!   it depends on.
//!
//! I/O errors: the first failed create, write, fdatasync, unlink or directory
//! fsync (or a segment found unlinked after a sync: the data directory was
//! removed) makes the store *failed* until restart. It is logged once; the
//! writer cuts the open segment back to its last synced length (best effort:
//! no torn record, nothing unconfirmed left behind) and writes, syncs and
//! deletes nothing more. The synced watermark stays where it was, so nothing
//! not on disk is ever confirmed, and [`Shared::failed`] tells the channels to
//! nack every ticket above it instead of waiting. An fsync is never retried:
//! after a failed one the kernel may have dropped the dirty pages and a
//! second call could succeed without them. Later publishes, removes and
//! delivered flags are not queued at all (no backpressure, no growth); the
//! messages stay in their queues in memory and are lost at restart, which
//! recovers what was synced before the failure.
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use berth_amqp::BasicProperties;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use super::segment::{self, Record};
use super::{RecoveredMessage, StoreError, StoreOptions};
use crate::types::{Message, MessageId};

/// Publishers block while this many bytes wait for the writer (backpressure).
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// Compact a non-current segment when fewer than 1/COMPACT_RATIO of its
/// message references are live.
const COMPACT_RATIO: u64 = 4;

use berth_amqp::codec::{decode_properties, encode_properties};

/// An index entry: the segment of a (queue, message)'s newest publish record,
/// with the delivered flag in the top bit (segment numbers have at most 16
/// decimal digits, far below 2^63), which keeps the index at 8 bytes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot(u64);

const DELIVERED_BIT: u64 = 1 << 63;

impl Slot {
    fn new(seg: u64, delivered: bool) -> Slot {
        Slot(seg | if delivered { DELIVERED_BIT } else { 0 })
    }
    fn seg(self) -> u64 {
        self.0 & !DELIVERED_BIT
    }
    fn delivered(self) -> bool {
        self.0 & DELIVERED_BIT != 0
    }
}

/// Liveness of one segment.
#[derive(Debug, Default)]
struct SegInfo {
    /// (message, queue) references whose newest publish record is here.
    live: u64,
    /// References ever published here (for the compaction ratio).
    total: u64,
    /// Older segments holding messages that remove records here removed (or
    /// delivered records here flagged). Those records are needed (else the
    /// messages would come back at replay, or lose their flag) until every
    /// segment listed here is deleted.
    deps: BTreeSet<u64>,
}

/// Records waiting for the writer, for one segment.
struct Chunk {
    seg: u64,
    buf: Vec<u8>,
}

/// Everything publishers and the writer share, under one lock.
pub(super) struct State {
    chunks: Vec<Chunk>,
    pending_bytes: usize,
    /// The last ticket handed out.
    ticket: u64,
    /// The segment new records go to, and its size including pending records.
    cur_seg: u64,
    cur_bytes: u64,
    segments: BTreeMap<u64, SegInfo>,
    /// vhost → queue → message id → segment of its newest publish record and
    /// the delivered flag.
    queues: HashMap<String, HashMap<String, HashMap<MessageId, Slot>>>,
    /// Segments to unlink once the pending records are written and synced.
    deletes: Vec<u64>,
    /// Some segment's live count reached zero: look for segments to delete.
    reclaim_due: bool,
    stop: bool,
    /// Written buffers kept for reuse.
    spare: Vec<Vec<u8>>,
}

impl State {
    fn new(cur_seg: u64) -> State {
        let mut segments = BTreeMap::new();
        segments.insert(cur_seg, SegInfo::default());
        State {
            chunks: Vec::new(),
            pending_bytes: 0,
            ticket: 0,
            cur_seg,
            cur_bytes: 0,
            segments,
            queues: HashMap::new(),
            deletes: Vec::new(),
            reclaim_due: false,
            stop: false,
            spare: Vec::new(),
        }
    }

    /// Picks the segment for a record of `len` bytes (rotating when the current
    /// one is full) and returns the buffer to append it to.
    fn buffer_for(&mut self, len: usize, segment_bytes: u64) -> &mut Vec<u8> {
        if self.cur_bytes > 0 && self.cur_bytes + len as u64 > segment_bytes {
            self.cur_seg += 1;
            self.cur_bytes = 0;
            self.segments.insert(self.cur_seg, SegInfo::default());
            // The old segment may already be empty.
            self.reclaim_due = true;
        }
        self.cur_bytes += len as u64;
        self.pending_bytes += len;
        let seg = self.cur_seg;
        if self.chunks.last().map(|c| c.seg) != Some(seg) {
            let buf = self.spare.pop().unwrap_or_default();
            self.chunks.push(Chunk { seg, buf });
        }
        let n = self.chunks.len() - 1;
        &mut self.chunks[n].buf
    }

    fn unref(&mut self, seg: u64) {
        if let Some(info) = self.segments.get_mut(&seg) {
            info.live = info.live.saturating_sub(1);
            if info.live == 0 {
                self.reclaim_due = true;
            }
        }
    }

    /// Index effect of a publish record in `seg`.
    fn apply_publish<'a>(
        &mut self,
        seg: u64,
        id: MessageId,
        vhost: &str,
        queues: impl Iterator<Item = &'a str>,
    ) {
        if !self.queues.contains_key(vhost) {
            self.queues.insert(vhost.to_string(), HashMap::new());
        }
        let mut added = 0;
        let mut replaced = Vec::new();
        if let Some(vq) = self.queues.get_mut(vhost) {
            for q in queues {
                if !vq.contains_key(q) {
                    vq.insert(q.to_string(), HashMap::new());
                }
                let Some(map) = vq.get_mut(q) else { continue };
                // A second publish of an id into a queue is a compaction copy:
                // the message keeps its delivered flag.
                match map.entry(id) {
                    Entry::Occupied(mut o) => {
                        let prev = *o.get();
                        o.insert(Slot::new(seg, prev.delivered()));
                        replaced.push(prev.seg());
                    }
                    Entry::Vacant(v) => {
                        v.insert(Slot::new(seg, false));
                    }
                }
                added += 1;
            }
        }
        for prev in replaced {
            self.unref(prev);
        }
        let info = self.segments.entry(seg).or_default();
        info.live += added;
        info.total += added;
    }

    /// Index effect of a remove record in `seg`; returns the ids that were live.
    fn apply_remove(
        &mut self,
        seg: u64,
        vhost: &str,
        queue: &str,
        ids: &[MessageId],
    ) -> Vec<MessageId> {
        let mut found = Vec::new();
        let mut segs = Vec::new();
        let mut emptied = false;
        if let Some(map) = self.queues.get_mut(vhost).and_then(|v| v.get_mut(queue)) {
            for id in ids {
                if let Some(s) = map.remove(id) {
                    found.push(*id);
                    segs.push(s.seg());
                }
            }
            emptied = map.is_empty();
        }
        if emptied {
            self.drop_queue_entry(vhost, queue);
        }
        self.note_removed(seg, segs);
        found
    }

    /// Index effect of a remove-queue record in `seg`; false if nothing was live.
    fn apply_remove_queue(&mut self, seg: u64, vhost: &str, queue: &str) -> bool {
        let map = self.queues.get_mut(vhost).and_then(|v| v.remove(queue));
        if self.queues.get(vhost).is_some_and(|v| v.is_empty()) {
            self.queues.remove(vhost);
        }
        match map {
            Some(map) if !map.is_empty() => {
                self.note_removed(seg, map.into_values().map(Slot::seg).collect());
                true
            }
            _ => false,
        }
    }

    /// Index effect of a delivered record in `seg`: flags the live ids (others
    /// were removed already and stay removed) and notes the segments of their
    /// publish records as dependencies, like a remove record.
    fn apply_delivered(&mut self, seg: u64, vhost: &str, queue: &str, ids: &[MessageId]) {
        let Some(map) = self.queues.get_mut(vhost).and_then(|v| v.get_mut(queue)) else {
            return;
        };
        let mut deps = Vec::new();
        for id in ids {
            if let Some(slot) = map.get_mut(id) {
                *slot = Slot::new(slot.seg(), true);
                if slot.seg() != seg {
                    deps.push(slot.seg());
                }
            }
        }
        if let Some(info) = self.segments.get_mut(&seg) {
            info.deps.extend(deps);
        }
    }

    fn drop_queue_entry(&mut self, vhost: &str, queue: &str) {
        if let Some(v) = self.queues.get_mut(vhost) {
            v.remove(queue);
            if v.is_empty() {
                self.queues.remove(vhost);
            }
        }
    }

    fn note_removed(&mut self, seg: u64, segs: Vec<u64>) {
        for s in segs {
            self.unref(s);
            if s != seg {
                if let Some(info) = self.segments.get_mut(&seg) {
                    info.deps.insert(s);
                }
            }
        }
    }

    /// Schedules deletion of every non-current segment with no live message
    /// whose remove records no longer matter.
    fn reclaim(&mut self) {
        if !self.reclaim_due {
            return;
        }
        self.reclaim_due = false;
        loop {
            let doomed: Vec<u64> = self
                .segments
                .iter()
                .filter(|(n, info)| {
                    **n != self.cur_seg
                        && info.live == 0
                        && info.deps.iter().all(|d| !self.segments.contains_key(d))
                })
                .map(|(n, _)| *n)
                .collect();
            if doomed.is_empty() {
                break;
            }
            for n in doomed {
                self.segments.remove(&n);
                self.deletes.push(n);
            }
        }
    }

    /// The oldest segment worth compacting: not current, sparse, and deletable
    /// once its live messages are moved.
    fn compaction_candidate(&self, tried: &BTreeSet<u64>) -> Option<u64> {
        self.segments
            .iter()
            .find(|(n, info)| {
                **n < self.cur_seg
                    && !tried.contains(*n)
                    && info.live > 0
                    && info.live * COMPACT_RATIO < info.total
                    && info.deps.iter().all(|d| !self.segments.contains_key(d))
            })
            .map(|(n, _)| *n)
    }
}

/// Shared between the [`super::Store`] handle and its writer thread.
pub(super) struct Shared {
    pub state: Mutex<State>,
    /// Wakes the writer.
    pub wake: Condvar,
    /// Wakes publishers waiting for the pending buffer to drain.
    pub drained: Condvar,
    pub synced: tokio::sync::watch::Sender<u64>,
    pub disk_bytes: AtomicU64,
    /// [`MAX_PENDING_BYTES`]; lowered by tests.
    pub max_pending: AtomicUsize,
    pub dir: PathBuf,
    pub options: StoreOptions,
    /// An I/O error stopped the writer for good (set under the state lock,
    /// before the watch is poked; see the module docs).
    pub failed: AtomicBool,
    /// A persistent publish after the failure was logged (once).
    pub unsaved_logged: AtomicBool,
    /// The next matching I/O operation fails (tests).
    #[cfg(test)]
    pub fault: Mutex<Option<Fault>>,
}

/// An injected I/O error (tests).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// The next write stores this many bytes, then fails with ENOSPC.
    Write(usize),
    /// The next fdatasync fails with EIO.
    Sync,
    /// Creating the next segment fails with ENOENT.
    Create,
}

impl Shared {
    pub fn publish(&self, vhost: &str, queues: &[&str], message: &Message) -> u64 {
        if queues.is_empty() {
            // Nothing to keep; confirm once everything before it is durable
            // (after a failure: what was durable then; the rest is nacked first).
            let st = self.state.lock();
            return if self.is_failed() {
                *self.synced.borrow()
            } else {
                st.ticket
            };
        }
        if self.is_failed() {
            return self.unsaved();
        }
        let mut props = Vec::with_capacity(32);
        encode_properties(&message.properties, &mut props);
        let len = segment::publish_len(
            vhost,
            queues.iter().copied(),
            &message.exchange,
            &message.routing_key,
            &props,
            &message.body,
        );
        let max_pending = self.max_pending.load(Ordering::Relaxed);
        let mut st = self.state.lock();
        while st.pending_bytes >= max_pending && !st.stop && !self.is_failed() {
            self.drained.wait(&mut st);
        }
        if self.is_failed() {
            drop(st);
            return self.unsaved();
        }
        let seg_bytes = self.options.segment_bytes;
        let buf = st.buffer_for(len, seg_bytes);
        segment::encode_publish(
            buf,
            message.id,
            vhost,
            queues.iter().copied(),
            &message.exchange,
            &message.routing_key,
            &props,
            &message.body,
        );
        let seg = st.cur_seg;
        st.apply_publish(seg, message.id, vhost, queues.iter().copied());
        st.ticket += 1;
        let ticket = st.ticket;
        st.reclaim();
        drop(st);
        self.wake.notify_one();
        ticket
    }

    /// Whether an I/O error stopped the store (until restart).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// A persistent publish after the failure: not queued; its ticket is above
    /// the final synced watermark, so its confirm is a nack.
    fn unsaved(&self) -> u64 {
        if !self.unsaved_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(
                dir = %self.dir.display(),
                "persistent message not written: the message store failed (see the error above); \
                 such messages stay in their queues in memory only and are lost at restart; \
                 publisher confirms for them are nacks, publishes without confirms and \
                 transactions are not durable (logged once)"
            );
        }
        let mut st = self.state.lock();
        st.ticket += 1;
        st.ticket
    }

    pub fn remove(&self, vhost: &str, queue: &str, ids: &[MessageId]) {
        let mut st = self.state.lock();
        if self.is_failed() {
            return;
        }
        // Only ids the store holds need a record; look them up first so that the
        // record lands in the segment the dependencies are noted for.
        let live: Vec<MessageId> = match st.queues.get(vhost).and_then(|v| v.get(queue)) {
            Some(map) => ids
                .iter()
                .copied()
                .filter(|id| map.contains_key(id))
                .collect(),
            None => return,
        };
        if live.is_empty() {
            return;
        }
        let len = segment::remove_len(vhost, queue, live.len());
        let seg_bytes = self.options.segment_bytes;
        segment::encode_remove(st.buffer_for(len, seg_bytes), vhost, queue, &live);
        let seg = st.cur_seg;
        st.apply_remove(seg, vhost, queue, &live);
        st.reclaim();
        drop(st);
        self.wake.notify_one();
    }

    /// Flags messages as delivered. Queued without waiting for the writer
    /// (no backpressure wait, no ticket): losing the last few flags in a crash
    /// only means a redelivered=false too many, as before this record existed.
    pub fn delivered(&self, vhost: &str, queue: &str, ids: &[MessageId]) {
        let mut st = self.state.lock();
        if self.is_failed() {
            return;
        }
        // Only live, not yet flagged ids need a record (requeued messages were
        // flagged at their first delivery).
        let fresh: Vec<MessageId> = match st.queues.get(vhost).and_then(|v| v.get(queue)) {
            Some(map) => ids
                .iter()
                .copied()
                .filter(|id| map.get(id).is_some_and(|s| !s.delivered()))
                .collect(),
            None => return,
        };
        if fresh.is_empty() {
            return;
        }
        let len = segment::delivered_len(vhost, queue, fresh.len());
        let seg_bytes = self.options.segment_bytes;
        segment::encode_delivered(st.buffer_for(len, seg_bytes), vhost, queue, &fresh);
        let seg = st.cur_seg;
        st.apply_delivered(seg, vhost, queue, &fresh);
        st.reclaim();
        drop(st);
        self.wake.notify_one();
    }

    pub fn remove_queue(&self, vhost: &str, queue: &str) {
        let mut st = self.state.lock();
        if self.is_failed() {
            return;
        }
        if !st.queues.get(vhost).is_some_and(|v| v.contains_key(queue)) {
            return;
        }
        let len = segment::remove_queue_len(vhost, queue);
        let seg_bytes = self.options.segment_bytes;
        segment::encode_remove_queue(st.buffer_for(len, seg_bytes), vhost, queue);
        let seg = st.cur_seg;
        st.apply_remove_queue(seg, vhost, queue);
        st.reclaim();
        drop(st);
        self.wake.notify_one();
    }

    /// Simulates a crash for tests: the writer exits without writing what is pending.
    #[cfg(test)]
    pub fn abandon(&self) {
        let mut st = self.state.lock();
        st.stop = true;
        st.chunks.clear();
        st.deletes.clear();
        drop(st);
        self.wake.notify_all();
    }

    /// Asks the writer to finish what is pending and exit.
    pub fn stop(&self) {
        self.state.lock().stop = true;
        self.wake.notify_all();
        self.drained.notify_all();
    }

    fn segment_path(&self, n: u64) -> PathBuf {
        self.dir.join(segment::segment_name(n))
    }

    /// Injects an I/O error into the writer (tests).
    #[cfg(test)]
    pub fn inject(&self, fault: Fault) {
        *self.fault.lock() = Some(fault);
    }

    #[cfg(test)]
    fn take_fault(&self, want: impl Fn(Fault) -> bool) -> Option<Fault> {
        let mut f = self.fault.lock();
        match *f {
            Some(x) if want(x) => f.take(),
            _ => None,
        }
    }
}

/// The writer thread: one write + one fdatasync per batch of pending records.
pub(super) struct Writer {
    shared: Arc<Shared>,
    /// The open segment.
    file: Option<OpenSegment>,
    dirty: bool,
    /// An I/O error stopped the writer for good (see the module docs).
    failed: bool,
    /// Segments already compacted.
    compacted: BTreeSet<u64>,
}

/// The segment the writer appends to.
struct OpenSegment {
    seg: u64,
    file: File,
    /// Bytes written.
    len: u64,
    /// Bytes known to be on disk (fdatasynced).
    synced_len: u64,
}

impl Writer {
    pub fn new(shared: Arc<Shared>) -> Writer {
        Writer {
            shared,
            file: None,
            dirty: false,
            failed: false,
            compacted: BTreeSet::new(),
        }
    }

    pub fn run(mut self) {
        loop {
            let (chunks, ticket, deletes, stop) = {
                let mut st = self.shared.state.lock();
                while st.chunks.is_empty() && st.deletes.is_empty() && !st.stop {
                    self.shared.wake.wait(&mut st);
                }
                let chunks = std::mem::take(&mut st.chunks);
                st.pending_bytes = 0;
                (chunks, st.ticket, std::mem::take(&mut st.deletes), st.stop)
            };
            self.shared.drained.notify_all();
            if chunks.is_empty() && deletes.is_empty() && stop {
                break;
            }
            let mut spare = Vec::new();
            for mut chunk in chunks {
                if self.failed {
                    // Never written: their tickets stay above the watermark.
                    break;
                }
                segment::seal_records(&mut chunk.buf);
                self.write(chunk.seg, &chunk.buf);
                chunk.buf.clear();
                // Keep a few moderate buffers; let huge ones go.
                if chunk.buf.capacity() <= 4 << 20 {
                    spare.push(chunk.buf);
                }
            }
            self.sync();
            if self.failed {
                // Publishers queue nothing more; wait for the stop.
                continue;
            }
            self.shared.synced.send_if_modified(|v| {
                if ticket > *v {
                    *v = ticket;
                    true
                } else {
                    false
                }
            });
            if !spare.is_empty() {
                let mut st = self.shared.state.lock();
                if st.spare.len() < 4 {
                    st.spare.extend(spare.into_iter().take(4));
                }
            }
            self.delete(&deletes);
            if !stop && !self.failed {
                self.compact();
            }
        }
        self.sync();
    }

    fn write(&mut self, seg: u64, buf: &[u8]) {
        if self.file.as_ref().map(|f| f.seg) != Some(seg) {
            // A segment is complete on disk before the next one gets data, so a
            // torn record can only be at the end of the last segment.
            self.sync();
            if self.failed {
                return;
            }
            self.file = None;
            let path = self.shared.segment_path(seg);
            match open_segment(&self.shared, &path) {
                Ok(file) => {
                    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                    self.file = Some(OpenSegment {
                        seg,
                        file,
                        len,
                        synced_len: len,
                    });
                }
                Err(e) => return self.fail(&path, "create", e),
            }
        }
        let Some(f) = self.file.as_mut() else {
            return;
        };
        match write_segment(&self.shared, &mut f.file, buf) {
            Ok(()) => {
                f.len += buf.len() as u64;
                self.shared
                    .disk_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                self.dirty = true;
            }
            Err(e) => {
                let path = self.shared.segment_path(f.seg);
                self.fail(&path, "write", e);
            }
        }
    }

    fn sync(&mut self) {
        if !self.dirty || self.failed {
            return;
        }
        self.dirty = false;
        let Some(f) = self.file.as_mut() else {
            return;
        };
        let mut res = Ok(());
        if self.shared.options.fsync {
            res = sync_segment(&self.shared, &f.file).map_err(|e| ("fdatasync", e));
        }
        // Writes to a file unlinked under us (the data directory was removed)
        // succeed and sync, yet reach nothing that a restart would read.
        res = res.and_then(|()| match f.file.metadata() {
            Ok(m) if m.nlink() == 0 => Err((
                "fstat",
                std::io::Error::new(std::io::ErrorKind::NotFound, "the segment file was deleted"),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(("fstat", e)),
        });
        match res {
            Ok(()) => f.synced_len = f.len,
            Err((op, e)) => {
                let path = self.shared.segment_path(f.seg);
                self.fail(&path, op, e);
            }
        }
    }

    /// Records the first I/O error and stops writing for good: the synced
    /// watermark stays where it is, pending records are dropped, and the
    /// channels are woken to nack what waits for the store.
    fn fail(&mut self, path: &Path, op: &'static str, error: std::io::Error) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.dirty = false;
        tracing::error!(
            path = %path.display(),
            op,
            error = %error,
            "message store I/O error: persistent messages are no longer written until restart; \
             unsynced and later ones get publisher nacks"
        );
        // Best effort: leave no torn or unconfirmed record behind. The file
        // itself may be beyond repair; a restart truncates a torn tail anyway.
        // (`len` does not count a partial write, hence no comparison.)
        if let Some(f) = self.file.take() {
            if let Err(e) = f.file.set_len(f.synced_len) {
                tracing::warn!(
                    segment = %segment::segment_name(f.seg),
                    error = %e,
                    "cannot cut the failed write off the message segment"
                );
            }
        }
        {
            let mut st = self.shared.state.lock();
            self.shared.failed.store(true, Ordering::Release);
            st.chunks.clear();
            st.pending_bytes = 0;
            st.deletes.clear();
        }
        self.shared.drained.notify_all();
        // Wakes the connections waiting for the watermark (its value stays).
        self.shared.synced.send_modify(|_| {});
    }

    fn delete(&mut self, segs: &[u64]) {
        for n in segs {
            if self.failed {
                return;
            }
            if self.file.as_ref().map(|f| f.seg) == Some(*n) {
                self.file = None;
            }
            let path = self.shared.segment_path(*n);
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    self.shared.disk_bytes.fetch_sub(
                        size.min(self.shared.disk_bytes.load(Ordering::Relaxed)),
                        Ordering::Relaxed,
                    );
                    tracing::debug!(path = %path.display(), "deleted message segment");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Deleting a later segment without this one could resurrect
                // removed messages at replay: stop here, for good.
                Err(e) => return self.fail(&path, "unlink", e),
            }
            // One at a time in order: a later segment's removes must never
            // outlive an earlier segment's publishes on disk.
            if let Err(e) = sync_dir(&self.shared.dir) {
                let dir = self.shared.dir.clone();
                return self.fail(&dir, "directory fsync", e);
            }
        }
    }

    /// Moves the live messages of one sparse old segment into the current one;
    /// the old file is then deleted by the normal reclaiming, after the copies
    /// are synced.
    fn compact(&mut self) {
        let candidate = self
            .shared
            .state
            .lock()
            .compaction_candidate(&self.compacted);
        let Some(n) = candidate else { return };
        // Once per segment: if something keeps it alive anyway, do not loop.
        self.compacted.insert(n);
        let path = self.shared.segment_path(n);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read segment for compaction");
                return;
            }
        };
        let (records, bad) = segment::scan(&data);
        if let Some(bad) = bad {
            tracing::warn!(path = %path.display(), offset = bad.offset, reason = %bad.reason, "skipping compaction of unreadable segment");
            return;
        }
        let mut st = self.shared.state.lock();
        if !st.segments.contains_key(&n) {
            return;
        }
        let seg_bytes = self.shared.options.segment_bytes;
        let mut moved = 0u64;
        // (vhost, queue) → copied ids with the delivered flag.
        let mut flagged: BTreeMap<(&str, &str), Vec<MessageId>> = BTreeMap::new();
        for raw in &records {
            let Ok(Record::Publish {
                id,
                vhost,
                queues,
                exchange,
                routing_key,
                properties,
                body,
            }) = segment::decode(raw.kind, raw.payload)
            else {
                continue;
            };
            let mut keep: Vec<&str> = Vec::new();
            let Some(v) = st.queues.get(vhost) else {
                continue;
            };
            for q in queues.iter().copied() {
                if let Some(slot) = v.get(q).and_then(|m| m.get(&id)) {
                    if slot.seg() == n {
                        keep.push(q);
                        if slot.delivered() {
                            flagged.entry((vhost, q)).or_default().push(id);
                        }
                    }
                }
            }
            if keep.is_empty() {
                continue;
            }
            let len = segment::publish_len(
                vhost,
                keep.iter().copied(),
                exchange,
                routing_key,
                properties,
                body,
            );
            let buf = st.buffer_for(len, seg_bytes);
            segment::encode_publish(
                buf,
                id,
                vhost,
                keep.iter().copied(),
                exchange,
                routing_key,
                properties,
                body,
            );
            let seg = st.cur_seg;
            st.apply_publish(seg, id, vhost, keep.iter().copied());
            moved += keep.len() as u64;
        }
        // The copies keep their flags (the index kept them; this puts them on
        // disk next to the copies, in the same write batch).
        for ((vhost, queue), ids) in flagged {
            let len = segment::delivered_len(vhost, queue, ids.len());
            segment::encode_delivered(st.buffer_for(len, seg_bytes), vhost, queue, &ids);
            let seg = st.cur_seg;
            st.apply_delivered(seg, vhost, queue, &ids);
        }
        tracing::debug!(path = %path.display(), moved, "compacted message segment");
        st.reclaim_due = true;
        st.reclaim();
        // Make sure the loop runs again to write the copies and delete the file.
    }
}

/// Makes creations and deletions in `dir` durable. Filesystems that cannot
/// fsync a directory (EINVAL and the like, as PostgreSQL tolerates) are not an
/// error; a directory that cannot be opened (removed) is.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    match File::open(dir)?.sync_all() {
        Err(e)
            if matches!(
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                nix::errno::Errno::EINVAL | nix::errno::Errno::EBADF | nix::errno::Errno::ENOTSUP
            ) =>
        {
            Ok(())
        }
        r => r,
    }
}

/// Creates (or opens, after a restart) a segment and makes its name durable.
fn open_segment(shared: &Shared, path: &Path) -> std::io::Result<File> {
    #[cfg(test)]
    if shared.take_fault(|f| f == Fault::Create).is_some() {
        return Err(nix::errno::Errno::ENOENT.into());
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    sync_dir(&shared.dir)?;
    Ok(file)
}

fn write_segment(shared: &Shared, file: &mut File, buf: &[u8]) -> std::io::Result<()> {
    #[cfg(test)]
    if let Some(Fault::Write(n)) = shared.take_fault(|f| matches!(f, Fault::Write(_))) {
        file.write_all(&buf[..n.min(buf.len())])?;
        return Err(nix::errno::Errno::ENOSPC.into());
    }
    #[cfg(not(test))]
    let _ = shared;
    file.write_all(buf)
}

fn sync_segment(shared: &Shared, file: &File) -> std::io::Result<()> {
    #[cfg(test)]
    if shared.take_fault(|f| f == Fault::Sync).is_some() {
        return Err(nix::errno::Errno::EIO.into());
    }
    #[cfg(not(test))]
    let _ = shared;
    file.sync_data()
}

/// What replay found.
pub(super) struct Replayed {
    pub state: State,
    pub recovered: Vec<RecoveredMessage>,
    pub max_id: u64,
    pub disk_bytes: u64,
}

/// One publish record's message data, shared by the queues it is in.
struct PubData {
    exchange: String,
    routing_key: String,
    properties: BasicProperties,
    body: Bytes,
}

/// vhost → queue → id → (message, delivered flag), while replaying.
type ReplayData = HashMap<String, HashMap<String, BTreeMap<MessageId, (Rc<PubData>, bool)>>>;

/// Replays every segment in `dir` in order. The writer will start a new
/// segment after the last one found.
pub(super) fn replay(dir: &Path) -> Result<Replayed, StoreError> {
    let io = |path: &Path, source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(segment::parse_segment_name)
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    let last = numbers.last().copied().unwrap_or(0);
    let mut state = State::new(last + 1);
    let mut data: ReplayData = HashMap::new();
    let mut max_id = 0u64;
    let mut disk_bytes = 0u64;
    for &n in &numbers {
        let path = dir.join(segment::segment_name(n));
        let buf = std::fs::read(&path).map_err(|e| io(&path, e))?;
        let (records, bad) = segment::scan(&buf);
        let mut size = buf.len() as u64;
        if let Some(bad) = bad {
            if n == last && bad.tail {
                tracing::warn!(path = %path.display(), offset = bad.offset, reason = %bad.reason, "truncating torn record at the end of the message log");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io(&path, e))?;
                f.set_len(bad.offset)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| io(&path, e))?;
                size = bad.offset;
            } else {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    offset: bad.offset,
                    reason: bad.reason,
                });
            }
        }
        disk_bytes += size;
        state.segments.entry(n).or_default();
        for raw in records {
            let rec =
                segment::decode(raw.kind, raw.payload).map_err(|reason| StoreError::Corrupt {
                    path: path.display().to_string(),
                    offset: raw.offset,
                    reason,
                })?;
            match rec {
                Record::Publish {
                    id,
                    vhost,
                    queues,
                    exchange,
                    routing_key,
                    properties,
                    body,
                } => {
                    max_id = max_id.max(id);
                    let properties =
                        decode_properties(properties).ok_or_else(|| StoreError::Corrupt {
                            path: path.display().to_string(),
                            offset: raw.offset,
                            reason: "bad message properties".to_string(),
                        })?;
                    let msg = Rc::new(PubData {
                        exchange: exchange.to_string(),
                        routing_key: routing_key.to_string(),
                        properties,
                        body: Bytes::copy_from_slice(body),
                    });
                    let v = data.entry(vhost.to_string()).or_default();
                    for q in &queues {
                        // A compaction copy keeps the flag of the original.
                        v.entry(q.to_string())
                            .or_default()
                            .entry(id)
                            .and_modify(|e| e.0 = msg.clone())
                            .or_insert_with(|| (msg.clone(), false));
                    }
                    state.apply_publish(n, id, vhost, queues.into_iter());
                }
                Record::Remove { vhost, queue, ids } => {
                    if let Some(m) = ids.iter().max() {
                        max_id = max_id.max(*m);
                    }
                    if let Some(qd) = data.get_mut(vhost).and_then(|v| v.get_mut(queue)) {
                        for id in &ids {
                            qd.remove(id);
                        }
                    }
                    state.apply_remove(n, vhost, queue, &ids);
                }
                Record::RemoveQueue { vhost, queue } => {
                    if let Some(v) = data.get_mut(vhost) {
                        v.remove(queue);
                    }
                    state.apply_remove_queue(n, vhost, queue);
                }
                Record::Delivered { vhost, queue, ids } => {
                    if let Some(qd) = data.get_mut(vhost).and_then(|v| v.get_mut(queue)) {
                        for id in &ids {
                            if let Some(e) = qd.get_mut(id) {
                                e.1 = true;
                            }
                        }
                    }
                    state.apply_delivered(n, vhost, queue, &ids);
                }
            }
        }
    }
    state.reclaim_due = true;
    state.reclaim();
    let mut recovered = Vec::new();
    for (vhost, queues) in data {
        for (queue, msgs) in queues {
            // Ordered by id: publish order per publishing channel, and stable
            // under compaction (which moves records but keeps their ids).
            for (id, (d, delivered)) in msgs {
                recovered.push(RecoveredMessage {
                    vhost: vhost.clone(),
                    queue: queue.clone(),
                    redelivered: delivered,
                    message: Message {
                        id,
                        exchange: d.exchange.clone(),
                        routing_key: d.routing_key.clone(),
                        properties: d.properties.clone(),
                        body: d.body.clone(),
                    },
                });
            }
        }
    }
    Ok(Replayed {
        state,
        recovered,
        max_id,
        disk_bytes,
    })
}
