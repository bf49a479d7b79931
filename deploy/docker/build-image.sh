#!/usr/bin/env bash
# Builds the weft image (default tag weft:latest) with the local Docker Engine:
#   deploy/docker/build-image.sh [TAG]            # release binaries
#   PROFILE=debug deploy/docker/build-image.sh    # the test build's binaries (faster to make)
#   NO_BUILD=1 ...                                # take the binaries as they are (tests)
# The engine is DOCKER_HOST's, else the local one.
# The root file system holds weft and weft-kube, iptables (nft backend,
# with the extensions weft's rules use), nft (NetworkPolicy) and every shared library these
# load, found with ldd.
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-weft:latest}
profile=${PROFILE:-release}
if [ -z "${NO_BUILD:-}" ]; then
    if [ "$profile" = release ]; then
        cargo build --release -p weft -p weft-kube
    else
        cargo build -p weft -p weft-kube
    fi
fi
bin=target/$profile
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/etc" "$root/tmp" "$root/run" "$root/var/lib/weft"
cp "$bin/weft" "$bin/weft-kube" "$root/usr/bin/"
# iptables through its multi-call binary, and the extensions weft's rules load.
multi=$(readlink -f /usr/sbin/xtables-nft-multi)
cp "$multi" "$root/usr/sbin/xtables-nft-multi"
for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf xtables-nft-multi "$root/usr/sbin/$n"
done
cp "$(readlink -f /usr/sbin/nft)" "$root/usr/sbin/nft"
xt=$(dirname "$(find /usr/lib -name libxt_comment.so -print -quit)")
mkdir -p "$root$xt"
cp "$xt"/*.so "$root$xt/"
# Shared libraries of everything above, with their own paths (the loader included).
for f in "$root"/usr/bin/weft "$root"/usr/bin/weft-kube "$root"/usr/sbin/xtables-nft-multi "$root"/usr/sbin/nft "$root$xt"/*.so; do
    ldd "$f" 2>/dev/null | grep -oE '/[^ ]+' | while read -r lib; do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
printf 'root:x:0:0:root:/:/usr/bin/weft\n' >"$root/etc/passwd"
printf 'tcp 6 TCP\nudp 17 UDP\nicmp 1 ICMP\nsctp 132 SCTP\n' >"$root/etc/protocols"
cp deploy/docker/Dockerfile "$ctx/"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "built $tag" >&2
