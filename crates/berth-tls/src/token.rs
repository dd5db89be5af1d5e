//! Comparing a presented token with the cluster's.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Whether `given` is the cluster token `expected`, in constant time.
///
/// Both sides are hashed first so neither the content nor the length of
/// the expected token leaks through timing. An empty `expected` never
/// matches: a server without a token must not accept everyone by accident.
pub fn token_matches(given: &str, expected: &str) -> bool {
    if expected.is_empty() {
        return false;
    }
    let g = Sha256::digest(given.as_bytes());
    let e = Sha256::digest(expected.as_bytes());
    bool::from(g.ct_eq(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_same_token() {
        assert!(token_matches("s3cret-token", "s3cret-token"));
        assert!(!token_matches("s3cret-tokeN", "s3cret-token"));
        assert!(!token_matches("s3cret", "s3cret-token"));
        assert!(!token_matches("", "s3cret-token"));
        assert!(!token_matches("", ""));
    }
}
