//! mTLS end to end: an axum app behind `serve_tls` on loopback, called by
//! reqwest (as the cluster client will) and by raw tokio-rustls clients.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use berth_tls::{
    agent_key_and_csr, client_config, client_config_strict, explain_tls_error, serve_tls_with,
    server_config, AgentPeer, ClusterCa, Identity, PeerIdentity, ServeOptions, ServerPeer,
    CLIENT_CERT_REFUSED, SERVER_NOT_IN_CLUSTER,
};
use bytes::Bytes;
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "t0123456789abcdef-cluster";
const OTHER_TOKEN: &str = "t0123456789abcdef-elsewhere";

fn app() -> Router {
    Router::new()
        .route(
            "/whoami",
            get(|peer: PeerIdentity| async move {
                peer.common_name().unwrap_or("none").to_string()
            }),
        )
        .route(
            "/addr",
            get(
                |axum::extract::ConnectInfo(a): axum::extract::ConnectInfo<SocketAddr>| async move {
                    a.ip().to_string()
                },
            ),
        )
        .route("/agent", get(|AgentPeer(id): AgentPeer| async move { id }))
        .route("/raft", get(|ServerPeer(n): ServerPeer| async move { n }))
        .route("/stream", get(|| async { Body::from_stream(ticks(Some(3))) }))
        .route("/forever", get(|| async { Body::from_stream(ticks(None)) }))
        .route("/echo", get(upgrade_echo))
}

fn ticks(
    n: Option<u32>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    futures_util::stream::unfold(0u32, move |i| async move {
        if Some(i) == n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        Some((Ok(Bytes::from(format!("tick {i}\n"))), i + 1))
    })
}

/// HTTP/1.1 upgrade to a byte echo, as a long-lived protocol would.
async fn upgrade_echo(mut req: Request) -> Response {
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let mut io = TokioIo::new(up);
        let mut buf = [0u8; 256];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Body::empty())
        .expect("static response")
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(identity: &Identity, bind: &str, options: ServeOptions) -> Server {
        let ca = ClusterCa::from_token(TOKEN).unwrap();
        let tls = server_config(&ca, identity).unwrap();
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_tls_with(
            listener,
            tls,
            app(),
            async move {
                let _ = rx.await;
            },
            options,
        ));
        Server {
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn default() -> Server {
        let ca = ClusterCa::from_token(TOKEN).unwrap();
        let id = ca.issue_server("1", &["127.0.0.1:0".into()]).unwrap();
        Server::start(&id, "127.0.0.1:0", ServeOptions::default()).await
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve_tls returns after shutdown")
            .unwrap();
    }
}

fn http(tls: Arc<rustls::ClientConfig>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest takes our rustls ClientConfig (same rustls version)")
}

fn agent_identity(ca_token: &str, id: &str) -> Identity {
    let (key_pem, csr) = agent_key_and_csr(id).unwrap();
    let cert_pem = ClusterCa::from_token(ca_token)
        .unwrap()
        .sign_agent_csr(&csr, id)
        .unwrap();
    Identity { cert_pem, key_pem }
}

async fn get_text(c: &reqwest::Client, url: &str) -> Result<(u16, String), reqwest::Error> {
    let r = c.get(url).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.text().await?))
}

