# Shared helpers for the scripts: sourced, not run.

# need_root: the network tests and the demo build namespaces.
need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$0: needs root (it creates network namespaces); run it with sudo" >&2
        exit 1
    fi
}

# install_packages PKG...: installs the Debian packages that are missing, and nothing else.
install_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# What the tests, demo and benchmark run: ip, ping, iperf3, nft, ss, dig, dnsmasq (the
# upstream resolver in the DNS tests), taskset.
RUNTIME_PACKAGES=(iproute2 iputils-ping iperf3 nftables procps dnsutils dnsmasq-base util-linux tcpdump)
