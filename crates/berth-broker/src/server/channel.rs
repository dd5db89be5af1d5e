//! One AMQP channel: consumers, unacked deliveries, confirms, transactions.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use amq_protocol::protocol::basic;
use berth_amqp::{AmqpError, BasicProperties, ContentAssembler, ReplyCode};
use bytes::Bytes;

use super::shared::{ChannelShared, ConsumerShared};
use crate::model::Queue;
use crate::types::MessageRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChanState {
    Open,
    /// We sent channel.close after an exception: everything but close/close-ok is ignored.
    Closing,
}

/// A delivery the client has not settled yet.
pub(crate) struct Unacked {
    pub tag: u64,
    pub queue: Arc<Queue>,
    pub message: MessageRef,
    /// `None` for basic.get (not counted against prefetch).
    pub consumer: Option<Arc<ConsumerShared>>,
}

/// A publisher confirm not yet sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirm {
    Ack,
    Nack,
    /// Waits for the store's synced watermark to reach this ticket; a nack if
    /// the store failed before it did.
    Wait(u64),
}

/// What a transaction buffers until tx.commit.
pub(crate) enum TxOp {
    Publish(Box<(basic::Publish, BasicProperties, Bytes)>),
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
    Reject {
        tag: u64,
        requeue: bool,
    },
}

pub(crate) struct Channel {
    pub number: u16,
    pub state: ChanState,
    pub shared: Arc<ChannelShared>,
    pub assembler: ContentAssembler,
    pub consumers: HashMap<Arc<str>, Arc<ConsumerShared>>,
    /// Ordered by delivery tag.
    pub unacked: VecDeque<Unacked>,
    pub next_tag: u64,
    pub confirm: bool,
    pub next_seq: u64,
    pub confirms: VecDeque<(u64, Confirm)>,
    pub tx: Option<Vec<TxOp>>,
    /// A tx.commit whose commit-ok waits for the store to sync this ticket
    /// (its persistent messages): commit-ok promises they are on disk.
    pub commit_wait: Option<u64>,
    /// For queue names left empty (RabbitMQ: the last queue declared on the channel).
    pub last_queue: Option<String>,
}

impl Channel {
    pub fn new(number: u16, max_body: u64) -> Self {
        Self {
            number,
            state: ChanState::Open,
            shared: Arc::new(ChannelShared::new(number)),
            assembler: ContentAssembler::new(max_body),
            consumers: HashMap::new(),
            unacked: VecDeque::new(),
            next_tag: 0,
            confirm: false,
            next_seq: 0,
            confirms: VecDeque::new(),
            tx: None,
            commit_wait: None,
            last_queue: None,
        }
    }

    pub fn next_delivery_tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    /// Moves the deliveries settled by (tag, multiple) into `into`.
    /// Tag 0 with multiple means all outstanding ones. Unknown tags are 406.
    pub fn take_unacked(
        &mut self,
        tag: u64,
        multiple: bool,
        into: &mut Vec<Unacked>,
    ) -> Result<(), AmqpError> {
        let unknown = || {
            AmqpError::channel(
                self.number,
                ReplyCode::PreconditionFailed,
                format!("unknown delivery tag {tag}"),
            )
        };
        if multiple {
            if tag == 0 {
                into.extend(self.unacked.drain(..));
                return Ok(());
            }
            // RabbitMQ requires the named tag itself to be outstanding.
            let pos = self
                .unacked
                .binary_search_by_key(&tag, |u| u.tag)
                .map_err(|_| unknown())?;
            into.extend(self.unacked.drain(..=pos));
            Ok(())
        } else {
            let pos = self
                .unacked
                .binary_search_by_key(&tag, |u| u.tag)
                .map_err(|_| unknown())?;
            if let Some(u) = self.unacked.remove(pos) {
                into.push(u);
            }
            Ok(())
        }
    }

