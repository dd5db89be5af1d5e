//! Throughput and latency: per queue one publisher connection and one
//! consumer connection (lapin), all in this process. The body starts with
//! the send time (µs since the bench started), read back by the consumer.

use anyhow::Context;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use lapin::{
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
    BasicProperties, Channel, Connection, ConnectionProperties,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use crate::broker_peer::cpu_secs;

/// Consumer prefetch (basic.qos).
pub const PREFETCH: u16 = 1000;
/// Consumers ack with multiple=true every this many deliveries.
pub const ACK_EVERY: u64 = 100;
/// Persistent: publisher confirms outstanding per publisher.
pub const CONFIRM_WINDOW: usize = 1000;
/// Transient: messages published but not yet received by the consumer, per
/// queue, so that publishers without confirms cannot outrun the broker.
pub const TRANSIENT_WINDOW: u64 = 500;
/// Transient: publish calls handed to lapin but not yet written.
const SEND_WINDOW: usize = 256;
/// How often a consumer waiting for a delivery looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);
/// How often a publisher with a full window looks again without a wake-up.
const PUBLISH_RECHECK: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub persistent: bool,
    pub queues: usize,
    pub size: usize,
}

impl Scenario {
    pub fn all() -> Vec<Scenario> {
        let mut v = Vec::new();
        for persistent in [false, true] {
            for queues in [1, 10] {
                for size in [100, 4096] {
                    v.push(Scenario {
                        persistent,
                        queues,
                        size,
                    });
                }
            }
        }
        v
    }

    pub fn title(&self) -> String {
        format!(
            "{}, {} queue{}, {}",
            if self.persistent {
                "persistent (delivery-mode 2, durable queue, confirms)"
            } else {
                "transient (delivery-mode 1, no confirms)"
            },
            self.queues,
            if self.queues == 1 { "" } else { "s" },
            if self.size >= 1024 {
                format!("{} KB", self.size / 1024)
            } else {
                format!("{} B", self.size)
            }
        )
    }

    pub fn key(&self) -> String {
        format!(
            "{}-{}q-{}b",
            if self.persistent {
                "persistent"
            } else {
                "transient"
            },
            self.queues,
            self.size
        )
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    pub publish_rate: f64,
    pub consume_rate: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub samples: usize,
    /// Persistent: time from the publish being written to its confirm.
    pub confirm_p50_us: u64,
    pub confirm_p99_us: u64,
    /// CPU used while measuring, in cores (1.0 = one core busy).
    pub broker_cpu: f64,
    pub client_cpu: f64,
}

fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    measuring: AtomicBool,
    published: AtomicU64,
    consumed: AtomicU64,
}

/// Stops publishers and consumers however `run` ends (error, timeout).
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct PerQueue {
    consumed: AtomicU64,
    notify: Notify,
}

/// Publishers and consumers each run on a thread of their own. On one
/// current-thread runtime, that one thread was the client's limit (100% busy
/// with the brokers' CPU to spare); a work-stealing runtime moved tasks
/// between threads and spent more in wake-ups than it gained.
struct Lanes {
    publish: Option<tokio::runtime::Runtime>,
    consume: Option<tokio::runtime::Runtime>,
}

