//! `attach`, `detach`, `expose`, `hide`, `ps`.

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use weft_api::types::{AddrSpec, AttachRequest, AttachResponse, ContainerEntry, DetachRequest};
use weft_api::{Client, render};

use super::{ips, runtime, urlencode};

/// What `attach` asks for beyond its `[ADDR...] CONTAINER` arguments.
pub struct AttachOptions {
    pub multicast_route: bool,
    pub hostname: Option<String>,
    pub without_dns: bool,
    pub rewrite_hosts: bool,
    pub add_hosts: Vec<String>,
}

pub fn attach(c: &Client, args: &[String], o: AttachOptions) -> Result<()> {
    let (addrs, container) = split_container(args)?;
    runtime()?.block_on(async {
        let req = AttachRequest {
            addrs,
            multicast_route: o.multicast_route,
            hostname: o.hostname,
            without_dns: o.without_dns,
            rewrite_hosts: o.rewrite_hosts,
            add_hosts: o.add_hosts,
            ..AttachRequest::new(container)
        };
        let body = c.post_json("/attach", &req).await?;
        let r: AttachResponse = serde_json::from_str(&body)?;
        println!("{}", ips(&r.addresses));
        Ok(())
    })
}

pub fn detach(c: &Client, args: &[String]) -> Result<()> {
    let (addrs, container) = split_container(args)?;
    runtime()?.block_on(async {
        let req = DetachRequest {
            container,
            ident: None,
            addrs,
        };
        let body = c.post_json("/detach", &req).await?;
        let removed: Vec<Ipv4Net> = serde_json::from_str(&body)?;
        println!("{}", ips(&removed));
        Ok(())
    })
}

/// `expose` (with `Some((hostname, without_masquerade))`) or `hide` (`None`).
pub fn expose_or_hide(
    c: &Client,
    addrs: &[String],
    expose: Option<(Option<String>, bool)>,
) -> Result<()> {
    check_addr_args(addrs)?;
    let path = if expose.is_some() { "/expose" } else { "/hide" };
    let (hostname, without_masquerade) = expose.unwrap_or((None, false));
    runtime()?.block_on(async {
        let req = weft_api::types::ExposeRequest {
            addrs: addrs.to_vec(),
            hostname,
            without_masquerade,
        };
        let body = c.post_json(path, &req).await?;
        let nets: Vec<Ipv4Net> = serde_json::from_str(&body)?;
        println!("{}", ips(&nets));
        Ok(())
    })
}

pub fn ps(c: &Client, containers: &[String]) -> Result<()> {
    runtime()?.block_on(async {
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
        let list: Vec<ContainerEntry> = c.get_json(&path).await?;
        print!("{}", render::ps(&list));
        Ok(())
    })
}

/// `[ADDR...] CONTAINER` → the address arguments (checked here for an early, clear error)
/// and the container.
fn split_container(args: &[String]) -> Result<(Vec<String>, String)> {
    let (container, rest) = args.split_last().context("no container given")?;
    if container.parse::<AddrSpec>().is_ok() && (container.contains('/') || container.contains(':'))
    {
        bail!("the last argument must be the container, not an address ({container})");
    }
    check_addr_args(rest)?;
    Ok((rest.to_vec(), container.clone()))
}

/// Parses address arguments; a subnet's network address given as an address is accepted
/// with a warning, as Weave did.
fn check_addr_args(args: &[String]) -> Result<()> {
    for a in args {
        if let AddrSpec::Exact(net) = a.parse::<AddrSpec>().map_err(anyhow::Error::msg)?
            && let Some(w) = weft_daemon::attach::network_address(&net)
        {
            eprintln!("Warning: {w}");
        }
    }
    Ok(())
}
