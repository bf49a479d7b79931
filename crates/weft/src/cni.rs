//! The CNI plugins: the `weft` binary run as `weft-net` (network plugin) or `weft-ipam` (IPAM
//! plugin), as Weave's `weave-net`/`weave-ipam`, so Kubernetes (or any CNI runtime) puts pods
//! on the overlay. Both talk to the local router's HTTP API, which does the netlink work and
//! allocates addresses under the CNI container id.
//!
//! The protocol part — reading the network configuration and the `CNI_*` variables, writing
//! results and errors in the version the runtime asked for — is pure and unit-tested; [`run`]
//! does the I/O.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use weft_api::types::{AttachRequest, AttachResponse, ContainerEntry, DetachRequest, RouteSpec};
use weft_api::{Client, ClientError};

/// The spec versions whose configurations and results we read and write.
pub const SUPPORTED: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The conflist `weft setup-cni` writes.
pub const CONFLIST: &str = "10-weft.conflist";

/// Which plugin the binary was run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    Net,
    Ipam,
}

impl Plugin {
    /// The plugin an executable name stands for (`/opt/cni/bin/weft-net` → `Net`).
    pub fn from_argv0(argv0: &str) -> Option<Plugin> {
        match Path::new(argv0).file_name()?.to_str()? {
            "weft-net" => Some(Plugin::Net),
            "weft-ipam" => Some(Plugin::Ipam),
            _ => None,
        }
    }
}

/// A CNI error: printed as JSON on stdout, with a non-zero exit.
#[derive(Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

/// The spec's well-known error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    /// weft's own: the router refused or failed the request.
    pub const ROUTER: u32 = 100;
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }

    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

/// What the runtime asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// The `CNI_*` variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    /// Absent for DEL when the runtime no longer has the namespace.
    pub netns: Option<String>,
    pub ifname: String,
}

impl Invocation {
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Self, CniError> {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let missing = |k: &str| CniError::new(code::INVALID_ENV, format!("{k} is not set"));
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("unknown CNI_COMMAND {other:?}: ADD, DEL, CHECK or VERSION"),
                ));
            }
            None => {
                return Err(missing("CNI_COMMAND").details(
                    "this is a CNI plugin, run by a container runtime; for the command line use `weft`",
                ));
            }
        };
        if command == Command::Version {
            return Ok(Invocation {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
            });
        }
        let container_id = get("CNI_CONTAINERID").ok_or_else(|| missing("CNI_CONTAINERID"))?;
        let netns = get("CNI_NETNS");
        if netns.is_none() && command != Command::Del {
            return Err(missing("CNI_NETNS"));
        }
        let ifname = get("CNI_IFNAME").ok_or_else(|| missing("CNI_IFNAME"))?;
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
        })
    }
}

/// The parts of the network configuration weft reads.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub hairpin: bool,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub routes: Vec<RouteSpec>,
    /// Passed through to the result.
    pub dns: Option<Value>,
    /// A previous plugin's result (chained; CHECK).
    pub prev_result: Option<Value>,
}

/// The configuration as CNI hands it over: only what weft reads, typed. Unknown fields are
/// other plugins' business; `null` counts as absent.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    /// Refused when true (network plugin); anything else is not ours to judge.
    is_gateway: Option<Value>,
    ip_masq: Option<Value>,
    hairpin_mode: Option<bool>,
    ipam: Option<RawIpam>,
    dns: Option<Value>,
    prev_result: Option<Value>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct RawIpam {
    #[serde(rename = "type")]
    kind: Option<String>,
    subnet: Option<String>,
    gateway: Option<String>,
    routes: Option<Vec<RawRoute>>,
}

#[derive(Debug, serde::Deserialize)]
struct RawRoute {
    dst: Option<String>,
    gw: Option<String>,
}

fn parse<T: std::str::FromStr>(k: &str, s: &str) -> Result<T, CniError> {
    s.parse()
        .map_err(|_| CniError::new(code::INVALID_CONFIG, format!("{k}: invalid value {s:?}")))
}

