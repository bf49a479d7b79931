//! `weft`: the command line. Mirrors Weave's commands, flags and outputs; `weft router` runs the
//! daemon in the foreground, `weft launch` starts it in the background.
#![forbid(unsafe_code)]

mod cmd;
mod cni;
mod lifecycle;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;
use weft_api::{Client, ClientError};
use weft_proto::PeerName;

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "weft: one flat virtual network for containers on many hosts",
    after_help = "Peers are <ip|host>[:port]. Containers are a name from 'ip netns', a network namespace path, or a PID."
)]
struct Cli {
    /// Where the router keeps its peer name, targets and attachments.
    #[arg(
        long,
        env = "WEFT_STATE_DIR",
        default_value = "/var/lib/weft",
        global = true
    )]
    state_dir: PathBuf,
    /// Where the router keeps its pid and log files.
    #[arg(long, env = "WEFT_RUN_DIR", default_value = "/run/weft", global = true)]
    run_dir: PathBuf,
    /// The router's HTTP API address.
    #[arg(long, env = "WEFT_HTTP_ADDR", default_value = weft_api::DEFAULT_HTTP_ADDR, global = true)]
    http_addr: SocketAddr,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the router in the background and connect to the given peers.
    Launch(RouterArgs),
    /// Run the router in the foreground (what `launch` starts).
    Router(RouterArgs),
    /// Keep a router running: start it again when it exits unexpectedly (what `launch`
    /// starts unless `--no-restart`).
    #[command(hide = true)]
    Supervise(RouterArgs),
    /// Stop the router; the bridge and attached containers stay in place.
    Stop,
    /// Stop the router and remove the bridge, container links and all state.
    Reset {
        /// Reset even if the router is not running.
        #[arg(long)]
        force: bool,
        /// Name of the bridge to remove.
        #[arg(long, default_value = "weft")]
        bridge: String,
    },
    /// Show the router's status, or one part of it.
    Status {
        /// targets | connections | peers | ipam
        sub: Option<String>,
    },
    /// Everything the router knows, as JSON.
    Report {
        /// A Go template over the report, as `weave report -f` (e.g. '{{.Version}}',
        /// '{{range .DNS.Entries}}{{.Hostname}} {{.Address}}{{"\n"}}{{end}}').
        #[arg(short = 'f', long = "format", value_name = "TEMPLATE")]
        format: Option<String>,
    },
    /// Add peers to connect to.
    Connect {
        /// Replace all existing targets instead of adding.
        #[arg(long)]
        replace: bool,
        peers: Vec<String>,
    },
    /// Stop reconnecting to peers (open connections stay up).
    Forget {
        #[arg(required = true)]
        peers: Vec<String>,
    },
    /// Attach a container to the overlay. Addresses: CIDR or ip:CIDR (exactly that),
    /// net:CIDR (any free one in that subnet), net:default; none means net:default.
    #[command(disable_help_flag = true)]
    Attach {
        /// Do not add the 224.0.0.0/4 route through ethwe.
        #[arg(long)]
        no_multicast_route: bool,
        /// Name to register in weftDNS (default: the netns name, or the container's own
        /// hostname if it is in the domain).
        #[arg(short = 'h', long)]
        hostname: Option<String>,
        /// Do not register a name in weftDNS.
        #[arg(long)]
        without_dns: bool,
        /// Rewrite the container's /etc/hosts so its name resolves to its weft addresses.
        #[arg(long)]
        rewrite_hosts: bool,
        /// An extra NAME:IP line for the container's /etc/hosts (implies --rewrite-hosts).
        #[arg(long = "add-host", value_name = "NAME:IP")]
        add_host: Vec<String>,
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        #[arg(required = true, value_name = "[ADDR...] CONTAINER")]
        args: Vec<String>,
    },
    /// Detach a container (all of its addresses, or the ones given) and release its addresses.
    Detach {
        #[arg(required = true, value_name = "[ADDR...] CONTAINER")]
        args: Vec<String>,
    },
    /// Give the host addresses on the overlay so it can reach containers (ADDR as for attach).
    #[command(disable_help_flag = true)]
    Expose {
        /// A name for the host in weftDNS.
        #[arg(short = 'h', long)]
        hostname: Option<String>,
        /// No NAT: traffic between the subnet and the rest of the world keeps its addresses.
        #[arg(long)]
        without_masquerade: bool,
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        #[arg(value_name = "ADDR")]
        addrs: Vec<String>,
    },
    /// Remove the host's overlay addresses (all, or those given).
    Hide {
        #[arg(value_name = "ADDR")]
        addrs: Vec<String>,
    },
    /// Register a name in weftDNS: `dns-add [IP...] [CONTAINER] -h FQDN` (no container: an
    /// external address; no IPs: all of the container's).
    #[command(name = "dns-add", disable_help_flag = true)]
    DnsAdd {
        #[arg(short = 'h', long, required = true)]
        hostname: String,
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        #[arg(value_name = "[IP...] [CONTAINER]")]
        args: Vec<String>,
    },
    /// Remove names from weftDNS: `dns-remove [IP...] [CONTAINER] [-h FQDN]`.
    #[command(name = "dns-remove", disable_help_flag = true)]
    DnsRemove {
        #[arg(short = 'h', long)]
        hostname: Option<String>,
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        #[arg(value_name = "[IP...] [CONTAINER]")]
        args: Vec<String>,
    },
    /// Look a name up through weftDNS.
    #[command(name = "dns-lookup")]
    DnsLookup { name: String },
    /// Print the `docker run` arguments that make a container use weftDNS.
    #[command(name = "dns-args")]
    DnsArgs,
    /// Take over the address ranges of peers that are gone for good (run on one host only).
    Rmpeer {
        #[arg(required = true, value_name = "PEER-NAME-OR-NICKNAME")]
        peers: Vec<String>,
    },
    /// Wait until IP address allocation is initialised.
    Prime,
    /// List attached containers: id, MAC, addresses.
    Ps { containers: Vec<String> },
    /// Install the CNI plugins (weft-net, weft-ipam) and, unless present, the network
    /// configuration, so Kubernetes puts pods on weft.
    SetupCni {
        /// Where the runtime looks for plugins.
        #[arg(long, env = "WEFT_CNI_PLUGIN_DIR", default_value = "/opt/cni/bin")]
        cni_bin_dir: PathBuf,
        /// Where the runtime looks for network configurations.
        #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
        cni_conf_dir: PathBuf,
        /// Hairpin mode on pods' bridge ports (pods reach themselves through Services).
        #[arg(long, env = "HAIRPIN_MODE", default_value_t = true, action = clap::ArgAction::Set)]
        hairpin_mode: bool,
    },
    /// Print the version of the CLI and of the running router.
    Version,
    /// Print the shell command that points the Docker client at weft's proxy:
    /// `eval $(weft env)`; `eval $(weft env --restore)` points it back.
    Env {
        #[arg(long)]
        restore: bool,
    },
    /// Print the Docker client argument for weft's proxy: `docker $(weft config) run ...`.
    Config,
    /// Roll the network to a new password without downtime: on every host 'add NEW', then on
    /// every host 'use NEW', then on every host 'drop OLD'. Connections stay up throughout.
    /// Without PASSWORD (or --file), the password is read from standard input.
    Password {
        /// add: accept it too | use: dial and rekey with it | drop: stop accepting it
        #[arg(value_enum)]
        action: PasswordAction,
        password: Option<String>,
        /// Read the password from this file.
        #[arg(long, value_name = "FILE", conflicts_with = "password")]
        file: Option<PathBuf>,
    },
}

