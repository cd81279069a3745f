#!/usr/bin/env bash
# scripts/bench/failover.sh — writes through kill -9: keel vs etcd vs Redis Sentinel.
#
# For each system in turn, on 127.0.0.1 with free ports and data in a temp dir: start it,
# put steady writes on it with the same client (keel-writebench failover: N writers, one
# write in flight each, unique keys, following the primary as each system's clients are
# meant to), then CYCLES times: kill -9 the primary, wait for a new one and for writes to
# be acknowledged again, restart the killed process and wait for it to be a full member
# again. At the end every acknowledged write is read back from the primary of the moment.
#
#   keel   keel monitor + 2 nodes (roles from the monitor)   PUT /v1/kv/{key} to the primary
#                                                            named by GET /v1/cluster
#   keel3  the same with 3 monitors replicating with Raft    the same, the view read from the
#          (keel monitor --peers)                            monitors' leader
#   keel3-leader  keel3, each cycle killing the primary AND the monitors' leader together
#   etcd   3 members (Debian etcd-server, default 100 ms     POST /v3/kv/put to the member
#          heartbeat, 1 s election timeout)                  that says it leads
#   redis  master + 1 replica + 3 sentinels (quorum 2,       SET then WAIT 1 0 to the master
#          down-after 1000 ms)                               named by the sentinels
#
# The window of one kill: from the last acknowledged write before it to the first after
# it, all writers together. Lost: acknowledged writes the final primary does not hold.
#
# Then, for keel, the false-failover check: FALSE_FAILOVER_DURATION of writes as fast as
# they go plus two CPU burners (`yes`), nothing killed; the monitor's /v1/events must
# show no `failover_started`.
#
# Usage:  scripts/bench/failover.sh
# Knobs (environment): CYCLES=20 CONCURRENCY=8 RATE=1000 (writes/s over all writers)
#                      VALUE_SIZE=64 SETTLE=2 (seconds of steady writes before each kill)
#                      TARGETS="keel etcd redis" (also: keel3 keel3-leader)
#                      FALSE_FAILOVER_DURATION=300s (0 skips it)
#                      FALSE_FAILOVER_MONITORS=1 (3: the check runs with a group)
#                      STEP_TIMEOUT=60 (seconds any one wait may take before giving up)
#                      KEEP_TMP=1 (keep data dirs and logs)
#                      SKIP_BUILD=1 (use the binaries already built)
#                      CARGO_TARGET_DIR (where cargo builds; target by default)
#
# Needs root (or sudo) only to install etcd-server, redis-server, jq and curl when missing.
# (Sentinel is redis-server started with --sentinel; the redis-sentinel package only adds
# a service unit, so it is not needed.) A benchmark, not a test: never part of scripts/test.
set -euo pipefail

CYCLES=${CYCLES:-20}
CONCURRENCY=${CONCURRENCY:-8}
RATE=${RATE:-1000}
VALUE_SIZE=${VALUE_SIZE:-64}
SETTLE=${SETTLE:-2}
TARGETS=${TARGETS:-keel etcd redis}
FALSE_FAILOVER_DURATION=${FALSE_FAILOVER_DURATION:-300s}
FALSE_FAILOVER_MONITORS=${FALSE_FAILOVER_MONITORS:-1}
STEP_TIMEOUT=${STEP_TIMEOUT:-60}
REDIS_DOWN_AFTER_MS=1000
# Sentinel will not fail the same master over again within twice this; it also bounds
# how long the replicas get to be reconfigured. Far above a cycle's needs, far below
# the gap between two kills of the same master name.
REDIS_FAILOVER_TIMEOUT_MS=10000
READY_TIMEOUT=$STEP_TIMEOUT # for wait_until
READY_POLL=0.05             # each step follows the last as soon as it can

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# log, die, install_packages, BIN_DIR, bench_init, start, stop, stop_all, kill9,
# wait_until, free_port, etcd_healthy, etcd_leader: see lib.sh.
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh # the script runs from the repository root (cd above)

# --- packages ---------------------------------------------------------------------------

install_missing() {
    local packages=()
    [[ " $TARGETS " == *" etcd "* ]] && ! command -v etcd >/dev/null && packages+=(etcd-server)
    if [[ " $TARGETS " == *" redis "* ]]; then
        { command -v redis-server && command -v redis-cli; } >/dev/null || packages+=(redis-server)
    fi
    command -v jq >/dev/null || packages+=(jq)
    command -v curl >/dev/null || packages+=(curl)
    install_packages "${packages[@]}"
}

