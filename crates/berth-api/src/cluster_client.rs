//! A typed client for the cluster servers' HTTP/JSON API, used by the
//! agent, the CLI, tests and frameworks.
//!
//! The servers are a Raft group: only the leader answers; a follower
//! answers 307 with the leader's address, and during an election a server
//! answers 503. The client hides that: it prefers the last server that
//! answered, follows redirects (at most [`MAX_REDIRECTS`]), moves on to the
//! next server when one cannot be reached, and retries with a short backoff
//! until an overall deadline.
//!
//! A request may reach the servers more than once when a server fails while
//! answering; the cluster APIs are idempotent by id or uuid for that reason.
//!
//! Security: a cluster with a token serves HTTPS only, under the cluster CA
//! every token holder derives from the token ([`ClusterClient::for_cluster`]
//! builds such a client; agents add their certificate). TLS failures no
//! retry can fix (another cluster's token, HTTP against HTTPS) end a call at
//! once with [`ClusterClientError::Tls`] instead of retrying to the deadline.

use crate::cluster::ClusterError;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Redirects followed for one request before giving up.
pub const MAX_REDIRECTS: u32 = 5;
/// How long a call may take, retries included, unless configured.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// How long one attempt may wait for an answer, unless configured.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to one server may take, unless configured.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);

#[derive(Debug, thiserror::Error)]
pub enum ClusterClientError {
    /// A server answered with an error; `message` is its text, verbatim.
    #[error("{message}")]
    Api { status: u16, message: String },
    /// No server gave an answer before the deadline.
    #[error("no cluster server answered within {waited_ms} ms (servers {servers}): {last}")]
    Unavailable {
        servers: String,
        waited_ms: u64,
        last: String,
    },
    #[error("too many redirects (more than {MAX_REDIRECTS}), the last to {0}")]
    TooManyRedirects(String),
    #[error("bad redirect from {server}: {detail}")]
    BadRedirect { server: String, detail: String },
    #[error("unexpected answer from {server}: {detail}")]
    Decode { server: String, detail: String },
    #[error("reading the stream from {server}: {detail}")]
    Stream { server: String, detail: String },
    #[error("cluster client configuration: {0}")]
    Config(String),
    /// TLS with a server failed in a way no retry fixes: `message` says
    /// what to change (usually the token).
    #[error("{server}: {message}")]
    Tls { server: String, message: String },
    /// The token cannot be used, e.g. too short to derive the cluster CA.
    #[error("{0}")]
    Token(String),
}

impl ClusterClientError {
    /// The HTTP status of a server's error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClusterClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when no server could be reached or none had a leader.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClusterClientError::Unavailable { .. })
    }

    /// True when the servers refuse who we are (token, certificate, TLS):
    /// retrying the same call cannot succeed.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            ClusterClientError::Tls { .. } | ClusterClientError::Token(_)
        ) || matches!(self.status(), Some(401 | 403))
    }
}

/// `POST` here with an [`EnrolRequest`] (and the token, no certificate) to
/// get an agent certificate.
pub const ENROL_PATH: &str = "/v1/agents/enrol";
/// Agent ids of simulated agents start with this.
pub const SIM_AGENT_PREFIX: &str = "sim-";
/// The agent id a simulated-agent process enrols under: its one
/// certificate stands for every agent id starting with
/// [`SIM_AGENT_PREFIX`], so thousands of simulated agents need neither
/// thousands of enrolments nor thousands of certificates. It cannot be a
/// real agent's id (`*` is not allowed in agent ids).
pub const SIM_AGENT_WILDCARD: &str = "sim-*";

/// Body of `POST /v1/agents/enrol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolRequest {
    /// The id the agent has (a restart after a token change); `None` or
    /// empty: the server assigns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// From `berth_tls::agent_key_and_csr`; only its public key is used.
    pub csr_pem: String,
}

/// Answer of `POST /v1/agents/enrol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolResponse {
    pub agent_id: String,
    /// A client certificate with CN `agent:<agent_id>`, PEM.
    pub cert_pem: String,
}

