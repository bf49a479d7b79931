#!/usr/bin/env bash
# Builds weft-wait, the entrypoint wrapper the Docker proxy mounts into containers, linked
# statically (images built FROM scratch have no C library), and puts it next to the weft
# binaries in target/debug and target/release, where the router looks for it by default.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo rustc --quiet --release --manifest-path crates/weft-wait/Cargo.toml -- -C target-feature=+crt-static
for d in target/debug target/release; do
    mkdir -p "$d"
    cp crates/weft-wait/target/release/weft-wait "$d/weft-wait"
done
