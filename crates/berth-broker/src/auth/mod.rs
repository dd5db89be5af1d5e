//! Users, password hashes and per-vhost permissions (RabbitMQ's model).
//! Passwords are stored as RabbitMQ's salted SHA-256 so definitions files move
//! between the two; the check is constant-time.
use std::sync::Arc;

use crate::definitions::{PermissionDef, UserDef};

pub mod password;
pub mod permissions;

/// What a resource is being used for (RabbitMQ's configure/write/read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

/// An authenticated user.
#[derive(Debug)]
pub struct User {
    pub name: String,
    pub tags: Vec<String>,
}

impl User {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Deliberately the same text for unknown users and wrong passwords.
    #[error("user '{0}': invalid credentials")]
    InvalidCredentials(String),
    #[error("user '{0}' can only connect via localhost")]
    LoopbackOnly(String),
    #[error("user '{user}': {reason}")]
    Invalid { user: String, reason: String },
    #[error("no access to vhost '{vhost}' for user '{user}'")]
    NoVhostAccess { user: String, vhost: String },
    #[error("permission regex '{regex}' for user '{user}' in vhost '{vhost}': {reason}")]
    BadRegex { user: String, vhost: String, regex: String, reason: String },
}

/// The user database. Changes are made here and logged by the caller.
pub struct Users {}

impl Users {
    /// An empty database; `loopback_users` can only connect from 127.0.0.0/8 or ::1
    /// (RabbitMQ's default: `guest`).
    pub fn new(loopback_users: Vec<String>) -> Self {
        let _ = loopback_users;
        todo!("auth helper")
    }

    /// Checks a password (and loopback restriction for `peer`).
    pub fn authenticate(&self, username: &str, password: &str, peer: std::net::IpAddr) -> Result<Arc<User>, AuthError> {
        let _ = (username, password, peer);
        todo!("auth helper")
    }

    /// Adds or replaces a user from its definition (hash already computed).
    pub fn put(&self, def: UserDef) -> Result<(), AuthError> {
        let _ = def;
        todo!("auth helper")
    }

    pub fn delete(&self, name: &str) -> bool {
        let _ = name;
        todo!("auth helper")
    }

    pub fn get(&self, name: &str) -> Option<UserDef> {
        let _ = name;
        todo!("auth helper")
    }

    pub fn list(&self) -> Vec<UserDef> {
        todo!("auth helper")
    }

    /// Sets permissions (regexes compiled now; a bad one is an error naming it).
    pub fn set_permission(&self, def: PermissionDef) -> Result<(), AuthError> {
        let _ = def;
        todo!("auth helper")
    }

    pub fn clear_permission(&self, user: &str, vhost: &str) -> bool {
        let _ = (user, vhost);
        todo!("auth helper")
    }

    pub fn permissions(&self) -> Vec<PermissionDef> {
        todo!("auth helper")
    }

    /// May `user` open `vhost` at all (has any permission entry)?
    pub fn can_access_vhost(&self, user: &str, vhost: &str) -> bool {
        let _ = (user, vhost);
        todo!("auth helper")
    }

    /// Whether `user` may use `resource` (an exchange or queue name) for `access`
    /// in `vhost`. RabbitMQ's rules: the regex must match the whole name... no:
    /// it is an unanchored search like RabbitMQ's `re:run`, and the default
    /// exchange is checked as `amq.default`.
    pub fn check(&self, user: &str, vhost: &str, access: Access, resource: &str) -> bool {
        let _ = (user, vhost, access, resource);
        todo!("auth helper")
    }

    /// Drops every permission on a deleted vhost.
    pub fn vhost_deleted(&self, vhost: &str) {
        let _ = vhost;
        todo!("auth helper")
    }
}
