//! Containerfile (Dockerfile) parsing: parser directives, comments, line
//! continuations, the instruction set berth builds, and the shell-like word
//! syntax (quotes, escapes, `$VAR`, `${VAR:-default}`) Docker expands at
//! build time.
//!
//! Parsing is pure: every syntax error, including a bad `${` inside a word,
//! is reported here with its file and line, so expansion at build time can
//! only fail on `${VAR:?message}`.

use std::fmt;

/// A syntax or validity error in a Containerfile, displayed as
/// `{file}:{line}: {INSTRUCTION}: {message}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    /// Upper-case instruction keyword; empty for errors outside one.
    pub instruction: String,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.instruction.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.instruction, self.message
            )
        }
    }
}

/// One instruction of a Containerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line on which the instruction starts.
    pub line: usize,
    /// Upper-case keyword (`RUN`, `COPY`, ...).
    pub keyword: String,
    /// The instruction as written, continuation lines joined, for display.
    pub text: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    From {
        image: Word,
        platform: Option<Word>,
        /// `AS name`, lower-cased as Docker does.
        alias: Option<String>,
    },
    Run(Command),
    Copy(CopyArgs),
    Add(CopyArgs),
    Env(Vec<(Word, Word)>),
    /// `ARG name[=default] ...`
    Arg(Vec<(String, Option<Word>)>),
    Workdir(Word),
    User(Word),
    /// Each word may expand to several whitespace-separated ports.
    Expose(Vec<Word>),
    Volume(Vec<Word>),
    Label(Vec<(Word, Word)>),
    Cmd(Command),
    Entrypoint(Command),
    Shell(Vec<String>),
    StopSignal(Word),
    Maintainer(String),
}

/// The exec (JSON) or shell form of RUN, CMD and ENTRYPOINT. Neither is
/// expanded by the builder: the shell (or nothing) does that at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

impl Command {
    /// The argv to run, wrapping the shell form in `shell` (default
    /// `["/bin/sh", "-c"]`).
    pub fn argv(&self, shell: &[String]) -> Vec<String> {
        match self {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut v = shell.to_vec();
                v.push(s.clone());
                v
            }
        }
    }
}

/// The default shell for the shell form.
pub fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_string(), "-c".to_string()]
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyArgs {
    pub sources: Vec<Word>,
    pub dest: Word,
    pub chown: Option<Word>,
    pub chmod: Option<Word>,
    /// `--from=stage|index|image` (COPY only).
    pub from: Option<Word>,
}

/// A word of the shell-like syntax, lexed at parse time (quotes removed,
/// escapes applied, variable references kept) and expanded at build time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    raw: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var { name: String, op: Op },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Plain,
    /// `${V:-w}` (colon: also when empty) and `${V-w}`.
    Default {
        colon: bool,
        word: Word,
    },
    /// `${V:+w}` and `${V+w}`.
    Alt {
        colon: bool,
        word: Word,
    },
    /// `${V:?w}` and `${V?w}`.
    Error {
        colon: bool,
        word: Word,
    },
}

impl Word {
    /// A word with no quotes or variables.
    pub fn literal(s: &str) -> Word {
        Word {
            raw: s.to_string(),
            parts: if s.is_empty() {
                vec![]
            } else {
                vec![Part::Lit(s.to_string())]
            },
        }
    }

