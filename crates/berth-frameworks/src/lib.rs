//! berth's built-in frameworks. They speak the scheduler API
//! (`berth_api::cluster::{Call, Event}`) exactly as an external framework
//! does over HTTP; the leader runs them in its own process and connects
//! them through a pair of channels instead of a socket.
//!
//! - [`batch`]: run-to-completion jobs (`berth job run FILE.toml`). A
//!   sans-I/O core, [`Batch`], turns events and job snapshots into calls;
//!   [`run_batch`] drives it with channels and a timer.
//!
//! This crate never depends on the server: the server hands it a
//! [`ClusterView`] of the replicated state it reads.
#![forbid(unsafe_code)]

pub mod batch;
mod driver;
pub mod taskid;
#[cfg(test)]
mod wire_tests;

pub use batch::{Batch, IdGen};
pub use driver::{random_suffix, run_batch};

use berth_sched::placement::NodeFit;
use berth_types::{JobSpec, TaskState};

/// The batch framework's fixed id, so that every leader's instance of it
/// re-subscribes as the same framework and keeps its tasks.
pub const BATCH_FRAMEWORK_ID: &str = "berth-batch";

/// The batch framework runs one instance per role, so that DRF shares jobs
/// of different roles fairly: `berth-batch` for the default role `*`,
/// `berth-batch-<role>` for the others.
pub fn batch_framework_id(role: &str) -> String {
    if role == "*" {
        BATCH_FRAMEWORK_ID.to_string()
    } else {
        format!("{BATCH_FRAMEWORK_ID}-{role}")
    }
}

/// A submitted job as the replicated state holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEntry {
    pub spec: JobSpec,
    /// `berth job stop` was called: its tasks are killed, none launched.
    pub stopped: bool,
    /// Orders jobs: the oldest submitted job with pending instances is
    /// served first.
    pub submitted_ms: u64,
}

/// A task of the batch framework as the replicated state remembers it,
/// terminal ones included.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownTask {
    pub task_id: String,
    pub agent_id: String,
    /// The node's host name, for placement constraints on tasks that are
    /// still running.
    pub hostname: String,
    pub state: TaskState,
    pub reason: Option<String>,
    pub launched_ms: u64,
}

/// What the framework reads from the server's replicated state.
pub trait ClusterView: Send + Sync {
    /// Every job the cluster knows, stopped ones included.
    fn jobs(&self) -> Vec<JobEntry>;
    /// Every node, for explaining why instances stay pending.
    fn nodes(&self) -> Vec<NodeFit>;
    /// The batch framework's tasks, terminal ones included, read once when
    /// a leader starts the framework. Reconciliation only reports live
    /// tasks, so without this a new leader would not know which instances
    /// already FINISHED (and would run them again) nor how many times an
    /// instance FAILED. The default knows nothing.
    fn tasks(&self) -> Vec<KnownTask> {
        Vec::new()
    }
}
