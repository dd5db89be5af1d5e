//! `berth server`: the Raft replica, the master and the HTTP server in one
//! process.
//!
//! Routing: the cluster API ([`crate::api`]) and the Raft routes sit behind
//! the token check ([`crate::auth`]) and the leader redirect
//! ([`crate::api::redirect`]); the image registry (`/v2/...`) brings its own
//! auth (registry clients send the token as a Basic password too) and is
//! served by every server.

use crate::api::{self, redirect};
use crate::auth::{self, TokenCheck};
use crate::master::{Master, MasterConfig};
use crate::raft::{RaftConfig, RaftReplica};
use crate::registry::{self, RegistryConfig, RegistryStore};
use crate::replica::{BoxFuture, Replica};
use axum::middleware::from_fn_with_state;
use axum::serve::ListenerExt;
use axum::Router;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a graceful shutdown waits for open requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A built-in framework: started once with the master; it subscribes with
/// [`Master::subscribe_local`] whenever this server leads.
pub type Builtin = Arc<dyn Fn(Arc<Master>) -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Clone)]
pub struct ServerConfig {
    /// Raft log, snapshots and registry blobs.
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `host:port` others reach this server at (default: `listen`).
    pub advertise: Option<String>,
    pub bootstrap_expect: usize,
    pub join: Vec<String>,
    /// Cluster secret; every request must carry it as a Bearer token.
    pub token: Option<String>,
    /// Raft id (default: derived from the advertised address).
    pub id: Option<u64>,
    /// An agent silent for this long is LOST.
    pub agent_timeout: Duration,
    /// How often agents sync at least.
    pub heartbeat_interval: Duration,
    /// An unused offer is rescinded after this long.
    pub offer_timeout: Duration,
    pub allocation_interval: Duration,
    /// HEARTBEAT period on scheduler streams.
    pub framework_heartbeat: Duration,
    /// Built-in frameworks by name.
    pub builtins: Vec<(String, Builtin)>,
}

