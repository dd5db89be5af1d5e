//! The berth node API: JSON bodies exchanged over HTTP/1.1 on a unix socket,
//! the framing used by attach, exec and logs streams, and a typed client.
//!
//! Every path starts with `/v1`; see docs/api.md for the reference.
#![forbid(unsafe_code)]

pub mod client;
pub mod cluster;
pub mod cluster_client;
pub mod dto;
pub mod frame;

pub use client::{Client, ClientError};
pub use dto::*;
pub use frame::{Frame, FrameKind, FrameReader};

/// Version of the HTTP API; bumped on incompatible changes.
pub const API_VERSION: &str = "v1";
/// Socket used when neither `--socket` nor `BERTH_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/berth/berth.sock";
