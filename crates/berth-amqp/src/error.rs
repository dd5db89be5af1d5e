//! Protocol exceptions: a reply code, text naming the object, and whether they
//! close the channel or the whole connection (AMQP 0-9-1 section 1.2 and
//! RabbitMQ's behaviour).
use amq_protocol::protocol::AMQPClass;

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
        Self { code, text: text.into(), scope: ErrorScope::Connection, class_id: 0, method_id: 0 }
    }

    /// A channel exception (soft errors: 403, 404, 405, 406, 311-313).
    pub fn channel(channel: u16, code: ReplyCode, text: impl Into<String>) -> Self {
        Self { code, text: text.into(), scope: ErrorScope::Channel(channel), class_id: 0, method_id: 0 }
    }

    /// Records the method that caused the error.
    pub fn caused_by(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// The reply text as RabbitMQ formats it: `"NOT_FOUND - no queue 'q' in vhost '/'"`.
    pub fn reply_text(&self) -> String {
        todo!("berth-amqp helper")
    }

    /// The connection.close or channel.close method that reports this error.
    pub fn close_method(&self) -> AMQPClass {
        todo!("berth-amqp helper")
    }
}
