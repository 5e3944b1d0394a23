#!/usr/bin/env bash
# Prerequisite of the libnice interoperability test
# (ice-agent/tests/interop_libnice.rs): libnice (a full RFC 5245/8445 ICE
# agent in C) driven from Debian's Python through GObject introspection, as
# `/usr/bin/python3 ice-agent/tests/libnice/peer.py`. Needs the Debian
# packages gir1.2-nice-0.1 (which brings libnice10) and python3-gi; installs
# them with apt-get when the import fails; quiet when they are present.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

py=/usr/bin/python3
check() {
    "$py" -c 'import gi; gi.require_version("Nice", "0.1"); from gi.repository import Nice' >/dev/null 2>&1
}
[[ -x $py ]] && check && exit 0

pkgs=(gir1.2-nice-0.1 python3-gi)
[[ -x $py ]] || pkgs+=(python3)
apt_install libnice "the libnice interop test needs Debian's" "${pkgs[@]}"
check || {
    echo "libnice: installed, but $py still cannot import gi.repository.Nice" >&2
    exit 1
}
