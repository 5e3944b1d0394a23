#!/usr/bin/env bash
# natkit's local demo: the command README.md gives.
#
#   bash scripts/demo.sh
#
# Builds natkit-stun, natkit-turn and natkit (release), then:
# 1. starts natkit-stun in RFC 5780 mode on loopback (127.0.0.1:P and the
#    alternate address 127.0.0.2:P2, so the server binds all four
#    address/port combinations), runs `natkit netcheck` and `natkit stun`
#    against it;
# 2. starts natkit-turn on loopback and connects two natkit agents
#    (`natkit listen` / `natkit connect`, ICE then QUIC) twice: once freely,
#    once forced through the relay (--relay-only). Each time a line goes each
#    way over the QUIC stream, and the demo prints the path each side used
#    and the time to connect.
# Everything stops at the end (or on Ctrl-C). Only loopback addresses are
# used. Ports: 34780/34790 unless DEMO_PORT and DEMO_ALT_PORT say otherwise;
# if they are taken the next pairs are tried. natkit-turn listens on the
# first free port from 34800 (DEMO_TURN_PORT) and relays on 35000-35099.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust from https://rustup.rs"

say "building natkit-stun, natkit-turn and natkit (release)"
cargo build --release --quiet -p natkit-stun -p natkit-turn -p natkit-cli
target=${CARGO_TARGET_DIR:-target}
STUN=$target/release/natkit-stun
TURN=$target/release/natkit-turn
NATKIT=$target/release/natkit

