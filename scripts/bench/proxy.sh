#!/usr/bin/env bash
# scripts/bench/proxy.sh — the front door under load: keel proxy vs nginx vs HAProxy.
#
# One run, on 127.0.0.1 with free ports and everything in a temp dir: two stub backends
# (each its own nginx, 1 worker, `return 200 "hello from stubN\n"`), and in front of
# them each load balancer in turn, the same load on each from wrk, then a kill test.
#
#   direct   wrk straight at stub1: the ceiling of the stubs and the client
#   keel     keel proxy --threads 1, round robin; active checks GET /health every 2 s,
#            passive ejection on a connect failure, retries on the other backend
#   nginx    1 worker, upstream of both stubs with keepalive 128, HTTP/1.1 to them;
#            default proxy_next_upstream (error timeout): a GET is retried on the other
#            stub when the connection fails. No active checks (not in nginx's free build).
#   haproxy  nbthread 1, http-keep-alive, http-reuse always, retries 3, redispatch 1,
#            retry-on all-retryable-errors, active checks GET /health every 2 s (fall 3,
#            rise 2: keel's defaults), so that it has what keel has
#   keel-tls   keel with TLS at its front door (--tls-cert/--tls-key/--tls-ca, a
#              certificate from keel certs); wrk speaks https to it
#   nginx-tls  nginx terminating TLS with the same certificate (TLS 1.2 and 1.3, session
#              cache on), the same upstream
#
# Placement: the system under test alone on core 0 (taskset -c 0); wrk and both stubs on
# core 1. Keep-alive on both sides everywhere, access logs off, connection reuse not
# capped (keepalive_requests raised on every nginx: its default of 1000 would make
# clients reconnect, which the others do not ask of them).
#
# Each measured run follows a warm-up run of its own. Then the kill test, for each load
# balancer: fresh stubs, warm-up, a measured run during which stub1 (its nginx master and
# worker together) is killed with SIGKILL KILL_AT seconds in. Failed requests: non-2xx
# answers plus wrk's socket read, write and timeout errors.
#
# Besides req/s and p99 the table gives the CPU time the system under test spent per
# request: on a shared host other work takes turns on its core and moves req/s from one
# run to the next, while the CPU each request costs hardly moves.
#
# Target: keel at least 1.1× nginx's requests per second with a p99 no worse, and no
# failed request in the kill test.
#
# Usage:  scripts/bench/proxy.sh
# Knobs (environment): CONNS=64 DURATION=10 WARMUP=2 KILL_AT=3 (seconds)
#                      ROUNDS=3 (measured runs per system, taken in turns; the table gives
#                      the median of each column)
#                      TARGETS="direct keel nginx haproxy keel-tls nginx-tls"
#                      KILL_TARGETS="keel nginx haproxy"
#                      KEEP_TMP=1 (keep configs and logs)
#                      SKIP_BUILD=1 (use the keel already built)
#                      CARGO_TARGET_DIR (where cargo builds; target by default)
#
# Needs root (or sudo) only to install nginx, haproxy, wrk, jq and curl when missing.
# A benchmark, not a test: never part of scripts/test.
set -euo pipefail

CONNS=${CONNS:-64}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
KILL_AT=${KILL_AT:-3}
ROUNDS=${ROUNDS:-3}
TARGETS=${TARGETS:-direct keel nginx haproxy keel-tls nginx-tls}
KILL_TARGETS=${KILL_TARGETS-keel nginx haproxy}
READY_TIMEOUT=30 # seconds to wait for a server to answer before giving up
LB_CORE=0        # the system under test
CLIENT_CORE=1    # wrk and the stubs

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# log, die, require_whole_numbers, install_packages, BIN_DIR, bench_init, start, stop,
# kill9, finish, wait_until, free_port, wrk_field, wrk_ms, ratio, rss_kb: see lib.sh.
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh # the script runs from the repository root (cd above)

require_whole_numbers CONNS DURATION WARMUP KILL_AT ROUNDS
((ROUNDS >= 1)) || die "ROUNDS must be at least 1"
((KILL_AT < DURATION)) || die "KILL_AT ($KILL_AT) must fall inside DURATION ($DURATION)"

# --- packages ---------------------------------------------------------------------------

