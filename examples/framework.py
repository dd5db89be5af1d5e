#!/usr/bin/env python3
"""A minimal berth framework: runs N shell commands on a berth cluster.

Standard library only (Python 3.7+), meant to be copied and changed. It
speaks berth's scheduler API (docs/scheduler-api.md), a JSON version of
Mesos's v1 scheduler API:

  1. POST /api/v1/scheduler {"type": "SUBSCRIBE", ...} answers 200 with a
     Mesos-Stream-Id header and a never-ending RecordIO body of events
     ("<length>\\n<json>" records).
  2. Every other call is a separate POST with the same path, the
     Mesos-Stream-Id header and "framework_id" in the body; it answers 202.
  3. A server that is not the leader answers 307 with Location on the
     leader; during an election servers answer 503.

The framework asks for offers sized for its tasks (REQUEST), launches its
tasks from OFFERS, declines what it does not use, SUPPRESSes offers once
every task is launched, acknowledges every UPDATE that has a uuid, and
tears itself down (TEARDOWN) when all tasks have ended.

    python3 framework.py --server 127.0.0.1:5050 --token "$BERTH_TOKEN" \\
        --tasks 3 --cmd 'echo hello from $HOSTNAME; sleep 5'

Exit status: 0 when every task FINISHED, 1 when a task FAILED, was KILLED
or LOST more often than --retries allows, 2 on usage or connection errors.
"""

import argparse
import http.client
import json
import os
import signal
import ssl
import sys
import time
import urllib.parse

API_PATH = "/api/v1/scheduler"
STREAM_ID_HEADER = "Mesos-Stream-Id"
MAX_REDIRECTS = 5
# Largest RecordIO record accepted (the server's own limit).
MAX_RECORD = 64 << 20
TOKEN_FILE = "/var/lib/berth/cluster-token"
CACERT_FILE = "/var/lib/berth/server/ca.pem"


class ApiError(Exception):
    pass


class ErrorEvent(Exception):
    """The server ended our subscription with an ERROR event (e.g. another
    instance subscribed with our id): stop without tearing down."""


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class Connection:
    """HTTP requests to the cluster, following redirects to the leader
    and moving over the given servers when one cannot be reached."""

    def __init__(self, servers, token, cacert=None, timeout=10.0):
        self.servers = servers
        self.current = servers[0]
        self.token = token
        self.timeout = timeout
        # With a CA file the servers speak HTTPS (every cluster with a
        # token does); only that CA is trusted.
        self.tls = ssl.create_default_context(cafile=cacert) if cacert else None
        if self.tls:
            # Servers are reached by IP and their certificate is checked
            # against the cluster CA only (docs/cluster-tls.md).
            self.tls.check_hostname = False
        self.scheme = "https" if self.tls else "http"

    def _connect(self, server, timeout):
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise ApiError("server %r: expected host:port" % server)
        host = host.strip("[]")
        if self.tls:
            return http.client.HTTPSConnection(host, int(port), timeout=timeout,
                                               context=self.tls)
        return http.client.HTTPConnection(host, int(port), timeout=timeout)

    def headers(self, stream_id=None):
        h = {"Content-Type": "application/json",
             "Accept": "application/json"}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        if stream_id:
            h[STREAM_ID_HEADER] = stream_id
        return h

    def post(self, body, stream_id=None, deadline_s=30.0):
        """POSTs a call; returns (connection, response) with a 2xx status.
        The caller reads the response and closes the connection."""
        payload = json.dumps(body).encode()
        end = time.monotonic() + deadline_s
        server, path, redirects, backoff = self.current, API_PATH, 0, 0.2
        last = "no attempt made"
        while time.monotonic() < end:
            conn = self._connect(server, self.timeout)
            try:
                conn.request("POST", path, payload, self.headers(stream_id))
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                last = "%s: %s" % (server, e)
                server, path = self._next(server), API_PATH
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if resp.status in (307, 308):
                location = resp.getheader("Location", "")
                resp.read()
                conn.close()
                redirects += 1
                if redirects > MAX_REDIRECTS or not location:
                    raise ApiError("%s: bad or too many redirects (last %r)"
                                   % (server, location))
                url = urllib.parse.urlsplit(
                    urllib.parse.urljoin("%s://%s%s" % (self.scheme, server, path), location))
                server = url.netloc
                path = url.path + ("?" + url.query if url.query else "")
                continue
            if resp.status == 503:
                last = "%s: %s" % (server, error_text(resp))
                conn.close()
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if resp.status >= 300:
                msg = error_text(resp)
                conn.close()
                raise ApiError("%s %s: %s" % (body.get("type"), resp.status, msg))
            self.current = server
            return conn, resp
        raise ApiError("no leader answered in %.0f s: %s" % (deadline_s, last))

    def _next(self, server):
        if server in self.servers:
            i = self.servers.index(server)
            return self.servers[(i + 1) % len(self.servers)]
        return self.servers[0]


