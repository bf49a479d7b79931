#!/usr/bin/env bash
# The main job: a 3-host weft network on this machine (hosts are network namespaces on an
# isolated underlay), launched as the tutorial does, with a ping between containers on host1
# and host3. Installs what it needs, builds, runs, and removes everything it made.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_root
install_packages "${RUNTIME_PACKAGES[@]}"
cargo build --release --quiet -p weft -p weft-testbed --bins
exec target/release/weft-demo
