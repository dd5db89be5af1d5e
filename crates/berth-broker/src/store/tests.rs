//! Store tests: message log round trips, rotation and reclaiming, torn tails,
//! corruption, crashes, concurrency; metadata log replay and compaction.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_amqp::{AMQPValue, BasicProperties, FieldTable, LongString};
use bytes::Bytes;

use super::segment;
use super::*;
use crate::definitions::{
    BindingDef, ExchangeDef, PermissionDef, PolicyDef, QueueDef, UserDef, VhostDef,
};

fn props(id: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("n".into(), AMQPValue::LongLongInt(id as i64));
    headers.insert(
        "s".into(),
        AMQPValue::LongString(LongString::from(format!("v{id}"))),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("text/plain".into())
        .with_headers(headers)
}

fn msg(id: u64, body: &[u8]) -> Message {
    Message {
        id,
        exchange: "ex".to_string(),
        routing_key: format!("rk{id}"),
        properties: props(id),
        body: Bytes::copy_from_slice(body),
    }
}

fn opts(segment_bytes: u64) -> StoreOptions {
    StoreOptions {
        segment_bytes,
        fsync: true,
    }
}

/// vhost/queue → ids in recovery order.
fn by_queue(recovered: &[RecoveredMessage]) -> BTreeMap<(String, String), Vec<u64>> {
    let mut out: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for r in recovered {
        out.entry((r.vhost.clone(), r.queue.clone()))
            .or_default()
            .push(r.message.id);
    }
    out
}

fn key(v: &str, q: &str) -> (String, String) {
    (v.to_string(), q.to_string())
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("messages"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(segment::parse_segment_name)
                .is_some()
        })
        .collect();
    v.sort();
    v
}

fn wait_synced(store: &Store, ticket: WriteTicket) {
    let rx = store.synced();
    let deadline = Instant::now() + Duration::from_secs(20);
    while *rx.borrow() < ticket.0 {
        assert!(Instant::now() < deadline, "ticket {} not synced", ticket.0);
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("messages")).unwrap();
    for e in std::fs::read_dir(from.join("messages")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join("messages").join(e.file_name())).unwrap();
    }
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, rec) = Store::open(dir.path(), opts(1 << 20)).unwrap();
        assert!(rec.is_empty());
        let ids: Vec<u64> = (0..3).map(|_| store.next_id()).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        let t1 = store.publish("/", &["q1"], &msg(1, b"one"));
        let t2 = store.publish("/", &["q1", "q2"], &msg(2, b"two"));
        let t3 = store.publish("v", &["q1"], &msg(3, b""));
        assert!(t1 < t2 && t2 < t3);
        store.remove("/", "q1", &[1]);
        store.remove("/", "nope", &[2]);
        wait_synced(&store, t3);
        assert!(store.disk_bytes() > 0);
        store.close();
    }
    let (store, rec) = Store::open(dir.path(), opts(1 << 20)).unwrap();
    let q = by_queue(&rec);
    assert_eq!(q[&key("/", "q1")], vec![2]);
    assert_eq!(q[&key("/", "q2")], vec![2]);
    assert_eq!(q[&key("v", "q1")], vec![3]);
    assert_eq!(q.len(), 3);
    let two = rec.iter().find(|r| r.message.id == 2).unwrap();
    assert_eq!(&two.message.body[..], b"two");
    assert_eq!(two.message.exchange, "ex");
    assert_eq!(two.message.routing_key, "rk2");
    assert_eq!(two.message.properties, props(2));
    assert!(two.message.persistent());
    assert!(store.next_id() > 3);
}

#[test]
fn many_queues_and_remove_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut expect: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    {
        let (store, _) = Store::open(dir.path(), opts(16 << 10)).unwrap();
        for i in 0..1000u64 {
            let id = store.next_id();
            let q = format!("q{}", i % 50);
            store.publish("/", &[q.as_str()], &msg(id, &[7; 50]));
            expect.entry(key("/", &q)).or_default().push(id);
        }
        // Ack every other message, drop queues 0..10 entirely.
        for (k, ids) in expect.iter_mut() {
            let acked: Vec<u64> = ids.iter().copied().step_by(2).collect();
            store.remove(&k.0, &k.1, &acked);
            ids.retain(|id| !acked.contains(id));
        }
        for i in 0..10 {
            let q = format!("q{i}");
            store.remove_queue("/", &q);
            expect.remove(&key("/", &q));
        }
        store.close();
    }
    let (_store, rec) = Store::open(dir.path(), opts(16 << 10)).unwrap();
    assert_eq!(by_queue(&rec), expect);
}

#[test]
fn rotation_and_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts(2048)).unwrap();
    let mut ids = Vec::new();
    let mut last = WriteTicket(0);
    for _ in 0..100 {
        let id = store.next_id();
        last = store.publish("/", &["q"], &msg(id, &[1; 100]));
        ids.push(id);
    }
    wait_synced(&store, last);
    let before = segments(dir.path()).len();
    assert!(before >= 5, "only {before} segments");
    let bytes_before = store.disk_bytes();
    store.remove("/", "q", &ids);
    // The deletions happen after the next batch is written.
    wait_until("segments deleted", || segments(dir.path()).len() <= 1);
    assert!(store.disk_bytes() < bytes_before);
    store.close();
    let (_store, rec) = Store::open(dir.path(), opts(2048)).unwrap();
    assert!(rec.is_empty());
}

