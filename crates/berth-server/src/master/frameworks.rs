//! Scheduler subscriptions: SUBSCRIBE, the event stream's lifetime,
//! failover, and forwarding status updates to frameworks.

use super::leader::{FwMem, LeaderCtx, Subscription, MAX_UNACKED};
use super::util::{now_ms, random_id, secs_to_ms, valid_client_id};
use super::{Master, MasterError};
use crate::state::Command;
use berth_api::cluster::{Event, FrameworkInfo, TaskStatus};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Capacity of a subscription's event queue. A framework this far behind is
/// disconnected rather than let the leader's memory grow without bound.
pub const EVENT_QUEUE: usize = 100_000;

/// A live subscription, as SUBSCRIBE answers it.
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub framework_id: String,
    /// The `Mesos-Stream-Id` later calls must carry.
    pub stream_id: String,
    /// Cancelled when the subscription ends (stream closed, replaced by a
    /// new SUBSCRIBE, TEARDOWN, leadership lost).
    pub ended: CancellationToken,
}

impl Master {
    /// SUBSCRIBE: registers (or fails over) the framework and attaches `tx`
    /// as its event stream; SUBSCRIBED is the first event sent, followed by
    /// the updates it has not acknowledged yet. The stream ends when every
    /// receiver of `tx` is dropped (the framework goes away), and the
    /// framework is then removed unless it subscribes again within its
    /// failover timeout. On failure an ERROR event is sent on `tx`.
    pub async fn subscribe(
        self: &Arc<Self>,
        framework_id: Option<String>,
        info: FrameworkInfo,
        tx: mpsc::Sender<Event>,
    ) -> Result<Subscribed, MasterError> {
        let r = self.subscribe_inner(framework_id, info, &tx).await;
        if let Err(e) = &r {
            let _ = tx.try_send(Event::Error {
                message: e.to_string(),
            });
        }
        r
    }

    async fn subscribe_inner(
        self: &Arc<Self>,
        envelope_id: Option<String>,
        mut info: FrameworkInfo,
        tx: &mpsc::Sender<Event>,
    ) -> Result<Subscribed, MasterError> {
        let ctx = self.ctx()?;
        validate_info(&info)?;
        if let (Some(a), Some(b)) = (&info.id, &envelope_id) {
            if a != b {
                return Err(MasterError::BadRequest(format!(
                    "framework_id {b} does not match framework_info.id {a}"
                )));
            }
        }
        let framework_id = match info.id.clone().or(envelope_id) {
            Some(id) if !valid_client_id(&id) => {
                return Err(MasterError::BadRequest(format!(
                    "framework id {id:?}: use 1 to 128 letters, digits, '-', '_', '.' or ':'"
                )))
            }
            Some(id) => id,
            None => random_id("fw-"),
        };
        info.id = Some(framework_id.clone());
        let res = self
            .propose(Command::SubscribeFramework {
                framework_id: framework_id.clone(),
                info: info.clone(),
                at_ms: now_ms(),
            })
            .await?;
        if let Some(e) = res.error {
            return Err(MasterError::BadRequest(e));
        }
        let stream_id = random_id("");
        let ended = ctx.cancel.child_token();
        {
            let mut f = ctx.fws();
            // Checked under the lock step_down drains the subscriptions
            // with, so a subscription never outlives its leader context.
            if ctx.cancel.is_cancelled() {
                return Err(MasterError::NotLeader {
                    leader_address: self.replica.leader().leader_address,
                });
            }
            if let Some(old) = f.subs.remove(&framework_id) {
                let _ = old.tx.try_send(Event::Error {
                    message: format!(
                        "framework {framework_id} subscribed again; this stream is closed"
                    ),
                });
                old.cancel.cancel();
            }
            // Offers made to the previous stream are unknown to this one.
            f.drop_offers_of(&framework_id, false);
            f.subs.insert(
                framework_id.clone(),
                Subscription {
                    stream_id: stream_id.clone(),
                    tx: tx.clone(),
                    cancel: ended.clone(),
                },
            );
            let mem = f
                .mem
                .entry(framework_id.clone())
                .or_insert_with(FwMem::default);
            mem.role = info.role.clone();
            mem.failover_ms = secs_to_ms(info.failover_timeout_secs);
            mem.remove_at_ms = None;
            mem.suppressed = false;
            let mut unacked: Vec<TaskStatus> = mem.unacked.values().cloned().collect();
            unacked.sort_by(|a, b| (a.timestamp_ms, &a.task_id).cmp(&(b.timestamp_ms, &b.task_id)));
            f.send(
                &framework_id,
                Event::Subscribed {
                    framework_id: framework_id.clone(),
                    heartbeat_interval_seconds: self.cfg.framework_heartbeat.as_secs_f64(),
                },
            );
            for status in unacked {
                f.send(&framework_id, Event::Update { status });
            }
        }
        tracing::info!(framework = %framework_id, name = %info.name, role = %info.role, "framework subscribed");
        tokio::spawn(supervise(
            self.clone(),
            ctx,
            framework_id.clone(),
            stream_id.clone(),
            tx.clone(),
            ended.clone(),
        ));
        self.trigger_allocation();
        Ok(Subscribed {
            framework_id,
            stream_id,
            ended,
        })
    }

