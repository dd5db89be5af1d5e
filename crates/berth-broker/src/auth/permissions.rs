//! Compiled permission regexes.
//!
//! RabbitMQ matches a resource name with `re:run(Name, Regex)`: an unanchored
//! search, so `app` allows `my.app.q` and `^app\.` is needed for a prefix. An
//! empty string denies everything (RabbitMQ's documented rule). The default
//! exchange `""` is checked under the name `amq.default`.
use regex::Regex;

use super::{Access, AuthError};
use crate::definitions::PermissionDef;

/// The name RabbitMQ uses for the default exchange in permission checks.
pub const DEFAULT_EXCHANGE_ALIAS: &str = "amq.default";

/// One permission regex; `None` for the empty string (denies all).
#[derive(Debug, Clone)]
struct Matcher(Option<Regex>);

impl Matcher {
    fn compile(def: &PermissionDef, pattern: &str) -> Result<Self, AuthError> {
        if pattern.is_empty() {
            return Ok(Matcher(None));
        }
        Regex::new(pattern)
            .map(|r| Matcher(Some(r)))
            .map_err(|e| AuthError::BadRegex {
                user: def.user.clone(),
                vhost: def.vhost.clone(),
                regex: pattern.to_string(),
                reason: first_line(&e.to_string()),
            })
    }

    fn allows(&self, resource: &str) -> bool {
        self.0.as_ref().is_some_and(|r| r.is_match(resource))
    }
}

/// regex's errors are multi-line (pattern, caret, message); keep the message.
fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|l| l.starts_with("error:"))
        .unwrap_or_else(|| text.lines().next().unwrap_or(""))
        .to_string()
}

/// A user's permissions in one vhost, compiled.
#[derive(Debug, Clone)]
pub struct Permission {
    def: PermissionDef,
    configure: Matcher,
    write: Matcher,
    read: Matcher,
}

impl Permission {
    /// Compiles the three regexes; a bad one is [`AuthError::BadRegex`] naming it.
    pub fn compile(def: PermissionDef) -> Result<Self, AuthError> {
        let configure = Matcher::compile(&def, &def.configure)?;
        let write = Matcher::compile(&def, &def.write)?;
        let read = Matcher::compile(&def, &def.read)?;
        Ok(Self {
            def,
            configure,
            write,
            read,
        })
    }

    /// The definition it was compiled from.
    pub fn def(&self) -> &PermissionDef {
        &self.def
    }

    /// Whether `resource` (exchange or queue name; `""` is the default exchange)
    /// may be used for `access`.
    pub fn allows(&self, access: Access, resource: &str) -> bool {
        let name = if resource.is_empty() {
            DEFAULT_EXCHANGE_ALIAS
        } else {
            resource
        };
        match access {
            Access::Configure => self.configure.allows(name),
            Access::Write => self.write.allows(name),
            Access::Read => self.read.allows(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(configure: &str, write: &str, read: &str) -> Permission {
        Permission::compile(PermissionDef {
            user: "u".into(),
            vhost: "/".into(),
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        })
        .unwrap()
    }

    #[test]
    fn table() {
        use Access::*;
        // (configure, write, read), access, resource, allowed
        let cases: &[(&str, &str, &str, Access, &str, bool)] = &[
            (".*", ".*", ".*", Configure, "q", true),
            (".*", ".*", ".*", Write, "", true),
            ("^app\\.", ".*", "", Configure, "app.q", true),
            ("^app\\.", ".*", "", Configure, "xapp.q", false),
            ("^app\\.", ".*", "", Read, "app.q", false),
            // Unanchored search, like re:run.
            ("app", "", "", Configure, "my.app.q", true),
            ("app", "", "", Write, "app", false),
            // The empty string denies everything, including the default exchange.
            ("", "", "", Configure, "q", false),
            ("", "", "", Write, "", false),
            ("", "", "", Read, "amq.default", false),
            // The default exchange is checked as amq.default.
            ("", "^amq\\.default$", "", Write, "", true),
            ("", "^$", "", Write, "", false),
            ("", "^amq\\.", "", Write, "", true),
            ("", "^amq\\.direct$", "", Write, "", false),
            // Anchored both ends.
            ("", "", "^q$", Read, "q", true),
            ("", "", "^q$", Read, "qq", false),
            ("", "", "q|r", Read, "r1", true),
        ];
        for (c, w, r, access, resource, allowed) in cases {
            assert_eq!(
                perm(c, w, r).allows(*access, resource),
                *allowed,
                "configure={c:?} write={w:?} read={r:?} {access:?} {resource:?}"
            );
        }
    }

    #[test]
    fn bad_regex_names_it() {
        let err = Permission::compile(PermissionDef {
            user: "bob".into(),
            vhost: "prod".into(),
            configure: ".*".into(),
            write: "(unclosed".into(),
            read: ".*".into(),
        })
        .unwrap_err();
        match &err {
            AuthError::BadRegex {
                user,
                vhost,
                regex,
                reason,
            } => {
                assert_eq!(
                    (user.as_str(), vhost.as_str(), regex.as_str()),
                    ("bob", "prod", "(unclosed")
                );
                assert!(reason.contains("unclosed"), "{reason}");
                assert!(!reason.contains('\n'), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.starts_with("permission regex '(unclosed' for user 'bob' in vhost 'prod': "),
            "{text}"
        );
    }
}
