//! What to launch and what to kill: the servers' desired set (a sync
//! response) against what the agent runs. Pure, so it is table-tested.

use crate::sink::KillReason;
use berth_api::cluster::TaskInfo;
use std::collections::{HashMap, HashSet};

/// What the agent knows of a task locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalState {
    /// Accepted; being started (STARTING sent or about to be).
    Launching,
    Running,
    /// A kill was requested and is under way.
    Killing,
    /// Ended here; its terminal update was queued. Never launched again.
    Terminal,
}

impl LocalState {
    pub fn is_active(self) -> bool {
        matches!(self, LocalState::Launching | LocalState::Running)
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Assigned here and not known locally.
    pub launch: Vec<TaskInfo>,
    /// Running (or starting) here and to be killed.
    pub kill: Vec<(String, KillReason)>,
    /// Asked to be killed but never launched here: report KILLED at once.
    pub report_killed: Vec<String>,
    /// Terminal here, no longer listed and with no update waiting: the
    /// agent can forget them.
    pub forget: Vec<String>,
}

/// `desired`: every non-terminal task assigned to this agent; `kill`: those
/// of them to kill; `local`: what the agent knows; `pending`: tasks with
/// updates not yet acknowledged.
pub fn plan(
    desired: &[TaskInfo],
    kill: &[String],
    local: &HashMap<String, LocalState>,
    pending: &HashSet<String>,
) -> Plan {
    let kill_set: HashSet<&str> = kill.iter().map(String::as_str).collect();
    let desired_ids: HashSet<&str> = desired.iter().map(|t| t.task_id.as_str()).collect();
    let mut out = Plan::default();
    let mut seen: HashSet<&str> = HashSet::new();
    for t in desired {
        let id = t.task_id.as_str();
        if !seen.insert(id) {
            continue; // listed twice: act once
        }
        let to_kill = kill_set.contains(id);
        match (local.get(id), to_kill) {
            (None, false) => out.launch.push(t.clone()),
            (None, true) => out.report_killed.push(id.to_string()),
            (Some(s), true) if s.is_active() => {
                out.kill.push((id.to_string(), KillReason::KilledByUser))
            }
            _ => {}
        }
    }
    // Listed for killing without being listed as assigned: still kill it.
    for id in kill {
        if !desired_ids.contains(id.as_str())
            && local.get(id).is_some_and(|s| s.is_active())
            && !out.kill.iter().any(|(k, _)| k == id)
        {
            out.kill.push((id.clone(), KillReason::KilledByUser));
        }
    }
    let mut orphans: Vec<(String, KillReason)> = Vec::new();
    for (id, state) in local {
        if desired_ids.contains(id.as_str()) || kill_set.contains(id.as_str()) {
            continue;
        }
        if state.is_active() {
            orphans.push((id.clone(), KillReason::Orphaned));
        } else if *state == LocalState::Terminal && !pending.contains(id) {
            out.forget.push(id.clone());
        }
    }
    orphans.sort();
    out.kill.extend(orphans);
    out.forget.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_types::cluster::{Resources, TaskKind};

    fn task(id: &str) -> TaskInfo {
        TaskInfo {
            task_id: id.into(),
            name: id.into(),
            agent_id: "a".into(),
            resources: Resources::new(0.1, 32, 0),
            kind: TaskKind::Command {
                shell: "true".into(),
            },
            env: Default::default(),
            labels: Default::default(),
        }
    }

    fn ids(v: &[TaskInfo]) -> Vec<&str> {
        v.iter().map(|t| t.task_id.as_str()).collect()
    }

    use LocalState::*;

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            desired: Vec<&'static str>,
            kill: Vec<&'static str>,
            local: Vec<(&'static str, LocalState)>,
            pending: Vec<&'static str>,
            launch: Vec<&'static str>,
            kills: Vec<(&'static str, KillReason)>,
            report_killed: Vec<&'static str>,
            forget: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "fresh agent launches everything",
                desired: vec!["a", "b"],
                kill: vec![],
                local: vec![],
                pending: vec![],
                launch: vec!["a", "b"],
                kills: vec![],
                report_killed: vec![],
                forget: vec![],
            },
            Case {
                name: "running tasks are left alone",
                desired: vec!["a", "b"],
                kill: vec![],
                local: vec![("a", Running), ("b", Launching)],
                pending: vec![],
                launch: vec![],
                kills: vec![],
                report_killed: vec![],
                forget: vec![],
            },
            Case {
                name: "kill list kills running and launching",
                desired: vec!["a", "b", "c"],
                kill: vec!["a", "b"],
                local: vec![("a", Running), ("b", Launching), ("c", Running)],
                pending: vec![],
                launch: vec![],
                kills: vec![
                    ("a", KillReason::KilledByUser),
                    ("b", KillReason::KilledByUser),
                ],
                report_killed: vec![],
                forget: vec![],
            },
            Case {
                name: "kill of a task never launched is reported killed",
                desired: vec!["a"],
                kill: vec!["a"],
                local: vec![],
                pending: vec![],
                launch: vec![],
                kills: vec![],
                report_killed: vec!["a"],
                forget: vec![],
            },
            Case {
                name: "a kill in progress is not repeated",
                desired: vec!["a"],
                kill: vec!["a"],
                local: vec![("a", Killing)],
                pending: vec![],
                launch: vec![],
                kills: vec![],
                report_killed: vec![],
                forget: vec![],
            },
            Case {
                name: "orphans are killed",
                desired: vec!["a"],
                kill: vec![],
                local: vec![("a", Running), ("z", Running), ("y", Launching)],
                pending: vec![],
                launch: vec![],
                kills: vec![("y", KillReason::Orphaned), ("z", KillReason::Orphaned)],
                report_killed: vec![],
                forget: vec![],
            },
            Case {
                name: "terminal tasks are never relaunched while listed",
                desired: vec!["a"],
                kill: vec![],
                local: vec![("a", Terminal)],
                pending: vec!["a"],
                launch: vec![],
                kills: vec![],
                report_killed: vec![],
                forget: vec![],
            },
            Case {
                name: "terminal and acknowledged and unlisted are forgotten",
                desired: vec![],
                kill: vec![],
                local: vec![("a", Terminal), ("b", Terminal)],
                pending: vec!["b"],
                launch: vec![],
                kills: vec![],
                report_killed: vec![],
                forget: vec!["a"],
            },
            Case {
                name: "kill of an unlisted running task",
                desired: vec![],
                kill: vec!["a"],
                local: vec![("a", Running)],
                pending: vec![],
                launch: vec![],
                kills: vec![("a", KillReason::KilledByUser)],
                report_killed: vec![],
                forget: vec![],
            },
            Case {
                name: "duplicates in desired act once",
                desired: vec!["a", "a"],
                kill: vec![],
                local: vec![],
                pending: vec![],
                launch: vec!["a"],
                kills: vec![],
                report_killed: vec![],
                forget: vec![],
            },
        ];
        for c in cases {
            let desired: Vec<TaskInfo> = c.desired.iter().map(|id| task(id)).collect();
            let kill: Vec<String> = c.kill.iter().map(|s| s.to_string()).collect();
            let local: HashMap<String, LocalState> =
                c.local.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            let pending: HashSet<String> = c.pending.iter().map(|s| s.to_string()).collect();
            let p = plan(&desired, &kill, &local, &pending);
            assert_eq!(ids(&p.launch), c.launch, "{}: launch", c.name);
            let kills: Vec<(&str, KillReason)> =
                p.kill.iter().map(|(k, r)| (k.as_str(), *r)).collect();
            assert_eq!(kills, c.kills, "{}: kill", c.name);
            assert_eq!(
                p.report_killed, c.report_killed,
                "{}: report_killed",
                c.name
            );
            assert_eq!(p.forget, c.forget, "{}: forget", c.name);
        }
    }
}