    /// The word as written.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Expands variables using `lookup`; fails only on `${V:?msg}`.
    pub fn expand(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Var { name, op } => {
                    let value = lookup(name);
                    let is_empty = value.as_deref().is_none_or(str::is_empty);
                    match op {
                        Op::Plain => out.push_str(value.as_deref().unwrap_or("")),
                        Op::Default { colon, word } => {
                            if value.is_none() || (*colon && is_empty) {
                                out.push_str(&word.expand(lookup)?);
                            } else {
                                out.push_str(value.as_deref().unwrap_or(""));
                            }
                        }
                        Op::Alt { colon, word } => {
                            if !(value.is_none() || (*colon && is_empty)) {
                                out.push_str(&word.expand(lookup)?);
                            }
                        }
                        Op::Error { colon, word } => {
                            if value.is_none() || (*colon && is_empty) {
                                let msg = word.expand(lookup)?;
                                let msg = if msg.is_empty() {
                                    if *colon {
                                        "is not allowed to be unset or empty".to_string()
                                    } else {
                                        "is not allowed to be unset".to_string()
                                    }
                                } else {
                                    msg
                                };
                                return Err(format!("{name}: {msg}"));
                            }
                            out.push_str(value.as_deref().unwrap_or(""));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The word's value if it contains no variable reference.
    pub fn as_literal(&self) -> Option<String> {
        if self.parts.iter().any(|p| matches!(p, Part::Var { .. })) {
            return None;
        }
        self.expand(&|_| None).ok()
    }
}

/// Parses a Containerfile. `file_name` is used only in error messages.
pub fn parse(file_name: &str, text: &str) -> Result<Vec<Instruction>, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let err = |line: usize, instruction: &str, message: String| ParseError {
        file: file_name.to_string(),
        line,
        instruction: instruction.to_string(),
        message,
    };

    // Parser directives: only at the very top, before any blank line,
    // comment or instruction.
    let mut escape = '\\';
    let mut seen_directives: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some((key, value)) = directive(lines[i]) else {
            break;
        };
        match key.as_str() {
            "escape" | "syntax" | "check" => {
                if seen_directives.contains(&key) {
                    return Err(err(
                        i + 1,
                        "",
                        format!("only one {key} parser directive can be used"),
                    ));
                }
                if key == "escape" {
                    escape = match value.as_str() {
                        "\\" => '\\',
                        "`" => '`',
                        other => {
                            return Err(err(
                                i + 1,
                                "",
                                format!("invalid escape token {other:?}: must be ` or \\"),
                            ))
                        }
                    };
                }
                seen_directives.push(key);
                i += 1;
            }
            // An unknown directive is a comment, and ends the directives.
            _ => break,
        }
    }

    let mut out: Vec<Instruction> = Vec::new();
    let mut seen_from = false;
    let mut stage_names: Vec<String> = Vec::new();
    while i < lines.len() {
        let start = i;
        let first = lines[i].trim_start();
        i += 1;
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        let (mut logical, mut more) = trim_continuation(first, escape);
        while more && i < lines.len() {
            let next = lines[i];
            i += 1;
            let trimmed = next.trim_start();
            // Comment lines and empty lines inside a continuation are skipped,
            // as Docker does.
            if trimmed.starts_with('#') || trimmed.trim().is_empty() {
                continue;
            }
            let (part, cont) = trim_continuation(next, escape);
            logical.push_str(&part);
            more = cont;
        }
        let line_no = start + 1;
        let (word, rest) = match logical.find(char::is_whitespace) {
            Some(p) => (&logical[..p], logical[p..].trim()),
            None => (logical.as_str(), ""),
        };
        let keyword = word.to_ascii_uppercase();
        if keyword.is_empty() || !keyword.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(err(line_no, "", format!("unknown instruction {word:?}")));
        }
        let text = if rest.is_empty() {
            keyword.clone()
        } else {
            format!("{keyword} {rest}")
        };
        let kind =
            parse_instruction(&keyword, rest, escape).map_err(|m| err(line_no, &keyword, m))?;
        match &kind {
            Kind::From { alias, .. } => {
                seen_from = true;
                if let Some(a) = alias {
                    if stage_names.contains(a) {
                        return Err(err(
                            line_no,
                            &keyword,
                            format!("duplicate stage name {a:?}"),
                        ));
                    }
                    stage_names.push(a.clone());
                }
            }
            Kind::Arg(_) => {}
            _ if !seen_from => {
                return Err(err(
                    line_no,
                    &keyword,
                    "instruction must come after a FROM instruction".to_string(),
                ))
            }
            _ => {}
        }
        out.push(Instruction {
            line: line_no,
            keyword,
            text,
            kind,
        });
    }
    if !seen_from {
        return Err(err(
            lines.len().max(1),
            "",
            "no FROM instruction".to_string(),
        ));
    }
    Ok(out)
}

/// `# key=value` at the top of the file; keys are case-insensitive.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix('#')?;
    let (key, value) = rest.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some((key.to_ascii_lowercase(), value.trim().to_string()))
}

/// Strips a trailing escape character (plus trailing blanks) and says
/// whether the instruction continues on the next line.
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(s) => (s.to_string(), true),
        None => (line.to_string(), false),
    }
}

