//! The master: everything the leader does on top of the replicated state.
//!
//! - [`agents`]: registration, the sync long-poll, liveness;
//! - [`frameworks`]: scheduler subscriptions, status update forwarding;
//! - [`calls`]: the scheduler calls (ACCEPT, DECLINE, KILL, ...);
//! - [`allocation`]: the allocation cycle that turns free resources into
//!   offers;
//! - [`leader`]: starting and stopping the leader-only loops;
//! - [`admin`]: jobs, nodes, roles for the admin API;
//! - [`views`]: admin views computed from [`ClusterState`].
//!
//! Leader-only memory (last-seen times, subscriptions, offers, filters,
//! demands, unacknowledged updates) lives in a [`leader::LeaderCtx`] that is
//! created when this server becomes leader and dropped when it stops being
//! one; nothing in it is replicated, and a new leader rebuilds it (agents get
//! a fresh grace period, frameworks resubscribe and reconcile).
//!
//! Lock order: a leader context mutex may be held while taking the state
//! lock, never the other way round, and no lock is held across an await.

mod admin;
mod agents;
mod allocation;
mod calls;
mod error;
mod frameworks;
mod leader;
mod local;
mod proposer;
pub mod util;
mod views;

pub use calls::call_name;
pub use error::MasterError;
pub use frameworks::{Subscribed, EVENT_QUEUE};
pub use local::LocalFramework;

use crate::replica::{LeaderInfo, Replica};
use crate::state::{ClusterState, Command, CommandResult};
use berth_sched::{Allocator, Drf};
use leader::LeaderCtx;
use proposer::{Proposer, UpdateSink};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Timings of the master; [`crate::server::ServerConfig`] fills them.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// An agent silent for this long is LOST.
    pub agent_timeout: Duration,
    /// How often agents should sync at least (told at registration).
    pub heartbeat_interval: Duration,
    /// An offer not used for this long is rescinded.
    pub offer_timeout: Duration,
    /// Period of the allocation cycle (it also runs when triggered).
    pub allocation_interval: Duration,
    /// HEARTBEAT period on scheduler streams.
    pub framework_heartbeat: Duration,
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            agent_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            offer_timeout: Duration::from_secs(10),
            allocation_interval: Duration::from_millis(100),
            framework_heartbeat: Duration::from_secs(15),
        }
    }
}

/// Job placement notes: job name -> why instances are pending. The
/// built-in batch framework writes them, `GET /v1/jobs` reads them.
pub type PlacementNotes = Arc<Mutex<BTreeMap<String, String>>>;

pub struct Master {
    cfg: MasterConfig,
    replica: Arc<dyn Replica>,
    state: Arc<RwLock<ClusterState>>,
    proposer: Proposer,
    leader: RwLock<Option<Arc<LeaderCtx>>>,
    nodes: agents::NodeWatch,
    alloc_trigger: Notify,
    allocator: Mutex<Box<dyn Allocator>>,
    placement: PlacementNotes,
    stop: CancellationToken,
    builtins: Mutex<Vec<JoinHandle<()>>>,
}

impl Master {
    /// Creates the master and starts its background tasks (the writer, the
    /// leadership watcher and the node version dispatcher). Call
    /// [`Master::shutdown`] to stop them. Needs a tokio runtime.
    pub fn start(cfg: MasterConfig, replica: Arc<dyn Replica>) -> Arc<Master> {
        Self::start_with_allocator(cfg, replica, Box::new(Drf::default()))
    }

    /// Like [`Master::start`] with another allocation policy.
    pub fn start_with_allocator(
        cfg: MasterConfig,
        replica: Arc<dyn Replica>,
        allocator: Box<dyn Allocator>,
    ) -> Arc<Master> {
        let stop = CancellationToken::new();
        let m = Arc::new_cyclic(|weak: &Weak<Master>| {
            let w = weak.clone();
            let sink: UpdateSink = Arc::new(move |updates| {
                if let Some(m) = w.upgrade() {
                    m.forward_updates(updates);
                }
            });
            Master {
                proposer: Proposer::start(replica.clone(), sink, stop.clone()),
                state: replica.state(),
                replica,
                cfg,
                leader: RwLock::new(None),
                nodes: agents::NodeWatch::default(),
                alloc_trigger: Notify::new(),
                allocator: Mutex::new(allocator),
                placement: Arc::new(Mutex::new(BTreeMap::new())),
                stop,
                builtins: Mutex::new(Vec::new()),
            }
        });
        tokio::spawn(leader::leadership_loop(m.clone()));
        tokio::spawn(agents::dispatch_versions(m.clone()));
        m
    }

    pub fn config(&self) -> &MasterConfig {
        &self.cfg
    }

    pub fn replica(&self) -> &Arc<dyn Replica> {
        &self.replica
    }

    /// Who leads, as the replica knows it.
    pub fn leader(&self) -> LeaderInfo {
        self.replica.leader()
    }

    /// Leadership changes; a built-in framework subscribes when `is_self`.
    pub fn watch_leader(&self) -> watch::Receiver<LeaderInfo> {
        self.replica.watch_leader()
    }

    /// True once this server leads and its leader loops run (subscriptions
    /// are accepted).
    pub fn is_leading(&self) -> bool {
        self.leader_ctx().is_some()
    }

    /// The shared job placement notes (job name -> explanation).
    pub fn placement_notes(&self) -> PlacementNotes {
        self.placement.clone()
    }

    /// Runs an in-process task (a built-in framework) with a handle on the
    /// master; it is aborted by [`Master::shutdown`].
    pub fn spawn_builtin<F, Fut>(self: &Arc<Self>, name: &str, f: F)
    where
        F: FnOnce(Arc<Master>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        tracing::info!(builtin = name, "starting built-in framework");
        let handle = tokio::spawn(f(self.clone()));
        self.builtins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    /// Runs an allocation round soon.
    pub fn trigger_allocation(&self) {
        self.alloc_trigger.notify_one();
    }

    /// Stops the leader loops (closing every subscription and waking every
    /// long-poll), the background tasks and the built-in frameworks.
    pub fn shutdown(&self) {
        self.stop.cancel();
        leader::step_down(self);
        for h in self
            .builtins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }

    fn leader_ctx(&self) -> Option<Arc<LeaderCtx>> {
        self.leader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The leader context, or why there is none.
    fn ctx(&self) -> Result<Arc<LeaderCtx>, MasterError> {
        if let Some(c) = self.leader_ctx() {
            return Ok(c);
        }
        let info = self.replica.leader();
        if info.is_self {
            Err(MasterError::Unavailable(
                "this server was just elected and is still starting; retry".into(),
            ))
        } else {
            Err(MasterError::NotLeader {
                leader_address: info.leader_address,
            })
        }
    }

    fn read_state(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Proposes through the group-commit writer.
    async fn propose(&self, cmd: Command) -> Result<CommandResult, MasterError> {
        Ok(self.proposer.propose(cmd).await?)
    }
}
