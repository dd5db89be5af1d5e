//! The admin API used by the CLI: jobs, tasks, nodes, frameworks, roles,
//! members.

use super::{json_body, ApiError};
use crate::master::Master;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::Json;
use berth_api::cluster::{FrameworkView, JobView, MemberView, NodeView, TaskView};
use berth_types::JobSpec;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

type M = State<Arc<Master>>;

pub async fn put_job(State(m): M, body: Bytes) -> Result<Json<JobView>, ApiError> {
    let spec: JobSpec = json_body(&body, "job")?;
    Ok(Json(m.put_job(spec).await?))
}

pub async fn jobs(State(m): M) -> Result<Json<Vec<JobView>>, ApiError> {
    Ok(Json(m.jobs().await?))
}

pub async fn job(State(m): M, Path(name): Path<String>) -> Result<Json<JobView>, ApiError> {
    Ok(Json(m.job(&name).await?))
}

pub async fn stop_job(State(m): M, Path(name): Path<String>) -> Result<Json<JobView>, ApiError> {
    Ok(Json(m.stop_job(&name).await?))
}

#[derive(Debug, Deserialize)]
pub struct TasksQuery {
    pub job: Option<String>,
}

pub async fn tasks(
    State(m): M,
    Query(q): Query<TasksQuery>,
) -> Result<Json<Vec<TaskView>>, ApiError> {
    Ok(Json(m.tasks(q.job.as_deref()).await?))
}

pub async fn nodes(State(m): M) -> Result<Json<Vec<NodeView>>, ApiError> {
    Ok(Json(m.nodes().await?))
}

pub async fn drain(State(m): M, Path(id): Path<String>) -> Result<Json<NodeView>, ApiError> {
    Ok(Json(m.drain_node(&id).await?))
}

pub async fn activate(State(m): M, Path(id): Path<String>) -> Result<Json<NodeView>, ApiError> {
    Ok(Json(m.activate_node(&id).await?))
}

pub async fn frameworks(State(m): M) -> Result<Json<Vec<FrameworkView>>, ApiError> {
    Ok(Json(m.frameworks().await?))
}

/// Body of `PUT /v1/roles/{role}` and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleWeight {
    #[serde(default, skip_deserializing)]
    pub role: String,
    pub weight: f64,
}

pub async fn set_role(
    State(m): M,
    Path(role): Path<String>,
    body: Bytes,
) -> Result<Json<RoleWeight>, ApiError> {
    let mut w: RoleWeight = json_body(&body, "role weight")?;
    m.set_role_weight(&role, w.weight).await?;
    w.role = role;
    Ok(Json(w))
}

/// Served by every server (the redirect middleware lets it through).
pub async fn members(State(m): M) -> Result<Json<Vec<MemberView>>, ApiError> {
    let members = m
        .replica()
        .members()
        .await
        .map_err(crate::master::MasterError::from)?;
    Ok(Json(members))
}
