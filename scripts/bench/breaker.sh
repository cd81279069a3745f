#!/usr/bin/env bash
# scripts/bench/breaker.sh — what the circuit breaker costs, and what it saves.
#
#   fast fail   keel service --redis in front of a paused redis-server: one request trips
#               the breaker (it waits out the 2 s timeout), then GET / is measured while
#               the breaker is open — every answer is "The counter is temporarily
#               disabled!" without asking Redis. Target: p99 under 1 ms. Measured twice:
#               wrk --latency (closed loop, as fast as the machine goes), and keel load
#               --rate RATE (open loop at a fixed rate; its service time, from the actual
#               send, is the latency without the queueing a saturated machine adds).
#   closed      cargo bench -p keel-resilience --bench breaker: the cost every call pays
#               through a closed breaker (acquire a permit, record a success).
#
# Everything on 127.0.0.1 with free ports, in a temp dir; the breaker stays open for the
# whole run (open=10m), and the script checks that Redis was asked exactly once and that
# every other answer was a refusal by the breaker. For scale, the same load on the
# service's GET /health (no breaker, no Redis) follows: what the machine and the HTTP
# stack cost alone. Nothing is pinned to a core: the service's two worker threads on one
# core would preempt each other and make a tail of their own.
#
# Usage:  scripts/bench/breaker.sh
# Knobs (environment): DURATION=10 (seconds, at most 10)  CONNS=8  THREADS=1  RATE=2000
#                      KEEP_TMP=1 (keep logs)  SKIP_BUILD=1 (use the keel already built)
#                      SKIP_CRITERION=1 (fast-fail figure only)
#                      CARGO_TARGET_DIR (where cargo builds; target by default)
#
# Needs root (or sudo) only to install redis-server, wrk and curl when missing.
# A benchmark, not a test: never part of scripts/test.
set -euo pipefail

DURATION=${DURATION:-10}
CONNS=${CONNS:-8}
THREADS=${THREADS:-1}
RATE=${RATE:-2000}
READY_TIMEOUT=30 # seconds to wait for a server before giving up

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# log, die, require_whole_numbers, install_packages, BIN_DIR, bench_init, start,
# wait_until, free_port, wrk_field: see lib.sh.
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh # the script runs from the repository root (cd above)

require_whole_numbers DURATION CONNS THREADS RATE
((DURATION <= 10)) || die "DURATION is at most 10 seconds, not $DURATION"

# --- packages ---------------------------------------------------------------------------

packages=()
command -v redis-server >/dev/null || packages+=(redis-server)
command -v wrk >/dev/null || packages+=(wrk)
command -v curl >/dev/null || packages+=(curl)
command -v jq >/dev/null || packages+=(jq)
install_packages "${packages[@]}"

# --- build ------------------------------------------------------------------------------

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building keel (release)"
    cargo build --release -p keel --locked >&2
fi
KEEL=$BIN_DIR/keel
[[ -x $KEEL ]] || die "$KEEL not found (build it, or unset SKIP_BUILD)"

# --- processes and cleanup --------------------------------------------------------------

bench_init keel-breaker-bench

redis_ping() {
    local reply
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'PING\r\n' >&3
    read -r -t 1 reply <&3 || true
    exec 3<&-
    [[ $reply == +PONG* ]]
}

# metric NAME{LABELS}: the value of one sample of the service's /metrics.
metric() {
    curl -fsS --max-time 2 "$URL/metrics" | awk -v s="$1" 'index($0, s" ") == 1 {print $2}'
}

# --- fast fail through keel service -----------------------------------------------------

REDIS_PORT=$(free_port)
SERVICE_PORT=$(free_port)
URL=http://127.0.0.1:$SERVICE_PORT

start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$TMP"
REDIS_PID=${PID_OF[redis]}
wait_until redis-server redis_ping "$REDIS_PORT"

start service "$KEEL" service --listen "127.0.0.1:$SERVICE_PORT" \
    --redis "redis://127.0.0.1:$REDIS_PORT" --redis-breaker failures=1,open=10m,half-open=1
wait_until "keel service" curl -fsS --max-time 1 "$URL/health"

curl -fsS "$URL/" | grep -q 'visits: 1 (redis' || die "the counter does not count with Redis up"

log "pausing redis-server (SIGSTOP) and tripping the breaker"
kill -STOP "$REDIS_PID" # stop_all resumes it before ending it
start=$(date +%s.%N)
curl -fsS --max-time 10 "$URL/" | grep -q 'temporarily disabled! (redis timed out' ||
    die "the first request after the pause did not time out"
