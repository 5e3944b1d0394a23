#!/usr/bin/env bash
# Prerequisites of the automatic-certificate tests (turn-relay/tests/acme.rs):
#   pebble                ACME test CA (RFC 8555) validating tls-alpn-01 against the relay
#   pebble-challtestsrv   (same package) mock DNS: every name resolves to 127.0.0.1
# The tests run both in the foreground on loopback ports with their own config and
# certificates, and kill them by PID; neither is started as a service. Idempotent and
# quiet when everything is present.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

command -v pebble >/dev/null 2>&1 && command -v pebble-challtestsrv >/dev/null 2>&1 && exit 0
apt_install "acme deps" "natkit-turn's ACME tests need" pebble