/// `--data-cipher`: `auto` (`None`) offers AES-256-GCM where the CPU runs it in hardware.
#[derive(Clone, Copy, Debug)]
pub struct DataCipherChoice(Option<weft_core::crypto::DataCipher>);

fn parse_data_cipher(s: &str) -> Result<DataCipherChoice, String> {
    match s {
        "auto" => Ok(DataCipherChoice(None)),
        _ => s.parse().map(|c| DataCipherChoice(Some(c))).map_err(|_| {
            format!("unknown cipher {s:?}: use auto, aes-256-gcm or chacha20-poly1305")
        }),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PasswordAction {
    Add,
    Use,
    Drop,
}

#[derive(Args, Clone, Debug)]
pub struct RouterArgs {
    /// Peer name (MAC-style); default: generated once and kept in the state dir.
    #[arg(long)]
    name: Option<PeerName>,
    /// Nickname shown in status; default: the hostname.
    #[arg(long)]
    nickname: Option<String>,
    /// Address to listen on and dial from (default: all).
    #[arg(long)]
    host: Option<IpAddr>,
    /// Control TCP and sleeve UDP port.
    #[arg(long, env = "WEFT_PORT", default_value_t = 6783)]
    port: u16,
    /// Maximum number of connections (0: unlimited).
    #[arg(long, default_value_t = 200)]
    conn_limit: usize,
    /// Do not connect to peers learned from other peers.
    #[arg(long)]
    no_discovery: bool,
    /// Reconnect to the peers of the previous run (no peer arguments allowed).
    #[arg(long)]
    resume: bool,
    /// Do not start the router again when it exits unexpectedly (Weave's --no-restart).
    #[arg(long)]
    no_restart: bool,
    /// Overlay MTU (default: underlay MTU minus encapsulation overhead).
    #[arg(long, env = "WEFT_MTU")]
    mtu: Option<u32>,
    /// Name of the bridge containers are plugged into.
    #[arg(long, default_value = "weft")]
    bridge: String,
    /// Range containers get addresses from ("" turns IP allocation off).
    #[arg(long, alias = "iprange", default_value = "10.32.0.0/12")]
    ipalloc_range: String,
    /// Subnet used when no subnet is asked for (default: the whole range).
    #[arg(long)]
    ipalloc_default_subnet: Option<Ipv4Net>,
    /// How the allocation ring starts: consensus[=N] | seed=PEERNAME,... | observer.
    #[arg(long)]
    ipalloc_init: Option<String>,
    /// Seconds an allocation may wait (for consensus or free space) before failing.
    #[arg(long, default_value_t = 30)]
    ipalloc_timeout: u64,
    /// Do not run the DNS server.
    #[arg(long)]
    no_dns: bool,
    /// Never use the kernel's VXLAN fast path: all data goes by sleeve (also WEFT_NO_FASTDP=1
    /// or Weave's WEAVE_NO_FASTDP).
    #[arg(long, env = "WEFT_NO_FASTDP")]
    no_fastdp: bool,
    /// Sleeve data-plane workers, each with a TAP queue and a socket of its own (0: one per
    /// core, at most 8; also WEFT_SLEEVE_WORKERS).
    #[arg(long, env = "WEFT_SLEEVE_WORKERS", default_value_t = 0)]
    sleeve_workers: usize,
    /// With a password, the cipher this router offers for data: auto (AES-256-GCM if the CPU
    /// has AES instructions), aes-256-gcm or chacha20-poly1305. A connection uses
    /// AES-256-GCM when both ends offer it, else ChaCha20-Poly1305 (also WEFT_DATA_CIPHER).
    #[arg(long, env = "WEFT_DATA_CIPHER", default_value = "auto", value_parser = parse_data_cipher)]
    data_cipher: DataCipherChoice,
    /// The DNS domain containers' names live in.
    #[arg(long, default_value = "weave.local.")]
    dns_domain: String,
    /// Where the DNS server listens (default: docker0's address, else all addresses, port 53).
    #[arg(long)]
    dns_listen_address: Option<SocketAddr>,
    /// TTL of the DNS answers for local names, in seconds.
    #[arg(long, default_value_t = 1)]
    dns_ttl: u32,
    /// The resolv.conf listing upstream servers for names outside the domain.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Seconds to wait for each upstream DNS server.
    #[arg(long, default_value_t = 5)]
    dns_fallback_timeout: u64,
    /// debug | info | warning | error
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Encrypt the network with this password; every peer needs it. Also read from
    /// WEFT_PASSWORD or WEAVE_PASSWORD; prefer those or --password-file, since arguments are
    /// visible to every user of the host.
    #[arg(long, env = "WEFT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Read the password from this file (surrounding whitespace is ignored).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// A second password to accept, for rolling the network to a new one without downtime
    /// (see 'weft password').
    #[arg(long, env = "WEFT_PASSWORD_NEXT", hide_env_values = true)]
    password_next: Option<String>,
    /// Underlay networks (CIDR,...) whose peers may exchange data unencrypted with us, when
    /// they trust us too; control traffic stays encrypted.
    #[arg(long, value_name = "CIDR,...", default_value = "")]
    trusted_subnets: String,
    /// Read-only status, report and Prometheus metrics ("" turns it off).
    #[arg(long, env = "WEFT_STATUS_ADDR", default_value = "127.0.0.1:6782")]
    status_addr: String,
    /// Prometheus metrics only, e.g. 0.0.0.0:6781 for a scraper elsewhere ("" turns it off).
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = "")]
    metrics_addr: String,
    /// The Docker Engine's API ("" turns the Docker proxy and plugin off).
    #[arg(long, env = "WEFT_DOCKER_API", default_value = weft_daemon::engine::DEFAULT_DOCKER_API)]
    docker_api: String,
    /// Serve the Docker API proxy (`--proxy=false` turns it off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    proxy: bool,
    /// Proxy: TLS on its TCP listeners (Docker's and Weave's --tls).
    #[arg(long)]
    tls: bool,
    /// Proxy: TLS, and clients need a certificate signed by --tlscacert (implies --tls).
    #[arg(long)]
    tlsverify: bool,
    /// Proxy: the CA that client certificates must be signed by (default
    /// $DOCKER_CERT_PATH/ca.pem, else ~/.docker/ca.pem).
    #[arg(long, value_name = "FILE")]
    tlscacert: Option<PathBuf>,
    /// Proxy: its certificate (default cert.pem there).
    #[arg(long, value_name = "FILE")]
    tlscert: Option<PathBuf>,
    /// Proxy: its key (default key.pem there).
    #[arg(long, value_name = "FILE")]
    tlskey: Option<PathBuf>,
    /// Proxy: do not take TLS settings from the Docker daemon's when no TLS flag is given.
    #[arg(long)]
    no_detect_tls: bool,
    /// Proxy: serve the Docker API on a non-loopback TCP address WITHOUT TLS. Anyone who
    /// reaches it controls Docker, and so the host.
    #[arg(long)]
    insecure_proxy_without_tls: bool,
    /// Where the Docker proxy listens: unix:///PATH or tcp://IP:PORT (repeatable; default
    /// unix://<run dir>/weft.sock). TCP has no TLS: keep it on 127.0.0.1.
    #[arg(short = 'H', value_name = "ADDRESS")]
    proxy_listen: Vec<String>,
    /// Serve the Docker network plugin (`--plugin=false` turns it off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    plugin: bool,
    /// The Docker network plugin's socket; the driver is named after it.
    #[arg(
        long,
        env = "WEFT_PLUGIN_SOCKET",
        default_value = "/run/docker/plugins/weft.sock"
    )]
    plugin_socket: PathBuf,
    /// A Docker network of the plugin's made at launch for `docker run --net=NAME`, as
    /// Weave's `weave` network (`""`: none).
    #[arg(long, env = "WEFT_PLUGIN_NETWORK", default_value = "weave")]
    plugin_network: String,
    /// Proxy: do not give containers weftDNS, a hostname in the domain, or DNS names.
    #[arg(long)]
    without_dns: bool,
    /// Proxy: no 224.0.0.0/4 route through ethwe in containers.
    #[arg(long)]
    no_multicast_route: bool,
    /// Proxy: leave containers' /etc/hosts as Docker wrote it.
    #[arg(long)]
    no_rewrite_hosts: bool,
    /// Proxy: attach only containers that set WEFT_CIDR (or WEAVE_CIDR).
    #[arg(long)]
    no_default_ipalloc: bool,
    /// Proxy: take containers' hostnames from this label when it is set.
    #[arg(long, value_name = "LABEL")]
    hostname_from_label: Option<String>,
    /// Proxy: a regular expression applied to container names to make hostnames (Weave's
    /// --hostname-match; e.g. '^aws-[0-9]+-(.*)$').
    #[arg(long, default_value = "(.*)")]
    hostname_match: String,
    /// Proxy: what a --hostname-match match becomes ($1 for its first group; e.g. 'my-app-$1').
    #[arg(long, default_value = "$1")]
    hostname_replacement: String,
    /// Proxy: docker inspect shows the container's weft address, MAC and prefix length in
    /// NetworkSettings (Weave's --rewrite-inspect).
    #[arg(long)]
    rewrite_inspect: bool,
    /// The static weft-wait binary the proxy mounts into containers (default: next to weft).
    #[arg(long, env = "WEFT_WAIT_BINARY")]
    wait_binary: Option<PathBuf>,
    /// Peers to connect to: <ip|host>[:port].
    peers: Vec<String>,
}

