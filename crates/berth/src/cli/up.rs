//! `berth up`: the node daemon in the foreground.

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
    rt.block_on(crate::daemon::serve(cfg, socket))?;
    Ok(0)
}
