//! Client commands on the cluster: jobs, tasks, nodes and frameworks.

use super::ClusterArgs;
use crate::output::{human_duration, now_unix, table};
use anyhow::Context;
use berth_api::cluster::{FrameworkView, JobView, NodeView, TaskView};
use berth_types::{JobSpec, Resources};
use clap::Subcommand;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a batch job described by a TOML file
    Run {
        file: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long)]
        json: bool,
    },
    /// List jobs
    Ls {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show a job's tasks by state, and why instances wait if they do
    Status {
        name: String,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Stop a job: its tasks are killed
    Stop {
        name: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// List tasks
    Ls {
        /// Only this job's tasks
        #[arg(long)]
        job: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes with used and free resources
    Ls {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Move work off a node for maintenance (by id or host name)
    Drain {
        node: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Offer a drained node's resources again
    Activate {
        node: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum FrameworkCommand {
    /// List frameworks
    Ls {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long)]
        json: bool,
    },
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<i32> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(0)
}

fn res_cell(r: &Resources) -> String {
    format!("{}/{}/{}", r.cpus, r.mem, r.disk)
}

fn age(ms: u64) -> String {
    let secs = now_unix() - (ms / 1000) as i64;
    format!("{} ago", human_duration(secs))
}

pub async fn job(cmd: JobCommand) -> anyhow::Result<i32> {
    match cmd {
        JobCommand::Run {
            file,
            cluster,
            json,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let spec = JobSpec::from_toml(&file.display().to_string(), &text)
                .map_err(anyhow::Error::msg)?;
            let view: JobView = cluster.client()?.post_json("/v1/jobs", &spec).await?;
            if json {
                return print_json(&view);
            }
            println!(
                "job {} submitted: {} instance(s) of {}",
                view.spec.name,
                view.spec.instances,
                res_cell(&view.spec.resources())
            );
            Ok(0)
        }
        JobCommand::Ls { cluster, json } => {
            let jobs: Vec<JobView> = cluster.client()?.get_json("/v1/jobs").await?;
            if json {
                return print_json(&jobs);
            }
            let rows: Vec<Vec<String>> = jobs
                .iter()
                .map(|j| {
                    vec![
                        j.spec.name.clone(),
                        j.spec.role.clone(),
                        j.status.clone(),
                        j.spec.instances.to_string(),
                        j.tasks.get("RUNNING").copied().unwrap_or(0).to_string(),
                        j.tasks.get("FINISHED").copied().unwrap_or(0).to_string(),
                        res_cell(&j.spec.resources()),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "NAME",
                        "ROLE",
                        "STATUS",
                        "INSTANCES",
                        "RUNNING",
                        "FINISHED",
                        "CPUS/MEM/DISK"
                    ],
                    &rows
                )
            );
            Ok(0)
        }
        JobCommand::Status {
            name,
            cluster,
            json,
        } => {
            let j: JobView = cluster
                .client()?
                .get_json(&format!("/v1/jobs/{}", enc(&name)))
                .await?;
            if json {
                return print_json(&j);
            }
            println!("job:        {}", j.spec.name);
            println!("status:     {}", j.status);
            println!("role:       {}", j.spec.role);
            println!("instances:  {}", j.spec.instances);
            println!("resources:  {}", j.spec.resources());
            let counts: Vec<String> = j.tasks.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!(
                "tasks:      {}",
                if counts.is_empty() {
                    "none".to_string()
                } else {
                    counts.join(", ")
                }
            );
            if let Some(p) = &j.placement {
                println!("placement:  {p}");
            }
            Ok(0)
        }
        JobCommand::Stop { name, cluster } => {
            let _: serde_json::Value = cluster
                .client()?
                .delete_json(&format!("/v1/jobs/{}", enc(&name)))
                .await?;
            println!("job {name} stopped");
            Ok(0)
        }
    }
}

pub async fn task(cmd: TaskCommand) -> anyhow::Result<i32> {
    let TaskCommand::Ls { job, cluster, json } = cmd;
    let client = cluster.client()?;
    let path = match &job {
        Some(j) => format!("/v1/tasks?job={}", enc(j)),
        None => "/v1/tasks".to_string(),
    };
    let tasks: Vec<TaskView> = client.get_json(&path).await?;
    if json {
        return print_json(&tasks);
    }
    let nodes: Vec<NodeView> = client.get_json("/v1/nodes").await.unwrap_or_default();
    let host = |id: &str| {
        nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.hostname.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.job.clone().unwrap_or_else(|| "-".into()),
                host(&t.node),
                t.state.to_string(),
                res_cell(&t.resources),
                age(t.updated_ms),
                t.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "JOB",
                "NODE",
                "STATE",
                "CPUS/MEM/DISK",
                "UPDATED",
                "MESSAGE"
            ],
            &rows
        )
    );
    Ok(0)
}

async fn find_node(cluster: &ClusterArgs, node: &str) -> anyhow::Result<NodeView> {
    let nodes: Vec<NodeView> = cluster.client()?.get_json("/v1/nodes").await?;
    let found: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| n.id == node || n.hostname == node)
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => anyhow::bail!("node {node} not found"),
        _ => anyhow::bail!("host name {node} matches several nodes; use the node id"),
    }
}

pub async fn node(cmd: NodeCommand) -> anyhow::Result<i32> {
    match cmd {
        NodeCommand::Ls { cluster, json } => {
            let nodes: Vec<NodeView> = cluster.client()?.get_json("/v1/nodes").await?;
            if json {
                return print_json(&nodes);
            }
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    let attrs: Vec<String> = n
                        .attributes
                        .iter()
                        .map(|(k, v)| format!("{k}:{v}"))
                        .collect();
                    vec![
                        n.id.clone(),
                        n.hostname.clone(),
                        n.state.to_string(),
                        n.tasks.to_string(),
                        res_cell(&n.used),
                        res_cell(&n.free),
                        res_cell(&n.total),
                        attrs.join(";"),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "ID",
                        "HOSTNAME",
                        "STATE",
                        "TASKS",
                        "USED",
                        "FREE",
                        "TOTAL",
                        "ATTRIBUTES"
                    ],
                    &rows
                )
            );
            Ok(0)
        }
        NodeCommand::Drain { node, cluster } => {
            let n = find_node(&cluster, &node).await?;
            let _: serde_json::Value = cluster
                .client()?
                .post_json(
                    &format!("/v1/nodes/{}/drain", enc(&n.id)),
                    &serde_json::json!({}),
                )
                .await?;
            println!("node {} ({}) draining", n.id, n.hostname);
            Ok(0)
        }
        NodeCommand::Activate { node, cluster } => {
            let n = find_node(&cluster, &node).await?;
            let _: serde_json::Value = cluster
                .client()?
                .post_json(
                    &format!("/v1/nodes/{}/activate", enc(&n.id)),
                    &serde_json::json!({}),
                )
                .await?;
            println!("node {} ({}) active", n.id, n.hostname);
            Ok(0)
        }
    }
}

pub async fn framework(cmd: FrameworkCommand) -> anyhow::Result<i32> {
    let FrameworkCommand::Ls { cluster, json } = cmd;
    let fws: Vec<FrameworkView> = cluster.client()?.get_json("/v1/frameworks").await?;
    if json {
        return print_json(&fws);
    }
    let rows: Vec<Vec<String>> = fws
        .iter()
        .map(|f| {
            vec![
                f.id.clone(),
                f.name.clone(),
                f.role.clone(),
                if f.connected { "yes" } else { "no" }.into(),
                f.tasks.to_string(),
                res_cell(&f.used),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["ID", "NAME", "ROLE", "CONNECTED", "TASKS", "CPUS/MEM/DISK"],
            &rows
        )
    );
    Ok(0)
}
