#!/usr/bin/env python3
"""CourierX soak benchmark (stdlib only); benches/soak.sh runs every case and prints the table.

    soak.py crash    --bin B --backend sqlite|postgres [--servers 3] --out r.json
        Steady load of POST /api/v1/messages while one `serve` process is SIGKILLed and restarted
        --kills times; then waits for the queue to drain and checks every accepted id.
    soak.py fairness --bin B --backend sqlite|postgres --out r.json
        Tenant A gets 50,000 queued messages behind a slow relay; tenant B's time from 202 to
        `sent` is measured meanwhile.
    soak.py table r1.json r2.json ...   Markdown tables of the results.
"""
import argparse
import base64
import ctypes
import http.client
import json
import os
import queue
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
TERMINAL = {"sent", "delivered", "bounced", "complained", "failed", "cancelled", "suppressed", "expired"}
FROM_DOMAIN = "soak.test"


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- child processes

_libc = ctypes.CDLL(None, use_errno=True)
CHILDREN = []


def _die_with_parent():
    # PR_SET_PDEATHSIG: children die even if this script is SIGKILLed (e.g. by `timeout -k`).
    # Children are only spawned from the main thread, which lives until the end.
    _libc.prctl(1, signal.SIGKILL)


def spawn(args, env=None, logf=None):
    p = subprocess.Popen(args, env=env, stdout=logf or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    CHILDREN.append(p)
    return p


def kill_children():
    for p in CHILDREN:
        if p.poll() is None:
            p.kill()
    for p in CHILDREN:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_port(port, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not port_free(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Sink:
    def __init__(self, port, path, delay_ms=0):
        if not port_free(port):
            raise RuntimeError(f"port {port} is taken; set SINK_PORT")
        self.port, self.path = port, path
        self.proc = spawn([sys.executable, os.path.join(HERE, "smtp_sink.py"), "--port", str(port),
                           "--log", path, "--delay-ms", str(delay_ms)])
        wait_port(port)

    def ids(self):
        """Message uuids in the order received (Message-ID is <uuid@domain>)."""
        out = []
        with open(self.path) as f:
            for line in f:
                mid = line.split("\t", 1)[0].strip("<>")
                out.append(mid.split("@", 1)[0])
        return out


# ---------------------------------------------------------------- HTTP

_tls = threading.local()


def req(port, method, path, body=None, token=None, timeout=10.0):
    """One request on this thread's keep-alive connection to the port. Returns (status, json or
    None); raises OSError / HTTPException when the connection fails (the connection is dropped)."""
    conns = getattr(_tls, "conns", None)
    if conns is None:
        conns = _tls.conns = {}
    conn = conns.get(port)
    if conn is None:
        conn = conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.timeout = timeout
    if conn.sock:
        conn.sock.settimeout(timeout)
        # An idle keep-alive connection that is readable was closed by the server (it was killed):
        # reconnect, as HTTP clients do, so only requests really in flight at a kill are cut.
        if select.select([conn.sock], [], [], 0)[0]:
            conn.close()
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        raw = r.read()
    except BaseException:
        conn.close()
        conns.pop(port, None)
        raise
    if r.getheader("connection", "").lower() == "close":
        conn.close()
        conns.pop(port, None)
    try:
        return r.status, json.loads(raw) if raw else None
    except ValueError:
        return r.status, None


def ok(port, method, path, body=None, token=None, want=(200, 201, 202)):
    st, js = req(port, method, path, body, token)
    if st not in want:
        raise RuntimeError(f"{method} {path}: {st} {js}")
    return js


def metrics(port, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("courierx_") and " " in line:
            k, v = line.rsplit(" ", 1)
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def msg_count(m, status):
    return int(m.get(f'courierx_messages{{status="{status}"}}', 0))


# ---------------------------------------------------------------- the server

class Server:
    def __init__(self, binary, port, data_dir, env, logf):
        if not port_free(port):
            raise RuntimeError(f"port {port} is taken; set PORT")
        self.binary, self.port, self.data_dir, self.env, self.logf = binary, port, data_dir, env, logf
        self.proc = None
        self.up = False
        self.starts = 0

    def start(self, timeout=30):
        self.proc = spawn([self.binary, "serve", "--listen", f"127.0.0.1:{self.port}",
                           "--data-dir", self.data_dir], env=self.env, logf=self.logf)
        self.starts += 1
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server on {self.port} exited with {self.proc.returncode}; see {self.logf.name}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    c.close()
                    self.up = True
                    return
                c.close()
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"server on {self.port} not healthy after {timeout} s")

    def kill(self):
        self.up = False
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.up = False
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_env(args, db_url, secret):
    env = {k: v for k, v in os.environ.items() if not (k.startswith("COURIERX_") or k == "DATABASE_URL")}
    env.update(COURIERX_LOG="warn", COURIERX_SIGNUP="open", COURIERX_RUN_WORKERS="true",
               COURIERX_WORKER_CONCURRENCY=str(args.workers), COURIERX_LEASE_MS=str(args.lease_ms))
    if args.pg_pool:
        env["COURIERX_PG_MAX_CONNECTIONS"] = str(args.pg_pool)
    if db_url:
        env.update(DATABASE_URL=db_url, COURIERX_SECRET_KEY=secret)
    return env


class Database:
    """A fresh PostgreSQL database (dropped at the end), or nothing for SQLite."""

    def __init__(self, backend, admin_url, params, tag):
        self.backend, self.admin, self.url = backend, admin_url, None
        if backend == "postgres":
            self.name = f"courierx_soak_{os.getpid()}_{tag}"
            self.psql(f"DROP DATABASE IF EXISTS {self.name}", f"CREATE DATABASE {self.name}")
            self.url = f"{admin_url.rsplit('/', 1)[0]}/{self.name}{params}"
        self.secret = base64.b64encode(os.urandom(32)).decode()

    def psql(self, *sql):
        cmd = ["psql", self.admin, "-qX", "-v", "ON_ERROR_STOP=1", "-c", "SET client_min_messages TO warning"]
        for s in sql:
            cmd += ["-c", s]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=60)

    def drop(self):
        if self.url:
            try:
                self.psql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            except Exception as e:  # a leftover database is harmless; say so and go on
                log(f"could not drop {self.name}: {e}")


def setup_tenant(port, name, sink_port, workers):
    """Tenant + owner, project, API key and an SMTP provider into the sink (run.sh's steps)."""
    slug = name.lower().replace(" ", "")
    token = ok(port, "POST", "/api/v1/auth/register",
               {"tenant": {"name": name}, "user": {"email": f"{slug}@soak.test",
                                                  "password": "soak benchmark password", "name": name}})["access_token"]
    project = ok(port, "POST", "/api/v1/projects", {"name": name}, token)["id"]
    key = ok(port, "POST", f"/api/v1/projects/{project}/api-keys", {"name": "soak"}, token)["key"]
    smtp = ok(port, "POST", "/api/v1/providers",
              {"name": "sink", "type": "smtp",
               "config": {"host": "127.0.0.1", "port": sink_port, "security": "none",
                          "max_connections": min(workers, 100)}}, token)["id"]
    ok(port, "PATCH", f"/api/v1/projects/{project}", {"default_provider_id": smtp}, token)
    return key


def message(i):
    return {"from": f"Soak <noreply@{FROM_DOMAIN}>", "to": [f"user{i}@example.test"],
            "subject": f"Soak {i}", "text": "Hi there", "html": "<p>Hi there</p>"}


# ---------------------------------------------------------------- steady load

class Load:
    """POST /api/v1/messages at a fixed rate, round-robin over the servers that are up."""

    def __init__(self, servers, key, rate, threads):
        self.servers, self.key, self.rate = servers, key, rate
        self.q = queue.Queue(maxsize=threads * 4)
        self.lock = threading.Lock()
        self.accepted = []
        self.latency = []  # seconds from request to 202
        self.status = {}  # non-202 HTTP statuses
        self.refused = 0  # could not connect: the server was down
        self.lost_conn = 0  # the connection broke mid-request: the server was killed
        self.behind = 0  # ticks dropped because every sender thread was busy
        self.errors = {}
        self.samples_5xx = []
        self.rr = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(threads)]
        self.ticker = threading.Thread(target=self._tick, daemon=True)

    def start(self):
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()
        self.ticker.start()

    def stop(self):
        self.stopping.set()
        self.ticker.join()
        self.elapsed = time.monotonic() - self.t0
        for _ in self.threads:
            self.q.put(None)
        for t in self.threads:
            t.join(30)

    def _tick(self):
        i = 0
        while not self.stopping.is_set():
            due = self.t0 + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                self.q.put_nowait(i)
            except queue.Full:
                with self.lock:
                    self.behind += 1
            i += 1

    def _pick(self):
        with self.lock:
            up = [s for s in self.servers if s.up] or self.servers[:1]
            self.rr += 1
            return up[self.rr % len(up)]

    def _send(self):
        while True:
            i = self.q.get()
            if i is None:
                return
            s = self._pick()
            t = time.monotonic()
            try:
                st, js = req(s.port, "POST", "/api/v1/messages", message(i), self.key, timeout=10)
            except ConnectionRefusedError:
                with self.lock:
                    self.refused += 1
                continue
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.lost_conn += 1
                    n = type(e).__name__
                    self.errors[n] = self.errors.get(n, 0) + 1
                continue
            with self.lock:
                if st == 202 and js and js.get("id"):
                    self.accepted.append(js["id"])
                    self.latency.append(time.monotonic() - t)
                else:
                    self.status[st] = self.status.get(st, 0) + 1
                    if st >= 500 and len(self.samples_5xx) < 5:
                        self.samples_5xx.append(js)


def up_port(servers):
    for s in servers:
        if s.up:
            return s.port
    raise RuntimeError("no server is up")


def statuses(servers, key, ids, threads=8):
    """Each id's status through GET /api/v1/messages/{id}; a 404 is reported as `missing`."""
    port = up_port(servers)

    def one(mid):
        for attempt in range(5):
            try:
                st, js = req(port, "GET", f"/api/v1/messages/{mid}", token=key)
                if st == 200:
                    return mid, js
                if st == 404:
                    return mid, {"status": "missing"}
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.2 * (attempt + 1))
        return mid, {"status": "unreadable"}

    with ThreadPoolExecutor(threads) as ex:
        return dict(ex.map(one, ids))


