//! The per-container shim: `berth __shim BUNDLE`.
//!
//! One small single-threaded-at-start process per running container. It
//! creates the cgroup, spawns the container through the runtime (which
//! must happen in a single-threaded process), then owns the container's
//! stdio: it writes every output chunk to the log, fans it out to attached
//! clients over a unix socket, feeds their input to the container, and when
//! the container ends records its exit status durably and cleans up.
//!
//! The shim runs in its own session so that the daemon can stop, crash or
//! restart without taking containers down; a restarted daemon re-adopts
//! running containers through their shims.

use crate::fsutil::{now_unix, process_start_time, replace_atomic};
use crate::logs::{self, LogLimits, LogWriter, Tail};
use crate::spec::{ExitRecord, ShimReport, ShimSpec};
use berth_api::frame::{read_frame, write_frame, FrameKind};
use berth_runtime::cgroup::Cgroup;
use berth_runtime::ContainerRuntime;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Entry point of `berth __shim`. Returns the process exit code.
pub fn shim_main(rt: &dyn ContainerRuntime, bundle: &Path, foreground: bool) -> i32 {
    let spec = match read_spec(bundle) {
        Ok(s) => s,
        Err(e) => return report_failure(&e, 1, foreground),
    };
    if foreground {
        return run_foreground(rt, &spec);
    }
    // Leave the daemon's session and process group: a Ctrl-C on a daemon
    // running in a terminal must not reach containers.
    let _ = nix::unistd::setsid();
    match run_detached(rt, &spec) {
        Ok(()) => 0,
        Err((msg, code)) => report_failure(&msg, code, false),
    }
}

fn read_spec(bundle: &Path) -> Result<ShimSpec, String> {
    let path = bundle.join("spec.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("parsing {}: {e}", path.display()))
}

fn report_failure(msg: &str, code: i32, foreground: bool) -> i32 {
    if foreground {
        eprintln!("{msg}");
        return if code == 0 { 1 } else { code };
    }
    let report = ShimReport {
        ok: false,
        pid: 0,
        start_time: 0,
        error: Some(msg.to_string()),
        code,
    };
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    1
}

fn runtime_error_code(e: &berth_runtime::RuntimeError) -> i32 {
    match e {
        berth_runtime::RuntimeError::Exec { code, .. } => *code,
        _ => 125,
    }
}

/// Build steps: stdio is the shim's own, no log, no socket; the shim's exit
/// code is the container's.
fn run_foreground(rt: &dyn ContainerRuntime, spec: &ShimSpec) -> i32 {
    let cgroup = match Cgroup::create(&spec.cgroup_name, &spec.limits) {
        Ok(c) => c,
        Err(e) => return report_failure(&e.to_string(), 125, true),
    };
    let devnull = match File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => return report_failure(&format!("opening /dev/null: {e}"), 125, true),
    };
    let code = match rt.spawn(&spec.container, &cgroup, [devnull.as_raw_fd(), 1, 2]) {
        Ok(spawned) => wait_exit(spawned.pid, &cgroup).code,
        Err(e) => report_failure(&e.to_string(), runtime_error_code(&e), true),
    };
    let _ = cgroup.kill_all(libc::SIGKILL);
    let _ = cgroup.remove();
    code
}

/// What is shared between the shim's threads.
struct Hub {
    log: LogWriter,
    clients: Vec<UnixStream>,
    exit: Option<ExitRecord>,
    /// Some client has attached (for `wait_attach`).
    attached: bool,
}

impl Hub {
    fn output(&mut self, stream: u8, data: &[u8]) {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        if let Err(e) = self.log.write(stream, data, millis) {
            eprintln!("shim: writing log: {e}");
        }
        let kind = if stream == logs::STDERR {
            FrameKind::Stderr
        } else {
            FrameKind::Stdout
        };
        // A client that cannot keep up (write timeout) or went away is dropped
        // rather than stalling the container.
        self.clients
            .retain_mut(|c| write_frame(c, kind, data).is_ok());
    }
}

struct Stdio {
    /// The container's ends, closed in the shim once it runs.
    child: [OwnedFd; 3],
    /// Output sources the shim reads: (stream, fd).
    outputs: Vec<(u8, File)>,
    /// Where client input goes (a pipe, or the pty master).
    input: Option<File>,
    /// The pty master, for resizes.
    master: Option<RawFd>,
}

