#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) on the stable toolchain (no sanitizer).
# Installs cargo-fuzz if it is missing. A crash stops the run and leaves the input in
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
fi
cd fuzz
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
    echo "fuzz: $target for ${secs}s"
    if ! cargo fuzz run -s none "$target" -- -max_total_time="$secs" -rss_limit_mb=4096 >"$log" 2>&1; then
        grep -E 'panicked|SUMMARY|ERROR|error' -A3 "$log" | head -40 >&2 || tail -40 "$log" >&2
        echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^Done' "$log"
done
