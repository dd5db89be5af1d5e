//! The one error type of this crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A short token makes the cluster CA guessable offline from any
    /// certificate seen on the wire, so it is refused outright.
    #[error("the cluster token is too short: {len} bytes, at least {min} needed (use e.g. 32 random bytes in hex)")]
    TokenTooShort { len: usize, min: usize },
    #[error("invalid {what} {value:?}: {detail}")]
    BadName {
        what: &'static str,
        value: String,
        detail: String,
    },
    #[error("bad certificate signing request from agent {agent_id}: {detail}")]
    BadCsr { agent_id: String, detail: String },
    #[error("{what}: {source}")]
    Certificate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what}: {detail}")]
    Pem { what: String, detail: String },
    #[error("{what}: {source}")]
    Rustls {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("building the certificate verifier: {0}")]
    Verifier(String),
    /// The certificate does not chain to this token's cluster CA, is
    /// expired, or lacks the client-auth usage.
    #[error("the certificate {common_name} was not issued by this cluster's CA or is not valid now: {source} (was the token changed?)")]
    NotIssuedByCluster {
        common_name: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
