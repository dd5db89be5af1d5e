//! The daemon can die and come back: running containers are re-adopted and
//! exits that happened meanwhile are recorded.

mod common;
use common::*;

#[test]
fn daemon_restart_readopts_running_containers() {
    let mut d = daemon();
    let port = berth_testkit::free_port();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "long",
        "-p",
        &format!("{port}:80"),
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "short",
        "busybox",
        "sh",
        "-c",
        "sleep 2; exit 7",
    ]);
    d.kill9();
    std::thread::sleep(std::time::Duration::from_secs(3));
    d.restart();
    let ps = d.ok(&["ps", "-a"]);
    assert!(
        ps.lines().any(|l| l.contains("long") && l.contains("Up ")),
        "{ps}"
    );
    assert!(
        ps.lines()
            .any(|l| l.contains("short") && l.contains("Exited (7)")),
        "{ps}"
    );
    // The re-adopted container is still fully usable: logs, exec, ports, stop.
    assert_eq!(
        d.ok(&["exec", "long", "cat", "/www/index.html"]),
        "hello from berth\n"
    );
    let url = format!("http://127.0.0.1:{port}/");
    assert!(eventually(10, || std::process::Command::new("curl")
        .args(["-fsS", "--max-time", "2", &url])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)));
    d.ok(&["stop", "-t", "1", "long"]);
    assert!(d
        .ok(&["ps", "-a"])
        .lines()
        .any(|l| l.contains("long") && l.contains("Exited")));
}

/// Failed starts, `rm -f` of running containers and a killed daemon leave
/// no mount, cgroup, veth or bound port behind.
#[test]
fn failures_leave_nothing_behind() {
    let mut d = daemon();
    let port = berth_testkit::free_port();
    let out = d.cli(&[
        "run",
        "--name",
        "bad",
        "-p",
        &format!("{port}:80"),
        "busybox",
        "/nope",
    ]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    let bad = inspect(&d, "bad")["id"].as_str().unwrap().to_string();
    let victim = d
        .ok(&[
            "run",
            "-d",
            "--name",
            "victim",
            "-p",
            &format!("{port}:80"),
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
        ])
        .trim()
        .to_string();
    d.ok(&["rm", "-f", "victim"]);
    let survivor = d
        .ok(&["run", "-d", "busybox", "sleep", "1000"])
        .trim()
        .to_string();
    d.kill9();
    d.restart();
    d.ok(&["rm", "-f", &survivor, "bad"]);

    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(d.data_dir.to_str().unwrap()),
        "no container mount on the host"
    );
    for id in [&bad, &victim, &survivor] {
        for ctrl in ["memory", "pids", "cpu", "devices", "unified", ""] {
            let p = std::path::Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("berth")
                .join(id);
            assert!(!p.exists(), "cgroup left behind: {}", p.display());
        }
    }
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", &d.bridge])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&links.stdout).trim(),
        "",
        "no veth left on the bridge"
    );
    assert!(
        std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(),
        "the published port is free again"
    );
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), "");
}
