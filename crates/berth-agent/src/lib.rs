//! The berth agent: registers the node with the cluster servers, syncs with
//! them (status updates, heartbeats, the desired task set by long poll),
//! runs command tasks on the host in cgroups and container tasks through
//! the engine, and recovers both after a restart.
//!
//! Everything the agent must not lose lives under its data directory:
//! `agent.json` (its id), `updates.json` (status updates not yet
//! acknowledged), `tasks/<task>/` (sandboxes, see [`sandbox`]) and
//! `engine/` (the container engine's state); with a cluster token also
//! `cluster-identity.pem`, its certificate for mutual TLS with the servers
//! (see `enrol.rs`).
#![forbid(unsafe_code)]

pub mod agent;
pub mod command;
pub mod config;
pub mod container;
pub mod core;
mod enrol;
pub mod error;
pub mod http;
pub mod pull;
pub mod reconcile;
pub mod resources;
pub mod sandbox;
pub mod shim;
pub mod sim;
pub mod sink;
pub mod updates;
pub mod util;

pub use agent::{run, run_with_engine};
pub use command::{CommandConfig, CommandExecutor};
pub use config::AgentConfig;
pub use container::ContainerExecutor;
pub use error::AgentError;
pub use resources::detect_resources;
pub use shim::task_shim_main;
pub use sim::run_simulated;
pub use sink::{KillReason, Recovered, RecoveredState, StatusSink, TaskEvent};