impl NetConf {
    pub fn parse(bytes: &[u8], plugin: Plugin) -> Result<Self, CniError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(code::DECODE, "the network configuration is not JSON")
                .details(e.to_string())
        })?;
        if !v.is_object() {
            return Err(CniError::new(
                code::DECODE,
                "the network configuration is not a JSON object",
            ));
        }
        let raw: RawConf = serde_path_to_error::deserialize(v).map_err(|e| {
            let field = e.path().to_string();
            CniError::new(code::INVALID_CONFIG, format!("{field}: {}", e.into_inner()))
        })?;
        let cni_version = raw.cni_version.unwrap_or_else(|| "0.1.0".into());
        if !SUPPORTED.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "CNI version {cni_version} is not supported: weft speaks {}",
                    SUPPORTED.join(", ")
                ),
            ));
        }
        if plugin == Plugin::Net {
            // Weave refused these rather than silently not doing them.
            for (k, f) in [("isGateway", &raw.is_gateway), ("ipMasq", &raw.ip_masq)] {
                if f.as_ref().and_then(Value::as_bool) == Some(true) {
                    return Err(CniError::new(
                        code::UNSUPPORTED_FIELD,
                        format!(
                            "{k} is not supported by weft-net: the host's address on the bridge is the gateway; use `weft expose` for NAT"
                        ),
                    ));
                }
            }
        }
        let ipam = raw.ipam.unwrap_or_default();
        if plugin == Plugin::Net
            && let Some(t) = &ipam.kind
            && !t.is_empty()
            && t != "weft-ipam"
        {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "ipam type {t:?} is not supported by weft-net: leave it out (or use weft-ipam) for weft's allocator"
                ),
            ));
        }
        let subnet = ipam
            .subnet
            .map(|s| parse::<Ipv4Net>("ipam.subnet", &s).map(|n| n.trunc()))
            .transpose()?;
        let gateway = ipam
            .gateway
            .map(|s| parse::<Ipv4Addr>("ipam.gateway", &s))
            .transpose()?;
        let mut routes = Vec::new();
        for r in ipam.routes.unwrap_or_default() {
            let dst = r.dst.ok_or_else(|| {
                CniError::new(code::INVALID_CONFIG, "every ipam.routes entry needs a dst")
            })?;
            routes.push(RouteSpec {
                dst: parse("ipam.routes.dst", &dst)?,
                gw: r.gw.map(|g| parse("ipam.routes.gw", &g)).transpose()?,
            });
        }
        Ok(NetConf {
            cni_version,
            name: raw.name.unwrap_or_default(),
            hairpin: raw.hairpin_mode.unwrap_or(true),
            subnet,
            gateway,
            routes,
            dns: raw.dns.filter(|d| !d.is_null()),
            prev_result: raw.prev_result.filter(|p| !p.is_null()),
        })
    }
}

/// The interface a network plugin created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub sandbox: String,
}

/// What ADD did, to be written in the configuration's version.
#[derive(Clone, Debug, PartialEq)]
pub struct AddResult {
    pub interface: Option<Interface>,
    pub ips: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
    pub routes: Vec<RouteSpec>,
    pub dns: Option<Value>,
}

fn route_json(r: &RouteSpec) -> Value {
    let mut v = json!({ "dst": r.dst.to_string() });
    if let Some(g) = r.gw {
        v["gw"] = json!(g.to_string());
    }
    v
}

impl AddResult {
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = if matches!(version, "0.1.0" | "0.2.0") {
            // The old layout: one IPv4 configuration, routes inside it.
            let mut ip4 = json!({});
            if let Some((net, gw)) = self.ips.first() {
                ip4["ip"] = json!(net.to_string());
                if let Some(g) = gw {
                    ip4["gateway"] = json!(g.to_string());
                }
            }
            ip4["routes"] = Value::Array(self.routes.iter().map(route_json).collect());
            json!({ "cniVersion": version, "ip4": ip4 })
        } else {
            let legacy = version.starts_with("0.3.") || version == "0.4.0";
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|(net, gw)| {
                    let mut ip = json!({ "address": net.to_string() });
                    if legacy {
                        ip["version"] = json!("4");
                    }
                    if let Some(g) = gw {
                        ip["gateway"] = json!(g.to_string());
                    }
                    if self.interface.is_some() {
                        ip["interface"] = json!(0);
                    }
                    ip
                })
                .collect();
            let mut v = json!({ "cniVersion": version, "ips": ips });
            if let Some(i) = &self.interface {
                v["interfaces"] = json!([{ "name": i.name, "mac": i.mac, "sandbox": i.sandbox }]);
            }
            if !self.routes.is_empty() {
                v["routes"] = Value::Array(self.routes.iter().map(route_json).collect());
            }
            v
        };
        if let Some(d) = &self.dns {
            v["dns"] = d.clone();
        }
        v
    }
}

