//! Users, password hashes and per-vhost permissions (RabbitMQ's model).
//! Passwords are stored as RabbitMQ's salted SHA-256 so definitions files move
//! between the two; the check is constant-time.
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::definitions::{PermissionDef, Tags, UserDef};

pub mod password;
pub mod permissions;

/// What a resource is being used for (RabbitMQ's configure/write/read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

impl Access {
    /// RabbitMQ's word for it (`configure`, `write`, `read`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// An authenticated user.
#[derive(Debug, PartialEq, Eq)]
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
    BadRegex {
        user: String,
        vhost: String,
        regex: String,
        reason: String,
    },
}

/// A well-formed hash that no password is checked against successfully in
/// practice; verified for unknown users so they take as long as known ones.
const DUMMY_HASH: &str = "AAAAAN8/YZgEqS/bQFcZLcQ910jqd4rcUrxJjOgFJMAUuBEZ";

struct Entry {
    def: UserDef,
    user: Arc<User>,
}

/// The user database. Changes are made here and logged by the caller.
pub struct Users {
    loopback_users: Vec<String>,
    users: RwLock<BTreeMap<String, Entry>>,
    /// user → vhost → permission; nested so checks look up by `&str` without allocating.
    permissions: RwLock<HashMap<String, HashMap<String, Arc<permissions::Permission>>>>,
}

/// 127.0.0.0/8, ::1 and IPv4-mapped 127.x (RabbitMQ's `rabbit_net:is_loopback`).
pub fn is_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

impl Users {
    /// An empty database; `loopback_users` can only connect from 127.0.0.0/8 or ::1
    /// (RabbitMQ's default: `guest`).
    pub fn new(loopback_users: Vec<String>) -> Self {
        Self {
            loopback_users,
            users: RwLock::new(BTreeMap::new()),
            permissions: RwLock::new(HashMap::new()),
        }
    }

    /// Checks a password (and loopback restriction for `peer`).
    pub fn authenticate(
        &self,
        username: &str,
        password: &str,
        peer: std::net::IpAddr,
    ) -> Result<Arc<User>, AuthError> {
        let found = self
            .users
            .read()
            .get(username)
            .map(|e| (e.def.password_hash.clone(), e.user.clone()));
        let user = match found {
            Some((hash, user)) if !hash.is_empty() => {
                password::verify(&hash, password).then_some(user)
            }
            // Unknown user or no password: same work, same answer as a wrong password.
            _ => {
                let _ = password::verify(DUMMY_HASH, password);
                None
            }
        };
        let user = user.ok_or_else(|| AuthError::InvalidCredentials(username.to_string()))?;
        // After the password, like RabbitMQ: only the right password learns about the restriction.
        if self.loopback_users.iter().any(|u| u == username) && !is_loopback(peer) {
            return Err(AuthError::LoopbackOnly(username.to_string()));
        }
        Ok(user)
    }

    /// Adds or replaces a user from its definition (hash already computed).
    pub fn put(&self, def: UserDef) -> Result<(), AuthError> {
        let def = validate(def)?;
        let mut users = self.users.write();
        insert(&mut users, def);
        Ok(())
    }

    /// Adds or updates a user from a plain password: `None` keeps the old hash
    /// (a new user then has none and cannot log in). Returns the stored
    /// definition, for the metadata log.
    pub fn upsert(
        &self,
        name: &str,
        password: Option<&str>,
        tags: Vec<String>,
    ) -> Result<UserDef, AuthError> {
        let mut users = self.users.write();
        let password_hash = match password {
            Some(p) => password::hash(p),
            None => users
                .get(name)
                .map(|e| e.def.password_hash.clone())
                .unwrap_or_default(),
        };
        let def = validate(UserDef {
            name: name.to_string(),
            password_hash,
            hashing_algorithm: password::ALGORITHM.to_string(),
            tags: Tags::List(tags),
        })?;
        insert(&mut users, def.clone());
        Ok(def)
    }

    /// Removes a user and its permissions.
    pub fn delete(&self, name: &str) -> bool {
        let removed = self.users.write().remove(name).is_some();
        self.permissions.write().remove(name);
        removed
    }

    pub fn get(&self, name: &str) -> Option<UserDef> {
        self.users.read().get(name).map(|e| e.def.clone())
    }

