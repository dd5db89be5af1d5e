//! Metadata log and snapshot.
//!
//! `meta.json` is a [`Definitions`] snapshot (written to a temporary file,
//! fsynced, renamed over, directory fsynced); `meta.log` holds one JSON
//! [`MetaOp`] per line, appended and fdatasynced per change. Every op is an
//! upsert or a delete, so replaying ops already folded into the snapshot (crash
//! between writing the snapshot and truncating the log) is harmless.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::StoreError;
use crate::definitions::{BindingDef, Definitions};
use crate::types::MetaOp;

/// The log is folded into the snapshot when it grows past this many lines.
pub const COMPACT_LINES: usize = 10_000;

pub struct MetaInner {
    dir: PathBuf,
    /// [`COMPACT_LINES`]; lowered by tests.
    pub(super) compact_lines: usize,
    state: Mutex<MetaState>,
}

struct MetaState {
    log: File,
    /// Length of the log's valid content (a failed append is cut back to it).
    log_len: u64,
    lines: usize,
    /// Snapshot + log, kept for compaction.
    defs: Definitions,
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl MetaInner {
    pub fn open(dir: &Path) -> Result<(MetaInner, Definitions), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let snap_path = dir.join("meta.json");
        let log_path = dir.join("meta.log");
        let mut defs = match std::fs::read(&snap_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Snapshot {
                path: snap_path.display().to_string(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Definitions::default(),
            Err(e) => return Err(io_err(&snap_path, e)),
        };
        let text = match std::fs::read(&log_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&log_path, e)),
        };
        let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
        let last_nonempty = lines
            .iter()
            .rposition(|l| !l.iter().all(u8::is_ascii_whitespace));
        for (i, line) in lines.iter().enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<MetaOp>(line) {
                Ok(op) => apply(&mut defs, &op),
                Err(e) if Some(i) == last_nonempty => {
                    tracing::warn!(path = %log_path.display(), line = i + 1, error = %e, "dropping torn last line of the metadata log");
                }
                Err(e) => {
                    return Err(StoreError::BadLine {
                        path: log_path.display().to_string(),
                        line: i + 1,
                        reason: e.to_string(),
                    })
                }
            }
        }
        write_snapshot(dir, &defs)?;
        let log = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&log_path)
            .map_err(|e| io_err(&log_path, e))?;
        log.sync_all().map_err(|e| io_err(&log_path, e))?;
        sync_dir(dir).map_err(|e| io_err(dir, e))?;
        let inner = MetaInner {
            dir: dir.to_path_buf(),
            compact_lines: COMPACT_LINES,
            state: Mutex::new(MetaState {
                log,
                log_len: 0,
                lines: 0,
                defs: defs.clone(),
            }),
        };
        Ok((inner, defs))
    }

    pub fn append(&self, op: &MetaOp) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(op).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut st = self.state.lock();
        let st = &mut *st;
        // The log is opened without O_APPEND: write at our own idea of its end so
        // that a failed, cut-back append leaves no hole.
        use std::io::Seek;
        let res = st
            .log
            .seek(std::io::SeekFrom::Start(st.log_len))
            .and_then(|_| st.log.write_all(&line))
            .and_then(|()| st.log.sync_data());
        if let Err(e) = res {
            let _ = st.log.set_len(st.log_len);
            return Err(e);
        }
        st.log_len += line.len() as u64;
        st.lines += 1;
        apply(&mut st.defs, op);
        if st.lines >= self.compact_lines {
            // The op is durable in the log already; a failed compaction only
            // postpones the next one.
            match write_snapshot(&self.dir, &st.defs).and_then(|()| {
                st.log
                    .set_len(0)
                    .and_then(|()| st.log.sync_all())
                    .map_err(|e| io_err(&self.dir.join("meta.log"), e))
            }) {
                Ok(()) => {
                    st.log_len = 0;
                    st.lines = 0;
                }
                Err(e) => tracing::warn!(error = %e, "metadata log compaction failed"),
            }
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `dir/meta.json` atomically and durably.
pub fn write_snapshot(dir: &Path, defs: &Definitions) -> Result<(), StoreError> {
    let path = dir.join("meta.json");
    let tmp = dir.join("meta.json.tmp");
    let bytes =
        serde_json::to_vec_pretty(defs).map_err(|e| io_err(&path, std::io::Error::other(e)))?;
    let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    sync_dir(dir).map_err(|e| io_err(dir, e))
}

fn upsert<T>(items: &mut Vec<T>, item: T, same: impl Fn(&T, &T) -> bool) {
    match items.iter().position(|x| same(x, &item)) {
        Some(i) => items[i] = item,
        None => items.push(item),
    }
}

fn binding_touches(b: &BindingDef, vhost: &str, name: &str, kind: &str) -> bool {
    b.vhost == vhost
        && ((b.destination == name && b.destination_type == kind)
            || (kind == "exchange" && b.source == name))
}

/// Applies one change to a definitions document: `Put*` replaces the entry with
/// the same identity or adds it; deletes cascade to what depends on the entry.
pub fn apply(defs: &mut Definitions, op: &MetaOp) {
    match op {
        MetaOp::PutVhost(v) => upsert(&mut defs.vhosts, v.clone(), |a, b| a.name == b.name),
        MetaOp::DeleteVhost { name } => {
            defs.vhosts.retain(|v| &v.name != name);
            defs.permissions.retain(|p| &p.vhost != name);
            defs.policies.retain(|p| &p.vhost != name);
            defs.exchanges.retain(|e| &e.vhost != name);
            defs.queues.retain(|q| &q.vhost != name);
            defs.bindings.retain(|b| &b.vhost != name);
        }
        MetaOp::PutUser(u) => upsert(&mut defs.users, u.clone(), |a, b| a.name == b.name),
        MetaOp::DeleteUser { name } => {
            defs.users.retain(|u| &u.name != name);
            defs.permissions.retain(|p| &p.user != name);
        }
        MetaOp::PutPermission(p) => upsert(&mut defs.permissions, p.clone(), |a, b| {
            a.user == b.user && a.vhost == b.vhost
        }),
        MetaOp::DeletePermission { user, vhost } => defs
            .permissions
            .retain(|p| !(&p.user == user && &p.vhost == vhost)),
        MetaOp::PutPolicy(p) => upsert(&mut defs.policies, p.clone(), |a, b| {
            a.vhost == b.vhost && a.name == b.name
        }),
        MetaOp::DeletePolicy { vhost, name } => defs
            .policies
            .retain(|p| !(&p.vhost == vhost && &p.name == name)),
        MetaOp::PutExchange(e) => upsert(&mut defs.exchanges, e.clone(), |a, b| {
            a.vhost == b.vhost && a.name == b.name
        }),
        MetaOp::DeleteExchange { vhost, name } => {
            defs.exchanges
                .retain(|e| !(&e.vhost == vhost && &e.name == name));
            defs.bindings
                .retain(|b| !binding_touches(b, vhost, name, "exchange"));
        }
        MetaOp::PutQueue(q) => upsert(&mut defs.queues, q.clone(), |a, b| {
            a.vhost == b.vhost && a.name == b.name
        }),
        MetaOp::DeleteQueue { vhost, name } => {
            defs.queues
                .retain(|q| !(&q.vhost == vhost && &q.name == name));
            defs.bindings
                .retain(|b| !binding_touches(b, vhost, name, "queue"));
        }
        MetaOp::PutBinding(b) => {
            if !defs.bindings.contains(b) {
                defs.bindings.push(b.clone());
            }
        }
        MetaOp::DeleteBinding(b) => defs.bindings.retain(|x| x != b),
    }
}
