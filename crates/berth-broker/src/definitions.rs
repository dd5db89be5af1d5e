//! The definitions file: users, vhosts, permissions, policies, exchanges, queues
//! and bindings as one JSON document, in RabbitMQ's format so that files move
//! between the two (`rabbitmqctl export_definitions` / `import_definitions`).
#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::BTreeSet;

use berth_amqp::{AMQPValue, FieldTable, LongString, ShortString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub type JsonMap = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Definitions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbit_version: Option<String>,
    #[serde(default)]
    pub users: Vec<UserDef>,
    #[serde(default)]
    pub vhosts: Vec<VhostDef>,
    #[serde(default)]
    pub permissions: Vec<PermissionDef>,
    #[serde(default)]
    pub policies: Vec<PolicyDef>,
    #[serde(default)]
    pub queues: Vec<QueueDef>,
    #[serde(default)]
    pub exchanges: Vec<ExchangeDef>,
    #[serde(default)]
    pub bindings: Vec<BindingDef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserDef {
    pub name: String,
    /// base64(salt(4) ++ sha256(salt ++ password)), RabbitMQ's `rabbit_password_hashing_sha256`.
    pub password_hash: String,
    #[serde(default = "default_hashing")]
    pub hashing_algorithm: String,
    /// RabbitMQ 3.10 writes a comma-separated string, 3.11+ a list; both are read.
    #[serde(default)]
    pub tags: Tags,
}

fn default_hashing() -> String {
    "rabbit_password_hashing_sha256".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Tags {
    List(Vec<String>),
    Text(String),
}

impl Default for Tags {
    fn default() -> Self {
        Tags::List(Vec::new())
    }
}

impl Tags {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Tags::List(v) => v.iter().filter(|t| !t.is_empty()).cloned().collect(),
            Tags::Text(s) => s
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VhostDef {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PermissionDef {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyDef {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to", default = "default_apply_to")]
    pub apply_to: String,
    pub definition: JsonMap,
    #[serde(default)]
    pub priority: i64,
}

fn default_apply_to() -> String {
    "all".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueDef {
    pub name: String,
    pub vhost: String,
    #[serde(default)]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub arguments: JsonMap,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExchangeDef {
    pub name: String,
    pub vhost: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub arguments: JsonMap,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BindingDef {
    pub source: String,
    pub vhost: String,
    pub destination: String,
    /// "queue" or "exchange"
    pub destination_type: String,
    pub routing_key: String,
    #[serde(default)]
    pub arguments: JsonMap,
}

/// Converts definition arguments to an AMQP field table (numbers become
/// long-long ints or doubles, strings long strings, nested maps tables).
/// Keys longer than 255 bytes cannot be field-table keys and are left out; see
/// [`try_json_to_field_table`] to reject them instead.
pub fn json_to_field_table(args: &JsonMap) -> berth_amqp::FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in args {
        if let Ok(key) = ShortString::try_new(k.as_str()) {
            table.insert(key, json_to_value(v));
        }
    }
    table
}

/// [`json_to_field_table`], but a key longer than 255 bytes (at any depth) is an
/// error naming it.
pub fn try_json_to_field_table(args: &JsonMap) -> Result<berth_amqp::FieldTable, String> {
    check_keys(args)?;
    Ok(json_to_field_table(args))
}

fn check_keys(map: &JsonMap) -> Result<(), String> {
    for (k, v) in map {
        if ShortString::try_new(k.as_str()).is_err() {
            return Err(format!("argument name '{k}' is longer than 255 bytes"));
        }
        check_value_keys(v)?;
    }
    Ok(())
}

fn check_value_keys(v: &Value) -> Result<(), String> {
    match v {
        Value::Object(m) => check_keys(m),
        Value::Array(a) => a.iter().try_for_each(check_value_keys),
        _ => Ok(()),
    }
}

/// One JSON value as an AMQP field value.
pub fn json_to_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            // Above i64::MAX or fractional: the nearest double.
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(a) => {
            AMQPValue::FieldArray(a.iter().map(json_to_value).collect::<Vec<_>>().into())
        }
        Value::Object(m) => AMQPValue::FieldTable(json_to_field_table(m)),
    }
}

/// The inverse of [`json_to_field_table`] for export and the management API.
pub fn field_table_to_json(table: &berth_amqp::FieldTable) -> JsonMap {
    table
        .into_iter()
        .map(|(k, v)| (k.as_str().to_string(), value_to_json(v)))
        .collect()
}

/// One AMQP field value as JSON: numbers as numbers (non-finite floats as null,
/// decimals scaled), strings and byte arrays as (lossy UTF-8) strings,
/// timestamps as seconds, void as null.
pub fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::Float(f) => float_to_json(f64::from(*f)),
        AMQPValue::Double(f) => float_to_json(*f),
        AMQPValue::DecimalValue(d) => {
            if d.scale == 0 {
                Value::from(d.value)
            } else {
                float_to_json(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
            }
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(field_table_to_json(t)),
        AMQPValue::Void => Value::Null,
    }
}

fn float_to_json(f: f64) -> Value {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Errors of reading or applying a definitions file; each names the entry.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("definitions: {what}: {reason}")]
    Invalid { what: String, reason: String },
}

/// What [`export`] writes as `rabbit_version`: the RabbitMQ release whose
/// format berth follows, marked as berth's.
pub const RABBIT_VERSION: &str = "3.10.8-berth";

/// The exchanges every vhost has; never exported, skipped on import (as RabbitMQ does).
pub fn is_default_exchange(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

/// Everything durable in the broker as one document (users with hashes,
/// vhosts, permissions, policies, durable exchanges/queues and their bindings;
/// the default `amq.*` exchanges are left out, as RabbitMQ does).
pub fn export(broker: &crate::Broker) -> Definitions {
    let mut defs = Definitions {
        rabbit_version: Some(RABBIT_VERSION.to_string()),
        users: broker.users.list(),
        permissions: broker.users.permissions(),
        ..Definitions::default()
    };
    for vhost in broker.vhosts() {
        let vname = vhost.name.to_string();
        defs.vhosts.push(VhostDef {
            name: vname.clone(),
        });
        defs.policies.extend(vhost.policies());

        // Durable exchanges, including the defaults (bindings from amq.direct to a
        // durable queue survive a restart in RabbitMQ and are exported).
        let mut durable_exchanges = BTreeSet::new();
        for x in vhost.exchanges() {
            if !x.durable {
                continue;
            }
            durable_exchanges.insert(x.name.clone());
            if is_default_exchange(&x.name) {
                continue;
            }
            defs.exchanges.push(ExchangeDef {
                name: x.name,
                vhost: vname.clone(),
                kind: x.kind.to_string(),
                durable: true,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments,
            });
        }

        let mut durable_queues = BTreeSet::new();
        for q in vhost.queues() {
            if !q.durable || q.exclusive_owner.is_some() {
                continue;
            }
            durable_queues.insert(q.name.to_string());
            defs.queues.push(QueueDef {
                name: q.name.to_string(),
                vhost: vname.clone(),
                durable: true,
                auto_delete: q.auto_delete,
                arguments: field_table_to_json(&q.arguments),
            });
        }

        for b in vhost.bindings() {
            // The default exchange's bindings are implicit.
            if b.source.is_empty() || !durable_exchanges.contains(&b.source) {
                continue;
            }
            let durable_destination = match b.destination_type {
                "queue" => durable_queues.contains(&b.destination),
                _ => durable_exchanges.contains(&b.destination),
            };
            if !durable_destination {
                continue;
            }
            defs.bindings.push(BindingDef {
                source: b.source,
                vhost: vname.clone(),
                destination: b.destination,
                destination_type: b.destination_type.to_string(),
                routing_key: b.routing_key,
                arguments: b.arguments,
            });
        }
    }
    defs
}

fn invalid(what: impl Into<String>, reason: impl std::fmt::Display) -> DefinitionsError {
    DefinitionsError::Invalid {
        what: what.into(),
        reason: reason.to_string(),
    }
}

fn vhost_of(
    broker: &crate::Broker,
    vhost: &str,
    what: &str,
) -> Result<std::sync::Arc<crate::model::Vhost>, DefinitionsError> {
    broker
        .vhost(vhost)
        .ok_or_else(|| invalid(what, format!("vhost '{vhost}' not found")))
}

/// Applies a definitions document: creates or updates what it names (vhosts
/// first, then users, permissions, policies, exchanges, queues, bindings).
/// Validation errors name the entry, e.g. `definitions: queue 'q' in vhost '/': ...`.
/// It stops at the first error; what was applied before it stays.
pub fn import(broker: &crate::Broker, defs: &Definitions) -> Result<(), DefinitionsError> {
    for v in &defs.vhosts {
        let what = format!("vhost '{}'", v.name);
        if v.name.is_empty() {
            return Err(invalid(what, "empty vhost name"));
        }
        if broker.vhost(&v.name).is_none() {
            match broker.add_vhost(&v.name) {
                Ok(_) | Err(crate::broker::BrokerError::VhostExists(_)) => {}
                Err(e) => return Err(invalid(what, e)),
            }
        }
    }

    for u in &defs.users {
        let what = format!("user '{}'", u.name);
        // Validated before the broker logs it, so the log never holds a user it cannot replay.
        let def =
            crate::auth::validate_user(u.clone()).map_err(|e| invalid(&what, auth_reason(e)))?;
        broker
            .put_user_def(def)
            .map_err(|e| invalid(&what, broker_reason(e)))?;
    }

    for p in &defs.permissions {
        let what = format!("permissions of user '{}' in vhost '{}'", p.user, p.vhost);
        if broker.users.get(&p.user).is_none() {
            return Err(invalid(what, format!("user '{}' not found", p.user)));
        }
        vhost_of(broker, &p.vhost, &what)?;
        broker
            .set_permission(p.clone())
            .map_err(|e| invalid(&what, e))?;
    }

    for p in &defs.policies {
        let what = format!("policy '{}' in vhost '{}'", p.name, p.vhost);
        vhost_of(broker, &p.vhost, &what)?
            .put_policy(p.clone())
            .map_err(|e| invalid(&what, e.text))?;
    }

    for x in &defs.exchanges {
        if is_default_exchange(&x.name) {
            continue;
        }
        let what = format!("exchange '{}' in vhost '{}'", x.name, x.vhost);
        let vhost = vhost_of(broker, &x.vhost, &what)?;
        let arguments = try_json_to_field_table(&x.arguments).map_err(|e| invalid(&what, e))?;
        vhost
            .declare_exchange(crate::model::ExchangeDecl {
                name: x.name.clone(),
                kind: x.kind.clone(),
                passive: false,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments,
            })
            .map_err(|e| invalid(&what, e.text))?;
    }

    for q in &defs.queues {
        let what = format!("queue '{}' in vhost '{}'", q.name, q.vhost);
        if q.name.is_empty() {
            return Err(invalid(what, "empty queue name"));
        }
        let vhost = vhost_of(broker, &q.vhost, &what)?;
        let arguments = try_json_to_field_table(&q.arguments).map_err(|e| invalid(&what, e))?;
        vhost
            .declare_queue(
                crate::model::QueueDecl {
                    name: q.name.clone(),
                    passive: false,
                    durable: q.durable,
                    exclusive: false,
                    auto_delete: q.auto_delete,
                    arguments,
                },
                IMPORT_OWNER,
            )
            .map_err(|e| invalid(&what, e.text))?;
    }

    for b in &defs.bindings {
        let what = format!(
            "binding of {} '{}' to exchange '{}' with routing key '{}' in vhost '{}'",
            b.destination_type, b.destination, b.source, b.routing_key, b.vhost
        );
        let vhost = vhost_of(broker, &b.vhost, &what)?;
        let arguments = try_json_to_field_table(&b.arguments).map_err(|e| invalid(&what, e))?;
        let result = match b.destination_type.as_str() {
            "queue" => vhost.bind_queue(
                &b.destination,
                &b.source,
                &b.routing_key,
                &arguments,
                IMPORT_OWNER,
            ),
            "exchange" => {
                vhost.bind_exchange(&b.destination, &b.source, &b.routing_key, &arguments)
            }
            other => {
                return Err(invalid(
                    what,
                    format!("destination_type '{other}' is neither 'queue' nor 'exchange'"),
                ));
            }
        };
        result.map_err(|e| invalid(&what, e.text))?;
    }
    Ok(())
}

/// The connection id definitions are applied as (no client connection has it).
pub const IMPORT_OWNER: crate::types::ConnectionId = 0;

/// The reason part of a broker error (auth errors without the repeated user name).
fn broker_reason(e: crate::broker::BrokerError) -> String {
    match e {
        crate::broker::BrokerError::Auth(a) => auth_reason(a),
        other => other.to_string(),
    }
}

/// The reason part of an auth error (the entry is already named by `what`).
fn auth_reason(e: crate::auth::AuthError) -> String {
    match e {
        crate::auth::AuthError::Invalid { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// Reads a definitions file; errors name the file (and serde's line/column).
pub fn read_file(path: &std::path::Path) -> Result<Definitions, DefinitionsError> {
    let text = std::fs::read(path).map_err(|e| invalid(path.display().to_string(), e))?;
    parse(&text).map_err(|source| DefinitionsError::Parse {
        path: path.display().to_string(),
        source,
    })
}

/// Parses a definitions document (RabbitMQ's keys this does not use, such as
/// `parameters` or `topic_permissions`, are ignored).
pub fn parse(json: &[u8]) -> Result<Definitions, serde_json::Error> {
    // serde also reads a struct from an array of its fields in order; a file
    // that is an array is a mistake, not a definitions document.
    if json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(<serde_json::Error as serde::de::Error>::custom(
            "expected a JSON object at the top level, found an array",
        ));
    }
    serde_json::from_slice(json)
}

/// Writes a definitions file atomically (temp file, fsync, rename), pretty-printed.
pub fn write_file(path: &std::path::Path, defs: &Definitions) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut json = serde_json::to_vec_pretty(defs).map_err(std::io::Error::other)?;
    json.push(b'\n');
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_amqp::amq_protocol::types::{ByteArray, DecimalValue, FieldArray};

    /// `rabbitmqctl export_definitions` of a RabbitMQ 3.10.8 node after: add_user
    /// alice secret (tags administrator monitoring), add_user nopass +
    /// clear_password, add_vhost prod, permissions, a policy, durable and
    /// transient exchanges/queues (pika) and bindings, one exchange-to-exchange.
    const RABBITMQ_3_10_EXPORT: &str = r#"{"bindings":[{"arguments":{},"destination":"app.orders","destination_type":"queue","routing_key":"orders","source":"amq.direct","vhost":"prod"},{"arguments":{"x-match":"all"},"destination":"app.orders","destination_type":"queue","routing_key":"order.#","source":"app.events","vhost":"prod"},{"arguments":{},"destination":"app.transient","destination_type":"queue","routing_key":"x","source":"app.events","vhost":"prod"},{"arguments":{},"destination":"app.events","destination_type":"exchange","routing_key":"","source":"app.fanout","vhost":"prod"}],"exchanges":[{"arguments":{"alternate-exchange":"app.events"},"auto_delete":false,"durable":true,"name":"app.fanout","type":"fanout","vhost":"prod"},{"arguments":{},"auto_delete":false,"durable":false,"name":"app.transient","type":"direct","vhost":"prod"},{"arguments":{},"auto_delete":false,"durable":true,"name":"app.events","type":"topic","vhost":"prod"}],"global_parameters":[],"parameters":[],"permissions":[{"configure":".*","read":".*","user":"guest","vhost":"prod","write":".*"},{"configure":"^app\\.","read":"","user":"alice","vhost":"prod","write":".*"},{"configure":".*","read":".*","user":"guest","vhost":"/","write":".*"}],"policies":[{"apply-to":"queues","definition":{"max-length":100,"message-ttl":60000},"name":"ttl","pattern":"^ttl\\.","priority":3,"vhost":"prod"}],"queues":[{"arguments":{"x-dead-letter-exchange":"app.events","x-flag":true,"x-list":[1,"a"],"x-max-length":1000,"x-nested":{"k":"v"},"x-queue-type":"classic"},"auto_delete":false,"durable":true,"name":"app.orders","type":"classic","vhost":"prod"},{"arguments":{},"auto_delete":false,"durable":true,"name":"work","type":"classic","vhost":"/"},{"arguments":{},"auto_delete":false,"durable":false,"name":"app.transient","type":"classic","vhost":"prod"}],"rabbit_version":"3.10.8","rabbitmq_version":"3.10.8","topic_permissions":[],"users":[{"hashing_algorithm":"rabbit_password_hashing_sha256","limits":{},"name":"nopass","password_hash":"","tags":[]},{"hashing_algorithm":"rabbit_password_hashing_sha256","limits":{},"name":"alice","password_hash":"nVb9NJc+nTjSOjihxV+OV/jrhrkjxR1or81wvwYcyGQFokiz","tags":["administrator","monitoring"]},{"hashing_algorithm":"rabbit_password_hashing_sha256","limits":{},"name":"guest","password_hash":"mDKj6Utpw0iMKLCn7vntv7QAdTYmKuSBXW3ZowqA4nPj2IUO","tags":["administrator"]}],"vhosts":[{"limits":[],"metadata":{"description":"Default virtual host","tags":[]},"name":"/"},{"limits":[],"metadata":{"description":"","tags":""},"name":"prod"}]}"#;

    fn json(v: serde_json::Value) -> JsonMap {
        match v {
            Value::Object(m) => m,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn json_field_table_round_trip() {
        let args = json(serde_json::json!({
            "x-max-length": 1000,
            "x-neg": -5,
            "x-big": u64::MAX,
            "x-ttl": 1.5,
            "x-one": 1.0,
            "x-flag": true,
            "x-name": "dlx",
            "x-utf8": "héllo",
            "x-null": null,
            "x-list": [1, "a", [true], {"k": 2}],
            "x-nested": {"k": "v", "deeper": {"n": 0}},
        }));
        let table = json_to_field_table(&args);
        let get = |k: &str| table.inner().get(k).unwrap().clone();
        assert_eq!(get("x-max-length"), AMQPValue::LongLongInt(1000));
        assert_eq!(get("x-neg"), AMQPValue::LongLongInt(-5));
        assert_eq!(get("x-big"), AMQPValue::Double(u64::MAX as f64));
        assert_eq!(get("x-ttl"), AMQPValue::Double(1.5));
        assert_eq!(get("x-flag"), AMQPValue::Boolean(true));
        assert_eq!(get("x-name"), AMQPValue::LongString("dlx".into()));
        assert_eq!(get("x-null"), AMQPValue::Void);
        assert!(matches!(get("x-list"), AMQPValue::FieldArray(a) if a.as_slice().len() == 4));
        assert!(matches!(get("x-nested"), AMQPValue::FieldTable(t) if t.contains_key("deeper")));

        let mut back = field_table_to_json(&table);
        // The one lossy entry: u64::MAX became a double.
        assert_eq!(
            back.remove("x-big").unwrap().as_f64(),
            Some(u64::MAX as f64)
        );
        let mut expected = args.clone();
        expected.remove("x-big");
        assert_eq!(back, expected);
        assert!(back["x-one"].is_f64());
        assert_eq!(try_json_to_field_table(&args).unwrap(), table);
    }

    #[test]
    fn every_amqp_value_to_json() {
        let mut t = FieldTable::default();
        let mut inner = FieldTable::default();
        inner.insert("a".into(), AMQPValue::ShortShortUInt(1));
        let cases: Vec<(&str, AMQPValue, Value)> = vec![
            ("bool", AMQPValue::Boolean(false), serde_json::json!(false)),
            ("i8", AMQPValue::ShortShortInt(-8), serde_json::json!(-8)),
            ("u8", AMQPValue::ShortShortUInt(8), serde_json::json!(8)),
            ("i16", AMQPValue::ShortInt(-16), serde_json::json!(-16)),
            ("u16", AMQPValue::ShortUInt(16), serde_json::json!(16)),
            ("i32", AMQPValue::LongInt(-32), serde_json::json!(-32)),
            ("u32", AMQPValue::LongUInt(32), serde_json::json!(32)),
            (
                "i64",
                AMQPValue::LongLongInt(i64::MIN),
                serde_json::json!(i64::MIN),
            ),
            ("f32", AMQPValue::Float(0.5), serde_json::json!(0.5)),
            ("f64", AMQPValue::Double(2.25), serde_json::json!(2.25)),
            ("nan", AMQPValue::Double(f64::NAN), Value::Null),
            ("inf", AMQPValue::Float(f32::INFINITY), Value::Null),
            (
                "dec0",
                AMQPValue::DecimalValue(DecimalValue { scale: 0, value: 7 }),
                serde_json::json!(7),
            ),
            (
                "dec2",
                AMQPValue::DecimalValue(DecimalValue {
                    scale: 2,
                    value: 125,
                }),
                serde_json::json!(1.25),
            ),
            (
                "sstr",
                AMQPValue::ShortString("s".into()),
                serde_json::json!("s"),
            ),
            (
                "lstr",
                AMQPValue::LongString(b"l\xff".to_vec().into()),
                serde_json::json!("l\u{fffd}"),
            ),
            (
                "bytes",
                AMQPValue::ByteArray(ByteArray::from(&b"ab"[..])),
                serde_json::json!("ab"),
            ),
            (
                "array",
                AMQPValue::FieldArray(FieldArray::from(vec![
                    AMQPValue::Void,
                    AMQPValue::LongInt(1),
                ])),
                serde_json::json!([null, 1]),
            ),
            (
                "ts",
                AMQPValue::Timestamp(1_700_000_000),
                serde_json::json!(1_700_000_000u64),
            ),
            (
                "table",
                AMQPValue::FieldTable(inner),
                serde_json::json!({"a": 1}),
            ),
            ("void", AMQPValue::Void, Value::Null),
        ];
        for (k, v, _) in &cases {
            t.insert((*k).into(), v.clone());
        }
        let out = field_table_to_json(&t);
        for (k, _, expected) in &cases {
            assert_eq!(&out[*k], expected, "{k}");
        }
    }

    #[test]
    fn long_keys_are_dropped_or_rejected() {
        let long = "k".repeat(256);
        let args = json(serde_json::json!({ "ok": 1, "nested": { long.clone(): 1 } }));
        let table = json_to_field_table(&args);
        assert!(table.contains_key("ok"));
        assert!(
            matches!(table.inner().get("nested"), Some(AMQPValue::FieldTable(t)) if t.inner().is_empty())
        );
        let err = try_json_to_field_table(&args).unwrap_err();
        assert!(err.contains(&long) && err.contains("255"), "{err}");
    }

    #[test]
    fn reads_rabbitmq_3_10_export() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("defs.json");
        std::fs::write(&path, RABBITMQ_3_10_EXPORT).unwrap();
        let defs = read_file(&path).unwrap();

        assert_eq!(defs.rabbit_version.as_deref(), Some("3.10.8"));
        let users: BTreeMap<_, _> = defs.users.iter().map(|u| (u.name.as_str(), u)).collect();
        assert_eq!(users.len(), 3);
        let alice = users["alice"];
        assert_eq!(alice.hashing_algorithm, crate::auth::password::ALGORITHM);
        assert_eq!(alice.tags.to_vec(), ["administrator", "monitoring"]);
        assert!(crate::auth::password::verify(
            &alice.password_hash,
            "secret"
        ));
        assert!(crate::auth::password::verify(
            &users["guest"].password_hash,
            "guest"
        ));
        assert_eq!(users["nopass"].password_hash, "");
        assert!(users["nopass"].tags.to_vec().is_empty());

        // The users load into berth's user database as they are.
        let db = crate::auth::Users::new(vec!["guest".into()]);
        for u in &defs.users {
            db.put(u.clone()).unwrap();
        }
        let local = "127.0.0.1".parse().unwrap();
        assert!(db
            .authenticate("alice", "secret", local)
            .unwrap()
            .has_tag("administrator"));
        assert!(db.authenticate("nopass", "", local).is_err());

        assert_eq!(
            defs.vhosts
                .iter()
                .map(|v| v.name.as_str())
                .collect::<BTreeSet<_>>(),
            BTreeSet::from(["/", "prod"])
        );
        assert!(defs.permissions.contains(&PermissionDef {
            user: "alice".into(),
            vhost: "prod".into(),
            configure: "^app\\.".into(),
            write: ".*".into(),
            read: "".into(),
        }));
        for p in &defs.permissions {
            db.set_permission(p.clone()).unwrap();
        }
        assert!(!db.check("alice", "prod", crate::auth::Access::Read, "app.orders"));

        let policy = &defs.policies[0];
        assert_eq!(
            (
                policy.name.as_str(),
                policy.apply_to.as_str(),
                policy.priority
            ),
            ("ttl", "queues", 3)
        );
        assert_eq!(policy.definition["message-ttl"], 60000);

        let orders = defs.queues.iter().find(|q| q.name == "app.orders").unwrap();
        assert!(orders.durable && !orders.auto_delete);
        let args = json_to_field_table(&orders.arguments);
        assert_eq!(
            args.inner().get("x-max-length"),
            Some(&AMQPValue::LongLongInt(1000))
        );
        assert_eq!(
            args.inner().get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("app.events".into()))
        );
        assert_eq!(field_table_to_json(&args), orders.arguments);

        let fanout = defs
            .exchanges
            .iter()
            .find(|x| x.name == "app.fanout")
            .unwrap();
        assert_eq!(
            (fanout.kind.as_str(), fanout.durable, fanout.internal),
            ("fanout", true, false)
        );
        assert_eq!(fanout.arguments["alternate-exchange"], "app.events");
        assert_eq!(defs.bindings.len(), 4);
        assert!(defs
            .bindings
            .iter()
            .any(|b| b.destination_type == "exchange" && b.source == "app.fanout"));

        // Serialising and parsing again loses nothing berth reads.
        let again = parse(&serde_json::to_vec(&defs).unwrap()).unwrap();
        assert_eq!(again, defs);
    }

    #[test]
    fn reads_comma_separated_tags_and_defaults() {
        // Older RabbitMQ (3.8) wrote tags as one string; hashing_algorithm may be absent.
        let defs = parse(
            br#"{"users":[{"name":"old","password_hash":"nVb9NJc+nTjSOjihxV+OV/jrhrkjxR1or81wvwYcyGQFokiz","tags":"administrator,management"}],
                 "policies":[{"vhost":"/","name":"p","pattern":".*","definition":{}}],
                 "global_parameters":[{"name":"cluster_name","value":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(defs.users[0].tags.to_vec(), ["administrator", "management"]);
        assert_eq!(
            defs.users[0].hashing_algorithm,
            crate::auth::password::ALGORITHM
        );
        assert_eq!(
            (
                defs.policies[0].apply_to.as_str(),
                defs.policies[0].priority
            ),
            ("all", 0)
        );
        assert!(defs.queues.is_empty() && defs.rabbit_version.is_none());
    }

    #[test]
    fn read_file_errors_name_path_line_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, "{\n  \"users\": [\n    {\"name\": 5}\n  ]\n}\n").unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
        assert!(err.contains("line 3 column"), "{err}");

        let missing = dir.path().join("missing.json");
        let err = read_file(&missing).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");

        let err = parse(b"{\"users\": {}}").unwrap_err().to_string();
        assert!(err.contains("line 1 column"), "{err}");
        let err = parse(b" [] ").unwrap_err().to_string();
        assert!(err.contains("JSON object"), "{err}");
    }

    #[test]
    fn write_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        let defs = parse(RABBITMQ_3_10_EXPORT.as_bytes()).unwrap();
        write_file(&path, &defs).unwrap();
        assert_eq!(read_file(&path).unwrap(), defs);
        assert!(!dir.path().join("out.json.tmp").exists());
    }

    fn sample() -> Definitions {
        parse(
            br#"{
  "users": [{"name": "alice", "password_hash": "nVb9NJc+nTjSOjihxV+OV/jrhrkjxR1or81wvwYcyGQFokiz",
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "administrator,monitoring"}],
  "vhosts": [{"name": "/"}, {"name": "prod"}],
  "permissions": [{"user": "alice", "vhost": "prod", "configure": "^app\\.", "write": ".*", "read": ""}],
  "policies": [{"vhost": "prod", "name": "ttl", "pattern": "^ttl\\.", "apply-to": "queues",
                "definition": {"message-ttl": 60000}, "priority": 3}],
  "exchanges": [{"name": "app.events", "vhost": "prod", "type": "topic", "durable": true, "auto_delete": false, "internal": false, "arguments": {}},
                {"name": "app.fanout", "vhost": "prod", "type": "fanout", "durable": true, "auto_delete": false, "internal": false,
                 "arguments": {"alternate-exchange": "app.events"}},
                {"name": "amq.direct", "vhost": "prod", "type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}],
  "queues": [{"name": "app.orders", "vhost": "prod", "durable": true, "auto_delete": false,
              "arguments": {"x-max-length": 1000, "x-dead-letter-exchange": "app.events"}},
             {"name": "work", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}],
  "bindings": [{"source": "app.events", "vhost": "prod", "destination": "app.orders", "destination_type": "queue",
                "routing_key": "order.#", "arguments": {}},
               {"source": "amq.direct", "vhost": "prod", "destination": "app.orders", "destination_type": "queue",
                "routing_key": "orders", "arguments": {}},
               {"source": "app.fanout", "vhost": "prod", "destination": "app.events", "destination_type": "exchange",
                "routing_key": "", "arguments": {}}]
}"#,
        )
        .unwrap()
    }

    #[test]
    fn import_export_round_trip() {
        let broker = crate::Broker::in_memory();
        let defs = sample();
        import(&broker, &defs).unwrap();
        // Transient things are not exported.
        let prod = broker.vhost("prod").unwrap();
        prod.declare_queue(
            crate::model::QueueDecl {
                name: "tmp".into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                arguments: FieldTable::default(),
            },
            IMPORT_OWNER,
        )
        .unwrap();
        prod.bind_queue(
            "tmp",
            "app.events",
            "x",
            &FieldTable::default(),
            IMPORT_OWNER,
        )
        .unwrap();

        let out = export(&broker);
        assert_eq!(out.rabbit_version.as_deref(), Some(RABBIT_VERSION));
        let alice = out.users.iter().find(|u| u.name == "alice").unwrap();
        assert_eq!(
            alice.tags,
            Tags::List(vec!["administrator".into(), "monitoring".into()])
        );
        assert!(broker
            .users
            .authenticate("alice", "secret", "10.0.0.1".parse().unwrap())
            .is_ok());
        assert!(out.permissions.contains(&defs.permissions[0]));
        assert_eq!(out.policies, defs.policies);
        let names = |v: &[ExchangeDef]| v.iter().map(|x| x.name.clone()).collect::<BTreeSet<_>>();
        assert_eq!(
            names(&out.exchanges),
            BTreeSet::from(["app.events".to_string(), "app.fanout".to_string()])
        );
        let fanout = out
            .exchanges
            .iter()
            .find(|x| x.name == "app.fanout")
            .unwrap();
        assert_eq!(
            fanout,
            defs.exchanges
                .iter()
                .find(|x| x.name == "app.fanout")
                .unwrap()
        );
        let mut queues = out.queues.clone();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        let mut expected_queues = defs.queues.clone();
        expected_queues.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(queues, expected_queues);
        let key = |b: &BindingDef| {
            (
                b.source.clone(),
                b.destination.clone(),
                b.routing_key.clone(),
            )
        };
        let got: BTreeSet<_> = out.bindings.iter().map(key).collect();
        let want: BTreeSet<_> = defs.bindings.iter().map(key).collect();
        assert_eq!(got, want);

        // Importing the export into a fresh broker gives the same export.
        let other = crate::Broker::in_memory();
        import(&other, &out).unwrap();
        let again = export(&other);
        assert_eq!(names(&again.exchanges), names(&out.exchanges));
        assert_eq!(again.queues.len(), out.queues.len());
        assert_eq!(again.bindings.len(), out.bindings.len());
        assert_eq!(again.policies, out.policies);
        // Importing twice is fine (existing vhosts, equivalent redeclares).
        import(&broker, &defs).unwrap();
    }

    #[test]
    fn import_errors_name_the_entry() {
        let broker = crate::Broker::in_memory();
        let mut defs = Definitions::default();
        defs.queues.push(QueueDef {
            name: "q".into(),
            vhost: "nope".into(),
            durable: true,
            auto_delete: false,
            arguments: JsonMap::new(),
        });
        let err = import(&broker, &defs).unwrap_err().to_string();
        assert_eq!(
            err,
            "definitions: queue 'q' in vhost 'nope': vhost 'nope' not found"
        );

        let mut defs = Definitions::default();
        defs.exchanges.push(ExchangeDef {
            name: "x".into(),
            vhost: "/".into(),
            kind: "bogus".into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: JsonMap::new(),
        });
        let err = import(&broker, &defs).unwrap_err().to_string();
        assert!(
            err.starts_with("definitions: exchange 'x' in vhost '/': "),
            "{err}"
        );
        assert!(err.contains("bogus"), "{err}");

        let mut defs = sample();
        defs.users[0].hashing_algorithm = "rabbit_password_hashing_md5".into();
        let err = import(&broker, &defs).unwrap_err().to_string();
        assert!(
            err.starts_with("definitions: user 'alice': unsupported hashing algorithm"),
            "{err}"
        );

        let mut defs = sample();
        defs.permissions[0].write = "(".into();
        let err = import(&broker, &defs).unwrap_err().to_string();
        assert!(
            err.starts_with("definitions: permissions of user 'alice' in vhost 'prod': "),
            "{err}"
        );
    }
}
