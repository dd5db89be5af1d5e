use amq_protocol::types::{DecimalValue as Decimal, LongString};

use super::*;

#[test]
fn topic_cases() {
    let cases: &[(&str, &str, bool)] = &[
        ("a.b.c", "a.b.c", true),
        ("a.b.c", "a.b", false),
        ("a.*.c", "a.b.c", true),
        ("a.*.c", "a.c", false),
        ("a.*.c", "a.b.b.c", false),
        ("*", "a", true),
        ("*", "", false),
        ("*", "a.b", false),
        ("*.*", "a.b", true),
        ("#", "", true),
        ("#", "a", true),
        ("#", "a.b.c", true),
        ("a.#", "a", true),
        ("a.#", "a.b.c", true),
        ("a.#", "b.a", false),
        ("#.a", "a", true),
        ("#.a", "x.y.a", true),
        ("#.a", "a.x", false),
        ("a.#.b", "a.b", true),
        ("a.#.b", "a.x.y.b", true),
        ("a.#.b", "a.x.y.c", false),
        ("a.#.#.b", "a.b", true),
        ("#.#", "", true),
        ("#.*", "", false),
        ("#.*", "a", true),
        ("*.#", "a.b.c", true),
        ("#.*.#", "a", true),
        ("", "", true),
        ("", "a", false),
        ("a", "", false),
        ("a..b", "a..b", true),
        ("a.*.b", "a..b", true),
        ("a.#.b", "a..b", true),
        ("*.*", ".", true),
        ("*", ".", false),
        ("a.", "a.", true),
        ("a.*", "a.", true),
        ("a.#", "a.", true),
        ("#.b", ".b", true),
        ("a.b", "a.b.", false),
        ("a*.b", "a*.b", true),
        ("a*.b", "ax.b", false),
        ("a#", "a", false),
        ("a#", "a#", true),
        ("#", ".", true),
    ];
    for &(pattern, key, want) in cases {
        assert_eq!(topic_matches(pattern, key), want, "{pattern:?} vs {key:?}");
    }
}

