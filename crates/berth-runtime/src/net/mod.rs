//! Container networking: one Linux bridge per daemon with NAT to the
//! outside, and per container a veth pair whose peer is `eth0` in the
//! container's network namespace.
//!
//! The per-container path ([`attach`], [`loopback_only`]) speaks rtnetlink
//! synchronously (no async runtime, no child processes) because it runs in
//! the shim while the container waits. [`ensure_bridge`] also uses netlink
//! for links and addresses and shells out to `iptables` only for the NAT and
//! FORWARD rules, once per daemon start.

mod iptables;
mod netlink;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::Ipv4Addr;

use netlink_packet_route::link::InfoKind;

use netlink::{Netlink, Req, LOOPBACK_INDEX};

/// Name of the container end of the veth pair, inside the container.
pub const CONTAINER_IFNAME: &str = "eth0";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    #[error("open network namespace of pid {pid}: {source}")]
    Namespace { pid: i32, source: io::Error },
    #[error("netlink: {op}: {source}")]
    Netlink { op: String, source: io::Error },
    #[error("link {name} exists but is not a bridge")]
    NotABridge { name: String },
    #[error("link {name} not found")]
    LinkNotFound { name: String },
    #[error("write {path}: {source}")]
    Sysctl { path: String, source: io::Error },
    #[error("iptables {args}: {detail}")]
    Iptables { args: String, detail: String },
    #[error("pid {pid} is in the caller's network namespace; refusing to configure it")]
    SameNamespace { pid: i32 },
}

impl NetError {
    /// The errno behind a failed netlink request or namespace open.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            NetError::Netlink { source, .. }
            | NetError::Namespace { source, .. }
            | NetError::Sysctl { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Lets the runtime use `?` on network calls; each variant keeps its errno
/// and names the link, pid or rule involved.
impl From<NetError> for crate::RuntimeError {
    fn from(e: NetError) -> Self {
        use crate::RuntimeError::{InvalidSpec, Network};
        match e {
            NetError::InvalidConfig(value) => InvalidSpec {
                what: "network config",
                value,
            },
            NetError::Namespace { pid, source } => Network {
                op: "open netns of pid",
                target: pid.to_string(),
                source,
            },
            NetError::Netlink { op, source } => Network {
                op: "netlink",
                target: op,
                source,
            },
            NetError::NotABridge { name } => Network {
                op: "use bridge",
                target: name,
                source: io::Error::new(io::ErrorKind::InvalidInput, "link is not a bridge"),
            },
            NetError::LinkNotFound { name } => Network {
                op: "find link",
                target: name,
                source: io::Error::from_raw_os_error(libc::ENODEV),
            },
            NetError::Sysctl { path, source } => Network {
                op: "write",
                target: path,
                source,
            },
            NetError::Iptables { args, detail } => Network {
                op: "iptables",
                target: args,
                source: io::Error::other(detail),
            },
            NetError::SameNamespace { pid } => Network {
                op: "configure netns of pid",
                target: pid.to_string(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "it is the caller's own network namespace",
                ),
            },
        }
    }
}

/// Where one container sits on a bridge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BridgeAttachment {
    pub bridge: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// The daemon's bridge: its name, and the gateway address it holds on the
/// container subnet (`gateway/prefix_len`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    pub name: String,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            name: "berth0".to_string(),
            gateway: Ipv4Addr::new(10, 88, 0, 1),
            prefix_len: 16,
        }
    }
}

impl BridgeConfig {
    /// The subnet's network address (gateway with host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) & netmask(self.prefix_len))
    }

    /// `10.88.0.0/16` form, as iptables wants it.
    pub fn subnet(&self) -> String {
        format!("{}/{}", self.network(), self.prefix_len)
    }

    /// True when `addr` is a usable host address of the subnet other than
    /// the gateway.
    pub fn contains_host(&self, addr: Ipv4Addr) -> bool {
        let mask = netmask(self.prefix_len);
        let a = u32::from(addr);
        a & mask == u32::from(self.network())
            && a & !mask != 0
            && a & !mask != !mask
            && addr != self.gateway
    }

    /// The attachment for a container at `address` on this bridge.
    pub fn attachment(&self, address: Ipv4Addr) -> BridgeAttachment {
        BridgeAttachment {
            bridge: self.name.clone(),
            address,
            prefix_len: self.prefix_len,
            gateway: self.gateway,
        }
    }

    pub fn validate(&self) -> Result<(), NetError> {
        validate_ifname(&self.name)?;
        if !(1..=30).contains(&self.prefix_len) {
            return Err(NetError::InvalidConfig(format!(
                "bridge {}: prefix length {} must be between 1 and 30",
                self.name, self.prefix_len
            )));
        }
        let host = u32::from(self.gateway) & !netmask(self.prefix_len);
        if host == 0 || host == !netmask(self.prefix_len) {
            return Err(NetError::InvalidConfig(format!(
                "bridge {}: gateway {} is the network or broadcast address of {}",
                self.name,
                self.gateway,
                self.subnet()
            )));
        }
        Ok(())
    }

    /// The locally administered MAC the bridge is created with, derived from
    /// the gateway so it is stable across daemon restarts.
    fn mac(&self) -> [u8; 6] {
        let o = self.gateway.octets();
        [0x02, 0xb5, o[0], o[1], o[2], o[3]]
    }
}