/// VERSION's answer.
pub fn version_json(version: &str) -> Value {
    json!({ "cniVersion": version, "supportedVersions": SUPPORTED })
}

/// The addresses in a previous result (any version), for CHECK.
pub fn result_addresses(prev: &Value) -> Vec<Ipv4Net> {
    let mut out = Vec::new();
    if let Some(ips) = prev.get("ips").and_then(Value::as_array) {
        out.extend(
            ips.iter()
                .filter_map(|i| i.get("address")?.as_str()?.parse::<Ipv4Net>().ok()),
        );
    }
    if let Some(ip) = prev
        .get("ip4")
        .and_then(|i| i.get("ip"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
    {
        out.push(ip);
    }
    out
}

/// The router's address: `WEFT_HTTP_ADDR`, else Weave's `WEAVE_HTTP_ADDR`, else the default.
fn router_addr(env: &BTreeMap<String, String>) -> Result<SocketAddr, CniError> {
    let s = env
        .get("WEFT_HTTP_ADDR")
        .or_else(|| env.get("WEAVE_HTTP_ADDR"))
        .map_or(weft_api::DEFAULT_HTTP_ADDR, String::as_str);
    s.parse().map_err(|_| {
        CniError::new(
            code::INVALID_ENV,
            format!("WEFT_HTTP_ADDR={s:?} is not an address:port"),
        )
    })
}

fn router_error(e: ClientError, client: &Client) -> CniError {
    match e {
        ClientError::Status { body, .. } => CniError::new(code::ROUTER, body.trim().to_string()),
        other => CniError::new(
            code::TRY_AGAIN,
            format!(
                "the weft router is not answering at {}: is it running (`weft launch`)?",
                client.addr()
            ),
        )
        .details(other.to_string()),
    }
}

async fn net_add(client: &Client, inv: &Invocation, conf: &NetConf) -> Result<AddResult, CniError> {
    let netns = inv.netns.clone().unwrap_or_default();
    let addrs = conf
        .subnet
        .map(|s| vec![format!("net:{s}")])
        .unwrap_or_default();
    let req = AttachRequest {
        addrs,
        multicast_route: false,
        without_dns: true,
        ifname: Some(inv.ifname.clone()),
        ident: Some(inv.container_id.clone()),
        gateway: conf.gateway.is_none() && conf.routes.is_empty(),
        hairpin: conf.hairpin,
        routes: routes_via(conf),
        ..AttachRequest::new(netns.clone())
    };
    let body = client
        .post_json("/attach", &req)
        .await
        .map_err(|e| router_error(e, client))?;
    let r: AttachResponse = serde_json::from_str(&body)
        .map_err(|e| CniError::new(code::ROUTER, format!("the router's answer: {e}")))?;
    let gw = r.gateway.or(conf.gateway);
    let routes = match r.gateway {
        Some(g) => vec![RouteSpec {
            dst: Ipv4Net::default(),
            gw: Some(g),
        }],
        None => conf.routes.clone(),
    };
    Ok(AddResult {
        interface: Some(Interface {
            name: inv.ifname.clone(),
            mac: r.container.mac,
            sandbox: netns,
        }),
        ips: r.addresses.into_iter().map(|a| (a, gw)).collect(),
        routes,
        dns: conf.dns.clone(),
    })
}

/// The configured routes as the pod gets them: a route without its own gateway goes via
/// `ipam.gateway` when there is one (as CNI's reference plugins do), else out of the
/// interface.
fn routes_via(conf: &NetConf) -> Vec<RouteSpec> {
    conf.routes
        .iter()
        .map(|r| RouteSpec {
            dst: r.dst.trunc(),
            gw: r.gw.or(conf.gateway),
        })
        .collect()
}

async fn net_del(client: &Client, inv: &Invocation) -> Result<(), CniError> {
    let req = DetachRequest {
        container: String::new(),
        ident: Some(inv.container_id.clone()),
        addrs: Vec::new(),
    };
    client
        .post_json("/detach", &req)
        .await
        .map(|_| ())
        .map_err(|e| router_error(e, client))
}

async fn net_check(client: &Client, inv: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    let netns = inv.netns.clone().unwrap_or_default();
    let list: Vec<ContainerEntry> = client
        .get_json(&format!("/ps?container={}", crate::cmd::urlencode(&netns)))
        .await
        .map_err(|e| router_error(e, client))?;
    let Some(c) = list.into_iter().find(|c| c.id == inv.container_id) else {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("container {} is not attached to weft", inv.container_id),
        ));
    };
    if let Some(prev) = &conf.prev_result {
        for a in result_addresses(prev) {
            if !c.cidrs.contains(&a) {
                return Err(CniError::new(
                    code::ROUTER,
                    format!("container {} no longer has address {a}", inv.container_id),
                ));
            }
        }
    }
    Ok(())
}

