//! The runtime's error type. Every variant names the failing step and the
//! path or syscall involved, so a log line is enough to find the cause.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file-system operation on the host failed (cgroup files, /proc, ...).
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A syscall that has no path to name failed (clone, pipe, waitpid, ...).
    #[error("{syscall}: {source}")]
    Sys {
        syscall: &'static str,
        #[source]
        source: io::Error,
    },

    /// A step inside the new container process failed before exec.
    #[error("container setup: {step} {path}: {source}")]
    Setup {
        step: String,
        path: String,
        #[source]
        source: io::Error,
    },

    /// The command could not be executed; `code` is the exit status Docker
    /// reports for it (127 not found, 126 not executable).
    #[error("{message}")]
    Exec { message: String, code: i32 },

    /// `--user` did not resolve against the container's passwd/group files.
    #[error("unable to find {kind} {name}: no matching entries in {file} file")]
    UserNotFound {
        kind: &'static str,
        name: String,
        file: &'static str,
    },

    /// No cgroup directory exists under that name in any hierarchy.
    #[error("cgroup {0} not found")]
    CgroupNotFound(String),

    /// Tasks were still in the cgroup after the removal grace period.
    #[error("cgroup {}: still busy after {attempts} attempts", path.display())]
    CgroupBusy { path: PathBuf, attempts: u32 },

    /// The spec cannot be turned into a container (NUL in a string, bad path).
    #[error("invalid {what}: {value:?}")]
    InvalidSpec { what: &'static str, value: String },

    /// Network plumbing (veth, addresses, routes, netlink) failed.
    #[error("network {op} {target}: {source}")]
    Network {
        op: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },

    /// The child reported something we could not decode (truncated report).
    #[error("container setup: malformed error report from child ({0} bytes)")]
    BadReport(usize),
}

impl RuntimeError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        RuntimeError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sys(syscall: &'static str, source: io::Error) -> Self {
        RuntimeError::Sys { syscall, source }
    }

    /// The exit status a CLI should use for this error, Docker style:
    /// 127/126 for exec failures, 125 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            RuntimeError::Exec { code, .. } => *code,
            _ => 125,
        }
    }
}
