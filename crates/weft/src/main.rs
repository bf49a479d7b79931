//! `weft`: the command line. Mirrors Weave's commands, flags and outputs; `weft router` runs the
//! daemon in the foreground, `weft launch` starts it in the background.
#![forbid(unsafe_code)]

mod lifecycle;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;
use weft_api::types::{
    AddrSpec, AttachRequest, AttachResponse, ContainerEntry, DetachRequest, PeersRequest, Report,
};
use weft_api::{Client, ClientError, render};
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
    Report,
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
    Attach {
        /// Do not add the 224.0.0.0/4 route through ethwe.
        #[arg(long)]
        no_multicast_route: bool,
        #[arg(required = true, value_name = "[ADDR...] CONTAINER")]
        args: Vec<String>,
    },
    /// Detach a container (all of its addresses, or the ones given) and release its addresses.
    Detach {
        #[arg(required = true, value_name = "[ADDR...] CONTAINER")]
        args: Vec<String>,
    },
    /// Give the host addresses on the overlay so it can reach containers (ADDR as for attach).
    Expose {
        #[arg(value_name = "ADDR")]
        addrs: Vec<String>,
    },
    /// Remove the host's overlay addresses (all, or those given).
    Hide {
        #[arg(value_name = "ADDR")]
        addrs: Vec<String>,
    },
    /// Take over the address ranges of peers that are gone for good (run on one host only).
    Rmpeer {
        #[arg(required = true, value_name = "PEER-NAME-OR-NICKNAME")]
        peers: Vec<String>,
    },
    /// Wait until IP address allocation is initialised.
    Prime,
    /// List attached containers: id, MAC, addresses.
    Ps { containers: Vec<String> },
    /// Print the version of the CLI and of the running router.
    Version,
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
    /// debug | info | warning | error
    #[arg(long, default_value = "info")]
    log_level: String,
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
        opt("log-level", Some(self.log_level.clone()));
        if self.no_discovery {
            v.push("--no-discovery".into());
        }
        if self.resume {
            v.push("--resume".into());
        }
        if !self.peers.is_empty() {
            v.push("--".into());
            v.extend(self.peers.iter().cloned());
        }
        v
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
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        match e.downcast_ref::<ClientError>() {
            Some(ClientError::Status { body, .. }) => eprintln!("weft: {body}"),
            _ => eprintln!("weft: {e:#}"),
        }
        std::process::exit(1);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn real_main(cli: Cli) -> Result<()> {
    let client = || Client::new(cli.http_addr);
    match &cli.cmd {
        Cmd::Router(args) => lifecycle::router(&cli, args),
        Cmd::Launch(args) => lifecycle::launch(&cli, args),
        Cmd::Stop => lifecycle::stop(&cli),
        Cmd::Reset { force, bridge } => lifecycle::reset(&cli, *force, bridge),
        Cmd::Status { sub } => runtime()?.block_on(async {
            match sub.as_deref() {
                None => {
                    let s = client().get("/status").await?;
                    print!("\n{s}\n");
                }
                Some(sub @ ("targets" | "connections" | "peers" | "ipam")) => {
                    print!("{}", client().get(&format!("/status/{sub}")).await?);
                }
                Some(other) => bail!(
                    "Invalid 'weft status' sub-command: {other} (use: weft status [targets | connections | peers | ipam])"
                ),
            }
            Ok(())
        }),
        Cmd::Report => runtime()?.block_on(async {
            let r: Report = client().get_json("/report").await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }),
        Cmd::Connect { replace, peers } => runtime()?.block_on(async {
            let req = PeersRequest {
                peers: peers.clone(),
                replace: *replace,
            };
            client().post_json("/connect", &req).await?;
            Ok(())
        }),
        Cmd::Forget { peers } => runtime()?.block_on(async {
            let req = PeersRequest {
                peers: peers.clone(),
                replace: false,
            };
            client().post_json("/forget", &req).await?;
            Ok(())
        }),
        Cmd::Attach {
            no_multicast_route,
            args,
        } => {
            let (addrs, container) = split_container(args)?;
            runtime()?.block_on(async {
                let req = AttachRequest {
                    container,
                    addrs,
                    multicast_route: !no_multicast_route,
                };
                let body = client().post_json("/attach", &req).await?;
                let r: AttachResponse = serde_json::from_str(&body)?;
                println!("{}", ips(&r.addresses));
                Ok(())
            })
        }
        Cmd::Detach { args } => {
            let (addrs, container) = split_container(args)?;
            runtime()?.block_on(async {
                let body = client()
                    .post_json("/detach", &DetachRequest { container, addrs })
                    .await?;
                let removed: Vec<Ipv4Net> = serde_json::from_str(&body)?;
                println!("{}", ips(&removed));
                Ok(())
            })
        }
        Cmd::Expose { addrs } | Cmd::Hide { addrs } => {
            for a in addrs {
                a.parse::<AddrSpec>().map_err(anyhow::Error::msg)?;
            }
            let path = if matches!(cli.cmd, Cmd::Expose { .. }) {
                "/expose"
            } else {
                "/hide"
            };
            runtime()?.block_on(async {
                let req = weft_api::types::ExposeRequest {
                    addrs: addrs.clone(),
                };
                let body = client().post_json(path, &req).await?;
                let nets: Vec<Ipv4Net> = serde_json::from_str(&body)?;
                println!("{}", ips(&nets));
                Ok(())
            })
        }
        Cmd::Rmpeer { peers } => runtime()?.block_on(async {
            let mut failed = false;
            for p in peers {
                match client().delete(&format!("/peer/{}", urlencode(p))).await {
                    Ok(msg) => print!("{msg}"),
                    Err(e) => {
                        eprintln!("weft: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                std::process::exit(1);
            }
            Ok(())
        }),
        Cmd::Prime => runtime()?.block_on(async {
            client().get("/ring").await?;
            Ok(())
        }),
        Cmd::Ps { containers } => runtime()?.block_on(async {
            let q: String = containers
                .iter()
                .map(|c| format!("container={}", urlencode(c)))
                .collect::<Vec<_>>()
                .join("&");
            let path = if q.is_empty() {
                "/ps".to_string()
            } else {
                format!("/ps?{q}")
            };
            let list: Vec<ContainerEntry> = client().get_json(&path).await?;
            print!("{}", render::ps(&list));
            Ok(())
        }),
        Cmd::Version => {
            println!("weft {}", env!("CARGO_PKG_VERSION"));
            let r = runtime()?.block_on(client().get_json::<Report>("/report"));
            match r {
                Ok(r) => println!("weft router {}", r.version),
                Err(ClientError::NotRunning { .. }) => println!("weft router not running"),
                Err(e) => return Err(e.into()),
            }
            Ok(())
        }
    }
}

/// `[ADDR...] CONTAINER` → the address arguments (checked here for an early, clear error)
/// and the container.
fn split_container(args: &[String]) -> Result<(Vec<String>, String)> {
    let (container, rest) = args.split_last().context("no container given")?;
    if container.parse::<AddrSpec>().is_ok() && (container.contains('/') || container.contains(':'))
    {
        bail!("the last argument must be the container, not an address ({container})");
    }
    for a in rest {
        a.parse::<AddrSpec>().map_err(anyhow::Error::msg)?;
    }
    Ok((rest.to_vec(), container.clone()))
}

fn ips(cidrs: &[Ipv4Net]) -> String {
    cidrs
        .iter()
        .map(|c| c.addr().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
