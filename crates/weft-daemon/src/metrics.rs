//! Prometheus metrics (`GET /metrics`, OpenMetrics text), built from one status snapshot per
//! scrape. Weave's metric names where Weave had them, so existing dashboards keep working;
//! `weft_` names for what is new.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use weft_core::ipam::IpamStatus;
use weft_core::mesh::RouterStatus;

use crate::dataplane_msg::DataPlaneSnapshot;

/// What the metrics are made of; gathered by whoever serves them.
pub struct Inputs {
    pub router: RouterStatus,
    pub ipam: Option<IpamStatus>,
    pub dataplane: DataPlaneSnapshot,
    /// weftDNS names registered by this peer; `None` when DNS is off.
    pub local_dns_entries: Option<usize>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    state: String,
    r#type: String,
    /// "yes" when the connection's data is encrypted, "" otherwise (Weave's values).
    encryption: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    nickname: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn gauge(v: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    g
}

/// The Prometheus text (OpenMetrics) for `inputs`, with Weave's metric names.
pub fn render(inputs: Inputs) -> String {
    let Inputs {
        router: st,
        ipam,
        dataplane: dp,
        local_dns_entries,
    } = inputs;
    let mut reg = Registry::default();

    let conns = Family::<ConnLabels, Gauge>::default();
    for c in &st.connections {
        conns
            .get_or_create(&ConnLabels {
                state: c.state.as_str().to_string(),
                r#type: c.overlay.unwrap_or("unknown").to_string(),
                encryption: if c.encrypted == Some(true) { "yes" } else { "" }.to_string(),
            })
            .inc();
    }
    let fast = Family::<PeerLabels, Gauge>::default();
    for c in &st.connections {
        if let Some((name, nick)) = &c.peer {
            fast.get_or_create(&PeerLabels {
                peer: name.to_string(),
                nickname: nick.clone(),
            })
            .set(i64::from(c.overlay == Some("fastdp")));
        }
    }
    reg.register(
        "weft_connection_fastdp",
        "1 when the kernel's VXLAN fast path carries data to this peer, 0 when the sleeve does",
        fast,
    );
    reg.register(
        "weave_connections",
        "Number of peer-to-peer connections, by state, overlay type and encryption",
        conns,
    );
    reg.register(
        "weave_connection_terminations",
        "Established connections that ended",
        counter(st.termination_count),
    );
    reg.register(
        "weft_passwords_accepted",
        "Passwords this router accepts (more than one during a password roll; 0: unencrypted)",
        gauge(st.passwords as u64),
    );

    if let Some(i) = ipam {
        let ips = Family::<StateLabel, Gauge>::default();
        ips.get_or_create(&StateLabel {
            state: "local-used".into(),
        })
        .set(i.active as i64);
        reg.register("weave_ips", "IP addresses allocated on this peer", ips);
        reg.register(
            "weave_max_ips",
            "Size of the allocation range",
            gauge(i.total),
        );
        reg.register(
            "weave_ipam_unreachable_count",
            "Addresses owned by unreachable peers",
            gauge(i.unreachable_ips),
        );
        let pct = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        pct.set(if i.total == 0 {
            0.0
        } else {
            i.unreachable_ips as f64 * 100.0 / i.total as f64
        });
        reg.register(
            "weave_ipam_unreachable_percentage",
            "Share of the range owned by unreachable peers, in percent",
            pct,
        );
        reg.register(
            "weave_ipam_pending_allocates",
            "Allocation requests waiting",
            gauge(i.pending_allocates as u64),
        );
        reg.register(
            "weave_ipam_pending_claims",
            "Claim requests waiting",
            gauge(i.pending_claims as u64),
        );
    }
    if let Some(local) = local_dns_entries {
        reg.register(
            "weave_dns_entries",
            "weftDNS names registered on this peer",
            gauge(local as u64),
        );
    }

    let s = dp.stats;
    let drops = Family::<ReasonLabel, Counter>::default();
    for (reason, v) in [
        ("malformed", s.dropped_malformed),
        ("unknown_sender", s.dropped_unknown_sender),
        ("no_route", s.dropped_no_route),
        ("loop", s.dropped_loop),
        ("too_big", s.dropped_too_big),
        ("no_key", s.dropped_no_key),
        ("auth_failed", s.dropped_auth),
        ("replay", s.dropped_replay),
        ("plaintext", s.dropped_plaintext),
        ("proxy_arp", s.dropped_proxy_arp),
    ] {
        drops
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc_by(v);
    }
    reg.register(
        "weft_sleeve_dropped",
        "Sleeve datagrams and frames dropped, by reason",
        drops,
    );
    reg.register(
        "weft_sleeve_sent_datagrams",
        "Sleeve datagrams sent",
        counter(s.sent_datagrams),
    );
    reg.register(
        "weft_sleeve_encrypted_datagrams",
        "Sleeve datagrams sealed for a peer",
        counter(s.encrypted),
    );
    reg.register(
        "weft_sleeve_decrypted_datagrams",
        "Sleeve datagrams authenticated and opened",
        counter(s.decrypted),
    );

    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}
