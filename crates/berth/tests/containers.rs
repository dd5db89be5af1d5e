//! Container lifecycle through the real binary, as root, with real
//! namespaces, cgroups, overlayfs and veth.

mod common;
use common::*;

#[test]
fn run_streams_output_and_returns_the_exit_code() {
    let d = daemon();
    let out = d.cli(&["run", "--rm", "busybox", "echo", "hello"]);
    assert_eq!(stdout(&out), "hello\n", "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0));
    let out = d.cli(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo oops >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stderr(&out), "oops\n");
    // --rm leaves nothing behind.
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), "");
    let left: Vec<_> = std::fs::read_dir(d.data_dir.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}\n{}", d.log());
}

#[test]
fn isolation_pid_hostname_caps_seccomp() {
    let d = daemon();
    let out = d.ok(&[
        "run",
        "--rm",
        "--hostname",
        "box",
        "busybox",
        "sh",
        "-c",
        "echo $$; hostname; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "1",
        "the command is pid 1 in its pid namespace: {out}"
    );
    assert_eq!(lines[1], "box");
    assert!(
        out.contains("CapEff:\t00000000a80425fb"),
        "Docker's default capability set: {out}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // /proc/kcore is masked.
    let out = d.cli(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "head -c 1 /proc/kcore | wc -c",
    ]);
    assert_eq!(stdout(&out).trim(), "0");
}

#[test]
fn detached_lifecycle_ps_stop_start_kill_rm() {
    let d = daemon();
    let id = d
        .ok(&["run", "-d", "--name", "web", "busybox", "sleep", "1000"])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64);
    let ps = d.ok(&["ps"]);
    assert!(ps.starts_with("CONTAINER ID"), "{ps}");
    assert!(
        ps.contains(&id[..12])
            && ps.contains("Up ")
            && ps.contains("web")
            && ps.contains("\"sleep 1000\""),
        "{ps}"
    );
    // A running container is not removed without -f.
    d.fails(&["rm", "web"], "running");
    // sleep as pid 1 ignores SIGTERM: stop kills it after the timeout.
    d.ok(&["stop", "-t", "1", "web"]);
    let ps = d.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (137)"), "{ps}");
    assert!(!d.ok(&["ps"]).contains("web"));
    d.ok(&["start", "web"]);
    assert!(d.ok(&["ps"]).contains("web"));
    d.ok(&["kill", "-s", "KILL", "web"]);
    assert!(eventually(5, || d
        .ok(&["ps", "-a"])
        .contains("Exited (137)")));
    assert_eq!(d.ok(&["wait", "web"]).trim(), "137");
    d.ok(&["start", "web"]);
    d.ok(&["rm", "-f", "web"]);
    assert!(!d.ok(&["ps", "-a"]).contains("web"));
    // Nothing of the container is left: no cgroup, no directory.
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/pids/berth/{id}")).exists());
    assert!(!d.data_dir.join("containers").join(&id).exists());
}

#[test]
fn names_are_unique_and_errors_are_one_line() {
    let d = daemon();
    d.ok(&["create", "--name", "one", "busybox", "true"]);
    let out = d.fails(
        &["create", "--name", "one", "busybox", "true"],
        "already in use",
    );
    assert_eq!(stderr(&out).lines().count(), 1);
    let out = d.cli(&["run", "--rm", "nosuchimage", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("no such image"), "{}", stderr(&out));
    let out = d.cli(&["run", "--rm", "busybox", "/nope"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    d.fails(
        &["run", "--rm", "-p", "99999:1", "busybox", "true"],
        "port mapping",
    );
    d.fails(&["stop", "nosuch"], "no such container: nosuch");
}

#[test]
fn logs_with_tail_and_follow() {
    let d = daemon();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "talk",
        "busybox",
        "sh",
        "-c",
        "echo err >&2; sleep 0.2; for i in 1 2 3; do echo line$i; done",
    ]);
    assert_eq!(d.ok(&["wait", "talk"]).trim(), "0");
    let out = d.cli(&["logs", "talk"]);
    assert_eq!(stdout(&out), "line1\nline2\nline3\n");
    assert_eq!(stderr(&out), "err\n");
    // The last two lines are both on stdout; the earlier stderr line is cut.
    let out = d.cli(&["logs", "--tail", "2", "talk"]);
    assert_eq!(stdout(&out), "line2\nline3\n");
    assert_eq!(stderr(&out), "");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        "busybox",
        "sh",
        "-c",
        "echo a; sleep 1; echo b",
    ]);
    let out = d.cli(&["logs", "-f", "slow"]);
    assert_eq!(
        stdout(&out),
        "a\nb\n",
        "follow runs until the container ends"
    );
}

