//! Image references as users type them: `busybox`, `web:1.0`,
//! `registry.local:5000/team/app:v2`. A missing tag means `latest`.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageRef {
    pub name: String,
    pub tag: String,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<Self, crate::ParseError> {
        let err = |reason: &str| crate::ParseError::new("image reference", s, reason);
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.contains('@') {
            return Err(err(
                "digest references are not supported here; use the image id",
            ));
        }
        // A colon after the last slash separates the tag; one before it is a registry port.
        let last_slash = s.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match s[last_slash..].rfind(':') {
            Some(i) => (&s[..last_slash + i], &s[last_slash + i + 1..]),
            None => (s, "latest"),
        };
        if name.is_empty() {
            return Err(err("missing name"));
        }
        let name_ok = name.split('/').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-:".contains(c))
        });
        if !name_ok {
            return Err(err(
                "name must be lowercase letters, digits, '.', '_', '-' separated by '/'",
            ));
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && !tag.starts_with(['.', '-']);
        if !tag_ok {
            return Err(err("tag must be [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
        }
        Ok(Self {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("busybox", Some(("busybox", "latest"))),
            ("web:1.0", Some(("web", "1.0"))),
            (
                "reg.local:5000/team/app:v2",
                Some(("reg.local:5000/team/app", "v2")),
            ),
            ("reg.local:5000/app", Some(("reg.local:5000/app", "latest"))),
            ("", None),
            ("Web", None),
            ("web:", None),
            ("web:-x", None),
            ("a//b", None),
            ("x@sha256:00", None),
        ];
        for (input, want) in cases {
            let got = ImageRef::parse(input).ok().map(|r| (r.name, r.tag));
            let want = want.map(|(n, t)| (n.to_string(), t.to_string()));
            assert_eq!(got, want, "{input}");
        }
    }
}