tmp=$(mktemp -d)
server_pid=
turn_pid=
peer_pids=()
cleanup() {
    for pid in "${peer_pids[@]}" $turn_pid $server_pid; do
        if kill -0 "$pid" 2>/dev/null; then
            # SIGINT: natkit-turn stops at once (SIGTERM would drain).
            kill -INT "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Whether any UDP or TCP socket on this machine uses local port $1. Checked
# before starting: servers that set SO_REUSEPORT (natkit-stun, coturn) can
# share a port silently, and the demo would then talk to the wrong one.
port_in_use() {
    local hex
    hex=$(printf ':%04X' "$1")
    awk -v h="$hex" 'FNR > 1 && substr($2, length($2) - 4) == h { found = 1 } END { exit !found }' \
        /proc/net/udp /proc/net/udp6 /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# Start the server on a port pair; succeed once it answers a Binding request
# with OTHER-ADDRESS 127.0.0.2:$2 (so the answer is from this server, in RFC
# 5780 mode) and is still running.
start_server() {
    local p=$1 p2=$2
    if port_in_use "$p" || port_in_use "$p2"; then
        return 1
    fi
    "$STUN" --listen "127.0.0.1:$p" --other "127.0.0.2:$p2" >"$tmp/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 50); do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            wait "$server_pid" 2>/dev/null || true
            server_pid=
            return 1
        fi
        if "$NATKIT" stun "127.0.0.1:$p" --json --rto 100ms --rc 1 --rm 2 2>/dev/null |
            grep -q "\"other_address\": *\"127.0.0.2:$p2\"" &&
            kill -0 "$server_pid" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    return 1
}

port=${DEMO_PORT:-34780}
alt=${DEMO_ALT_PORT:-34790}
started=
for i in $(seq 0 19); do
    if start_server $((port + i)) $((alt + i)); then
        port=$((port + i))
        alt=$((alt + i))
        started=1
        break
    fi
done
if [[ -z $started ]]; then
    cat "$tmp/server.log" >&2 || true
    die "could not start natkit-stun on any port pair from 127.0.0.1:$port/127.0.0.2:$alt up (ports in use, or see the log above)"
fi
say "natkit-stun (pid $server_pid) listening on 127.0.0.1:$port, RFC 5780 alternate 127.0.0.2:$alt"

echo
say "natkit netcheck --stun 127.0.0.1:$port"
"$NATKIT" netcheck --stun "127.0.0.1:$port"

echo
say "natkit stun 127.0.0.1:$port"
"$NATKIT" stun "127.0.0.1:$port"

# --- natkit-turn and two agents ----------------------------------------------

turn_port=
for p in $(seq "${DEMO_TURN_PORT:-34800}" "$(( ${DEMO_TURN_PORT:-34800} + 19 ))"); do
    port_in_use "$p" && continue
    "$TURN" --listen "127.0.0.1:$p" --relay-ip 127.0.0.1 --min-port 35000 --max-port 35099 \
        --user demo:demo-password --allow-peer 127.0.0.0/8 --drain-grace 0 >"$tmp/turn.log" 2>&1 &
    turn_pid=$!
    for _ in $(seq 50); do
        kill -0 "$turn_pid" 2>/dev/null || break
        if "$NATKIT" turn "127.0.0.1:$p" -u demo -p demo-password --count 1 --json >/dev/null 2>&1; then
            turn_port=$p
            break
        fi
        sleep 0.1
    done
    [[ -n $turn_port ]] && break
    kill -INT "$turn_pid" 2>/dev/null || true
    wait "$turn_pid" 2>/dev/null || true
    turn_pid=
done
if [[ -z $turn_port ]]; then
    cat "$tmp/turn.log" >&2 || true
    die "could not start natkit-turn on 127.0.0.1:${DEMO_TURN_PORT:-34800}-$(( ${DEMO_TURN_PORT:-34800} + 19 ))"
fi
echo
say "natkit-turn (pid $turn_pid) listening on 127.0.0.1:$turn_port (user demo), relaying on 127.0.0.1:35000-35099"

# Connect `natkit listen` and `natkit connect` on this machine; $1 names the
# run, the rest are extra flags for both. They swap descriptions through
# files (people paste them instead), send one line each way, and write JSON
# reports.
connect_pair() {
    local name=$1
    shift
    local d=$tmp/$name
    mkdir -p "$d"
    local common=(--loopback --bind 127.0.0.1 --stun "127.0.0.1:$port"
        --turn "turn:127.0.0.1:$turn_port" --turn-user demo --turn-password demo-password
        --timeout 20 --wait 30 "$@")
    echo "hello from the listener" | "$NATKIT" listen "${common[@]}" \
        --desc-out "$d/listen.desc" --remote "$d/connect.desc" --report "$d/listen.json" \
        >"$d/listen.out" 2>"$d/listen.err" &
    local lpid=$!
    peer_pids+=("$lpid")
    echo "hello from the connector" | "$NATKIT" connect "${common[@]}" \
        --desc-out "$d/connect.desc" --remote "$d/listen.desc" --report "$d/connect.json" \
        >"$d/connect.out" 2>"$d/connect.err" &
    local cpid=$!
    peer_pids+=("$cpid")
    local ok=1
    wait "$lpid" || ok=
    wait "$cpid" || ok=
    if [[ -z $ok ]]; then
        cat "$d/listen.err" "$d/connect.err" >&2
        die "the $name connection failed (logs above)"
    fi
    python3 - "$d" <<'PY'
import json, sys
d = sys.argv[1]
for side in ("listen", "connect"):
    r = json.load(open(f"{d}/{side}.json"))
    got = open(f"{d}/{side}.out").read().strip()
    print(f"    {side:<8} {r['path']:<6} {r['local_kind']} {r['local']} -> {r['remote_kind']} {r['remote']}"
          f"  connected in {r['connect_ms']:.1f} ms, rtt {r['rtt_ms']:.2f} ms; received: {got!r}")
PY
}

echo
say "two agents on this machine, free to pick any path: natkit listen / natkit connect"
connect_pair direct

echo
say "the same two agents forced through natkit-turn: --relay-only"
connect_pair relayed --relay-only

echo
say "stopping natkit-turn (pid $turn_pid)"
kill -INT "$turn_pid" 2>/dev/null || true
wait "$turn_pid" 2>/dev/null || true
turn_pid=

echo
say "stopping natkit-stun (pid $server_pid)"
