//! A virtual host: its exchanges, queues, bindings and policies; routing.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};

use base64::Engine;
use berth_amqp::matching::validate_x_match;
use berth_amqp::{AmqpError, FieldTable, ReplyCode};
use parking_lot::RwLock;

use super::args::{self, access_refused, not_found, precondition, rs};
use super::deadletter::{self, DeadLetter, Reason};
use super::exchange::{Binding, Dest, Exchange, ExchangeDecl, ExchangeKind};
use super::policy::{self, Policy};
use super::queue::{Admit, Queue, QueueDecl};
use crate::definitions::{BindingDef, ExchangeDef, PolicyDef, QueueDef};
use crate::types::{ConnectionId, Message, MessageLog, MessageRef, MetaLog, MetaOp, WriteTicket};

/// The prefix of server-named queues.
pub const SERVER_NAMED_PREFIX: &str = "amq.gen-";

/// What happened to a published message.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Entered at least one queue. False + mandatory: the channel sends basic.return 312 NO_ROUTE.
    pub routed: bool,
    /// A queue with x-overflow reject-publish refused it: in confirm mode the channel nacks.
    pub rejected: bool,
    /// Persistent and routed to durable queues: confirm once the store has synced this.
    pub ticket: Option<WriteTicket>,
    /// Queues it entered (for rates and tracing).
    pub queues: u32,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExchangeInfo {
    pub name: String,
    pub kind: &'static str,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: crate::definitions::JsonMap,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BindingInfo {
    pub source: String,
    pub destination: String,
    /// "queue" or "exchange"
    pub destination_type: &'static str,
    pub routing_key: String,
    pub arguments: crate::definitions::JsonMap,
}

/// A virtual host. Created with the default exchanges (`""`, `amq.direct`,
/// `amq.fanout`, `amq.topic`, `amq.headers`, `amq.match`).
pub struct Vhost {
    pub name: Arc<str>,
    me: Weak<Vhost>,
    log: Arc<dyn MessageLog>,
    meta: Arc<dyn MetaLog>,
    topo: RwLock<Topology>,
}

/// Exchanges, queues, bindings and policies under one lock.
#[derive(Default)]
struct Topology {
    exchanges: HashMap<Arc<str>, Exchange>,
    queues: HashMap<Arc<str>, Arc<Queue>>,
    policies: BTreeMap<String, Policy>,
    /// Destination (is queue, name) -> exchanges with a binding to it, so that
    /// deleting a queue does not scan every exchange.
    sources: HashMap<(bool, Arc<str>), HashSet<Arc<str>>>,
    /// (published, delivered) totals of deleted queues, so that the vhost's
    /// totals never go down. Folded in under this lock as a queue leaves
    /// `queues`, so a reader holding it counts every queue exactly once.
    retired: (u64, u64),
}

const DEFAULT_EXCHANGE_DENIED: &str = "operation not permitted on the default exchange";