impl Lanes {
    fn new() -> std::io::Result<Lanes> {
        let lane = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(name)
                .enable_all()
                .build()
        };
        Ok(Lanes {
            publish: Some(lane("bench-publish")?),
            consume: Some(lane("bench-consume")?),
        })
    }

    fn publish(&self) -> &tokio::runtime::Handle {
        self.publish
            .as_ref()
            .expect("lane lives until drop")
            .handle()
    }

    fn consume(&self) -> &tokio::runtime::Handle {
        self.consume
            .as_ref()
            .expect("lane lives until drop")
            .handle()
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        // Dropped inside the main runtime, where a blocking shutdown panics.
        for rt in [self.publish.take(), self.consume.take()]
            .into_iter()
            .flatten()
        {
            rt.shutdown_background();
        }
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<Connection> {
    Connection::connect(
        &format!("amqp://guest:guest@{addr}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .with_context(|| format!("connecting to {addr}"))
}

pub async fn run(
    addr: SocketAddr,
    broker_pid: u32,
    sc: Scenario,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Outcome> {
    now_us();
    let control = connect(addr).await?;
    let cch = control.create_channel().await?;
    let names: Vec<String> = (0..sc.queues)
        .map(|i| format!("bench-{}-{}-{i}", sc.key(), std::process::id()))
        .collect();
    for n in &names {
        cch.queue_declare(
            n.as_str().into(),
            QueueDeclareOptions {
                durable: sc.persistent,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring queue {n}"))?;
    }

    let lanes = Lanes::new()?;
    let shared = Arc::new(Shared::default());
    let _stop = StopOnDrop(shared.clone());
    let mut consumers = Vec::new();
    let mut publishers = Vec::new();
    let mut conns = Vec::new();
    let mut perq = Vec::new();
    for n in &names {
        let q = Arc::new(PerQueue::default());
        perq.push(q.clone());
        // Connected from inside the lane, so that lapin's socket I/O for
        // this connection runs on the lane's thread too.
        let queue = n.clone();
        let (cconn, consumer) = lanes
            .consume()
            .spawn(async move {
                let cconn = connect(addr).await?;
                let ch = cconn.create_channel().await?;
                ch.basic_qos(PREFETCH, BasicQosOptions { global: false })
                    .await?;
                let consumer = ch
                    .basic_consume(
                        queue.as_str().into(),
                        "bench".into(),
                        BasicConsumeOptions {
                            no_ack: false,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .with_context(|| format!("consuming from {queue}"))?;
                anyhow::Ok((cconn, consumer))
            })
            .await??;
        consumers.push(
            lanes
                .consume()
                .spawn(consume(consumer, shared.clone(), q.clone())),
        );
        conns.push(cconn);
    }
    for (i, n) in names.iter().enumerate() {
        let (pconn, ch) = lanes
            .publish()
            .spawn(async move {
                let pconn = connect(addr).await?;
                let ch = pconn.create_channel().await?;
                if sc.persistent {
                    ch.confirm_select(ConfirmSelectOptions::default()).await?;
                }
                anyhow::Ok((pconn, ch))
            })
            .await??;
        publishers.push(lanes.publish().spawn(publish(
            ch,
            n.clone(),
            sc,
            shared.clone(),
            perq[i].clone(),
        )));
        conns.push(pconn);
    }

    tokio::time::sleep(warmup).await;
    let (p0, c0) = (
        shared.published.load(Ordering::Relaxed),
        shared.consumed.load(Ordering::Relaxed),
    );
    let me = std::process::id();
    let (b0, m0) = (cpu_secs(broker_pid), cpu_secs(me));
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(measure).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let (b1, m1) = (cpu_secs(broker_pid), cpu_secs(me));
    let (p1, c1) = (
        shared.published.load(Ordering::Relaxed),
        shared.consumed.load(Ordering::Relaxed),
    );
    shared.stop.store(true, Ordering::Relaxed);
    for q in &perq {
        q.notify.notify_one();
    }

    let mut errors = Vec::new();
    let mut conf: Vec<u32> = Vec::new();
    for p in publishers {
        match tokio::time::timeout(Duration::from_secs(30), p).await {
            Ok(Ok(Ok(v))) => conf.extend(v),
            Ok(Ok(Err(e))) => errors.push(format!("publisher: {e:#}")),
            Ok(Err(e)) => errors.push(format!("publisher task: {e}")),
            Err(_) => errors.push("publisher did not stop within 30 s".into()),
        }
    }
    let mut lat: Vec<u32> = Vec::new();
    for c in consumers {
        match tokio::time::timeout(Duration::from_secs(30), c).await {
            Ok(Ok(Ok(v))) => lat.extend(v),
            Ok(Ok(Err(e))) => errors.push(format!("consumer: {e:#}")),
            Ok(Err(e)) => errors.push(format!("consumer task: {e}")),
            Err(_) => errors.push("consumer did not stop within 30 s".into()),
        }
    }
    for c in conns {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.close(200, "bye".into())).await;
    }
    for n in &names {
        let _ = cch
            .queue_delete(n.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = control.close(200, "bye".into()).await;
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }

    lat.sort_unstable();
    conf.sort_unstable();
    let pct_of = |v: &[u32], q: f64| -> u64 {
        if v.is_empty() {
            return 0;
        }
        v[((v.len() - 1) as f64 * q).round() as usize] as u64
    };
    let pct = |q: f64| pct_of(&lat, q);
    Ok(Outcome {
        publish_rate: (p1 - p0) as f64 / secs,
        consume_rate: (c1 - c0) as f64 / secs,
        p50_us: pct(0.50),
        p95_us: pct(0.95),
        p99_us: pct(0.99),
        samples: lat.len(),
        confirm_p50_us: pct_of(&conf, 0.5),
        confirm_p99_us: pct_of(&conf, 0.99),
        broker_cpu: (b1 - b0) / secs,
        client_cpu: (m1 - m0) / secs,
    })
}

/// Publishes until told to stop, keeping a bounded number of messages in
/// flight: unconfirmed ones (persistent) or unconsumed ones (transient).
/// Publish futures are kept outstanding instead of awaited one by one so
/// that the client is not the bottleneck.
async fn publish(
    ch: Channel,
    queue: String,
    sc: Scenario,
    shared: Arc<Shared>,
    q: Arc<PerQueue>,
) -> anyhow::Result<Vec<u32>> {
    let props = if sc.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default().with_delivery_mode(1)
    };
    let cap = if sc.persistent {
        CONFIRM_WINDOW
    } else {
        SEND_WINDOW
    };
    let mut inflight = FuturesUnordered::new();
    let mut confirms = Vec::new();
    let mut sent: u64 = 0;
    let tick = tokio::time::sleep(PUBLISH_RECHECK);
    tokio::pin!(tick);
    loop {
        let stop = shared.stop.load(Ordering::Relaxed);
        let window_full = !sc.persistent
            && sent.saturating_sub(q.consumed.load(Ordering::Relaxed)) >= TRANSIENT_WINDOW;
        if !stop && !window_full && inflight.len() < cap {
            let mut body = vec![0u8; sc.size.max(8)];
            body[..8].copy_from_slice(&now_us().to_be_bytes());
            // Borrowed, not cloned: a lapin Channel clone costs several
            // atomic increments, which showed as ~8% of the client's CPU.
            let (ch, rk) = (&ch, &queue);
            let props = props.clone();
            let persistent = sc.persistent;
            inflight.push(async move {
                let confirm = ch
                    .basic_publish(
                        "".into(),
                        rk.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        props,
                    )
                    .await?;
                let t = Instant::now();
                if persistent {
                    let c = confirm.await?;
                    if !c.is_ack() {
                        anyhow::bail!("message nacked");
                    }
                }
                Ok::<u64, anyhow::Error>(t.elapsed().as_micros() as u64)
            });
            sent += 1;
            // Fill the window before waiting on any of it.
            continue;
        }
        if stop && inflight.is_empty() {
            return Ok(confirms);
        }
        // Here the window is full (or we are stopping): wait for one
        // completion, then take every other one that is ready.
        let mut done = Vec::new();
        tokio::select! {
            r = inflight.next(), if !inflight.is_empty() => done.extend(r),
            _ = q.notify.notified(), if window_full && !stop => {}
            _ = &mut tick, if stop || window_full => {
                tick.as_mut().reset(tokio::time::Instant::now() + PUBLISH_RECHECK);
            }
            else => {}
        }
        while let Some(Some(r)) = inflight.next().now_or_never() {
            done.push(r);
        }
        for r in done {
            let confirm_us = r?;
            shared.published.fetch_add(1, Ordering::Relaxed);
            if sc.persistent && shared.measuring.load(Ordering::Relaxed) {
                confirms.push(confirm_us.min(u32::MAX as u64) as u32);
            }
        }
    }
}

/// Consumes until told to stop; returns latency samples (µs) taken while
/// measuring.
async fn consume(
    mut consumer: lapin::Consumer,
    shared: Arc<Shared>,
    q: Arc<PerQueue>,
) -> anyhow::Result<Vec<u32>> {
    let mut lat = Vec::new();
    let mut n: u64 = 0;
    // One timer for the whole loop, re-armed when it fires: a new sleep per
    // delivery showed in the client's profile.
    let tick = tokio::time::sleep(STOP_CHECK);
    tokio::pin!(tick);
    loop {
        let next = tokio::select! {
            d = consumer.next() => d,
            _ = &mut tick => {
                if shared.stop.load(Ordering::Relaxed) {
                    return Ok(lat);
                }
                tick.as_mut().reset(tokio::time::Instant::now() + STOP_CHECK);
                continue;
            }
        };
        let Some(d) = next else { return Ok(lat) };
        let d = d.context("delivery")?;
        let now = now_us();
        if d.data.len() >= 8 && shared.measuring.load(Ordering::Relaxed) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&d.data[..8]);
            let sent = u64::from_be_bytes(ts);
            lat.push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
        }
        n += 1;
        shared.consumed.fetch_add(1, Ordering::Relaxed);
        q.consumed.fetch_add(1, Ordering::Relaxed);
        q.notify.notify_one();
        if n.is_multiple_of(ACK_EVERY) {
            d.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .context("ack")?;
        }
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(lat);
        }
    }
}

/// Field-wise median of several rounds' outcomes (the machine's load
/// drifts: rounds alternate between the brokers).
pub fn median(v: &[Outcome]) -> Option<Outcome> {
    // The middle value, or the mean of the two middle ones.
    fn med(mut x: Vec<f64>) -> f64 {
        x.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let n = x.len();
        if n % 2 == 1 {
            x[n / 2]
        } else {
            (x[n / 2 - 1] + x[n / 2]) / 2.0
        }
    }
    if v.is_empty() {
        return None;
    }
    let f = |g: &dyn Fn(&Outcome) -> f64| med(v.iter().map(g).collect());
    Some(Outcome {
        publish_rate: f(&|o| o.publish_rate),
        consume_rate: f(&|o| o.consume_rate),
        p50_us: f(&|o| o.p50_us as f64) as u64,
        p95_us: f(&|o| o.p95_us as f64) as u64,
        p99_us: f(&|o| o.p99_us as f64) as u64,
        samples: v.iter().map(|o| o.samples).sum(),
        confirm_p50_us: f(&|o| o.confirm_p50_us as f64) as u64,
        confirm_p99_us: f(&|o| o.confirm_p99_us as f64) as u64,
        broker_cpu: f(&|o| o.broker_cpu),
        client_cpu: f(&|o| o.client_cpu),
    })
}
