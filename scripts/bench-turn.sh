#!/usr/bin/env bash
# TURN relay benchmark: natkit-turn against coturn's turnserver, same machine,
# same load generators, one run.
#
#   bash scripts/bench-turn.sh
#
# Builds release binaries, starts both relays on loopback and measures, for
# each:
#   1. relayed ChannelData packets/s, loss and round-trip latency with
#      `natkit bench turn` (ROUNDS rounds, alternating which relay goes first;
#      median), plus the relay's own CPU use during each round, and the
#      allocation rate of the generator's setup phase;
#   2. the same with coturn's own generator, `turnutils_uclient` (client to
#      client through the relay, channels; coturn 4.6 has no `-Y packet`);
#   3. memory: MEM_ALLOCATIONS allocations (each with a channel to its partner,
#      relay to relay) held idle, the relay's anonymous memory and RSS
#      before and after, per allocation.
# Goals (docs/PERFORMANCE.md): relayed packets/s >= 1.5x coturn's, < 4 KiB of
# user-space memory per allocation, allocation rate >= coturn's.
#
# Settings (environment): DURATION=10s WARMUP=2s ALLOCATIONS=8 WINDOW=64
# SIZE=100 THREADS=2 PEER_MODE=udp GSO=0 (1: the generator sends GSO trains) ROUNDS=3 UCLIENT_CLIENTS=40 UCLIENT_MSGS=4000
# MEM_ALLOCATIONS=10000 NATKIT_PORT=36478 COTURN_PORT=36479 SKIP_BUILD=0 WAIT_IDLE=0
# (seconds to wait for an idle machine before each measurement). Only
# loopback is loaded. Needs coturn (apt-get install -y coturn). Both relays
# are stopped by PID on exit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ALLOCATIONS=${ALLOCATIONS:-8}
WINDOW=${WINDOW:-64}
SIZE=${SIZE:-100}
THREADS=${THREADS:-2}
PEER_MODE=${PEER_MODE:-udp}
GSO=${GSO:-0}
ROUNDS=${ROUNDS:-3}
UCLIENT_CLIENTS=${UCLIENT_CLIENTS:-40}
UCLIENT_MSGS=${UCLIENT_MSGS:-4000}
MEM_ALLOCATIONS=${MEM_ALLOCATIONS:-10000}
NATKIT_PORT=${NATKIT_PORT:-36478}
COTURN_PORT=${COTURN_PORT:-36479}
PASSWORD=bench-$RANDOM$RANDOM

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
need_coturn

# Every allocation is a socket in the relay and one (two with UDP peers) in
# the generator.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= MEM_ALLOCATIONS + 1000)) ||
    die "open-file limit $(ulimit -n) is too low for MEM_ALLOCATIONS=$MEM_ALLOCATIONS"

build_release natkit-turn natkit-cli
TURN=$target/release/natkit-turn
NATKIT=$target/release/natkit

need_free_udp_ports "$COTURN_PORT" "$NATKIT_PORT"

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Relay port ranges below the ephemeral range (32768-60999), > 10k ports each.
# Both relays: loopback only, one static user, peers on loopback allowed,
# quotas above MEM_ALLOCATIONS, default thread counts (one relay worker per
# core for natkit-turn; coturn's defaults: UDP listener threads per core and
# its relay threads), no TLS/DTLS/CLI.
start_natkit() {
    "$TURN" --listen "127.0.0.1:$NATKIT_PORT" --relay-ip 127.0.0.1 --realm natkit \
        --min-port 10000 --max-port 21999 --user "bench:$PASSWORD" --allow-peer 127.0.0.0/8 \
        --max-allocations $((MEM_ALLOCATIONS + 1000)) --user-quota $((MEM_ALLOCATIONS + 1000)) \
        --drain-grace 0 >"$tmp/natkit.log" 2>&1 &
    pids+=($!)
    natkit_pid=$!
    wait_ready "$natkit_pid" "$NATKIT_PORT" "$tmp/natkit.log"
}
start_coturn() {
    turnserver -n --listening-ip 127.0.0.1 --listening-port "$COTURN_PORT" --relay-ip 127.0.0.1 \
        --realm natkit --lt-cred-mech --user "bench:$PASSWORD" --allow-loopback-peers \
        --min-port 22000 --max-port 32767 --no-tls --no-dtls --no-cli \
        --pidfile="$tmp/turn.pid" --log-file="$tmp/turn.log" --simple-log >"$tmp/turn.out" 2>&1 &
    pids+=($!)
    coturn_pid=$!
    wait_ready "$coturn_pid" "$COTURN_PORT" "$tmp/turn.out"
}
start_natkit
start_coturn

