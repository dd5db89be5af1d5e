//! Management API routes: RabbitMQ's paths, JSON field names and error bodies,
//! so rabbitmqadmin-style scripts and curl one-liners keep working.
//!
//! Authorization (RabbitMQ's user tags): `administrator` may do everything;
//! `monitoring` may read everything; `management` may read the vhosts it has
//! permissions in, see its own connections, and change queues, exchanges and
//! bindings its permissions allow.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use berth_amqp::{AmqpError, ReplyCode};
use serde_json::{json, Value};

use super::Mgmt;
use crate::admin::{self, BindingRow, ExchangeRow, QueueInfo};
use crate::auth::{Access, User};
use crate::broker::BrokerError;
use crate::definitions::{self, JsonMap, PermissionDef, PolicyDef, Tags, UserDef};
use crate::model::{ExchangeDecl, QueueDecl, Vhost};
use crate::server::registry::{ChannelInfo, ConnectionInfo};
use crate::types::ConnectionId;
use crate::Broker;

/// The owner the management API acts as (no AMQP connection; exclusive queues
/// of connections stay out of reach).
pub(super) const MGMT_OWNER: ConnectionId = 0;

/// RabbitMQ's API compatibility level (its version whose API this mirrors);
/// berth's own version is in `product_version`.
const RABBITMQ_API_VERSION: &str = "3.10.0";

/// All `/api/...` routes.
pub fn routes() -> Router<Mgmt> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/nodes", get(nodes))
        .route("/api/healthchecks/alarms", get(alarms))
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/connections", get(connections))
        .route(
            "/api/connections/{name}",
            get(connection).delete(close_connection),
        )
        .route("/api/channels", get(channels))
        .route("/api/exchanges", get(exchanges))
        .route("/api/exchanges/{vhost}", get(exchanges_in))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchange).put(put_exchange).delete(delete_exchange),
        )
        .route("/api/queues", get(queues))
        .route("/api/queues/{vhost}", get(queues_in))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queue).put(put_queue).delete(delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(purge_queue),
        )
        .route("/api/queues/{vhost}/{name}/bindings", get(queue_bindings))
        .route("/api/queues/{vhost}/{name}/get", post(super::messages::get))
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(super::messages::publish),
        )
        .route("/api/bindings", get(bindings))
        .route("/api/bindings/{vhost}", get(bindings_in))
        .route(
            "/api/bindings/{vhost}/e/{src}/{kind}/{dst}",
            get(bindings_between).post(add_binding),
        )
        .route(
            "/api/bindings/{vhost}/e/{src}/{kind}/{dst}/{props}",
            get(binding).delete(delete_binding),
        )
        .route("/api/users", get(users))
        .route(
            "/api/users/{name}",
            get(user).put(put_user).delete(delete_user),
        )
        .route("/api/users/{name}/permissions", get(user_permissions))
        .route("/api/vhosts", get(vhosts))
        .route(
            "/api/vhosts/{name}",
            get(vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/api/vhosts/{name}/permissions", get(vhost_permissions))
        .route("/api/permissions", get(permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/api/policies", get(policies))
        .route("/api/policies/{vhost}", get(policies_in))
        .route(
            "/api/policies/{vhost}/{name}",
            get(policy).put(put_policy).delete(delete_policy),
        )
        .route(
            "/api/definitions",
            get(get_definitions).post(post_definitions),
        )
        .fallback(|| async { ApiError::not_found() })
}

// ---------------------------------------------------------------- errors

/// An error answer: `{"error": ..., "reason": ...}` as RabbitMQ sends them.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub reason: String,
}

impl ApiError {
    pub fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error: "Object Not Found",
            reason: "Not Found".into(),
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            reason: reason.into(),
        }
    }

    fn unauthorised(reason: &str) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorised",
            reason: reason.into(),
        }
    }

    fn forbidden(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            error: "not_authorised",
            reason: reason.into(),
        }
    }

    pub(super) fn internal(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "internal_server_error",
            reason: reason.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": self.error, "reason": self.reason}));
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"RabbitMQ Management\"",
            )];
            return (self.status, challenge, body).into_response();
        }
        (self.status, body).into_response()
    }
}

impl From<AmqpError> for ApiError {
    fn from(e: AmqpError) -> Self {
        match e.code {
            ReplyCode::NotFound => ApiError::not_found(),
            ReplyCode::AccessRefused => ApiError {
                status: StatusCode::FORBIDDEN,
                error: "access_refused",
                reason: e.text,
            },
            ReplyCode::PreconditionFailed
            | ReplyCode::ResourceLocked
            | ReplyCode::CommandInvalid
            | ReplyCode::SyntaxError
            | ReplyCode::NotAllowed
            | ReplyCode::InvalidPath
            | ReplyCode::NotImplemented => ApiError::bad_request(e.text),
            _ => ApiError::internal(e.text),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::NoVhost(_) | BrokerError::NoUser(_) => ApiError::not_found(),
            BrokerError::Meta(_) => ApiError::internal(e.to_string()),
            _ => ApiError::bad_request(e.to_string()),
        }
    }
}

