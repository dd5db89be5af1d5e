use super::*;

fn vars(name: &str) -> Option<String> {
    match name {
        "A" => Some("alpha".into()),
        "B" => Some("b b".into()),
        "EMPTY" => Some(String::new()),
        "HOME" => Some("/root".into()),
        _ => None,
    }
}

fn ex(w: &Word) -> String {
    w.expand(&vars).unwrap_or_else(|e| format!("ERR({e})"))
}

/// A compact rendering of an instruction, with words expanded against
/// `vars`, so tables stay readable.
fn render(i: &Instruction) -> String {
    let list = |ws: &[Word]| ws.iter().map(ex).collect::<Vec<_>>().join("|");
    let pairs = |ps: &[(Word, Word)]| {
        ps.iter()
            .map(|(k, v)| format!("{}={}", ex(k), ex(v)))
            .collect::<Vec<_>>()
            .join("|")
    };
    let cmd = |c: &Command| match c {
        Command::Exec(v) => format!("exec{v:?}"),
        Command::Shell(s) => format!("shell({s})"),
    };
    let copy = |c: &CopyArgs| {
        let mut s = format!("{} -> {}", list(&c.sources), ex(&c.dest));
        if let Some(w) = &c.chown {
            s.push_str(&format!(" chown={}", ex(w)));
        }
        if let Some(w) = &c.chmod {
            s.push_str(&format!(" chmod={}", ex(w)));
        }
        if let Some(w) = &c.from {
            s.push_str(&format!(" from={}", ex(w)));
        }
        s
    };
    let body = match &i.kind {
        Kind::From {
            image,
            platform,
            alias,
        } => format!(
            "{}{}{}",
            ex(image),
            alias
                .as_ref()
                .map(|a| format!(" as {a}"))
                .unwrap_or_default(),
            platform
                .as_ref()
                .map(|p| format!(" platform={}", ex(p)))
                .unwrap_or_default()
        ),
        Kind::Run(c) | Kind::Cmd(c) | Kind::Entrypoint(c) => cmd(c),
        Kind::Copy(c) | Kind::Add(c) => copy(c),
        Kind::Env(p) | Kind::Label(p) => pairs(p),
        Kind::Arg(a) => a
            .iter()
            .map(|(n, d)| match d {
                Some(d) => format!("{n}={}", ex(d)),
                None => n.clone(),
            })
            .collect::<Vec<_>>()
            .join("|"),
        Kind::Workdir(w) | Kind::User(w) | Kind::StopSignal(w) => ex(w),
        Kind::Expose(ws) | Kind::Volume(ws) => list(ws),
        Kind::Shell(v) => format!("{v:?}"),
        Kind::Maintainer(s) => s.clone(),
    };
    format!("{}:{} {}", i.line, i.keyword, body)
}

fn parse_all(text: &str) -> Result<Vec<String>, String> {
    parse("Containerfile", text)
        .map(|is| is.iter().map(render).collect())
        .map_err(|e| e.to_string())
}

