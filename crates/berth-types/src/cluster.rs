//! The cluster's domain model: resources, attributes, task and node states,
//! placement constraints and the batch job file, as Mesos and Marathon users
//! spell them (`cpus:24;mem:24576;disk:409600`, `rack:1-1;os:linux`).

use crate::ParseError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Scalar resources of a node, an offer or a task. `mem` and `disk` are MiB.
/// CPU arithmetic is rounded to thousandths so sums and differences stay
/// exact and every server applies them identically.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpus: f64,
    pub mem: u64,
    pub disk: u64,
}

fn milli(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpus: 0.0,
        mem: 0,
        disk: 0,
    };

    pub fn new(cpus: f64, mem: u64, disk: u64) -> Self {
        Self {
            cpus: milli(cpus),
            mem,
            disk,
        }
    }

    /// Whether `need` fits inside `self` on every dimension.
    pub fn contains(&self, need: &Resources) -> bool {
        milli(self.cpus - need.cpus) >= 0.0 && self.mem >= need.mem && self.disk >= need.disk
    }

    pub fn add(&self, o: &Resources) -> Resources {
        Resources {
            cpus: milli(self.cpus + o.cpus),
            mem: self.mem.saturating_add(o.mem),
            disk: self.disk.saturating_add(o.disk),
        }
    }

    /// Difference clamped at zero on each dimension.
    pub fn saturating_sub(&self, o: &Resources) -> Resources {
        Resources {
            cpus: milli(self.cpus - o.cpus).max(0.0),
            mem: self.mem.saturating_sub(o.mem),
            disk: self.disk.saturating_sub(o.disk),
        }
    }

    pub fn is_zero(&self) -> bool {
        self.cpus <= 0.0 && self.mem == 0 && self.disk == 0
    }

    /// Names of the dimensions on which `need` does not fit in `self`.
    pub fn shortfall(&self, need: &Resources) -> Vec<&'static str> {
        let mut out = Vec::new();
        if milli(self.cpus - need.cpus) < 0.0 {
            out.push("cpus");
        }
        if self.mem < need.mem {
            out.push("mem");
        }
        if self.disk < need.disk {
            out.push("disk");
        }
        out
    }

    /// Parses Mesos's `--resources` syntax: `cpus:24;mem:24576;disk:409600`.
    /// Missing names keep the value from `defaults`.
    pub fn parse_with_defaults(s: &str, defaults: Resources) -> Result<Resources, ParseError> {
        let mut r = defaults;
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let err = |reason: &str| ParseError::new("resources", s, format!("{part:?}: {reason}"));
            let (name, value) = part
                .split_once(':')
                .ok_or_else(|| err("expected name:value"))?;
            match name.trim() {
                "cpus" => {
                    let v: f64 = value
                        .trim()
                        .parse()
                        .map_err(|_| err("cpus must be a number"))?;
                    if !v.is_finite() || !(0.0..=1_000_000.0).contains(&v) {
                        return Err(err("cpus must be between 0 and 1000000"));
                    }
                    r.cpus = milli(v);
                }
                "mem" | "disk" => {
                    let v: u64 = value
                        .trim()
                        .parse()
                        .map_err(|_| err("must be a whole number of MiB"))?;
                    if name.trim() == "mem" {
                        r.mem = v;
                    } else {
                        r.disk = v;
                    }
                }
                _ => return Err(err("unknown resource; expected cpus, mem or disk")),
            }
        }
        Ok(r)
    }

    pub fn parse(s: &str) -> Result<Resources, ParseError> {
        Self::parse_with_defaults(s, Resources::ZERO)
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpus:{};mem:{};disk:{}", self.cpus, self.mem, self.disk)
    }
}

/// Node attributes (`rack:1-1;os:linux`), text valued as in Mesos.
pub type Attributes = BTreeMap<String, String>;

/// Parses `name:value;name:value`. Values may contain ':'.
pub fn parse_attributes(s: &str) -> Result<Attributes, ParseError> {
    let mut out = Attributes::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let err = |reason: &str| ParseError::new("attributes", s, format!("{part:?}: {reason}"));
        let (name, value) = part
            .split_once(':')
            .ok_or_else(|| err("expected name:value"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(err("names are letters, digits, '-', '_' or '.'"));
        }
        if value.is_empty() {
            return Err(err("empty value"));
        }
        if out.insert(name.to_string(), value.to_string()).is_some() {
            return Err(err("attribute given twice"));
        }
    }
    Ok(out)
}

/// Task states as Mesos names them (without the `TASK_` prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    Staging,
    Starting,
    Running,
    Finished,
    Failed,
    Killed,
    Lost,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Lost
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Staging => "STAGING",
            TaskState::Starting => "STARTING",
            TaskState::Running => "RUNNING",
            TaskState::Finished => "FINISHED",
            TaskState::Failed => "FAILED",
            TaskState::Killed => "KILLED",
            TaskState::Lost => "LOST",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node is doing for the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// Heartbeating and offered to frameworks.
    Active,
    /// Heartbeating, not offered; its tasks are being moved off.
    Draining,
    /// Stopped heartbeating; its tasks were marked LOST.
    Lost,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Active => "ACTIVE",
            NodeState::Draining => "DRAINING",
            NodeState::Lost => "LOST",
        })
    }
}

