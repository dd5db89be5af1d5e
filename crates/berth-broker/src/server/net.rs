//! Accept loops and the per-connection tokio task (plain TCP and TLS).
//!
//! One task per connection and nothing else: it reads into a small buffer,
//! feeds [`Connection::on_input`], writes the connection's output in large
//! batches (one `write` for many deliveries), and wakes on the connection's
//! mailbox, its timers, alarms and the store's synced watermark.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::connection::{Connection, Control};
use crate::Broker;

/// The smallest read buffer; idle connections hold only this much.
const READ_MIN: usize = 4096;
/// Reads grow up to this while the peer keeps the buffer full.
const READ_MAX: usize = 64 << 10;
/// A TLS handshake that takes longer is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` (TLS when `tls` is given) until
/// `shutdown` turns true; each connection runs in its own task.
pub async fn accept_loop(
    broker: Arc<Broker>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            r = shutdown.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = ?local, "accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or_else(|_| local.unwrap_or(peer));
        let broker = broker.clone();
        let shutdown = shutdown.clone();
        match tls.clone() {
            None => {
                tokio::spawn(run_tcp(broker, tcp, peer, local, shutdown));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            run_connection(broker, stream, peer, local, true, shutdown).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "tls handshake: {e}"),
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    }
                });
            }
        }
    }
}

/// The read half: plain TCP reads on readiness so an idle connection holds no
/// read buffer at all; other streams (TLS) read into a reserved buffer.
enum Reader {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Other(Box<dyn AsyncRead + Send + Unpin>),
}

impl Reader {
    /// Reads at least one byte into `buf` (0: end of stream). Cancel-safe.
    async fn read(&mut self, buf: &mut BytesMut, chunk: usize) -> std::io::Result<usize> {
        match self {
            Reader::Tcp(r) => loop {
                r.readable().await?;
                if buf.capacity() - buf.len() < chunk / 2 {
                    buf.reserve(chunk);
                }
                match r.try_read_buf(buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            },
            Reader::Other(r) => {
                if buf.capacity() - buf.len() < chunk / 2 {
                    buf.reserve(chunk);
                }
                r.read_buf(buf).await
            }
        }
    }
}

enum Writer {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Other(Box<dyn AsyncWrite + Send + Unpin>),
}

impl Writer {
    async fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Writer::Tcp(w) => w.write(buf).await,
            Writer::Other(w) => w.write(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Writer::Tcp(_) => Ok(()),
            Writer::Other(w) => w.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Writer::Tcp(w) => w.shutdown().await,
            Writer::Other(w) => w.shutdown().await,
        }
    }
}

/// Drives one plain TCP connection until it closes.
pub async fn run_tcp(
    broker: Arc<Broker>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let (r, w) = stream.into_split();
    drive(
        broker,
        Reader::Tcp(r),
        Writer::Tcp(w),
        peer,
        local,
        false,
        shutdown,
    )
    .await
}

/// Drives one connection over any byte stream (TLS) until it closes.
pub async fn run_connection<S>(
    broker: Arc<Broker>,
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    drive(
        broker,
        Reader::Other(Box::new(r)),
        Writer::Other(Box::new(w)),
        peer,
        local,
        tls,
        shutdown,
    )
    .await
}

