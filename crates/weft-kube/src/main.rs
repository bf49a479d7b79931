//! `weft-kube`: peers from the Kubernetes Nodes, and a router kept to them.
//!
//! ```text
//! weft-kube peers                      # the other nodes' addresses, one per line
//! weft-kube launch -- ROUTER_ARGS...   # run `weft router ROUTER_ARGS... PEERS...`, follow the Nodes
//! weft-kube npc                        # enforce NetworkPolicy on this node (Weave's weave-npc)
//! ```
//! The cluster comes from KUBECONFIG, else the in-cluster service account.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use kube::Api;
use weft_kube::launch::{self, LaunchConfig};

#[derive(Parser)]
#[command(
    name = "weft-kube",
    version,
    about = "weft on Kubernetes: peers from the Nodes"
)]
struct Cli {
    /// This node's name (the DaemonSet sets it from spec.nodeName).
    #[arg(long, env = "NODE_NAME", global = true)]
    node_name: Option<String>,
    #[arg(
        long,
        env = "WEFT_STATE_DIR",
        default_value = "/var/lib/weft",
        global = true
    )]
    state_dir: PathBuf,
    /// The router's HTTP API address.
    #[arg(long, env = "WEFT_HTTP_ADDR", default_value = weft_api::DEFAULT_HTTP_ADDR, global = true)]
    http_addr: SocketAddr,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the other nodes' addresses, one per line (Weave's `kube-peers`).
    Peers,
    /// Run the router with the other nodes as peers, and keep them to the Nodes.
    Launch {
        /// The weft binary.
        #[arg(long, env = "WEFT_BINARY", default_value = "weft")]
        weft: PathBuf,
        /// Seconds to keep trying the API server at start before using the cached peers.
        #[arg(long, default_value_t = 30)]
        api_wait: u64,
        /// Arguments for `weft router`.
        #[arg(last = true)]
        router_args: Vec<String>,
    },
    /// Enforce NetworkPolicy for this node's pods, in the nftables table `inet weft-npc`.
    Npc {
        /// Where the CNI plugin tells us about new pods.
        #[arg(long, env = "WEFT_NPC_SOCKET", default_value = weft_api::npc::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Prometheus metrics address ("off" for none).
        #[arg(long, env = "WEFT_NPC_METRICS_ADDR", default_value = "0.0.0.0:6781")]
        metrics_addr: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                // kube's client logs every failed retry as an error; weft-kube says what
                // matters (when it changes, and once a minute while it lasts).
                .unwrap_or_else(|_| "info,kube_client=off,kube_runtime=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Peers => {
            let client = kube::Client::try_default().await?;
            let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
            let own = launch::own_addresses();
            for p in launch::list_peers(&api, cli.node_name.as_deref(), &own).await? {
                println!("{p}");
            }
            Ok(())
        }
        Cmd::Launch {
            weft,
            api_wait,
            router_args,
        } => {
            let code = launch::launch(LaunchConfig {
                node_name: cli.node_name,
                weft,
                router_args,
                state_dir: cli.state_dir,
                http_addr: cli.http_addr,
                api_wait: Duration::from_secs(api_wait),
            })
            .await?;
            std::process::exit(code);
        }
        Cmd::Npc {
            socket,
            metrics_addr,
        } => {
            let Some(node_name) = cli.node_name else {
                anyhow::bail!(
                    "weft-kube npc needs this node's name: set NODE_NAME (the DaemonSet sets it from spec.nodeName) or --node-name"
                );
            };
            let metrics_addr =
                match metrics_addr.as_str() {
                    "off" | "" => None,
                    a => Some(a.parse().map_err(|_| {
                        anyhow::anyhow!("--metrics-addr {a:?}: give IP:PORT, or off")
                    })?),
                };
            let client = kube::Client::try_default().await?;
            weft_kube::npc::run::run(
                client,
                weft_kube::npc::run::NpcConfig {
                    node_name,
                    socket,
                    metrics_addr,
                },
            )
            .await
        }
    }
}
