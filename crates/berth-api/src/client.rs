//! A typed client for the node API over its unix socket, used by the CLI
//! and the tests. One connection per request: connecting to a unix socket
//! costs microseconds and keeps the client free of pooling state.

use crate::ErrorBody;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame as BodyFrame, Incoming};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use tokio::io::AsyncRead;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the berth daemon at {socket}: {source} (is `berth up` running?)")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The daemon answered with an error; `message` is its one-line text.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("talking to the berth daemon: {0}")]
    Http(#[from] hyper::Error),
    #[error("talking to the berth daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected answer from the berth daemon: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn connect(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                socket: self.socket.clone(),
                source,
            })
    }

    /// Sends a request and returns the response if its status is a success;
    /// an error status becomes `ClientError::Api` with the daemon's message.
    pub async fn send(&self, req: Request<Body>) -> Result<http::Response<Incoming>, ClientError> {
        let stream = self.connect().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let resp = sender.send_request(req).await?;
        if resp.status().is_success() || resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            Ok(resp)
        } else {
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes();
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            let message = if message.trim().is_empty() {
                format!("the berth daemon answered {status} without a message")
            } else {
                message
            };
            Err(ClientError::Api { status, message })
        }
    }

    pub fn request(method: Method, path: &str, body: Body) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(format!("http://berth{path}"))
            .header(http::header::HOST, "berth")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .expect("static request parts are valid")
    }

    pub fn empty() -> Body {
        Empty::new().map_err(|never| match never {}).boxed()
    }

    pub fn json_body<T: Serialize>(value: &T) -> Body {
        let bytes = serde_json::to_vec(value).expect("DTOs serialize");
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed()
    }

    /// A body streamed from a reader, e.g. an image archive being uploaded.
    pub fn stream_body(reader: impl AsyncRead + Send + Sync + 'static) -> Body {
        use futures_util::TryStreamExt;
        let stream =
            tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024).map_ok(BodyFrame::data);
        BodyExt::boxed(StreamBody::new(stream))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self
            .send(Self::request(Method::GET, path, Self::empty()))
            .await?;
        decode(resp).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self
            .send(Self::request(Method::POST, path, Self::json_body(body)))
            .await?;
        decode(resp).await
    }

    /// POST with no meaningful answer body.
    pub async fn post_empty(&self, path: &str) -> Result<(), ClientError> {
        let resp = self
            .send(Self::request(Method::POST, path, Self::empty()))
            .await?;
        resp.into_body().collect().await?;
        Ok(())
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self
            .send(Self::request(Method::DELETE, path, Self::empty()))
            .await?;
        decode(resp).await
    }

    /// Sends a request asking to upgrade the connection to a raw framed
    /// stream (attach, exec) and returns that stream.
    pub async fn upgrade(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, ClientError> {
        let mut req = Self::request(method, path, body);
        req.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("Upgrade"),
        );
        req.headers_mut().insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("berth-stream"),
        );
        let resp = self.send(req).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(ClientError::Decode(format!(
                "expected a stream upgrade, got status {}",
                resp.status()
            )));
        }
        let upgraded = hyper::upgrade::on(resp).await?;
        Ok(TokioIo::new(upgraded))
    }
}

pub async fn decode<T: DeserializeOwned>(resp: http::Response<Incoming>) -> Result<T, ClientError> {
    let bytes = resp.into_body().collect().await?.to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Decode(format!("{e}: {}", String::from_utf8_lossy(&bytes))))
}

/// Percent-encodes a value for use in a query string or path segment.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