pub(super) type ApiResult = Result<Response, ApiError>;

// ---------------------------------------------------------------- auth

/// An authenticated user with one of the management tags.
pub struct Caller {
    pub user: Arc<User>,
}

/// A caller tagged administrator.
pub struct Admin(pub Caller);

impl Caller {
    fn admin(&self) -> bool {
        self.user.has_tag("administrator")
    }

    /// May see every vhost's objects and every connection.
    fn sees_all(&self) -> bool {
        self.admin() || self.user.has_tag("monitoring")
    }

    fn sees(&self, broker: &Broker, vhost: &str) -> bool {
        self.sees_all() || broker.users.can_access_vhost(&self.user.name, vhost)
    }

    /// May change `resource` in `vhost` for `access` (administrators always;
    /// others as their AMQP permissions allow).
    pub(super) fn may(
        &self,
        broker: &Broker,
        vhost: &str,
        access: Access,
        resource: &str,
    ) -> Result<(), ApiError> {
        if self.admin() || broker.users.check(&self.user.name, vhost, access, resource) {
            return Ok(());
        }
        let what = match access {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        };
        Err(ApiError::forbidden(format!(
            "access to '{resource}' in vhost '{vhost}' refused for user '{}': no {what} permission",
            self.user.name
        )))
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

impl FromRequestParts<Mgmt> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Mgmt) -> Result<Self, ApiError> {
        let Some((name, password)) = basic_credentials(&parts.headers) else {
            return Err(ApiError::unauthorised("Login failed"));
        };
        // Without the peer address (only in-process tests), count as remote so
        // loopback-only users such as guest are refused rather than let through.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let user = state
            .broker
            .users
            .authenticate(&name, &password, peer)
            .map_err(|_| ApiError::unauthorised("Login failed"))?;
        if !["administrator", "monitoring", "management", "policymaker"]
            .iter()
            .any(|t| user.has_tag(t))
        {
            return Err(ApiError::unauthorised("Not management user"));
        }
        Ok(Caller { user })
    }
}

impl FromRequestParts<Mgmt> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Mgmt) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if !caller.admin() {
            return Err(ApiError::forbidden("Not administrator user"));
        }
        Ok(Admin(caller))
    }
}

// ---------------------------------------------------------------- body helpers

/// The request body as a JSON object (an empty body is `{}`).
pub(super) fn object(body: &Bytes) -> Result<JsonMap, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(JsonMap::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("body: expected a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("body: {e}"))),
    }
}

pub(super) fn field_bool(m: &JsonMap, name: &str, default: bool) -> Result<bool, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        // rabbitmqadmin sends "true"/"false" strings from its command line.
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(_) => Err(ApiError::bad_request(format!(
            "field '{name}': expected a boolean"
        ))),
    }
}

pub(super) fn field_str<'a>(m: &'a JsonMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!(
            "field '{name}': expected a string"
        ))),
    }
}

pub(super) fn required_str<'a>(m: &'a JsonMap, name: &str) -> Result<&'a str, ApiError> {
    field_str(m, name)?.ok_or_else(|| ApiError::bad_request(format!("field '{name}' is missing")))
}

pub(super) fn field_object(m: &JsonMap, name: &str) -> Result<JsonMap, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(JsonMap::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(_) => Err(ApiError::bad_request(format!(
            "field '{name}': expected a JSON object"
        ))),
    }
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v == "true")
}

fn created(was_new: bool) -> Response {
    if was_new {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

pub(super) fn json_ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

pub(super) fn vhost_of(broker: &Broker, name: &str) -> Result<Arc<Vhost>, ApiError> {
    broker.vhost(name).ok_or_else(ApiError::not_found)
}

/// The default exchange is `amq.default` in URLs and `""` everywhere else.
pub(super) fn exchange_name(url_name: &str) -> &str {
    if url_name == "amq.default" {
        ""
    } else {
        url_name
    }
}

fn node_name() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    format!("berth@{}", host.trim())
}

/// Runs blocking broker work (metadata changes fsync; listings lock every
/// queue) off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("management task: {e}")))
}

// ---------------------------------------------------------------- overview

