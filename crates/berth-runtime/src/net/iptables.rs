//! The bridge's iptables rules. Shelling out is fine here: this runs once
//! per daemon start, and `iptables` picks the host's backend (nft or legacy)
//! so our rules sit next to the host's own instead of in a parallel table.

use std::path::Path;
use std::process::{Command, Output};

use super::{BridgeConfig, NetError};

/// How many copies of one rule `remove` deletes at most (duplicates can
/// exist if something else added ours by hand).
const MAX_DUPLICATES: usize = 16;

pub(super) struct Rule {
    table: &'static str,
    chain: &'static str,
    /// Insert at the top rather than append: a host firewall often ends
    /// FORWARD with a DROP that an appended ACCEPT would never reach.
    insert: bool,
    spec: Vec<String>,
}

pub(super) fn rules(cfg: &BridgeConfig) -> Vec<Rule> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        // Outbound NAT: container traffic leaving through any other link.
        Rule {
            table: "nat",
            chain: "POSTROUTING",
            insert: false,
            spec: s(&[
                "-s",
                &cfg.subnet(),
                "!",
                "-o",
                &cfg.name,
                "-j",
                "MASQUERADE",
            ]),
        },
        // Everything coming from containers (outbound, and container to
        // container when br_netfilter sends bridged traffic through FORWARD).
        Rule {
            table: "filter",
            chain: "FORWARD",
            insert: true,
            spec: s(&["-i", &cfg.name, "-j", "ACCEPT"]),
        },
        // Into containers: replies, and connections to published ports
        // (DNAT) so port publishing needs no FORWARD rule of its own.
        Rule {
            table: "filter",
            chain: "FORWARD",
            insert: true,
            spec: s(&[
                "-o",
                &cfg.name,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED,DNAT",
                "-j",
                "ACCEPT",
            ]),
        },
    ]
}

pub(super) fn ensure(cfg: &BridgeConfig) -> Result<(), NetError> {
    for rule in rules(cfg) {
        if !exists(&rule)? {
            let action = if rule.insert { "-I" } else { "-A" };
            checked(run(&rule, action))?;
        }
    }
    Ok(())
}

pub(super) fn remove(cfg: &BridgeConfig) -> Result<(), NetError> {
    for rule in rules(cfg) {
        for _ in 0..MAX_DUPLICATES {
            if !exists(&rule)? {
                break;
            }
            checked(run(&rule, "-D"))?;
        }
    }
    Ok(())
}

/// `-C` exits 0 when the rule exists and 1 when it does not; anything else
/// (2: bad arguments, missing binary) is an error.
fn exists(rule: &Rule) -> Result<bool, NetError> {
    let (args, out) = run(rule, "-C");
    let out = out.map_err(|e| NetError::Iptables {
        args: args.clone(),
        detail: e.to_string(),
    })?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(NetError::Iptables {
            args,
            detail: describe(&out),
        }),
    }
}

fn checked((args, out): (String, std::io::Result<Output>)) -> Result<(), NetError> {
    match out {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(NetError::Iptables {
            args,
            detail: describe(&out),
        }),
        Err(e) => Err(NetError::Iptables {
            args,
            detail: e.to_string(),
        }),
    }
}

fn run(rule: &Rule, action: &str) -> (String, std::io::Result<Output>) {
    let mut args = vec![
        "-w".to_string(),
        "-t".into(),
        rule.table.into(),
        action.into(),
        rule.chain.into(),
    ];
    args.extend(rule.spec.iter().cloned());
    let out = Command::new(binary()).args(&args).output();
    (args.join(" "), out)
}

fn describe(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    if stderr.is_empty() {
        format!("exited with {}", out.status)
    } else {
        format!("exited with {}: {stderr}", out.status)
    }
}

/// The daemon may run with a PATH lacking the sbin directories.
fn binary() -> &'static str {
    ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("iptables")
}