#[test]
fn removes_in_later_segment_keep_it_alive() {
    // A long-lived message pins segment 1; a remove of another segment-1 message
    // sits in a later segment whose own messages are all gone: that later
    // segment must survive, or the removed message would come back.
    let dir = tempfile::tempdir().unwrap();
    let segs = 1024;
    {
        let (store, _) = Store::open(dir.path(), opts(segs)).unwrap();
        store.publish("/", &["keep"], &msg(1, &[0; 100]));
        store.publish("/", &["gone"], &msg(2, &[0; 100]));
        let mut next = 3;
        for _ in 0..20 {
            store.publish("/", &["churn"], &msg(next, &[0; 100]));
            store.remove("/", "churn", &[next]);
            next += 1;
        }
        store.remove("/", "gone", &[2]);
        for _ in 0..30 {
            store.publish("/", &["churn"], &msg(next, &[0; 100]));
            store.remove("/", "churn", &[next]);
            next += 1;
        }
        let t = store.publish("/", &["last"], &msg(next, b"x"));
        wait_synced(&store, t);
        store.close();
    }
    let (_store, rec) = Store::open(dir.path(), opts(segs)).unwrap();
    let q = by_queue(&rec);
    assert_eq!(q.get(&key("/", "keep")), Some(&vec![1]));
    assert_eq!(q.get(&key("/", "gone")), None);
    assert_eq!(q.get(&key("/", "churn")), None);
    assert_eq!(q.len(), 2);
}

#[test]
fn compaction_moves_live_messages_and_deletes_old_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts(4096)).unwrap();
    let mut t = WriteTicket(0);
    for id in 1..=40 {
        t = store.publish("/", &["q", "r"], &msg(id, &[id as u8; 150]));
    }
    wait_synced(&store, t);
    let first = segments(dir.path())[0].clone();
    // Keep message 1 (in the first segment) in q only; everything else goes.
    store.remove("/", "r", &(1..=40).collect::<Vec<_>>());
    store.remove("/", "q", &(2..=40).collect::<Vec<_>>());
    let t = store.publish("/", &["q"], &msg(41, b"later"));
    wait_synced(&store, t);
    wait_until("first segment compacted away", || !first.exists());
    // Nudge the writer so the deletions of emptied segments run.
    let t = store.publish("/", &["q"], &msg(42, b"later"));
    wait_synced(&store, t);
    store.close();
    drop(store);
    let (_store, rec) = Store::open(dir.path(), opts(4096)).unwrap();
    let q = by_queue(&rec);
    assert_eq!(q.get(&key("/", "q")), Some(&vec![1, 41, 42]));
    assert_eq!(q.len(), 1);
    let one = rec.iter().find(|r| r.message.id == 1).unwrap();
    assert_eq!(&one.message.body[..], &[1u8; 150][..]);
    assert_eq!(one.message.properties, props(1));
}

#[test]
fn torn_tail_is_truncated_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path(), opts(1 << 20)).unwrap();
        store.publish("/", &["q"], &msg(1, b"first"));
        store.publish("/", &["q"], &msg(2, b"second"));
        store.publish("/", &["q"], &msg(3, b"third message"));
        store.close();
    }
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 1);
    let data = std::fs::read(&segs[0]).unwrap();
    let (records, bad) = segment::scan(&data);
    assert!(bad.is_none());
    let last_start = records[2].offset as usize;
    let name = segs[0].file_name().unwrap().to_owned();
    let check = |data: &[u8], what: &str| {
        let copy = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(copy.path().join("messages")).unwrap();
        let path = copy.path().join("messages").join(&name);
        std::fs::write(&path, data).unwrap();
        let (store, rec) =
            Store::open(copy.path(), opts(1 << 20)).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(by_queue(&rec)[&key("/", "q")], vec![1, 2], "{what}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            last_start as u64,
            "{what}"
        );
        // Appending after the truncation works.
        let t = store.publish("/", &["q"], &msg(9, b"again"));
        wait_synced(&store, t);
        store.close();
        let (_s, rec) = Store::open(copy.path(), opts(1 << 20)).unwrap();
        assert_eq!(by_queue(&rec)[&key("/", "q")], vec![1, 2, 9], "{what}");
    };
    for cut in last_start + 1..data.len() {
        check(&data[..cut], &format!("cut at {cut}"));
    }
    // A bad checksum in the last record, or zeros after a torn header.
    let mut flipped = data.clone();
    let n = flipped.len();
    flipped[n - 1] ^= 0xff;
    check(&flipped, "flipped last byte");
    let mut zeroed = data.clone();
    for b in &mut zeroed[last_start..] {
        *b = 0;
    }
    zeroed.extend_from_slice(&[0; 4096]);
    check(&zeroed, "zero-filled tail");
}

#[test]
fn corrupt_middle_record_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path(), opts(1 << 20)).unwrap();
        for id in 1..=3 {
            store.publish("/", &["q"], &msg(id, b"payload"));
        }
        store.close();
    }
    let seg = segments(dir.path())[0].clone();
    let mut data = std::fs::read(&seg).unwrap();
    let (records, _) = segment::scan(&data);
    let off = records[1].offset;
    let off2 = records[2].offset as usize;
    data[off2 - 1] ^= 0x55;
    std::fs::write(&seg, &data).unwrap();
    let err = Store::open(dir.path(), opts(1 << 20))
        .err()
        .expect("corruption not detected");
    match &err {
        StoreError::Corrupt { path, offset, .. } => {
            assert_eq!(*offset, off);
            assert!(path.ends_with(".seg"), "{path}");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains(&format!("offset {off}")), "{err}");
}

