//! `berth server`: the Raft replica, the master and the HTTP server in one
//! process.
//!
//! Routing: the cluster API ([`crate::api`]) and the Raft routes sit behind
//! the token check ([`crate::auth`]) and the leader redirect
//! ([`crate::api::redirect`]); agent enrolment sits behind the token check
//! only (every server can sign); the image registry (`/v2/...`) brings its
//! own auth (registry clients send the token as a Basic password too) and is
//! served by every server.
//!
//! Transport: with a token, HTTPS only, under the cluster CA derived from
//! the token (`berth_tls`); the server issues itself a fresh certificate
//! (CN `server:<advertise address>`) at every start. Who may call what:
//!
//! | routes | needs |
//! |---|---|
//! | CLI, scheduler and admin API, `/v1/cluster/*` | token |
//! | `/v1/agents/enrol` | token |
//! | `/v1/agents/register`, `/v1/agents/sync` | token + agent certificate naming the agent |
//! | `/raft/*` | token + server certificate |
//! | `/v2/*` (registry) | token (Bearer or Basic password) |
//!
//! Without a token (development only) everything is plain HTTP and open.

use crate::api::{self, redirect};
use crate::auth::{self, TokenCheck};
use crate::master::{Master, MasterConfig};
use crate::raft::{RaftConfig, RaftReplica};
use crate::registry::{self, RegistryConfig, RegistryStore};
use crate::replica::{BoxFuture, Replica};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::middleware::{from_fn, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use berth_api::cluster::ClusterError;
use berth_tls::{ClusterCa, Identity, PeerIdentity};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Cluster secret; every request must carry it as a Bearer token, and
    /// with it the server serves HTTPS only (mutual TLS for agents and
    /// peers), under the cluster CA derived from it. At least
    /// [`berth_tls::MIN_TOKEN_LEN`] bytes.
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
    #[error("cluster tls: {0}")]
    Tls(String),
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
        match self.token.as_deref() {
            Some("") => return bad("token is empty; omit it to run without one".into()),
            Some(t) if t.len() < berth_tls::MIN_TOKEN_LEN => {
                return bad(berth_tls::TlsError::TokenTooShort {
                    len: t.len(),
                    min: berth_tls::MIN_TOKEN_LEN,
                }
                .to_string())
            }
            _ => {}
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

    fn raft_config(&self, tls: Option<&ClusterTls>) -> RaftConfig {
        let mut rc = RaftConfig::new(self.data_dir.join("raft"), self.advertise_address());
        rc.id = self.id;
        rc.bootstrap_expect = self.bootstrap_expect;
        rc.join = self.join.clone();
        rc.token = self.token.clone();
        rc.identity = tls.map(|t| t.identity.clone());
        rc
    }

    /// With a token: the cluster CA and a new certificate for this server,
    /// valid for the listen and advertise addresses (and loopback).
    pub fn cluster_tls(&self) -> Result<Option<ClusterTls>, ServerError> {
        let Some(token) = self.token.as_deref().filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let tls_err = |e: berth_tls::TlsError| ServerError::Tls(e.to_string());
        let ca = ClusterCa::from_token(token).map_err(tls_err)?;
        let advertise = self.advertise_address();
        let identity = ca
            .issue_server(&advertise, &[self.listen.to_string(), advertise.clone()])
            .map_err(tls_err)?;
        Ok(Some(ClusterTls { ca, identity }))
    }
}

/// A server's TLS material: the cluster CA and the server's certificate.
#[derive(Clone, Debug)]
pub struct ClusterTls {
    pub ca: ClusterCa,
    pub identity: Identity,
}

/// Where [`run`] writes the cluster CA certificate (PEM), for
/// `curl --cacert`.
pub const CA_FILE: &str = "ca.pem";
/// A directory holding only the CA certificate as `ca.crt`: what
/// `skopeo --src-cert-dir`/`--dest-cert-dir` (containers/image) read.
pub const CA_CERT_DIR: &str = "certs.d";

/// Writes the CA certificate to `DATA/ca.pem` and `DATA/certs.d/ca.crt`
/// (public; every start, so a new token replaces it). Returns both paths.
pub fn write_ca_files(data_dir: &Path, ca: &ClusterCa) -> Result<(PathBuf, PathBuf), ServerError> {
    let pem = ca.cert_pem();
    let file = data_dir.join(CA_FILE);
    let dir = data_dir.join(CA_CERT_DIR);
    let write = |path: &Path| {
        std::fs::create_dir_all(path.parent().unwrap_or(data_dir))
            .and_then(|_| std::fs::write(path, &pem))
            .map_err(|e| ServerError::Tls(format!("writing {}: {e}", path.display())))
    };
    write(&file)?;
    write(&dir.join("ca.crt"))?;
    Ok((file, dir))
}

/// What a request to a Raft route without a server certificate is told.
pub const NEEDS_SERVER_CERT: &str =
    "forbidden: this endpoint needs a server certificate of the cluster";

/// Middleware: over TLS, Raft's routes (`/raft/*`) need a server
/// certificate of the cluster; the token alone does not make a Raft peer.
/// (Plain HTTP, a cluster without a token, is not checked: requests carry
/// a [`PeerIdentity`] only when they came through `berth_tls::serve_tls`.)
pub async fn require_server_cert(req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/raft/") {
        if let Some(peer) = req.extensions().get::<PeerIdentity>() {
            if peer.server_name().is_none() {
                tracing::debug!(path = %req.uri().path(), peer = ?peer.common_name(), "raft request without a server certificate refused");
                return (
                    StatusCode::FORBIDDEN,
                    Json(ClusterError {
                        message: NEEDS_SERVER_CERT.into(),
                    }),
                )
                    .into_response();
            }
        }
    }
    next.run(req).await
}

