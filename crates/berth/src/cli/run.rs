//! `run`, `create` and `exec`.

use super::stream::{pump, RawMode, StreamEnd, StreamOptions};
use super::ExitCode;
use anyhow::bail;
use berth_api::client::enc;
use berth_api::{Client, ClientError, CreateRequest, CreateResponse, ExecRequest};
use berth_types::{
    parse_cpus, parse_memory, ContainerConfig, NetworkMode, PortMapping, RestartPolicy, VolumeMount,
};
use clap::Args;

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Print help (-h is --hostname, as in Docker)
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// Remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container id
    #[arg(short, long)]
    pub detach: bool,
    /// Keep stdin open
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal
    #[arg(short, long)]
    pub tty: bool,
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables (K=V, or K to take it from here)
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Publish a port: [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]
    #[arg(short, long = "publish")]
    pub publish: Vec<String>,
    /// Bind mount a host directory: HOSTDIR:DIR[:ro]
    #[arg(short, long = "volume")]
    pub volume: Vec<String>,
    /// bridge (default), host or none
    #[arg(long, default_value = "bridge")]
    pub network: String,
    /// Memory limit (e.g. 64m)
    #[arg(short, long)]
    pub memory: Option<String>,
    /// CPU quota in CPUs (e.g. 0.5)
    #[arg(long)]
    pub cpus: Option<String>,
    /// Maximum number of processes
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// USER[:GROUP] or UID[:GID]
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// no, on-failure[:N] or always
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// Overwrite the image's ENTRYPOINT
    #[arg(long)]
    pub entrypoint: Option<String>,
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Run in a user namespace (root inside maps to an unprivileged range outside)
    #[arg(long)]
    pub userns: bool,
    pub image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[arg(short, long)]
    pub interactive: bool,
    #[arg(short, long)]
    pub tty: bool,
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(short, long)]
    pub user: Option<String>,
    #[arg(short, long)]
    pub workdir: Option<String>,
    pub container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

fn check_env(env: &[String]) -> anyhow::Result<()> {
    for e in env {
        if e.is_empty() || e.starts_with('=') {
            bail!("invalid environment variable {e:?}: expected KEY=VALUE or KEY");
        }
    }
    Ok(())
}

fn env_list(env: &[String]) -> Vec<String> {
    env.iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                std::env::var(e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect()
}

/// Bad flags of run/create exit 125, as Docker's do.
fn usage<T>(r: anyhow::Result<T>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::Error::new(ExitCode(125)).context(format!("{e:#}")))
}

fn config(a: &RunArgs) -> anyhow::Result<ContainerConfig> {
    check_env(&a.env)?;
    if a.rm && a.restart != "no" {
        bail!("conflicting options: --restart and --rm");
    }
    Ok(ContainerConfig {
        image: a.image.clone(),
        name: a.name.clone(),
        cmd: a.cmd.clone(),
        entrypoint: a.entrypoint.as_ref().map(|e| {
            if e.is_empty() {
                vec![]
            } else {
                vec![e.clone()]
            }
        }),
        env: env_list(&a.env),
        ports: a
            .publish
            .iter()
            .map(|p| PortMapping::parse(p))
            .collect::<Result<_, _>>()?,
        volumes: a
            .volume
            .iter()
            .map(|v| VolumeMount::parse(v))
            .collect::<Result<_, _>>()?,
        network: NetworkMode::parse(&a.network)?,
        // Docker: --memory 0 means no limit.
        memory: a
            .memory
            .as_deref()
            .filter(|m| *m != "0")
            .map(parse_memory)
            .transpose()?,
        cpu_quota: a.cpus.as_deref().map(parse_cpus).transpose()?,
        pids_limit: a.pids_limit,
        user: a.user.clone(),
        workdir: a.workdir.clone(),
        restart: RestartPolicy::parse(&a.restart)?,
        tty: a.tty,
        stdin: a.interactive,
        auto_remove: a.rm,
        hostname: a.hostname.clone(),
        userns: a.userns,
    })
}

/// Maps a daemon error to Docker's exit codes: 125 for the daemon's own
/// errors, or the code a failed start carries (126, 127).
fn start_error(e: ClientError) -> anyhow::Error {
    let code = match &e {
        ClientError::Api { message, .. }
            if message.contains("executable file not found")
                || message.contains("no such file") =>
        {
            127
        }
        ClientError::Api { message, .. } if message.contains("permission denied") => 126,
        _ => 125,
    };
    anyhow::Error::new(ExitCode(code)).context(e.to_string())
}

pub async fn create(c: &Client, a: RunArgs) -> anyhow::Result<i32> {
    let req = CreateRequest {
        config: config(&a)?,
        start: false,
    };
    let resp: CreateResponse = c.post("/v1/containers", &req).await.map_err(start_error)?;
    println!("{}", resp.id);
    Ok(0)
}

pub async fn run(c: &Client, a: RunArgs) -> anyhow::Result<i32> {
    let cfg = usage(config(&a))?;
    if a.detach {
        let req = CreateRequest {
            config: cfg,
            start: true,
        };
        let resp: CreateResponse = c.post("/v1/containers", &req).await.map_err(start_error)?;
        println!("{}", resp.id);
        return Ok(0);
    }
    let req = CreateRequest {
        config: cfg,
        start: true,
    };
    let stream = c
        .upgrade(
            http::Method::POST,
            "/v1/containers/run",
            Client::json_body(&req),
        )
        .await
        .map_err(start_error)?;
    attached(stream, a.interactive, a.tty, "container").await
}

/// Runs an attached stream in the terminal's right mode and turns its end
/// into our exit code.
async fn attached<S>(stream: S, stdin: bool, tty: bool, what: &str) -> anyhow::Result<i32>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let raw = RawMode::enter(tty);
    let end = pump(stream, StreamOptions { stdin, tty }).await;
    drop(raw);
    match end? {
        StreamEnd::Exit { code } => Ok(code),
        StreamEnd::Error(m) => bail!("{m}"),
        StreamEnd::Closed => bail!("the connection to the daemon closed before the {what} exited"),
    }
}

pub async fn exec(c: &Client, a: ExecArgs) -> anyhow::Result<i32> {
    let req = ExecRequest {
        cmd: a.cmd.clone(),
        tty: a.tty,
        stdin: a.interactive,
        env: env_list(&a.env),
        user: a.user.clone(),
        workdir: a.workdir.clone(),
    };
    let stream = c
        .upgrade(
            http::Method::POST,
            &format!("/v1/containers/{}/exec", enc(&a.container)),
            Client::json_body(&req),
        )
        .await?;
    attached(stream, a.interactive, a.tty, "command").await
}
