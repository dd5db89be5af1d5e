//! Per-channel content assembly: basic.publish is followed by one content
//! header and body frames until body-size bytes have arrived. Anything else in
//! between is 505 unexpected-frame, as RabbitMQ raises it.
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, AMQPClass, BasicProperties};
use bytes::{Bytes, BytesMut};

use crate::error::{AmqpError, ReplyCode};

/// A complete command from one channel.
// Not boxed: each command is moved once to the channel; a box would cost an
// allocation per publish on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Assembled {
    /// A method without content.
    Method(AMQPClass),
    /// basic.publish with its properties and whole body.
    Publish {
        method: basic::Publish,
        properties: BasicProperties,
        body: Bytes,
    },
}

/// The most body capacity reserved up front: a header may declare a size it
/// never sends, so larger bodies grow as their frames arrive.
const MAX_PREALLOC: u64 = 1 << 20;

const BASIC_CLASS: u16 = 60;

// One per channel; boxing the in-progress publish would allocate per publish.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    /// basic.publish received, content header expected.
    Header(basic::Publish),
    /// Header received, `body_size - body.len()` bytes still expected.
    Body {
        method: basic::Publish,
        properties: BasicProperties,
        body_size: u64,
        body: BytesMut,
    },
}

/// Assembles one channel's frames. `max_body` bounds a message body
/// (RabbitMQ: 128 MiB default); a header declaring more is a 406
/// precondition-failed channel error, worded as RabbitMQ words it.
#[derive(Debug)]
pub struct ContentAssembler {
    max_body: u64,
    state: State,
}

impl ContentAssembler {
    pub fn new(max_body: u64) -> Self {
        Self {
            max_body,
            state: State::Idle,
        }
    }

    /// Feeds one frame that belongs to `channel` (not channel 0, not heartbeat).
    /// `Ok(None)` while content is still expected. After an error the assembler
    /// is back to expecting a method.
    pub fn on_frame(
        &mut self,
        channel: u16,
        frame: AMQPFrame,
    ) -> Result<Option<Assembled>, AmqpError> {
        let state = std::mem::take(&mut self.state);
        match (state, frame) {
            // Heartbeats may be interleaved anywhere and carry nothing.
            (state, AMQPFrame::Heartbeat) => {
                self.state = state;
                Ok(None)
            }
            (State::Idle, AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Publish(publish)))) => {
                self.state = State::Header(publish);
                Ok(None)
            }
            (State::Idle, AMQPFrame::Method(_, class)) => Ok(Some(Assembled::Method(class))),
            (State::Idle, _) => {
                Err(unexpected("expected method frame, got non method frame instead"))
            }
            (State::Header(method), AMQPFrame::Header(_, header)) => {
                if header.class_id != BASIC_CLASS {
                    return Err(unexpected(format!(
                        "expected content header for class {BASIC_CLASS}, got one for class {}",
                        header.class_id
                    )));
                }
                if header.body_size > self.max_body {
                    return Err(AmqpError::channel(
                        channel,
                        ReplyCode::PreconditionFailed,
                        format!(
                            "message size {} is larger than configured max size {}",
                            header.body_size, self.max_body
                        ),
                    )
                    .caused_by(60, 40));
                }
                if header.body_size == 0 {
                    return Ok(Some(Assembled::Publish {
                        method,
                        properties: header.properties,
                        body: Bytes::new(),
                    }));
                }
                self.state = State::Body {
                    method,
                    properties: header.properties,
                    body_size: header.body_size,
                    body: BytesMut::new(),
                };
                Ok(None)
            }
            (State::Header(_), _) => Err(unexpected(format!(
                "expected content header for class {BASIC_CLASS}, got non content header frame instead"
            ))),
            (State::Body { method, properties, body_size, mut body }, AMQPFrame::Body(_, data)) => {
                let received = body.len() as u64 + data.len() as u64;
                if received > body_size {
                    return Err(AmqpError::connection(
                        ReplyCode::FrameError,
                        format!(
                            "content body on channel {channel} exceeds its declared size: {received} bytes for a body of {body_size}"
                        ),
                    ));
                }
                if received == body_size {
                    let body = if body.is_empty() {
                        // One frame carried the whole body: take it without copying.
                        Bytes::from(data)
                    } else {
                        body.extend_from_slice(&data);
                        body.freeze()
                    };
                    return Ok(Some(Assembled::Publish { method, properties, body }));
                }
                if body.capacity() == 0 {
                    body.reserve(body_size.min(MAX_PREALLOC) as usize);
                }
                body.extend_from_slice(&data);
                self.state = State::Body { method, properties, body_size, body };
                Ok(None)
            }
            (State::Body { .. }, _) => Err(unexpected("expected content body, got non content body frame instead")),
        }
    }

    /// Whether a publish is waiting for its header or body.
    pub fn in_progress(&self) -> bool {
        !matches!(self.state, State::Idle)
    }
}

fn unexpected(text: impl Into<String>) -> AmqpError {
    AmqpError::connection(ReplyCode::UnexpectedFrame, text)
}

#[cfg(test)]
#[path = "assembler_tests.rs"]
mod tests;
