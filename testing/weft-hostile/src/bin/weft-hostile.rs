//! Runs the hostile peer by hand, inside a namespace of a test bed:
//!
//! ```text
//! ip netns exec NS weft-hostile silent    ROUTER_IP [COUNT]   # half-open connections, held
//! ip netns exec NS weft-hostile greedy    ROUTER_IP [ROUNDS]  # join (unencrypted), invent
//!                                                             # peers, ask, never read, MACs
//! ip netns exec NS weft-hostile fragments ROUTER_IP [COUNT]   # forged fragments to 6783/udp
//! ip netns exec NS weft-hostile dns       ROUTER_IP [COUNT]   # queries to 53/udp
//! ```
//! It sends only to ROUTER_IP.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weft_hostile::{Peer, Rng};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(ip)) = (args.first(), args.get(1)) else {
        bail!("usage: weft-hostile silent|greedy|fragments|dns ROUTER_IP [COUNT]");
    };
    let ip: IpAddr = ip.parse().context("ROUTER_IP")?;
    let count: usize = args.get(2).map_or(Ok(1000), |c| c.parse())?;
    let mut rng = Rng::new(0x6865_7374);
    let control = SocketAddr::new(ip, 6783);
    let any = IpAddr::from([0, 0, 0, 0]);
    match mode.as_str() {
        "silent" => {
            let held = weft_hostile::silent_connections(control, count);
            println!("holding {} connections for 60 s", held.len());
            std::thread::sleep(Duration::from_secs(60));
        }
        "greedy" => {
            let udp = weft_hostile::udp_socket(any)?;
            let port = udp.local_addr()?.port();
            let mut p = Peer::join(control, rng.name(), port)?;
            p.invent_peers(&mut rng, 20_000, 1)?;
            p.establish(&udp)?;
            p.frames_with_random_macs(&udp, &mut rng, 20_000)?;
            p.ask_for_everything(count)?;
            println!("sent {} control bytes", p.sent);
        }
        "fragments" => {
            let udp = weft_hostile::udp_socket(any)?;
            weft_hostile::fragments(&udp, control, &mut rng, None, count)?;
        }
        "dns" => {
            let udp = weft_hostile::udp_socket(any)?;
            weft_hostile::dns_queries(
                &udp,
                SocketAddr::new(ip, 53),
                &mut rng,
                "weave.local",
                count,
            )?;
        }
        other => bail!("unknown mode {other:?}"),
    }
    Ok(())
}
