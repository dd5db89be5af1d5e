//! SASL responses of connection.start-ok for the PLAIN and AMQPLAIN mechanisms.
use amq_protocol::types::{AMQPValue, FieldTable};

/// Credentials taken from a start-ok response.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // Never print the password (secrets are never logged).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Parses a response for `mechanism` ("PLAIN": `\0user\0pass` with optional
/// authzid; "AMQPLAIN": a field table without its length prefix holding LOGIN
/// and PASSWORD). `Err(text)` says what was wrong, never echoing the password.
pub fn parse_response(mechanism: &str, response: &[u8]) -> Result<Credentials, String> {
    match mechanism {
        "PLAIN" => parse_plain(response),
        "AMQPLAIN" => parse_amqplain(response),
        other => Err(format!(
            "unsupported authentication mechanism '{}'",
            other.escape_debug()
        )),
    }
}

fn parse_plain(response: &[u8]) -> Result<Credentials, String> {
    // authzid NUL authcid NUL passwd; the authorization identity is ignored as
    // RabbitMQ ignores it. The password is everything after the second NUL.
    let mut parts = response.splitn(3, |&b| b == 0);
    let (Some(_authzid), Some(user), Some(pass)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("PLAIN response must be 'authzid NUL username NUL password'".to_string());
    };
    let username = String::from_utf8(user.to_vec())
        .map_err(|_| "PLAIN username is not valid UTF-8".to_string())?;
    let password = String::from_utf8(pass.to_vec())
        .map_err(|_| "PLAIN password is not valid UTF-8".to_string())?;
    Ok(Credentials { username, password })
}

fn parse_amqplain(response: &[u8]) -> Result<Credentials, String> {
    let len =
        u32::try_from(response.len()).map_err(|_| "AMQPLAIN response too long".to_string())?;
    // The response is a field table's body; give the parser its length prefix.
    let mut table_bytes = Vec::with_capacity(response.len() + 4);
    table_bytes.extend_from_slice(&len.to_be_bytes());
    table_bytes.extend_from_slice(response);
    let table = crate::codec::decode_field_table(&table_bytes)
        .ok_or_else(|| "AMQPLAIN response is not a valid field table".to_string())?;
    let username = string_field(&table, "LOGIN")?;
    let password = string_field(&table, "PASSWORD")?;
    Ok(Credentials { username, password })
}

fn string_field(table: &FieldTable, key: &str) -> Result<String, String> {
    let bytes = match table.inner().get(key) {
        Some(AMQPValue::LongString(s)) => s.as_bytes().to_vec(),
        Some(AMQPValue::ShortString(s)) => s.as_str().as_bytes().to_vec(),
        Some(_) => return Err(format!("AMQPLAIN {key} must be a string")),
        None => return Err(format!("AMQPLAIN response lacks {key}")),
    };
    String::from_utf8(bytes).map_err(|_| format!("AMQPLAIN {key} is not valid UTF-8"))
}

#[cfg(test)]
#[path = "sasl_tests.rs"]
mod tests;
