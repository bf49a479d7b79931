//! Runs the Kubernetes API stand-in by hand or from a test, inside a test bed's namespace:
//!
//! ```text
//! ip netns exec NS weft-kube-api IP:PORT DIR [--event-log N] [--bookmark-secs S]
//! ```
//! DIR receives the CA (`ca.crt`), the token (`token`) and a `kubeconfig` for kubectl, the
//! last once it serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weft_kube_api::{Options, Pki, StandIn};

const USAGE: &str = "usage: weft-kube-api IP:PORT DIR [--event-log N] [--bookmark-secs S]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().context(USAGE)?.parse()?;
    let dir = PathBuf::from(args.next().context(USAGE)?);
    let mut options = Options::default();
    while let Some(flag) = args.next() {
        let value = args.next().context(USAGE)?;
        match flag.as_str() {
            "--event-log" => options.event_log = value.parse()?,
            "--bookmark-secs" => options.bookmark_interval = Duration::from_secs(value.parse()?),
            _ => bail!("{USAGE}"),
        }
    }
    let pki = Pki::generate(&dir, &[addr.ip()])?;
    let listener = std::net::TcpListener::bind(addr)?;
    let s = StandIn::start(listener, pki, options)?;
    let tmp = dir.join(".kubeconfig.tmp");
    s.pki.write_kubeconfig(&tmp, s.addr)?;
    std::fs::rename(&tmp, dir.join("kubeconfig"))?;
    println!(
        "serving on https://{}; kubeconfig in {}",
        s.addr,
        dir.display()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
