//! The command tree. Each subcommand group lives in its own module; this
//! one declares the flags (Docker's spellings) and dispatches.

pub mod broker;
mod build;
pub mod cluster;
mod containers;
mod images;
mod push;
mod run;
mod stream;
pub mod up;

use berth_api::Client;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// An error that carries the process exit code to use (e.g. a container's).
#[derive(Debug)]
pub struct ExitCode(pub i32);

impl std::fmt::Display for ExitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for ExitCode {}

#[derive(Debug, Parser)]
#[command(name = "berth", version, about = "A self-hosted cloud in one binary: containers, images and builds", long_about = None)]
pub struct Cli {
    /// The node daemon's API socket.
    #[arg(long, global = true, env = "BERTH_SOCKET", default_value = berth_api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon in the foreground with embedded defaults
    Up(up::UpArgs),
    /// Show the daemon's version, data directory, cgroup mode and counts
    Info {
        #[arg(long)]
        json: bool,
    },
    /// List images
    Images(images::ListArgs),
    /// Manage images
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Create a tag TARGET that refers to SOURCE
    Tag { source: String, target: String },
    /// Remove images
    Rmi {
        /// Remove even if containers use it or it has several tags
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Build an image from a Containerfile
    Build(build::BuildArgs),
    /// Create and start a container
    Run(run::RunArgs),
    /// Create a container without starting it
    Create(run::RunArgs),
    /// List containers
    Ps(containers::PsArgs),
    /// Start stopped containers
    Start {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop running containers (SIGTERM, then SIGKILL after the timeout)
    Stop {
        /// Seconds to wait before killing
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to running containers
    Kill {
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers
    Rm {
        /// Kill and remove running containers
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Fetch a container's logs
    Logs(containers::LogsArgs),
    /// Run a command in a running container
    Exec(run::ExecArgs),
    /// Show files changed in a container's filesystem (A added, C changed, D deleted)
    Diff {
        container: String,
        #[arg(long)]
        json: bool,
    },
    /// Create an image from a container's changes
    Commit {
        container: String,
        repository: Option<String>,
    },
    /// Show low-level information on containers or images, as JSON
    Inspect {
        #[arg(required = true)]
        objects: Vec<String>,
    },
    /// Block until containers stop, then print their exit codes
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Push a local image to the cluster's registry
    Push {
        image: String,
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Run a cluster server (Raft member), or list and change the servers
    Server(cluster::server::ServerArgs),
    /// Run a cluster agent: offer this machine's resources and run tasks
    Agent(cluster::agent::AgentArgs),
    /// Batch jobs on the cluster
    #[command(subcommand)]
    Job(cluster::jobs::JobCommand),
    /// Tasks on the cluster
    #[command(subcommand)]
    Task(cluster::jobs::TaskCommand),
    /// Nodes (agents) of the cluster
    #[command(subcommand)]
    Node(cluster::jobs::NodeCommand),
    /// Frameworks subscribed to the cluster
    #[command(subcommand)]
    Framework(cluster::jobs::FrameworkCommand),
    /// Run the AMQP message broker, or list and change a running broker's objects
    Broker(broker::BrokerArgs),
}

#[derive(Debug, Args, Clone)]
pub struct JsonFlag {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let command = match cli.command {
        Command::Up(args) => return up::run(args, cli.socket),
        Command::Server(args) => return cluster::server::run(args),
        Command::Agent(args) => return cluster::agent::run(args),
        Command::Broker(args) => return broker::run(args),
        other => other,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(&cli.socket);
    let result = rt.block_on(dispatch(client, command));
    // A task may still sit in a blocking read of our stdin (run -i, exec
    // -i): do not wait for it.
    rt.shutdown_background();
    result
}

async fn dispatch(c: Client, cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Up(_) | Command::Server(_) | Command::Agent(_) | Command::Broker(_) => {
            unreachable!("roles are started before the runtime")
        }
        Command::Push {
            image,
            cluster,
            json,
        } => {
            let servers = cluster::clean_servers(&cluster.servers)?;
            push::push(&c, &image, servers, cluster.resolved_token(), json).await
        }
        Command::Job(sub) => cluster::jobs::job(sub).await,
        Command::Task(sub) => cluster::jobs::task(sub).await,
        Command::Node(sub) => cluster::jobs::node(sub).await,
        Command::Framework(sub) => cluster::jobs::framework(sub).await,
        Command::Info { json } => containers::info(&c, json).await,
        Command::Images(a) => images::list(&c, a).await,
        Command::Image(sub) => images::run(&c, sub).await,
        Command::Tag { source, target } => images::tag(&c, &source, &target).await,
        Command::Rmi { force, images } => images::rmi(&c, &images, force).await,
        Command::Build(a) => build::run(&c, a).await,
        Command::Run(a) => run::run(&c, a).await,
        Command::Create(a) => run::create(&c, a).await,
        Command::Ps(a) => containers::ps(&c, a).await,
        Command::Start { containers: ids } => {
            containers::each(
                &c,
                &ids,
                |c, id| async move { containers::start(&c, &id).await },
            )
            .await
        }
        Command::Stop {
            time,
            containers: ids,
        } => {
            containers::each(&c, &ids, |c, id| async move {
                containers::stop(&c, &id, time).await
            })
            .await
        }
        Command::Kill {
            signal,
            containers: ids,
        } => {
            let sig = containers::parse_signal(&signal)?;
            containers::each(&c, &ids, |c, id| async move {
                containers::kill(&c, &id, sig).await
            })
            .await
        }
        Command::Rm {
            force,
            containers: ids,
        } => {
            containers::each(&c, &ids, |c, id| async move {
                containers::rm(&c, &id, force).await
            })
            .await
        }
        Command::Logs(a) => containers::logs(&c, a).await,
        Command::Exec(a) => run::exec(&c, a).await,
        Command::Diff { container, json } => containers::diff(&c, &container, json).await,
        Command::Commit {
            container,
            repository,
        } => containers::commit(&c, &container, repository).await,
        Command::Inspect { objects } => containers::inspect(&c, &objects).await,
        Command::Wait { containers: ids } => containers::wait(&c, &ids).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags_parse_like_docker() {
        let cli = Cli::try_parse_from([
            "berth",
            "run",
            "--rm",
            "-d",
            "-p",
            "8000:8000",
            "--name",
            "web",
            "-e",
            "A=1",
            "-h",
            "box",
            "img",
            "sh",
            "-c",
            "echo -n hi",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert!(a.rm && a.detach);
        assert_eq!(a.publish, vec!["8000:8000"]);
        assert_eq!(a.hostname.as_deref(), Some("box"));
        assert_eq!(a.image, "img");
        assert_eq!(a.cmd, vec!["sh", "-c", "echo -n hi"]);
    }
}
