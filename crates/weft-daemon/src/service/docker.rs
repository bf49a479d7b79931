//! Docker containers: a container reference resolved through the engine, proxy-made
//! containers attached as they start, and what a restarted router finds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use bollard::query_parameters::ListContainersOptions;
use tracing::{info, warn};
use weft_api::types::{AddrSpec, AttachRequest};

use super::{Result, Service, ServiceError};
use crate::engine::{self, Container, ROUTER_LABEL, rewrite};

impl Service {
    /// Resolves a container argument of the CLI: a netns name, path or PID as it is, else a
    /// Docker container's name or id (its process's namespace, and the container).
    pub async fn resolve(&self, spec: &str) -> Result<(String, Option<Container>)> {
        if weft_linux::netns::resolve(spec).is_ok() {
            return Ok((spec.to_string(), None));
        }
        let Some(engine) = self.docker.as_ref() else {
            return Err(ServiceError::NotFound(format!(
                "container {spec:?} not found: no such network namespace name, path or PID (and Docker is not connected)"
            )));
        };
        match engine::find(engine, spec).await {
            Ok(c) => Ok((c.netns.clone(), Some(c))),
            Err(e) => Err(ServiceError::NotFound(format!(
                "container {spec:?} not found: no such network namespace name, path or PID, and Docker says: {e}"
            ))),
        }
    }

    /// Attaches a container made by our proxy, if it is running and not opted out; returns
    /// `Ok(false)` if it is not one to attach. Idempotent: an attached container keeps its
    /// addresses.
    pub async fn ensure_attached(&self, id: &str) -> Result<bool, String> {
        let Some(engine) = &self.docker else {
            return Ok(false);
        };
        let _one_at_a_time = engine.attaching.lock().await;
        self.attach_locked(engine, id).await
    }

    async fn attach_locked(&self, engine: &engine::Engine, id: &str) -> Result<bool, String> {
        let c = match engine.inspect(id).await {
            Ok(c) => c,
            // Started, ran and removed (`docker run --rm` of a quick command) before we
            // looked: nothing to attach, and nothing to stop.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(false),
            Err(e) => return Err(format!("inspecting container {id}: {e}")),
        };
        let c = match Container::from_inspect(c) {
            Ok(c) => c,
            // Gone again already (a short-lived container): nothing to attach.
            Err(_) => return Ok(false),
        };
        if !c.proxied() || c.label(ROUTER_LABEL).is_some_and(|r| r != engine.router) {
            return Ok(false);
        }
        // The network it was started into, wherever that was set (an old client's start
        // body sets it there): only the default bridge, or none, is weft's to attach.
        let mode = c.network_mode();
        if !rewrite::attachable_mode(&mode) {
            info!(container = %c.id, name = %c.name, "leaving the container off weft: it has '--net={mode}'");
            return Ok(false);
        }
        let s = &engine.settings;
        let env = c.env();
        let specs = rewrite::cidr_specs(rewrite::cidr_env(&env), s.no_default_ipalloc)?;
        let Some(specs) = specs else {
            return Ok(false);
        };
        let hostname = if s.without_dns { None } else { c.fqdn.clone() };
        let req = AttachRequest {
            addrs: specs.iter().map(spec_string).collect(),
            multicast_route: c.multicast_route(),
            hostname: hostname.clone(),
            without_dns: s.without_dns || hostname.is_none(),
            ..AttachRequest::new(c.netns.clone())
        };
        // Attached already (the proxy's start and the start event both get here).
        let attached = self.attacher.attachments().await;
        if attached
            .iter()
            .any(|a| a.id == c.id && a.netns == Path::new(&c.netns))
        {
            return Ok(true);
        }
        let r = match self.attach_container(req, Some(c.id.clone())).await {
            Ok(r) => r,
            Err(e) => {
                // A container that ran and exited meanwhile (`docker run --rm ... ip addr`,
                // which the start event's attach let run) needs no network any more: not a
                // failure to report. Its process is gone before the engine says so, hence
                // both checks.
                let process_gone = !Path::new(&c.netns).exists();
                let still = engine
                    .inspect(id)
                    .await
                    .ok()
                    .and_then(|i| Container::from_inspect(i).ok())
                    .is_some_and(|now| now.netns == c.netns);
                if process_gone || !still {
                    return Ok(false);
                }
                return Err(e.to_string());
            }
        };
        info!(container = %c.id, name = %c.name, addrs = ?r.addresses, "Docker container attached");
        if !s.no_rewrite_hosts
            && let Some(path) = c.hosts_path()
        {
            let ips: Vec<IpAddr> = r.addresses.iter().map(|n| IpAddr::V4(n.addr())).collect();
            let (host, domain) = c.host_and_domain();
            let text = rewrite::hosts_file(&host, &domain, &ips, &c.extra_hosts());
            // Written in place: the container sees this file through a bind mount.
            if let Err(e) = std::fs::write(Path::new(&path), text) {
                warn!(container = %c.id, "rewriting {path}: {e}");
            }
        }
        Ok(true)
    }

