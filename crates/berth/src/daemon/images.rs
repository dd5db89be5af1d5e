//! Image endpoints: list, import, save, inspect, tag, remove, prune, build.

use super::{bad_request, internal, ApiError, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::Json;
use berth_api::{BuildMessage, ImageSummary, ImportResponse, PruneResponse, RemoveImageResponse};
use berth_image::build::{BuildEvent, BuildOptions};
use berth_types::ImageRef;
use futures_util::StreamExt;
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

fn blocking_err(e: tokio::task::JoinError) -> ApiError {
    internal(format!("worker failed: {e}"))
}

/// Streams a request body into `path`.
async fn save_body(body: Body, path: &Path) -> Result<u64, ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| internal(format!("creating {}: {e}", path.display())))?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| bad_request(format!("reading upload: {e}")))?;
        total += chunk.len() as u64;
        file.write_all(&chunk)
            .await
            .map_err(|e| internal(format!("writing {}: {e}", path.display())))?;
    }
    file.flush().await.map_err(internal)?;
    Ok(total)
}

/// A response body fed from a channel of byte chunks.
fn channel_body(rx: mpsc::Receiver<Bytes>) -> Body {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Body::from_stream(stream)
}

pub async fn list(State(e): State<AppState>) -> Result<Json<Vec<ImageSummary>>, ApiError> {
    let store = e.images();
    let images = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(blocking_err)??;
    let mut out: Vec<ImageSummary> = images
        .into_iter()
        .map(|i| ImageSummary {
            id: i.id,
            tags: i.tags.iter().map(|t| t.to_string()).collect(),
            created: i.created,
            size: i.size,
        })
        .collect();
    out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    Ok(Json(out))
}

#[derive(Deserialize)]
pub struct ImportQuery {
    tag: Option<String>,
    /// A file on the daemon's host to import instead of the request body:
    /// the CLI on the same machine saves copying the archive through the
    /// socket into a temporary file (whose write-back then slows the
    /// store's sync).
    path: Option<String>,
}

pub async fn import(
    State(e): State<AppState>,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> Result<Json<ImportResponse>, ApiError> {
    let tag = q
        .tag
        .as_deref()
        .map(ImageRef::parse)
        .transpose()
        .map_err(|e| bad_request(e.to_string()))?;
    let store = e.images();
    let (path, tmp) = match q.path {
        Some(p) => {
            let path = PathBuf::from(&p);
            if !path.is_absolute() {
                return Err(bad_request(format!("import path {p} must be absolute")));
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {}
                Ok(_) => {
                    return Err(bad_request(format!(
                        "import path {p} is not a regular file"
                    )))
                }
                Err(err) => return Err(bad_request(format!("import path {p}: {err}"))),
            }
            (path, None)
        }
        None => {
            let tmp = store.tmp_dir()?;
            let path = tmp.path().join("upload");
            save_body(body, &path).await?;
            (path, Some(tmp))
        }
    };
    let image = tokio::task::spawn_blocking(move || {
        let r = store.import(&path, tag.as_ref());
        drop(tmp);
        r
    })
    .await
    .map_err(blocking_err)??;
    tracing::info!(image = %image.id, "imported");
    Ok(Json(ImportResponse {
        id: image.id,
        tags: image.tags.iter().map(|t| t.to_string()).collect(),
    }))
}

#[derive(Deserialize)]
pub struct RefQuery {
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    force: bool,
}

pub async fn save(
    State(e): State<AppState>,
    Query(q): Query<RefQuery>,
) -> Result<Response, ApiError> {
    let store = e.images();
    // Resolve first so a bad reference is a clean 404 rather than a broken stream.
    let reference = q.reference.clone();
    let s2 = store.clone();
    tokio::task::spawn_blocking(move || s2.resolve(&reference))
        .await
        .map_err(blocking_err)??;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx,
            buf: Vec::with_capacity(256 * 1024),
        };
        match store.save(&q.reference, &mut w) {
            Ok(()) => {
                let _ = w.flush();
            }
            Err(err) => tracing::error!(image = %q.reference, error = %err, "saving image"),
        }
    });
    Response::builder()
        .header("content-type", "application/x-tar")
        .body(channel_body(rx))
        .map_err(internal)
}

/// Adapts a blocking writer onto a channel of chunks.
struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::take(&mut self.buf));
            self.tx.blocking_send(chunk).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away")
            })?;
        }
        Ok(())
    }
}

pub async fn inspect(
    State(e): State<AppState>,
    Query(q): Query<RefQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let store = e.images();
    let image = tokio::task::spawn_blocking(move || store.resolve(&q.reference))
        .await
        .map_err(blocking_err)??;
    Ok(Json(serde_json::to_value(&image).map_err(internal)?))
}

#[derive(Deserialize)]
pub struct TagQuery {
    source: String,
    target: String,
}

