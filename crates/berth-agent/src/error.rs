//! Agent errors.

use berth_api::cluster_client::ClusterClientError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("agent configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Cluster(#[from] ClusterClientError),
    #[error("image {0} is neither on this node nor in the cluster registry")]
    ImageNotFound(String),
    #[error("container tasks are unavailable on this agent: {0}")]
    NoEngine(String),
    #[error("{0}")]
    Engine(String),
    #[error("cgroup {name}: {detail}")]
    Cgroup { name: String, detail: String },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl AgentError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AgentError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
