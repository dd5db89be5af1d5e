//! Scripted events against the pure core: every test is a sequence of
//! events and job snapshots at chosen times, and checks the calls.

use super::*;
use crate::BATCH_FRAMEWORK_ID;
use berth_types::{Constraint, TaskKind};

const T0: u64 = 1_000_000;
/// After the reconciliation grace.
const T1: u64 = T0 + RECONCILE_GRACE_MS;

fn ids() -> IdGen {
    let mut n = 0u32;
    Box::new(move || {
        n += 1;
        format!("r{n}")
    })
}

fn spec(name: &str, instances: u32) -> JobSpec {
    JobSpec {
        name: name.into(),
        role: "*".into(),
        instances,
        command: Some("sleep 1".into()),
        image: None,
        args: vec![],
        cpus: 1.0,
        mem: 100,
        disk: 0,
        env: BTreeMap::from([("A".to_string(), "1".to_string())]),
        constraints: vec![],
        max_retries: 0,
    }
}

fn entry(spec: JobSpec, submitted_ms: u64) -> JobEntry {
    JobEntry {
        spec,
        stopped: false,
        submitted_ms,
    }
}

fn attrs(s: &str) -> Attributes {
    berth_types::parse_attributes(s).unwrap()
}

fn node(host: &str, a: &str, cpus: f64, mem: u64) -> NodeFit {
    NodeFit {
        hostname: host.into(),
        attributes: attrs(a),
        free: Resources::new(cpus, mem, 1000),
        active: true,
    }
}

fn offer(id: &str, host: &str, a: &str, cpus: f64, mem: u64) -> Offer {
    Offer {
        id: id.into(),
        framework_id: BATCH_FRAMEWORK_ID.into(),
        agent_id: format!("agent-{host}"),
        hostname: host.into(),
        resources: Resources::new(cpus, mem, 1000),
        attributes: attrs(a),
    }
}

fn offers(list: Vec<Offer>) -> Event {
    Event::Offers { offers: list }
}

fn update(task_id: &str, state: TaskState, reason: Option<&str>, uuid: &str) -> Event {
    Event::Update {
        status: TaskStatus {
            task_id: task_id.into(),
            agent_id: "agent-h1".into(),
            state,
            message: None,
            reason: reason.map(String::from),
            exit_code: None,
            uuid: uuid.into(),
            timestamp_ms: 0,
        },
    }
}

fn subscribed() -> Event {
    Event::Subscribed {
        framework_id: BATCH_FRAMEWORK_ID.into(),
        heartbeat_interval_seconds: 15.0,
    }
}

/// A subscribed framework that has seen `jobs` once.
fn started(jobs: Vec<JobEntry>, nodes: &[NodeFit]) -> Batch {
    let mut b = Batch::new(ids());
    b.on_event(subscribed(), T0);
    b.on_jobs(jobs, nodes, T0);
    b
}

fn kinds(calls: &[CallEnvelope]) -> Vec<&'static str> {
    calls
        .iter()
        .map(|c| match &c.call {
            Call::Subscribe { .. } => "SUBSCRIBE",
            Call::Accept { .. } => "ACCEPT",
            Call::Decline { .. } => "DECLINE",
            Call::Request { .. } => "REQUEST",
            Call::Revive {} => "REVIVE",
            Call::Suppress {} => "SUPPRESS",
            Call::Kill { .. } => "KILL",
            Call::Acknowledge { .. } => "ACKNOWLEDGE",
            Call::Reconcile { .. } => "RECONCILE",
            Call::Teardown {} => "TEARDOWN",
        })
        .collect()
}

/// Tasks launched by the calls, with the host of the offer that carried
/// them (offers are made by `offer`, whose agent is `agent-<host>`).
fn launched(calls: &[CallEnvelope]) -> Vec<(String, TaskInfo)> {
    let mut out = Vec::new();
    for c in calls {
        if let Call::Accept { operations, .. } = &c.call {
            for Operation::Launch { task_infos } in operations {
                for t in task_infos {
                    let host = t.agent_id.strip_prefix("agent-").unwrap_or(&t.agent_id);
                    out.push((host.to_string(), t.clone()));
                }
            }
        }
    }
    out
}