pub async fn tag(
    State(e): State<AppState>,
    Query(q): Query<TagQuery>,
) -> Result<Json<()>, ApiError> {
    let target = ImageRef::parse(&q.target).map_err(|e| bad_request(e.to_string()))?;
    let store = e.images();
    tokio::task::spawn_blocking(move || store.tag(&q.source, &target))
        .await
        .map_err(blocking_err)??;
    Ok(Json(()))
}

pub async fn remove(
    State(e): State<AppState>,
    Query(q): Query<RefQuery>,
) -> Result<Json<RemoveImageResponse>, ApiError> {
    let store = e.images();
    let engine = e.clone();
    let lines = tokio::task::spawn_blocking(move || {
        store.remove(&q.reference, q.force, &|id| engine.image_in_use(id))
    })
    .await
    .map_err(blocking_err)??;
    Ok(Json(RemoveImageResponse { lines }))
}

pub async fn prune(State(e): State<AppState>) -> Result<Json<PruneResponse>, ApiError> {
    let store = e.images();
    let engine = e.clone();
    let keep = e.layers_in_use();
    let r = tokio::task::spawn_blocking(move || store.prune(&|id| engine.image_in_use(id), &keep))
        .await
        .map_err(blocking_err)??;
    Ok(Json(PruneResponse {
        images_deleted: r.images_deleted,
        layers_deleted: r.layers_deleted,
        bytes_reclaimed: r.bytes_reclaimed,
    }))
}

#[derive(Deserialize)]
pub struct BuildQuery {
    tag: Option<String>,
    file: Option<String>,
    #[serde(default)]
    no_cache: bool,
}

pub async fn build(
    State(e): State<AppState>,
    Query(q): Query<BuildQuery>,
    uri: axum::http::Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let tag = q
        .tag
        .as_deref()
        .map(ImageRef::parse)
        .transpose()
        .map_err(|e| bad_request(e.to_string()))?;
    // build_arg may repeat, which serde's query form cannot express.
    let build_args: Vec<(String, String)> = url_pairs(uri.query().unwrap_or(""))
        .into_iter()
        .filter(|(k, _)| k == "build_arg")
        .filter_map(|(_, v)| {
            v.split_once('=')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let file_given = q.file.is_some();
    let file = PathBuf::from(q.file.unwrap_or_else(|| "Containerfile".into()));
    if file.is_absolute()
        || file
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad_request(format!(
            "containerfile {} must be a path inside the build context",
            file.display()
        )));
    }
    let workspace = tempfile::Builder::new()
        .prefix("ctx-")
        .tempdir_in(e.data_dir().build_tmp())
        .map_err(|err| internal(format!("creating build directory: {err}")))?;
    let upload = workspace.path().join("context.tar");
    save_body(body, &upload).await?;
    let context = workspace.path().join("context");
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let engine = e.clone();
    tokio::task::spawn_blocking(move || {
        let send = |m: BuildMessage| {
            let mut line = serde_json::to_vec(&m).unwrap_or_default();
            line.push(b'\n');
            let _ = tx.blocking_send(Bytes::from(line));
        };
        let unpacked = std::fs::File::open(&upload).and_then(|f| {
            std::fs::create_dir_all(&context)?;
            tar::Archive::new(f).unpack(&context)
        });
        if let Err(err) = unpacked {
            send(BuildMessage::Error {
                message: format!("unpacking build context: {err}"),
            });
            return;
        }
        let containerfile = if !file_given && !context.join("Containerfile").exists() {
            PathBuf::from("Dockerfile")
        } else {
            file
        };
        let opts = BuildOptions {
            context: context.clone(),
            containerfile,
            tag,
            build_args,
            no_cache: q.no_cache,
        };
        let runner = engine.step_runner();
        let store = engine.images();
        let result = berth_image::build::build(&store, &runner, &opts, &mut |ev| match ev {
            BuildEvent::Step { index, total, text } => {
                send(BuildMessage::Step { index, total, text })
            }
            BuildEvent::CacheHit => send(BuildMessage::CacheHit),
            BuildEvent::Output(bytes) => send(BuildMessage::Output {
                text: String::from_utf8_lossy(&bytes).into_owned(),
            }),
            BuildEvent::Done { .. } => {}
        });
        match result {
            Ok(image) => send(BuildMessage::Done { image_id: image.id }),
            Err(err) => send(BuildMessage::Error {
                message: err.to_string(),
            }),
        }
        drop(workspace);
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(channel_body(rx))
        .map_err(internal)
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| percent_decode(&s.replace('+', " "));
            (dec(k), dec(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_pairs_decode_and_repeat() {
        let got = super::url_pairs("build_arg=A%3D1&build_arg=B%3Dx+y&tag=web%3A1");
        assert_eq!(got[0], ("build_arg".into(), "A=1".into()));
        assert_eq!(got[1], ("build_arg".into(), "B=x y".into()));
        assert_eq!(got[2], ("tag".into(), "web:1".into()));
    }
}