    /// Checks that a call comes from the framework's live subscription.
    pub(crate) fn check_stream(
        &self,
        ctx: &LeaderCtx,
        framework_id: &str,
        stream_id: &str,
    ) -> Result<(), MasterError> {
        let f = ctx.fws();
        match f.subs.get(framework_id) {
            None => Err(MasterError::Forbidden(format!(
                "framework {framework_id} is not subscribed; SUBSCRIBE first"
            ))),
            Some(s) if s.stream_id != stream_id => Err(MasterError::Forbidden(format!(
                "Mesos-Stream-Id {stream_id:?} does not match the subscription of framework {framework_id}"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Sends status updates to their frameworks and remembers them until
    /// acknowledged (they are sent again on resubscription).
    pub(crate) fn forward_updates(&self, updates: Vec<(String, TaskStatus)>) {
        let Some(ctx) = self.leader_ctx() else {
            return;
        };
        let mut f = ctx.fws();
        for (fw, status) in updates {
            let Some(mem) = f.mem.get_mut(&fw) else {
                continue;
            };
            if mem.unacked.len() < MAX_UNACKED || mem.unacked.contains_key(&status.task_id) {
                mem.unacked.insert(status.task_id.clone(), status.clone());
            }
            f.send(&fw, Event::Update { status });
        }
    }

    /// Sends one event to a framework's live stream.
    pub(crate) fn send_event(&self, ctx: &LeaderCtx, framework_id: &str, event: Event) {
        ctx.fws().send(framework_id, event);
    }

    /// The framework's stream ended: it is disconnected and removed unless
    /// it subscribes again within its failover timeout.
    async fn on_stream_end(&self, ctx: &LeaderCtx, framework_id: &str, stream_id: &str) {
        let failover_ms = {
            let mut f = ctx.fws();
            match f.subs.get(framework_id) {
                Some(s) if s.stream_id == stream_id => {
                    if let Some(s) = f.subs.remove(framework_id) {
                        s.cancel.cancel();
                    }
                }
                // A newer subscription replaced this one.
                Some(_) => return,
                None => {}
            }
            let Some(mem) = f.mem.get_mut(framework_id) else {
                // Torn down.
                return;
            };
            if mem.remove_at_ms.is_some() {
                return;
            }
            mem.remove_at_ms = Some(now_ms().saturating_add(mem.failover_ms));
            let failover_ms = mem.failover_ms;
            f.drop_offers_of(framework_id, false);
            failover_ms
        };
        tracing::info!(framework = %framework_id, failover_ms, "framework disconnected");
        if let Err(e) = self
            .propose(Command::DisconnectFramework {
                framework_id: framework_id.to_string(),
                at_ms: now_ms(),
            })
            .await
        {
            tracing::warn!(framework = %framework_id, error = %e, "proposing framework disconnect");
        }
        self.trigger_allocation();
    }

    /// Removes the frameworks whose failover timeout passed; their tasks
    /// are killed.
    pub(crate) async fn remove_failed_over(&self, ctx: &LeaderCtx) {
        let now = now_ms();
        let due: Vec<String> = {
            let f = ctx.fws();
            f.mem
                .iter()
                .filter(|(id, m)| {
                    m.remove_at_ms.is_some_and(|t| t <= now) && !f.subs.contains_key(*id)
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in due {
            tracing::info!(framework = %id, "failover timeout passed; removing the framework and killing its tasks");
            match self
                .propose(Command::RemoveFramework {
                    framework_id: id.clone(),
                    at_ms: now,
                })
                .await
            {
                Ok(_) => {
                    let mut f = ctx.fws();
                    if !f.subs.contains_key(&id) {
                        f.mem.remove(&id);
                    }
                }
                Err(e) => {
                    tracing::warn!(framework = %id, error = %e, "proposing framework removal")
                }
            }
        }
    }
}

fn validate_info(info: &FrameworkInfo) -> Result<(), MasterError> {
    if info.name.trim().is_empty() || info.name.len() > 256 {
        return Err(MasterError::BadRequest(
            "framework_info.name must be 1 to 256 characters".into(),
        ));
    }
    if info.role != "*" && !berth_types::valid_name(&info.role) {
        return Err(MasterError::BadRequest(format!(
            "role {:?}: not a valid role name",
            info.role
        )));
    }
    if !info.failover_timeout_secs.is_finite() || info.failover_timeout_secs < 0.0 {
        return Err(MasterError::BadRequest(format!(
            "failover_timeout_secs {}: must be 0 or more",
            info.failover_timeout_secs
        )));
    }
    Ok(())
}

/// Sends HEARTBEAT events and notices when the framework goes away.
async fn supervise(
    m: Arc<Master>,
    ctx: Arc<LeaderCtx>,
    framework_id: String,
    stream_id: String,
    tx: mpsc::Sender<Event>,
    ended: CancellationToken,
) {
    let period = m
        .cfg
        .framework_heartbeat
        .max(std::time::Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = ended.cancelled() => break,
            _ = tx.closed() => break,
            _ = tick.tick() => {
                let mut f = ctx.fws();
                if f.subs.get(&framework_id).is_some_and(|s| s.stream_id == stream_id) {
                    f.send(&framework_id, Event::Heartbeat {});
                }
            }
        }
    }
    drop(tx);
    if ctx.cancel.is_cancelled() {
        return;
    }
    m.on_stream_end(&ctx, &framework_id, &stream_id).await;
}