#[test]
fn torn_record_in_an_older_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path(), opts(300)).unwrap();
        for id in 1..=6 {
            store.publish("/", &["q"], &msg(id, &[0; 100]));
        }
        store.close();
    }
    let segs = segments(dir.path());
    assert!(segs.len() >= 2);
    let data = std::fs::read(&segs[0]).unwrap();
    std::fs::write(&segs[0], &data[..data.len() - 3]).unwrap();
    assert!(matches!(
        Store::open(dir.path(), opts(300)),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn crash_keeps_synced_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut synced_ids = Vec::new();
    {
        let (store, _) = Store::open(dir.path(), opts(8192)).unwrap();
        for round in 1..=4u64 {
            let mut t = WriteTicket(0);
            for id in (round - 1) * 50 + 1..=round * 50 {
                t = store.publish("/", &["q"], &msg(id, &[3; 64]));
            }
            wait_synced(&store, t);
            synced_ids = (1..=round * 50).collect();
        }
        for id in 201..=260u64 {
            store.publish("/", &["q"], &msg(id, &[3; 64]));
        }
        store.shared.abandon();
        // Drop joins the exited writer without writing anything more.
    }
    let (store, rec) = Store::open(dir.path(), opts(8192)).unwrap();
    let got = by_queue(&rec).remove(&key("/", "q")).unwrap_or_default();
    let set: BTreeSet<u64> = got.iter().copied().collect();
    for id in &synced_ids {
        assert!(set.contains(id), "synced message {id} lost");
    }
    // What survived is a prefix (one writer, append order) and ids continue above it.
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
    assert!(store.next_id() > *got.last().unwrap());
}

#[test]
fn concurrent_publishers_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts(256 << 10)).unwrap();
    let store = std::sync::Arc::new(store);
    let per = 500u64;
    let watcher = {
        let rx = store.synced();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut last = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while last < 4 * per && Instant::now() < deadline {
                let v = *rx.borrow();
                assert!(v >= last, "synced went backwards: {v} < {last}");
                if v != last {
                    seen.push(v);
                }
                last = v;
                std::thread::sleep(Duration::from_micros(200));
            }
            (last, seen.len())
        })
    };
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let q = format!("q{t}");
                let mut tickets = Vec::new();
                for _ in 0..per {
                    let id = store.next_id();
                    tickets.push(store.publish("/", &[q.as_str()], &msg(id, &[t as u8; 100])));
                }
                tickets
            })
        })
        .collect();
    let mut all = Vec::new();
    for th in threads {
        let tickets = th.join().unwrap();
        assert!(tickets.windows(2).all(|w| w[0] < w[1]));
        all.extend(tickets);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len() as u64, 4 * per);
    assert_eq!(all.last().unwrap().0, 4 * per);
    let (last, batches) = watcher.join().unwrap();
    assert_eq!(last, 4 * per);
    // Group commit: far fewer fsyncs than publishes (usually a few dozen batches).
    assert!((batches as u64) < 4 * per, "{batches} batches");
    store.close();
    let (_s, rec) = Store::open(dir.path(), opts(256 << 10)).unwrap();
    let q = by_queue(&rec);
    assert_eq!(q.len(), 4);
    for ids in q.values() {
        assert_eq!(ids.len() as u64, per);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn backpressure_blocks_but_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts(64 << 10)).unwrap();
    // Every publish waits for the writer to take the previous one.
    store
        .shared
        .max_pending
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let store = std::sync::Arc::new(store);
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let q = format!("q{t}");
                let mut last = WriteTicket(0);
                for _ in 0..100 {
                    last = store.publish("/", &[q.as_str()], &msg(store.next_id(), &[0; 1000]));
                }
                last
            })
        })
        .collect();
    for th in threads {
        let t = th.join().unwrap();
        wait_synced(&store, t);
    }
    store.close();
    let (_s, rec) = Store::open(dir.path(), opts(64 << 10)).unwrap();
    assert_eq!(rec.len(), 300);
}

#[test]
fn publish_to_no_queue_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts(64 << 10)).unwrap();
    let t = store.publish("/", &["q"], &msg(1, b"x"));
    assert_eq!(store.publish("/", &[], &msg(2, b"y")), t);
    wait_synced(&store, t);
    store.close();
    let (_s, rec) = Store::open(dir.path(), opts(64 << 10)).unwrap();
    assert_eq!(rec.len(), 1);
}

