#!/usr/bin/env bash
# Data-plane benchmark: iperf3 and ping between containers on two hosts over weft, next to the
# underlay, measured in the same run. Usage: scripts/bench.sh [SECONDS per iperf3 run]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_root
install_packages "${BUILD_PACKAGES[@]}" "${RUNTIME_PACKAGES[@]}"
cargo build --release --quiet -p weft -p weft-testbed --bins
exec target/release/weft-bench "${1:-10}"
