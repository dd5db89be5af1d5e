//! The task shim: `berth __task-shim DIR`.
//!
//! One small process per command task, in its own session so the agent can
//! stop, crash or restart without taking tasks down. It creates the task's
//! cgroup, starts the command through `berth __task-shim --enter DIR`
//! (which joins the cgroup and then execs `/bin/sh -c SHELL`, so nothing of
//! the task ever runs outside it), waits for it, and records how it ended
//! in DIR/exit.json. The shim itself stays outside the cgroup so the
//! task's OOM kill cannot take it down.

use crate::sandbox::{ExitRecord, Sandbox, ShimRecord};
use crate::util::now_ms;
use berth_runtime::cgroup::Cgroup;
use berth_types::cluster::TaskKind;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// PATH given to commands, as Docker gives containers.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Entry point of `berth __task-shim ARGS` (ARGS without the subcommand):
/// `DIR` runs the shim, `--enter DIR` is the command's first step.
pub fn task_shim_main(args: &[String]) -> i32 {
    match args {
        [flag, dir] if flag == "--enter" => enter_main(Path::new(dir)),
        [dir] if !dir.starts_with('-') => shim_main(Path::new(dir)),
        _ => {
            eprintln!("usage: berth __task-shim [--enter] DIR");
            2
        }
    }
}

fn shim_main(dir: &Path) -> i32 {
    // Leave the agent's session: a Ctrl-C or SIGHUP meant for the agent
    // must not reach its tasks.
    let _ = nix::unistd::setsid();
    let sb = Sandbox::new(dir.to_path_buf());
    let me = std::process::id() as i32;
    let mut record = ShimRecord {
        pid: me,
        start_time: berth_engine::fsutil::process_start_time(me).unwrap_or(0),
        child_pid: None,
    };
    if let Err(e) = sb.write_shim(&record) {
        eprintln!("berth task shim: {e}");
        return 1;
    }
    match run(&sb, &mut record) {
        Ok(exit) => {
            if let Err(e) = sb.write_exit(&exit) {
                eprintln!("berth task shim: {e}");
                return 1;
            }
            0
        }
        Err(msg) => {
            eprintln!("berth task shim: {msg}");
            let exit = ExitRecord {
                error: Some(msg),
                finished_ms: now_ms(),
                ..Default::default()
            };
            if let Err(e) = sb.write_exit(&exit) {
                eprintln!("berth task shim: {e}");
            }
            1
        }
    }
}

fn run(sb: &Sandbox, record: &mut ShimRecord) -> Result<ExitRecord, String> {
    let rec = sb
        .task()
        .ok_or_else(|| format!("reading {}", sb.task_path().display()))?;
    let cgroup_name = rec
        .cgroup
        .clone()
        .ok_or_else(|| format!("{}: no cgroup given", sb.task_path().display()))?;
    if !matches!(rec.task.kind, TaskKind::Command { .. }) {
        return Err(format!("task {} is not a command task", rec.task.task_id));
    }
    let cgroup = Cgroup::create(&cgroup_name, &rec.limits)
        .map_err(|e| format!("creating cgroup {cgroup_name}: {e}"))?;
    let result = spawn_and_wait(sb, &rec, record, &cgroup);
    // The task is over when its command ends: whatever it left behind in
    // the cgroup goes too (Mesos does the same).
    let oom = cgroup.oom_killed();
    if let Err(e) = cgroup.kill_all(libc::SIGKILL) {
        eprintln!("berth task shim: killing what is left in cgroup {cgroup_name}: {e}");
    }
    if let Err(e) = cgroup.remove() {
        eprintln!("berth task shim: removing cgroup {cgroup_name}: {e}");
    }
    let status = result?;
    if let Ok(text) = std::fs::read_to_string(sb.enter_error_path()) {
        return Err(text.trim().to_string());
    }
    let signal = status.signal();
    let exit_code = status.code().or(signal.map(|s| 128 + s));
    Ok(ExitRecord {
        exit_code,
        signal,
        oom,
        error: None,
        finished_ms: now_ms(),
    })
}

fn spawn_and_wait(
    sb: &Sandbox,
    rec: &crate::sandbox::TaskRecord,
    record: &mut ShimRecord,
    cgroup: &Cgroup,
) -> Result<std::process::ExitStatus, String> {
    let open = |p: PathBuf| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| format!("opening {}: {e}", p.display()))
    };
    let stdout = open(sb.stdout_path())?;
    let stderr = open(sb.stderr_path())?;
    let exe = std::env::current_exe().map_err(|e| format!("finding the berth binary: {e}"))?;
    let sandbox = sb.dir.display().to_string();
    let mut cmd = Command::new(exe);
    cmd.arg("__task-shim")
        .arg("--enter")
        .arg(&sb.dir)
        .current_dir(&sb.dir)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", &sandbox)
        .env("BERTH_SANDBOX", &sandbox)
        .env("MESOS_SANDBOX", &sandbox)
        .env("BERTH_TASK_ID", &rec.task.task_id)
        .env("MESOS_TASK_ID", &rec.task.task_id)
        .envs(&rec.task.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the command: {e}"))?;
    let pid = child.id() as i32;
    // The command runs once its first process has joined the cgroup:
    // only then does RUNNING mean that a kill reaches all of it.
    let joined_by = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if cgroup.pids().is_ok_and(|p| p.contains(&pid)) {
            break;
        }
        match child.try_wait() {
            Ok(None) if std::time::Instant::now() < joined_by => {}
            _ => break, // ended (or failed to join): exit.json tells
        }
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    record.child_pid = Some(pid);
    if let Err(e) = sb.write_shim(record) {
        eprintln!("berth task shim: {e}");
    }
    child
        .wait()
        .map_err(|e| format!("waiting for the command: {e}"))
}

/// Joins the task's cgroup, then becomes `/bin/sh -c SHELL`. Failures go
/// to DIR/enter-error so the shim can tell them from the command's own
/// exit codes.
fn enter_main(dir: &Path) -> i32 {
    let sb = Sandbox::new(dir.to_path_buf());
    let fail = |msg: String, code: i32| {
        let _ = std::fs::write(sb.enter_error_path(), &msg);
        eprintln!("berth: {msg}");
        code
    };
    let Some(rec) = sb.task() else {
        return fail(format!("reading {}", sb.task_path().display()), 125);
    };
    let TaskKind::Command { shell } = &rec.task.kind else {
        return fail(
            format!("task {} is not a command task", rec.task.task_id),
            125,
        );
    };
    let Some(name) = &rec.cgroup else {
        return fail("no cgroup given".into(), 125);
    };
    let joined = Cgroup::open(name).and_then(|cg| cg.add_pid(std::process::id() as i32));
    if let Err(e) = joined {
        return fail(format!("joining cgroup {name}: {e}"), 125);
    }
    let args: Result<Vec<std::ffi::CString>, _> = ["sh", "-c", shell.as_str()]
        .iter()
        .map(|a| std::ffi::CString::new(*a))
        .collect();
    let Ok(args) = args else {
        return fail("the command contains a NUL byte".into(), 125);
    };
    let sh = c"/bin/sh";
    match nix::unistd::execv(sh, &args) {
        Ok(never) => match never {},
        Err(e) => fail(format!("running /bin/sh: {e}"), 127),
    }
}
