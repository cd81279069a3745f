#!/usr/bin/env bash
# scripts/bench/postgres.sh — PostgreSQL through a TCP proxy: keel proxy --tcp vs HAProxy.
#
# One run, on 127.0.0.1 with free ports and everything in a temp dir: `keel pg` makes and
# runs a primary and two streaming standbys (pg1..pg3, the machine's PostgreSQL), and
# pgbench's tables are made on the primary (pgbench -i, replicated to the standbys).
# Then pgbench -S (select only, CLIENTS clients, prepared statements) runs against pg2:
#
#   direct   straight at pg2's port: the ceiling of the server and the client
#   keel     keel proxy --tcp --threads 1, a pool of pg2 alone, pgbench on its
#            read-only port; its checks log in and ask pg_is_in_recovery() and the
#            replay lag every second
#   haproxy  HAProxy in TCP mode, nbthread 1, one backend server pg2 with
#            `option pgsql-check` every second (fall 2, rise 2: keel's defaults; it can
#            only log in, which is all pgsql-check does)
#
# and once more for each with -C: a new connection per transaction (scram-sha-256 each
# time), the case where a proxy's cost per connection shows.
#
# Placement: the proxy under test alone on core 1 (taskset -c 1); PostgreSQL, pgbench and
# keel pg on core 0. Each measured run follows a warm-up run of its own; ROUNDS rounds are
# taken in turns and the table gives the median of each column.
#
# Columns: transactions per second; p99 latency (from pgbench's per-transaction log);
# the proxy's CPU time per transaction (user + system, from /proc/PID/stat), which moves
# far less from run to run than the rate does on a shared host.
#
# Target: keel's transactions per second at least HAProxy's, and its CPU per transaction
# no more than HAProxy's.
#
# Usage:  scripts/bench/postgres.sh
# Knobs (environment): CLIENTS=32 DURATION=10 WARMUP=2 (seconds) ROUNDS=3
#                      CONNECT_DURATION=20 (seconds per -C run: at ~100 new connections a
#                      second a proxy's CPU is a few dozen clock ticks, and shorter runs
#                      leave the ratio to the ticks' rounding)
#                      TARGETS="direct keel haproxy"
#                      KEEP_TMP=1 (keep configs and logs)
#                      SKIP_BUILD=1 (use the keel already built)
#
# Needs root (or sudo) only to install postgresql, haproxy and jq when missing.
# A benchmark, not a test: never part of scripts/test.
set -euo pipefail

CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-10}
CONNECT_DURATION=${CONNECT_DURATION:-20}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
TARGETS=${TARGETS:-direct keel haproxy}
READY_TIMEOUT=60
PROXY_CORE=1
REST_CORE=0

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

require_whole_numbers CLIENTS DURATION CONNECT_DURATION WARMUP ROUNDS

missing=()
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
command -v pgbench >/dev/null || missing+=(postgresql-client)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
command -v jq >/dev/null || missing+=(jq)
install_packages "${missing[@]}"
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building keel (release)"
    cargo build --release -q -p keel
fi
KEEL=$PWD/$BIN_DIR/keel

bench_init keel-bench-pg
# PostgreSQL runs as the postgres account when this runs as root: it must pass through.
chmod 0711 "$TMP"

PG_PORT=$(free_port)
while ss -Htan "sport = :$((PG_PORT + 1))" | grep -q . || ss -Htan "sport = :$((PG_PORT + 2))" | grep -q .; do
    PG_PORT=$(free_port)
done
USED_PORTS+="$((PG_PORT + 1)) $((PG_PORT + 2)) "
TCP_PORT=$(free_port)
while ss -Htan "sport = :$((TCP_PORT + 1))" | grep -q .; do TCP_PORT=$(free_port); done
USED_PORTS+="$((TCP_PORT + 1)) "
# PostgreSQL's monitor, then pg1..pg3's keepers.
KEEPER_PORT=$(free_port)
while ss -Htan "sport = :$((KEEPER_PORT + 1))" | grep -q . || ss -Htan "sport = :$((KEEPER_PORT + 2))" | grep -q . ||
    ss -Htan "sport = :$((KEEPER_PORT + 3))" | grep -q .; do
    KEEPER_PORT=$(free_port)
done
USED_PORTS+="$((KEEPER_PORT + 1)) $((KEEPER_PORT + 2)) $((KEEPER_PORT + 3)) "
PG2=$((PG_PORT + 1))
KEEL_RW=$(free_port) KEEL_RO=$(free_port) KEEL_ADMIN=$(free_port) HA_PORT=$(free_port)

log "keel pg: pg1..pg3 on $PG_PORT..$((PG_PORT + 2)), made by their keepers (initdb and pg_basebackup)"
start pg --core "$REST_CORE" --group "$KEEL" pg --data-dir "$TMP/data" --services 0 \
    --pg-port "$PG_PORT" --tcp-port "$TCP_PORT" --keeper-port "$KEEPER_PORT" --proxy-port "$(free_port)" \
    --proxy-admin-port "$(free_port)" --control-port "$(free_port)"
wait_until "keel pg" grep -q "Ctrl-C stops everything" "$TMP/pg.log"
PGPASSWORD=$(cat "$TMP/data/pg.password")
export PGPASSWORD PGUSER=keel PGHOST=127.0.0.1 PGDATABASE=postgres

log "pgbench -i on pg1"
taskset -c "$REST_CORE" pgbench -i -q -s 10 -p "$PG_PORT" >"$TMP/init.log" 2>&1 ||
    die "pgbench -i failed: $(tail -3 "$TMP/init.log")"