/// Small deterministic PRNG for the model test.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_operations_match_a_model_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = XorShift(0x9e3779b97f4a7c15);
    let mut model: BTreeMap<(String, String), BTreeSet<u64>> = BTreeMap::new();
    // Live messages flagged delivered.
    let mut delivered: BTreeMap<(String, String), BTreeSet<u64>> = BTreeMap::new();
    let queues = ["a", "b", "c", "d"];
    for round in 0..6 {
        let (store, rec) = Store::open(dir.path(), opts(1500)).unwrap();
        let got: BTreeMap<(String, String), BTreeSet<u64>> = by_queue(&rec)
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect();
        model.retain(|_, v| !v.is_empty());
        assert_eq!(got, model, "round {round}");
        let got_flags: BTreeMap<(String, String), BTreeSet<u64>> = flagged(&rec)
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect();
        delivered.retain(|_, v| !v.is_empty());
        assert_eq!(got_flags, delivered, "round {round}");
        for _ in 0..400 {
            match rng.below(12) {
                0..=4 => {
                    let id = store.next_id();
                    let n = 1 + rng.below(2) as usize;
                    let qs: Vec<&str> = (0..n)
                        .map(|_| queues[rng.below(4) as usize])
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    store.publish("/", &qs, &msg(id, &vec![1; rng.below(200) as usize]));
                    for q in qs {
                        model.entry(key("/", q)).or_default().insert(id);
                    }
                }
                5..=8 => {
                    let q = queues[rng.below(4) as usize];
                    let live: Vec<u64> = model
                        .get(&key("/", q))
                        .map(|s| s.iter().copied().collect())
                        .unwrap_or_default();
                    if !live.is_empty() {
                        let take: Vec<u64> = (0..1 + rng.below(3))
                            .map(|_| live[rng.below(live.len() as u64) as usize])
                            .collect();
                        store.remove("/", q, &take);
                        for id in take {
                            model.entry(key("/", q)).or_default().remove(&id);
                            delivered.entry(key("/", q)).or_default().remove(&id);
                        }
                    }
                }
                9..=10 => {
                    // Some live ids, sometimes one that is gone (ignored).
                    let q = queues[rng.below(4) as usize];
                    let live: Vec<u64> = model
                        .get(&key("/", q))
                        .map(|s| s.iter().copied().collect())
                        .unwrap_or_default();
                    let mut ids: Vec<u64> = (0..rng.below(4))
                        .filter(|_| !live.is_empty())
                        .map(|_| live[rng.below(live.len() as u64) as usize])
                        .collect();
                    if rng.below(3) == 0 {
                        ids.push(1 + rng.below(store.next_id()));
                    }
                    store.delivered("/", q, &ids);
                    let live: BTreeSet<u64> = live.into_iter().collect();
                    delivered
                        .entry(key("/", q))
                        .or_default()
                        .extend(ids.into_iter().filter(|id| live.contains(id)));
                }
                _ => {
                    if rng.below(4) == 0 {
                        let q = queues[rng.below(4) as usize];
                        store.remove_queue("/", q);
                        model.remove(&key("/", q));
                        delivered.remove(&key("/", q));
                    }
                }
            }
        }
        store.close();
    }
    // Reclaiming kept the directory small.
    assert!(
        segments(dir.path()).len() < 60,
        "{} segments",
        segments(dir.path()).len()
    );
}

#[test]
fn segments_copied_mid_flight_recover() {
    // Copying the directory while the writer runs stands in for a crash at an
    // arbitrary point (possibly mid-write): whatever was synced before the copy
    // started must be recovered, and recovery must never fail.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts(4096)).unwrap();
    let mut t = WriteTicket(0);
    for id in 1..=100u64 {
        t = store.publish("/", &["q"], &msg(id, &[9; 80]));
    }
    wait_synced(&store, t);
    let copy = tempfile::tempdir().unwrap();
    let publisher = {
        let dir = dir.path().to_path_buf();
        let copy = copy.path().to_path_buf();
        std::thread::spawn(move || copy_dir(&dir, &copy))
    };
    for id in 101..=300u64 {
        store.publish("/", &["q"], &msg(id, &[9; 80]));
    }
    publisher.join().unwrap();
    let (_s, rec) = Store::open(copy.path(), opts(4096)).unwrap();
    let got: BTreeSet<u64> = rec.iter().map(|r| r.message.id).collect();
    for id in 1..=100 {
        assert!(got.contains(&id), "synced message {id} lost");
    }
}

#[test]
#[ignore = "measurement, not a test: cargo test -p berth-broker store::tests::publish_rate -- --ignored --nocapture"]
fn publish_rate() {
    let dir = tempfile::tempdir().unwrap();
    for fsync in [true, false] {
        let (store, _) = Store::open(
            dir.path(),
            StoreOptions {
                segment_bytes: 64 << 20,
                fsync,
            },
        )
        .unwrap();
        let body = [5u8; 100];
        let m = Message {
            id: 0,
            exchange: String::new(),
            routing_key: "q".into(),
            properties: BasicProperties::default().with_delivery_mode(2),
            body: Bytes::copy_from_slice(&body),
        };
        // One publisher waiting for each confirm (worst case) and one streaming.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut rx = store.synced();
        let n = 2000;
        let start = Instant::now();
        for _ in 0..n {
            let t = store.publish("/", &["q"], &m);
            rt.block_on(rx.wait_for(|v| *v >= t.0)).unwrap();
        }
        let serial = n as f64 / start.elapsed().as_secs_f64();
        let n = 200_000;
        let start = Instant::now();
        let mut t = WriteTicket(0);
        for _ in 0..n {
            t = store.publish("/", &["q"], &m);
        }
        wait_synced(&store, t);
        let streamed = n as f64 / start.elapsed().as_secs_f64();
        println!("fsync={fsync}: wait-each {serial:.0}/s, streaming {streamed:.0}/s");
        store.remove_queue("/", "q");
        store.close();
    }
}

// ---- metadata ----

fn queue_def(vhost: &str, name: &str) -> QueueDef {
    QueueDef {
        name: name.into(),
        vhost: vhost.into(),
        durable: true,
        auto_delete: false,
        arguments: Default::default(),
    }
}

fn exchange_def(vhost: &str, name: &str) -> ExchangeDef {
    ExchangeDef {
        name: name.into(),
        vhost: vhost.into(),
        kind: "direct".into(),
        durable: true,
        auto_delete: false,
        internal: false,
        arguments: Default::default(),
    }
}

fn binding(vhost: &str, source: &str, dest: &str, dest_type: &str, rk: &str) -> BindingDef {
    BindingDef {
        source: source.into(),
        vhost: vhost.into(),
        destination: dest.into(),
        destination_type: dest_type.into(),
        routing_key: rk.into(),
        arguments: Default::default(),
    }
}

fn user(name: &str) -> UserDef {
    UserDef {
        name: name.into(),
        password_hash: "h".into(),
        hashing_algorithm: "x".into(),
        tags: Default::default(),
    }
}

