# Sourced by the scripts in scripts/deps/ (not one itself: scripts/test.sh
# runs only scripts/deps/*.sh).
#
# apt_install TAG NEEDS PKG...: install Debian packages quietly with apt-get
# when root on Debian/Ubuntu, saying so ("TAG: installing ..."), with
# apt-get's output shown only when it fails; otherwise print what NEEDS
# them and how to install them. Returns non-zero on failure.
apt_install() {
    local tag=$1 needs=$2
    shift 2
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "$tag: installing $* (apt-get install -y $*)"
        export DEBIAN_FRONTEND=noninteractive
        local log
        log=$(mktemp)
        if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            echo "$tag: apt-get install $* failed" >&2
            return 1
        fi
        rm -f "$log"
    else
        echo "$needs: $*. Install with (as root): apt-get update && apt-get install -y $*" >&2
        return 1
    fi
}
