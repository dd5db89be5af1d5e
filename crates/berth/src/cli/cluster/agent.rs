//! `berth agent`: runs the tasks the servers assign to this machine.

use super::{check_token, clean_servers, shutdown_signal};
use anyhow::Context;
use berth_types::{parse_attributes, Resources};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Where the agent keeps its id, task sandboxes and (for container
    /// tasks) its images and containers
    #[arg(long, default_value = "/var/lib/berth/agent")]
    pub data_dir: PathBuf,
    /// Server addresses (host:port), comma separated
    #[arg(
        long,
        env = "BERTH_SERVERS",
        value_delimiter = ',',
        default_value = "127.0.0.1:5050"
    )]
    pub servers: Vec<String>,
    /// Address for the agent's own small HTTP API (health, tasks)
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Resources to advertise, e.g. 'cpus:24;mem:24576;disk:409600'
    /// (mem and disk in MiB; missing ones are detected)
    #[arg(long)]
    pub resources: Option<String>,
    /// Attributes, e.g. 'datacenter:pdx1;rack:1-1;os:linux'
    #[arg(long, default_value = "")]
    pub attributes: String,
    /// Host name to register with (default: the machine's)
    #[arg(long)]
    pub hostname: Option<String>,
    /// Cluster secret: the agent enrols with it (its certificate is kept
    /// in DATA_DIR/cluster-identity.pem) and speaks mutual TLS with the
    /// servers
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Accept tasks without running them (for placement benchmarks)
    #[arg(long)]
    pub simulate: bool,
    /// With --simulate: how many agents this process pretends to be
    #[arg(long, default_value_t = 1, requires = "simulate")]
    pub simulate_agents: usize,
    /// Log format: text or json
    #[arg(long, default_value = "text")]
    pub log_format: String,
}

impl AgentArgs {
    pub fn config(&self) -> anyhow::Result<berth_agent::AgentConfig> {
        let resources = match &self.resources {
            None => None,
            Some(r) => {
                let detected = berth_agent::detect_resources(&self.data_dir);
                Some(Resources::parse_with_defaults(r, detected).context("invalid --resources")?)
            }
        };
        let attributes = parse_attributes(&self.attributes).context("invalid --attributes")?;
        Ok(berth_agent::AgentConfig {
            data_dir: self.data_dir.clone(),
            servers: clean_servers(&self.servers).context("invalid --servers")?,
            token: check_token(self.token.as_deref())?,
            listen: self.listen,
            resources,
            attributes,
            hostname: self.hostname.clone(),
            simulate: self.simulate,
            wait_ms: 2000,
        })
    }
}

pub fn run(args: AgentArgs) -> anyhow::Result<i32> {
    crate::daemon::init_tracing(&args.log_format);
    let cfg = args.config()?;
    if !args.simulate && !nix::unistd::geteuid().is_root() {
        anyhow::bail!("berth agent needs root: tasks run in their own cgroups");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if args.simulate && args.simulate_agents > 1 {
            berth_agent::run_simulated(cfg, args.simulate_agents, shutdown_signal()).await
        } else {
            berth_agent::run(cfg, None, shutdown_signal()).await
        }
    })?;
    Ok(0)
}