#[test]
fn parses_instructions() {
    // (input after "FROM scratch\n", rendering of the instruction on line 2)
    let cases: &[(&str, &str)] = &[
        ("RUN echo hi", "2:RUN shell(echo hi)"),
        ("run echo hi", "2:RUN shell(echo hi)"),
        (
            "RUN [\"/bin/echo\", \"hi\"]",
            "2:RUN exec[\"/bin/echo\", \"hi\"]",
        ),
        (
            "RUN [ -f /x ] && echo ok",
            "2:RUN shell([ -f /x ] && echo ok)",
        ),
        ("RUN [ \"$A\" = x ]", "2:RUN shell([ \"$A\" = x ])"),
        ("RUN echo $A ${B}", "2:RUN shell(echo $A ${B})"),
        ("RUN echo a \\\n    b", "2:RUN shell(echo a     b)"),
        ("RUN echo a \\  \n b", "2:RUN shell(echo a  b)"),
        ("RUN echo a \\\n# comment\n\n b", "2:RUN shell(echo a  b)"),
        (
            "RUN echo # not a comment",
            "2:RUN shell(echo # not a comment)",
        ),
        ("CMD [\"a\", \"b\"]", "2:CMD exec[\"a\", \"b\"]"),
        ("CMD []", "2:CMD exec[]"),
        ("CMD echo $HOME", "2:CMD shell(echo $HOME)"),
        ("ENTRYPOINT [\"/app\"]", "2:ENTRYPOINT exec[\"/app\"]"),
        ("ENTRYPOINT exec /app", "2:ENTRYPOINT shell(exec /app)"),
        ("ENV K V", "2:ENV K=V"),
        ("ENV K some value  here", "2:ENV K=some value  here"),
        ("ENV K=V", "2:ENV K=V"),
        ("ENV K=\"a b\" L='c d' M=e\\ f", "2:ENV K=a b|L=c d|M=e f"),
        ("ENV K=$A L=${B}", "2:ENV K=alpha|L=b b"),
        ("ENV K='$A' L=\"$A\"", "2:ENV K=$A|L=alpha"),
        ("ENV K=\\$A", "2:ENV K=$A"),
        ("ENV K=", "2:ENV K="),
        ("ENV K=${NOPE:-d ef}", "2:ENV K=d ef"),
        ("ENV K \"quoted value\"", "2:ENV K=quoted value"),
        ("LABEL a=b \"c d\"=\"e f\"", "2:LABEL a=b|c d=e f"),
        ("LABEL version 1.0", "2:LABEL version=1.0"),
        ("ARG V", "2:ARG V"),
        ("ARG V=1 W=$A", "2:ARG V=1|W=alpha"),
        ("WORKDIR /app", "2:WORKDIR /app"),
        ("WORKDIR /my dir", "2:WORKDIR /my dir"),
        ("WORKDIR $HOME/x", "2:WORKDIR /root/x"),
        ("USER nobody:nogroup", "2:USER nobody:nogroup"),
        ("USER ${U:-1000}", "2:USER 1000"),
        ("EXPOSE 80 443/tcp 53/udp", "2:EXPOSE 80|443/tcp|53/udp"),
        ("VOLUME /data /logs", "2:VOLUME /data|/logs"),
        (
            "VOLUME [\"/data\", \"/my logs\"]",
            "2:VOLUME /data|/my logs",
        ),
        ("COPY a b /dst/", "2:COPY a|b -> /dst/"),
        ("COPY --chown=1:2 a /dst", "2:COPY a -> /dst chown=1:2"),
        (
            "COPY --chown=$A --chmod=755 a /d",
            "2:COPY a -> /d chown=alpha chmod=755",
        ),
        (
            "COPY --from=build /out /out",
            "2:COPY /out -> /out from=build",
        ),
        ("COPY [\"a b\", \"/d/\"]", "2:COPY a b -> /d/"),
        ("COPY \"a b\" /d/", "2:COPY a b -> /d/"),
        ("COPY $A /d/$A", "2:COPY alpha -> /d/alpha"),
        ("COPY --link a /d", "2:COPY a -> /d"),
        ("ADD x.tar.gz /opt/", "2:ADD x.tar.gz -> /opt/"),
        (
            "SHELL [\"/bin/bash\", \"-c\"]",
            "2:SHELL [\"/bin/bash\", \"-c\"]",
        ),
        ("STOPSIGNAL SIGTERM", "2:STOPSIGNAL SIGTERM"),
        ("MAINTAINER Jane <j@x>", "2:MAINTAINER Jane <j@x>"),
        ("  RUN   indented  ", "2:RUN shell(indented)"),
        ("RUN a\r", "2:RUN shell(a)"),
    ];
    for (input, want) in cases {
        let text = format!("FROM scratch\n{input}");
        let got = parse_all(&text).map(|v| v.get(1).cloned().unwrap_or_default());
        assert_eq!(got.as_deref(), Ok(*want), "input: {input:?}");
    }
}

#[test]
fn parses_from() {
    let cases: &[(&str, &str)] = &[
        ("FROM busybox", "1:FROM busybox"),
        ("from busybox:1.36", "1:FROM busybox:1.36"),
        ("FROM busybox AS Build", "1:FROM busybox as build"),
        ("FROM busybox as b2", "1:FROM busybox as b2"),
        (
            "FROM --platform=linux/amd64 busybox",
            "1:FROM busybox platform=linux/amd64",
        ),
        ("FROM ${A}:1", "1:FROM alpha:1"),
    ];
    for (input, want) in cases {
        let got = parse_all(input).map(|v| v[0].clone());
        assert_eq!(got.as_deref(), Ok(*want), "input: {input:?}");
    }
}