# CPU seconds (user + system) a process has used.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
now_s() { date +%s.%N; }

idle=$(idle_pct)
model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
say "machine: $(nproc) cores, ${model:-unknown CPU}, Linux $(uname -r), ${idle}% idle before the run"
say "coturn: $(turnserver --version 2>/dev/null | head -1) (pid $coturn_pid, 127.0.0.1:$COTURN_PORT); natkit-turn: pid $natkit_pid, 127.0.0.1:$NATKIT_PORT"
((idle >= 90)) || say "warning: the machine is busy; figures will be low and noisy"

args=(--user bench --password "$PASSWORD" --duration "$DURATION" --warmup "$WARMUP"
    --allocations "$ALLOCATIONS" --window "$WINDOW" --size "$SIZE" --threads "$THREADS"
    --peer-mode "$PEER_MODE" --json)
[[ $GSO == 1 ]] && args+=(--gso)
say "load: natkit bench turn 127.0.0.1:PORT ${args[*]/$PASSWORD/PASSWORD}"

field() { grep -o "\"$2\": *-\?[0-9.e+-]*" "$1" | head -1 | sed 's/.*: *//'; }
field_in() { grep -A8 "\"$2\"" "$1" | grep -o "\"$3\": *-\?[0-9.e+-]*" | head -1 | sed 's/.*: *//'; }

