//! The client side of an attached stream (run, exec): copy our stdin up,
//! the container's stdout and stderr down, forward Ctrl-C and terminal
//! size, and return the exit code that ends the stream.

use berth_api::frame::{encode_into, FrameKind, FrameReader};
use std::io::{IsTerminal, Write};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

pub struct StreamOptions {
    pub stdin: bool,
    pub tty: bool,
}

/// Puts the local terminal in raw mode for `-t` and restores it on drop.
pub struct RawMode {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    pub fn enter(enabled: bool) -> Self {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        if !enabled || !stdin.is_terminal() {
            return Self { saved: None };
        }
        let Ok(saved) = tcgetattr(&stdin) else {
            return Self { saved: None };
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        Self { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// What ended the stream.
pub enum StreamEnd {
    Exit {
        code: i32,
    },
    Error(String),
    /// The connection closed without an exit status.
    Closed,
}

/// Runs the stream until the exit frame. `on_interrupt` is called on Ctrl-C
/// (without a tty) after the signal frame has been sent.
pub async fn pump<S>(stream: S, opts: StreamOptions) -> std::io::Result<StreamEnd>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);

    // Writer task: everything we send goes through one channel.
    let writer = tokio::spawn(async move {
        while let Some(buf) = rx.recv().await {
            if wr.write_all(&buf).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let send = |tx: &mpsc::Sender<Vec<u8>>, kind: FrameKind, data: &[u8]| {
        let mut buf = Vec::with_capacity(8 + data.len());
        encode_into(kind, data, &mut buf);
        let _ = tx.try_send(buf);
    };
    send(&tx, FrameKind::Hello, b"all");
    if opts.tty {
        if let Some((rows, cols)) = berth_runtime::tty::get_winsize(0) {
            send(&tx, FrameKind::Resize, format!("{rows} {cols}").as_bytes());
        }
    }

    let mut tasks = Vec::new();
    if opts.stdin {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let mut b = Vec::new();
                        encode_into(FrameKind::StdinEof, &[], &mut b);
                        let _ = tx.send(b).await;
                        break;
                    }
                    Ok(n) => {
                        let mut b = Vec::with_capacity(8 + n);
                        encode_into(FrameKind::Stdin, &buf[..n], &mut b);
                        if tx.send(b).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    if opts.tty {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some((rows, cols)) = berth_runtime::tty::get_winsize(0) {
                    let mut b = Vec::new();
                    encode_into(
                        FrameKind::Resize,
                        format!("{rows} {cols}").as_bytes(),
                        &mut b,
                    );
                    let _ = tx.send(b).await;
                }
            }
        }));
    } else {
        // Ctrl-C: forward SIGINT; a second one kills.
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut presses = 0;
            while tokio::signal::ctrl_c().await.is_ok() {
                presses += 1;
                let sig = if presses == 1 {
                    libc::SIGINT
                } else {
                    libc::SIGKILL
                };
                let mut b = Vec::new();
                encode_into(FrameKind::Signal, sig.to_string().as_bytes(), &mut b);
                let _ = tx.send(b).await;
            }
        }));
    }
    drop(tx);

    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let end = loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) => break StreamEnd::Closed,
            Ok(n) => n,
            Err(e) => break StreamEnd::Error(e.to_string()),
        };
        reader.feed(&buf[..n]);
        let mut done = None;
        while let Some(f) = reader.next_frame()? {
            if write_output(&f, &mut out, &mut err)? {
                continue;
            }
            match f.kind {
                FrameKind::Exit => {
                    let (code, _oom) = f.exit_status().unwrap_or((255, false));
                    done = Some(StreamEnd::Exit { code });
                    break;
                }
                FrameKind::Error => {
                    done = Some(StreamEnd::Error(f.text()));
                    break;
                }
                _ => {}
            }
        }
        if let Some(d) = done {
            break d;
        }
    };
    for t in tasks {
        t.abort();
    }
    writer.abort();
    Ok(end)
}

/// Writes a stdout or stderr frame to ours; false for any other frame.
pub fn write_output(
    f: &berth_api::Frame,
    out: &mut impl Write,
    err: &mut impl Write,
) -> std::io::Result<bool> {
    let w: &mut dyn Write = match f.kind {
        FrameKind::Stdout => out,
        FrameKind::Stderr => err,
        _ => return Ok(false),
    };
    w.write_all(&f.data)?;
    w.flush()?;
    Ok(true)
}