#[test]
fn reports_errors() {
    let cases: &[(&str, &str)] = &[
        ("", "Containerfile:1: no FROM instruction"),
        ("# only a comment\n", "Containerfile:2: no FROM instruction"),
        ("RUN echo", "Containerfile:1: RUN: instruction must come after a FROM instruction"),
        ("ARG X\nENV A=b", "Containerfile:2: ENV: instruction must come after a FROM instruction"),
        ("FROM a\nFROB x", "Containerfile:2: FROB: unknown instruction \"FROB\""),
        ("FROM a\n0RUN x", "Containerfile:2: unknown instruction \"0RUN\""),
        ("FROM a\nRUN", "Containerfile:2: RUN: requires at least one argument"),
        ("FROM a\nRUN --mount=type=cache,target=/x true", "Containerfile:2: RUN: flag --mount is not supported"),
        ("FROM a\nRUN --bogus true", "Containerfile:2: RUN: unknown flag --bogus"),
        ("FROM", "Containerfile:1: FROM: requires an image name"),
        ("FROM a b", "Containerfile:1: FROM: requires either one or three arguments: image [AS name]"),
        ("FROM a AS 9x", "Containerfile:1: FROM: invalid stage name \"9x\": must start with a letter and contain only letters, digits, '-', '_' and '.'"),
        ("FROM a AS x\nFROM b AS X", "Containerfile:2: FROM: duplicate stage name \"x\""),
        ("FROM a\nCOPY onlyone", "Containerfile:2: COPY: requires at least two arguments: source... destination"),
        ("FROM a\nCOPY --chown a b", "Containerfile:2: COPY: flag --chown requires a value"),
        ("FROM a\nADD --from=x a b", "Containerfile:2: ADD: unknown flag --from"),
        ("FROM a\nADD https://example.com/x.tgz /x", "Containerfile:2: ADD: remote source \"https://example.com/x.tgz\" is not supported; download it in a RUN step"),
        ("FROM a\nADD [\"http://h/x\", \"/x\"]", "Containerfile:2: ADD: remote source \"http://h/x\" is not supported; download it in a RUN step"),
        ("FROM a\nCMD [\"a\", ]", "Containerfile:2: CMD: invalid json array (strings need double quotes): trailing comma at line 1 column 7"),
        ("FROM a\nCMD ['a']", "Containerfile:2: CMD: invalid json array (strings need double quotes): expected value at line 1 column 2"),
        ("FROM a\nCMD [1, 2]", "Containerfile:2: CMD: json array must contain only strings, found 1"),
        ("FROM a\nCMD", "Containerfile:2: CMD: requires at least one argument"),
        ("FROM a\nENV", "Containerfile:2: ENV: requires at least one argument"),
        ("FROM a\nENV K", "Containerfile:2: ENV: requires a value for \"K\" (key value or key=value)"),
        ("FROM a\nENV A=1 B", "Containerfile:2: ENV: syntax error: can't find = in \"B\"; must be of the form name=value"),
        ("FROM a\nENV =1", "Containerfile:2: ENV: names can not be blank in \"=1\""),
        ("FROM a\nENV A=\"unterminated", "Containerfile:2: ENV: unterminated double quote"),
        ("FROM a\nENV A='x", "Containerfile:2: ENV: unterminated single quote"),
        ("FROM a\nENV A=${B", "Containerfile:2: ENV: missing '}' in variable substitution"),
        ("FROM a\nENV A=${}", "Containerfile:2: ENV: bad substitution: expected a variable name after '${'"),
        ("FROM a\nENV A=${B/x/y}", "Containerfile:2: ENV: unsupported modifier '/' in substitution of B"),
        ("FROM a\nENV A=${B:=x}", "Containerfile:2: ENV: unsupported modifier ':=' in substitution of B"),
        ("FROM a\nARG 1x", "Containerfile:2: ARG: invalid argument name \"1x\""),
        ("FROM a\nWORKDIR", "Containerfile:2: WORKDIR: requires exactly one argument"),
        ("FROM a\nVOLUME []", "Containerfile:2: VOLUME: requires at least one non-empty argument"),
        ("FROM a\nSHELL /bin/bash", "Containerfile:2: SHELL: requires a non-empty json array, e.g. [\"/bin/sh\", \"-c\"]"),
        ("FROM a\nSTOPSIGNAL A B", "Containerfile:2: STOPSIGNAL: requires exactly one argument"),
        ("FROM a\nHEALTHCHECK NONE", "Containerfile:2: HEALTHCHECK: instruction is not supported"),
        ("FROM a\nONBUILD RUN x", "Containerfile:2: ONBUILD: instruction is not supported"),
        ("# escape=x\nFROM a", "Containerfile:1: invalid escape token \"x\": must be ` or \\"),
        ("# escape=`\n# escape=`\nFROM a", "Containerfile:2: only one escape parser directive can be used"),
        ("FROM a\nRUN a \\\nb\n\nFROB", "Containerfile:5: FROB: unknown instruction \"FROB\""),
    ];
    for (input, want) in cases {
        assert_eq!(
            parse_all(input).map(|_| ()),
            Err(want.to_string()),
            "input: {input:?}"
        );
    }
}