/// The body of a streaming answer, chunk by chunk.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ClusterClientError>> + Send>>;

#[derive(Clone)]
struct Settings {
    deadline: Duration,
    attempt_timeout: Duration,
    connect_timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
}

struct Shared {
    servers: Vec<String>,
    token: Option<String>,
    http: reqwest::Client,
    scheme: &'static str,
    settings: Settings,
    /// The server that answered last (possibly a leader learned from a
    /// redirect that is not in `servers`).
    preferred: Mutex<Option<String>>,
}

/// Cheap to clone: clones share the connection pool and the preferred server.
#[derive(Clone)]
pub struct ClusterClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ClusterClient {
    // By hand so the token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("servers", &self.shared.servers)
            .field("token", &self.shared.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.shared.settings.tls.is_some())
            .finish()
    }
}

/// Accepts `host:port` and tolerates a scheme and a trailing slash.
fn normalize_server(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .unwrap_or(s);
    s.trim_end_matches('/').to_string()
}

fn build_http(settings: &Settings) -> Result<reqwest::Client, ClusterClientError> {
    let mut b = reqwest::Client::builder()
        // Redirects are followed by hand: reqwest drops the Authorization
        // header when the port changes, and the leader is worth remembering.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60));
    if let Some(tls) = &settings.tls {
        b = b.use_preconfigured_tls((**tls).clone());
    }
    b.build()
        .map_err(|e| ClusterClientError::Config(format!("building the http client: {e}")))
}

impl ClusterClient {
    /// `servers` are `host:port` addresses of cluster servers, tried in order.
    pub fn new(servers: Vec<String>, token: Option<String>) -> Self {
        let settings = Settings {
            deadline: DEFAULT_DEADLINE,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tls: None,
        };
        // Without TLS the builder has nothing that can fail; should it ever,
        // the default client still works.
        let http = build_http(&settings).unwrap_or_default();
        Self::from_parts(servers, token, http, settings)
    }

    /// How the CLI and agents reach a cluster. With a token: HTTPS that
    /// trusts only the cluster CA derived from the token, presenting
    /// `identity` (an agent's certificate) when given. Without: plain HTTP,
    /// which only a cluster without a token (development) serves.
    pub fn for_cluster(
        servers: Vec<String>,
        token: Option<String>,
        identity: Option<&berth_tls::Identity>,
    ) -> Result<Self, ClusterClientError> {
        let token = token.filter(|t| !t.is_empty());
        let Some(t) = &token else {
            return Ok(Self::new(servers, None));
        };
        let ca = berth_tls::ClusterCa::from_token(t)
            .map_err(|e| ClusterClientError::Token(e.to_string()))?;
        let tls = berth_tls::client_config(&ca, identity)
            .map_err(|e| ClusterClientError::Token(e.to_string()))?;
        Self::new(servers, token).with_tls((*tls).clone())
    }

    fn from_parts(
        servers: Vec<String>,
        token: Option<String>,
        http: reqwest::Client,
        settings: Settings,
    ) -> Self {
        let servers: Vec<String> = servers
            .iter()
            .map(|s| normalize_server(s))
            .filter(|s| !s.is_empty())
            .collect();
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        ClusterClient {
            shared: Arc::new(Shared {
                servers,
                token,
                http,
                scheme,
                settings,
                preferred: Mutex::new(None),
            }),
        }
    }

    fn rebuild(self, settings: Settings) -> Result<Self, ClusterClientError> {
        let http = build_http(&settings)?;
        let preferred = self.preferred();
        let c = Self::from_parts(
            self.shared.servers.clone(),
            self.shared.token.clone(),
            http,
            settings,
        );
        *c.lock_preferred() = preferred;
        Ok(c)
    }

