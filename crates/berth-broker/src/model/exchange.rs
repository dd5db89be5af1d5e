//! Exchange kinds and declarations.
use berth_amqp::FieldTable;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    /// Parses `direct|fanout|topic|headers`; `Err` text for 503 command-invalid:
    /// "invalid exchange type 'x'".
    pub fn parse(kind: &str) -> Result<Self, String> {
        let _ = kind;
        todo!("model helper")
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// exchange.declare's fields (and the definitions file's).
#[derive(Debug, Clone)]
pub struct ExchangeDecl {
    pub name: String,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}