    /// After a router restart, the addresses of Docker containers follow what happened
    /// while it was away, as Weave's pruning did: removed containers' are released, stopped
    /// ones' wait out the grace period.
    async fn prune_owned(&self, engine: &engine::Engine) {
        let opts = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let Ok(list) = engine.client.list_containers(Some(opts)).await else {
            return;
        };
        let running: HashMap<String, bool> = list
            .into_iter()
            .filter_map(|c| {
                let running = c.state.is_some_and(|s| s.to_string() == "running");
                Some((c.id?, running))
            })
            .collect();
        for ident in self.owned_idents().await {
            if !engine::is_container_id(&ident) {
                continue;
            }
            match running.get(&ident) {
                None => {
                    info!(container = %ident, "the container was removed while the router was away: releasing its addresses");
                    self.container_destroyed(&ident).await;
                }
                Some(false) => engine.died(&ident).await,
                Some(true) => {}
            }
        }
    }

    /// What a (re)started router does with the engine's containers: prunes what went away,
    /// attaches running proxy-made ones, names those on our plugin's networks.
    pub async fn attach_running(&self) {
        let Some(engine) = &self.docker else { return };
        engine.recall_plugin_networks().await;
        self.prune_owned(engine).await;
        let list = match engine
            .client
            .list_containers(Some(ListContainersOptions::default()))
            .await
        {
            Ok(l) => l,
            Err(e) => {
                warn!("listing Docker containers: {e}");
                return;
            }
        };
        for c in list {
            let Some(id) = c.id else { continue };
            if let Err(e) = self.ensure_attached(&id).await {
                warn!(container = %id, "re-attaching a running container failed: {e}");
            }
            // Names of containers on our plugin's networks come back after a router restart.
            self.register_plugin_names(&id).await;
        }
    }

    /// Registers the name of a container on one of our plugin's networks, with its address
    /// there (Weave's plugin did: `<hostname>.<domain>` and `<container name>.<domain>`).
    pub async fn register_plugin_names(&self, id: &str) {
        let (Some(engine), Some(domain)) = (&self.docker, self.domain()) else {
            return;
        };
        if engine.settings.without_dns {
            return;
        }
        let ours = engine.plugin_network_ids().await;
        if ours.is_empty() {
            return;
        }
        let Ok(c) = engine.inspect(id).await else {
            return;
        };
        let addrs: Vec<std::net::Ipv4Addr> = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .into_iter()
            .flatten()
            .filter(|(_, ep)| ep.network_id.as_ref().is_some_and(|n| ours.contains(n)))
            .filter_map(|(_, ep)| ep.ip_address.as_deref()?.parse().ok())
            .collect();
        if addrs.is_empty() {
            return;
        }
        let names = engine::plugin_names(&c, id, domain);
        for n in names {
            if let Err(e) = self.register(&n, id, &addrs).await {
                warn!(container = %id, "registering {n}: {e}");
            }
        }
    }
}

fn spec_string(s: &AddrSpec) -> String {
    match s {
        AddrSpec::Exact(n) => n.to_string(),
        AddrSpec::Subnet(n) => format!("net:{n}"),
        AddrSpec::DefaultSubnet => "net:default".into(),
    }
}
