# shellcheck shell=bash
# Helpers shared by the benchmark scripts (sourced, not run). The sourcing script defines
# die().

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