# --- processes and cleanup --------------------------------------------------------------

bench_init keel-failover
# target → how many times the primary changed, as the system itself counts it: more
# than the kills means failovers nobody asked for.
declare -A PRIMARY_CHANGES=()

# define NAME CMD...: how to start NAME, kept so that a restart is the same command line.
define() {
    local var="CMD_${1//-/_}"
    shift
    mapfile -t -d '' "$var" < <(printf '%s\0' "$@")
}

# launch NAME [ARGS...]: starts NAME as defined (plus ARGS), output appended to its log.
launch() {
    local name=$1
    shift
    local -n cmd="CMD_${name//-/_}"
    start "$name" "${cmd[@]}" "$@"
}

# --- the writer -------------------------------------------------------------------------

# start_writer RUN TARGET DISCOVER [FLAGS...]: the failover writer in the background; its
# report goes to $TMP/RUN.json. Returns once it has acknowledged writes.
start_writer() {
    local run=$1 target=$2 discover=$3
    shift 3
    WRITER=$run-writer
    WRITER_STATUS=$TMP/$run.status
    WRITER_JSON=$TMP/$run.json
    start "$WRITER" --stdout "$WRITER_JSON" "$BIN_DIR/keel-writebench" failover \
        --target "$target" --discover "$discover" \
        --concurrency "$CONCURRENCY" --rate "$RATE" --value-size "$VALUE_SIZE" \
        --status-file "$WRITER_STATUS" --json "$@"
    WRITER_PID=${PID_OF[$WRITER]}
    # The status file appears once the writer handles the signals below.
    wait_until "the $target writer to start" test -s "$WRITER_STATUS"
    wait_for_writes
}

acked() { jq -r .acked "$WRITER_STATUS"; }
acked_above() { (($(acked) > $1)); }

# Returns once the writer has had a write acknowledged after this call.
wait_for_writes() {
    local before
    before=$(acked)
    wait_until "writes to be acknowledged" acked_above "$before"
}

mark_kill() { kill -USR1 "$WRITER_PID"; }
mark_recovered() { kill -USR2 "$WRITER_PID"; }

# Stops the writer; it reads every acknowledged write back and prints its report.
stop_writer() {
    # In-flight writes (2 s at most) and the read-back (30 s at most) take their time.
    stop "$WRITER" 60
    jq -e . "$WRITER_JSON" >/dev/null || die "the writer printed no report (see $TMP/*-writer.log)"
    jq -r '"[bench] \(.target): \(.kills) kills, \(.recovered) recovered, window median \(.window_median_ms // 0 | round) ms, p99 \(.window_p99_ms // 0 | round) ms, \(.acked) acked, lost \(.lost)"' \
        "$WRITER_JSON" >&2
}

# cycles KILL_ONE: CYCLES times, SETTLE seconds of steady writes then KILL_ONE, a function
# that kills the primary, marks it, waits for recovery and restarts the victim.
cycles() {
    local cycle
    for cycle in $(seq "$CYCLES"); do
        sleep "$SETTLE"
        wait_for_writes
        "$1" "$cycle"
    done
}

# --- keel -------------------------------------------------------------------------------

# The view of the monitor that leads (of the only one, when there is one): a group's
# followers name the primary too, but only the leader knows who heartbeats.
keel_cluster() {
    local m view
    for m in ${KEEL_MONITORS:-$KEEL_MONITOR}; do
        view=$(curl -fsS --max-time 1 "$m/v1/cluster") || continue
        if jq -e '.monitors == null or .monitors.leader == .monitors.answered_by' <<<"$view" >/dev/null; then
            printf '%s\n' "$view"
            return 0
        fi
    done
    return 1
}
# The leading monitor's name (m1…), in a group.
keel_leader() { keel_cluster | jq -er '.monitors.leader | strings'; }
keel_primary() { keel_cluster | jq -er '.primary | if type == "object" then .node else . end | strings'; }
keel_primary_is() { [[ $(keel_primary) == "$1" ]]; }
keel_promotable() { keel_cluster | jq -e --arg n "$1" 'any(.nodes[]; .node == $n and .promotable == true)'; }
keel_new_primary() {
    local now
    now=$(keel_primary) && [[ $now != "$1" ]] && keel_cluster | jq -e '.failover_in_progress != true'
}

