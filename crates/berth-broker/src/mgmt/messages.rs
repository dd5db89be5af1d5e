//! Publishing and fetching messages through the API (RabbitMQ's
//! `POST /api/exchanges/{vhost}/{name}/publish` and `POST /api/queues/{vhost}/{name}/get`),
//! for debugging and scripts, as `rabbitmqadmin publish|get` use them.
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use berth_amqp::amq_protocol::types::ShortString;
use berth_amqp::BasicProperties;
use serde_json::{json, Value};

use super::api::{
    blocking, exchange_name, field_object, field_str, json_ok, object, vhost_of, ApiError,
    ApiResult, Caller, MGMT_OWNER,
};
use super::Mgmt;
use crate::auth::Access;
use crate::definitions::{field_table_to_json, json_to_field_table, JsonMap};
use crate::model::GetResult;
use crate::types::{now_ms, Message, MessageRef};

fn short(name: &str, v: &Value) -> Result<ShortString, ApiError> {
    match v {
        Value::String(s) if s.len() <= 255 => Ok(ShortString::from(s.clone())),
        Value::String(_) => Err(ApiError::bad_request(format!(
            "property '{name}': longer than 255 bytes"
        ))),
        _ => Err(ApiError::bad_request(format!(
            "property '{name}': expected a string"
        ))),
    }
}

fn small_int(name: &str, v: &Value) -> Result<u8, ApiError> {
    v.as_u64()
        .and_then(|n| u8::try_from(n).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "property '{name}': expected an integer from 0 to 255"
            ))
        })
}

/// Message properties from RabbitMQ's JSON names.
fn properties(m: &JsonMap) -> Result<BasicProperties, ApiError> {
    let mut p = BasicProperties::default();
    for (key, v) in m {
        p = match key.as_str() {
            "content_type" => p.with_content_type(short(key, v)?),
            "content_encoding" => p.with_content_encoding(short(key, v)?),
            "correlation_id" => p.with_correlation_id(short(key, v)?),
            "reply_to" => p.with_reply_to(short(key, v)?),
            "expiration" => p.with_expiration(short(key, v)?),
            "message_id" => p.with_message_id(short(key, v)?),
            "type" => p.with_type(short(key, v)?),
            "user_id" => p.with_user_id(short(key, v)?),
            "app_id" => p.with_app_id(short(key, v)?),
            "cluster_id" => p.with_cluster_id(short(key, v)?),
            "delivery_mode" => p.with_delivery_mode(small_int(key, v)?),
            "priority" => p.with_priority(small_int(key, v)?),
            "timestamp" => p.with_timestamp(v.as_u64().ok_or_else(|| {
                ApiError::bad_request("property 'timestamp': expected an integer")
            })?),
            "headers" => match v {
                Value::Object(h) => p.with_headers(json_to_field_table(h)),
                _ => {
                    return Err(ApiError::bad_request(
                        "property 'headers': expected a JSON object",
                    ))
                }
            },
            other => {
                return Err(ApiError::bad_request(format!(
                    "property '{other}' is unknown"
                )))
            }
        };
    }
    Ok(p)
}

fn properties_json(p: &BasicProperties) -> Value {
    let mut m = JsonMap::new();
    let strings = [
        ("content_type", p.content_type()),
        ("content_encoding", p.content_encoding()),
        ("correlation_id", p.correlation_id()),
        ("reply_to", p.reply_to()),
        ("expiration", p.expiration()),
        ("message_id", p.message_id()),
        ("type", p.kind()),
        ("user_id", p.user_id()),
        ("app_id", p.app_id()),
        ("cluster_id", p.cluster_id()),
    ];
    for (name, v) in strings {
        if let Some(s) = v {
            m.insert(name.into(), s.as_str().into());
        }
    }
    if let Some(d) = p.delivery_mode() {
        m.insert("delivery_mode".into(), (*d).into());
    }
    if let Some(d) = p.priority() {
        m.insert("priority".into(), (*d).into());
    }
    if let Some(t) = p.timestamp() {
        m.insert("timestamp".into(), (*t).into());
    }
    if let Some(h) = p.headers() {
        m.insert("headers".into(), Value::Object(field_table_to_json(h)));
    }
    Value::Object(m)
}