#[tokio::test]
async fn an_agent_certificate_is_seen_by_the_handler() {
    let s = Server::default().await;
    // A separate derivation, as on another machine.
    let ca = ClusterCa::from_token(TOKEN).unwrap();
    let agent = agent_identity(TOKEN, "x");
    let c = http(client_config(&ca, Some(&agent)).unwrap());
    let base = format!("https://{}", s.addr);
    assert_eq!(
        get_text(&c, &format!("{base}/whoami")).await.unwrap(),
        (200, "agent:x".into())
    );
    assert_eq!(
        get_text(&c, &format!("{base}/agent")).await.unwrap(),
        (200, "x".into())
    );
    let (status, body) = get_text(&c, &format!("{base}/raft")).await.unwrap();
    assert_eq!(status, 403, "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_server_certificate_works_as_a_client_certificate() {
    let s = Server::default().await;
    let ca = ClusterCa::from_token(TOKEN).unwrap();
    let peer = ca.issue_server("7", &["10.1.2.3:5050".into()]).unwrap();
    let c = http(client_config(&ca, Some(&peer)).unwrap());
    let base = format!("https://{}", s.addr);
    assert_eq!(
        get_text(&c, &format!("{base}/whoami")).await.unwrap(),
        (200, "server:7".into())
    );
    assert_eq!(
        get_text(&c, &format!("{base}/raft")).await.unwrap(),
        (200, "7".into())
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_connects_anonymously() {
    let s = Server::default().await;
    let ca = ClusterCa::from_token(TOKEN).unwrap();
    let c = http(client_config(&ca, None).unwrap());
    let base = format!("https://{}", s.addr);
    assert_eq!(
        get_text(&c, &format!("{base}/whoami")).await.unwrap(),
        (200, "none".into())
    );
    let (status, body) = get_text(&c, &format!("{base}/agent")).await.unwrap();
    assert_eq!(status, 403);
    assert!(body.contains("agent certificate"), "{body}");
    assert_eq!(
        get_text(&c, &format!("{base}/addr")).await.unwrap(),
        (200, "127.0.0.1".into())
    );
    // By name too.
    let url = format!("https://localhost:{}/whoami", s.addr.port());
    assert_eq!(get_text(&c, &url).await.unwrap().0, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_with_another_tokens_ca_fails_the_handshake() {
    let s = Server::default().await;
    let other = ClusterCa::from_token(OTHER_TOKEN).unwrap();
    let c = http(client_config(&other, None).unwrap());
    let e = get_text(&c, &format!("https://{}/whoami", s.addr))
        .await
        .unwrap_err();
    assert_eq!(explain_tls_error(&e), Some(SERVER_NOT_IN_CLUSTER), "{e:?}");
    // And with a raw tokio-rustls connection.
    let e = tls_connect(&client_config(&other, None).unwrap(), s.addr, "127.0.0.1")
        .await
        .unwrap_err();
    assert_eq!(explain_tls_error(&e), Some(SERVER_NOT_IN_CLUSTER), "{e:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_certificate_of_another_ca_is_refused() {
    let s = Server::default().await;
    let ca = ClusterCa::from_token(TOKEN).unwrap();
    let foreign = agent_identity(OTHER_TOKEN, "x");
    // client_config itself refuses a certificate of another CA ...
    let e = client_config(&ca, Some(&foreign)).unwrap_err();
    assert!(e.to_string().contains("agent:x"), "{e}");
    // ... so build one by hand, with the stock rustls verifier, which also
    // shows that the server certificate's IP SAN matches 127.0.0.1.
    let (certs, key) = pem_der(&foreign);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(ca.roots())
    .with_client_auth_cert(certs, key)
    .unwrap();
    let c = http(Arc::new(config));
    let e = get_text(&c, &format!("https://{}/whoami", s.addr))
        .await
        .unwrap_err();
    assert_eq!(explain_tls_error(&e), Some(CLIENT_CERT_REFUSED), "{e:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn server_names_are_checked_only_by_the_strict_config() {
    let ca = ClusterCa::from_token(TOKEN).unwrap();
    // Listens on 127.0.0.2, which the certificate does not name.
    let id = ca.issue_server("1", &["10.9.9.9".into()]).unwrap();
    let s = Server::start(&id, "127.0.0.2:0", ServeOptions::default()).await;
    let url = format!("https://{}/whoami", s.addr);
    let lenient = http(client_config(&ca, None).unwrap());
    assert_eq!(get_text(&lenient, &url).await.unwrap().0, 200);
    let strict = http(client_config_strict(&ca, None).unwrap());
    let e = get_text(&strict, &url).await.unwrap_err();
    assert!(format!("{e:?}").contains("NotValidForName"), "{e:?}");
    s.shutdown().await;

    // Listed addresses pass the strict check.
    let s = Server::default().await;
    let url = format!("https://127.0.0.1:{}/whoami", s.addr.port());
    assert_eq!(get_text(&strict, &url).await.unwrap().0, 200);
    let url = format!("https://localhost:{}/whoami", s.addr.port());
    assert_eq!(get_text(&strict, &url).await.unwrap().0, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn an_agent_certificate_cannot_serve() {
    // Agents' certificates lack the server-auth usage.
    let agent = agent_identity(TOKEN, "x");
    let s = Server::start(&agent, "127.0.0.1:0", ServeOptions::default()).await;
    let ca = ClusterCa::from_token(TOKEN).unwrap();
    let e = tls_connect(&client_config(&ca, None).unwrap(), s.addr, "127.0.0.1")
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("InvalidPurpose"), "{e:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn stalled_and_garbage_handshakes_do_not_disturb_others() {
    let ca = ClusterCa::from_token(TOKEN).unwrap();
    let id = ca.issue_server("1", &[]).unwrap();
    let options = ServeOptions {
        handshake_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let s = Server::start(&id, "127.0.0.1:0", options).await;
    let mut stalled = TcpStream::connect(s.addr).await.unwrap();
    let mut garbage = TcpStream::connect(s.addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let c = http(client_config(&ca, None).unwrap());
    let url = format!("https://{}/whoami", s.addr);
    assert_eq!(get_text(&c, &url).await.unwrap().0, 200);
    // The garbage one is answered with an alert or closed, the stalled one
    // closed after the handshake timeout.
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut buf))
        .await
        .expect("garbage connection closed");
    let _ = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut buf))
        .await
        .expect("stalled connection closed by the handshake timeout");
    assert_eq!(get_text(&c, &url).await.unwrap().0, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn responses_stream_chunk_by_chunk() {
    let s = Server::default().await;
    let ca = ClusterCa::from_token(TOKEN).unwrap();
    let c = http(client_config(&ca, None).unwrap());
    let r = c
        .get(format!("https://{}/stream", s.addr))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first_at = tokio::time::Instant::now();
    assert_eq!(&first[..], b"tick 0\n");
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    // Chunks arrive as produced (150 ms apart), not buffered to the end.
    assert!(first_at.elapsed() >= Duration::from_millis(250));
    assert_eq!(rest, b"tick 1\ntick 2\n");
    s.shutdown().await;
}

#[tokio::test]
async fn http_upgrades_work() {
    let s = Server::default().await;
    let ca = ClusterCa::from_token(TOKEN).unwrap();
    let agent = agent_identity(TOKEN, "x");
    let mut tls = tls_connect(
        &client_config(&ca, Some(&agent)).unwrap(),
        s.addr,
        "127.0.0.1",
    )
    .await
    .unwrap();
    tls.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(tls.read(&mut b).await.unwrap(), 1, "closed: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in [&b"hello"[..], b"again"] {
        tls.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_cuts_endless_streams_after_the_grace() {
    let ca = ClusterCa::from_token(TOKEN).unwrap();
    let id = ca.issue_server("1", &[]).unwrap();
    let options = ServeOptions {
        shutdown_grace: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let s = Server::start(&id, "127.0.0.1:0", options).await;
    let c = http(client_config(&ca, None).unwrap());
    let r = c
        .get(format!("https://{}/forever", s.addr))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    assert!(body.next().await.unwrap().is_ok());
    let addr = s.addr;
    let started = tokio::time::Instant::now();
    s.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    // The stream ends (cut) and nothing listens any more.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(drained.is_ok(), "the stream outlived the server");
    assert!(TcpStream::connect(addr).await.is_err());
}

async fn tls_connect(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).expect("server name");
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
}

fn pem_der(
    id: &Identity,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap();
    (certs, key)
}