async fn overview(State(s): State<Mgmt>, _c: Caller) -> ApiResult {
    let b = s.broker.clone();
    let rates = s.rates.clone();
    let (o, totals) = blocking(move || (admin::overview(&b), b.message_totals())).await?;
    let (publish_rate, deliver_rate) = rates.totals();
    let config = &s.broker.config;
    let mut listeners = Vec::new();
    for (protocol, addr) in [
        ("amqp", config.listen),
        ("amqp/ssl", config.tls_listen),
        ("http", config.management),
    ] {
        if let Some(a) = addr {
            listeners.push(json!({"node": node_name(), "protocol": protocol, "ip_address": a.ip().to_string(), "port": a.port()}));
        }
    }
    json_ok(json!({
        "management_version": RABBITMQ_API_VERSION,
        "rabbitmq_version": RABBITMQ_API_VERSION,
        "product_name": "berth",
        "product_version": o.version,
        "node": node_name(),
        "cluster_name": node_name(),
        "object_totals": {
            "connections": o.connections,
            "channels": o.channels,
            "consumers": o.consumers,
            "exchanges": o.exchanges,
            "queues": o.queues,
        },
        "queue_totals": {
            "messages": o.messages,
            "messages_ready": o.messages_ready,
            "messages_unacknowledged": o.messages_unacknowledged,
        },
        "message_stats": {
            "publish": totals.0,
            "publish_details": {"rate": publish_rate},
            "deliver_get": totals.1,
            "deliver_get_details": {"rate": deliver_rate},
        },
        "listeners": listeners,
        "uptime_ms": o.uptime_ms,
        "memory_used": o.memory_used,
        "memory_limit": o.memory_limit,
        "disk_free": o.disk_free,
        "disk_free_limit": o.disk_free_limit,
        "alarms": o.alarms,
    }))
}

async fn whoami(c: Caller) -> ApiResult {
    json_ok(json!({"name": c.user.name, "tags": c.user.tags}))
}

async fn nodes(State(s): State<Mgmt>, _c: Caller) -> ApiResult {
    let (rss, mem_limit, disk_free, disk_limit) = s.broker.flow.readings();
    let alarm = s.broker.flow.alarm();
    json_ok(json!([{
        "name": node_name(),
        "type": "disc",
        "running": true,
        "mem_used": rss,
        "mem_limit": mem_limit,
        "mem_alarm": alarm == Some("memory"),
        "disk_free": disk_free,
        "disk_free_limit": disk_limit,
        "disk_free_alarm": alarm == Some("disk"),
        "uptime": crate::types::now_ms().saturating_sub(s.broker.started_at_ms),
    }]))
}

/// 200 `{"status":"ok"}` without alarms, 503 with the alarm named otherwise.
async fn alarms(State(s): State<Mgmt>, _c: Caller) -> Response {
    match s.broker.flow.alarm() {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(resource) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "failed",
                "reason": format!("resource alarm(s) in effect: {resource}"),
            })),
        )
            .into_response(),
    }
}

// ---------------------------------------------------------------- connections, channels

fn connection_json(c: &ConnectionInfo) -> Value {
    let (peer_host, peer_port) = match c.peer.parse::<SocketAddr>() {
        Ok(a) => (a.ip().to_string(), a.port()),
        Err(_) => (c.peer.clone(), 0),
    };
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("node".into(), node_name().into());
        m.insert("protocol".into(), "AMQP 0-9-1".into());
        m.insert("type".into(), "network".into());
        m.insert("ssl".into(), c.tls.into());
        m.insert("timeout".into(), c.heartbeat.into());
        m.insert("recv_oct".into(), c.recv_bytes.into());
        m.insert("send_oct".into(), c.send_bytes.into());
        m.insert("connected_at".into(), c.connected_at_ms.into());
        m.insert("peer_host".into(), peer_host.into());
        m.insert("peer_port".into(), peer_port.into());
    }
    v
}

fn channel_json(c: &ChannelInfo) -> Value {
    json!({
        "name": format!("{} ({})", c.connection, c.number),
        "connection_details": {"name": c.connection},
        "number": c.number,
        "user": c.user,
        "vhost": c.vhost,
        "node": node_name(),
        "state": "running",
        "consumer_count": c.consumers,
        "messages_unacknowledged": c.unacked,
        "prefetch_count": c.prefetch,
        "confirm": c.confirm,
        "transactional": c.transactional,
    })
}

async fn connections(State(s): State<Mgmt>, c: Caller) -> ApiResult {
    let list = admin::connections(&s.broker, None);
    let visible = list
        .iter()
        .filter(|x| c.sees_all() || x.user == c.user.name);
    json_ok(Value::Array(visible.map(connection_json).collect()))
}

async fn connection(State(s): State<Mgmt>, c: Caller, Path(name): Path<String>) -> ApiResult {
    let list = admin::connections(&s.broker, None);
    let found = list
        .iter()
        .find(|x| x.name == name && (c.sees_all() || x.user == c.user.name));
    json_ok(connection_json(found.ok_or_else(ApiError::not_found)?))
}