fn parse_instruction(keyword: &str, rest: &str, escape: char) -> Result<Kind, String> {
    match keyword {
        "FROM" => parse_from(rest, escape),
        "RUN" => {
            let (flags, rest) = split_flags(rest, escape)?;
            if let Some((name, _)) = flags.first() {
                return Err(match name.as_str() {
                    "mount" | "network" | "security" => {
                        format!("flag --{name} is not supported")
                    }
                    _ => format!("unknown flag --{name}"),
                });
            }
            if rest.is_empty() {
                return Err("requires at least one argument".to_string());
            }
            Ok(Kind::Run(parse_command(rest)?))
        }
        "COPY" | "ADD" => parse_copy(keyword, rest, escape),
        "ENV" => Ok(Kind::Env(parse_pairs(rest, escape)?)),
        "LABEL" => Ok(Kind::Label(parse_pairs(rest, escape)?)),
        "ARG" => {
            let words = split_words(rest, escape);
            if words.is_empty() {
                return Err("requires at least one argument".to_string());
            }
            let mut args = Vec::new();
            for w in words {
                let (name, default) = match w.split_once('=') {
                    Some((n, d)) => (n, Some(lex_word(d, escape)?)),
                    None => (w, None),
                };
                if !is_var_name(name) {
                    return Err(format!("invalid argument name {name:?}"));
                }
                args.push((name.to_string(), default));
            }
            Ok(Kind::Arg(args))
        }
        "WORKDIR" => Ok(Kind::Workdir(single(rest, escape)?)),
        "USER" => Ok(Kind::User(single(rest, escape)?)),
        "STOPSIGNAL" => {
            if split_words(rest, escape).len() != 1 {
                return Err("requires exactly one argument".to_string());
            }
            Ok(Kind::StopSignal(single(rest, escape)?))
        }
        "EXPOSE" => {
            let words = split_words(rest, escape);
            if words.is_empty() {
                return Err("requires at least one argument".to_string());
            }
            Ok(Kind::Expose(
                words
                    .into_iter()
                    .map(|w| lex_word(w, escape))
                    .collect::<Result<_, _>>()?,
            ))
        }
        "VOLUME" => {
            let items = list_arg(rest, escape)?;
            if items.is_empty() || items.iter().any(|w| w.raw.trim().is_empty()) {
                return Err("requires at least one non-empty argument".to_string());
            }
            Ok(Kind::Volume(items))
        }
        "CMD" | "ENTRYPOINT" => {
            if rest.is_empty() {
                return Err("requires at least one argument".to_string());
            }
            let cmd = parse_command(rest)?;
            Ok(if keyword == "CMD" {
                Kind::Cmd(cmd)
            } else {
                Kind::Entrypoint(cmd)
            })
        }
        "SHELL" => match parse_command(rest)? {
            Command::Exec(v) if !v.is_empty() => Ok(Kind::Shell(v)),
            _ => Err("requires a non-empty json array, e.g. [\"/bin/sh\", \"-c\"]".to_string()),
        },
        "MAINTAINER" => {
            if rest.is_empty() {
                return Err("requires exactly one argument".to_string());
            }
            Ok(Kind::Maintainer(rest.to_string()))
        }
        "HEALTHCHECK" | "ONBUILD" => Err("instruction is not supported".to_string()),
        other => Err(format!("unknown instruction {other:?}")),
    }
}

fn parse_from(rest: &str, escape: char) -> Result<Kind, String> {
    let (flags, rest) = split_flags(rest, escape)?;
    let mut platform = None;
    for (name, value) in flags {
        match (name.as_str(), value) {
            ("platform", Some(v)) => platform = Some(lex_word(&v, escape)?),
            _ => return Err(format!("unknown flag --{name}")),
        }
    }
    let words = split_words(rest, escape);
    let (image, alias) = match words.as_slice() {
        [image] => (*image, None),
        [image, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            let name = name.to_ascii_lowercase();
            let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !valid {
                return Err(format!(
                    "invalid stage name {name:?}: must start with a letter and contain only letters, digits, '-', '_' and '.'"
                ));
            }
            (*image, Some(name))
        }
        [] => return Err("requires an image name".to_string()),
        _ => return Err("requires either one or three arguments: image [AS name]".to_string()),
    };
    Ok(Kind::From {
        image: lex_word(image, escape)?,
        platform,
        alias,
    })
}