# keel_events KIND: how many events of KIND the monitor has recorded. /v1/events is a
# stream of server-sent events that stays open; read the history for 2 s, then hang up.
# In a group each monitor records the decisions it took as leader: the counts add up.
keel_events() {
    local m total=0 n
    for m in ${KEEL_MONITORS:-$KEEL_MONITOR}; do
        n=$({ curl -sN --max-time 2 "$m/v1/events?since=0" || true; } |
            sed -n 's/^data: *//p' | jq -r .kind 2>/dev/null | grep -cx "$1" || true)
        total=$((total + n))
    done
    echo "$total"
}

# keel_up DIR [MONITORS]: starts one monitor (or MONITORS of them, m1…, replicating with
# Raft) and app1 then app2 in a fresh directory, app1 primary. KEEL_MONITOR is the
# monitors' URLs separated by commas, as the nodes and the writer are told; KEEL_MONITORS
# the same separated by spaces.
keel_up() {
    local dir=$1 monitors=${2:-1} p1 p2 k urls=() peers=()
    mkdir -p "$dir"
    KEEL_MONITOR_NAMES=()
    for k in $(seq "$monitors"); do
        urls+=("http://127.0.0.1:$(free_port)")
        peers+=("m$k=${urls[-1]}")
    done
    KEEL_MONITORS="${urls[*]}"
    KEEL_MONITOR=$(
        IFS=,
        echo "${urls[*]}"
    )
    if ((monitors == 1)); then
        define keel-monitor "$BIN_DIR/keel" monitor --listen "${urls[0]#http://}" --data-dir "$dir/monitor"
        KEEL_MONITOR_NAMES=(monitor)
    else
        local all_peers
        all_peers=$(
            IFS=,
            echo "${peers[*]}"
        )
        for k in $(seq "$monitors"); do
            define "keel-m$k" "$BIN_DIR/keel" monitor --id "m$k" --peers "$all_peers" \
                --listen "${urls[k - 1]#http://}" --data-dir "$dir/m$k"
            KEEL_MONITOR_NAMES+=("m$k")
        done
    fi
    p1=$(free_port)
    p2=$(free_port)
    define keel-app1 "$BIN_DIR/keel" node --id app1 --listen "127.0.0.1:$p1" \
        --data-dir "$dir/app1" --monitor "$KEEL_MONITOR"
    define keel-app2 "$BIN_DIR/keel" node --id app2 --listen "127.0.0.1:$p2" \
        --data-dir "$dir/app2" --monitor "$KEEL_MONITOR"
    for k in "${KEEL_MONITOR_NAMES[@]}"; do
        launch "keel-$k"
    done
    wait_until "keel monitors (a leader)" keel_cluster
    launch keel-app1
    wait_until "app1 primary" keel_primary_is app1
    launch keel-app2
    wait_until "app2 promotable" keel_promotable app2
}

keel_kill_primary() {
    local victim
    victim=$(keel_primary)
    log "keel cycle $1/$CYCLES: kill -9 $victim"
    mark_kill
    kill9 "keel-$victim"
    wait_until "a keel primary other than $victim" keel_new_primary "$victim"
    wait_for_writes
    mark_recovered
    launch "keel-$victim"
    wait_until "$victim promotable again" keel_promotable "$victim"
}

run_keel() {
    keel_up "$TMP/keel"
    start_writer keel keel "$KEEL_MONITOR"
    cycles keel_kill_primary
    stop_writer
    PRIMARY_CHANGES[keel]="$(keel_events failover_started) failover_started events"
    stop_all
}

# The primary and the monitors' leader, killed at the same moment.
keel_kill_primary_and_leader() {
    local victim leader
    victim=$(keel_primary)
    leader=$(keel_leader)
    log "keel3-leader cycle $1/$CYCLES: kill -9 $victim and monitor $leader"
    mark_kill
    kill9 "keel-$victim"
    kill9 "keel-$leader"
    wait_until "a keel primary other than $victim" keel_new_primary "$victim"
    wait_for_writes
    mark_recovered
    launch "keel-$leader"
    launch "keel-$victim"
    wait_until "$victim promotable again" keel_promotable "$victim"
}

