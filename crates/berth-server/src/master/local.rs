//! In-process frameworks (the built-in batch framework) subscribe through
//! the same code as HTTP ones: the same SUBSCRIBE, the same event queue,
//! the same call handling; only the transport is a pair of channels.

use super::frameworks::{Subscribed, EVENT_QUEUE};
use super::Master;
use berth_api::cluster::{Call, CallEnvelope, Event, FrameworkInfo};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Calls a local framework may queue before `calls.send` waits.
const CALL_QUEUE: usize = 1024;
/// ACCEPT writes of one local framework under way at once.
const MAX_LAUNCHES_IN_FLIGHT: usize = 32;

/// The two ends a local framework holds. The first call on `calls` is
/// SUBSCRIBE (already queued by [`Master::subscribe_local`]); SUBSCRIBED
/// or ERROR is then the first event. Dropping `events` ends the
/// subscription (like closing the HTTP stream); `events` ends when the
/// subscription does (leadership lost, replaced, TEARDOWN, refused). Calls
/// that fail come back as ERROR events.
pub struct LocalFramework {
    pub calls: mpsc::Sender<CallEnvelope>,
    pub events: mpsc::Receiver<Event>,
}

impl Master {
    /// Subscribes an in-process framework: [`Master::connect_local`] with
    /// the SUBSCRIBE call already queued. Set `info.id` to a fixed id so
    /// the framework keeps its tasks across leader changes. A SUBSCRIBE the
    /// framework sends itself for the same id is ignored.
    pub fn subscribe_local(self: &Arc<Self>, info: FrameworkInfo) -> LocalFramework {
        let lf = self.connect_local();
        let call = CallEnvelope {
            framework_id: info.id.clone(),
            call: Call::Subscribe {
                framework_info: info,
            },
        };
        // The queue is new and empty, so this cannot fail.
        let _ = lf.calls.try_send(call);
        lf
    }

    /// A channel pair on which a framework speaks the scheduler API as over
    /// HTTP, starting with its own SUBSCRIBE call.
    pub fn connect_local(self: &Arc<Self>) -> LocalFramework {
        let (calls_tx, calls_rx) = mpsc::channel::<CallEnvelope>(CALL_QUEUE);
        let (events_tx, events_rx) = mpsc::channel::<Event>(EVENT_QUEUE);
        tokio::spawn(serve_local(self.clone(), calls_rx, events_tx));
        LocalFramework {
            calls: calls_tx,
            events: events_rx,
        }
    }

    fn report_call_error(&self, framework_id: &str, message: String) {
        if let Some(ctx) = self.leader_ctx() {
            self.send_event(&ctx, framework_id, Event::Error { message });
        }
    }
}

