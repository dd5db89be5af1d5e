//! The whole broker: vhosts, users, the stores, live connections and alarms;
//! opening with recovery, and running the listeners.
use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::auth::Users;
use crate::config::BrokerConfig;
use crate::model::Vhost;
use crate::server::flow::Flow;
use crate::server::registry::Registry;
use crate::types::{MessageLog, MetaLog};

pub struct Broker {
    pub config: BrokerConfig,
    pub users: Users,
    pub log: Arc<dyn MessageLog>,
    pub meta: Arc<dyn MetaLog>,
    pub registry: Registry,
    pub flow: Flow,
    pub started_at_ms: u64,
    vhosts: RwLock<BTreeMap<String, Arc<Vhost>>>,
}

/// Errors of broker-level changes, naming the object.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("vhost '{0}' not found")]
    NoVhost(String),
    #[error("vhost '{0}' already exists")]
    VhostExists(String),
    #[error("user '{0}' not found")]
    NoUser(String),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("metadata log: {0}")]
    Meta(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

impl Broker {
    /// Opens the stores under `config.data_dir` (or none), recovers durable
    /// metadata and persistent messages, and creates `/` and the default user on
    /// first start.
    pub fn open(config: BrokerConfig) -> anyhow::Result<Arc<Broker>> {
        let _ = config;
        todo!("lead")
    }

    /// A broker that keeps nothing on disk, with `/` and guest/guest (tests, fuzzing).
    pub fn in_memory() -> Arc<Broker> {
        todo!("lead")
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<Vhost>> {
        self.vhosts.read().get(name).cloned()
    }

    pub fn vhosts(&self) -> Vec<Arc<Vhost>> {
        self.vhosts.read().values().cloned().collect()
    }

    pub fn add_vhost(&self, name: &str) -> Result<Arc<Vhost>, BrokerError> {
        let _ = name;
        todo!("lead")
    }

    pub fn delete_vhost(&self, name: &str) -> Result<(), BrokerError> {
        let _ = name;
        todo!("lead")
    }

    /// Adds or updates a user; `password` None keeps the old hash (or none: cannot log in).
    pub fn put_user(&self, name: &str, password: Option<&str>, tags: Vec<String>) -> Result<(), BrokerError> {
        let _ = (name, password, tags);
        todo!("lead")
    }

    pub fn delete_user(&self, name: &str) -> Result<(), BrokerError> {
        let _ = name;
        todo!("lead")
    }

    pub fn set_permission(&self, def: crate::definitions::PermissionDef) -> Result<(), BrokerError> {
        let _ = def;
        todo!("lead")
    }

    pub fn clear_permission(&self, user: &str, vhost: &str) -> Result<(), BrokerError> {
        let _ = (user, vhost);
        todo!("lead")
    }
}

/// Runs a broker until `shutdown` resolves: AMQP listeners, management API,
/// periodic ticks (TTL, x-expires) and alarm measurement.
pub async fn run(config: BrokerConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let _ = (config, shutdown);
    todo!("lead")
}
