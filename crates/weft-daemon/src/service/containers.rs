//! Containers on the bridge: attach, detach, `ps`, the host's own addresses (expose, hide),
//! and what happens to a container's addresses and names when it goes away.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_api::types::{
    AddrSpec, AttachRequest, AttachResponse, ContainerEntry, DetachRequest, ExposeRequest,
    RouteSpec,
};

use super::addresses::{EXPOSE_IDENT, parse_specs};
use super::{Result, Service, ServiceError};
use crate::attach::{Attachment, CONTAINER_IFNAME, PlugOptions, check_cidr};
use crate::engine::{self, Container, rewrite};

impl Service {
    /// `weft attach`: the container (a netns name, path or PID, or a Docker name or id) gets
    /// its addresses and, with `--rewrite-hosts`/`--add-host`, an `/etc/hosts` naming them.
    pub async fn attach(&self, mut req: AttachRequest) -> Result<AttachResponse> {
        let (netns, docker) = self.resolve(&req.container).await?;
        req.container = netns;
        let ident = docker.as_ref().map(|c| c.id.clone());
        if req.hostname.is_none()
            && let Some(h) = docker.as_ref().and_then(|c| c.fqdn.clone())
            && h.contains('.')
        {
            req.hostname = Some(h);
        }
        for h in &req.add_hosts {
            check_add_host(h)?;
        }
        let rewrite = req.rewrite_hosts || !req.add_hosts.is_empty();
        if rewrite && docker.is_none() {
            // Refused before anything is attached.
            let ns = weft_linux::netns::resolve(&req.container)
                .map_err(|e| ServiceError::NotFound(e.to_string()))?;
            if crate::attach::etc_hosts_path(&ns).is_none() {
                return Err(ServiceError::Invalid(format!(
                    "cannot rewrite the /etc/hosts of {}: it has no file system of its own (that would be the host's /etc/hosts); attach it by its ip netns name, or by the PID of a process in its own mount namespace, to use --rewrite-hosts",
                    req.container
                )));
            }
        }
        let extra = req.add_hosts.clone();
        let r = self.attach_container(req, ident).await?;
        if rewrite {
            self.rewrite_etc_hosts(&r, docker.as_ref(), &extra).await?;
        }
        Ok(r)
    }

    /// Attach: address arguments become addresses (allocated, claimed, or taken as given when
    /// IP allocation is off), then the container is plugged in. If plugging in fails,
    /// addresses this request obtained are released again. `ident` names a container not
    /// attached yet (a Docker container's id); by default the reference given.
    pub async fn attach_container(
        &self,
        req: AttachRequest,
        ident: Option<String>,
    ) -> Result<AttachResponse> {
        let specs = address_specs(&req.addrs)?;
        let runtime_ident = req.ident.is_some();
        let ident = match (
            self.attacher.lookup(&req.container).await?,
            ident.or(req.ident),
        ) {
            // An ident given by a runtime names one attachment: another one in the same
            // namespace would need a second interface, which weft does not make.
            (Some(a), Some(i)) if runtime_ident && a.id != i => {
                return Err(ServiceError::Conflict(format!(
                    "{} is already attached to weft as {} (interface {}): one weft interface per namespace",
                    req.container, a.id, a.ifname
                )));
            }
            (Some(a), _) => a.id,
            (None, Some(i)) => i,
            (None, None) => self.attacher.identify(&req.container).await?,
        };
        let ifname = req.ifname.unwrap_or_else(|| CONTAINER_IFNAME.to_string());
        check_ifname(&ifname)?;
        // A name asked for while DNS is off is kept with the attachment all the same: a later
        // launch with DNS registers it, as Weave's did for containers it found on the bridge.
        let hostname = if req.without_dns {
            None
        } else {
            match &req.hostname {
                Some(h) => Some(self.qualify(h)),
                None => self.default_hostname(&req.container).await,
            }
        };
        let (nets, obtained) = self.obtain(&ident, specs).await?;
        let gateway = if req.gateway {
            match self.gateway_for(nets[0].trunc()).await {
                Ok(g) => Some(g),
                Err(e) => {
                    self.release_addrs(&ident, &obtained).await;
                    return Err(e);
                }
            }
        } else {
            None
        };
        let mut routes = req.routes.clone();
        routes.extend(gateway.map(|g| RouteSpec {
            dst: Ipv4Net::default(),
            gw: Some(g),
        }));
        let opts = PlugOptions {
            ifname,
            multicast_route: req.multicast_route,
            hairpin: req.hairpin,
            routes,
        };
        match self
            .attacher
            .attach(&req.container, &ident, nets.clone(), opts, hostname.clone())
            .await
        {
            Ok(entry) => {
                if let Some(h) = hostname.as_ref().filter(|_| self.dns.is_some()) {
                    let addrs: Vec<_> = nets.iter().map(|n| n.addr()).collect();
                    self.register(h, &ident, &addrs).await?;
                }
                Ok(AttachResponse {
                    container: entry,
                    addresses: nets,
                    gateway,
                })
            }
            Err(e) => {
                self.release_addrs(&ident, &obtained).await;
                Err(e.into())
            }
        }
    }