async fn close_connection(
    State(s): State<Mgmt>,
    c: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    // Users may close their own connections, administrators any.
    let own = c.admin()
        || admin::connections(&s.broker, None)
            .iter()
            .any(|x| x.name == name && x.user == c.user.name);
    if !own {
        return Err(ApiError::not_found());
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin")
        .to_string();
    if s.broker.registry.close(&name, &reason) {
        Ok(no_content())
    } else {
        Err(ApiError::not_found())
    }
}

async fn channels(State(s): State<Mgmt>, c: Caller) -> ApiResult {
    let list = admin::channels(&s.broker, None);
    let visible = list
        .iter()
        .filter(|x| c.sees_all() || x.user == c.user.name);
    json_ok(Value::Array(visible.map(channel_json).collect()))
}

// ---------------------------------------------------------------- exchanges

fn exchange_json(r: &ExchangeRow) -> Value {
    json!({
        "name": r.exchange.name,
        "vhost": r.vhost,
        "type": r.exchange.kind,
        "durable": r.exchange.durable,
        "auto_delete": r.exchange.auto_delete,
        "internal": r.exchange.internal,
        "arguments": r.exchange.arguments,
    })
}

async fn list_exchanges(s: &Mgmt, c: &Caller, vhost: Option<String>) -> ApiResult {
    if let Some(v) = &vhost {
        if s.broker.vhost(v).is_none() || !c.sees(&s.broker, v) {
            return Err(ApiError::not_found());
        }
    }
    let b = s.broker.clone();
    let rows = blocking(move || admin::exchanges(&b, vhost.as_deref())).await?;
    let visible = rows.iter().filter(|r| c.sees(&s.broker, &r.vhost));
    json_ok(Value::Array(visible.map(exchange_json).collect()))
}

async fn exchanges(State(s): State<Mgmt>, c: Caller) -> ApiResult {
    list_exchanges(&s, &c, None).await
}

async fn exchanges_in(State(s): State<Mgmt>, c: Caller, Path(vhost): Path<String>) -> ApiResult {
    list_exchanges(&s, &c, Some(vhost)).await
}

fn find_exchange(broker: &Broker, vhost: &str, name: &str) -> Option<ExchangeRow> {
    admin::exchanges(broker, Some(vhost))
        .into_iter()
        .find(|r| r.exchange.name == name)
}

async fn exchange(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    if !c.sees(&s.broker, &vhost) {
        return Err(ApiError::not_found());
    }
    let row =
        find_exchange(&s.broker, &vhost, exchange_name(&name)).ok_or_else(ApiError::not_found)?;
    json_ok(exchange_json(&row))
}

async fn put_exchange(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let m = object(&body)?;
    let v = vhost_of(&s.broker, &vhost)?;
    c.may(&s.broker, &vhost, Access::Configure, &name)?;
    let decl = ExchangeDecl {
        name: name.clone(),
        kind: required_str(&m, "type")?.to_string(),
        passive: false,
        durable: field_bool(&m, "durable", true)?,
        auto_delete: field_bool(&m, "auto_delete", false)?,
        internal: field_bool(&m, "internal", false)?,
        arguments: definitions::json_to_field_table(&field_object(&m, "arguments")?),
    };
    let b = s.broker.clone();
    blocking(move || {
        let existed = find_exchange(&b, &vhost, &name).is_some();
        v.declare_exchange(decl)?;
        Ok(created(!existed))
    })
    .await?
}

async fn delete_exchange(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let v = vhost_of(&s.broker, &vhost)?;
    let name = exchange_name(&name).to_string();
    c.may(&s.broker, &vhost, Access::Configure, &name)?;
    let if_unused = flag(&q, "if-unused");
    let b = s.broker.clone();
    blocking(move || {
        if find_exchange(&b, &vhost, &name).is_none() {
            return Err(ApiError::not_found());
        }
        v.delete_exchange(&name, if_unused)?;
        Ok(no_content())
    })
    .await?
}

// ---------------------------------------------------------------- queues

fn queue_json(q: &QueueInfo) -> Value {
    json!({
        "name": q.name,
        "vhost": q.vhost,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive,
        "arguments": q.arguments,
        "node": node_name(),
        "state": "running",
        "type": "classic",
        "messages": q.messages,
        "messages_ready": q.messages_ready,
        "messages_unacknowledged": q.messages_unacknowledged,
        "message_bytes": q.message_bytes,
        "consumers": q.consumers,
        "message_stats": {
            "publish": q.published_total,
            "publish_details": {"rate": q.publish_rate},
            "deliver_get": q.delivered_total,
            "deliver_get_details": {"rate": q.deliver_rate},
        },
    })
}

async fn list_queues(s: &Mgmt, c: &Caller, vhost: Option<String>) -> ApiResult {
    if let Some(v) = &vhost {
        if s.broker.vhost(v).is_none() || !c.sees(&s.broker, v) {
            return Err(ApiError::not_found());
        }
    }
    let (b, rates) = (s.broker.clone(), s.rates.clone());
    let rows =
        blocking(move || admin::queues_with_rates(&b, vhost.as_deref(), Some(&rates))).await?;
    let visible = rows.iter().filter(|r| c.sees(&s.broker, &r.vhost));
    json_ok(Value::Array(visible.map(queue_json).collect()))
}

async fn queues(State(s): State<Mgmt>, c: Caller) -> ApiResult {
    list_queues(&s, &c, None).await
}

async fn queues_in(State(s): State<Mgmt>, c: Caller, Path(vhost): Path<String>) -> ApiResult {
    list_queues(&s, &c, Some(vhost)).await
}

fn find_queue(broker: &Broker, vhost: &str, name: &str) -> Option<Arc<crate::model::Queue>> {
    broker
        .vhost(vhost)?
        .queues()
        .into_iter()
        .find(|q| &*q.name == name)
}

async fn queue(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    if !c.sees(&s.broker, &vhost) {
        return Err(ApiError::not_found());
    }
    let q = find_queue(&s.broker, &vhost, &name).ok_or_else(ApiError::not_found)?;
    json_ok(queue_json(&admin::queue_info(&q, Some(&s.rates))))
}

async fn put_queue(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let m = object(&body)?;
    let v = vhost_of(&s.broker, &vhost)?;
    if name.is_empty() {
        return Err(ApiError::bad_request("queue name must not be empty"));
    }
    c.may(&s.broker, &vhost, Access::Configure, &name)?;
    let decl = QueueDecl {
        name: name.clone(),
        passive: false,
        durable: field_bool(&m, "durable", true)?,
        exclusive: false,
        auto_delete: field_bool(&m, "auto_delete", false)?,
        arguments: definitions::json_to_field_table(&field_object(&m, "arguments")?),
    };
    let b = s.broker.clone();
    blocking(move || {
        let existed = find_queue(&b, &vhost, &name).is_some();
        v.declare_queue(decl, MGMT_OWNER)?;
        Ok(created(!existed))
    })
    .await?
}

async fn delete_queue(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let v = vhost_of(&s.broker, &vhost)?;
    c.may(&s.broker, &vhost, Access::Configure, &name)?;
    let (if_unused, if_empty) = (flag(&q, "if-unused"), flag(&q, "if-empty"));
    let b = s.broker.clone();
    blocking(move || {
        // queue.delete of a missing queue succeeds in AMQP; the API says 404.
        if find_queue(&b, &vhost, &name).is_none() {
            return Err(ApiError::not_found());
        }
        v.delete_queue(&name, if_unused, if_empty, MGMT_OWNER)?;
        Ok(no_content())
    })
    .await?
}

async fn purge_queue(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let v = vhost_of(&s.broker, &vhost)?;
    c.may(&s.broker, &vhost, Access::Read, &name)?;
    blocking(move || {
        v.purge_queue(&name, MGMT_OWNER)?;
        Ok(no_content())
    })
    .await?
}

async fn queue_bindings(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    if !c.sees(&s.broker, &vhost) || find_queue(&s.broker, &vhost, &name).is_none() {
        return Err(ApiError::not_found());
    }
    let rows = admin::bindings(&s.broker, Some(&vhost));
    let mine = rows
        .iter()
        .filter(|r| r.binding.destination_type == "queue" && r.binding.destination == name);
    json_ok(Value::Array(mine.map(binding_json).collect()))
}

// ---------------------------------------------------------------- bindings

/// RabbitMQ's `properties_key`: the routing key (`~` when empty), plus `~` and
/// a hash of the arguments when there are any. It names one binding in URLs.
pub fn properties_key(routing_key: &str, arguments: &JsonMap) -> String {
    use sha2::Digest;
    let key = if routing_key.is_empty() {
        "~".to_string()
    } else {
        routing_key.to_string()
    };
    if arguments.is_empty() {
        return key;
    }
    let digest = sha2::Sha256::digest(serde_json::to_vec(arguments).unwrap_or_default());
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..9]);
    if routing_key.is_empty() {
        format!("~{hash}")
    } else {
        format!("{key}~{hash}")
    }
}

