//! Serving an axum router over TLS, one task per connection, with the
//! verified client identity attached to every request.

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::ca::{AGENT_CN_PREFIX, SERVER_CN_PREFIX};

/// The subject CN of the client certificate that the connection presented
/// and the cluster CA verified (`agent:<id>`, `server:<name>`), or `None`
/// for a client without a certificate (the CLI: token only). Inserted into
/// every request's extensions by [`serve_tls`]; also an axum extractor
/// (`None` when the request did not come through [`serve_tls`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerIdentity(pub Option<String>);

impl PeerIdentity {
    pub fn common_name(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The agent id of an `agent:<id>` certificate.
    pub fn agent_id(&self) -> Option<&str> {
        self.common_name()?.strip_prefix(AGENT_CN_PREFIX)
    }

    /// The name of a `server:<name>` certificate.
    pub fn server_name(&self) -> Option<&str> {
        self.common_name()?.strip_prefix(SERVER_CN_PREFIX)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PeerIdentity {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<PeerIdentity>()
            .cloned()
            .unwrap_or_default())
    }
}

/// Extractor: the agent id of a request made with an agent certificate;
/// anything else is answered 403.
#[derive(Debug, Clone)]
pub struct AgentPeer(pub String);

/// Extractor: the name of a request made with a server certificate;
/// anything else is answered 403.
#[derive(Debug, Clone)]
pub struct ServerPeer(pub String);

/// The 403 of [`AgentPeer`] and [`ServerPeer`], as a `{"message": ...}`
/// body like the other cluster API errors.
#[derive(Debug)]
pub struct PeerRejection(&'static str);

impl IntoResponse for PeerRejection {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({ "message": self.0 })),
        )
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AgentPeer {
    type Rejection = PeerRejection;

    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, Self::Rejection> {
        let Ok(peer) = PeerIdentity::from_request_parts(parts, s).await;
        peer.agent_id()
            .map(|id| AgentPeer(id.to_string()))
            .ok_or(PeerRejection(
                "forbidden: this endpoint needs an agent certificate of the cluster (enrol the agent with the cluster token first)",
            ))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ServerPeer {
    type Rejection = PeerRejection;

    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, Self::Rejection> {
        let Ok(peer) = PeerIdentity::from_request_parts(parts, s).await;
        peer.server_name()
            .map(|n| ServerPeer(n.to_string()))
            .ok_or(PeerRejection(
                "forbidden: this endpoint needs a server certificate of the cluster",
            ))
    }
}

/// Timeouts of [`serve_tls_with`].
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// A connection that has not finished its TLS handshake by then is
    /// dropped (only that one).
    pub handshake_timeout: Duration,
    /// After shutdown, how long open connections may finish their
    /// requests before they are cut (long-lived streams are cut then).
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(3),
        }
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, with
/// the default [`ServeOptions`]. HTTP/1.1 with upgrades; every request
/// carries [`PeerIdentity`] and axum's `ConnectInfo<SocketAddr>`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) {
    serve_tls_with(listener, tls, router, shutdown, ServeOptions::default()).await
}

/// [`serve_tls`] with explicit timeouts.
pub async fn serve_tls_with(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
    options: ServeOptions,
) {
    let acceptor = TlsAcceptor::from(tls);
    let stop = CancellationToken::new();
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            // Reaps finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning, and keep serving the open connections.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        conns.spawn(serve_connection(
            acceptor.clone(),
            tcp,
            remote,
            router.clone(),
            stop.clone(),
            options.handshake_timeout,
        ));
    }
    drop(listener);
    stop.cancel();
    let drained = tokio::time::timeout(options.shutdown_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            open = conns.len(),
            "cutting connections still open after the shutdown grace"
        );
    }
    conns.abort_all();
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    router: Router,
    stop: CancellationToken,
    handshake_timeout: Duration,
) {
    let tls = tokio::select! {
        r = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)) => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "tls handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, ?handshake_timeout, "tls handshake timed out");
                return;
            }
        },
        _ = stop.cancelled() => return,
    };
    // rustls has verified a presented certificate against the cluster CA
    // by now, so its CN is an authenticated cluster identity.
    let peer = PeerIdentity(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|c| crate::x509::common_name_of(c)),
    );
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        req.extensions_mut().insert(ConnectInfo(remote));
        let mut router = router.clone();
        router.call(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}
