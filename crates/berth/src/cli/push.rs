//! `berth push IMAGE`: the daemon sends a local image to the cluster's
//! registry; layers the registry already has are skipped.

use anyhow::{bail, Context};
use berth_api::{Client, ClientError};
use berth_image::distribution::PushReport;
use http_body_util::BodyExt;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

fn upload_bar(size: u64, digest: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(size);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg}: Pushing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(short(digest));
    pb
}

/// Pushes `image` (a local `NAME[:TAG]`) to the first of `servers`
/// (`host:port`) that answers. Prints Docker-like lines, or with `json`
/// only the report.
pub async fn push(
    c: &Client,
    image: &str,
    servers: Vec<String>,
    token: Option<String>,
    json: bool,
) -> anyhow::Result<i32> {
    berth_types::ImageRef::parse(image)?;
    let body = serde_json::json!({"image": image, "servers": servers, "token": token});
    let req = Client::request(
        http::Method::POST,
        "/v1/images/push",
        Client::json_body(&body),
    );
    let resp = c
        .send(req)
        .await
        .with_context(|| format!("pushing {image}"))?;
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut bar: Option<ProgressBar> = None;
    let mut report: Option<PushReport> = None;
    let mut failed: Option<String> = None;
    let mut announced = false;
    let say = |bar: &Option<ProgressBar>, text: String| {
        if json {
            return;
        }
        match bar {
            Some(pb) if !pb.is_hidden() => pb.println(text),
            _ => println!("{text}"),
        }
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ClientError::from)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            let digest = msg["digest"].as_str().unwrap_or("").to_string();
            let size = msg["size"].as_u64().unwrap_or(0);
            match msg["event"].as_str().unwrap_or("") {
                "blob" if !announced => {
                    announced = true;
                    say(&bar, format!("The push refers to {image}"));
                }
                "exists" => say(&bar, format!("{}: Layer already exists", short(&digest))),
                "progress" => {
                    let pb = bar.get_or_insert_with(|| upload_bar(size, &digest));
                    pb.set_position(msg["sent"].as_u64().unwrap_or(0));
                }
                "uploaded" => {
                    if let Some(pb) = bar.take() {
                        pb.finish_and_clear();
                    }
                    say(&bar, format!("{}: Pushed", short(&digest)));
                }
                "done" => {
                    report = Some(
                        serde_json::from_value(msg["report"].clone())
                            .context("reading the push report")?,
                    )
                }
                "error" => {
                    failed = Some(msg["message"].as_str().unwrap_or("push failed").to_string())
                }
                _ => {}
            }
        }
    }
    if let Some(pb) = bar.take() {
        pb.finish_and_clear();
    }
    if let Some(m) = failed {
        bail!("pushing {image}: {m}");
    }
    let Some(report) = report else {
        bail!("pushing {image}: the daemon ended the push without a result")
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: digest: {} ({} layers pushed, {} already present, {} bytes sent to {})",
            report.tag,
            report.digest,
            report.layers_uploaded,
            report.layers_skipped,
            report.bytes_uploaded,
            report.registry
        );
    }
    Ok(0)
}
