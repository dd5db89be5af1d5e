use super::*;
use crate::codec::encode_field_table;
use amq_protocol::types::LongString;

fn amqplain(entries: &[(&str, AMQPValue)]) -> Vec<u8> {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    let mut out = Vec::new();
    encode_field_table(&t, &mut out);
    out.split_off(4)
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[test]
fn good_responses() {
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("PLAIN", b"\0guest\0guest".to_vec(), "guest", "guest"),
        ("PLAIN", b"admin\0bob\0s3cret".to_vec(), "bob", "s3cret"),
        ("PLAIN", b"\0bob\0".to_vec(), "bob", ""),
        ("PLAIN", b"\0bob\0pa\0ss".to_vec(), "bob", "pa\0ss"),
        (
            "PLAIN",
            "\0jörg\0pässword".as_bytes().to_vec(),
            "jörg",
            "pässword",
        ),
        (
            "AMQPLAIN",
            amqplain(&[("LOGIN", long("guest")), ("PASSWORD", long("pw"))]),
            "guest",
            "pw",
        ),
        (
            "AMQPLAIN",
            amqplain(&[
                ("LOGIN", long("u")),
                ("PASSWORD", long("p")),
                ("extra", AMQPValue::Boolean(true)),
            ]),
            "u",
            "p",
        ),
    ];
    for (mech, response, user, pass) in cases {
        let c =
            parse_response(mech, &response).unwrap_or_else(|e| panic!("{mech} {response:?}: {e}"));
        assert_eq!(c.username, user);
        assert_eq!(c.password, pass);
        assert!(!format!("{c:?}").contains(pass) || pass.is_empty() || pass == user);
    }
}

#[test]
fn bad_responses_never_echo_password() {
    let secret = "hunter2-secret";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("PLAIN", b"".to_vec(), "PLAIN"),
        ("PLAIN", format!("guest{secret}").into_bytes(), "PLAIN"),
        ("PLAIN", format!("\0guest{secret}").into_bytes(), "PLAIN"),
        (
            "PLAIN",
            [&b"\0guest\0"[..], &[0xFF, 0xFE], secret.as_bytes()].concat(),
            "UTF-8",
        ),
        (
            "PLAIN",
            [&b"\0gu\xFFest\0"[..], secret.as_bytes()].concat(),
            "UTF-8",
        ),
        (
            "AMQPLAIN",
            amqplain(&[("LOGIN", long("guest"))]),
            "lacks PASSWORD",
        ),
        (
            "AMQPLAIN",
            amqplain(&[("PASSWORD", long(secret))]),
            "lacks LOGIN",
        ),
        (
            "AMQPLAIN",
            amqplain(&[("LOGIN", long("g")), ("PASSWORD", AMQPValue::LongInt(5))]),
            "string",
        ),
        (
            "AMQPLAIN",
            [
                &b"\x05LOGINS\0\0\0\x05guest\x08PASSWORDS\0\0\0\x40"[..],
                secret.as_bytes(),
            ]
            .concat(),
            "field table",
        ),
        ("AMQPLAIN", b"\xFF".to_vec(), "field table"),
        ("EXTERNAL", b"".to_vec(), "unsupported"),
        ("plain", b"\0a\0b".to_vec(), "unsupported"),
    ];
    for (mech, response, needle) in cases {
        let err = parse_response(mech, &response).expect_err("must fail");
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        assert!(
            !err.contains(secret) && !err.contains("hunter"),
            "{err:?} leaks the password"
        );
    }
    let c = Credentials {
        username: "u".into(),
        password: secret.into(),
    };
    assert!(!format!("{c:?}").contains(secret));
}
