//! SASL responses of connection.start-ok for the PLAIN and AMQPLAIN mechanisms.

/// Credentials taken from a start-ok response.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // Never print the password (secrets are never logged).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// Parses a response for `mechanism` ("PLAIN": `\0user\0pass` with optional
/// authzid; "AMQPLAIN": a field table without its length prefix holding LOGIN
/// and PASSWORD). `Err(text)` says what was wrong, never echoing the password.
pub fn parse_response(mechanism: &str, response: &[u8]) -> Result<Credentials, String> {
    let _ = (mechanism, response);
    todo!("berth-amqp helper")
}