# run_keel3 RUN KILL_ONE: three monitors, CYCLES kills by KILL_ONE.
run_keel3() {
    keel_up "$TMP/$1" 3
    start_writer "$1" keel "$KEEL_MONITOR"
    cycles "$2"
    stop_writer
    PRIMARY_CHANGES[$1]="$(keel_primary) primary at the end"
    stop_all
}

# The false-failover check: saturate both cores, kill nothing, count failovers.
run_keel_under_load() {
    keel_up "$TMP/keel-load" "$FALSE_FAILOVER_MONITORS"
    # As fast as acknowledgements come, plus one busy loop per core.
    RATE=0 start_writer keel-load keel "$KEEL_MONITOR"
    local i
    for i in $(seq "$(nproc)"); do
        start "cpu-burner-$i" --stdout /dev/null yes
    done
    log "keel under load for $FALSE_FAILOVER_DURATION: $(nproc) CPU burners, writes unthrottled, nothing killed"
    sleep "$FALSE_FAILOVER_DURATION"
    stop_writer
    FALSE_FAILOVERS=$(keel_events failover_started)
    FALSE_SUSPICIONS=$(keel_events suspected)
    stop_all
}

# --- etcd -------------------------------------------------------------------------------

# The raft term, which grows by one at every election.
etcd_term() {
    local leader
    leader=$(etcd_leader "${ETCD_URLS[@]}") || die "no etcd leader"
    curl -fsS --max-time 1 -X POST -d '{}' "$leader/v3/maintenance/status" | jq -r .header.raft_term
}

etcd_kill_leader() {
    local leader i url others=()
    leader=$(etcd_leader "${ETCD_URLS[@]}") || die "no etcd leader"
    for i in 1 2 3; do
        [[ ${ETCD_URLS[i - 1]} == "$leader" ]] && break
    done
    for url in "${ETCD_URLS[@]}"; do
        [[ $url == "$leader" ]] || others+=("$url")
    done
    log "etcd cycle $1/$CYCLES: kill -9 m$i (leader)"
    mark_kill
    kill9 "etcd-m$i"
    wait_until "a new etcd leader" etcd_leader "${others[@]}"
    wait_for_writes
    mark_recovered
    launch "etcd-m$i"
    wait_until "m$i healthy again" etcd_healthy "$leader"
}

run_etcd() {
    local i cluster="" peer_ports=() client_ports=()
    ETCD_URLS=()
    for i in 1 2 3; do
        client_ports+=("$(free_port)")
        peer_ports+=("$(free_port)")
        cluster+="${cluster:+,}m$i=http://127.0.0.1:${peer_ports[i - 1]}"
    done
    for i in 1 2 3; do
        local client="http://127.0.0.1:${client_ports[i - 1]}" peer="http://127.0.0.1:${peer_ports[i - 1]}"
        ETCD_URLS+=("$client")
        # Restarting with the same command line is how etcd is meant to be restarted:
        # with a data dir present, the --initial-* flags are ignored.
        define "etcd-m$i" etcd --name "m$i" --data-dir "$TMP/etcd-m$i" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "keel-failover-$$" --logger zap --log-level warn
        launch "etcd-m$i"
    done
    for i in 1 2 3; do
        wait_until "etcd member m$i" etcd_healthy "${ETCD_URLS[i - 1]}"
    done
    wait_until "an etcd leader" etcd_leader "${ETCD_URLS[@]}"
    local term_before
    term_before=$(etcd_term)
    start_writer etcd etcd "$(IFS=,; echo "${ETCD_URLS[*]}")"
    cycles etcd_kill_leader
    stop_writer
    PRIMARY_CHANGES[etcd]="$(($(etcd_term) - term_before)) raft terms (elections)"
    stop_all
}

# --- redis ------------------------------------------------------------------------------

# Prints the master's port as the sentinel on port $1 sees it.
sentinel_master_port() {
    redis-cli -p "$1" sentinel get-master-addr-by-name mymaster | sed -n 2p
}

# All sentinels name the same master, it has its replica online, and every sentinel
# sees that replica healthy and can authorise a failover: ready for the next kill.
redis_settled() {
    local s master="" port
    for s in "${SENTINEL_PORTS[@]}"; do
        port=$(sentinel_master_port "$s")
        [[ -n $port && ( -z $master || $port == "$master" ) ]] || return 1
        master=$port
        redis-cli -p "$s" sentinel ckquorum mymaster | grep -q '^OK 3 usable' || return 1
        redis-cli -p "$s" --json sentinel replicas mymaster |
            jq -e 'length == 1 and all(.[]; .flags == "slave" and .["master-link-status"] == "ok")' >/dev/null || return 1
    done
    redis-cli -p "$master" info replication | tr -d '\r' | grep -q '^slave0:.*state=online'
}

