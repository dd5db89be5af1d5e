//! The management API over a real loopback listener (so the peer address and
//! loopback-only users are exercised as in production), with a minimal
//! HTTP/1.1 client.
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Broker;

struct Server {
    addr: SocketAddr,
    broker: Arc<Broker>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start() -> Server {
        let broker = Broker::in_memory();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(super::serve(broker.clone(), listener, rx));
        Server {
            addr,
            broker,
            stop,
            task,
        }
    }

    async fn shutdown(self) {
        let _ = self.stop.send(true);
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await;
        assert!(
            matches!(done, Ok(Ok(Ok(())))),
            "management server did not stop cleanly: {done:?}"
        );
    }

    /// (status, lowercase headers, body)
    async fn req(
        &self,
        method: &str,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<&str>,
    ) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
        if let Some((u, p)) = auth {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            head.push_str(&format!("authorization: Basic {token}\r\n"));
        }
        let body = body.unwrap_or("");
        head.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ));
        s.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (headers, body) = text.split_once("\r\n\r\n").unwrap();
        let status: u16 = headers.split(' ').nth(1).unwrap().parse().unwrap();
        let headers = headers.to_ascii_lowercase();
        let body = if headers.contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, headers, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (st, _, body) = self.req("GET", path, GUEST, None).await;
        (st, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn send(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let (st, _, body) = self.req(method, path, GUEST, Some(&body.to_string())).await;
        (st, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_is_required() {
    let s = Server::start().await;
    let (st, headers, body) = s.req("GET", "/api/overview", None, None).await;
    assert_eq!(st, 401);
    assert!(headers.contains("www-authenticate: basic"), "{headers}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "not_authorised");
    let (st, _, _) = s
        .req("GET", "/api/overview", Some(("guest", "wrong")), None)
        .await;
    assert_eq!(st, 401);
    let (st, _, _) = s.req("GET", "/api/overview", GUEST, None).await;
    assert_eq!(st, 200);
    // A user without a management tag may not use the API at all.
    s.broker.put_user("app", Some("pw"), vec![]).unwrap();
    let (st, _, body) = s
        .req("GET", "/api/overview", Some(("app", "pw")), None)
        .await;
    assert_eq!(st, 401, "{body}");
    assert!(body.contains("Not management user"), "{body}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_and_health() {
    let s = Server::start().await;
    let (st, o) = s.get("/api/overview").await;
    assert_eq!(st, 200);
    assert_eq!(o["product_name"], "berth");
    assert!(
        o["object_totals"]["exchanges"].as_u64().unwrap() >= 6,
        "{o}"
    );
    assert_eq!(o["object_totals"]["queues"], 0);
    assert_eq!(o["queue_totals"]["messages"], 0);
    assert!(o["message_stats"]["publish_details"]["rate"].is_number());
    let (st, h) = s.get("/api/healthchecks/alarms").await;
    assert_eq!((st, h["status"].as_str()), (200, Some("ok")));
    let (st, w) = s.get("/api/whoami").await;
    assert_eq!((st, w["name"].as_str()), (200, Some("guest")));
    let (st, v) = s.get("/api/no/such/thing").await;
    assert_eq!(st, 404);
    assert_eq!(
        v,
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_declare_list_purge_delete() {
    let s = Server::start().await;
    let (st, _) = s
        .send(
            "PUT",
            "/api/queues/%2F/q1",
            json!({"durable": false, "arguments": {"x-max-length": 5}}),
        )
        .await;
    assert_eq!(st, 201);
    let (st, _) = s
        .send(
            "PUT",
            "/api/queues/%2F/q1",
            json!({"durable": false, "arguments": {"x-max-length": 5}}),
        )
        .await;
    assert_eq!(st, 204, "an equivalent redeclare is no change");
    let (st, v) = s
        .send("PUT", "/api/queues/%2F/q1", json!({"durable": true}))
        .await;
    assert_eq!(st, 400, "inequivalent redeclare: {v}");
    assert!(v["reason"].as_str().unwrap().contains("durable"), "{v}");
    let (st, v) = s
        .send("PUT", "/api/queues/%2F/q2", json!({"durable": "yes"}))
        .await;
    assert_eq!(st, 400);
    assert_eq!(v["reason"], "field 'durable': expected a boolean");

    let (st, list) = s.get("/api/queues").await;
    assert_eq!(st, 200);
    assert_eq!(names(&list), ["q1"]);
    let q = &list[0];
    for field in [
        "name",
        "vhost",
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "message_bytes",
    ] {
        assert!(q.get(field).is_some(), "queue JSON lacks {field}: {q}");
    }
    assert_eq!(q["vhost"], "/");
    assert_eq!(q["arguments"]["x-max-length"], 5);
    assert!(q["message_stats"]["deliver_get_details"]["rate"].is_number());

    let (st, list) = s.get("/api/queues/%2F").await;
    assert_eq!((st, names(&list)), (200, vec!["q1".to_string()]));
    let (st, _) = s.get("/api/queues/nope").await;
    assert_eq!(st, 404);
    let (st, q) = s.get("/api/queues/%2F/q1").await;
    assert_eq!((st, q["name"].as_str()), (200, Some("q1")));
    let (st, _, _) = s
        .req("DELETE", "/api/queues/%2F/q1/contents", GUEST, None)
        .await;
    assert_eq!(st, 204);
    let (st, _, _) = s.req("DELETE", "/api/queues/%2F/q1", GUEST, None).await;
    assert_eq!(st, 204);
    let (st, v) = s.get("/api/queues/%2F/q1").await;
    assert_eq!(st, 404);
    assert_eq!(v["error"], "Object Not Found");
    let (st, _, _) = s.req("DELETE", "/api/queues/%2F/q1", GUEST, None).await;
    assert_eq!(st, 404);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_and_bindings() {
    let s = Server::start().await;
    let (st, _) = s
        .send(
            "PUT",
            "/api/exchanges/%2F/logs",
            json!({"type": "topic", "durable": true}),
        )
        .await;
    assert_eq!(st, 201);
    let (st, v) = s
        .send("PUT", "/api/exchanges/%2F/bad", json!({"durable": true}))
        .await;
    assert_eq!(
        (st, v["reason"].as_str()),
        (400, Some("field 'type' is missing"))
    );
    let (st, e) = s.get("/api/exchanges/%2F/logs").await;
    assert_eq!((st, e["type"].as_str()), (200, Some("topic")));
    let (st, d) = s.get("/api/exchanges/%2F/amq.default").await;
    assert_eq!((st, d["name"].as_str()), (200, Some("")));
    s.send("PUT", "/api/queues/%2F/errors", json!({})).await;

    let (st, _, _) = s
        .req(
            "POST",
            "/api/bindings/%2F/e/logs/q/errors",
            GUEST,
            Some(r#"{"routing_key": "*.error"}"#),
        )
        .await;
    assert_eq!(st, 201);
    s.send("POST", "/api/bindings/%2F/e/logs/q/errors", json!({}))
        .await;
    let (st, list) = s.get("/api/bindings/%2F/e/logs/q/errors").await;
    assert_eq!(st, 200);
    let mut keys: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["properties_key"].as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["*.error", "~"]);
    let (st, all) = s.get("/api/bindings").await;
    assert_eq!(st, 200);
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["source"] == "logs" && b["routing_key"] == "*.error"));
    let (st, qb) = s.get("/api/queues/%2F/errors/bindings").await;
    assert_eq!(st, 200);
    assert!(qb.as_array().unwrap().len() >= 2, "{qb}");

    let (st, _, _) = s
        .req("DELETE", "/api/bindings/%2F/e/logs/q/errors/~", GUEST, None)
        .await;
    assert_eq!(st, 204);
    let (st, _, _) = s
        .req("DELETE", "/api/bindings/%2F/e/logs/q/errors/~", GUEST, None)
        .await;
    assert_eq!(st, 404);
    let (st, _, _) = s
        .req(
            "DELETE",
            "/api/bindings/%2F/e/logs/q/errors/%2A.error",
            GUEST,
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (_, list) = s.get("/api/bindings/%2F/e/logs/q/errors").await;
    assert_eq!(list, json!([]));

    let (st, _, _) = s
        .req("DELETE", "/api/exchanges/%2F/logs", GUEST, None)
        .await;
    assert_eq!(st, 204);
    let (st, _) = s.get("/api/exchanges/%2F/logs").await;
    assert_eq!(st, 404);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_vhosts_permissions_policies() {
    let s = Server::start().await;
    let (st, _) = s
        .send(
            "PUT",
            "/api/users/bob",
            json!({"password": "pw", "tags": "management"}),
        )
        .await;
    assert_eq!(st, 201);
    let (st, u) = s.get("/api/users/bob").await;
    assert_eq!(st, 200);
    assert_eq!(u["tags"], json!(["management"]));
    assert!(u["password_hash"].as_str().is_some_and(|h| !h.is_empty()));
    // A password change keeps the tags.
    let (st, _) = s
        .send("PUT", "/api/users/bob", json!({"password": "pw2"}))
        .await;
    assert_eq!(st, 204);
    let (_, u) = s.get("/api/users/bob").await;
    assert_eq!(u["tags"], json!(["management"]));

    // bob reads, but is not an administrator.
    let bob = Some(("bob", "pw2"));
    let (st, _, _) = s.req("GET", "/api/overview", bob, None).await;
    assert_eq!(st, 200);
    let (st, _, body) = s.req("GET", "/api/users", bob, None).await;
    assert_eq!(st, 403, "{body}");
    // Without permissions he sees no vhost and may not declare there.
    let (_, _, body) = s.req("GET", "/api/vhosts", bob, None).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!([]));
    let (st, _, _) = s.req("PUT", "/api/queues/%2F/bobq", bob, Some("{}")).await;
    assert_eq!(st, 403);

    let (st, _) = s.send("PUT", "/api/vhosts/v1", json!({})).await;
    assert_eq!(st, 201);
    let (st, _) = s.send("PUT", "/api/vhosts/v1", json!({})).await;
    assert_eq!(st, 204);
    let (st, v) = s
        .send(
            "PUT",
            "/api/permissions/v1/bob",
            json!({"configure": "^bob", "write": ".*"}),
        )
        .await;
    assert_eq!(
        (st, v["reason"].as_str()),
        (400, Some("field 'read' is missing"))
    );
    let (st, _) = s
        .send(
            "PUT",
            "/api/permissions/v1/bob",
            json!({"configure": "^bob", "write": ".*", "read": ".*"}),
        )
        .await;
    assert_eq!(st, 201);
    let (st, p) = s.get("/api/permissions/v1/bob").await;
    assert_eq!((st, p["configure"].as_str()), (200, Some("^bob")));
    let (_, _, body) = s.req("GET", "/api/vhosts", bob, None).await;
    assert_eq!(names(&serde_json::from_str(&body).unwrap()), ["v1"]);
    let (st, _, body) = s.req("PUT", "/api/queues/v1/bobq", bob, Some("{}")).await;
    assert_eq!(st, 201, "{body}");
    let (st, _, _) = s.req("PUT", "/api/queues/v1/other", bob, Some("{}")).await;
    assert_eq!(st, 403);

    let (st, v) = s
        .send(
            "PUT",
            "/api/policies/v1/ttl",
            json!({"pattern": "^bob", "apply-to": "nothing", "definition": {}}),
        )
        .await;
    assert_eq!(st, 400);
    assert!(v["reason"].as_str().unwrap().contains("apply-to"), "{v}");
    let (st, _) = s
        .send(
            "PUT",
            "/api/policies/v1/ttl",
            json!({"pattern": "^bob", "apply-to": "queues", "definition": {"message-ttl": 1000}, "priority": 1}),
        )
        .await;
    assert_eq!(st, 201);
    let (st, list) = s.get("/api/policies").await;
    assert_eq!(st, 200);
    assert_eq!(list[0]["apply-to"], "queues");
    assert_eq!(list[0]["definition"]["message-ttl"], 1000);
    let (st, _, _) = s.req("DELETE", "/api/policies/v1/ttl", GUEST, None).await;
    assert_eq!(st, 204);

    let (st, _, _) = s
        .req("DELETE", "/api/permissions/v1/bob", GUEST, None)
        .await;
    assert_eq!(st, 204);
    let (st, _, _) = s.req("DELETE", "/api/users/bob", GUEST, None).await;
    assert_eq!(st, 204);
    let (st, _) = s.get("/api/users/bob").await;
    assert_eq!(st, 404);
    let (st, _, _) = s.req("DELETE", "/api/vhosts/v1", GUEST, None).await;
    assert_eq!(st, 204);
    let (st, _) = s.get("/api/vhosts/v1").await;
    assert_eq!(st, 404);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_round_trip() {
    let s = Server::start().await;
    s.send("PUT", "/api/vhosts/v2", json!({})).await;
    s.send(
        "PUT",
        "/api/users/carol",
        json!({"password": "pw", "tags": ["monitoring"]}),
    )
    .await;
    s.send(
        "PUT",
        "/api/permissions/v2/carol",
        json!({"configure": "", "write": ".*", "read": ".*"}),
    )
    .await;
    s.send("PUT", "/api/exchanges/v2/ex", json!({"type": "fanout"}))
        .await;
    s.send("PUT", "/api/queues/v2/dq", json!({"durable": true}))
        .await;
    s.send(
        "POST",
        "/api/bindings/v2/e/ex/q/dq",
        json!({"routing_key": "k"}),
    )
    .await;
    let (st, defs) = s.get("/api/definitions").await;
    assert_eq!(st, 200);
    assert!(
        defs["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == "dq" && q["vhost"] == "v2"),
        "{defs}"
    );
    assert!(
        defs["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "carol"),
        "{defs}"
    );

    let (st, _, _) = s.req("DELETE", "/api/vhosts/v2", GUEST, None).await;
    assert_eq!(st, 204);
    let (st, _, _) = s.req("DELETE", "/api/users/carol", GUEST, None).await;
    assert_eq!(st, 204);
    let (st, _) = s.get("/api/queues/v2/dq").await;
    assert_eq!(st, 404);

    let (st, _, body) = s
        .req("POST", "/api/definitions", GUEST, Some(&defs.to_string()))
        .await;
    assert_eq!(st, 204, "{body}");
    let (st, q) = s.get("/api/queues/v2/dq").await;
    assert_eq!((st, q["durable"].as_bool()), (200, Some(true)));
    let (_, b) = s.get("/api/bindings/v2/e/ex/q/dq").await;
    assert_eq!(b[0]["routing_key"], "k");
    let (_, _, body) = s
        .req("GET", "/api/overview", Some(("carol", "pw")), None)
        .await;
    assert!(
        body.contains("object_totals"),
        "carol's password hash came back: {body}"
    );

    let (st, v) = s
        .send(
            "POST",
            "/api/definitions",
            json!({"queues": [{"vhost": "v2"}]}),
        )
        .await;
    assert_eq!(st, 400);
    assert!(v["reason"].as_str().unwrap().contains("name"), "{v}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_without_auth() {
    let s = Server::start().await;
    s.send("PUT", "/api/queues/%2F/mq", json!({})).await;
    let (st, headers, body) = s.req("GET", "/metrics", None, None).await;
    assert_eq!(st, 200);
    assert!(
        headers.contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    for name in [
        "berth_broker_connections ",
        "berth_broker_channels ",
        "berth_broker_consumers ",
        "berth_broker_queues 1",
        "berth_broker_queue_messages_ready{vhost=\"/\",queue=\"mq\"} 0",
        "berth_broker_queue_messages_unacked{vhost=\"/\",queue=\"mq\"} 0",
        "berth_broker_messages_published_total ",
        "berth_broker_messages_delivered_total ",
        "berth_broker_process_resident_memory_bytes ",
        "berth_broker_memory_limit_bytes ",
        "berth_broker_disk_free_bytes ",
        "berth_broker_alarm{resource=\"memory\"} 0",
        "berth_broker_alarm{resource=\"disk\"} 0",
        "berth_broker_message_store_failed 0",
    ] {
        assert!(body.contains(name), "metrics lack {name:?}:\n{body}");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_get() {
    let s = Server::start().await;
    s.send("PUT", "/api/queues/%2F/pq", json!({"durable": false}))
        .await;
    let (st, v) = s
        .send(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            json!({
                "routing_key": "pq",
                "payload": "hello",
                "payload_encoding": "string",
                "properties": {"content_type": "text/plain", "headers": {"h": 1}, "delivery_mode": 2},
            }),
        )
        .await;
    assert_eq!((st, v.clone()), (200, json!({"routed": true})), "{v}");
    let (_, v) = s
        .send(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            json!({"routing_key": "nowhere", "payload": ""}),
        )
        .await;
    assert_eq!(v, json!({"routed": false}));
    let (st, v) = s
        .send(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            json!({"routing_key": "pq", "properties": {"bogus": 1}}),
        )
        .await;
    assert_eq!(
        (st, v["reason"].as_str()),
        (400, Some("property 'bogus' is unknown"))
    );
    s.send(
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        json!({"routing_key": "pq", "payload": "/w==", "payload_encoding": "base64"}),
    )
    .await;

    // Requeueing get: looks, leaves the messages in place.
    let (st, got) = s
        .send(
            "POST",
            "/api/queues/%2F/pq/get",
            json!({"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        )
        .await;
    assert_eq!(st, 200, "{got}");
    let got = got.as_array().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["payload"], "hello");
    assert_eq!(got[0]["payload_encoding"], "string");
    assert_eq!(got[0]["properties"]["content_type"], "text/plain");
    assert_eq!(got[0]["properties"]["headers"]["h"], 1);
    assert_eq!(got[0]["routing_key"], "pq");
    assert_eq!(got[1]["payload"], "/w==");
    assert_eq!(got[1]["payload_encoding"], "base64");
    let (_, q) = s.get("/api/queues/%2F/pq").await;
    assert_eq!(
        (
            q["messages_ready"].as_u64(),
            q["messages_unacknowledged"].as_u64()
        ),
        (Some(2), Some(0)),
        "{q}"
    );

    // Acking get takes them.
    let (_, got) = s
        .send(
            "POST",
            "/api/queues/%2F/pq/get",
            json!({"count": 5, "ackmode": "ack_requeue_false"}),
        )
        .await;
    assert_eq!(got.as_array().unwrap().len(), 2);
    let (_, q) = s.get("/api/queues/%2F/pq").await;
    assert_eq!(q["messages"], 0);
    let (st, _) = s.send("POST", "/api/queues/%2F/nope/get", json!({})).await;
    assert_eq!(st, 404);
    s.shutdown().await;
}
