//! The Docker network plugin: libnetwork's remote network driver and IPAM driver protocol on a
//! unix socket in `/run/docker/plugins/` (the driver is named after the socket, `weft`), so
//! `docker network create -d weft --ipam-driver weft …` and `docker run --net=…` give
//! containers the same overlay and the same address allocation as `weft attach`.
//!
//! Endpoints are veth pairs named after the endpoint id (`vethwl…` on the weft bridge,
//! `vethwg…` handed to Docker, which moves it into the container as `ethwe<N>`): the names
//! carry the state, so a router restart loses nothing. If Docker runs in another network
//! namespace than the router (the test bed does that), the container end is moved into
//! Docker's, which the plugin finds from the connection's peer credentials.
//!
//! IPAM: pools are subnets of the weft range (the default subnet if none is asked for); the
//! gateway Docker asks for is the subnet's network address, which is never allocated (Weave's
//! choice: the overlay needs no gateway). Addresses come from weft's allocator under an ident
//! per request and are released by address.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::engine::MULTICAST_OPTIONS;
use crate::service::Service;

const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

pub struct Plugin {
    pub service: Service,
}

impl Plugin {
    pub fn new(service: Service) -> Arc<Plugin> {
        Arc::new(Plugin { service })
    }

    /// Networks created through us, with whether containers get the multicast route.
    fn networks(&self) -> &Mutex<HashMap<String, bool>> {
        &self
            .service
            .docker
            .as_ref()
            .expect("the plugin runs only with Docker")
            .plugin_networks
    }
}

/// The PID on the other end of a plugin connection (Docker's daemon).
#[derive(Clone, Debug)]
pub struct Peer {
    pid: Option<i32>,
}

impl Connected<axum::serve::IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Peer {
            pid: s.io().peer_cred().ok().and_then(|c| c.pid()),
        }
    }
}

type S = State<Arc<Plugin>>;