impl RouterArgs {
    /// The same arguments as a `weft router` command line.
    fn to_argv(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut opt = |k: &str, val: Option<String>| {
            if let Some(val) = val {
                v.push(format!("--{k}={val}"));
            }
        };
        opt("name", self.name.map(|n| n.to_string()));
        opt("nickname", self.nickname.clone());
        opt("host", self.host.map(|h| h.to_string()));
        opt("port", Some(self.port.to_string()));
        opt("conn-limit", Some(self.conn_limit.to_string()));
        opt("mtu", self.mtu.map(|m| m.to_string()));
        opt("bridge", Some(self.bridge.clone()));
        opt("ipalloc-range", Some(self.ipalloc_range.clone()));
        opt(
            "ipalloc-default-subnet",
            self.ipalloc_default_subnet.map(|s| s.to_string()),
        );
        opt("ipalloc-init", self.ipalloc_init.clone());
        opt("ipalloc-timeout", Some(self.ipalloc_timeout.to_string()));
        opt("dns-domain", Some(self.dns_domain.clone()));
        opt(
            "dns-listen-address",
            self.dns_listen_address.map(|a| a.to_string()),
        );
        opt("dns-ttl", Some(self.dns_ttl.to_string()));
        opt("resolv-conf", Some(self.resolv_conf.display().to_string()));
        opt(
            "dns-fallback-timeout",
            Some(self.dns_fallback_timeout.to_string()),
        );
        opt("log-level", Some(self.log_level.clone()));
        opt(
            "sleeve-workers",
            (self.sleeve_workers != 0).then(|| self.sleeve_workers.to_string()),
        );
        opt(
            "data-cipher",
            self.data_cipher.0.map(|c| c.name().to_string()),
        );
        if !self.trusted_subnets.is_empty() {
            opt("trusted-subnets", Some(self.trusted_subnets.clone()));
        }
        opt("status-addr", Some(self.status_addr.clone()));
        opt("metrics-addr", Some(self.metrics_addr.clone()));
        opt("docker-api", Some(self.docker_api.clone()));
        opt("proxy", Some(self.proxy.to_string()));
        opt("plugin", Some(self.plugin.to_string()));
        opt(
            "plugin-socket",
            Some(self.plugin_socket.display().to_string()),
        );
        opt("plugin-network", Some(self.plugin_network.clone()));
        opt("hostname-from-label", self.hostname_from_label.clone());
        for (k, v) in [
            ("tlscacert", &self.tlscacert),
            ("tlscert", &self.tlscert),
            ("tlskey", &self.tlskey),
        ] {
            opt(k, v.as_ref().map(|p| p.display().to_string()));
        }
        opt("hostname-match", Some(self.hostname_match.clone()));
        opt(
            "hostname-replacement",
            Some(self.hostname_replacement.clone()),
        );
        opt(
            "wait-binary",
            self.wait_binary.as_ref().map(|p| p.display().to_string()),
        );
        for h in &self.proxy_listen {
            v.push(format!("-H={h}"));
        }
        for (set, flag) in [
            (self.no_discovery, "--no-discovery"),
            (self.resume, "--resume"),
            (self.no_dns, "--no-dns"),
            (self.no_fastdp(), "--no-fastdp"),
            (self.without_dns, "--without-dns"),
            (self.no_multicast_route, "--no-multicast-route"),
            (self.no_rewrite_hosts, "--no-rewrite-hosts"),
            (self.no_default_ipalloc, "--no-default-ipalloc"),
            (self.rewrite_inspect, "--rewrite-inspect"),
            (self.tls, "--tls"),
            (self.tlsverify, "--tlsverify"),
            (self.no_detect_tls, "--no-detect-tls"),
            (
                self.insecure_proxy_without_tls,
                "--insecure-proxy-without-tls",
            ),
        ] {
            if set {
                v.push(flag.to_string());
            }
        }
        if !self.peers.is_empty() {
            v.push("--".into());
            v.extend(self.peers.iter().cloned());
        }
        v
    }

