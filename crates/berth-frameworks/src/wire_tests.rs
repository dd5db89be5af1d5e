//! The JSON in docs/scheduler-api.md must be exactly what the DTOs read
//! and write, so the reference cannot drift from the code.

use berth_api::cluster::{CallEnvelope, Event};
use serde_json::Value;
use std::collections::BTreeSet;

const DOC: &str = include_str!("../../../docs/scheduler-api.md");

/// Numbers compared as f64, so `1` and `1.0` are the same value.
fn normalize(v: Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

/// Decodes `text` as a call or an event, and checks that encoding it again
/// gives the same JSON (no field ignored, none misspelled). Returns the
/// type name.
pub(crate) fn check(text: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let kind = v["type"].as_str().unwrap_or_default().to_string();
    let back = if let Ok(c) = serde_json::from_value::<CallEnvelope>(v.clone()) {
        serde_json::to_value(c).map_err(|e| e.to_string())?
    } else {
        let e: Event = serde_json::from_value(v.clone())
            .map_err(|e| format!("neither a call nor an event: {e}"))?;
        serde_json::to_value(e).map_err(|e| e.to_string())?
    };
    if normalize(back.clone()) != normalize(v.clone()) {
        return Err(format!("round trip changed it:\n  {v}\n  {back}"));
    }
    Ok(kind)
}

fn json_blocks(doc: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in doc.lines().enumerate() {
        match &mut current {
            None if line.trim() == "```json" => current = Some((n + 2, String::new())),
            Some(_) if line.trim() == "```" => out.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn doc_examples_match_the_dtos() {
    let mut seen = BTreeSet::new();
    for (line, text) in json_blocks(DOC) {
        match check(&text) {
            Ok(kind) => {
                seen.insert(kind);
            }
            Err(e) => panic!("docs/scheduler-api.md:{line}: {e}"),
        }
    }
    for kind in [
        "SUBSCRIBE",
        "ACCEPT",
        "DECLINE",
        "REQUEST",
        "REVIVE",
        "SUPPRESS",
        "KILL",
        "ACKNOWLEDGE",
        "RECONCILE",
        "TEARDOWN",
        "SUBSCRIBED",
        "OFFERS",
        "RESCIND",
        "UPDATE",
        "FAILURE",
        "ERROR",
        "HEARTBEAT",
    ] {
        assert!(
            seen.contains(kind),
            "docs/scheduler-api.md has no {kind} example"
        );
    }
}

#[test]
fn doc_recordio_example_lengths_are_right() {
    let line = DOC
        .lines()
        .find(|l| l.contains("\\n{\"type\":\"SUBSCRIBED\""))
        .expect("a RecordIO example");
    let mut rest = line.trim();
    let mut records = 0;
    while !rest.is_empty() {
        let (len, after) = rest.split_once("\\n").expect("a length line");
        let len: usize = len.parse().expect("a decimal length");
        let (json, next) = after.split_at(len);
        check(json).unwrap();
        rest = next;
        records += 1;
    }
    assert_eq!(records, 2);
}