    /// The name a container gets when none is asked for: an `ip netns` name becomes
    /// `<name>.<domain>`; a process's own hostname counts if it is in the domain.
    async fn default_hostname(&self, container: &str) -> Option<String> {
        let domain = self.domain()?;
        if container.bytes().all(|b| b.is_ascii_digit()) {
            let pid: u32 = container.parse().ok()?;
            let h = weft_linux::netns::uts_hostname(pid).await?;
            let n = weft_core::dns::normalize(&h);
            return n.ends_with(&format!(".{domain}")).then_some(h);
        }
        if container.starts_with('/') {
            return None;
        }
        let label = rewrite::hostname_from_name(container);
        (!label.is_empty()).then(|| format!("{label}.{domain}"))
    }

    /// `attach --rewrite-hosts`: the container's `/etc/hosts` names it with its weft
    /// addresses (and the `--add-host` names), as Weave's did.
    async fn rewrite_etc_hosts(
        &self,
        r: &AttachResponse,
        docker: Option<&Container>,
        extra: &[String],
    ) -> Result<()> {
        let ips: Vec<std::net::IpAddr> = r
            .addresses
            .iter()
            .map(|n| std::net::IpAddr::V4(n.addr()))
            .collect();
        if let Some(c) = docker {
            let (host, domain) = c.host_and_domain();
            let text = rewrite::hosts_file(&host, &domain, &ips, extra);
            let path = c.hosts_path().ok_or_else(|| {
                ServiceError::Conflict(format!(
                    "container {} has no /etc/hosts of Docker's to rewrite",
                    c.name
                ))
            })?;
            return std::fs::write(&path, text)
                .map_err(|source| ServiceError::HostsFile { path, source });
        }
        let ident = &r.container.id;
        let a = self.attacher.lookup_ident(ident).await;
        // The name it is registered under, else its process's hostname, else its netns name.
        let name = match &a {
            Some(a) => match (&a.hostname, weft_linux::netns::pid_of(&a.netns)) {
                (Some(h), _) => Some(h.trim_end_matches('.').to_string()),
                (None, Some(pid)) => weft_linux::netns::uts_hostname(pid).await,
                (None, None) => a
                    .netns
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned()),
            },
            None => None,
        }
        .unwrap_or_else(|| ident.clone());
        let text = rewrite::hosts_file(&name, "", &ips, extra);
        self.attacher.write_etc_hosts(ident, &text).await?;
        Ok(())
    }

    /// `weft detach`: `net:` arguments mean "the container's addresses in that subnet"; the
    /// addresses go back to IP allocation. Returns what was removed.
    pub async fn detach(&self, mut req: DetachRequest) -> Result<Vec<Ipv4Net>> {
        if let Some(ident) = &req.ident {
            let removed = self.attacher.detach_ident(ident).await;
            let released = self.forget_ident(ident).await?;
            return Ok(if self.ipam_enabled {
                released
            } else {
                removed.map(|a| a.cidrs).unwrap_or_default()
            });
        }
        req.container = self.resolve(&req.container).await?.0;
        let mut specs = parse_specs(&req.addrs)?;
        // As Weave: no address means what `attach` with no address gives, the default
        // subnet's.
        if specs.is_empty() {
            specs.push(AddrSpec::DefaultSubnet);
        }
        let Some(entry) = self.attacher.lookup(&req.container).await? else {
            return Err(ServiceError::NotFound(format!(
                "container {} is not attached to weft",
                req.container
            )));
        };
        let mut list = Vec::new();
        for spec in specs {
            match spec {
                AddrSpec::Exact(n) => list.push(n),
                AddrSpec::Subnet(s) => {
                    list.extend(entry.cidrs.iter().filter(|c| s.contains(&c.addr())))
                }
                AddrSpec::DefaultSubnet => list.extend(
                    entry
                        .cidrs
                        .iter()
                        .filter(|c| self.default_subnet.contains(&c.addr())),
                ),
            }
        }
        list.dedup();
        let (ident, removed) = self.attacher.detach(&req.container, Some(list)).await?;
        for n in &removed {
            self.unregister(&ident, Some(n.addr())).await;
        }
        self.release_addrs(&ident, &removed).await;
        Ok(removed)
    }

    /// Forgets what `ident` holds: its names in weftDNS and its addresses (returned).
    async fn forget_ident(&self, ident: &str) -> Result<Vec<Ipv4Net>> {
        self.unregister(ident, None).await;
        if !self.ipam_enabled {
            return Ok(Vec::new());
        }
        self.release(ident.to_string(), None).await
    }

    /// The host's address on the bridge in `subnet`: the containers' default gateway. When
    /// the host has none there yet it is exposed in that subnet first, as Weave's CNI plugin
    /// did.
    async fn gateway_for(&self, subnet: Ipv4Net) -> Result<Ipv4Addr> {
        // Two containers attached at once must not expose the host twice.
        static EXPOSING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one = EXPOSING.lock().await;
        let (_, have) = self.attacher.exposed().await?;
        if let Some(n) = have.iter().find(|n| subnet.contains(&n.addr())) {
            return Ok(n.addr());
        }
        let nets = self
            .expose_addrs(vec![AddrSpec::Subnet(subnet)], true)
            .await?;
        tracing::info!(address = %nets[0], "exposed the host as the containers' gateway");
        Ok(nets[0].addr())
    }

    /// Gives the host addresses on the bridge (allocated like a container's under
    /// `weave:expose`) and, once the call returns, the firewall rules that route and
    /// masquerade (unless `masquerade` is false) those subnets; what this obtained goes back
    /// if the bridge refuses them.
    async fn expose_addrs(&self, specs: Vec<AddrSpec>, masquerade: bool) -> Result<Vec<Ipv4Net>> {
        let (nets, obtained) = self.obtain(EXPOSE_IDENT, specs).await?;
        for n in &nets {
            self.firewall.set_masquerade(*n, masquerade);
        }
        if let Err(e) = self.attacher.expose(&nets).await {
            self.release_addrs(EXPOSE_IDENT, &obtained).await;
            return Err(e.into());
        }
        self.sync_firewall().await?;
        Ok(nets)
    }

    async fn sync_firewall(&self) -> Result<()> {
        self.firewall.sync().await.map_err(ServiceError::Firewall)
    }

    /// `weft expose`: addresses for the host itself on the bridge (allocated like a
    /// container's), optionally named in weftDNS.
    pub async fn expose(&self, req: ExposeRequest) -> Result<Vec<Ipv4Net>> {
        let specs = address_specs(&req.addrs)?;
        let nets = self.expose_addrs(specs, !req.without_masquerade).await?;
        if let (Some(h), Some(_)) = (&req.hostname, &self.dns) {
            let addrs: Vec<_> = nets.iter().map(|n| n.addr()).collect();
            self.register(&self.qualify(h), EXPOSE_IDENT, &addrs)
                .await?;
        }
        Ok(nets)
    }

    /// `weft hide`: removes the host's addresses from the bridge (all, or those given).
    pub async fn hide(&self, req: ExposeRequest) -> Result<Vec<Ipv4Net>> {
        let specs = parse_specs(&req.addrs)?;
        let (_, have) = self.attacher.exposed().await?;
        let remove: Vec<Ipv4Net> = if specs.is_empty() {
            have
        } else {
            have.into_iter()
                .filter(|h| {
                    specs.iter().any(|s| match s {
                        AddrSpec::Exact(n) => n == h,
                        AddrSpec::Subnet(sn) => sn.contains(&h.addr()),
                        AddrSpec::DefaultSubnet => self.default_subnet.contains(&h.addr()),
                    })
                })
                .collect()
        };
        self.attacher.hide(&remove).await?;
        self.sync_firewall().await?;
        for n in &remove {
            self.unregister(EXPOSE_IDENT, Some(n.addr())).await;
        }
        self.release_addrs(EXPOSE_IDENT, &remove).await;
        Ok(remove)
    }

    /// `weft ps`: every container on the bridge (the host's line first), or those named.
    pub async fn ps(&self, only: Vec<String>) -> Result<Vec<ContainerEntry>> {
        let mut list = Vec::new();
        let everything = only.is_empty();
        if everything || only.iter().any(|o| o == EXPOSE_IDENT) {
            // Always listed, as Weave's ps did: the host's line, with its addresses once
            // exposed.
            let (mac, nets) = self.attacher.exposed().await?;
            list.push(ContainerEntry {
                id: EXPOSE_IDENT.to_string(),
                mac,
                cidrs: nets,
            });
        }
        if everything {
            list.extend(self.attacher.list(&[]).await?);
            if let Some(engine) = &self.docker {
                list.extend(engine::plugin_entries(engine, None).await);
            }
            return Ok(list);
        }
        // Each as named, the way Weave's ps echoed its arguments: by netns, or a Docker name
        // or id.
        for o in only.into_iter().filter(|o| o != EXPOSE_IDENT) {
            let (netns, docker) = self.resolve(&o).await?;
            let mut found = self.attacher.list(std::slice::from_ref(&netns)).await?;
            if found.is_empty()
                && let (Some(engine), Some(c)) = (&self.docker, docker)
            {
                found = engine::plugin_entries(engine, Some(&[(o.clone(), c.id)])).await;
            }
            for mut e in found {
                if e.id != o && engine::is_container_id(&e.id) {
                    e.id = o.clone();
                }
                list.push(e);
            }
        }
        Ok(list)
    }

    /// Puts the names of attached containers back after a router restart.
    pub async fn reregister(&self) {
        if self.dns.is_none() {
            return;
        }
        for a in self.attacher.attachments().await {
            if let Some(h) = &a.hostname {
                let addrs: Vec<_> = a.cidrs.iter().map(|n| n.addr()).collect();
                if let Err(e) = self.register(h, &a.id, &addrs).await {
                    tracing::warn!(container = %a.id, "cannot re-register {h}: {e}");
                }
            }
        }
    }

    /// Releases the addresses and names of containers that went away.
    pub async fn release_gone(&self, gone: Vec<Attachment>) {
        for a in gone {
            // A Docker container that stopped keeps its addresses, as Weave's did: a restart
            // (by hand, by its restart policy, with the router restarted in between) gets
            // them back. They go when the container is removed, or after a grace period if
            // it never comes back (see `engine::DEAD_GRACE`). Its names go now, and come back
            // with it.
            if let Some(engine) = &self.docker
                && engine::is_container_id(&a.id)
            {
                self.unregister(&a.id, None).await;
                engine.died(&a.id).await;
                continue;
            }
            let _ = self.forget_ident(&a.id).await;
        }
    }

    /// Releases the addresses of Docker containers that died longer than the grace period
    /// ago and did not come back.
    pub async fn release_dead(&self) {
        let Some(engine) = &self.docker else { return };
        for id in engine.expired_dead().await {
            tracing::info!(container = %id, "the container did not come back: releasing its addresses");
            let _ = self.forget_ident(&id).await;
        }
    }

    /// A Docker container was removed: its addresses and names go at once.
    pub async fn container_destroyed(&self, id: &str) {
        if let Some(engine) = &self.docker {
            engine.started(id).await;
        }
        let _ = self.attacher.detach_ident(id).await;
        let _ = self.forget_ident(id).await;
    }
}

