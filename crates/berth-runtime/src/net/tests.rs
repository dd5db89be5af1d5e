//! Unit tests, and root tests that build a real bridge with "containers"
//! (`unshare -n sleep`) on it. Every root test uses its own bridge name
//! (btest + 4 hex) and its own 10.213.X.0/24, and guards remove everything
//! (bridge, rules, processes) even when an assertion fails. Traffic only
//! goes to addresses these tests create.

use super::*;
use std::collections::HashSet;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---- pure unit tests -------------------------------------------------------

#[test]
fn config_helpers() {
    let cfg = BridgeConfig::default();
    assert_eq!(cfg.name, "berth0");
    assert_eq!(cfg.subnet(), "10.88.0.0/16");
    assert!(cfg.validate().is_ok());
    assert!(cfg.contains_host(Ipv4Addr::new(10, 88, 3, 7)));
    assert!(!cfg.contains_host(cfg.gateway));
    assert!(!cfg.contains_host(Ipv4Addr::new(10, 88, 0, 0)));
    assert!(!cfg.contains_host(Ipv4Addr::new(10, 88, 255, 255)));
    assert!(!cfg.contains_host(Ipv4Addr::new(10, 89, 0, 2)));
    assert_eq!(cfg.mac(), [0x02, 0xb5, 10, 88, 0, 1]);
    let att = cfg.attachment(Ipv4Addr::new(10, 88, 0, 2));
    assert_eq!(att.bridge, "berth0");
    assert_eq!(att.prefix_len, 16);
    assert!(att.validate().is_ok());
}

#[test]
fn config_validation_rejects_bad_values() {
    let bad = [
        ("", Ipv4Addr::new(10, 88, 0, 1), 16),
        ("a-very-long-bridge-name", Ipv4Addr::new(10, 88, 0, 1), 16),
        ("br/0", Ipv4Addr::new(10, 88, 0, 1), 16),
        ("br 0", Ipv4Addr::new(10, 88, 0, 1), 16),
        ("berth0", Ipv4Addr::new(10, 88, 0, 0), 16),
        ("berth0", Ipv4Addr::new(10, 88, 255, 255), 16),
        ("berth0", Ipv4Addr::new(10, 88, 0, 1), 31),
        ("berth0", Ipv4Addr::new(10, 88, 0, 1), 0),
    ];
    for (name, gateway, prefix_len) in bad {
        let cfg = BridgeConfig {
            name: name.into(),
            gateway,
            prefix_len,
        };
        assert!(
            matches!(cfg.validate(), Err(NetError::InvalidConfig(_))),
            "{cfg:?} should be rejected"
        );
    }
    let att = BridgeConfig::default().attachment(Ipv4Addr::new(10, 89, 0, 2));
    let err = att.validate().unwrap_err().to_string();
    assert!(err.contains("10.89.0.2"), "{err}");
}

