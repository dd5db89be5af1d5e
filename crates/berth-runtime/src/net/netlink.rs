//! A tiny synchronous rtnetlink client: one socket, requests batched into
//! one datagram, acks read back by sequence number. No async runtime: the
//! caller is the single-threaded shim on the container start hot path.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::NetError;

const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
/// `NLMSGERR_ATTR_MSG` in an extended ack: the kernel's human-readable reason.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// The loopback device has this index in every network namespace.
pub(super) const LOOPBACK_INDEX: u32 = 1;

/// One request of a batch. `tolerate` is an errno that counts as success
/// (EEXIST for "add if absent").
pub(super) struct Req {
    pub op: String,
    pub msg: RouteNetlinkMessage,
    pub flags: u16,
    pub tolerate: Option<i32>,
}

impl Req {
    pub fn new(op: impl Into<String>, msg: RouteNetlinkMessage) -> Self {
        Req {
            op: op.into(),
            msg,
            flags: 0,
            tolerate: None,
        }
    }

    /// Create-only (`NLM_F_CREATE | NLM_F_EXCL`).
    pub fn create(mut self) -> Self {
        self.flags |= NLM_F_CREATE | NLM_F_EXCL;
        self
    }

    pub fn tolerate(mut self, errno: i32) -> Self {
        self.tolerate = Some(errno);
        self
    }
}

pub(super) struct Netlink {
    sock: Socket,
    seq: u32,
    rx: Vec<u8>,
}

/// Summary of a link found by name.
pub(super) struct LinkSummary {
    pub index: u32,
    pub kind: Option<InfoKind>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Short acks (no echo of the request) plus the kernel's error text.
        sock.set_cap_ack(true)?;
        sock.set_ext_ack(true)?;
        Ok(Netlink {
            sock,
            seq: 0,
            rx: Vec::with_capacity(32 * 1024),
        })
    }

    /// Opens a socket bound to the network namespace `ns` (an open
    /// `/proc/<pid>/ns/net`) from a short-lived thread; see [`Netlink::enter_and_open`].
    pub fn open_in(ns: &File) -> io::Result<Self> {
        std::thread::scope(|s| {
            let handle = ns_thread().spawn_scoped(s, || Netlink::enter_and_open(ns))?;
            join_ns_thread(handle)
        })
    }

    /// Moves the calling thread into `ns` and opens a socket there. A netlink
    /// socket stays in the namespace it was created in, and setns(CLONE_NEWNET)
    /// only moves the calling thread, so this is meant for a throwaway thread
    /// that hands the socket back: the caller's own namespace is never touched.
    pub fn enter_and_open(ns: &File) -> io::Result<Self> {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(io::Error::from)?;
        Netlink::open()
    }

    /// Sends every request in one datagram (the kernel handles them in
    /// order, so later ones may depend on earlier ones) and waits for all
    /// acks; returns the first failure in request order.
    pub fn run(&mut self, reqs: Vec<Req>) -> Result<(), NetError> {
        let mut out = Vec::with_capacity(512);
        let first = self.seq.wrapping_add(1);
        let mut ops = Vec::with_capacity(reqs.len());
        for req in reqs {
            self.seq = self.seq.wrapping_add(1);
            let mut nl = NetlinkMessage::from(req.msg);
            nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | req.flags;
            nl.header.sequence_number = self.seq;
            nl.finalize();
            let start = out.len();
            out.resize(start + nl.buffer_len(), 0);
            nl.serialize(&mut out[start..]);
            out.resize(out.len().next_multiple_of(4), 0);
            ops.push((req.op, req.tolerate, None::<Result<(), NetError>>));
        }
        let op0 = ops.first().map(|o| o.0.clone()).unwrap_or_default();
        self.sock
            .send(&out, 0)
            .map_err(|source| NetError::Netlink {
                op: op0.clone(),
                source,
            })?;

        let mut pending = ops.len();
        while pending > 0 {
            self.recv(&op0)?;
            for (ty, flags, seq, payload) in split(&self.rx) {
                let i = seq.wrapping_sub(first) as usize;
                if ty != NLMSG_ERROR || i >= ops.len() || ops[i].2.is_some() {
                    continue;
                }
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(-libc::EPROTO);
                let errno = -code;
                let res = if code == 0 || Some(errno) == ops[i].1 {
                    Ok(())
                } else {
                    Err(nl_error(&ops[i].0, errno, ext_ack_msg(flags, payload)))
                };
                ops[i].2 = Some(res);
                pending -= 1;
            }
        }
        for (_, _, res) in ops {
            res.unwrap_or(Ok(()))?;
        }
        Ok(())
    }

    /// Looks a link up by name; `Ok(None)` when it does not exist.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<LinkSummary>, NetError> {
        let op = format!("get link {name}");
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut nl = NetlinkMessage::from(RouteNetlinkMessage::GetLink(msg));
        nl.header.flags = NLM_F_REQUEST;
        nl.header.sequence_number = seq;
        nl.finalize();
        let mut out = vec![0; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock
            .send(&out, 0)
            .map_err(|source| NetError::Netlink {
                op: op.clone(),
                source,
            })?;
        loop {
            self.recv(&op)?;
            let mut off = 0;
            while let Some((len, ty, flags, mseq)) = header_at(&self.rx, off) {
                let msg_bytes = &self.rx[off..off + len];
                off += len.next_multiple_of(4);
                if mseq != seq {
                    continue;
                }
                if ty == NLMSG_ERROR {
                    let payload = &msg_bytes[NLMSG_HDRLEN..];
                    let code = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(-libc::EPROTO);
                    if -code == libc::ENODEV {
                        return Ok(None);
                    }
                    return Err(nl_error(&op, -code, ext_ack_msg(flags, payload)));
                }
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg_bytes)
                    .map_err(|e| NetError::Netlink {
                        op: op.clone(),
                        source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                    })?;
                if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) =
                    parsed.payload
                {
                    return Ok(Some(summarize(&link)));
                }
            }
        }
    }

    fn recv(&mut self, op: &str) -> Result<(), NetError> {
        self.rx.clear();
        loop {
            match self.sock.recv(&mut self.rx, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(NetError::Netlink {
                        op: op.to_string(),
                        source,
                    })
                }
            }
        }
    }
}

