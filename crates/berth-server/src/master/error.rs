//! Errors of master operations; the HTTP layer maps each kind to a status.

use crate::replica::ReplicaError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterError {
    /// This server does not lead (any more); the client retries elsewhere.
    #[error("not the leader")]
    NotLeader { leader_address: Option<String> },
    /// Leading, but the leader loops are still starting, or a write was not
    /// confirmed; the client retries.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The call needs a live subscription it does not have.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
}

impl From<ReplicaError> for MasterError {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::NotLeader { leader_address } => MasterError::NotLeader { leader_address },
            ReplicaError::Unconfirmed(m) => {
                MasterError::Unavailable(format!("write not confirmed: {m}"))
            }
            ReplicaError::Other(m) => MasterError::Internal(m),
        }
    }
}

impl MasterError {
    /// Maps an apply refusal: messages ending in "not found" are 404s,
    /// everything else is `other`.
    pub(crate) fn refused(msg: String, other: fn(String) -> MasterError) -> MasterError {
        if msg.ends_with("not found") {
            MasterError::NotFound(msg)
        } else {
            other(msg)
        }
    }
}