redis_master_moved() {
    local port
    port=$(sentinel_master_port "${SENTINEL_PORTS[0]}")
    [[ -n $port && $port != "$1" ]]
}

redis_kill_master() {
    local master victim new
    master=$(sentinel_master_port "${SENTINEL_PORTS[0]}")
    victim=${REDIS_NAME_OF[$master]}
    log "redis cycle $1/$CYCLES: kill -9 $victim (master)"
    mark_kill
    kill9 "$victim"
    wait_until "sentinel to promote the replica" redis_master_moved "$master"
    # WAIT 1 needs a replica, and the only one was just promoted: no write can be
    # acknowledged before the killed node is back. Restart it at once, as a replica of
    # the master the sentinels name (as an init script that asks Sentinel does); left to
    # itself it would boot as a master and Sentinel would only demote it ~8 s later.
    new=$(sentinel_master_port "${SENTINEL_PORTS[0]}")
    launch "$victim" --replicaof 127.0.0.1 "$new"
    wait_for_writes
    mark_recovered
    wait_until "redis replica and sentinels settled" redis_settled
}

run_redis() {
    local pa pb i name port
    pa=$(free_port)
    pb=$(free_port)
    SENTINEL_PORTS=()
    declare -gA REDIS_NAME_OF=()
    for name in redis-a redis-b; do
        [[ $name == redis-a ]] && port=$pa || port=$pb
        REDIS_NAME_OF[$port]=$name
        mkdir -p "$TMP/$name"
        # A config file (not flags) so that Sentinel's CONFIG REWRITE can record the
        # node's role in it. Durable before acknowledged, as in replication.sh; RDB
        # snapshots off. A replica's full resync starts at once, not after the default
        # 5 s wait for more replicas.
        {
            echo "port $port"
            echo "bind 127.0.0.1"
            echo "dir $TMP/$name"
            echo "appendonly yes"
            echo "appendfsync always"
            echo "save \"\""
            echo "repl-diskless-sync-delay 0"
            [[ $name == redis-b ]] && echo "replicaof 127.0.0.1 $pa"
        } >"$TMP/$name.conf"
        define "$name" redis-server "$TMP/$name.conf"
        launch "$name"
    done
    for i in 1 2 3; do
        port=$(free_port)
        SENTINEL_PORTS+=("$port")
        mkdir -p "$TMP/sentinel-$i"
        {
            echo "port $port"
            echo "bind 127.0.0.1"
            echo "dir $TMP/sentinel-$i"
            echo "sentinel monitor mymaster 127.0.0.1 $pa 2"
            echo "sentinel down-after-milliseconds mymaster $REDIS_DOWN_AFTER_MS"
            echo "sentinel failover-timeout mymaster $REDIS_FAILOVER_TIMEOUT_MS"
            echo "sentinel parallel-syncs mymaster 1"
        } >"$TMP/sentinel-$i.conf"
        define "sentinel-$i" redis-server "$TMP/sentinel-$i.conf" --sentinel
        launch "sentinel-$i"
    done
    wait_until "redis replica and sentinels" redis_settled
    local discover="" s
    for s in "${SENTINEL_PORTS[@]}"; do
        discover+="${discover:+,}redis://127.0.0.1:$s"
    done
    start_writer redis redis "$discover"
    cycles redis_kill_master
    stop_writer
    PRIMARY_CHANGES[redis]="$(grep -c '+switch-master' "$TMP/sentinel-1.log") +switch-master events"
    stop_all
}

# --- report -----------------------------------------------------------------------------