fn perm(user: &str, vhost: &str) -> PermissionDef {
    PermissionDef {
        user: user.into(),
        vhost: vhost.into(),
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
    }
}

#[test]
fn meta_replay_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (meta, defs) = MetaStore::open(dir.path()).unwrap();
        assert_eq!(defs, Definitions::default());
        meta.append(&MetaOp::PutVhost(VhostDef { name: "/".into() }))
            .unwrap();
        meta.append(&MetaOp::PutQueue(queue_def("/", "q"))).unwrap();
        meta.append(&MetaOp::PutExchange(exchange_def("/", "x")))
            .unwrap();
        meta.append(&MetaOp::PutBinding(binding("/", "x", "q", "queue", "k")))
            .unwrap();
        meta.append(&MetaOp::PutBinding(binding("/", "x", "q", "queue", "k")))
            .unwrap();
    }
    let log = dir.path().join("meta.log");
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 5);
    // A torn last line (crash mid-append) is dropped.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"{\"op\":\"put_queue\",\"name\":\"q2\",\"vh").unwrap();
    drop(f);
    let (meta, defs) = MetaStore::open(dir.path()).unwrap();
    assert_eq!(defs.vhosts.len(), 1);
    assert_eq!(defs.queues, vec![queue_def("/", "q")]);
    assert_eq!(defs.bindings.len(), 1);
    // Opening compacted the log into the snapshot.
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
    let snap: Definitions =
        serde_json::from_slice(&std::fs::read(dir.path().join("meta.json")).unwrap()).unwrap();
    assert_eq!(snap, defs);
    meta.append(&MetaOp::DeleteQueue {
        vhost: "/".into(),
        name: "q".into(),
    })
    .unwrap();
    drop(meta);
    let (_meta, defs) = MetaStore::open(dir.path()).unwrap();
    assert!(defs.queues.is_empty());
    assert!(defs.bindings.is_empty());
    assert_eq!(defs.exchanges.len(), 1);
}

#[test]
fn meta_bad_middle_line_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = serde_json::to_string(&MetaOp::PutVhost(VhostDef { name: "/".into() })).unwrap();
    std::fs::write(
        dir.path().join("meta.log"),
        format!("{good}\nnot json\n{good}\n"),
    )
    .unwrap();
    let err = MetaStore::open(dir.path())
        .err()
        .expect("bad line accepted");
    let text = err.to_string();
    assert!(
        text.contains("meta.log") && text.contains("line 2"),
        "{text}"
    );
}

#[test]
fn meta_compacts_after_many_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (mut meta, _) = MetaStore::open(dir.path()).unwrap();
    meta.inner.compact_lines = 10;
    for i in 0..25 {
        meta.append(&MetaOp::PutQueue(queue_def("/", &format!("q{i}"))))
            .unwrap();
    }
    let lines = std::fs::read_to_string(dir.path().join("meta.log"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, 5);
    drop(meta);
    let (_m, defs) = MetaStore::open(dir.path()).unwrap();
    assert_eq!(defs.queues.len(), 25);
}

