#!/usr/bin/env bash
# natkit's local demo: the command README.md gives.
#
#   bash scripts/demo.sh
#
# Builds natkit-stun and natkit (release), starts natkit-stun in RFC 5780 mode
# on loopback (127.0.0.1:P and the alternate address 127.0.0.2:P2, so the
# server binds all four address/port combinations), runs `natkit netcheck`
# and `natkit stun` against it, prints their reports and stops the server.
# Only loopback addresses are used. Ports: 34780/34790 unless DEMO_PORT and
# DEMO_ALT_PORT say otherwise; if they are taken the next pairs are tried.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust from https://rustup.rs"

say "building natkit-stun and natkit (release)"
cargo build --release --quiet -p natkit-stun -p natkit-cli
target=${CARGO_TARGET_DIR:-target}
STUN=$target/release/natkit-stun
NATKIT=$target/release/natkit

tmp=$(mktemp -d)
server_pid=
cleanup() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
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
        if "$NATKIT" stun "127.0.0.1:$p" --json --rto-ms 100 --rc 1 --rm 2 2>/dev/null |
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

echo
say "stopping natkit-stun (pid $server_pid)"