/// What a task runs: a shell command on the host inside its own cgroup
/// (Mesos's cgroups containerizer), or a container from an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TaskKind {
    Command {
        shell: String,
    },
    Container {
        image: String,
        #[serde(default)]
        args: Vec<String>,
    },
}

/// A placement constraint on node attributes. The pseudo-attribute
/// `hostname` is the node's host name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Constraint {
    /// Only nodes whose attribute equals the value.
    Equal { attribute: String, value: String },
    /// At most one task of the job per attribute value.
    Unique { attribute: String },
    /// Spread the job's tasks evenly over the attribute's values.
    Spread { attribute: String },
}

impl Constraint {
    pub fn attribute(&self) -> &str {
        match self {
            Constraint::Equal { attribute, .. }
            | Constraint::Unique { attribute }
            | Constraint::Spread { attribute } => attribute,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::Equal { attribute, value } => write!(f, "{attribute}=={value}"),
            Constraint::Unique { attribute } => write!(f, "unique {attribute}"),
            Constraint::Spread { attribute } => write!(f, "spread over {attribute}"),
        }
    }
}

/// Marathon's array spelling in job files: `["rack", "equal", "1-1"]`,
/// `["hostname", "unique"]`, `["rack", "spread"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
struct ConstraintSpelling(Vec<String>);

impl ConstraintSpelling {
    fn into_constraint(self) -> Result<Constraint, String> {
        let parts = self.0;
        let op = parts
            .get(1)
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_default();
        match (parts.len(), op.as_str()) {
            (3, "equal" | "cluster" | "like") => Ok(Constraint::Equal {
                attribute: parts[0].clone(),
                value: parts[2].clone(),
            }),
            (2, "unique") => Ok(Constraint::Unique {
                attribute: parts[0].clone(),
            }),
            (2, "spread" | "group_by") => Ok(Constraint::Spread {
                attribute: parts[0].clone(),
            }),
            _ => Err(format!(
                "constraint {parts:?}: expected [attr, \"equal\", value], [attr, \"unique\"] or [attr, \"spread\"]"
            )),
        }
    }
}

/// A batch job as written in `berth job run FILE.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    #[serde(default = "default_role")]
    pub role: String,
    #[serde(default = "default_instances")]
    pub instances: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    #[serde(default = "default_mem")]
    pub mem: u64,
    #[serde(default)]
    pub disk: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// How many times a FAILED instance is launched again (LOST and
    /// drained instances are always relaunched).
    #[serde(default)]
    pub max_retries: u32,
}

fn default_role() -> String {
    "*".to_string()
}
fn default_instances() -> u32 {
    1
}
fn default_cpus() -> f64 {
    0.1
}
fn default_mem() -> u64 {
    32
}

/// Upper bound on instances of one job, so one file cannot exhaust memory.
pub const MAX_JOB_INSTANCES: u32 = 1_000_000;

/// The TOML form, which spells constraints as arrays.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    name: String,
    #[serde(default = "default_role")]
    role: String,
    #[serde(default = "default_instances")]
    instances: u32,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default = "default_cpus")]
    cpus: f64,
    #[serde(default = "default_mem")]
    mem: u64,
    #[serde(default)]
    disk: u64,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    constraints: Vec<ConstraintSpelling>,
    #[serde(default)]
    max_retries: u32,
}

/// True for names usable as job names, roles and ids: 1 to 63 characters
/// of lowercase letters, digits, '-', '_' and '.', starting alphanumeric.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

