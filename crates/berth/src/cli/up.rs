//! `berth up`: the node daemon in the foreground, and with it a one-server
//! cluster, a local agent and the message broker in the same process, so
//! `berth job run` and AMQP clients work on a single machine with nothing
//! else to install.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where images, containers and logs live
    #[arg(long, default_value = "/var/lib/berth")]
    pub data_dir: PathBuf,
    /// Name of the bridge network interface
    #[arg(long, default_value = "berth0", hide = true)]
    pub bridge: String,
    /// Gateway address and prefix of the bridge network
    #[arg(long, default_value = "10.88.0.1/16", hide = true)]
    pub bridge_cidr: String,
    /// Log format: text or json
    #[arg(long, default_value = "text")]
    pub log_format: String,
    /// Address of the embedded cluster server's API
    #[arg(long, default_value = "127.0.0.1:5050")]
    pub cluster_listen: std::net::SocketAddr,
    /// Run only the node daemon: no cluster server, no agent
    #[arg(long)]
    pub no_cluster: bool,
    /// Resources the local agent advertises (default: detected)
    #[arg(long)]
    pub resources: Option<String>,
    /// Attributes of the local agent, e.g. 'rack:1-1;os:linux'
    #[arg(long, default_value = "")]
    pub attributes: String,
    /// Address of the embedded AMQP broker
    #[arg(long, default_value = "127.0.0.1:5672")]
    pub broker_listen: std::net::SocketAddr,
    /// Address of the broker's management API and /metrics
    #[arg(long, default_value = "127.0.0.1:15672")]
    pub broker_management: std::net::SocketAddr,
    /// Do not run the message broker
    #[arg(long)]
    pub no_broker: bool,
}

pub fn run(args: UpArgs, socket: PathBuf) -> anyhow::Result<i32> {
    crate::daemon::init_tracing(&args.log_format);
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("berth up needs root: containers use namespaces, cgroups and mounts");
    }
    let (gw, prefix) = args
        .bridge_cidr
        .split_once('/')
        .and_then(|(ip, p)| Some((ip.parse().ok()?, p.parse::<u8>().ok()?)))
        .filter(|(_, p)| (8..=30).contains(p))
        .with_context(|| {
            format!(
                "invalid --bridge-cidr {:?}: expected ADDRESS/PREFIX such as 10.88.0.1/16",
                args.bridge_cidr
            )
        })?;
    let exe = std::env::current_exe().context("locating the berth binary")?;
    let mut cfg = berth_engine::engine::EngineConfig::with_defaults(args.data_dir, exe);
    cfg.bridge.name = args.bridge;
    cfg.bridge.gateway = gw;
    cfg.bridge.prefix_len = prefix;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    let cluster = if args.no_cluster {
        None
    } else {
        Some(embedded_cluster(
            &cfg.data_dir,
            args.cluster_listen,
            args.resources.as_deref(),
            &args.attributes,
        )?)
    };
    let broker = (!args.no_broker).then(|| {
        let config = berth_broker::BrokerConfig {
            listen: Some(args.broker_listen),
            management: Some(args.broker_management),
            data_dir: Some(cfg.data_dir.join("broker")),
            ..berth_broker::BrokerConfig::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // The broker failing (say, its port is taken) must not take the
        // node daemon down with it: it logs and the rest keeps running.
        let task = rt.spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = berth_broker::broker::run(config, shutdown).await {
                tracing::error!("broker: {e:#}");
            }
        });
        (stop, task)
    });
    let served = rt.block_on(crate::daemon::serve(cfg, socket, cluster));
    if let Some((stop, task)) = broker {
        let _ = stop.send(());
        let _ = rt.block_on(task);
    }
    served?;
    Ok(0)
}

/// The cluster roles `berth up` runs next to the node daemon.
pub struct EmbeddedCluster {
    pub server: berth_server::server::ServerConfig,
    pub agent: berth_agent::AgentConfig,
}

fn embedded_cluster(
    data_dir: &std::path::Path,
    listen: std::net::SocketAddr,
    resources: Option<&str>,
    attributes: &str,
) -> anyhow::Result<EmbeddedCluster> {
    let token = crate::cli::cluster::local_token(data_dir)?;
    let mut server = berth_server::server::ServerConfig::new(data_dir.join("server"), listen);
    server.token = Some(token.clone());
    server
        .builtins
        .push(("batch".into(), berth_server::batch::builtin()));
    let agent_dir = data_dir.join("agent");
    let resources = match resources {
        None => None,
        Some(r) => Some(
            berth_types::Resources::parse_with_defaults(r, berth_agent::detect_resources(data_dir))
                .context("invalid --resources")?,
        ),
    };
    let agent = berth_agent::AgentConfig {
        data_dir: agent_dir,
        servers: vec![listen.to_string()],
        token: Some(token),
        listen: None,
        resources,
        attributes: berth_types::parse_attributes(attributes).context("invalid --attributes")?,
        hostname: None,
        simulate: false,
        wait_ms: 2000,
    };
    Ok(EmbeddedCluster { server, agent })
}