    /// Speaks HTTPS with this configuration (cluster CA, client
    /// certificate). It must be built with the same rustls version as this
    /// crate's, re-exported as [`rustls`](crate::cluster_client::rustls).
    pub fn with_tls(self, config: rustls::ClientConfig) -> Result<Self, ClusterClientError> {
        let mut s = self.shared.settings.clone();
        s.tls = Some(Arc::new(config));
        self.rebuild(s)
    }

    /// How long a call may take in all, retries and redirects included.
    pub fn with_deadline(self, deadline: Duration) -> Self {
        let mut s = self.shared.settings.clone();
        s.deadline = deadline;
        Self::from_parts(
            self.shared.servers.clone(),
            self.shared.token.clone(),
            self.shared.http.clone(),
            s,
        )
    }

    /// How long one attempt may wait for an answer before the next server
    /// is tried; long polls need more than their wait.
    pub fn with_attempt_timeout(self, timeout: Duration) -> Self {
        let mut s = self.shared.settings.clone();
        s.attempt_timeout = timeout;
        Self::from_parts(
            self.shared.servers.clone(),
            self.shared.token.clone(),
            self.shared.http.clone(),
            s,
        )
    }

    pub fn with_connect_timeout(self, timeout: Duration) -> Result<Self, ClusterClientError> {
        let mut s = self.shared.settings.clone();
        s.connect_timeout = timeout;
        self.rebuild(s)
    }

    pub fn servers(&self) -> &[String] {
        &self.shared.servers
    }

    /// The server that answered last, if any did.
    /// The token sent with every request, for callers that talk to other
    /// endpoints of the servers (the registry).
    pub fn token(&self) -> Option<&str> {
        self.shared.token.as_deref()
    }

    pub fn preferred(&self) -> Option<String> {
        self.lock_preferred().clone()
    }

