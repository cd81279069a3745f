#!/usr/bin/env bash
# scripts/bench/load.sh — keel load against wrk: the same nginx, the same connection
# count, the server pinned to one core and each tool in turn pinned to the other.
#
# One run starts its own nginx (1 worker, access_log off, keep-alive without a request
# cap) with a temporary config on free loopback ports, pinned to one core, and measures
# two cases. In each it runs wrk and keel load in turn, pinned to another core, ROUNDS
# times each, alternating, and prints a table with the median of each and the ratios.
#
#   static     nginx serves a small page (CONNECTIONS). The server's core saturates
#              first, so both tools reach about the same rate; the case compares what
#              they measure:
#                throughput  keel load reaches at least 0.8× wrk's requests per second
#                p99         keel load's p99 agrees with `wrk --latency`'s within 20 %
#   trivial    nginx answers `return 200 'ok';` (TRIVIAL_CONNECTIONS), so cheaply that
#              the client's core is the bottleneck: the case measures what each tool
#              costs per request.
#                throughput  keel load reaches at least 0.9× wrk's requests per second,
#                            counted at the server
#
# Requests are also counted at the server, so that neither tool grades itself: nginx's
# stub_status `requests` counter read before and after each run, over the run's wall
# time as this script measures it (the tool's start and exit included).
#
# Both tools run a closed loop (one request in flight per connection), and both time a
# request from its send to its answer, so their latencies are comparable.
#
# Usage:  scripts/bench/load.sh
# Knobs (environment): DURATION=10s ROUNDS=3 CASES="static trivial"
#                      CONNECTIONS=64 (static) TRIVIAL_CONNECTIONS=50 (trivial)
#                      NGINX_CPU=1 CLIENT_CPU=0 (cores for taskset)
#                      KEEP_TMP=1 (keep config and logs)
#                      SKIP_BUILD=1 (use the keel already built)
#                      CARGO_TARGET_DIR (where cargo builds; target by default)
#
# Needs root (or sudo) only to install nginx and wrk when missing.
# A benchmark, not a test: never part of scripts/test.
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CASES=${CASES:-static trivial}
CONNECTIONS=${CONNECTIONS:-64}
TRIVIAL_CONNECTIONS=${TRIVIAL_CONNECTIONS:-50}
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

# start_nginx STATIC_PORT TRIVIAL_PORT STATUS_PORT
start_nginx() {
    local static_port=$1 trivial_port=$2 status_port=$3
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
        listen 127.0.0.1:$static_port;
        root $TMP/www;
    }
    # The trivial target: no file, no lookup, the cheapest answer nginx gives.
    server {
        listen 127.0.0.1:$trivial_port;
        location / { return 200 'ok'; }
    }
    # The server's own count of requests, on a port of its own so that no tool's
    # traffic reaches it.
    server {
        listen 127.0.0.1:$status_port;
        location / { stub_status; }
    }
}
EOF
    # master_process off: a single process serves, so pinning it pins the server.
    start nginx --core "$NGINX_CPU" "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log"
    wait_until nginx curl -fsS --max-time 1 "http://127.0.0.1:$static_port/index.html"
}

# server_requests: the requests nginx has handled since it started, this read included
# (stub_status's third line is "accepts handled requests").
server_requests() {
    curl -fsS --max-time 2 "$STATUS_URL" | awk 'NR == 3 { print $3 }'
}

# counted_at_server OUT CMD...: runs CMD (its output into OUT) and prints the requests
# per second nginx counted meanwhile: the counter's growth, less the read that ends it,
# over CMD's wall time.
counted_at_server() {
    local out=$1 before after t0 t1
    shift
    before=$(server_requests) || die "cannot read nginx's stub_status at $STATUS_URL"
    t0=$(date +%s.%N)
    "$@" >"$out" 2>&1 || die "$* failed: $(tail -5 "$out")"
    t1=$(date +%s.%N)
    after=$(server_requests) || die "cannot read nginx's stub_status at $STATUS_URL"
    awk -v a="$after" -v b="$before" -v t0="$t0" -v t1="$t1" \
        'BEGIN { printf "%.0f\n", (a - b - 1) / (t1 - t0) }'
}

# --- the two tools ----------------------------------------------------------------------

# run_wrk NAME URL CONNECTIONS: prints "rps p50_ms p99_ms rps_at_server".
run_wrk() {
    local out=$TMP/wrk-$1.txt server
    server=$(counted_at_server "$out" taskset -c "$CLIENT_CPU" wrk -t1 -c"$3" -d"$DURATION" --latency "$2")
    grep -q 'Non-2xx\|Socket errors' "$out" && log "wrk saw errors: $(grep 'Non-2xx\|Socket errors' "$out")"
    local rps p50 p99
    rps=$(wrk_field "$out" rps)
    p50=$(wrk_field "$out" p50)
    p50=$(wrk_ms "$p50")
    p99=$(wrk_field "$out" p99)
    p99=$(wrk_ms "$p99")
    echo "$rps $p50 $p99 $server"
}

