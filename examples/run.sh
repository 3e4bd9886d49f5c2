#!/usr/bin/env bash
# examples/run.sh: the main job. Installs what it needs (Debian packages, idempotent), builds
# cincflow, then trains the toy flow of examples/two_moons.c and prints its progress.
# Extra arguments go to two_moons (e.g. --steps 4000 --seed 3).
set -euo pipefail
CF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$CF_ROOT/cmake/deps.sh"
cf_install_deps dataset-fashion-mnist
cf_build "$CF_ROOT/build"
"$CF_ROOT/build/examples/two_moons" "$@"
