//! Queue and exchange arguments: reading AMQP values, validating x-arguments
//! and policy keys, equivalence checks, and RabbitMQ's error wording.
use std::sync::Arc;

use berth_amqp::{AMQPValue, AmqpError, FieldTable, ReplyCode};

use crate::definitions::JsonMap;

/// `queue 'q' in vhost '/'`, RabbitMQ's `rabbit_misc:rs/1`.
pub fn rs(kind: &str, name: &str, vhost: &str) -> String {
    format!("{kind} '{name}' in vhost '{vhost}'")
}

/// 404 `no queue 'q' in vhost '/'`.
pub fn not_found(kind: &str, name: &str, vhost: &str) -> AmqpError {
    AmqpError::channel(
        0,
        ReplyCode::NotFound,
        format!("no {}", rs(kind, name, vhost)),
    )
}

pub fn precondition(text: String) -> AmqpError {
    AmqpError::channel(0, ReplyCode::PreconditionFailed, text)
}

pub fn access_refused(text: String) -> AmqpError {
    AmqpError::channel(0, ReplyCode::AccessRefused, text)
}

/// 541 after the metadata log refused a change.
pub fn meta_failed(what: &str, err: &std::io::Error) -> AmqpError {
    AmqpError::connection(
        ReplyCode::InternalError,
        format!("cannot record {what} in the metadata log: {err}"),
    )
}

/// Any AMQP integer type as i64 (clients pick different widths for the same number).
pub fn as_int(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok()?,
        _ => return None,
    })
}

/// A string value (long or short string) as UTF-8.
pub fn as_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// RabbitMQ's name for a field type, as it appears in error texts.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// A value for an error text (RabbitMQ prints the Erlang term).
pub fn display_value(v: &AMQPValue) -> String {
    if let Some(n) = as_int(v) {
        return n.to_string();
    }
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::Void => "undefined".to_string(),
        other => as_string(other).unwrap_or_else(|| format!("{other:?}")),
    }
}

/// Whether two argument values are the same for equivalence checks: integers
/// compare by value whatever their width, strings by content.
pub fn same_value(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (as_int(a), as_int(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (as_string(a), as_string(b)) {
        return x == y;
    }
    a == b
}

/// RabbitMQ's `val/1` for an inequivalent-argument text.
fn describe(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".to_string(),
        Some(v) => format!(
            "the value '{}' of type '{}'",
            display_value(v),
            type_name(v)
        ),
    }
}

/// 406 `inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'`.
pub fn inequivalent(key: &str, what: &str, received: &str, current: &str) -> AmqpError {
    precondition(format!(
        "inequivalent arg '{key}' for {what}: received '{received}' but current is '{current}'"
    ))
}

/// Compares the given argument keys of two tables (RabbitMQ's `assert_args_equivalence`).
pub fn assert_args_equivalence(
    current: &FieldTable,
    received: &FieldTable,
    what: &str,
    keys: &[&str],
) -> Result<(), AmqpError> {
    for key in keys {
        let (c, r) = (current.inner().get(*key), received.inner().get(*key));
        let (received, current) = match (c, r) {
            (None, None) => continue,
            (Some(a), Some(b)) if same_value(a, b) => continue,
            // Both present: RabbitMQ prints the bare values.
            (Some(a), Some(b)) => (
                format!("'{}'", display_value(b)),
                format!("'{}'", display_value(a)),
            ),
            (a, b) => (describe(b), describe(a)),
        };
        return Err(precondition(format!(
            "inequivalent arg '{key}' for {what}: received {received} but current is {current}"
        )));
    }
    Ok(())
}

/// Queue argument keys compared on redeclare (RabbitMQ 3.10's classic queue list).
pub const QUEUE_EQUIVALENCE_KEYS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-single-active-consumer",
];

/// What a queue does when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

impl Overflow {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "drop-head" => Some(Overflow::DropHead),
            "reject-publish" => Some(Overflow::RejectPublish),
            "reject-publish-dlx" => Some(Overflow::RejectPublishDlx),
            _ => None,
        }
    }
}

