//! Code shared by the container child and the exec child: the error
//! report sent to the parent over a CLOEXEC pipe, the exec plan (argv,
//! envp and PATH candidates prepared before cloning), and the final
//! privilege drop and exec.
//!
//! Everything that runs after clone works on data prepared by the parent
//! and does not allocate.

use std::ffi::{c_char, CStr, CString};
use std::io;
use std::os::fd::RawFd;

use crate::caps;
use crate::seccomp;
use crate::spec::DEFAULT_PATH;
use crate::sys::{self, Errno};
use crate::user::{ExecUser, UserError, UserSpec};
use crate::RuntimeError;

/// What went wrong in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FailKind {
    /// A setup step; `step` names it, `detail` the path.
    Setup = 1,
    /// execve failed for every candidate with ENOENT/ENOTDIR.
    NotFound = 2,
    /// execve failed with another errno (EACCES, ENOEXEC, ...).
    ExecFailed = 3,
    NoSuchUser = 4,
    NoSuchGroup = 5,
}

impl FailKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => FailKind::Setup,
            2 => FailKind::NotFound,
            3 => FailKind::ExecFailed,
            4 => FailKind::NoSuchUser,
            5 => FailKind::NoSuchGroup,
            _ => return None,
        })
    }
}

/// A failure in the child, borrowing the prepared data it names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failure<'a> {
    pub kind: FailKind,
    pub step: &'static str,
    pub detail: &'a [u8],
    pub errno: Errno,
}

impl<'a> Failure<'a> {
    pub fn setup(step: &'static str, detail: &'a CStr, errno: Errno) -> Self {
        Failure {
            kind: FailKind::Setup,
            step,
            detail: detail.to_bytes(),
            errno,
        }
    }
    pub fn step(step: &'static str, errno: Errno) -> Self {
        Failure {
            kind: FailKind::Setup,
            step,
            detail: b"",
            errno,
        }
    }
}