#[test]
fn bridge_config_json_is_strict() {
    let cfg: BridgeConfig =
        serde_json::from_str(r#"{"name":"b0","gateway":"10.1.0.1","prefix_len":24}"#).unwrap();
    assert_eq!(cfg.subnet(), "10.1.0.0/24");
    assert!(serde_json::from_str::<BridgeConfig>(
        r#"{"name":"b0","gateway":"10.1.0.1","prefix_len":24,"mtu":1}"#
    )
    .is_err());
}

#[test]
fn veth_names_fit_and_differ() {
    let names: HashSet<String> = (0..200).map(|_| random_veth_name()).collect();
    assert!(names.len() > 195);
    for n in &names {
        assert_eq!(n.len(), 10);
        assert!(n.starts_with("vb"));
        assert!(validate_ifname(n).is_ok());
    }
}

#[test]
fn converts_to_runtime_error() {
    let e: crate::RuntimeError = NetError::LinkNotFound {
        name: "berth0".into(),
    }
    .into();
    let msg = e.to_string();
    assert!(
        msg.contains("berth0") && msg.contains("No such device"),
        "{msg}"
    );
    let e: crate::RuntimeError = NetError::Netlink {
        op: "create veth vb12345678 on berth0 for pid 7".into(),
        source: io::Error::from_raw_os_error(libc::EEXIST),
    }
    .into();
    assert!(e.to_string().contains("vb12345678"), "{e}");
}

#[test]
fn netmask_edges() {
    assert_eq!(netmask(0), 0);
    assert_eq!(netmask(8), 0xff00_0000);
    assert_eq!(netmask(32), u32::MAX);
}

#[test]
fn bad_pid_is_a_namespace_error() {
    let att = BridgeConfig::default().attachment(Ipv4Addr::new(10, 88, 0, 2));
    assert!(matches!(attach(0, &att), Err(NetError::InvalidConfig(_))));
    // pid_max is at most 2^22, so this pid cannot exist.
    let err = attach(i32::MAX, &att).unwrap_err();
    assert!(matches!(err, NetError::Namespace { .. }), "{err}");
    assert!(err.to_string().contains(&i32::MAX.to_string()));
    // Our own pid shares our namespace: refused before anything is made.
    let me = std::process::id() as i32;
    let err = attach(me, &att).unwrap_err();
    assert!(matches!(err, NetError::SameNamespace { .. }), "{err}");
    assert!(matches!(
        loopback_only(me),
        Err(NetError::SameNamespace { .. })
    ));
}

// ---- root helpers ----------------------------------------------------------

fn root() -> bool {
    let ok = nix::unistd::geteuid().is_root();
    if !ok {
        eprintln!("skipped: needs root");
    }
    ok
}

fn cmd(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

fn random_hex4() -> String {
    random_veth_name()[2..6].to_string()
}

/// Third octets of 10.213.X.0/24 handed out in this process.
static TAKEN: Mutex<Option<HashSet<u8>>> = Mutex::new(None);

/// A bridge of its own; Drop removes it and its rules, and turns
/// ip_forward back off if it was off before.
struct TestBridge {
    cfg: BridgeConfig,
    forward_was_off: bool,
}

impl TestBridge {
    fn new() -> Self {
        let host_addrs = stdout(&cmd("ip", &["-o", "-4", "addr", "show"]));
        let third = {
            let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
            let taken = taken.get_or_insert_with(HashSet::new);
            let start = u8::from_str_radix(&random_hex4()[..2], 16).unwrap_or(0);
            let pick = (0..=255u8)
                .map(|i| start.wrapping_add(i))
                .find(|x| !taken.contains(x) && !host_addrs.contains(&format!("inet 10.213.{x}.")))
                .expect("a free 10.213.X.0/24");
            taken.insert(pick);
            pick
        };
        let cfg = BridgeConfig {
            name: format!("btest{}", random_hex4()),
            gateway: Ipv4Addr::new(10, 213, third, 1),
            prefix_len: 24,
        };
        let forward_was_off = std::fs::read_to_string(IP_FORWARD)
            .map(|s| s.trim() == "0")
            .unwrap_or(false);
        // The guard exists before ensure_bridge so a half-made bridge is
        // cleaned up too.
        let guard = TestBridge {
            cfg,
            forward_was_off,
        };
        ensure_bridge(&guard.cfg).expect("ensure_bridge");
        guard
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        let o = self.cfg.gateway.octets();
        Ipv4Addr::new(o[0], o[1], o[2], host)
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        if let Err(e) = remove_bridge(&self.cfg) {
            eprintln!("cleanup of {}: {e}", self.cfg.name);
        }
        if self.forward_was_off {
            let _ = std::fs::write(IP_FORWARD, "0\n");
        }
    }
}

/// A process in a fresh network namespace; killed on Drop.
struct NetnsChild {
    child: Child,
}

impl NetnsChild {
    fn spawn() -> Self {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare -n sleep");
        let c = NetnsChild { child };
        // unshare(1) unshares then execs: wait until it is in its own netns
        // so we never attach to the host namespace.
        let me = std::fs::read_link("/proc/self/ns/net").expect("own netns");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if std::fs::read_link(format!("/proc/{}/ns/net", c.pid())).is_ok_and(|ns| ns != me) {
                break;
            }
            assert!(Instant::now() < deadline, "child never left the host netns");
            std::thread::sleep(Duration::from_millis(1));
        }
        c
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Runs a command inside the child's network namespace.
    fn run(&self, args: &[&str]) -> Output {
        let pid = self.pid().to_string();
        let mut all = vec!["-t", &pid, "-n"];
        all.extend_from_slice(args);
        cmd("nsenter", &all)
    }

    fn ping(&self, to: Ipv4Addr) -> bool {
        let to = to.to_string();
        self.run(&["ping", "-c1", "-W1", "-q", &to])
            .status
            .success()
    }
}

impl Drop for NetnsChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_gone(names: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while names.iter().any(|n| link_exists(n)) {
        assert!(
            Instant::now() < deadline,
            "veths {names:?} still exist after their namespaces died"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

fn iptables_s(table: &str, chain: &str) -> String {
    stdout(&cmd("iptables", &["-w", "-t", table, "-S", chain]))
}

// ---- root tests -------------------------------------------------------------

#[test]
fn containers_reach_each_other_and_the_gateway() {
    if !root() {
        return;
    }
    let br = TestBridge::new();
    let a = NetnsChild::spawn();
    let b = NetnsChild::spawn();
    let va = attach(a.pid(), &br.cfg.attachment(br.addr(2))).expect("attach a");
    let vb = attach(b.pid(), &br.cfg.attachment(br.addr(3))).expect("attach b");
    assert_ne!(va, vb);
    for v in [&va, &vb] {
        assert!(v.starts_with("vb") && link_exists(v), "{v}");
        let master = std::fs::read_link(format!("/sys/class/net/{v}/master")).expect("master");
        assert!(master.ends_with(&br.cfg.name), "{v} master {master:?}");
        let flags = std::fs::read_to_string(format!("/sys/class/net/{v}/flags")).unwrap();
        let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
        assert!(flags & libc::IFF_UP as u32 != 0, "{v} is down");
    }

    let addrs = stdout(&a.run(&["ip", "-o", "-4", "addr", "show"]));
    assert!(
        addrs.contains(&format!("eth0    inet {}/24", br.addr(2))),
        "{addrs}"
    );
    assert!(addrs.contains("lo    inet 127.0.0.1/8"), "{addrs}");
    let routes = stdout(&a.run(&["ip", "-4", "route", "show"]));
    assert!(
        routes.contains(&format!("default via {} dev eth0", br.cfg.gateway)),
        "{routes}"
    );
    // The first ping right after attach must work: no forwarding delay.
    assert!(a.ping(br.addr(3)), "a cannot reach b");
    assert!(b.ping(br.addr(2)), "b cannot reach a");
    assert!(a.ping(br.cfg.gateway), "a cannot reach the gateway");
    assert!(b.ping(br.cfg.gateway), "b cannot reach the gateway");
    assert!(a.ping(Ipv4Addr::LOCALHOST), "lo is not up in a");

    drop(a);
    drop(b);
    wait_gone(&[va, vb]);
}

#[test]
fn ensure_bridge_is_idempotent_and_remove_cleans_up() {
    if !root() {
        return;
    }
    let br = TestBridge::new();
    let name = &br.cfg.name;
    ensure_bridge(&br.cfg).expect("second ensure_bridge");
    ensure_bridge(&br.cfg).expect("third ensure_bridge");

    assert_eq!(std::fs::read_to_string(IP_FORWARD).unwrap().trim(), "1");
    let nat = iptables_s("nat", "POSTROUTING");
    let masq = format!("-s {} ! -o {name} -j MASQUERADE", br.cfg.subnet());
    assert_eq!(count_lines(&nat, &masq), 1, "{nat}");
    let fwd = iptables_s("filter", "FORWARD");
    assert_eq!(
        count_lines(&fwd, &format!("-i {name} -j ACCEPT")),
        1,
        "{fwd}"
    );
    assert_eq!(count_lines(&fwd, &format!("-o {name} ")), 1, "{fwd}");
    let addrs = stdout(&cmd("ip", &["-o", "-4", "addr", "show", "dev", name]));
    assert_eq!(count_lines(&addrs, "inet "), 1, "{addrs}");
    assert!(
        addrs.contains(&format!("inet {}/24", br.cfg.gateway)),
        "{addrs}"
    );
    let mac = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap();
    let o = br.cfg.gateway.octets();
    assert_eq!(
        mac.trim(),
        format!("02:b5:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    );

    remove_bridge(&br.cfg).expect("remove_bridge");
    assert!(!link_exists(name));
    assert_eq!(count_lines(&iptables_s("nat", "POSTROUTING"), &masq), 0);
    assert_eq!(
        count_lines(&iptables_s("filter", "FORWARD"), &format!(" {name} ")),
        0
    );
    remove_bridge(&br.cfg).expect("remove_bridge twice");
}

#[test]
fn ensure_bridge_refuses_a_link_that_is_not_a_bridge() {
    if !root() {
        return;
    }
    struct DelLink(String);
    impl Drop for DelLink {
        fn drop(&mut self) {
            let _ = cmd("ip", &["link", "del", &self.0]);
        }
    }
    let name = format!("btest{}", random_hex4());
    let _guard = DelLink(name.clone());
    let peer = format!("{name}p");
    let out = cmd(
        "ip",
        &["link", "add", &name, "type", "veth", "peer", "name", &peer],
    );
    assert!(out.status.success(), "{out:?}");
    let cfg = BridgeConfig {
        name: name.clone(),
        gateway: Ipv4Addr::new(10, 213, 0, 1),
        prefix_len: 24,
    };
    let err = ensure_bridge(&cfg).unwrap_err();
    assert!(matches!(err, NetError::NotABridge { .. }), "{err}");
    assert!(err.to_string().contains(&name));
}

#[test]
fn attach_errors_leave_nothing_behind() {
    if !root() {
        return;
    }
    let br = TestBridge::new();
    let c = NetnsChild::spawn();

    let missing = BridgeAttachment {
        bridge: format!("bnone{}", random_hex4()),
        ..br.cfg.attachment(br.addr(2))
    };
    let err = attach(c.pid(), &missing).unwrap_err();
    assert!(matches!(err, NetError::LinkNotFound { .. }), "{err}");

    let ports = || {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", br.cfg.name))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    attach(c.pid(), &br.cfg.attachment(br.addr(2))).expect("first attach");
    assert_eq!(ports(), 1);
    // eth0 already exists in the child: the error says so and no second
    // veth is left on the bridge.
    let err = attach(c.pid(), &br.cfg.attachment(br.addr(3))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
    assert_eq!(ports(), 1);
}

#[test]
fn loopback_only_brings_up_lo_and_nothing_else() {
    if !root() {
        return;
    }
    let c = NetnsChild::spawn();
    assert!(!c.ping(Ipv4Addr::LOCALHOST), "lo should start down");
    loopback_only(c.pid()).expect("loopback_only");
    assert!(c.ping(Ipv4Addr::LOCALHOST), "lo is not up");
    let links = stdout(&c.run(&["ip", "-o", "link", "show"]));
    assert_eq!(links.lines().count(), 1, "{links}");
}

/// Prints the median of 30 attach() calls (`cargo test -p berth-runtime
/// attach_timing -- --nocapture`); fails only if it is absurdly slow.
#[test]
fn attach_timing() {
    if !root() {
        return;
    }
    let br = TestBridge::new();
    let children: Vec<NetnsChild> = (0..30).map(|_| NetnsChild::spawn()).collect();
    let mut times = Vec::new();
    let mut veths = Vec::new();
    for (i, c) in children.iter().enumerate() {
        let att = br.cfg.attachment(br.addr(10 + i as u8));
        let t = Instant::now();
        veths.push(attach(c.pid(), &att).expect("attach"));
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    eprintln!(
        "attach(): median {:?}, min {:?}, max {:?} over {} calls",
        median,
        times[0],
        times[times.len() - 1],
        times.len()
    );
    assert!(
        median < Duration::from_millis(200),
        "attach too slow: {median:?}"
    );
    drop(children);
    wait_gone(&veths);
}
