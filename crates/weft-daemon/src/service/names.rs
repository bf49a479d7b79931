//! Names in weftDNS: registering and removing a container's names, the live entries, and the
//! address containers are told to query.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use weft_api::types::DnsEntryReport;

use super::{Result, Service, ServiceError};
use crate::control::DnsCmd;

impl Service {
    /// Registers `hostname` for each address of `container` (an ident).
    pub async fn register(
        &self,
        hostname: &str,
        container: &str,
        addrs: &[Ipv4Addr],
    ) -> Result<()> {
        for a in addrs {
            self.dns_cmd(|reply| DnsCmd::Add {
                hostname: hostname.to_string(),
                container: container.to_string(),
                addr: *a,
                reply,
            })
            .await?
            .map_err(ServiceError::Name)?;
        }
        Ok(())
    }

    /// Removes our names for a container (all, or for one address); nothing when DNS is off.
    pub async fn unregister(&self, container: &str, addr: Option<Ipv4Addr>) {
        if self.dns.is_some() {
            let _ = self.remove_names(container.to_string(), addr, None).await;
        }
    }

    /// Removes names of `container` (all, those of one address, or one name of it).
    pub async fn remove_names(
        &self,
        container: String,
        addr: Option<Ipv4Addr>,
        hostname: Option<String>,
    ) -> Result<usize> {
        self.dns_cmd(|reply| DnsCmd::Remove {
            container,
            addr,
            hostname,
            reply,
        })
        .await
    }

    /// `weft dns-add`: a name for `container` (a netns, PID, or Docker name or id).
    pub async fn dns_add(&self, container: String, addr: Ipv4Addr, fqdn: &str) -> Result<()> {
        let ident = self.ident_of(container).await;
        self.register(fqdn, &ident, &[addr]).await
    }

    /// `weft dns-remove`: names of `container`, by reference as `dns_add` takes it.
    pub async fn dns_remove(
        &self,
        container: String,
        addr: Option<Ipv4Addr>,
        fqdn: Option<String>,
    ) -> Result<()> {
        let ident = self.ident_of(container).await;
        self.remove_names(ident, addr, fqdn).await?;
        Ok(())
    }

    /// The ident names are filed under: an attached container's, else the reference as given
    /// (e.g. `weave:extern`); a Docker container's name stands for its id.
    async fn ident_of(&self, container: String) -> String {
        let (spec, docker) = match self.resolve(&container).await {
            Ok(r) => r,
            Err(_) => return container,
        };
        match self.attacher.identify(&spec).await {
            Ok(id) if docker.is_none() || id != spec => id,
            _ => docker.map_or(container, |c| c.id),
        }
    }

    /// The live entries.
    pub fn dns_entries(&self) -> Result<Vec<DnsEntryReport>> {
        let Some(shared) = &self.dns else {
            return Err(ServiceError::DnsDisabled);
        };
        let records = shared.records.read().expect("records lock").clone();
        Ok(records
            .live()
            .map(|e| DnsEntryReport {
                hostname: e.hostname.clone(),
                origin: e.origin.to_string(),
                container_id: e.container.clone(),
                address: Ipv4Addr::from(e.addr).to_string(),
                version: e.version,
                tombstone: e.tombstone,
            })
            .collect())
    }

    /// The domain we answer for.
    pub fn dns_domain(&self) -> Result<String> {
        self.domain()
            .map(str::to_string)
            .ok_or(ServiceError::DnsDisabled)
    }

    /// The address containers should query: the listen address, or, when listening on all
    /// addresses, the host's own overlay address (`weft expose`).
    pub async fn container_facing_dns(&self) -> Option<SocketAddr> {
        let d = self.dns.as_ref()?;
        let listen = d.config.listen;
        if !listen.ip().is_unspecified() {
            return Some(listen);
        }
        let exposed = self
            .attacher
            .exposed()
            .await
            .ok()
            .and_then(|(_, n)| n.first().map(|n| n.addr()));
        exposed.map(|ip| SocketAddr::new(IpAddr::V4(ip), listen.port()))
    }

    /// As [`Service::container_facing_dns`], or why there is none.
    pub async fn dns_address(&self) -> Result<SocketAddr> {
        if self.dns.is_none() {
            return Err(ServiceError::DnsDisabled);
        }
        self.container_facing_dns().await.ok_or_else(|| {
            ServiceError::NotFound(
                "the DNS server listens on all addresses but the host has no overlay address yet: run 'weft expose' (or launch with --dns-listen-address)".into(),
            )
        })
    }

    /// A name in our domain: `web` → `web.weave.local.`; a name with dots is taken as given.
    pub(super) fn qualify(&self, h: &str) -> String {
        let domain = self.domain().unwrap_or("weave.local.");
        if h.contains('.') {
            h.to_string()
        } else {
            format!("{h}.{domain}")
        }
    }
}