    /// The passwords to accept, the one to dial with first; empty: no encryption. Sources, in
    /// order: --password or WEFT_PASSWORD, --password-file, WEAVE_PASSWORD (Weave's variable).
    fn passwords(&self) -> Result<Vec<weft_daemon::secrets::Password>> {
        use weft_daemon::secrets::Password;
        let main = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => bail!(
                "give the password once: --password (or WEFT_PASSWORD) or --password-file, not both"
            ),
            (Some(p), None) => Password::new(p.as_bytes()),
            (None, Some(f)) => {
                let raw = zeroize::Zeroizing::new(std::fs::read(f).with_context(|| {
                    format!("reading the password from --password-file {}", f.display())
                })?);
                Some(
                    Password::new(&raw)
                        .with_context(|| format!("--password-file {} is empty", f.display()))?,
                )
            }
            (None, None) => std::env::var("WEAVE_PASSWORD")
                .ok()
                .and_then(|p| Password::new(p.as_bytes())),
        };
        let next = self
            .password_next
            .as_deref()
            .and_then(|p| Password::new(p.as_bytes()));
        match (main, next) {
            (None, Some(_)) => bail!(
                "--password-next needs --password: it is a second password to accept, for rolling to a new one"
            ),
            (None, None) => Ok(Vec::new()),
            (Some(m), Some(n)) if m != n => Ok(vec![m, n]),
            (Some(m), _) => Ok(vec![m]),
        }
    }

    /// `--status-addr` and `--metrics-addr`; "" is off.
    fn listen_addrs(&self) -> Result<(Option<SocketAddr>, Option<SocketAddr>)> {
        let parse = |flag: &str, s: &str| -> Result<Option<SocketAddr>> {
            if s.trim().is_empty() {
                return Ok(None);
            }
            s.trim().parse().map(Some).with_context(|| {
                format!("{flag} {s:?} is not an address like 127.0.0.1:6782 (\"\" turns it off)")
            })
        };
        Ok((
            parse("--status-addr", &self.status_addr)?,
            parse("--metrics-addr", &self.metrics_addr)?,
        ))
    }

    /// The Docker proxy and plugin settings; `None` when `--docker-api ""`.
    fn docker(
        &self,
        run_dir: &std::path::Path,
    ) -> Result<Option<weft_daemon::engine::DockerSettings>> {
        if self.docker_api.trim().is_empty() {
            return Ok(None);
        }
        let wait_binary = match &self.wait_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("finding the weft executable")?
                .with_file_name("weft-wait"),
        };
        weft_daemon::engine::rewrite::hostname_match(
            &self.hostname_match,
            &self.hostname_replacement,
        )
        .map_err(anyhow::Error::msg)?;
        let proxy_listen = match (self.proxy, self.proxy_listen.is_empty()) {
            (false, _) => Vec::new(),
            (true, true) => vec![format!("unix://{}", run_dir.join("weft.sock").display())],
            (true, false) => self.proxy_listen.clone(),
        };
        let proxy_tls = self.proxy_tls(&proxy_listen)?;
        Ok(Some(weft_daemon::engine::DockerSettings {
            api: self.docker_api.clone(),
            proxy_listen,
            plugin_socket: self.plugin.then(|| self.plugin_socket.clone()),
            proxy_tls,
            plugin_network: Some(self.plugin_network.clone())
                .filter(|n| self.plugin && !n.is_empty()),
            without_dns: self.without_dns || self.no_dns,
            no_multicast_route: self.no_multicast_route,
            no_rewrite_hosts: self.no_rewrite_hosts,
            no_default_ipalloc: self.no_default_ipalloc,
            hostname_from_label: self.hostname_from_label.clone(),
            hostname_match: self.hostname_match.clone(),
            hostname_replacement: self.hostname_replacement.clone(),
            rewrite_inspect: self.rewrite_inspect,
            wait_binary,
        }))
    }

    /// TLS for the proxy's TCP listeners: from the flags, else (unless --no-detect-tls) from
    /// the Docker daemon's own settings, as Weave did. The files are read and checked here,
    /// before anything on the host changes; a non-loopback TCP listener without TLS is
    /// refused unless --insecure-proxy-without-tls says otherwise.
    fn proxy_tls(
        &self,
        listen: &[String],
    ) -> Result<Option<weft_daemon::engine::tls::TlsSettings>> {
        use weft_daemon::engine::tls::{self, TlsSettings};
        let tcp: Vec<&str> = listen
            .iter()
            .filter_map(|a| a.strip_prefix("tcp://"))
            .collect();
        let explicit = self.tls
            || self.tlsverify
            || self.tlscacert.is_some()
            || self.tlscert.is_some()
            || self.tlskey.is_some();
        let settings = if explicit {
            Some(TlsSettings::with_defaults(
                self.tlsverify,
                self.tlscacert.clone(),
                self.tlscert.clone(),
                self.tlskey.clone(),
            ))
        } else if !self.no_detect_tls && !tcp.is_empty() {
            let socket = weft_daemon::engine::socket_path(&self.docker_api);
            tls::detect(socket.as_deref())
        } else {
            None
        };
        if let Some(t) = &settings {
            t.server_config().map_err(anyhow::Error::msg)?;
        }
        for hp in tcp {
            // An address that is not IP:PORT gets its own error from the listener.
            let Ok(sa) = hp.trim_end_matches('/').parse::<std::net::SocketAddr>() else {
                continue;
            };
            if settings.is_some() || sa.ip().is_loopback() {
                continue;
            }
            if !self.insecure_proxy_without_tls {
                bail!(
                    "-H tcp://{hp} would serve the Docker API unauthenticated on the network (root on this host for anyone who reaches it): add --tlsverify --tlscacert CA.pem --tlscert CERT.pem --tlskey KEY.pem (or --tls for encryption only), listen on 127.0.0.1, or give --insecure-proxy-without-tls if you really mean it"
                );
            }
            eprintln!(
                "weft: WARNING: the Docker proxy serves tcp://{hp} WITHOUT TLS (--insecure-proxy-without-tls): anyone who can reach it controls Docker, and so this host"
            );
        }
        Ok(settings)
    }

    fn trusted_subnets(&self) -> Result<Vec<Ipv4Net>> {
        self.trusted_subnets
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<Ipv4Net>().map(|n| n.trunc()).with_context(|| {
                    format!("--trusted-subnets: {s:?} is not a CIDR like 10.0.0.0/8")
                })
            })
            .collect()
    }

    /// `--no-fastdp`, WEFT_NO_FASTDP, or Weave's WEAVE_NO_FASTDP set to anything but a
    /// false value.
    fn no_fastdp(&self) -> bool {
        self.no_fastdp
            || std::env::var("WEAVE_NO_FASTDP").is_ok_and(|v| {
                !matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "" | "0" | "false" | "no" | "off"
                )
            })
    }

    fn mtu(&self) -> Result<Option<u32>> {
        if let Some(m) = self.mtu {
            return Ok(Some(m));
        }
        // Weave's variable, so existing scripts keep working.
        match std::env::var("WEAVE_MTU") {
            Ok(s) if !s.is_empty() => {
                Ok(Some(s.parse().with_context(|| {
                    format!("WEAVE_MTU={s:?} is not a number")
                })?))
            }
            _ => Ok(None),
        }
    }
}

