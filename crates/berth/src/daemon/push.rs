//! `POST /v1/images/push`: the daemon pushes an image from its store to
//! the cluster's registry (it owns the store, so the CLI does not read the
//! store's files behind its back).
//!
//! Request body: `{"image": "NAME:TAG", "servers": ["host:port", ...],
//! "token": "..."}`. The answer is NDJSON: the push's progress events
//! (`{"event": "blob" | "exists" | "progress" | "uploaded" | "manifest", ...}`,
//! see `berth_image::distribution::PushEvent`), then one
//! `{"event": "done", "report": {...}}` or `{"event": "error", "message": "..."}`.

use super::{bad_request, internal, ApiError, AppState};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use berth_image::distribution::{self, PushEvent};
use serde::Deserialize;
use tokio::sync::mpsc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    image: String,
    servers: Vec<String>,
    #[serde(default)]
    token: Option<String>,
}

fn line(value: &serde_json::Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

pub async fn push(
    State(e): State<AppState>,
    Json(req): Json<PushRequest>,
) -> Result<Response, ApiError> {
    let servers: Vec<String> = req
        .servers
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        return Err(bad_request("push needs at least one cluster server"));
    }
    let store = e.images();
    // A bad reference is a clean 404 rather than a broken stream.
    let (s2, image) = (store.clone(), req.image.clone());
    tokio::task::spawn_blocking(move || s2.resolve(&image))
        .await
        .map_err(|err| internal(format!("worker failed: {err}")))??;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::task::spawn_blocking(move || {
        let send = |v: serde_json::Value| {
            let _ = tx.blocking_send(line(&v));
        };
        let mut last_progress = std::time::Instant::now();
        let result = distribution::with_servers(&servers, req.token.as_deref(), |registry| {
            distribution::push(&store, &req.image, registry, &mut |ev| {
                // Progress at most 10 times a second: the socket is not a log.
                if matches!(ev, PushEvent::Progress { .. }) {
                    if last_progress.elapsed() < std::time::Duration::from_millis(100) {
                        return;
                    }
                    last_progress = std::time::Instant::now();
                }
                send(serde_json::to_value(&ev).unwrap_or_default());
            })
        });
        match result {
            Ok(report) => {
                tracing::info!(
                    image = %req.image,
                    registry = %report.registry,
                    digest = %report.digest,
                    uploaded = report.layers_uploaded,
                    skipped = report.layers_skipped,
                    "image pushed"
                );
                send(serde_json::json!({"event": "done", "report": report}));
            }
            Err(err) => {
                tracing::warn!(image = %req.image, error = %err, "push failed");
                send(serde_json::json!({"event": "error", "message": err.to_string()}));
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .map_err(internal)
}
