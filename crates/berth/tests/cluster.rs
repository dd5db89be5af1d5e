//! Multi-host cluster tests: three servers and a few agents, each in its own
//! network namespace, driven through the real binary. Kills are SIGKILL and
//! partitions are real (the host's veth goes down), so these check what a
//! cluster must survive: leader loss, agent loss, minority partitions and
//! agents that come back with stale tasks.

#[path = "cluster/fixture.rs"]
mod fixture;

use fixture::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const SLACK: Duration = Duration::from_secs(7);

fn ids(tasks: &[serde_json::Value]) -> BTreeSet<String> {
    tasks
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect()
}

/// Tasks per node id.
fn per_node(tasks: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in tasks {
        if let Some(n) = t["node"].as_str() {
            *m.entry(n.to_string()).or_default() += 1;
        }
    }
    m
}

/// The agent index running most of `tasks`, and how many it runs.
fn busiest_agent(c: &Cluster, tasks: &[serde_json::Value]) -> (usize, usize) {
    let (node, n) = per_node(tasks)
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .expect("some task placed");
    let idx = c
        .agent_of_node(&node)
        .unwrap_or_else(|| panic!("node {node} is no agent of ours: {:?}", c.node_names()));
    (idx, n)
}

#[test]
fn servers_elect_a_leader_and_a_job_spreads_over_agents() {
    let c = Cluster::start(2);
    let members = c.members().expect("members");
    assert_eq!(members.len(), 3, "members: {members:?}");
    assert_eq!(
        members.iter().filter(|m| m["role"] == "leader").count(),
        1,
        "members: {members:?}"
    );
    assert!(members.iter().all(|m| m["voter"] == true), "{members:?}");
    for m in &members {
        let addr = m["address"].as_str().expect("address");
        assert!(c.server_index(addr).is_some(), "unknown member {addr}");
        assert!(m["term"].as_u64().is_some() && m["last_log_index"].as_u64().is_some());
    }

    c.run_sleepers("sleepers", 4, "");
    let running = c.wait_running("sleepers", 4, Duration::from_secs(20));
    for t in &running {
        for key in ["id", "job", "role", "node", "state"] {
            assert!(t[key].is_string(), "task lacks {key}: {t}");
        }
        assert_eq!(t["job"], "sleepers");
        assert_eq!(t["role"], "*");
    }
    // The tasks are real processes on their agents' hosts.
    let placed = per_node(&running);
    for (node, n) in &placed {
        let a = c.agent_of_node(node).expect("agent of node");
        let procs = c.agents[a].count_processes("sleep 1000");
        assert_eq!(procs, *n, "agent {a}: {:?}", c.agents[a].cmdlines());
    }
    let nodes = c.nodes().expect("nodes");
    assert_eq!(nodes.len(), 2);
    for n in &nodes {
        assert_eq!(n["state"], "ACTIVE", "{n}");
        let id = n["id"].as_str().unwrap_or_default();
        let want = placed.get(id).copied().unwrap_or(0) as u64;
        assert_eq!(n["tasks"], want, "{n}");
    }
}

#[test]
fn spread_constraint_uses_every_agent() {
    let c = Cluster::start(2);
    c.run_sleepers("spread", 4, "constraints = [[\"hostname\", \"spread\"]]");
    let running = c.wait_running("spread", 4, Duration::from_secs(20));
    let placed = per_node(&running);
    assert_eq!(placed.len(), 2, "not spread over both agents: {placed:?}");
    assert!(placed.values().all(|n| *n == 2), "uneven: {placed:?}");
}

