//! Dead-lettering: the copy a queue republishes to its dead-letter exchange,
//! with RabbitMQ 3.10's x-death bookkeeping and cycle detection.
use std::collections::BTreeMap;
use std::sync::Arc;

use berth_amqp::{AMQPValue, BasicProperties, FieldTable, ShortString};

use super::args::{as_string, longstr};
use crate::types::{Message, MessageId, MessageRef};

/// Why a message was dead-lettered (x-death's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    MaxLen,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::MaxLen => "maxlen",
        }
    }
}

/// A message leaving a queue towards its dead-letter exchange; turned into a
/// new message by [`dead_letter_message`] after the queue is unlocked.
pub(crate) struct DeadLetter {
    pub message: MessageRef,
    pub reason: Reason,
    pub exchange: Arc<str>,
    pub routing_key: Option<Arc<str>>,
}

fn table_get<'a>(t: &'a FieldTable, k: &str) -> Option<&'a AMQPValue> {
    t.inner().get(k)
}

fn entry_str(entry: &FieldTable, k: &str) -> Option<String> {
    table_get(entry, k).and_then(as_string)
}

/// The x-death entries of a message, newest first.
fn x_deaths(headers: Option<&FieldTable>) -> Vec<FieldTable> {
    match headers.and_then(|h| table_get(h, "x-death")) {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(|v| match v {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The copy to republish: a fresh id, the dead-letter routing key if set, no
/// expiration, and x-death / x-first-death-* headers updated as RabbitMQ does.
pub(crate) fn dead_letter_message(
    dl: &DeadLetter,
    queue: &str,
    id: MessageId,
    now_ms: u64,
) -> Message {
    let orig = &dl.message;
    let props = &orig.properties;
    let mut headers: BTreeMap<ShortString, AMQPValue> = props
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    let mut deaths = x_deaths(props.headers().as_ref());
    let reason = dl.reason.as_str();
    let existing = deaths.iter().position(|d| {
        entry_str(d, "queue").as_deref() == Some(queue)
            && entry_str(d, "reason").as_deref() == Some(reason)
    });
    let entry = match existing {
        Some(i) => {
            let mut map = deaths.remove(i).inner().clone();
            let count = map.get("count").and_then(super::args::as_int).unwrap_or(0);
            map.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            FieldTable::from(map)
        }
        None => {
            let mut e = FieldTable::default();
            e.insert("count".into(), AMQPValue::LongLongInt(1));
            e.insert("reason".into(), longstr(reason));
            e.insert("queue".into(), longstr(queue));
            e.insert("time".into(), AMQPValue::Timestamp(now_ms / 1000));
            e.insert("exchange".into(), longstr(&orig.exchange));
            e.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(vec![longstr(&orig.routing_key)].into()),
            );
            if let Some(exp) = props.expiration() {
                e.insert("original-expiration".into(), longstr(exp.as_str()));
            }
            e
        }
    };
    deaths.insert(0, entry);
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(
            deaths
                .into_iter()
                .map(AMQPValue::FieldTable)
                .collect::<Vec<_>>()
                .into(),
        ),
    );
    for (k, v) in [
        ("x-first-death-queue", queue),
        ("x-first-death-reason", reason),
        ("x-first-death-exchange", &orig.exchange),
    ] {
        headers.entry(k.into()).or_insert_with(|| longstr(v));
    }
    Message {
        id,
        exchange: dl.exchange.to_string(),
        routing_key: dl
            .routing_key
            .as_deref()
            .map(str::to_string)
            .unwrap_or_else(|| orig.routing_key.clone()),
        properties: without_expiration(props).with_headers(FieldTable::from(headers)),
        body: orig.body.clone(),
    }
}

/// The properties minus `expiration` (the builder cannot unset a field).
fn without_expiration(p: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

/// RabbitMQ's `is_cycle`: the dead-lettered message (x-death already updated)
/// would re-enter `queue`, which it died in before, with only automatic deaths
/// (expired, maxlen) since. Such a queue is skipped. Never a cycle when the
/// current death is a rejection (a client is involved).
pub(crate) fn is_cycle(message: &Message, queue: &str) -> bool {
    let deaths = x_deaths(message.properties.headers().as_ref());
    let Some(pos) = deaths
        .iter()
        .position(|d| entry_str(d, "queue").as_deref() == Some(queue))
    else {
        return false;
    };
    deaths[..=pos]
        .iter()
        .all(|d| entry_str(d, "reason").as_deref() != Some("rejected"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(props: BasicProperties) -> MessageRef {
        Arc::new(Message {
            id: 1,
            exchange: "ex".into(),
            routing_key: "rk".into(),
            properties: props,
            body: Bytes::from_static(b"hi"),
        })
    }

    fn deaths_of(m: &Message) -> Vec<FieldTable> {
        x_deaths(m.properties.headers().as_ref())
    }

    #[test]
    fn x_death_entries_are_added_then_counted() {
        let orig = msg(BasicProperties::default()
            .with_expiration("5000".into())
            .with_delivery_mode(2));
        let dl = DeadLetter {
            message: orig,
            reason: Reason::Expired,
            exchange: "dlx".into(),
            routing_key: Some("dead".into()),
        };
        let m1 = dead_letter_message(&dl, "q1", 7, 3_000);
        assert_eq!(m1.id, 7);
        assert_eq!(m1.exchange, "dlx");
        assert_eq!(m1.routing_key, "dead");
        assert!(m1.properties.expiration().is_none());
        assert_eq!(m1.properties.delivery_mode(), &Some(2));
        let d = deaths_of(&m1);
        assert_eq!(d.len(), 1);
        assert_eq!(entry_str(&d[0], "queue").as_deref(), Some("q1"));
        assert_eq!(entry_str(&d[0], "reason").as_deref(), Some("expired"));
        assert_eq!(entry_str(&d[0], "exchange").as_deref(), Some("ex"));
        assert_eq!(
            entry_str(&d[0], "original-expiration").as_deref(),
            Some("5000")
        );
        assert_eq!(table_get(&d[0], "count"), Some(&AMQPValue::LongLongInt(1)));
        assert_eq!(table_get(&d[0], "time"), Some(&AMQPValue::Timestamp(3)));
        assert_eq!(
            table_get(&d[0], "routing-keys"),
            Some(&AMQPValue::FieldArray(vec![longstr("rk")].into()))
        );
        assert_eq!(m1.header("x-first-death-queue"), Some(&longstr("q1")));
        assert_eq!(m1.header("x-first-death-reason"), Some(&longstr("expired")));
        assert_eq!(m1.header("x-first-death-exchange"), Some(&longstr("ex")));

        // Dies in q2 (rejected), then in q1 again: q1's entry is counted and moves to the front.
        let m2 = dead_letter_message(
            &DeadLetter {
                message: Arc::new(m1),
                reason: Reason::Rejected,
                exchange: "dlx".into(),
                routing_key: None,
            },
            "q2",
            8,
            4_000,
        );
        assert_eq!(m2.routing_key, "dead");
        let m3 = dead_letter_message(
            &DeadLetter {
                message: Arc::new(m2),
                reason: Reason::Expired,
                exchange: "dlx".into(),
                routing_key: None,
            },
            "q1",
            9,
            5_000,
        );
        let d = deaths_of(&m3);
        assert_eq!(d.len(), 2);
        assert_eq!(entry_str(&d[0], "queue").as_deref(), Some("q1"));
        assert_eq!(table_get(&d[0], "count"), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(entry_str(&d[1], "queue").as_deref(), Some("q2"));
        assert_eq!(m3.header("x-first-death-queue"), Some(&longstr("q1")));
    }

    #[test]
    fn cycles_without_rejection_are_detected() {
        let orig = msg(BasicProperties::default());
        let dl = |m: MessageRef, r| DeadLetter {
            message: m,
            reason: r,
            exchange: "dlx".into(),
            routing_key: None,
        };
        let m1 = Arc::new(dead_letter_message(&dl(orig, Reason::Expired), "a", 2, 0));
        assert!(is_cycle(&m1, "a"));
        assert!(!is_cycle(&m1, "b"));
        let m2 = Arc::new(dead_letter_message(&dl(m1, Reason::Rejected), "b", 3, 0));
        // a rejection between: not a cycle for a
        assert!(!is_cycle(&m2, "a"));
        assert!(!is_cycle(&m2, "b"));
        let m3 = dead_letter_message(&dl(m2, Reason::MaxLen), "c", 4, 0);
        assert!(is_cycle(&m3, "c"));
        assert!(!is_cycle(&m3, "a"));
    }
}
