#!/usr/bin/env bash
# install-deps.sh - installs the Debian 12 packages zimage's build, tests and local stack
# need, and only those missing: `dpkg -s` is asked first, and `apt-get update` runs only
# when something has to be installed. Needs root (or sudo) only in that case.
#
# The list is the single source of truth for dependencies (README, CI, make test, make demo).
set -euo pipefail

PACKAGES=(
    build-essential cmake pkg-config clang clang-format clang-tidy cppcheck
    redis-server redis-tools libhiredis-dev librdkafka-dev kcat
    libcurl4-openssl-dev libssl-dev libpcre2-dev libutf8proc-dev libspng-dev libpng-dev
    zlib1g-dev libcjson-dev libyaml-dev libmicrohttpd-dev libopenblas-dev libcmocka-dev
    ceph-mon ceph-osd radosgw ceph-common
    tmux jq curl python3 python3-regex uuid-runtime util-linux
)

missing=()
for p in "${PACKAGES[@]}"; do
    # A package removed with its config left behind is missing too: check the status line.
    if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]} == 0)); then
    echo "install-deps: all ${#PACKAGES[@]} packages present"
    exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=()
if ((EUID != 0)); then
    command -v sudo >/dev/null || {
        echo "install-deps: error: not root and no sudo; install: ${missing[*]}" >&2
        exit 1
    }
    SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q "${missing[@]}"
