#!/usr/bin/env bash
# The tests: formatting, lints, the layering rule, then every unit, simulator and
# network-namespace test. Installs what it needs; run as root (the namespace tests need it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_root
install_packages "${BUILD_PACKAGES[@]}" "${RUNTIME_PACKAGES[@]}"
install_kubectl
install_nca

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# weft-wait is built on its own (linked statically), so it is checked on its own too.
(cd crates/weft-wait && cargo fmt -- --check && cargo clippy --all-targets --quiet -- -D warnings && cargo test --quiet)

# weft-core is the sans-IO core: it must not depend on the runtime or the kernel.
forbidden=$(cargo tree -p weft-core -e normal --prefix none --format '{p}' \
    | grep -E '^(tokio|nix|rtnetlink|socket2|tun-rs|mio) ' || true)
# libc may only come in through getrandom, ring's random source: weft-core never asks ring
# for randomness (the core is handed its entropy), it only seals and opens.
forbidden+=$(cargo tree -p weft-core -e normal -i libc --depth 1 --prefix none --format '{p}' \
    2>/dev/null | grep -vE '^(libc|getrandom) ' || true)
if [ -n "$forbidden" ]; then
    echo "weft-core must stay free of I/O, but depends on:" >&2
    echo "$forbidden" >&2
    exit 1
fi

# The Docker tests run against a real engine, with weft-wait (static) next to weft.
start_dockerd
scripts/build-wait.sh
export WEFT_REQUIRE_DOCKER=1
export WEFT_REQUIRE_NCA=1
cargo test --workspace

# Every decoder a stranger can reach, fuzzed briefly: catches panics the unit tests missed.
scripts/fuzz.sh 20
