# shellcheck shell=bash
# Helpers shared by the benchmark scripts (sourced, not run, from the repository root).
#
#   log, die                     messages on stderr, prefixed [bench]
#   require_whole_numbers        knob checks
#   install_packages             apt-get install of what a script found missing
#   BIN_DIR                      where `cargo build --release` puts the binaries
#   bench_init                   $TMP, and the traps that clean up on any exit
#   start, stop, stop_all,       the processes a script starts, by name (alive, send,
#   kill9, finish                ask_to_end and reap are their parts)
#   wait_until                   retry a check until it holds, or give up
#   free_port                    a loopback port for a server
#   wrk_field, wrk_ms            figures from wrk's report
#   ratio, rss_kb                report arithmetic
#   etcd_healthy, etcd_leader    etcd checks shared by replication.sh and failover.sh

# --- messages ---------------------------------------------------------------------------

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# require_whole_numbers NAME...: dies unless each variable NAME holds a whole number
# above 0.
require_whole_numbers() {
    local knob
    for knob in "$@"; do
        [[ ${!knob} =~ ^[1-9][0-9]*$ ]] || die "$knob must be a whole number above 0, not '${!knob}'"
    done
}

# install_packages PACKAGE...: installs the Debian packages named, through sudo when not
# root; nothing when none are named.
install_packages() {
    (($# > 0)) || return 0
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    log "installing $*"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}

# Where `cargo build --release` puts the binaries: cargo reads CARGO_TARGET_DIR (relative
# to the repository root, where the scripts run), and so do the scripts.
# shellcheck disable=SC2034 # used by the scripts that source this file
BIN_DIR=${CARGO_TARGET_DIR:-target}/release

# --- the temp dir and cleanup -----------------------------------------------------------

# bench_init PREFIX: makes the run's temp dir, $TMP (PREFIX.XXXXXX under $TMPDIR or /tmp),
# and makes sure that however the script ends, every process it started is stopped and
# $TMP removed (kept with KEEP_TMP=1).
bench_init() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    trap bench_cleanup EXIT
    # An interrupted run exits, and so runs the EXIT trap.
    trap 'exit 130' INT TERM
}

bench_cleanup() {
    stop_all
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}

# --- processes --------------------------------------------------------------------------

# Every process started with start and not yet stopped: name → pid. Stopping by name
# stops only what this script started, never anything else of the same program.
declare -A PID_OF=()
# The names started with --group: name → 1. Their pid is also their process group's id.
declare -A GROUPED=()

# start NAME [--core N] [--group] [--stdout FILE] CMD...: runs CMD in the background as
# NAME, its pid in PID_OF[NAME]; stdout and stderr appended to $TMP/NAME.log, or stdout
# to FILE with --stdout.
#   --core N    pinned to core N (taskset)
#   --group     the leader of a process group of its own, so that stop and kill9 reach
#               the children it forks too (an nginx master and its worker)
start() {
    local name=$1 prefix=() out
    shift
    out=$TMP/$name.log
    while true; do
        case $1 in
        --core)
            prefix+=(taskset -c "$2")
            shift 2
            ;;
        --group)
            # Without job control a background job is not a group leader, so setsid makes
            # the new session in place (no fork): $! is the process's pid and its group's id.
            prefix=(setsid "${prefix[@]}")
            GROUPED[$name]=1
            shift
            ;;
        --stdout)
            out=$2
            shift 2
            ;;
        *) break ;;
        esac
    done
    "${prefix[@]}" "$@" >>"$out" 2>>"$TMP/$name.log" &
    PID_OF[$name]=$!
}

# alive PID: whether PID runs (a zombie, ended but not yet reaped, does not count).
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# send SIGNAL NAME: SIGNAL to NAME, or to its whole group when started with --group.
send() {
    local pid=${PID_OF[$2]}
    if [[ -n ${GROUPED[$2]:-} ]]; then
        kill "-$1" -- "-$pid"
    else
        kill "-$1" "$pid"
    fi
}

# ask_to_end NAME: TERM, and CONT so that a paused (SIGSTOPped) process acts on it.
ask_to_end() {
    send TERM "$1" 2>/dev/null || true
    send CONT "$1" 2>/dev/null || true
}

# reap NAME SECONDS: up to SECONDS for NAME to end, then KILL for whatever is left (for a
# group, a worker whose master is gone); NAME reaped and forgotten.
reap() {
    local pid=${PID_OF[$1]} deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)) && alive "$pid"; do
        sleep 0.1
    done
    if [[ -n ${GROUPED[$1]:-} ]] || alive "$pid"; then
        send KILL "$1" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    unset "PID_OF[$1]" "GROUPED[$1]"
}

# stop NAME [SECONDS]: ends NAME: TERM, then KILL after SECONDS (5 by default).
stop() {
    ask_to_end "$1"
    reap "$1" "${2:-5}"
}

# stop_all: stops every process started and not yet stopped (TERM to all at once, then
# KILL to any still running 5 s later).
stop_all() {
    local name
    for name in "${!PID_OF[@]}"; do
        ask_to_end "$name"
    done
    for name in "${!PID_OF[@]}"; do
        reap "$name" 5
    done
}