def error_text(resp):
    raw = resp.read()
    try:
        return json.loads(raw)["message"]
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", "replace").strip() or resp.reason


def records(resp):
    """Yields the JSON events of a RecordIO body."""
    buf = b""
    while True:
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) > 20:
                raise ApiError("recordio: length line too long")
            chunk = resp.read1(65536)
            if not chunk:
                return
            buf += chunk
            continue
        try:
            size = int(buf[:nl].strip())
        except ValueError:
            raise ApiError("recordio: bad length line %r" % buf[:nl])
        if size > MAX_RECORD:
            raise ApiError("recordio: record of %d bytes is too large" % size)
        while len(buf) < nl + 1 + size:
            chunk = resp.read1(65536)
            if not chunk:
                return
            buf += chunk
        record, buf = buf[nl + 1:nl + 1 + size], buf[nl + 1 + size:]
        yield json.loads(record)


class Framework:
    def __init__(self, args, conn):
        self.args = args
        self.conn = conn
        self.framework_id = None
        self.stream_id = None
        self.run = os.urandom(3).hex()
        self.need = {"cpus": args.cpus, "mem": args.mem, "disk": args.disk}
        # Per task index: attempts used and outcome (None while not done).
        self.attempts = [0] * args.tasks
        self.outcome = [None] * args.tasks
        self.live = {}  # task_id -> index
        self.suppressed = None  # not known until we say it
        self.requested = None  # count of the last REQUEST

    # ------------------------------------------------------------ calls

    def call(self, body):
        """Sends one call (not SUBSCRIBE); expects 202."""
        body = dict(body, framework_id=self.framework_id)
        try:
            conn, resp = self.conn.post(body, stream_id=self.stream_id)
        except ApiError as e:
            log("call failed: %s" % e)
            return False
        resp.read()
        conn.close()
        return True

    def pending(self):
        return [i for i in range(self.args.tasks)
                if self.outcome[i] is None
                and i not in self.live.values()]

    def update_demand(self):
        """Says what we want, only when it changes: REQUEST (offers cut to
        the size of our tasks, see the docs) and REVIVE while tasks wait,
        SUPPRESS when none does. None means not said yet on this
        subscription."""
        pending = len(self.pending())
        if pending:
            if self.requested != pending:
                self.call({"type": "REQUEST", "resources": self.need,
                           "count": pending})
                self.requested = pending
            if self.suppressed is not False:
                self.call({"type": "REVIVE"})
                self.suppressed = False
        elif self.suppressed is not True:
            self.call({"type": "SUPPRESS"})
            self.suppressed = True
            self.requested = None

    # ------------------------------------------------------------ events

    def on_subscribed(self, ev):
        self.framework_id = ev["framework_id"]
        log("subscribed as framework %s (stream %s)"
            % (self.framework_id, self.stream_id))
        # Ask about the tasks we believe live (none on the first
        # subscription): an UPDATE answers for each, so those that ended
        # while we were away are learnt too.
        self.call({"type": "RECONCILE", "tasks": [
            {"task_id": t} for t in self.live]})
        self.suppressed = None
        self.requested = None
        self.update_demand()

    def fits(self, free):
        return (free["cpus"] + 1e-9 >= self.need["cpus"]
                and free["mem"] >= self.need["mem"]
                and free["disk"] >= self.need["disk"])

    def on_offers(self, offers):
        pending = self.pending()
        unused = []
        for offer in offers:
            free = dict(offer["resources"])
            tasks = []
            while pending and self.fits(free):
                i = pending.pop(0)
                task_id = "%s.%s.%d.%d" % (self.args.name, self.run, i,
                                           self.attempts[i])
                self.attempts[i] += 1
                tasks.append({
                    "task_id": task_id,
                    "name": "%s.%d" % (self.args.name, i),
                    "agent_id": offer["agent_id"],
                    "resources": self.need,
                    "kind": "command",
                    "shell": self.args.cmd,
                    "env": {"TASK_INDEX": str(i)},
                    "labels": {"framework": self.args.name,
                               "index": str(i)},
                })
                self.live[task_id] = i
                for k in ("cpus", "mem", "disk"):
                    free[k] -= self.need[k]
            if not tasks:
                unused.append(offer["id"])
                continue
            log("launching %s on %s" % (", ".join(t["task_id"] for t in tasks),
                                        offer["hostname"]))
            self.call({
                "type": "ACCEPT",
                "offer_ids": [offer["id"]],
                "operations": [{"type": "LAUNCH", "task_infos": tasks}],
                "filters": {"refuse_seconds": 1.0},
            })
        if unused:
            self.call({"type": "DECLINE", "offer_ids": unused,
                       "filters": {"refuse_seconds": 5.0}})
        self.update_demand()

    def on_update(self, status):
        task_id, state = status["task_id"], status["state"]
        extra = []
        for key in ("reason", "exit_code", "message"):
            if status.get(key) is not None:
                extra.append("%s=%s" % (key, status[key]))
        log("update %s %s on %s %s" % (task_id, state, status.get("agent_id"),
                                       " ".join(extra)))
        if status.get("uuid"):
            self.call({"type": "ACKNOWLEDGE", "agent_id": status["agent_id"],
                       "task_id": task_id, "uuid": status["uuid"]})
        i = self.live.get(task_id)
        if i is None:
            return
        if state == "FINISHED":
            del self.live[task_id]
            self.outcome[i] = "FINISHED"
        elif state in ("FAILED", "KILLED", "LOST"):
            del self.live[task_id]
            if self.attempts[i] > self.args.retries:
                self.outcome[i] = state
                log("task %d gave up after %d attempts" % (i, self.attempts[i]))
            else:
                log("task %d will be launched again" % i)
        self.update_demand()

    def done(self):
        return all(o is not None for o in self.outcome)

    # ------------------------------------------------------------ loop

    def subscribe(self):
        info = {"name": self.args.name, "role": self.args.role,
                "failover_timeout_secs": self.args.failover_timeout}
        body = {"type": "SUBSCRIBE", "framework_info": info}
        if self.framework_id:
            # Re-subscribing with our id keeps our tasks.
            info["id"] = self.framework_id
            body["framework_id"] = self.framework_id
        conn, resp = self.conn.post(body)
        self.stream_id = resp.getheader(STREAM_ID_HEADER)
        if not self.stream_id:
            conn.close()
            raise ApiError("SUBSCRIBE: no %s header in the answer"
                           % STREAM_ID_HEADER)
        return conn, resp

    def run_stream(self, conn, resp):
        """Handles events until the stream ends or we are done."""
        for ev in records(resp):
            kind = ev.get("type")
            if kind == "SUBSCRIBED":
                # Missing three heartbeats means the connection is dead.
                hb = float(ev.get("heartbeat_interval_seconds") or 15)
                if conn.sock is not None:
                    conn.sock.settimeout(max(3 * hb, 5))
                self.on_subscribed(ev)
            elif kind == "OFFERS":
                self.on_offers(ev.get("offers", []))
            elif kind == "UPDATE":
                self.on_update(ev["status"])
            elif kind == "RESCIND":
                log("offer %s rescinded" % ev.get("offer_id"))
            elif kind == "FAILURE":
                log("agent %s failed" % ev.get("agent_id"))
            elif kind == "ERROR":
                raise ErrorEvent(ev.get("message"))
            elif kind == "HEARTBEAT":
                pass
            else:
                log("ignoring unknown event %r" % kind)
            if self.done():
                return


