#!/usr/bin/env bash
# scripts/bench/replication.sh — sync-replicated durable writes: keel vs etcd vs Redis.
#
# One run starts each system in turn on 127.0.0.1 (free ports, data in a temp dir), puts
# the same load on it with the same client (keel-writebench: N keep-alive connections,
# one write in flight each, unique keys, same value size), stops it, and prints a table.
#
#   keel   primary + 1 sync standby          PUT /v1/kv/{key}
#   keel-tls  the same, closed and on mutual TLS (cluster secret, keel certs): replication
#          and the client's connections encrypted — the cost of running across hosts
#   etcd   3 members (Debian etcd-server)     POST /v3/kv/put via the JSON gateway, to the leader
#   redis  master + 1 replica, appendfsync always on both; SET then WAIT 1 0
#
# Usage:  scripts/bench/replication.sh
# Knobs (environment): DURATION=10s WARMUP=2s CONCURRENCY=64 VALUE_SIZE=64
#                      TARGETS="keel keel-tls etcd redis"  KEEP_TMP=1 (keep data dirs and logs)
#                      SKIP_BUILD=1 (use the binaries already built)
#                      CARGO_TARGET_DIR (where cargo builds; target by default)
#
# Needs root (or sudo) only to install etcd-server, redis-server, jq and curl when missing.
# A benchmark, not a test: never part of scripts/test.
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-64}
VALUE_SIZE=${VALUE_SIZE:-64}
TARGETS=${TARGETS:-keel keel-tls etcd redis}
READY_TIMEOUT=30 # seconds to wait for a cluster to be up before giving up

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# log, die, install_packages, BIN_DIR, bench_init, start, stop_all, wait_until, free_port,
# ratio, rss_kb, etcd_healthy, etcd_leader: see lib.sh.
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh # the script runs from the repository root (cd above)

# --- packages ---------------------------------------------------------------------------

install_missing() {
    local packages=()
    command -v etcd >/dev/null || packages+=(etcd-server)
    { command -v redis-server && command -v redis-cli; } >/dev/null || packages+=(redis-server)
    command -v jq >/dev/null || packages+=(jq)
    command -v curl >/dev/null || packages+=(curl)
    install_packages "${packages[@]}"
}

# --- processes and cleanup --------------------------------------------------------------

bench_init keel-bench
# What each replica holds after its run (warm-up writes included): a check that the
# writes counted really landed on the copy.
REPLICA_HOLDS=()

# bench TARGET URL: runs the client, keeps its JSON in $TMP/TARGET.json.
bench() {
    local target=$1 url=$2
    log "$target: ${CONCURRENCY} clients, warm-up ${WARMUP}, measuring ${DURATION}"
    local label=${3:-$target} extra=("${@:4}")
    "$BIN_DIR/keel-writebench" --target "$target" --url "$url" --concurrency "$CONCURRENCY" \
        --duration "$DURATION" --warmup "$WARMUP" --value-size "$VALUE_SIZE" --json \
        "${extra[@]}" | jq --arg name "$label" '.target = $name' >"$TMP/$label.json"
    jq -r '"[bench] \(.target): \(.writes_per_s | floor) writes/s, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, \(.errors) errors"' \
        "$TMP/$label.json" >&2
}

# --- keel -------------------------------------------------------------------------------

keel_streaming() {
    curl -fsS --max-time 1 "$1/health" | jq -e '.standbys | length > 0 and all(.state == "streaming")'
}