fn binding_json(r: &BindingRow) -> Value {
    let b = &r.binding;
    json!({
        "source": b.source,
        "vhost": r.vhost,
        "destination": b.destination,
        "destination_type": b.destination_type,
        "routing_key": b.routing_key,
        "arguments": b.arguments,
        "properties_key": properties_key(&b.routing_key, &b.arguments),
    })
}

async fn list_bindings(s: &Mgmt, c: &Caller, vhost: Option<String>) -> ApiResult {
    if let Some(v) = &vhost {
        if s.broker.vhost(v).is_none() || !c.sees(&s.broker, v) {
            return Err(ApiError::not_found());
        }
    }
    let b = s.broker.clone();
    let rows = blocking(move || admin::bindings(&b, vhost.as_deref())).await?;
    let visible = rows.iter().filter(|r| c.sees(&s.broker, &r.vhost));
    json_ok(Value::Array(visible.map(binding_json).collect()))
}

async fn bindings(State(s): State<Mgmt>, c: Caller) -> ApiResult {
    list_bindings(&s, &c, None).await
}

async fn bindings_in(State(s): State<Mgmt>, c: Caller, Path(vhost): Path<String>) -> ApiResult {
    list_bindings(&s, &c, Some(vhost)).await
}

/// `q` or `e` in `/api/bindings/{vhost}/e/{src}/{kind}/{dst}`.
fn destination_type(kind: &str) -> Result<&'static str, ApiError> {
    match kind {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::not_found()),
    }
}

