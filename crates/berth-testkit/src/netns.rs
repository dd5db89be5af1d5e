//! Test hosts in network namespaces, for multi-host tests on one machine.
//!
//! A [`Lab`] is a Linux bridge in the root namespace with a random /24 in
//! 10.150-199.x.0; each [`Host`] is a network namespace joined to the bridge
//! by a veth pair, so servers and agents get their own addresses, and kills
//! and partitions (the root-side veth set down) are real. The root namespace
//! owns the bridge's `.254` address and so reaches every host directly.
//!
//! Hosts share the root's filesystem, mounts, cgroups and UTS namespace:
//! programs run through `nsenter --net` (not `ip netns exec`, which remounts
//! /sys and would hide the cgroup hierarchies berth agents need).
//!
//! Everything is removed on drop, also when a test panics: processes still
//! in a namespace (detached shims included) are killed, then namespaces,
//! veths, the bridge and its firewall rule go. A lab whose test process died
//! without dropping it is swept by the next `Lab::new`.

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Where each live lab leaves a marker holding its test process's pid, so
/// labs of dead processes can be swept.
const MARKER_DIR: &str = "/run/berth-testkit/labs";

/// Runs a command, turning a non-zero exit into an error carrying stderr.
fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn ip(args: &[&str]) -> io::Result<Output> {
    run(Command::new("ip").args(args))
}

