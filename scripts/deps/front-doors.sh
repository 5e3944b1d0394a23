#!/usr/bin/env bash
# Prerequisites of natkit-turn's front-door tests (turn-relay/tests/front_door.rs):
#   nginx     the web site behind a shared TLS port (plain HTTP with and without a
#             PROXY v2 header, and its own TLS for SNI pass-through)
#   haproxy   a TCP load balancer sending PROXY v2 (send-proxy-v2)
# The tests run each daemon in the foreground with their own config on loopback
# ports and kill it by PID; none is started as a service. Idempotent and quiet
# when everything is present.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
((${#missing[@]} == 0)) && exit 0
apt_install "front-door deps" "natkit-turn's front-door tests need" "${missing[@]}"
