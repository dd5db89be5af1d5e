//! The HTTP/JSON APIs: agents ([`agents`]), frameworks ([`scheduler`]) and
//! administrators ([`admin`]); [`redirect`] sends clients of a follower to
//! the leader. Every error body is a JSON [`ClusterError`].

pub mod admin;
pub mod agents;
pub mod enrol;
pub mod redirect;
pub mod scheduler;

use crate::master::{Master, MasterError};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use berth_api::cluster::ClusterError;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Largest request body: an ACCEPT may carry thousands of tasks.
pub const MAX_BODY: usize = 64 << 20;

/// Every route of the cluster API (without auth and leader redirect, which
/// [`crate::server`] adds around everything).
pub fn router(master: Arc<Master>) -> Router {
    Router::new()
        .route("/v1/agents/register", post(agents::register))
        .route("/v1/agents/sync", post(agents::sync))
        .route("/api/v1/scheduler", post(scheduler::call))
        .route("/v1/jobs", post(admin::put_job).get(admin::jobs))
        .route("/v1/jobs/{name}", get(admin::job).delete(admin::stop_job))
        .route("/v1/tasks", get(admin::tasks))
        .route("/v1/nodes", get(admin::nodes))
        .route("/v1/nodes/{id}/drain", post(admin::drain))
        .route("/v1/nodes/{id}/activate", post(admin::activate))
        .route("/v1/frameworks", get(admin::frameworks))
        .route("/v1/roles/{role}", put(admin::set_role))
        .route("/v1/cluster/members", get(admin::members))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(master)
}

/// An error answer: status + JSON [`ClusterError`] (+ `Location` for 307).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub location: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            location: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ClusterError {
            message: self.message,
        });
        match self.location {
            Some(loc) => (self.status, [(header::LOCATION, loc)], body).into_response(),
            None => (self.status, body).into_response(),
        }
    }
}

impl From<MasterError> for ApiError {
    fn from(e: MasterError) -> Self {
        let status = match &e {
            // Leadership moved while the request was handled: the client
            // retries and is redirected then.
            MasterError::NotLeader { .. } | MasterError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            MasterError::BadRequest(_) => StatusCode::BAD_REQUEST,
            MasterError::NotFound(_) => StatusCode::NOT_FOUND,
            MasterError::Conflict(_) => StatusCode::CONFLICT,
            MasterError::Forbidden(_) => StatusCode::FORBIDDEN,
            MasterError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match e {
            MasterError::NotLeader { .. } => "this server is not the leader any more; retry".into(),
            other => other.to_string(),
        };
        Self::new(status, message)
    }
}

/// Parses a JSON body; the message says what was expected.
pub(crate) fn json_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid {what}: {e}")))
}

#[cfg(test)]
mod load;
#[cfg(test)]
mod tests;