report() {
    local t
    echo
    echo "kill -9 of the primary under steady writes: ${CYCLES} cycles, ${CONCURRENCY} writers, ${RATE} writes/s, ${VALUE_SIZE}-byte values"
    echo "host: $(nproc) cores, $(uname -r), load average at start ${LOADAVG}, at end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    printf '%-13s %7s %10s %10s %10s %10s %12s %10s %10s\n' \
        target cycles window_min median p99 max named_median acked lost_acked
    for t in $TARGETS; do
        [[ -f $TMP/$t.json ]] || continue
        jq -r --arg run "$t" 'def secs: if . == null then "-" else "\(. / 10 | round / 100) s" end;
               [$run, "\(.recovered)/\(.kills)", (.window_min_ms, .window_median_ms, .window_p99_ms,
                .window_max_ms, .named_median_ms | secs), .acked, (.lost // "unknown")] | @tsv' "$TMP/$t.json" |
            awk -F'\t' '{ printf "%-13s %7s %10s %10s %10s %10s %12s %10s %10s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }'
    done
    echo "(window: last acknowledged write before the kill to the first after it, all writers;"
    echo " named_median: kill to the first lookup that named a new primary; nearest-rank quantiles)"
    if [[ -f $TMP/keel.json ]]; then
        jq -r '"keel targets (median < 1 s, p99 < 2 s, 0 lost): " +
            (if .window_median_ms != null and .window_median_ms < 1000 and .window_p99_ms < 2000
                and .lost == 0 and .recovered == .kills then "met" else "MISSED" end)' "$TMP/keel.json"
    fi
    if [[ -f $TMP/keel3.json ]]; then
        jq -r '"keel3 targets (median < 1 s, p99 < 1.5 s, 0 lost): " +
            (if .window_median_ms != null and .window_median_ms < 1000 and .window_p99_ms < 1500
                and .lost == 0 and .recovered == .kills then "met" else "MISSED" end)' "$TMP/keel3.json"
    fi
    if [[ -f $TMP/keel3-leader.json ]]; then
        jq -r '"keel3-leader targets (p99 < 2.5 s, 0 lost): " +
            (if .window_p99_ms != null and .window_p99_ms < 2500
                and .lost == 0 and .recovered == .kills then "met" else "MISSED" end)' "$TMP/keel3-leader.json"
    fi
    echo
    for t in $TARGETS; do
        [[ -f $TMP/$t.json ]] || continue
        echo "$t: ${PRIMARY_CHANGES[$t]:-?} over $(jq -r .kills "$TMP/$t.json") kills"
        jq -r '"  windows (s): \([.windows_ms[] | . / 1000 * 100 | round / 100] | map(tostring) | join(" "))"' "$TMP/$t.json"
        jq -r '"  longest gap between acks outside the windows: \(.longest_gap_elsewhere_ms | round) ms; \(.failed_attempts) of \(.attempts) attempts failed"' "$TMP/$t.json"
        jq -r 'select(.verify_error) | "  could not read back: \(.verify_error)"' "$TMP/$t.json"
        jq -r 'select(.lost_sample) | "  lost, for example: \(.lost_sample | join(", "))"' "$TMP/$t.json"
    done
    if [[ -f $TMP/keel-load.json ]]; then
        echo
        jq -r --arg d "$FALSE_FAILOVER_DURATION" --arg f "$FALSE_FAILOVERS" --arg s "$FALSE_SUSPICIONS" \
            --arg m "$FALSE_FAILOVER_MONITORS" \
            '"keel (\($m) monitor(s)), no kills, \($d) with every core busy: failovers \($f) (must be 0), suspicions \($s), \(.acked) writes acked (\(.acked_per_s | round)/s), longest gap \(.longest_gap_elsewhere_ms | round) ms, lost \(.lost // "unknown")"' \
            "$TMP/keel-load.json"
    fi
}

main() {
    install_missing
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        local packages=(-p keel-bench)
        [[ " $TARGETS " == *" keel"* ]] && packages+=(-p keel)
        log "building ${packages[*]} (release)"
        cargo build --release "${packages[@]}"
    fi
    # Clients and servers share the host's cores; a busy host (a build) skews every row.
    LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
    local t
    for t in $TARGETS; do
        case $t in
        keel) run_keel ;;
        keel3) run_keel3 keel3 keel_kill_primary ;;
        keel3-leader) run_keel3 keel3-leader keel_kill_primary_and_leader ;;
        etcd) run_etcd ;;
        redis) run_redis ;;
        *) die "unknown target $t (keel, keel3, keel3-leader, etcd, redis)" ;;
        esac
    done
    if [[ " $TARGETS " == *" keel"* && $FALSE_FAILOVER_DURATION != 0 && $FALSE_FAILOVER_DURATION != 0s ]]; then
        run_keel_under_load
    fi
    report
}

main "$@"
