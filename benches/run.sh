#!/usr/bin/env bash
# CourierX benchmarks, measured beside the peers (../shared/bench/peers) on the same machine in the
# same run. Prints a Markdown table and writes it to target/bench/results.md.
#
#   benches/run.sh                 # everything: CourierX on SQLite and PostgreSQL, then the peers
#   BACKENDS=sqlite benches/run.sh # only SQLite
#   SKIP_PEERS=1 benches/run.sh    # only CourierX
#   BIN=/path/to/courierx benches/run.sh  # measure that binary instead of building this tree
#
# (a) accept: wrk, 2 threads, $CONNS connections, $DURATION s, one send request per HTTP call
#     (benches/post.lua, the peers' own request shape) against an API-only `courierx serve`;
#     every 202 is a committed message row + job (SQLite WAL with synchronous=FULL; PostgreSQL
#     with its default synchronous_commit=on).
# (b) deliver: the queue filled by (a) is drained by `courierx serve` workers ($WORKERS in flight)
#     through the SMTP provider (pool of $WORKERS connections) into Postfix's smtp-sink.
# (c) batch accept: wrk, $BATCH_CONNS connections, benches/batch.lua (500 messages per request)
#     against an API-only server; every 202 is one transaction holding all its messages.
# Needs: wrk, smtp-sink (apt-get install wrk postfix), node/npm and redis-server for the peers,
# PostgreSQL on 127.0.0.1:5432 for the postgres backend.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BACKENDS=${BACKENDS:-"sqlite postgres"}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-50}
PORT=${PORT:-18080}
BATCH=${BATCH:-500}
BATCH_CONNS=${BATCH_CONNS:-8}
SINK_PORT=${SINK_PORT:-2525}
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
OUT=${OUT:-$ROOT/target/bench}
mkdir -p "$OUT"
RESULTS=$OUT/results.md
: > "$OUT/rows"

need() { command -v "$1" >/dev/null || { echo "bench: $1 is missing ($2)" >&2; exit 1; }; }
need wrk "apt-get install wrk"
need smtp-sink "apt-get install postfix"
need python3 "python3"

# BIN=path measures another build (e.g. the previous commit's) with the same script.
if [ -z "${BIN:-}" ]; then
  cargo build --release -q
  BIN=$ROOT/target/release/courierx
fi
J() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