install_missing() {
    local packages=()
    # Debian installs nginx and haproxy under /usr/sbin, which a non-root PATH may lack.
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || packages+=(nginx)
    command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || packages+=(haproxy)
    command -v wrk >/dev/null || packages+=(wrk)
    command -v jq >/dev/null || packages+=(jq)
    command -v curl >/dev/null || packages+=(curl)
    install_packages "${packages[@]}"
}
PATH=$PATH:/usr/sbin

# --- processes and cleanup --------------------------------------------------------------

bench_init keel-proxy-bench
# Every server runs as the leader of its own process group (start --group), so that a
# signal to the group reaches an nginx master and its worker alike: the worker holds the
# listening socket, and a worker orphaned by its master would keep serving.

# get URL: GET URL within a second, its body on stdout; an https URL is checked against
# the CA of ensure_certs.
get() {
    local ca=()
    [[ $1 == https://* ]] && ca=(--cacert "$TMP/tls/ca.pem")
    curl -fsS "${ca[@]}" --max-time 1 "$1"
}

# says URL TEXT: whether GET URL answers 200 with a body holding TEXT.
says() { get "$1" | grep -q "$2"; }

# --- the stubs --------------------------------------------------------------------------

# The http block every nginx here shares: no access log, and keep-alive connections never
# closed for their number of requests.
NGINX_HTTP_COMMON='
    access_log off;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;'

# nginx_conf DIR HTTP_BODY: writes DIR/nginx.conf, one worker in the foreground.
nginx_conf() {
    local dir=$1 body=$2
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
$NGINX_HTTP_COMMON
$body
}
EOF
}

# start_nginx NAME CORE: starts the nginx configured in $TMP/NAME.
start_nginx() {
    local dir=$TMP/$1
    start "$1" --group --core "$2" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
}

# start_stubs: two fresh stub backends on the client's core, STUB1 and STUB2 their ports.
start_stubs() {
    local i ports
    STUB1=$(free_port)
    STUB2=$(free_port)
    ports=("$STUB1" "$STUB2")
    for i in 1 2; do
        rm -rf "$TMP/stub$i"
        nginx_conf "$TMP/stub$i" "
    server {
        listen 127.0.0.1:${ports[i - 1]} backlog=4096;
        location / { return 200 \"hello from stub$i\n\"; }
    }"
        start_nginx "stub$i" "$CLIENT_CORE"
    done
    wait_until "stub1" says "http://127.0.0.1:$STUB1/" "hello from stub1"
    wait_until "stub2" says "http://127.0.0.1:$STUB2/" "hello from stub2"
}

# kill_stub1: the fault — SIGKILL to stub1's master and worker at once (its group).
kill_stub1() {
    kill9 stub1
    # The worker, reparented once its master is gone, may take a moment to be torn down.
    local deadline=$((SECONDS + 2))
    while ss -Htln "sport = :$STUB1" | grep -q .; do
        ((SECONDS < deadline)) || die "stub1 still listens on $STUB1 after kill -9"
        sleep 0.05
    done
}

# --- the systems under test -------------------------------------------------------------

# start_lb TARGET: starts TARGET in front of the stubs on core LB_CORE; sets URL (where
# wrk goes) and, for keel, KEEL_PID and KEEL_ADMIN.
start_lb() {
    local port admin
    if [[ $1 == direct ]]; then
        URL="http://127.0.0.1:$STUB1/"
        return
    fi
    port=$(free_port)
    URL="http://127.0.0.1:$port/"
    case $1 in
    keel | keel-tls)
        admin=$(free_port)
        KEEL_ADMIN="http://127.0.0.1:$admin"
        local tls=()
        if [[ $1 == keel-tls ]]; then
            ensure_certs
            tls=(--tls-cert "$TMP/tls/proxy.pem" --tls-key "$TMP/tls/proxy.key" --tls-ca "$TMP/tls/ca.pem")
            URL="https://127.0.0.1:$port/"
            KEEL_ADMIN="https://127.0.0.1:$admin"
        fi
        start "$1" --group --core "$LB_CORE" "$BIN_DIR/keel" proxy --threads 1 \
            --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" \
            --backend "http://127.0.0.1:$STUB1,name=stub1" \
            --backend "http://127.0.0.1:$STUB2,name=stub2" "${tls[@]}"
        KEEL_PID=${PID_OF[$1]}
        # Both backends up and at full weight, so that the run measures the steady state.
        wait_until "keel proxy's backends" keel_backends_up
        ;;
    nginx-tls)
        ensure_certs
        URL="https://127.0.0.1:$port/"
        rm -rf "$TMP/nginx-tls"
        nginx_conf "$TMP/nginx-tls" "
    upstream stubs {
        server 127.0.0.1:$STUB1;
        server 127.0.0.1:$STUB2;
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port ssl backlog=4096;
        ssl_certificate $TMP/tls/proxy.pem;
        ssl_certificate_key $TMP/tls/proxy.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:1m;
        location / {
            proxy_pass http://stubs;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_connect_timeout 1s;
        }
    }"
        start_nginx nginx-tls "$LB_CORE"
        ;;
    nginx)
        rm -rf "$TMP/nginx"
        nginx_conf "$TMP/nginx" "
    upstream stubs {
        server 127.0.0.1:$STUB1;
        server 127.0.0.1:$STUB2;
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://stubs;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_connect_timeout 1s;
        }
    }"
        start_nginx nginx "$LB_CORE"
        ;;
    haproxy)
        cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    retries 3
    option redispatch 1
    retry-on all-retryable-errors
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 65s