async fn drive(
    broker: Arc<Broker>,
    mut rd: Reader,
    mut wr: Writer,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = Connection::new(broker.clone(), peer, local, tls, Instant::now());
    let shared = conn.shared().clone();
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut read_chunk = READ_MIN;
    let mut alarm_rx = Some(broker.flow.subscribe());
    let mut synced_rx = Some(broker.log.synced());
    let mut shutdown_live = true;
    let mut closing = false;
    // One timer entry for the connection's life, moved when the deadline changes.
    let mut sleep = Box::pin(tokio::time::sleep(Duration::from_secs(86_400)));
    let mut armed: Option<Instant> = None;
    if *shutdown.borrow() {
        return;
    }
    loop {
        if wbuf.is_empty() {
            conn.take_output(&mut wbuf);
        }
        if closing {
            // Best effort: the client should see our close before the socket goes.
            while !wbuf.is_empty() {
                match tokio::time::timeout(Duration::from_secs(5), wr.write(&wbuf)).await {
                    Ok(Ok(n)) if n > 0 => {
                        wbuf.advance(n);
                        conn.written(n);
                    }
                    _ => break,
                }
                if wbuf.is_empty() {
                    conn.take_output(&mut wbuf);
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
            break;
        }
        let read_ok = conn.wants_read();
        let timer = conn.next_timer();
        if timer != armed {
            armed = timer;
            if let Some(t) = timer {
                sleep.as_mut().reset(t.into());
            }
        }
        let awaiting_sync = conn.awaiting_sync();
        // Unbiased: a busy mailbox must not starve reading (acks).
        let ctl = tokio::select! {
            _ = shared.notify.notified() => conn.on_wake(Instant::now()),
            r = wr.write(&wbuf), if !wbuf.is_empty() => match r {
                Ok(n) if n > 0 => {
                    wbuf.advance(n);
                    conn.written(n);
                    if wbuf.is_empty() {
                        // A small last write means a quiet connection: hold no
                        // buffer while idle. Busy ones keep theirs (up to a cap).
                        if n < READ_MIN || wbuf.capacity() > 4 * READ_MAX {
                            wbuf = BytesMut::new();
                        }
                        // TLS keeps records until flushed; plain TCP: no-op.
                        if wr.flush().await.is_err() {
                            break;
                        }
                    }
                    Control::Continue
                }
                _ => break,
            },
            r = rd.read(&mut rbuf, read_chunk), if read_ok => match r {
                Ok(n) if n > 0 => {
                    if rbuf.len() >= read_chunk {
                        read_chunk = (read_chunk * 2).min(READ_MAX);
                    }
                    let ctl = conn.on_input(&mut rbuf, Instant::now());
                    if rbuf.is_empty() && (n < READ_MIN / 2 || rbuf.capacity() > READ_MAX) {
                        // Same for input: idle plain-TCP connections hold no read buffer.
                        if rbuf.capacity() > READ_MAX {
                            read_chunk = READ_MIN;
                        }
                        rbuf = BytesMut::new();
                    }
                    ctl
                }
                _ => break,
            },
            _ = sleep.as_mut(), if armed.is_some() => conn.on_timer(Instant::now()),
            r = async { alarm_rx.as_mut().expect("guarded").changed().await }, if alarm_rx.is_some() => {
                match r {
                    Ok(()) => {
                        let a = *alarm_rx.as_mut().expect("guarded").borrow_and_update();
                        conn.on_alarm(a, Instant::now());
                        if rbuf.is_empty() {
                            Control::Continue
                        } else {
                            // A publish held while blocked (and what came after it)
                            // waits here; a no-op while still blocked.
                            conn.on_input(&mut rbuf, Instant::now())
                        }
                    }
                    Err(_) => {
                        alarm_rx = None;
                        Control::Continue
                    }
                }
            },
            r = async { synced_rx.as_mut().expect("guarded").changed().await }, if awaiting_sync && synced_rx.is_some() => {
                match r {
                    Ok(()) => conn.on_wake(Instant::now()),
                    Err(_) => {
                        synced_rx = None;
                        Control::Continue
                    }
                }
            },
            r = shutdown.changed(), if shutdown_live => {
                match r {
                    Ok(()) if *shutdown.borrow() => shared.force_close("broker shutdown"),
                    Ok(()) => {}
                    Err(_) => shutdown_live = false,
                }
                Control::Continue
            },
        };
        if ctl == Control::Close || conn.is_closed() {
            closing = true;
        }
    }
    conn.finish();
}
