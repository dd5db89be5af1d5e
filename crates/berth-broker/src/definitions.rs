//! The definitions file: users, vhosts, permissions, policies, exchanges, queues
//! and bindings as one JSON document, in RabbitMQ's format so that files move
//! between the two (`rabbitmqctl export_definitions` / `import_definitions`).
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Tags {
    List(Vec<String>),
    Text(String),
    #[default]
    #[serde(skip)]
    None,
}

impl Tags {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Tags::List(v) => v.iter().filter(|t| !t.is_empty()).cloned().collect(),
            Tags::Text(s) => s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect(),
            Tags::None => Vec::new(),
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
pub fn json_to_field_table(args: &JsonMap) -> berth_amqp::FieldTable {
    let _ = args;
    todo!("auth/definitions helper")
}

/// The inverse of [`json_to_field_table`] for export and the management API.
pub fn field_table_to_json(table: &berth_amqp::FieldTable) -> JsonMap {
    let _ = table;
    todo!("auth/definitions helper")
}

/// Errors of reading or applying a definitions file; each names the entry.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    #[error("{path}: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("definitions: {what}: {reason}")]
    Invalid { what: String, reason: String },
}

/// Everything durable in the broker as one document (users with hashes,
/// vhosts, permissions, policies, durable exchanges/queues and their bindings;
/// the default `amq.*` exchanges are left out, as RabbitMQ does).
pub fn export(broker: &crate::Broker) -> Definitions {
    let _ = broker;
    todo!("auth/definitions helper")
}

/// Applies a definitions document: creates or updates what it names (vhosts
/// first, then users, permissions, policies, exchanges, queues, bindings).
/// Validation errors name the entry, e.g. `definitions: queue 'q' in vhost '/': ...`.
pub fn import(broker: &crate::Broker, defs: &Definitions) -> Result<(), DefinitionsError> {
    let _ = (broker, defs);
    todo!("auth/definitions helper")
}

/// Reads a definitions file; errors name the file (and serde's line/column).
pub fn read_file(path: &std::path::Path) -> Result<Definitions, DefinitionsError> {
    let _ = path;
    todo!("auth/definitions helper")
}