fn main() {
    // Run by a container runtime as a CNI plugin (a symlink named weft-net or weft-ipam).
    if let Some(plugin) = std::env::args()
        .next()
        .as_deref()
        .and_then(cni::Plugin::from_argv0)
    {
        std::process::exit(cni::run(plugin));
    }
    if let Some(msg) = std::env::args().nth(1).as_deref().and_then(removed_command) {
        eprintln!("weft: {msg}");
        std::process::exit(1);
    }
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        match e.downcast_ref::<ClientError>() {
            Some(ClientError::Status { body, .. }) => eprintln!("weft: {body}"),
            _ => eprintln!("weft: {e:#}"),
        }
        std::process::exit(1);
    }
}

/// Commands Weave 2.0 removed: scripts written for Weave 1.x get told what replaced them
/// rather than a bare "unrecognized subcommand".
fn removed_command(cmd: &str) -> Option<String> {
    let instead = match cmd {
        "run" | "start" | "restart" => {
            "point Docker at weft's proxy with 'eval $(weft env)' and use 'docker run/start/restart', or 'weft attach' an existing container"
        }
        "launch-router" | "launch-proxy" | "launch-plugin" => {
            "'weft launch' starts the router, the Docker proxy and the plugin together"
        }
        "stop-router" | "stop-proxy" | "stop-plugin" => "'weft stop' stops all of them",
        _ => return None,
    };
    Some(format!(
        "the '{cmd}' command was removed in Weave Net 2.0 and weft does not have it: {instead}"
    ))
}

