//! Container identifiers: 64 lowercase hex digits, shown as the first 12.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContainerId(String);

impl ContainerId {
    /// Builds an id from 32 random bytes supplied by the caller (ids are
    /// generated outside this crate so that it stays free of randomness).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut s = String::with_capacity(64);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Self(s)
    }

    /// Accepts a full 64-digit id.
    pub fn parse(s: &str) -> Result<Self, crate::ParseError> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_string()))
        } else {
            Err(crate::ParseError::new(
                "container id",
                s,
                "expected 64 lowercase hex digits",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 12-digit form shown by `ps`.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Container names follow Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn validate_name(name: &str) -> Result<(), crate::ParseError> {
    let mut chars = name.chars();
    let ok_first = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok_first && ok_rest && name.len() <= 128 {
        Ok(())
    } else {
        Err(crate::ParseError::new(
            "container name",
            name,
            "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, at most 128 characters",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_shorten() {
        let id = ContainerId::from_bytes([0xab; 32]);
        assert_eq!(id.as_str().len(), 64);
        assert_eq!(id.short(), "abababababab");
        assert_eq!(ContainerId::parse(id.as_str()).unwrap(), id);
        assert!(ContainerId::parse("xyz").is_err());
        assert!(ContainerId::parse(&"A".repeat(64)).is_err());
    }

    #[test]
    fn names() {
        for ok in ["web", "a", "web-1", "my_app.2"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-web", "we b", "a/b", "_x"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
