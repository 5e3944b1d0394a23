#!/usr/bin/env bash
# Prerequisites of the NAT lab (tests/lab, crate natkit-lab): `ip` (iproute2)
# for network namespaces and veth pairs, `nft` (nftables) for the NAT rules,
# `conntrack` for flushing NAT mappings mid-test. Installs what is missing with
# apt-get when run as root on Debian/Ubuntu; quiet when everything is present.
set -euo pipefail

declare -A APT_FOR=([ip]=iproute2 [nft]=nftables [conntrack]=conntrack)
missing=()
for cmd in ip nft conntrack; do
    command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 ||
        missing+=("${APT_FOR[$cmd]}")
done
((${#missing[@]})) || exit 0

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "lab: installing ${missing[*]} (apt-get install -y ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    log=$(mktemp)
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "lab: apt-get install ${missing[*]} failed" >&2
        exit 1
    fi
    rm -f "$log"
else
    echo "the NAT lab needs: ${missing[*]}. Install with (as root): apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi
