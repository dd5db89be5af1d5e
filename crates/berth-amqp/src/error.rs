//! Protocol exceptions: a reply code, text naming the object, and whether they
//! close the channel or the whole connection (AMQP 0-9-1 section 1.2 and
//! RabbitMQ's behaviour).
use amq_protocol::protocol::{channel, connection, AMQPClass};

/// Reply codes from the 0-9-1 spec that a server raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ReplyCode {
    ContentTooLarge = 311,
    NoRoute = 312,
    NoConsumers = 313,
    ConnectionForced = 320,
    InvalidPath = 402,
    AccessRefused = 403,
    NotFound = 404,
    ResourceLocked = 405,
    PreconditionFailed = 406,
    FrameError = 501,
    SyntaxError = 502,
    CommandInvalid = 503,
    ChannelError = 504,
    UnexpectedFrame = 505,
    ResourceError = 506,
    NotAllowed = 530,
    NotImplemented = 540,
    InternalError = 541,
}

impl ReplyCode {
    /// The constant's name as RabbitMQ prints it in reply texts.
    pub fn name(self) -> &'static str {
        match self {
            ReplyCode::ContentTooLarge => "CONTENT_TOO_LARGE",
            ReplyCode::NoRoute => "NO_ROUTE",
            ReplyCode::NoConsumers => "NO_CONSUMERS",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::InvalidPath => "INVALID_PATH",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::FrameError => "FRAME_ERROR",
            ReplyCode::SyntaxError => "SYNTAX_ERROR",
            ReplyCode::CommandInvalid => "COMMAND_INVALID",
            ReplyCode::ChannelError => "CHANNEL_ERROR",
            ReplyCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ReplyCode::ResourceError => "RESOURCE_ERROR",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }
}

/// Cuts `text` to at most 255 bytes (a shortstr) on a char boundary.
pub fn truncate_shortstr(text: &mut String) {
    const MAX: usize = 255;
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Whether an error closes one channel or the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorScope {
    Connection,
    Channel(u16),
}

/// A protocol exception. `class_id`/`method_id` name the method that caused it
/// (0, 0 when none), as sent back in connection.close / channel.close.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?} ({}): {text}", *code as u16)]
pub struct AmqpError {
    pub code: ReplyCode,
    pub text: String,
    pub scope: ErrorScope,
    pub class_id: u16,
    pub method_id: u16,
}

impl AmqpError {
    /// A connection exception. Hard errors (5xx, 320, 402, 403 at open) use this.
    pub fn connection(code: ReplyCode, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            scope: ErrorScope::Connection,
            class_id: 0,
            method_id: 0,
        }
    }

    /// A channel exception (soft errors: 403, 404, 405, 406, 311-313).
    pub fn channel(channel: u16, code: ReplyCode, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            scope: ErrorScope::Channel(channel),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Records the method that caused the error.
    pub fn caused_by(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// The reply text as RabbitMQ formats it: `"NOT_FOUND - no queue 'q' in vhost '/'"`.
    pub fn reply_text(&self) -> String {
        let mut text = format!("{} - {}", self.code.name(), self.text);
        truncate_shortstr(&mut text);
        text
    }

    /// The connection.close or channel.close method that reports this error.
    pub fn close_method(&self) -> AMQPClass {
        let reply_code = self.code as u16;
        let reply_text = self.reply_text().into();
        match self.scope {
            ErrorScope::Connection => {
                AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                    reply_code,
                    reply_text,
                    class_id: self.class_id,
                    method_id: self.method_id,
                }))
            }
            ErrorScope::Channel(_) => {
                AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code,
                    reply_text,
                    class_id: self.class_id,
                    method_id: self.method_id,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_text_names() {
        let cases = [
            (ReplyCode::NotFound, "NOT_FOUND"),
            (ReplyCode::AccessRefused, "ACCESS_REFUSED"),
            (ReplyCode::PreconditionFailed, "PRECONDITION_FAILED"),
            (ReplyCode::ResourceLocked, "RESOURCE_LOCKED"),
            (ReplyCode::FrameError, "FRAME_ERROR"),
            (ReplyCode::SyntaxError, "SYNTAX_ERROR"),
            (ReplyCode::CommandInvalid, "COMMAND_INVALID"),
            (ReplyCode::ChannelError, "CHANNEL_ERROR"),
            (ReplyCode::UnexpectedFrame, "UNEXPECTED_FRAME"),
            (ReplyCode::ResourceError, "RESOURCE_ERROR"),
            (ReplyCode::NotAllowed, "NOT_ALLOWED"),
            (ReplyCode::NotImplemented, "NOT_IMPLEMENTED"),
            (ReplyCode::InternalError, "INTERNAL_ERROR"),
            (ReplyCode::ConnectionForced, "CONNECTION_FORCED"),
            (ReplyCode::InvalidPath, "INVALID_PATH"),
            (ReplyCode::ContentTooLarge, "CONTENT_TOO_LARGE"),
            (ReplyCode::NoRoute, "NO_ROUTE"),
            (ReplyCode::NoConsumers, "NO_CONSUMERS"),
        ];
        for (code, name) in cases {
            let e = AmqpError::channel(1, code, "x");
            assert_eq!(e.reply_text(), format!("{name} - x"));
        }
        let e = AmqpError::channel(1, ReplyCode::NotFound, "no queue 'q' in vhost '/'");
        assert_eq!(e.reply_text(), "NOT_FOUND - no queue 'q' in vhost '/'");
    }

    #[test]
    fn reply_text_truncates_on_char_boundary() {
        // "NOT_FOUND - " is 12 bytes; fill with 2-byte chars so byte 255 falls mid-char.
        let cases: [(String, usize); 4] = [
            ("a".repeat(243), 255),
            ("a".repeat(300), 255),
            ("é".repeat(200), 254),
            ("€".repeat(100), 255),
        ];
        for (text, want) in cases {
            let e = AmqpError::connection(ReplyCode::NotFound, text);
            let r = e.reply_text();
            assert_eq!(r.len(), want, "{r}");
            assert!(r.starts_with("NOT_FOUND - "));
        }
        let e = AmqpError::connection(ReplyCode::NotFound, "é".repeat(200));
        assert!(e.reply_text().len() <= 255);
    }

    #[test]
    fn close_methods() {
        let e = AmqpError::channel(3, ReplyCode::NotFound, "no queue 'q' in vhost '/'")
            .caused_by(50, 10);
        match e.close_method() {
            AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                assert_eq!(c.reply_code, 404);
                assert_eq!(
                    c.reply_text.as_str(),
                    "NOT_FOUND - no queue 'q' in vhost '/'"
                );
                assert_eq!((c.class_id, c.method_id), (50, 10));
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = AmqpError::connection(ReplyCode::FrameError, "bad");
        match e.close_method() {
            AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                assert_eq!(c.reply_code, 501);
                assert_eq!(c.reply_text.as_str(), "FRAME_ERROR - bad");
                assert_eq!((c.class_id, c.method_id), (0, 0));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