frontend front
    bind 127.0.0.1:$port
    default_backend stubs

backend stubs
    balance roundrobin
    option httpchk GET /health
    server stub1 127.0.0.1:$STUB1 check inter 2s fall 3 rise 2
    server stub2 127.0.0.1:$STUB2 check inter 2s fall 3 rise 2
EOF
        start haproxy --group --core "$LB_CORE" haproxy -db -f "$TMP/haproxy.cfg"
        ;;
    *) die "unknown target $1 (direct, keel, nginx, haproxy, keel-tls, nginx-tls)" ;;
    esac
    wait_until "$1" says "$URL" "hello from stub"
}

# ensure_certs: a CA and the proxies' certificate in $TMP/tls (keel certs), once.
ensure_certs() {
    [[ -f $TMP/tls/proxy.pem ]] || "$BIN_DIR/keel" certs --dir "$TMP/tls" proxy >/dev/null
}

keel_backends_up() {
    get "$KEEL_ADMIN/v1/backends" |
        jq -e '[.backends[] | select(.state == "up")] | length == 2'
}

# keel_counters: keel's own account of each backend, one line each.
keel_counters() {
    curl -fsS --max-time 2 "$KEEL_ADMIN/v1/backends" | jq -r '
        (.backends[] | "  keel \(.name): \(.state), \(.requests) requests, 2xx \(.responses["2xx"]), 5xx \(.responses["5xx"]), connect failures \(.connect_failures), failures \(.failures), retries \(.retries), ejections \(.ejections)"),
        "  keel retry budget: \(.retry_budget.remaining) left, exhausted \(.retry_budget.exhausted_total) times"' ||
        echo "  keel counters unavailable"
}

stop_lb() {
    [[ $1 == direct ]] || stop "$1"
}

# --- the load ---------------------------------------------------------------------------

# wrk_run SECONDS URL NAME [kill]: wrk on the client's core, its report in $TMP/NAME.log;
# with `kill`, stub1 is killed KILL_AT seconds in.
wrk_run() {
    local secs=$1 url=$2 name=$3
    start "$name" --core "$CLIENT_CORE" wrk -t1 -c"$CONNS" -d"${secs}s" --latency "$url"
    if [[ ${4:-} == kill ]]; then
        sleep "$KILL_AT"
        log "  kill -9 stub1 at ${KILL_AT}s"
        kill_stub1
    fi
    finish "$name" || die "wrk failed: $(tail -3 "$TMP/$name.log")"
}

# Per system, one value per round (space-separated), and the medians the table shows.
declare -A RUNS_RPS=() RUNS_P99=() RUNS_CPU=() RUNS_USER=() RUNS_CLIENT=() RUNS_CLIENT_US=()
declare -A RPS=() P99=() FAILED=() DETAIL=() CPU_US=() USER_US=() CLIENT_BUSY=() CLIENT_US=() KRPS=() KP99=() KFAILED=() KDETAIL=()