async fn ipam_add(
    client: &Client,
    inv: &Invocation,
    conf: &NetConf,
) -> Result<AddResult, CniError> {
    let path = match conf.subnet {
        Some(s) => format!("/ip/{}/{}/{}", inv.container_id, s.addr(), s.prefix_len()),
        None => format!("/ip/{}", inv.container_id),
    };
    let body = client
        .request(hyper::Method::POST, &path, None, Vec::new())
        .await
        .map_err(|e| router_error(e, client))?;
    let net: Ipv4Net = body
        .trim()
        .parse()
        .map_err(|_| CniError::new(code::ROUTER, format!("the router's answer {body:?}")))?;
    Ok(AddResult {
        interface: None,
        ips: vec![(net, conf.gateway)],
        routes: conf.routes.clone(),
        dns: conf.dns.clone(),
    })
}

async fn ipam_del(client: &Client, inv: &Invocation) -> Result<(), CniError> {
    match client.delete(&format!("/ip/{}", inv.container_id)).await {
        Ok(_) => Ok(()),
        // Nothing held: DEL must succeed when there is nothing left to do.
        Err(ClientError::Status { body, .. }) if body.contains("no addresses for") => Ok(()),
        Err(e) => Err(router_error(e, client)),
    }
}

async fn ipam_check(client: &Client, inv: &Invocation) -> Result<(), CniError> {
    client
        .get(&format!("/ip/{}", inv.container_id))
        .await
        .map(|_| ())
        .map_err(|e| match e {
            ClientError::Status { .. } => CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("no address is allocated to {}", inv.container_id),
            ),
            other => router_error(other, client),
        })
}

/// One invocation: what to print, and whether it succeeded.
async fn invoke(
    plugin: Plugin,
    env: &BTreeMap<String, String>,
    stdin: &[u8],
) -> Result<Option<Value>, (CniError, String)> {
    // Errors are written in the version the configuration asked for, when it says.
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| "1.0.0".into());
    let fail = |e: CniError| (e, asked.clone());
    let inv = Invocation::from_env(env).map_err(fail)?;
    if inv.command == Command::Version {
        return Ok(Some(version_json(&asked)));
    }
    let conf = NetConf::parse(stdin, plugin).map_err(fail)?;
    let client = Client::new(router_addr(env).map_err(fail)?);
    let out = match (plugin, inv.command) {
        (Plugin::Net, Command::Add) => match net_add(&client, &inv, &conf).await {
            Ok(r) => {
                if let (Some(pod), Some((ip, _))) = (k8s_pod(env), r.ips.first()) {
                    tell_npc(env, pod, ip.addr()).await;
                }
                Ok(Some(r.to_json(&conf.cni_version)))
            }
            Err(e) => Err(e),
        },
        (Plugin::Net, Command::Del) => net_del(&client, &inv).await.map(|()| None),
        (Plugin::Net, Command::Check) => net_check(&client, &inv, &conf).await.map(|()| None),
        (Plugin::Ipam, Command::Add) => ipam_add(&client, &inv, &conf)
            .await
            .map(|r| Some(r.to_json(&conf.cni_version))),
        (Plugin::Ipam, Command::Del) => ipam_del(&client, &inv).await.map(|()| None),
        (Plugin::Ipam, Command::Check) => ipam_check(&client, &inv).await.map(|()| None),
        (_, Command::Version) => unreachable!("answered above"),
    };
    out.map_err(|e| (e, conf.cni_version.clone()))
}

