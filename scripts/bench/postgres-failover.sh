#!/usr/bin/env bash
# scripts/bench/postgres-failover.sh — PostgreSQL COMMITs through kill -9 of the primary:
# keel's keepers vs Patroni vs pg_auto_failover.
#
# For each system in turn, on 127.0.0.1 with free ports and data in a temp dir: three
# PostgreSQL 15 servers (one primary, two streaming standbys) run by that system, and one
# writer (keel-writebench pg-failover) committing one row per transaction every INTERVAL
# on a multi-host connection (host=127.0.0.1,127.0.0.1,127.0.0.1 port=A,B,C
# target_session_attrs=read-write connect_timeout=1), reconnecting at once on any error.
# The same writer drives CYCLES cycles: wait for steady writes and every member back,
# find the primary (the server answering pg_is_in_recovery() = false), kill it (below),
# wait for a COMMIT on a new connection, bring the killed member back, wait until it
# streams again. At the end every acknowledged id is looked for on the primary of the
# moment.
#
# What a kill takes (KILL):
#   node        (the default) the primary's whole node, SIGKILL to all at once: its agent
#               (keel keeper, patroni, pg_autoctl run: the process group the script
#               started it in, with setsid, and every process descended from it) and its
#               postmaster (the pid in <data dir>/postmaster.pid) with every backend;
#               Patroni starts its postmaster in a session of its own, which is why that
#               one is found from postmaster.pid. Nothing of the member is left to act,
#               so every system must fail over. Once writes are back, the script starts
#               the killed node's agent again, as a supervisor would after a reboot; it
#               rewinds its server and follows the new primary
#   postmaster  the postmaster alone: the server crashes, the agent lives. keel's keeper
#               exits with its server (and is started again as above); Patroni's and
#               pg_autoctl's agents restart their server in place
#
# Each member's agent runs under a loop of the script's (member-loop.sh) that starts it
# with setsid, writes its pid where the driver reads it, and starts it again when the
# driver's rejoin command asks (after a node kill; for keel after either kill).
#
#   keel               keel monitor + three `keel keeper`s (defaults; pg1 --init makes the
#                      cluster, pg2 and pg3 clone it); `keel keeper` again to rejoin
#   patroni            Patroni 3.0 (Debian's), three members on a 3-member etcd 3.4, its
#                      defaults: ttl 30, loop_wait 10, retry_timeout 10; `patroni` again
#   patroni-tuned      the same with ttl 10, loop_wait 2, retry_timeout 4
#   pg_auto_failover   pg_auto_failover 2.0 (Debian's postgresql-15-auto-failover): a
#                      monitor and three nodes, defaults; `pg_autoctl run` again
#
# Patroni is given use_pg_rewind (with wal_log_hints) so that a former primary can follow
# a new one, as its documentation advises; keel and pg_auto_failover rewind by
# themselves. Replication is each system's default: synchronous (ANY 1) for keel and
# pg_auto_failover, asynchronous for Patroni.
#
# The window of one kill: from the last COMMIT acknowledged before it to the first after
# it. Lost: acknowledged COMMITs the final primary does not hold. Target for keel:
# median < 2 s, p99 < 3 s, 0 lost.
#
# Usage:  scripts/bench/postgres-failover.sh
# Knobs (environment): KILL=node (or postmaster: see above)
#                      CYCLES=10 INTERVAL=5ms (between two COMMITs) SETTLE=2s
#                      CYCLES_<target>=N (fewer cycles for one target, e.g. CYCLES_patroni=5;
#                      - in a target's name is _ here)
#                      TARGETS="keel patroni patroni-tuned pg_auto_failover"
#                      STEP_TIMEOUT=120s (any one wait of the driver before it gives up)
#                      KEEP_TMP=1 (keep data dirs and logs)
#                      SKIP_BUILD=1 (use the binaries already built)
#                      CARGO_TARGET_DIR (where cargo builds; target by default)
#
# Runs as root (PostgreSQL, Patroni and pg_autoctl then run as the postgres account, with
# setpriv); installs patroni, etcd-server, postgresql-15-auto-failover, jq and curl when
# missing. A benchmark, not a test: never part of scripts/test.
set -euo pipefail