/// POST /api/exchanges/{vhost}/{name}/publish: `{"routing_key", "payload",
/// "payload_encoding": "string"|"base64", "properties"}` → `{"routed": bool}`.
pub async fn publish(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let m = object(&body)?;
    let v = vhost_of(&s.broker, &vhost)?;
    let exchange = exchange_name(&name).to_string();
    c.may(
        &s.broker,
        &vhost,
        Access::Write,
        if exchange.is_empty() {
            "amq.default"
        } else {
            &exchange
        },
    )?;
    if let Some(resource) = s.broker.flow.alarm() {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "resource_alarm",
            reason: format!("publishing is blocked: {resource} alarm in effect"),
        });
    }
    let routing_key = field_str(&m, "routing_key")?.unwrap_or("").to_string();
    let payload = field_str(&m, "payload")?.unwrap_or("");
    let body = match field_str(&m, "payload_encoding")?.unwrap_or("string") {
        "string" => Bytes::copy_from_slice(payload.as_bytes()),
        "base64" => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|e| {
                    ApiError::bad_request(format!("field 'payload': invalid base64: {e}"))
                })?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "field 'payload_encoding': '{other}' is not string or base64"
            )))
        }
    };
    if body.len() as u64 > s.broker.config.max_message_size {
        return Err(ApiError::bad_request(format!(
            "message size {} is larger than the maximum {}",
            body.len(),
            s.broker.config.max_message_size
        )));
    }
    let props = properties(&field_object(&m, "properties")?)?;
    if let Some(user_id) = props.user_id() {
        if user_id.as_str() != c.user.name {
            return Err(ApiError::bad_request(format!(
                "user_id property set to '{}' but authenticated user was '{}'",
                user_id.as_str(),
                c.user.name
            )));
        }
    }
    let b = s.broker.clone();
    blocking(move || {
        let message = Message {
            id: b.log.next_id(),
            exchange: exchange.clone(),
            routing_key,
            properties: props,
            body,
        };
        let outcome = v.publish(&exchange, message, now_ms())?;
        json_ok(json!({"routed": outcome.routed}))
    })
    .await?
}

/// POST /api/queues/{vhost}/{name}/get: `{"count", "ackmode", "encoding", "truncate"}`.
/// Fetching is destructive unless ackmode requeues.
pub async fn get(
    State(s): State<Mgmt>,
    c: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let m = object(&body)?;
    let v = vhost_of(&s.broker, &vhost)?;
    c.may(&s.broker, &vhost, Access::Read, &name)?;
    let count = match m.get("count") {
        None | Some(Value::Null) => 1,
        Some(n) => n
            .as_u64()
            .ok_or_else(|| ApiError::bad_request("field 'count': expected a positive integer"))?,
    };
    let ackmode = field_str(&m, "ackmode")?
        .unwrap_or("ack_requeue_true")
        .to_string();
    if ![
        "ack_requeue_true",
        "ack_requeue_false",
        "reject_requeue_true",
        "reject_requeue_false",
    ]
    .contains(&ackmode.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "field 'ackmode': '{ackmode}' is not a known mode"
        )));
    }
    let base64_always = match field_str(&m, "encoding")?.unwrap_or("auto") {
        "auto" => false,
        "base64" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "field 'encoding': '{other}' is not auto or base64"
            )))
        }
    };
    let truncate =
        match m.get("truncate") {
            None | Some(Value::Null) => None,
            Some(n) => Some(n.as_u64().ok_or_else(|| {
                ApiError::bad_request("field 'truncate': expected a positive integer")
            })? as usize),
        };
    blocking(move || {
        let q = v.queue_for(&name, MGMT_OWNER)?;
        let now = now_ms();
        let no_ack = ackmode == "ack_requeue_false";
        let mut taken: Vec<MessageRef> = Vec::new();
        let mut out = Vec::new();
        for _ in 0..count.min(10_000) {
            let GetResult::Message {
                message,
                redelivered,
                remaining,
            } = q.get(no_ack, now)
            else {
                break;
            };
            out.push(message_json(
                &message,
                redelivered,
                remaining,
                base64_always,
                truncate,
            ));
            taken.push(message);
        }
        // Requeue or reject only after fetching, so one call never sees a message twice.
        match ackmode.as_str() {
            "ack_requeue_true" | "reject_requeue_true" => q.requeue(taken, now),
            "reject_requeue_false" => q.reject(taken, now),
            _ => {}
        }
        json_ok(Value::Array(out))
    })
    .await?
}

fn message_json(
    m: &Message,
    redelivered: bool,
    remaining: u32,
    base64_always: bool,
    truncate: Option<usize>,
) -> Value {
    let mut body: &[u8] = &m.body;
    if let Some(n) = truncate {
        body = &body[..body.len().min(n)];
    }
    let (payload, encoding) = match std::str::from_utf8(body) {
        Ok(text) if !base64_always => (text.to_string(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(body),
            "base64",
        ),
    };
    json!({
        "payload_bytes": m.body.len(),
        "redelivered": redelivered,
        "exchange": m.exchange,
        "routing_key": m.routing_key,
        "message_count": remaining,
        "properties": properties_json(&m.properties),
        "payload": payload,
        "payload_encoding": encoding,
    })
}