run_one() {
    local name=$1 port=$2 pid=$3 round=$4 out="$tmp/$1.$4.json"
    wait_idle
    local idle c0 c1 t0 t1 server_cores
    idle=$(idle_pct)
    c0=$(cpu_s "$pid")
    t0=$(now_s)
    "$NATKIT" bench turn "127.0.0.1:$port" "${args[@]}" >"$out"
    t1=$(now_s)
    c1=$(cpu_s "$pid")
    server_cores=$(awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" 'BEGIN {printf "%.2f", (b - a) / (e - s)}')
    printf '    round %d %-12s %9.0f relayed packets/s  lost %s  rtt p50 %s us p99 %s us  relay CPU %s cores  generator CPU %s cores  setup %s allocations/s  (idle before: %s%%)\n' \
        "$round" "$name" "$(field "$out" relayed_packets_per_sec)" "$(field "$out" lost)" \
        "$(field_in "$out" latency_us p50)" "$(field_in "$out" latency_us p99)" "$server_cores" \
        "$(field "$out" client_cpu_cores)" "$(field "$out" allocations_per_sec)" "$idle"
    field "$out" relayed_packets_per_sec >>"$tmp/$name.pps"
    field "$out" allocations_per_sec >>"$tmp/$name.aps"
    # Relayed packets per second of the relay's own CPU time.
    awk -v p="$(field "$out" relayed_packets_per_sec)" -v c="$server_cores" \
        'BEGIN {printf "%.0f\n", (c > 0) ? p / c : 0}' >>"$tmp/$name.ppc"
}

say "1. natkit bench turn, $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then
        run_one coturn "$COTURN_PORT" "$coturn_pid" "$r"
        run_one natkit-turn "$NATKIT_PORT" "$natkit_pid" "$r"
    else
        run_one natkit-turn "$NATKIT_PORT" "$natkit_pid" "$r"
        run_one coturn "$COTURN_PORT" "$coturn_pid" "$r"
    fi
done

median() { sort -g "$1" | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
ratio() { awk -v k="$1" -v c="$2" 'BEGIN {printf "%.2f", (c > 0) ? k / c : 0}'; }

say "2. turnutils_uclient -y -m $UCLIENT_CLIENTS -n $UCLIENT_MSGS -l $SIZE -z 0 (client to client, channels)"
uclient() {
    local name=$1 port=$2 out="$tmp/$1.uclient"
    wait_idle
    (cd "$tmp" && timeout 300 turnutils_uclient -u bench -w "$PASSWORD" -p "$port" -y \
        -m "$UCLIENT_CLIENTS" -n "$UCLIENT_MSGS" -l "$SIZE" -z 0 127.0.0.1 >"$out" 2>&1) || true
    local recv secs lost
    recv=$(grep -o 'tot_recv_msgs=[0-9]*$' "$out" | tail -1 | cut -d= -f2)
    secs=$(grep -o 'Total transmit time is [0-9]*' "$out" | tail -1 | awk '{print $5}')
    lost=$(grep -o 'Total lost packets [0-9]* ([0-9.]*%' "$out" | tail -1 | sed 's/Total lost packets //')
    printf '    %-12s received %s messages in %s s: %s messages/s, lost %s)\n' "$name" "${recv:-?}" "${secs:-?}" \
        "$(awk -v r="${recv:-0}" -v s="${secs:-0}" 'BEGIN {printf "%.0f", (s > 0) ? r / s : 0}')" "${lost:-?}"
}
uclient coturn "$COTURN_PORT"
uclient natkit-turn "$NATKIT_PORT"

say "3. memory: $MEM_ALLOCATIONS allocations held (relay to relay, one channel each)"
memory() {
    local name=$1 port=$2 pid=$3 out="$tmp/$1.mem.json"
    "$NATKIT" bench turn "127.0.0.1:$port" --user bench --password "$PASSWORD" \
        --allocations "$MEM_ALLOCATIONS" --peer-mode relay --hold 5s --server-pid "$pid" \
        --setup-timeout 300s --json >"$out"
    printf '    %-12s RSS %s -> %s KiB, anonymous %s -> %s KiB: %s B anonymous, %s B RSS per allocation; setup %s allocations/s\n' \
        "$name" "$(field_in "$out" before rss_kib)" "$(field_in "$out" after rss_kib)" \
        "$(field_in "$out" before anonymous_kib)" "$(field_in "$out" after anonymous_kib)" \
        "$(field_in "$out" per_allocation anonymous_bytes)" "$(field_in "$out" per_allocation rss_bytes)" \
        "$(field "$out" allocations_per_sec)"
    field "$out" allocations_per_sec >"$tmp/$name.aps_mem"
}
memory natkit-turn "$NATKIT_PORT" "$natkit_pid"
memory coturn "$COTURN_PORT" "$coturn_pid"

c=$(median "$tmp/coturn.pps")
k=$(median "$tmp/natkit-turn.pps")
# The allocation rate of the memory step (MEM_ALLOCATIONS allocations, 64 in
# flight) is the meaningful one; the load rounds allocate only a few.
ca=$(cat "$tmp/coturn.aps_mem")
ka=$(cat "$tmp/natkit-turn.aps_mem")
cc=$(median "$tmp/coturn.ppc")
kc=$(median "$tmp/natkit-turn.ppc")
echo
say "median over $ROUNDS rounds (natkit bench turn):"
printf '    %-12s %10s %14s %22s\n' "" "relayed/s" "allocations/s" "relayed per relay-CPU-s"
# (allocations/s: from step 3)
printf '    %-12s %10.0f %14.0f %22.0f\n' coturn "$c" "$ca" "$cc"
printf '    %-12s %10.0f %14.0f %22.0f\n' natkit-turn "$k" "$ka" "$kc"
printf '    %-12s %9sx %13sx %21sx   (goals: relayed >= 1.5x, allocations >= 1x)\n' ratio \
    "$(ratio "$k" "$c")" "$(ratio "$ka" "$ca")" "$(ratio "$kc" "$cc")"