    fn lock_preferred(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.shared
            .preferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClusterClientError> {
        self.send_json::<(), T>(Method::GET, path, &HeaderMap::new(), None)
            .await
    }

    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClusterClientError> {
        self.send_json(Method::POST, path, &HeaderMap::new(), Some(body))
            .await
    }

    pub async fn put_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClusterClientError> {
        self.send_json(Method::PUT, path, &HeaderMap::new(), Some(body))
            .await
    }

    pub async fn delete_json<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, ClusterClientError> {
        self.send_json::<(), T>(Method::DELETE, path, &HeaderMap::new(), None)
            .await
    }

    /// Any method with extra headers (the scheduler API's
    /// `Mesos-Stream-Id`). An empty answer body decodes as JSON `null`, so
    /// `T = ()` suits 202 Accepted.
    pub async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        body: Option<&B>,
    ) -> Result<T, ClusterClientError> {
        let body = encode_body(body)?;
        let deadline = Instant::now() + self.shared.settings.deadline;
        let (server, resp) = self
            .execute(method, path, headers, body, deadline, true)
            .await?;
        let bytes = match tokio::time::timeout_at(deadline, resp.bytes()).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                return Err(ClusterClientError::Decode {
                    server,
                    detail: format!("reading the answer: {e}"),
                })
            }
            Err(_) => {
                return Err(ClusterClientError::Decode {
                    server,
                    detail: "timed out reading the answer".into(),
                })
            }
        };
        let slice: &[u8] = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            b"null"
        } else {
            &bytes
        };
        serde_json::from_slice(slice).map_err(|e| ClusterClientError::Decode {
            server,
            detail: e.to_string(),
        })
    }

    /// POSTs `body` and returns the answer's headers and its body as a
    /// stream (the scheduler subscription). The deadline covers getting the
    /// headers; the stream itself has no timeout.
    pub async fn post_stream<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(HeaderMap, ByteStream), ClusterClientError> {
        let body = encode_body(Some(body))?;
        let deadline = Instant::now() + self.shared.settings.deadline;
        let (server, resp) = self
            .execute(Method::POST, path, &HeaderMap::new(), body, deadline, false)
            .await?;
        let headers = resp.headers().clone();
        let stream = resp.bytes_stream().map(move |r| {
            r.map_err(|e| ClusterClientError::Stream {
                server: server.clone(),
                detail: e.to_string(),
            })
        });
        Ok((headers, Box::pin(stream)))
    }

    /// The next server after `current` in the configured order.
    fn next_server(&self, current: &str) -> String {
        let servers = &self.shared.servers;
        match servers.iter().position(|s| s == current) {
            Some(i) => servers[(i + 1) % servers.len()].clone(),
            None => servers.first().cloned().unwrap_or_default(),
        }
    }

    /// Sends until a server gives a final answer. Returns the answering
    /// server and the response, whose status is a success; error statuses
    /// other than 503 become `Api` errors.
    async fn execute(
        &self,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        body: Option<Bytes>,
        deadline: Instant,
        attempt_timeout: bool,
    ) -> Result<(String, reqwest::Response), ClusterClientError> {
        if self.shared.servers.is_empty() {
            return Err(ClusterClientError::Config(
                "no cluster servers given".into(),
            ));
        }
        let started = Instant::now();
        let mut server = self
            .preferred()
            .unwrap_or_else(|| self.shared.servers[0].clone());
        let mut path = path.to_string();
        let mut redirects = 0u32;
        let mut backoff = BACKOFF_START;
        // Failures since the last pause: after trying every server once,
        // pause before the next round.
        let mut failures_in_round = 0usize;
        let mut last = String::from("no attempt made");
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.unavailable(started, last));
            }
            let url = format!("{}://{}{}", self.shared.scheme, server, path);
            let mut req = self
                .shared
                .http
                .request(method.clone(), &url)
                .headers(headers.clone());
            if let Some(token) = &self.shared.token {
                req = req.bearer_auth(token);
            }
            if let Some(b) = &body {
                req = req
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            let attempt_end = if attempt_timeout {
                deadline.min(now + self.shared.settings.attempt_timeout)
            } else {
                deadline
            };
            let outcome = tokio::time::timeout_at(attempt_end, req.send()).await;
            let failure = match outcome {
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    if status == StatusCode::TEMPORARY_REDIRECT
                        || status == StatusCode::PERMANENT_REDIRECT
                    {
                        redirects += 1;
                        let (leader, leader_path) = redirect_target(&server, &resp)?;
                        if redirects > MAX_REDIRECTS {
                            return Err(ClusterClientError::TooManyRedirects(leader));
                        }
                        tracing::debug!(from = %server, to = %leader, "following redirect to the leader");
                        server = leader;
                        path = leader_path;
                        continue;
                    }
                    if status == StatusCode::SERVICE_UNAVAILABLE {
                        // No leader yet (an election): ask around, slowly.
                        let message = error_message(resp).await;
                        format!("{server}: {message}")
                    } else if status.is_success() {
                        *self.lock_preferred() = Some(server.clone());
                        return Ok((server, resp));
                    } else {
                        *self.lock_preferred() = Some(server.clone());
                        let message = error_message(resp).await;
                        return Err(ClusterClientError::Api {
                            status: status.as_u16(),
                            message,
                        });
                    }
                }
                Ok(Err(e)) => {
                    if let Some(message) = tls_mismatch(self.shared.scheme, &e) {
                        return Err(ClusterClientError::Tls {
                            server,
                            message: message.to_string(),
                        });
                    }
                    format!("{server}: {}", describe_reqwest(&e))
                }
                Err(_) => format!("{server}: no answer in time"),
            };
            tracing::debug!(server = %server, error = %failure, "cluster request attempt failed");
            last = failure;
            redirects = 0;
            failures_in_round += 1;
            let previous = server.clone();
            server = self.next_server(&previous);
            {
                let mut p = self.lock_preferred();
                if p.as_deref() == Some(previous.as_str()) {
                    *p = None;
                }
            }
            if failures_in_round >= self.shared.servers.len() {
                failures_in_round = 0;
                let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    fn unavailable(&self, started: Instant, last: String) -> ClusterClientError {
        ClusterClientError::Unavailable {
            servers: self.shared.servers.join(","),
            waited_ms: started.elapsed().as_millis() as u64,
            last,
        }
    }
}

