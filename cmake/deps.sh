#!/usr/bin/env bash
# cmake/deps.sh: installs the Debian packages cincflow needs, only those missing (idempotent).
# Sourced by tests/run.sh and examples/run.sh; usage: cf_install_deps [extra packages...]
cf_install_deps() {
    local pkgs=(cmake make gcc libc6-dev pkg-config libxsmm-dev libopenblas-dev check libsubunit-dev
                libhdf5-dev libpng-dev zlib1g-dev libcjson-dev libopenmpi-dev openmpi-bin "$@")
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -q || return 1
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
            "${missing[@]}" || return 1
    fi
}

# cf_build DIR [cmake options...]: configures and builds cincflow into DIR.
cf_build() {
    local dir=$1
    shift
    cmake -S "$CF_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null &&
        cmake --build "$dir" -j "$(nproc)"
}