impl JobSpec {
    /// Parses a job file; `source` names it in errors (`job.toml: ...`).
    pub fn from_toml(source: &str, text: &str) -> Result<JobSpec, String> {
        let file: JobFile = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("{source}:{line}: {msg}")
                }
                None => format!("{source}: {msg}"),
            }
        })?;
        let mut constraints = Vec::new();
        for c in file.constraints {
            constraints.push(c.into_constraint().map_err(|e| format!("{source}: {e}"))?);
        }
        let spec = JobSpec {
            name: file.name,
            role: file.role,
            instances: file.instances,
            command: file.command,
            image: file.image,
            args: file.args,
            cpus: milli(file.cpus),
            mem: file.mem,
            disk: file.disk,
            env: file.env,
            constraints,
            max_retries: file.max_retries,
        };
        spec.validate().map_err(|e| format!("{source}: {e}"))?;
        Ok(spec)
    }

    /// Checks everything serde cannot; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err(format!(
                "name {:?}: use 1 to 63 lowercase letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if self.role != "*" && !valid_name(&self.role) {
            return Err(format!("role {:?}: not a valid role name", self.role));
        }
        if self.instances == 0 || self.instances > MAX_JOB_INSTANCES {
            return Err(format!(
                "instances {}: must be between 1 and {MAX_JOB_INSTANCES}",
                self.instances
            ));
        }
        match (&self.command, &self.image) {
            (Some(_), Some(_)) => return Err("give either command or image, not both".into()),
            (None, None) => return Err("give command (a shell command) or image".into()),
            (Some(c), None) if c.trim().is_empty() => return Err("command is empty".into()),
            (Some(_), None) if !self.args.is_empty() => {
                return Err("args go with image; put them in command instead".into())
            }
            _ => {}
        }
        if !self.cpus.is_finite() || self.cpus <= 0.0 || self.cpus > 1_000_000.0 {
            return Err(format!("cpus {}: must be more than 0", self.cpus));
        }
        if self.mem == 0 {
            return Err("mem 0: must be at least 1 MiB".into());
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("env {k:?}: not a valid variable name"));
            }
        }
        for c in &self.constraints {
            if c.attribute().is_empty() {
                return Err(format!("constraint {c}: empty attribute"));
            }
        }
        Ok(())
    }

    pub fn resources(&self) -> Resources {
        Resources::new(self.cpus, self.mem, self.disk)
    }

    pub fn kind(&self) -> TaskKind {
        match (&self.command, &self.image) {
            (Some(shell), _) => TaskKind::Command {
                shell: shell.clone(),
            },
            (None, image) => TaskKind::Container {
                image: image.clone().unwrap_or_default(),
                args: self.args.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse() {
        let r = Resources::parse("cpus:24;mem:24576;disk:409600").unwrap();
        assert_eq!(r, Resources::new(24.0, 24576, 409600));
        let d = Resources::parse_with_defaults("mem:10", Resources::new(2.0, 1, 3)).unwrap();
        assert_eq!(d, Resources::new(2.0, 10, 3));
        for bad in ["cpus", "cpus:x", "gpus:1", "mem:1.5", "cpus:-1"] {
            assert!(Resources::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resources_arith_is_exact() {
        let mut r = Resources::new(1.0, 10, 0);
        for _ in 0..10 {
            r = r.saturating_sub(&Resources::new(0.1, 1, 0));
        }
        assert_eq!(r, Resources::ZERO);
        assert!(Resources::new(0.3, 1, 0)
            .contains(&Resources::new(0.1, 0, 0).add(&Resources::new(0.2, 1, 0))));
        assert_eq!(
            Resources::new(1.0, 1, 1).shortfall(&Resources::new(2.0, 1, 2)),
            vec!["cpus", "disk"]
        );
    }

    #[test]
    fn attributes_parse() {
        let a = parse_attributes("datacenter:pdx1;rack:1-1;os:linux").unwrap();
        assert_eq!(a["rack"], "1-1");
        assert_eq!(a.len(), 3);
        assert_eq!(parse_attributes("url:http://x").unwrap()["url"], "http://x");
        for bad in ["rack", "rack:", ":x", "a:1;a:2", "a b:1"] {
            assert!(parse_attributes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn job_file() {
        let spec = JobSpec::from_toml(
            "j.toml",
            r#"
name = "etl"
role = "analytics"
instances = 3
command = "echo hi"
cpus = 0.5
mem = 64
env = { A = "1" }
constraints = [["rack", "equal", "1-1"], ["hostname", "UNIQUE"], ["rack", "spread"]]
"#,
        )
        .unwrap();
        assert_eq!(spec.instances, 3);
        assert_eq!(spec.constraints.len(), 3);
        assert_eq!(
            spec.kind(),
            TaskKind::Command {
                shell: "echo hi".into()
            }
        );
        assert_eq!(spec.resources(), Resources::new(0.5, 64, 0));
    }

    #[test]
    fn job_file_errors_name_the_place() {
        let e =
            JobSpec::from_toml("j.toml", "name = \"a\"\ncommand = \"x\"\nbogus = 1\n").unwrap_err();
        assert!(e.starts_with("j.toml:3:"), "{e}");
        let e = JobSpec::from_toml("j.toml", "name = \"a\"\n").unwrap_err();
        assert!(e.contains("command"), "{e}");
        let e = JobSpec::from_toml("j.toml", "name = \"A!\"\ncommand = \"x\"\n").unwrap_err();
        assert!(e.contains("name"), "{e}");
        let e = JobSpec::from_toml(
            "j.toml",
            "name = \"a\"\ncommand = \"x\"\nconstraints = [[\"rack\", \"near\"]]\n",
        )
        .unwrap_err();
        assert!(e.contains("constraint"), "{e}");
        let e = JobSpec::from_toml("j.toml", "name = \"a\"\ncommand = \"x\"\ninstances = 0\n")
            .unwrap_err();
        assert!(e.contains("instances"), "{e}");
    }
}