replicated() { [[ $(psql -p "$PG2" -Atc "SELECT count(*) FROM pgbench_branches") == 10 ]]; }
wait_until "the tables on pg2" replicated

echo "$PGPASSWORD" >"$TMP/pg.password"
start keel --core "$PROXY_CORE" "$KEEL" proxy --threads 1 --admin "127.0.0.1:$KEEL_ADMIN" \
    --tcp "pg2=127.0.0.1:$PG2" --tcp-read-write "127.0.0.1:$KEEL_RW" \
    --tcp-read-only "127.0.0.1:$KEEL_RO" --tcp-password-file "$TMP/pg.password"
keel_ready() { curl -fsS "http://127.0.0.1:$KEEL_ADMIN/v1/tcp" | jq -e '.pools[0].servers[0].in_read_only'; }
wait_until "keel proxy" keel_ready

cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 1s
    timeout client 1m
    timeout server 1m
listen pg
    bind 127.0.0.1:$HA_PORT
    option pgsql-check user keel
    server pg2 127.0.0.1:$PG2 check inter 1s fall 2 rise 2
EOF
start haproxy --core "$PROXY_CORE" "$HAPROXY" -db -f "$TMP/haproxy.cfg"
ha_ready() { psql -p "$HA_PORT" -Atc "SELECT 1"; }
wait_until "haproxy" ha_ready

port_of() {
    case $1 in
    direct) echo "$PG2" ;;
    keel) echo "$KEEL_RO" ;;
    haproxy) echo "$HA_PORT" ;;
    esac
}

# cpu_ticks PID: user + system clock ticks of PID so far (threads included).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
CLK_TCK=$(getconf CLK_TCK)

# run TARGET MODE SECONDS LOG: pgbench -S at TARGET (MODE: keep or connect), its
# per-transaction log under $TMP/LOG.
run() {
    local port extra=()
    port=$(port_of "$1")
    [[ $2 == connect ]] && extra+=(-C)
    rm -f "$TMP/$4".*
    (cd "$TMP" && taskset -c "$REST_CORE" pgbench -S -M prepared -n -c "$CLIENTS" -j 1 \
        -T "$3" -p "$port" "${extra[@]}" -l --log-prefix="$4") >"$TMP/$4.out" 2>&1 ||
        die "pgbench at $1 failed: $(tail -3 "$TMP/$4.out")"
}

# p99_ms LOG: the 99th percentile of the transactions' latencies in pgbench's logs.
p99_ms() {
    cat "$TMP/$1".[0-9]* | awk '{print $3}' | sort -n |
        awk '{v[NR] = $1} END { if (NR == 0) exit 1; i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f\n", v[i] / 1000 }'
}

# median: the median of the whitespace-separated numbers on stdin (nothing for none).
median() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{v[NR] = $1} END { if (NR) print v[int((NR + 1) / 2)] }'; }

declare -A RUNS_TPS=() RUNS_P99=() RUNS_CPU=()
for mode in keep connect; do
    seconds=$DURATION
    [[ $mode == connect ]] && seconds=$CONNECT_DURATION
    for ((round = 1; round <= ROUNDS; round++)); do
        for target in $TARGETS; do
            log "$target ($mode) round $round/$ROUNDS: warm-up ${WARMUP}s, then ${seconds}s"
            run "$target" "$mode" "$WARMUP" warm
            pid=
            case $target in keel | haproxy) pid=${PID_OF[$target]} ;; esac
            [[ -n $pid ]] && before=$(cpu_ticks "$pid")
            run "$target" "$mode" "$seconds" "run"
            tps=$(awk '/^tps = / {print $3; exit}' "$TMP/run.out")
            [[ -n $tps ]] || die "no tps in pgbench's output: $(tail -3 "$TMP/run.out")"
            tx=$(awk '/number of transactions actually processed:/ {print $NF}' "$TMP/run.out")
            key="$target/$mode"
            RUNS_TPS[$key]+="$tps "
            RUNS_P99[$key]+="$(p99_ms run) "
            if [[ -n $pid ]]; then
                after=$(cpu_ticks "$pid")
                RUNS_CPU[$key]+="$(awk -v t=$((after - before)) -v n="$tx" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f\n", t / hz * 1e6 / n }') "
            fi
        done
    done
done

printf '\npgbench -S, %s clients, prepared, %ss per run (%ss with -C), median of %s rounds; proxies on core %s\n' \
    "$CLIENTS" "$DURATION" "$CONNECT_DURATION" "$ROUNDS" "$PROXY_CORE"
for mode in keep connect; do
    label="one connection per client"
    [[ $mode == connect ]] && label="-C: a new connection per transaction"
    printf '\n%s\n' "$label"
    printf '  %-8s %12s %10s %14s\n' system tx/s "p99 ms" "proxy CPU µs/tx"
    declare -A TPS=() CPU=()
    for target in $TARGETS; do
        key="$target/$mode"
        TPS[$target]=$(median <<<"${RUNS_TPS[$key]}")
        p99=$(median <<<"${RUNS_P99[$key]}")
        CPU[$target]=$(median <<<"${RUNS_CPU[$key]:-}")
        printf '  %-8s %12.0f %10s %14s\n' "$target" "${TPS[$target]}" "$p99" "${CPU[$target]:--}"
    done
    if [[ -n ${TPS[keel]:-} && -n ${TPS[haproxy]:-} ]]; then
        printf '  keel/haproxy: tx/s %s, CPU per tx %s (target: tx/s ≥ 1.00, CPU ≤ 1.00)\n' \
            "$(ratio "${TPS[keel]}" "${TPS[haproxy]}")" "$(ratio "${CPU[keel]}" "${CPU[haproxy]}")"
    fi
    unset TPS CPU
done
