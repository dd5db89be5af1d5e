//! The cluster API end to end: a server on 127.0.0.1 over a MemoryReplica,
//! driven through real HTTP by simulated agents and frameworks.

use crate::replica::{LeaderInfo, MemoryReplica, Replica};
use crate::server::{start, RunningServer, ServerConfig};
use axum::Router;
use berth_api::cluster::*;
use berth_types::{Resources, TaskKind, TaskState};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);
/// A cluster token (long enough to derive the cluster CA from).
const TOKEN: &str = "t0123456789abcdef-api-tests";

/// An HTTPS client trusting the cluster CA of `TOKEN`, presenting
/// `identity` when given.
fn tls_http(identity: Option<&berth_tls::Identity>) -> reqwest::Client {
    let ca = berth_tls::ClusterCa::from_token(TOKEN).unwrap();
    let tls = berth_tls::client_config(&ca, identity).unwrap();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap()
}

struct Harness {
    server: Option<RunningServer>,
    replica: Arc<MemoryReplica>,
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.master().shutdown();
        }
    }
}

fn fast(cfg: &mut ServerConfig) {
    cfg.allocation_interval = Duration::from_millis(30);
    cfg.framework_heartbeat = Duration::from_millis(200);
    cfg.heartbeat_interval = Duration::from_millis(100);
}

async fn harness(tweak: impl FnOnce(&mut ServerConfig)) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let replica = MemoryReplica::new(&addr.to_string());
    let mut cfg = ServerConfig::new("/nonexistent", addr);
    fast(&mut cfg);
    tweak(&mut cfg);
    let token = cfg.token.clone();
    let server = start(cfg, replica.clone(), Router::new(), Router::new(), listener)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while !server.master().is_leading() {
        assert!(Instant::now() < deadline, "master never started leading");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // With a token the server speaks HTTPS only.
    let (http, base) = match &token {
        Some(_) => (tls_http(None), format!("https://{addr}")),
        None => (
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            format!("http://{addr}"),
        ),
    };
    Harness {
        server: Some(server),
        replica,
        http,
        base,
        token,
    }
}

impl Harness {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = rb.send().await.unwrap();
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, v)
    }

    async fn post(&self, path: &str, body: &impl Serialize) -> (StatusCode, Value) {
        self.send(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    async fn ok<T: DeserializeOwned>(&self, r: (StatusCode, Value)) -> T {
        assert!(r.0.is_success(), "{:?}", r);
        serde_json::from_value(r.1).unwrap()
    }

    async fn register(&self, host: &str, res: Resources) -> String {
        let req = RegisterAgentRequest {
            agent_id: None,
            hostname: host.into(),
            address: String::new(),
            resources: res,
            attributes: BTreeMap::new(),
            running: vec![],
        };
        let r: RegisterAgentResponse = self.ok(self.post("/v1/agents/register", &req).await).await;
        r.agent_id
    }

    async fn sync(
        &self,
        agent: &str,
        known: u64,
        wait_ms: u64,
        updates: Vec<TaskStatus>,
    ) -> AgentSyncResponse {
        let req = AgentSyncRequest {
            agent_id: agent.into(),
            updates,
            known_version: known,
            wait_ms,
        };
        self.ok(self.post("/v1/agents/sync", &req).await).await
    }

    async fn subscribe(&self, info: FrameworkInfo) -> Fw {
        let env = CallEnvelope {
            framework_id: None,
            call: Call::Subscribe {
                framework_info: info,
            },
        };
        let mut resp = self
            .req(reqwest::Method::POST, "/api/v1/scheduler")
            .json(&env)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/recordio"
        );
        let stream_id = resp.headers()[STREAM_ID_HEADER]
            .to_str()
            .unwrap()
            .to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut dec = RecordIoDecoder::default();
            while let Ok(Some(chunk)) = resp.chunk().await {
                dec.feed(&chunk);
                while let Ok(Some(rec)) = dec.next_record() {
                    let e: Event = serde_json::from_slice(&rec).unwrap();
                    if tx.send(e).is_err() {
                        return;
                    }
                }
            }
        });
        let mut fw = Fw {
            id: String::new(),
            stream_id,
            events: rx,
            reader,
        };
        match fw.next(|_| true).await {
            Event::Subscribed { framework_id, .. } => fw.id = framework_id,
            other => panic!("first event {other:?}"),
        }
        fw
    }

    async fn call(&self, fw: &Fw, call: Call) -> (StatusCode, Value) {
        let env = CallEnvelope {
            framework_id: Some(fw.id.clone()),
            call,
        };
        self.send(
            self.req(reqwest::Method::POST, "/api/v1/scheduler")
                .header(STREAM_ID_HEADER, &fw.stream_id)
                .json(&env),
        )
        .await
    }

    async fn call_ok(&self, fw: &Fw, call: Call) {
        let r = self.call(fw, call).await;
        assert_eq!(r.0, StatusCode::ACCEPTED, "{r:?}");
    }

    fn state(&self) -> crate::state::ClusterState {
        self.replica.state().read().unwrap().clone()
    }
}

