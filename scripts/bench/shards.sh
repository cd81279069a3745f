#!/usr/bin/env bash
# scripts/bench/shards.sh — one group against two: durable writes/s, and the CPU each
# write costs across every keel process.
#
# One run starts each layout in turn on 127.0.0.1 (free ports, data in a temp dir), puts
# the same load on it with the same client through the same front door, stops it, and
# prints a table with the ratios:
#
#   1 group    keel monitor, app1 (primary) + app2 (sync standby), keel proxy --cluster
#   2 groups   keel monitor --groups g1,g2, app1 + app2 in g1, app3 + app4 in g2, the
#              same proxy, which sends each key to its group's primary (docs/shards.md)
#
# The client is keel-writebench: CONCURRENCY keep-alive connections, one write in flight
# each, unique keys (so random slots), PUT /v1/kv/{key} through the proxy. CPU is the
# user + system time of the monitor, the nodes and the proxy (from /proc/PID/stat) over
# the client's whole run, divided by the writes the primaries logged in that time (their
# lsn). The client's own CPU is left out: it is the same for both.
#
# On a 2-core machine every process shares both cores, so two primaries cannot write
# faster than one here: the target is the CPU per write with 2 groups within 10% of 1
# group (routing by key costs almost nothing). The report adds a projection of the
# throughput with one core per node, from the primaries' CPU per write.
#
# STORE picks the nodes' durable store (keel node --store): redb, the default, or log,
# the state in memory and one append-only file, whose commit is one append and one
# fdatasync (docs/replication.md). Most of a redb commit's CPU is paid per commit, not per
# write, and each of two groups' primaries commits half as many writes at a time.
#
# On a shared machine one run's ratio moves by up to 0.35, so the layouts run ROUNDS
# times, in turn, and the report gives each figure's median over the rounds, and each
# ratio's median with its lowest and highest (each round's ratio from runs made one
# after the other).
#
# Usage:  scripts/bench/shards.sh
# Knobs (environment): DURATION=10s WARMUP=2s CONCURRENCY=64 VALUE_SIZE=64 STORE=redb
#                      ROUNDS=3
#                      KEEP_TMP=1 (keep data dirs and logs)  SKIP_BUILD=1 (use the
#                      binaries already built)  CARGO_TARGET_DIR (where cargo builds)
#
# Needs root (or sudo) only to install jq and curl when missing.
# A benchmark, not a test: never part of scripts/test.
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-64}
VALUE_SIZE=${VALUE_SIZE:-64}
STORE=${STORE:-redb}
READY_TIMEOUT=30 # seconds to wait for a layout to be up before giving up

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# log, die, install_packages, BIN_DIR, bench_init, start, stop_all, wait_until, free_port,
# ratio: see lib.sh.
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh # the script runs from the repository root (cd above)

require_whole_numbers CONCURRENCY VALUE_SIZE ROUNDS
((ROUNDS >= 1)) || die "ROUNDS=$ROUNDS: run at least one round"
[[ $STORE == redb || $STORE == log ]] || die "STORE=$STORE: use redb or log"

packages=()
command -v jq >/dev/null || packages+=(jq)
command -v curl >/dev/null || packages+=(curl)
install_packages "${packages[@]}"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building keel and keel-writebench (release)"
    cargo build --release -p keel -p keel-bench --locked >&2
fi
for bin in keel keel-writebench; do
    [[ -x $BIN_DIR/$bin ]] || die "$BIN_DIR/$bin not found (build it, or unset SKIP_BUILD)"
done

bench_init keel-shards-bench
TICKS=$(getconf CLK_TCK)

# cpu_ticks PID...: user + system time of the processes, in clock ticks.
cpu_ticks() {
    local pid total=0
    for pid in "$@"; do
        # Fields 14 and 15 of /proc/PID/stat, after the command name in parentheses.
        total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}

# group_ready MONITOR GROUP: the group has a primary and every other node promotable.
group_ready() {
    local query=""
    [[ -n $2 ]] && query="?group=$2"
    curl -fsS --max-time 1 "$1/v1/cluster$query" |
        jq -e '.primary != null and (.nodes | length == 2) and all(.nodes[]; .role == "primary" or .promotable)'
}

# primaries_lsn MONITOR GROUP...: the sum of the groups' primaries' lsn.
primaries_lsn() {
    local monitor=$1 group url total=0 query
    shift
    for group in "$@"; do
        query=""
        [[ -n $group ]] && query="?group=$group"
        url=$(curl -fsS --max-time 2 "$monitor/v1/cluster$query" | jq -r .primary.url)
        total=$((total + $(curl -fsS --max-time 2 "$url/health" | jq -r .lsn)))
    done
    echo "$total"
}

