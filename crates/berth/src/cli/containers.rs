//! Container commands that are one request each: ps, start, stop, kill, rm,
//! logs, diff, commit, inspect, wait, info.

use crate::output::{human_duration, now_unix, table};
use anyhow::{bail, Context};
use berth_api::client::enc;
use berth_api::frame::{FrameKind, FrameReader};
use berth_api::{
    ChangeEntry, Client, ClientError, ContainerDetails, ContainerSummary, Info, WaitResponse,
};
use berth_types::ContainerState;
use clap::Args;
use http_body_util::BodyExt;
use std::future::Future;

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Only display container ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow log output until the container stops
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end ("all" for everything)
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    pub container: String,
}

pub async fn info(c: &Client, json: bool) -> anyhow::Result<i32> {
    let info: Info = c.get("/v1/info").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("Version:         {}", info.version);
        println!("API version:     {}", info.api_version);
        println!("Data directory:  {}", info.data_dir);
        println!("Cgroup mode:     {}", info.cgroup_mode);
        println!("Storage driver:  {}", info.storage_driver);
        println!("Containers:      {}", info.containers);
        println!(" Running:        {}", info.containers_running);
        println!(" Stopped:        {}", info.containers_stopped);
        println!("Images:          {}", info.images);
    }
    Ok(0)
}

pub fn status_text(s: &ContainerSummary, now: i64) -> String {
    match s.state {
        ContainerState::Running => {
            format!("Up {}", human_duration(now - s.started_at.unwrap_or(now)))
        }
        ContainerState::Exited => format!(
            "Exited ({}) {} ago",
            s.exit_code.unwrap_or(0),
            human_duration(now - s.finished_at.unwrap_or(now))
        ),
        ContainerState::Created => "Created".into(),
        ContainerState::Removing => "Removal In Progress".into(),
    }
}

pub async fn ps(c: &Client, a: PsArgs) -> anyhow::Result<i32> {
    let list: Vec<ContainerSummary> = c.get(&format!("/v1/containers?all={}", a.all)).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    if a.quiet {
        for s in &list {
            println!("{}", if a.no_trunc { &s.id } else { &s.id[..12] });
        }
        return Ok(0);
    }
    let now = now_unix();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let command = if a.no_trunc || s.command.chars().count() <= 20 {
                format!("\"{}\"", s.command)
            } else {
                format!("\"{}…\"", s.command.chars().take(19).collect::<String>())
            };
            vec![
                if a.no_trunc {
                    s.id.clone()
                } else {
                    s.id[..12].to_string()
                },
                s.image.clone(),
                command,
                format!("{} ago", human_duration(now - s.created)),
                status_text(s, now),
                s.ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.name.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "CONTAINER ID",
                "IMAGE",
                "COMMAND",
                "CREATED",
                "STATUS",
                "PORTS",
                "NAMES"
            ],
            &rows
        )
    );
    Ok(0)
}

/// Runs `f` for every argument, printing each that succeeded (as Docker
/// does) and failing at the end if any failed.
pub async fn each<F, Fut>(c: &Client, ids: &[String], f: F) -> anyhow::Result<i32>
where
    F: Fn(Client, String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut failed = 0;
    for id in ids {
        if id.is_empty() {
            eprintln!("berth: a container name or id must not be empty");
            failed += 1;
            continue;
        }
        match f(c.clone(), id.clone()).await {
            Ok(()) => println!("{id}"),
            Err(e) => {
                eprintln!("berth: {e:#}");
                failed += 1;
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

pub async fn start(c: &Client, id: &str) -> anyhow::Result<()> {
    c.post_empty(&format!("/v1/containers/{}/start", enc(id)))
        .await?;
    Ok(())
}

pub async fn stop(c: &Client, id: &str, time: u64) -> anyhow::Result<()> {
    c.post_empty(&format!("/v1/containers/{}/stop?t={time}", enc(id)))
        .await?;
    Ok(())
}

pub async fn kill(c: &Client, id: &str, signal: i32) -> anyhow::Result<()> {
    c.post_empty(&format!("/v1/containers/{}/kill?signal={signal}", enc(id)))
        .await?;
    Ok(())
}

pub async fn rm(c: &Client, id: &str, force: bool) -> anyhow::Result<()> {
    c.send(Client::request(
        http::Method::DELETE,
        &format!("/v1/containers/{}?force={force}", enc(id)),
        Client::empty(),
    ))
    .await?;
    Ok(())
}

/// Accepts "KILL", "SIGKILL", "9", case-insensitively.
pub fn parse_signal(s: &str) -> anyhow::Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("invalid signal {s:?}: numbers go from 1 to 64");
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let sig = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        _ => bail!("invalid signal {s:?}"),
    };
    Ok(sig)
}

pub async fn logs(c: &Client, a: LogsArgs) -> anyhow::Result<i32> {
    let path = format!(
        "/v1/containers/{}/logs?follow={}&tail={}",
        enc(&a.container),
        a.follow,
        enc(&a.tail)
    );
    let resp = c
        .send(Client::request(http::Method::GET, &path, Client::empty()))
        .await?;
    let mut body = resp.into_body();
    let mut reader = FrameReader::new();
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ClientError::from)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        reader.feed(&data);
        while let Some(f) = reader.next_frame()? {
            if !super::stream::write_output(&f, &mut out, &mut err)? && f.kind == FrameKind::Error {
                bail!("{}", f.text());
            }
        }
    }
    Ok(0)
}

pub async fn diff(c: &Client, id: &str, json: bool) -> anyhow::Result<i32> {
    let changes: Vec<ChangeEntry> = c
        .get(&format!("/v1/containers/{}/changes", enc(id)))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
    } else {
        for ch in changes {
            println!("{} {}", ch.kind, ch.path);
        }
    }
    Ok(0)
}

pub async fn commit(c: &Client, id: &str, repo: Option<String>) -> anyhow::Result<i32> {
    let resp: berth_api::ImportResponse = c
        .post(
            &format!("/v1/containers/{}/commit", enc(id)),
            &berth_api::CommitRequest {
                repo,
                message: None,
            },
        )
        .await?;
    println!("{}", resp.id);
    Ok(0)
}

pub async fn inspect(c: &Client, objects: &[String]) -> anyhow::Result<i32> {
    let mut out = Vec::new();
    let mut code = 0;
    for o in objects {
        match c
            .get::<ContainerDetails>(&format!("/v1/containers/{}", enc(o)))
            .await
        {
            Ok(d) => out.push(serde_json::to_value(d)?),
            Err(e) if e.status() == Some(404) => match c
                .get::<serde_json::Value>(&format!("/v1/images/inspect?ref={}", enc(o)))
                .await
            {
                Ok(v) => out.push(v),
                Err(e) if e.status() == Some(404) => {
                    eprintln!("berth: no such object: {o}");
                    code = 1;
                }
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(code)
}

pub async fn wait(c: &Client, ids: &[String]) -> anyhow::Result<i32> {
    for id in ids {
        let w: WaitResponse = c
            .post(&format!("/v1/containers/{}/wait", enc(id)), &())
            .await
            .with_context(|| format!("waiting for {id}"))?;
        println!("{}", w.exit_code);
    }
    Ok(0)
}