fn make_stdio(spec: &ShimSpec) -> Result<Stdio, String> {
    let err = |what: &str, e: nix::Error| format!("creating {what}: {e}");
    if spec.container.tty {
        // 24x80 until an attached client sends its real size.
        let size = nix::pty::Winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).map_err(|e| err("pty", e))?;
        let master = File::from(pty.master);
        let master_fd = master.as_raw_fd();
        let reader = master
            .try_clone()
            .map_err(|e| format!("duplicating pty master: {e}"))?;
        let s1 = pty
            .slave
            .try_clone()
            .map_err(|e| format!("duplicating pty slave: {e}"))?;
        let s2 = pty
            .slave
            .try_clone()
            .map_err(|e| format!("duplicating pty slave: {e}"))?;
        Ok(Stdio {
            child: [pty.slave, s1, s2],
            outputs: vec![(logs::STDOUT, reader)],
            input: Some(master),
            master: Some(master_fd),
        })
    } else {
        let (out_r, out_w) = nix::unistd::pipe().map_err(|e| err("stdout pipe", e))?;
        let (err_r, err_w) = nix::unistd::pipe().map_err(|e| err("stderr pipe", e))?;
        let (stdin_child, input) = if spec.stdin {
            let (r, w) = nix::unistd::pipe().map_err(|e| err("stdin pipe", e))?;
            (r, Some(File::from(w)))
        } else {
            let null = File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
            (OwnedFd::from(null), None)
        };
        Ok(Stdio {
            child: [stdin_child, out_w, err_w],
            outputs: vec![
                (logs::STDOUT, File::from(out_r)),
                (logs::STDERR, File::from(err_r)),
            ],
            input,
            master: None,
        })
    }
}

fn run_detached(rt: &dyn ContainerRuntime, spec: &ShimSpec) -> Result<(), (String, i32)> {
    let fail = |m: String| (m, 125);
    let log = LogWriter::open(
        &spec.log_path,
        LogLimits {
            max_file_bytes: spec.log_max_file_bytes,
            max_rotated: spec.log_max_rotated,
        },
    )
    .map_err(|e| fail(format!("opening log {}: {e}", spec.log_path.display())))?;
    let _ = std::fs::remove_file(&spec.attach_socket);
    let listener = UnixListener::bind(&spec.attach_socket).map_err(|e| {
        fail(format!(
            "binding attach socket {}: {e}",
            spec.attach_socket.display()
        ))
    })?;
    let cgroup =
        Cgroup::create(&spec.cgroup_name, &spec.limits).map_err(|e| fail(e.to_string()))?;
    let stdio = make_stdio(spec).map_err(fail)?;
    let fds = [
        stdio.child[0].as_raw_fd(),
        stdio.child[1].as_raw_fd(),
        stdio.child[2].as_raw_fd(),
    ];
    let spawned = match rt.spawn(&spec.container, &cgroup, fds) {
        Ok(s) => s,
        Err(e) => {
            let _ = cgroup.kill_all(libc::SIGKILL);
            let _ = cgroup.remove();
            let _ = std::fs::remove_file(&spec.attach_socket);
            return Err((e.to_string(), runtime_error_code(&e)));
        }
    };
    let Stdio {
        child,
        outputs,
        input,
        master,
    } = stdio;
    drop(child);
    let pid = spawned.pid;
    let report = ShimReport {
        ok: true,
        pid,
        start_time: process_start_time(pid).unwrap_or(0),
        error: None,
        code: 0,
    };
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    let _ = std::io::stdout().flush();

    let hub = Arc::new(Mutex::new(Hub {
        log,
        clients: Vec::new(),
        exit: None,
        attached: false,
    }));
    let attached = Arc::new(std::sync::Condvar::new());
    let input = Arc::new(Mutex::new(input));
    let readers: Vec<_> = outputs
        .into_iter()
        .map(|(stream, mut src)| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match src.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => hub
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .output(stream, &buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        // EIO from a pty master once the last slave closes.
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    {
        let hub = hub.clone();
        let log_path = spec.log_path.clone();
        let attached = attached.clone();
        std::thread::spawn(move || {
            accept_clients(listener, hub, attached, input, pid, master, log_path)
        });
    }

    let exit = wait_exit(pid, &cgroup);
    for r in readers {
        let _ = r.join();
    }
    let record = ExitRecord {
        finished_at: now_unix(),
        ..exit
    };
    if let Err(e) = replace_atomic(
        &spec.exit_path,
        &serde_json::to_vec(&record).unwrap_or_default(),
    ) {
        eprintln!("shim: writing {}: {e}", spec.exit_path.display());
    }
    {
        let mut hub = hub.lock().unwrap_or_else(|p| p.into_inner());
        hub.exit = Some(record);
        if spec.wait_attach && !hub.attached {
            // The client of `berth run` has not connected yet (a container
            // that ended within microseconds): give it time to collect the
            // output and exit status.
            let (guard, _) = attached
                .wait_timeout_while(hub, Duration::from_secs(10), |h| !h.attached)
                .unwrap_or_else(|p| p.into_inner());
            hub = guard;
        }
        let frame = berth_api::Frame::exit(record.code, record.oom_killed);
        for c in hub.clients.iter_mut() {
            let _ = write_frame(c, FrameKind::Exit, &frame.data);
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        hub.clients.clear();
    }
    let _ = cgroup.kill_all(libc::SIGKILL);
    let _ = cgroup.remove();
    let _ = std::fs::remove_file(&spec.attach_socket);
    Ok(())
}

/// Waits for the container's main process and turns its end into an exit
/// status, noticing OOM kills through the cgroup.
fn wait_exit(pid: i32, cgroup: &Cgroup) -> ExitRecord {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            // Like Docker, any OOM kill in the container's cgroup marks it
            // OOM-killed: the victim is often a child, and the main process
            // then exits with 137 by itself.
            Ok(WaitStatus::Exited(_, code)) => {
                return ExitRecord {
                    code,
                    signal: None,
                    oom_killed: cgroup.oom_killed(),
                    finished_at: 0,
                };
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                let sig = sig as i32;
                return ExitRecord {
                    code: 128 + sig,
                    signal: Some(sig),
                    oom_killed: cgroup.oom_killed(),
                    finished_at: 0,
                };
            }
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                eprintln!("shim: waiting for {pid}: {e}");
                return ExitRecord {
                    code: 255,
                    signal: None,
                    oom_killed: false,
                    finished_at: 0,
                };
            }
        }
    }
}