KILL=${KILL:-node}
CYCLES=${CYCLES:-10}
INTERVAL=${INTERVAL:-5ms}
SETTLE=${SETTLE:-2s}
STEP_TIMEOUT=${STEP_TIMEOUT:-120s}
TARGETS=${TARGETS:-keel patroni patroni-tuned pg_auto_failover}
READY_TIMEOUT=120 # for wait_until: a cluster's first start (initdb, two base backups)
PG_BIN=/usr/lib/postgresql/15/bin

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# log, die, install_packages, BIN_DIR, bench_init, start, stop, stop_all, finish,
# wait_until, free_port, ratio, etcd_healthy, etcd_leader: see lib.sh.
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh # the script runs from the repository root (cd above)

require_whole_numbers CYCLES
[[ $KILL == node || $KILL == postmaster ]] || die "KILL is node or postmaster, not '$KILL'"
[[ $(id -u) -eq 0 ]] || die "run it as root: each system's servers run as the postgres account"

install_missing() {
    local packages=()
    [[ -x $PG_BIN/postgres ]] || packages+=(postgresql-15)
    [[ " $TARGETS " == *" patroni"* ]] && ! command -v patroni >/dev/null && packages+=(patroni)
    [[ " $TARGETS " == *" patroni"* ]] && ! command -v etcd >/dev/null && packages+=(etcd-server)
    [[ " $TARGETS " == *" pg_auto_failover "* ]] && ! command -v pg_autoctl >/dev/null &&
        packages+=(postgresql-15-auto-failover)
    command -v jq >/dev/null || packages+=(jq)
    command -v curl >/dev/null || packages+=(curl)
    install_packages "${packages[@]}"
}

# --- processes and cleanup --------------------------------------------------------------

bench_init keel-pg-failover
# Every server runs as postgres, which must pass through to its data directory.
chmod 0711 "$TMP"

# Data directories of every server started, so that cleanup can end a postmaster that
# its manager left behind (Patroni starts postgres in a session of its own).
PG_DIRS=()