#[test]
fn apply_meta_op_upserts_and_cascades() {
    let mut d = Definitions::default();
    for v in ["/", "other"] {
        apply_meta_op(&mut d, &MetaOp::PutVhost(VhostDef { name: v.into() }));
        apply_meta_op(&mut d, &MetaOp::PutQueue(queue_def(v, "q")));
        apply_meta_op(&mut d, &MetaOp::PutExchange(exchange_def(v, "x")));
        apply_meta_op(&mut d, &MetaOp::PutExchange(exchange_def(v, "y")));
        apply_meta_op(
            &mut d,
            &MetaOp::PutBinding(binding(v, "x", "q", "queue", "k")),
        );
        apply_meta_op(
            &mut d,
            &MetaOp::PutBinding(binding(v, "x", "y", "exchange", "k")),
        );
        apply_meta_op(
            &mut d,
            &MetaOp::PutBinding(binding(v, "y", "q", "queue", "k")),
        );
        apply_meta_op(
            &mut d,
            &MetaOp::PutPolicy(PolicyDef {
                vhost: v.into(),
                name: "p".into(),
                pattern: ".*".into(),
                apply_to: "all".into(),
                definition: Default::default(),
                priority: 0,
            }),
        );
    }
    apply_meta_op(&mut d, &MetaOp::PutVhost(VhostDef { name: "/".into() }));
    assert_eq!(d.vhosts.len(), 2);
    // Upsert replaces in place.
    let mut q = queue_def("/", "q");
    q.auto_delete = true;
    apply_meta_op(&mut d, &MetaOp::PutQueue(q.clone()));
    assert_eq!(d.queues.len(), 2);
    assert_eq!(d.queues[0], q);
    // Bindings are identified by all fields, arguments included.
    let mut with_args = binding("/", "x", "q", "queue", "k");
    with_args.arguments.insert("a".into(), serde_json::json!(1));
    apply_meta_op(&mut d, &MetaOp::PutBinding(with_args.clone()));
    assert_eq!(d.bindings.len(), 7);
    apply_meta_op(&mut d, &MetaOp::DeleteBinding(with_args));
    assert_eq!(d.bindings.len(), 6);

    // Deleting an exchange removes bindings where it is source or destination.
    apply_meta_op(
        &mut d,
        &MetaOp::DeleteExchange {
            vhost: "/".into(),
            name: "y".into(),
        },
    );
    let slash: Vec<&BindingDef> = d.bindings.iter().filter(|b| b.vhost == "/").collect();
    assert_eq!(slash, vec![&binding("/", "x", "q", "queue", "k")]);
    // Deleting a queue removes bindings to it (not an exchange of the same name).
    apply_meta_op(&mut d, &MetaOp::PutExchange(exchange_def("/", "q")));
    apply_meta_op(
        &mut d,
        &MetaOp::PutBinding(binding("/", "q", "x", "exchange", "")),
    );
    apply_meta_op(
        &mut d,
        &MetaOp::DeleteQueue {
            vhost: "/".into(),
            name: "q".into(),
        },
    );
    let slash: Vec<&BindingDef> = d.bindings.iter().filter(|b| b.vhost == "/").collect();
    assert_eq!(slash, vec![&binding("/", "q", "x", "exchange", "")]);
    assert_eq!(d.bindings.iter().filter(|b| b.vhost == "other").count(), 3);

    // Users and permissions.
    apply_meta_op(&mut d, &MetaOp::PutUser(user("alice")));
    apply_meta_op(&mut d, &MetaOp::PutUser(user("bob")));
    apply_meta_op(&mut d, &MetaOp::PutPermission(perm("alice", "/")));
    apply_meta_op(&mut d, &MetaOp::PutPermission(perm("alice", "other")));
    apply_meta_op(&mut d, &MetaOp::PutPermission(perm("bob", "other")));
    let mut p = perm("alice", "/");
    p.read = "^r".into();
    apply_meta_op(&mut d, &MetaOp::PutPermission(p.clone()));
    assert_eq!(d.permissions.len(), 3);
    assert_eq!(d.permissions[0], p);
    apply_meta_op(
        &mut d,
        &MetaOp::DeleteUser {
            name: "alice".into(),
        },
    );
    assert_eq!(d.users.len(), 1);
    assert_eq!(d.permissions, vec![perm("bob", "other")]);
    apply_meta_op(
        &mut d,
        &MetaOp::DeletePermission {
            user: "bob".into(),
            vhost: "other".into(),
        },
    );
    assert!(d.permissions.is_empty());
    apply_meta_op(&mut d, &MetaOp::PutPermission(perm("bob", "other")));

    // Deleting a vhost removes everything in it.
    apply_meta_op(
        &mut d,
        &MetaOp::DeleteVhost {
            name: "other".into(),
        },
    );
    assert_eq!(d.vhosts, vec![VhostDef { name: "/".into() }]);
    assert!(d
        .queues
        .iter()
        .chain(d.queues.iter())
        .all(|q| q.vhost == "/"));
    assert!(d.exchanges.iter().all(|e| e.vhost == "/"));
    assert!(d.bindings.iter().all(|b| b.vhost == "/"));
    assert!(d.policies.iter().all(|p| p.vhost == "/"));
    assert!(d.permissions.is_empty());
    apply_meta_op(
        &mut d,
        &MetaOp::DeletePolicy {
            vhost: "/".into(),
            name: "p".into(),
        },
    );
    assert!(d.policies.is_empty());
}

/// vhost/queue → ids recovered with redelivered=true.
fn flagged(recovered: &[RecoveredMessage]) -> BTreeMap<(String, String), Vec<u64>> {
    let mut out: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for r in recovered.iter().filter(|r| r.redelivered) {
        out.entry((r.vhost.clone(), r.queue.clone()))
            .or_default()
            .push(r.message.id);
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    out
}

#[test]
fn delivered_flag_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path(), opts(1 << 20)).unwrap();
        store.publish("/", &["q1", "q2"], &msg(1, b"one"));
        store.publish("/", &["q1"], &msg(2, b"two"));
        store.publish("/", &["q1"], &msg(3, b"three"));
        // Flagged in q1 only; the flag is per queue.
        store.delivered("/", "q1", &[1, 3]);
        // Flagging again, unknown ids and unknown queues write nothing.
        store.delivered("/", "q1", &[1]);
        store.delivered("/", "q1", &[99]);
        store.delivered("/", "nope", &[1]);
        // A delivered and then removed message stays removed.
        store.remove("/", "q1", &[3]);
        // A delivery recorded after the removal does not bring it back.
        store.delivered("/", "q1", &[3]);
        let t = store.publish("/", &["q3"], &msg(4, b"four"));
        wait_synced(&store, t);
        store.close();
    }
    let (store, rec) = Store::open(dir.path(), opts(1 << 20)).unwrap();
    let q = by_queue(&rec);
    assert_eq!(q[&key("/", "q1")], vec![1, 2]);
    assert_eq!(q[&key("/", "q2")], vec![1]);
    assert_eq!(q[&key("/", "q3")], vec![4]);
    assert_eq!(q.len(), 3);
    let mut expect = BTreeMap::new();
    expect.insert(key("/", "q1"), vec![1]);
    assert_eq!(flagged(&rec), expect);
    // The flag survives a second reopen, and new deliveries add to it.
    store.delivered("/", "q2", &[1]);
    store.close();
    drop(store);
    let (_store, rec) = Store::open(dir.path(), opts(1 << 20)).unwrap();
    expect.insert(key("/", "q2"), vec![1]);
    assert_eq!(flagged(&rec), expect);
}

