#!/usr/bin/env bash
# TURN relays under unauthenticated floods: natkit-turn against coturn's
# turnserver, same machine, same generator (`natkit bench flood`), rounds
# interleaved (the first relay of a round alternates), a fresh relay process
# per round.
#
#   bash scripts/bench-flood.sh
#
# Each round: an existing allocation streams RATE packets/s to a peer that
# echoes them; WARMUP seconds of baseline; then DURATION seconds during which
# a UDP flood (bare and REQUESTED-TRANSPORT Allocates and bare Refreshes from
# UDP_SOURCES loopback addresses, sendmmsg, unpaced) and a TCP flood
# (TCP_CONNECTIONS connections pipelining CreatePermission requests with a
# nonce from a 401 and a wrong MESSAGE-INTEGRITY) run as fast as the
# generator can send, while Binding requests (every 100 ms) and new users on
# other addresses (every 250 ms) measure what the relay still does, and the
# relay's RSS is sampled. Also the generator's ceiling: the same UDP flood
# into a socket that never reads.
#
# Goals (issue 15): under the floods the existing allocation loses < 1 %,
# new users allocate, RSS < 64 MiB, the UDP listener keeps answering.
#
# Settings (environment): ROUNDS=3 DURATION=10s WARMUP=3s RATE=1000
# UDP_SOURCES=256 TCP_CONNECTIONS=8 NATKIT_PORT=38478 COTURN_PORT=38479
# SKIP_BUILD=0. Only loopback is loaded. Needs coturn (apt-get install -y
# coturn). Relays are stopped by PID after each round.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
RATE=${RATE:-1000}
UDP_SOURCES=${UDP_SOURCES:-256}
TCP_CONNECTIONS=${TCP_CONNECTIONS:-8}
NATKIT_PORT=${NATKIT_PORT:-38478}
COTURN_PORT=${COTURN_PORT:-38479}
PASSWORD=bench-$RANDOM$RANDOM

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
need_coturn
command -v python3 >/dev/null 2>&1 || die "python3 is needed for the summary"

build_release natkit-turn natkit-cli
TURN=$target/release/natkit-turn
NATKIT=$target/release/natkit

need_free_udp_ports "$COTURN_PORT" "$NATKIT_PORT"

tmp=$(mktemp -d)
pid=
cleanup() {
    [[ -n $pid ]] && { kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Both relays: loopback only, one static user, loopback peers allowed,
# default thread counts, no TLS/DTLS/CLI, no SOFTWARE attribute.
start_natkit() {
    "$TURN" --listen "127.0.0.1:$NATKIT_PORT" --relay-ip 127.0.0.1 --realm natkit \
        --min-port 10000 --max-port 21999 --user "bench:$PASSWORD" --allow-peer 127.0.0.0/8 \
        --drain-grace 0 >"$tmp/natkit.log" 2>&1 &
    pid=$!
    wait_ready "$pid" "$NATKIT_PORT" "$tmp/natkit.log"
}
start_coturn() {
    turnserver -n --listening-ip 127.0.0.1 --listening-port "$COTURN_PORT" --relay-ip 127.0.0.1 \
        --realm natkit --lt-cred-mech --user "bench:$PASSWORD" --allow-loopback-peers \
        --min-port 22000 --max-port 32767 --no-tls --no-dtls --no-cli --no-software-attribute \
        --pidfile="$tmp/turn.pid" --log-file="$tmp/turn.log" --simple-log >"$tmp/turn.out" 2>&1 &
    pid=$!
    wait_ready "$pid" "$COTURN_PORT" "$tmp/turn.log"
}
stop() {
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
}

round() {
    local name=$1 port=$2 out=$3
    "start_$name"
    "$NATKIT" bench flood "127.0.0.1:$port" --password "$PASSWORD" --duration "$DURATION" \
        --warmup "$WARMUP" --rate "$RATE" --udp-sources "$UDP_SOURCES" \
        --tcp-connections "$TCP_CONNECTIONS" --server-pid "$pid" --json >"$out"
    stop
}

say "load: $(uptime)"
for r in $(seq "$ROUNDS"); do
    order=(natkit coturn)
    ((r % 2 == 0)) && order=(coturn natkit)
    for name in "${order[@]}"; do
        port=$NATKIT_PORT
        [[ $name == coturn ]] && port=$COTURN_PORT
        say "round $r: $name"
        round "$name" "$port" "$tmp/$name-$r.json"
    done
done
say "ceiling: the same UDP flood into a socket that never reads"
"$NATKIT" bench flood --ceiling --duration "$DURATION" --udp-sources "$UDP_SOURCES" --json >"$tmp/ceiling.json"
say "load: $(uptime)"

python3 - "$tmp" "$ROUNDS" <<'EOF'
import json, statistics, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
def load(name):
    return [json.load(open(f"{tmp}/{name}-{r}.json")) for r in range(1, rounds + 1)]
rows = [
    ("UDP flood sent (datagrams/s)", lambda j: j["udp_flood_per_second"]),
    ("TCP flood sent (requests/s)", lambda j: j["tcp_flood"]["requests_per_second"]),
    ("TCP flood connections closed by the relay", lambda j: j["tcp_flood"]["closed_by_server"]),
    ("stream loss to the peer, baseline (%)", lambda j: j["baseline"]["loss_to_peer_percent"]),
    ("stream loss to the peer, under flood (%)", lambda j: j["flood"]["loss_to_peer_percent"]),
    ("stream loss back, under flood (%)", lambda j: j["flood"]["loss_back_percent"]),
    ("Binding answered within 500 ms, under flood (%)",
     lambda j: 100.0 * j["flood"]["bindings"]["answered"] / max(1, j["flood"]["bindings"]["sent"])),
    ("Binding median / p99, under flood (ms)",
     lambda j: (j["flood"]["bindings"]["median_ms"], j["flood"]["bindings"]["p99_ms"])),
    ("new users allocated, under flood (%)",
     lambda j: 100.0 * j["flood"]["new_users"]["allocated"] / max(1, j["flood"]["new_users"]["tried"])),
    ("new user median allocation time, under flood (ms)", lambda j: j["flood"]["new_users"]["median_ms"]),
    ("relay RSS before / max under flood (MiB)",
     lambda j: (j["server_rss_before_mib"], j["flood"]["server_rss_max_mib"])),
]
def med(vals):
    if isinstance(vals[0], tuple):
        return tuple(statistics.median(v[i] for v in vals) for i in range(len(vals[0])))
    return statistics.median(vals)
def fmt(v):
    if isinstance(v, tuple):
        return " / ".join(fmt(x) for x in v)
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
nat, cot = load("natkit"), load("coturn")
print(f"\nmedians of {rounds} interleaved rounds (all rounds in brackets)\n")
print("| figure | natkit-turn | coturn 4.6 |\n|---|---|---|")
for label, f in rows:
    a, b = [f(j) for j in nat], [f(j) for j in cot]
    print(f"| {label} | {fmt(med(a))} [{', '.join(fmt(x) for x in a)}] | {fmt(med(b))} [{', '.join(fmt(x) for x in b)}] |")
c = json.load(open(f"{tmp}/ceiling.json"))
print(f"\ngenerator ceiling (UDP flood into a socket that never reads): {c['udp_flood_per_second']:.0f} datagrams/s")
EOF
