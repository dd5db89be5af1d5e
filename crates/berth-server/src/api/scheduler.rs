//! `POST /api/v1/scheduler`: SUBSCRIBE answers a RecordIO stream of events;
//! every other call answers 202 once handled.

use super::{json_body, ApiError};
use crate::master::{call_name, Master, EVENT_QUEUE};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_api::cluster::{recordio_encode, Call, CallEnvelope, Event, STREAM_ID_HEADER};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Events coalesced into one chunk of the stream when they are ready.
const CHUNK_BYTES: usize = 256 << 10;

pub async fn call(
    State(m): State<Arc<Master>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let env: CallEnvelope = json_body(&body, "scheduler call")?;
    if let Call::Subscribe { framework_info } = env.call {
        return subscribe(m, env.framework_id, framework_info).await;
    }
    let name = call_name(&env.call);
    let framework_id = env
        .framework_id
        .ok_or_else(|| ApiError::bad_request(format!("{name}: framework_id is required")))?;
    let stream_id = headers
        .get(STREAM_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name}: missing {STREAM_ID_HEADER} header (the one SUBSCRIBE answered with)"
            ))
        })?;
    m.handle_call(&framework_id, stream_id, env.call).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn subscribe(
    m: Arc<Master>,
    framework_id: Option<String>,
    info: berth_api::cluster::FrameworkInfo,
) -> Result<Response, ApiError> {
    let (tx, rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    let sub = m.subscribe(framework_id, info, tx).await?;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let first = rx.recv().await?;
        let mut buf = recordio_encode(&first);
        while buf.len() < CHUNK_BYTES {
            match rx.try_recv() {
                Ok(e) => buf.extend_from_slice(&recordio_encode(&e)),
                Err(_) => break,
            }
        }
        Some((Ok::<Bytes, Infallible>(Bytes::from(buf)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/recordio")
        .header(header::CACHE_CONTROL, "no-cache")
        .header(STREAM_ID_HEADER, sub.stream_id)
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
