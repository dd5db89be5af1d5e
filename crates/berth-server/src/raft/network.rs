//! Raft RPCs between servers: HTTP/1.1, JSON bodies; over mutual TLS when
//! the cluster has a token (the server presents its own certificate, which
//! the peers' Raft routes require, and trusts only the cluster CA).
//!
//! Every request has a deadline (openraft's per-RPC TTL) and a short
//! connect timeout, so a dead or partitioned peer costs one timeout, never a
//! stalled replication stream. A peer that cannot be connected to is
//! reported as `Unreachable`, which makes openraft back off instead of
//! retrying in a loop. Snapshot chunks travel as raw bytes after a JSON
//! header line rather than as a JSON array of numbers.

use super::{RaftConfig, RaftError, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError as OrError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, RPCTypes};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;

type NodeId = u64;

/// Longest wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Header set on a request a server forwards to the leader, so that a
/// stale view of the leader cannot bounce it around forever.
pub const FORWARDED_HEADER: &str = "x-berth-forwarded";

/// Why a request to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("cannot connect to {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("request to {addr} timed out after {ms} ms")]
    Timeout { addr: String, ms: u64 },
    #[error("{addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("bad answer from {addr}: {message}")]
    Invalid { addr: String, message: String },
}

/// An HTTP client for peer requests that adds the bearer token.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    token: Option<String>,
    scheme: &'static str,
}

impl PeerClient {
    /// HTTPS presenting `cfg.identity` when it has one, else plain HTTP.
    pub fn for_config(cfg: &RaftConfig) -> Result<Self, RaftError> {
        let tls = match (&cfg.identity, &cfg.token) {
            (Some(identity), Some(token)) => {
                let tls_err = |e: berth_tls::TlsError| RaftError::Config(format!("peer tls: {e}"));
                let ca = berth_tls::ClusterCa::from_token(token).map_err(tls_err)?;
                Some(berth_tls::client_config(&ca, Some(identity)).map_err(tls_err)?)
            }
            _ => None,
        };
        Self::build(cfg.token.clone(), tls)
    }