#[test]
fn exec_runs_in_the_container() {
    let d = daemon();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "box",
        "--hostname",
        "inside",
        "busybox",
        "sleep",
        "1000",
    ]);
    assert_eq!(d.ok(&["exec", "box", "hostname"]).trim(), "inside");
    let out = d.cli(&["exec", "box", "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    // The exec'd process sees the container's processes only.
    let ps = d.ok(&["exec", "box", "ps"]);
    assert!(ps.contains("sleep 1000") && ps.lines().count() <= 4, "{ps}");
    // -t gives a terminal of the container's own devpts.
    let tty = d.ok(&["exec", "-t", "box", "tty"]);
    assert!(tty.starts_with("/dev/pts/"), "{tty}");
    let out = d.cli(&["exec", "box", "/nope"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
}

#[test]
fn memory_limit_oom_kills_with_137() {
    let d = daemon();
    let out = d.cli(&[
        "run",
        "--name",
        "hog",
        "--memory",
        "16m",
        "busybox",
        "sh",
        "-c",
        "head -c 200m /dev/zero | tail",
    ]);
    assert_eq!(out.status.code(), Some(137), "stderr: {}", stderr(&out));
    let v = inspect(&d, "hog");
    assert_eq!(v["oom_killed"], true, "{v}");
}

#[test]
fn pids_limit_stops_fork_bombs() {
    let d = daemon();
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 2 & done; wait";
    let out = d.cli(&[
        "run",
        "--rm",
        "--pids-limit",
        "5",
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    assert!(
        stderr(&out).contains("fork"),
        "forks beyond the limit fail: {}",
        stderr(&out)
    );
    let out = d.cli(&["run", "--rm", "busybox", "sh", "-c", script]);
    assert!(
        !stderr(&out).contains("fork"),
        "no limit, no failure: {}",
        stderr(&out)
    );
}

#[test]
fn published_port_answers_curl() {
    let d = daemon();
    let port = berth_testkit::free_port();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("{port}:8000"),
        "busybox",
        "httpd",
        "-f",
        "-p",
        "8000",
        "-h",
        "/www",
    ]);
    let ps = d.ok(&["ps"]);
    assert!(ps.contains(&format!("0.0.0.0:{port}->8000/tcp")), "{ps}");
    let url = format!("http://127.0.0.1:{port}/");
    let got = eventually(10, || {
        std::process::Command::new("curl")
            .args(["-fsS", "--max-time", "2", &url])
            .output()
            .map(|o| o.stdout == b"hello from berth\n")
            .unwrap_or(false)
    });
    assert!(got, "curl {url} did not answer; log:\n{}", d.log());
    // A second container cannot take the same host port.
    d.fails(
        &[
            "run",
            "-d",
            "-p",
            &format!("{port}:8000"),
            "busybox",
            "sleep",
            "5",
        ],
        "already allocated",
    );
}

#[test]
fn containers_reach_each_other_by_address() {
    let d = daemon();
    d.ok(&[
        "run", "-d", "--name", "server", "busybox", "httpd", "-f", "-p", "80", "-h", "/www",
    ]);
    let ip = inspect(&d, "server")["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    // busybox-static's wget crashes with -T, hence timeout(1).
    let url = format!("http://{ip}/");
    let out = d.cli(&[
        "run", "--rm", "busybox", "timeout", "5", "wget", "-q", "-O", "-", &url,
    ]);
    assert_eq!(
        stdout(&out),
        "hello from berth\n",
        "stderr: {}",
        stderr(&out)
    );
    // --network none has only loopback.
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(out.trim(), "lo");
}

#[test]
fn volumes_are_shared_with_the_host() {
    let d = daemon();
    let host = tempfile::tempdir().unwrap();
    let spec = format!("{}:/data", host.path().display());
    d.ok(&[
        "run",
        "--rm",
        "-v",
        &spec,
        "busybox",
        "sh",
        "-c",
        "echo written > /data/file",
    ]);
    assert_eq!(
        std::fs::read_to_string(host.path().join("file")).unwrap(),
        "written\n"
    );
    let ro = format!("{}:/data:ro", host.path().display());
    let out = d.cli(&[
        "run",
        "--rm",
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "echo x > /data/other",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!host.path().join("other").exists());
}

#[test]
fn diff_and_commit_round_trip() {
    let d = daemon();
    d.ok(&[
        "run",
        "--name",
        "changer",
        "busybox",
        "sh",
        "-c",
        "echo new > /newfile; rm /etc/group; echo extra >> /etc/passwd",
    ]);
    let diff = d.ok(&["diff", "changer"]);
    for line in ["A /newfile", "D /etc/group", "C /etc/passwd", "C /etc"] {
        assert!(
            diff.lines().any(|l| l == line),
            "missing {line:?} in:\n{diff}"
        );
    }
    d.ok(&["commit", "changer", "changed:v1"]);
    let out = d.ok(&[
        "run",
        "--rm",
        "changed:v1",
        "sh",
        "-c",
        "cat /newfile; ls /etc/group 2>&1 || true",
    ]);
    assert!(out.starts_with("new\n"), "{out}");
    assert!(out.contains("No such file"), "{out}");
}

#[test]
fn restart_policy_on_failure_retries() {
    let d = daemon();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "busybox",
        "sh",
        "-c",
        "exit 1",
    ]);
    assert!(eventually(15, || inspect(&d, "flaky")["restart_count"]
        == 2
        && inspect(&d, "flaky")["state"] == "exited"));
}

#[test]
fn info_reports_cgroup_mode() {
    let d = daemon();
    let v: serde_json::Value = serde_json::from_str(&d.ok(&["info", "--json"])).unwrap();
    assert!(
        ["v1", "hybrid", "v2"].contains(&v["cgroup_mode"].as_str().unwrap()),
        "{v}"
    );
    assert_eq!(v["images"], 1);
}

#[test]
fn stdin_is_passed_with_interactive() {
    let d = daemon();
    let mut child = std::process::Command::new(&d.bin)
        .args(["run", "--rm", "-i", "busybox", "tr", "a-z", "A-Z"])
        .env("BERTH_SOCKET", &d.socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SHOUT\n");
}

#[test]
fn ctrl_c_stops_an_attached_run() {
    let d = daemon();
    let child = std::process::Command::new(&d.bin)
        .args([
            "run",
            "--name",
            "sleeper",
            "busybox",
            "sh",
            "-c",
            "trap 'exit 130' INT; sleep 100 & wait",
        ])
        .env("BERTH_SOCKET", &d.socket)
        .spawn()
        .unwrap();
    assert!(eventually(10, || d.ok(&["ps"]).contains("sleeper")));
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(d.ok(&["ps", "-a"]).contains("Exited (130)"));
}

#[test]
fn attached_run_returns_while_stdin_stays_open() {
    let d = daemon();
    let mut child = std::process::Command::new(&d.bin)
        .args(["run", "-i", "--rm", "busybox", "echo", "hi"])
        .env("BERTH_SOCKET", &d.socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // stdin is never closed: the CLI must still return when the container exits.
    let exited = eventually(10, || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
    }
    assert!(exited, "berth run -i hung after the container exited");
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
}

#[test]
fn tty_gets_a_terminal_and_start_errors_are_explained() {
    let d = daemon();
    let out = d.ok(&[
        "run",
        "--rm",
        "-t",
        "busybox",
        "sh",
        "-c",
        "stty size; echo $TERM",
    ]);
    assert_eq!(out.replace('\r', ""), "24 80\nxterm\n");
    d.fails(
        &["run", "--rm", "--user", "nosuchuser", "busybox", "id"],
        "unable to find user nosuchuser",
    );
    // A fresh container has no changes: the generated /etc files are hidden.
    d.ok(&["run", "--name", "fresh", "busybox", "true"]);
    assert_eq!(d.ok(&["diff", "fresh"]), "");
}

#[test]
fn user_namespace_maps_root_to_an_unprivileged_range() {
    let d = daemon();
    let out = d.ok(&[
        "run",
        "--rm",
        "--userns",
        "busybox",
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; echo ok > /tmp/w; cat /tmp/w",
    ]);
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, vec!["0", "0", "100000", "65536", "ok"], "{out}");
}
