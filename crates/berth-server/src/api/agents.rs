//! `POST /v1/agents/register` and `POST /v1/agents/sync`.

use super::{json_body, ApiError};
use crate::master::Master;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use berth_api::cluster::{
    AgentSyncRequest, AgentSyncResponse, RegisterAgentRequest, RegisterAgentResponse,
};
use std::sync::Arc;

pub async fn register(
    State(m): State<Arc<Master>>,
    body: Bytes,
) -> Result<Json<RegisterAgentResponse>, ApiError> {
    let req: RegisterAgentRequest = json_body(&body, "agent registration")?;
    Ok(Json(m.register_agent(req).await?))
}

pub async fn sync(
    State(m): State<Arc<Master>>,
    body: Bytes,
) -> Result<Json<AgentSyncResponse>, ApiError> {
    let req: AgentSyncRequest = json_body(&body, "agent sync")?;
    Ok(Json(m.sync_agent(req).await?))
}
