//! The service with a real control task (the sans-IO node, IPAM included) in front of a
//! modelled host: the CNI plugin's and the CLI's requests end to end, without root.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch};
use weft_api::types::{AttachRequest, DetachRequest, ExposeRequest, RouteSpec};
use weft_core::ipam::{InitMode, IpamConfig, IpamError};
use weft_core::mesh::{RouterConfig, Timing};
use weft_core::node::Node;
use weft_linux::host::fake::FakeHost;
use weft_linux::host::{HostOps, Op};
use weft_proto::PeerName;

use super::{Parts, Service, ServiceError};
use crate::attach::Attacher;
use crate::control::Control;
use crate::dataplane_msg::DataPlaneMsg;
use crate::state::StateDir;

const MTU: u32 = 1376;

struct Router {
    service: Service,
    host: Arc<FakeHost>,
    bridge: u32,
    _shutdown: watch::Sender<bool>,
    dir: PathBuf,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn range() -> Ipv4Net {
    "10.32.0.0/12".parse().expect("a CIDR")
}

/// A router of one peer, allocating in 10.32.0.0/12 (or not at all).
fn router(ipam: bool) -> Router {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "weft-service-unit-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let state = StateDir::open(&dir).expect("a state directory");
    let host = Arc::new(FakeHost::new());
    let bridge = host.add_link("weft", "bridge", MTU);
    let attacher = Arc::new(
        Attacher::new(host.clone(), None, bridge, MTU, state.clone()).expect("an attacher"),
    );
    let cfg = RouterConfig {
        name: PeerName::from_bytes([0x0a, 0, 0, 0, 0, 1]),
        nickname: "unit".into(),
        tcp_port: 6783,
        udp_port: 6783,
        conn_limit: 0,
        discovery: false,
        mtu: MTU,
        timing: Timing::default(),
        crypto: None,
        gossip_chunk: weft_proto::MAX_GOSSIP_CHUNK,
        protocol_max: weft_proto::control::PROTOCOL_MAX,
        full_mesh_peers: weft_core::mesh::FULL_MESH_PEERS,
    };
    let ipam_cfg = ipam.then(|| {
        (
            IpamConfig::new(range(), InitMode::Consensus { quorum: 1 }),
            None,
        )
    });
    let node = Node::new(cfg, ipam_cfg, None, Instant::now(), 7).expect("a node");
    let (ctl_tx, ctl_rx) = mpsc::channel(64);
    let (dp_tx, mut dp_rx) = mpsc::channel(64);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let control = Control::new(
        node,
        ctl_rx,
        ctl_tx.clone(),
        dp_tx.clone(),
        state,
        None,
        None,
    );
    tokio::spawn(control.run(shutdown_rx));
    // No data plane: what the control task tells it is dropped, snapshots are empty.
    tokio::spawn(async move {
        while let Some(m) = dp_rx.recv().await {
            if let DataPlaneMsg::Snapshot(reply) = m {
                let _ = reply.send(Default::default());
            }
        }
    });
    let service = Service::new(Parts {
        version: "unit".into(),
        control: ctl_tx,
        dataplane: dp_tx,
        attacher,
        interface: "weft-tap".into(),
        mtu: MTU,
        default_port: 6783,
        default_subnet: range(),
        ipam_enabled: ipam,
        encryption: false,
        ipam_range: ipam.then(range),
        dns: None,
        docker: None,
        docker_status: Default::default(),
        firewall: crate::host::FirewallHandle::inert(),
    });
    Router {
        service,
        host,
        bridge,
        _shutdown: shutdown,
        dir,
    }
}

/// What CNI's ADD asks for: an address under the container id, the host as gateway.
fn cni_add(netns: &str, id: &str) -> AttachRequest {
    AttachRequest {
        ident: Some(id.into()),
        gateway: true,
        multicast_route: false,
        without_dns: true,
        routes: vec![RouteSpec {
            dst: "10.96.0.0/12".parse().expect("a CIDR"),
            gw: None,
        }],
        ..AttachRequest::new(netns)
    }
}

async fn timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("answered in time")
}

#[tokio::test]
async fn cni_add_allocates_exposes_the_gateway_and_routes_through_it() {
    let r = router(true);
    let ns = r.host.add_namespace("pod1");
    let resp = timeout(r.service.attach_container(cni_add("pod1", "cni-1"), None))
        .await
        .expect("attached");
    let addr = resp.addresses[0];
    assert!(range().contains(&addr.addr()), "{addr}");
    assert_eq!(resp.container.id, "cni-1");
    // The host got the first address in the subnet as the containers' gateway.
    let gw = resp.gateway.expect("a gateway");
    let on_bridge = r.host.addresses_of(r.bridge);
    assert_eq!(on_bridge.len(), 1);
    assert_eq!(on_bridge[0].addr(), gw);
    assert_ne!(gw, addr.addr());
    // Inside: the address, the asked-for route and the default route via the host.
    let routes: Vec<Op> = r
        .host
        .ops()
        .into_iter()
        .filter(|(at, _)| at == "/run/netns/pod1")
        .map(|(_, op)| op)
        .filter(|op| matches!(op, Op::AddRoute { .. }))
        .collect();
    assert_eq!(
        routes,
        vec![
            Op::AddRoute {
                link: "ethwe".into(),
                dst: "10.96.0.0/12".parse().expect("a CIDR"),
                via: None,
            },
            Op::AddRoute {
                link: "ethwe".into(),
                dst: Ipv4Net::default(),
                via: Some(gw),
            },
        ]
    );
    let inside = r.host.links_in(Some(&ns));
    assert_eq!(r.host.addresses_of(inside[0].index), vec![addr]);
    // The allocator has it under the container id, and the host's under weave:expose.
    let held = r.service.lookup("cni-1".into(), None).await.expect("held");
    assert_eq!(held, vec![addr]);
    let exposed = r
        .service
        .lookup(super::EXPOSE_IDENT.into(), None)
        .await
        .expect("held");
    assert_eq!(exposed.iter().map(|n| n.addr()).collect::<Vec<_>>(), [gw]);
}