impl fmt::Debug for ServerConfig {
    // By hand: the token must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("bootstrap_expect", &self.bootstrap_expect)
            .field("join", &self.join)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("id", &self.id)
            .field("agent_timeout", &self.agent_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("offer_timeout", &self.offer_timeout)
            .field("allocation_interval", &self.allocation_interval)
            .field("framework_heartbeat", &self.framework_heartbeat)
            .field(
                "builtins",
                &self.builtins.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid server configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving http on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Raft(#[from] crate::raft::RaftError),
    #[error("image registry: {0}")]
    Registry(String),
}

impl ServerConfig {
    /// The defaults: one server, no token, Mesos-like timings.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        let m = MasterConfig::default();
        Self {
            data_dir: data_dir.into(),
            listen,
            advertise: None,
            bootstrap_expect: 1,
            join: Vec::new(),
            token: None,
            id: None,
            agent_timeout: m.agent_timeout,
            heartbeat_interval: m.heartbeat_interval,
            offer_timeout: m.offer_timeout,
            allocation_interval: m.allocation_interval,
            framework_heartbeat: m.framework_heartbeat,
            builtins: Vec::new(),
        }
    }

    /// Adds a built-in framework started with the server.
    pub fn with_builtin<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(Arc<Master>) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    {
        self.builtins.push((name.to_string(), Arc::new(f)));
        self
    }

    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: String| Err(ServerError::Config(m));
        for (name, d) in [
            ("agent_timeout", self.agent_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("offer_timeout", self.offer_timeout),
            ("allocation_interval", self.allocation_interval),
            ("framework_heartbeat", self.framework_heartbeat),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be more than 0"));
            }
        }
        if self.heartbeat_interval >= self.agent_timeout {
            return bad(format!(
                "heartbeat_interval {:?} must be shorter than agent_timeout {:?}",
                self.heartbeat_interval, self.agent_timeout
            ));
        }
        if self.advertise.is_none() && self.listen.ip().is_unspecified() {
            return bad(format!(
                "listening on {} needs an advertise address others can reach",
                self.listen
            ));
        }
        if self.token.as_deref() == Some("") {
            return bad("token is empty; omit it to run without one".into());
        }
        Ok(())
    }

    pub fn master_config(&self) -> MasterConfig {
        MasterConfig {
            agent_timeout: self.agent_timeout,
            heartbeat_interval: self.heartbeat_interval,
            offer_timeout: self.offer_timeout,
            allocation_interval: self.allocation_interval,
            framework_heartbeat: self.framework_heartbeat,
        }
    }

    /// The address advertised to peers, agents and clients.
    pub fn advertise_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    fn raft_config(&self) -> RaftConfig {
        let mut rc = RaftConfig::new(self.data_dir.join("raft"), self.advertise_address());
        rc.id = self.id;
        rc.bootstrap_expect = self.bootstrap_expect;
        rc.join = self.join.clone();
        rc.token = self.token.clone();
        rc
    }
}

/// Runs a server until `shutdown` resolves: the Raft replica, the master,
/// the image registry and the HTTP server on `cfg.listen`.
pub async fn run(
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    cfg.validate()?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let raft = RaftReplica::start(cfg.raft_config()).await?;
    let replica: Arc<dyn Replica> = raft.clone();
    let stop = CancellationToken::new();
    let result = match registry_routes(&cfg, replica.clone(), stop.clone()) {
        Ok(open) => match start(cfg, replica, raft.routes(), open, listener).await {
            Ok(server) => server.run_until(shutdown).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    stop.cancel();
    raft.shutdown().await;
    result
}

/// Runs the master and the HTTP server over an existing replica (tests use
/// [`crate::replica::MemoryReplica`]) until `shutdown` resolves. `extra`
/// routes (Raft's) are served behind the same token check and redirect.
pub async fn run_with(
    cfg: ServerConfig,
    replica: Arc<dyn Replica>,
    extra: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    start(cfg, replica, extra, Router::new(), listener)
        .await?
        .run_until(shutdown)
        .await
}

/// A running server, for tests and embedders that need the master.
pub struct RunningServer {
    master: Arc<Master>,
    addr: SocketAddr,
    stop: CancellationToken,
    serve: JoinHandle<std::io::Result<()>>,
}

/// Starts the master and serves HTTP on `listener`: the cluster API and
/// `extra` behind the token check and the leader redirect, `open` as it is
/// (it brings its own auth).
pub async fn start(
    cfg: ServerConfig,
    replica: Arc<dyn Replica>,
    extra: Router,
    open: Router,
    listener: TcpListener,
) -> Result<RunningServer, ServerError> {
    cfg.validate()?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let master = Master::start(cfg.master_config(), replica.clone());
    for (name, f) in &cfg.builtins {
        let f = f.clone();
        master.spawn_builtin(name, move |m| f(m));
    }
    let app = api::router(master.clone())
        .merge(extra)
        .layer(from_fn_with_state(replica, redirect::leader_redirect))
        .layer(from_fn_with_state(
            TokenCheck::new(cfg.token.as_deref()),
            auth::require_token,
        ))
        .merge(open);
    let stop = CancellationToken::new();
    let (stop2, m2) = (stop.clone(), master.clone());
    // Long-polls and subscription streams only end when the master closes
    // them, so the master shuts down first.
    let graceful = async move {
        stop2.cancelled().await;
        m2.shutdown();
    };
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let serve = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(graceful)
            .await
    });
    tracing::info!(%addr, "cluster api listening");
    Ok(RunningServer {
        master,
        addr,
        stop,
        serve,
    })
}

impl RunningServer {
    pub fn master(&self) -> &Arc<Master> {
        &self.master
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves (or the server fails), then stops.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        tokio::select! {
            _ = shutdown => self.shutdown().await,
            r = &mut self.serve => {
                self.master.shutdown();
                self.result(r)
            }
        }
    }

    /// Stops the master and the HTTP server, waiting a little for open
    /// requests.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.stop.cancel();
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.serve).await {
            Ok(r) => self.result(r),
            Err(_) => {
                tracing::warn!("open connections outlived the shutdown grace; closing them");
                self.serve.abort();
                Ok(())
            }
        }
    }

    fn result(
        &self,
        r: Result<std::io::Result<()>, tokio::task::JoinError>,
    ) -> Result<(), ServerError> {
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ServerError::Serve {
                addr: self.addr,
                source,
            }),
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(ServerError::Serve {
                addr: self.addr,
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }
}

/// The image registry under `data_dir/registry`, fetching what it lacks
/// from the other servers.
fn registry_routes(
    cfg: &ServerConfig,
    replica: Arc<dyn Replica>,
    stop: CancellationToken,
) -> Result<Router, ServerError> {
    let root = cfg.data_dir.join("registry");
    let peers: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(cfg.join.clone()));
    let store = RegistryStore::open(&root, RegistryConfig::default())
        .map_err(|e| ServerError::Registry(e.to_string()))?;
    let read = peers.clone();
    let store = store.with_peers(
        move || read.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        cfg.token.clone(),
    );
    // The peer list follows the Raft membership.
    tokio::spawn(async move {
        loop {
            if let Ok(members) = replica.members().await {
                let addrs: Vec<String> = members.into_iter().map(|m| m.address).collect();
                if !addrs.is_empty() {
                    *peers.lock().unwrap_or_else(|p| p.into_inner()) = addrs;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    });
    Ok(registry::auth::require_token(
        registry::routes(Arc::new(store)),
        cfg.token.clone(),
    ))
}
