//! In-process frameworks (the built-in batch framework) subscribe through
//! the same code as HTTP ones: the same SUBSCRIBE, the same event queue,
//! the same call handling; only the transport is a pair of channels.

use super::frameworks::{Subscribed, EVENT_QUEUE};
use super::Master;
use berth_api::cluster::{Call, CallEnvelope, Event, FrameworkInfo};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Calls a local framework may queue before `calls.send` waits.
const CALL_QUEUE: usize = 1024;

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
async fn serve_local(
    m: Arc<Master>,
    mut calls: mpsc::Receiver<CallEnvelope>,
    events: mpsc::Sender<Event>,
) {
    let mut unsubscribed = Some(events);
    let mut sub: Option<Subscribed> = None;
    loop {
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
                if let Err(e) = m.handle_call(&s.framework_id, &s.stream_id, call).await {
                    m.report_call_error(&s.framework_id, e.to_string());
                }
            }
        }
    }
}