# group_cpu_ticks PGID: CPU time used so far by the processes of a group, all their
# threads included, in clock ticks: "user system".
group_cpu_ticks() {
    local pid user=0 system=0 u s
    for pid in $(pgrep -g "$1"); do
        # The fields after the command name, which is in parentheses and may hold spaces:
        # utime and stime are the 12th and 13th of them.
        read -r u s < <(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12, $13}') || continue
        user=$((user + ${u:-0})) system=$((system + ${s:-0}))
    done
    echo "$user $system"
}
CLK_TCK=$(getconf CLK_TCK)

# core_ticks CORE: "busy total" jiffies of one core so far, from /proc/stat.
core_ticks() {
    awk -v cpu="cpu$1" '$1 == cpu { idle = $5 + $6; total = 0; for (i = 2; i <= NF; i++) total += $i; print total - idle, total }' /proc/stat
}

# median VALUES...: the middle value (the lower middle of an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# record KIND TARGET NAME: reads the report of wrk_run NAME into the tables (KIND: run or
# kill).
record() {
    local kind=$1 t=$2 file=$TMP/$3.log rps p99 non2xx conn rd wr to
    rps=$(wrk_field "$file" rps)
    rps=$(printf '%.0f' "$rps")
    p99=$(wrk_field "$file" p99)
    p99=$(wrk_ms "$p99")
    non2xx=$(wrk_field "$file" non2xx)
    conn=$(wrk_field "$file" connect)
    rd=$(wrk_field "$file" read)
    wr=$(wrk_field "$file" write)
    to=$(wrk_field "$file" timeout)
    local failed=$((non2xx + rd + wr + to))
    local detail="non-2xx $non2xx, socket errors: read $rd, write $wr, timeout $to, connect $conn"
    if [[ $kind == run ]]; then
        RPS[$t]=$rps P99[$t]=$p99 DETAIL[$t]=$detail
        FAILED[$t]=$((${FAILED[$t]:-0} + failed))
        RUNS_RPS[$t]+=" $rps" RUNS_P99[$t]+=" $p99"
    else
        KRPS[$t]=$rps KP99[$t]=$p99 KFAILED[$t]=$failed KDETAIL[$t]=$detail
    fi
    log "  $t: $rps req/s, p99 $p99 ms, $failed failed ($detail)"
}

run_target() {
    local t=$1 round=${2:-1}
    log "$t: $CONNS connections, warm-up ${WARMUP}s, measuring ${DURATION}s"
    start_stubs
    start_lb "$t"
    wrk_run "$WARMUP" "$URL" "wrk-$t-warmup-$round"
    # The CPU the system under test spends per request (the stub itself for direct):
    # unlike req/s, barely moved by other work on the host taking turns on its core.
    # (Started with --group: the pid is the group's id.)
    # And how busy the client's core was: near 100%, wrk and the stubs set the pace, not
    # the system under test.
    local group=${PID_OF[$t]:-${PID_OF[stub1]}} user0 sys0 user1 sys1 busy0 all0 busy1 all1
    read -r user0 sys0 < <(group_cpu_ticks "$group")
    read -r busy0 all0 < <(core_ticks "$CLIENT_CORE")
    wrk_run "$DURATION" "$URL" "wrk-$t-$round"
    read -r user1 sys1 < <(group_cpu_ticks "$group")
    read -r busy1 all1 < <(core_ticks "$CLIENT_CORE")
    record run "$t" "wrk-$t-$round"
    per_request() {
        awk -v ticks="$1" -v hz="$CLK_TCK" -v rps="${RPS[$t]}" -v secs="$DURATION" \
            'BEGIN { printf "%.1f", ticks / hz * 1e6 / (rps * secs) }'
    }
    local cpu user client client_us
    cpu=$(per_request $((user1 - user0 + sys1 - sys0)))
    user=$(per_request $((user1 - user0)))
    client=$(awk -v b=$((busy1 - busy0)) -v a=$((all1 - all0)) 'BEGIN { printf "%.0f", (a > 0 ? 100 * b / a : 0) }')
    # The client core's time per request (wrk and the stubs, and the kernel's work on
    # their side): its inverse is the most requests per second that core allows.
    client_us=$(per_request $((busy1 - busy0)))
    RUNS_CPU[$t]+=" $cpu" RUNS_USER[$t]+=" $user" RUNS_CLIENT[$t]+=" $client" RUNS_CLIENT_US[$t]+=" $client_us"
    log "  $t: $cpu µs of CPU per request, $user µs of it in user space; client core ${client}% busy, $client_us µs per request"
    if [[ $t == keel ]]; then
        KEEL_RSS_AFTER=$(rss_kb "$KEEL_PID")
        if ((FAILED[keel] > 0)); then
            keel_counters >&2
            log "last lines of keel's log:"
            tail -20 "$TMP/keel.log" >&2 || true
        fi
    fi
    stop_lb "$t"
    stop stub1
    stop stub2
}

