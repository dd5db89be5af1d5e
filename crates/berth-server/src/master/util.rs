//! Clock and id helpers. Only the leader calls these: everything they make
//! goes into commands before they are proposed, so apply stays deterministic.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A random id: `prefix` followed by 32 lowercase hex digits, so it is a
/// valid berth name when the prefix is.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

/// True for ids chosen by clients (agent, framework and task ids): 1 to 128
/// characters of letters, digits, '-', '_', '.' and ':'.
pub fn valid_client_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

/// Seconds from a client (refuse_seconds, failover timeout) as milliseconds,
/// clamped to a year so additions cannot overflow.
pub fn secs_to_ms(secs: f64) -> u64 {
    const YEAR_MS: f64 = 365.0 * 24.0 * 3600.0 * 1000.0;
    if !secs.is_finite() || secs <= 0.0 {
        return 0;
    }
    (secs * 1000.0).min(YEAR_MS) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_seconds() {
        let a = random_id("fw-");
        assert!(a.starts_with("fw-") && a.len() == 35);
        assert!(berth_types::valid_name(&random_id("a")));
        assert_ne!(random_id(""), random_id(""));
        assert!(valid_client_id("task-1.a:b"));
        for bad in ["", "a b", "a/b", &"x".repeat(129)] {
            assert!(!valid_client_id(bad), "{bad}");
        }
        assert_eq!(secs_to_ms(1.5), 1500);
        assert_eq!(secs_to_ms(-1.0), 0);
        assert_eq!(secs_to_ms(f64::NAN), 0);
        assert_eq!(secs_to_ms(1e300), 365 * 24 * 3600 * 1000);
    }
}
