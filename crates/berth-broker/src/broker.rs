//! The whole broker: vhosts, users, the stores, live connections and alarms;
//! opening with recovery, and running the listeners.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::RwLock;

use crate::auth::Users;
use crate::config::BrokerConfig;
use crate::definitions::{Definitions, PermissionDef, Tags, UserDef, VhostDef};
use crate::model::Vhost;
use crate::server::flow::Flow;
use crate::server::registry::Registry;
use crate::store::{MetaStore, Store, StoreOptions};
use crate::types::{now_ms, MemoryLog, MemoryMeta, MessageLog, MetaLog, MetaOp};

pub struct Broker {
    pub config: BrokerConfig,
    pub users: Users,
    pub log: Arc<dyn MessageLog>,
    pub meta: Arc<dyn MetaLog>,
    pub registry: Registry,
    pub flow: Flow,
    pub started_at_ms: u64,
    vhosts: RwLock<BTreeMap<String, Arc<Vhost>>>,
    /// (published, delivered) totals of deleted vhosts, folded in under the
    /// `vhosts` write lock as a vhost leaves it (see [`Broker::message_totals`]).
    retired: parking_lot::Mutex<(u64, u64)>,
    /// The message store when persistent (for disk usage and a clean close).
    store: Option<Arc<Store>>,
    /// Muted while replaying the metadata log at start, so replay does not log again.
    replaying: Arc<MutableMeta>,
    /// Held while the broker lives: two brokers on one data directory would
    /// interleave their logs and lose messages.
    _dir_lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// The metadata log, silenced during replay.
struct MutableMeta {
    inner: Arc<dyn MetaLog>,
    muted: AtomicBool,
}

impl MetaLog for MutableMeta {
    fn append(&self, op: &MetaOp) -> std::io::Result<()> {
        if self.muted.load(Ordering::Acquire) {
            return Ok(());
        }
        self.inner.append(op)
    }
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
        let dir_lock = match &config.data_dir {
            Some(dir) => {
                create_private_dir(dir)?;
                Some(lock_data_dir(dir)?)
            }
            None => None,
        };
        let (log, meta, store, defs, recovered): (Arc<dyn MessageLog>, Arc<dyn MetaLog>, _, _, _) =
            match &config.data_dir {
                Some(dir) => {
                    let (store, recovered) = Store::open(dir, StoreOptions::default())?;
                    let (meta, defs) = MetaStore::open(dir)?;
                    let store = Arc::new(store);
                    (store.clone(), Arc::new(meta), Some(store), defs, recovered)
                }
                None => (
                    Arc::new(MemoryLog::default()),
                    Arc::new(MemoryMeta),
                    None,
                    Definitions::default(),
                    Vec::new(),
                ),
            };
        let replaying = Arc::new(MutableMeta {
            inner: meta,
            muted: AtomicBool::new(true),
        });
        let flow = Flow::new(config.memory_high_watermark, config.disk_free_limit);
        let loopback_users = vec![config.default_user.0.clone()];
        let broker = Arc::new(Broker {
            users: Users::new(loopback_users),
            log,
            meta: replaying.clone(),
            registry: Registry::default(),
            flow,
            started_at_ms: now_ms(),
            vhosts: RwLock::new(BTreeMap::new()),
            retired: parking_lot::Mutex::new((0, 0)),
            store,
            replaying,
            config,
            _dir_lock: dir_lock,
        });
        let fresh = defs.vhosts.is_empty() && defs.users.is_empty();
        crate::definitions::import(&broker, &defs).context("replaying the metadata log")?;
        let now = now_ms();
        let mut restored = 0usize;
        for m in recovered {
            match broker.vhost(&m.vhost) {
                Some(vhost) => {
                    vhost.restore_message(&m.queue, m.message, m.redelivered, now);
                    restored += 1;
                }
                None => {
                    tracing::warn!(vhost = %m.vhost, queue = %m.queue, "recovered message for a missing vhost dropped")
                }
            }
        }
        broker.replaying.muted.store(false, Ordering::Release);
        if fresh {
            broker.create_defaults()?;
        }
        if restored > 0 {
            tracing::info!(messages = restored, "recovered persistent messages");
        }
        Ok(broker)
    }

    /// A broker that keeps nothing on disk, with `/` and guest/guest (tests, fuzzing).
    pub fn in_memory() -> Arc<Broker> {
        let config = BrokerConfig {
            listen: None,
            data_dir: None,
            ..BrokerConfig::default()
        };
        // Cannot fail without a data directory: nothing is read.
        match Broker::open(config) {
            Ok(b) => b,
            Err(e) => panic!("in-memory broker: {e:#}"),
        }
    }

