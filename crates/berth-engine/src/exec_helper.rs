//! `berth __exec JSON`: a single-threaded helper that joins a running
//! container's namespaces and cgroup and runs a command there (`exec`).
//! Its stdio are the command's (or, with a tty, relayed through a pty),
//! and its exit code is the command's.

use berth_runtime::cgroup::Cgroup;
use berth_runtime::exec::ExecSpec;
use berth_runtime::ContainerRuntime;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecArgs {
    pub pid: i32,
    pub cgroup: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub tty: bool,
}

pub fn exec_main(rt: &dyn ContainerRuntime, json: &str) -> i32 {
    let args: ExecArgs = match serde_json::from_str(json) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("berth exec: bad arguments: {e}");
            return 125;
        }
    };
    let cgroup = match Cgroup::open(&args.cgroup) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth exec: {e}");
            return 125;
        }
    };
    let spec = ExecSpec {
        target_pid: args.pid,
        args: args.args.clone(),
        env: args.env.clone(),
        cwd: args.cwd.clone(),
        user: args.user.clone(),
        tty: args.tty,
    };
    if !args.tty {
        return match rt.exec(&spec, &cgroup, [0, 1, 2]) {
            Ok(pid) => wait_code(pid),
            Err(e) => fail(&e),
        };
    }
    // A terminal from the container's own devpts, so that the command sees
    // /dev/pts/N; the host's as a fallback.
    let root = std::path::PathBuf::from(format!("/proc/{}/root", args.pid));
    let (master, slave): (File, File) = match berth_runtime::tty::open_pty_in(&root) {
        Ok(pair) => pair,
        Err(_) => match nix::pty::openpty(None, None) {
            Ok(p) => (File::from(p.master), File::from(p.slave)),
            Err(e) => {
                eprintln!("berth exec: creating pty: {e}");
                return 125;
            }
        },
    };
    let slave_fd = slave.as_raw_fd();
    let pid = match rt.exec(&spec, &cgroup, [slave_fd, slave_fd, slave_fd]) {
        Ok(pid) => pid,
        Err(e) => return fail(&e),
    };
    drop(slave);
    let mut master = master;
    if let Ok(mut to_master) = master.try_clone() {
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || to_master.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    let mut buf = [0u8; 8192];
    let mut stdout = std::io::stdout();
    // Reading the master fails with EIO once the command and its children
    // have closed the terminal.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0
            || stdout
                .write_all(&buf[..n])
                .and_then(|_| stdout.flush())
                .is_err()
        {
            break;
        }
    }
    wait_code(pid)
}

fn fail(e: &berth_runtime::RuntimeError) -> i32 {
    eprintln!("{e}");
    match e {
        berth_runtime::RuntimeError::Exec { code, .. } => *code,
        _ => 126,
    }
}

fn wait_code(pid: i32) -> i32 {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}