fn real_main(cli: Cli) -> Result<()> {
    use cmd::{containers, dns, docker, router};
    let c = Client::new(cli.http_addr);
    match &cli.cmd {
        Cmd::Router(args) => lifecycle::router(&cli, args),
        Cmd::Supervise(args) => lifecycle::supervise(&cli, args),
        Cmd::Launch(args) => lifecycle::launch(&cli, args),
        Cmd::Stop => lifecycle::stop(&cli),
        Cmd::Reset { force, bridge } => lifecycle::reset(&cli, *force, bridge),
        Cmd::SetupCni {
            cni_bin_dir,
            cni_conf_dir,
            hairpin_mode,
        } => {
            for p in cni::setup(cni_bin_dir, cni_conf_dir, *hairpin_mode)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::Status { sub } => router::status(&c, sub.as_deref()),
        Cmd::Report { format } => router::report(&c, format.as_deref()),
        Cmd::Connect { replace, peers } => router::peers(&c, peers, *replace, false),
        Cmd::Forget { peers } => router::peers(&c, peers, false, true),
        Cmd::Rmpeer { peers } => router::rmpeer(&c, peers),
        Cmd::Prime => router::prime(&c),
        Cmd::Password {
            action,
            password,
            file,
        } => router::password(&c, action, password.as_deref(), file.as_deref()),
        Cmd::Version => router::version(&c),
        Cmd::Attach {
            no_multicast_route,
            hostname,
            without_dns,
            rewrite_hosts,
            add_host,
            args,
            ..
        } => containers::attach(
            &c,
            args,
            containers::AttachOptions {
                multicast_route: !no_multicast_route,
                hostname: hostname.clone(),
                without_dns: *without_dns,
                rewrite_hosts: *rewrite_hosts,
                add_hosts: add_host.clone(),
            },
        ),
        Cmd::Detach { args } => containers::detach(&c, args),
        Cmd::Expose {
            addrs,
            hostname,
            without_masquerade,
            ..
        } => containers::expose_or_hide(&c, addrs, Some((hostname.clone(), *without_masquerade))),
        Cmd::Hide { addrs } => containers::expose_or_hide(&c, addrs, None),
        Cmd::Ps { containers } => containers::ps(&c, containers),
        Cmd::DnsAdd { hostname, args, .. } => dns::add(&c, hostname, args),
        Cmd::DnsRemove { hostname, args, .. } => dns::remove(&c, hostname.as_deref(), args),
        Cmd::DnsLookup { name } => dns::lookup(&c, name),
        Cmd::DnsArgs => dns::args(&c),
        Cmd::Env { restore } => docker::env(&c, *restore),
        Cmd::Config => docker::config(&c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_weave_commands_say_what_replaced_them() {
        assert!(removed_command("run").unwrap().contains("docker run"));
        assert!(
            removed_command("launch-proxy")
                .unwrap()
                .contains("weft launch")
        );
        assert!(
            removed_command("stop-plugin")
                .unwrap()
                .contains("weft stop")
        );
        assert_eq!(removed_command("status"), None);
        // Everything else is still clap's to parse.
        assert!(Cli::try_parse_from(["weft", "status", "peers"]).is_ok());
    }
}