fn encode_body<B: Serialize>(body: Option<&B>) -> Result<Option<Bytes>, ClusterClientError> {
    body.map(|b| {
        serde_json::to_vec(b)
            .map(Bytes::from)
            .map_err(|e| ClusterClientError::Config(format!("encoding the request body: {e}")))
    })
    .transpose()
}

/// reqwest's Display hides the cause ("error sending request"); the chain
/// says what happened (connection refused, reset, ...).
fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        src = s.source();
    }
    parts.join(": ")
}

/// Says it when a failed request means TLS cannot work with this server
/// whatever we retry: a certificate of another cluster (another token), our
/// certificate refused, or one side speaking HTTPS and the other not.
pub(crate) fn tls_mismatch(scheme: &str, e: &reqwest::Error) -> Option<&'static str> {
    if scheme == "https" {
        if let Some(text) = berth_tls::explain_tls_error(e) {
            return Some(text);
        }
        if chain_has(e, |c| {
            matches!(
                c.downcast_ref::<rustls::Error>(),
                Some(rustls::Error::InvalidMessage(_))
            )
        }) {
            return Some(PLAIN_SERVER);
        }
    } else if chain_has(e, |c| {
        c.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_parse())
    }) {
        // A TLS server's alert is not an HTTP response.
        return Some(TLS_SERVER);
    }
    None
}

/// What an HTTPS client hearing plain HTTP means here.
pub const PLAIN_SERVER: &str = "the server does not speak TLS: it runs without a cluster token, so connect without one (or give the servers the token)";
/// What a plain HTTP client hearing TLS means here.
pub const TLS_SERVER: &str = "the server speaks HTTPS only because the cluster has a token: give it with --token or BERTH_TOKEN";