fn bindings_matching(
    broker: &Broker,
    vhost: &str,
    src: &str,
    dtype: &str,
    dst: &str,
) -> Vec<BindingRow> {
    admin::bindings(broker, Some(vhost))
        .into_iter()
        .filter(|r| {
            r.binding.source == src
                && r.binding.destination_type == dtype
                && r.binding.destination == dst
        })
        .collect()
}

async fn bindings_between(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, src, kind, dst)): Path<(String, String, String, String)>,
) -> ApiResult {
    let dtype = destination_type(&kind)?;
    if s.broker.vhost(&vhost).is_none() || !c.sees(&s.broker, &vhost) {
        return Err(ApiError::not_found());
    }
    let rows = bindings_matching(&s.broker, &vhost, exchange_name(&src), dtype, &dst);
    json_ok(Value::Array(rows.iter().map(binding_json).collect()))
}

async fn add_binding(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, src, kind, dst)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let dtype = destination_type(&kind)?;
    let m = object(&body)?;
    let v = vhost_of(&s.broker, &vhost)?;
    let src = exchange_name(&src).to_string();
    c.may(&s.broker, &vhost, Access::Write, &dst)?;
    c.may(
        &s.broker,
        &vhost,
        Access::Read,
        if src.is_empty() { "amq.default" } else { &src },
    )?;
    let routing_key = field_str(&m, "routing_key")?.unwrap_or("").to_string();
    let arguments = field_object(&m, "arguments")?;
    let table = definitions::json_to_field_table(&arguments);
    let location = properties_key(&routing_key, &arguments);
    blocking(move || {
        if dtype == "queue" {
            v.bind_queue(&dst, &src, &routing_key, &table, MGMT_OWNER)?;
        } else {
            v.bind_exchange(&dst, &src, &routing_key, &table)?;
        }
        Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
    })
    .await?
}

async fn binding(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, src, kind, dst, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let dtype = destination_type(&kind)?;
    if !c.sees(&s.broker, &vhost) {
        return Err(ApiError::not_found());
    }
    let rows = bindings_matching(&s.broker, &vhost, exchange_name(&src), dtype, &dst);
    let found = rows
        .iter()
        .find(|r| properties_key(&r.binding.routing_key, &r.binding.arguments) == props)
        .ok_or_else(ApiError::not_found)?;
    json_ok(binding_json(found))
}

async fn delete_binding(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, src, kind, dst, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let dtype = destination_type(&kind)?;
    let v = vhost_of(&s.broker, &vhost)?;
    let src = exchange_name(&src).to_string();
    c.may(&s.broker, &vhost, Access::Write, &dst)?;
    c.may(
        &s.broker,
        &vhost,
        Access::Read,
        if src.is_empty() { "amq.default" } else { &src },
    )?;
    let rows = bindings_matching(&s.broker, &vhost, &src, dtype, &dst);
    let found = rows
        .into_iter()
        .find(|r| properties_key(&r.binding.routing_key, &r.binding.arguments) == props)
        .ok_or_else(ApiError::not_found)?;
    let table = definitions::json_to_field_table(&found.binding.arguments);
    blocking(move || {
        if dtype == "queue" {
            v.unbind_queue(&dst, &src, &found.binding.routing_key, &table, MGMT_OWNER)?;
        } else {
            v.unbind_exchange(&dst, &src, &found.binding.routing_key, &table)?;
        }
        Ok(no_content())
    })
    .await?
}

// ---------------------------------------------------------------- users

fn user_json(u: &UserDef) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": u.tags.to_vec(),
    })
}

async fn users(State(s): State<Mgmt>, _a: Admin) -> ApiResult {
    json_ok(Value::Array(
        admin::users(&s.broker).iter().map(user_json).collect(),
    ))
}

async fn user(State(s): State<Mgmt>, _a: Admin, Path(name): Path<String>) -> ApiResult {
    json_ok(user_json(
        &s.broker.users.get(&name).ok_or_else(ApiError::not_found)?,
    ))
}