/// Address arguments of attach and expose: none means the default subnet's; exact
/// addresses must be usable by a host.
fn address_specs(addrs: &[String]) -> Result<Vec<AddrSpec>> {
    let mut specs = parse_specs(addrs)?;
    if specs.is_empty() {
        specs.push(AddrSpec::DefaultSubnet);
    }
    for spec in &specs {
        if let AddrSpec::Exact(net) = spec {
            check_cidr(net)?;
        }
    }
    Ok(specs)
}

/// Interface names the kernel takes: 1–15 bytes, no `/`, whitespace or `:`.
fn check_ifname(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(ServiceError::Invalid(format!(
            "invalid interface name {name:?}: 1 to 15 characters without '/', ':' or spaces"
        )));
    }
    Ok(())
}

/// `--add-host NAME:IP`, as Docker and Weave take it.
fn check_add_host(h: &str) -> Result<()> {
    match h.split_once(':') {
        Some((name, ip)) if !name.is_empty() && ip.parse::<std::net::IpAddr>().is_ok() => Ok(()),
        _ => Err(ServiceError::Invalid(format!(
            "--add-host {h:?}: give NAME:IP, like --add-host db.example:10.2.1.9"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_the_kernel_would_refuse_are_invalid() {
        for bad in ["", "a/b", "a:b", "a b", "0123456789abcdef", ".", ".."] {
            assert!(
                matches!(check_ifname(bad), Err(ServiceError::Invalid(_))),
                "{bad:?}"
            );
        }
        for good in ["ethwe", "eth1", "0123456789abcde"] {
            assert!(check_ifname(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn add_host_wants_name_and_address() {
        assert!(check_add_host("db.example:10.2.1.9").is_ok());
        assert!(check_add_host("db:fe80::1").is_ok());
        for bad in ["db", ":10.0.0.1", "db:nope"] {
            assert!(check_add_host(bad).is_err(), "{bad:?}");
        }
    }
}