fn parse_copy(keyword: &str, rest: &str, escape: char) -> Result<Kind, String> {
    let (flags, rest) = split_flags(rest, escape)?;
    let mut args = CopyArgs {
        sources: Vec::new(),
        dest: Word::literal(""),
        chown: None,
        chmod: None,
        from: None,
    };
    for (name, value) in flags {
        let need = |v: Option<String>| -> Result<Word, String> {
            match v {
                Some(v) if !v.is_empty() => lex_word(&v, escape),
                _ => Err(format!("flag --{name} requires a value")),
            }
        };
        match name.as_str() {
            "chown" => args.chown = Some(need(value)?),
            "chmod" => args.chmod = Some(need(value)?),
            "from" if keyword == "COPY" => args.from = Some(need(value)?),
            // --link only changes how BuildKit stores the layer; the result
            // is the same.
            "link" => {}
            "checksum" | "keep-git-dir" | "parents" | "exclude" => {
                return Err(format!("flag --{name} is not supported"))
            }
            _ => return Err(format!("unknown flag --{name}")),
        }
    }
    let mut items = list_arg(rest, escape)?;
    if items.len() < 2 {
        return Err("requires at least two arguments: source... destination".to_string());
    }
    if keyword == "ADD" {
        if let Some(url) = items[..items.len() - 1].iter().find(|w| is_url(&w.raw)) {
            return Err(format!(
                "remote source {:?} is not supported; download it in a RUN step",
                url.raw
            ));
        }
    }
    args.dest = items.pop().unwrap_or_else(|| Word::literal(""));
    args.sources = items;
    Ok(if keyword == "COPY" {
        Kind::Copy(args)
    } else {
        Kind::Add(args)
    })
}

/// Whether an ADD source names a remote resource, which berth does not fetch.
pub fn is_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    lower.starts_with("http://")
        || lower.starts_with("https://")
        || lower.starts_with("git@")
        || lower.contains("://")
}

/// ENV and LABEL: `key value` (one pair, the rest of the line is the value)
/// or `key=value ...`.
fn parse_pairs(rest: &str, escape: char) -> Result<Vec<(Word, Word)>, String> {
    let words = split_words(rest, escape);
    let Some(first) = words.first() else {
        return Err("requires at least one argument".to_string());
    };
    if !first.contains('=') {
        // Legacy form: the first word is the key, the rest is one value.
        let value = after(rest, first).trim();
        if value.is_empty() {
            return Err(format!(
                "requires a value for {first:?} (key value or key=value)"
            ));
        }
        return Ok(vec![(lex_word(first, escape)?, lex_word(value, escape)?)]);
    }
    let mut pairs = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!(
                "syntax error: can't find = in {w:?}; must be of the form name=value"
            ));
        };
        if k.is_empty() {
            return Err(format!("names can not be blank in {w:?}"));
        }
        pairs.push((lex_word(k, escape)?, lex_word(v, escape)?));
    }
    Ok(pairs)
}

/// The whole rest of the line as one word (WORKDIR, USER).
fn single(rest: &str, escape: char) -> Result<Word, String> {
    if rest.is_empty() {
        return Err("requires exactly one argument".to_string());
    }
    lex_word(rest, escape)
}

/// A JSON array looks intended when it starts with `["`, `['` or `[]`, or
/// ends with `"]` or `']`; anything else starting with `[` is shell code
/// such as `[ -f /x ] && ...`, which Docker runs through the shell.
fn looks_like_json(rest: &str) -> bool {
    rest.starts_with("[\"")
        || rest.starts_with("['")
        || rest.starts_with("[]")
        || (rest.starts_with('[') && (rest.ends_with("\"]") || rest.ends_with("']")))
}

fn json_array(rest: &str) -> Result<Option<Vec<String>>, String> {
    if !rest.starts_with('[') {
        return Ok(None);
    }
    match serde_json::from_str::<serde_json::Value>(rest) {
        Ok(serde_json::Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    serde_json::Value::String(s) => out.push(s),
                    other => {
                        return Err(format!(
                            "json array must contain only strings, found {other}"
                        ))
                    }
                }
            }
            Ok(Some(out))
        }
        Ok(_) => Ok(None),
        Err(e) if looks_like_json(rest) => Err(format!(
            "invalid json array (strings need double quotes): {}",
            e.to_string().to_lowercase()
        )),
        Err(_) => Ok(None),
    }
}