/// `tags` as RabbitMQ takes it: "a,b" or ["a", "b"].
fn tags_field(m: &JsonMap) -> Result<Option<Vec<String>>, ApiError> {
    match m.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value::<Tags>(v.clone())
            .map(|t| Some(t.to_vec()))
            .map_err(|_| {
                ApiError::bad_request("field 'tags': expected a string or a list of strings")
            }),
    }
}

async fn put_user(
    State(s): State<Mgmt>,
    _a: Admin,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let m = object(&body)?;
    if name.is_empty() {
        return Err(ApiError::bad_request("user name must not be empty"));
    }
    let password = field_str(&m, "password")?.map(String::from);
    let hash = field_str(&m, "password_hash")?.map(String::from);
    let algorithm = field_str(&m, "hashing_algorithm")?.map(String::from);
    let tags = tags_field(&m)?;
    let b = s.broker.clone();
    blocking(move || {
        let existing = b.users.get(&name);
        // Tags left out keep the user's current tags (a password change does not demote).
        let tags = tags.unwrap_or_else(|| {
            existing
                .as_ref()
                .map(|u| u.tags.to_vec())
                .unwrap_or_default()
        });
        match (password, hash) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give either field 'password' or 'password_hash', not both",
                ))
            }
            (None, Some(hash)) => {
                let def = UserDef {
                    name: name.clone(),
                    password_hash: hash,
                    hashing_algorithm: algorithm
                        .unwrap_or_else(|| "rabbit_password_hashing_sha256".into()),
                    tags: Tags::List(tags),
                };
                b.put_user_def(def)?;
            }
            (password, None) => b.put_user(&name, password.as_deref(), tags)?,
        }
        Ok(created(existing.is_none()))
    })
    .await?
}

async fn delete_user(State(s): State<Mgmt>, _a: Admin, Path(name): Path<String>) -> ApiResult {
    let b = s.broker.clone();
    blocking(move || {
        b.delete_user(&name)?;
        Ok(no_content())
    })
    .await?
}

async fn user_permissions(State(s): State<Mgmt>, _a: Admin, Path(name): Path<String>) -> ApiResult {
    if s.broker.users.get(&name).is_none() {
        return Err(ApiError::not_found());
    }
    let list: Vec<PermissionDef> = admin::permissions(&s.broker, None)
        .into_iter()
        .filter(|p| p.user == name)
        .collect();
    json_ok(json!(list))
}

// ---------------------------------------------------------------- vhosts

async fn vhosts(State(s): State<Mgmt>, c: Caller) -> ApiResult {
    let b = s.broker.clone();
    let list = blocking(move || admin::vhosts(&b)).await?;
    let visible: Vec<_> = list
        .into_iter()
        .filter(|v| c.sees(&s.broker, &v.name))
        .collect();
    json_ok(json!(visible))
}

async fn vhost(State(s): State<Mgmt>, c: Caller, Path(name): Path<String>) -> ApiResult {
    if !c.sees(&s.broker, &name) {
        return Err(ApiError::not_found());
    }
    let found = admin::vhosts(&s.broker)
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(ApiError::not_found)?;
    json_ok(json!(found))
}

async fn put_vhost(
    State(s): State<Mgmt>,
    _a: Admin,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    // The body (description, tags, default queue type) is accepted and ignored.
    object(&body)?;
    if name.is_empty() {
        return Err(ApiError::bad_request("vhost name must not be empty"));
    }
    let b = s.broker.clone();
    blocking(move || {
        if b.vhost(&name).is_some() {
            return Ok(created(false));
        }
        match b.add_vhost(&name) {
            Ok(_) => Ok(created(true)),
            // Lost a race with another PUT of the same name: it exists, as asked.
            Err(BrokerError::VhostExists(_)) => Ok(created(false)),
            Err(e) => Err(e.into()),
        }
    })
    .await?
}

async fn delete_vhost(State(s): State<Mgmt>, _a: Admin, Path(name): Path<String>) -> ApiResult {
    let b = s.broker.clone();
    blocking(move || {
        b.delete_vhost(&name)?;
        Ok(no_content())
    })
    .await?
}

async fn vhost_permissions(
    State(s): State<Mgmt>,
    _a: Admin,
    Path(name): Path<String>,
) -> ApiResult {
    if s.broker.vhost(&name).is_none() {
        return Err(ApiError::not_found());
    }
    json_ok(json!(admin::permissions(&s.broker, Some(&name))))
}

// ---------------------------------------------------------------- permissions

async fn permissions(State(s): State<Mgmt>, _a: Admin) -> ApiResult {
    json_ok(json!(admin::permissions(&s.broker, None)))
}

async fn permission(
    State(s): State<Mgmt>,
    _a: Admin,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    let found = admin::permissions(&s.broker, Some(&vhost))
        .into_iter()
        .find(|p| p.user == user)
        .ok_or_else(ApiError::not_found)?;
    json_ok(json!(found))
}