#[test]
fn topic_pathological_is_fast() {
    let pattern = vec!["#"; 5000].join(".") + ".x";
    let key = vec!["a"; 5000].join(".");
    let alternating = vec!["#.*"; 2000].join(".") + ".z";
    let start = std::time::Instant::now();
    assert!(!topic_matches(&pattern, &key));
    assert!(topic_matches(&pattern, &(key.clone() + ".x")));
    assert!(!topic_matches(&alternating, &key));
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

#[test]
fn headers_cases() {
    use AMQPValue::DecimalValue;
    use AMQPValue::{
        Boolean, Double, LongInt, LongLongInt, LongUInt, ShortShortUInt, ShortString, ShortUInt,
        Void,
    };
    let cases: Vec<(FieldTable, Option<FieldTable>, bool, &str)> = vec![
        (
            table(&[("a", s("1"))]),
            Some(table(&[("a", s("1"))])),
            true,
            "all default",
        ),
        (
            table(&[("a", s("1")), ("b", s("2"))]),
            Some(table(&[("a", s("1"))])),
            false,
            "all missing",
        ),
        (
            table(&[("a", s("1"))]),
            Some(table(&[("a", s("2"))])),
            false,
            "all differs",
        ),
        (
            table(&[("x-match", s("any")), ("a", s("1")), ("b", s("2"))]),
            Some(table(&[("b", s("2"))])),
            true,
            "any",
        ),
        (
            table(&[("x-match", s("any")), ("a", s("1"))]),
            Some(table(&[("b", s("1"))])),
            false,
            "any none",
        ),
        (
            table(&[("x-match", s("any"))]),
            Some(table(&[("b", s("1"))])),
            false,
            "any empty",
        ),
        (
            table(&[("x-match", s("all"))]),
            None,
            true,
            "all empty no headers",
        ),
        (table(&[]), None, true, "no args"),
        (table(&[("a", s("1"))]), None, false, "no headers"),
        (
            table(&[("a", Void)]),
            Some(table(&[("a", LongInt(9))])),
            true,
            "void presence",
        ),
        (
            table(&[("a", Void)]),
            Some(table(&[("b", LongInt(9))])),
            false,
            "void absent",
        ),
        (
            table(&[("a", LongInt(5))]),
            Some(table(&[("a", ShortShortUInt(5))])),
            true,
            "int widths",
        ),
        (
            table(&[("a", LongLongInt(5))]),
            Some(table(&[("a", ShortUInt(5))])),
            true,
            "int widths 2",
        ),
        (
            table(&[("a", LongInt(-1))]),
            Some(table(&[("a", LongUInt(u32::MAX))])),
            false,
            "sign",
        ),
        (
            table(&[("a", LongInt(5))]),
            Some(table(&[("a", Double(5.0))])),
            true,
            "int float",
        ),
        (
            table(&[("a", LongInt(5))]),
            Some(table(&[("a", s("5"))])),
            false,
            "int string",
        ),
        (
            table(&[("a", s("v"))]),
            Some(table(&[("a", ShortString("v".into()))])),
            true,
            "short long str",
        ),
        (
            table(&[("a", Boolean(true))]),
            Some(table(&[("a", Boolean(true))])),
            true,
            "bool",
        ),
        (
            table(&[("a", Boolean(true))]),
            Some(table(&[("a", ShortShortUInt(1))])),
            false,
            "bool vs int",
        ),
        (
            table(&[("a", DecimalValue(Decimal { scale: 1, value: 5 }))]),
            Some(table(&[(
                "a",
                DecimalValue(Decimal { scale: 1, value: 5 }),
            )])),
            true,
            "decimal",
        ),
        (
            table(&[("x-foo", s("1")), ("a", s("1"))]),
            Some(table(&[("a", s("1"))])),
            true,
            "x- ignored all",
        ),
        (
            table(&[("x-match", s("any")), ("x-foo", s("1"))]),
            Some(table(&[("x-foo", s("1"))])),
            false,
            "x- ignored any",
        ),
        (
            table(&[
                ("x-match", s("all-with-x")),
                ("x-foo", s("1")),
                ("a", s("1")),
            ]),
            Some(table(&[("a", s("1"))])),
            false,
            "all-with-x needs x-foo",
        ),
        (
            table(&[
                ("x-match", s("all-with-x")),
                ("x-foo", s("1")),
                ("a", s("1")),
            ]),
            Some(table(&[("a", s("1")), ("x-foo", s("1"))])),
            true,
            "all-with-x",
        ),
        (
            table(&[("x-match", s("any-with-x")), ("x-foo", s("1"))]),
            Some(table(&[("x-foo", s("1"))])),
            true,
            "any-with-x",
        ),
        (
            table(&[("x-match", s("bogus")), ("a", s("1"))]),
            Some(table(&[("a", s("1"))])),
            true,
            "bogus means all",
        ),
        (
            table(&[("x-match", s("all"))]),
            Some(table(&[("x-match", s("any"))])),
            true,
            "x-match not compared",
        ),
    ];
    for (args, headers, want, name) in cases {
        assert_eq!(headers_match(&args, headers.as_ref()), want, "{name}");
    }
}

#[test]
fn x_match_validation() {
    for good in ["all", "any", "all-with-x", "any-with-x"] {
        assert_eq!(validate_x_match(&table(&[("x-match", s(good))])), Ok(()));
    }
    assert_eq!(validate_x_match(&table(&[])), Ok(()));
    let e = validate_x_match(&table(&[("x-match", s("some"))])).unwrap_err();
    assert_eq!(
        e,
        "Invalid x-match field value <<\"some\">>; expected all, any, all-with-x, or any-with-x"
    );
    let e = validate_x_match(&table(&[("x-match", AMQPValue::LongInt(1))])).unwrap_err();
    assert!(e.contains("signedint") && e.contains("longstr"), "{e}");
}
