//! What a user asks for when creating a container, and the states a
//! container moves through.

use crate::{ParseError, PortMapping, VolumeMount};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Bridge,
    Host,
    None,
}

impl NetworkMode {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        match s {
            "bridge" | "default" => Ok(Self::Bridge),
            "host" => Ok(Self::Host),
            "none" => Ok(Self::None),
            _ => Err(ParseError::new(
                "network",
                s,
                "expected bridge, host or none",
            )),
        }
    }
}

/// `--restart no|on-failure[:N]|always`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    OnFailure {
        max_retries: Option<u32>,
    },
    Always,
}

impl RestartPolicy {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError::new("restart policy", s, "expected no, on-failure[:N] or always");
        match s.split_once(':') {
            None => match s {
                "no" => Ok(Self::No),
                "always" => Ok(Self::Always),
                "on-failure" => Ok(Self::OnFailure { max_retries: None }),
                _ => Err(err()),
            },
            Some(("on-failure", n)) => Ok(Self::OnFailure {
                max_retries: Some(n.parse().map_err(|_| err())?),
            }),
            Some(_) => Err(err()),
        }
    }

    /// Whether a container that exited with `code` after `restarts` earlier
    /// restarts should be started again. An explicit stop never restarts.
    pub fn should_restart(&self, code: i32, restarts: u32, stopped_by_user: bool) -> bool {
        if stopped_by_user {
            return false;
        }
        match self {
            Self::No => false,
            Self::Always => true,
            Self::OnFailure { max_retries } => {
                code != 0 && max_retries.is_none_or(|m| restarts < m)
            }
        }
    }
}

/// Everything needed to create a container, resolved from the CLI flags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    pub image: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Replaces the image's CMD when non-empty.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Replaces the image's ENTRYPOINT when set.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    #[serde(default)]
    pub network: NetworkMode,
    #[serde(default)]
    pub memory: Option<u64>,
    /// CFS quota in microseconds per 100ms period.
    #[serde(default)]
    pub cpu_quota: Option<u64>,
    #[serde(default)]
    pub pids_limit: Option<i64>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub auto_remove: bool,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub userns: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Removing,
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Removing => "removing",
        })
    }
}

/// How a container's main process ended; `code` follows the shell's
/// convention (128 + signal for a signalled process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
}

impl ExitStatus {
    pub fn from_code(code: i32) -> Self {
        Self {
            code,
            signal: None,
            oom_killed: false,
        }
    }
    pub fn from_signal(sig: i32, oom_killed: bool) -> Self {
        Self {
            code: 128 + sig,
            signal: Some(sig),
            oom_killed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies() {
        assert_eq!(RestartPolicy::parse("no").unwrap(), RestartPolicy::No);
        assert_eq!(
            RestartPolicy::parse("on-failure:3").unwrap(),
            RestartPolicy::OnFailure {
                max_retries: Some(3)
            }
        );
        assert!(RestartPolicy::parse("sometimes").is_err());
        assert!(RestartPolicy::parse("on-failure:x").is_err());
        let p = RestartPolicy::OnFailure {
            max_retries: Some(2),
        };
        assert!(p.should_restart(1, 0, false));
        assert!(p.should_restart(1, 1, false));
        assert!(!p.should_restart(1, 2, false));
        assert!(!p.should_restart(0, 0, false));
        assert!(RestartPolicy::Always.should_restart(0, 100, false));
        assert!(!RestartPolicy::Always.should_restart(0, 0, true));
    }

    #[test]
    fn exit_status_codes() {
        assert_eq!(ExitStatus::from_signal(9, true).code, 137);
        assert_eq!(ExitStatus::from_signal(2, false).code, 130);
    }
}
