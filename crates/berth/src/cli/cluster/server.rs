//! `berth server`: a control-plane server (Raft member) in the foreground,
//! and `berth server members|leave` to look at and change the server set.

use super::{check_token, clean_servers, parse_duration, shutdown_signal, ClusterArgs};
use crate::output::table;
use anyhow::Context;
use berth_api::cluster::MemberView;
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    #[command(flatten)]
    pub run: ServerRunArgs,
}

#[derive(Debug, Args)]
pub struct ServerRunArgs {
    /// Where the Raft log, snapshots and registry blobs live
    #[arg(long, default_value = "/var/lib/berth/server")]
    pub data_dir: PathBuf,
    /// Address to serve the cluster API on
    #[arg(long, default_value = "127.0.0.1:5050")]
    pub listen: SocketAddr,
    /// Address other servers, agents and clients use to reach this one
    /// (default: --listen)
    #[arg(long)]
    pub advertise: Option<String>,
    /// Number of servers to wait for before electing the first leader
    #[arg(long, default_value_t = 1)]
    pub bootstrap_expect: usize,
    /// Other servers (host:port), comma separated
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// Cluster secret (at least 16 bytes, e.g. 32 random bytes in hex):
    /// agents and clients must present it, and with it the server speaks
    /// HTTPS only, under a cluster CA derived from it (written to
    /// DATA_DIR/ca.pem)
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How long an agent may stay silent before its tasks are marked LOST
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub agent_timeout: Duration,
    /// How long a framework may hold an offer before it is rescinded
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub offer_timeout: Duration,
    /// Raft id of this server (default: derived from --advertise)
    #[arg(long)]
    pub id: Option<u64>,
    /// Log format: text or json
    #[arg(long, default_value = "text")]
    pub log_format: String,
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// List the servers with their role, term and last log index
    Members {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove a server from the cluster (by Raft id or address)
    Leave {
        server: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

impl ServerRunArgs {
    pub fn config(&self) -> anyhow::Result<berth_server::server::ServerConfig> {
        if ![1, 3, 5].contains(&self.bootstrap_expect) {
            anyhow::bail!(
                "invalid --bootstrap-expect {}: use 1, 3 or 5 servers",
                self.bootstrap_expect
            );
        }
        let join = if self.join.is_empty() {
            Vec::new()
        } else {
            clean_servers(&self.join).context("invalid --join")?
        };
        if self.bootstrap_expect > 1 && join.len() + 1 < self.bootstrap_expect {
            anyhow::bail!(
                "--bootstrap-expect {} needs the other servers in --join",
                self.bootstrap_expect
            );
        }
        let mut cfg = berth_server::server::ServerConfig::new(self.data_dir.clone(), self.listen);
        cfg.advertise = self.advertise.clone();
        cfg.bootstrap_expect = self.bootstrap_expect;
        cfg.join = join;
        // With a token the server speaks HTTPS only, under the CA derived
        // from it, which a short token would make guessable.
        cfg.token = check_token(self.token.as_deref())?;
        cfg.agent_timeout = self.agent_timeout;
        cfg.offer_timeout = self.offer_timeout;
        cfg.id = self.id;
        cfg.builtins
            .push(("batch".into(), berth_server::batch::builtin()));
        Ok(cfg)
    }
}

pub fn run(args: ServerArgs) -> anyhow::Result<i32> {
    match args.command {
        Some(cmd) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(client_command(cmd))
        }
        None => {
            crate::daemon::init_tracing(&args.run.log_format);
            let cfg = args.run.config()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(berth_server::server::run(cfg, shutdown_signal()))?;
            Ok(0)
        }
    }
}

async fn client_command(cmd: ServerCommand) -> anyhow::Result<i32> {
    match cmd {
        ServerCommand::Members { cluster, json } => {
            let members: Vec<MemberView> =
                cluster.client()?.get_json("/v1/cluster/members").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&members)?);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = members
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.address.clone(),
                        m.role.clone(),
                        if m.voter { "yes" } else { "no" }.into(),
                        m.term.to_string(),
                        m.last_log_index.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["ID", "ADDRESS", "ROLE", "VOTER", "TERM", "LAST INDEX"],
                    &rows
                )
            );
            Ok(0)
        }
        ServerCommand::Leave { server, cluster } => {
            let client = cluster.client()?;
            let members: Vec<MemberView> = client.get_json("/v1/cluster/members").await?;
            let member = members
                .iter()
                .find(|m| m.id.to_string() == server || m.address == server)
                .with_context(|| format!("server {server} is not a member"))?;
            let _: serde_json::Value = client
                .post_json("/v1/cluster/leave", &serde_json::json!({ "id": member.id }))
                .await?;
            println!("{} left the cluster", member.address);
            Ok(0)
        }
    }
}
