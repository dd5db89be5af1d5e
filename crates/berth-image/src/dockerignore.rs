//! `.dockerignore` semantics: one pattern a line, `#` comments, `!`
//! exceptions, `**` across directories; patterns are cleaned like Go's
//! `filepath.Clean` and a leading `/` is dropped. The last matching pattern
//! wins, and a pattern matching a parent directory matches everything
//! below it.
//!
//! As in Docker, ignoring the Containerfile or `.dockerignore` only hides
//! them from COPY and ADD; the builder still reads them.

use globset::{GlobBuilder, GlobMatcher};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: invalid pattern {pattern:?}: {message}")]
    Pattern {
        file: String,
        line: usize,
        pattern: String,
        message: String,
    },
}

#[derive(Debug)]
struct Rule {
    matcher: GlobMatcher,
    exception: bool,
}

/// Compiled ignore rules of a build context.
#[derive(Debug, Default)]
pub struct Ignore {
    rules: Vec<Rule>,
}

impl Ignore {
    /// Reads `<context>/.dockerignore`; a missing file ignores nothing.
    pub fn from_file(context: &Path) -> Result<Self, IgnoreError> {
        let path = context.join(".dockerignore");
        match std::fs::read(&path) {
            Ok(bytes) => Self::parse(".dockerignore", &String::from_utf8_lossy(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(IgnoreError::Read { path, source }),
        }
    }

    /// Compiles the text of an ignore file; `file` is used in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            // Docker treats only a '#' in the first column as a comment.
            if raw.starts_with('#') {
                continue;
            }
            let mut pattern = raw.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
            }
            let bad = |message: &str| IgnoreError::Pattern {
                file: file.to_string(),
                line: i + 1,
                pattern: raw.trim().to_string(),
                message: message.to_string(),
            };
            if exception && pattern.is_empty() {
                return Err(bad("an exception needs a pattern after '!'"));
            }
            let cleaned = clean(pattern);
            let cleaned = match cleaned.strip_prefix('/') {
                Some(s) if !s.is_empty() => s.to_string(),
                _ => cleaned,
            };
            let glob = GlobBuilder::new(&escape_braces(&cleaned))
                .literal_separator(true)
                .backslash_escape(true)
                .empty_alternates(true)
                .build()
                .map_err(|e| bad(&e.kind().to_string().to_lowercase()))?;
            rules.push(Rule {
                matcher: glob.compile_matcher(),
                exception,
            });
        }
        Ok(Self { rules })
    }

    /// Whether `rel_path` (relative to the context root) is ignored. Docker
    /// does not treat directories specially, so `is_dir` only matters to
    /// callers deciding whether to descend (see [`Ignore::has_exceptions`]).
    pub fn is_ignored(&self, rel_path: &Path, _is_dir: bool) -> bool {
        let parts: Vec<&std::ffi::OsStr> = rel_path
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s),
                _ => None,
            })
            .collect();
        if parts.is_empty() {
            return false;
        }
        // The path itself and each of its parent directories.
        let candidates: Vec<PathBuf> = (1..=parts.len())
            .map(|n| parts[..n].iter().collect())
            .collect();
        let mut ignored = false;
        for rule in &self.rules {
            if candidates.iter().any(|c| rule.matcher.is_match(c)) {
                ignored = !rule.exception;
            }
        }
        ignored
    }

    /// Whether any `!` exception exists: then an ignored directory may
    /// still hold included files, and walkers must descend into it.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }
}

/// Go's `filepath.Match` has no `{a,b}` alternates, so braces are literal:
/// escape them for globset, outside character classes.
fn escape_braces(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut chars = p.chars();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '{' | '}' if !in_class => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Lexical cleaning as Go's `filepath.Clean`: collapse separators, drop
/// `.`, resolve `..` where possible, drop a trailing `/`.
fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if matches!(out.last(), Some(l) if *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ign(text: &str) -> Ignore {
        Ignore::parse(".dockerignore", text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn table() {
        // (ignore file, path, ignored?)
        let cases: &[(&str, &str, bool)] = &[
            ("", "a", false),
            ("a", "a", true),
            ("a", "a/b/c", true),
            ("a", "b/a", false),
            ("/a", "a", true),
            ("a/", "a/x", true),
            ("./a/../b", "b", true),
            ("*.md", "README.md", true),
            ("*.md", "docs/x.md", false),
            ("*/*.md", "docs/x.md", true),
            ("**/*.md", "docs/deep/x.md", true),
            ("**/*.md", "x.md", true),
            ("docs/**", "docs/a/b", true),
            ("docs/**", "docsx", false),
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("?.txt", "a.txt", true),
            ("?.txt", "ab.txt", false),
            ("[a-c].txt", "b.txt", true),
            ("[!a-c].txt", "b.txt", false),
            ("*\n!keep", "keep", false),
            ("*\n!keep", "other", true),
            ("!keep\n*", "keep", true),
            ("logs\n!logs/important.log", "logs/important.log", false),
            ("logs\n!logs/important.log", "logs/other.log", true),
            ("# comment\nx", "# comment", false),
            (" # not a comment", "# not a comment", true),
            ("  spaced  ", "spaced", true),
            ("Containerfile\n.dockerignore", "Containerfile", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*", "anything/below", true),
            ("{a,b}", "b", false),
            ("{a,b}", "{a,b}", true),
            ("x{", "x{", true),
        ];
        for (text, path, want) in cases {
            let got = ign(text).is_ignored(Path::new(path), false);
            assert_eq!(got, *want, "ignore file {text:?}, path {path:?}");
        }
    }

    #[test]
    fn exceptions_flag() {
        assert!(ign("a\n!a/b").has_exceptions());
        assert!(!ign("a").has_exceptions());
    }

    #[test]
    fn errors() {
        let e = Ignore::parse(".dockerignore", "ok\n!\n")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(".dockerignore:2: invalid pattern \"!\": an exception needs a pattern after '!'")
        );
        let e = Ignore::parse(".dockerignore", "[abc")
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|m| m.starts_with(".dockerignore:1: invalid pattern \"[abc\": ")),
            "{e:?}"
        );
    }

    #[test]
    fn clean_matches_go() {
        for (input, want) in [
            ("a//b/", "a/b"),
            ("./a", "a"),
            ("a/../..", ".."),
            ("/../a", "/a"),
            ("", "."),
            ("/", "/"),
        ] {
            assert_eq!(clean(input), want, "{input:?}");
        }
    }

    #[test]
    fn from_file_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ig = Ignore::from_file(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!ig.is_ignored(Path::new("x"), false));
        std::fs::write(dir.path().join(".dockerignore"), "x\n").unwrap_or_else(|e| panic!("{e}"));
        let ig = Ignore::from_file(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(ig.is_ignored(Path::new("x"), false));
    }
}
