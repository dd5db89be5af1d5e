//! Streaming endpoints: run and attach (framed, upgraded connections to a
//! container's shim), exec (to an exec helper) and logs (a framed body).

use super::{bad_request, internal, ApiError, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use berth_api::frame::{encode_into, FrameKind, FrameReader};
use berth_api::{CreateRequest, ExecRequest, Frame};
use berth_engine::exec_helper::ExecArgs;
use berth_engine::logs::{self, Tail};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

const MAX_JSON: usize = 1 << 20;

fn switching() -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "berth-stream")
        .body(Body::empty())
        .expect("static response")
}

async fn split_upgrade<T: serde::de::DeserializeOwned>(
    req: Request,
) -> Result<(OnUpgrade, T), ApiError> {
    let (mut parts, body) = req.into_parts();
    let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or_else(|| {
        bad_request(
            "this endpoint needs a connection upgrade (Connection: Upgrade, Upgrade: berth-stream)",
        )
    })?;
    let bytes = axum::body::to_bytes(body, MAX_JSON)
        .await
        .map_err(|e| bad_request(format!("reading request: {e}")))?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| bad_request(format!("invalid request body: {e}")))?;
    Ok((on_upgrade, value))
}

async fn connect_shim(e: &AppState, id: &str) -> Result<UnixStream, ApiError> {
    let path = e.attach_socket(id);
    UnixStream::connect(&path)
        .await
        .map_err(|err| internal(format!("attaching to container {id}: {err}")))
}

/// `berth run` without -d: create, start and attach in one round trip.
pub async fn run(State(e): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (on_upgrade, create): (OnUpgrade, CreateRequest) = split_upgrade(req).await?;
    let id = e.create(create.config).await?;
    if let Err(err) = e.start_opts(&id, true).await {
        if e.auto_remove(&id) {
            let _ = e.remove(&id, true).await;
        }
        return Err(err.into());
    }
    let mut shim = match connect_shim(&e, &id).await {
        Ok(s) => s,
        Err(err) => {
            let _ = e.remove(&id, true).await;
            return Err(err);
        }
    };
    // Say hello for the client at once (replay everything): the shim then
    // knows it is attached and need not hold the exit until the client's own
    // hello has made its way here (the shim ignores that second hello).
    let mut hello = Vec::new();
    encode_into(FrameKind::Hello, b"all", &mut hello);
    if let Err(err) = shim.write_all(&hello).await {
        let _ = e.remove(&id, true).await;
        return Err(internal(format!("attaching to container {id}: {err}")));
    }
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => splice(e, id, TokioIo::new(up), shim).await,
            Err(err) => tracing::warn!(container = %id, error = %err, "client upgrade failed"),
        }
    });
    Ok(switching())
}

pub async fn attach(
    State(e): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let id = e.resolve(&id)?;
    let (mut parts, _) = req.into_parts();
    let on_upgrade = parts
        .extensions
        .remove::<OnUpgrade>()
        .ok_or_else(|| bad_request("this endpoint needs a connection upgrade"))?;
    if !e.is_running(&id) {
        return Err(ApiError(409, format!("container {id} is not running")));
    }
    let shim = connect_shim(&e, &id).await?;
    tokio::spawn(async move {
        if let Ok(up) = on_upgrade.await {
            splice(e, id, TokioIo::new(up), shim).await;
        }
    });
    Ok(switching())
}

/// Copies client input to the shim as is, and the shim's frames to the
/// client; the exit frame is held back until the engine has recorded the
/// exit (and removed an auto-removed container).
async fn splice<C>(e: AppState, id: String, client: C, shim: UnixStream)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut shim_rd, mut shim_wr) = shim.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_rd, &mut shim_wr).await;
    });
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut exit: Option<Frame> = None;
    'outer: loop {
        let n = match shim_rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        reader.feed(&buf[..n]);
        let mut out = Vec::new();
        loop {
            match reader.next_frame() {
                Ok(Some(f)) if f.kind == FrameKind::Exit => {
                    exit = Some(f);
                    if client_wr.write_all(&out).await.is_err() {
                        break 'outer;
                    }
                    break 'outer;
                }
                Ok(Some(f)) => encode_into(f.kind, &f.data, &mut out),
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
        if client_wr.write_all(&out).await.is_err() {
            break;
        }
    }
    upstream.abort();
    // The exit goes to the client only once the engine has recorded it (and,
    // for --rm, removed the container), so whatever the client does next
    // (inspect, ps, run again with the same name) sees the final state.
    let removed = e.auto_remove(&id);
    let exit = match e.wait(&id, removed).await {
        Ok((code, oom)) => Frame::exit(code, oom),
        Err(_) => exit.unwrap_or_else(|| Frame::exit(255, false)),
    };
    let _ = client_wr.write_all(&exit.encode()).await;
    let _ = client_wr.shutdown().await;
}

