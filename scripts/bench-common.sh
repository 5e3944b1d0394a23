# What the benchmark scripts share (bench-stun.sh, bench-turn.sh,
# bench-flood.sh): messages, prerequisites, free ports, waiting for a server,
# and how idle the machine is. Sourced, not run; expects $NATKIT (the natkit
# binary) to be set before wait_ready is called.

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Build the release binaries of the given packages, unless SKIP_BUILD=1;
# $target is where they are.
target=${CARGO_TARGET_DIR:-target}
build_release() {
    [[ ${SKIP_BUILD:-0} == 1 ]] && return 0
    say "building $* (release)"
    local args=() p
    for p in "$@"; do args+=(-p "$p"); done
    cargo build --release --quiet "${args[@]}"
}

need_coturn() {
    command -v turnserver >/dev/null 2>&1 ||
        die "coturn's turnserver is needed for the comparison: apt-get update && apt-get install -y coturn"
}

# Fail unless every UDP port given is free on this machine.
need_free_udp_ports() {
    local p
    for p in "$@"; do
        if command -v ss >/dev/null 2>&1 && [[ -n $(ss -Hlun "sport = :$p") ]]; then
            die "UDP port $p is in use on this machine; set COTURN_PORT / NATKIT_PORT"
        fi
    done
}

# Wait until a Binding request to 127.0.0.1:$2 is answered, while process $1
# lives (its log, $3, is printed if it does not).
wait_ready() {
    local pid=$1 port=$2 log=$3
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "server on port $port exited"; }
        if "$NATKIT" stun "127.0.0.1:$port" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    cat "$log" >&2
    die "server on port $port does not answer"
}

# Loopback figures are only as good as the machine is idle: percentage of
# CPU time idle over one second.
idle_pct() {
    local _ u n s i w q sq st u2 n2 s2 i2 w2 q2 sq2 st2
    read -r _ u n s i w q sq st _ </proc/stat
    sleep 1
    read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ </proc/stat
    local busy=$(((u2 + n2 + s2 + q2 + sq2 + st2) - (u + n + s + q + sq + st)))
    local idle=$(((i2 + w2) - (i + w)))
    echo $((100 * idle / (busy + idle > 0 ? busy + idle : 1)))
}

# On a shared machine, WAIT_IDLE=SECONDS waits (up to that long) for >= 90 %
# idle before each measurement.
wait_idle() {
    local deadline=$((SECONDS + ${WAIT_IDLE:-0}))
    while (($(idle_pct) < 90 && SECONDS < deadline)); do :; done
}