/// A queue's effective settings: its x-arguments over the matching policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueConfig {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<Arc<str>>,
    pub dead_letter_routing_key: Option<Arc<str>>,
    /// Only from x-max-priority (RabbitMQ does not take it from policies).
    pub max_priority: Option<u8>,
    /// x-single-active-consumer: one consumer at a time gets messages. Only
    /// from arguments (RabbitMQ 3.10 has no such policy key).
    pub single_active_consumer: bool,
}

fn invalid_arg(key: &str, what: &str, error: String) -> AmqpError {
    precondition(format!("invalid arg '{key}' for {what}: {error}"))
}

fn int_arg(v: &AMQPValue, key: &str, what: &str, positive: bool) -> Result<u64, AmqpError> {
    let n = as_int(v)
        .ok_or_else(|| invalid_arg(key, what, format!("{{unacceptable_type,{}}}", type_name(v))))?;
    if n < 0 {
        return Err(invalid_arg(key, what, format!("{{value_negative,{n}}}")));
    }
    if positive && n == 0 {
        return Err(invalid_arg(key, what, "{value_zero,0}".to_string()));
    }
    Ok(n as u64)
}

fn str_arg(v: &AMQPValue, key: &str, what: &str) -> Result<String, AmqpError> {
    as_string(v)
        .ok_or_else(|| invalid_arg(key, what, format!("{{unacceptable_type,{}}}", type_name(v))))
}

/// Validates a queue's x-arguments (406 naming the argument, RabbitMQ's
/// wording) and returns the settings they give.
pub fn parse_queue_args(args: &FieldTable, what: &str) -> Result<QueueConfig, AmqpError> {
    let mut cfg = QueueConfig::default();
    let get = |k: &str| args.inner().get(k);
    if let Some(v) = get("x-expires") {
        cfg.expires = Some(int_arg(v, "x-expires", what, true)?);
    }
    if let Some(v) = get("x-message-ttl") {
        cfg.message_ttl = Some(int_arg(v, "x-message-ttl", what, false)?);
    }
    if let Some(v) = get("x-max-length") {
        cfg.max_length = Some(int_arg(v, "x-max-length", what, false)?);
    }
    if let Some(v) = get("x-max-length-bytes") {
        cfg.max_length_bytes = Some(int_arg(v, "x-max-length-bytes", what, false)?);
    }
    if let Some(v) = get("x-max-priority") {
        let n = int_arg(v, "x-max-priority", what, false)?;
        let n = u8::try_from(n).map_err(|_| {
            invalid_arg(
                "x-max-priority",
                what,
                format!("{{max_value_exceeded,{n}}}"),
            )
        })?;
        cfg.max_priority = Some(n);
    }
    if let Some(v) = get("x-overflow") {
        let s = str_arg(v, "x-overflow", what)?;
        cfg.overflow = Overflow::parse(&s)
            .ok_or_else(|| invalid_arg("x-overflow", what, "invalid_overflow".to_string()))?;
    }
    if let Some(v) = get("x-dead-letter-exchange") {
        cfg.dead_letter_exchange = Some(str_arg(v, "x-dead-letter-exchange", what)?.into());
    }
    if let Some(v) = get("x-dead-letter-routing-key") {
        let rk = str_arg(v, "x-dead-letter-routing-key", what)?;
        if cfg.dead_letter_exchange.is_none() {
            return Err(invalid_arg(
                "x-dead-letter-routing-key",
                what,
                "routing_key_but_no_dlx_defined".to_string(),
            ));
        }
        cfg.dead_letter_routing_key = Some(rk.into());
    }
    if let Some(v) = get("x-single-active-consumer") {
        // RabbitMQ's check_bool_arg: nothing but a field-table boolean.
        let AMQPValue::Boolean(b) = v else {
            return Err(invalid_arg(
                "x-single-active-consumer",
                what,
                format!("{{unacceptable_type,{}}}", type_name(v)),
            ));
        };
        cfg.single_active_consumer = *b;
    }
    Ok(cfg)
}

/// Error text of a bad policy definition.
fn policy_value_error(key: &str, v: &serde_json::Value) -> String {
    format!("invalid value {v} for policy key '{key}'")
}