/// The pod (namespace, name) a Kubernetes runtime names in `CNI_ARGS`.
fn k8s_pod(env: &BTreeMap<String, String>) -> Option<(String, String)> {
    let args = env.get("CNI_ARGS")?;
    let get = |k: &str| {
        args.split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
            .filter(|v| !v.is_empty())
    };
    Some((get("K8S_POD_NAMESPACE")?, get("K8S_POD_NAME")?))
}

/// How long a new pod waits for the policy controller at most.
const NPC_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Tells weft-kube's policy controller (when it runs on this node) which address the pod
/// got, and waits until the node's rules know it: the pod's first packet must not meet
/// rules that take it for a stranger. Without a controller, or when it cannot say yes in
/// time, the pod starts anyway under the rules in force: policy must not stop pods from
/// starting while the API server is away.
async fn tell_npc(
    env: &BTreeMap<String, String>,
    (namespace, name): (String, String),
    ip: Ipv4Addr,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let path = env
        .get("WEFT_NPC_SOCKET")
        .map_or(weft_api::npc::DEFAULT_SOCKET, String::as_str);
    let req = weft_api::npc::PodAddress {
        namespace,
        name,
        ip,
    };
    let exchange = async {
        let mut s = tokio::net::UnixStream::connect(path).await.ok()?;
        let mut line = serde_json::to_vec(&req).ok()?;
        line.push(b'\n');
        s.write_all(&line).await.ok()?;
        let mut reply = String::new();
        tokio::io::BufReader::new(s)
            .read_line(&mut reply)
            .await
            .ok()?;
        serde_json::from_str::<weft_api::npc::Reply>(&reply).ok()
    };
    let _ = tokio::time::timeout(NPC_WAIT, exchange).await;
}

/// Runs the plugin: reads the environment and stdin, prints the result or the error.
pub fn run(plugin: Plugin) -> i32 {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    let needs_stdin = env.get("CNI_COMMAND").is_some_and(|c| c != "VERSION");
    if needs_stdin && let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let e = CniError::new(code::IO, "reading the network configuration").details(e.to_string());
        println!("{}", e.to_json("1.0.0"));
        return 1;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e = CniError::new(code::IO, "starting the async runtime").details(e.to_string());
            println!("{}", e.to_json("1.0.0"));
            return 1;
        }
    };
    match rt.block_on(invoke(plugin, &env, &stdin)) {
        Ok(Some(v)) => {
            println!("{v}");
            0
        }
        Ok(None) => 0,
        Err((e, version)) => {
            println!("{}", e.to_json(&version));
            1
        }
    }
}

/// `weft setup-cni`: installs the plugins and, unless one is there, the network configuration.
pub fn setup(bin_dir: &Path, conf_dir: &Path, hairpin: bool) -> Result<Vec<PathBuf>> {
    let exe = std::env::current_exe().context("finding the weft binary")?;
    std::fs::create_dir_all(bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    let versioned = format!("weft-plugin-{}", env!("CARGO_PKG_VERSION"));
    let target = bin_dir.join(&versioned);
    // Copy under a temporary name and rename, so a runtime never runs a half-written file.
    let tmp = bin_dir.join(format!(".{versioned}.tmp"));
    std::fs::copy(&exe, &tmp).with_context(|| format!("copying weft to {}", tmp.display()))?;
    std::fs::rename(&tmp, &target).with_context(|| format!("installing {}", target.display()))?;
    let mut written = vec![target.clone()];
    for name in ["weft-net", "weft-ipam"] {
        let link = bin_dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&versioned, &link)
            .with_context(|| format!("linking {}", link.display()))?;
        written.push(link);
    }
    std::fs::create_dir_all(conf_dir)
        .with_context(|| format!("creating {}", conf_dir.display()))?;
    let conf = conf_dir.join(CONFLIST);
    if !conf.exists() {
        let text = serde_json::to_string_pretty(&conflist(hairpin)).expect("JSON value");
        std::fs::write(&conf, text + "\n")
            .with_context(|| format!("writing {}", conf.display()))?;
        written.push(conf);
    }
    Ok(written)
}