/// Feeds a local framework's calls to the master. Until SUBSCRIBE succeeds
/// this task holds the event sender; afterwards only the subscription does,
/// so the events end exactly when the subscription ends.
///
/// Calls are handled in order, except that an ACCEPT's replicated write
/// runs in the background (its offers are taken, its tasks checked and
/// their resources reserved before the next call): a framework answering
/// a round of 5,000 offers with a few large ACCEPTs then has them written
/// together, and its SUPPRESS or new REQUEST right after them takes effect
/// at once instead of after every write, so the allocator does not offer
/// again what was just accepted. Calls that read the tasks (KILL,
/// RECONCILE, TEARDOWN) wait for the writes before them.
async fn serve_local(
    m: Arc<Master>,
    mut calls: mpsc::Receiver<CallEnvelope>,
    events: mpsc::Sender<Event>,
) {
    let mut unsubscribed = Some(events);
    let mut sub: Option<Subscribed> = None;
    // Handles, not a JoinSet: a write under way must finish (and release
    // its reservation) even when this task ends.
    let mut launches: Vec<JoinHandle<()>> = Vec::new();
    loop {
        launches.retain(|h| !h.is_finished());
        let call = match (&sub, &unsubscribed) {
            (Some(s), _) => tokio::select! {
                _ = s.ended.cancelled() => return,
                c = calls.recv() => c,
            },
            (None, Some(tx)) => tokio::select! {
                _ = tx.closed() => return,
                c = calls.recv() => c,
            },
            (None, None) => return,
        };
        let Some(CallEnvelope { framework_id, call }) = call else {
            return;
        };
        match (&sub, call) {
            (None, Call::Subscribe { framework_info }) => {
                let Some(tx) = unsubscribed.take() else {
                    return;
                };
                match m.subscribe(framework_id, framework_info, tx).await {
                    Ok(s) => sub = Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "local framework subscription refused");
                        return;
                    }
                }
            }
            (None, other) => {
                if let Some(tx) = &unsubscribed {
                    let _ = tx.try_send(Event::Error {
                        message: format!("{}: SUBSCRIBE first", super::calls::call_name(&other)),
                    });
                }
            }
            (Some(s), Call::Subscribe { framework_info }) => {
                let id = framework_info.id.or(framework_id);
                if id.as_ref().is_some_and(|id| id != &s.framework_id) {
                    m.report_call_error(
                        &s.framework_id,
                        format!(
                            "this channel is subscribed as framework {}; connect another for {}",
                            s.framework_id,
                            id.unwrap_or_default()
                        ),
                    );
                }
                // Same framework: already subscribed, SUBSCRIBED was sent.
            }
            (Some(s), call) => {
                if let Some(id) = &framework_id {
                    if id != &s.framework_id {
                        m.report_call_error(
                            &s.framework_id,
                            format!(
                                "framework_id {id} does not match the subscription of framework {}",
                                s.framework_id
                            ),
                        );
                        continue;
                    }
                }
                let call = match call {
                    Call::Accept {
                        offer_ids,
                        operations,
                        filters,
                    } => {
                        if launches.len() >= MAX_LAUNCHES_IN_FLIGHT {
                            let _ = launches.remove(0).await;
                        }
                        match m.accept_begin(
                            &s.framework_id,
                            &s.stream_id,
                            offer_ids,
                            operations,
                            filters,
                        ) {
                            Ok(None) => {}
                            Ok(Some((ctx, launch))) => {
                                let (m, id) = (m.clone(), s.framework_id.clone());
                                launches.push(tokio::spawn(async move {
                                    if let Err(e) = m.launch(&ctx, launch).await {
                                        m.report_call_error(&id, e.to_string());
                                    }
                                }));
                            }
                            Err(e) => m.report_call_error(&s.framework_id, e.to_string()),
                        }
                        continue;
                    }
                    c @ (Call::Kill { .. } | Call::Reconcile { .. } | Call::Teardown {}) => {
                        for h in launches.drain(..) {
                            let _ = h.await;
                        }
                        c
                    }
                    c => c,
                };
                if let Err(e) = m.handle_call(&s.framework_id, &s.stream_id, call).await {
                    m.report_call_error(&s.framework_id, e.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::MasterConfig;
    use crate::replica::MemoryReplica;
    use berth_api::cluster::{Operation, RegisterAgentRequest, TaskInfo};
    use berth_types::{Resources, TaskKind, TaskState};
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    async fn next(lf: &mut LocalFramework) -> Event {
        tokio::time::timeout(WAIT, lf.events.recv())
            .await
            .expect("an event in time")
            .expect("stream open")
    }

    fn call(call: Call) -> CallEnvelope {
        CallEnvelope {
            framework_id: None,
            call,
        }
    }

    /// ACCEPT's write runs behind later calls, but a KILL right after it
    /// waits for it: the task is killed, not answered LOST as unknown.
    #[tokio::test]
    async fn calls_after_a_pipelined_accept_see_its_tasks() {
        let replica = MemoryReplica::new("127.0.0.1:1");
        let m = Master::start(MasterConfig::default(), replica);
        let deadline = tokio::time::Instant::now() + WAIT;
        while !m.is_leading() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let agent = m
            .register_agent(RegisterAgentRequest {
                agent_id: Some("n1".into()),
                hostname: "n1".into(),
                address: String::new(),
                resources: Resources::new(4.0, 1024, 0),
                attributes: Default::default(),
                running: vec![],
            })
            .await
            .expect("registered")
            .agent_id;
        let mut lf = m.subscribe_local(FrameworkInfo {
            name: "t".into(),
            role: "*".into(),
            id: Some("fw-pipe".into()),
            failover_timeout_secs: 60.0,
        });
        assert!(matches!(next(&mut lf).await, Event::Subscribed { .. }));
        let offer = loop {
            if let Event::Offers { mut offers } = next(&mut lf).await {
                break offers.remove(0);
            }
        };
        let task = TaskInfo {
            task_id: "t1".into(),
            name: "t1".into(),
            agent_id: agent.clone(),
            resources: Resources::new(1.0, 64, 0),
            kind: TaskKind::Command {
                shell: "true".into(),
            },
            env: Default::default(),
            labels: Default::default(),
        };
        lf.calls
            .send(call(Call::Accept {
                offer_ids: vec![offer.id.clone()],
                operations: vec![Operation::Launch {
                    task_infos: vec![task],
                }],
                filters: None,
            }))
            .await
            .unwrap();
        lf.calls.send(call(Call::Suppress {})).await.unwrap();
        lf.calls
            .send(call(Call::Kill {
                task_id: "t1".into(),
                agent_id: None,
            }))
            .await
            .unwrap();
        // The kill is recorded on the launched task (the agent reports it
        // KILLED later); an unknown task would come back LOST at once.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let killed = m
                .read_state()
                .tasks
                .get("t1")
                .is_some_and(|t| t.kill_requested);
            if killed {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "kill not recorded");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while let Ok(ev) = lf.events.try_recv() {
            match ev {
                Event::Update { status } => {
                    assert_ne!(status.state, TaskState::Lost, "{status:?}")
                }
                Event::Error { message } => panic!("{message}"),
                _ => {}
            }
        }
        m.shutdown();
    }
}