kill_test() {
    local t=$1
    log "$t kill test: warm-up ${WARMUP}s, then ${DURATION}s with stub1 killed at ${KILL_AT}s"
    start_stubs
    start_lb "$t"
    wrk_run "$WARMUP" "$URL" "wrk-$t-kill-warmup"
    wrk_run "$DURATION" "$URL" "wrk-$t-kill" kill
    record kill "$t" "wrk-$t-kill"
    if [[ $t == keel ]]; then
        KEEL_COUNTERS_AFTER_KILL=$(keel_counters)
        KEEL_RSS_AFTER_KILL=$(rss_kb "$KEEL_PID")
        if ((KFAILED[keel] > 0)); then
            log "last lines of keel's log:"
            tail -20 "$TMP/keel.log" >&2 || true
        fi
    fi
    stop_lb "$t"
    stop stub2
}

# --- report -----------------------------------------------------------------------------

report() {
    local t
    echo
    echo "HTTP load balancing, wrk -t1 -c$CONNS, ${DURATION}s after ${WARMUP}s warm-up; system under test on core $LB_CORE, wrk and two nginx stubs on core $CLIENT_CORE"
    echo "host: $(nproc) cores, $(uname -r), load average at start ${LOADAVG_START}, at end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "versions: $("$BIN_DIR/keel" --version 2>&1 | head -1), $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -1 | cut -d' ' -f1-3), wrk $(wrk -v 2>&1 | head -1 | cut -d' ' -f2)"
    echo
    echo "medians of $ROUNDS rounds (the systems take turns; req/s of each round in brackets)"
    printf '%-9s %10s %8s %22s %12s %8s %14s %12s %12s %12s\n' system req/s p99_ms "ratio to nginx (req/s)" "p99 vs nginx" failed "cpu_us/request" "of it user" "client core" "client_us"
    for t in $TARGETS; do
        [[ -n ${RPS[$t]:-} ]] || continue
        # shellcheck disable=SC2086 # the runs are space-separated on purpose
        printf '%-9s %10s %8.2f %22s %12s %8s %14s %12s %11s%% %12s   [%s ]\n' "$t" "${RPS[$t]}" "${P99[$t]}" \
            "$(ratio "${RPS[$t]}" "${RPS[nginx]:-}")" "$(ratio "${P99[$t]}" "${P99[nginx]:-}")" "${FAILED[$t]}" \
            "${CPU_US[$t]}" "${USER_US[$t]}" "${CLIENT_BUSY[$t]}" "${CLIENT_US[$t]}" "${RUNS_RPS[$t]}"
    done
    echo "(p99 vs nginx below 1: a lower p99 than nginx's; cpu_us/request: CPU time of the system"
    echo " under test, all its processes and threads, over the measured run per request served;"
    echo " of it user: the part spent in user space, the rest is the kernel's; client core: how"
    echo " busy the core of wrk and the stubs was, near 100% when they set the pace; client_us: that"
    echo " core's busy time per request, so 1e6/client_us is the most req/s it allows)"
    for t in $TARGETS; do
        if [[ -n ${FAILED[$t]:-} && ${FAILED[$t]} != 0 ]]; then
            echo "  $t failed requests: ${DETAIL[$t]}"
        fi
    done
    if [[ -n $KILL_TARGETS ]]; then
        echo
        echo "kill test: kill -9 of stub1 (master and worker) ${KILL_AT}s into ${DURATION}s"
        echo "(failed = non-2xx answers + socket read/write/timeout errors)"
        printf '%-8s %10s %8s %8s\n' system req/s p99_ms failed
        for t in $KILL_TARGETS; do
            [[ -n ${KRPS[$t]:-} ]] || continue
            printf '%-8s %10s %8.2f %8s   %s\n' "$t" "${KRPS[$t]}" "${KP99[$t]}" "${KFAILED[$t]}" "${KDETAIL[$t]}"
        done
        if [[ -n ${KEEL_COUNTERS_AFTER_KILL:-} ]]; then
            echo "$KEEL_COUNTERS_AFTER_KILL"
        fi
    fi
    echo
    if [[ -n ${KEEL_RSS_AFTER:-} ]]; then
        echo "keel proxy RSS: idle $((KEEL_RSS_IDLE / 1024)) MB before any load, $((KEEL_RSS_AFTER / 1024)) MB after the measured run${KEEL_RSS_AFTER_KILL:+, $((KEEL_RSS_AFTER_KILL / 1024)) MB after the kill test}"
    fi
    verdict
}