struct Fw {
    id: String,
    stream_id: String,
    events: mpsc::UnboundedReceiver<Event>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Fw {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Fw {
    /// The next event (heartbeats skipped) matching `want`; others are
    /// dropped.
    async fn next(&mut self, want: impl Fn(&Event) -> bool) -> Event {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let e = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("timed out waiting for an event")
                .expect("stream ended");
            if !matches!(e, Event::Heartbeat {}) && want(&e) {
                return e;
            }
        }
    }

    async fn offers(&mut self) -> Vec<Offer> {
        match self.next(|e| matches!(e, Event::Offers { .. })).await {
            Event::Offers { offers } => offers,
            _ => unreachable!(),
        }
    }

    async fn update(&mut self, task: &str) -> TaskStatus {
        let t = task.to_string();
        match self
            .next(move |e| matches!(e, Event::Update { status } if status.task_id == t))
            .await
        {
            Event::Update { status } => status,
            _ => unreachable!(),
        }
    }

    /// No event matching `bad` arrives within `d`.
    async fn quiet(&mut self, d: Duration, bad: impl Fn(&Event) -> bool) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            assert!(!bad(&e), "unexpected event {e:?}");
        }
    }
}

fn info(name: &str, failover: f64) -> FrameworkInfo {
    FrameworkInfo {
        name: name.into(),
        role: "*".into(),
        id: None,
        failover_timeout_secs: failover,
    }
}

fn task(id: &str, agent: &str, res: Resources) -> TaskInfo {
    TaskInfo {
        task_id: id.into(),
        name: id.into(),
        agent_id: agent.into(),
        resources: res,
        kind: TaskKind::Command {
            shell: "sleep 100".into(),
        },
        env: BTreeMap::new(),
        labels: BTreeMap::new(),
    }
}

fn status(id: &str, agent: &str, state: TaskState, uuid: &str) -> TaskStatus {
    TaskStatus {
        task_id: id.into(),
        agent_id: agent.into(),
        state,
        message: None,
        reason: None,
        exit_code: None,
        uuid: uuid.into(),
        timestamp_ms: 1,
    }
}

fn launch(offer: &Offer, tasks: Vec<TaskInfo>) -> Call {
    Call::Accept {
        offer_ids: vec![offer.id.clone()],
        operations: vec![Operation::Launch { task_infos: tasks }],
        filters: None,
    }
}

/// An agent, a framework, one task launched on the agent.
async fn with_task(h: &Harness, failover: f64) -> (String, Fw) {
    let agent = h.register("n1", Resources::new(4.0, 4096, 0)).await;
    let mut fw = h.subscribe(info("f", failover)).await;
    let offers = fw.offers().await;
    h.call_ok(
        &fw,
        launch(
            &offers[0],
            vec![task("t1", &agent, Resources::new(1.0, 128, 0))],
        ),
    )
    .await;
    (agent, fw)
}

