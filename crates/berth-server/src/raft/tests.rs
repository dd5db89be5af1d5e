//! Multi-server tests on 127.0.0.1.

use std::path::{Path, PathBuf};

/// A temporary directory removed on drop, even when a test fails.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "berth-raft-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

use super::{RaftConfig, RaftReplica};
use crate::replica::{Replica, ReplicaError};
use crate::state::{ClusterState, Command};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "t0123456789abcdef-raft-tests";
const WAIT: Duration = Duration::from_secs(15);

/// Stands in for the server's auth layer: proves every peer request
/// carries the token.
async fn auth(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let want = format!("Bearer {TOKEN}");
    match req.headers().get(header::AUTHORIZATION) {
        Some(v) if v.as_bytes() == want.as_bytes() => next.run(req).await,
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// One server: a replica and its HTTP listener.
struct Server {
    replica: Arc<RaftReplica>,
    cfg: RaftConfig,
    stop: Option<oneshot::Sender<()>>,
    http: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves over mutual TLS when `cfg` has a certificate, as `berth
    /// server` does with a token (Raft routes need a server certificate).
    async fn start(cfg: RaftConfig, listener: TcpListener) -> Server {
        let replica = RaftReplica::start(cfg.clone())
            .await
            .expect("start replica");
        let app = replica
            .routes()
            .layer(axum::middleware::from_fn(
                crate::server::require_server_cert,
            ))
            .layer(axum::middleware::from_fn(auth));
        let (tx, rx) = oneshot::channel::<()>();
        let stop = async {
            let _ = rx.await;
        };
        let http = match &cfg.identity {
            Some(identity) => {
                let tls = berth_tls::server_config(&ca(), identity).unwrap();
                tokio::spawn(berth_tls::serve_tls(listener, tls, app, stop))
            }
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await;
            }),
        };
        Server {
            replica,
            cfg,
            stop: Some(tx),
            http: Some(http),
        }
    }

    async fn restart(cfg: RaftConfig) -> Server {
        let listener = TcpListener::bind(&cfg.advertise).await.expect("rebind");
        Server::start(cfg, listener).await
    }

    fn addr(&self) -> &str {
        &self.cfg.advertise
    }

    /// Stops Raft and the listener, like a killed process (the data dir
    /// stays).
    async fn stop(&mut self) {
        self.replica.shutdown().await;
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut h) = self.http.take() {
            if tokio::time::timeout(Duration::from_secs(2), &mut h)
                .await
                .is_err()
            {
                h.abort();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(h) = self.http.take() {
            h.abort();
        }
    }
}

fn test_cfg(
    dir: &Path,
    addr: &str,
    expect: usize,
    join: Vec<String>,
    snapshot_every: u64,
) -> RaftConfig {
    RaftConfig {
        bootstrap_expect: expect,
        join,
        token: Some(TOKEN.into()),
        heartbeat_ms: 100,
        election_timeout_ms: (500, 1000),
        snapshot_every,
        ..RaftConfig::new(dir, addr)
    }
}

fn ca() -> berth_tls::ClusterCa {
    berth_tls::ClusterCa::from_token(TOKEN).unwrap()
}

/// `cfg` with a server certificate: peers are called over mutual TLS.
fn with_tls(mut cfg: RaftConfig) -> RaftConfig {
    cfg.identity = Some(
        ca().issue_server(&cfg.advertise, &[cfg.advertise.clone()])
            .unwrap(),
    );
    cfg
}

struct Cluster {
    servers: Vec<Server>,
    dirs: Vec<TempDir>,
}

impl Cluster {
    /// `tls`: the servers speak mutual TLS with each other.
    async fn with(tag: &str, n: usize, snapshot_every: u64, tls: bool) -> Cluster {
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        let mut servers = Vec::new();
        let mut dirs = Vec::new();
        for (l, addr) in listeners.into_iter().zip(&addrs) {
            let dir = TempDir::new(tag);
            let mut cfg = test_cfg(dir.path(), addr, n, addrs.clone(), snapshot_every);
            if tls {
                cfg = with_tls(cfg);
            }
            servers.push(Server::start(cfg, l).await);
            dirs.push(dir);
        }
        Cluster { servers, dirs }
    }

    /// Index of the server every running server agrees leads.
    async fn leader(&self, running: &[usize]) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let infos: Vec<_> = running
                .iter()
                .map(|i| self.servers[*i].replica.leader())
                .collect();
            if let Some(l) = running
                .iter()
                .position(|i| self.servers[*i].replica.leader().is_self)
            {
                let id = self.servers[running[l]].replica.id();
                if infos.iter().all(|i| i.leader_id == Some(id)) {
                    return running[l];
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {infos:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shutdown(mut self) {
        for s in &mut self.servers {
            s.stop().await;
        }
        drop(self.dirs);
    }
}

fn weight(i: usize) -> Command {
    Command::SetRoleWeight {
        role: format!("r{i}"),
        weight: i as f64 + 1.0,
    }
}

/// Waits until `pred` holds on `r`'s applied state.
async fn wait_state(r: &RaftReplica, what: &str, pred: impl Fn(&ClusterState) -> bool) {
    let mut rx = r.watch_applied();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if pred(&r.state().read().unwrap()) {
            return;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("server {} never reached: {what}", r.id()),
        }
    }
}

fn has(st: &ClusterState, i: usize) -> bool {
    st.role_weights.get(&format!("r{i}")) == Some(&(i as f64 + 1.0))
}

/// Writes through whichever server leads, retrying while leadership
/// settles.
async fn write_retrying(servers: &[&Server], cmd: Command) {
    let deadline = Instant::now() + WAIT;
    loop {
        for s in servers {
            if s.replica.leader().is_self {
                match s.replica.write(cmd.clone()).await {
                    Ok(r) => {
                        assert_eq!(r.error, None);
                        return;
                    }
                    Err(ReplicaError::NotLeader { .. } | ReplicaError::Unconfirmed(_)) => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
        }
        assert!(Instant::now() < deadline, "no write succeeded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_replicate_fail_over_and_catch_up() {
    fail_over_and_catch_up(false).await;
}

/// The same over mutual TLS, as servers with a token run; and a client
/// with the token but no server certificate cannot speak Raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_over_mutual_tls() {
    fail_over_and_catch_up(true).await;
}

async fn fail_over_and_catch_up(tls: bool) {
    let t0 = Instant::now();
    let mut c = Cluster::with(if tls { "mtls" } else { "failover" }, 3, 10_000, tls).await;
    let l = c.leader(&[0, 1, 2]).await;
    eprintln!("cluster of 3 formed with a leader in {:?}", t0.elapsed());
    let leader = c.servers[l].replica.clone();
    let leader_addr = c.servers[l].addr().to_string();
    if tls {
        // The token and the cluster CA, but no certificate: refused.
        let cfg = berth_tls::client_config(&ca(), None).unwrap();
        let http = reqwest::Client::builder()
            .no_proxy()
            .use_preconfigured_tls((*cfg).clone())
            .build()
            .unwrap();
        for path in ["/raft/append", "/raft/vote", "/raft/info"] {
            let r = http
                .post(format!("https://{leader_addr}{path}"))
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        }
        // Plain HTTP gets no answer at all.
        assert!(reqwest::Client::new()
            .get(format!("http://{leader_addr}/raft/info"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .is_err());
    }

    for i in 0..5 {
        let r = leader.write(weight(i)).await.expect("write through leader");
        assert_eq!(r.error, None);
    }
    for s in &c.servers {
        wait_state(&s.replica, "r4 applied", |st| (0..5).all(|i| has(st, i))).await;
    }

    let f = (l + 1) % 3;
    match c.servers[f].replica.write(weight(99)).await {
        Err(ReplicaError::NotLeader { leader_address }) => {
            assert_eq!(leader_address.as_deref(), Some(leader_addr.as_str()))
        }
        other => panic!("write to a follower: {other:?}"),
    }
    assert!(matches!(
        c.servers[f].replica.ensure_linearizable().await,
        Err(ReplicaError::NotLeader { .. })
    ));
    leader
        .ensure_linearizable()
        .await
        .expect("leader read barrier");
    let members = leader.members().await.unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(members.iter().filter(|m| m.role == "leader").count(), 1);
    assert!(members.iter().all(|m| m.voter && m.term >= 1));
    let li = members.iter().find(|m| m.id == leader.id()).unwrap();
    assert!(li.last_log_index >= 5 && li.address == leader_addr);

    // Kill the leader: the two others elect a new one and keep every write.
    let t1 = Instant::now();
    c.servers[l].stop().await;
    let rest: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let nl = c.leader(&rest).await;
    let elected = t1.elapsed();
    write_retrying(&[&c.servers[rest[0]], &c.servers[rest[1]]], weight(5)).await;
    eprintln!(
        "failover: new leader after {elected:?}, first write committed after {:?}",
        t1.elapsed()
    );
    assert!(
        t1.elapsed() < Duration::from_secs(5),
        "failover took {:?}",
        t1.elapsed()
    );
    assert_ne!(nl, l);
    wait_state(&c.servers[nl].replica, "all writes", |st| {
        (0..6).all(|i| has(st, i))
    })
    .await;

    // The old leader restarts from its data dir and catches up.
    let t2 = Instant::now();
    let cfg = c.servers[l].cfg.clone();
    c.servers[l] = Server::restart(cfg).await;
    wait_state(&c.servers[l].replica, "catch up after restart", |st| {
        (0..6).all(|i| has(st, i))
    })
    .await;
    eprintln!("restarted server caught up in {:?}", t2.elapsed());
    let li = c.servers[l].replica.leader();
    assert_eq!(li.leader_id, Some(c.servers[nl].replica.id()));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_compact_the_log_and_restore() {
    // Over TLS: snapshot chunks are raw bytes, the largest bodies.
    let mut c = Cluster::with("snapshot", 3, 20, true).await;
    let l = c.leader(&[0, 1, 2]).await;
    let lagging = (l + 1) % 3;
    let other = (l + 2) % 3;
    c.servers[lagging].stop().await;

    // write_many proposes a batch at once.
    for batch in 0..6 {
        let cmds: Vec<Command> = (batch * 10..batch * 10 + 10).map(weight).collect();
        let res = c.servers[l]
            .replica
            .write_many(cmds)
            .await
            .expect("write_many");
        assert_eq!(res.len(), 10);
        assert!(res.iter().all(|r| r.error.is_none()));
    }
    wait_state(&c.servers[other].replica, "60 writes", |st| {
        (0..60).all(|i| has(st, i))
    })
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let m = c.servers[l].replica.raft().metrics().borrow().clone();
        if m.snapshot.is_some_and(|s| s.index >= 40) && m.purged.is_some() {
            eprintln!(
                "leader snapshot at {:?}, log purged up to {:?}",
                m.snapshot, m.purged
            );
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot/purge: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The stopped follower is behind the purged log: it needs the snapshot.
    let cfg = c.servers[lagging].cfg.clone();
    c.servers[lagging] = Server::restart(cfg).await;
    wait_state(&c.servers[lagging].replica, "snapshot install", |st| {
        (0..60).all(|i| has(st, i))
    })
    .await;
    assert!(c.servers[lagging].replica.snapshot_index().is_some());

    // A restart loads the snapshot before replaying the rest of the log.
    let deadline = Instant::now() + WAIT;
    let purged = loop {
        let m = c.servers[other].replica.raft().metrics().borrow().clone();
        if let (Some(_), Some(p)) = (m.snapshot, m.purged) {
            break p.index;
        }
        assert!(Instant::now() < deadline, "follower never compacted: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    c.servers[other].stop().await;
    let cfg = c.servers[other].cfg.clone();
    c.servers[other] = Server::restart(cfg).await;
    let r = &c.servers[other].replica;
    let snap = r.snapshot_index().expect("snapshot loaded at start");
    assert!(snap >= purged);
    // Entries up to `purged` are no longer in the log: the state has them
    // from the snapshot alone.
    let weights = r.state().read().unwrap().role_weights.len();
    assert!(
        weights as u64 >= purged.saturating_sub(2),
        "snapshot at {snap}: {weights} entries"
    );
    wait_state(r, "all 60 after restart", |st| (0..60).all(|i| has(st, i))).await;
    eprintln!("follower restarted from its snapshot at {snap} (log purged up to {purged})");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_server_joins_and_leaves() {
    // Over TLS: the join is forwarded from a follower to the leader.
    let c = Cluster::with("join", 3, 10_000, true).await;
    let l = c.leader(&[0, 1, 2]).await;
    c.servers[l].replica.write(weight(0)).await.unwrap();

    // It knows only a follower: the follower forwards the join.
    let f = (l + 1) % 3;
    let dir = TempDir::new("join4");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cfg = with_tls(test_cfg(
        dir.path(),
        &addr,
        3,
        vec![c.servers[f].addr().to_string()],
        10_000,
    ));
    let t = Instant::now();
    let mut fourth = Server::start(cfg, listener).await;
    let id4 = fourth.replica.id();
    let deadline = Instant::now() + WAIT;
    loop {
        let m = c.servers[l].replica.members().await.unwrap();
        if m.iter()
            .any(|m| m.id == id4 && m.voter && m.address == addr)
        {
            assert_eq!(m.len(), 4);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "4th server never became a voter: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("4th server joined as a voter in {:?}", t.elapsed());
    wait_state(&fourth.replica, "r0 on the new server", |st| has(st, 0)).await;
    c.servers[l].replica.write(weight(1)).await.unwrap();
    wait_state(&fourth.replica, "r1 on the new server", |st| has(st, 1)).await;
    let own = fourth.replica.members().await.unwrap();
    assert!(own.iter().any(|m| m.id == id4 && m.role == "follower"));

    // Leave through a follower, which forwards to the leader; like the
    // CLI, with the token and no certificate.
    let tls = berth_tls::client_config(&ca(), None).unwrap();
    let resp = reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap()
        .post(format!("https://{}/v1/cluster/leave", c.servers[f].addr()))
        .bearer_auth(TOKEN)
        .json(&super::http::LeaveRequest { id: id4 })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let m = c.servers[l].replica.members().await.unwrap();
    assert_eq!(m.len(), 3, "{m:?}");
    assert!(m.iter().all(|m| m.id != id4));
    fourth.stop().await;
    c.servers[l].replica.write(weight(2)).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_server_bootstraps_alone_and_restarts() {
    let dir = TempDir::new("single");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cfg = test_cfg(dir.path(), &addr, 1, vec![], 10_000);
    let mut s = Server::start(cfg.clone(), listener).await;
    let mut rx = s.replica.watch_leader();
    tokio::time::timeout(WAIT, rx.wait_for(|l| l.is_self))
        .await
        .expect("leader in time")
        .unwrap();
    let res = s
        .replica
        .write_many((0..5).map(weight).collect())
        .await
        .unwrap();
    assert_eq!(res.len(), 5);
    assert!((0..5).all(|i| has(&s.replica.state().read().unwrap(), i)));
    let info = s.replica.info().await;
    assert!(info.initialized);
    assert_eq!(info.leader_address.as_deref(), Some(addr.as_str()));
    s.stop().await;

    let s = Server::restart(cfg).await;
    wait_state(&s.replica, "log replayed", |st| (0..5).all(|i| has(st, i))).await;
    let mut rx = s.replica.watch_leader();
    tokio::time::timeout(WAIT, rx.wait_for(|l| l.is_self))
        .await
        .expect("leader again")
        .unwrap();
    s.replica.write(weight(5)).await.unwrap();
    let mut s = s;
    s.stop().await;

    // A data dir remembers its node id.
    let mut other = test_cfg(dir.path(), &addr, 1, vec![], 10_000);
    other.id = Some(12345);
    let err = RaftReplica::start(other).await.err().expect("id mismatch");
    assert!(err.to_string().contains("node-id"), "{err}");
}

const KILL_DIR_ENV: &str = "BERTH_RAFT_KILL9_DIR";

/// The child of `acknowledged_writes_survive_kill_9`: a single server that
/// writes until killed, printing `ack N` after each acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by acknowledged_writes_survive_kill_9 in a child process"]
async fn kill9_child() {
    use std::io::Write;
    let Ok(dir) = std::env::var(KILL_DIR_ENV) else {
        return;
    };
    let cfg = test_cfg(Path::new(&dir), "127.0.0.1:1", 1, vec![], 10_000);
    let r = RaftReplica::start(cfg).await.expect("start");
    let mut rx = r.watch_leader();
    tokio::time::timeout(WAIT, rx.wait_for(|l| l.is_self))
        .await
        .expect("leader")
        .unwrap();
    for i in 0..100_000 {
        r.write(weight(i)).await.expect("write");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ack {i}");
        let _ = out.flush();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    use tokio::io::AsyncBufReadExt;
    let dir = TempDir::new("kill9");
    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .args([
            "raft::tests::kill9_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(KILL_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked.is_none_or(|n| n < 200) {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("child acknowledged writes in time")
            .unwrap()
            .expect("child exited early");
        if let Some(n) = line.strip_prefix("ack ") {
            acked = n.parse::<usize>().ok();
        }
    }
    child.start_kill().unwrap(); // SIGKILL
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(n) = line.strip_prefix("ack ") {
            acked = n.parse::<usize>().ok().or(acked);
        }
    }
    let _ = child.wait().await;
    let acked = acked.unwrap();

    let cfg = test_cfg(dir.path(), "127.0.0.1:1", 1, vec![], 10_000);
    let r = RaftReplica::start(cfg)
        .await
        .expect("restart after kill -9");
    wait_state(&r, "every acknowledged write", |st| {
        (0..=acked).all(|i| has(st, i))
    })
    .await;
    eprintln!(
        "kill -9 after {} acknowledged writes: all present after restart",
        acked + 1
    );
    r.shutdown().await;
}
