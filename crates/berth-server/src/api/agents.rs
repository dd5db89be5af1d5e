//! `POST /v1/agents/register` and `POST /v1/agents/sync`.
//!
//! Over TLS (a cluster with a token) both need an agent certificate whose
//! CN is `agent:<the body's agent_id>`, on top of the token: the token says
//! "member of the cluster", the certificate "this agent". The one exception
//! is the simulated-agent certificate ([`SIM_AGENT_WILDCARD`]), which
//! stands for every agent id starting with [`SIM_AGENT_PREFIX`].

use super::{json_body, ApiError};
use crate::master::Master;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use berth_api::cluster::{
    AgentSyncRequest, AgentSyncResponse, RegisterAgentRequest, RegisterAgentResponse,
};
use berth_api::cluster_client::{SIM_AGENT_PREFIX, SIM_AGENT_WILDCARD};
use berth_tls::PeerIdentity;
use std::sync::Arc;

/// What a request over TLS without an agent certificate is told.
pub const NEEDS_AGENT_CERT: &str = "forbidden: this endpoint needs an agent certificate of the cluster (enrol the agent with the cluster token first)";

/// Checks the caller may act for `agent_id` and returns the agent id to
/// use (`None` in the body: the certificate's). `peer` is present exactly
/// when the request came over TLS; plain HTTP (no token) is not checked.
fn authorize(
    peer: Option<&PeerIdentity>,
    agent_id: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let Some(peer) = peer else {
        return Ok(agent_id.map(String::from));
    };
    let forbidden = |m: String| ApiError::new(StatusCode::FORBIDDEN, m);
    let Some(cert_id) = peer.agent_id() else {
        return Err(forbidden(NEEDS_AGENT_CERT.into()));
    };
    match agent_id {
        Some(id) if id == cert_id => Ok(Some(id.to_string())),
        Some(id) if cert_id == SIM_AGENT_WILDCARD && id.starts_with(SIM_AGENT_PREFIX) => {
            Ok(Some(id.to_string()))
        }
        None if cert_id != SIM_AGENT_WILDCARD => Ok(Some(cert_id.to_string())),
        other => Err(forbidden(format!(
            "forbidden: the certificate is for agent {cert_id}, the request for agent {}",
            other.unwrap_or("(none)")
        ))),
    }
}

pub async fn register(
    State(m): State<Arc<Master>>,
    peer: Option<Extension<PeerIdentity>>,
    body: Bytes,
) -> Result<Json<RegisterAgentResponse>, ApiError> {
    let mut req: RegisterAgentRequest = json_body(&body, "agent registration")?;
    req.agent_id = authorize(peer.as_deref(), req.agent_id.as_deref())?;
    Ok(Json(m.register_agent(req).await?))
}

pub async fn sync(
    State(m): State<Arc<Master>>,
    peer: Option<Extension<PeerIdentity>>,
    body: Bytes,
) -> Result<Json<AgentSyncResponse>, ApiError> {
    let req: AgentSyncRequest = json_body(&body, "agent sync")?;
    authorize(peer.as_deref(), Some(&req.agent_id))?;
    Ok(Json(m.sync_agent(req).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(cn: Option<&str>) -> PeerIdentity {
        PeerIdentity(cn.map(String::from))
    }

    #[test]
    fn the_certificate_must_name_the_agent() {
        // Plain HTTP: nothing to check.
        assert_eq!(authorize(None, None).unwrap(), None);
        assert_eq!(authorize(None, Some("a")).unwrap().as_deref(), Some("a"));
        let a = peer(Some("agent:a"));
        assert_eq!(
            authorize(Some(&a), Some("a")).unwrap().as_deref(),
            Some("a")
        );
        assert_eq!(authorize(Some(&a), None).unwrap().as_deref(), Some("a"));
        let e = authorize(Some(&a), Some("b")).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(
            e.message.contains("agent a") && e.message.contains("agent b"),
            "{}",
            e.message
        );
        for no in [peer(None), peer(Some("server:x"))] {
            let e = authorize(Some(&no), Some("a")).unwrap_err();
            assert_eq!(
                (e.status, e.message.as_str()),
                (StatusCode::FORBIDDEN, NEEDS_AGENT_CERT)
            );
        }
        let sim = peer(Some("agent:sim-*"));
        assert_eq!(
            authorize(Some(&sim), Some("sim-7")).unwrap().as_deref(),
            Some("sim-7")
        );
        assert!(authorize(Some(&sim), Some("a")).is_err());
        assert!(authorize(Some(&sim), None).is_err());
        // An agent named sim-1 is not the wildcard.
        let s1 = peer(Some("agent:sim-1"));
        assert!(authorize(Some(&s1), Some("sim-2")).is_err());
    }
}
