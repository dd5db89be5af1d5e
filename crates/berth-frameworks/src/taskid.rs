//! The batch framework's task ids: `{job}.{instance}.{attempt}.{suffix}`.
//!
//! Status updates carry only the task id, so a leader that starts the
//! framework afresh learns which job and instance a running task belongs to
//! from the id alone. Job names may contain '.', so the id is parsed from
//! the right.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchTaskId {
    pub job: String,
    pub instance: u32,
    pub attempt: u32,
    pub suffix: String,
}

impl BatchTaskId {
    /// Parses a task id; `None` for ids the batch framework did not make.
    pub fn parse(id: &str) -> Option<BatchTaskId> {
        let mut parts = id.rsplitn(4, '.');
        let suffix = parts.next()?;
        let attempt = parts.next()?.parse().ok()?;
        let instance = parts.next()?.parse().ok()?;
        let job = parts.next()?;
        if job.is_empty() || suffix.is_empty() {
            return None;
        }
        Some(BatchTaskId {
            job: job.to_string(),
            instance,
            attempt,
            suffix: suffix.to_string(),
        })
    }

    /// The task name: `{job}.{instance}`, the same for every attempt.
    pub fn name(&self) -> String {
        format!("{}.{}", self.job, self.instance)
    }
}

impl fmt::Display for BatchTaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.job, self.instance, self.attempt, self.suffix
        )
    }
}

/// Keeps a generated suffix parseable: no '.', never empty.
pub fn clean_suffix(raw: &str) -> String {
    let s: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    if s.is_empty() {
        "x".to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_dots_in_job() {
        let id = BatchTaskId {
            job: "etl.nightly".into(),
            instance: 3,
            attempt: 2,
            suffix: "a1b2c3".into(),
        };
        let s = id.to_string();
        assert_eq!(s, "etl.nightly.3.2.a1b2c3");
        assert_eq!(BatchTaskId::parse(&s), Some(id.clone()));
        assert_eq!(id.name(), "etl.nightly.3");
    }

    #[test]
    fn foreign_ids_are_refused() {
        for bad in [
            "",
            "x",
            "job.1.2",
            ".1.2.s",
            "job.a.2.s",
            "job.1.b.s",
            "job.1.2.",
            "job.-1.2.s",
        ] {
            assert_eq!(BatchTaskId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn suffix_cleaning() {
        assert_eq!(clean_suffix("a.b/c"), "abc");
        assert_eq!(clean_suffix("..."), "x");
    }
}
