#!/usr/bin/env bash
# Prerequisites of the NAT lab (tests/lab, crate natkit-lab): `ip` (iproute2)
# for network namespaces and veth pairs, `nft` (nftables) for the NAT rules,
# `conntrack` for flushing NAT mappings mid-test. Installs what is missing with
# apt-get when run as root on Debian/Ubuntu; quiet when everything is present.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

declare -A APT_FOR=([ip]=iproute2 [nft]=nftables [conntrack]=conntrack)
missing=()
for cmd in ip nft conntrack; do
    command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 ||
        missing+=("${APT_FOR[$cmd]}")
done
((${#missing[@]})) || exit 0

apt_install lab "the NAT lab needs" "${missing[@]}"