fn parse_command(rest: &str) -> Result<Command, String> {
    Ok(match json_array(rest)? {
        Some(v) => Command::Exec(v),
        None => Command::Shell(rest.to_string()),
    })
}

/// COPY, ADD and VOLUME: a JSON array or whitespace-separated words; each
/// item is then a word (quotes and variables processed).
fn list_arg(rest: &str, escape: char) -> Result<Vec<Word>, String> {
    match json_array(rest)? {
        Some(items) => items.iter().map(|s| lex_word(s, escape)).collect(),
        None => split_words(rest, escape)
            .into_iter()
            .map(|w| lex_word(w, escape))
            .collect(),
    }
}

/// `--name[=value]` flags in order; names lower-cased.
type Flags = Vec<(String, Option<String>)>;

/// Leading `--name[=value]` words, and the rest of the line after them.
fn split_flags(rest: &str, escape: char) -> Result<(Flags, &str), String> {
    let mut flags = Vec::new();
    let mut remaining = rest;
    while let Some(word) = split_words_limit(remaining, escape, 1).into_iter().next() {
        let Some(flag) = word.strip_prefix("--") else {
            break;
        };
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(unquote_flag(v, escape)?)),
            None => (flag, None),
        };
        if name.is_empty() {
            return Err("empty flag name \"--\"".to_string());
        }
        flags.push((name.to_ascii_lowercase(), value));
        remaining = after(remaining, word).trim_start();
    }
    Ok((flags, remaining))
}

/// Flag values keep their variables (they are lexed again as words), but a
/// fully quoted value loses its outer quotes.
fn unquote_flag(v: &str, _escape: char) -> Result<String, String> {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return Ok(v[1..v.len() - 1].to_string());
        }
    }
    Ok(v.to_string())
}

/// The text of `haystack` after `word`, which must be a slice of it (as the
/// words from `split_words` are).
fn after<'a>(haystack: &'a str, word: &str) -> &'a str {
    let offset = (word.as_ptr() as usize)
        .saturating_sub(haystack.as_ptr() as usize)
        .saturating_add(word.len());
    haystack.get(offset..).unwrap_or("")
}

pub(crate) fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits on whitespace outside quotes and `${...}`, keeping the raw text of
/// each word. Never fails: an unterminated quote makes the rest one word,
/// and lexing that word reports the error.
fn split_words(s: &str, escape: char) -> Vec<&str> {
    split_words_limit(s, escape, usize::MAX)
}

/// `split_words` stopping after `limit` words.
fn split_words_limit(s: &str, escape: char, limit: usize) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start: Option<usize> = None;
    let mut quote: Option<char> = None;
    let mut braces = 0usize;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if quote.is_none() && braces == 0 && c.is_whitespace() {
            if let Some(st) = start.take() {
                words.push(&s[st..i]);
                if words.len() >= limit {
                    return words;
                }
            }
            continue;
        }
        if start.is_none() {
            start = Some(i);
        }
        match quote {
            Some('\'') => {
                if c == '\'' {
                    quote = None;
                }
            }
            Some(q) => {
                if c == escape {
                    chars.next();
                } else if c == q {
                    quote = None;
                }
            }
            None => {
                if c == escape {
                    chars.next();
                } else if c == '\'' || c == '"' {
                    quote = Some(c);
                } else if c == '$' && chars.peek().map(|&(_, n)| n) == Some('{') {
                    chars.next();
                    braces += 1;
                } else if c == '}' && braces > 0 {
                    braces -= 1;
                }
            }
        }
    }
    if let Some(st) = start {
        words.push(&s[st..]);
    }
    words
}

/// Lexes one word: quotes removed, escapes applied, variable references
/// kept as parts. Whitespace is literal.
pub(crate) fn lex_word(raw: &str, escape: char) -> Result<Word, String> {
    let mut lx = Lexer {
        chars: raw.chars().collect(),
        pos: 0,
        escape,
        depth: 0,
    };
    let parts = lx.parts_until(None)?;
    Ok(Word {
        raw: raw.to_string(),
        parts,
    })
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    depth: usize,
}

