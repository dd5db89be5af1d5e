//! Cluster authentication: the cluster token is the root secret, and every
//! holder derives from it the same cluster CA, which issues the server and
//! agent certificates used for mutual TLS.
//!
//! - Servers: [`ClusterCa::issue_server`] at start, [`server_config`],
//!   [`serve_tls`]; handlers learn who called through [`PeerIdentity`]
//!   (or require it with [`AgentPeer`] / [`ServerPeer`]).
//! - Agents: [`agent_key_and_csr`] once, a server signs it with
//!   [`ClusterCa::sign_agent_csr`], the agent keeps both in an
//!   [`Identity`] file and uses [`client_config`] with it.
//! - The CLI: [`client_config`] without an identity, plus the token.
#![forbid(unsafe_code)]

mod ca;
mod config;
mod error;
mod explain;
mod identity;
mod serve;
mod token;
mod x509;

pub use ca::{
    agent_key_and_csr, ClusterCa, IssuedCert, AGENT_CN_PREFIX, CA_COMMON_NAME, LEAF_VALIDITY,
    MIN_TOKEN_LEN, SERVER_CN_PREFIX,
};
pub use config::{client_config, client_config_strict, server_config};
pub use error::TlsError;
pub use explain::{explain_tls_error, CLIENT_CERT_REFUSED, SERVER_NOT_IN_CLUSTER};
pub use identity::{Identity, IDENTITY_FILE};
pub use serve::{
    serve_tls, serve_tls_with, AgentPeer, PeerIdentity, PeerRejection, ServeOptions, ServerPeer,
};
pub use token::token_matches;
