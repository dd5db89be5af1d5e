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