#[test]
fn delivered_flag_survives_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts(4096)).unwrap();
    let mut t = WriteTicket(0);
    for id in 1..=40 {
        t = store.publish("/", &["q", "r"], &msg(id, &[id as u8; 150]));
    }
    // 1 and 2 stay in q (first segment); 1 was delivered from q, 2 from r only.
    store.delivered("/", "q", &[1]);
    store.delivered("/", "r", &[2]);
    wait_synced(&store, t);
    let first = segments(dir.path())[0].clone();
    store.remove("/", "r", &(1..=40).collect::<Vec<_>>());
    store.remove("/", "q", &(3..=40).collect::<Vec<_>>());
    let t = store.publish("/", &["q"], &msg(41, b"later"));
    wait_synced(&store, t);
    wait_until("first segment compacted away", || !first.exists());
    // Churn until every segment older than the copies is gone, so the flag
    // can only come from the record compaction wrote.
    let mut next = 42;
    let before: BTreeSet<PathBuf> = segments(dir.path()).into_iter().collect();
    wait_until("old segments reclaimed", || {
        let t = store.publish("/", &["churn"], &msg(next, &[0; 500]));
        store.remove("/", "churn", &[next]);
        next += 1;
        wait_synced(&store, t);
        let now: BTreeSet<PathBuf> = segments(dir.path()).into_iter().collect();
        before.iter().filter(|p| now.contains(*p)).count() <= 1
    });
    store.close();
    drop(store);
    let (_store, rec) = Store::open(dir.path(), opts(4096)).unwrap();
    let q = by_queue(&rec);
    assert_eq!(q.get(&key("/", "q")), Some(&vec![1, 2, 41]));
    assert_eq!(q.len(), 1);
    let mut expect = BTreeMap::new();
    expect.insert(key("/", "q"), vec![1]);
    assert_eq!(flagged(&rec), expect);
}

#[test]
fn delivered_records_keep_their_segment_while_the_message_lives() {
    // Message 1 pins segment 1 and is flagged by a record in a later segment
    // whose own messages are all gone: that later segment must survive, or the
    // flag would be lost; once message 1 is acked everything can go.
    let dir = tempfile::tempdir().unwrap();
    let segs = 1024;
    let mut next = 2;
    {
        let (store, _) = Store::open(dir.path(), opts(segs)).unwrap();
        store.publish("/", &["keep"], &msg(1, &[0; 100]));
        for _ in 0..20 {
            store.publish("/", &["churn"], &msg(next, &[0; 100]));
            store.remove("/", "churn", &[next]);
            next += 1;
        }
        store.delivered("/", "keep", &[1]);
        for _ in 0..30 {
            store.publish("/", &["churn"], &msg(next, &[0; 100]));
            store.remove("/", "churn", &[next]);
            next += 1;
        }
        let t = store.publish("/", &["last"], &msg(next, b"x"));
        next += 1;
        wait_synced(&store, t);
        store.close();
    }
    let (store, rec) = Store::open(dir.path(), opts(segs)).unwrap();
    let mut expect = BTreeMap::new();
    expect.insert(key("/", "keep"), vec![1]);
    assert_eq!(flagged(&rec), expect);
    assert_eq!(by_queue(&rec).len(), 2);
    // Acked: the flag's segment no longer matters and reclaiming catches up.
    store.remove("/", "keep", &[1]);
    store.remove("/", "last", &[next - 1]);
    let t = store.publish("/", &["after"], &msg(next, b"y"));
    wait_synced(&store, t);
    wait_until("segments reclaimed", || segments(dir.path()).len() <= 2);
    store.close();
    drop(store);
    let (_store, rec) = Store::open(dir.path(), opts(segs)).unwrap();
    assert_eq!(
        by_queue(&rec).into_keys().collect::<Vec<_>>(),
        vec![key("/", "after")]
    );
    assert!(flagged(&rec).is_empty());
}

// ---------------------------------------------------------------- I/O errors

use super::messages::Fault;

fn segment_bytes(dir: &Path) -> Vec<u64> {
    segments(dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect()
}

fn synced_now(store: &Store) -> u64 {
    *store.synced().borrow()
}

/// Closes the store and checks that it did not wait for anything.
fn close_promptly(store: Store) {
    let started = Instant::now();
    store.close();
    drop(store);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "close took {:?}",
        started.elapsed()
    );
}

#[test]
fn write_failure_fails_the_store_and_keeps_what_was_synced() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts(1 << 20)).unwrap();
    let t1 = store.publish("/", &["q"], &msg(1, &[1; 500]));
    let t2 = store.publish("/", &["q"], &msg(2, &[2; 500]));
    wait_synced(&store, t2);
    assert!(!store.failed());
    let before = segment_bytes(dir.path());
    let mut rx = store.synced();
    rx.borrow_and_update();
    // ENOSPC after part of the record: a torn record would be left without the cut.
    store.shared.inject(Fault::Write(100));
    store.remove("/", "q", &[1]);
    let t3 = store.publish("/", &["q"], &msg(3, &[3; 500]));
    wait_until("the store to fail", || store.failed());
    // Waiting channels are woken (just after the flag is set).
    wait_until("the watch to be poked", || rx.has_changed().unwrap());
    assert_eq!(synced_now(&store), t2.0, "the failed batch is not synced");
    assert!(t3.0 > synced_now(&store));
    assert_eq!(segment_bytes(dir.path()), before, "failed write cut off");
    // Later operations neither block nor queue anything, and never sync.
    let t4 = store.publish("/", &["q"], &msg(4, &[4; 500]));
    assert!(t4 > t3);
    assert_eq!(store.publish("/", &[], &msg(5, b"")).0, t2.0);
    store.remove("/", "q", &[2]);
    store.delivered("/", "q", &[2]);
    store.remove_queue("/", "q");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(synced_now(&store), t2.0);
    assert_eq!(segment_bytes(dir.path()), before);
    assert!(t1.0 <= synced_now(&store));
    close_promptly(store);
    let (_s, rec) = Store::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(by_queue(&rec)[&key("/", "q")], vec![1, 2]);
}

