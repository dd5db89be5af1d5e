//! `berth-bench broker`: berth's AMQP broker against a private RabbitMQ,
//! one after the other, same client (lapin) and settings.
//!
//! Each broker is started twice: once fresh for memory (RSS before and
//! after 10,000 empty queues, then 10,000 idle connections, nothing freed in
//! between so no freed memory is reused), once fresh for the throughput
//! scenarios. Tables (or JSON) go to stdout, progress to stderr.

use anyhow::bail;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

use crate::broker_load::{self, Outcome, Scenario};
use crate::broker_mem::{self, Delta};
use crate::broker_peer::{raise_nofile, Broker, Kind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    Rabbitmq,
    None,
}

pub struct Options {
    pub peer: Peer,
    pub skip_berth: bool,
    pub seconds: u64,
    pub warmup: u64,
    pub connections: usize,
    pub queues: usize,
    pub scenario: Option<String>,
    pub no_memory: bool,
    pub no_throughput: bool,
    pub json: bool,
    pub rounds: usize,
}

/// A memory measurement: not run, done, or failed.
type MemResult = Option<Result<Delta, String>>;

#[derive(Default)]
struct Report {
    scenarios: Vec<(Scenario, Result<Outcome, String>)>,
    connections: MemResult,
    queues: MemResult,
}

pub fn run(berth: &Path, o: Options) -> anyhow::Result<()> {
    let mut kinds = Vec::new();
    if !o.skip_berth {
        if !berth.exists() {
            bail!(
                "berth binary {} not found: build it with `cargo build --release`, or pass --skip-berth",
                berth.display()
            );
        }
        kinds.push(Kind::Berth);
    }
    if o.peer == Peer::Rabbitmq {
        kinds.push(Kind::RabbitMq);
    }
    if kinds.is_empty() {
        bail!("nothing to measure: --skip-berth with --peer none");
    }
    let limit = raise_nofile();
    if !o.no_memory && (limit as usize) < o.connections + 1000 {
        eprintln!(
            "warning: open-files limit {limit} is too low for {} idle connections",
            o.connections
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Rounds alternate between the brokers so that the shared machine's
    // drifting load hits both alike; memory is measured in the first only.
    let mut rounds: Vec<(Kind, Vec<Report>)> = kinds.iter().map(|&k| (k, Vec::new())).collect();
    for round in 0..o.rounds.max(1) {
        if o.rounds > 1 {
            eprintln!("round {} of {}", round + 1, o.rounds);
        }
        for (k, done) in rounds.iter_mut() {
            done.push(rt.block_on(measure(berth, *k, &o, round == 0))?);
        }
    }
    drop(rt);
    let reports: Vec<(Kind, Report)> = rounds.into_iter().map(|(k, rs)| (k, combine(rs))).collect();
    if o.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&o, &reports))?);
    } else {
        print_tables(&o, &reports);
    }
    Ok(())
}

async fn start(berth: &Path, k: Kind) -> anyhow::Result<Broker> {
    eprintln!("starting {}", k.name());
    match k {
        Kind::Berth => Broker::start_berth(berth).await,
        Kind::RabbitMq => Broker::start_rabbitmq().await,
    }
}

/// One report from several rounds: per scenario the median of the rounds
/// that succeeded (or the first error if none did); memory from round one.
fn combine(mut rs: Vec<Report>) -> Report {
    if rs.len() <= 1 {
        return rs.pop().unwrap_or_default();
    }
    let mut out = Report {
        connections: rs[0].connections.take(),
        queues: rs[0].queues.take(),
        scenarios: Vec::new(),
    };
    for (i, (sc, first)) in rs[0].scenarios.iter().enumerate() {
        let ok: Vec<Outcome> = rs
            .iter()
            .filter_map(|r| {
                r.scenarios
                    .get(i)
                    .and_then(|(_, res)| res.as_ref().ok().copied())
            })
            .collect();
        let res = match broker_load::median(&ok) {
            Some(m) => Ok(m),
            None => first.clone(),
        };
        out.scenarios.push((*sc, res));
    }
    out
}

