//! The status snapshot: the mesh's, the allocator's, the data plane's and DNS's state in the
//! shape of the JSON report (which `status` renders in Weave's layouts), and the metrics.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use weft_api::render;
use weft_api::types::*;
use weft_core::ipam::IpamStatus;
use weft_core::mesh::{ConnectionState, RouterStatus};
use weft_core::overlay::MacOwner;

use super::{Result, Service};
use crate::control::ControlInput;
use crate::dataplane_msg::{DataPlaneMsg, DataPlaneSnapshot};

impl Service {
    /// The mesh's and the allocator's state, from the control task.
    pub async fn router_status(&self) -> Result<(RouterStatus, Option<IpamStatus>)> {
        self.ask(ControlInput::Status).await
    }

    /// The data plane's counters, MAC table and path limits (empty if it does not answer).
    pub async fn dataplane_snapshot(&self) -> DataPlaneSnapshot {
        let (tx, rx) = oneshot::channel();
        if self
            .dataplane
            .send(DataPlaneMsg::Snapshot(tx))
            .await
            .is_err()
        {
            return DataPlaneSnapshot::default();
        }
        tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }
}

fn wall_clock(after: Duration) -> String {
    let t = SystemTime::now() + after;
    render::utc_timestamp(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

impl Service {
    /// A snapshot of everything `status` and `report` show.
    pub async fn report(&self) -> Result<Report> {
        let app = self;
        let (st, ipam_st) = self.router_status().await?;
        let dp = self.dataplane_snapshot().await;
        let nick_of = |name: &weft_proto::PeerName| {
            st.peers
                .iter()
                .find(|p| p.name == *name)
                .map(|p| p.nickname.clone())
                .unwrap_or_default()
        };
        let connections = st
            .connections
            .iter()
            .map(|c| {
                let info = match (&c.peer, c.state) {
                    (Some((name, nick)), _) => {
                        let overlay = format!("{:<6} {name}({nick})", c.overlay.unwrap_or("none"));
                        match c.encrypted {
                            // Weave's layout: with a password, say which connections encrypt data.
                            Some(true) => format!("{:<11} {overlay}", "encrypted"),
                            Some(false) => format!("{:<11} {overlay}", "unencrypted"),
                            None => overlay,
                        }
                    }
                    (None, ConnectionState::Failed) => match c.retry_in {
                        Some(d) => format!(
                            "{}, retry: {}",
                            c.error.as_deref().unwrap_or("failed"),
                            wall_clock(d)
                        ),
                        None => format!("{}, retry: never", c.error.as_deref().unwrap_or("failed")),
                    },
                    (None, ConnectionState::Retrying) => c.error.clone().unwrap_or_default(),
                    (None, ConnectionState::Waiting) => "until: never".to_string(),
                    (None, _) => String::new(),
                };
                let mut attrs = BTreeMap::new();
                // On the sleeve, a path that carries less than the interface lowers what one
                // datagram holds (larger frames still pass, as fragments).
                let path_mtu = match (&c.peer, c.overlay) {
                    (Some((name, _)), Some("sleeve")) => dp
                        .path_limits
                        .iter()
                        .find(|(p, _)| p == name)
                        .map(|(_, payload)| {
                            let overhead = if c.encrypted == Some(true) {
                                weft_proto::sleeve::ENCRYPTED_FRAME_OVERHEAD
                            } else {
                                weft_proto::sleeve::FRAME_OVERHEAD
                            } - 28;
                            payload.saturating_sub(overhead) as u32
                        }),
                    _ => None,
                };
                let mtu = match (c.mtu, path_mtu) {
                    (Some(m), Some(p)) => Some(m.min(p)),
                    (m, p) => m.or(p),
                };
                if let Some(mtu) = mtu {
                    attrs.insert("mtu".to_string(), mtu.to_string());
                }
                if c.encrypted == Some(true) {
                    attrs.insert("encrypted".to_string(), "true".to_string());
                }

                ConnectionReport {
                    address: c.addr.to_string(),
                    outbound: c.outbound,
                    state: c.state.as_str().to_string(),
                    info,
                    attrs,
                    key_epoch: c.key_epoch,
                    cipher: c.cipher.map(str::to_string),
                    overlay_reason: c.overlay_reason.clone(),
                }
            })
            .collect();
        let peers = st
            .peers
            .iter()
            .map(|p| PeerReport {
                name: p.name.to_string(),
                nick_name: p.nickname.clone(),
                uid: p.uid,
                version: p.version,
                connections: p
                    .connections
                    .iter()
                    .map(|c| PeerConnectionReport {
                        name: c.name.to_string(),
                        nick_name: c.nickname.clone(),
                        address: c.addr.to_string(),
                        outbound: c.outbound,
                        established: c.established,
                    })
                    .collect(),
            })
            .collect();
        let macs = dp
            .macs
            .iter()
            .map(|(mac, owner, age)| {
                let (name, nick) = match owner {
                    MacOwner::Local => (st.name, st.nickname.clone()),
                    MacOwner::Peer(p) => (*p, nick_of(p)),
                };
                MacReport {
                    mac: mac.to_string(),
                    name: name.to_string(),
                    nick_name: nick,
                    last_seen_secs: age.as_secs(),
                }
            })
            .collect();
        let s = dp.stats;
        let stats: BTreeMap<String, u64> = [
            ("frames_from_containers", s.local_frames),
            ("frames_from_peers", s.remote_frames),
            ("frames_relayed", s.relayed),
            ("frames_injected", s.injected),
            ("datagrams_sent", s.sent_datagrams),
            ("dropped_malformed", s.dropped_malformed),
            ("dropped_unknown_sender", s.dropped_unknown_sender),
            ("dropped_wrong_source", s.dropped_wrong_source),
            ("dropped_no_route", s.dropped_no_route),
            ("dropped_loop", s.dropped_loop),
            ("dropped_stp", s.dropped_stp),
            ("dropped_too_big", s.dropped_too_big),
            ("datagrams_encrypted", s.encrypted),
            ("datagrams_decrypted", s.decrypted),
            ("dropped_no_key", s.dropped_no_key),
            ("dropped_auth_failed", s.dropped_auth),
            ("dropped_replay", s.dropped_replay),
            ("dropped_plaintext", s.dropped_plaintext),
            ("udp_send_errors", dp.io.udp_send_errors),
            ("tap_write_errors", dp.io.tap_write_errors),
            ("tap_bad_offload", dp.io.tap_bad_offload),
            ("udp_recv_batches", dp.io.recv_batches),
            ("udp_recv_datagrams", dp.io.recv_datagrams),
            ("udp_send_batches", dp.io.send_batches),
            ("udp_send_trains", dp.io.send_trains),
            ("tap_super_frames_written", dp.io.tap_super_frames),
            ("frames_fast_path_skipped", s.fast_path_skipped),
            ("frames_relay_only", s.relay_only),
            ("dropped_proxy_arp", s.dropped_proxy_arp),
            ("datagrams_fragmented", s.fragmented),
            ("fragments_sent", s.fragments_sent),
            ("fragments_received", s.fragments_received),
            ("datagrams_reassembled", s.reassembled),
            (
                "dropped_fragments_incomplete",
                s.dropped_fragments_incomplete,
            ),
            (
                "dropped_fragments_inconsistent",
                s.dropped_fragments_inconsistent,
            ),
            ("macs_refused", s.macs_refused),
            ("udp_heartbeats_received", s.heartbeats_in),
            ("udp_heartbeats_dropped", dp.io.heartbeats_dropped),
            ("control_protocol_errors", st.protocol_errors),
            ("control_invalid_topology_entries", st.invalid_entries),
            ("gossip_entries_over_limit", st.over_limit),
            ("control_udp_unexpected", st.udp_unexpected),
            ("control_full_states_held", st.full_states_held),
            ("control_connections_shed_surplus", st.shed_surplus),
            ("topology_tree_repairs", st.tree_repairs),
            ("control_refused_half_open", st.refused_pending),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Report {
            ready: true,
            version: app.version.clone(),
            version_check: Default::default(),
            router: RouterReport {
                protocol: "weft".into(),
                protocol_min_version: st.protocol_min,
                protocol_max_version: st.protocol_max,
                encryption: st.encryption,
                passwords_accepted: st.passwords,
                peer_discovery: st.discovery,
                name: st.name.to_string(),
                nick_name: st.nickname.clone(),
                port: st.port,
                peers,
                unicast_routes: st
                    .unicast_routes
                    .iter()
                    .map(|(d, v)| UnicastRoute {
                        dest: d.to_string(),
                        via: v.to_string(),
                    })
                    .collect(),
                broadcast_routes: st
                    .broadcast_routes
                    .iter()
                    .map(|(s, v)| BroadcastRoute {
                        source: s.to_string(),
                        via: v.iter().map(|p| p.to_string()).collect(),
                    })
                    .collect(),
                connections,
                termination_count: st.termination_count,
                targets: st.targets.clone(),
                trusted_subnets: st.trusted_subnets.clone(),
                interface: app.interface.clone(),
                macs,
                mtu: app.mtu,
                stats,
                direct_paths: st
                    .direct_paths
                    .iter()
                    .map(|(p, overlay, reason)| DirectPathReport {
                        name: p.to_string(),
                        nick_name: nick_of(p),
                        overlay: overlay.to_string(),
                        overlay_reason: reason.clone(),
                    })
                    .collect(),
            },
            ipam: ipam_st.map(|i| ipam_report(&st, i)),
            dns: match &app.dns {
                None => None,
                Some(d) => Some(DnsReport {
                    domain: d.config.domain.clone(),
                    upstream: d
                        .upstream_servers()
                        .iter()
                        .map(|s| s.ip().to_string())
                        .collect(),
                    address: app
                        .container_facing_dns()
                        .await
                        .unwrap_or(d.config.listen)
                        .to_string(),
                    ttl: d.config.ttl,
                    entries: app.dns_entries().unwrap_or_default(),
                    stats: [
                        ("queries", &d.stats.queries),
                        ("local_answers", &d.stats.local_answers),
                        ("nxdomain", &d.stats.nxdomain),
                        ("forwarded", &d.stats.forwarded),
                        ("upstream_failures", &d.stats.upstream_failures),
                        ("refused", &d.stats.refused),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.load(std::sync::atomic::Ordering::Relaxed)))
                    .collect(),
                }),
            },
            proxy: (!app.docker_status.proxy_addrs.is_empty()).then(|| {
                weft_api::types::ProxyReport {
                    addresses: app.docker_status.proxy_addrs.clone(),
                    tls: app
                        .docker_status
                        .proxy_tls
                        .as_ref()
                        .map(|t| weft_api::types::ProxyTls {
                            verify: t.verify,
                            ca_cert: t.ca.display().to_string(),
                        }),
                }
            }),
            plugin: app
                .docker_status
                .plugin_driver
                .clone()
                .map(|driver_name| weft_api::types::PluginReport { driver_name }),
            docker_unavailable: app.docker_status.unavailable.clone(),
        })
    }

    /// The metrics in OpenMetrics text.
    pub async fn metrics_text(&self) -> Result<String> {
        let (router, ipam) = self.router_status().await?;
        let dataplane = self.dataplane_snapshot().await;
        let local_dns_entries = self.dns.is_some().then(|| {
            let me = router.name.to_string();
            self.dns_entries()
                .unwrap_or_default()
                .iter()
                .filter(|e| e.origin == me && !e.tombstone)
                .count()
        });
        Ok(crate::metrics::render(crate::metrics::Inputs {
            router,
            ipam,
            dataplane,
            local_dns_entries,
        }))
    }
}

fn ipam_report(st: &RouterStatus, i: IpamStatus) -> IpamReport {
    let known = |p: &weft_proto::PeerName| st.peers.iter().any(|x| x.name == *p);
    let nick = |p: &weft_proto::PeerName| {
        st.peers
            .iter()
            .find(|x| x.name == *p)
            .map(|x| x.nickname.clone())
            .unwrap_or_default()
    };
    IpamReport {
        status: i.status,
        range: i.range.to_string(),
        range_num_ips: i.total,
        active_ips: i.active,
        default_subnet: i.default_subnet.to_string(),
        entries: i
            .entries
            .iter()
            .map(|(token, size, peer, version, free)| IpamEntryReport {
                token: std::net::Ipv4Addr::from(*token).to_string(),
                size: *size,
                peer: peer.to_string(),
                nickname: nick(peer),
                is_known_peer: known(peer),
                version: *version,
                free: *free,
            })
            .collect(),
        pending_claims: i.pending_claims,
        pending_allocates: i.pending_allocates,
        ring: i.ring,
        seeds: i.seeds.iter().map(ToString::to_string).collect(),
        conflicts: i.conflicts,
        owners: i
            .owners
            .iter()
            .map(|(p, n, ips, reachable)| IpamOwnerReport {
                name: p.to_string(),
                nick_name: if n.is_empty() { nick(p) } else { n.clone() },
                ips: *ips,
                reachable: *reachable,
                local: *p == st.name,
                active: if *p == st.name { i.active } else { 0 },
            })
            .collect(),
        unreachable_ips: i.unreachable_ips,
    }
}