impl BridgeAttachment {
    fn validate(&self) -> Result<(), NetError> {
        validate_ifname(&self.bridge)?;
        let cfg = BridgeConfig {
            name: self.bridge.clone(),
            gateway: self.gateway,
            prefix_len: self.prefix_len,
        };
        cfg.validate()?;
        if !cfg.contains_host(self.address) {
            return Err(NetError::InvalidConfig(format!(
                "address {} is not a free host address of {} (gateway {})",
                self.address,
                cfg.subnet(),
                self.gateway
            )));
        }
        Ok(())
    }
}

/// Idempotent, at daemon start: creates the bridge if missing, gives it the
/// gateway address and brings it up; enables net.ipv4.ip_forward; adds the
/// MASQUERADE and FORWARD rules unless already present.
pub fn ensure_bridge(cfg: &BridgeConfig) -> Result<(), NetError> {
    cfg.validate()?;
    let mut nl = open_host()?;
    let index = match nl.link_by_name(&cfg.name)? {
        Some(link) => bridge_index(cfg, link)?,
        None => {
            // EEXIST: another process created it between our look-up and now.
            nl.run(vec![Req::new(
                format!("create bridge {}", cfg.name),
                netlink::new_bridge(&cfg.name, cfg.mac()),
            )
            .create()
            .tolerate(libc::EEXIST)])?;
            let link = nl
                .link_by_name(&cfg.name)?
                .ok_or_else(|| NetError::LinkNotFound {
                    name: cfg.name.clone(),
                })?;
            bridge_index(cfg, link)?
        }
    };
    nl.run(vec![
        Req::new(
            format!(
                "add address {}/{} to {}",
                cfg.gateway, cfg.prefix_len, cfg.name
            ),
            netlink::new_addr(index, cfg.gateway, cfg.prefix_len),
        )
        .create()
        .tolerate(libc::EEXIST),
        Req::new(format!("set {} up", cfg.name), netlink::set_up(index)),
    ])?;
    enable_ip_forward()?;
    iptables::ensure(cfg)?;
    tracing::debug!(bridge = %cfg.name, subnet = %cfg.subnet(), "bridge ready");
    Ok(())
}

/// Removes the bridge and its iptables rules; absent pieces are not an
/// error. Leaves net.ipv4.ip_forward alone: other software may rely on it.
pub fn remove_bridge(cfg: &BridgeConfig) -> Result<(), NetError> {
    cfg.validate()?;
    // Try both halves even if one fails, then report the first failure.
    let rules = iptables::remove(cfg);
    let link = open_host().and_then(|mut nl| {
        nl.run(vec![Req::new(
            format!("delete link {}", cfg.name),
            netlink::del_link(&cfg.name),
        )
        .tolerate(libc::ENODEV)])
    });
    rules.and(link)
}

/// Puts the process `child_pid` (already in its own network namespace) on
/// the bridge: a veth pair whose host end is enslaved to `att.bridge` and up,
/// and whose other end is created directly inside the child's namespace as
/// `eth0`, up, with `att.address/att.prefix_len` and a default route via
/// `att.gateway`; `lo` is brought up too. Returns the host end's name. The
/// pair disappears with the namespace.
pub fn attach(child_pid: i32, att: &BridgeAttachment) -> Result<String, NetError> {
    att.validate()?;
    let ns = open_netns(child_pid)?;
    let ns_op = |source: io::Error| NetError::Namespace {
        pid: child_pid,
        source,
    };
    // The socket inside the child's namespace is opened by a helper thread
    // while this thread creates the veth pair: the two overlap.
    let (host, child) = std::thread::scope(|s| {
        let thread = netlink::ns_thread().spawn_scoped(s, || Netlink::enter_and_open(&ns));
        let host = create_host_veth(child_pid, att, &ns);
        let child = match thread {
            Ok(handle) => netlink::join_ns_thread(handle),
            Err(e) => Err(e),
        };
        (host, child)
    });
    let host = host?;
    let result = child
        .map_err(ns_op)
        .and_then(|mut nl| configure_container_side(&mut nl, child_pid, att));
    if let Err(e) = result {
        // Do not leave a dangling pair on the bridge if the child lives on.
        if let Ok(mut nl) = open_host() {
            let _ = nl.run(vec![Req::new(
                format!("delete link {host}"),
                netlink::del_link(&host),
            )]);
        }
        return Err(e);
    }
    Ok(host)
}