async fn measure(berth: &Path, k: Kind, o: &Options, memory: bool) -> anyhow::Result<Report> {
    let mut r = Report::default();
    if memory && !o.no_memory {
        let b = start(berth, k).await?;
        eprintln!("{}: {} empty queues", k.name(), o.queues);
        let (q, keep_q) = match broker_mem::empty_queues(&b, o.queues).await {
            Ok((d, c)) => (Ok(d), Some(c)),
            Err(e) => (Err(format!("{e:#}")), None),
        };
        eprintln!("{}: {} idle connections", k.name(), o.connections);
        let (c, keep_c) = match broker_mem::idle_connections(&b, o.connections).await {
            Ok((d, s)) => (Ok(d), s),
            Err(e) => (Err(format!("{e:#}")), Vec::new()),
        };
        for (what, res) in [("queue", &q), ("connection", &c)] {
            match res {
                Ok(d) => eprintln!(
                    "  {:.0} bytes per {what} (RSS {:.1} -> {:.1} MiB)",
                    d.per_item(),
                    mib(d.before),
                    mib(d.after)
                ),
                Err(e) => eprintln!("  {what}s failed: {e}"),
            }
        }
        r.queues = Some(q);
        r.connections = Some(c);
        drop(keep_c);
        if let Some(conn) = keep_q {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
        }
        drop(b);
    }
    if !o.no_throughput {
        let mut b = start(berth, k).await?;
        for sc in scenarios(o) {
            if !b.alive() {
                r.scenarios
                    .push((sc, Err(format!("{} is no longer running", k.name()))));
                continue;
            }
            eprintln!("{}: {}", k.name(), sc.title());
            let limit = Duration::from_secs(o.warmup + o.seconds + 120);
            let res = match tokio::time::timeout(
                limit,
                broker_load::run(
                    b.addr,
                    b.pid,
                    sc,
                    Duration::from_secs(o.warmup),
                    Duration::from_secs(o.seconds),
                ),
            )
            .await
            {
                Ok(Ok(out)) => {
                    let confirm = if sc.persistent {
                        format!(
                            ", confirm p50 {} µs p99 {} µs",
                            out.confirm_p50_us, out.confirm_p99_us
                        )
                    } else {
                        String::new()
                    };
                    eprintln!(
                        "  publish {:.0}/s, consume {:.0}/s, latency p50 {} µs p95 {} µs p99 {} µs{confirm}, cpu broker {:.2} bench {:.2}",
                        out.publish_rate,
                        out.consume_rate,
                        out.p50_us,
                        out.p95_us,
                        out.p99_us,
                        out.broker_cpu,
                        out.client_cpu
                    );
                    Ok(out)
                }
                Ok(Err(e)) => {
                    eprintln!("  failed: {e:#}");
                    Err(format!("{e:#}"))
                }
                Err(_) => {
                    eprintln!("  timed out after {limit:?}");
                    Err(format!("timed out after {limit:?}"))
                }
            };
            r.scenarios.push((sc, res));
        }
        drop(b);
    }
    Ok(r)
}

