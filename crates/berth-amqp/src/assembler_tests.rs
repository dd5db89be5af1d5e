use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{basic, channel, queue};

use super::*;
use crate::error::ErrorScope;

fn publish() -> AMQPFrame {
    AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "x".into(),
            routing_key: "k".into(),
            mandatory: false,
            immediate: false,
        })),
    )
}

fn header(size: u64) -> AMQPFrame {
    AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: size,
            properties: BasicProperties::default().with_delivery_mode(2),
        },
    )
}

fn body(data: &[u8]) -> AMQPFrame {
    AMQPFrame::Body(1, data.to_vec())
}

fn other_method() -> AMQPFrame {
    AMQPFrame::Method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare::default())),
    )
}

/// Feeds frames; all but the last must yield Ok(None).
fn run(frames: Vec<AMQPFrame>) -> (ContentAssembler, Result<Option<Assembled>, AmqpError>) {
    let mut a = ContentAssembler::new(1000);
    let n = frames.len();
    for (i, f) in frames.into_iter().enumerate() {
        let r = a.on_frame(1, f);
        if i + 1 == n {
            return (a, r);
        }
        assert_eq!(r, Ok(None), "frame {i}");
    }
    unreachable!("no frames")
}

fn published(result: Result<Option<Assembled>, AmqpError>) -> Vec<u8> {
    match result {
        Ok(Some(Assembled::Publish {
            method,
            properties,
            body,
        })) => {
            assert_eq!(method.routing_key.as_str(), "k");
            assert_eq!(properties.delivery_mode(), &Some(2));
            body.to_vec()
        }
        other => panic!("expected a publish, got {other:?}"),
    }
}

#[test]
fn complete_publishes() {
    let cases: Vec<(Vec<AMQPFrame>, &[u8])> = vec![
        (vec![publish(), header(0)], b""),
        (vec![publish(), header(5), body(b"hello")], b"hello"),
        (
            vec![publish(), header(5), body(b"he"), body(b""), body(b"llo")],
            b"hello",
        ),
        (
            vec![
                publish(),
                AMQPFrame::Heartbeat,
                header(3),
                AMQPFrame::Heartbeat,
                body(b"abc"),
            ],
            b"abc",
        ),
        (vec![publish(), header(1000), body(&[1; 1000])], &[1; 1000]),
    ];
    for (frames, want) in cases {
        let (a, r) = run(frames);
        assert_eq!(published(r), want);
        assert!(!a.in_progress());
    }
}

#[test]
fn methods_pass_through() {
    let mut a = ContentAssembler::new(10);
    let r = a.on_frame(1, other_method());
    assert!(matches!(
        r,
        Ok(Some(Assembled::Method(AMQPClass::Queue(_))))
    ));
    assert!(!a.in_progress());
    assert_eq!(a.on_frame(1, publish()), Ok(None));
    assert!(a.in_progress());
    assert_eq!(a.on_frame(1, header(2)), Ok(None));
    assert!(a.in_progress());
    assert!(a.on_frame(1, body(b"ab")).unwrap().is_some());
    assert!(!a.in_progress());
}

#[test]
fn errors() {
    let chan_close = AMQPFrame::Method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close::default())),
    );
    let mut wrong_class = header(1);
    if let AMQPFrame::Header(_, h) = &mut wrong_class {
        h.class_id = 50;
    }
    let cases: Vec<(Vec<AMQPFrame>, ReplyCode, ErrorScope, &str)> = vec![
        (
            vec![header(1)],
            ReplyCode::UnexpectedFrame,
            ErrorScope::Connection,
            "expected method frame",
        ),
        (
            vec![body(b"x")],
            ReplyCode::UnexpectedFrame,
            ErrorScope::Connection,
            "expected method frame",
        ),
        (
            vec![publish(), other_method()],
            ReplyCode::UnexpectedFrame,
            ErrorScope::Connection,
            "content header",
        ),
        (
            vec![publish(), publish()],
            ReplyCode::UnexpectedFrame,
            ErrorScope::Connection,
            "content header",
        ),
        (
            vec![publish(), body(b"x")],
            ReplyCode::UnexpectedFrame,
            ErrorScope::Connection,
            "content header",
        ),
        (
            vec![publish(), wrong_class],
            ReplyCode::UnexpectedFrame,
            ErrorScope::Connection,
            "class 50",
        ),
        (
            vec![publish(), header(3), chan_close],
            ReplyCode::UnexpectedFrame,
            ErrorScope::Connection,
            "content body",
        ),
        (
            vec![publish(), header(3), header(3)],
            ReplyCode::UnexpectedFrame,
            ErrorScope::Connection,
            "content body",
        ),
        (
            vec![publish(), header(3), body(b"abcd")],
            ReplyCode::FrameError,
            ErrorScope::Connection,
            "declared size",
        ),
        (
            vec![publish(), header(3), body(b"ab"), body(b"cd")],
            ReplyCode::FrameError,
            ErrorScope::Connection,
            "4 bytes",
        ),
        (
            vec![publish(), header(1001)],
            ReplyCode::PreconditionFailed,
            ErrorScope::Channel(1),
            "message size 1001 is larger than configured max size 1000",
        ),
        (
            vec![publish(), header(u64::MAX)],
            ReplyCode::PreconditionFailed,
            ErrorScope::Channel(1),
            "larger",
        ),
    ];
    for (frames, code, scope, needle) in cases {
        let (mut a, r) = run(frames);
        let err = r.expect_err("error expected");
        assert_eq!(err.code, code, "{err}");
        assert_eq!(err.scope, scope);
        assert!(err.text.contains(needle), "{:?} lacks {needle:?}", err.text);
        // Back to expecting a method after an error.
        assert!(!a.in_progress());
        assert!(matches!(
            a.on_frame(1, other_method()),
            Ok(Some(Assembled::Method(_)))
        ));
    }
}

#[test]
fn lying_header_does_not_preallocate() {
    let mut a = ContentAssembler::new(u64::MAX);
    assert_eq!(a.on_frame(1, publish()), Ok(None));
    assert_eq!(a.on_frame(1, header(128 << 20)), Ok(None));
    assert_eq!(a.on_frame(1, body(b"x")), Ok(None));
    match &a.state {
        State::Body { body, .. } => assert!(body.capacity() <= (MAX_PREALLOC as usize) * 2),
        other => panic!("{other:?}"),
    }
}
