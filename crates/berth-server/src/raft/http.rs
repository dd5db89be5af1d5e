//! HTTP routes of the Raft layer. Authentication is the caller's layer.
//!
//! - `POST /raft/append`, `POST /raft/vote`: openraft RPCs, JSON both ways;
//!   the answer is `{"Ok": ..}` or `{"Err": ..}` (openraft's error).
//! - `POST /raft/snapshot`: one snapshot chunk, a JSON header line then
//!   the raw bytes (see `network.rs`).
//! - `GET /raft/info`: [`RaftInfo`], used to form a cluster.
//! - `POST /v1/cluster/join` ([`JoinRequest`]) and `POST /v1/cluster/leave`
//!   ([`LeaveRequest`]): membership changes; a non-leader forwards them to
//!   the leader once, and answers 307 to the leader if already forwarded.

use super::network::{decode_chunk, FORWARDED_HEADER};
use super::replica::RaftReplica;
use super::TypeConfig;
use crate::replica::{Replica, ReplicaError};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_api::cluster::{ClusterError, JoinRequest};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Raft RPC bodies (a batch of entries, a snapshot chunk) may be large.
const BODY_LIMIT: usize = 256 << 20;

/// What `GET /raft/info` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftInfo {
    pub id: u64,
    pub address: String,
    /// This server belongs to a cluster (has a membership, a vote or logs).
    pub initialized: bool,
    #[serde(default)]
    pub leader_id: Option<u64>,
    #[serde(default)]
    pub leader_address: Option<String>,
    #[serde(default)]
    pub term: u64,
}

/// Body of `POST /v1/cluster/leave`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveRequest {
    pub id: u64,
}

impl RaftReplica {
    /// The Raft and cluster-membership routes, to merge into the server's
    /// router (behind its bearer-token layer).
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/raft/append", post(append))
            .route("/raft/vote", post(vote))
            .route("/raft/snapshot", post(snapshot))
            .route("/raft/install-snapshot", post(snapshot))
            .route("/raft/info", get(info))
            .route("/v1/cluster/join", post(join))
            .route("/v1/cluster/leave", post(leave))
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(self.clone())
    }

    pub async fn info(&self) -> RaftInfo {
        let leader = self.leader();
        RaftInfo {
            id: self.id(),
            address: self.advertise().to_string(),
            initialized: self.raft.is_initialized().await.unwrap_or(false),
            leader_id: leader.leader_id,
            leader_address: leader.leader_address,
            term: leader.term,
        }
    }
}

type S = State<Arc<RaftReplica>>;

async fn append(State(r): S, Json(req): Json<AppendEntriesRequest<TypeConfig>>) -> Response {
    Json(r.raft.append_entries(req).await).into_response()
}

async fn vote(State(r): S, Json(req): Json<VoteRequest<u64>>) -> Response {
    Json(r.raft.vote(req).await).into_response()
}

async fn snapshot(State(r): S, body: Bytes) -> Response {
    match decode_chunk(&body) {
        Ok(req) => Json(r.raft.install_snapshot(req).await).into_response(),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

async fn info(State(r): S) -> Json<RaftInfo> {
    Json(r.info().await)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ClusterError {
            message: message.into(),
        }),
    )
        .into_response()
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad request body: {e}"))
}

/// Answers a membership request that reached a non-leader: forwards it to
/// the leader once, else redirects.
async fn not_leader(
    r: &RaftReplica,
    headers: &HeaderMap,
    path: &str,
    body: Bytes,
    leader: Option<String>,
) -> Response {
    let Some(addr) = leader else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader known, retry later",
        );
    };
    if headers.contains_key(FORWARDED_HEADER) {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(
                header::LOCATION,
                format!("{}://{addr}{path}", r.client.scheme()),
            )],
        )
            .into_response();
    }
    match r
        .client
        .forward(&addr, path, body.to_vec(), r.join_timeout)
        .await
    {
        Ok((status, bytes)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            [(header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("forward to leader: {e}")),
    }
}

fn replica_error(e: ReplicaError) -> Response {
    let status = match e {
        ReplicaError::Unconfirmed(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

async fn join(State(r): S, headers: HeaderMap, body: Bytes) -> Response {
    let req: JoinRequest = match parse(&body) {
        Ok(v) => v,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if req.id == 0 || !req.address.contains(':') {
        return error(
            StatusCode::BAD_REQUEST,
            format!("join needs a non-zero id and a host:port address, got {req:?}"),
        );
    }
    match r.add_voter(&req).await {
        Ok(()) => match r.members().await {
            Ok(m) => Json(m).into_response(),
            Err(e) => replica_error(e),
        },
        Err(ReplicaError::NotLeader { leader_address }) => {
            not_leader(&r, &headers, "/v1/cluster/join", body, leader_address).await
        }
        Err(e) => replica_error(e),
    }
}

async fn leave(State(r): S, headers: HeaderMap, body: Bytes) -> Response {
    let req: LeaveRequest = match parse(&body) {
        Ok(v) => v,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match r.remove(req.id).await {
        Ok(true) => match r.members().await {
            Ok(m) => Json(m).into_response(),
            Err(e) => replica_error(e),
        },
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("server {} is not a member", req.id),
        ),
        Err(ReplicaError::NotLeader { leader_address }) => {
            not_leader(&r, &headers, "/v1/cluster/leave", body, leader_address).await
        }
        Err(e) => replica_error(e),
    }
}
