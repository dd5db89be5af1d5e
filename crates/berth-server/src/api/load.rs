//! Load test, run by hand (it prints a table rather than asserting a
//! speed):
//!
//! ```text
//! cargo test --release -p berth-server --lib api::load -- --ignored --nocapture
//! BERTH_LOAD_AGENTS=5000 BERTH_LOAD_TASKS=20000 BERTH_LOAD_RAFT=1 ...
//! ```
//!
//! Simulated agents long-poll `/v1/agents/sync` over HTTP and report every
//! task they are given RUNNING at once; an in-process framework asks for
//! the tasks with REQUEST, launches them on every offer and acknowledges
//! every update. The figure is tasks RUNNING per second through the log.

use crate::master::LocalFramework;
use crate::raft::{RaftConfig, RaftReplica};
use crate::replica::{MemoryReplica, Replica};
use crate::server::{start, ServerConfig};
use axum::Router;
use berth_api::cluster::*;
use berth_types::{Resources, TaskKind, TaskState};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Dir(std::path::PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "load test; run by hand with --release --ignored --nocapture"]
async fn agents_run_tasks() {
    let n_agents = env("BERTH_LOAD_AGENTS", 5000) as usize;
    let n_tasks = env("BERTH_LOAD_TASKS", 20_000);
    let use_raft = env("BERTH_LOAD_RAFT", 0) == 1;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = Dir(std::env::temp_dir().join(format!("berth-load-{}", std::process::id())));
    let (replica, extra, raft): (Arc<dyn Replica>, Router, Option<Arc<RaftReplica>>) = if use_raft {
        let raft = RaftReplica::start(RaftConfig::new(dir.0.join("raft"), addr.to_string()))
            .await
            .unwrap();
        (raft.clone(), raft.routes(), Some(raft))
    } else {
        (MemoryReplica::new(&addr.to_string()), Router::new(), None)
    };
    let mut cfg = ServerConfig::new(&dir.0, addr);
    cfg.agent_timeout = Duration::from_secs(60);
    let server = start(cfg, replica.clone(), extra, Router::new(), listener)
        .await
        .unwrap();
    let master = server.master().clone();
    let t0 = Instant::now();
    while !master.is_leading() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(n_agents + 10)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let base = format!("http://{addr}");
    let t_reg = Instant::now();
    let mut ids = Vec::with_capacity(n_agents);
    for chunk in (0..n_agents).collect::<Vec<_>>().chunks(200) {
        let regs = chunk.iter().map(|i| {
            let req = RegisterAgentRequest {
                agent_id: Some(format!("agent-{i}")),
                hostname: format!("host-{i}"),
                address: String::new(),
                resources: Resources::new(4.0, 8192, 0),
                attributes: BTreeMap::new(),
                running: vec![],
            };
            let (http, base) = (http.clone(), base.clone());
            async move {
                let r: RegisterAgentResponse = http
                    .post(format!("{base}/v1/agents/register"))
                    .json(&req)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                r.agent_id
            }
        });
        ids.extend(futures_util::future::join_all(regs).await);
    }
    let reg_time = t_reg.elapsed();

    let stop = Arc::new(AtomicBool::new(false));
    let syncs = Arc::new(AtomicU64::new(0));
    let mut agent_tasks = Vec::new();
    for id in ids {
        let (http, base, stop, syncs) = (http.clone(), base.clone(), stop.clone(), syncs.clone());
        agent_tasks.push(tokio::spawn(async move {
            let mut known = 0;
            let mut seen: HashSet<String> = HashSet::new();
            let mut pending: Vec<TaskStatus> = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let req = AgentSyncRequest {
                    agent_id: id.clone(),
                    updates: pending.clone(),
                    known_version: known,
                    wait_ms: 2000,
                };
                let resp = match http
                    .post(format!("{base}/v1/agents/sync"))
                    .json(&req)
                    .send()
                    .await
                {
                    Ok(r) => r,
                    Err(_) => break,
                };
                let Ok(r) = resp.json::<AgentSyncResponse>().await else {
                    break;
                };
                syncs.fetch_add(1, Ordering::Relaxed);
                let acked: HashSet<&String> = r.acknowledged.iter().collect();
                pending.retain(|u| !acked.contains(&u.uuid));
                known = r.version;
                for t in r.tasks {
                    if seen.insert(t.task_id.clone()) {
                        n += 1;
                        pending.push(TaskStatus {
                            task_id: t.task_id,
                            agent_id: id.clone(),
                            state: TaskState::Running,
                            message: None,
                            reason: None,
                            exit_code: None,
                            uuid: format!("{id}-{n}"),
                            timestamp_ms: 0,
                        });
                    }
                }
            }
        }));
    }

    let t_run = Instant::now();
    let LocalFramework { calls, mut events } = master.subscribe_local(FrameworkInfo {
        name: "load".into(),
        role: "*".into(),
        id: Some("load".into()),
        failover_timeout_secs: 60.0,
    });
    let per_task = Resources::new(0.1, 32, 0);
    let send = |call: Call| {
        let calls = calls.clone();
        async move {
            calls
                .send(CallEnvelope {
                    framework_id: None,
                    call,
                })
                .await
                .unwrap()
        }
    };
    send(Call::Request {
        resources: per_task,
        count: Some(n_tasks),
    })
    .await;
    let (mut launched, mut running, mut first_running) = (0u64, 0u64, None);
    let mut errors = 0;
    let mut offer_events: Vec<(Duration, usize)> = Vec::new();
    while running < n_tasks {
        let e = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("no event for 60 s")
            .expect("stream ended");
        match e {
            Event::Offers { offers } => {
                offer_events.push((t_run.elapsed(), offers.len()));
                let mut infos = Vec::new();
                let mut ids = Vec::new();
                for o in offers {
                    let mut left = o.resources;
                    while launched < n_tasks && left.contains(&per_task) {
                        left = left.saturating_sub(&per_task);
                        infos.push(TaskInfo {
                            task_id: format!("t{launched}"),
                            name: "t".into(),
                            agent_id: o.agent_id.clone(),
                            resources: per_task,
                            kind: TaskKind::Command {
                                shell: "true".into(),
                            },
                            env: BTreeMap::new(),
                            labels: BTreeMap::new(),
                        });
                        launched += 1;
                    }
                    ids.push(o.id);
                }
                send(Call::Accept {
                    offer_ids: ids,
                    operations: vec![Operation::Launch { task_infos: infos }],
                    filters: None,
                })
                .await;
                send(if launched < n_tasks {
                    Call::Request {
                        resources: per_task,
                        count: Some(n_tasks - launched),
                    }
                } else {
                    Call::Suppress {}
                })
                .await;
            }
            Event::Update { status } => {
                if status.state == TaskState::Running {
                    running += 1;
                    first_running.get_or_insert_with(|| t_run.elapsed());
                }
                send(Call::Acknowledge {
                    agent_id: status.agent_id,
                    task_id: status.task_id,
                    uuid: status.uuid,
                })
                .await;
            }
            Event::Error { .. } => errors += 1,
            _ => {}
        }
    }
    let run_time = t_run.elapsed();
    stop.store(true, Ordering::Relaxed);
    let applied = *replica.watch_applied().borrow();
    println!();
    println!(
        "replica             {}",
        if use_raft {
            "raft (1 server, fsync)"
        } else {
            "memory"
        }
    );
    println!("agents              {n_agents}");
    println!("tasks               {n_tasks}");
    println!(
        "registration        {:.2} s ({:.0} agents/s)",
        reg_time.as_secs_f64(),
        n_agents as f64 / reg_time.as_secs_f64()
    );
    println!(
        "all RUNNING after   {:.2} s (first after {:?})",
        run_time.as_secs_f64(),
        first_running.unwrap_or_default()
    );
    println!(
        "tasks RUNNING / s   {:.0}",
        n_tasks as f64 / run_time.as_secs_f64()
    );
    println!("log entries         {applied}");
    println!("agent syncs         {}", syncs.load(Ordering::Relaxed));
    println!("error events        {errors}");
    let shown: Vec<String> = offer_events
        .iter()
        .take(5)
        .map(|(t, n)| format!("{n} at {:.0} ms", t.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "offer events        {} ({} ...)",
        offer_events.len(),
        shown.join(", ")
    );
    assert_eq!(errors, 0);
    drop(calls);
    drop(events);
    master.shutdown();
    for t in agent_tasks {
        t.abort();
    }
    let _ = server.shutdown().await;
    if let Some(r) = raft {
        r.shutdown().await;
    }
}
