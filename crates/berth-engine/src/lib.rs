//! The node-local container engine: container records and their lifecycle,
//! the per-container shim process, logs, published ports, restart policies,
//! `exec`, and the bridge between builds and the runtime.
#![forbid(unsafe_code)]

pub mod build_runner;
pub mod engine;
pub mod error;
pub mod exec_helper;
pub mod fsutil;
pub mod ipam;
pub mod logs;
pub mod names;
pub mod paths;
pub mod ports;
pub mod record;
pub mod shim;
pub mod spec;

pub use engine::Engine;
pub use error::EngineError;
pub use paths::DataDir;
