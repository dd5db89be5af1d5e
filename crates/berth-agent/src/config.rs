//! The agent's configuration.

use crate::error::AgentError;
use berth_types::cluster::{Attributes, Resources};
use std::net::SocketAddr;
use std::path::PathBuf;

/// How long a sync waits for changes when nothing is to be sent, unless
/// configured.
pub const DEFAULT_WAIT_MS: u64 = 2000;
/// The longest long poll accepted.
pub const MAX_WAIT_MS: u64 = 60_000;

#[derive(Clone)]
pub struct AgentConfig {
    /// Holds agent.json, updates.json, tasks/ and engine/.
    pub data_dir: PathBuf,
    /// `host:port` of the cluster servers.
    pub servers: Vec<String>,
    /// The cluster token. With it the agent enrols (its certificate is kept
    /// in `DATA/cluster-identity.pem`) and speaks mutual TLS with the
    /// servers; without it, plain HTTP (a cluster without a token).
    pub token: Option<String>,
    /// Serve GET /v1/health and /v1/tasks here.
    pub listen: Option<SocketAddr>,
    /// What the node offers; detected when None. The CLI parses
    /// `--resources` with `Resources::parse_with_defaults(s,
    /// detect_resources(dir))` so missing names are detected.
    pub resources: Option<Resources>,
    pub attributes: Attributes,
    /// Registered host name; the host's own when None.
    pub hostname: Option<String>,
    /// Accept tasks and report them RUNNING without running anything.
    pub simulate: bool,
    /// Long-poll wait of a sync with nothing to send, in milliseconds.
    pub wait_ms: u64,
}

impl std::fmt::Debug for AgentConfig {
    // By hand so the token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("data_dir", &self.data_dir)
            .field("servers", &self.servers)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("listen", &self.listen)
            .field("resources", &self.resources)
            .field("attributes", &self.attributes)
            .field("hostname", &self.hostname)
            .field("simulate", &self.simulate)
            .field("wait_ms", &self.wait_ms)
            .finish()
    }
}

impl AgentConfig {
    pub fn new(data_dir: impl Into<PathBuf>, servers: Vec<String>) -> Self {
        AgentConfig {
            data_dir: data_dir.into(),
            servers,
            token: None,
            listen: None,
            resources: None,
            attributes: Attributes::new(),
            hostname: None,
            simulate: false,
            wait_ms: DEFAULT_WAIT_MS,
        }
    }

    /// Checks what the types cannot; the message names the field.
    pub fn validate(&self) -> Result<(), AgentError> {
        if self.servers.iter().all(|s| s.trim().is_empty()) {
            return Err(AgentError::Config(
                "servers: give at least one cluster server as host:port".into(),
            ));
        }
        for s in &self.servers {
            let s = s.trim();
            let hostport = s
                .strip_prefix("http://")
                .or_else(|| s.strip_prefix("https://"))
                .unwrap_or(s)
                .trim_end_matches('/');
            let port_ok = hostport
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(AgentError::Config(format!(
                    "servers: {s:?} is not host:port"
                )));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(AgentError::Config("data_dir: empty path".into()));
        }
        if self.wait_ms > MAX_WAIT_MS {
            return Err(AgentError::Config(format!(
                "wait_ms {}: at most {MAX_WAIT_MS}",
                self.wait_ms
            )));
        }
        if let Some(h) = &self.hostname {
            if h.trim().is_empty() {
                return Err(AgentError::Config("hostname: empty".into()));
            }
        }
        if let Some(r) = &self.resources {
            if !r.cpus.is_finite() || r.cpus < 0.0 {
                return Err(AgentError::Config(format!("resources: cpus {}", r.cpus)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok = AgentConfig::new("/tmp/x", vec!["127.0.0.1:7070".into()]);
        ok.validate().unwrap();
        let mut c = ok.clone();
        c.servers = vec![];
        assert!(c.validate().unwrap_err().to_string().contains("servers"));
        c.servers = vec!["nohost".into()];
        assert!(c.validate().unwrap_err().to_string().contains("nohost"));
        c.servers = vec!["http://h:1/".into()];
        c.validate().unwrap();
        c.wait_ms = MAX_WAIT_MS + 1;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.token = Some("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