fn json_uint(def: &JsonMap, key: &str, positive: bool) -> Result<Option<u64>, String> {
    match def.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if !positive || n > 0 => Ok(Some(n)),
            _ => Err(policy_value_error(key, v)),
        },
    }
}

fn json_str(def: &JsonMap, key: &str) -> Result<Option<String>, String> {
    match def.get(key) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(policy_value_error(key, v)),
    }
}

/// The queue settings a policy definition gives (errors name the key).
pub fn parse_policy_queue(def: &JsonMap) -> Result<QueueConfig, String> {
    let overflow = match json_str(def, "overflow")? {
        None => Overflow::default(),
        Some(s) => Overflow::parse(&s)
            .ok_or_else(|| policy_value_error("overflow", &serde_json::Value::String(s)))?,
    };
    Ok(QueueConfig {
        message_ttl: json_uint(def, "message-ttl", false)?,
        expires: json_uint(def, "expires", true)?,
        max_length: json_uint(def, "max-length", false)?,
        max_length_bytes: json_uint(def, "max-length-bytes", false)?,
        overflow,
        dead_letter_exchange: json_str(def, "dead-letter-exchange")?.map(Into::into),
        dead_letter_routing_key: json_str(def, "dead-letter-routing-key")?.map(Into::into),
        max_priority: None,
        single_active_consumer: false,
    })
}

/// Checks every key of a policy definition the model understands.
pub fn validate_policy(def: &JsonMap) -> Result<(), String> {
    parse_policy_queue(def)?;
    json_str(def, "alternate-exchange")?;
    Ok(())
}

/// Declared arguments win over the policy, key by key.
pub fn effective_queue_config(args: &FieldTable, policy: Option<&JsonMap>) -> QueueConfig {
    // Declared arguments were validated at declare; a bad one is ignored here.
    let declared = parse_queue_args(args, "").unwrap_or_default();
    let Some(def) = policy else { return declared };
    let pol = parse_policy_queue(def).unwrap_or_default();
    let has = |k: &str| args.contains_key(k);
    QueueConfig {
        message_ttl: if has("x-message-ttl") {
            declared.message_ttl
        } else {
            pol.message_ttl
        },
        expires: if has("x-expires") {
            declared.expires
        } else {
            pol.expires
        },
        max_length: if has("x-max-length") {
            declared.max_length
        } else {
            pol.max_length
        },
        max_length_bytes: if has("x-max-length-bytes") {
            declared.max_length_bytes
        } else {
            pol.max_length_bytes
        },
        overflow: if has("x-overflow") {
            declared.overflow
        } else {
            pol.overflow
        },
        dead_letter_exchange: if has("x-dead-letter-exchange") {
            declared.dead_letter_exchange
        } else {
            pol.dead_letter_exchange
        },
        dead_letter_routing_key: if has("x-dead-letter-routing-key") {
            declared.dead_letter_routing_key
        } else {
            pol.dead_letter_routing_key
        },
        max_priority: declared.max_priority,
        single_active_consumer: declared.single_active_consumer,
    }
}

/// An AMQP field table as JSON (the definitions file's and management API's form).
pub fn table_to_json(table: &FieldTable) -> JsonMap {
    crate::definitions::field_table_to_json(table)
}

