#!/usr/bin/env bash
# scripts/bench/load.sh — keel load against wrk: the same nginx static file, the same
# connection count, each tool pinned to one core.
#
# One run starts its own nginx (1 worker, access_log off, keep-alive without a request
# cap) on a free loopback port with a temporary config, pinned to one core; then runs
# wrk and keel load in turn, pinned to another core, ROUNDS times each, alternating, and
# prints a table with the median of each and the ratios:
#
#   throughput  keel load reaches at least 0.8× wrk's requests per second
#   p99         keel load's p99 agrees with `wrk --latency`'s within 20 %
#
# Both tools run a closed loop (one request in flight per connection), and both time a
# request from its send to its answer, so their latencies are comparable.
#
# Usage:  scripts/bench/load.sh
# Knobs (environment): DURATION=10s CONNECTIONS=64 ROUNDS=3
#                      NGINX_CPU=1 CLIENT_CPU=0 (cores for taskset)
#                      KEEP_TMP=1 (keep config and logs)
#                      SKIP_BUILD=1 (use the keel already built)
#                      CARGO_TARGET_DIR (where cargo builds; target by default)
#
# Needs root (or sudo) only to install nginx and wrk when missing.
# A benchmark, not a test: never part of scripts/test.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-3}
NGINX_CPU=${NGINX_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
READY_TIMEOUT=10 # seconds to wait for nginx to answer

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# log, die, install_packages, BIN_DIR, bench_init, start, wait_until, free_port, wrk_field,
# wrk_ms, ratio: see lib.sh.
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh # the script runs from the repository root (cd above)

# --- packages ---------------------------------------------------------------------------

install_missing() {
    local packages=()
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || packages+=(nginx)
    command -v wrk >/dev/null || packages+=(wrk)
    command -v jq >/dev/null || packages+=(jq)
    command -v curl >/dev/null || packages+=(curl)
    command -v taskset >/dev/null || packages+=(util-linux)
    install_packages "${packages[@]}"
}

NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# --- processes and cleanup --------------------------------------------------------------

bench_init keel-bench-load

start_nginx() {
    local port=$1
    mkdir -p "$TMP/www" "$TMP/temp"
    # The static target: a small page, as a health check or an API answer would be.
    printf '<!doctype html><title>keel</title><p>Hello from nginx, the static target of scripts/bench/load.sh.</p>\n' \
        >"$TMP/www/index.html"
    # nginx's worker runs as an unprivileged user and must read the page.
    chmod 755 "$TMP" "$TMP/www"
    chmod 644 "$TMP/www/index.html"
    cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # No cap on requests per connection: both tools would otherwise measure reconnects.
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path $TMP/temp/body;
    proxy_temp_path $TMP/temp/proxy;
    fastcgi_temp_path $TMP/temp/fastcgi;
    uwsgi_temp_path $TMP/temp/uwsgi;
    scgi_temp_path $TMP/temp/scgi;
    server {
        listen 127.0.0.1:$port;
        root $TMP/www;
    }
}
EOF
    # master_process off: a single process serves, so pinning it pins the server.
    start nginx --core "$NGINX_CPU" "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log"
    wait_until nginx curl -fsS --max-time 1 "http://127.0.0.1:$port/index.html"
}

# --- the two tools ----------------------------------------------------------------------

# run_wrk N URL: prints "rps p50_ms p99_ms".
run_wrk() {
    local out=$TMP/wrk-$1.txt
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$2" >"$out" 2>&1 ||
        die "wrk failed: $(cat "$out")"
    grep -q 'Non-2xx\|Socket errors' "$out" && log "wrk saw errors: $(grep 'Non-2xx\|Socket errors' "$out")"
    local rps p50 p99
    rps=$(wrk_field "$out" rps)
    p50=$(wrk_field "$out" p50)
    p50=$(wrk_ms "$p50")
    p99=$(wrk_field "$out" p99)
    p99=$(wrk_ms "$p99")
    echo "$rps $p50 $p99"
}