#[test]
fn escape_directive() {
    let text = "# escape=`\nFROM a\nRUN dir c:\\ `\n  && echo `\n  ok\nCOPY a`$b /d\n";
    let got = parse_all(text).unwrap_or_default();
    assert_eq!(
        got,
        vec![
            "2:FROM a".to_string(),
            "3:RUN shell(dir c:\\   && echo   ok)".to_string(),
            "6:COPY a$b -> /d".to_string(),
        ]
    );
    // Directives stop at the first other line; a later one is a comment.
    let got = parse_all("\n# escape=`\nFROM a\nRUN a \\\n b").unwrap_or_default();
    assert_eq!(got[1], "4:RUN shell(a  b)");
    // An unknown directive is a comment and ends the directives.
    let got = parse_all("# foo=bar\n# escape=`\nFROM a\nRUN a \\\n b").unwrap_or_default();
    assert_eq!(got[1], "4:RUN shell(a  b)");
    // syntax= is accepted and ignored; keys are case-insensitive.
    let got = parse_all("# syntax=docker/dockerfile:1\n# ESCAPE = `\nFROM a\nRUN a `\n b")
        .unwrap_or_default();
    assert_eq!(got[1], "4:RUN shell(a  b)");
}

#[test]
fn multi_stage_and_args_before_from() {
    let text =
        "ARG BASE=busybox\nFROM ${BASE} AS build\nRUN make\nFROM scratch\nCOPY --from=build /out /";
    let got = parse_all(text).unwrap_or_default();
    assert_eq!(
        got,
        vec![
            "1:ARG BASE=busybox",
            "2:FROM  as build", // BASE is not in `vars`
            "3:RUN shell(make)",
            "4:FROM scratch",
            "5:COPY /out -> / from=build",
        ]
    );
}

#[test]
fn expands_words() {
    // (raw word, expansion against `vars`)
    let cases: &[(&str, &str)] = &[
        ("plain", "plain"),
        ("$A", "alpha"),
        ("${A}", "alpha"),
        ("x${A}y", "xalphay"),
        ("$Ax", ""),
        ("$A-x", "alpha-x"),
        ("$NOPE", ""),
        ("${NOPE:-def}", "def"),
        ("${EMPTY:-def}", "def"),
        ("${EMPTY-def}", ""),
        ("${NOPE-def}", "def"),
        ("${A:-def}", "alpha"),
        ("${A:+set}", "set"),
        ("${EMPTY:+set}", ""),
        ("${EMPTY+set}", "set"),
        ("${NOPE:+set}", ""),
        ("${NOPE:-${A}}", "alpha"),
        ("${NOPE:-${NADA:-deep}}", "deep"),
        ("${NOPE:-a}b}", "ab}"),
        ("${NOPE:-\\}}", "}"),
        ("${NOPE:-'x y'}", "x y"),
        ("'$A'", "$A"),
        ("\"$A\"", "alpha"),
        ("\"a\\\"b\"", "a\"b"),
        ("\"a\\nb\"", "a\\nb"),
        ("\\$A", "$A"),
        ("a\\ b", "a b"),
        ("$", "$"),
        ("a$", "a$"),
        ("$1", "$1"),
        ("cost: $ 5", "cost: $ 5"),
        ("trail\\", "trail"),
        ("${A:?must be set}", "alpha"),
        ("${NOPE:?must be set}", "ERR(NOPE: must be set)"),
        (
            "${EMPTY:?}",
            "ERR(EMPTY: is not allowed to be unset or empty)",
        ),
        ("${EMPTY?}", ""),
        ("${NOPE?}", "ERR(NOPE: is not allowed to be unset)"),
        ("日本$A", "日本alpha"),
    ];
    for (raw, want) in cases {
        let w = lex_word(raw, '\\').unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        assert_eq!(ex(&w), *want, "raw: {raw:?}");
    }
}