SERVER_PID=""
stop_server() { if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; fi; }
SINK_PID=""
cleanup() { stop_server; [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true; }
trap cleanup EXIT

start_server() { # $1 = run_workers
  COURIERX_RUN_WORKERS=$1 COURIERX_LOG=warn COURIERX_SIGNUP=open COURIERX_WORKER_CONCURRENCY=$WORKERS \
    "$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$DATA" >>"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && return; sleep 0.1; done
  echo "bench: server did not start" >&2; exit 1
}

# Parses wrk --latency output into "req/s p50_ms p99_ms non2xx".
parse_wrk() {
  python3 - "$1" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(label):
    m = re.search(r'^\s*' + label + r'%\s+([\d.]+)(us|ms|s)\s*$', t, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == 'us' else v * 1000 if u == 's' else v
rps = float(re.search(r'Requests/sec:\s+([\d.]+)', t).group(1))
non = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', t)
print(f"{rps:.0f} {ms('50'):.2f} {ms('99'):.2f} {non.group(1) if non else 0}")
PY
}

queue_depth() { curl -s http://127.0.0.1:$PORT/metrics | awk '/^courierx_queue_depth /{print int($2)}'; }
sent_count() { curl -s http://127.0.0.1:$PORT/metrics | awk '/^courierx_messages\{status="sent"\}/{print int($2)}'; }

smtp-sink -u nobody 127.0.0.1:$SINK_PORT 2000 >/dev/null 2>&1 &
SINK_PID=$!
sleep 0.5

for backend in $BACKENDS; do
  DATA=$(mktemp -d)
  unset DATABASE_URL COURIERX_SECRET_KEY || true
  if [ "$backend" = postgres ]; then
    DB=courierx_bench_$$
    psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null
    # Over loopback, like the peers' Redis, without TLS (sqlx otherwise uses TLS whenever the
    # server offers it, which costs about a quarter of delivery throughput here). PG_PARAMS=
    # (empty) measures with the default instead.
    export DATABASE_URL="${PG_ADMIN%/*}/$DB${PG_PARAMS-?sslmode=disable}" COURIERX_SECRET_KEY=$(head -c32 /dev/urandom | base64)
  fi
  start_server false
  B=http://127.0.0.1:$PORT
  TOKEN=$(curl -s $B/api/v1/auth/register -H 'content-type: application/json' \
    -d '{"tenant":{"name":"Bench"},"user":{"email":"bench@bench.test","password":"benchmark password","name":"Bench"}}' | J '["access_token"]')
  PROJECT=$(curl -s $B/api/v1/projects -H "authorization: Bearer $TOKEN" -d '{"name":"Bench"}' | J '["id"]')
  KEY=$(curl -s $B/api/v1/projects/$PROJECT/api-keys -H "authorization: Bearer $TOKEN" -d '{"name":"bench"}' | J '["key"]')
  SMTP=$(curl -s $B/api/v1/providers -H "authorization: Bearer $TOKEN" \
    -d "{\"name\":\"sink\",\"type\":\"smtp\",\"config\":{\"host\":\"127.0.0.1\",\"port\":$SINK_PORT,\"security\":\"none\",\"max_connections\":$WORKERS}}" | J '["id"]')
  curl -s -X PATCH $B/api/v1/projects/$PROJECT -H "authorization: Bearer $TOKEN" -d "{\"default_provider_id\":\"$SMTP\"}" >/dev/null

  KEY=$KEY wrk -t2 -c"$CONNS" -d"${DURATION}s" -s benches/post.lua --latency $B/api/v1/messages > "$OUT/wrk-$backend.txt"
  read -r rps p50 p99 non2xx <<<"$(parse_wrk "$OUT/wrk-$backend.txt")"
  queued=$(queue_depth)
  echo "| CourierX ($backend) | accept: send request over HTTP, durable | $rps req/s | p50 $p50 ms, p99 $p99 ms | $queued messages queued, $non2xx non-2xx |" >> "$OUT/rows"
  stop_server

  start_server true
  t0=$(date +%s.%N)
  while [ "$(queue_depth)" != "0" ]; do sleep 0.2; done
  t1=$(date +%s.%N)
  sent=$(sent_count)
  rate=$(python3 -c "print(round($sent / ($t1 - $t0)))")
  echo "| CourierX ($backend) | deliver: queue → SMTP sink, $WORKERS connections | $rate msgs/s | – | $sent messages sent in $(python3 -c "print(round($t1 - $t0, 1))") s |" >> "$OUT/rows"
  stop_server

  # (c) batch accept: 500 messages per request into the API-only server; not delivered.
  start_server false
  KEY=$KEY BATCH=$BATCH wrk -t2 -c"$BATCH_CONNS" -d"${DURATION}s" -s benches/batch.lua --latency $B/api/v1/messages/batch > "$OUT/wrk-batch-$backend.txt"
  read -r rps p50 p99 non2xx <<<"$(parse_wrk "$OUT/wrk-batch-$backend.txt")"
  mps=$(python3 -c "print(round($rps * $BATCH))")
  echo "| CourierX ($backend) | accept: batch of $BATCH per request, durable | $mps msgs/s | p50 $p50 ms, p99 $p99 ms per batch | $rps batches/s, $BATCH_CONNS connections, $non2xx non-2xx |" >> "$OUT/rows"
  stop_server
  if [ "$backend" = postgres ]; then psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null; fi
  rm -rf "$DATA"
done

if [ -z "${SKIP_PEERS:-}" ]; then
  need node "node"; need redis-server "apt-get install redis-server"
  PEERS=$OUT/peers
  rm -rf "$PEERS"; cp -r "$ROOT/../shared/bench/peers" "$PEERS"; chmod -R u+w "$PEERS"
  (cd "$PEERS" && npm ci --silent --no-audit --no-fund >/dev/null 2>&1 || npm install --silent --no-audit --no-fund >/dev/null)
  RDIR=$(mktemp -d)
  redis-server --port 6391 --save "" --appendonly yes --appendfsync always --dir "$RDIR" --daemonize yes >/dev/null
  sleep 0.5
  node "$PEERS/http-accept.mjs" 9091 6391 & NODE_PID=$!
  sleep 1
  wrk -t2 -c"$CONNS" -d"${DURATION}s" -s benches/post.lua --latency http://127.0.0.1:9091/ > "$OUT/wrk-node.txt"
  kill $NODE_PID; wait $NODE_PID 2>/dev/null || true
  read -r rps p50 p99 non2xx <<<"$(parse_wrk "$OUT/wrk-node.txt")"
  echo "| Node + BullMQ (Redis appendfsync always) | accept: send request over HTTP, durable | $rps req/s | p50 $p50 ms, p99 $p99 ms | $non2xx non-2xx |" >> "$OUT/rows"
  node "$PEERS/bullmq-cycle.mjs" 20000 "$WORKERS" 6391 > "$OUT/bullmq.json"
  python3 - "$OUT/bullmq.json" >> "$OUT/rows" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"| BullMQ queue cycle (no-op jobs) | enqueue / process | {r['enqueue_per_s']} / {r['processed_per_s']} jobs/s | – | {r['jobs']} jobs, concurrency {r['worker_concurrency']} |")
PY
  redis-cli -p 6391 shutdown nosave >/dev/null 2>&1 || true
  node "$PEERS/nodemailer-pool.mjs" 20000 "$WORKERS" $SINK_PORT > "$OUT/nodemailer.json"
  python3 - "$OUT/nodemailer.json" >> "$OUT/rows" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"| nodemailer pooled SMTP | deliver: SMTP sink, {r['connections']} connections | {r['sent_per_s']} msgs/s | – | {r['messages']} messages |")
PY
fi

{
  echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores; wrk -t2 -c$CONNS -d${DURATION}s."
  echo
  echo "| System | What | Throughput | Latency | Notes |"
  echo "|---|---|---|---|---|"
  cat "$OUT/rows"
} > "$RESULTS"
cat "$RESULTS"