# ---------------------------------------------------------------- case: crash soak

def run_crash(args):
    tmp = tempfile.mkdtemp(prefix="courierx-soak-")
    db = Database(args.backend, args.pg_admin, args.pg_params, f"crash{args.servers}")
    logf = open(os.path.join(tmp, "server.log"), "ab")
    servers = []
    try:
        sink = Sink(args.sink_port, os.path.join(tmp, "sink.log"))
        env = server_env(args, db.url, db.secret)
        for n in range(args.servers):
            d = os.path.join(tmp, f"data{n}")
            os.mkdir(d)
            servers.append(Server(args.bin, args.port + n, d, env, logf))
        # One at a time, so the first one creates the schema alone.
        for s in servers:
            s.start()
        key = setup_tenant(servers[0].port, "Soak", sink.port, args.workers)
        victim = servers[0]
        load = Load(servers, key, args.rate, args.threads)
        log(f"{args.backend}, {args.servers} serve: {args.rate} msgs/s, {args.kills} kills")
        load.start()
        rnd = random.Random(args.seed)
        leased_at_kill = []
        for k in range(args.kills):
            time.sleep(rnd.uniform(args.kill_min, args.kill_max))
            try:  # what the killed process may have in flight: an upper bound for duplicates
                leased_at_kill.append(int(metrics(victim.port, 2).get("courierx_queue_leased", 0)))
            except (OSError, http.client.HTTPException):
                leased_at_kill.append(None)
            victim.kill()
            victim.start()
            if (k + 1) % 10 == 0:
                log(f"{k + 1} kills, {len(load.accepted)} accepted")
        time.sleep(args.tail)
        load.stop()
        log(f"load stopped after {load.elapsed:.1f} s: {len(load.accepted)} accepted; draining")

        t_drain = time.monotonic()
        port = up_port(servers)
        while time.monotonic() - t_drain < args.drain_timeout:
            try:
                m = metrics(port)
                if int(m.get("courierx_queue_depth", -1)) == 0:
                    break
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(1)
        drain_s = time.monotonic() - t_drain
        # Every accepted id, one by one; for sent ones, check the sink has their Message-ID.
        st = statuses(servers, key, load.accepted)
        by_status = {}
        for js in st.values():
            by_status[js["status"]] = by_status.get(js["status"], 0) + 1
        lost = [mid for mid, js in st.items() if js["status"] not in TERMINAL]
        received = sink.ids()
        counts = {}
        for mid in received:
            counts[mid] = counts.get(mid, 0) + 1
        dup_ids = sum(1 for c in counts.values() if c > 1)
        extra = sum(c - 1 for c in counts.values() if c > 1)
        sent_not_in_sink = [mid for mid, js in st.items() if js["status"] == "sent" and mid not in counts]
        known = [x for x in leased_at_kill if x is not None]
        lat = sorted(load.latency)
        res = {
            "case": "crash", "backend": args.backend, "servers": args.servers, "rate": args.rate,
            "kills": len(leased_at_kill), "load_s": round(load.elapsed, 1), "drain_s": round(drain_s, 1),
            "accepted": len(load.accepted), "terminal": len(load.accepted) - len(lost), "lost": len(lost),
            "lost_ids": lost[:10], "by_status": by_status,
            "dup_ids": dup_ids, "dup_extra": extra, "sink_messages": len(received),
            "leased_at_kills": sum(known), "leased_unknown": len(leased_at_kill) - len(known),
            "http_5xx": sum(n for s, n in load.status.items() if s >= 500),
            "non_202": {str(s): n for s, n in sorted(load.status.items())},
            "refused": load.refused, "lost_conn": load.lost_conn, "conn_errors": load.errors,
            "behind": load.behind, "sent_not_in_sink": len(sent_not_in_sink),
            "accept_p50_ms": round(pct(lat, 50) * 1000, 1) if lat else None,
            "accept_p99_ms": round(pct(lat, 99) * 1000, 1) if lat else None,
            "samples_5xx": load.samples_5xx,
        }
        return res
    finally:
        for s in servers:
            s.stop()
        kill_children()
        db.drop()
        if not args.keep:
            subprocess.run(["rm", "-rf", tmp])
        else:
            log(f"kept {tmp}")