#[test]
fn leader_kill_elects_a_new_leader_and_tasks_keep_running() {
    let mut c = Cluster::start(2);
    c.run_sleepers("before", 4, "");
    let before = ids(&c.wait_running("before", 4, Duration::from_secs(20)));
    let old = c.leader_index().expect("a leader");
    let old_addr = c.servers[old].host.addr(SERVER_PORT);
    let killed = Instant::now();
    c.servers[old].kill9();

    let mut new_leader = None;
    let mut elected_after = None;
    let mut observed_running = 0;
    while killed.elapsed() < Duration::from_secs(20) {
        if let Some(l) = c.leader() {
            let addr = l["address"].as_str().unwrap_or_default().to_string();
            if addr != old_addr && !addr.is_empty() {
                elected_after.get_or_insert(killed.elapsed());
                new_leader = Some(addr);
            }
        }
        // Whenever the cluster answers, the same tasks are RUNNING.
        if let Some(r) = c.job_tasks_in("before", "RUNNING") {
            if ids(&r) == before {
                observed_running += 1;
            } else if new_leader.is_some() {
                panic!("tasks changed after failover: {before:?} -> {:?}", ids(&r));
            }
        }
        if new_leader.is_some() && observed_running >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let new_leader = new_leader.expect("no new leader within 20 s");
    let took = elected_after.expect("election time");
    assert!(
        took <= Duration::from_secs(12),
        "new leader {new_leader} only after {took:?}"
    );
    assert!(
        observed_running >= 3,
        "tasks not observed RUNNING after failover"
    );

    // The cluster takes writes through the CLI with all three addresses,
    // the dead one included.
    c.run_sleepers("after", 2, "");
    c.wait_running("after", 2, Duration::from_secs(20));
    let still = c.job_tasks_in("before", "RUNNING").expect("task ls");
    assert_eq!(ids(&still), before, "tasks of the first job changed");
    eprintln!("leader failover took {took:?}");
}

#[test]
fn killed_agent_tasks_go_lost_and_are_relaunched() {
    let mut c = Cluster::start(2);
    c.run_sleepers("work", 4, "");
    let first = c.wait_running("work", 4, Duration::from_secs(20));
    let (victim, n) = busiest_agent(&c, &first);
    let victim_name = c.agents[victim].hostname.clone();
    let victim_ids: BTreeSet<String> = first
        .iter()
        .filter(|t| c.agent_of_node(t["node"].as_str().unwrap_or_default()) == Some(victim))
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(victim_ids.len(), n);
    let killed = Instant::now();
    c.agents[victim].kill9();

    let lost = wait_until(AGENT_TIMEOUT + SLACK, || {
        c.tasks().is_some_and(|ts| {
            ts.iter()
                .filter(|t| victim_ids.contains(t["id"].as_str().unwrap_or_default()))
                .all(|t| t["state"] == "LOST")
        })
    });
    assert!(
        lost,
        "tasks of killed agent {victim_name} not LOST after {:?}: {:#?}",
        killed.elapsed(),
        c.job_tasks("work")
    );
    eprintln!("LOST after {:?}", killed.elapsed());
    let again = c.wait_running("work", 4, Duration::from_secs(20));
    for t in &again {
        assert!(
            !victim_ids.contains(t["id"].as_str().unwrap_or_default()),
            "a task of the dead agent is still RUNNING: {t}"
        );
        assert_ne!(
            c.agent_of_node(t["node"].as_str().unwrap_or_default()),
            Some(victim),
            "relaunched on the dead agent: {t}"
        );
    }
    let status = c.json(&["job", "status", "work"]);
    assert_eq!(status["tasks"]["RUNNING"], 4, "{status}");
    let nodes = c.nodes().expect("nodes");
    let dead = nodes
        .iter()
        .find(|n| n["hostname"] == victim_name.as_str())
        .expect("dead node listed");
    assert_eq!(dead["state"], "LOST", "{dead}");
}

#[test]
fn minority_server_partition_keeps_the_cluster_working_and_heals() {
    let c = Cluster::start(1);
    let leader = c.leader_index().expect("leader");
    let cut = (leader + 1) % 3;
    let cut_addr = c.servers[cut].host.addr(SERVER_PORT);
    c.servers[cut].host.link_down().expect("link down");

    c.run_sleepers("during", 2, "");
    c.wait_running("during", 2, Duration::from_secs(20));
    for i in 0..3 {
        let out = c.job_run(
            &format!("more{i}"),
            &format!("name = \"more{i}\"\ninstances = 1\ncommand = \"sleep 1000\"\ncpus = 0.1\n"),
        );
        assert!(out.status.success(), "job run more{i}: {}", stderr(&out));
    }
    c.wait_running("more2", 1, Duration::from_secs(20));

    c.servers[cut].host.link_up().expect("link up");
    let mut last = None;
    let caught_up = wait_until(Duration::from_secs(30), || {
        let Some(m) = c.members() else {
            return false;
        };
        let leaders: Vec<_> = m.iter().filter(|x| x["role"] == "leader").collect();
        let healed = m.iter().find(|x| x["address"] == cut_addr.as_str());
        let ok = match (leaders.as_slice(), healed) {
            ([l], Some(h)) => {
                let li = l["last_log_index"].as_u64().unwrap_or(0);
                let hi = h["last_log_index"].as_u64().unwrap_or(0);
                h["role"] == "follower" && hi + 2 >= li
            }
            _ => false,
        };
        last = Some(m);
        ok
    });
    assert!(
        caught_up,
        "healed server {cut_addr} did not catch up: {last:#?}"
    );
    // Still one working cluster with every task in place.
    c.wait_running("during", 2, Duration::from_secs(10));
    c.run_sleepers("healed", 1, "");
    c.wait_running("healed", 1, Duration::from_secs(20));
}

#[test]
fn partitioned_agent_tasks_are_replaced_and_old_copies_killed_on_heal() {
    let c = Cluster::start(2);
    c.run_sleepers("part", 4, "");
    let first = c.wait_running("part", 4, Duration::from_secs(20));
    let (victim, n) = busiest_agent(&c, &first);
    let name = c.agents[victim].hostname.clone();
    let old_ids: BTreeSet<String> = first
        .iter()
        .filter(|t| c.agent_of_node(t["node"].as_str().unwrap_or_default()) == Some(victim))
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(c.agents[victim].count_processes("sleep 1000"), n);
    let cut = Instant::now();
    c.agents[victim].host.link_down().expect("link down");

    let lost = wait_until(AGENT_TIMEOUT + SLACK, || {
        c.tasks().is_some_and(|ts| {
            ts.iter()
                .filter(|t| old_ids.contains(t["id"].as_str().unwrap_or_default()))
                .all(|t| t["state"] == "LOST")
        })
    });
    assert!(
        lost,
        "tasks of partitioned {name} not LOST: {:#?}",
        c.job_tasks("part")
    );
    eprintln!("LOST after {:?}", cut.elapsed());
    c.wait_running("part", 4, Duration::from_secs(20));
    // Cut off, the agent cannot know: its copies still run.
    assert_eq!(c.agents[victim].count_processes("sleep 1000"), n);

    c.agents[victim].host.link_up().expect("link up");
    let back = wait_until(Duration::from_secs(30), || {
        c.nodes().is_some_and(|ns| {
            ns.iter()
                .any(|x| x["hostname"] == name.as_str() && x["state"] == "ACTIVE")
        })
    });
    assert!(
        back,
        "{name} not ACTIVE again: {:?}",
        c.cli(&["node", "ls", "--json"])
    );
    let killed = wait_until(Duration::from_secs(20), || {
        c.agents[victim].count_processes("sleep 1000") == 0
    });
    assert!(
        killed,
        "old copies still run on {name}: {:?}",
        c.agents[victim].cmdlines()
    );
    // Never more than `instances` RUNNING, and none of the old ids.
    for _ in 0..10 {
        let r = c.job_tasks_in("part", "RUNNING").expect("task ls");
        assert_eq!(r.len(), 4, "RUNNING: {r:#?}");
        assert!(
            ids(&r).is_disjoint(&old_ids),
            "old task RUNNING again: {r:#?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn agents_without_the_right_token_are_refused() {
    let mut c = Cluster::servers_only();
    let wrong = c.add_agent_with_token(Some("not-the-cluster-token"), &[]);
    let none = c.add_agent_with_token(None, &[]);
    // The agent gives up at once: with a wrong token the servers'
    // certificates do not chain to the CA it derives, without one it cannot
    // speak to servers that require TLS; it exits 1 with one line that
    // names the token.
    for i in [wrong, none] {
        let a = &mut c.agents[i];
        let status = a
            .proc
            .as_mut()
            .and_then(|p| p.wait_timeout(Duration::from_secs(15)));
        let log = a.log_text();
        let status = status.unwrap_or_else(|| panic!("agent {i} still runs; log: {log}"));
        assert!(!status.success(), "agent {i} exited 0; log: {log}");
        let last = log.lines().last().unwrap_or_default().to_lowercase();
        assert!(
            last.contains("token"),
            "agent {i}: unclear last line {last:?}; log: {log}"
        );
    }
    let nodes = c.nodes().expect("node ls");
    assert!(nodes.is_empty(), "a node registered: {nodes:?}");
    // The CLI, too.
    let out = c.cli_with(
        &["node", "ls"],
        &c.server_addrs(),
        Some("not-the-cluster-token"),
    );
    assert!(
        !out.status.success(),
        "wrong token accepted: {}",
        stdout(&out)
    );
    let err = stderr(&out).to_lowercase();
    assert!(
        err.contains("token") || err.contains("unauthorized") || err.contains("401"),
        "unclear error: {err}"
    );
    // The right token still works.
    c.add_agent(&[]);
    c.wait_ready(1);
}

#[test]
fn unplaceable_job_says_why() {
    let c = Cluster::start(1);
    let out = c.job_run(
        "huge",
        "name = \"huge\"\ninstances = 1\ncommand = \"sleep 1000\"\ncpus = 0.1\nmem = 100000\n",
    );
    assert!(out.status.success(), "job run huge: {}", stderr(&out));
    let mut last = serde_json::Value::Null;
    let said = wait_until(Duration::from_secs(15), || {
        let Some(s) = c.try_json(&["job", "status", "huge"]) else {
            return false;
        };
        let ok = s["placement"].as_str().is_some_and(|p| p.contains("mem"));
        last = s;
        ok
    });
    assert!(said, "no placement message naming mem: {last}");
    eprintln!("placement: {}", last["placement"]);
    assert_eq!(last["status"], "pending", "{last}");
    assert!(
        c.job_tasks_in("huge", "RUNNING")
            .unwrap_or_default()
            .is_empty(),
        "an impossible task runs"
    );
}