/// Parses a server-side string argument value into a long string.
pub fn longstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.as_bytes().to_vec().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn queue_args_validation() {
        let what = "queue 'q' in vhost '/'";
        let cases: Vec<(FieldTable, Option<&str>)> = vec![
            (table(&[("x-message-ttl", AMQPValue::LongLongInt(5))]), None),
            (table(&[("x-message-ttl", AMQPValue::ShortShortUInt(5))]), None),
            (table(&[("x-message-ttl", AMQPValue::LongUInt(5))]), None),
            (
                table(&[("x-message-ttl", AMQPValue::LongInt(-1))]),
                Some("invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}"),
            ),
            (
                table(&[("x-message-ttl", longstr("5"))]),
                Some("invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {unacceptable_type,longstr}"),
            ),
            (table(&[("x-expires", AMQPValue::LongInt(0))]), Some("invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}")),
            (table(&[("x-max-length", AMQPValue::LongInt(0))]), None),
            (table(&[("x-max-priority", AMQPValue::LongInt(255))]), None),
            (
                table(&[("x-max-priority", AMQPValue::LongInt(256))]),
                Some("invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,256}"),
            ),
            (table(&[("x-overflow", longstr("reject-publish-dlx"))]), None),
            (
                table(&[("x-overflow", longstr("nope"))]),
                Some("invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow"),
            ),
            (
                table(&[("x-dead-letter-routing-key", longstr("k"))]),
                Some("invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined"),
            ),
            (table(&[("x-dead-letter-routing-key", longstr("k")), ("x-dead-letter-exchange", longstr("d"))]), None),
            (
                table(&[("x-dead-letter-exchange", AMQPValue::LongInt(1))]),
                Some("invalid arg 'x-dead-letter-exchange' for queue 'q' in vhost '/': {unacceptable_type,signedint}"),
            ),
            (table(&[("x-single-active-consumer", AMQPValue::Boolean(false))]), None),
            // RabbitMQ 3.10.8's texts: only a boolean will do.
            (
                table(&[("x-single-active-consumer", longstr("true"))]),
                Some("invalid arg 'x-single-active-consumer' for queue 'q' in vhost '/': {unacceptable_type,longstr}"),
            ),
            (
                table(&[("x-single-active-consumer", AMQPValue::LongLongInt(1))]),
                Some("invalid arg 'x-single-active-consumer' for queue 'q' in vhost '/': {unacceptable_type,long}"),
            ),
        ];
        for (args, want) in cases {
            let got = parse_queue_args(&args, what).err().map(|e| e.text);
            assert_eq!(got.as_deref(), want, "{args:?}");
        }
    }

    #[test]
    fn equivalence_compares_ints_by_value() {
        let a = table(&[("x-message-ttl", AMQPValue::LongInt(1000))]);
        let b = table(&[("x-message-ttl", AMQPValue::LongLongInt(1000))]);
        assert!(
            assert_args_equivalence(&a, &b, "queue 'q' in vhost '/'", QUEUE_EQUIVALENCE_KEYS)
                .is_ok()
        );
        let c = table(&[("x-message-ttl", AMQPValue::LongLongInt(2000))]);
        let err = assert_args_equivalence(&a, &c, "queue 'q' in vhost '/'", QUEUE_EQUIVALENCE_KEYS)
            .unwrap_err();
        assert_eq!(
            err.text,
            "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '2000' but current is '1000'"
        );
        let err = assert_args_equivalence(
            &FieldTable::default(),
            &c,
            "queue 'q' in vhost '/'",
            QUEUE_EQUIVALENCE_KEYS,
        )
        .unwrap_err();
        assert!(err.text.ends_with("but current is none"), "{}", err.text);
    }

    #[test]
    fn policy_overlay() {
        let def: JsonMap = serde_json::from_str(
            r#"{"message-ttl": 10, "max-length": 5, "dead-letter-exchange": "dlx"}"#,
        )
        .unwrap();
        let args = table(&[("x-message-ttl", AMQPValue::LongInt(99))]);
        let cfg = effective_queue_config(&args, Some(&def));
        assert_eq!(cfg.message_ttl, Some(99));
        assert_eq!(cfg.max_length, Some(5));
        assert_eq!(cfg.dead_letter_exchange.as_deref(), Some("dlx"));
        // Not a policy key in RabbitMQ 3.10: only the argument turns it on.
        let sac: JsonMap = serde_json::from_str(r#"{"single-active-consumer": true}"#).unwrap();
        assert!(!effective_queue_config(&args, Some(&sac)).single_active_consumer);
        let on = table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]);
        assert!(effective_queue_config(&on, Some(&def)).single_active_consumer);
        assert!(effective_queue_config(&on, None).single_active_consumer);
        let bad: JsonMap = serde_json::from_str(r#"{"message-ttl": -1}"#).unwrap();
        assert!(validate_policy(&bad).is_err());
    }
}