run_keel() {
    local p1 p2 primary standby
    p1=$(free_port)
    p2=$(free_port)
    mkdir -p "$TMP/keel1" "$TMP/keel2"
    start keel-app2 "$BIN_DIR/keel" node --id app2 --listen "127.0.0.1:$p2" \
        --data-dir "$TMP/keel2" --role standby
    standby=${PID_OF[keel-app2]}
    start keel-app1 "$BIN_DIR/keel" node --id app1 --listen "127.0.0.1:$p1" \
        --data-dir "$TMP/keel1" --role primary --standby "http://127.0.0.1:$p2"
    primary=${PID_OF[keel-app1]}
    wait_until "keel primary with a streaming standby" keel_streaming "http://127.0.0.1:$p1"
    sleep 1 # idle, so that RSS is the resting figure and not start-up noise
    KEEL_RSS_PRIMARY=$(rss_kb "$primary")
    KEEL_RSS_STANDBY=$(rss_kb "$standby")
    log "keel idle RSS: primary ${KEEL_RSS_PRIMARY} kB, standby ${KEEL_RSS_STANDBY} kB"
    bench keel "http://127.0.0.1:$p1"
    KEEL_RSS_PRIMARY_AFTER=$(rss_kb "$primary")
    REPLICA_HOLDS+=("keel standby lsn $(curl -fsS --max-time 2 "http://127.0.0.1:$p2/health" | jq -r .lsn)")
    stop_all
}

# keel closed and on TLS: the same pair with the cluster secret and certificates from
# keel certs; the client speaks TLS to the primary too.
run_keel_tls() {
    local p1 p2 tls="$TMP/tls" ca member_flags
    p1=$(free_port)
    p2=$(free_port)
    mkdir -p "$TMP/keeltls1" "$TMP/keeltls2"
    "$BIN_DIR/keel" certs --dir "$tls" app1 app2 >/dev/null
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/cluster.secret"
    ca="$tls/ca.pem"
    tls_of() { echo --tls-cert "$tls/$1.pem" --tls-key "$tls/$1.key" --tls-ca "$ca"; }
    member_flags=(--cluster-secret-file "$TMP/cluster.secret")
    # shellcheck disable=SC2046 # tls_of prints flags to split
    start keel-tls-app2 "$BIN_DIR/keel" node --id app2 --listen "127.0.0.1:$p2" \
        --data-dir "$TMP/keeltls2" --role standby "${member_flags[@]}" $(tls_of app2)
    # shellcheck disable=SC2046
    start keel-tls-app1 "$BIN_DIR/keel" node --id app1 --listen "127.0.0.1:$p1" \
        --data-dir "$TMP/keeltls1" --role primary --standby "https://127.0.0.1:$p2" \
        "${member_flags[@]}" $(tls_of app1)
    wait_until "keel (TLS) primary with a streaming standby" keel_streaming_tls "https://127.0.0.1:$p1" "$ca"
    bench keel "https://127.0.0.1:$p1" keel-tls --tls-ca "$ca"
    REPLICA_HOLDS+=("keel-tls standby lsn $(curl -fsS --cacert "$ca" --max-time 2 "https://127.0.0.1:$p2/health" | jq -r .lsn)")
    stop_all
}

keel_streaming_tls() {
    curl -fsS --cacert "$2" --max-time 1 "$1/health" | jq -e '.standbys | length > 0 and all(.state == "streaming")'
}

# --- etcd -------------------------------------------------------------------------------

run_etcd() {
    local i cluster="" client_urls=() peer_ports=() client_ports=() leader
    for i in 1 2 3; do
        client_ports+=("$(free_port)")
        peer_ports+=("$(free_port)")
        cluster+="${cluster:+,}m$i=http://127.0.0.1:${peer_ports[i - 1]}"
    done
    for i in 1 2 3; do
        local client="http://127.0.0.1:${client_ports[i - 1]}" peer="http://127.0.0.1:${peer_ports[i - 1]}"
        client_urls+=("$client")
        start "etcd-m$i" etcd --name "m$i" --data-dir "$TMP/etcd-m$i" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "keel-bench-$$" --logger zap --log-level warn
    done
    for i in 1 2 3; do
        wait_until "etcd member m$i" etcd_healthy "${client_urls[i - 1]}"
    done
    wait_until "an etcd leader" etcd_leader "${client_urls[@]}"
    leader=$(etcd_leader "${client_urls[@]}")
    # Writes go to the leader, as keel's go to its primary: no follower-forwarding hop.
    bench etcd "$leader"
    local follower
    for follower in "${client_urls[@]}"; do
        [[ $follower == "$leader" ]] || break
    done
    REPLICA_HOLDS+=("etcd follower revision $(curl -fsS --max-time 2 -X POST -d '{}' "$follower/v3/maintenance/status" | jq -r .header.revision)")
    stop_all
}

# --- redis ------------------------------------------------------------------------------

redis_replica_up() {
    redis-cli -p "$1" info replication | tr -d '\r' | grep -qx 'master_link_status:up' &&
        redis-cli -p "$2" info replication | tr -d '\r' | grep -qx 'connected_slaves:1'
}

run_redis() {
    local pm pr common
    pm=$(free_port)
    pr=$(free_port)
    mkdir -p "$TMP/redis-master" "$TMP/redis-replica"
    # Durable before acknowledged on both, like keel: every write fsynced to the AOF.
    # RDB snapshots off, so that a fork does not land in the measured window.
    common=(--bind 127.0.0.1 --appendonly yes --appendfsync always --save '' --daemonize no)
    start redis-master redis-server --port "$pm" --dir "$TMP/redis-master" "${common[@]}"
    start redis-replica redis-server --port "$pr" --dir "$TMP/redis-replica" "${common[@]}" \
        --replicaof 127.0.0.1 "$pm"
    wait_until "redis replica" redis_replica_up "$pr" "$pm"
    bench redis "redis://127.0.0.1:$pm"
    REPLICA_HOLDS+=("redis replica keys $(redis-cli -p "$pr" dbsize)")
    stop_all
}

# --- report -----------------------------------------------------------------------------

field() {
    if [[ -f $TMP/$1.json ]]; then jq -r ".$2" "$TMP/$1.json"; fi
}

report() {
    local t
    echo
    echo "sync-replicated durable writes, ${CONCURRENCY} clients, ${VALUE_SIZE}-byte values, ${DURATION} after ${WARMUP} warm-up"
    echo "host: $(nproc) cores, $(uname -r), load average at start ${LOADAVG}"
    echo "fsync probe: ${FSYNC_US} µs per 4 KiB O_DSYNC write (dd) in ${TMPDIR:-/tmp}"
    echo
    printf '%-8s %11s %9s %9s %9s %9s %8s\n' target writes/s p50_ms p99_ms p99.9_ms max_ms errors
    for t in $TARGETS; do
        if [[ -f $TMP/$t.json ]]; then
            jq -r '[.target, (.writes_per_s | floor), .p50_ms, .p99_ms, .p999_ms, .max_ms, .errors] | @tsv' "$TMP/$t.json" |
                awk -F'\t' '{ printf "%-8s %11d %9.2f %9.2f %9.2f %9.2f %8d\n", $1, $2, $3, $4, $5, $6, $7 }'
        fi
    done
    for t in $TARGETS; do
        if [[ -f $TMP/$t.json ]]; then
            jq -r 'select(.first_error) | "  \(.target) first error: \(.first_error)"' "$TMP/$t.json"
        fi
    done
    echo
    local kw kp ew ep rw rp
    kw=$(field keel writes_per_s)
    kp=$(field keel p99_ms)
    ew=$(field etcd writes_per_s)
    ep=$(field etcd p99_ms)
    rw=$(field redis writes_per_s)
    rp=$(field redis p99_ms)
    local tw tp
    tw=$(field keel-tls writes_per_s)
    tp=$(field keel-tls p99_ms)
    echo "writes/s  keel/etcd $(ratio "$kw" "$ew")   keel/redis $(ratio "$kw" "$rw")   keel-tls/keel $(ratio "$tw" "$kw") (target: at least 0.85)"
    echo "p99       keel-tls/keel $(ratio "$tp" "$kp")"
    echo "p99       keel/etcd $(ratio "$kp" "$ep")   keel/redis $(ratio "$kp" "$rp")   (below 1: keel's p99 is lower)"
    if ((${#REPLICA_HOLDS[@]} > 0)); then
        local holds
        holds=$(printf '%s, ' "${REPLICA_HOLDS[@]}")
        echo "replicas after the load (warm-up writes included): ${holds%, }"
    fi
    if [[ -n ${KEEL_RSS_PRIMARY:-} ]]; then
        echo "keel idle RSS: primary $((KEEL_RSS_PRIMARY / 1024)) MB, standby $((KEEL_RSS_STANDBY / 1024)) MB (target < 30 MB); primary after the load $((KEEL_RSS_PRIMARY_AFTER / 1024)) MB"
    fi
}

# The disk's cost of one synchronous write, which bounds every system here: each
# acknowledged write waits for at least one fsync on each of two (or three) copies.
fsync_probe() {
    local out
    out=$(LC_ALL=C dd if=/dev/zero of="$TMP/fsync-probe" bs=4k count=200 oflag=dsync 2>&1 | tail -1)
    rm -f "$TMP/fsync-probe"
    awk -v line="$out" 'BEGIN {
        n = split(line, w, " ")
        for (i = 1; i <= n; i++) if (w[i] == "s,") secs = w[i - 1]
        printf "%.0f", secs / 200 * 1e6
    }'
}

main() {
    install_missing
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        local packages=(-p keel-bench)
        [[ " $TARGETS " == *" keel"* ]] && packages+=(-p keel)
        log "building ${packages[*]} (release)"
        cargo build --release "${packages[@]}"
    fi
    # Client and servers share the host's cores; a busy host (a build) skews every row.
    LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
    FSYNC_US=$(fsync_probe)
    local t
    for t in $TARGETS; do
        case $t in
        keel) run_keel ;;
        keel-tls) run_keel_tls ;;
        etcd) run_etcd ;;
        redis) run_redis ;;
        *) die "unknown target $t (keel, keel-tls, etcd, redis)" ;;
        esac
    done
    report
}

main "$@"