fn scenarios(o: &Options) -> Vec<Scenario> {
    Scenario::all()
        .into_iter()
        .filter(|s| {
            o.scenario
                .as_ref()
                .is_none_or(|f| s.key().contains(f.as_str()))
        })
        .collect()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn machine() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let date = cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let rmq = cmd_out("dpkg-query", &["-W", "-f", "${Version}", "rabbitmq-server"]);
    format!("nproc {nproc}, Linux {kernel}, {date}, rabbitmq-server {rmq}, client lapin 4 (one process: publishers on one thread, consumers on another)")
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn to_json(o: &Options, reports: &[(Kind, Report)]) -> serde_json::Value {
    let err_or = |r: &Result<serde_json::Value, String>| match r {
        Ok(v) => v.clone(),
        Err(e) => json!({ "error": e }),
    };
    let mut brokers = serde_json::Map::new();
    for (k, r) in reports {
        let scenarios: Vec<_> = r
            .scenarios
            .iter()
            .map(|(sc, res)| {
                let v = res
                    .as_ref()
                    .map(|out| {
                        json!({
                            "publish_msgs_per_s": out.publish_rate.round(),
                            "consume_msgs_per_s": out.consume_rate.round(),
                            "latency_p50_us": out.p50_us,
                            "latency_p95_us": out.p95_us,
                            "latency_p99_us": out.p99_us,
                            "latency_samples": out.samples,
                            "confirm_p50_us": out.confirm_p50_us,
                            "confirm_p99_us": out.confirm_p99_us,
                            "broker_cpu_cores": (out.broker_cpu * 100.0).round() / 100.0,
                            "bench_cpu_cores": (out.client_cpu * 100.0).round() / 100.0,
                        })
                    })
                    .map_err(Clone::clone);
                let mut v = err_or(&v);
                v["scenario"] = json!(sc.key());
                v["persistent"] = json!(sc.persistent);
                v["queues"] = json!(sc.queues);
                v["size"] = json!(sc.size);
                v
            })
            .collect();
        let mem = |d: &MemResult| match d {
            None => serde_json::Value::Null,
            Some(Ok(d)) => json!({
                "count": d.count,
                "rss_before": d.before,
                "rss_after": d.after,
                "bytes_each": d.per_item().round(),
            }),
            Some(Err(e)) => json!({ "error": e }),
        };
        brokers.insert(
            k.name().to_string(),
            json!({
                "scenarios": scenarios,
                "idle_connections": mem(&r.connections),
                "empty_queues": mem(&r.queues),
            }),
        );
    }
    json!({
        "machine": machine(),
        "rounds": o.rounds,
        "seconds": o.seconds,
        "warmup_seconds": o.warmup,
        "brokers": brokers,
    })
}

fn fmt_num(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn print_tables(o: &Options, reports: &[(Kind, Report)]) {
    let names: Vec<&str> = reports.iter().map(|(k, _)| k.name()).collect();
    let ratio = reports.len() == 2;
    let header = |first: &str| {
        let mut h = format!("| {first} |");
        let mut sep = "|---|".to_string();
        for n in &names {
            h.push_str(&format!(" {n} |"));
            sep.push_str("---:|");
        }
        if ratio {
            h.push_str(&format!(" {} / {} |", names[0], names[1]));
            sep.push_str("---:|");
        }
        println!("{h}\n{sep}");
    };
    let line = |label: &str, vals: &[Option<f64>], unit_fmt: &dyn Fn(f64) -> String| {
        let mut l = format!("| {label} |");
        for v in vals {
            match v {
                Some(v) => l.push_str(&format!(" {} |", unit_fmt(*v))),
                None => l.push_str(" error |"),
            }
        }
        if ratio {
            match (vals[0], vals[1]) {
                (Some(a), Some(b)) if b != 0.0 => l.push_str(&format!(" {:.2} |", a / b)),
                _ => l.push_str(" – |"),
            }
        }
        println!("{l}");
    };

    println!("\n## AMQP broker: {}\n", names.join(" vs "));
    println!("Machine: {}", machine());
    println!(
        "\nMedians of {} round(s); rounds alternate between the brokers, each started fresh. \
         Per queue one publisher and one consumer connection; {} s measured after {} s of warm-up. \
         Consumers: prefetch {}, ack multiple every {}. Transient: no confirms, at most {} messages \
         unconsumed per queue. Persistent: confirms, at most {} unconfirmed per publisher. \
         Latency: publish to delivery, in µs; at saturation it is mostly the time a message waits \
         in that window (messages in flight / rate). Confirm: from the publish written to its confirm. \
         CPU: cores busy during the measurement (broker process; this bench's client).",
        o.rounds.max(1),
        o.seconds,
        o.warmup,
        broker_load::PREFETCH,
        broker_load::ACK_EVERY,
        broker_load::TRANSIENT_WINDOW,
        broker_load::CONFIRM_WINDOW
    );
    if !o.no_throughput {
        for (i, sc) in scenarios(o).iter().enumerate() {
            println!("\n### {}\n", sc.title());
            header("metric");
            let get = |f: &dyn Fn(&Outcome) -> f64| -> Vec<Option<f64>> {
                reports
                    .iter()
                    .map(|(_, r)| {
                        r.scenarios
                            .get(i)
                            .and_then(|(_, res)| res.as_ref().ok())
                            .map(f)
                    })
                    .collect()
            };
            line("publish msgs/s", &get(&|x| x.publish_rate), &fmt_num);
            line("consume msgs/s", &get(&|x| x.consume_rate), &fmt_num);
            line("latency p50 µs", &get(&|x| x.p50_us as f64), &fmt_num);
            line("latency p95 µs", &get(&|x| x.p95_us as f64), &fmt_num);
            line("latency p99 µs", &get(&|x| x.p99_us as f64), &fmt_num);
            if sc.persistent {
                line(
                    "confirm p50 µs",
                    &get(&|x| x.confirm_p50_us as f64),
                    &fmt_num,
                );
                line(
                    "confirm p99 µs",
                    &get(&|x| x.confirm_p99_us as f64),
                    &fmt_num,
                );
            }
            let cores = |v: f64| format!("{v:.2}");
            line("broker CPU (cores)", &get(&|x| x.broker_cpu), &cores);
            line("bench client CPU (cores)", &get(&|x| x.client_cpu), &cores);
            for (k, r) in reports {
                if let Some((_, Err(e))) = r.scenarios.get(i) {
                    println!("\n{}: {e}", k.name());
                }
            }
        }
    }
    if !o.no_memory {
        println!(
            "\n### Memory (broker RSS; {} empty non-durable queues, then {} idle connections)\n",
            o.queues, o.connections
        );
        header("metric");
        let get = |f: &dyn Fn(&Report) -> Option<&MemResult>,
                   g: &dyn Fn(&Delta) -> f64|
         -> Vec<Option<f64>> {
            reports
                .iter()
                .map(|(_, r)| match f(r) {
                    Some(Some(Ok(d))) => Some(g(d)),
                    _ => None,
                })
                .collect()
        };
        let kib = |v: f64| format!("{:.1} KiB", v / 1024.0);
        let mibf = |v: f64| format!("{:.1} MiB", v / (1024.0 * 1024.0));
        line(
            "bytes per idle connection",
            &get(&|r| Some(&r.connections), &|d| d.per_item()),
            &kib,
        );
        line(
            "bytes per empty queue",
            &get(&|r| Some(&r.queues), &|d| d.per_item()),
            &kib,
        );
        line(
            "RSS before queues",
            &get(&|r| Some(&r.queues), &|d| d.before as f64),
            &mibf,
        );
        line(
            "RSS with queues + connections",
            &get(&|r| Some(&r.connections), &|d| d.after as f64),
            &mibf,
        );
        for (k, r) in reports {
            for (what, d) in [("queues", &r.queues), ("connections", &r.connections)] {
                if let Some(Err(e)) = d {
                    println!("\n{} {what}: {e}", k.name());
                }
            }
        }
    }
}
