#!/usr/bin/env bash
# The main job: a 3-host weft network on this machine (hosts are network namespaces on an
# isolated underlay), launched as the tutorial does, with a ping between containers on host1
# and host3, then the same with `docker run` through weft's Docker proxy. Installs what it
# needs (and starts Docker's engine), builds, runs, and removes everything it made.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_root
install_packages "${BUILD_PACKAGES[@]}" "${RUNTIME_PACKAGES[@]}"
start_dockerd || echo "no Docker Engine: the demo skips its docker run part" >&2
cargo build --release --quiet -p weft -p weft-testbed --bins
scripts/build-wait.sh
exec target/release/weft-demo