    fn build(
        token: Option<String>,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<Self, RaftError> {
        let mut b = reqwest::Client::builder()
            // Peers are addressed directly; a proxy from the environment
            // must never see cluster traffic or tokens.
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30));
        let scheme = match tls {
            Some(tls) => {
                b = b.use_preconfigured_tls((*tls).clone());
                "https"
            }
            None => "http",
        };
        let http = b
            .build()
            .map_err(|e| RaftError::Config(format!("http client: {e}")))?;
        Ok(Self {
            http,
            token,
            scheme,
        })
    }

    /// `https` when peers are called over TLS.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    fn request(
        &self,
        method: reqwest::Method,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let mut rb = self
            .http
            .request(method, format!("{}://{addr}{path}", self.scheme))
            .timeout(timeout);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    /// Sends `rb` and decodes a 2xx JSON answer.
    pub async fn send<T: DeserializeOwned>(
        &self,
        addr: &str,
        rb: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, PeerError> {
        let resp = rb.send().await.map_err(|e| classify(addr, timeout, e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| classify(addr, timeout, e))?;
        if !status.is_success() {
            return Err(PeerError::Status {
                addr: addr.to_string(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| PeerError::Invalid {
            addr: addr.to_string(),
            message: e.to_string(),
        })
    }

    pub async fn get_json<T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<T, PeerError> {
        let rb = self.request(reqwest::Method::GET, addr, path, timeout);
        self.send(addr, rb, timeout).await
    }

    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, PeerError> {
        let rb = self
            .request(reqwest::Method::POST, addr, path, timeout)
            .json(body);
        self.send(addr, rb, timeout).await
    }

    /// Forwards a JSON body to `addr` and returns the raw answer
    /// (status, body) to relay it unchanged.
    pub async fn forward(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), PeerError> {
        let resp = self
            .request(reqwest::Method::POST, addr, path, timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(FORWARDED_HEADER, "1")
            .body(body)
            .send()
            .await
            .map_err(|e| classify(addr, timeout, e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| classify(addr, timeout, e))?;
        Ok((status, bytes.to_vec()))
    }
}

fn classify(addr: &str, timeout: Duration, e: reqwest::Error) -> PeerError {
    if e.is_connect() {
        PeerError::Unreachable {
            addr: addr.to_string(),
            message: e.to_string(),
        }
    } else if e.is_timeout() {
        PeerError::Timeout {
            addr: addr.to_string(),
            ms: timeout.as_millis() as u64,
        }
    } else {
        PeerError::Invalid {
            addr: addr.to_string(),
            message: e.to_string(),
        }
    }
}

/// The JSON line before a snapshot chunk's bytes.
#[derive(Serialize, Deserialize)]
pub struct SnapshotChunkHeader {
    pub vote: openraft::Vote<NodeId>,
    pub meta: openraft::SnapshotMeta<NodeId, BasicNode>,
    pub offset: u64,
    pub done: bool,
}

/// Encodes a snapshot chunk: header JSON, `\n`, raw data.
pub fn encode_chunk(req: InstallSnapshotRequest<TypeConfig>) -> Result<Vec<u8>, serde_json::Error> {
    let header = SnapshotChunkHeader {
        vote: req.vote,
        meta: req.meta,
        offset: req.offset,
        done: req.done,
    };
    let mut out = serde_json::to_vec(&header)?;
    out.push(b'\n');
    out.extend_from_slice(&req.data);
    Ok(out)
}

pub fn decode_chunk(body: &[u8]) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    let nl = body
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("snapshot chunk has no header line")?;
    let h: SnapshotChunkHeader =
        serde_json::from_slice(&body[..nl]).map_err(|e| format!("snapshot chunk header: {e}"))?;
    Ok(InstallSnapshotRequest {
        vote: h.vote,
        meta: h.meta,
        offset: h.offset,
        data: body[nl + 1..].to_vec(),
        done: h.done,
    })
}

pub struct NetworkFactory {
    pub id: NodeId,
    pub client: PeerClient,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        Network {
            id: self.id,
            target,
            addr: node.addr.clone(),
            client: self.client.clone(),
        }
    }
}

pub struct Network {
    id: NodeId,
    target: NodeId,
    addr: String,
    client: PeerClient,
}

impl Network {
    fn to_rpc_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        e: PeerError,
    ) -> RPCError<NodeId, BasicNode, E> {
        match e {
            PeerError::Unreachable { .. } => {
                RPCError::Unreachable(Unreachable::new(&AnyError::error(e.to_string())))
            }
            PeerError::Timeout { ms, .. } => RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout: Duration::from_millis(ms),
            }),
            other => RPCError::Network(NetworkError::new(&AnyError::error(other.to_string()))),
        }
    }

    async fn call<Req, Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, OrError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let res: Result<Resp, OrError<NodeId, E>> = self
            .client
            .post_json(&self.addr, path, req, ttl)
            .await
            .map_err(|e| self.to_rpc_error(action, e))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, OrError<NodeId>>> {
        self.call(
            RPCTypes::AppendEntries,
            "/raft/append",
            &rpc,
            option.hard_ttl(),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, OrError<NodeId>>> {
        self.call(RPCTypes::Vote, "/raft/vote", &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, OrError<NodeId, InstallSnapshotError>>,
    > {
        let ttl = option.hard_ttl();
        let body = encode_chunk(rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::error(e.to_string()))))?;
        let rb = self
            .client
            .request(reqwest::Method::POST, &self.addr, "/raft/snapshot", ttl)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let res: Result<InstallSnapshotResponse<NodeId>, OrError<NodeId, InstallSnapshotError>> =
            self.client
                .send(&self.addr, rb, ttl)
                .await
                .map_err(|e| self.to_rpc_error(RPCTypes::InstallSnapshot, e))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_roundtrip_keeps_bytes() {
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote: openraft::Vote::new(2, 7),
            meta: Default::default(),
            offset: 42,
            data: vec![0, 10, 255, b'\n', 3],
            done: true,
        };
        let enc = encode_chunk(req.clone()).unwrap();
        let dec = decode_chunk(&enc).unwrap();
        assert_eq!(dec.data, req.data);
        assert_eq!(dec.offset, 42);
        assert!(dec.done);
        assert_eq!(dec.vote, req.vote);
        assert!(decode_chunk(b"no header").is_err());
    }
}