# ---------------------------------------------------------------- case: fairness

def ts_ms(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def run_fairness(args):
    tmp = tempfile.mkdtemp(prefix="courierx-fair-")
    db = Database(args.backend, args.pg_admin, args.pg_params, "fair")
    logf = open(os.path.join(tmp, "server.log"), "ab")
    server = None
    try:
        slow = Sink(args.sink_port, os.path.join(tmp, "slow.log"), args.slow_ms)
        fast = Sink(args.sink_port + 1, os.path.join(tmp, "fast.log"))
        server = Server(args.bin, args.port, os.path.join(tmp, "data"), server_env(args, db.url, db.secret), logf)
        os.mkdir(server.data_dir)
        server.start()
        key_a = setup_tenant(server.port, "Tenant A", slow.port, args.workers)
        key_b = setup_tenant(server.port, "Tenant B", fast.port, args.workers)
        body = json.dumps({"messages": [message(i) for i in range(500)]}).encode()
        batches = args.backlog // 500
        t = time.monotonic()

        def fill(_):
            st, js = req(server.port, "POST", "/api/v1/messages/batch", body, key_a, timeout=60)
            return sum(1 for it in (js or {}).get("data", []) if it.get("id")) if st == 202 else 0

        with ThreadPoolExecutor(4) as ex:
            a_accepted = sum(ex.map(fill, range(batches)))
        fill_s = time.monotonic() - t
        m = metrics(server.port)
        a_queued_start = msg_count(m, "queued") + msg_count(m, "sending")
        log(f"tenant A: {a_accepted} accepted in {fill_s:.1f} s, {a_queued_start} queued; tenant B starts")

        b_ids = []
        t = time.monotonic()
        for i in range(args.b_count):
            due = t + i / args.b_rate
            time.sleep(max(0, due - time.monotonic()))
            st, js = req(server.port, "POST", "/api/v1/messages", message(i), key_b)
            if st == 202:
                b_ids.append(js["id"])
        deadline = time.monotonic() + args.fair_timeout
        lat, created = {}, {}
        pending = list(b_ids)
        while pending and time.monotonic() < deadline:
            for mid, js in statuses([server], key_b, pending).items():
                if js.get("created_at"):
                    created[mid] = ts_ms(js["created_at"])
                if js["status"] in TERMINAL and js.get("sent_at"):
                    lat[mid] = ts_ms(js["sent_at"]) - created[mid]
            pending = [mid for mid in pending if mid not in lat]
            time.sleep(0.5)
        waited_s = time.monotonic() - t
        m = metrics(server.port)
        a_queued_end = max(0, msg_count(m, "queued") + msg_count(m, "sending") - len(pending))
        # A B message still unsent counts with what it has waited so far, marked as a lower bound.
        now = time.time() * 1000
        v = sorted([(x, False) for x in lat.values()] +
                   [(now - created[mid], True) for mid in pending if mid in created])
        return {
            "case": "fairness", "backend": args.backend, "backlog": a_accepted, "fill_s": round(fill_s, 1),
            "slow_ms": args.slow_ms, "workers": args.workers, "a_queued_start": a_queued_start,
            "b_accepted": len(b_ids), "b_sent": len(lat), "b_rate": args.b_rate, "waited_s": round(waited_s, 1),
            "p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "max_ms": v[-1] if v else None,
            "b_unsent": len(pending),
            "a_queued_end": a_queued_end, "a_delivered": len(slow.ids()),
        }
    finally:
        if server:
            server.stop()
        kill_children()
        db.drop()
        if not args.keep:
            subprocess.run(["rm", "-rf", tmp])


# ---------------------------------------------------------------- tables

def fmt_ms(x):
    """x: None or [milliseconds, is a lower bound]."""
    if x is None:
        return "–"
    ms, lower = x
    return (">" if lower else "") + (f"{ms / 1000:.1f} s" if ms >= 10000 else f"{ms:.0f} ms")


def table(paths):
    crash, fair = [], []
    for p in paths:
        try:
            r = json.load(open(p))
        except (OSError, ValueError):
            continue
        (crash if r["case"] == "crash" else fair).append(r)
    out = []
    if crash:
        out += ["| Run | Kills | Load | Accepted (202) | Terminal | Lost | Statuses | Delivered >1× (ids / extra copies) "
                "| Leased at kills | 5xx | Other non-202 | Refused / cut while down | Sent, not in sink |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in crash:
            name = f"{r['backend']}, {r['servers']} serve" + (", one killed" if r["servers"] > 1 else "")
            other = ", ".join(f"{k}: {v}" for k, v in r["non_202"].items() if int(k) < 500) or "0"
            sts = ", ".join(f"{k} {v}" for k, v in sorted(r["by_status"].items()))
            lost = str(r["lost"]) + (f" ({', '.join(r['lost_ids'])})" if r["lost"] else "")
            leased = str(r["leased_at_kills"]) + (f" (+{r['leased_unknown']} unread)" if r["leased_unknown"] else "")
            load = f"{r['rate']:g}/s for {r['load_s']} s, 202 p99 {r['accept_p99_ms']} ms"
            if r["behind"]:
                load += f", {r['behind']} sends skipped (load generator behind)"
            out.append(f"| {name} | {r['kills']} | {load} | {r['accepted']} | {r['terminal']} "
                       f"| {lost} | {sts} | {r['dup_ids']} / {r['dup_extra']} | {leased} | {r['http_5xx']} | {other} "
                       f"| {r['refused']} / {r['lost_conn']} | {r['sent_not_in_sink']} |")
    if fair:
        if out:
            out.append("")
        out += ["| Fairness | Tenant A queued when B starts | B sent | B p50 | B p99 | B max | A still queued at end |",
                "|---|---|---|---|---|---|---|"]
        for r in fair:
            out.append(f"| {r['backend']}: A {r['backlog']} behind a {r['slow_ms']} ms relay, B {r['b_accepted']} at "
                       f"{r['b_rate']:g}/s | {r['a_queued_start']} | {r['b_sent']} of {r['b_accepted']} within "
                       f"{r['waited_s']} s | {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p99_ms'])} | {fmt_ms(r['max_ms'])} "
                       f"| {r['a_queued_end']} |")
    print("\n".join(out))


def main():
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("crash", "fairness"):
        s = sub.add_parser(name)
        s.add_argument("--bin", required=True)
        s.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
        s.add_argument("--out", required=True)
        s.add_argument("--port", type=int, default=18180)
        s.add_argument("--sink-port", type=int, default=2626)
        s.add_argument("--workers", type=int, default=50)
        s.add_argument("--lease-ms", type=int, default=5000)
        s.add_argument("--pg-pool", type=int, default=0, help="COURIERX_PG_MAX_CONNECTIONS (0: the default)")
        s.add_argument("--pg-admin", default="postgres://postgres@127.0.0.1:5432/postgres")
        s.add_argument("--pg-params", default="?sslmode=disable")
        s.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    c = sub.choices["crash"]
    c.add_argument("--servers", type=int, default=1)
    c.add_argument("--kills", type=int, default=50)
    c.add_argument("--rate", type=float, default=200)
    c.add_argument("--threads", type=int, default=64)
    c.add_argument("--kill-min", type=float, default=0.5)
    c.add_argument("--kill-max", type=float, default=2.0)
    c.add_argument("--tail", type=float, default=2.0, help="seconds of load after the last restart")
    c.add_argument("--drain-timeout", type=float, default=240)
    c.add_argument("--seed", type=int, default=None)
    f = sub.choices["fairness"]
    f.add_argument("--backlog", type=int, default=50000)
    f.add_argument("--slow-ms", type=int, default=200)
    f.add_argument("--b-count", type=int, default=200)
    f.add_argument("--b-rate", type=float, default=10)
    f.add_argument("--fair-timeout", type=float, default=300, help="longest wait for B after its last send")
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+")
    a = p.parse_args()
    if a.cmd == "table":
        return table(a.files)
    try:
        res = run_crash(a) if a.cmd == "crash" else run_fairness(a)
    finally:
        kill_children()
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1)
    log(json.dumps({k: v for k, v in res.items() if k not in ("samples_5xx",)}))


if __name__ == "__main__":
    main()
