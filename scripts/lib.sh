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

# What the tests, demo and benchmark run: ip, iptables (weft's rules and the test hosts' Docker
# posture), ethtool (offloads off where a test emulates a narrow underlay path), ping, iperf3,
# nft, ss, dig, dnsmasq (the upstream resolver in the DNS tests), taskset; the Docker Engine and
# the static busybox the Docker tests build their image from; the Python Kubernetes client (a
# real client checking the Kubernetes API stand-in; kubectl too, see install_kubectl) and
# Python's yaml (the NetworkPolicy cases are YAML; NCA checks them, see install_nca).
RUNTIME_PACKAGES=(iproute2 iptables curl openssl ethtool iputils-ping iperf3 nftables procps dnsutils dnsmasq-base util-linux tcpdump docker.io busybox-static python3-kubernetes python3-yaml)
# What the build needs beyond Rust: a C compiler and assembler for ring's ChaCha20-Poly1305,
# and glibc's static archives for weft-wait (linked statically).
BUILD_PACKAGES=(gcc libc6-dev)

# install_kubectl: kubectl for the Kubernetes tests. Machine images often carry a current one;
# Debian's (kubernetes-client, older) only where none is found.
install_kubectl() {
    command -v kubectl >/dev/null 2>&1 || install_packages kubernetes-client
}

# start_dockerd: makes sure a Docker Engine answers on /var/run/docker.sock, starting dockerd
# (Debian's docker.io) if none does. Leaves an engine it started running: CI's machine is
# ended after the run, and a developer's tests want it again.
start_dockerd() {
    if env -u DOCKER_HOST docker version >/dev/null 2>&1; then
        return 0
    fi
    echo "starting dockerd (log: /var/log/weft-dockerd.log)" >&2
    mkdir -p /var/log
    nohup dockerd >/var/log/weft-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        if env -u DOCKER_HOST docker version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    echo "dockerd did not come up; its log says:" >&2
    tail -20 /var/log/weft-dockerd.log >&2
    return 1
}

# install_nca: IBM's network-config-analyzer (NCA), which tests/npc/nca_check.py asks for the
# connectivity of each NetworkPolicy case, in its own venv at /opt/weft-nca (its entry point is
# /opt/weft-nca/bin/nca). Pinned: nca_check.py uses NCA's Python API, not only its command line.
NCA_VERSION=2.1.0
install_nca() {
    if [ -x /opt/weft-nca/bin/nca ]; then
        return 0
    fi
    install_packages python3-venv
    echo "installing network-config-analyzer $NCA_VERSION in /opt/weft-nca" >&2
    rm -rf /opt/weft-nca
    /usr/bin/python3 -m venv /opt/weft-nca
    /opt/weft-nca/bin/pip install -q "network-config-analyzer==$NCA_VERSION"
}
