#!/usr/bin/env bash
# natkit's whole test suite: the command README.md gives and .ci/run runs.
#
#   bash scripts/test.sh
#
# 1. Makes sure what the tests need is installed. The interop tests run
#    coturn's `turnserver` and `turnutils_*` on loopback, and headless Chromium
#    in a network namespace the test creates (iproute2); a DNS test runs under
#    `unshare --net`. When any is missing and we are root on Debian/Ubuntu,
#    this installs the packages with apt-get (and says so). Otherwise it prints
#    what to install and stops.
# 2. cargo fmt --check, cargo clippy -D warnings (and natkit-ice without its
#    tokio feature: the sans-IO layers alone), then the tests of every crate
#    and target (cargo-nextest when installed, it runs test binaries in
#    parallel; cargo test otherwise), then the doc tests (nextest skips those).
#
# Exits non-zero if any step fails; all steps run so one CI log shows every
# failure.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- 1. prerequisites -------------------------------------------------------

command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust (>= the rust-version in Cargo.toml) from https://rustup.rs"

# Debian package -> command it provides, for each tool a test runs.
declare -A APT_FOR=([turnserver]=coturn [turnutils_stunclient]=coturn [turnutils_uclient]=coturn [chromium]=chromium [ip]=iproute2 [unshare]=util-linux)
missing_pkgs=()
for cmd in "${!APT_FOR[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        pkg=${APT_FOR[$cmd]}
        [[ " ${missing_pkgs[*]-} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
    fi
done
if ((${#missing_pkgs[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian packages the interop tests need: ${missing_pkgs[*]} (apt-get update && apt-get install -y ${missing_pkgs[*]})"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update || die "apt-get update failed"
        apt-get install -y --no-install-recommends "${missing_pkgs[@]}" ||
            die "apt-get install ${missing_pkgs[*]} failed"
        # The package enables a coturn service on systemd machines; the tests
        # start their own turnserver on loopback ports and need no daemon.
    else
        die "the interop tests need: ${missing_pkgs[*]}. Install with (as root): apt-get update && apt-get install -y ${missing_pkgs[*]}"
    fi
fi

# Per-area prerequisites (the NAT lab, deploy/ checks): each script in
# scripts/deps/ installs what its tests need, or fails saying what is missing.
for deps in scripts/deps/*.sh; do
    [[ -e $deps ]] || continue
    say "prerequisites: $deps"
    bash "$deps" || die "$deps failed"
done

for comp in rustfmt clippy; do
    sub=${comp/rustfmt/fmt}
    if ! cargo "$sub" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            say "installing the Rust component $comp (rustup component add $comp)"
            rustup component add "$comp" || die "rustup component add $comp failed"
        else
            die "cargo $sub is missing: install the Rust component $comp"
        fi
    fi
done

# --- 2. checks and tests ----------------------------------------------------

failed=()
step() {
    local name=$1
    shift
    say "$name: $*"
    local t0=$SECONDS
    if "$@"; then
        say "$name: ok ($((SECONDS - t0))s)"
    else
        say "$name: FAILED ($((SECONDS - t0))s)"
        failed+=("$name")
    fi
}

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
# natkit-ice's sans-IO layers must build without tokio, quinn, rustls and rcgen.
step sans-io cargo clippy -p natkit-ice --no-default-features -- -D warnings
# Doc tests first: the test runner's summary stays the last word of the log.
step doctest cargo test --workspace --doc
if cargo nextest --version >/dev/null 2>&1; then
    step test cargo nextest run --workspace --all-targets --no-fail-fast
else
    step test cargo test --workspace --all-targets --no-fail-fast
fi
if ((${#failed[@]})); then
    say "FAILED: ${failed[*]}"
    exit 1
fi
say "all checks passed"
