#!/usr/bin/env bash
# Lays out the build context deploy/container/Containerfile expects, from
# binaries that are already built:
#
#   bash deploy/container/build-context.sh target/release CONTEXT_DIR
#   podman build -f deploy/container/Containerfile -t natkit:0.1.0 CONTEXT_DIR
#
# CONTEXT_DIR gets:
#   bin/natkit-stun, bin/natkit-turn, bin/natkit   the binaries, stripped of debug info
#   rootfs/...   exactly the shared objects `ldd` lists for them (glibc's
#                loader, libc, libm, libgcc_s for a glibc build; nothing for a
#                static musl build), at the paths the loader looks for them,
#                plus /etc/passwd and /etc/group naming the non-root user and
#                /tmp. This is what makes a FROM scratch image run a glibc
#                binary without pulling a base image.
set -euo pipefail

die() { printf 'build-context.sh: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: build-context.sh BIN_DIR CONTEXT_DIR"
bin_dir=$1
ctx=$2
bins=(natkit-stun natkit-turn natkit)

for b in "${bins[@]}"; do
    [[ -x $bin_dir/$b ]] || die "$bin_dir/$b missing: cargo build --release -p natkit-stun -p natkit-turn -p natkit-cli"
done
command -v ldd >/dev/null || die "ldd not found (Debian package libc-bin)"

rm -rf "$ctx"
mkdir -p "$ctx/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp"
chmod 1777 "$ctx/rootfs/tmp"

for b in "${bins[@]}"; do
    # Debug info is most of a debug build's size and of no use in the image.
    if command -v objcopy >/dev/null; then
        objcopy --strip-debug "$bin_dir/$b" "$ctx/bin/$b"
    else
        cp "$bin_dir/$b" "$ctx/bin/$b"
    fi
    chmod 0755 "$ctx/bin/$b"
    # `ldd` prints "name => /path (addr)" for libraries and "/path (addr)"
    # for the loader; "statically linked" / "not a dynamic executable" for
    # static binaries (exit status 1), which need nothing copied.
    libs=$(ldd "$bin_dir/$b" 2>/dev/null | grep -o '/[^ ]*' || true)
    for lib in $libs; do
        dest="$ctx/rootfs$lib"
        [[ -e $dest ]] && continue
        mkdir -p "$(dirname "$dest")"
        cp -L "$lib" "$dest"
    done
done

# The user the image runs as (65532, as distroless' "nonroot"), by name for
# tools that look it up; the binaries themselves never do.
cat >"$ctx/rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
natkit:x:65532:65532:natkit:/nonexistent:/sbin/nologin
PASSWD
cat >"$ctx/rootfs/etc/group" <<'GROUP'
root:x:0:
natkit:x:65532:
GROUP
