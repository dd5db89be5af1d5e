#!/usr/bin/env python3
"""pika scenarios for tests/broker.rs: `pika_client.py PORT SCENARIO [ARGS]`.

Prints `OK SCENARIO` and exits 0 when every check held; any failed check
raises (exit 1 with a traceback naming what differed).
"""
import ssl
import sys
import time

import pika
import pika.exceptions


def params(port, **kw):
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=port,
        credentials=pika.PlainCredentials("guest", "guest"),
        blocked_connection_timeout=30,
        socket_timeout=10,
        connection_attempts=1,
        **kw,
    )


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def basic(port):
    conn = pika.BlockingConnection(params(port))
    ch = conn.channel()
    ok = ch.queue_declare(queue="pq", durable=True)
    check(ok.method.queue == "pq", f"declare-ok names {ok.method.queue}")
    anon = ch.queue_declare(queue="", exclusive=True).method.queue
    check(anon.startswith("amq.gen-"), f"server-named {anon}")
    ch.exchange_declare(exchange="px", exchange_type="topic", durable=True)
    ch.queue_bind(queue="pq", exchange="px", routing_key="a.*")
    for i in range(10):
        ch.basic_publish(
            exchange="px",
            routing_key="a.b",
            body=f"m{i}".encode(),
            properties=pika.BasicProperties(delivery_mode=2, content_type="text/plain",
                                            headers={"n": i}),
        )
    ch.basic_publish(exchange="px", routing_key="b.b", body=b"unrouted")
    method, props, body = ch.basic_get(queue="pq")
    check(body == b"m0", f"get body {body!r}")
    check(method.message_count == 9, f"message_count {method.message_count}")
    check(props.headers == {"n": 0}, f"headers {props.headers}")
    check(props.content_type == "text/plain", f"content_type {props.content_type}")
    ch.basic_ack(method.delivery_tag)
    got = []
    ch.basic_qos(prefetch_count=5)
    for method, props, body in ch.consume("pq", inactivity_timeout=2):
        if method is None:
            break
        got.append(body.decode())
        ch.basic_ack(method.delivery_tag)
        if len(got) == 9:
            break
    ch.cancel()
    check(got == [f"m{i}" for i in range(1, 10)], f"consumed {got}")
    m = ch.basic_get(queue="pq")
    check(m == (None, None, None), f"get-empty {m}")
    ch.queue_delete(queue="pq")
    conn.close()
    print("OK basic")


