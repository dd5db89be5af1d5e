//! berth's control plane. Servers keep the cluster's state ([`state`]) in a
//! Raft log and serve the agent, scheduler and admin APIs from the leader.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod batch;
pub mod master;
pub mod raft;
pub mod registry;
pub mod replica;
pub mod server;
pub mod state;
