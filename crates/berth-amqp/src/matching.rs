//! Routing matchers: topic patterns (`*` one word, `#` zero or more words) and
//! headers-exchange binding arguments (x-match all/any, also all-with-x/any-with-x).
use amq_protocol::types::FieldTable;

/// Whether a topic binding pattern matches a routing key (words split on `.`).
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let _ = (pattern, routing_key);
    todo!("berth-amqp helper")
}

/// Whether a headers-exchange binding's arguments match a message's headers,
/// following RabbitMQ: x-match defaults to all; keys starting with `x-` are
/// ignored unless x-match is all-with-x/any-with-x; a void binding value matches
/// presence alone.
pub fn headers_match(binding_args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let _ = (binding_args, headers);
    todo!("berth-amqp helper")
}

/// Checks a headers binding's x-match value: `Err(text)` names the bad value.
pub fn validate_x_match(binding_args: &FieldTable) -> Result<(), String> {
    let _ = binding_args;
    todo!("berth-amqp helper")
}