def confirms(port):
    conn = pika.BlockingConnection(params(port))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(queue="cq")
    for i in range(50):
        ch.basic_publish(exchange="", routing_key="cq", body=b"x", mandatory=True)
    try:
        ch.basic_publish(exchange="", routing_key="nowhere", body=b"lost", mandatory=True)
        raise AssertionError("unroutable mandatory publish did not raise")
    except pika.exceptions.UnroutableError as e:
        msgs = e.messages
        check(len(msgs) == 1, f"returned {msgs}")
        check(msgs[0].body == b"lost", f"returned body {msgs[0].body!r}")
        check(msgs[0].method.reply_code == 312, f"reply_code {msgs[0].method.reply_code}")
        check(msgs[0].method.reply_text == "NO_ROUTE", f"reply_text {msgs[0].method.reply_text}")
    # Not mandatory: no error, just dropped.
    ch.basic_publish(exchange="", routing_key="nowhere", body=b"dropped")
    n = ch.queue_declare(queue="cq", passive=True).method.message_count
    check(n == 50, f"depth {n}")
    # reject-publish overflow nacks: pika raises NackError.
    ch.queue_declare(queue="full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.basic_publish(exchange="", routing_key="full", body=b"1")
    try:
        ch.basic_publish(exchange="", routing_key="full", body=b"2")
        raise AssertionError("publish into a full reject-publish queue was acked")
    except pika.exceptions.NackError:
        pass
    conn.close()
    print("OK confirms")


def nack_headers(port):
    conn = pika.BlockingConnection(params(port))
    ch = conn.channel()
    ch.queue_declare(queue="nq")
    ch.basic_publish(exchange="", routing_key="nq", body=b"again")
    method, props, body = ch.basic_get(queue="nq")
    check(not method.redelivered, "first get redelivered")
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, props, body = ch.basic_get(queue="nq")
    check(body == b"again" and method.redelivered, f"requeued {body!r} {method.redelivered}")
    ch.basic_reject(method.delivery_tag, requeue=False)
    check(ch.basic_get(queue="nq")[0] is None, "rejected message still there")

    ch.exchange_declare(exchange="hx", exchange_type="headers")
    ch.queue_declare(queue="h-all")
    ch.queue_declare(queue="h-any")
    ch.queue_bind(queue="h-all", exchange="hx",
                  arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(queue="h-any", exchange="hx",
                  arguments={"x-match": "any", "format": "pdf", "type": "report"})
    for name, h in [("both", {"format": "pdf", "type": "report"}),
                    ("one", {"format": "pdf", "type": "log"}),
                    ("none", {"format": "zip"})]:
        ch.basic_publish(exchange="hx", routing_key="", body=name.encode(),
                         properties=pika.BasicProperties(headers=h))

    def drain(q):
        out = []
        while True:
            m, _, b = ch.basic_get(queue=q, auto_ack=True)
            if m is None:
                return sorted(out)
            out.append(b.decode())

    check(drain("h-all") == ["both"], "h-all")
    check(drain("h-any") == ["both", "one"], "h-any")
    conn.close()
    print("OK nack_headers")


def channel_error(port):
    conn = pika.BlockingConnection(params(port))
    ch = conn.channel()
    try:
        ch.queue_declare(queue="missing", passive=True)
        raise AssertionError("passive declare of a missing queue succeeded")
    except pika.exceptions.ChannelClosedByBroker as e:
        check(e.reply_code == 404, f"reply_code {e.reply_code}")
        check(e.reply_text == "NOT_FOUND - no queue 'missing' in vhost '/'",
              f"reply_text {e.reply_text}")
    check(conn.is_open, "connection closed by a channel error")
    ch2 = conn.channel()
    ch2.queue_declare(queue="fine")
    ch2.basic_publish(exchange="", routing_key="fine", body=b"ok")
    m, _, b = ch2.basic_get(queue="fine", auto_ack=True)
    check(b == b"ok", f"after error {b!r}")
    try:
        ch2.basic_ack(delivery_tag=99)
        ch2.queue_declare(queue="fine", passive=True)
        raise AssertionError("unknown delivery tag accepted")
    except pika.exceptions.ChannelClosedByBroker as e:
        check(e.reply_code == 406, f"reply_code {e.reply_code}")
        check(e.reply_text == "PRECONDITION_FAILED - unknown delivery tag 99",
              f"reply_text {e.reply_text}")
    # Wrong password: the connection is refused with ACCESS_REFUSED.
    try:
        pika.BlockingConnection(pika.ConnectionParameters(
            host="127.0.0.1", port=port, connection_attempts=1,
            credentials=pika.PlainCredentials("guest", "nope")))
        raise AssertionError("bad password accepted")
    except pika.exceptions.ProbableAuthenticationError as e:
        check("ACCESS_REFUSED" in str(e), f"auth error {e}")
    conn.close()
    print("OK channel_error")


def tls(port, tls_port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = True
    p = pika.ConnectionParameters(
        host="localhost",
        port=int(tls_port),
        credentials=pika.PlainCredentials("guest", "guest"),
        ssl_options=pika.SSLOptions(ctx, server_hostname="localhost"),
        connection_attempts=1,
        socket_timeout=10,
    )
    conn = pika.BlockingConnection(p)
    ch = conn.channel()
    ch.queue_declare(queue="tlsq")
    ch.basic_publish(exchange="", routing_key="tlsq", body=b"secret" * 1000)
    m, _, b = ch.basic_get(queue="tlsq", auto_ack=True)
    check(b == b"secret" * 1000, "tls round trip")
    conn.close()
    # The plain port still works alongside.
    conn = pika.BlockingConnection(params(port))
    ch = conn.channel()
    n = ch.queue_declare(queue="tlsq", passive=True).method.message_count
    check(n == 0, f"depth {n}")
    conn.close()
    print("OK tls")


def main():
    port = int(sys.argv[1])
    scenario = sys.argv[2]
    fn = {
        "basic": basic,
        "confirms": confirms,
        "nack_headers": nack_headers,
        "channel_error": channel_error,
        "tls": tls,
    }[scenario]
    t0 = time.time()
    fn(port, *sys.argv[3:])
    print(f"took {time.time() - t0:.2f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