    /// `/` and the default user with every permission on it (RabbitMQ's first start).
    fn create_defaults(&self) -> Result<(), BrokerError> {
        if self.vhost("/").is_none() {
            self.add_vhost("/")?;
        }
        let (user, password) = self.config.default_user.clone();
        if self.users.get(&user).is_none() {
            self.put_user(&user, Some(&password), vec!["administrator".to_string()])?;
            self.set_permission(PermissionDef {
                user,
                vhost: "/".to_string(),
                configure: ".*".to_string(),
                write: ".*".to_string(),
                read: ".*".to_string(),
            })?;
        }
        Ok(())
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<Vhost>> {
        self.vhosts.read().get(name).cloned()
    }

    pub fn vhosts(&self) -> Vec<Arc<Vhost>> {
        self.vhosts.read().values().cloned().collect()
    }

    /// Messages (published into queues, delivered or fetched) since the
    /// broker started, deleted queues and vhosts included: never decreases,
    /// so it can back Prometheus counters. Lock order: `vhosts`, then a
    /// vhost's topology, then its queues.
    pub fn message_totals(&self) -> (u64, u64) {
        let vhosts = self.vhosts.read();
        let mut t = *self.retired.lock();
        for v in vhosts.values() {
            let (p, d) = v.message_totals();
            t.0 += p;
            t.1 += d;
        }
        t
    }

    pub fn add_vhost(&self, name: &str) -> Result<Arc<Vhost>, BrokerError> {
        if name.is_empty() || name.len() > 255 {
            return Err(BrokerError::Invalid(format!(
                "vhost name '{name}' must be 1 to 255 bytes"
            )));
        }
        let mut vhosts = self.vhosts.write();
        if let Some(v) = vhosts.get(name) {
            return Ok(v.clone());
        }
        self.meta.append(&MetaOp::PutVhost(VhostDef {
            name: name.to_string(),
        }))?;
        let vhost = Vhost::new(name, self.log.clone(), self.meta.clone());
        vhosts.insert(name.to_string(), vhost.clone());
        Ok(vhost)
    }

    /// Deletes a vhost with everything in it; its connections are closed.
    pub fn delete_vhost(&self, name: &str) -> Result<(), BrokerError> {
        let vhost = self
            .vhost(name)
            .ok_or_else(|| BrokerError::NoVhost(name.to_string()))?;
        self.meta.append(&MetaOp::DeleteVhost {
            name: name.to_string(),
        })?;
        {
            // Its totals move to `retired` while readers are shut out, so the
            // broker's totals do not drop. Traffic its connections still make
            // before they close is not counted.
            let mut vhosts = self.vhosts.write();
            if let Some(v) = vhosts.remove(name) {
                let (p, d) = v.message_totals();
                let mut r = self.retired.lock();
                r.0 += p;
                r.1 += d;
            }
        }
        for conn in self.registry.connections() {
            if conn.vhost == name {
                self.registry
                    .close(&conn.name, &format!("vhost '{name}' is deleted"));
            }
        }
        for queue in vhost.queues() {
            if queue.durable {
                self.log.remove_queue(name, &queue.name);
            }
            let owner = queue.exclusive_owner.unwrap_or(0);
            let _ = vhost.delete_queue(&queue.name, false, false, owner);
        }
        self.users.vhost_deleted(name);
        Ok(())
    }

    /// Adds or updates a user; `password` None keeps the old hash (or none: cannot log in).
    pub fn put_user(
        &self,
        name: &str,
        password: Option<&str>,
        tags: Vec<String>,
    ) -> Result<(), BrokerError> {
        let password_hash = match password {
            Some(p) => crate::auth::password::hash(p),
            None => self
                .users
                .get(name)
                .map(|u| u.password_hash)
                .unwrap_or_default(),
        };
        self.put_user_def(UserDef {
            name: name.to_string(),
            password_hash,
            hashing_algorithm: "rabbit_password_hashing_sha256".to_string(),
            tags: Tags::List(tags),
        })
    }

    /// Adds or updates a user from a definition (hash given).
    pub fn put_user_def(&self, def: UserDef) -> Result<(), BrokerError> {
        // Validate before logging: a logged entry that cannot be applied would
        // stop the next start's replay.
        let def = crate::auth::validate_user(def)?;
        self.meta.append(&MetaOp::PutUser(def.clone()))?;
        self.users.put(def)?;
        Ok(())
    }

    pub fn delete_user(&self, name: &str) -> Result<(), BrokerError> {
        if self.users.get(name).is_none() {
            return Err(BrokerError::NoUser(name.to_string()));
        }
        self.meta.append(&MetaOp::DeleteUser {
            name: name.to_string(),
        })?;
        self.users.delete(name);
        for conn in self.registry.connections() {
            if conn.user == name {
                self.registry
                    .close(&conn.name, &format!("user '{name}' is deleted"));
            }
        }
        Ok(())
    }

    pub fn set_permission(&self, def: PermissionDef) -> Result<(), BrokerError> {
        if self.users.get(&def.user).is_none() {
            return Err(BrokerError::NoUser(def.user));
        }
        if self.vhost(&def.vhost).is_none() {
            return Err(BrokerError::NoVhost(def.vhost));
        }
        // Compile (and so validate) before logging.
        self.users.set_permission(def.clone())?;
        self.meta.append(&MetaOp::PutPermission(def))?;
        Ok(())
    }

    pub fn clear_permission(&self, user: &str, vhost: &str) -> Result<(), BrokerError> {
        self.meta.append(&MetaOp::DeletePermission {
            user: user.to_string(),
            vhost: vhost.to_string(),
        })?;
        self.users.clear_permission(user, vhost);
        Ok(())
    }

    /// Bytes used by the message store (0 when transient).
    pub fn disk_bytes(&self) -> u64 {
        self.store.as_ref().map(|s| s.disk_bytes()).unwrap_or(0)
    }

    /// Periodic work of every vhost (TTL expiry, x-expires).
    pub fn tick(&self) {
        let now = now_ms();
        for vhost in self.vhosts() {
            vhost.tick(now);
        }
    }

    /// Flushes and closes the message store.
    pub fn close(&self) {
        if let Some(store) = &self.store {
            store.close();
        }
    }
}

/// The data directory, private to the broker's user (it holds password hashes).
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating broker data directory {}", dir.display()))
}