fn reply(v: Value) -> Response {
    let mut r = axum::Json(v).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

fn err(msg: impl Into<String>) -> Response {
    let msg = msg.into();
    warn!("Docker plugin: {msg}");
    let mut r = reply(json!({ "Err": msg }));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

fn body(b: &Bytes) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub fn router(p: Arc<Plugin>) -> axum::Router {
    axum::Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/NetworkDriver.GetCapabilities", post(capabilities))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.CreateEndpoint", post(create_endpoint))
        .route("/NetworkDriver.DeleteEndpoint", post(delete_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", post(oper_info))
        .route("/NetworkDriver.Join", post(join))
        .route("/NetworkDriver.Leave", post(empty))
        .route("/NetworkDriver.DiscoverNew", post(empty))
        .route("/NetworkDriver.DiscoverDelete", post(empty))
        .route("/NetworkDriver.ProgramExternalConnectivity", post(empty))
        .route("/NetworkDriver.RevokeExternalConnectivity", post(empty))
        .route("/NetworkDriver.AllocateNetwork", post(empty))
        .route("/NetworkDriver.FreeNetwork", post(empty))
        .route("/IpamDriver.GetCapabilities", post(ipam_capabilities))
        .route("/IpamDriver.GetDefaultAddressSpaces", post(address_spaces))
        .route("/IpamDriver.RequestPool", post(request_pool))
        .route("/IpamDriver.ReleasePool", post(empty))
        .route("/IpamDriver.RequestAddress", post(request_address))
        .route("/IpamDriver.ReleaseAddress", post(release_address))
        .with_state(p)
}

/// Serves the plugin socket until shutdown.
pub async fn serve(
    p: Arc<Plugin>,
    socket: &Path,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let l = tokio::net::UnixListener::bind(socket)
        .map_err(|e| format!("listening on {}: {e}", socket.display()))?;
    let path = socket.to_path_buf();
    tokio::spawn(async move {
        let app = router(p).into_make_service_with_connect_info::<Peer>();
        let r = axum::serve(l, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = r {
            warn!("Docker plugin stopped: {e}");
        }
        // Docker finds plugins by their sockets: a stale one would make it wait for us.
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn activate() -> Response {
    reply(json!({ "Implements": ["NetworkDriver", "IpamDriver"] }))
}

async fn capabilities() -> Response {
    reply(json!({ "Scope": "local", "ConnectivityScope": "global" }))
}

async fn empty() -> Response {
    reply(json!({}))
}

async fn oper_info() -> Response {
    reply(json!({ "Value": {} }))
}

fn multicast_option(req: &Value) -> bool {
    let generic = req.pointer("/Options/com.docker.network.generic");
    MULTICAST_OPTIONS.iter().any(|k| {
        generic.and_then(|g| g.get(*k)).is_some_and(|v| match v {
            Value::String(s) => s.is_empty() || s == "true" || s == "1",
            Value::Bool(b) => *b,
            _ => false,
        })
    })
}

async fn create_network(State(p): S, b: Bytes) -> Response {
    let req = body(&b);
    if req
        .get("IPv6Data")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return err("weft networks are IPv4 only");
    }
    let id = text(&req, "NetworkID").to_string();
    let mcast = multicast_option(&req);
    info!(network = %id, multicast = mcast, "Docker network created");
    p.networks().lock().await.insert(id, mcast);
    empty().await
}

async fn delete_network(State(p): S, b: Bytes) -> Response {
    let req = body(&b);
    p.networks().lock().await.remove(text(&req, "NetworkID"));
    empty().await
}

/// Host and container ends of an endpoint's veth (Weave's names).
fn veth_names(endpoint: &str) -> (String, String) {
    let short: String = endpoint.chars().take(9).collect();
    (format!("vethwl{short}"), format!("vethwg{short}"))
}

async fn create_endpoint(State(p): S, ConnectInfo(peer): ConnectInfo<Peer>, b: Bytes) -> Response {
    let req = body(&b);
    let eid = text(&req, "EndpointID");
    if eid.is_empty() {
        return err("CreateEndpoint without an EndpointID");
    }
    let given_mac = req
        .pointer("/Interface/MacAddress")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    let (host_if, cont_if) = veth_names(eid);
    match p
        .service
        .attacher
        .plugin_endpoint(&host_if, &cont_if, given_mac.as_deref(), peer.pid)
        .await
    {
        Ok(mac) => {
            let iface = if given_mac.is_some() {
                json!({})
            } else {
                json!({ "MacAddress": mac })
            };
            reply(json!({ "Interface": iface }))
        }
        Err(e) => err(format!("creating the endpoint's interface: {e}")),
    }
}

async fn delete_endpoint(State(p): S, b: Bytes) -> Response {
    let req = body(&b);
    let (host_if, _) = veth_names(text(&req, "EndpointID"));
    if let Err(e) = p.service.attacher.remove_plugin_endpoint(&host_if).await {
        return err(format!("deleting {host_if}: {e}"));
    }
    empty().await
}

async fn join(State(p): S, b: Bytes) -> Response {
    let req = body(&b);
    let (_, cont_if) = veth_names(text(&req, "EndpointID"));
    let mcast = p
        .networks()
        .lock()
        .await
        .get(text(&req, "NetworkID"))
        .copied()
        .unwrap_or(false);
    let mut r = json!({
        "InterfaceName": { "SrcName": cont_if, "DstPrefix": "ethwe" },
    });
    if mcast {
        // RouteType 1: connected (no next hop).
        r["StaticRoutes"] = json!([{ "Destination": "224.0.0.0/4", "RouteType": 1 }]);
    }
    reply(r)
}

async fn ipam_capabilities() -> Response {
    reply(json!({ "RequiresMACAddress": false }))
}

async fn address_spaces() -> Response {
    reply(json!({
        "LocalDefaultAddressSpace": "weftlocal",
        "GlobalDefaultAddressSpace": "weftglobal",
    }))
}

/// `weft-<pool>-<subpool>` ↔ (pool, subpool).
fn pool_id(pool: Ipv4Net, sub: Option<Ipv4Net>) -> String {
    match sub {
        Some(s) => format!("weft-{pool}-{s}"),
        None => format!("weft-{pool}-"),
    }
}

fn parse_pool_id(id: &str) -> Option<(Ipv4Net, Option<Ipv4Net>)> {
    let rest = id.strip_prefix("weft-")?;
    let (pool, sub) = rest.split_once('-')?;
    let pool = pool.parse().ok()?;
    let sub = if sub.is_empty() {
        None
    } else {
        Some(sub.parse().ok()?)
    };
    Some((pool, sub))
}

async fn request_pool(State(p): S, b: Bytes) -> Response {
    let req = body(&b);
    if req.get("V6").and_then(Value::as_bool) == Some(true) {
        return err("weft's IPAM driver has no IPv6 pools");
    }
    if !p.service.ipam_enabled {
        return err("IP address allocation is disabled on this router (--ipalloc-range \"\")");
    }
    let parse = |k: &str| -> Result<Option<Ipv4Net>, String> {
        match text(&req, k) {
            "" => Ok(None),
            s => s
                .parse::<Ipv4Net>()
                .map(|n| Some(n.trunc()))
                .map_err(|_| format!("{k} {s:?} is not an IPv4 subnet")),
        }
    };
    let (pool, sub) = match (parse("Pool"), parse("SubPool")) {
        (Ok(p), Ok(s)) => (p, s),
        (Err(e), _) | (_, Err(e)) => return err(e),
    };
    let pool = pool.unwrap_or(p.service.default_subnet);
    let gateway = Ipv4Net::new(pool.network(), pool.prefix_len()).expect("valid prefix");
    reply(json!({
        "PoolID": pool_id(pool, sub),
        "Pool": pool.to_string(),
        "Data": { "com.docker.network.gateway": gateway.to_string() },
    }))
}

async fn request_address(State(p): S, b: Bytes) -> Response {
    let req = body(&b);
    let Some((pool, sub)) = parse_pool_id(text(&req, "PoolID")) else {
        return err(format!("unknown pool {:?}", text(&req, "PoolID")));
    };
    let gateway = req
        .pointer("/Options/RequestAddressType")
        .and_then(Value::as_str)
        == Some("com.docker.network.gateway");
    let asked = match text(&req, "Address") {
        "" => None,
        a => match a.parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => return err(format!("{a:?} is not an IPv4 address")),
        },
    };
    if gateway {
        let ip = asked.unwrap_or(pool.network());
        return reply(json!({ "Address": format!("{ip}/{}", pool.prefix_len()) }));
    }
    let r = match asked {
        Some(ip) => {
            let net = Ipv4Net::new(ip, pool.prefix_len()).expect("valid prefix");
            p.service
                .claim_exact(format!("weft:plugin:{ip}"), net)
                .await
        }
        None => {
            let ident = format!("weft:plugin:{:016x}", crate::random_u64());
            p.service.allocate(ident, Some(sub.unwrap_or(pool))).await
        }
    };
    match r {
        Ok(net) => reply(json!({
            "Address": format!("{}/{}", net.addr(), pool.prefix_len())
        })),
        Err(e) => err(e.to_string()),
    }
}

async fn release_address(State(p): S, b: Bytes) -> Response {
    let req = body(&b);
    let Ok(ip) = text(&req, "Address").parse::<Ipv4Addr>() else {
        return empty().await;
    };
    let _ = p.service.release(String::new(), Some(ip)).await;
    empty().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ids_round_trip() {
        let pool: Ipv4Net = "10.32.0.0/12".parse().unwrap();
        let sub: Ipv4Net = "10.32.4.0/24".parse().unwrap();
        assert_eq!(parse_pool_id(&pool_id(pool, None)), Some((pool, None)));
        assert_eq!(
            parse_pool_id(&pool_id(pool, Some(sub))),
            Some((pool, Some(sub)))
        );
        assert_eq!(parse_pool_id("other"), None);
    }

    #[test]
    fn veth_names_fit_and_follow_the_endpoint() {
        let (h, c) = veth_names("0123456789abcdef");
        assert_eq!(h, "vethwl012345678");
        assert_eq!(c, "vethwg012345678");
        assert!(h.len() <= 15);
    }

    #[test]
    fn multicast_is_a_network_option() {
        let on = json!({"Options": {"com.docker.network.generic": {"weft.multicast": "true"}}});
        assert!(multicast_option(&on));
        assert!(!multicast_option(&json!({"Options": {}})));
        assert_eq!(
            crate::engine::plugin_driver_name(Path::new("/run/docker/plugins/weft.sock")),
            "weft"
        );
    }
}