/// Runs a server until `shutdown` resolves: the Raft replica, the master,
/// the image registry and the HTTP server on `cfg.listen`.
pub async fn run(
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    cfg.validate()?;
    let tls = cfg.cluster_tls()?;
    if let Some(t) = &tls {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            ServerError::Config(format!("creating {}: {e}", cfg.data_dir.display()))
        })?;
        let (file, dir) = write_ca_files(&cfg.data_dir, &t.ca)?;
        tracing::info!(
            fingerprint = %t.ca.fingerprint(),
            ca = %file.display(),
            cert_dir = %dir.display(),
            "cluster CA: curl --cacert {}, skopeo --src-cert-dir/--dest-cert-dir {}",
            file.display(),
            dir.display()
        );
    }
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let raft = RaftReplica::start(cfg.raft_config(tls.as_ref())).await?;
    let replica: Arc<dyn Replica> = raft.clone();
    let stop = CancellationToken::new();
    let result = match registry_routes(&cfg, tls.as_ref(), replica.clone(), stop.clone()) {
        Ok(open) => match start_with(cfg, tls, replica, raft.routes(), open, listener).await {
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

/// Starts the master and serves on `listener` (HTTPS when `cfg` has a
/// token, else HTTP): the cluster API and `extra` behind the token check
/// and the leader redirect, `open` as it is (it brings its own auth).
pub async fn start(
    cfg: ServerConfig,
    replica: Arc<dyn Replica>,
    extra: Router,
    open: Router,
    listener: TcpListener,
) -> Result<RunningServer, ServerError> {
    cfg.validate()?;
    let tls = cfg.cluster_tls()?;
    start_with(cfg, tls, replica, extra, open, listener).await
}

/// [`start`] with the TLS material decided (`None`: plain HTTP).
async fn start_with(
    cfg: ServerConfig,
    tls: Option<ClusterTls>,
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
    let server_tls = match &tls {
        Some(t) => Some(
            berth_tls::server_config(&t.ca, &t.identity)
                .map_err(|e| ServerError::Tls(e.to_string()))?,
        ),
        None => None,
    };
    let master = Master::start(cfg.master_config(), replica.clone());
    for (name, f) in &cfg.builtins {
        let f = f.clone();
        master.spawn_builtin(name, move |m| f(m));
    }
    let mut app = api::router(master.clone())
        .merge(extra)
        .layer(from_fn_with_state(replica, redirect::leader_redirect));
    if let Some(t) = &tls {
        app = app.merge(api::enrol::routes(t.ca.clone()));
    }
    let app = app
        .layer(from_fn(require_server_cert))
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
    let serve = match server_tls {
        Some(config) => {
            // serve_tls sets TCP_NODELAY on every connection itself.
            tokio::spawn(async move {
                berth_tls::serve_tls(listener, config, app, graceful).await;
                Ok(())
            })
        }
        None => {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(graceful)
                    .await
            })
        }
    };
    tracing::info!(%addr, tls = tls.is_some(), "cluster api listening");
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
    tls: Option<&ClusterTls>,
    replica: Arc<dyn Replica>,
    stop: CancellationToken,
) -> Result<Router, ServerError> {
    let root = cfg.data_dir.join("registry");
    let peers: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(cfg.join.clone()));
    let store = RegistryStore::open(&root, RegistryConfig::default())
        .map_err(|e| ServerError::Registry(e.to_string()))?;
    let read = peers.clone();
    let list = move || read.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let store = match tls {
        Some(t) => {
            let config = berth_tls::client_config(&t.ca, Some(&t.identity))
                .map_err(|e| ServerError::Tls(e.to_string()))?;
            store.with_tls_peers(list, cfg.token.clone(), config)
        }
        None => store.with_peers(list, cfg.token.clone()),
    };
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