async fn put_permission(
    State(s): State<Mgmt>,
    _a: Admin,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let m = object(&body)?;
    let def = PermissionDef {
        user,
        vhost,
        configure: required_str(&m, "configure")?.to_string(),
        write: required_str(&m, "write")?.to_string(),
        read: required_str(&m, "read")?.to_string(),
    };
    let b = s.broker.clone();
    blocking(move || {
        if b.vhost(&def.vhost).is_none() {
            return Err(ApiError::bad_request(format!(
                "vhost '{}' does not exist",
                def.vhost
            )));
        }
        if b.users.get(&def.user).is_none() {
            return Err(ApiError::bad_request(format!(
                "user '{}' does not exist",
                def.user
            )));
        }
        let existed = b
            .users
            .permissions()
            .iter()
            .any(|p| p.user == def.user && p.vhost == def.vhost);
        b.set_permission(def)?;
        Ok(created(!existed))
    })
    .await?
}

async fn delete_permission(
    State(s): State<Mgmt>,
    _a: Admin,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    let b = s.broker.clone();
    blocking(move || {
        if !b
            .users
            .permissions()
            .iter()
            .any(|p| p.user == user && p.vhost == vhost)
        {
            return Err(ApiError::not_found());
        }
        b.clear_permission(&user, &vhost)?;
        Ok(no_content())
    })
    .await?
}

// ---------------------------------------------------------------- policies

async fn list_policies(s: &Mgmt, c: &Caller, vhost: Option<String>) -> ApiResult {
    if let Some(v) = &vhost {
        if s.broker.vhost(v).is_none() || !c.sees(&s.broker, v) {
            return Err(ApiError::not_found());
        }
    }
    let list: Vec<PolicyDef> = admin::policies(&s.broker, vhost.as_deref())
        .into_iter()
        .filter(|p| c.sees(&s.broker, &p.vhost))
        .collect();
    json_ok(json!(list))
}

async fn policies(State(s): State<Mgmt>, c: Caller) -> ApiResult {
    list_policies(&s, &c, None).await
}

async fn policies_in(State(s): State<Mgmt>, c: Caller, Path(vhost): Path<String>) -> ApiResult {
    list_policies(&s, &c, Some(vhost)).await
}

async fn policy(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    if !c.sees(&s.broker, &vhost) {
        return Err(ApiError::not_found());
    }
    let found = admin::policies(&s.broker, Some(&vhost))
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(ApiError::not_found)?;
    json_ok(json!(found))
}

async fn put_policy(
    State(s): State<Mgmt>,
    _a: Admin,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let m = object(&body)?;
    let v = vhost_of(&s.broker, &vhost)?;
    let apply_to = field_str(&m, "apply-to")?.unwrap_or("all").to_string();
    if !["all", "queues", "exchanges"].contains(&apply_to.as_str()) {
        return Err(ApiError::bad_request(format!(
            "field 'apply-to': '{apply_to}' is not one of all, queues, exchanges"
        )));
    }
    if !matches!(m.get("definition"), Some(Value::Object(_))) {
        return Err(ApiError::bad_request(
            "field 'definition' is missing or not a JSON object",
        ));
    }
    let priority = match m.get("priority") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or(0),
        Some(Value::String(t)) => t
            .parse()
            .map_err(|_| ApiError::bad_request("field 'priority': expected an integer"))?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "field 'priority': expected an integer",
            ))
        }
    };
    let def = PolicyDef {
        vhost,
        name: name.clone(),
        pattern: required_str(&m, "pattern")?.to_string(),
        apply_to,
        definition: field_object(&m, "definition")?,
        priority,
    };
    blocking(move || {
        let existed = v.policies().iter().any(|p| p.name == name);
        v.put_policy(def)?;
        Ok(created(!existed))
    })
    .await?
}

async fn delete_policy(
    State(s): State<Mgmt>,
    _a: Admin,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let v = vhost_of(&s.broker, &vhost)?;
    blocking(move || {
        if !v.policies().iter().any(|p| p.name == name) {
            return Err(ApiError::not_found());
        }
        v.delete_policy(&name)?;
        Ok(no_content())
    })
    .await?
}

// ---------------------------------------------------------------- definitions

async fn get_definitions(State(s): State<Mgmt>, _a: Admin) -> ApiResult {
    let b = s.broker.clone();
    let mut defs = blocking(move || definitions::export(&b)).await?;
    if defs.rabbit_version.is_none() {
        defs.rabbit_version = Some(RABBITMQ_API_VERSION.to_string());
    }
    json_ok(json!(defs))
}

async fn post_definitions(State(s): State<Mgmt>, _a: Admin, body: Bytes) -> ApiResult {
    let defs: definitions::Definitions = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("definitions: {e}")))?;
    let b = s.broker.clone();
    blocking(move || {
        definitions::import(&b, &defs).map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(no_content())
    })
    .await?
}
