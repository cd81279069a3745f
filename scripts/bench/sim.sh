#!/usr/bin/env bash
# scripts/bench/sim.sh — how fast the deterministic simulator runs: seeds per second of
# `keel sim` in a release build, with every fault, for 3 nodes and for 5 with one
# monitor, for 3 nodes with a group of 3 and of 5 monitors, and for two groups of 3 nodes
# moving slots between them.
#
# There is no peer to run beside it: no HA tool a user can download ships a simulator of
# its own protocol. The figure says how many fault schedules a minute of CPU explores.
#
# Usage:  scripts/bench/sim.sh
# Knobs (environment): SEEDS=2000 (seeds per run) ROUNDS=3 (runs per size, median kept)
#                      SKIP_BUILD=1 (use the keel already built)
#                      CARGO_TARGET_DIR (where cargo builds; target by default)
#
# A benchmark, not a test: never part of scripts/test.
set -euo pipefail

SEEDS=${SEEDS:-2000}
ROUNDS=${ROUNDS:-3}

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# log, die, require_whole_numbers, BIN_DIR: see lib.sh.
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh # the script runs from the repository root (cd above)
require_whole_numbers SEEDS ROUNDS

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building keel (release)"
    cargo build --release --locked -p keel >&2
fi
[[ -x $BIN_DIR/keel ]] || die "$BIN_DIR/keel is missing: build it, or unset SKIP_BUILD"

# seeds_per_second NODES MONITORS GROUPS: one run's seeds per second, from keel sim's
# summary.
seeds_per_second() {
    local out
    out=$("$BIN_DIR/keel" sim --seeds "1..$SEEDS" --nodes "$1" --monitors "$2" --groups "$3" 2>/dev/null) ||
        die "keel sim --nodes $1 --monitors $2 --groups $3 found a failing seed:"$'\n'"$out"
    sed -n 's/.*(\([0-9]*\) seeds\/s).*/\1/p' <<<"$out" | tail -1
}

printf '%-6s %-9s %-7s %12s   (%s seeds, all faults, median of %s runs; host: %s cores)\n' \
    nodes monitors groups seeds/s "$SEEDS" "$ROUNDS" "$(nproc)"
for size in "3 1 1" "5 1 1" "3 3 1" "3 5 1" "3 1 2" "3 3 2"; do
    read -r nodes monitors groups <<<"$size"
    runs=()
    for ((r = 1; r <= ROUNDS; r++)); do
        runs+=("$(seeds_per_second "$nodes" "$monitors" "$groups")")
        log "$nodes nodes, $monitors monitor(s), $groups group(s), run $r: ${runs[-1]} seeds/s"
    done
    median=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n "$(((ROUNDS + 1) / 2))p")
    printf '%-6s %-9s %-7s %12s\n' "$nodes" "$monitors" "$groups" "$median"
done
