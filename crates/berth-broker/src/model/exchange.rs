//! Exchange kinds and declarations; an exchange's bindings and how it matches
//! a message against them.
use std::collections::HashMap;
use std::sync::Arc;

use berth_amqp::matching::{headers_match, topic_matches};
use berth_amqp::FieldTable;

use super::queue::Queue;
use crate::types::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    /// Parses `direct|fanout|topic|headers`; `Err` text for 503 command-invalid:
    /// "unknown exchange type 'x'" (RabbitMQ 3.10's text for a type it does not know).
    pub fn parse(kind: &str) -> Result<Self, String> {
        match kind {
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "topic" => Ok(ExchangeKind::Topic),
            "headers" => Ok(ExchangeKind::Headers),
            other => Err(format!("unknown exchange type '{other}'")),
        }
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

/// Where a binding leads.
#[derive(Clone)]
pub(crate) enum Dest {
    Queue(Arc<Queue>),
    Exchange(Arc<str>),
}

impl Dest {
    pub(crate) fn name(&self) -> &str {
        match self {
            Dest::Queue(q) => &q.name,
            Dest::Exchange(e) => e,
        }
    }

    pub(crate) fn is_queue(&self) -> bool {
        matches!(self, Dest::Queue(_))
    }

    pub(crate) fn same(&self, other: &Dest) -> bool {
        self.is_queue() == other.is_queue() && self.name() == other.name()
    }
}

#[derive(Clone)]
pub(crate) struct Binding {
    pub dest: Dest,
    pub key: Arc<str>,
    pub args: FieldTable,
}

/// An exchange in a vhost's topology.
pub(crate) struct Exchange {
    pub name: Arc<str>,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// The effective alternate exchange (argument, else policy).
    pub alternate: Option<Arc<str>>,
    /// Every binding with this exchange as source, in creation order.
    pub bindings: Vec<Binding>,
    /// Direct exchanges: routing key -> destinations, the publish fast path.
    direct: HashMap<Arc<str>, Vec<Dest>>,
}

impl Exchange {
    pub(crate) fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        Self {
            name: name.into(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            alternate: None,
            bindings: Vec::new(),
            direct: HashMap::new(),
        }
    }

    /// Adds a binding unless the same one exists; true when added.
    pub(crate) fn add_binding(&mut self, binding: Binding) -> bool {
        if self
            .find(&binding.dest, &binding.key, &binding.args)
            .is_some()
        {
            return false;
        }
        if self.kind == ExchangeKind::Direct {
            self.direct
                .entry(binding.key.clone())
                .or_default()
                .push(binding.dest.clone());
        }
        self.bindings.push(binding);
        true
    }

    pub(crate) fn has_binding(&self, dest: &Dest, key: &str, args: &FieldTable) -> bool {
        self.find(dest, key, args).is_some()
    }

    fn find(&self, dest: &Dest, key: &str, args: &FieldTable) -> Option<usize> {
        self.bindings
            .iter()
            .position(|b| b.dest.same(dest) && &*b.key == key && &b.args == args)
    }

    /// Removes one binding; true when it existed.
    pub(crate) fn remove_binding(&mut self, dest: &Dest, key: &str, args: &FieldTable) -> bool {
        let Some(i) = self.find(dest, key, args) else {
            return false;
        };
        self.bindings.remove(i);
        if self.kind == ExchangeKind::Direct {
            self.rebuild_direct_key(key);
        }
        true
    }

    /// Removes every binding to `dest`; returns them.
    pub(crate) fn remove_bindings_to(&mut self, dest: &Dest) -> Vec<Binding> {
        let (gone, kept): (Vec<Binding>, Vec<Binding>) =
            self.bindings.drain(..).partition(|b| b.dest.same(dest));
        self.bindings = kept;
        if self.kind == ExchangeKind::Direct {
            for b in &gone {
                self.rebuild_direct_key(&b.key);
            }
        }
        gone
    }

    pub(crate) fn has_bindings_to(&self, dest: &Dest) -> bool {
        self.bindings.iter().any(|b| b.dest.same(dest))
    }

    fn rebuild_direct_key(&mut self, key: &str) {
        let dests: Vec<Dest> = self
            .bindings
            .iter()
            .filter(|b| &*b.key == key)
            .map(|b| b.dest.clone())
            .collect();
        if dests.is_empty() {
            self.direct.remove(key);
        } else if let Some((k, _)) = self.direct.remove_entry(key) {
            self.direct.insert(k, dests);
        }
    }

    /// Calls `f` for every destination whose binding matches; returns whether any did.
    pub(crate) fn matches<'a>(&'a self, message: &Message, mut f: impl FnMut(&'a Dest)) -> bool {
        let mut any = false;
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(dests) = self.direct.get(message.routing_key.as_str()) {
                    for d in dests {
                        any = true;
                        f(d);
                    }
                }
            }
            ExchangeKind::Fanout => {
                for b in &self.bindings {
                    any = true;
                    f(&b.dest);
                }
            }
            ExchangeKind::Topic => {
                for b in &self.bindings {
                    if topic_matches(&b.key, &message.routing_key) {
                        any = true;
                        f(&b.dest);
                    }
                }
            }
            ExchangeKind::Headers => {
                let headers = message.properties.headers().as_ref();
                for b in &self.bindings {
                    if headers_match(&b.args, headers) {
                        any = true;
                        f(&b.dest);
                    }
                }
            }
        }
        any
    }
}