log "first request after the pause: $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f s", b - a}') (the timeout)"
state=$(curl -fsS "$URL/health" | grep -o '"state":"[a-z_]*"')
[[ $state == '"state":"open"' ]] || die "the breaker is not open: $state"

rejected_before=$(metric 'keel_breaker_calls_total{breaker="redis",outcome="rejected"}')
log "wrk --latency -t$THREADS -c$CONNS -d${DURATION}s $URL/"
load() { wrk --latency -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 5s "$1" >"$2"; }
load "$URL/" "$TMP/wrk.txt"

requests=$(wrk_field "$TMP/wrk.txt" requests)
rps=$(wrk_field "$TMP/wrk.txt" rps)
p50=$(wrk_field "$TMP/wrk.txt" p50)
p99=$(wrk_field "$TMP/wrk.txt" p99)
errors=$(grep -E 'Non-2xx|Socket errors' "$TMP/wrk.txt" || true)
rejected=$(($(metric 'keel_breaker_calls_total{breaker="redis",outcome="rejected"}') - rejected_before))
timeouts=$(metric 'keel_service_redis_timeouts_total{service="service1"}')

[[ -z $errors ]] || die "wrk saw failed requests: $errors"
((timeouts == 1)) || die "Redis was asked $timeouts times while paused; expected once"
# wrk counts only the requests it finished; the breaker also refused the ones in flight
# when it stopped.
((rejected >= requests)) || die "the breaker refused $rejected calls for $requests requests"

log "the same load on GET /health, for scale"
load "$URL/health" "$TMP/wrk-health.txt"
health_rps=$(wrk_field "$TMP/wrk-health.txt" rps)
health_p50=$(wrk_field "$TMP/wrk-health.txt" p50)
health_p99=$(wrk_field "$TMP/wrk-health.txt" p99)

# open_loop PATH NAME: keel load at RATE requests a second; prints "p50 p99" of the
# service time in ms.
open_loop() {
    "$KEEL" load "$URL$1" --rate "$RATE" --duration "${DURATION}s" --quiet --json "$TMP/$2.json" \
        >"$TMP/$2.txt" 2>&1 || die "keel load failed (see $TMP/$2.txt; KEEP_TMP=1 keeps it)"
    jq -e '.errors == 0' "$TMP/$2.json" >/dev/null || die "keel load saw errors (see $TMP/$2.txt)"
    jq -r '"\(.service_time.p50_ms) \(.service_time.p99_ms)"' "$TMP/$2.json"
}
log "keel load --rate $RATE on GET / and GET /health"
read -r open_p50 open_p99 < <(open_loop / load-open)
read -r open_health_p50 open_health_p99 < <(open_loop /health load-health)
timeouts=$(metric 'keel_service_redis_timeouts_total{service="service1"}')
((timeouts == 1)) || die "Redis was asked $timeouts times while paused; expected once"

# --- closed-path cost -------------------------------------------------------------------

closed_ns=""
if [[ ${SKIP_CRITERION:-0} != 1 ]]; then
    kill -CONT "$REDIS_PID"
    log "cargo bench -p keel-resilience --bench breaker -- closed/count_window"
    cargo bench -p keel-resilience --bench breaker --locked -- closed/count_window \
        >"$TMP/criterion.txt" 2>&1 || die "cargo bench failed (see $TMP/criterion.txt; KEEP_TMP=1 keeps it)"
    # "closed/count_window  time: [low median high]", the times on the next line when the
    # name is long.
    closed_ns=$(awk '/^closed\/count_window/ {
                         if ($2 == "time:") { print $5, $6 } else { getline; if ($1 == "time:") print $4, $5 }
                     }' "$TMP/criterion.txt" | head -1)
fi

echo
echo "keel service --redis, breaker open (Redis paused), GET / with wrk -t$THREADS -c$CONNS -d${DURATION}s:"
echo "  requests     $requests ($rps/s), every one refused by the breaker without asking Redis"
echo "  p50          $p50"
echo "  p99          $p99   (target: under 1 ms)"
echo "GET /health, same load (no breaker, no Redis), for scale:"
echo "  $health_rps/s, p50 $health_p50, p99 $health_p99"
echo "open loop, keel load --rate $RATE -d${DURATION}s, service time (ms):"
echo "  GET / (breaker open)   p50 $open_p50   p99 $open_p99   (target: under 1 ms)"
echo "  GET /health            p50 $open_health_p50   p99 $open_health_p99"
if [[ -n $closed_ns ]]; then
    echo "closed breaker, acquire + record a success (criterion, closed/count_window):"
    echo "  median       $closed_ns   (target: under 100 ns)"
fi