# kill_leftover_postmasters: SIGKILL to the postmaster of each data dir, if it still runs
# from that directory.
kill_leftover_postmasters() {
    local dir pid
    for dir in "${PG_DIRS[@]}"; do
        pid=$(head -1 "$dir/postmaster.pid" 2>/dev/null) || continue
        [[ $pid =~ ^[0-9]+$ ]] || continue
        if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$dir"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

cleanup() {
    stop_members
    stop_all
    kill_leftover_postmasters
    bench_cleanup
}
trap cleanup EXIT

# end_run: stops everything the last system started.
end_run() {
    stop_members
    stop_all
    kill_leftover_postmasters
    PG_DIRS=()
}

# --- members: each node's agent, started again on the driver's word ---------------------

# The loops started (names for stop) and every agent's pid file, in member order.
MEMBER_LOOPS=()
AGENT_PID_FILES=()

# member-loop.sh PID_FILE REJOIN_FILE FIRST AGAIN: runs the agent script FIRST, then AGAIN
# each time the agent has ended and REJOIN_FILE has appeared. setsid (in place: a
# background job of a script is no group leader, so no fork) gives the agent a session
# and process group of its own, led by the pid written to PID_FILE: the node kill's
# killpg takes the agent and everything in its group, never this loop.
cat >"$TMP/member-loop.sh" <<'EOF'
pid_file=$1 rejoin=$2 script=$3 again=$4
while true; do
    setsid bash "$script" &
    echo $! >"$pid_file.new"
    mv "$pid_file.new" "$pid_file"
    wait $! || true
    echo "[member-loop] agent exited; waiting for $rejoin" >&2
    until [[ -e $rejoin ]]; do sleep 0.02; done
    rm -f "$rejoin"
    script=$again
done
EOF

# agent_script FILE CMD...: FILE, a script that becomes CMD (exec), so that the agent's
# pid is the one setsid gave the script.
agent_script() {
    local file=$1
    shift
    {
        printf 'exec'
        printf ' %q' "$@"
        echo
    } >"$file"
}

# start_member NAME DIR K FIRST_SCRIPT AGAIN_SCRIPT: member K's loop; its agent's pid in
# DIR/agent-K.pid, its rejoin file DIR/rejoin-K (the driver's rejoin command touches
# DIR/rejoin-$MEMBER).
start_member() {
    local name=$1 dir=$2 k=$3
    start "$name" --group bash "$TMP/member-loop.sh" "$dir/agent-$k.pid" "$dir/rejoin-$k" "$4" "$5"
    MEMBER_LOOPS+=("$name")
    AGENT_PID_FILES+=("$dir/agent-$k.pid")
}

# leads_group PID: whether PID runs and leads its process group (an agent of ours; the
# fields after the command's ')' are state, ppid, pgrp).
leads_group() {
    local stat pgrp
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    read -r _ _ pgrp _ <<<"${stat##*) }"
    [[ $pgrp == "$1" ]]
}

# stop_members: the loops first (so that none starts its agent again), then each agent's
# group: TERM (Patroni and pg_autoctl stop their server), KILL 10 s later.
stop_members() {
    local name file pid pids=() deadline=$((SECONDS + 10))
    for name in "${MEMBER_LOOPS[@]}"; do
        [[ -n ${PID_OF[$name]:-} ]] && stop "$name" 2
    done
    for file in "${AGENT_PID_FILES[@]}"; do
        pid=$(cat "$file" 2>/dev/null) || continue
        [[ $pid =~ ^[0-9]+$ ]] && leads_group "$pid" || continue
        kill -TERM -- "-$pid" 2>/dev/null || true
        pids+=("$pid")
    done
    for pid in "${pids[@]}"; do
        while ((SECONDS < deadline)) && alive "$pid"; do
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    MEMBER_LOOPS=()
    AGENT_PID_FILES=()
}

# pg_owned DIR...: makes each DIR, owned by postgres, private to it.
pg_owned() {
    mkdir -p "$@"
    chown postgres:postgres "$@"
    chmod 0700 "$@"
}

# A password of 32 hex characters.
new_secret() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# cycles_for TARGET: CYCLES_<TARGET> if set, else CYCLES.
cycles_for() {
    local var="CYCLES_${1//-/_}"
    echo "${!var:-$CYCLES}"
}

# --- the driver -------------------------------------------------------------------------

# drive TARGET PORTS DATA_DIRS [FLAGS...]: the writer and its kill cycles (the agents'
# pid files: AGENT_PID_FILES); the report in $TMP/TARGET.json, its progress on stderr as
# it goes.
drive() {
    local target=$1 ports=$2 dirs=$3 cycles
    shift 3
    cycles=$(cycles_for "$target")
    log "$target: $cycles cycles of kill -9 of the primary's $KILL"
    start "$target-driver" --stdout "$TMP/$target.json" "$BIN_DIR/keel-writebench" pg-failover \
        --system "$target" --ports "$ports" --data-dirs "$dirs" --cycles "$cycles" \
        --kill "$KILL" --agent-pid-files "$(IFS=,; echo "${AGENT_PID_FILES[*]}")" \
        --interval "$INTERVAL" --settle "$SETTLE" --step-timeout "$STEP_TIMEOUT" --json "$@"
    start "$target-progress" --stdout /dev/stderr \
        tail -n +1 -F --pid="${PID_OF[$target-driver]}" "$TMP/$target-driver.log"
    # wait (in finish) returns at once on a signal, so an interrupted run cleans up at once.
    finish "$target-driver" || log "$target: the driver failed (see above)"
    stop "$target-progress" 2
    jq -e . "$TMP/$target.json" >/dev/null 2>&1 || {
        log "$target: no report"
        rm -f "$TMP/$target.json"
    }
}

# --- keel -------------------------------------------------------------------------------

run_keel() {
    local dir=$TMP/keel monitor_port url k ports=() dirs=() keeper_ports=()
    mkdir -p "$dir/data"
    new_secret >"$dir/admin.token"
    new_secret >"$dir/cluster.secret"
    chmod 0600 "$dir/admin.token" "$dir/cluster.secret"
    monitor_port=$(free_port)
    url=http://127.0.0.1:$monitor_port
    start keel-monitor "$KEEL" monitor --listen "127.0.0.1:$monitor_port" --data-dir "$dir/monitor" \
        --token-file "$dir/admin.token" --cluster-secret-file "$dir/cluster.secret"
    wait_until "keel monitor" curl -fsS --max-time 1 "$url/health"
    for k in 1 2 3; do
        ports+=("$(free_port)")
        keeper_ports+=("$(free_port)")
        dirs+=("$dir/data/pg$k")
        PG_DIRS+=("$dir/data/pg$k")
    done
    # A keeper exits with its server (so that the monitor sees the one as the other), and
    # its operator starts it again: here once writes are back, after either kill.
    for k in 1 2 3; do
        local keeper=("$KEEL" keeper --id "pg$k" --listen "127.0.0.1:${keeper_ports[k - 1]}"
            --monitor "$url" --data-dir "$dir/data" --pg-port "${ports[k - 1]}"
            --token-file "$dir/admin.token" --cluster-secret-file "$dir/cluster.secret")
        if ((k == 1)); then
            agent_script "$dir/first-$k.sh" "${keeper[@]}" --init
        else
            agent_script "$dir/first-$k.sh" "${keeper[@]}"
        fi
        agent_script "$dir/again-$k.sh" "${keeper[@]}"
        start_member "keel-pg$k" "$dir" "$k" "$dir/first-$k.sh" "$dir/again-$k.sh"
        if ((k == 1)); then
            # Named primary is not yet promoted: a standby that copies the server while it
            # still is in recovery fails ("the standby was promoted during online backup").
            wait_until "pg1 primary (initdb)" keel_primary_named "$url"
            wait_until "pg1 out of recovery" keel_writable "${ports[0]}" "$dir/data/pg.password"
        fi
    done
    cat >"$dir/ready.sh" <<EOF
curl -fsS --max-time 1 "$url/v1/cluster" | jq -e '
    (.primary | if type == "object" then .node else . end) as \$p
    | .failover_in_progress != true and \$p != null
    and ([.nodes[] | select(.node != \$p and .healthy == true and .promotable == true and .sync == true)] | length == 2)' >/dev/null
EOF
    wait_until "pg2 and pg3 promotable" sh "$dir/ready.sh"
    drive keel "$(IFS=,; echo "${ports[*]}")" "$(IFS=,; echo "${dirs[*]}")" \
        --user keel --password-file "$dir/data/pg.password" \
        --rejoin-command "touch $dir/rejoin-\$MEMBER" --ready-command "sh $dir/ready.sh"
    end_run
}

# keel_writable PORT PASSWORD_FILE: the server on PORT answers that it is not in recovery.
keel_writable() {
    PGPASSWORD=$(cat "$2") psql "host=127.0.0.1 port=$1 user=keel dbname=postgres connect_timeout=1" \
        -Atc "SELECT pg_is_in_recovery()" | grep -qx f
}

keel_primary_named() {
    curl -fsS --max-time 1 "$1/v1/cluster" |
        jq -e '.primary | if type == "object" then .node else . end | strings' >/dev/null
}

# --- etcd, for Patroni ------------------------------------------------------------------

# etcd_up DIR: three etcd members (Debian's, their defaults); ETCD_HOSTS is their client
# addresses as Patroni is told them (host:port,…).
etcd_up() {
    local dir=$1 i cluster="" peer_ports=() client_ports=() urls=()
    for i in 1 2 3; do
        client_ports+=("$(free_port)")
        peer_ports+=("$(free_port)")
        cluster+="${cluster:+,}m$i=http://127.0.0.1:${peer_ports[i - 1]}"
    done
    ETCD_HOSTS=
    for i in 1 2 3; do
        local client="http://127.0.0.1:${client_ports[i - 1]}" peer="http://127.0.0.1:${peer_ports[i - 1]}"
        urls+=("$client")
        ETCD_HOSTS+="${ETCD_HOSTS:+,}127.0.0.1:${client_ports[i - 1]}"
        start "etcd-m$i" etcd --name "m$i" --data-dir "$dir/etcd-m$i" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "keel-pg-failover-$$" --logger zap --log-level warn
    done
    for i in 1 2 3; do
        wait_until "etcd member m$i" etcd_healthy "${urls[i - 1]}"
    done
    wait_until "an etcd leader" etcd_leader "${urls[@]}"
}

# --- Patroni ----------------------------------------------------------------------------

# run_patroni TARGET [TTL LOOP_WAIT RETRY_TIMEOUT]: without the three, Patroni's defaults.
run_patroni() {
    local target=$1 dir=$TMP/$1 k ports=() dirs=() api_ports=() password dcs="" rejoin=()
    # After a postmaster kill Patroni restarts its server itself; after a node kill its
    # agent is started again.
    [[ $KILL == node ]] && rejoin=(--rejoin-command "touch $dir/rejoin-\$MEMBER")
    if (($# == 4)); then
        dcs="    ttl: $2
    loop_wait: $3
    retry_timeout: $4"
    fi
    mkdir -p "$dir"
    etcd_up "$dir"
    password=$(new_secret)
    echo "$password" >"$dir/password"
    for k in 1 2 3; do
        ports+=("$(free_port)")
        api_ports+=("$(free_port)")
        dirs+=("$dir/pg$k/data")
        PG_DIRS+=("$dir/pg$k/data")
        pg_owned "$dir/pg$k"
        cat >"$dir/pg$k.yml" <<EOF
scope: $target
name: pg$k
restapi:
  listen: 127.0.0.1:${api_ports[k - 1]}
  connect_address: 127.0.0.1:${api_ports[k - 1]}
etcd3:
  hosts: $ETCD_HOSTS
bootstrap:
  dcs:
$dcs
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: "on"
  initdb:
  - encoding: UTF8
postgresql:
  listen: 127.0.0.1:${ports[k - 1]}
  connect_address: 127.0.0.1:${ports[k - 1]}
  data_dir: $dir/pg$k/data
  bin_dir: $PG_BIN
  pgpass: $dir/pg$k/pgpass
  pg_hba:
  - local all all trust
  - host all all 127.0.0.1/32 scram-sha-256
  - host replication replicator 127.0.0.1/32 scram-sha-256
  authentication:
    superuser:
      username: postgres
      password: $password
    replication:
      username: replicator
      password: $password
  parameters:
    unix_socket_directories: $dir/pg$k
EOF
        chown postgres:postgres "$dir/pg$k.yml"
        agent_script "$dir/agent-$k.sh" setpriv --reuid=postgres --regid=postgres --init-groups -- \
            patroni "$dir/pg$k.yml"
        start_member "$target-pg$k" "$dir" "$k" "$dir/agent-$k.sh" "$dir/agent-$k.sh"
        if ((k == 1)); then
            wait_until "$target: pg1 leader (initdb)" patroni_members "${api_ports[0]}" 1
        fi
    done
    wait_until "$target: three members running" patroni_members "${api_ports[0]}" 3
    # Patroni's own view agrees: a leader and both replicas running.
    cat >"$dir/ready.sh" <<EOF
curl -fsS --max-time 1 "http://127.0.0.1:${api_ports[0]}/cluster" | jq -e '
    ([.members[] | select(.role == "leader" or .role == "master")] | length == 1)
    and ([.members[] | select(.state == "running" or .state == "streaming")] | length == 3)' >/dev/null
EOF
    drive "$target" "$(IFS=,; echo "${ports[*]}")" "$(IFS=,; echo "${dirs[*]}")" \
        --user postgres --password-file "$dir/password" --ready-command "sh $dir/ready.sh" \
        "${rejoin[@]}"
    end_run
}

# patroni_members API_PORT N: Patroni's cluster view has a leader and N members running.
patroni_members() {
    curl -fsS --max-time 1 "http://127.0.0.1:$1/cluster" | jq -e --argjson n "$2" '
        ([.members[] | select(.role == "leader" or .role == "master")] | length == 1)
        and ([.members[] | select(.state == "running" or .state == "streaming")] | length == $n)' >/dev/null
}

# --- pg_auto_failover -------------------------------------------------------------------

run_pgaf() {
    local target=pg_auto_failover k ports=() dirs=() monitor_port uri pgaf rejoin=()
    PGAF_DIR=$TMP/pgaf
    pg_owned "$PGAF_DIR" "$PGAF_DIR/config" "$PGAF_DIR/share"
    # pg_autoctl as postgres, its state and config under $TMP, PostgreSQL 15's tools
    # first on the PATH.
    pgaf=(env "XDG_CONFIG_HOME=$PGAF_DIR/config" "XDG_DATA_HOME=$PGAF_DIR/share"
        "PG_CONFIG=$PG_BIN/pg_config" "PATH=$PG_BIN:$PATH"
        setpriv --reuid=postgres --regid=postgres --init-groups -- pg_autoctl)
    monitor_port=$(free_port)
    PG_DIRS+=("$PGAF_DIR/monitor")
    start pgaf-monitor --group "${pgaf[@]}" create monitor --pgdata "$PGAF_DIR/monitor" \
        --pgport "$monitor_port" --hostname 127.0.0.1 --listen 127.0.0.1 --auth trust --no-ssl --run
    uri="postgres://autoctl_node@127.0.0.1:$monitor_port/pg_auto_failover?sslmode=disable"
    wait_until "pg_auto_failover monitor" psql "$uri" -Atc "SELECT 1"
    for k in 1 2 3; do
        ports+=("$(free_port)")
        dirs+=("$PGAF_DIR/node$k")
        PG_DIRS+=("$PGAF_DIR/node$k")
        agent_script "$PGAF_DIR/first-$k.sh" "${pgaf[@]}" create postgres --pgdata "$PGAF_DIR/node$k" \
            --pgport "${ports[k - 1]}" --hostname 127.0.0.1 --listen 127.0.0.1 --name "node$k" \
            --auth trust --no-ssl --monitor "$uri" --run
        agent_script "$PGAF_DIR/again-$k.sh" "${pgaf[@]}" run --pgdata "$PGAF_DIR/node$k"
        start_member "pgaf-node$k" "$PGAF_DIR" "$k" "$PGAF_DIR/first-$k.sh" "$PGAF_DIR/again-$k.sh"
        if ((k == 1)); then
            wait_until "node1 primary (initdb)" pgaf_states "$uri" 1
        fi
    done
    wait_until "pg_auto_failover: a primary and two secondaries" pgaf_states "$uri" 3
    echo "psql '$uri' -Atc \"$(pgaf_states_sql)\" | grep -qx 3" >"$PGAF_DIR/ready.sh"
    # As for Patroni: pg_autoctl restarts its server, not itself.
    [[ $KILL == node ]] && rejoin=(--rejoin-command "touch $PGAF_DIR/rejoin-\$MEMBER")
    drive "$target" "$(IFS=,; echo "${ports[*]}")" "$(IFS=,; echo "${dirs[*]}")" \
        --user postgres --ready-command "sh $PGAF_DIR/ready.sh" "${rejoin[@]}"
    end_run
}

# pgaf_states URI N: the monitor knows N nodes, each in the state it was assigned, one
# primary (or single) and the others secondary.
pgaf_states() { psql "$1" -Atc "$(pgaf_states_sql)" | grep -qx "$2"; }
pgaf_states_sql() {
    echo "SELECT count(*) FILTER (WHERE reportedstate = goalstate AND reportedstate IN ('single', 'primary', 'secondary')) FROM pgautofailover.node"
}

# --- report -----------------------------------------------------------------------------

report() {
    local t keel_median="" keel_p99="" keel_max="" median p99 max
    echo
    case $KILL in
    node) echo "kill -9 of the PostgreSQL primary's whole node (agent and postmaster) under one writer (a COMMIT every $INTERVAL, reconnecting at once)" ;;
    postmaster) echo "kill -9 of the PostgreSQL primary's postmaster alone (its agent lives) under one writer (a COMMIT every $INTERVAL, reconnecting at once)" ;;
    esac
    echo "host: $(nproc) cores, $(uname -r), load average at start ${LOADAVG}, at end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    if [[ -f $TMP/keel.json ]]; then
        keel_median=$(jq -r '.window_median_ms // empty' "$TMP/keel.json")
        keel_p99=$(jq -r '.window_p99_ms // empty' "$TMP/keel.json")
        keel_max=$(jq -r '.window_max_ms // empty' "$TMP/keel.json")
    fi
    printf '%-17s %7s %9s %9s %9s %7s %9s %6s %14s\n' \
        system cycles median p99 max acked lost failov "median/p99/max"
    for t in $TARGETS; do
        [[ -f $TMP/$t.json ]] || continue
        median=$(jq -r '.window_median_ms // empty' "$TMP/$t.json")
        p99=$(jq -r '.window_p99_ms // empty' "$TMP/$t.json")
        max=$(jq -r '.window_max_ms // empty' "$TMP/$t.json")
        jq -r 'def secs: if . == null then "-" else "\(. / 10 | round / 100) s" end;
               [.system, "\(.recovered)/\(.cycles_asked)", (.window_median_ms, .window_p99_ms,
                .window_max_ms | secs), .acked, (.lost // "unknown"), .failovers] | @tsv' "$TMP/$t.json" |
            awk -F'\t' -v r="$(ratio "$median" "$keel_median")/$(ratio "$p99" "$keel_p99")/$(ratio "$max" "$keel_max")" \
                '{ printf "%-17s %7s %9s %9s %9s %7s %9s %6s %14s\n", $1, $2, $3, $4, $5, $6, $7, $8, r }'
    done
    echo "(window: last acknowledged COMMIT before the kill to the first after it; nearest-rank"
    echo " quantiles; failov: kills after which another member was primary; last column: ratio to keel)"
    if [[ -f $TMP/keel.json ]]; then
        jq -r '"keel targets (median < 2 s, p99 < 3 s, 0 lost): " +
            (if .window_median_ms != null and .window_median_ms < 2000 and .window_p99_ms < 3000
                and .lost == 0 and .recovered == .cycles_asked then "met" else "MISSED" end)' "$TMP/keel.json"
    fi
    echo
    for t in $TARGETS; do
        [[ -f $TMP/$t.json ]] || continue
        jq -r '"\(.system): windows (s) \([.windows_ms[] | . / 1000 * 100 | round / 100] | map(tostring) | join(" "))"' "$TMP/$t.json"
        jq -r '"  every member back after the kill (median): \(.whole_again_median_ms // 0 | . / 100 | round / 10) s; longest gap outside the windows \(.longest_gap_elsewhere_ms | round) ms; \(.failed_attempts) of \(.attempts) attempts failed"' "$TMP/$t.json"
        jq -r 'select(.aborted) | "  stopped early: \(.aborted)"' "$TMP/$t.json"
        jq -r 'select(.verify_error) | "  could not read back: \(.verify_error)"' "$TMP/$t.json"
        jq -r 'select(.lost_sample) | "  lost, for example ids: \(.lost_sample | map(tostring) | join(", "))"' "$TMP/$t.json"
    done
}

main() {
    install_missing
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        log "building keel and keel-writebench (release)"
        cargo build --release -p keel -p keel-bench
    fi
    KEEL=$PWD/$BIN_DIR/keel
    # Clients and servers share the host's cores; a busy host (a build) skews every row.
    LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
    local t
    for t in $TARGETS; do
        case $t in
        keel) run_keel ;;
        patroni) run_patroni patroni ;;
        patroni-tuned) run_patroni patroni-tuned 10 2 4 ;;
        pg_auto_failover) run_pgaf ;;
        *) die "unknown target $t (keel, patroni, patroni-tuned, pg_auto_failover)" ;;
        esac
    done
    report
}

main "$@"