/// Brings up only `lo` in the network namespace of `child_pid` (for
/// `--network none`).
pub fn loopback_only(child_pid: i32) -> Result<(), NetError> {
    let ns = open_netns(child_pid)?;
    let mut nl = Netlink::open_in(&ns).map_err(|source| NetError::Namespace {
        pid: child_pid,
        source,
    })?;
    nl.run(vec![Req::new(
        format!("set lo up in netns of pid {child_pid}"),
        netlink::set_up(LOOPBACK_INDEX),
    )])
}

fn create_host_veth(child_pid: i32, att: &BridgeAttachment, ns: &File) -> Result<String, NetError> {
    use std::os::fd::AsRawFd;
    let mut nl = open_host()?;
    let bridge = nl
        .link_by_name(&att.bridge)?
        .ok_or_else(|| NetError::LinkNotFound {
            name: att.bridge.clone(),
        })?;
    // Random names can collide (or a stale pair can linger while an old
    // namespace is torn down asynchronously): retry with a fresh name.
    let mut last = None;
    for _ in 0..4 {
        let name = random_veth_name();
        let req = Req::new(
            format!("create veth {name} on {} for pid {child_pid}", att.bridge),
            netlink::new_veth(&name, bridge.index, CONTAINER_IFNAME, ns.as_raw_fd()),
        )
        .create();
        match nl.run(vec![req]) {
            Ok(()) => return Ok(name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if nl.link_by_name(&name)?.is_none() {
                    // Not our host name: eth0 already exists in the child.
                    return Err(e);
                }
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| NetError::InvalidConfig("no veth name available".into())))
}

fn configure_container_side(
    nl: &mut Netlink,
    child_pid: i32,
    att: &BridgeAttachment,
) -> Result<(), NetError> {
    let eth0 = nl
        .link_by_name(CONTAINER_IFNAME)?
        .ok_or_else(|| NetError::LinkNotFound {
            name: format!("{CONTAINER_IFNAME} in netns of pid {child_pid}"),
        })?
        .index;
    // One datagram: the kernel applies them in order, so the route finds
    // the subnet route that eth0 being up with its address created.
    nl.run(vec![
        Req::new(
            format!("set {CONTAINER_IFNAME} up in netns of pid {child_pid}"),
            netlink::set_up(eth0),
        ),
        Req::new(
            format!(
                "add address {}/{} to {CONTAINER_IFNAME} in netns of pid {child_pid}",
                att.address, att.prefix_len
            ),
            netlink::new_addr(eth0, att.address, att.prefix_len),
        )
        .create(),
        Req::new(
            format!("set lo up in netns of pid {child_pid}"),
            netlink::set_up(LOOPBACK_INDEX),
        ),
        Req::new(
            format!(
                "add default route via {} in netns of pid {child_pid}",
                att.gateway
            ),
            netlink::new_default_route(att.gateway, eth0),
        )
        .create(),
    ])
}

fn bridge_index(cfg: &BridgeConfig, link: netlink::LinkSummary) -> Result<u32, NetError> {
    if link.kind == Some(InfoKind::Bridge) {
        Ok(link.index)
    } else {
        Err(NetError::NotABridge {
            name: cfg.name.clone(),
        })
    }
}

fn open_host() -> Result<Netlink, NetError> {
    Netlink::open().map_err(|source| NetError::Netlink {
        op: "open socket".into(),
        source,
    })
}

/// Opens the network namespace of `pid`, refusing the caller's own: a child
/// that has not unshared yet would otherwise get eth0, an address and a
/// default route configured in the host's namespace.
fn open_netns(pid: i32) -> Result<File, NetError> {
    use std::os::unix::fs::MetadataExt;
    if pid <= 0 {
        return Err(NetError::InvalidConfig(format!("invalid pid {pid}")));
    }
    let err = |source| NetError::Namespace { pid, source };
    let ns = File::open(format!("/proc/{pid}/ns/net")).map_err(err)?;
    let theirs = ns.metadata().map_err(err)?;
    let ours = std::fs::metadata("/proc/thread-self/ns/net").map_err(err)?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(NetError::SameNamespace { pid });
    }
    Ok(ns)
}

fn enable_ip_forward() -> Result<(), NetError> {
    let err = |source| NetError::Sysctl {
        path: IP_FORWARD.into(),
        source,
    };
    if std::fs::read_to_string(IP_FORWARD).map_err(err)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, "1\n").map_err(err)
}

fn netmask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - p),
    }
}

fn validate_ifname(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidConfig(format!(
            "invalid interface name {name:?}: 1 to {IFNAME_MAX} printable characters, no '/' or ':'"
        )))
    }
}

/// "vb" + 8 hex digits. std's RandomState is seeded from the OS once per
/// process and stepped per instance, which is random enough: a collision
/// only costs a retry.
fn random_veth_name() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    format!("vb{:08x}", h.finish() as u32)
}