fn declined(calls: &[CallEnvelope]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match &c.call {
            Call::Decline { offer_ids, .. } => Some(offer_ids.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn requests(calls: &[CallEnvelope]) -> Vec<(Resources, Option<u64>)> {
    calls
        .iter()
        .filter_map(|c| match &c.call {
            Call::Request { resources, count } => Some((*resources, *count)),
            _ => None,
        })
        .collect()
}

#[test]
fn subscribe_call_shape() {
    let b = Batch::new(ids());
    let v = serde_json_value(&b.subscribe_call());
    assert_eq!(v["type"], "SUBSCRIBE");
    assert_eq!(v["framework_id"], BATCH_FRAMEWORK_ID);
    assert_eq!(v["framework_info"]["id"], BATCH_FRAMEWORK_ID);
    assert_eq!(v["framework_info"]["name"], "batch");
    assert!(
        v["framework_info"]["failover_timeout_secs"]
            .as_f64()
            .unwrap()
            >= 86400.0
    );
}

fn serde_json_value(c: &CallEnvelope) -> serde_json::Value {
    serde_json::to_value(c).unwrap()
}

#[test]
fn subscribed_reconciles_implicitly_then_requests() {
    let mut b = Batch::new(ids());
    let calls = b.on_event(subscribed(), T0);
    assert_eq!(kinds(&calls), ["RECONCILE"]);
    assert!(matches!(&calls[0].call, Call::Reconcile { tasks } if tasks.is_empty()));
    assert_eq!(calls[0].framework_id.as_deref(), Some(BATCH_FRAMEWORK_ID));
    let calls = b.on_jobs(vec![entry(spec("a", 3), 1)], &[], T0);
    assert_eq!(kinds(&calls), ["REQUEST", "REVIVE"]);
    assert_eq!(requests(&calls), [(Resources::new(1.0, 100, 0), Some(3))]);
}

#[test]
fn launches_instances_across_offers() {
    let mut b = started(vec![entry(spec("etl", 5), 1)], &[]);
    let calls = b.on_event(
        offers(vec![
            offer("o1", "h1", "", 2.0, 1000),
            offer("o2", "h2", "", 2.5, 1000),
            offer("o3", "h3", "", 4.0, 150),
            offer("o4", "h4", "", 0.5, 1000),
        ]),
        T1,
    );
    let tasks = launched(&calls);
    assert_eq!(tasks.len(), 5, "{calls:?}");
    let per_host = |h: &str| tasks.iter().filter(|(host, _)| host == h).count();
    assert_eq!((per_host("h1"), per_host("h2"), per_host("h3")), (2, 2, 1));
    assert_eq!(declined(&calls), ["o4"]);
    // One ACCEPT (one replicated write) for the offers of three agents.
    assert_eq!(kinds(&calls), ["ACCEPT", "DECLINE", "SUPPRESS"]);
    for c in &calls {
        match &c.call {
            Call::Accept {
                offer_ids,
                operations,
                filters,
            } => {
                assert_eq!(offer_ids, &["o1", "o2", "o3"]);
                assert_eq!(operations.len(), 1);
                assert_eq!(filters.unwrap().refuse_seconds, ACCEPT_REFUSE_SECONDS);
            }
            Call::Decline { filters, .. } => {
                assert_eq!(filters.unwrap().refuse_seconds, DECLINE_REFUSE_SECONDS)
            }
            _ => {}
        }
    }
    let mut instances: Vec<String> = tasks
        .iter()
        .map(|(_, t)| t.labels["instance"].clone())
        .collect();
    instances.sort();
    assert_eq!(instances, ["0", "1", "2", "3", "4"]);
    let (_, t) = &tasks[0];
    assert_eq!(t.task_id, "etl.0.0.r1");
    assert_eq!(t.name, "etl.0");
    assert_eq!(t.agent_id, "agent-h1");
    assert_eq!(t.labels["job"], "etl");
    assert_eq!(t.env["A"], "1");
    assert_eq!(t.resources, Resources::new(1.0, 100, 0));
    assert_eq!(
        t.kind,
        TaskKind::Command {
            shell: "sleep 1".into()
        }
    );
    assert_eq!(b.pending("etl"), 0);
    assert_eq!(b.live_tasks().len(), 5);
}

#[test]
fn respects_unique_and_equal_constraints() {
    let mut s = spec("web", 3);
    s.constraints = vec![
        Constraint::Unique {
            attribute: "hostname".into(),
        },
        Constraint::Equal {
            attribute: "rack".into(),
            value: "1".into(),
        },
    ];
    let nodes = [
        node("h1", "rack:1", 8.0, 4000),
        node("h2", "rack:1", 8.0, 4000),
        node("h3", "rack:2", 8.0, 4000),
    ];
    let mut b = started(vec![entry(s.clone(), 1)], &nodes);
    let calls = b.on_event(
        offers(vec![
            offer("o1", "h1", "rack:1", 8.0, 4000),
            offer("o2", "h2", "rack:1", 8.0, 4000),
            offer("o3", "h3", "rack:2", 8.0, 4000),
        ]),
        T1,
    );
    let tasks = launched(&calls);
    let hosts: Vec<&str> = tasks.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(hosts, ["h1", "h2"]);
    assert_eq!(declined(&calls), ["o3"]);
    assert_eq!(b.pending("web"), 1);

    // The live tasks on h1 and h2 count: a new offer from h1 is not used.
    let calls = b.on_event(
        offers(vec![offer("o4", "h1", "rack:1", 8.0, 4000)]),
        T1 + 10,
    );
    assert!(launched(&calls).is_empty());
    assert_eq!(declined(&calls), ["o4"]);
    b.on_jobs(vec![entry(s, 1)], &nodes, T1 + 20);
    let note = &b.placement_notes()["web"];
    assert!(note.starts_with("1 instance pending"), "{note}");
    assert!(note.contains("rack==1"), "{note}");
    assert!(note.contains("unique hostname"), "{note}");
}

#[test]
fn finished_instance_is_not_relaunched() {
    let mut b = started(vec![entry(spec("a", 1), 1)], &[]);
    let calls = b.on_event(offers(vec![offer("o1", "h1", "", 4.0, 1000)]), T1);
    let (_, t) = launched(&calls).remove(0);
    let calls = b.on_event(update(&t.task_id, TaskState::Running, None, "u1"), T1 + 1);
    assert_eq!(kinds(&calls), ["ACKNOWLEDGE"]);
    assert!(matches!(&calls[0].call,
        Call::Acknowledge { agent_id, task_id, uuid }
            if agent_id == "agent-h1" && task_id == &t.task_id && uuid == "u1"));
    let calls = b.on_event(update(&t.task_id, TaskState::Finished, None, "u2"), T1 + 2);
    assert_eq!(kinds(&calls), ["ACKNOWLEDGE"]);
    assert_eq!(b.pending("a"), 0);
    // A resent FINISHED changes nothing and is acknowledged again.
    let calls = b.on_event(update(&t.task_id, TaskState::Finished, None, "u2"), T1 + 3);
    assert_eq!(kinds(&calls), ["ACKNOWLEDGE"]);
    let calls = b.on_event(offers(vec![offer("o2", "h1", "", 4.0, 1000)]), T1 + 4);
    assert!(launched(&calls).is_empty());
    assert_eq!(declined(&calls), ["o2"]);
}

#[test]
fn lost_is_relaunched_with_a_new_attempt() {
    let mut b = started(vec![entry(spec("a", 1), 1)], &[]);
    let calls = b.on_event(offers(vec![offer("o1", "h1", "", 4.0, 1000)]), T1);
    let (_, t) = launched(&calls).remove(0);
    assert_eq!(t.task_id, "a.0.0.r1");
    let calls = b.on_event(
        update(&t.task_id, TaskState::Lost, Some("agent_lost"), "u1"),
        T1 + 1,
    );
    assert_eq!(kinds(&calls), ["ACKNOWLEDGE", "REQUEST", "REVIVE"]);
    assert_eq!(b.pending("a"), 1);
    let calls = b.on_event(offers(vec![offer("o2", "h2", "", 4.0, 1000)]), T1 + 2);
    let (_, t2) = launched(&calls).remove(0);
    assert_eq!(t2.task_id, "a.0.1.r2");
    assert_eq!(t2.name, "a.0");
}

#[test]
fn failed_is_retried_max_retries_times() {
    let mut s = spec("a", 1);
    s.max_retries = 2;
    let mut b = started(vec![entry(s, 1)], &[]);
    let mut now = T1;
    for attempt in 0..3 {
        let calls = b.on_event(offers(vec![offer("o", "h1", "", 4.0, 1000)]), now);
        let tasks = launched(&calls);
        assert_eq!(tasks.len(), 1, "attempt {attempt}: {calls:?}");
        assert!(tasks[0].1.task_id.starts_with(&format!("a.0.{attempt}.")));
        now += 1;
        b.on_event(
            update(&tasks[0].1.task_id, TaskState::Failed, Some("exit"), "u"),
            now,
        );
        now += 1;
    }
    assert_eq!(b.pending("a"), 0);
    let calls = b.on_event(offers(vec![offer("o", "h1", "", 4.0, 1000)]), now);
    assert!(launched(&calls).is_empty());
}

#[test]
fn killed_by_drain_is_relaunched_but_user_kill_is_not() {
    let mut b = started(vec![entry(spec("a", 2), 1)], &[]);
    let calls = b.on_event(offers(vec![offer("o1", "h1", "", 4.0, 1000)]), T1);
    let tasks = launched(&calls);
    assert_eq!(tasks.len(), 2);
    for reason in ["drained", "agent_restarted"] {
        let live = b
            .live_tasks()
            .into_iter()
            .find(|id| id.starts_with("a.0."))
            .unwrap();
        b.on_event(update(&live, TaskState::Killed, Some(reason), "u"), T1 + 1);
        assert_eq!(b.pending("a"), 1, "{reason}");
        let calls = b.on_event(offers(vec![offer("o2", "h2", "", 4.0, 1000)]), T1 + 2);
        assert_eq!(launched(&calls).len(), 1, "{reason}");
    }
    b.on_event(
        update(
            &tasks[1].1.task_id,
            TaskState::Killed,
            Some("killed_by_user"),
            "u",
        ),
        T1 + 3,
    );
    assert_eq!(b.pending("a"), 0);
}

#[test]
fn request_suppress_revive_transitions() {
    let mut b = started(
        vec![entry(spec("old", 2), 1), {
            let mut s = spec("new", 1);
            s.mem = 300;
            entry(s, 2)
        }],
        &[],
    );
    // Started: REQUEST for the oldest job was sent; the same demand is not resent.
    let calls = b.on_jobs(
        vec![entry(spec("old", 2), 1), {
            let mut s = spec("new", 1);
            s.mem = 300;
            entry(s, 2)
        }],
        &[],
        T0 + 250,
    );
    assert!(calls.is_empty(), "{calls:?}");
    // One instance of `old` placed: its count changes.
    let calls = b.on_event(offers(vec![offer("o1", "h1", "", 1.0, 1000)]), T1);
    assert_eq!(launched(&calls).len(), 1);
    assert_eq!(requests(&calls), [(Resources::new(1.0, 100, 0), Some(1))]);
    // `old` done placing: the request moves to `new`.
    let calls = b.on_event(offers(vec![offer("o2", "h2", "", 1.0, 1000)]), T1 + 1);
    assert_eq!(launched(&calls).len(), 1);
    assert_eq!(requests(&calls), [(Resources::new(1.0, 300, 0), Some(1))]);
    // Everything placed: SUPPRESS, once.
    let calls = b.on_event(offers(vec![offer("o3", "h3", "", 1.0, 1000)]), T1 + 2);
    assert_eq!(kinds(&calls), ["ACCEPT", "SUPPRESS"]);
    let calls = b.on_jobs(b_jobs(), &[], T1 + 3);
    assert!(calls.is_empty(), "{calls:?}");
    // Something pending again: REQUEST, then REVIVE.
    let live = b.live_tasks();
    let calls = b.on_event(update(&live[0], TaskState::Lost, None, ""), T1 + 4);
    assert_eq!(kinds(&calls), ["REQUEST", "REVIVE"]);
}

fn b_jobs() -> Vec<JobEntry> {
    let mut s = spec("new", 1);
    s.mem = 300;
    vec![entry(spec("old", 2), 1), entry(s, 2)]
}

#[test]
fn fresh_instance_after_failover_does_not_double_launch() {
    let jobs = vec![entry(spec("a", 2), 1)];
    let mut first = started(jobs.clone(), &[]);
    let calls = first.on_event(offers(vec![offer("o1", "h1", "", 4.0, 1000)]), T1);
    let tasks = launched(&calls);
    assert_eq!(tasks.len(), 2);

    // The new leader's instance knows nothing until reconciliation answers.
    let mut b = Batch::new(ids());
    let t = T1 + 10_000;
    let calls = b.on_event(subscribed(), t);
    assert_eq!(kinds(&calls), ["RECONCILE"]);
    b.on_jobs(jobs.clone(), &[], t);
    // Offers inside the grace period are declined, not used.
    let calls = b.on_event(offers(vec![offer("o2", "h1", "", 4.0, 1000)]), t + 10);
    assert!(launched(&calls).is_empty());
    assert_eq!(declined(&calls), ["o2"]);
    // Reconciliation answers: updates without uuid, not acknowledged.
    let mut calls = Vec::new();
    for (_, info) in &tasks {
        calls.extend(b.on_event(update(&info.task_id, TaskState::Running, None, ""), t + 20));
    }
    // The request shrinks, then nothing is pending: SUPPRESS; updates
    // without uuid are not acknowledged.
    assert_eq!(kinds(&calls), ["REQUEST", "SUPPRESS"]);
    assert_eq!(b.pending("a"), 0);
    assert!(b.on_jobs(jobs, &[], t + 30).is_empty());
    let calls = b.on_event(
        offers(vec![offer("o3", "h2", "", 4.0, 1000)]),
        t + RECONCILE_GRACE_MS + 100,
    );
    assert!(launched(&calls).is_empty());
    // A relaunch after failover takes the next attempt number.
    b.on_event(
        update(&tasks[0].1.task_id, TaskState::Lost, None, "u"),
        t + RECONCILE_GRACE_MS + 200,
    );
    let calls = b.on_event(
        offers(vec![offer("o4", "h2", "", 4.0, 1000)]),
        t + RECONCILE_GRACE_MS + 300,
    );
    let relaunched = launched(&calls);
    assert_eq!(relaunched.len(), 1);
    assert!(
        relaunched[0].1.task_id.starts_with("a.0.1."),
        "{relaunched:?}"
    );
}

#[test]
fn resubscription_reconciles_known_tasks_explicitly() {
    let mut b = started(vec![entry(spec("a", 1), 1)], &[]);
    let calls = b.on_event(offers(vec![offer("o1", "h1", "", 4.0, 1000)]), T1);
    let (_, t) = launched(&calls).remove(0);
    let calls = b.on_event(subscribed(), T1 + 5_000);
    assert_eq!(kinds(&calls), ["RECONCILE", "RECONCILE", "SUPPRESS"]);
    match &calls[1].call {
        Call::Reconcile { tasks } => {
            assert_eq!(tasks.len(), 1);
            assert_eq!(tasks[0].task_id, t.task_id);
            assert_eq!(tasks[0].agent_id.as_deref(), Some("agent-h1"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn silent_launch_is_reconciled() {
    let jobs = vec![entry(spec("a", 1), 1)];
    let mut b = started(jobs.clone(), &[]);
    let calls = b.on_event(offers(vec![offer("o1", "h1", "", 4.0, 1000)]), T1);
    let (_, t) = launched(&calls).remove(0);
    assert!(b.on_jobs(jobs.clone(), &[], T1 + 1_000).is_empty());
    let calls = b.on_jobs(jobs.clone(), &[], T1 + RECONCILE_AFTER_MS);
    assert_eq!(kinds(&calls), ["RECONCILE"]);
    assert!(matches!(&calls[0].call, Call::Reconcile { tasks } if tasks[0].task_id == t.task_id));
    assert!(b
        .on_jobs(jobs.clone(), &[], T1 + RECONCILE_AFTER_MS + 250)
        .is_empty());
    // The server does not know it: LOST, and it is launched again.
    let calls = b.on_event(
        update(&t.task_id, TaskState::Lost, Some("reconciliation"), ""),
        T1 + RECONCILE_AFTER_MS + 300,
    );
    assert_eq!(kinds(&calls), ["REQUEST", "REVIVE"]);
}

#[test]
fn stopped_job_kills_its_live_tasks() {
    let mut jobs = vec![entry(spec("a", 2), 1)];
    let mut b = started(jobs.clone(), &[]);
    let calls = b.on_event(offers(vec![offer("o1", "h1", "", 4.0, 1000)]), T1);
    assert_eq!(launched(&calls).len(), 2);
    for id in b.live_tasks() {
        b.on_event(update(&id, TaskState::Running, None, "u"), T1);
    }
    jobs[0].stopped = true;
    let calls = b.on_jobs(jobs.clone(), &[], T1 + 1);
    assert_eq!(kinds(&calls), ["KILL", "KILL"]);
    assert!(calls.iter().all(|c| matches!(&c.call,
        Call::Kill { agent_id: Some(a), .. } if a == "agent-h1")));
    assert!(b.on_jobs(jobs.clone(), &[], T1 + 250).is_empty());
    let calls = b.on_jobs(jobs.clone(), &[], T1 + 1 + KILL_RESEND_MS);
    assert_eq!(kinds(&calls), ["KILL", "KILL"]);
    for id in b.live_tasks() {
        b.on_event(
            update(&id, TaskState::Killed, Some("killed_by_user"), "u"),
            T1 + 2 + KILL_RESEND_MS,
        );
    }
    assert!(b.live_tasks().is_empty());
    assert!(b.on_jobs(jobs, &[], T1 + 3 + 2 * KILL_RESEND_MS).is_empty());
    assert!(b.placement_notes().is_empty());
}

#[test]
fn notes_say_why_offers_do_not_fit() {
    let mut s = spec("big", 2);
    s.mem = 2000;
    let jobs = vec![entry(s, 1)];
    let nodes = [node("h1", "", 4.0, 1000), node("h2", "", 4.0, 500)];
    let mut b = started(jobs.clone(), &nodes);
    assert!(b.placement_notes().is_empty());
    let calls = b.on_event(
        offers(vec![
            offer("o1", "h1", "", 4.0, 1000),
            offer("o2", "h2", "", 4.0, 500),
        ]),
        T1,
    );
    assert_eq!(declined(&calls), ["o1", "o2"]);
    let notes = b.placement_notes();
    let note = &notes["big"];
    assert!(note.starts_with("2 instances pending"), "{note}");
    assert!(note.contains("mem short on 2 nodes"), "{note}");
    // Nothing pending any more: the note goes.
    let mut stopped = jobs;
    stopped[0].stopped = true;
    b.on_jobs(stopped, &nodes, T1 + 250);
    assert!(b.placement_notes().is_empty());
}

#[test]
fn notes_appear_when_no_offers_come() {
    let jobs = vec![entry(spec("a", 1), 1)];
    let mut b = started(jobs.clone(), &[]);
    b.on_jobs(jobs.clone(), &[], T0 + NOTE_AFTER_MS - 1);
    assert!(b.placement_notes().is_empty());
    b.on_jobs(jobs.clone(), &[], T0 + NOTE_AFTER_MS);
    let note = &b.placement_notes()["a"];
    assert!(note.contains("no active nodes"), "{note}");
    // Placed: no note.
    b.on_event(
        offers(vec![offer("o1", "h1", "", 4.0, 1000)]),
        T0 + NOTE_AFTER_MS + 1,
    );
    assert!(b.placement_notes().is_empty());
}

#[test]
fn restore_from_history_knows_finished_and_failed_instances() {
    let mut s = spec("a", 4);
    s.max_retries = 1;
    let jobs = vec![entry(s, 100)];
    let known = |id: &str, state, launched_ms| KnownTask {
        task_id: id.into(),
        agent_id: "agent-h1".into(),
        hostname: "h1".into(),
        state,
        reason: None,
        launched_ms,
    };
    let mut b = Batch::new(ids());
    b.restore(
        &jobs,
        vec![
            known("a.0.0.x", TaskState::Finished, 200),
            // Failed twice with one retry allowed: failed for good.
            known("a.1.1.y", TaskState::Failed, 300),
            known("a.1.0.x", TaskState::Failed, 200),
            known("a.2.0.x", TaskState::Running, 200),
            // From an earlier job of the same name: ignored.
            known("a.3.0.old", TaskState::Finished, 50),
        ],
        T0,
    );
    assert_eq!(b.pending("a"), 1);
    b.on_event(subscribed(), T0);
    b.on_jobs(jobs, &[], T0);
    let calls = b.on_event(offers(vec![offer("o1", "h1", "", 8.0, 4000)]), T1);
    let tasks = launched(&calls);
    assert_eq!(tasks.len(), 1);
    assert!(tasks[0].1.task_id.starts_with("a.3.0."), "{tasks:?}");
}

#[test]
fn offers_before_jobs_are_known_are_declined() {
    let mut b = Batch::new(ids());
    b.on_event(subscribed(), T0);
    let calls = b.on_event(offers(vec![offer("o1", "h1", "", 4.0, 1000)]), T1);
    assert_eq!(kinds(&calls), ["DECLINE"]);
}

#[test]
fn foreign_task_ids_are_acknowledged_and_ignored() {
    let mut b = started(vec![entry(spec("a", 1), 1)], &[]);
    let calls = b.on_event(update("not-ours", TaskState::Running, None, "u1"), T1);
    assert_eq!(kinds(&calls), ["ACKNOWLEDGE"]);
    assert!(b.live_tasks().is_empty());
}

#[test]
fn request_skips_a_job_no_node_can_hold() {
    let mut huge = spec("huge", 1);
    huge.mem = 5000;
    let jobs = vec![entry(huge, 1), entry(spec("small", 2), 2)];
    let nodes = [node("h1", "", 4.0, 1000)];
    let mut b = Batch::new(ids());
    b.on_event(subscribed(), T0);
    let calls = b.on_jobs(jobs.clone(), &nodes, T0);
    assert_eq!(requests(&calls), [(Resources::new(1.0, 100, 0), Some(2))]);
    // Nothing fits anywhere: the oldest job is asked for.
    let calls = b.on_jobs(jobs, &[node("h1", "", 0.5, 50)], T0 + 250);
    assert_eq!(requests(&calls), [(Resources::new(1.0, 5000, 0), Some(1))]);
}

#[test]
fn each_role_has_its_own_instance() {
    let mut b = Batch::for_role("analytics", ids());
    let info = b.framework_info();
    assert_eq!(info.role, "analytics");
    assert_eq!(info.id.as_deref(), Some("berth-batch-analytics"));
    let mut mine = spec("etl", 2);
    mine.role = "analytics".into();
    let theirs = spec("web", 3);
    b.on_jobs(
        vec![entry(mine, T0), entry(theirs, T0)],
        &[node("h1", "", 8.0, 8192)],
        T0,
    );
    assert_eq!(b.pending("etl"), 2);
    assert_eq!(
        b.pending("web"),
        0,
        "jobs of other roles are not this instance's"
    );
}

/// Jobs submitted back to back with the same task size are asked for in one
/// REQUEST (their pending instances added up), so one allocation round
/// offers enough for all of them; another size waits its turn.
#[test]
fn request_counts_every_pending_job_of_the_size() {
    let mut other = spec("c", 7);
    other.mem = 300;
    let jobs = vec![
        entry(spec("a", 3), 1),
        entry(other, 2),
        entry(spec("b", 2), 3),
    ];
    let mut b = Batch::new(ids());
    b.on_event(subscribed(), T0);
    let calls = b.on_jobs(jobs.clone(), &[], T0);
    assert_eq!(requests(&calls), [(Resources::new(1.0, 100, 0), Some(5))]);
    // Offers for all five: both jobs launch from one round, and the
    // request moves on to the other size.
    let calls = b.on_event(offers(vec![offer("o1", "h1", "", 5.0, 500)]), T1);
    assert_eq!(launched(&calls).len(), 5);
    assert_eq!(requests(&calls), [(Resources::new(1.0, 300, 0), Some(7))]);
}

/// A spread job offered one of two idle nodes places one instance and holds
/// the rest for the other node; once that is offered the job is even. A
/// node that never comes holds the job back for SPREAD_HOLD_MS at most.
#[test]
fn spread_job_waits_for_offers_from_other_nodes() {
    let mut s = spec("sp", 4);
    s.constraints = vec![Constraint::Spread {
        attribute: "hostname".into(),
    }];
    let nodes = [node("h1", "", 8.0, 4000), node("h2", "", 8.0, 4000)];
    let mut b = started(vec![entry(s.clone(), 1)], &nodes);
    let calls = b.on_event(offers(vec![offer("o1", "h1", "", 8.0, 4000)]), T1);
    assert_eq!(launched(&calls).len(), 1, "{calls:?}");
    assert_eq!(b.pending("sp"), 3);
    let calls = b.on_event(offers(vec![offer("o2", "h2", "", 8.0, 4000)]), T1 + 10);
    assert_eq!(launched(&calls).len(), 1, "{calls:?}");
    let calls = b.on_event(
        offers(vec![
            offer("o3", "h1", "", 7.0, 3900),
            offer("o4", "h2", "", 7.0, 3900),
        ]),
        T1 + 20,
    );
    let hosts: Vec<String> = launched(&calls).into_iter().map(|(h, _)| h).collect();
    assert_eq!(hosts, ["h1", "h2"]);
    assert_eq!(b.pending("sp"), 0);

    // h2 never offered again: after SPREAD_HOLD_MS the job takes h1.
    let mut b = started(vec![entry(s, 1)], &nodes);
    let calls = b.on_event(offers(vec![offer("o1", "h1", "", 8.0, 4000)]), T1);
    assert_eq!(launched(&calls).len(), 1);
    let calls = b.on_event(offers(vec![offer("o2", "h1", "", 7.0, 3900)]), T1 + 100);
    assert!(launched(&calls).is_empty());
    let calls = b.on_event(
        offers(vec![offer("o3", "h1", "", 7.0, 3900)]),
        T1 + SPREAD_HOLD_MS,
    );
    assert_eq!(launched(&calls).len(), 3);
}

/// Many offers go out in a few ACCEPTs of at most MAX_TASKS_PER_ACCEPT
/// tasks, and the flood of RUNNING updates that follows costs little per
/// event (no walk over every instance or node per update).
#[test]
fn large_jobs_launch_in_few_accepts_and_updates_are_cheap() {
    let n_agents = 1000;
    let per_agent = 25;
    let total = n_agents * per_agent;
    let nodes: Vec<NodeFit> = (0..n_agents)
        .map(|i| node(&format!("h{i}"), "", 24.0, 65536))
        .collect();
    let mut b = started(vec![entry(spec("big", total), 1)], &nodes);
    let list: Vec<Offer> = (0..n_agents)
        .map(|i| {
            offer(
                &format!("o{i}"),
                &format!("h{i}"),
                "",
                per_agent as f64,
                100 * u64::from(per_agent),
            )
        })
        .collect();
    let calls = b.on_event(offers(list), T1);
    let accepts = kinds(&calls).iter().filter(|k| **k == "ACCEPT").count();
    assert_eq!(
        accepts,
        (total as usize).div_ceil(MAX_TASKS_PER_ACCEPT),
        "{:?}",
        kinds(&calls)
    );
    let tasks = launched(&calls);
    assert_eq!(tasks.len(), total as usize);
    let start = std::time::Instant::now();
    for (i, (_, t)) in tasks.iter().enumerate() {
        let ev = Event::Update {
            status: TaskStatus {
                task_id: t.task_id.clone(),
                agent_id: t.agent_id.clone(),
                state: TaskState::Running,
                message: None,
                reason: None,
                exit_code: None,
                uuid: format!("u{i}"),
                timestamp_ms: 0,
            },
        };
        let calls = b.on_event(ev, T1 + 1 + i as u64 / 100);
        assert_eq!(kinds(&calls), ["ACKNOWLEDGE"]);
    }
    let took = start.elapsed();
    eprintln!("batch: {total} RUNNING updates with {n_agents} nodes in {took:?}");
    if !cfg!(debug_assertions) {
        assert!(took.as_millis() < 1000, "took {took:?}");
    }
    assert_eq!(b.pending("big"), 0);
}