#[test]
fn literal_words() {
    assert_eq!(
        lex_word("a'b'", '\\').ok().and_then(|w| w.as_literal()),
        Some("ab".into())
    );
    assert_eq!(
        lex_word("a$B", '\\').ok().and_then(|w| w.as_literal()),
        None
    );
    assert_eq!(Word::literal("x").raw(), "x");
}

#[test]
fn splits_words() {
    let cases: &[(&str, &[&str])] = &[
        ("a b  c", &["a", "b", "c"]),
        ("  a  ", &["a"]),
        ("a=\"x y\" b='c d'", &["a=\"x y\"", "b='c d'"]),
        ("a\\ b c", &["a\\ b", "c"]),
        ("${A:-x y} z", &["${A:-x y}", "z"]),
        ("\"unterminated x", &["\"unterminated x"]),
        ("", &[]),
    ];
    for (input, want) in cases {
        assert_eq!(split_words(input, '\\'), *want, "input: {input:?}");
    }
}

#[test]
fn command_argv() {
    let sh = default_shell();
    assert_eq!(
        Command::Shell("echo hi".into()).argv(&sh),
        vec!["/bin/sh", "-c", "echo hi"]
    );
    assert_eq!(Command::Exec(vec!["a".into()]).argv(&sh), vec!["a"]);
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let raw = "${A:-".repeat(10_000) + &"}".repeat(10_000);
    let text = format!("FROM a\nENV X={raw}");
    let got = parse_all(&text);
    assert_eq!(
        got.map(|_| ()),
        Err("Containerfile:2: ENV: variable substitution nested too deeply".to_string())
    );
}

#[test]
fn ignores_comments_and_blank_lines() {
    let text = "# comment\n\nFROM a\n   # indented comment\n\nRUN x\n";
    assert_eq!(
        parse_all(text).unwrap_or_default(),
        vec!["3:FROM a".to_string(), "6:RUN shell(x)".to_string()]
    );
}

#[test]
fn text_is_joined_source() {
    let got = parse("f", "FROM a\nrun echo \\\n  hi").unwrap_or_default();
    assert_eq!(got[1].text, "RUN echo   hi");
    assert_eq!(got[1].keyword, "RUN");
}

#[test]
fn empty_continuation_lines_are_skipped() {
    // As in Docker: a blank line inside a continuation does not end it.
    let got = parse_all("FROM a\nRUN a \\\n\n   \n  b\nRUN c").unwrap_or_default();
    assert_eq!(got[1], "2:RUN shell(a   b)");
    assert_eq!(got[2], "6:RUN shell(c)");
    // A continuation at the end of the file just ends the instruction.
    let got = parse_all("FROM a\nRUN a \\").unwrap_or_default();
    assert_eq!(got[1], "2:RUN shell(a)");
}

#[test]
fn flags_are_only_leading_words() {
    let got = parse_all("FROM a\nCOPY --chown=1 --chmod=644 a --chown=2 /d/").unwrap_or_default();
    assert_eq!(got[1], "2:COPY a|--chown=2 -> /d/ chown=1 chmod=644");
    assert_eq!(split_words_limit("a b c", '\\', 1), vec!["a"]);
}
