//! The node daemon: the engine behind an HTTP/JSON API on a unix socket.

mod containers;
mod images;
mod push;
mod streams;

use anyhow::Context;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use berth_engine::engine::EngineConfig;
use berth_engine::{Engine, EngineError};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

pub type AppState = Arc<Engine>;

pub fn init_tracing(format: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// An API error: a status and a one-line message as `{"message": ...}`.
pub struct ApiError(pub u16, pub String);

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError(e.status(), e.to_string())
    }
}

impl From<berth_image::ImageError> for ApiError {
    fn from(e: berth_image::ImageError) -> Self {
        EngineError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = printable_line(&self.1);
        (status, Json(berth_api::ErrorBody { message })).into_response()
    }
}

pub fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(400, msg.into())
}

pub fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(500, e.to_string())
}

pub fn router(engine: AppState) -> Router {
    Router::new()
        .route("/v1/info", get(containers::info))
        .route(
            "/v1/containers",
            get(containers::list).post(containers::create),
        )
        .route("/v1/containers/run", post(streams::run))
        .route(
            "/v1/containers/{id}",
            get(containers::inspect).delete(containers::remove),
        )
        .route("/v1/containers/{id}/start", post(containers::start))
        .route("/v1/containers/{id}/stop", post(containers::stop))
        .route("/v1/containers/{id}/kill", post(containers::kill))
        .route("/v1/containers/{id}/wait", post(containers::wait))
        .route("/v1/containers/{id}/changes", get(containers::changes))
        .route("/v1/containers/{id}/commit", post(containers::commit))
        .route("/v1/containers/{id}/logs", get(streams::logs))
        .route("/v1/containers/{id}/attach", post(streams::attach))
        .route("/v1/containers/{id}/exec", post(streams::exec))
        .route("/v1/images", get(images::list).delete(images::remove))
        .route("/v1/images/import", post(images::import))
        .route("/v1/images/save", get(images::save))
        .route("/v1/images/inspect", get(images::inspect))
        .route("/v1/images/tag", post(images::tag))
        .route("/v1/images/prune", post(images::prune))
        .route("/v1/images/push", post(push::push))
        .route("/v1/build", post(images::build))
        .route("/v1/_ping", delete(ping).get(ping))
        .with_state(engine)
}

async fn ping() -> &'static str {
    "OK"
}

pub async fn serve(
    cfg: EngineConfig,
    socket: PathBuf,
    cluster: Option<crate::cli::up::EmbeddedCluster>,
) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if socket.exists() {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            anyhow::bail!(
                "another berth daemon is already listening on {}",
                socket.display()
            );
        }
        std::fs::remove_file(&socket)
            .with_context(|| format!("removing stale socket {}", socket.display()))?;
    }
    let engine = Engine::open(cfg.clone())
        .await
        .context("starting the engine")?;
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    // Root only, like Docker's socket: whoever can talk to it controls the host.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))?;
    tracing::info!(socket = %socket.display(), data_dir = %cfg.data_dir.display(), "berth daemon ready");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!(
            "shutting down; containers keep running and are re-adopted at the next start"
        );
    };
    // The cluster roles stop with the daemon: one signal ends all three.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut roles = tokio::task::JoinSet::new();
    if let Some(cluster) = cluster {
        let server_addr = cluster.server.listen;
        roles.spawn(
            berth_server::server::run(cluster.server, stopped(stop_rx.clone()))
                .map_err_to_anyhow("cluster server"),
        );
        roles.spawn(
            berth_agent::run(
                cluster.agent,
                Some(engine.clone()),
                stopped(stop_rx.clone()),
            )
            .map_err_to_anyhow("cluster agent"),
        );
        tracing::info!(api = %server_addr, "cluster server and local agent started");
    }
    let served = axum::serve(listener, router(engine))
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = stop_tx.send(true);
    while let Some(r) = roles.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "cluster role stopped with an error");
        }
    }
    served?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Turns a role's library error into an anyhow error naming the role.
trait RoleResult {
    fn map_err_to_anyhow(
        self,
        role: &'static str,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

impl<F, E> RoleResult for F
where
    F: std::future::Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    async fn map_err_to_anyhow(self, role: &'static str) -> anyhow::Result<()> {
        self.await.map_err(|e| anyhow::anyhow!("{role}: {e}"))
    }
}

/// One printable line of at most 400 characters, cut where binary begins:
/// messages can quote bytes of untrusted input (a garbage archive).
pub fn printable_line(msg: &str) -> String {
    let mut out = String::new();
    for c in msg.chars() {
        if out.chars().count() >= 400 {
            out.push('…');
            break;
        }
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            // The rest would be binary noise quoted from the input.
            c if c.is_control() || c == '\u{fffd}' => {
                out.push('…');
                break;
            }
            c => out.push(c),
        }
    }
    out
}
