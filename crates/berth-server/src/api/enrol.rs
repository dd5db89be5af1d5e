//! `POST /v1/agents/enrol`: an agent that holds the cluster token but no
//! certificate yet sends a CSR and gets an agent certificate signed by the
//! cluster CA (CN `agent:<id>`), which the agent endpoints then require.
//!
//! Served by every server (signing needs the CA, which every server derives
//! from the token, not the Raft state) behind the token check; no client
//! certificate is needed, since getting one is the point.

use super::{json_body, ApiError};
use crate::master::util::{random_id, valid_client_id};
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use berth_api::cluster_client::{EnrolRequest, EnrolResponse, ENROL_PATH, SIM_AGENT_WILDCARD};
use berth_tls::ClusterCa;

/// The enrolment route, signing with `ca`.
pub fn routes(ca: ClusterCa) -> Router {
    Router::new().route(ENROL_PATH, post(enrol)).with_state(ca)
}

async fn enrol(State(ca): State<ClusterCa>, body: Bytes) -> Result<Json<EnrolResponse>, ApiError> {
    let req: EnrolRequest = json_body(&body, "agent enrolment")?;
    let agent_id = match req.agent_id.filter(|id| !id.is_empty()) {
        Some(id) if id == SIM_AGENT_WILDCARD || valid_client_id(&id) => id,
        Some(id) => {
            return Err(ApiError::bad_request(format!(
                "agent id {id:?}: use 1 to 128 letters, digits, '-', '_', '.' or ':'"
            )))
        }
        None => random_id("a"),
    };
    let cert_pem = ca
        .sign_agent_csr(&req.csr_pem, &agent_id)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    tracing::info!(agent_id = %agent_id, "agent enrolled");
    Ok(Json(EnrolResponse { agent_id, cert_pem }))
}