    /// Pops the confirms that can be sent now, coalescing contiguous acks into
    /// one `multiple` ack. Calls `emit(seq, ack?, multiple)`. `failed`: the
    /// store stopped and `synced` is final, so waits above it become nacks
    /// (in sequence order, like every other confirm).
    pub fn flush_confirms(
        &mut self,
        synced: u64,
        failed: bool,
        mut emit: impl FnMut(u64, bool, bool),
    ) {
        let mut run: Option<(u64, u64)> = None; // (first, last) seq of pending acks
        let flush_run = |run: &mut Option<(u64, u64)>, emit: &mut dyn FnMut(u64, bool, bool)| {
            if let Some((first, last)) = run.take() {
                emit(last, true, last > first);
            }
        };
        while let Some(&(seq, c)) = self.confirms.front() {
            match c {
                Confirm::Ack => {}
                Confirm::Wait(t) if t <= synced => {}
                Confirm::Wait(_) if !failed => break,
                Confirm::Wait(_) | Confirm::Nack => {
                    flush_run(&mut run, &mut emit);
                    emit(seq, false, false);
                    self.confirms.pop_front();
                    continue;
                }
            }
            run = Some(match run {
                Some((first, _)) => (first, seq),
                None => (seq, seq),
            });
            self.confirms.pop_front();
        }
        flush_run(&mut run, &mut emit);
    }

    /// Whether a confirm waits for the store.
    pub fn awaits_sync(&self) -> bool {
        matches!(self.confirms.front(), Some((_, Confirm::Wait(_)))) || self.commit_wait.is_some()
    }

    /// Distinct queues this channel consumes from.
    pub fn consumer_queues(&self, into: &mut Vec<Arc<Queue>>) {
        for c in self.consumers.values() {
            if !into.iter().any(|q| Arc::ptr_eq(q, &c.queue)) {
                into.push(c.queue.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_coalesce() {
        let mut ch = Channel::new(1, 1000);
        for (s, c) in [
            (1, Confirm::Ack),
            (2, Confirm::Ack),
            (3, Confirm::Nack),
            (4, Confirm::Wait(10)),
            (5, Confirm::Ack),
        ] {
            ch.confirms.push_back((s, c));
        }
        let mut got = Vec::new();
        ch.flush_confirms(5, false, |s, a, m| got.push((s, a, m)));
        assert_eq!(got, vec![(2, true, true), (3, false, false)]);
        assert!(ch.awaits_sync());
        got.clear();
        ch.flush_confirms(10, false, |s, a, m| got.push((s, a, m)));
        assert_eq!(got, vec![(5, true, true)]);
        assert!(!ch.awaits_sync());
        ch.confirms.push_back((6, Confirm::Ack));
        got.clear();
        ch.flush_confirms(0, false, |s, a, m| got.push((s, a, m)));
        assert_eq!(got, vec![(6, true, false)]);
    }

    #[test]
    fn failed_store_nacks_waits_in_order() {
        let mut ch = Channel::new(1, 1000);
        for (s, c) in [
            (1, Confirm::Wait(3)),
            (2, Confirm::Ack),
            (3, Confirm::Wait(4)),
            (4, Confirm::Ack),
            (5, Confirm::Wait(9)),
            (6, Confirm::Nack),
            (7, Confirm::Ack),
        ] {
            ch.confirms.push_back((s, c));
        }
        let mut got = Vec::new();
        // Not failed yet: stops at the first wait above the watermark.
        ch.flush_confirms(3, false, |s, a, m| got.push((s, a, m)));
        assert_eq!(got, vec![(2, true, true)]);
        assert!(ch.awaits_sync());
        got.clear();
        // Failed with the watermark at 3: ticket 4 and 9 were never synced.
        ch.flush_confirms(3, true, |s, a, m| got.push((s, a, m)));
        assert_eq!(
            got,
            vec![
                (3, false, false),
                (4, true, false),
                (5, false, false),
                (6, false, false),
                (7, true, false)
            ]
        );
        assert!(!ch.awaits_sync());
        assert!(ch.confirms.is_empty());
    }
}
