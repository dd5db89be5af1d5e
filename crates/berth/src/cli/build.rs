//! `berth build`: pack the context, send it, print the build's progress.

use anyhow::{bail, Context};
use berth_api::client::enc;
use berth_api::{BuildMessage, Client, ClientError};
use clap::Args;
use http_body_util::BodyExt;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Name and optionally a tag (NAME:TAG)
    #[arg(short, long)]
    pub tag: Option<String>,
    /// Name of the Containerfile (default: CONTEXT/Containerfile, else CONTEXT/Dockerfile)
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// Set build-time variables (K=V, or K to take it from the environment)
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Do not use the build cache
    #[arg(long)]
    pub no_cache: bool,
    /// Suppress the build output and print the image id on success
    #[arg(short, long)]
    pub quiet: bool,
    pub context: PathBuf,
}

pub async fn run(c: &Client, a: BuildArgs) -> anyhow::Result<i32> {
    if !a.context.is_dir() {
        bail!("build context {} is not a directory", a.context.display());
    }
    let file = match &a.file {
        Some(f) => {
            // -f is relative to the current directory, as in Docker; the
            // daemon wants it relative to the context.
            let abs = std::fs::canonicalize(f)
                .with_context(|| format!("containerfile {}", f.display()))?;
            let ctx = std::fs::canonicalize(&a.context)?;
            match abs.strip_prefix(&ctx) {
                Ok(rel) => rel.to_path_buf(),
                Err(_) => bail!(
                    "containerfile {} must be inside the build context {}",
                    f.display(),
                    a.context.display()
                ),
            }
        }
        None if a.context.join("Containerfile").exists() => PathBuf::from("Containerfile"),
        None => PathBuf::from("Dockerfile"),
    };
    let mut query = format!(
        "file={}&no_cache={}",
        enc(&file.to_string_lossy()),
        a.no_cache
    );
    if let Some(t) = &a.tag {
        berth_types::ImageRef::parse(t)?;
        query.push_str(&format!("&tag={}", enc(t)));
    }
    for ba in &a.build_args {
        let kv = if ba.contains('=') {
            ba.clone()
        } else {
            match std::env::var(ba) {
                Ok(v) => format!("{ba}={v}"),
                Err(_) => continue,
            }
        };
        query.push_str(&format!("&build_arg={}", enc(&kv)));
    }
    // Pack the context into a temporary tar, then stream it up.
    let tmp = tempfile::NamedTempFile::new()
        .context("creating a temporary file for the build context")?;
    {
        let ctx = a.context.clone();
        let out = tmp.reopen()?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut b = tar::Builder::new(std::io::BufWriter::new(out));
            b.follow_symlinks(false);
            b.append_dir_all(".", &ctx)
                .with_context(|| format!("packing build context {}", ctx.display()))?;
            b.into_inner()?.flush()?;
            Ok(())
        })
        .await??;
    }
    let body = tokio::fs::File::open(tmp.path()).await?;
    let req = Client::request(
        http::Method::POST,
        &format!("/v1/build?{query}"),
        Client::stream_body(body),
    );
    let resp = c.send(req).await?;
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = std::io::stdout();
    let mut image_id = None;
    let mut failed = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ClientError::from)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let msg: BuildMessage = match serde_json::from_slice(&line) {
                Ok(m) => m,
                Err(_) => continue,
            };
            match msg {
                BuildMessage::Step { index, total, text } if !a.quiet => {
                    writeln!(out, "Step {index}/{total} : {text}")?
                }
                BuildMessage::CacheHit if !a.quiet => writeln!(out, " ---> Using cache")?,
                BuildMessage::Output { text } if !a.quiet => {
                    write!(out, "{text}")?;
                    out.flush()?;
                }
                BuildMessage::Error { message } => failed = Some(message),
                BuildMessage::Done { image_id: id } => image_id = Some(id),
                _ => {}
            }
        }
    }
    if let Some(m) = failed {
        eprintln!("berth: {m}");
        return Ok(1);
    }
    let Some(id) = image_id else {
        bail!("the build ended without a result")
    };
    if a.quiet {
        println!("{id}");
    } else {
        println!(
            "Successfully built {}",
            id.trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect::<String>()
        );
        if let Some(t) = &a.tag {
            println!("Successfully tagged {}", berth_types::ImageRef::parse(t)?);
        }
    }
    Ok(0)
}
