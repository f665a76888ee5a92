#!/usr/bin/env bash
# CourierX soak: a steady load of POST /api/v1/messages through HTTP while `courierx serve` is
# SIGKILLed and restarted $KILLS times, delivering into a local SMTP sink (benches/smtp_sink.py)
# that records every Message-ID; then every accepted id is checked for a terminal state and the
# sink log for duplicates. Prints a Markdown table and writes it to target/bench/soak.md.
#
#   benches/soak.sh                           # SQLite, PostgreSQL, 3 serve on PostgreSQL, fairness
#   BIN=/path/to/courierx KILLS=3 benches/soak.sh   # a given binary, a short smoke run
#   BACKENDS=sqlite SKIP_MULTI=1 SKIP_FAIRNESS=1 benches/soak.sh
#
# Env: BIN (default: cargo build --release, target/release/courierx), KILLS (50), RATE (200 msgs/s),
# BACKENDS ("sqlite postgres"), SKIP_MULTI, SKIP_FAIRNESS, FAIR_BACKEND (sqlite), LEASE_MS (5000),
# WORKERS (50), PORT (18180), SINK_PORT (2626), PG_ADMIN, RUN_TIMEOUT (900 s per case).
# Needs python3 (stdlib only), and psql + PostgreSQL on 127.0.0.1:5432 for the PostgreSQL cases.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
KILLS=${KILLS:-50}
RATE=${RATE:-200}
BACKENDS=${BACKENDS:-"sqlite postgres"}
FAIR_BACKEND=${FAIR_BACKEND:-sqlite}
LEASE_MS=${LEASE_MS:-5000}
WORKERS=${WORKERS:-50}
PORT=${PORT:-18180}
SINK_PORT=${SINK_PORT:-2626}
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
OUT=$ROOT/target/bench
mkdir -p "$OUT"
rm -f "$OUT"/soak-*.json

if [ -z "${BIN:-}" ]; then
  cargo build --release -q
  BIN=$ROOT/target/release/courierx
fi
[ -x "$BIN" ] || { echo "soak: $BIN is not an executable" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
needs_pg=""
case " $BACKENDS " in *" postgres "*) needs_pg=1 ;; esac
[ -n "${SKIP_MULTI:-}" ] || needs_pg=1
[ -n "${SKIP_FAIRNESS:-}" ] || [ "$FAIR_BACKEND" != postgres ] || needs_pg=1
if [ -n "$needs_pg" ] && ! command -v psql >/dev/null; then
  echo "soak: psql is missing (apt-get install postgresql-client)" >&2; exit 1
fi

# Each case runs under `timeout`, which SIGTERMs soak.py (it then stops its servers and sinks and
# drops its database); its children also die with it if it is killed outright.
CHILD=""
cleanup() { if [ -n "$CHILD" ]; then kill -TERM "$CHILD" 2>/dev/null || true; wait "$CHILD" 2>/dev/null || true; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM
COMMON=(--bin "$BIN" --port "$PORT" --sink-port "$SINK_PORT" --workers "$WORKERS" --lease-ms "$LEASE_MS" --pg-admin "$PG_ADMIN")
FAILED=()
run() { # $1 = name, then soak.py arguments
  local name=$1; shift
  timeout -k 10 "$RUN_TIMEOUT" python3 benches/soak.py "$@" "${COMMON[@]}" --out "$OUT/soak-$name.json" &
  CHILD=$!
  if ! wait "$CHILD"; then FAILED+=("$name"); echo "soak: $name failed, see above" >&2; fi
  CHILD=""
}

n=0
for backend in $BACKENDS; do
  n=$((n + 1))
  run "$n-$backend" crash --backend "$backend" --kills "$KILLS" --rate "$RATE"
done
[ -n "${SKIP_MULTI:-}" ] || run 8-multi crash --backend postgres --servers 3 --kills "$KILLS" --rate "$RATE" --pg-pool 10 # 3 × 10 of PostgreSQL's 100 connections
[ -n "${SKIP_FAIRNESS:-}" ] || run 9-fairness fairness --backend "$FAIR_BACKEND"

{
  echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores; $("$BIN" --version 2>/dev/null || echo courierx); KILLS=$KILLS, RATE=$RATE msgs/s, lease ${LEASE_MS} ms, $WORKERS workers per process."
  echo
  python3 benches/soak.py table "$OUT"/soak-*.json
  if [ ${#FAILED[@]} -gt 0 ]; then echo; echo "Failed (no figures): ${FAILED[*]}"; fi
} > "$OUT/soak.md"
cat "$OUT/soak.md"
[ ${#FAILED[@]} -eq 0 ]
