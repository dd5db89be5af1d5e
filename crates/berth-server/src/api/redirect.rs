//! Only the leader serves the APIs: elsewhere a request is answered 307
//! with `Location` on the same path at the leader, or 503 while no leader
//! is known. Raft's internal routes and the member list are served by
//! every server; join and leave forward to the leader themselves.

use super::ApiError;
use crate::replica::Replica;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub const NO_LEADER: &str = "no leader elected yet";

fn served_everywhere(method: &Method, path: &str) -> bool {
    path.starts_with("/raft/")
        || path == "/v1/cluster/join"
        || path == "/v1/cluster/leave"
        || (method == Method::GET && path == "/v1/cluster/members")
}

pub async fn leader_redirect(
    State(replica): State<Arc<dyn Replica>>,
    req: Request,
    next: Next,
) -> Response {
    if served_everywhere(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let leader = replica.leader();
    if leader.is_self {
        return next.run(req).await;
    }
    match leader.leader_address {
        Some(addr) => {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            // Requests over TLS carry a PeerIdentity; the leader speaks
            // what this server speaks.
            let scheme = if req.extensions().get::<berth_tls::PeerIdentity>().is_some() {
                "https"
            } else {
                "http"
            };
            ApiError {
                status: StatusCode::TEMPORARY_REDIRECT,
                message: format!("not the leader; the leader is {addr}"),
                location: Some(format!("{scheme}://{addr}{path}")),
            }
            .into_response()
        }
        None => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, NO_LEADER).into_response(),
    }
}