/// Nesting limit for `${a:-${b:-...}}` so hostile input cannot exhaust the
/// stack.
const MAX_DEPTH: usize = 64;

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Lexes until `stop` (not consumed) or the end.
    fn parts_until(&mut self, stop: Option<char>) -> Result<Vec<Part>, String> {
        let mut parts: Vec<Part> = Vec::new();
        let mut lit = String::new();
        loop {
            let Some(c) = self.peek() else {
                if stop.is_some() {
                    return Err("missing '}' in variable substitution".to_string());
                }
                break;
            };
            if c == self.escape {
                self.next();
                // An escape at the very end is dropped, as Docker does.
                if let Some(n) = self.next() {
                    lit.push(n);
                }
            } else if c == '\'' {
                self.next();
                loop {
                    match self.next() {
                        Some('\'') => break,
                        Some(ch) => lit.push(ch),
                        None => return Err("unterminated single quote".to_string()),
                    }
                }
            } else if c == '"' {
                self.next();
                loop {
                    match self.peek() {
                        None => return Err("unterminated double quote".to_string()),
                        Some('"') => {
                            self.next();
                            break;
                        }
                        Some('$') => {
                            if let Some(p) = self.dollar()? {
                                flush(&mut parts, &mut lit);
                                parts.push(p);
                            } else {
                                lit.push('$');
                            }
                        }
                        Some(ch) if ch == self.escape => {
                            self.next();
                            match self.peek() {
                                Some(n) if n == '"' || n == '$' || n == self.escape => {
                                    self.next();
                                    lit.push(n);
                                }
                                // Other escapes inside double quotes stay as
                                // written.
                                Some(_) => lit.push(ch),
                                None => {}
                            }
                        }
                        Some(ch) => {
                            self.next();
                            lit.push(ch);
                        }
                    }
                }
            } else if c == '$' {
                if let Some(p) = self.dollar()? {
                    flush(&mut parts, &mut lit);
                    parts.push(p);
                } else {
                    lit.push('$');
                }
            } else if Some(c) == stop {
                break;
            } else {
                self.next();
                lit.push(c);
            }
        }
        flush(&mut parts, &mut lit);
        Ok(parts)
    }

    /// At a `$`: consumes it and returns the variable reference, or `None`
    /// when the `$` is literal (not followed by a name or `{`).
    fn dollar(&mut self) -> Result<Option<Part>, String> {
        self.next();
        match self.peek() {
            Some('{') => {
                self.next();
                let name = self.name();
                if name.is_empty() {
                    return Err("bad substitution: expected a variable name after '${'".to_string());
                }
                let op = match self.next() {
                    Some('}') => {
                        return Ok(Some(Part::Var {
                            name,
                            op: Op::Plain,
                        }))
                    }
                    Some(':') => match self.next() {
                        Some(m @ ('-' | '+' | '?')) => (true, m),
                        Some(m) => {
                            return Err(format!(
                                "unsupported modifier ':{m}' in substitution of {name}"
                            ))
                        }
                        None => return Err("missing '}' in variable substitution".to_string()),
                    },
                    Some(m @ ('-' | '+' | '?')) => (false, m),
                    Some(m) => {
                        return Err(format!(
                            "unsupported modifier '{m}' in substitution of {name}"
                        ))
                    }
                    None => return Err("missing '}' in variable substitution".to_string()),
                };
                if self.depth >= MAX_DEPTH {
                    return Err("variable substitution nested too deeply".to_string());
                }
                self.depth += 1;
                let parts = self.parts_until(Some('}'))?;
                self.depth -= 1;
                // parts_until stopped at '}' (it errors at the end).
                self.next();
                let word = Word {
                    raw: String::new(),
                    parts,
                };
                let (colon, m) = op;
                let op = match m {
                    '-' => Op::Default { colon, word },
                    '+' => Op::Alt { colon, word },
                    _ => Op::Error { colon, word },
                };
                Ok(Some(Part::Var { name, op }))
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let name = self.name();
                Ok(Some(Part::Var {
                    name,
                    op: Op::Plain,
                }))
            }
            _ => Ok(None),
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.next();
            } else {
                break;
            }
        }
        name
    }
}

fn flush(parts: &mut Vec<Part>, lit: &mut String) {
    if !lit.is_empty() {
        parts.push(Part::Lit(std::mem::take(lit)));
    }
}

#[cfg(test)]
mod tests;