#[tokio::test]
async fn cni_del_gives_the_address_back_even_after_the_namespace_went() {
    let r = router(true);
    r.host.add_namespace("pod1");
    let resp = timeout(r.service.attach_container(cni_add("pod1", "cni-1"), None))
        .await
        .expect("attached");
    r.host.remove_namespace("pod1");
    let del = DetachRequest {
        container: String::new(),
        ident: Some("cni-1".into()),
        addrs: Vec::new(),
    };
    let released = timeout(r.service.detach(del.clone()))
        .await
        .expect("detached");
    assert_eq!(released, resp.addresses);
    assert!(
        r.service
            .lookup("cni-1".into(), None)
            .await
            .expect("a list")
            .is_empty()
    );
    // DEL again (runtimes retry): nothing to do, no error.
    let again = timeout(r.service.detach(del))
        .await
        .expect("detached again");
    assert!(again.is_empty());
}

#[tokio::test]
async fn a_plug_that_fails_gives_the_address_back() {
    let r = router(true);
    r.host.add_namespace("c1");
    r.host
        .fail_when(|at, op| at.to_string() != "host" && matches!(op, Op::AddAddress { .. }));
    let e = timeout(r.service.attach_container(AttachRequest::new("c1"), None))
        .await
        .expect_err("refused");
    assert!(matches!(e, ServiceError::Attach(_)), "{e:?}");
    assert!(
        r.service
            .lookup("c1".into(), None)
            .await
            .expect("a list")
            .is_empty()
    );
    assert!(r.service.attacher.attachments().await.is_empty());
}

#[tokio::test]
async fn an_address_claimed_twice_is_a_conflict_and_one_outside_the_range_is_the_users() {
    let r = router(true);
    r.host.add_namespace("c1");
    r.host.add_namespace("c2");
    let mut req = AttachRequest::new("c1");
    req.addrs = vec!["10.32.5.5/12".into()];
    timeout(r.service.attach_container(req.clone(), None))
        .await
        .expect("attached");
    req.container = "c2".into();
    let e = timeout(r.service.attach_container(req, None))
        .await
        .expect_err("refused");
    assert!(
        matches!(e, ServiceError::Ipam(IpamError::InUse { .. })),
        "{e:?}"
    );
    // Outside the range: no allocator involved, taken as given.
    let mut outside = AttachRequest::new("c2");
    outside.addrs = vec!["192.168.7.7/24".into()];
    let resp = timeout(r.service.attach_container(outside, None))
        .await
        .expect("attached");
    assert_eq!(
        resp.addresses,
        vec!["192.168.7.7/24".parse::<Ipv4Net>().expect("a CIDR")]
    );
    assert!(
        r.service
            .lookup("c2".into(), None)
            .await
            .expect("a list")
            .is_empty()
    );
}

#[tokio::test]
async fn without_allocation_only_explicit_addresses_are_taken() {
    let r = router(false);
    r.host.add_namespace("c1");
    let e = timeout(r.service.attach_container(AttachRequest::new("c1"), None))
        .await
        .expect_err("refused");
    assert!(matches!(e, ServiceError::IpamDisabled), "{e:?}");
    assert!(r.host.ops().is_empty(), "nothing touched the host");
    let mut req = AttachRequest::new("c1");
    req.addrs = vec!["10.32.1.1/12".into()];
    timeout(r.service.attach_container(req, None))
        .await
        .expect("attached");
}

#[tokio::test]
async fn expose_allocates_for_the_host_and_hide_gives_it_back() {
    let r = router(true);
    let nets = timeout(r.service.expose(ExposeRequest::default()))
        .await
        .expect("exposed");
    assert_eq!(r.host.addresses_of(r.bridge), nets);
    let hidden = timeout(r.service.hide(ExposeRequest::default()))
        .await
        .expect("hidden");
    assert_eq!(hidden, nets);
    assert!(r.host.addresses_of(r.bridge).is_empty());
    let held = r
        .service
        .lookup(super::EXPOSE_IDENT.into(), None)
        .await
        .expect("a list");
    assert!(held.is_empty());
    // The status snapshot shows the ring as this router's own.
    let report = timeout(r.service.report()).await.expect("a report");
    assert_eq!(report.router.name, "0a:00:00:00:00:01");
    let _ = r.host.links().await;
}

#[tokio::test]
async fn a_password_for_a_router_without_encryption_is_refused_before_any_derivation() {
    let r = router(true);
    let e = timeout(r.service.password("add", "secret"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&e, ServiceError::Password(m) if m.contains("encryption is off")),
        "{e:?}"
    );
}