# kill9 NAME: SIGKILL to NAME (its whole group when started with --group); reaped and
# forgotten.
kill9() {
    local pid=${PID_OF[$1]}
    send KILL "$1" || die "could not kill $1 (pid $pid): it had ended"
    wait "$pid" 2>/dev/null || true
    unset "PID_OF[$1]" "GROUPED[$1]"
}

# finish NAME: waits for NAME to end by itself, and forgets it; returns its exit status.
finish() {
    local pid=${PID_OF[$1]} status=0
    wait "$pid" || status=$?
    unset "PID_OF[$1]" "GROUPED[$1]"
    return "$status"
}

# wait_until WHAT CMD...: retries CMD (quietly) every READY_POLL seconds (0.2 unless the
# script sets it) until it succeeds; dies after READY_TIMEOUT seconds (set by the script).
wait_until() {
    local what=$1
    shift
    local deadline=$((SECONDS + READY_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "gave up waiting for $what after ${READY_TIMEOUT}s (logs in $TMP; KEEP_TMP=1 keeps them)"
        sleep "${READY_POLL:-0.2}"
    done
}

# A free TCP port on 127.0.0.1, not handed out before in this run. Taken below the
# kernel's ephemeral range: a load opens and closes many connections, and a port in that
# range may be the local end of one (or of a socket in TIME_WAIT) when a server is
# started, or restarted, on it.
USED_PORTS=" "
EPHEMERAL_FIRST=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
free_port() {
    local port
    for _ in $(seq 1000); do
        port=$((10000 + RANDOM % (EPHEMERAL_FIRST - 10000)))
        [[ $USED_PORTS == *" $port "* ]] && continue
        ss -Htan "sport = :$port" | grep -q . && continue
        USED_PORTS+="$port "
        echo "$port"
        return
    done
    die "no free port found"
}

# --- wrk's report -----------------------------------------------------------------------

# wrk_field FILE FIELD: one figure from the report of `wrk --latency` in FILE, as wrk
# printed it:
#   requests                 requests completed
#   rps                      requests per second
#   p50 p75 p90 p99          latency quantiles (with a unit: see wrk_ms)
#   non2xx                   answers other than 2xx or 3xx
#   connect read write timeout   socket errors
# wrk prints its two error lines only when something is counted: those figures are 0
# when absent. Dies when any other is missing (wrk did not finish).
wrk_field() {
    local file=$1 value
    case $2 in
    requests) value=$(awk '/ requests in / {print $1}' "$file") ;;
    rps) value=$(awk '$1 == "Requests/sec:" {print $2}' "$file") ;;
    p50 | p75 | p90 | p99) value=$(awk -v q="${2#p}%" '$1 == q {print $2}' "$file") ;;
    non2xx)
        value=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$file")
        value=${value:-0}
        ;;
    connect | read | write | timeout)
        # Socket errors: connect 0, read 3, write 0, timeout 0
        value=$(awk -v k="$2" '/Socket errors:/ {
                    gsub(",", "")
                    for (i = 3; i < NF; i++) if ($i == k) print $(i + 1)
                }' "$file")
        value=${value:-0}
        ;;
    *) die "wrk_field: no field '$2'" ;;
    esac
    [[ -n $value ]] || die "no $2 in wrk's report $file: $(tail -3 "$file")"
    echo "$value"
}

# wrk_ms VALUE: a latency as wrk prints it (812.00us, 3.00ms, 1.20s, 1.00m, 1.00h) in
# milliseconds, to three decimals.
wrk_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) ms = v / 1000
        else if (v ~ /ms$/) ms = v + 0
        else if (v ~ /m$/) ms = v * 60000
        else if (v ~ /h$/) ms = v * 3600000
        else if (v ~ /s$/) ms = v * 1000
        else exit 1
        printf "%.3f\n", ms
    }' || die "not a latency from wrk: '$1'"
}

# --- report arithmetic ------------------------------------------------------------------

# ratio A B: "A/B" to two decimals, or "n/a" when either is empty (did not run) or B is 0.
ratio() {
    if [[ -n $1 && -n $2 ]]; then
        awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f\n", a / b }'
    else
        echo "n/a"
    fi
}

# rss_kb PID: the resident memory of PID, in kB.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# --- etcd -------------------------------------------------------------------------------

# etcd_healthy URL: whether the etcd member at URL says it is healthy.
etcd_healthy() { curl -fsS --max-time 1 "$1/health" | jq -e '.health == "true"'; }

# etcd_leader URL...: prints the client URL of the member, among URL..., that leads.
etcd_leader() {
    local url status
    for url in "$@"; do
        status=$(curl -fsS --max-time 1 -X POST -d '{}' "$url/v3/maintenance/status") || continue
        if jq -e '.header.member_id == .leader' <<<"$status" >/dev/null; then
            echo "$url"
            return 0
        fi
    done
    return 1
}
