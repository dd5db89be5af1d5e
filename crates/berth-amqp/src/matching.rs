//! Routing matchers: topic patterns (`*` one word, `#` zero or more words) and
//! headers-exchange binding arguments (x-match all/any, also all-with-x/any-with-x).
use amq_protocol::types::{AMQPValue, FieldTable};

/// Splits a key into words the way RabbitMQ does: the empty key has no
/// words, otherwise every `.` separates two (possibly empty) words.
fn words(key: &str) -> impl Iterator<Item = &str> + Clone {
    let mut it = key.split('.');
    if key.is_empty() {
        // `"".split('.')` yields one empty word; RabbitMQ's key has none.
        it.next();
    }
    it
}

/// Whether a topic binding pattern matches a routing key (words split on `.`).
///
/// Runs in O(pattern words × key words) time with one row of state, so
/// patterns such as `#.#.#.#...` cannot cause exponential backtracking.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    if !pattern.contains(['*', '#']) {
        return pattern == routing_key;
    }
    if pattern == "#" {
        return true;
    }
    let key: Vec<&str> = words(routing_key).collect();
    // row[j]: the pattern words seen so far match the first j key words.
    let mut row = vec![false; key.len() + 1];
    row[0] = true;
    let mut previous_hash = false;
    for word in words(pattern) {
        if word == "#" {
            // Consecutive `#`s match the same as one.
            if previous_hash {
                continue;
            }
            previous_hash = true;
            // Zero or more words: true from the first reachable prefix on.
            let mut reached = false;
            for cell in row.iter_mut() {
                reached |= *cell;
                *cell = reached;
            }
        } else {
            previous_hash = false;
            // Exactly one word: shift right where the word matches.
            for j in (1..row.len()).rev() {
                row[j] = row[j - 1] && (word == "*" || word == key[j - 1]);
            }
            row[0] = false;
        }
        if !row.iter().any(|&c| c) {
            return false;
        }
    }
    row[key.len()]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

fn string_value(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

fn x_match(binding_args: &FieldTable) -> Result<XMatch, String> {
    let Some(value) = binding_args.inner().get("x-match") else {
        return Ok(XMatch::All);
    };
    match string_value(value) {
        Some(b"all") => Ok(XMatch::All),
        Some(b"any") => Ok(XMatch::Any),
        Some(b"all-with-x") => Ok(XMatch::AllWithX),
        Some(b"any-with-x") => Ok(XMatch::AnyWithX),
        Some(other) => Err(format!(
            "Invalid x-match field value <<\"{}\">>; expected all, any, all-with-x, or any-with-x",
            String::from_utf8_lossy(other)
        )),
        None => Err(format!(
            "Invalid x-match field type {} (value {}); expected longstr",
            type_name(value),
            value_text(value)
        )),
    }
}

/// RabbitMQ's names for field types, as its error texts print them.
fn type_name(value: &AMQPValue) -> &'static str {
    match value {
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
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

fn value_text(value: &AMQPValue) -> String {
    match integer(value) {
        Some(n) => n.to_string(),
        None => match value {
            AMQPValue::Boolean(b) => b.to_string(),
            AMQPValue::Float(f) => f.to_string(),
            AMQPValue::Double(f) => f.to_string(),
            AMQPValue::Void => "undefined".to_string(),
            _ => "...".to_string(),
        },
    }
}

/// The value of an integer field whatever its width (timestamps are integers
/// to RabbitMQ too).
fn integer(value: &AMQPValue) -> Option<i128> {
    Some(match *value {
        AMQPValue::ShortShortInt(v) => v.into(),
        AMQPValue::ShortShortUInt(v) => v.into(),
        AMQPValue::ShortInt(v) => v.into(),
        AMQPValue::ShortUInt(v) => v.into(),
        AMQPValue::LongInt(v) => v.into(),
        AMQPValue::LongUInt(v) => v.into(),
        AMQPValue::LongLongInt(v) => v.into(),
        AMQPValue::Timestamp(v) => v.into(),
        _ => return None,
    })
}

fn float(value: &AMQPValue) -> Option<f64> {
    match *value {
        AMQPValue::Float(v) => Some(v.into()),
        AMQPValue::Double(v) => Some(v),
        _ => None,
    }
}

fn bytes_value(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        other => string_value(other),
    }
}

/// Equality as Erlang's `==` sees the decoded values: numbers compare by value
/// across widths (and with floats), strings and byte arrays by their bytes.
fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (integer(a), integer(b)) {
        return x == y;
    }
    match (
        integer(a).map(|i| i as f64).or_else(|| float(a)),
        integer(b).map(|i| i as f64).or_else(|| float(b)),
    ) {
        (Some(x), Some(y)) => return x == y,
        (Some(_), None) | (None, Some(_)) => return false,
        (None, None) => {}
    }
    if let (Some(x), Some(y)) = (bytes_value(a), bytes_value(b)) {
        return x == y;
    }
    match (a, b) {
        (AMQPValue::Boolean(x), AMQPValue::Boolean(y)) => x == y,
        (AMQPValue::DecimalValue(x), AMQPValue::DecimalValue(y)) => x == y,
        (AMQPValue::Void, AMQPValue::Void) => true,
        (AMQPValue::FieldArray(x), AMQPValue::FieldArray(y)) => {
            x.as_slice().len() == y.as_slice().len()
                && x.as_slice()
                    .iter()
                    .zip(y.as_slice())
                    .all(|(p, q)| values_equal(p, q))
        }
        (AMQPValue::FieldTable(x), AMQPValue::FieldTable(y)) => {
            x.inner().len() == y.inner().len()
                && x.inner()
                    .iter()
                    .zip(y.inner())
                    .all(|((kx, vx), (ky, vy))| kx == ky && values_equal(vx, vy))
        }
        _ => false,
    }
}

/// Whether a headers-exchange binding's arguments match a message's headers,
/// following RabbitMQ: x-match defaults to all; keys starting with `x-` are
/// ignored unless x-match is all-with-x/any-with-x; a void binding value matches
/// presence alone.
pub fn headers_match(binding_args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    // An invalid x-match cannot be bound (validate_x_match); like RabbitMQ's
    // parse_x_match, anything unrecognised means all.
    let kind = x_match(binding_args).unwrap_or(XMatch::All);
    let with_x = matches!(kind, XMatch::AllWithX | XMatch::AnyWithX);
    let all = matches!(kind, XMatch::All | XMatch::AllWithX);
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty).inner();
    let mut any_matched = false;
    for (key, expected) in binding_args.inner() {
        let key = key.as_str();
        // x-match itself is the binding's mode, never a header to compare.
        if key == "x-match" || (!with_x && key.starts_with("x-")) {
            continue;
        }
        let matched = match headers.get(key) {
            None => false,
            Some(_) if matches!(expected, AMQPValue::Void) => true,
            Some(actual) => values_equal(expected, actual),
        };
        if all && !matched {
            return false;
        }
        if !all && matched {
            return true;
        }
        any_matched |= matched;
    }
    all || any_matched
}

/// Checks a headers binding's x-match value: `Err(text)` names the bad value.
pub fn validate_x_match(binding_args: &FieldTable) -> Result<(), String> {
    x_match(binding_args).map(|_| ())
}

#[cfg(test)]
#[path = "matching_tests.rs"]
mod tests;
