//! RabbitMQ-compatible password hashing: base64(salt(4) ++ sha256(salt ++ password)),
//! `rabbit_password_hashing_sha256`, so definitions files move between the two.

/// Hashes with a fresh random salt.
pub fn hash(password: &str) -> String {
    let _ = password;
    todo!("auth helper")
}

/// Checks a password against a stored hash in constant time; false for a malformed hash.
pub fn verify(stored: &str, password: &str) -> bool {
    let _ = (stored, password);
    todo!("auth helper")
}