fn locked(what: &str) -> AmqpError {
    AmqpError::channel(
        0,
        ReplyCode::ResourceLocked,
        format!(
            "cannot obtain exclusive access to locked {what}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        ),
    )
}

/// The queues a message reaches, each once however many bindings lead there.
#[derive(Default)]
struct Targets {
    list: Vec<Arc<Queue>>,
    /// Switched on for large fan-outs, where the linear check would be quadratic.
    seen: Option<HashSet<usize>>,
}

impl Targets {
    fn add(&mut self, q: &Arc<Queue>) {
        let key = Arc::as_ptr(q) as usize;
        if let Some(seen) = &mut self.seen {
            if seen.insert(key) {
                self.list.push(q.clone());
            }
            return;
        }
        if self.list.iter().any(|x| Arc::ptr_eq(x, q)) {
            return;
        }
        self.list.push(q.clone());
        if self.list.len() > 16 {
            self.seen = Some(self.list.iter().map(|x| Arc::as_ptr(x) as usize).collect());
        }
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

fn binding_def(vhost: &str, source: &str, dest: &Dest, key: &str, args: &FieldTable) -> BindingDef {
    BindingDef {
        source: source.to_string(),
        vhost: vhost.to_string(),
        destination: dest.name().to_string(),
        destination_type: if dest.is_queue() { "queue" } else { "exchange" }.to_string(),
        routing_key: key.to_string(),
        arguments: args::table_to_json(args),
    }
}

fn alternate_of(
    arguments: &FieldTable,
    policy: Option<&crate::definitions::JsonMap>,
) -> Option<Arc<str>> {
    if let Some(v) = arguments.inner().get("alternate-exchange") {
        return args::as_string(v).map(Into::into);
    }
    policy
        .and_then(|p| p.get("alternate-exchange"))
        .and_then(|v| v.as_str())
        .map(Into::into)
}

impl Topology {
    fn route<'a>(&'a self, start: &'a Exchange, msg: &Message, out: &mut Targets) {
        let mut visited: Vec<&'a str> = vec![&start.name];
        let mut work: Vec<&'a Exchange> = vec![start];
        while let Some(x) = work.pop() {
            let matched = if x.name.is_empty() {
                // The default exchange: every queue is bound by its name.
                match self.queues.get(msg.routing_key.as_str()) {
                    Some(q) => {
                        out.add(q);
                        true
                    }
                    None => false,
                }
            } else {
                x.matches(msg, |d| match d {
                    Dest::Queue(q) => out.add(q),
                    Dest::Exchange(name) => {
                        if !visited.contains(&&**name) {
                            visited.push(name);
                            if let Some(e) = self.exchanges.get(&**name) {
                                work.push(e);
                            }
                        }
                    }
                })
            };
            if !matched {
                if let Some(ae) = &x.alternate {
                    if !visited.contains(&&**ae) {
                        visited.push(ae);
                        if let Some(e) = self.exchanges.get(&**ae) {
                            work.push(e);
                        }
                    }
                }
            }
        }
    }

    fn dest_durable(&self, dest: &Dest) -> bool {
        match dest {
            Dest::Queue(q) => q.durable && q.exclusive_owner.is_none(),
            Dest::Exchange(name) => self.exchanges.get(&**name).is_some_and(|e| e.durable),
        }
    }

    /// Removes every binding to `dest`, auto-deleting sources left without bindings.
    fn unbind_all_to(
        &mut self,
        vhost: &str,
        dest: &Dest,
        dest_durable: bool,
        ops: &mut Vec<MetaOp>,
    ) {
        let Some(sources) = self
            .sources
            .remove(&(dest.is_queue(), Arc::from(dest.name())))
        else {
            return;
        };
        for s in sources {
            if let Some(x) = self.exchanges.get_mut(&s) {
                let durable = x.durable && dest_durable;
                for b in x.remove_bindings_to(dest) {
                    if durable {
                        ops.push(MetaOp::DeleteBinding(binding_def(
                            vhost, &s, dest, &b.key, &b.args,
                        )));
                    }
                }
            }
            self.maybe_auto_delete(vhost, &s, ops);
        }
    }

    fn maybe_auto_delete(&mut self, vhost: &str, name: &str, ops: &mut Vec<MetaOp>) {
        if self
            .exchanges
            .get(name)
            .is_some_and(|x| x.auto_delete && x.bindings.is_empty())
        {
            self.remove_exchange(vhost, name, ops);
        }
    }

    fn remove_exchange(&mut self, vhost: &str, name: &str, ops: &mut Vec<MetaOp>) {
        let Some(x) = self.exchanges.remove(name) else {
            return;
        };
        for b in &x.bindings {
            let key = (b.dest.is_queue(), Arc::from(b.dest.name()));
            if let Some(set) = self.sources.get_mut(&key) {
                set.remove(name);
                if set.is_empty() {
                    self.sources.remove(&key);
                }
            }
            if x.durable && self.dest_durable(&b.dest) {
                ops.push(MetaOp::DeleteBinding(binding_def(
                    vhost, name, &b.dest, &b.key, &b.args,
                )));
            }
        }
        if x.durable {
            ops.push(MetaOp::DeleteExchange {
                vhost: vhost.to_string(),
                name: name.to_string(),
            });
        }
        self.unbind_all_to(vhost, &Dest::Exchange(x.name.clone()), x.durable, ops);
    }

    fn remove_queue(&mut self, vhost: &str, q: &Arc<Queue>, ops: &mut Vec<MetaOp>) {
        self.queues.remove(&*q.name);
        // Topology, then queue: the lock order. The queue is frozen from here.
        let (published, delivered) = q.retire();
        self.retired.0 += published;
        self.retired.1 += delivered;
        let durable = q.durable && q.exclusive_owner.is_none();
        self.unbind_all_to(vhost, &Dest::Queue(q.clone()), durable, ops);
    }

    fn queue_policy(&self, name: &str) -> Option<&crate::definitions::JsonMap> {
        policy::effective(self.policies.values(), name, true)
    }

    fn exchange_policy(&self, name: &str) -> Option<&crate::definitions::JsonMap> {
        policy::effective(self.policies.values(), name, false)
    }
}

impl Vhost {
    pub fn new(name: &str, log: Arc<dyn MessageLog>, meta: Arc<dyn MetaLog>) -> Arc<Self> {
        let mut topo = Topology::default();
        for (xname, kind) in [
            ("", ExchangeKind::Direct),
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            let x = Exchange::new(xname, kind, true, false, false, FieldTable::default());
            topo.exchanges.insert(x.name.clone(), x);
        }
        Arc::new_cyclic(|me| Vhost {
            name: name.into(),
            me: me.clone(),
            log,
            meta,
            topo: RwLock::new(topo),
        })
    }

    fn append(&self, op: MetaOp, what: &str) -> Result<(), AmqpError> {
        self.meta
            .append(&op)
            .map_err(|e| args::meta_failed(what, &e))
    }

    /// Appends consequences of a change (implied binding deletes, auto-deleted
    /// exchanges); the change itself is already done, so a failure is only logged.
    fn append_all(&self, ops: Vec<MetaOp>) {
        for op in ops {
            if let Err(e) = self.meta.append(&op) {
                tracing::warn!(vhost = %self.name, ?op, "metadata log: {e}");
            }
        }
    }

    /// exchange.declare. Errors as RabbitMQ: 406 on inequivalent redeclare, 404 passive
    /// missing, 403 for `amq.` names, 503 unknown type. Durable ones go to the meta log.
    pub fn declare_exchange(&self, decl: ExchangeDecl) -> Result<(), AmqpError> {
        let what = rs("exchange", &decl.name, &self.name);
        if decl.passive {
            if decl.name.is_empty() {
                return Err(access_refused(DEFAULT_EXCHANGE_DENIED.to_string()));
            }
            return match self.topo.read().exchanges.contains_key(decl.name.as_str()) {
                true => Ok(()),
                false => Err(not_found("exchange", &decl.name, &self.name)),
            };
        }
        let kind = ExchangeKind::parse(&decl.kind)
            .map_err(|t| AmqpError::connection(ReplyCode::CommandInvalid, t))?;
        if decl.name.is_empty() {
            return Err(access_refused(DEFAULT_EXCHANGE_DENIED.to_string()));
        }
        let mut topo = self.topo.write();
        if let Some(x) = topo.exchanges.get(decl.name.as_str()) {
            if x.kind != kind {
                return Err(args::inequivalent(
                    "type",
                    &what,
                    kind.as_str(),
                    x.kind.as_str(),
                ));
            }
            for (key, cur, new) in [
                ("durable", x.durable, decl.durable),
                ("auto_delete", x.auto_delete, decl.auto_delete),
                ("internal", x.internal, decl.internal),
            ] {
                if cur != new {
                    return Err(args::inequivalent(key, &what, bool_str(new), bool_str(cur)));
                }
            }
            return args::assert_args_equivalence(
                &x.arguments,
                &decl.arguments,
                &what,
                &["alternate-exchange"],
            );
        }
        if decl.name.starts_with("amq.") {
            return Err(access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                decl.name
            )));
        }
        if let Some(v) = decl.arguments.inner().get("alternate-exchange") {
            if args::as_string(v).is_none() {
                return Err(precondition(format!(
                    "invalid type '{}' for arg 'alternate-exchange' in {what}",
                    args::type_name(v)
                )));
            }
        }
        if decl.durable {
            let def = ExchangeDef {
                name: decl.name.clone(),
                vhost: self.name.to_string(),
                kind: kind.as_str().to_string(),
                durable: true,
                auto_delete: decl.auto_delete,
                internal: decl.internal,
                arguments: args::table_to_json(&decl.arguments),
            };
            self.append(MetaOp::PutExchange(def), &what)?;
        }
        let alternate = alternate_of(&decl.arguments, topo.exchange_policy(&decl.name));
        let mut x = Exchange::new(
            &decl.name,
            kind,
            decl.durable,
            decl.auto_delete,
            decl.internal,
            decl.arguments,
        );
        x.alternate = alternate;
        topo.exchanges.insert(x.name.clone(), x);
        Ok(())
    }

    /// exchange.delete (406 if if_unused and bound, 403 for the default exchanges).
    /// A missing exchange is not an error (RabbitMQ answers delete-ok).
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        if name.is_empty() {
            return Err(access_refused(DEFAULT_EXCHANGE_DENIED.to_string()));
        }
        let what = rs("exchange", name, &self.name);
        if name.starts_with("amq.") {
            return Err(access_refused(format!(
                "deletion of system {what} not allowed"
            )));
        }
        let mut ops = Vec::new();
        {
            let mut topo = self.topo.write();
            let Some(x) = topo.exchanges.get(name) else {
                return Ok(());
            };
            if if_unused && !x.bindings.is_empty() {
                return Err(precondition(format!("{what} in use")));
            }
            if x.durable {
                self.append(
                    MetaOp::DeleteExchange {
                        vhost: self.name.to_string(),
                        name: name.to_string(),
                    },
                    &what,
                )?;
            }
            topo.remove_exchange(&self.name, name, &mut ops);
        }
        // The DeleteExchange op was appended first.
        ops.retain(|op| !matches!(op, MetaOp::DeleteExchange { name: n, .. } if n == name));
        self.append_all(ops);
        Ok(())
    }

    /// queue.declare: returns the queue, its message count and consumer count.
    /// `owner` is the declaring connection (exclusive queues; 405 resource-locked
    /// for other connections).
    pub fn declare_queue(
        &self,
        decl: QueueDecl,
        owner: ConnectionId,
    ) -> Result<(Arc<Queue>, u32, u32), AmqpError> {
        if decl.passive {
            let q = self.queue_for(&decl.name, owner)?;
            q.touch();
            let (m, c) = (q.message_count(), q.consumer_count());
            return Ok((q, m, c));
        }
        let mut topo = self.topo.write();
        let name = if decl.name.is_empty() {
            loop {
                let bytes: [u8; 16] = rand::random();
                let n = format!(
                    "{SERVER_NAMED_PREFIX}{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
                );
                if !topo.queues.contains_key(n.as_str()) {
                    break n;
                }
            }
        } else {
            // As RabbitMQ, a client-chosen name may not start with `amq.`, even to
            // redeclare. Server-named queues are exempt: the protocol layer
            // names them itself (to check permissions on the name) and passes
            // the `amq.gen-` name in.
            if decl.name.starts_with("amq.") && !decl.name.starts_with(SERVER_NAMED_PREFIX) {
                return Err(access_refused(format!(
                    "queue name '{}' contains reserved prefix 'amq.*'",
                    decl.name
                )));
            }
            decl.name.clone()
        };
        let what = rs("queue", &name, &self.name);
        let want_owner = decl.exclusive.then_some(owner);
        if let Some(q) = topo.queues.get(name.as_str()) {
            if q.exclusive_owner != want_owner {
                return Err(locked(&what));
            }
            if q.durable != decl.durable {
                return Err(args::inequivalent(
                    "durable",
                    &what,
                    bool_str(decl.durable),
                    bool_str(q.durable),
                ));
            }
            if q.auto_delete != decl.auto_delete {
                return Err(args::inequivalent(
                    "auto_delete",
                    &what,
                    bool_str(decl.auto_delete),
                    bool_str(q.auto_delete),
                ));
            }
            args::assert_args_equivalence(
                &q.arguments,
                &decl.arguments,
                &what,
                args::QUEUE_EQUIVALENCE_KEYS,
            )?;
            q.touch();
            let (m, c) = (q.message_count(), q.consumer_count());
            return Ok((q.clone(), m, c));
        }
        // Only new queues validate their arguments; a redeclare is compared
        // (RabbitMQ reports an inequivalent rather than an invalid argument).
        let cfg = args::parse_queue_args(&decl.arguments, &what)?;
        if decl.durable && !decl.exclusive {
            let def = QueueDef {
                name: name.clone(),
                vhost: self.name.to_string(),
                durable: true,
                auto_delete: decl.auto_delete,
                arguments: args::table_to_json(&decl.arguments),
            };
            self.append(MetaOp::PutQueue(def), &what)?;
        }
        let cfg = match topo.queue_policy(&name) {
            Some(p) => args::effective_queue_config(&decl.arguments, Some(p)),
            None => cfg,
        };
        let q = Arc::new(Queue::new(
            name.as_str().into(),
            self.name.clone(),
            decl.durable,
            decl.auto_delete,
            want_owner,
            decl.arguments,
            cfg,
            self.log.clone(),
            self.me.clone(),
        ));
        topo.queues.insert(q.name.clone(), q.clone());
        Ok((q, 0, 0))
    }

    /// queue.delete: returns the number of messages deleted; consumers get
    /// `cancelled`. 406 for if_unused/if_empty, 405 exclusive. A missing queue
    /// answers 0 (RabbitMQ 3.10 replies delete-ok).
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        owner: ConnectionId,
    ) -> Result<u32, AmqpError> {
        let what = rs("queue", name, &self.name);
        let mut ops = Vec::new();
        let q = {
            let mut topo = self.topo.write();
            let Some(q) = topo.queues.get(name).cloned() else {
                return Ok(0);
            };
            if q.exclusive_owner.is_some_and(|o| o != owner) {
                return Err(locked(&what));
            }
            if if_unused && q.consumer_count() > 0 {
                return Err(precondition(format!("{what} in use")));
            }
            if if_empty && q.message_count() > 0 {
                return Err(precondition(format!("{what} not empty")));
            }
            if q.logs_messages() {
                self.append(
                    MetaOp::DeleteQueue {
                        vhost: self.name.to_string(),
                        name: name.to_string(),
                    },
                    &what,
                )?;
            }
            topo.remove_queue(&self.name, &q, &mut ops);
            q
        };
        self.append_all(ops);
        Ok(q.mark_deleted())
    }

    /// queue.purge.
    pub fn purge_queue(&self, name: &str, owner: ConnectionId) -> Result<u32, AmqpError> {
        Ok(self.queue_for(name, owner)?.purge())
    }

    /// A queue usable by `owner` (404 missing, 405 exclusive to another connection).
    pub fn queue_for(&self, name: &str, owner: ConnectionId) -> Result<Arc<Queue>, AmqpError> {
        let topo = self.topo.read();
        let q = topo
            .queues
            .get(name)
            .ok_or_else(|| not_found("queue", name, &self.name))?;
        if q.exclusive_owner.is_some_and(|o| o != owner) {
            return Err(locked(&q.describe()));
        }
        Ok(q.clone())
    }

    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
        owner: ConnectionId,
    ) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Err(access_refused(DEFAULT_EXCHANGE_DENIED.to_string()));
        }
        let mut topo = self.topo.write();
        let q = self.bindable_queue(&topo, queue, exchange, owner)?;
        self.add_binding(&mut topo, exchange, Dest::Queue(q), routing_key, arguments)
    }

    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
        owner: ConnectionId,
    ) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Err(access_refused(DEFAULT_EXCHANGE_DENIED.to_string()));
        }
        let mut topo = self.topo.write();
        let q = self.bindable_queue(&topo, queue, exchange, owner)?;
        self.remove_binding(&mut topo, exchange, Dest::Queue(q), routing_key, arguments)
    }

    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        if destination.is_empty() || source.is_empty() {
            return Err(access_refused(DEFAULT_EXCHANGE_DENIED.to_string()));
        }
        let mut topo = self.topo.write();
        self.bindable_exchanges(&topo, destination, source)?;
        self.add_binding(
            &mut topo,
            source,
            Dest::Exchange(destination.into()),
            routing_key,
            arguments,
        )
    }

    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        if destination.is_empty() || source.is_empty() {
            return Err(access_refused(DEFAULT_EXCHANGE_DENIED.to_string()));
        }
        let mut topo = self.topo.write();
        self.bindable_exchanges(&topo, destination, source)?;
        self.remove_binding(
            &mut topo,
            source,
            Dest::Exchange(destination.into()),
            routing_key,
            arguments,
        )
    }

    /// The source is checked first, as RabbitMQ reports it first.
    fn bindable_queue(
        &self,
        topo: &Topology,
        queue: &str,
        exchange: &str,
        owner: ConnectionId,
    ) -> Result<Arc<Queue>, AmqpError> {
        if !topo.exchanges.contains_key(exchange) {
            return Err(not_found("exchange", exchange, &self.name));
        }
        let q = topo
            .queues
            .get(queue)
            .ok_or_else(|| not_found("queue", queue, &self.name))?;
        if q.exclusive_owner.is_some_and(|o| o != owner) {
            return Err(locked(&q.describe()));
        }
        Ok(q.clone())
    }

    fn bindable_exchanges(
        &self,
        topo: &Topology,
        destination: &str,
        source: &str,
    ) -> Result<(), AmqpError> {
        for name in [source, destination] {
            if !topo.exchanges.contains_key(name) {
                return Err(not_found("exchange", name, &self.name));
            }
        }
        Ok(())
    }

    fn add_binding(
        &self,
        topo: &mut Topology,
        source: &str,
        dest: Dest,
        key: &str,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        let dest_durable = topo.dest_durable(&dest);
        let Some(x) = topo.exchanges.get_mut(source) else {
            return Err(not_found("exchange", source, &self.name));
        };
        if x.kind == ExchangeKind::Headers {
            validate_x_match(arguments).map_err(precondition)?;
        }
        if x.has_binding(&dest, key, arguments) {
            return Ok(());
        }
        if x.durable && dest_durable {
            let def = binding_def(&self.name, source, &dest, key, arguments);
            self.append(
                MetaOp::PutBinding(def),
                &format!("binding from {}", rs("exchange", source, &self.name)),
            )?;
        }
        let index_key = (dest.is_queue(), Arc::from(dest.name()));
        x.add_binding(Binding {
            dest,
            key: key.into(),
            args: arguments.clone(),
        });
        let source_name = x.name.clone();
        topo.sources
            .entry(index_key)
            .or_default()
            .insert(source_name);
        Ok(())
    }

    fn remove_binding(
        &self,
        topo: &mut Topology,
        source: &str,
        dest: Dest,
        key: &str,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        let dest_durable = topo.dest_durable(&dest);
        let Some(x) = topo.exchanges.get_mut(source) else {
            return Err(not_found("exchange", source, &self.name));
        };
        if !x.has_binding(&dest, key, arguments) {
            return Ok(());
        }
        if x.durable && dest_durable {
            let def = binding_def(&self.name, source, &dest, key, arguments);
            self.append(
                MetaOp::DeleteBinding(def),
                &format!("binding from {}", rs("exchange", source, &self.name)),
            )?;
        }
        x.remove_binding(&dest, key, arguments);
        if !x.has_bindings_to(&dest) {
            let index_key = (dest.is_queue(), Arc::from(dest.name()));
            if let Some(set) = topo.sources.get_mut(&index_key) {
                set.remove(source);
                if set.is_empty() {
                    topo.sources.remove(&index_key);
                }
            }
        }
        let mut ops = Vec::new();
        topo.maybe_auto_delete(&self.name, source, &mut ops);
        self.append_all(ops);
        Ok(())
    }

    /// Routes and enqueues (exchange-to-exchange bindings, alternate exchanges,
    /// queue overflow, persistence to the message log for durable queues).
    /// 404 if the exchange does not exist, 403 if it is internal.
    pub fn publish(
        &self,
        exchange: &str,
        mut message: Message,
        now_ms: u64,
    ) -> Result<PublishOutcome, AmqpError> {
        // RabbitMQ refuses an expiration that is not a non-negative integer.
        if let Some(exp) = message.properties.expiration() {
            if exp.as_str().parse::<u64>().is_err() {
                return Err(precondition(format!(
                    "invalid expiration '{}': no_integer",
                    exp.as_str()
                )));
            }
        }
        if message.exchange != exchange {
            // x-death and deliveries name the exchange it was published to.
            message.exchange = exchange.to_string();
        }
        let targets = {
            let topo = self.topo.read();
            let x = topo
                .exchanges
                .get(exchange)
                .ok_or_else(|| not_found("exchange", exchange, &self.name))?;
            if x.internal {
                return Err(access_refused(format!(
                    "cannot publish to internal {}",
                    rs("exchange", exchange, &self.name)
                )));
            }
            let mut t = Targets::default();
            topo.route(x, &message, &mut t);
            t.list
        };
        Ok(self.deliver(targets, Arc::new(message), now_ms))
    }

    /// Enqueues a routed message: one message-log record for the durable
    /// queues it enters, written before any queue can hand it out.
    fn deliver(&self, targets: Vec<Arc<Queue>>, msg: MessageRef, now_ms: u64) -> PublishOutcome {
        let mut out = PublishOutcome {
            routed: !targets.is_empty(),
            ..PublishOutcome::default()
        };
        if targets.is_empty() {
            return out;
        }
        let mut ticket = None;
        if msg.persistent() {
            let durable: Vec<&str> = targets
                .iter()
                .filter(|q| q.logs_messages())
                .map(|q| &*q.name)
                .collect();
            if !durable.is_empty() {
                ticket = Some(self.log.publish(&self.name, &durable, &msg));
            }
        }
        let mut logged = false;
        for q in &targets {
            match q.enqueue(msg.clone(), now_ms) {
                Admit::Accepted => {
                    out.queues += 1;
                    logged |= q.logs_messages();
                }
                Admit::Rejected => out.rejected = true,
                Admit::Gone => {}
            }
        }
        if logged {
            out.ticket = ticket;
        }
        out
    }

    /// Republishes a dead-lettered message through its dead-letter exchange
    /// (a missing exchange drops it, as RabbitMQ does), skipping queues that
    /// would close a dead-letter cycle.
    pub(crate) fn publish_dead_letter(&self, queue: &str, dl: DeadLetter, now_ms: u64) {
        let msg = deadletter::dead_letter_message(&dl, queue, self.log.next_id(), now_ms);
        let targets = {
            let topo = self.topo.read();
            let Some(x) = topo.exchanges.get(&*dl.exchange) else {
                tracing::debug!(vhost = %self.name, queue, exchange = %dl.exchange, "dead-letter exchange missing: message dropped");
                return;
            };
            let mut t = Targets::default();
            topo.route(x, &msg, &mut t);
            t.list
        };
        let targets = if dl.reason == Reason::Rejected {
            targets
        } else {
            targets
                .into_iter()
                .filter(|q| !deadletter::is_cycle(&msg, &q.name))
                .collect()
        };
        self.deliver(targets, Arc::new(msg), now_ms);
    }

    /// Deletes a queue nobody uses any more (auto-delete after its last
    /// consumer, x-expires), unless it was replaced or got a consumer meanwhile.
    pub(crate) fn auto_delete_queue(&self, queue: &Queue) {
        let mut ops = Vec::new();
        let q = {
            let mut topo = self.topo.write();
            let Some(q) = topo.queues.get(&*queue.name).cloned() else {
                return;
            };
            if !std::ptr::eq(Arc::as_ptr(&q), queue) || q.consumer_count() > 0 {
                return;
            }
            if q.logs_messages() {
                ops.push(MetaOp::DeleteQueue {
                    vhost: self.name.to_string(),
                    name: q.name.to_string(),
                });
            }
            topo.remove_queue(&self.name, &q, &mut ops);
            q
        };
        self.append_all(ops);
        q.mark_deleted();
    }

    /// Puts a recovered persistent message back into a durable queue at startup
    /// (no routing, no logging). `redelivered`: it had been delivered and not
    /// acked before the restart.
    pub fn restore_message(&self, queue: &str, message: Message, redelivered: bool, now_ms: u64) {
        let q = self.topo.read().queues.get(queue).cloned();
        match q {
            Some(q) => q.restore(Arc::new(message), redelivered, now_ms),
            None => {
                tracing::warn!(vhost = %self.name, queue, "recovered message for a missing queue dropped")
            }
        }
    }

    /// The connection closed: its exclusive queues are deleted.
    pub fn connection_closed(&self, connection: ConnectionId) {
        let mut ops = Vec::new();
        let gone: Vec<Arc<Queue>> = {
            let mut topo = self.topo.write();
            let gone: Vec<Arc<Queue>> = topo
                .queues
                .values()
                .filter(|q| q.exclusive_owner == Some(connection))
                .cloned()
                .collect();
            for q in &gone {
                topo.remove_queue(&self.name, q, &mut ops);
            }
            gone
        };
        self.append_all(ops);
        for q in gone {
            q.mark_deleted();
        }
    }

    /// Periodic work: message TTL expiry (dead-lettering `expired`), x-expires of unused queues.
    pub fn tick(&self, now_ms: u64) {
        let queues: Vec<Arc<Queue>> = self.topo.read().queues.values().cloned().collect();
        for q in queues {
            if q.tick(now_ms) {
                self.auto_delete_queue(&q);
            }
        }
    }

    pub fn put_policy(&self, policy: PolicyDef) -> Result<(), AmqpError> {
        let name = policy.name.clone();
        let policy = Policy::new(policy).map_err(precondition)?;
        let mut topo = self.topo.write();
        self.append(
            MetaOp::PutPolicy(policy.def.clone()),
            &rs("policy", &name, &self.name),
        )?;
        topo.policies.insert(name, policy);
        Self::reapply_policies(&mut topo);
        Ok(())
    }

    pub fn delete_policy(&self, name: &str) -> Result<(), AmqpError> {
        let mut topo = self.topo.write();
        if !topo.policies.contains_key(name) {
            return Err(not_found("policy", name, &self.name));
        }
        let what = rs("policy", name, &self.name);
        self.append(
            MetaOp::DeletePolicy {
                vhost: self.name.to_string(),
                name: name.to_string(),
            },
            &what,
        )?;
        topo.policies.remove(name);
        Self::reapply_policies(&mut topo);
        Ok(())
    }

    fn reapply_policies(topo: &mut Topology) {
        for q in topo.queues.values() {
            let cfg = args::effective_queue_config(&q.arguments, topo.queue_policy(&q.name));
            q.set_config(cfg);
        }
        let alternates: Vec<(Arc<str>, Option<Arc<str>>)> = topo
            .exchanges
            .values()
            .map(|x| {
                (
                    x.name.clone(),
                    alternate_of(&x.arguments, topo.exchange_policy(&x.name)),
                )
            })
            .collect();
        for (name, ae) in alternates {
            if let Some(x) = topo.exchanges.get_mut(&name) {
                x.alternate = ae;
            }
        }
    }

    pub fn policies(&self) -> Vec<PolicyDef> {
        self.topo
            .read()
            .policies
            .values()
            .map(|p| p.def.clone())
            .collect()
    }

    /// Every queue, by name.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        let mut v: Vec<Arc<Queue>> = self.topo.read().queues.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// (published, delivered) since the vhost was created, deleted queues
    /// included: monotonic, for counters. Queue locks are taken under the
    /// topology read lock (the lock order), so a queue being deleted is
    /// counted either live or retired, never both or neither.
    pub fn message_totals(&self) -> (u64, u64) {
        let topo = self.topo.read();
        let mut t = topo.retired;
        for q in topo.queues.values() {
            let s = q.stats();
            t.0 += s.published_total;
            t.1 += s.delivered_total;
        }
        t
    }

    /// One queue by name, whoever owns it (management API).
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.topo.read().queues.get(name).cloned()
    }

    /// Every exchange, by name (the default exchange lists as "").
    pub fn exchanges(&self) -> Vec<ExchangeInfo> {
        let topo = self.topo.read();
        let mut v: Vec<ExchangeInfo> = topo
            .exchanges
            .values()
            .map(|x| ExchangeInfo {
                name: x.name.to_string(),
                kind: x.kind.as_str(),
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: args::table_to_json(&x.arguments),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every binding: first each queue's implicit one from the default
    /// exchange (as RabbitMQ lists them), then the others by source.
    pub fn bindings(&self) -> Vec<BindingInfo> {
        let topo = self.topo.read();
        let mut queues: Vec<&Arc<str>> = topo.queues.keys().collect();
        queues.sort();
        let mut out: Vec<BindingInfo> = queues
            .into_iter()
            .map(|q| BindingInfo {
                source: String::new(),
                destination: q.to_string(),
                destination_type: "queue",
                routing_key: q.to_string(),
                arguments: Default::default(),
            })
            .collect();
        let mut exchanges: Vec<&Exchange> = topo.exchanges.values().collect();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        for x in exchanges {
            for b in &x.bindings {
                out.push(BindingInfo {
                    source: x.name.to_string(),
                    destination: b.dest.name().to_string(),
                    destination_type: if b.dest.is_queue() {
                        "queue"
                    } else {
                        "exchange"
                    },
                    routing_key: b.key.to_string(),
                    arguments: args::table_to_json(&b.args),
                });
            }
        }
        out
    }
}