# verdict: whether keel meets its targets, one line each.
verdict() {
    local ok
    if [[ -n ${RPS[keel]:-} && -n ${RPS[nginx]:-} ]]; then
        ok=$(awk -v k="${RPS[keel]}" -v n="${RPS[nginx]}" 'BEGIN { print (k >= 1.1 * n) ? "met" : "MISSED" }')
        echo "target keel req/s >= 1.1 x nginx's: $ok ($(ratio "${RPS[keel]}" "${RPS[nginx]}") x)"
        ok=$(awk -v k="${P99[keel]}" -v n="${P99[nginx]}" 'BEGIN { print (k <= n) ? "met" : "MISSED" }')
        echo "target keel p99 <= nginx's:        $ok (${P99[keel]} ms vs ${P99[nginx]} ms)"
    fi
    if [[ -n ${RPS[keel-tls]:-} && -n ${RPS[keel]:-} ]]; then
        echo "TLS: keel-tls/keel req/s $(ratio "${RPS[keel-tls]}" "${RPS[keel]}"), CPU per request $(ratio "${CPU_US[keel-tls]}" "${CPU_US[keel]}")${RPS[nginx-tls]:+; nginx-tls/nginx req/s $(ratio "${RPS[nginx-tls]}" "${RPS[nginx]:-}"); keel-tls/nginx-tls req/s $(ratio "${RPS[keel-tls]}" "${RPS[nginx-tls]}"), CPU per request $(ratio "${CPU_US[keel-tls]}" "${CPU_US[nginx-tls]}")}"
    fi
    if [[ -n ${KFAILED[keel]:-} ]]; then
        ok=$([[ ${KFAILED[keel]} == 0 ]] && echo met || echo MISSED)
        echo "target keel 0 failed in kill test: $ok (${KFAILED[keel]} failed)"
    fi
}

# keel_idle_rss: keel's resting RSS, from a proxy started alone before any load.
keel_idle_rss() {
    start_stubs
    start_lb keel
    sleep 1
    KEEL_RSS_IDLE=$(rss_kb "$KEEL_PID")
    stop keel
    stop stub1
    stop stub2
}

main() {
    install_missing
    if [[ ${SKIP_BUILD:-0} != 1 && " $TARGETS $KILL_TARGETS " == *" keel"* ]]; then
        log "building keel (release)"
        cargo build --release -p keel
    fi
    # wrk, the stubs and the system under test share the host's two cores with whatever
    # else runs; a busy host (a build) skews every row.
    LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
    local t
    if [[ " $TARGETS " == *" keel "* ]]; then
        keel_idle_rss
    fi
    local round
    for ((round = 1; round <= ROUNDS; round++)); do
        log "round $round of $ROUNDS"
        for t in $TARGETS; do
            run_target "$t" "$round"
        done
    done
    # shellcheck disable=SC2086 # the runs are space-separated on purpose
    for t in $TARGETS; do
        RPS[$t]=$(median ${RUNS_RPS[$t]}) P99[$t]=$(median ${RUNS_P99[$t]})
        CPU_US[$t]=$(median ${RUNS_CPU[$t]}) USER_US[$t]=$(median ${RUNS_USER[$t]})
        CLIENT_BUSY[$t]=$(median ${RUNS_CLIENT[$t]})
        CLIENT_US[$t]=$(median ${RUNS_CLIENT_US[$t]})
    done
    for t in $KILL_TARGETS; do
        [[ $t == direct ]] && die "the kill test needs a load balancer, not direct"
        kill_test "$t"
    done
    report
}

main "$@"
