//! AMQP 0-9-1 pieces that do no I/O: the frame decoder with size limits, frame
//! encoding, per-channel content assembly, protocol errors with their reply
//! codes, SASL response parsing and the topic/headers matchers.
//!
//! Frames are parsed and generated with the `amq-protocol` crate; this crate adds
//! what a server must enforce itself (frame-max, body sizes, frame ordering).
#![forbid(unsafe_code)]

pub mod assembler;
pub mod codec;
pub mod error;
pub mod matching;
pub mod sasl;

pub use amq_protocol;
pub use amq_protocol::frame::AMQPFrame;
pub use amq_protocol::protocol::{AMQPClass, BasicProperties};
pub use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
pub use assembler::{Assembled, ContentAssembler};
pub use codec::{Decoded, FrameDecoder};
pub use error::{AmqpError, ErrorScope, ReplyCode};