fn ip_stdout(args: &[&str]) -> io::Result<String> {
    ip(args).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Names of every network namespace `ip netns` knows.
pub fn netns_list() -> Vec<String> {
    ip_stdout(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Names of every link in the root namespace.
pub fn link_list() -> Vec<String> {
    ip_stdout(&["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            Some(name.split('@').next().unwrap_or(name).to_string())
        })
        .collect()
}

/// Pids of the processes whose network namespace is `ns`.
pub fn netns_pids(ns: &str) -> Vec<i32> {
    ip_stdout(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills every process in `ns` until none is left (a dying parent may still
/// fork, so this loops), then deletes the namespace.
fn destroy_netns(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = netns_pids(ns);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = ip(&["netns", "del", ns]);
}

fn delete_link(name: &str) {
    let _ = ip(&["link", "del", name]);
}

/// Every IPv4 address or prefix mentioned by `ip -4 addr` and `ip -4 route`.
fn used_ipv4() -> Vec<Ipv4Addr> {
    let mut text = ip_stdout(&["-4", "-o", "addr", "show"]).unwrap_or_default();
    text.push_str(&ip_stdout(&["-4", "route", "show", "table", "all"]).unwrap_or_default());
    text.split_whitespace()
        .filter_map(|t| t.split('/').next()?.parse().ok())
        .collect()
}

fn in_subnet(a: &Ipv4Addr, net: [u8; 2]) -> bool {
    let o = a.octets();
    o[0] == 10 && o[1] == net[0] && o[2] == net[1]
}

fn iptables_forward(op: &str, bridge: &str) -> io::Result<Output> {
    run(Command::new("iptables").args([
        "-w", op, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT",
    ]))
}

fn random_tag() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Removes the labs of test processes that died without dropping them.
fn sweep_stale() {
    let Ok(dir) = fs::read_dir(MARKER_DIR) else {
        return;
    };
    for entry in dir.flatten() {
        let tag = entry.file_name().to_string_lossy().into_owned();
        // Markers being written are dot files (renamed into place), and a
        // marker without a readable pid is not judged stale: another test
        // thread may be creating its lab right now.
        if tag.starts_with('.') {
            continue;
        }
        let Some(pid) = fs::read_to_string(entry.path())
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        for ns in netns_list() {
            if ns.starts_with(&format!("bt-{tag}-")) {
                destroy_netns(&ns);
            }
        }
        for link in link_list() {
            if link.starts_with(&format!("vl{tag}")) {
                delete_link(&link);
            }
        }
        let bridge = format!("bl{tag}");
        let _ = iptables_forward("-D", &bridge);
        delete_link(&bridge);
        let _ = fs::remove_file(entry.path());
    }
}

/// One test's network: a bridge and the hosts on it.
pub struct Lab {
    tag: String,
    bridge: String,
    net: [u8; 2],
    next: u8,
    namespaces: Vec<String>,
    veths: Vec<String>,
    fw_rule: bool,
    marker: PathBuf,
}

impl Lab {
    /// Creates the bridge with a /24 no other interface or route uses.
    pub fn new() -> io::Result<Lab> {
        sweep_stale();
        let tag = random_tag();
        fs::create_dir_all(MARKER_DIR)?;
        let marker = Path::new(MARKER_DIR).join(&tag);
        let partial = Path::new(MARKER_DIR).join(format!(".{tag}"));
        fs::write(&partial, std::process::id().to_string())?;
        fs::rename(&partial, &marker)?;
        // From here on Drop undoes whatever was made.
        let mut lab = Lab {
            bridge: format!("bl{tag}"),
            tag,
            net: [0, 0],
            next: 1,
            namespaces: Vec::new(),
            veths: Vec::new(),
            fw_rule: false,
            marker,
        };
        ip(&["link", "add", &lab.bridge, "type", "bridge"])?;
        ip(&["link", "set", &lab.bridge, "up"])?;
        lab.net = lab.claim_subnet()?;
        // With br_netfilter loaded, bridged frames cross iptables' FORWARD
        // chain, whose policy is DROP once dockerd has run.
        lab.fw_rule = iptables_forward("-I", &lab.bridge).is_ok();
        Ok(lab)
    }

    /// Picks a random free 10.R.S.0/24 and gives the bridge its .254. Two
    /// labs may pick the same subnet at once, so after assigning, a second
    /// look checks no other interface holds it, and backs out if one does.
    fn claim_subnet(&self) -> io::Result<[u8; 2]> {
        // Why the last attempt failed, for the error if all of them do.
        let mut last = String::from("every subnet tried was in use");
        for _ in 0..100 {
            let net = [150 + rand::random::<u8>() % 50, rand::random::<u8>()];
            if used_ipv4().iter().any(|a| in_subnet(a, net)) {
                continue;
            }
            let cidr = format!("10.{}.{}.254/24", net[0], net[1]);
            if let Err(e) = ip(&["addr", "add", &cidr, "dev", &self.bridge]) {
                last = e.to_string();
                std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 50));
                continue;
            }
            let others = ip_stdout(&["-4", "-o", "addr", "show"])?
                .lines()
                .filter(|l| !l.contains(&format!(" {} ", self.bridge)))
                .flat_map(|l| {
                    l.split_whitespace()
                        .filter_map(|t| t.split('/').next()?.parse::<Ipv4Addr>().ok())
                        .collect::<Vec<_>>()
                })
                .any(|a| in_subnet(&a, net));
            if !others {
                return Ok(net);
            }
            let _ = ip(&["addr", "del", &cidr, "dev", &self.bridge]);
            std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 50));
        }
        Err(io::Error::other(format!(
            "no free 10.150-199.x.0/24 subnet for a lab on {}: {last}",
            self.bridge
        )))
    }

    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net[0], self.net[1], 254)
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Adds a host: netns `bt-<tag>-<name>` whose `eth0` (10.R.S.N/24) is
    /// the peer of a veth on the bridge.
    pub fn host(&mut self, name: &str) -> io::Result<Host> {
        if name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("host name {name:?}: use 1 to 32 letters, digits, '-' or '_'"),
            ));
        }
        if self.next > 253 {
            return Err(io::Error::other("a lab holds at most 253 hosts"));
        }
        let idx = self.next;
        self.next += 1;
        let ns = format!("bt-{}-{name}", self.tag);
        if self.namespaces.contains(&ns) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("host {name:?} already exists in this lab"),
            ));
        }
        // Interface names are at most 15 bytes: "vl" + 6 + 2 hex digits.
        let veth = format!("vl{}{idx:02x}", self.tag);
        let peer = format!("vp{}{idx:02x}", self.tag);
        let addr = Ipv4Addr::new(10, self.net[0], self.net[1], idx);
        // Recorded before creation so Drop removes half-made hosts too.
        self.namespaces.push(ns.clone());
        self.veths.push(veth.clone());
        ip(&["netns", "add", &ns])?;
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &ns])?;
        ip(&["link", "set", &veth, "master", &self.bridge, "up"])?;
        ip(&["-n", &ns, "link", "set", &peer, "name", "eth0"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(Host {
            name: name.to_string(),
            ns,
            ip: addr,
            veth,
            groups: Vec::new(),
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            destroy_netns(ns);
        }
        for v in &self.veths {
            delete_link(v);
        }
        if self.fw_rule {
            let _ = iptables_forward("-D", &self.bridge);
        }
        delete_link(&self.bridge);
        let _ = fs::remove_file(&self.marker);
    }
}

/// A test host: a network namespace on the lab's bridge.
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    veth: String,
    /// Process groups spawned here, killed on drop.
    groups: Vec<i32>,
}

impl Host {
    /// A command running `program` in this host's network namespace, stdin
    /// from /dev/null.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// Runs `program args` here to completion.
    pub fn run(&self, program: &Path, args: &[&str]) -> io::Result<Output> {
        self.command(program).args(args).output()
    }

    /// Starts `cmd` (normally from [`Host::command`]) in a process group of
    /// its own, so killing it takes its children too.
    pub fn spawn(&mut self, mut cmd: Command) -> io::Result<HostProcess> {
        cmd.process_group(0);
        let child = cmd.spawn()?;
        let pgid = child.id() as i32;
        self.groups.push(pgid);
        Ok(HostProcess { child, pgid })
    }

    /// Cuts the host off the bridge: the root-side veth goes down, so
    /// packets are dropped both ways (connections hang, they are not reset).
    pub fn link_down(&self) -> io::Result<()> {
        ip(&["link", "set", &self.veth, "down"]).map(|_| ())
    }

    pub fn link_up(&self) -> io::Result<()> {
        ip(&["link", "set", &self.veth, "up"]).map(|_| ())
    }

    /// "10.R.S.N:port".
    pub fn addr(&self, port: u16) -> String {
        format!("{}:{port}", self.ip)
    }

