#!/usr/bin/env bash
# Prerequisite of the ICE interoperability test (ice-agent/tests/interop_aioice.rs):
# the Python package aioice (PyPI), which the test runs as the peer ICE agent
# through `python3 ice-agent/tests/aioice/peer.py`. Installs it with pip when
# `python3 -c "import aioice"` fails; quiet when it is present.
set -euo pipefail

command -v python3 >/dev/null 2>&1 || {
    echo "the aioice interop test needs python3 (Debian: apt-get install -y python3 python3-pip)" >&2
    exit 1
}
python3 -c "import aioice" >/dev/null 2>&1 && exit 0

# Install into the interpreter the test runs (`python3`), not whatever `pip` is
# first on PATH.
if ! python3 -m pip --version >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "aioice: installing python3-pip (apt-get install -y python3-pip)"
        export DEBIAN_FRONTEND=noninteractive
        log=$(mktemp)
        if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip; } >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            echo "aioice: apt-get install python3-pip failed" >&2
            exit 1
        fi
        rm -f "$log"
    else
        echo "the aioice interop test needs pip: apt-get install -y python3-pip, then python3 -m pip install aioice" >&2
        exit 1
    fi
fi

echo "aioice: installing the Python package aioice (python3 -m pip install aioice)"
log=$(mktemp)
# Debian's system Python refuses pip installs outside a venv (PEP 668) unless
# told otherwise; this is a test machine's interpreter, and pip only adds
# aioice and its two small dependencies (dnspython, ifaddr).
pip_flags=(--quiet --disable-pip-version-check)
if python3 -m pip install --help 2>/dev/null | grep -q -- --break-system-packages; then
    pip_flags+=(--break-system-packages)
fi
if ! python3 -m pip install "${pip_flags[@]}" aioice >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "aioice: python3 -m pip install aioice failed" >&2
    exit 1
fi
rm -f "$log"
python3 -c "import aioice" || {
    echo "aioice: installed, but python3 still cannot import it" >&2
    exit 1
}
