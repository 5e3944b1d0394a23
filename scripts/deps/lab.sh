#!/usr/bin/env bash
# Prerequisites of the NAT lab (tests/lab, crate natkit-lab): `ip` (iproute2)
# for network namespaces, veth pairs and TAP devices, `nft` (nftables) for the
# NAT rules, `conntrack` for flushing NAT mappings mid-test, `miniupnpd`
# (miniupnpd-nftables: UPnP IGD, NAT-PMP and PCP on the NATs that map ports)
# and the clients the port-mapping tests drive it with, `upnpc` (miniupnpc)
# and `natpmpc`. Installs what is missing with apt-get when run as root on
# Debian/Ubuntu; quiet when everything is present. Nothing is started: the lab
# runs its own miniupnpd instances.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

declare -A APT_FOR=([ip]=iproute2 [nft]=nftables [conntrack]=conntrack [miniupnpd]=miniupnpd-nftables [upnpc]=miniupnpc [natpmpc]=natpmpc)
missing=()
for cmd in ip nft conntrack miniupnpd upnpc natpmpc; do
    command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 ||
        missing+=("${APT_FOR[$cmd]}")
done
((${#missing[@]})) || exit 0

apt_install lab "the NAT lab needs" "${missing[@]}"