# run LABEL GROUPS WRITERS: starts the layout (GROUPS: "" for one group, "g1 g2" for
# two), loads it with WRITERS writers, and writes $TMP/LABEL.json with the client's
# figures plus writes and CPU.
run() {
    local label=$1 groups=$2 writers=$3 mport monitor pport aport k=0 group node port pids=() primaries=()
    # One group is the unnamed group (no --groups): one empty name.
    local glist=("")
    [[ -n $groups ]] && read -ra glist <<<"$groups"
    mport=$(free_port)
    monitor="http://127.0.0.1:$mport"
    local group_flag=()
    [[ -n $groups ]] && group_flag=(--groups "${groups// /,}")
    mkdir -p "$TMP/$label"
    start "$label-monitor" "$BIN_DIR/keel" monitor --listen "127.0.0.1:$mport" \
        --data-dir "$TMP/$label/monitor" "${group_flag[@]}"
    pids+=("${PID_OF[$label-monitor]}")
    for group in "${glist[@]}"; do
        for _ in 1 2; do
            k=$((k + 1))
            node=app$k
            port=$(free_port)
            local member=()
            [[ -n $group ]] && member=(--group "$group")
            start "$label-$node" "$BIN_DIR/keel" node --id "$node" --listen "127.0.0.1:$port" \
                --data-dir "$TMP/$label/$node" --monitor "$monitor" --store "$STORE" "${member[@]}"
            pids+=("${PID_OF[$label-$node]}")
            # The first node of a group registers first: it is the primary.
            sleep 0.3
        done
    done
    for group in "${glist[@]}"; do
        wait_until "group ${group:-(one)} with a primary and a promotable standby" group_ready "$monitor" "$group"
    done
    pport=$(free_port)
    aport=$(free_port)
    start "$label-proxy" "$BIN_DIR/keel" proxy --listen "127.0.0.1:$pport" \
        --admin "127.0.0.1:$aport" --cluster "$monitor"
    pids+=("${PID_OF[$label-proxy]}")
    wait_until "the proxy" curl -fsS --max-time 1 "http://127.0.0.1:$aport/health"
    # The proxy knows every group's primary once a write to each lands.
    wait_until "a write through the proxy" curl -fsS --max-time 1 -X PUT -d v "http://127.0.0.1:$pport/v1/kv/warm"

    # Each role's processes: the primaries' own CPU per write bounds the throughput with
    # a core per node; the others show where the rest goes.
    local node_pids=() standbys=()
    for group in "${glist[@]}"; do
        local query="" pnode
        [[ -n $group ]] && query="?group=$group"
        pnode=$(curl -fsS --max-time 2 "$monitor/v1/cluster$query" | jq -r .primary.node)
        primaries+=("${PID_OF[$label-$pnode]}")
    done
    local pid
    for ((k = 1; k <= ${#glist[@]} * 2; k++)); do
        pid=${PID_OF[$label-app$k]}
        [[ " ${primaries[*]} " == *" $pid "* ]] || standbys+=("$pid")
    done
    local -A before=() after=()
    local roles=(monitor primaries standbys proxy)
    role_pids() {
        case $1 in
        monitor) echo "${PID_OF[$label-monitor]}" ;;
        primaries) echo "${primaries[*]}" ;;
        standbys) echo "${standbys[*]}" ;;
        proxy) echo "${PID_OF[$label-proxy]}" ;;
        esac
    }
    local role lsn0 lsn1
    lsn0=$(primaries_lsn "$monitor" "${glist[@]}")
    for role in "${roles[@]}"; do
        # shellcheck disable=SC2046 # role_pids prints pids to split
        before[$role]=$(cpu_ticks $(role_pids "$role"))
    done
    log "$label: ${writers} writers through the proxy, warm-up ${WARMUP}, measuring ${DURATION}"
    "$BIN_DIR/keel-writebench" --target keel --url "http://127.0.0.1:$pport" \
        --concurrency "$writers" --duration "$DURATION" --warmup "$WARMUP" \
        --value-size "$VALUE_SIZE" --json >"$TMP/$label.client.json"
    for role in "${roles[@]}"; do
        # shellcheck disable=SC2046
        after[$role]=$(cpu_ticks $(role_pids "$role"))
    done
    lsn1=$(primaries_lsn "$monitor" "${glist[@]}")
    local writes=$((lsn1 - lsn0)) per_role="{}" total=0 us
    for role in "${roles[@]}"; do
        us=$(((after[$role] - before[$role]) * 1000000 / TICKS))
        total=$((total + us))
        per_role=$(jq -c --arg r "$role" --argjson us "$us" --argjson w "$writes" \
            '.[$r] = (if $w > 0 then $us / $w else null end)' <<<"$per_role")
    done
    jq --arg name "$label" --argjson writes "$writes" --argjson cpu_us "$total" \
        --argjson roles "$per_role" --argjson primaries "${#primaries[@]}" \
        '{"label": $name, writes_per_s: .writes_per_s, p50_ms: .p50_ms, p99_ms: .p99_ms,
          errors: .errors, writes: $writes, primaries: $primaries, roles: $roles,
          cpu_us_per_write: (if $writes > 0 then $cpu_us / $writes else null end),
          primary_cpu_us_per_write: $roles.primaries}' \
        "$TMP/$label.client.json" >"$TMP/$label.json"
    jq -r '"[bench] \(.label): \(.writes_per_s | floor) writes/s, p99 \(.p99_ms) ms, \(.cpu_us_per_write | floor) µs CPU per write, \(.errors) errors"' \
        "$TMP/$label.json" >&2
    stop_all
}

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
# Each primary of two groups sees half the writers: one group at that load, and two
# groups at twice the writers, tell how much of the difference is smaller group
# commits rather than routing.
HALF=$((CONCURRENCY / 2))
DOUBLE=$((CONCURRENCY * 2))
LAYOUTS=(one-group two-groups one-group-half two-groups-double)
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round of $ROUNDS"
    run "one-group-r$round" "" "$CONCURRENCY"
    run "two-groups-r$round" "g1 g2" "$CONCURRENCY"
    run "one-group-half-r$round" "" "$HALF"
    # And two groups with twice the writers: each primary as loaded as one group's.
    run "two-groups-double-r$round" "g1 g2" "$DOUBLE"
done

# Each layout's figures: the median over the rounds (errors: their sum).
for l in "${LAYOUTS[@]}"; do
    runs=()
    for ((round = 1; round <= ROUNDS; round++)); do runs+=("$TMP/$l-r$round.json"); done
    jq -s --arg name "$l" '
        def median: sort | if length % 2 == 1 then .[length / 2 | floor]
                           else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        . as $runs
        | reduce ("writes_per_s", "p50_ms", "p99_ms", "writes", "primaries", "cpu_us_per_write",
                  "primary_cpu_us_per_write") as $k
            ({"label": $name, errors: ([$runs[].errors] | add)}; .[$k] = ([$runs[][$k]] | median))
        | .roles = (reduce ("monitor", "primaries", "standbys", "proxy") as $r
            ({}; .[$r] = ([$runs[].roles[$r]] | median)))' "${runs[@]}" >"$TMP/$l.json"
done

# ratio FIELD A B: A's FIELD over B's, each round's; printed as the median (lowest–highest).
ratio() {
    local round values=()
    for ((round = 1; round <= ROUNDS; round++)); do
        values+=("$(jq -n --slurpfile a "$TMP/$2-r$round.json" --slurpfile b "$TMP/$3-r$round.json" \
            "\$a[0].$1 / \$b[0].$1")")
    done
    printf '%s\n' "${values[@]}" | jq -rs '
        def median: sort | if length % 2 == 1 then .[length / 2 | floor]
                           else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        def r3: . * 1000 | round / 1000 | tostring;
        if length == 1 then .[0] | r3
        else "\(median | r3) (\(min | r3)–\(max | r3) over \(length) rounds)" end'
}

f() { jq -r ".$2" "$TMP/$1.json"; }
echo
echo "durable writes through keel proxy --cluster, ${CONCURRENCY} writers (one-group-half: ${HALF}, two-groups-double: ${DOUBLE}), ${VALUE_SIZE}-byte values, nodes on --store ${STORE}, ${DURATION} after ${WARMUP} warm-up"
echo "host: $(nproc) cores, $(uname -r), load average at start ${LOADAVG}; CPU of monitor, nodes and proxy"
echo "each figure the median of ${ROUNDS} rounds (errors: their sum)"
echo
printf '%-17s %10s %8s %8s %7s %14s\n' layout writes/s p50_ms p99_ms errors cpu_us/write
for l in one-group two-groups one-group-half two-groups-double; do
    printf '%-17s %10.0f %8.2f %8.2f %7d %14.1f\n' "$l" "$(f "$l" writes_per_s)" "$(f "$l" p50_ms)" \
        "$(f "$l" p99_ms)" "$(f "$l" errors)" "$(f "$l" cpu_us_per_write)"
done
echo
echo "CPU per write, 2 groups / 1 group: $(ratio cpu_us_per_write two-groups one-group) (target: at most 1.10)"
echo "CPU per write, 2 groups / 1 group at ${HALF} writers (each primary's load): $(ratio cpu_us_per_write two-groups one-group-half)"
echo "CPU per write, 2 groups at ${DOUBLE} writers / 1 group at ${CONCURRENCY} (each primary equally loaded): $(ratio cpu_us_per_write two-groups-double one-group)"
echo "writes/s, 2 groups / 1 group:      $(ratio writes_per_s two-groups one-group) (2 cores shared by every process: no gain expected here)"
# The projection: with one core per node, a primary writes at most 1 s / (its own CPU per
# write), and each group's primary takes its share of the writes.
proj() {
    awk -v us="$(f "$1" primary_cpu_us_per_write)" -v n="$(f "$1" primaries)" \
        'BEGIN { if (us > 0) printf "%.0f", n * 1000000 / us; else print "?" }'
}
echo
echo "CPU per write by role (µs; each write lands on one primary and its standby):"
printf '%-17s %9s %9s %9s %9s\n' layout monitor primaries standbys proxy
for l in one-group two-groups one-group-half two-groups-double; do
    printf '%-17s %9.1f %9.1f %9.1f %9.1f\n' "$l" "$(f "$l" roles.monitor)" "$(f "$l" roles.primaries)" \
        "$(f "$l" roles.standbys)" "$(f "$l" roles.proxy)"
done
echo
echo "projection, one core per node (a primary's CPU per write bounds it): 1 group $(proj one-group) writes/s, 2 groups $(proj two-groups) writes/s"
