#!/usr/bin/env bash
# Prerequisites of the deploy/ checks (tests/deploy, crate natkit-deploy-tests):
#   podman + runc         build and run the container image (crun is not used:
#                         the tests point podman at runc in their own
#                         CONTAINERS_CONF)
#   prometheus            promtool (rule checks) and a real Prometheus the
#                         tests start on loopback
#   systemd               systemd-analyze verify / security on the units
#   kubectl               kubectl kustomize (expected at /usr/bin/kubectl)
#   kubernetes-validate   (PyPI) schema checks of the rendered manifests
# Idempotent and quiet when everything is present. Needs root to install.
set -euo pipefail

say() { printf '==> deploy deps: %s\n' "$*"; }
die() { printf 'error: deploy deps: %s\n' "$*" >&2; exit 1; }

declare -A APT_FOR=([podman]=podman [runc]=runc [promtool]=prometheus [prometheus]=prometheus [systemd-analyze]=systemd)
missing=()
for cmd in "${!APT_FOR[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        pkg=${APT_FOR[$cmd]}
        [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} (apt-get install -y ${missing[*]})"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
            die "apt-get install ${missing[*]} failed"
        # The Debian package enables a prometheus service on systemd hosts;
        # the tests start their own on loopback and need no daemon.
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
            systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
    else
        die "missing ${missing[*]}: as root run apt-get update && apt-get install -y ${missing[*]}"
    fi
fi

command -v kubectl >/dev/null 2>&1 ||
    die "kubectl not found: install it (https://kubernetes.io/docs/tasks/tools/) to render deploy/kubernetes"

if ! command -v kubernetes-validate >/dev/null 2>&1; then
    pip=$(command -v pip3 || command -v pip || true)
    [[ -n $pip ]] || die "pip not found: install python3-pip, then pip install kubernetes-validate"
    say "installing kubernetes-validate ($pip install kubernetes-validate)"
    "$pip" install -q --root-user-action=ignore kubernetes-validate || die "pip install kubernetes-validate failed"
    command -v kubernetes-validate >/dev/null 2>&1 ||
        die "kubernetes-validate installed but not on PATH ($(python3 -m site --user-base 2>/dev/null)/bin?)"
fi

# The Kubernetes checks turn rendered YAML into JSON with PyYAML (a
# dependency of kubernetes-validate; installed here if python3 is another
# interpreter than the one pip used).
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    say "installing PyYAML for python3 (python3 -m pip install pyyaml)"
    python3 -m pip install -q --root-user-action=ignore pyyaml || die "pip install pyyaml failed"
fi
