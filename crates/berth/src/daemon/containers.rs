//! Container endpoints answered with one JSON body.

use super::{bad_request, ApiError, AppState};
use axum::extract::{Path, Query, State};
use axum::Json;
use berth_api::{
    ChangeEntry, CommitRequest, ContainerDetails, ContainerSummary, CreateRequest, CreateResponse,
    ImportResponse, Info, WaitResponse,
};
use serde::Deserialize;
use std::time::Duration;

pub async fn info(State(e): State<AppState>) -> Json<Info> {
    let engine = e.clone();
    let info = tokio::task::spawn_blocking(move || engine.info(env!("CARGO_PKG_VERSION"))).await;
    Json(info.unwrap_or_else(|_| e.info(env!("CARGO_PKG_VERSION"))))
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    all: bool,
}

pub async fn list(
    State(e): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Json<Vec<ContainerSummary>> {
    Json(e.list(q.all))
}

pub async fn create(
    State(e): State<AppState>,
    Json(req): Json<CreateRequest>,
) -> Result<Json<CreateResponse>, ApiError> {
    let id = e.create(req.config).await?;
    if req.start {
        if let Err(err) = e.start(&id).await {
            // `run -d` that cannot start leaves nothing behind when --rm was asked.
            if e.auto_remove(&id) {
                let _ = e.remove(&id, true).await;
            }
            return Err(err.into());
        }
    }
    Ok(Json(CreateResponse { id }))
}

pub async fn inspect(
    State(e): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ContainerDetails>, ApiError> {
    Ok(Json(e.inspect(&id)?))
}

#[derive(Deserialize)]
pub struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

pub async fn remove(
    State(e): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<Json<()>, ApiError> {
    e.remove(&id, q.force).await?;
    Ok(Json(()))
}

pub async fn start(
    State(e): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<()>, ApiError> {
    e.start(&id).await?;
    Ok(Json(()))
}

#[derive(Deserialize)]
pub struct StopQuery {
    t: Option<u64>,
}

pub async fn stop(
    State(e): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> Result<Json<()>, ApiError> {
    e.stop(&id, Duration::from_secs(q.t.unwrap_or(10))).await?;
    Ok(Json(()))
}

#[derive(Deserialize)]
pub struct KillQuery {
    signal: Option<i32>,
}

pub async fn kill(
    State(e): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<KillQuery>,
) -> Result<Json<()>, ApiError> {
    let sig = q.signal.unwrap_or(libc::SIGKILL);
    if !(1..=64).contains(&sig) {
        return Err(bad_request(format!("invalid signal {sig}")));
    }
    e.kill(&id, sig).await?;
    Ok(Json(()))
}

#[derive(Deserialize)]
pub struct WaitQuery {
    condition: Option<String>,
}

pub async fn wait(
    State(e): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<WaitResponse>, ApiError> {
    let removed = match q.condition.as_deref() {
        None | Some("not-running") => false,
        Some("removed") => true,
        Some(other) => {
            return Err(bad_request(format!(
                "invalid wait condition {other:?}: expected not-running or removed"
            )))
        }
    };
    let (exit_code, oom_killed) = e.wait(&id, removed).await?;
    Ok(Json(WaitResponse {
        exit_code,
        oom_killed,
    }))
}

pub async fn changes(
    State(e): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<ChangeEntry>>, ApiError> {
    Ok(Json(e.changes(&id).await?))
}

pub async fn commit(
    State(e): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<CommitRequest>,
) -> Result<Json<ImportResponse>, ApiError> {
    let image_id = e.commit(&id, req.repo.as_deref()).await?;
    Ok(Json(ImportResponse {
        id: image_id,
        tags: req.repo.into_iter().collect(),
    }))
}
