//! Addresses: allocation, claims and releases through the allocator in the control task, and
//! the address arguments of attach and expose (`10.2.1.1/24`, `net:10.2.0.0/16`,
//! `net:default`) turned into addresses.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_api::types::AddrSpec;
use weft_proto::PeerName;

use super::{Result, Service, ServiceError};
use crate::control::IpamCmd;

/// The IPAM ident of the host's own addresses on the bridge (Weave's).
pub const EXPOSE_IDENT: &str = "weave:expose";

impl Service {
    /// An address for `ident` in `subnet` (the default subnet if none); idempotent per ident.
    pub async fn allocate(&self, ident: String, subnet: Option<Ipv4Net>) -> Result<Ipv4Net> {
        let r = self
            .ipam(|reply| IpamCmd::Allocate {
                ident,
                subnet,
                reply,
            })
            .await?;
        Ok(r?)
    }

    /// Exactly `net`'s address for `ident`. Addresses outside the range are the user's own
    /// business: nothing for the ring to record or agree on.
    pub async fn claim(&self, ident: String, net: Ipv4Net) -> Result<()> {
        if !self.allocator_owns(&net) {
            return Ok(());
        }
        self.ipam(|reply| IpamCmd::Claim { ident, net, reply })
            .await??;
        Ok(())
    }

    /// Exactly `net`'s address for `ident`, through the allocator whatever the range (the
    /// plugin's IPAM: Docker's pools must be inside it).
    pub async fn claim_exact(&self, ident: String, net: Ipv4Net) -> Result<Ipv4Net> {
        Ok(self
            .ipam(|reply| IpamCmd::Claim { ident, net, reply })
            .await??)
    }

    /// The addresses `ident` holds (in `subnet`, if given).
    pub async fn lookup(&self, ident: String, subnet: Option<Ipv4Net>) -> Result<Vec<Ipv4Net>> {
        self.ipam(|reply| IpamCmd::Lookup {
            ident,
            subnet,
            reply,
        })
        .await
    }

    /// Releases what `ident` holds (all, or one address); returns what was freed. An empty
    /// ident with an address releases that address whoever holds it.
    pub async fn release(&self, ident: String, addr: Option<Ipv4Addr>) -> Result<Vec<Ipv4Net>> {
        self.ipam(|reply| IpamCmd::Release { ident, addr, reply })
            .await
    }

    /// Waits until IP allocation is initialised.
    pub async fn prime(&self) -> Result<()> {
        self.ipam(|reply| IpamCmd::Prime { reply }).await??;
        Ok(())
    }

    /// Takes over a dead peer's ranges (`weft rmpeer`); returns how many addresses.
    pub async fn rmpeer(&self, who: String) -> Result<u64> {
        Ok(self.ipam(|reply| IpamCmd::RmPeer { who, reply }).await??)
    }

    /// This peer leaves the mesh for good (`weft reset`): its ranges go to a live peer,
    /// which is named if there was one. Returns once the hand-over has been sent.
    pub async fn leave(&self) -> Result<Option<PeerName>> {
        if !self.ipam_enabled {
            return Ok(None);
        }
        let heir = self.ipam(|reply| IpamCmd::Shutdown { reply }).await?;
        // The hand-over is queued on the connections; give the writers a moment to send it.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        Ok(heir)
    }

    /// Every ident holding addresses in the allocator here.
    pub async fn owned_idents(&self) -> Vec<String> {
        if !self.ipam_enabled {
            return Vec::new();
        }
        self.ipam(|reply| IpamCmd::Owned { reply })
            .await
            .unwrap_or_default()
    }

    /// Resolves address arguments for `ident` through IPAM (or takes exact ones as given when
    /// allocation is off or they are outside the range). Returns every address and those this
    /// call obtained; on failure, releases what it obtained.
    pub(super) async fn obtain(
        &self,
        ident: &str,
        specs: Vec<AddrSpec>,
    ) -> Result<(Vec<Ipv4Net>, Vec<Ipv4Net>)> {
        let needs_allocator = specs.iter().any(|s| match s {
            AddrSpec::Exact(net) => self.allocator_owns(net),
            AddrSpec::Subnet(_) | AddrSpec::DefaultSubnet => true,
        });
        let before: Vec<Ipv4Net> = if self.ipam_enabled && needs_allocator {
            self.lookup(ident.to_string(), None).await?
        } else {
            Vec::new()
        };
        let mut nets = Vec::new();
        let mut obtained = Vec::new();
        for spec in specs {
            let r = match spec {
                AddrSpec::Exact(net) if !self.allocator_owns(&net) => Ok(net),
                _ if !self.ipam_enabled => Err(ServiceError::IpamDisabled),
                AddrSpec::Exact(net) => self.claim_exact(ident.to_string(), net).await,
                AddrSpec::Subnet(s) => self.allocate(ident.to_string(), Some(s)).await,
                AddrSpec::DefaultSubnet => self.allocate(ident.to_string(), None).await,
            };
            match r {
                Ok(net) => {
                    if self.allocator_owns(&net) && !before.contains(&net) {
                        obtained.push(net);
                    }
                    nets.push(net);
                }
                Err(e) => {
                    self.release_addrs(ident, &obtained).await;
                    return Err(e);
                }
            }
        }
        Ok((nets, obtained))
    }

    /// Gives back the addresses in `nets` that the allocator owns (best effort: used to undo).
    pub(super) async fn release_addrs(&self, ident: &str, nets: &[Ipv4Net]) {
        if !self.ipam_enabled {
            return;
        }
        for n in nets.iter().filter(|n| self.allocator_owns(n)) {
            let _ = self.release(ident.to_string(), Some(n.addr())).await;
        }
    }
}

/// Parses address arguments (`10.2.1.1/24`, `net:10.2.0.0/16`, `net:default`).
pub(super) fn parse_specs(addrs: &[String]) -> Result<Vec<AddrSpec>> {
    addrs
        .iter()
        .map(|a| a.parse().map_err(ServiceError::Invalid))
        .collect()
}