fn accept_clients(
    listener: UnixListener,
    hub: Arc<Mutex<Hub>>,
    attached: Arc<std::sync::Condvar>,
    input: Arc<Mutex<Option<File>>>,
    pid: i32,
    master: Option<RawFd>,
    log_path: std::path::PathBuf,
) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let hub = hub.clone();
        let input = input.clone();
        let log_path = log_path.clone();
        let attached = attached.clone();
        std::thread::spawn(move || {
            serve_client(conn, hub, &attached, input, pid, master, &log_path)
        });
    }
}

fn serve_client(
    mut conn: UnixStream,
    hub: Arc<Mutex<Hub>>,
    attached: &std::sync::Condvar,
    input: Arc<Mutex<Option<File>>>,
    pid: i32,
    master: Option<RawFd>,
    log_path: &Path,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let tail = match read_frame(&mut conn) {
        Ok(Some(f)) if f.kind == FrameKind::Hello => {
            Tail::parse(&f.text()).unwrap_or(Tail::Lines(0))
        }
        _ => return,
    };
    let _ = conn.set_read_timeout(None);
    let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
    {
        let mut hub = hub.lock().unwrap_or_else(|p| p.into_inner());
        // Replay under the lock: output written meanwhile waits, so the
        // client sees every byte exactly once.
        if tail != Tail::Lines(0) {
            let entries = logs::read_all(log_path).unwrap_or_default();
            for e in logs::tail(entries, tail) {
                let kind = if e.stream == logs::STDERR {
                    FrameKind::Stderr
                } else {
                    FrameKind::Stdout
                };
                if write_frame(&mut conn, kind, &e.data).is_err() {
                    return;
                }
            }
        }
        hub.attached = true;
        attached.notify_all();
        if let Some(exit) = hub.exit {
            let frame = berth_api::Frame::exit(exit.code, exit.oom_killed);
            let _ = write_frame(&mut conn, FrameKind::Exit, &frame.data);
            return;
        }
        match conn.try_clone() {
            Ok(c) => hub.clients.push(c),
            Err(_) => return,
        }
    }
    // Input side: stdin bytes, end of stdin, signals, terminal resizes.
    while let Ok(Some(frame)) = read_frame(&mut conn) {
        match frame.kind {
            FrameKind::Stdin => {
                let mut guard = input.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(w) = guard.as_mut() {
                    if w.write_all(&frame.data).is_err() {
                        *guard = None;
                    }
                }
            }
            FrameKind::StdinEof => {
                // Closing a pipe gives the container EOF; a pty gets ^D.
                let mut guard = input.lock().unwrap_or_else(|p| p.into_inner());
                if master.is_some() {
                    if let Some(w) = guard.as_mut() {
                        let _ = w.write_all(&[4]);
                    }
                } else {
                    *guard = None;
                }
            }
            FrameKind::Signal => {
                if let Ok(sig) = frame.text().trim().parse::<i32>() {
                    let _ = berth_runtime::pidfd::kill(pid, sig);
                }
            }
            FrameKind::Resize => {
                let text = frame.text();
                let mut it = text.split(' ').filter_map(|v| v.parse::<u16>().ok());
                if let (Some(rows), Some(cols), Some(fd)) = (it.next(), it.next(), master) {
                    let _ = berth_runtime::tty::set_winsize(fd, rows, cols);
                }
            }
            _ => {}
        }
    }
}
