//! Runs [`Batch`] on a pair of channels: the leader's in-process
//! subscription, which carries the same calls and events as HTTP.

use crate::batch::Batch;
use crate::ClusterView;
use berth_api::cluster::{CallEnvelope, Event};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// How often the job list is read again.
pub const JOBS_INTERVAL: Duration = Duration::from_millis(250);

/// Handling one event or snapshot for longer than this is logged: events
/// queue behind it, and offers expire.
const SLOW: Duration = Duration::from_millis(200);

fn event_name(ev: &Event) -> &'static str {
    match ev {
        Event::Subscribed { .. } => "SUBSCRIBED",
        Event::Offers { .. } => "OFFERS",
        Event::Rescind { .. } => "RESCIND",
        Event::Update { .. } => "UPDATE",
        Event::Failure { .. } => "FAILURE",
        Event::Error { .. } => "ERROR",
        Event::Heartbeat {} => "HEARTBEAT",
    }
}

/// Eight random lowercase hex digits, for task ids.
pub fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Wall-clock milliseconds advanced by tokio's clock, so that tests with
/// paused time drive the framework's timers too. Only differences matter
/// to [`Batch`].
struct Clock {
    base_ms: u64,
    start: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Clock {
            base_ms,
            start: tokio::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base_ms.saturating_add(elapsed)
    }
}

/// Subscribes, then feeds events and a job snapshot every
/// [`JOBS_INTERVAL`] to a [`Batch`], sending what it answers and
/// publishing its placement notes into `notes`. Returns when `shutdown`
/// completes or either channel closes; the notes are cleared then, since
/// they are only true while this instance runs.
pub async fn run_batch(
    role: &str,
    calls: mpsc::Sender<CallEnvelope>,
    mut events: mpsc::Receiver<Event>,
    view: Arc<dyn ClusterView>,
    notes: Arc<Mutex<BTreeMap<String, String>>>,
    shutdown: impl Future,
) {
    let clock = Clock::new();
    let mut batch = Batch::for_role(role, Box::new(random_suffix));
    batch.restore(&view.jobs(), view.tasks(), clock.now_ms());
    if calls.send(batch.subscribe_call()).await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(JOBS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut published: Option<BTreeMap<String, String>> = None;
    loop {
        let (what, started, out) = tokio::select! {
            _ = &mut shutdown => break,
            ev = events.recv() => match ev {
                Some(ev) => {
                    let (what, started) = (event_name(&ev), Instant::now());
                    (what, started, batch.on_event(ev, clock.now_ms()))
                }
                None => {
                    tracing::info!("batch framework: event stream closed");
                    break;
                }
            },
            _ = tick.tick() => {
                let started = Instant::now();
                let jobs = view.jobs();
                let nodes = view.nodes();
                ("job snapshot", started, batch.on_jobs(jobs, &nodes, clock.now_ms()))
            }
        };
        let took = started.elapsed();
        if took >= SLOW {
            tracing::warn!(
                what,
                took_ms = took.as_millis() as u64,
                "batch framework: slow to handle"
            );
        }
        for c in out {
            if calls.send(c).await.is_err() {
                tracing::info!("batch framework: call channel closed");
                set_notes(&notes, published.as_ref(), BTreeMap::new());
                return;
            }
        }
        let current = batch.placement_notes();
        if published.as_ref() != Some(&current) {
            set_notes(&notes, published.as_ref(), current.clone());
            published = Some(current);
        }
    }
    set_notes(&notes, published.as_ref(), BTreeMap::new());
}

/// Replaces this instance's notes in the map shared by every role's
/// instance: the keys it published before go, the new ones come in.
fn set_notes(
    notes: &Mutex<BTreeMap<String, String>>,
    before: Option<&BTreeMap<String, String>>,
    value: BTreeMap<String, String>,
) {
    // A panic elsewhere while holding the lock leaves a map that is still
    // well formed; keep using it.
    let mut guard = notes.lock().unwrap_or_else(|e| e.into_inner());
    for k in before.into_iter().flat_map(|b| b.keys()) {
        guard.remove(k);
    }
    guard.extend(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobEntry;
    use berth_api::cluster::{Call, Offer};
    use berth_sched::placement::NodeFit;
    use berth_types::{JobSpec, Resources};

    struct View(JobSpec);

    impl ClusterView for View {
        fn jobs(&self) -> Vec<JobEntry> {
            vec![JobEntry {
                spec: self.0.clone(),
                stopped: false,
                submitted_ms: 1,
            }]
        }
        fn nodes(&self) -> Vec<NodeFit> {
            Vec::new()
        }
    }

    async fn next(rx: &mut mpsc::Receiver<CallEnvelope>) -> Call {
        tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("a call in time")
            .expect("channel open")
            .call
    }

    #[tokio::test(start_paused = true)]
    async fn drives_the_core_over_channels() {
        let spec = JobSpec::from_toml(
            "j.toml",
            "name = \"a\"\ninstances = 1\ncommand = \"true\"\nmem = 5000\n",
        )
        .unwrap();
        let (call_tx, mut call_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(64);
        let notes = Arc::new(Mutex::new(BTreeMap::new()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_batch(
            "*",
            call_tx,
            ev_rx,
            Arc::new(View(spec)),
            notes.clone(),
            async move {
                let _ = stop_rx.await;
            },
        ));
        assert!(matches!(next(&mut call_rx).await, Call::Subscribe { .. }));
        ev_tx
            .send(Event::Subscribed {
                framework_id: crate::BATCH_FRAMEWORK_ID.into(),
                heartbeat_interval_seconds: 15.0,
            })
            .await
            .unwrap();
        assert!(matches!(next(&mut call_rx).await, Call::Reconcile { .. }));
        assert!(matches!(next(&mut call_rx).await, Call::Request { .. }));
        assert!(matches!(next(&mut call_rx).await, Call::Revive {}));
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Too small an offer: declined, and the note says why.
        ev_tx
            .send(Event::Offers {
                offers: vec![Offer {
                    id: "o1".into(),
                    framework_id: crate::BATCH_FRAMEWORK_ID.into(),
                    agent_id: "ag1".into(),
                    hostname: "h1".into(),
                    resources: Resources::new(4.0, 1000, 1000),
                    attributes: Default::default(),
                }],
            })
            .await
            .unwrap();
        assert!(matches!(next(&mut call_rx).await, Call::Decline { .. }));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let note = notes.lock().unwrap().get("a").cloned().unwrap_or_default();
        assert!(note.contains("pending"), "{note:?}");
        stop_tx.send(()).unwrap();
        task.await.unwrap();
        assert!(notes.lock().unwrap().is_empty());
    }
}