# run_keel NAME URL CONNECTIONS: prints "rps p50_ms p99_ms rps_at_server".
run_keel() {
    local json=$TMP/keel-$1.json server
    server=$(counted_at_server "$TMP/keel-$1.txt" taskset -c "$CLIENT_CPU" "$BIN_DIR/keel" load "$2" \
        --concurrency "$3" --duration "$DURATION" --threads 1 --quiet --json "$json")
    local errors
    errors=$(jq -r .errors "$json")
    [[ $errors == 0 ]] || log "keel load saw $errors errors"
    jq -r --arg server "$server" '"\(.requests_per_s) \(.latency.p50_ms) \(.latency.p99_ms) \($server)"' "$json"
}

# --- the report -------------------------------------------------------------------------

# median of the numbers on stdin.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# column CASE TOOL N: the median of the Nth figure of TOOL's rounds in CASE (see run_wrk).
column() { cut -d' ' -f"$3" "$TMP/$1-$2.all" | median; }

# keel_over_wrk CASE N: keel load's median of the Nth figure over wrk's.
keel_over_wrk() { ratio "$(column "$1" keel "$2")" "$(column "$1" wrk "$2")"; }

# verdict RATIO LOW [HIGH]: "ok" when LOW <= RATIO (and RATIO <= HIGH).
verdict() {
    awk -v r="$1" -v lo="$2" -v hi="${3:-}" 'BEGIN {
        if (r == "n/a") print "n/a"
        else if (r >= lo && (hi == "" || r <= hi)) print "ok"
        else print (hi == "" ? "BELOW TARGET" : "OUTSIDE TARGET")
    }'
}

# table CASE: the medians of CASE's rounds, a line per tool, and every round's figure
# at the server.
table() {
    printf '%-10s %12s %12s %10s %10s\n' tool "requests/s" "at server" p50_ms p99_ms
    local tool label
    for tool in wrk keel; do
        label=$tool
        [[ $tool == keel ]] && label="keel load"
        printf '%-10s %12.0f %12.0f %10.3f %10.3f\n' "$label" "$(column "$1" "$tool" 1)" \
            "$(column "$1" "$tool" 4)" "$(column "$1" "$tool" 2)" "$(column "$1" "$tool" 3)"
    done
    echo "rounds at server: wrk $(cut -d' ' -f4 "$TMP/$1-wrk.all" | paste -sd' '); keel load $(cut -d' ' -f4 "$TMP/$1-keel.all" | paste -sd' ')"
}

# --- main -------------------------------------------------------------------------------

# measure CASE URL CONNECTIONS: a warm-up, then ROUNDS rounds of wrk and keel load, one
# line a round into $TMP/CASE-wrk.all and $TMP/CASE-keel.all.
measure() {
    local case=$1 url=$2 conns=$3 i
    log "$case: warm-up"
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$conns" -d2s "$url" >/dev/null 2>&1 || true
    : >"$TMP/$case-wrk.all"
    : >"$TMP/$case-keel.all"
    for i in $(seq "$ROUNDS"); do
        log "$case round $i/$ROUNDS: wrk, $conns connections, ${DURATION}"
        run_wrk "$case-$i" "$url" "$conns" | tee -a "$TMP/$case-wrk.all" | sed 's/^/[bench]   /' >&2
        log "$case round $i/$ROUNDS: keel load, $conns connections, ${DURATION}"
        run_keel "$case-$i" "$url" "$conns" | tee -a "$TMP/$case-keel.all" | sed 's/^/[bench]   /' >&2
    done
}

main() {
    local case
    for case in $CASES; do
        [[ $case == static || $case == trivial ]] || die "CASES: no case '$case' (static, trivial)"
    done
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

    local static_port trivial_port status_port
    static_port=$(free_port)
    trivial_port=$(free_port)
    status_port=$(free_port)
    STATUS_URL="http://127.0.0.1:$status_port/"
    start_nginx "$static_port" "$trivial_port" "$status_port"
    LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)

    for case in $CASES; do
        case $case in
        static) measure static "http://127.0.0.1:$static_port/index.html" "$CONNECTIONS" ;;
        trivial) measure trivial "http://127.0.0.1:$trivial_port/" "$TRIVIAL_CONNECTIONS" ;;
        esac
    done

    echo
    echo "nginx: 1 worker on cpu $NGINX_CPU; client on cpu $CLIENT_CPU; ${DURATION} per run, median of ${ROUNDS} rounds"
    echo "host: $cores cores, $(uname -r), load average at start ${LOADAVG}; $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $("$NGINX" -v 2>&1)"
    local tput p99
    for case in $CASES; do
        echo
        case $case in
        static)
            echo "static file, ${CONNECTIONS} connections"
            table static
            tput=$(keel_over_wrk static 1)
            p99=$(keel_over_wrk static 3)
            echo "requests/s  keel/wrk $tput   (target >= 0.80: $(verdict "$tput" 0.8))"
            echo "p99         keel/wrk $p99   (target 0.80 to 1.20: $(verdict "$p99" 0.8 1.2))"
            ;;
        trivial)
            echo "trivial target (return 200 'ok'), ${TRIVIAL_CONNECTIONS} connections"
            table trivial
            tput=$(keel_over_wrk trivial 4)
            echo "requests/s at server  keel/wrk $tput   (target >= 0.90: $(verdict "$tput" 0.9))"
            echo "requests/s reported   keel/wrk $(keel_over_wrk trivial 1)"
            ;;
        esac
    done
}

main "$@"