def default_cacert():
    """The CA `berth up`'s embedded server writes next to its data."""
    return CACERT_FILE if os.path.exists(CACERT_FILE) else None


def default_token():
    """The token `berth up` keeps for its embedded cluster (root only)."""
    try:
        with open(TOKEN_FILE) as f:
            return f.read().strip()
    except OSError:
        return ""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", "--servers",
                   default=os.environ.get("BERTH_SERVERS", "127.0.0.1:5050"),
                   help="host:port of a server, or several separated by commas "
                        "(default: $BERTH_SERVERS or 127.0.0.1:5050)")
    p.add_argument("--token", default=os.environ.get("BERTH_TOKEN") or default_token(),
                   help="cluster token (default: $BERTH_TOKEN, or the one "
                        "`berth up` wrote to %s)" % TOKEN_FILE)
    p.add_argument("--cacert", default=os.environ.get("BERTH_CACERT") or default_cacert(),
                   help="the cluster CA certificate (a server writes it to DATA_DIR/ca.pem; "
                        "default: $BERTH_CACERT, or %s if it exists); without it, plain HTTP"
                        % CACERT_FILE)
    p.add_argument("--name", default="example",
                   help="framework name, also the start of task ids")
    p.add_argument("--role", default="*", help="role for DRF accounting")
    p.add_argument("--tasks", type=int, default=3, help="how many tasks to run")
    p.add_argument("--cmd", default="sleep 5", help="shell command of each task")
    p.add_argument("--cpus", type=float, default=0.1, help="cpus per task")
    p.add_argument("--mem", type=int, default=32, help="MiB of memory per task")
    p.add_argument("--disk", type=int, default=0, help="MiB of disk per task")
    p.add_argument("--retries", type=int, default=0,
                   help="launches again of a task that FAILED, was KILLED or LOST")
    p.add_argument("--failover-timeout", type=float, default=60.0,
                   help="seconds our tasks survive a disconnection")
    args = p.parse_args()
    if args.tasks < 1 or args.cpus <= 0 or args.mem < 1 or args.retries < 0:
        p.error("--tasks, --cpus and --mem must be positive, --retries not negative")

    servers = [s.strip() for s in args.server.split(",") if s.strip()]
    fw = Framework(args, Connection(servers, args.token, args.cacert))

    def on_signal(signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)

    failures = 0
    status = None
    try:
        while status is None:
            try:
                conn, resp = fw.subscribe()
            except ApiError as e:
                failures += 1
                if failures > 5 or fw.framework_id is None:
                    log("subscribe failed: %s" % e)
                    return 2
                log("subscribe failed, retrying: %s" % e)
                time.sleep(1)
                continue
            failures = 0
            try:
                fw.run_stream(conn, resp)
                if fw.done():
                    # While the stream is open: only a live subscription
                    # may call.
                    fw.call({"type": "TEARDOWN"})
                    finished = fw.outcome.count("FINISHED")
                    log("%d of %d tasks finished" % (finished, args.tasks))
                    status = 0 if finished == args.tasks else 1
            except KeyboardInterrupt:
                log("interrupted; tearing down")
                fw.call({"type": "TEARDOWN"})
                status = 130
            except ErrorEvent as e:
                log("error event: %s" % e)
                status = 2
            except ApiError as e:
                log("%s; tearing down" % e)
                fw.call({"type": "TEARDOWN"})
                status = 2
            except (OSError, http.client.HTTPException, ValueError) as e:
                log("stream broken: %s" % e)
            finally:
                conn.close()
            if status is None:
                log("stream ended; subscribing again")
                time.sleep(0.5)
    except KeyboardInterrupt:
        # Not subscribed: our tasks end after the failover timeout.
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