# run_keel N URL: prints "rps p50_ms p99_ms".
run_keel() {
    local json=$TMP/keel-$1.json
    taskset -c "$CLIENT_CPU" "$BIN_DIR/keel" load "$2" --concurrency "$CONNECTIONS" \
        --duration "$DURATION" --threads 1 --quiet --json "$json" >"$TMP/keel-$1.txt" 2>&1 ||
        die "keel load failed: $(cat "$TMP/keel-$1.txt")"
    local errors
    errors=$(jq -r .errors "$json")
    [[ $errors == 0 ]] || log "keel load saw $errors errors"
    jq -r '"\(.requests_per_s) \(.latency.p50_ms) \(.latency.p99_ms)"' "$json"
}

# median of the numbers on stdin.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

main() {
    install_missing
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        log "building keel (release)"
        cargo build --release -p keel
    fi
    [[ -x $BIN_DIR/keel ]] || die "$BIN_DIR/keel not found (build it, or unset SKIP_BUILD)"
    local cores
    cores=$(nproc)
    ((cores >= 2)) || log "only $cores core: nginx and the client share it, so the figures are low"
    ((NGINX_CPU < cores)) || NGINX_CPU=0
    ((CLIENT_CPU < cores)) || CLIENT_CPU=0

    local port url
    port=$(free_port)
    url="http://127.0.0.1:$port/index.html"
    start_nginx "$port"
    LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)

    log "warm-up"
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d2s "$url" >/dev/null 2>&1 || true

    local i
    : >"$TMP/wrk.all"
    : >"$TMP/keel.all"
    for i in $(seq "$ROUNDS"); do
        log "round $i/$ROUNDS: wrk, ${CONNECTIONS} connections, ${DURATION}"
        run_wrk "$i" "$url" | tee -a "$TMP/wrk.all" | sed 's/^/[bench]   /' >&2
        log "round $i/$ROUNDS: keel load, ${CONNECTIONS} connections, ${DURATION}"
        run_keel "$i" "$url" | tee -a "$TMP/keel.all" | sed 's/^/[bench]   /' >&2
    done

    local w_rps w_p50 w_p99 k_rps k_p50 k_p99
    w_rps=$(cut -d' ' -f1 "$TMP/wrk.all" | median)
    w_p50=$(cut -d' ' -f2 "$TMP/wrk.all" | median)
    w_p99=$(cut -d' ' -f3 "$TMP/wrk.all" | median)
    k_rps=$(cut -d' ' -f1 "$TMP/keel.all" | median)
    k_p50=$(cut -d' ' -f2 "$TMP/keel.all" | median)
    k_p99=$(cut -d' ' -f3 "$TMP/keel.all" | median)

    local tput p99 tput_ok p99_ok
    tput=$(ratio "$k_rps" "$w_rps")
    p99=$(ratio "$k_p99" "$w_p99")
    tput_ok=$(awk -v r="$tput" 'BEGIN { print (r >= 0.8) ? "ok" : "BELOW TARGET" }')
    p99_ok=$(awk -v r="$p99" 'BEGIN { print (r >= 0.8 && r <= 1.2) ? "ok" : "OUTSIDE TARGET" }')

    echo
    echo "nginx static file (1 worker on cpu $NGINX_CPU), ${CONNECTIONS} connections, ${DURATION} per run, median of ${ROUNDS} rounds; client on cpu $CLIENT_CPU"
    echo "host: $cores cores, $(uname -r), load average at start ${LOADAVG}; $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $("$NGINX" -v 2>&1)"
    echo
    printf '%-10s %12s %10s %10s\n' tool "requests/s" p50_ms p99_ms
    printf '%-10s %12.0f %10.3f %10.3f\n' wrk "$w_rps" "$w_p50" "$w_p99"
    printf '%-10s %12.0f %10.3f %10.3f\n' "keel load" "$k_rps" "$k_p50" "$k_p99"
    echo
    echo "requests/s  keel/wrk $tput   (target >= 0.80: $tput_ok)"
    echo "p99         keel/wrk $p99   (target 0.80 to 1.20: $p99_ok)"
}

main "$@"
