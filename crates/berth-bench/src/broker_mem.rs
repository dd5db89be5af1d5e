//! Broker memory per idle connection and per empty queue.
//!
//! lapin runs an OS thread per connection, too heavy for 10,000 of them in
//! one process, so idle connections are opened with a minimal hand-written
//! AMQP handshake (header, start-ok with PLAIN guest/guest, tune-ok without
//! heartbeats, open "/") over plain sockets: what counts is the broker's
//! memory, not the client's.

use anyhow::{bail, Context};
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::{options::QueueDeclareOptions, types::FieldTable, Connection, ConnectionProperties};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::broker_peer::Broker;

/// Source addresses the idle connections are spread over (127.0.0.1..20).
const SOURCES: u8 = 20;
/// Handshakes under way at once.
const PARALLEL: usize = 64;
/// Time given to the broker's memory to settle before reading RSS.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, Default)]
pub struct Delta {
    pub count: usize,
    pub before: u64,
    pub after: u64,
}

impl Delta {
    pub fn per_item(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        (self.after as f64 - self.before as f64) / self.count as f64
    }
}

fn method_frame(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(12 + args.len());
    f.push(1);
    f.extend_from_slice(&0u16.to_be_bytes());
    f.extend_from_slice(&((4 + args.len()) as u32).to_be_bytes());
    f.extend_from_slice(&class.to_be_bytes());
    f.extend_from_slice(&method.to_be_bytes());
    f.extend_from_slice(args);
    f.push(0xCE);
    f
}

/// Client properties like a real client's (RabbitMQ keeps them per
/// connection): product and the usual capabilities.
fn client_properties() -> Vec<u8> {
    let mut caps = Vec::new();
    for c in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "basic.nack",
        "connection.blocked",
        "authentication_failure_close",
    ] {
        short_str(&mut caps, c);
        caps.extend_from_slice(&[b't', 1]);
    }
    let mut t = Vec::new();
    short_str(&mut t, "product");
    t.push(b'S');
    t.extend_from_slice(&(11u32).to_be_bytes());
    t.extend_from_slice(b"berth-bench");
    short_str(&mut t, "capabilities");
    t.push(b'F');
    t.extend_from_slice(&(caps.len() as u32).to_be_bytes());
    t.extend_from_slice(&caps);
    let mut out = (t.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&t);
    out
}

fn short_str(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// Reads one frame; returns (type, class, method, args) for method frames
/// and skips heartbeats.
async fn read_method(s: &mut TcpStream) -> anyhow::Result<(u16, u16, Vec<u8>)> {
    loop {
        let mut head = [0u8; 7];
        s.read_exact(&mut head)
            .await
            .context("reading frame header")?;
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        if size > 1 << 20 {
            bail!("frame of {size} bytes during handshake");
        }
        let mut body = vec![0u8; size + 1];
        s.read_exact(&mut body)
            .await
            .context("reading frame body")?;
        match head[0] {
            8 => continue,
            1 if size >= 4 => {
                let class = u16::from_be_bytes([body[0], body[1]]);
                let method = u16::from_be_bytes([body[2], body[3]]);
                body.truncate(size);
                return Ok((class, method, body.split_off(4)));
            }
            t => bail!("unexpected frame type {t} during handshake"),
        }
    }
}

async fn expect(s: &mut TcpStream, class: u16, method: u16) -> anyhow::Result<Vec<u8>> {
    let (c, m, args) = read_method(s).await?;
    if (c, m) == (10, 50) {
        let text = args
            .get(3..3 + *args.get(2).unwrap_or(&0) as usize)
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        bail!("broker closed the connection: {text}");
    }
    if (c, m) != (class, method) {
        bail!("expected method {class}.{method}, got {c}.{m}");
    }
    Ok(args)
}

/// Opens an AMQP connection through connection.open-ok as guest on "/".
pub async fn handshake(addr: SocketAddr, source: Option<Ipv4Addr>) -> anyhow::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        sock.bind((ip, 0).into())
            .with_context(|| format!("binding {ip}"))?;
    }
    let mut s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"AMQP\x00\x00\x09\x01").await?;
    expect(&mut s, 10, 10).await?;

    let mut start_ok = client_properties();
    short_str(&mut start_ok, "PLAIN");
    let response = b"\0guest\0guest";
    start_ok.extend_from_slice(&(response.len() as u32).to_be_bytes());
    start_ok.extend_from_slice(response);
    short_str(&mut start_ok, "en_US");
    s.write_all(&method_frame(10, 11, &start_ok)).await?;

    let tune = expect(&mut s, 10, 30).await?;
    if tune.len() < 8 {
        bail!("short connection.tune");
    }
    let channel_max = u16::from_be_bytes([tune[0], tune[1]]);
    let frame_max = u32::from_be_bytes([tune[2], tune[3], tune[4], tune[5]]);
    let mut tune_ok = Vec::new();
    tune_ok.extend_from_slice(&channel_max.to_be_bytes());
    tune_ok.extend_from_slice(&frame_max.to_be_bytes());
    tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats: they stay idle
    s.write_all(&method_frame(10, 31, &tune_ok)).await?;

    let mut open = Vec::new();
    short_str(&mut open, "/");
    short_str(&mut open, "");
    open.push(0);
    s.write_all(&method_frame(10, 40, &open)).await?;
    expect(&mut s, 10, 41).await?;
    Ok(s)
}

