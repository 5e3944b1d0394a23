#!/usr/bin/env bash
# natkit-turn without and with --usage-log, same generator, rounds interleaved.
# Usage: cargo build --release -p natkit-turn -p natkit-cli && scripts/bench-turn-usage.sh
# Prints each round's natkit bench turn JSON (relayed_packets_per_sec) and the records written.
set -u
B=${NATKIT_BIN_DIR:-$(dirname "$0")/../target/release}
T=$(mktemp -d)
common=(--relay-ip 127.0.0.1 --realm natkit --user bench:PASSWORD --allow-peer 127.0.0.0/8 --max-allocations 11000 --user-quota 11000 --drain-grace 0)
$B/natkit-turn --listen 127.0.0.1:36478 --min-port 10000 --max-port 15999 --metrics 127.0.0.1:36480 "${common[@]}" 2>$T/a.log & A=$!
$B/natkit-turn --listen 127.0.0.1:36488 --min-port 16000 --max-port 21999 --metrics 127.0.0.1:36490 --usage-log $T/usage.jsonl --usage-interval 1 "${common[@]}" 2>$T/b.log & U=$!
trap 'kill $A $U; wait; rm -rf $T' EXIT
for p in 36480 36490; do for i in $(seq 100); do curl -sf http://127.0.0.1:$p/healthz >/dev/null && break; sleep 0.1; done; done
for r in 1 2 3 4 5; do
  for port in 36478 36488; do
    v=$($B/natkit bench turn 127.0.0.1:$port --user bench --password PASSWORD --duration 4s --warmup 1s --allocations 8 --window 64 --size 100 --threads 2 --peer-mode udp --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["load"]["relayed_packets_per_sec"])')
    echo "round $r port $port: $v"
  done
done
wc -l $T/usage.jsonl
