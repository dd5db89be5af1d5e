//! The agent's optional HTTP endpoint: GET /v1/health and GET /v1/tasks,
//! behind the same bearer token as the cluster.

use crate::core::Core;
use crate::error::AgentError;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use berth_api::cluster::ClusterError;
use berth_types::cluster::{Resources, TaskState};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One task as GET /v1/tasks lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTaskView {
    pub task_id: String,
    #[serde(default)]
    pub name: String,
    pub state: TaskState,
    /// `command` or `container`; empty when unknown.
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub resources: Resources,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentHealth {
    pub status: String,
    pub agent_id: String,
    pub pending_updates: usize,
}

#[derive(Clone)]
struct AppState {
    core: Arc<Core>,
    token: Option<Arc<str>>,
}

/// Constant-time comparison: the token check must not leak its prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The refusal to send, if the request lacks the token.
fn refuse(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &state.token else {
        return None;
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(given.as_bytes(), token.as_bytes()) {
        None
    } else {
        Some(
            (
                StatusCode::UNAUTHORIZED,
                Json(ClusterError {
                    message: "unauthorized: missing or wrong bearer token".into(),
                }),
            )
                .into_response(),
        )
    }
}

async fn health(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&s, &headers) {
        return r;
    }
    Json(AgentHealth {
        status: "ok".into(),
        agent_id: s.core.agent_id(),
        pending_updates: s.core.pending_count(),
    })
    .into_response()
}

async fn tasks(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&s, &headers) {
        return r;
    }
    let list: Vec<AgentTaskView> = s
        .core
        .tasks()
        .into_iter()
        .map(|(id, t)| AgentTaskView {
            task_id: id,
            name: t.info.as_ref().map(|i| i.name.clone()).unwrap_or_default(),
            state: t.state,
            kind: t
                .info
                .as_ref()
                .map(|i| match i.kind {
                    berth_types::cluster::TaskKind::Command { .. } => "command",
                    berth_types::cluster::TaskKind::Container { .. } => "container",
                })
                .unwrap_or_default()
                .to_string(),
            resources: t.info.as_ref().map(|i| i.resources).unwrap_or_default(),
        })
        .collect();
    Json(list).into_response()
}

pub(crate) fn router(core: Arc<Core>, token: Option<String>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/tasks", get(tasks))
        .with_state(AppState {
            core,
            token: token.map(Arc::from),
        })
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    token: Option<String>,
    core: Arc<Core>,
) -> Result<(), AgentError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    tracing::info!(addr = %addr, "agent http endpoint listening");
    axum::serve(listener, router(core, token))
        .await
        .map_err(|source| AgentError::Listen { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{StatusSink, TaskEvent};
    use crate::updates::UpdateQueue;
    use berth_api::cluster_client::ClusterClient;

    #[tokio::test]
    async fn health_and_tasks_need_the_token() {
        let core = Arc::new(Core::new("a-7".into(), UpdateQueue::in_memory()));
        core.report(TaskEvent::new("t1", TaskState::Running));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(serve(listener, Some("tok".into()), core));
        let good = ClusterClient::new(vec![addr.clone()], Some("tok".into()));
        let h: AgentHealth = good.get_json("/v1/health").await.unwrap();
        assert_eq!(h.agent_id, "a-7");
        assert_eq!(h.pending_updates, 1);
        let t: Vec<AgentTaskView> = good.get_json("/v1/tasks").await.unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].state, TaskState::Running);
        let bad = ClusterClient::new(vec![addr], Some("nope".into()));
        let err = bad.get_json::<AgentHealth>("/v1/health").await.unwrap_err();
        assert_eq!(err.status(), Some(401));
        assert!(err.to_string().starts_with("unauthorized"));
        server.abort();
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
    }
}