pub async fn exec(
    State(e): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (on_upgrade, ex): (OnUpgrade, ExecRequest) = split_upgrade(req).await?;
    if ex.cmd.is_empty() {
        return Err(bad_request("exec needs a command"));
    }
    let (pid, cgroup, rec) = e.exec_target(&id)?;
    let args = ExecArgs {
        pid,
        cgroup,
        args: ex.cmd.clone(),
        env: {
            let mut env = berth_engine::engine::merge_env(rec.env.clone(), &ex.env);
            if ex.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
                env.push("TERM=xterm".into());
            }
            env
        },
        cwd: ex.workdir.clone().unwrap_or(rec.workdir.clone()),
        user: ex.user.clone().unwrap_or(rec.user.clone()),
        tty: ex.tty,
    };
    let json = serde_json::to_string(&args).map_err(internal)?;
    let mut child = tokio::process::Command::new(e.exe())
        .arg("__exec")
        .arg(json)
        .stdin(if ex.stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| internal(format!("starting exec helper: {err}")))?;
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else {
            let _ = child.kill().await;
            return;
        };
        let (mut client_rd, mut client_wr) = tokio::io::split(TokioIo::new(up));
        let mut stdin = child.stdin.take();
        let input = tokio::spawn(async move {
            let mut reader = FrameReader::new();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match client_rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                reader.feed(&buf[..n]);
                while let Ok(Some(f)) = reader.next_frame() {
                    match f.kind {
                        FrameKind::Stdin => {
                            if let Some(s) = stdin.as_mut() {
                                if s.write_all(&f.data).await.is_err() {
                                    stdin = None;
                                }
                            }
                        }
                        FrameKind::StdinEof => stdin = None,
                        _ => {}
                    }
                }
            }
        });
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        let mut pumps = Vec::new();
        for (kind, src) in [
            (
                FrameKind::Stdout,
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
            (
                FrameKind::Stderr,
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
        ] {
            let Some(mut src) = src else { continue };
            let tx = tx.clone();
            pumps.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match src.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut out = Vec::with_capacity(n + 8);
                            encode_into(kind, &buf[..n], &mut out);
                            if tx.send(out).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
        drop(tx);
        while let Some(chunk) = rx.recv().await {
            if client_wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let code = match child.wait().await {
            Ok(s) => s.code().unwrap_or(255),
            Err(_) => 255,
        };
        input.abort();
        let _ = client_wr
            .write_all(&Frame::exit(code, false).encode())
            .await;
        let _ = client_wr.shutdown().await;
    });
    Ok(switching())
}

#[derive(Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<String>,
}

pub async fn logs(
    State(e): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let id = e.resolve(&id)?;
    let tail_s = q.tail.unwrap_or_else(|| "all".into());
    let tail = Tail::parse(&tail_s)
        .ok_or_else(|| bad_request(format!("invalid tail {tail_s:?}: expected a number or all")))?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    if q.follow && e.is_running(&id) {
        let mut shim = connect_shim(&e, &id).await?;
        let mut hello = Vec::new();
        encode_into(FrameKind::Hello, tail.as_param().as_bytes(), &mut hello);
        shim.write_all(&hello).await.map_err(internal)?;
        tokio::spawn(async move {
            let mut reader = FrameReader::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match shim.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                reader.feed(&buf[..n]);
                let mut out = Vec::new();
                let mut done = false;
                while let Ok(Some(f)) = reader.next_frame() {
                    if matches!(f.kind, FrameKind::Stdout | FrameKind::Stderr) {
                        encode_into(f.kind, &f.data, &mut out);
                    } else if f.kind == FrameKind::Exit {
                        done = true;
                    }
                }
                if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                    break;
                }
                if done {
                    break;
                }
            }
        });
    } else {
        let path = e.log_path(&id);
        tokio::task::spawn_blocking(move || {
            let entries = logs::read_all(&path).unwrap_or_default();
            let mut out = Vec::new();
            for en in logs::tail(entries, tail) {
                let kind = if en.stream == logs::STDERR {
                    FrameKind::Stderr
                } else {
                    FrameKind::Stdout
                };
                encode_into(kind, &en.data, &mut out);
                if out.len() > 256 * 1024 {
                    let _ = tx.blocking_send(Bytes::from(std::mem::take(&mut out)));
                }
            }
            if !out.is_empty() {
                let _ = tx.blocking_send(Bytes::from(out));
            }
        });
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let _ = Duration::from_secs(0);
    Response::builder()
        .header("content-type", "application/vnd.berth.frames")
        .body(Body::from_stream(stream))
        .map_err(internal)
}