#[tokio::test]
async fn long_poll_wakes_on_launch_and_offers_show_free_resources() {
    let h = harness(|_| {}).await;
    let agent = h.register("n1", Resources::new(4.0, 4096, 100)).await;
    let first = h.sync(&agent, 0, 0, vec![]).await;
    assert!(!first.reregister && first.tasks.is_empty());

    // A long-poll with nothing new waits.
    let t0 = Instant::now();
    let same = h.sync(&agent, first.version, 300, vec![]).await;
    assert!(t0.elapsed() >= Duration::from_millis(250));
    assert_eq!(same.version, first.version);

    let mut fw = h.subscribe(info("f", 0.0)).await;
    let offers = fw.offers().await;
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].agent_id, agent);
    assert_eq!(offers[0].hostname, "n1");
    assert_eq!(offers[0].resources, Resources::new(4.0, 4096, 100));

    let poll = {
        let (http, base, agent, v) = (h.http.clone(), h.base.clone(), agent.clone(), first.version);
        tokio::spawn(async move {
            let t0 = Instant::now();
            let r: AgentSyncResponse = http
                .post(format!("{base}/v1/agents/sync"))
                .json(&json!({"agent_id": agent, "known_version": v, "wait_ms": 5000}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (t0.elapsed(), r)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.call_ok(
        &fw,
        launch(
            &offers[0],
            vec![task("t1", &agent, Resources::new(1.0, 128, 0))],
        ),
    )
    .await;
    let (took, r) = poll.await.unwrap();
    assert!(took < Duration::from_secs(2), "long-poll took {took:?}");
    assert_eq!(r.tasks.len(), 1);
    assert_eq!(r.tasks[0].task_id, "t1");
    assert!(r.version > first.version);

    // The unused part of the offer comes back.
    let again = fw.offers().await;
    assert_eq!(again[0].resources, Resources::new(3.0, 3968, 100));
}

#[tokio::test]
async fn status_updates_are_acknowledged_and_forwarded() {
    let h = harness(|_| {}).await;
    let (agent, mut fw) = with_task(&h, 0.0).await;
    let r = h
        .sync(
            &agent,
            0,
            0,
            vec![status("t1", &agent, TaskState::Running, "u1")],
        )
        .await;
    assert_eq!(r.acknowledged, vec!["u1"]);
    let st = fw.update("t1").await;
    assert_eq!(st.state, TaskState::Running);
    assert_eq!(st.uuid, "u1");
    h.call_ok(
        &fw,
        Call::Acknowledge {
            agent_id: agent.clone(),
            task_id: "t1".into(),
            uuid: "u1".into(),
        },
    )
    .await;
    // A repeated update (lost acknowledgement) is acknowledged again but
    // not forwarded twice.
    let r = h
        .sync(
            &agent,
            0,
            0,
            vec![status("t1", &agent, TaskState::Running, "u1")],
        )
        .await;
    assert_eq!(r.acknowledged, vec!["u1"]);
    h.sync(
        &agent,
        0,
        0,
        vec![status("t1", &agent, TaskState::Finished, "u2")],
    )
    .await;
    let st = fw.update("t1").await;
    assert_eq!(st.state, TaskState::Finished);
    assert_eq!(h.state().tasks["t1"].state, TaskState::Finished);
}

#[tokio::test]
async fn decline_filters_the_agent_for_refuse_seconds() {
    let h = harness(|_| {}).await;
    let a1 = h.register("n1", Resources::new(2.0, 1024, 0)).await;
    let mut fw = h.subscribe(info("f", 0.0)).await;
    let offers = fw.offers().await;
    assert_eq!(offers[0].agent_id, a1);
    let t0 = Instant::now();
    h.call_ok(
        &fw,
        Call::Decline {
            offer_ids: vec![offers[0].id.clone()],
            filters: Some(Filters {
                refuse_seconds: 1.0,
            }),
        },
    )
    .await;
    // Another agent is still offered meanwhile.
    let a2 = h.register("n2", Resources::new(1.0, 512, 0)).await;
    let o2 = fw.offers().await;
    assert!(o2.iter().all(|o| o.agent_id == a2), "{o2:?}");
    let o = fw.offers().await;
    assert_eq!(o[0].agent_id, a1);
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "re-offered after {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn unused_offers_are_rescinded_after_the_offer_timeout() {
    let h = harness(|c| c.offer_timeout = Duration::from_millis(300)).await;
    h.register("n1", Resources::new(1.0, 256, 0)).await;
    let mut fw = h.subscribe(info("f", 0.0)).await;
    let offers = fw.offers().await;
    let t0 = Instant::now();
    let id = offers[0].id.clone();
    let e = fw.next(|e| matches!(e, Event::Rescind { .. })).await;
    assert_eq!(
        e,
        Event::Rescind {
            offer_id: id.clone()
        }
    );
    assert!(t0.elapsed() >= Duration::from_millis(250));
    // The resources are offered again, and the old offer is unusable.
    let again = fw.offers().await;
    assert_ne!(again[0].id, id);
    h.call_ok(
        &fw,
        launch(
            &offers[0],
            vec![task("late", "", Resources::new(0.5, 1, 0))],
        ),
    )
    .await;
    let st = fw.update("late").await;
    assert_eq!(st.state, TaskState::Lost);
    assert!(st.message.unwrap().contains("not found"));
}

#[tokio::test]
async fn silent_agents_are_lost_and_their_tasks_reported_lost() {
    let h = harness(|c| c.agent_timeout = Duration::from_millis(500)).await;
    let (agent, mut fw) = with_task(&h, 0.0).await;
    let st = fw.update("t1").await;
    assert_eq!(st.state, TaskState::Lost);
    assert_eq!(st.reason.as_deref(), Some("agent_lost"));
    let e = fw.next(|e| matches!(e, Event::Failure { .. })).await;
    assert_eq!(
        e,
        Event::Failure {
            agent_id: agent.clone()
        }
    );
    let nodes: Vec<NodeView> = h.ok(h.get("/v1/nodes").await).await;
    assert_eq!(nodes[0].state, berth_types::NodeState::Lost);
    assert!(h.sync(&agent, 0, 0, vec![]).await.reregister);
    assert!(h.sync("never-registered", 0, 0, vec![]).await.reregister);
}

#[tokio::test]
async fn syncing_agents_stay_alive() {
    let h = harness(|c| c.agent_timeout = Duration::from_millis(400)).await;
    let agent = h.register("n1", Resources::new(1.0, 256, 0)).await;
    for _ in 0..8 {
        let r = h.sync(&agent, 0, 0, vec![]).await;
        assert!(!r.reregister);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        h.state().nodes[&agent].state,
        berth_types::NodeState::Active
    );
}

#[tokio::test]
async fn resubscribe_within_failover_keeps_tasks_and_resends_unacked() {
    let h = harness(|_| {}).await;
    let (agent, mut fw) = with_task(&h, 2.0).await;
    h.sync(
        &agent,
        0,
        0,
        vec![status("t1", &agent, TaskState::Running, "u1")],
    )
    .await;
    fw.update("t1").await;
    let id = fw.id.clone();
    drop(fw);
    // Noticed at the latest at the next heartbeat.
    let deadline = Instant::now() + WAIT;
    while h.state().frameworks[&id].connected {
        assert!(Instant::now() < deadline, "disconnect not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = h
        .subscribe(FrameworkInfo {
            id: Some(id.clone()),
            ..info("f", 2.0)
        })
        .await;
    assert_eq!(again.id, id);
    // The RUNNING update was never acknowledged: it comes again.
    assert_eq!(again.update("t1").await.uuid, "u1");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = h.state();
    assert!(s.frameworks[&id].connected);
    assert!(!s.tasks["t1"].kill_requested);
    assert!(h.sync(&agent, 0, 0, vec![]).await.kill.is_empty());
}

#[tokio::test]
async fn framework_gone_past_failover_has_its_tasks_killed() {
    let h = harness(|_| {}).await;
    let (agent, fw) = with_task(&h, 0.3).await;
    let id = fw.id.clone();
    drop(fw);
    let deadline = Instant::now() + WAIT;
    loop {
        let r = h.sync(&agent, 0, 0, vec![]).await;
        if r.kill == vec!["t1".to_string()] {
            break;
        }
        assert!(Instant::now() < deadline, "task never killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = h.state();
    assert!(!s.frameworks.contains_key(&id));
    assert_eq!(s.tasks["t1"].reason.as_deref(), Some("framework_removed"));
}

#[tokio::test]
async fn kill_reconcile_and_teardown() {
    let h = harness(|_| {}).await;
    let (agent, mut fw) = with_task(&h, 0.0).await;
    h.call_ok(&fw, Call::Reconcile { tasks: vec![] }).await;
    assert_eq!(fw.update("t1").await.state, TaskState::Staging);
    h.call_ok(
        &fw,
        Call::Reconcile {
            tasks: vec![ReconcileTask {
                task_id: "ghost".into(),
                agent_id: None,
            }],
        },
    )
    .await;
    assert_eq!(fw.update("ghost").await.state, TaskState::Lost);

    h.call_ok(
        &fw,
        Call::Kill {
            task_id: "t1".into(),
            agent_id: None,
        },
    )
    .await;
    let r = h.sync(&agent, 0, 0, vec![]).await;
    assert_eq!(r.kill, vec!["t1"]);
    h.sync(
        &agent,
        0,
        0,
        vec![status("t1", &agent, TaskState::Killed, "k1")],
    )
    .await;
    let st = fw.update("t1").await;
    assert_eq!(st.state, TaskState::Killed);
    assert_eq!(st.reason.as_deref(), Some("killed_by_framework"));

    h.call_ok(&fw, Call::Teardown {}).await;
    assert!(!h.state().frameworks.contains_key(&fw.id));
    // The stream ends.
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, fw.events.recv()).await {}
    let r = h.call(&fw, Call::Revive {}).await;
    assert_eq!(r.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn calls_need_the_live_stream_id() {
    let h = harness(|_| {}).await;
    let fw = h.subscribe(info("f", 0.0)).await;
    let env = json!({"type": "REVIVE", "framework_id": fw.id});
    let (s, v) = h.post("/api/v1/scheduler", &env).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["message"].as_str().unwrap().contains(STREAM_ID_HEADER),
        "{v}"
    );
    let (s, v) = h
        .send(
            h.req(reqwest::Method::POST, "/api/v1/scheduler")
                .header(STREAM_ID_HEADER, "wrong")
                .json(&env),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(v["message"].as_str().unwrap().contains(&fw.id), "{v}");
    let (s, _) = h.post("/api/v1/scheduler", &json!({"type": "BOGUS"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = h
        .call(
            &fw,
            Call::Request {
                resources: Resources::ZERO,
                count: None,
            },
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn accept_refuses_tasks_that_do_not_fit_the_offer() {
    let h = harness(|_| {}).await;
    let agent = h.register("n1", Resources::new(2.0, 1024, 0)).await;
    let mut fw = h.subscribe(info("f", 0.0)).await;
    let offers = fw.offers().await;
    h.call_ok(
        &fw,
        launch(
            &offers[0],
            vec![
                task("a", &agent, Resources::new(1.5, 100, 0)),
                task("b", &agent, Resources::new(1.0, 100, 0)),
                task("c", "elsewhere", Resources::new(0.1, 1, 0)),
            ],
        ),
    )
    .await;
    let b = fw.update("b").await;
    assert_eq!(
        (b.state, b.reason.as_deref()),
        (TaskState::Lost, Some("launch_failed"))
    );
    assert!(b.message.unwrap().contains("left"));
    assert_eq!(fw.update("c").await.state, TaskState::Lost);
    let s = h.state();
    assert_eq!(s.tasks.len(), 1);
    assert_eq!(s.nodes[&agent].used, Resources::new(1.5, 100, 0));
}

#[tokio::test]
async fn request_cuts_offers_into_task_sized_pieces() {
    let h = harness(|_| {}).await;
    h.register("n1", Resources::new(4.0, 4096, 0)).await;
    let mut fw = h.subscribe(info("f", 0.0)).await;
    let whole = fw.offers().await;
    assert_eq!(whole[0].resources, Resources::new(4.0, 4096, 0));
    h.call_ok(
        &fw,
        Call::Request {
            resources: Resources::new(1.0, 100, 0),
            count: Some(2),
        },
    )
    .await;
    let decline = |offers: &[Offer]| Call::Decline {
        offer_ids: offers.iter().map(|o| o.id.clone()).collect(),
        filters: Some(Filters {
            refuse_seconds: 0.0,
        }),
    };
    h.call_ok(&fw, decline(&whole)).await;
    let cut = fw.offers().await;
    let total = cut
        .iter()
        .fold(Resources::ZERO, |acc, o| acc.add(&o.resources));
    assert_eq!(total, Resources::new(2.0, 200, 0), "{cut:?}");
    // Outstanding offers already cover the two tasks: nothing more.
    fw.quiet(Duration::from_millis(300), |e| {
        matches!(e, Event::Offers { .. })
    })
    .await;

    // SUPPRESS: declined resources are not offered again until REVIVE.
    h.call_ok(&fw, Call::Suppress {}).await;
    h.call_ok(&fw, decline(&cut)).await;
    fw.quiet(Duration::from_millis(300), |e| {
        matches!(e, Event::Offers { .. })
    })
    .await;
    h.call_ok(&fw, Call::Revive {}).await;
    let again = fw.offers().await;
    let total = again
        .iter()
        .fold(Resources::ZERO, |acc, o| acc.add(&o.resources));
    assert_eq!(total, Resources::new(2.0, 200, 0));
}

#[tokio::test]
async fn token_is_required_when_configured() {
    let h = harness(|c| c.token = Some(TOKEN.into())).await;
    for path in ["/v1/nodes", "/v1/cluster/members"] {
        let (s, v) = h.send(h.http.get(format!("{}{path}", h.base))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(v["message"], "unauthorized: missing or wrong token");
        let (s, _) = h
            .send(h.http.get(format!("{}{path}", h.base)).bearer_auth("wrong"))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, _) = h.get("/v1/nodes").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn short_tokens_are_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = ServerConfig::new("/nonexistent", addr);
    cfg.token = Some("s3cret".into());
    let err = start(
        cfg,
        MemoryReplica::new(&addr.to_string()),
        Router::new(),
        Router::new(),
        listener,
    )
    .await
    .err()
    .expect("a 6-byte token is refused");
    let text = err.to_string();
    assert!(text.contains("token is too short: 6 bytes"), "{text}");
    assert_eq!(text.lines().count(), 1);
}

/// Enrolment, then the agent endpoints over mutual TLS: the certificate
/// must name the agent; the token alone is not enough.
#[tokio::test]
async fn agents_enrol_then_register_and_sync_with_their_certificate() {
    let h = harness(|c| c.token = Some(TOKEN.into())).await;
    let reg = |id: Option<&str>| RegisterAgentRequest {
        agent_id: id.map(String::from),
        hostname: "n1".into(),
        address: String::new(),
        resources: Resources::new(1.0, 64, 0),
        attributes: BTreeMap::new(),
        running: vec![],
    };
    // Token, no certificate: refused with 403 on the agent endpoints.
    let (s, v) = h.post("/v1/agents/register", &reg(Some("a1"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["message"], crate::api::agents::NEEDS_AGENT_CERT);
    let sync = AgentSyncRequest {
        agent_id: "a1".into(),
        updates: vec![],
        known_version: 0,
        wait_ms: 0,
    };
    let (s, _) = h.post("/v1/agents/sync", &sync).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Enrolment needs the token...
    let (key_pem, csr_pem) = berth_tls::agent_key_and_csr("new").unwrap();
    let enrol = berth_api::cluster_client::EnrolRequest {
        agent_id: None,
        csr_pem: csr_pem.clone(),
    };
    let (s, _) = h
        .send(
            h.http
                .post(format!("{}/v1/agents/enrol", h.base))
                .json(&enrol),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // ...and assigns an id when the agent has none.
    let r: berth_api::cluster_client::EnrolResponse =
        h.ok(h.post("/v1/agents/enrol", &enrol).await).await;
    assert!(r.agent_id.starts_with('a'), "{}", r.agent_id);
    let ca = berth_tls::ClusterCa::from_token(TOKEN).unwrap();
    let issued = ca.check_issued(&r.cert_pem).unwrap();
    assert_eq!(issued.common_name, format!("agent:{}", r.agent_id));
    let (s, v) = h
        .post(
            "/v1/agents/enrol",
            &berth_api::cluster_client::EnrolRequest {
                agent_id: Some("bad id".into()),
                csr_pem: csr_pem.clone(),
            },
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // With the certificate: register as itself (the id may be left out).
    let id = berth_tls::Identity {
        cert_pem: r.cert_pem,
        key_pem,
    };
    let agent = Harness {
        server: None,
        replica: h.replica.clone(),
        http: tls_http(Some(&id)),
        base: h.base.clone(),
        token: h.token.clone(),
    };
    let (s, v) = agent
        .post("/v1/agents/register", &reg(Some("someone-else")))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let got: RegisterAgentResponse = agent
        .ok(agent.post("/v1/agents/register", &reg(None)).await)
        .await;
    assert_eq!(got.agent_id, r.agent_id);
    let real_id = r.agent_id.clone();
    let resp = agent.sync(&r.agent_id, 0, 0, vec![]).await;
    assert!(!resp.reregister);
    let (s, _) = agent
        .post(
            "/v1/agents/sync",
            &AgentSyncRequest {
                agent_id: "a1".into(),
                ..sync.clone()
            },
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // A simulated-agent process: one certificate for every sim-* agent.
    let (key_pem, csr_pem) = berth_tls::agent_key_and_csr("sim").unwrap();
    let r: berth_api::cluster_client::EnrolResponse = h
        .ok(h
            .post(
                "/v1/agents/enrol",
                &berth_api::cluster_client::EnrolRequest {
                    agent_id: Some(berth_api::cluster_client::SIM_AGENT_WILDCARD.into()),
                    csr_pem,
                },
            )
            .await)
        .await;
    let sims = Harness {
        server: None,
        replica: h.replica.clone(),
        http: tls_http(Some(&berth_tls::Identity {
            cert_pem: r.cert_pem,
            key_pem,
        })),
        base: h.base.clone(),
        token: h.token.clone(),
    };
    for i in 0..3 {
        let got: RegisterAgentResponse = sims
            .ok(sims
                .post("/v1/agents/register", &reg(Some(&format!("sim-{i}"))))
                .await)
            .await;
        assert_eq!(got.agent_id, format!("sim-{i}"));
    }
    let (s, _) = sims.post("/v1/agents/register", &reg(Some(&real_id))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the wildcard is for sim-* only");
    assert_eq!(h.state().nodes.len(), 4);
}

#[tokio::test]
async fn followers_redirect_to_the_leader() {
    let h = harness(|_| {}).await;
    h.replica.set_leader(LeaderInfo {
        is_self: false,
        leader_id: Some(2),
        leader_address: Some("127.0.0.2:5050".into()),
        term: 2,
    });
    let resp = h
        .req(reqwest::Method::GET, "/v1/tasks?job=web")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        resp.headers()["location"],
        "http://127.0.0.2:5050/v1/tasks?job=web"
    );
    let (s, _) = h.post("/v1/agents/sync", &json!({"agent_id": "x"})).await;
    assert_eq!(s, StatusCode::TEMPORARY_REDIRECT);
    let (s, v) = h.get("/v1/cluster/members").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    h.replica.set_leader(LeaderInfo::default());
    let (s, v) = h.get("/v1/nodes").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["message"], "no leader elected yet");
    // The master stopped its leader loops; it starts them again when the
    // leadership comes back.
    let m = h.server.as_ref().unwrap().master().clone();
    let deadline = Instant::now() + WAIT;
    while m.is_leading() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.replica.set_leader(LeaderInfo {
        is_self: true,
        leader_id: Some(1),
        leader_address: Some(h.base.trim_start_matches("http://").into()),
        term: 3,
    });
    while !m.is_leading() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (s, _) = h.get("/v1/nodes").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn leadership_loss_closes_subscriptions() {
    let h = harness(|_| {}).await;
    let mut fw = h.subscribe(info("f", 0.0)).await;
    h.replica.set_leader(LeaderInfo::default());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, fw.events.recv()).await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(_) => panic!("stream still open"),
        }
    }
}

#[tokio::test]
async fn admin_jobs_nodes_frameworks_roles() {
    let h = harness(|_| {}).await;
    let bad = json!({"name": "Web!", "command": "true"});
    let (s, v) = h.post("/v1/jobs", &bad).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("name"), "{v}");
    let (s, v) = h
        .post(
            "/v1/jobs",
            &json!({"name": "web", "command": "true", "bogus": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    let job: JobView = h
        .ok(h
            .post(
                "/v1/jobs",
                &json!({"name": "web", "command": "true", "instances": 2}),
            )
            .await)
        .await;
    assert_eq!(job.status, "pending");
    h.server
        .as_ref()
        .unwrap()
        .master()
        .placement_notes()
        .lock()
        .unwrap()
        .insert("web".into(), "2 instances pending: no offers yet".into());

    // A framework runs one instance of it.
    let agent = h.register("n1", Resources::new(2.0, 1024, 0)).await;
    let mut fw = h.subscribe(info("batch", 0.0)).await;
    let offers = fw.offers().await;
    let mut t = task("web-0", &agent, Resources::new(0.1, 32, 0));
    t.labels.insert("job".into(), "web".into());
    t.labels.insert("instance".into(), "0".into());
    h.call_ok(&fw, launch(&offers[0], vec![t])).await;
    h.sync(
        &agent,
        0,
        0,
        vec![status("web-0", &agent, TaskState::Running, "r")],
    )
    .await;

    let (s, v) = h
        .post("/v1/jobs", &json!({"name": "web", "command": "true"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let job: JobView = h.ok(h.get("/v1/jobs/web").await).await;
    assert_eq!(job.status, "running");
    assert_eq!(job.tasks["RUNNING"], 1);
    assert_eq!(
        job.placement.as_deref(),
        Some("2 instances pending: no offers yet")
    );
    let jobs: Vec<JobView> = h.ok(h.get("/v1/jobs").await).await;
    assert_eq!(jobs.len(), 1);
    let (s, v) = h.get("/v1/jobs/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["message"], "job nope not found");

    let tasks: Vec<TaskView> = h.ok(h.get("/v1/tasks?job=web").await).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].job.as_deref(), Some("web"));
    assert_eq!(tasks[0].state, TaskState::Running);
    let (s, _) = h.get("/v1/tasks?job=nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let fws: Vec<FrameworkView> = h.ok(h.get("/v1/frameworks").await).await;
    assert_eq!(fws.len(), 1);
    assert!(fws[0].connected);
    assert_eq!(fws[0].tasks, 1);
    assert_eq!(fws[0].used, Resources::new(0.1, 32, 0));

    let nodes: Vec<NodeView> = h.ok(h.get("/v1/nodes").await).await;
    assert_eq!(nodes[0].tasks, 1);
    assert!(nodes[0].last_seen_ms_ago.unwrap() < 5000);
    let n: NodeView = h
        .ok(h
            .post(&format!("/v1/nodes/{agent}/drain"), &json!({}))
            .await)
        .await;
    assert_eq!(n.state, berth_types::NodeState::Draining);
    assert_eq!(h.sync(&agent, 0, 0, vec![]).await.kill, vec!["web-0"]);
    let n: NodeView = h
        .ok(h
            .post(&format!("/v1/nodes/{agent}/activate"), &json!({}))
            .await)
        .await;
    assert_eq!(n.state, berth_types::NodeState::Active);
    let (s, v) = h.post("/v1/nodes/ghost/drain", &json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["message"], "node ghost not found");

    let (s, v) = h
        .send(
            h.req(reqwest::Method::PUT, "/v1/roles/analytics")
                .json(&json!({"weight": 2.5})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(h.state().role_weights["analytics"], 2.5);
    let (s, _) = h
        .send(
            h.req(reqwest::Method::PUT, "/v1/roles/analytics")
                .json(&json!({"weight": -1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let job: JobView = h
        .ok(h.send(h.req(reqwest::Method::DELETE, "/v1/jobs/web")).await)
        .await;
    assert_eq!(job.status, "stopped");
    let (s, _) = h
        .send(h.req(reqwest::Method::DELETE, "/v1/jobs/nope"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let members: Vec<MemberView> = h.ok(h.get("/v1/cluster/members").await).await;
    assert_eq!(members.len(), 1);
}

async fn local_next(lf: &mut crate::master::LocalFramework) -> Event {
    loop {
        let e = tokio::time::timeout(WAIT, lf.events.recv())
            .await
            .unwrap()
            .unwrap();
        if !matches!(e, Event::Heartbeat {}) {
            return e;
        }
    }
}

#[tokio::test]
async fn local_frameworks_use_the_same_path() {
    let h = harness(|_| {}).await;
    let m = h.server.as_ref().unwrap().master().clone();
    let agent = h.register("n1", Resources::new(1.0, 512, 0)).await;
    let mut lf = m.subscribe_local(FrameworkInfo {
        id: Some("berth-batch".into()),
        ..info("batch", 3600.0)
    });
    assert!(
        matches!(local_next(&mut lf).await, Event::Subscribed { framework_id, .. } if framework_id == "berth-batch")
    );
    let Event::Offers { offers } = local_next(&mut lf).await else {
        panic!("expected offers")
    };
    lf.calls
        .send(CallEnvelope {
            framework_id: None,
            call: launch(
                &offers[0],
                vec![task("b1", &agent, Resources::new(0.5, 64, 0))],
            ),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while h.sync(&agent, 0, 0, vec![]).await.tasks.is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A bad call comes back as an ERROR event.
    lf.calls
        .send(CallEnvelope {
            framework_id: None,
            call: Call::Request {
                resources: Resources::ZERO,
                count: None,
            },
        })
        .await
        .unwrap();
    loop {
        if let Event::Error { message } = local_next(&mut lf).await {
            assert!(message.contains("REQUEST"), "{message}");
            break;
        }
    }
    let fws: Vec<FrameworkView> = h.ok(h.get("/v1/frameworks").await).await;
    assert_eq!(fws[0].id, "berth-batch");
    assert!(fws[0].connected);
}

#[tokio::test]
async fn many_agents_long_poll_and_are_woken_individually() {
    let h = harness(|_| {}).await;
    let n = 200;
    let mut agents = Vec::new();
    for i in 0..n {
        agents.push(
            h.register(&format!("n{i}"), Resources::new(1.0, 256, 0))
                .await,
        );
    }
    let mut versions = BTreeMap::new();
    for a in &agents {
        versions.insert(a.clone(), h.sync(a, 0, 0, vec![]).await.version);
    }
    let polls: Vec<_> = agents
        .iter()
        .map(|a| {
            let (http, base, a, v) = (h.http.clone(), h.base.clone(), a.clone(), versions[a]);
            tokio::spawn(async move {
                let t0 = Instant::now();
                let r: AgentSyncResponse = http
                    .post(format!("{base}/v1/agents/sync"))
                    .json(&json!({"agent_id": a, "known_version": v, "wait_ms": 3000}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (a, t0.elapsed(), r)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fw = h.subscribe(info("f", 0.0)).await;
    let mut launched = 0;
    let mut done = std::collections::BTreeSet::new();
    let target: std::collections::BTreeSet<String> = agents.iter().take(10).cloned().collect();
    while launched < target.len() {
        for o in fw.offers().await {
            if target.contains(&o.agent_id) && done.insert(o.agent_id.clone()) {
                h.call_ok(
                    &fw,
                    launch(
                        &o,
                        vec![task(
                            &format!("t-{}", o.agent_id),
                            &o.agent_id,
                            Resources::new(0.5, 1, 0),
                        )],
                    ),
                )
                .await;
                launched += 1;
            }
        }
    }
    for p in polls {
        let (a, took, r) = p.await.unwrap();
        if target.contains(&a) {
            assert_eq!(r.tasks.len(), 1, "{a}");
            assert!(
                took < Duration::from_millis(2900),
                "{a} woke after {took:?}"
            );
        } else {
            assert!(r.tasks.is_empty());
            assert!(
                took >= Duration::from_millis(2900),
                "{a} woke early after {took:?}"
            );
        }
    }
}

#[tokio::test]
async fn run_serves_over_raft_and_stops_on_shutdown() {
    let dir = std::env::temp_dir().join(format!("berth-run-{}", std::process::id()));
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = ServerConfig::new(&dir, addr);
    cfg.token = Some(TOKEN.into());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(crate::server::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let http = tls_http(None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (key_pem, csr_pem) = berth_tls::agent_key_and_csr("n1").unwrap();
    let enrolled: berth_api::cluster_client::EnrolResponse = loop {
        let r = http
            .post(format!("https://{addr}/v1/agents/enrol"))
            .bearer_auth(TOKEN)
            .json(&json!({"agent_id": "n1", "csr_pem": csr_pem}))
            .send()
            .await;
        if let Ok(r) = r {
            if r.status() == StatusCode::OK {
                break r.json().await.unwrap();
            }
        }
        assert!(Instant::now() < deadline, "the server never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(enrolled.agent_id, "n1");
    // The CA is written for curl and skopeo, and equals the derived one.
    let ca = berth_tls::ClusterCa::from_token(TOKEN).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        ca.cert_pem()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("certs.d/ca.crt")).unwrap(),
        ca.cert_pem()
    );
    // Raft's routes want a server certificate: the token is not enough.
    let r = http
        .post(format!("https://{addr}/raft/append"))
        .bearer_auth(TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let agent = tls_http(Some(&berth_tls::Identity {
        cert_pem: enrolled.cert_pem,
        key_pem,
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = agent
            .post(format!("https://{addr}/v1/agents/register"))
            .bearer_auth(TOKEN)
            .json(&json!({"agent_id": "n1", "hostname": "n1", "resources": {"cpus": 1, "mem": 64, "disk": 0}}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            break;
        }
        // 503 until the leader is elected.
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "the server never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A plain-HTTP client gets nothing: the server speaks TLS only.
    assert!(reqwest::Client::new()
        .get(format!("http://{addr}/v1/nodes"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .is_err());
    let nodes: Vec<NodeView> = http
        .get(format!("https://{addr}/v1/nodes"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(nodes.len(), 1);
    // The registry is served too, with its own auth.
    let r = http
        .get(format!("https://{addr}/v2/"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("run did not stop")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn local_transport_subscribes_on_its_own_call_and_ends_when_refused() {
    let h = harness(|_| {}).await;
    let m = h.server.as_ref().unwrap().master().clone();
    let mut lf = m.connect_local();
    lf.calls
        .send(CallEnvelope {
            framework_id: None,
            call: Call::Revive {},
        })
        .await
        .unwrap();
    assert!(
        matches!(local_next(&mut lf).await, Event::Error { message } if message.contains("SUBSCRIBE first"))
    );
    let sub = CallEnvelope {
        framework_id: Some("berth-batch".into()),
        call: Call::Subscribe {
            framework_info: FrameworkInfo {
                id: Some("berth-batch".into()),
                ..info("batch", 60.0)
            },
        },
    };
    lf.calls.send(sub.clone()).await.unwrap();
    assert!(
        matches!(local_next(&mut lf).await, Event::Subscribed { framework_id, .. } if framework_id == "berth-batch")
    );
    // The same SUBSCRIBE again is harmless.
    lf.calls.send(sub.clone()).await.unwrap();
    lf.calls
        .send(CallEnvelope {
            framework_id: None,
            call: Call::Reconcile { tasks: vec![] },
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(e) = lf.events.try_recv() {
        assert!(!matches!(e, Event::Error { .. }), "{e:?}");
    }

    // On a server that does not lead, SUBSCRIBE is refused and the events end.
    h.replica.set_leader(LeaderInfo::default());
    let deadline = Instant::now() + WAIT;
    while m.is_leading() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut lf = m.subscribe_local(info("batch", 0.0));
    assert!(matches!(local_next(&mut lf).await, Event::Error { .. }));
    assert!(tokio::time::timeout(WAIT, lf.events.recv())
        .await
        .unwrap()
        .is_none());
}