    /// Pids of every process in this host's namespace.
    pub fn pids(&self) -> Vec<i32> {
        netns_pids(&self.ns)
    }

    /// Kills every process in the namespace (detached shims included).
    pub fn kill_all(&self) {
        for g in &self.groups {
            let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_all();
        destroy_netns(&self.ns);
        delete_link(&self.veth);
    }
}

/// A process started on a host; killed with its process group on drop.
pub struct HostProcess {
    child: Child,
    pgid: i32,
}

impl HostProcess {
    /// SIGKILL to the whole process group, then reaps the leader.
    pub fn kill9(&mut self) {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn wait_timeout(&mut self, d: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + d;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(from: &Host, to: Ipv4Addr) -> bool {
        from.run(Path::new("ping"), &["-c", "1", "-W", "1", &to.to_string()])
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn root_ping(to: Ipv4Addr) -> bool {
        Command::new("ping")
            .args(["-c", "1", "-W", "1", &to.to_string()])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    #[test]
    fn hosts_reach_each_other_and_partitions_cut_them() {
        let mut lab = Lab::new().expect("lab");
        let a = lab.host("a").expect("host a");
        let b = lab.host("b").expect("host b");
        assert_ne!(a.ip, b.ip);
        assert_eq!(a.addr(80), format!("{}:80", a.ip));
        assert!(ping(&a, b.ip), "a cannot ping b");
        assert!(ping(&b, a.ip), "b cannot ping a");
        assert!(ping(&a, lab.bridge_ip()), "a cannot ping the bridge");
        assert!(root_ping(b.ip), "root cannot ping b");
        b.link_down().expect("link down");
        assert!(!ping(&a, b.ip), "a still pings b after link_down");
        assert!(!root_ping(b.ip), "root still pings b after link_down");
        b.link_up().expect("link up");
        let back = (0..50).any(|_| {
            ping(&a, b.ip) || {
                std::thread::sleep(Duration::from_millis(100));
                false
            }
        });
        assert!(back, "a cannot ping b after link_up");
    }

    #[test]
    fn drop_removes_namespaces_links_and_processes() {
        let mut lab = Lab::new().expect("lab");
        let bridge = lab.bridge().to_string();
        let mut h = lab.host("x").expect("host");
        let ns = h.ns.clone();
        // A detached grandchild in its own session survives the group kill
        // but not the namespace sweep.
        let mut cmd = h.command(Path::new("sh"));
        cmd.args(["-c", "setsid sleep 1000 & sleep 1000"]);
        let p = h.spawn(cmd).expect("spawn");
        let pid = p.pid();
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.pids().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let pids = h.pids();
        assert!(pids.len() >= 2, "expected 2 processes in {ns}: {pids:?}");
        assert!(netns_list().contains(&ns));
        assert!(link_list().contains(&bridge));
        drop(p);
        drop(h);
        drop(lab);
        assert!(!netns_list().contains(&ns), "{ns} left behind");
        let links = link_list();
        assert!(!links.contains(&bridge), "{bridge} left behind");
        let tag = &bridge[2..];
        assert!(
            !links.iter().any(|l| l.contains(tag)),
            "veths left: {links:?}"
        );
        for p in pids.iter().copied().chain([pid as i32]) {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for its (non-test) parent.
            assert!(
                stat.is_empty() || stat.contains(") Z "),
                "process {p} survived: {stat}"
            );
        }
    }

    #[test]
    fn panic_inside_a_test_still_cleans_up() {
        let names = std::sync::Mutex::new((String::new(), String::new()));
        let r = std::panic::catch_unwind(|| {
            let mut lab = Lab::new().expect("lab");
            let h = lab.host("p").expect("host");
            *names.lock().unwrap() = (h.ns.clone(), lab.bridge().to_string());
            panic!("test failure");
        });
        assert!(r.is_err());
        let (ns, bridge) = names.into_inner().unwrap();
        assert!(!netns_list().contains(&ns));
        assert!(!link_list().contains(&bridge));
    }

    #[test]
    fn kill9_takes_the_process_group() {
        let mut lab = Lab::new().expect("lab");
        let mut h = lab.host("k").expect("host");
        let mut cmd = h.command(Path::new("sh"));
        cmd.args(["-c", "sleep 1000 & sleep 1000 & wait"]);
        let mut p = h.spawn(cmd).expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.pids().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(p.is_running());
        p.kill9();
        assert!(!p.is_running());
        assert!(p.wait_timeout(Duration::from_secs(1)).is_some());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !h.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(h.pids(), Vec::<i32>::new(), "children survived kill9");
    }

    #[test]
    fn labs_get_distinct_subnets() {
        let a = Lab::new().expect("lab a");
        let b = Lab::new().expect("lab b");
        assert_ne!(a.bridge_ip(), b.bridge_ip());
        assert_ne!(a.bridge(), b.bridge());
    }

    #[test]
    fn bad_host_names_are_refused() {
        let mut lab = Lab::new().expect("lab");
        assert!(lab.host("").is_err());
        assert!(lab.host("a b").is_err());
        let _a = lab.host("a").expect("host");
        assert!(lab.host("a").is_err());
    }
}