/// Opens `n` idle connections and returns the broker's RSS before and
/// after, with the connections (the caller keeps them open or drops them).
pub async fn idle_connections(
    broker: &Broker,
    n: usize,
) -> anyhow::Result<(Delta, Vec<TcpStream>)> {
    tokio::time::sleep(SETTLE).await;
    let before = broker.rss_bytes();
    let addr = broker.addr;
    let mut open = Vec::with_capacity(n);
    let mut pending = FuturesUnordered::new();
    let mut next = 0usize;
    while open.len() < n {
        while next < n && pending.len() < PARALLEL {
            let src = Ipv4Addr::new(127, 0, 0, 1 + (next % SOURCES as usize) as u8);
            pending.push(async move {
                tokio::time::timeout(Duration::from_secs(30), handshake(addr, Some(src))).await
            });
            next += 1;
        }
        match pending.next().await {
            Some(Ok(Ok(s))) => open.push(s),
            Some(Ok(Err(e))) => bail!("idle connection {} failed: {e:#}", open.len() + 1),
            Some(Err(_)) => bail!("idle connection {} timed out", open.len() + 1),
            None => break,
        }
        if open.len() % 2000 == 0 {
            eprintln!("  {} idle connections open", open.len());
        }
    }
    tokio::time::sleep(SETTLE).await;
    let after = broker.rss_bytes();
    Ok((
        Delta {
            count: open.len(),
            before,
            after,
        },
        open,
    ))
}

/// Declares `n` empty non-durable queues on one channel and returns the
/// broker's RSS before and after, with the connection that declared them.
pub async fn empty_queues(broker: &Broker, n: usize) -> anyhow::Result<(Delta, Connection)> {
    let conn = Connection::connect(
        &format!("amqp://guest:guest@{}/%2f", broker.addr),
        ConnectionProperties::default(),
    )
    .await
    .context("connecting")?;
    let ch = conn.create_channel().await?;
    tokio::time::sleep(SETTLE).await;
    let before = broker.rss_bytes();
    let opts = QueueDeclareOptions {
        durable: false,
        exclusive: false,
        auto_delete: false,
        ..Default::default()
    };
    // Declares are pipelined in batches: one round trip each would make
    // 10,000 of them slow without changing what is measured.
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(200);
        let mut f = FuturesUnordered::new();
        for i in done..done + batch {
            let ch = &ch;
            f.push(async move {
                ch.queue_declare(
                    format!("bench-idle-{i}").as_str().into(),
                    opts,
                    FieldTable::default(),
                )
                .await
            });
        }
        while let Some(r) = f.next().await {
            r.with_context(|| format!("declaring queue {}", done + 1))?;
        }
        done += batch;
        if done % 2000 == 0 {
            eprintln!("  {done} queues declared");
        }
    }
    tokio::time::sleep(SETTLE).await;
    let after = broker.rss_bytes();
    Ok((
        Delta {
            count: n,
            before,
            after,
        },
        conn,
    ))
}
