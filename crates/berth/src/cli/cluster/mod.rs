//! Cluster commands: the `server` and `agent` roles, and the client
//! commands (`job`, `task`, `node`, `framework`) that talk to the servers.

pub mod agent;
pub mod jobs;
pub mod server;

use berth_api::cluster_client::ClusterClient;
use clap::Args;

/// How client commands reach the cluster.
#[derive(Debug, Args, Clone)]
pub struct ClusterArgs {
    /// Server addresses (host:port), comma separated; any server will do
    #[arg(
        long,
        env = "BERTH_SERVERS",
        value_delimiter = ',',
        default_value = "127.0.0.1:5050"
    )]
    pub servers: Vec<String>,
    /// API token of the cluster
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ClusterArgs {
    /// With a token, HTTPS trusting only the cluster CA derived from it
    /// (servers with a token speak nothing else); without, plain HTTP.
    pub fn client(&self) -> anyhow::Result<ClusterClient> {
        let servers = clean_servers(&self.servers)?;
        Ok(ClusterClient::for_cluster(
            servers,
            self.resolved_token(),
            None,
        )?)
    }

    /// --token, or else (root on the machine running `berth up`) the token
    /// that `berth up` generated.
    pub fn resolved_token(&self) -> Option<String> {
        self.token
            .clone()
            .or_else(|| std::fs::read_to_string(default_token_path()).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }
}

/// Where `berth up` keeps the token of its embedded cluster.
pub fn default_token_path() -> std::path::PathBuf {
    std::path::Path::new("/var/lib/berth").join(TOKEN_FILE)
}

const TOKEN_FILE: &str = "cluster-token";

/// The embedded cluster's token: read from DATA/cluster-token, or made
/// (32 random bytes, hex) and written there readable by root only.
pub fn local_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

/// Checks a cluster token given on the command line: empty means none, and
/// a short one cannot be a cluster's (the cluster CA is derived from it).
pub fn check_token(token: Option<&str>) -> anyhow::Result<Option<String>> {
    match token.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) if t.len() < berth_tls::MIN_TOKEN_LEN => Err(anyhow::anyhow!(
            "invalid --token: {}",
            berth_tls::TlsError::TokenTooShort {
                len: t.len(),
                min: berth_tls::MIN_TOKEN_LEN
            }
        )),
        Some(t) => Ok(Some(t.to_string())),
    }
}

/// Trims and checks a list of `host:port` addresses.
pub fn clean_servers(list: &[String]) -> anyhow::Result<Vec<String>> {
    let servers: Vec<String> = list
        .iter()
        .map(|s| s.trim().trim_start_matches("http://").to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        anyhow::bail!("no servers given: use --servers host:port or BERTH_SERVERS");
    }
    for s in &servers {
        if !s
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            anyhow::bail!("invalid server address {s:?}: expected host:port");
        }
    }
    Ok(servers)
}

/// Parses durations written as `10s`, `500ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Resolves once SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