/// The network configuration list: weft-net, then the standard portmap plugin for hostPort.
pub fn conflist(hairpin: bool) -> Value {
    json!({
        "cniVersion": "0.4.0",
        "name": "weft",
        "plugins": [
            { "name": "weft", "type": "weft-net", "hairpinMode": hairpin },
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plugin_is_chosen_by_executable_name() {
        assert_eq!(
            Plugin::from_argv0("/opt/cni/bin/weft-net"),
            Some(Plugin::Net)
        );
        assert_eq!(Plugin::from_argv0("weft-ipam"), Some(Plugin::Ipam));
        assert_eq!(Plugin::from_argv0("/usr/bin/weft"), None);
    }

    #[test]
    fn invocation_needs_its_variables() {
        let ok = Invocation::from_env(&env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(ok.command, Command::Add);
        assert_eq!(ok.netns.as_deref(), Some("/var/run/netns/p"));
        let e = Invocation::from_env(&env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a")]))
            .unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_NETNS"), "{}", e.msg);
        // DEL may come after the namespace is gone.
        let del = Invocation::from_env(&env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(del.netns, None);
        let v = Invocation::from_env(&env(&[("CNI_COMMAND", "VERSION")])).unwrap();
        assert_eq!(v.command, Command::Version);
        let e = Invocation::from_env(&env(&[])).unwrap_err();
        assert!(e.details.contains("container runtime"), "{e:?}");
        let e = Invocation::from_env(&env(&[("CNI_COMMAND", "GC")])).unwrap_err();
        assert!(e.msg.contains("GC"));
    }

    #[test]
    fn configuration_fields() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"weft","type":"weft-net","hairpinMode":false,
                 "ipam":{"subnet":"10.40.1.7/24","gateway":"10.40.1.1",
                         "routes":[{"dst":"0.0.0.0/0"},{"dst":"10.0.0.0/8","gw":"10.40.1.254"}]},
                 "dns":{"nameservers":["10.96.0.10"]}}"#,
            Plugin::Net,
        )
        .unwrap();
        assert_eq!(c.cni_version, "0.3.1");
        assert!(!c.hairpin);
        assert_eq!(c.subnet, Some("10.40.1.0/24".parse().unwrap()));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 40, 1, 1)));
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].gw, Some(Ipv4Addr::new(10, 40, 1, 254)));
        assert!(c.dns.is_some());
        let d = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"w","type":"weft-net"}"#,
            Plugin::Net,
        )
        .unwrap();
        assert!(d.hairpin && d.subnet.is_none() && d.routes.is_empty());
    }

    #[test]
    fn bad_configurations_say_why() {
        let cases: &[(&[u8], u32, &str)] = &[
            (b"not json", code::DECODE, "not JSON"),
            (b"[1]", code::DECODE, "object"),
            (
                br#"{"cniVersion":"9.9.9"}"#,
                code::INCOMPATIBLE_VERSION,
                "9.9.9",
            ),
            (
                br#"{"cniVersion":"1.0.0","ipMasq":true}"#,
                code::UNSUPPORTED_FIELD,
                "ipMasq",
            ),
            (
                br#"{"cniVersion":"1.0.0","isGateway":true}"#,
                code::UNSUPPORTED_FIELD,
                "isGateway",
            ),
            (
                br#"{"cniVersion":"1.0.0","ipam":{"type":"host-local"}}"#,
                code::UNSUPPORTED_FIELD,
                "host-local",
            ),
            (
                br#"{"cniVersion":"1.0.0","ipam":{"subnet":"10.40/99"}}"#,
                code::INVALID_CONFIG,
                "ipam.subnet",
            ),
            (
                br#"{"cniVersion":"1.0.0","ipam":{"routes":[{"gw":"1.2.3.4"}]}}"#,
                code::INVALID_CONFIG,
                "dst",
            ),
            (
                br#"{"cniVersion":"1.0.0","hairpinMode":"yes"}"#,
                code::INVALID_CONFIG,
                "hairpinMode",
            ),
            (br#"{"cniVersion":1}"#, code::INVALID_CONFIG, "cniVersion"),
        ];
        for (input, want, text) in cases {
            let e = NetConf::parse(input, Plugin::Net).unwrap_err();
            assert_eq!(e.code, *want, "{}: {e:?}", String::from_utf8_lossy(input));
            assert!(
                e.msg.contains(text),
                "{}: {e:?}",
                String::from_utf8_lossy(input)
            );
        }
        // The IPAM plugin itself does not care about the network plugin's fields.
        assert!(NetConf::parse(br#"{"cniVersion":"1.0.0","ipMasq":true}"#, Plugin::Ipam).is_ok());
    }

    fn sample() -> AddResult {
        AddResult {
            interface: Some(Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                sandbox: "/var/run/netns/p".into(),
            }),
            ips: vec![(
                "10.32.0.5/12".parse().unwrap(),
                Some(Ipv4Addr::new(10, 32, 0, 1)),
            )],
            routes: vec![RouteSpec {
                dst: Ipv4Net::default(),
                gw: Some(Ipv4Addr::new(10, 32, 0, 1)),
            }],
            dns: Some(json!({"nameservers": ["10.96.0.10"]})),
        }
    }

    #[test]
    fn results_in_each_version() {
        let v1 = sample().to_json("1.0.0");
        assert_eq!(
            v1,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/var/run/netns/p"}],
                "ips": [{"address": "10.32.0.5/12", "gateway": "10.32.0.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}],
                "dns": {"nameservers": ["10.96.0.10"]}
            })
        );
        let v03 = sample().to_json("0.3.1");
        assert_eq!(v03["ips"][0]["version"], json!("4"));
        let v02 = sample().to_json("0.2.0");
        assert_eq!(
            v02,
            json!({
                "cniVersion": "0.2.0",
                "ip4": {"ip": "10.32.0.5/12", "gateway": "10.32.0.1",
                        "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}]},
                "dns": {"nameservers": ["10.96.0.10"]}
            })
        );
        // Addresses read back from any layout, for CHECK.
        for v in [&v1, &v03, &v02] {
            assert_eq!(
                result_addresses(v),
                vec!["10.32.0.5/12".parse::<Ipv4Net>().unwrap()]
            );
        }
        let ipam_only = AddResult {
            interface: None,
            ..sample()
        }
        .to_json("1.0.0");
        assert!(ipam_only.get("interfaces").is_none());
        assert!(ipam_only["ips"][0].get("interface").is_none());
    }

    #[test]
    fn errors_and_version_answers() {
        let e = CniError::new(code::TRY_AGAIN, "later").details("why");
        assert_eq!(
            e.to_json("0.4.0"),
            json!({"cniVersion": "0.4.0", "code": 11, "msg": "later", "details": "why"})
        );
        let v = version_json("1.0.0");
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED.len()
        );
    }

    #[test]
    fn configured_routes_default_to_the_configured_gateway() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","ipam":{"subnet":"10.40.1.0/24","gateway":"10.40.1.1",
                 "routes":[{"dst":"0.0.0.0/0"},{"dst":"10.0.0.9/8","gw":"10.40.1.254"}]}}"#,
            Plugin::Net,
        )
        .unwrap();
        let gw = |a: u8| Some(Ipv4Addr::new(10, 40, 1, a));
        assert_eq!(
            routes_via(&c),
            vec![
                RouteSpec {
                    dst: Ipv4Net::default(),
                    gw: gw(1)
                },
                RouteSpec {
                    dst: "10.0.0.0/8".parse().unwrap(),
                    gw: gw(254)
                },
            ]
        );
        let none = NetConf::parse(
            br#"{"cniVersion":"1.0.0","ipam":{"routes":[{"dst":"192.168.0.0/16"}]}}"#,
            Plugin::Net,
        )
        .unwrap();
        assert_eq!(routes_via(&none)[0].gw, None);
    }

    #[test]
    fn conflist_names_the_plugin() {
        let c = conflist(true);
        assert_eq!(c["plugins"][0]["type"], json!("weft-net"));
        assert_eq!(c["plugins"][0]["hairpinMode"], json!(true));
        assert_eq!(c["plugins"][1]["type"], json!("portmap"));
    }
}