/// Extension to turn a raw errno result into a [`Failure`].
pub(crate) trait Step<T> {
    fn at<'a>(self, step: &'static str, detail: &'a CStr) -> Result<T, Failure<'a>>;
    fn step(self, step: &'static str) -> Result<T, Failure<'static>>;
}

impl<T> Step<T> for Result<T, Errno> {
    fn at<'a>(self, step: &'static str, detail: &'a CStr) -> Result<T, Failure<'a>> {
        self.map_err(|e| Failure::setup(step, detail, e))
    }
    fn step(self, step: &'static str) -> Result<T, Failure<'static>> {
        self.map_err(|e| Failure::step(step, e))
    }
}

const REPORT_MAX: usize = 4096 + 128;

/// Writes `f` to the report pipe and exits. Layout: kind (1 byte), errno
/// (4, little endian), step length (2), detail length (2), step, detail.
pub(crate) fn fail(report_fd: RawFd, f: &Failure<'_>) -> ! {
    let mut buf = [0u8; REPORT_MAX];
    let step = &f.step.as_bytes()[..f.step.len().min(64)];
    let detail = &f.detail[..f.detail.len().min(REPORT_MAX - 9 - step.len())];
    buf[0] = f.kind as u8;
    buf[1..5].copy_from_slice(&f.errno.to_le_bytes());
    buf[5..7].copy_from_slice(&(step.len() as u16).to_le_bytes());
    buf[7..9].copy_from_slice(&(detail.len() as u16).to_le_bytes());
    buf[9..9 + step.len()].copy_from_slice(step);
    let end = 9 + step.len() + detail.len();
    buf[9 + step.len()..end].copy_from_slice(detail);
    let _ = sys::write_all(report_fd, &buf[..end]);
    let code = match f.kind {
        FailKind::NotFound => 127,
        FailKind::ExecFailed => 126,
        _ => 1,
    };
    sys::exit(code)
}

/// Parent side: turns a report into the error the caller sees. `arg0` is
/// the command as the user typed it (for Docker's exec messages).
pub(crate) fn decode_report(buf: &[u8], arg0: &str, user: &UserSpec) -> RuntimeError {
    if buf.len() < 9 {
        return RuntimeError::BadReport(buf.len());
    }
    let Some(kind) = FailKind::from_u8(buf[0]) else {
        return RuntimeError::BadReport(buf.len());
    };
    let errno = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let step_len = u16::from_le_bytes([buf[5], buf[6]]) as usize;
    let detail_len = u16::from_le_bytes([buf[7], buf[8]]) as usize;
    if buf.len() < 9 + step_len + detail_len {
        return RuntimeError::BadReport(buf.len());
    }
    let step = String::from_utf8_lossy(&buf[9..9 + step_len]).into_owned();
    let detail =
        String::from_utf8_lossy(&buf[9 + step_len..9 + step_len + detail_len]).into_owned();
    let source = io::Error::from_raw_os_error(errno);
    match kind {
        FailKind::Setup => RuntimeError::Setup {
            step,
            path: detail,
            source,
        },
        FailKind::NotFound if arg0.contains('/') => RuntimeError::Exec {
            message: format!("exec: {arg0:?}: stat {arg0}: {}", errno_text(errno)),
            code: 127,
        },
        FailKind::NotFound => RuntimeError::Exec {
            message: format!("exec: {arg0:?}: executable file not found in $PATH"),
            code: 127,
        },
        FailKind::ExecFailed => RuntimeError::Exec {
            message: format!("exec: {arg0:?}: {}", errno_text(errno)),
            code: 126,
        },
        FailKind::NoSuchUser => crate::user::user_error(user, UserError::NoSuchUser),
        FailKind::NoSuchGroup => crate::user::user_error(user, UserError::NoSuchGroup),
    }
}

/// strerror text in Go's lowercase style ("no such file or directory").
fn errno_text(errno: Errno) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    // io::Error renders "No such file or directory (os error 2)".
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Room for "HOME=" + the longest home we accept + NUL.
const HOME_ENV_MAX: usize = 5 + 512 + 1;

/// argv, envp and the execve candidates, built before cloning.
pub(crate) struct ExecPlan {
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    /// Null-terminated; when the environment has no HOME, the slot before
    /// the terminating null is reserved for it (null until filled).
    env_ptrs: Vec<*const c_char>,
    home_slot: Option<usize>,
    home_env: [u8; HOME_ENV_MAX],
    /// Paths to try with execve, in order.
    candidates: Vec<CString>,
    /// The command had no slash: candidates come from a PATH search.
    searched: bool,
}

fn cstring(what: &'static str, s: &str) -> Result<CString, RuntimeError> {
    CString::new(s).map_err(|_| RuntimeError::InvalidSpec {
        what,
        value: s.to_string(),
    })
}

impl ExecPlan {
    pub fn new(args: &[String], env: &[String]) -> Result<Self, RuntimeError> {
        let Some(arg0) = args.first().filter(|a| !a.is_empty()) else {
            return Err(RuntimeError::Exec {
                message: "exec: no command given".to_string(),
                code: 127,
            });
        };
        let argv = args
            .iter()
            .map(|a| cstring("argument", a))
            .collect::<Result<Vec<_>, _>>()?;
        let envs = env
            .iter()
            .map(|e| cstring("environment entry", e))
            .collect::<Result<Vec<_>, _>>()?;
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const c_char> = envs.iter().map(|e| e.as_ptr()).collect();
        let has_home = env.iter().any(|e| e.starts_with("HOME="));
        let home_slot = (!has_home).then_some(env_ptrs.len());
        if !has_home {
            env_ptrs.push(std::ptr::null());
        }
        env_ptrs.push(std::ptr::null());

        let searched = !arg0.contains('/');
        let candidates = if !searched {
            vec![cstring("command", arg0)?]
        } else {
            let path = env
                .iter()
                .rev()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or(DEFAULT_PATH);
            path.split(':')
                .map(|dir| {
                    let dir = if dir.is_empty() { "." } else { dir };
                    cstring("command", &format!("{}/{arg0}", dir.trim_end_matches('/')))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(ExecPlan {
            _argv: argv,
            argv_ptrs,
            _env: envs,
            env_ptrs,
            home_slot,
            home_env: [0; HOME_ENV_MAX],
            candidates,
            searched,
        })
    }

    #[cfg(test)]
    pub fn candidates(&self) -> &[CString] {
        &self.candidates
    }

    /// Child: fills the reserved HOME slot from the resolved user.
    fn set_home(&mut self, home: &[u8]) {
        let Some(slot) = self.home_slot else { return };
        let len = home.len().min(HOME_ENV_MAX - 6);
        self.home_env[..5].copy_from_slice(b"HOME=");
        self.home_env[5..5 + len].copy_from_slice(&home[..len]);
        self.home_env[5 + len] = 0;
        self.env_ptrs[slot] = self.home_env.as_ptr().cast();
    }

    /// Child: tries every candidate; returns the failure to report.
    fn exec(&self) -> Failure<'_> {
        let mut last = libc::ENOENT;
        for c in &self.candidates {
            match sys::execve(c, &self.argv_ptrs, &self.env_ptrs) {
                // Not here: try the next PATH entry.
                e @ (libc::ENOENT | libc::ENOTDIR) => last = e,
                // Go's LookPath skips non-executable PATH entries too.
                libc::EACCES if self.searched => last = libc::ENOENT,
                e => {
                    return Failure {
                        kind: FailKind::ExecFailed,
                        step: "exec",
                        detail: c.to_bytes(),
                        errno: e,
                    }
                }
            }
        }
        Failure {
            kind: FailKind::NotFound,
            step: "exec",
            detail: b"",
            errno: last,
        }
    }
}

/// Everything the final stretch needs: who to become and how to lock down.
pub(crate) struct Lockdown {
    pub seccomp: Vec<libc::sock_filter>,
    pub last_cap: u32,
    pub user: UserSpec,
    /// Buffers for /etc/passwd and /etc/group, allocated before cloning.
    pub passwd_buf: Vec<u8>,
    pub group_buf: Vec<u8>,
}

const ETC_BUF: usize = 64 * 1024;

impl Lockdown {
    pub fn new(user: &str) -> Self {
        Lockdown {
            seccomp: seccomp::default_filter(),
            last_cap: caps::last_cap(),
            user: UserSpec::parse(user),
            passwd_buf: vec![0; ETC_BUF],
            group_buf: vec![0; ETC_BUF],
        }
    }

    /// Child: resolves the user against the (container's) /etc files.
    pub fn resolve_user(&mut self, out: &mut ExecUser) -> Result<(), Failure<'static>> {
        let passwd = read_small(c"/etc/passwd", &mut self.passwd_buf)?;
        let need_group = !matches!(self.user.group, Some(crate::user::IdOrName::Id(_)));
        let group = if need_group {
            read_small(c"/etc/group", &mut self.group_buf)?
        } else {
            None
        };
        let passwd = passwd.map(|n| &self.passwd_buf[..n]);
        let group = group.map(|n| &self.group_buf[..n]);
        crate::user::resolve_into(&self.user, passwd, group, out).map_err(|e| Failure {
            kind: match e {
                UserError::NoSuchUser => FailKind::NoSuchUser,
                UserError::NoSuchGroup => FailKind::NoSuchGroup,
            },
            step: "resolve user",
            detail: b"",
            errno: 0,
        })
    }
}

/// Reads a small file into `buf`; Ok(None) when it does not exist.
fn read_small(path: &'static CStr, buf: &mut [u8]) -> Result<Option<usize>, Failure<'static>> {
    let fd = match sys::open(path, libc::O_RDONLY | libc::O_CLOEXEC, 0) {
        Ok(fd) => fd,
        Err(libc::ENOENT | libc::ENOTDIR) => return Ok(None),
        Err(e) => return Err(Failure::setup("open", path, e)),
    };
    let n = sys::read_full(fd, buf);
    sys::close(fd);
    n.map(Some).map_err(|e| Failure::setup("read", path, e))
}

/// Makes `stdio` the process's fds 0, 1 and 2 (without CLOEXEC), even when
/// they are given in a different order among 0..=2.
pub(crate) fn install_stdio(stdio: [RawFd; 3]) -> Result<(), Failure<'static>> {
    let mut fds = stdio;
    // Move any fd that sits in 0..=2 at the wrong place out of the way
    // first, so the dup2 sequence cannot clobber it.
    if fds
        .iter()
        .enumerate()
        .any(|(i, &fd)| (0..3).contains(&fd) && fd != i as RawFd)
    {
        for fd in fds.iter_mut() {
            *fd = sys::dup_cloexec_above(*fd, 3).step("dup stdio")?;
        }
    }
    for (i, &fd) in fds.iter().enumerate() {
        let target = i as RawFd;
        if fd == target {
            sys::clear_cloexec(fd).step("dup stdio")?;
        } else {
            sys::dup2(fd, target).step("dup stdio")?;
        }
    }
    Ok(())
}

/// New session, and with a tty, the terminal on fd 0 as controlling tty.
pub(crate) fn session(tty: bool) -> Result<(), Failure<'static>> {
    // Already a session leader only if we are one; EPERM means we are a
    // process group leader already, which is fine for exec children.
    match sys::setsid() {
        Ok(()) | Err(libc::EPERM) => {}
        Err(e) => return Err(Failure::step("setsid", e)),
    }
    if tty {
        sys::set_controlling_tty(0).step("set controlling terminal")?;
    }
    Ok(())
}

/// The final stretch: capabilities, ids, no_new_privs, seccomp, exec.
/// Only returns (as the failure to report) when nothing could be exec'd.
pub(crate) fn lock_down_and_exec<'a>(
    lockdown: &'a Lockdown,
    user: &ExecUser,
    plan: &'a mut ExecPlan,
) -> Failure<'a> {
    match lock_down(lockdown, user, plan) {
        Ok(()) => {}
        Err(f) => return f,
    }
    plan.exec()
}

