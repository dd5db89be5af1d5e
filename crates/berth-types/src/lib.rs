//! berth's domain model: identifiers, user-facing value parsers and the
//! container specification shared by the API, the engine and the CLI.
//!
//! This crate does no I/O and uses no async runtime, so every parser here is
//! tested with tables of cases.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod container;
pub mod id;
pub mod image_ref;
pub mod values;

pub use cluster::{
    parse_attributes, valid_name, Attributes, Constraint, JobSpec, NodeState, Resources, TaskKind,
    TaskState,
};
pub use container::{ContainerConfig, ContainerState, ExitStatus, NetworkMode, RestartPolicy};
pub use id::ContainerId;
pub use image_ref::ImageRef;
pub use values::{parse_cpus, parse_memory, PortMapping, PortProto, VolumeMount};

/// Error raised when a user-supplied value cannot be parsed; the message
/// names the value and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct ParseError {
    pub what: &'static str,
    pub value: String,
    pub reason: String,
}

impl ParseError {
    pub fn new(what: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            what,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