/// Whether any error in `e`'s chain (stepping into io::Errors, whose
/// `source()` skips what they wrap) satisfies `f`.
fn chain_has(
    e: &(dyn std::error::Error + 'static),
    f: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if f(c) {
            return true;
        }
        cur = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    false
}

/// The leader's `host:port` and path from a redirect's Location, which may
/// be absolute (`http://10.0.0.2:7070/v1/x`) or a path on the same server.
fn redirect_target(
    server: &str,
    resp: &reqwest::Response,
) -> Result<(String, String), ClusterClientError> {
    let bad = |detail: &str| ClusterClientError::BadRedirect {
        server: server.to_string(),
        detail: detail.to_string(),
    };
    let location = resp
        .headers()
        .get(http::header::LOCATION)
        .ok_or_else(|| bad("no Location header"))?
        .to_str()
        .map_err(|_| bad("Location is not text"))?;
    let base = reqwest::Url::parse(&format!("http://{server}/"))
        .map_err(|e| bad(&format!("server address: {e}")))?;
    let url = base
        .join(location)
        .map_err(|e| bad(&format!("Location {location:?}: {e}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| bad(&format!("Location {location:?} has no host")))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| bad(&format!("Location {location:?} has no port")))?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    Ok((format!("{host}:{port}"), path))
}

/// The `message` of a `{"message": ...}` error body, else the body's text,
/// else the status's reason.
async fn error_message(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    if let Ok(err) = serde_json::from_slice::<ClusterError>(&body) {
        return err.message;
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("error")
        )
    } else {
        let line: String = text
            .lines()
            .next()
            .unwrap_or(text)
            .chars()
            .take(400)
            .collect();
        format!(
            "{} {}: {line}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("error")
        )
    }
}

/// Builds a header map from name/value pairs, for [`ClusterClient::send_json`].
pub fn headers(pairs: &[(&str, &str)]) -> Result<HeaderMap, ClusterClientError> {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        let name = HeaderName::try_from(*k)
            .map_err(|_| ClusterClientError::Config(format!("bad header name {k:?}")))?;
        let value = HeaderValue::try_from(*v)
            .map_err(|_| ClusterClientError::Config(format!("bad value for header {k}")))?;
        map.insert(name, value);
    }
    Ok(map)
}

pub use rustls;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::HeaderMap as AxHeaders;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone)]
    struct Srv {
        /// Where to redirect, or None to answer.
        leader: Option<String>,
        name: &'static str,
        hits: Arc<AtomicUsize>,
        /// Answer 503 this many times first.
        unavailable: Arc<AtomicUsize>,
    }

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Echo {
        server: String,
        auth: String,
        body: serde_json::Value,
    }

    async fn handle(
        State(s): State<Srv>,
        headers: AxHeaders,
        uri: axum::http::Uri,
        body: Option<Json<serde_json::Value>>,
    ) -> Response {
        s.hits.fetch_add(1, Ordering::SeqCst);
        if s.unavailable
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(ClusterError {
                    message: "no leader elected yet".into(),
                }),
            )
                .into_response();
        }
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if auth != "Bearer sekrit" {
            return (
                StatusCode::UNAUTHORIZED,
                Json(ClusterError {
                    message: "unauthorized: bad or missing token".into(),
                }),
            )
                .into_response();
        }
        if let Some(leader) = &s.leader {
            let loc = format!(
                "http://{leader}{}",
                uri.path_and_query().map_or("/", |p| p.as_str())
            );
            return (
                StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, loc)],
            )
                .into_response();
        }
        Json(Echo {
            server: s.name.to_string(),
            auth,
            body: body.map(|b| b.0).unwrap_or(serde_json::Value::Null),
        })
        .into_response()
    }

    async fn stream_handler() -> Response {
        let chunks = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"2\n{}")),
            Ok(Bytes::from_static(b"2\n[]")),
        ]);
        (
            [("Mesos-Stream-Id", "s-1")],
            axum::body::Body::from_stream(chunks),
        )
            .into_response()
    }

    struct Running {
        addr: String,
        hits: Arc<AtomicUsize>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        /// Stops accepting and closes idle keep-alive connections.
        async fn stop(mut self) {
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
            let _ = (&mut self.task).await;
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start(name: &'static str, leader: Option<String>, unavailable: usize) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let state = Srv {
            leader,
            name,
            hits: hits.clone(),
            unavailable: Arc::new(AtomicUsize::new(unavailable)),
        };
        let app = Router::new()
            .route("/v1/echo", get(handle).post(handle).delete(handle))
            .route("/v1/stream", post(stream_handler))
            .with_state(state);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Running {
            addr,
            hits,
            stop: Some(tx),
            task,
        }
    }

    /// An address nothing listens on: bound, then closed.
    async fn dead_addr() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    }

    fn token() -> Option<String> {
        Some("sekrit".into())
    }

    #[tokio::test]
    async fn follows_redirect_to_leader_and_keeps_token() {
        let leader = start("leader", None, 0).await;
        let follower = start("follower", Some(leader.addr.clone()), 0).await;
        let c = ClusterClient::new(vec![follower.addr.clone()], token());
        let got: Echo = c
            .post_json("/v1/echo", &serde_json::json!({"x": 1}))
            .await
            .unwrap();
        assert_eq!(got.server, "leader");
        assert_eq!(got.auth, "Bearer sekrit");
        assert_eq!(got.body, serde_json::json!({"x": 1}));
        // The leader is remembered: the next call goes straight there.
        assert_eq!(c.preferred(), Some(leader.addr.clone()));
        let _: Echo = c.get_json("/v1/echo").await.unwrap();
        assert_eq!(follower.hits.load(Ordering::SeqCst), 1);
        assert_eq!(leader.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn redirect_loop_is_bounded() {
        // Two servers pointing at each other.
        let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a1 = l1.local_addr().unwrap().to_string();
        let b = start("b", Some(a1.clone()), 0).await;
        let state = Srv {
            leader: Some(b.addr.clone()),
            name: "a",
            hits: Arc::new(AtomicUsize::new(0)),
            unavailable: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new()
            .route("/v1/echo", get(handle))
            .with_state(state);
        let t = tokio::spawn(async move {
            let _ = axum::serve(l1, app).await;
        });
        let c = ClusterClient::new(vec![a1], token());
        let err = c.get_json::<Echo>("/v1/echo").await.unwrap_err();
        assert!(
            matches!(err, ClusterClientError::TooManyRedirects(_)),
            "{err}"
        );
        t.abort();
    }

    #[tokio::test]
    async fn fails_over_from_dead_server() {
        let dead = dead_addr().await;
        let live = start("live", None, 0).await;
        let c = ClusterClient::new(vec![dead.clone(), live.addr.clone()], token());
        let got: Echo = c.get_json("/v1/echo").await.unwrap();
        assert_eq!(got.server, "live");
        assert_eq!(c.preferred(), Some(live.addr.clone()));
        // The preferred server is tried first afterwards.
        let _: Echo = c.delete_json("/v1/echo").await.unwrap();
        assert_eq!(live.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn preferred_server_dies_then_next_is_used() {
        let a = start("a", None, 0).await;
        let b = start("b", None, 0).await;
        let c = ClusterClient::new(vec![a.addr.clone(), b.addr.clone()], token());
        let got: Echo = c.get_json("/v1/echo").await.unwrap();
        assert_eq!(got.server, "a");
        a.stop().await;
        let got: Echo = c.get_json("/v1/echo").await.unwrap();
        assert_eq!(got.server, "b");
    }

    #[tokio::test]
    async fn retries_while_no_leader() {
        let s = start("s", None, 3).await;
        let c = ClusterClient::new(vec![s.addr.clone()], token());
        let got: Echo = c.get_json("/v1/echo").await.unwrap();
        assert_eq!(got.server, "s");
        assert_eq!(s.hits.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn deadline_when_nothing_answers() {
        let c = ClusterClient::new(vec![dead_addr().await, dead_addr().await], token())
            .with_deadline(Duration::from_millis(300));
        let t0 = std::time::Instant::now();
        let err = c.get_json::<Echo>("/v1/echo").await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        let text = err.to_string();
        assert!(
            text.starts_with("no cluster server answered within"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn error_message_is_verbatim() {
        let s = start("s", None, 0).await;
        let c = ClusterClient::new(vec![s.addr.clone()], Some("wrong".into()));
        let err = c.get_json::<Echo>("/v1/echo").await.unwrap_err();
        assert_eq!(err.status(), Some(401));
        assert_eq!(err.to_string(), "unauthorized: bad or missing token");
        // Not JSON: status and text.
        let err = c.get_json::<Echo>("/nope").await.unwrap_err();
        assert_eq!(err.status(), Some(404));
        assert!(err.to_string().starts_with("404 Not Found"), "{err}");
    }

    #[tokio::test]
    async fn stream_and_headers() {
        let s = start("s", None, 0).await;
        let c = ClusterClient::new(vec![format!("http://{}/", s.addr)], token());
        let (headers, mut stream) = c
            .post_stream("/v1/stream", &serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(headers.get("mesos-stream-id").unwrap(), "s-1");
        let mut all = Vec::new();
        while let Some(chunk) = stream.next().await {
            all.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(all, b"2\n{}2\n[]");
    }

    #[test]
    fn tls_config_plugs_in() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let c = ClusterClient::new(vec!["h:1".into()], None)
            .with_tls(config)
            .unwrap()
            .with_deadline(Duration::from_secs(1));
        assert_eq!(c.shared.scheme, "https");
        assert!(format!("{c:?}").contains("tls: true"));
    }

    const TLS_TOKEN: &str = "t0123456789abcdef-cluster";

    /// A TLS server of the cluster of `token` answering who called.
    async fn start_tls(token: &str) -> (String, tokio::task::JoinHandle<()>) {
        let ca = berth_tls::ClusterCa::from_token(token).unwrap();
        let id = ca.issue_server("1", &[]).unwrap();
        let tls = berth_tls::server_config(&ca, &id).unwrap();
        let app = Router::new().route(
            "/v1/who",
            get(|peer: berth_tls::PeerIdentity, h: AxHeaders| async move {
                let auth = h
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                Json(serde_json::json!({
                    "cn": peer.common_name().unwrap_or("none"),
                    "auth": auth,
                }))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(berth_tls::serve_tls(
            listener,
            tls,
            app,
            std::future::pending(),
        ));
        (addr, task)
    }

    #[tokio::test]
    async fn https_under_the_cluster_ca_with_and_without_a_certificate() {
        let (addr, task) = start_tls(TLS_TOKEN).await;
        let c =
            ClusterClient::for_cluster(vec![addr.clone()], Some(TLS_TOKEN.into()), None).unwrap();
        assert_eq!(c.shared.scheme, "https");
        let v: serde_json::Value = c.get_json("/v1/who").await.unwrap();
        assert_eq!(v["cn"], "none");
        assert_eq!(v["auth"], format!("Bearer {TLS_TOKEN}"));
        // An agent presents its certificate.
        let ca = berth_tls::ClusterCa::from_token(TLS_TOKEN).unwrap();
        let (key_pem, csr) = berth_tls::agent_key_and_csr("a1").unwrap();
        let cert_pem = ca.sign_agent_csr(&csr, "a1").unwrap();
        let id = berth_tls::Identity { cert_pem, key_pem };
        let c = ClusterClient::for_cluster(vec![addr], Some(TLS_TOKEN.into()), Some(&id)).unwrap();
        let v: serde_json::Value = c.get_json("/v1/who").await.unwrap();
        assert_eq!(v["cn"], "agent:a1");
        task.abort();
    }

    #[tokio::test]
    async fn tls_mismatches_fail_at_once_and_say_what_to_change() {
        let (addr, task) = start_tls(TLS_TOKEN).await;
        let plain = start("plain", None, 0).await;
        let cases: Vec<(ClusterClient, &str)> = vec![
            // Another cluster's token: the server's certificate is foreign.
            (
                ClusterClient::for_cluster(
                    vec![addr.clone()],
                    Some("t0123456789abcdef-elsewhere".into()),
                    None,
                )
                .unwrap(),
                "wrong --token",
            ),
            // No token against a cluster that has one.
            (
                ClusterClient::for_cluster(vec![addr.clone()], None, None).unwrap(),
                TLS_SERVER,
            ),
            // A token against a cluster without one.
            (
                ClusterClient::for_cluster(vec![plain.addr.clone()], Some(TLS_TOKEN.into()), None)
                    .unwrap(),
                PLAIN_SERVER,
            ),
        ];
        for (c, want) in cases {
            let t0 = std::time::Instant::now();
            let err = c
                .get_json::<serde_json::Value>("/v1/who")
                .await
                .unwrap_err();
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "{err} took {:?}",
                t0.elapsed()
            );
            assert!(err.is_auth_failure(), "{err:?}");
            assert!(matches!(err, ClusterClientError::Tls { .. }), "{err:?}");
            assert!(err.to_string().contains(want), "{err}");
            assert_eq!(err.to_string().lines().count(), 1, "{err}");
        }
        let err = ClusterClient::for_cluster(vec![addr], Some("short".into()), None).unwrap_err();
        assert!(matches!(err, ClusterClientError::Token(_)), "{err:?}");
        assert!(err.to_string().contains("too short"), "{err}");
        task.abort();
    }

    #[test]
    fn debug_hides_token() {
        let c = ClusterClient::new(vec!["h:1".into()], Some("topsecret".into()));
        assert!(!format!("{c:?}").contains("topsecret"));
        assert_eq!(normalize_server(" https://a:1/ "), "a:1");
        assert!(headers(&[("Mesos-Stream-Id", "x")]).is_ok());
        assert!(headers(&[("bad header", "x")]).is_err());
    }
}