fn lock_down(
    lockdown: &Lockdown,
    user: &ExecUser,
    plan: &mut ExecPlan,
) -> Result<(), Failure<'static>> {
    plan.set_home(user.home());
    caps::drop_bounding(caps::DEFAULT_MASK, lockdown.last_cap)
        .step("drop bounding capabilities")?;
    if user.uid != 0 {
        // Keep the permitted set across setresuid so capset below can
        // still set the inheritable set (cleared again by execve).
        sys::prctl(libc::PR_SET_KEEPCAPS, 1, 0).step("prctl keepcaps")?;
    }
    sys::setgroups(user.groups()).step("setgroups")?;
    sys::setresgid(user.gid).step("setgid")?;
    sys::setresuid(user.uid).step("setuid")?;
    caps::set_process_caps(caps::DEFAULT_MASK).step("capset")?;
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).step("prctl no_new_privs")?;
    seccomp::install(&lockdown.seccomp).step("seccomp")?;
    sys::umask(0o022);
    // Nothing but 0, 1 and 2 crosses into the container.
    sys::cloexec_from(3).step("close_range")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path() {
        let env = vec!["PATH=/usr/bin:/bin/".to_string(), "A=b".to_string()];
        let plan = ExecPlan::new(&["ls".into(), "-l".into()], &env).unwrap();
        let c: Vec<_> = plan
            .candidates()
            .iter()
            .map(|c| c.to_str().unwrap())
            .collect();
        assert_eq!(c, ["/usr/bin/ls", "/bin/ls"]);
        let plan = ExecPlan::new(&["./x".into()], &env).unwrap();
        assert_eq!(plan.candidates().len(), 1);
        let plan = ExecPlan::new(&["true".into()], &[]).unwrap();
        assert_eq!(plan.candidates().len(), 6);
        assert!(plan.home_slot.is_some());
        assert!(ExecPlan::new(&[], &[]).is_err());
        assert!(ExecPlan::new(&["a\0b".into()], &[]).is_err());
    }

    #[test]
    fn reports_round_trip() {
        let user = UserSpec::parse("nope");
        let roundtrip = |f: Failure<'_>, arg0: &str| {
            let mut buf = vec![f.kind as u8];
            buf.extend_from_slice(&f.errno.to_le_bytes());
            buf.extend_from_slice(&(f.step.len() as u16).to_le_bytes());
            buf.extend_from_slice(&(f.detail.len() as u16).to_le_bytes());
            buf.extend_from_slice(f.step.as_bytes());
            buf.extend_from_slice(f.detail);
            decode_report(&buf, arg0, &user)
        };
        let e = roundtrip(
            Failure {
                kind: FailKind::NotFound,
                step: "exec",
                detail: b"",
                errno: libc::ENOENT,
            },
            "nope",
        );
        assert_eq!(
            e.to_string(),
            "exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(e.exit_code(), 127);
        let e = roundtrip(
            Failure {
                kind: FailKind::NotFound,
                step: "exec",
                detail: b"",
                errno: libc::ENOENT,
            },
            "/nope",
        );
        assert_eq!(
            e.to_string(),
            "exec: \"/nope\": stat /nope: no such file or directory"
        );
        let e = roundtrip(
            Failure {
                kind: FailKind::ExecFailed,
                step: "exec",
                detail: b"/etc",
                errno: libc::EACCES,
            },
            "/etc",
        );
        assert_eq!(e.to_string(), "exec: \"/etc\": permission denied");
        assert_eq!(e.exit_code(), 126);
        let e = roundtrip(Failure::setup("mount", c"/proc", libc::EPERM), "x");
        assert_eq!(
            e.to_string(),
            "container setup: mount /proc: Operation not permitted (os error 1)"
        );
        let e = roundtrip(
            Failure {
                kind: FailKind::NoSuchUser,
                step: "resolve user",
                detail: b"",
                errno: 0,
            },
            "x",
        );
        assert_eq!(
            e.to_string(),
            "unable to find user nope: no matching entries in passwd file"
        );
        assert!(matches!(
            decode_report(&[1, 2], "x", &user),
            RuntimeError::BadReport(2)
        ));
    }
}