/// Takes `DIR/lock` exclusively, or says which directory is in use.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        anyhow::anyhow!(
            "broker data directory {} is in use by another broker (lock {} is held)",
            dir.display(),
            path.display()
        )
    })
}

/// Loads a PEM certificate chain and private key into a TLS acceptor.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("{}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("{}: reading PEM certificates", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate found", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("{}", key.display()))?,
    ))
    .with_context(|| format!("{}: reading PEM private key", key.display()))?
    .ok_or_else(|| anyhow::anyhow!("{}: no private key found", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .with_context(|| format!("{}: certificate and key do not match", cert.display()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what} listener {addr}"))
}

/// Runs a broker until `shutdown` resolves: AMQP listeners, management API,
/// periodic ticks (TTL, x-expires) and alarm measurement.
pub async fn run(
    config: BrokerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let tls_acceptor = match (&config.tls_listen, &config.cert, &config.key) {
        (Some(_), Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        (Some(addr), _, _) => anyhow::bail!("--tls-listen {addr} needs --cert and --key"),
        _ => None,
    };
    let plain = match config.listen {
        Some(addr) => Some(bind(addr, "AMQP").await?),
        None => None,
    };
    let tls = match (config.tls_listen, tls_acceptor) {
        (Some(addr), Some(acceptor)) => Some((bind(addr, "AMQPS").await?, acceptor)),
        _ => None,
    };
    let management = match config.management {
        Some(addr) => Some(bind(addr, "management").await?),
        None => None,
    };
    let broker = tokio::task::block_in_place(|| Broker::open(config.clone()))?;
    for (what, addr) in [
        ("amqp", config.listen),
        ("amqps", config.tls_listen),
        ("management", config.management),
    ] {
        if let Some(addr) = addr {
            tracing::info!(%addr, "broker {what} listening");
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ticker = tokio::spawn(housekeeping(broker.clone(), stop_rx.clone()));
    let amqp = tokio::spawn(crate::server::serve(
        broker.clone(),
        plain,
        tls,
        stop_rx.clone(),
    ));
    let mgmt =
        management.map(|l| tokio::spawn(crate::mgmt::serve(broker.clone(), l, stop_rx.clone())));
    shutdown.await;
    tracing::info!("broker shutting down");
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(5);
    match tokio::time::timeout(grace, amqp).await {
        Ok(Ok(Err(e))) => tracing::warn!("amqp listener: {e:#}"),
        Ok(Err(e)) => tracing::warn!("amqp listener task: {e}"),
        _ => {}
    }
    if let Some(mgmt) = mgmt {
        let _ = tokio::time::timeout(grace, mgmt).await;
    }
    let _ = ticker.await;
    tokio::task::block_in_place(|| broker.close());
    Ok(())
}

/// Memory and disk alarms every 50 ms (a publisher at full speed adds
/// ~100 MB/s, so a slower check overshoots the watermark by that much; one
/// check reads /proc/self/status and statvfs, tens of microseconds); TTL
/// expiry and x-expires every 100 ms.
async fn housekeeping(broker: Arc<Broker>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_millis(50));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let data_dir = broker
        .config
        .data_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        broker.flow.measure(&data_dir);
        if n.is_multiple_of(2) {
            broker.tick();
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_serves_one_broker_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let config = || BrokerConfig {
            listen: None,
            data_dir: Some(dir.path().to_path_buf()),
            ..BrokerConfig::default()
        };
        let first = Broker::open(config()).unwrap();
        let err = Broker::open(config()).err().expect("second open must fail");
        assert!(
            format!("{err:#}").contains("is in use by another broker"),
            "{err:#}"
        );
        first.close();
        drop(first);
        Broker::open(config()).expect("the lock goes with the broker");
    }
}