/// Builder for the throwaway setns thread: it only opens a socket, so a
/// small stack is plenty and makes the spawn cheaper.
pub(super) fn ns_thread() -> std::thread::Builder {
    std::thread::Builder::new()
        .name("berth-netns".into())
        .stack_size(64 * 1024)
}

pub(super) fn join_ns_thread(
    handle: std::thread::ScopedJoinHandle<'_, io::Result<Netlink>>,
) -> io::Result<Netlink> {
    handle
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
}

fn summarize(link: &LinkMessage) -> LinkSummary {
    let kind = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    });
    LinkSummary {
        index: link.header.index,
        kind,
    }
}

fn nl_error(op: &str, errno: i32, msg: Option<String>) -> NetError {
    let base = io::Error::from_raw_os_error(errno);
    let source = match msg {
        Some(m) => io::Error::new(base.kind(), format!("{base} ({m})")),
        None => base,
    };
    NetError::Netlink {
        op: op.to_string(),
        source,
    }
}

/// Returns (len, type, flags, seq) of the netlink message at `off`.
fn header_at(buf: &[u8], off: usize) -> Option<(usize, u16, u16, u32)> {
    let h = buf.get(off..off + NLMSG_HDRLEN)?;
    let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len < NLMSG_HDRLEN || off + len > buf.len() {
        return None;
    }
    let ty = u16::from_ne_bytes([h[4], h[5]]);
    let flags = u16::from_ne_bytes([h[6], h[7]]);
    let seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
    Some((len, ty, flags, seq))
}

/// Splits a datagram into (type, flags, seq, payload) tuples.
fn split(buf: &[u8]) -> Vec<(u16, u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while let Some((len, ty, flags, seq)) = header_at(buf, off) {
        out.push((ty, flags, seq, &buf[off + NLMSG_HDRLEN..off + len]));
        off += len.next_multiple_of(4);
    }
    out
}

/// Extracts the kernel's error string from an extended ack. With
/// NETLINK_CAP_ACK the payload is: errno, the request's 16-byte header,
/// then attributes.
fn ext_ack_msg(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let mut attrs = payload.get(4 + NLMSG_HDRLEN..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &attrs[4..len];
            let text = text.split(|&b| b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

// Message builders: each returns one rtnetlink request.

fn up_header(msg: &mut LinkMessage) {
    msg.header.flags |= LinkFlags::Up;
    msg.header.change_mask |= LinkFlags::Up;
}

/// A veth pair whose host end `host` is enslaved to `master` and up, and
/// whose peer `peer` is created directly inside the namespace `ns_fd`. The
/// peer cannot be created up: the kernel configures it before the pair is
/// linked, and opening an unpaired veth fails with ENOTCONN.
pub(super) fn new_veth(host: &str, master: u32, peer: &str, ns_fd: i32) -> RouteNetlinkMessage {
    let mut peer_msg = LinkMessage::default();
    peer_msg
        .attributes
        .push(LinkAttribute::IfName(peer.to_string()));
    peer_msg.attributes.push(LinkAttribute::NetNsFd(ns_fd));

    let mut msg = LinkMessage::default();
    up_header(&mut msg);
    msg.attributes.push(LinkAttribute::IfName(host.to_string()));
    msg.attributes.push(LinkAttribute::Controller(master));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
    ]));
    RouteNetlinkMessage::NewLink(msg)
}

/// A bridge with a fixed MAC: without one the kernel gives the bridge the
/// lowest MAC of its ports, so it would change as containers come and go
/// and stale ARP entries in containers would point at the old gateway MAC.
pub(super) fn new_bridge(name: &str, mac: [u8; 6]) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    RouteNetlinkMessage::NewLink(msg)
}

pub(super) fn set_up(index: u32) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    up_header(&mut msg);
    RouteNetlinkMessage::SetLink(msg)
}

pub(super) fn del_link(name: &str) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    RouteNetlinkMessage::DelLink(msg)
}

pub(super) fn new_addr(index: u32, addr: Ipv4Addr, prefix_len: u8) -> RouteNetlinkMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix_len;
    msg.header.index = index;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(addr)));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(addr)));
    if prefix_len < 31 {
        let brd = u32::from(addr) | (u32::MAX >> prefix_len);
        msg.attributes
            .push(AddressAttribute::Broadcast(Ipv4Addr::from(brd)));
    }
    RouteNetlinkMessage::NewAddress(msg)
}

pub(super) fn new_default_route(gateway: Ipv4Addr, oif: u32) -> RouteNetlinkMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    msg.attributes.push(RouteAttribute::Oif(oif));
    RouteNetlinkMessage::NewRoute(msg)
}
