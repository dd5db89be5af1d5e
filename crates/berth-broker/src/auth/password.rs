//! RabbitMQ-compatible password hashing: base64(salt(4) ++ sha256(salt ++ password)),
//! `rabbit_password_hashing_sha256`, so definitions files move between the two.
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The only algorithm berth accepts in definitions (RabbitMQ's default since 3.6).
pub const ALGORITHM: &str = "rabbit_password_hashing_sha256";

const SALT_LEN: usize = 4;
const DIGEST_LEN: usize = 32;

/// Hashes with a fresh random salt.
pub fn hash(password: &str) -> String {
    hash_with_salt(rand::random::<[u8; SALT_LEN]>(), password)
}

/// Hashes with a given salt (RabbitMQ's format; deterministic, for tests and tools).
pub fn hash_with_salt(salt: [u8; SALT_LEN], password: &str) -> String {
    let mut raw = Vec::with_capacity(SALT_LEN + DIGEST_LEN);
    raw.extend_from_slice(&salt);
    raw.extend_from_slice(&digest(&salt, password));
    STANDARD.encode(raw)
}

/// Whether `stored` has the shape of a salted SHA-256 hash (base64 of 36 bytes).
pub fn is_well_formed(stored: &str) -> bool {
    STANDARD
        .decode(stored)
        .map(|raw| raw.len() == SALT_LEN + DIGEST_LEN)
        .unwrap_or(false)
}

/// Checks a password against a stored hash in constant time; false for a malformed hash.
pub fn verify(stored: &str, password: &str) -> bool {
    let Ok(raw) = STANDARD.decode(stored) else {
        return false;
    };
    if raw.len() != SALT_LEN + DIGEST_LEN {
        return false;
    }
    let (salt, expected) = raw.split_at(SALT_LEN);
    digest(salt, password).as_slice().ct_eq(expected).into()
}

fn digest(salt: &[u8], password: &str) -> [u8; DIGEST_LEN] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Produced by RabbitMQ 3.10.8 (`rabbitmqctl add_user alice secret`, then
    /// `rabbitmqctl export_definitions`).
    const RABBITMQ_SECRET: &str = "nVb9NJc+nTjSOjihxV+OV/jrhrkjxR1or81wvwYcyGQFokiz";
    /// RabbitMQ 3.10.8's guest/guest from the same export.
    const RABBITMQ_GUEST: &str = "mDKj6Utpw0iMKLCn7vntv7QAdTYmKuSBXW3ZowqA4nPj2IUO";

    #[test]
    fn verifies_rabbitmq_hashes() {
        assert!(verify(RABBITMQ_SECRET, "secret"));
        assert!(!verify(RABBITMQ_SECRET, "Secret"));
        assert!(!verify(RABBITMQ_SECRET, ""));
        assert!(verify(RABBITMQ_GUEST, "guest"));
        assert!(!verify(RABBITMQ_GUEST, "secret"));
    }

    #[test]
    fn reproduces_rabbitmq_hash_from_its_salt() {
        let raw = STANDARD.decode(RABBITMQ_SECRET).unwrap();
        let salt: [u8; 4] = raw[..4].try_into().unwrap();
        assert_eq!(hash_with_salt(salt, "secret"), RABBITMQ_SECRET);
    }

    #[test]
    fn hand_computed_vector() {
        // sha256(00 01 02 03 "secret") computed independently (Python hashlib).
        let salt = [0u8, 1, 2, 3];
        let mut h = Sha256::new();
        h.update(salt);
        h.update(b"secret");
        let mut raw = salt.to_vec();
        raw.extend_from_slice(&h.finalize());
        assert_eq!(hash_with_salt(salt, "secret"), STANDARD.encode(&raw));
        assert_eq!(
            hash_with_salt(salt, "secret"),
            "AAECAygv0e1JvWmb/yuFkkS4o6/ym7l2VIDl94ohKiVGBwMk"
        );
    }

    #[test]
    fn hash_roundtrip_and_salt() {
        let a = hash("pässwörd");
        let b = hash("pässwörd");
        assert!(verify(&a, "pässwörd"));
        assert!(verify(&b, "pässwörd"));
        assert!(!verify(&a, "passwoerd"));
        assert!(is_well_formed(&a));
        // Fresh salts: two hashes of one password differ (4 random bytes: a
        // collision is a 1 in 2^32 event).
        assert_ne!(a, b);
    }

    #[test]
    fn malformed_hashes_never_verify() {
        for bad in [
            "",
            "not base64!",
            "AAAA",
            "AAECAygv0e1JvWmb/yuFkkS4o6/ym7l2VIDl94ohKiVGBwMkAAAA",
        ] {
            assert!(!verify(bad, ""), "{bad}");
            assert!(!verify(bad, "secret"), "{bad}");
            assert!(!is_well_formed(bad), "{bad}");
        }
    }
}
