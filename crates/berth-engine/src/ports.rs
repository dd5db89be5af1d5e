//! Published ports: a userland proxy per mapping, bound before the
//! container starts (so a taken port fails the start cleanly) and dropped
//! when it stops. Like docker-proxy, it makes ports reachable from the host
//! itself (including 127.0.0.1, where DNAT rules would not apply) and from
//! other machines.

use berth_types::{PortMapping, PortProto};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

pub enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Binds every mapping's host side; the first failure names the port.
pub async fn bind_all(ports: &[PortMapping]) -> Result<Vec<(PortMapping, Bound)>, String> {
    let mut out = Vec::new();
    for p in ports {
        let ip = p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let addr = SocketAddr::new(ip, p.host_port);
        let bound = match p.proto {
            PortProto::Tcp => TcpListener::bind(addr).await.map(Bound::Tcp),
            PortProto::Udp => UdpSocket::bind(addr).await.map(Bound::Udp),
        };
        match bound {
            Ok(b) => out.push((p.clone(), b)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(format!(
                    "bind for {addr}/{} failed: port is already allocated",
                    p.proto
                ))
            }
            Err(e) => return Err(format!("bind for {addr}/{} failed: {e}", p.proto)),
        }
    }
    Ok(out)
}

/// Runs the proxies; dropping the returned handles' owner aborts them.
pub fn serve_all(bound: Vec<(PortMapping, Bound)>, target: Ipv4Addr) -> Vec<JoinHandle<()>> {
    bound
        .into_iter()
        .map(|(p, b)| {
            let dest = SocketAddr::new(IpAddr::V4(target), p.container_port);
            match b {
                Bound::Tcp(l) => tokio::spawn(serve_tcp(l, dest)),
                Bound::Udp(s) => tokio::spawn(serve_udp(s, dest)),
            }
        })
        .collect()
}

// Connection and flow tasks live in a JoinSet owned by the proxy task, so
// aborting the proxy (container stopped or removed) also ends them and
// frees the host port at once.

async fn serve_tcp(listener: TcpListener, dest: SocketAddr) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut inbound, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                conns.spawn(async move {
                    let _ = inbound.set_nodelay(true);
                    if let Ok(mut outbound) = TcpStream::connect(dest).await {
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// UDP: one upstream socket per client address, forgotten after a minute
/// of silence.
async fn serve_udp(socket: UdpSocket, dest: SocketAddr) {
    let socket = Arc::new(socket);
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, client)) = received else { continue };
                let upstream = match flows.get(&client) {
                    Some(u) => u.clone(),
                    None => {
                        let Ok(u) = UdpSocket::bind("0.0.0.0:0").await else { continue };
                        if u.connect(dest).await.is_err() {
                            continue;
                        }
                        let u = Arc::new(u);
                        flows.insert(client, u.clone());
                        let (u2, s2) = (u.clone(), socket.clone());
                        tasks.spawn(async move {
                            let mut b = vec![0u8; 65536];
                            while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(60), u2.recv(&mut b)).await {
                                let _ = s2.send_to(&b[..n], client).await;
                            }
                            client
                        });
                        u
                    }
                };
                let _ = upstream.send(&buf[..n]).await;
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(client) = done {
                    flows.remove(&client);
                }
            }
        }
    }
}
