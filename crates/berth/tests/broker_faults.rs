//! The broker's message store under real I/O errors: a small tmpfs as the
//! data directory fills up while a publisher sends persistent messages with
//! confirms. berth only (its store, its log); needs root for `mount`.

#[path = "broker/harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

/// Body size of the test messages (the first 8 bytes are the sequence number).
const BODY: usize = 4096;
/// Publishes in flight at a time.
const WINDOW: usize = 32;
/// Bound on each confirm: a hang fails the test instead of blocking it.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// A tmpfs mounted on a fresh temp dir; Drop unmounts it (lazily if still
/// busy) and removes the directory, also when the test fails.
struct Tmpfs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("bfault")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let mut fs = Tmpfs {
            dir,
            mounted: false,
        };
        let opts = format!("size={size},mode=0700");
        cmd_ok("mount", &["-t", "tmpfs", "-o", &opts, "tmpfs"], fs.path());
        fs.mounted = true;
        fs
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Changes the size, keeping the files.
    fn resize(&self, size: &str) {
        let opts = format!("remount,size={size}");
        cmd_ok("mount", &["-o", &opts], self.path());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let ok = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("umount {} failed; detaching it", self.path().display());
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
        // The TempDir field then removes the (empty) mount point.
    }
}

fn cmd_ok(prog: &str, args: &[&str], path: &Path) {
    let out = Command::new(prog)
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn body(seq: u64) -> Vec<u8> {
    let mut b = vec![0x5a; BODY];
    b[..8].copy_from_slice(&seq.to_be_bytes());
    b
}

async fn channel(b: &Broker) -> (Connection, Channel) {
    let c = Connection::connect(&b.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = c.create_channel().await.expect("channel.open");
    (c, ch)
}

async fn confirmed(ch: &Channel, rk: &str, body: &[u8], props: BasicProperties) -> Confirmation {
    let p = ch
        .basic_publish(s(""), s(rk), BasicPublishOptions::default(), body, props)
        .await
        .expect("publish");
    tokio::time::timeout(CONFIRM_TIMEOUT, p)
        .await
        .expect("confirm within the timeout")
        .expect("confirm")
}

/// Sequence numbers of the persistent messages in `q` (drained, no-ack), and
/// how many other messages there were.
async fn drain(ch: &Channel, q: &str) -> (Vec<u64>, usize) {
    let mut seqs = Vec::new();
    let mut other = 0;
    while let Some(m) = ch
        .basic_get(s(q), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let d = &m.delivery.data;
        if d.len() == BODY {
            seqs.push(u64::from_be_bytes(d[..8].try_into().expect("8 bytes")));
        } else {
            other += 1;
        }
    }
    (seqs, other)
}

#[test]
fn full_disk_nacks_confirms_and_keeps_what_was_acked() {
    if skip_unless_berth("full_disk_nacks_confirms_and_keeps_what_was_acked") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "full_disk_nacks_confirms_and_keeps_what_was_acked: needs root for mount, skipped"
        );
        return;
    }
    // Declared first, dropped last: the broker is stopped before the unmount.
    let fs = Tmpfs::mount("2m");
    let data: PathBuf = fs.path().join("data");
    let mut b = Broker::start_with(Opts {
        data_dir: Some(data),
        // Fill the disk for real instead of being stopped by the alarm.
        disk_free_limit: Some(0),
        ..Default::default()
    });

    let (acked, nacked) = run(async {
        let (c, ch) = channel(&b).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        ch.queue_declare(
            s("faults"),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("durable queue");
        ch.queue_declare(
            s("mem"),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("transient queue");
        let mut acked = Vec::new();
        let mut nacked = Vec::new();
        let mut seq = 0u64;
        // 2 MB hold about 500 such messages; go well past the failure.
        while nacked.len() < 2 * WINDOW {
            assert!(seq < 5000, "the tmpfs never filled up");
            let mut pending = Vec::new();
            for _ in 0..WINDOW {
                seq += 1;
                let p = ch
                    .basic_publish(
                        s(""),
                        s("faults"),
                        BasicPublishOptions::default(),
                        &body(seq),
                        persistent(),
                    )
                    .await
                    .expect("publish");
                pending.push((seq, p));
            }
            for (n, p) in pending {
                let conf = tokio::time::timeout(CONFIRM_TIMEOUT, p)
                    .await
                    .unwrap_or_else(|_| panic!("no confirm for message {n} (hang)"))
                    .expect("confirm");
                match conf {
                    Confirmation::Ack(_) => {
                        // Tickets are ordered: nothing synced after a failure.
                        assert!(nacked.is_empty(), "message {n} acked after a nack");
                        acked.push(n);
                    }
                    Confirmation::Nack(_) => nacked.push(n),
                    other => panic!("message {n}: {other:?}"),
                }
            }
        }
        assert!(
            !acked.is_empty(),
            "nothing was acked before the disk filled"
        );
        eprintln!("{} acked, then {} nacked", acked.len(), nacked.len());

        // The store is failed: persistent messages in durable queues are still
        // nacked, everything else keeps working.
        let conf = confirmed(&ch, "faults", &body(seq + 1), persistent()).await;
        assert!(matches!(conf, Confirmation::Nack(_)), "{conf:?}");
        nacked.push(seq + 1);
        let conf = confirmed(&ch, "faults", b"transient", BasicProperties::default()).await;
        assert!(conf.is_ack(), "transient message: {conf:?}");
        let conf = confirmed(&ch, "mem", b"persistent, transient queue", persistent()).await;
        assert!(conf.is_ack(), "non-durable queue: {conf:?}");
        // Nacked messages stay deliverable from memory ("may or may not be
        // delivered"); acks of stored messages work.
        let depth = ch
            .queue_declare(
                s("faults"),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count();
        assert_eq!(depth as usize, acked.len() + nacked.len() + 1);
        let m = ch
            .basic_get(s("faults"), BasicGetOptions::default())
            .await
            .expect("basic.get")
            .expect("a message");
        assert_eq!(m.delivery.data, body(acked[0]));
        m.delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("basic.ack");
        // Without confirms too (the broker warns once).
        let plain = c.create_channel().await.expect("channel.open");
        plain
            .basic_publish(
                s(""),
                s("faults"),
                BasicPublishOptions::default(),
                b"unconfirmed",
                persistent(),
            )
            .await
            .expect("publish");
        let conf = confirmed(&ch, "mem", b"sync point", BasicProperties::default()).await;
        assert!(conf.is_ack());
        // A transaction's commit-ok would promise its messages are on disk.
        let tx = c.create_channel().await.expect("channel.open");
        tx.tx_select().await.expect("tx.select");
        tx.basic_publish(
            s(""),
            s("faults"),
            BasicPublishOptions::default(),
            b"in a transaction",
            persistent(),
        )
        .await
        .expect("publish");
        let err = tx
            .tx_commit()
            .await
            .expect_err("tx.commit on a failed store");
        assert!(
            format!("{err:?}").contains("message store failed"),
            "tx.commit: {err:?}"
        );
        // Monitoring sees it.
        let (st, metrics) = b.api("GET", "/metrics", "");
        assert_eq!(st, 200);
        assert!(
            metrics.contains("berth_broker_message_store_failed 1"),
            "{metrics}"
        );
        c.close(200, s("bye")).await.expect("connection.close");
        (acked, nacked)
    });

    // A graceful stop does not wait for the failed store.
    let started = Instant::now();
    b.stop();
    let took = started.elapsed();
    let log = b.log_tail(100_000);
    assert!(took < Duration::from_secs(5), "graceful stop took {took:?}");
    assert!(!log.contains("panicked"), "the broker panicked:\n{log}");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("message store I/O error"))
        .collect();
    assert_eq!(errors.len(), 1, "one failure record:\n{log}");
    eprintln!("{}", errors[0]);
    assert!(
        errors[0].contains("No space left on device") && errors[0].contains(".seg"),
        "names the file and the OS error: {}",
        errors[0]
    );
    assert!(
        log.contains("persistent message not written"),
        "publishes after the failure are logged:\n{log}"
    );
    assert!(
        log.contains("published without confirms while the message store is failed"),
        "the unconfirmed publisher is warned:\n{log}"
    );

    // With room again, a restart has every acked message (the one acked by
    // the consumer may come back: its remove was not written).
    fs.resize("32m");
    b.start_again();
    let (seqs, other) = run(async {
        let (c, ch) = channel(&b).await;
        let got = drain(&ch, "faults").await;
        // The store works again.
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        let conf = confirmed(&ch, "faults", &body(0), persistent()).await;
        assert!(conf.is_ack(), "after the restart: {conf:?}");
        c.close(200, s("bye")).await.expect("connection.close");
        got
    });
    assert_eq!(other, 0, "only confirmed-durable messages come back");
    let have: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(have.len(), seqs.len(), "no duplicates");
    for n in &acked[1..] {
        assert!(have.contains(n), "acked message {n} lost");
    }
    let back = nacked.iter().filter(|n| have.contains(n)).count();
    eprintln!("{} recovered, {back} of them nacked", have.len());
    assert!(
        have.iter()
            .all(|n| *n <= acked.len() as u64 + nacked.len() as u64),
        "unknown messages recovered"
    );
    let started = Instant::now();
    b.stop();
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(b);
    drop(fs);
}
