//! Image commands: images, image import/save/inspect/prune/rm, tag, rmi.

use crate::output::{human_duration, human_size, now_unix, table};
use anyhow::Context;
use berth_api::client::enc;
use berth_api::{
    Client, ClientError, ImageSummary, ImportResponse, PruneResponse, RemoveImageResponse,
};
use clap::{Args, Subcommand};
use http_body_util::BodyExt;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only show image ids
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import a rootfs tarball (plain, gzip, zstd), a `docker save` archive or an OCI layout
    Import {
        file: PathBuf,
        /// Name the image NAME[:TAG]
        #[arg(short, long)]
        tag: Option<String>,
        #[arg(long)]
        json: bool,
        /// Stream the file through the API instead of letting the local daemon read it
        #[arg(long)]
        upload: bool,
    },
    /// Write an image as an OCI archive that `docker load` accepts (to stdout without -o)
    Save {
        image: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Show an image's configuration as JSON
    Inspect { image: String },
    /// Remove untagged unused images and reclaim unreferenced layers
    Prune {
        #[arg(long)]
        json: bool,
    },
    /// List images
    Ls(ListArgs),
    /// Remove images
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
}

pub async fn run(c: &Client, cmd: ImageCommand) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Import {
            file,
            tag,
            json,
            upload,
        } => import(c, &file, tag, json, upload).await,
        ImageCommand::Save { image, output } => save(c, &image, output.as_ref()).await,
        ImageCommand::Inspect { image } => {
            let v: serde_json::Value = c
                .get(&format!("/v1/images/inspect?ref={}", enc(&image)))
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        ImageCommand::Prune { json } => {
            let r: PruneResponse = c.post("/v1/images/prune", &()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for id in &r.images_deleted {
                    println!("Deleted: {id}");
                }
                println!("Deleted layers: {}", r.layers_deleted);
                println!("Total reclaimed space: {}", human_size(r.bytes_reclaimed));
            }
            Ok(0)
        }
        ImageCommand::Ls(a) => list(c, a).await,
        ImageCommand::Rm { force, images } => rmi(c, &images, force).await,
    }
}

pub async fn list(c: &Client, a: ListArgs) -> anyhow::Result<i32> {
    let images: Vec<ImageSummary> = c.get("/v1/images").await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(0);
    }
    let short = |id: &str| {
        id.trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>()
    };
    if a.quiet {
        for i in &images {
            println!("{}", short(&i.id));
        }
        return Ok(0);
    }
    let now = now_unix();
    let mut rows = Vec::new();
    for i in &images {
        let created = i
            .created
            .as_deref()
            .and_then(|c| {
                humantime::parse_rfc3339_weak(
                    c.trim_end_matches('Z').split('.').next().unwrap_or(c),
                )
                .ok()
            })
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| format!("{} ago", human_duration(now - d.as_secs() as i64)))
            .unwrap_or_else(|| "N/A".into());
        let tags: Vec<(String, String)> = if i.tags.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            i.tags
                .iter()
                .map(|t| match t.rsplit_once(':') {
                    Some((n, tag)) if !tag.contains('/') => (n.to_string(), tag.to_string()),
                    _ => (t.clone(), "latest".into()),
                })
                .collect()
        };
        for (repo, tag) in tags {
            rows.push(vec![
                repo,
                tag,
                short(&i.id),
                created.clone(),
                human_size(i.size),
            ]);
        }
    }
    print!(
        "{}",
        table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows)
    );
    Ok(0)
}

pub async fn tag(c: &Client, source: &str, target: &str) -> anyhow::Result<i32> {
    c.post_empty(&format!(
        "/v1/images/tag?source={}&target={}",
        enc(source),
        enc(target)
    ))
    .await?;
    Ok(0)
}

pub async fn rmi(c: &Client, images: &[String], force: bool) -> anyhow::Result<i32> {
    let mut code = 0;
    for i in images {
        match c
            .delete::<RemoveImageResponse>(&format!("/v1/images?ref={}&force={force}", enc(i)))
            .await
        {
            Ok(r) => {
                for l in r.lines {
                    println!("{l}");
                }
            }
            Err(e) => {
                eprintln!("berth: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

async fn import(
    c: &Client,
    file: &PathBuf,
    tag: Option<String>,
    json: bool,
    upload: bool,
) -> anyhow::Result<i32> {
    let meta = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    if meta.is_dir() {
        anyhow::bail!(
            "{} is a directory: pack an OCI layout directory with `tar -C DIR -cf layout.tar .`",
            file.display()
        );
    }
    let mut query = Vec::new();
    if let Some(t) = &tag {
        query.push(format!("tag={}", enc(t)));
    }
    // The daemon runs on this machine (it answers on a local socket): by
    // default it reads the file itself; --upload streams it instead.
    let (body, pb) = if upload {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        let pb = progress_bar(meta.len(), "Uploading");
        (Client::stream_body(pb.wrap_async_read(f)), pb)
    } else {
        let abs =
            std::fs::canonicalize(file).with_context(|| format!("resolving {}", file.display()))?;
        query.push(format!("path={}", enc(&abs.to_string_lossy())));
        (
            Client::empty(),
            spinner(&format!("Importing {}", file.display())),
        )
    };
    let path = if query.is_empty() {
        "/v1/images/import".to_string()
    } else {
        format!("/v1/images/import?{}", query.join("&"))
    };
    let resp = c
        .send(Client::request(http::Method::POST, &path, body))
        .await;
    pb.finish_and_clear();
    let resp: ImportResponse =
        berth_api::client::decode(resp.with_context(|| format!("importing {}", file.display()))?)
            .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        println!("{}", resp.id);
    }
    Ok(0)
}

fn spinner(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(100));
    pb
}

async fn save(c: &Client, image: &str, output: Option<&PathBuf>) -> anyhow::Result<i32> {
    if output.is_none() && std::io::stdout().is_terminal() {
        anyhow::bail!(
            "refusing to write an image archive to a terminal: use -o FILE or redirect stdout"
        );
    }
    let resp = c
        .send(Client::request(
            http::Method::GET,
            &format!("/v1/images/save?ref={}", enc(image)),
            Client::empty(),
        ))
        .await?;
    let mut body = resp.into_body();
    let Some(output) = output else {
        let mut out = std::io::stdout().lock();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(ClientError::from)?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).context("writing to stdout")?;
            }
        }
        out.flush()?;
        return Ok(0);
    };
    let tmp = output.with_extension("partial");
    let mut out =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result: anyhow::Result<()> = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(ClientError::from)?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data)
                    .with_context(|| format!("writing {}", tmp.display()))?;
            }
        }
        out.sync_all()?;
        std::fs::rename(&tmp, output)
            .with_context(|| format!("renaming to {}", output.display()))?;
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    Ok(0)
}