#[test]
fn fsync_failure_is_final_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts(1 << 20)).unwrap();
    let t1 = store.publish("/", &["q"], &msg(1, b"one"));
    wait_synced(&store, t1);
    let before = segment_bytes(dir.path());
    store.shared.inject(Fault::Sync);
    let t2 = store.publish("/", &["q"], &msg(2, b"two"));
    wait_until("the store to fail", || store.failed());
    assert_eq!(synced_now(&store), t1.0);
    assert!(t2.0 > t1.0);
    // The written but unsynced record is cut off, best effort.
    assert_eq!(segment_bytes(dir.path()), before);
    // The next fsync would succeed (no fault left); it is never tried.
    let t3 = store.publish("/", &["q"], &msg(3, b"three"));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(synced_now(&store), t1.0);
    assert!(t3.0 > t1.0);
    close_promptly(store);
    let (_s, rec) = Store::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(by_queue(&rec)[&key("/", "q")], vec![1]);
}

#[test]
fn segment_create_failure_fails_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts(1 << 20)).unwrap();
    store.shared.inject(Fault::Create);
    store.publish("/", &["q"], &msg(1, b"one"));
    wait_until("the store to fail", || store.failed());
    assert_eq!(synced_now(&store), 0);
    close_promptly(store);
    let (_s, rec) = Store::open(dir.path(), opts(1 << 20)).unwrap();
    assert!(rec.is_empty());
}

#[test]
fn failure_at_rotation_keeps_earlier_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts(4096)).unwrap();
    let mut last = WriteTicket(0);
    for id in 1..=20 {
        last = store.publish("/", &["q"], &msg(id, &[7; 600]));
    }
    wait_synced(&store, last);
    let n = segments(dir.path()).len();
    assert!(n > 1);
    // The next segment cannot be created: the batch that needs it is nacked.
    store.shared.inject(Fault::Create);
    let mut id = 21;
    while !store.failed() {
        store.publish("/", &["q"], &msg(id, &[7; 600]));
        id += 1;
        assert!(id < 1000, "no rotation happened");
        std::thread::sleep(Duration::from_millis(1));
    }
    let synced = synced_now(&store);
    close_promptly(store);
    let (_s, rec) = Store::open(dir.path(), opts(4096)).unwrap();
    let got = by_queue(&rec).remove(&key("/", "q")).unwrap();
    // Tickets were 1:1 with ids here: everything synced is back, in order.
    assert!(got.len() as u64 >= synced, "{} < {synced}", got.len());
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
}

#[test]
fn removed_data_directory_fails_the_store() {
    // A real failure: writes to the unlinked segment succeed and even sync.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts(1 << 20)).unwrap();
    let t1 = store.publish("/", &["q"], &msg(1, b"one"));
    wait_synced(&store, t1);
    std::fs::remove_dir_all(dir.path().join("messages")).unwrap();
    let t2 = store.publish("/", &["q"], &msg(2, b"two"));
    wait_until("the store to fail", || store.failed());
    assert_eq!(synced_now(&store), t1.0);
    assert!(t2.0 > t1.0);
    close_promptly(store);
}

#[test]
fn failure_wakes_publishers_blocked_on_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), opts(64 << 10)).unwrap();
    store
        .shared
        .max_pending
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let store = std::sync::Arc::new(store);
    let first = store.publish("/", &["q"], &msg(store.next_id(), &[0; 100]));
    wait_synced(&store, first);
    store.shared.inject(Fault::Sync);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let q = format!("q{t}");
                (0..200)
                    .map(|_| store.publish("/", &[q.as_str()], &msg(store.next_id(), &[1; 1000])))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let started = Instant::now();
    let mut tickets = Vec::new();
    for th in threads {
        tickets.extend(th.join().unwrap());
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(store.failed());
    let synced = synced_now(&store);
    assert_eq!(synced, first.0, "nothing after the fault is synced");
    assert!(tickets.iter().all(|t| t.0 > synced));
    let store = std::sync::Arc::into_inner(store).unwrap();
    close_promptly(store);
    let (_s, rec) = Store::open(dir.path(), opts(64 << 10)).unwrap();
    assert_eq!(rec.len(), 1);
}

#[test]
fn everything_synced_before_a_failure_recovers() {
    // Concurrent publishers and removers; a partial write fails mid-stream.
    // Every ticket at or below the final watermark is on disk after a restart.
    for cut in [0usize, 7, 300] {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), opts(16 << 10)).unwrap();
        let store = std::sync::Arc::new(store);
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let q = format!("q{t}");
                    let mut out = Vec::new();
                    for i in 0..300u64 {
                        let id = store.next_id();
                        let tk = store.publish("/", &[q.as_str()], &msg(id, &[t as u8; 200]));
                        out.push((tk, id));
                        if i % 10 == 9 {
                            // Acks of stored messages keep working until the failure.
                            let old = out[out.len() - 10].1;
                            store.remove("/", &q, &[old]);
                        }
                        if t == 0 && i == 150 {
                            store.shared.inject(Fault::Write(cut));
                        }
                    }
                    (q, out)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        wait_until("the store to fail", || store.failed());
        let synced = synced_now(&store);
        let store = std::sync::Arc::into_inner(store).unwrap();
        close_promptly(store);
        let (_s, rec) = Store::open(dir.path(), opts(16 << 10)).unwrap();
        let got = by_queue(&rec);
        for (q, out) in results {
            let have: BTreeSet<u64> = got
                .get(&key("/", &q))
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default();
            for (i, (tk, id)) in out.iter().enumerate() {
                // Removed ones may come back (removes are not confirmed).
                let removed = i % 10 == 0 && i + 9 < out.len();
                if tk.0 <= synced && !removed {
                    assert!(have.contains(id), "cut {cut}: synced {id} ({tk:?}) lost");
                }
            }
        }
    }
}
