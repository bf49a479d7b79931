//! `dns-add`, `dns-remove`, `dns-lookup`, `dns-args`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Result, bail};
use weft_api::types::{ContainerEntry, Report};
use weft_api::{Client, ClientError};

use super::{runtime, urlencode};

/// `dns-add [IP...] [CONTAINER] -h FQDN`: no container is an external address; no IPs are all
/// of the container's.
pub fn add(c: &Client, hostname: &str, args: &[String]) -> Result<()> {
    let (ips, container) = split_ips(args)?;
    runtime()?.block_on(async {
        let (ident, ips) = match container {
            Some(ct) if ips.is_empty() => {
                let ips = container_ips(c, &ct).await?;
                (ct, ips)
            }
            Some(ct) => (ct, ips),
            None if ips.is_empty() => bail!("dns-add needs an IP address or a container"),
            None => ("weave:extern".to_string(), ips),
        };
        for ip in ips {
            let path = format!(
                "/name/{}/{ip}?fqdn={}",
                urlencode(&ident),
                urlencode(hostname)
            );
            c.request(hyper::Method::PUT, &path, None, Vec::new())
                .await?;
        }
        Ok(())
    })
}

pub fn remove(c: &Client, hostname: Option<&str>, args: &[String]) -> Result<()> {
    let (ips, container) = split_ips(args)?;
    let ident = container.unwrap_or_else(|| "weave:extern".to_string());
    runtime()?.block_on(async {
        let q = hostname
            .map(|h| format!("?fqdn={}", urlencode(h)))
            .unwrap_or_default();
        if ips.is_empty() {
            c.delete(&format!("/name/{}", urlencode(&ident))).await?;
        }
        for ip in ips {
            c.delete(&format!("/name/{}/{ip}{q}", urlencode(&ident)))
                .await?;
        }
        Ok(())
    })
}

pub fn lookup(c: &Client, name: &str) -> Result<()> {
    runtime()?.block_on(async {
        let r: Report = c.get_json("/report").await?;
        let Some(d) = r.dns else {
            bail!("weftDNS is disabled (the router was launched with --no-dns)");
        };
        let mut server: SocketAddr = d.address.parse()?;
        if server.ip().is_unspecified() {
            server.set_ip(IpAddr::from([127, 0, 0, 1]));
        }
        for a in query(server, name).await? {
            println!("{a}");
        }
        Ok(())
    })
}

pub fn args(c: &Client) -> Result<()> {
    runtime()?.block_on(async {
        match (c.get("/dns-address").await, c.get("/domain").await) {
            (Ok(ip), Ok(domain)) => println!("--dns={} --dns-search={}", ip.trim(), domain.trim()),
            (Err(ClientError::Status { status: 404, body }), _) if body.contains("disabled") => {}
            (Err(e), _) | (_, Err(e)) => return Err(e.into()),
        }
        Ok(())
    })
}

/// `[IP...] [CONTAINER]`: addresses, and the one argument that is not an address.
fn split_ips(args: &[String]) -> Result<(Vec<Ipv4Addr>, Option<String>)> {
    let mut ips = Vec::new();
    let mut container = None;
    for a in args {
        match a.parse::<Ipv4Addr>() {
            Ok(ip) => ips.push(ip),
            Err(_) if container.is_none() => container = Some(a.clone()),
            Err(_) => {
                bail!("{a:?}: more than one container given (IP addresses look like 10.32.0.1)")
            }
        }
    }
    Ok((ips, container))
}

/// The weft addresses of an attached container.
async fn container_ips(c: &Client, container: &str) -> Result<Vec<Ipv4Addr>> {
    let list: Vec<ContainerEntry> = c
        .get_json(&format!("/ps?container={}", urlencode(container)))
        .await?;
    let ips: Vec<_> = list
        .iter()
        .flat_map(|e| e.cidrs.iter().map(|n| n.addr()))
        .collect();
    if ips.is_empty() {
        bail!("container {container} has no weft addresses; give the IP addresses");
    }
    Ok(ips)
}

/// Asks a DNS server for the A records of `name` (as `dig +short` would).
async fn query(server: SocketAddr, name: &str) -> Result<Vec<Ipv4Addr>> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut q = Message::query();
    q.metadata.id = std::process::id() as u16;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    sock.send_to(&q.to_vec()?, server).await?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from the DNS server at {server}"))??;
    let m = Message::from_vec(&buf[..n])?;
    Ok(m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect())
}