    /// The user as [`Users::authenticate`] returns it, without a password check.
    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.users.read().get(name).map(|e| e.user.clone())
    }

    pub fn list(&self) -> Vec<UserDef> {
        self.users.read().values().map(|e| e.def.clone()).collect()
    }

    /// Sets permissions (regexes compiled now; a bad one is an error naming it).
    /// Whether the user and vhost exist is the caller's check (the broker knows
    /// the vhosts; replaying a log must not fail on an order it did not choose).
    pub fn set_permission(&self, def: PermissionDef) -> Result<(), AuthError> {
        if def.user.is_empty() {
            return Err(AuthError::Invalid {
                user: def.user,
                reason: "empty user name".to_string(),
            });
        }
        let compiled = Arc::new(permissions::Permission::compile(def)?);
        let def = compiled.def();
        self.permissions
            .write()
            .entry(def.user.clone())
            .or_default()
            .insert(def.vhost.clone(), compiled.clone());
        Ok(())
    }

    pub fn clear_permission(&self, user: &str, vhost: &str) -> bool {
        let mut perms = self.permissions.write();
        let Some(by_vhost) = perms.get_mut(user) else {
            return false;
        };
        let removed = by_vhost.remove(vhost).is_some();
        if by_vhost.is_empty() {
            perms.remove(user);
        }
        removed
    }

    /// Every permission entry, sorted by user then vhost.
    pub fn permissions(&self) -> Vec<PermissionDef> {
        let mut all: Vec<PermissionDef> = self
            .permissions
            .read()
            .values()
            .flat_map(|m| m.values().map(|p| p.def().clone()))
            .collect();
        all.sort_by(|a, b| (&a.user, &a.vhost).cmp(&(&b.user, &b.vhost)));
        all
    }

    /// The compiled permission of `user` in `vhost` (a channel may keep it to
    /// check without locking; it then misses later changes, as RabbitMQ's
    /// per-channel permission cache does).
    pub fn permission(&self, user: &str, vhost: &str) -> Option<Arc<permissions::Permission>> {
        self.permissions
            .read()
            .get(user)
            .and_then(|m| m.get(vhost))
            .cloned()
    }

    /// May `user` open `vhost` at all (has any permission entry)?
    pub fn can_access_vhost(&self, user: &str, vhost: &str) -> bool {
        self.permissions
            .read()
            .get(user)
            .is_some_and(|m| m.contains_key(vhost))
    }

    /// Whether `user` may use `resource` (an exchange or queue name) for `access`
    /// in `vhost`: an unanchored regex search like RabbitMQ's `re:run`; the
    /// default exchange is checked as `amq.default`; an empty regex denies all.
    pub fn check(&self, user: &str, vhost: &str, access: Access, resource: &str) -> bool {
        self.permissions
            .read()
            .get(user)
            .and_then(|m| m.get(vhost))
            .is_some_and(|p| p.allows(access, resource))
    }

    /// Drops every permission on a deleted vhost.
    pub fn vhost_deleted(&self, vhost: &str) {
        let mut perms = self.permissions.write();
        for by_vhost in perms.values_mut() {
            by_vhost.remove(vhost);
        }
        perms.retain(|_, m| !m.is_empty());
    }
}

/// Checks a user definition as [`Users::put`] does (name, algorithm, hash
/// shape) and normalises its tags to a list; callers that log before applying
/// validate first.
pub fn validate_user(def: UserDef) -> Result<UserDef, AuthError> {
    validate(def)
}

fn validate(mut def: UserDef) -> Result<UserDef, AuthError> {
    if def.name.is_empty() {
        return Err(AuthError::Invalid {
            user: def.name,
            reason: "empty user name".to_string(),
        });
    }
    if def.hashing_algorithm != password::ALGORITHM {
        return Err(AuthError::Invalid {
            user: def.name,
            reason: format!(
                "unsupported hashing algorithm '{}' (only {} is supported)",
                def.hashing_algorithm,
                password::ALGORITHM
            ),
        });
    }
    // Empty means "no password" (rabbitmqctl clear_password); anything else must decode.
    if !def.password_hash.is_empty() && !password::is_well_formed(&def.password_hash) {
        return Err(AuthError::Invalid {
            user: def.name,
            reason:
                "malformed password hash (expected base64 of a 4-byte salt and a sha256 digest)"
                    .to_string(),
        });
    }
    def.tags = Tags::List(def.tags.to_vec());
    Ok(def)
}

fn insert(users: &mut BTreeMap<String, Entry>, def: UserDef) {
    let user = Arc::new(User {
        name: def.name.clone(),
        tags: def.tags.to_vec(),
    });
    users.insert(def.name.clone(), Entry { def, user });
}

#[cfg(test)]
mod tests;
