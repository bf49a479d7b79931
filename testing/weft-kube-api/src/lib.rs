//! A Kubernetes API server stand-in, for tests on machines where no real one can be installed.
//!
//! It speaks the API as clients see it, so that real clients (kubectl, the Python client,
//! kube-rs in weft-kube) run against it unchanged: HTTPS with a CA of its own and a bearer
//! token, discovery (`/api`, `/apis`, `/version`), get/list/create/update/patch/delete for
//! Nodes, Namespaces, Pods, ConfigMaps and NetworkPolicies, one monotonic resourceVersion with
//! 409 Conflict on stale writes, and `?watch=true` streams with ADDED, MODIFIED, DELETED,
//! BOOKMARK and 410 Gone for a version that is too old.
//!
//! What it leaves out, and clients must not rely on here: schemas and validation (objects are
//! stored as sent; `kubectl apply` needs `--validate=false`, there is no OpenAPI document),
//! server-side apply, strategic merge of lists (patches merge maps and replace lists),
//! set-based selectors, admission, garbage collection, and namespaces that linger in
//! Terminating (deleting one deletes its objects at once).

pub mod store;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::store::{ApiError, ApiResult, Filter, RESOURCES, Resource, Store};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The CA, the server's certificate and key, and the token, as files.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub token: String,
}

impl Pki {
    /// A fresh CA and a server certificate for `ips` (and the in-cluster names), made with
    /// the openssl command in `dir`.
    pub fn generate(dir: &Path, ips: &[IpAddr]) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let p = |f: &str| dir.join(f);
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .context("running openssl")?;
            if !out.status.success() {
                bail!(
                    "openssl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=weft-kube-api-ca",
        ]);
        run(&args)?;
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=kubernetes",
        ]);
        run(&args)?;
        let mut san = String::from(
            "subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc",
        );
        for ip in ips {
            san.push_str(&format!(",IP:{ip}"));
        }
        std::fs::write(
            p("server.ext"),
            format!(
                "{san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        )?;
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "365",
            "-extfile",
            "server.ext",
        ])?;
        let token = format!("weft-{:016x}", std::process::id() as u64 ^ nanos());
        std::fs::write(p("token"), &token)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca: p("ca.crt"),
            cert: p("server.crt"),
            key: p("server.key"),
            token,
        })
    }

    /// A kubeconfig for `server` with the token, written to `path`.
    pub fn write_kubeconfig(&self, path: &Path, server: SocketAddr) -> Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: https://{server}\n    certificate-authority: {}\nusers:\n- name: weft\n  user:\n    token: {}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: weft\n    namespace: default\ncurrent-context: standin\n",
                self.ca.display(),
                self.token
            ),
        )?;
        Ok(())
    }

    fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(&self.cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&self.key)?;
        // ring, as weft's own TLS (see weft-daemon's engine::tls): deprecated only for
        // lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

struct Shared {
    store: Mutex<Store>,
    token: String,
    bookmark_interval: Duration,
    /// What discovery gives as the server's address.
    addr: SocketAddr,
}

/// A running stand-in. Dropping it stops it.
pub struct StandIn {
    shared: Arc<Shared>,
    tls: tokio_rustls::TlsAcceptor,
    tasks: Arc<Mutex<JoinSet<()>>>,
    pub addr: SocketAddr,
    pub pki: Pki,
}

/// Settings with defaults a test may change.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often watches that asked for them get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Events kept for watches that resume from a resourceVersion (older ones get 410).
    pub event_log: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bookmark_interval: Duration::from_secs(2),
            event_log: 10_000,
        }
    }
}

impl StandIn {
    /// Serves on `listener` (bound wherever the test wants it: a socket keeps the network
    /// namespace it was made in) with certificates from `pki`. Needs a tokio runtime.
    pub fn start(listener: std::net::TcpListener, pki: Pki, options: Options) -> Result<StandIn> {
        let addr = listener.local_addr()?;
        let tls = tokio_rustls::TlsAcceptor::from(pki.server_config()?);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(options.event_log)),
            token: pki.token.clone(),
            bookmark_interval: options.bookmark_interval,
            addr,
        });
        let s = StandIn {
            shared,
            tls,
            tasks: Arc::default(),
            addr,
            pki,
        };
        s.serve(listener)?;
        Ok(s)
    }

    fn serve(&self, listener: std::net::TcpListener) -> Result<()> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (shared, tls, tasks) = (self.shared.clone(), self.tls.clone(), self.tasks.clone());
        let accept = async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (shared, tls) = (shared.clone(), tls.clone());
                let conn = async move {
                    let Ok(stream) = tls.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                };
                tasks.lock().expect("not poisoned").spawn(conn);
            }
        };
        self.tasks.lock().expect("not poisoned").spawn(accept);
        Ok(())
    }

    /// Stops answering: the listener closes and every connection (watches too) is cut, as when
    /// the API server goes down. The objects stay.
    pub fn stop(&self) {
        self.tasks.lock().expect("not poisoned").abort_all();
    }

    /// Answers again on `listener` (bind it to [`StandIn::addr`] to come back where clients
    /// look).
    pub fn resume(&self, listener: std::net::TcpListener) -> Result<()> {
        self.serve(listener)
    }

    /// Direct access to the objects, for tests to set up and inspect without a client.
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        f(&mut self.shared.store.lock().expect("not poisoned"))
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
    }
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed_unsync())
        .expect("a valid response")
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

/// Percent-decodes a query component (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// A boolean query parameter as the API server reads it (Go's `strconv.ParseBool`: the
/// Python client sends `True`).
fn truthy(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// Where a request goes, from its path.
enum Target {
    Discovery(Value),
    Collection {
        r: Resource,
        ns: Option<String>,
    },
    Item {
        r: Resource,
        ns: String,
        name: String,
    },
}

fn resource_list(group_version: &str) -> Value {
    let verbs = json!([
        "create", "delete", "get", "list", "patch", "update", "watch"
    ]);
    let mut resources = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.api_version == group_version) {
        resources.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": verbs, "shortNames": r.short_names,
        }));
        resources.push(json!({
            "name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
            "kind": r.kind, "verbs": ["get", "patch", "update"],
        }));
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

/// An OpenAPI v3 document for one group version: each kind with a schema that lets any
/// content through, and its write operations saying they take `fieldValidation`, so kubectl
/// leaves validation to the server (which, here, checks no schema) instead of fetching the
/// protobuf OpenAPI v2 document the stand-in does not serve.
fn openapi(group_version: &str) -> Value {
    let (group, version) = group_version.split_once('/').unwrap_or(("", group_version));
    let prefix = if group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{group_version}")
    };
    let mut schemas = serde_json::Map::new();
    let mut paths = serde_json::Map::new();
    for r in RESOURCES.iter().filter(|r| r.api_version == group_version) {
        let gvk = json!([{"group": group, "kind": r.kind, "version": version}]);
        let g = if group.is_empty() {
            "core"
        } else {
            group.split('.').next().unwrap_or(group)
        };
        schemas.insert(
            format!("io.k8s.api.{g}.{version}.{}", r.kind),
            json!({
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "x-kubernetes-group-version-kind": gvk,
            }),
        );
        // On operations the extension is one object; on schemas, a list.
        let op = json!({
            "x-kubernetes-group-version-kind": gvk[0],
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "OK"}},
        });
        let base = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{prefix}/{}", r.plural)
        };
        paths.insert(base.clone(), json!({"post": op}));
        paths.insert(format!("{base}/{{name}}"), json!({"put": op, "patch": op}));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (weft stand-in)", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn route(shared: &Shared, path: &str) -> ApiResult<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    };
    let net = "networking.k8s.io";
    let group = json!({
        "name": net,
        "versions": [{"groupVersion": format!("{net}/v1"), "version": "v1"}],
        "preferredVersion": {"groupVersion": format!("{net}/v1"), "version": "v1"},
    });
    let (gv, rest): (String, &[&str]) = match segs.as_slice() {
        ["version"] => {
            return Ok(Target::Discovery(json!({
                "major": "1", "minor": "32", "gitVersion": "v1.32.0-weft-standin",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23", "compiler": "gc",
                "platform": "linux/amd64",
            })));
        }
        ["openapi", "v3"] => {
            let paths: serde_json::Map<String, Value> =
                ["api/v1".to_string(), format!("apis/{net}/v1")]
                    .into_iter()
                    .map(|p| {
                        (
                            p.clone(),
                            json!({"serverRelativeURL": format!("/openapi/v3/{p}")}),
                        )
                    })
                    .collect();
            return Ok(Target::Discovery(json!({ "paths": paths })));
        }
        ["openapi", "v3", "api", "v1"] => return Ok(Target::Discovery(openapi("v1"))),
        ["openapi", "v3", "apis", g, "v1"] if *g == net => {
            return Ok(Target::Discovery(openapi(&format!("{net}/v1"))));
        }
        ["api"] => {
            return Ok(Target::Discovery(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}],
            })));
        }
        ["apis"] => {
            return Ok(Target::Discovery(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}),
            ));
        }
        ["apis", g] if *g == net => {
            let mut g = group;
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            return Ok(Target::Discovery(g));
        }
        ["api", "v1"] => return Ok(Target::Discovery(resource_list("v1"))),
        ["apis", g, "v1"] if *g == net => {
            return Ok(Target::Discovery(resource_list(&format!("{net}/v1"))));
        }
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", g, "v1", rest @ ..] if *g == net => (format!("{net}/v1"), rest),
        _ => return Err(not_found()),
    };
    let res = |plural: &str| store::resource(&gv, plural).ok_or_else(not_found);
    match rest {
        // A namespace itself (before the namespaced shapes, which are longer).
        [p] => Ok(Target::Collection {
            r: res(p)?,
            ns: None,
        }),
        [p, name] | [p, name, "status"] => Ok(Target::Item {
            r: res(p)?,
            ns: String::new(),
            name: name.to_string(),
        }),
        ["namespaces", ns, p] => Ok(Target::Collection {
            r: res(p)?,
            ns: Some(ns.to_string()),
        }),
        ["namespaces", ns, p, name] | ["namespaces", ns, p, name, "status"] => Ok(Target::Item {
            r: res(p)?,
            ns: ns.to_string(),
            name: name.to_string(),
        }),
        _ => Err(not_found()),
    }
}

async fn read_json(req: Request<Incoming>) -> ApiResult<(String, Value)> {
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    // Protobuf and CBOR bodies are refused as a server without them would: clients that
    // prefer them (kubectl create) fall back to JSON on a 415.
    if !ctype.contains("json") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of type {ctype} is not supported: send JSON"),
        ));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::new(400, "BadRequest", e.to_string()))?
        .to_bytes();
    let v = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(400, "BadRequest", format!("the body is not JSON: {e}")))?;
    Ok((ctype, v))
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    match serve(shared, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn serve(shared: &Arc<Shared>, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", shared.token) {
        return Err(ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    let q = query(&req);
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let target = route(shared, &path)?;
    let lock = || shared.store.lock().expect("not poisoned");
    match (target, method) {
        (Target::Discovery(v), Method::GET) => Ok(json_response(200, &v)),
        (Target::Collection { r, ns }, Method::GET) => {
            let filter = Filter {
                namespace: ns.filter(|_| r.namespaced),
                labels: store::parse_selector(q.get("labelSelector").map_or("", String::as_str))?,
                fields: store::parse_selector(q.get("fieldSelector").map_or("", String::as_str))?,
            };
            if q.get("watch").is_some_and(|w| truthy(w)) {
                return Ok(watch(shared, r, filter, &q));
            }
            Ok(json_response(200, &lock().list(&r, &filter)))
        }
        (Target::Collection { r, ns }, Method::POST) => {
            let (_, body) = read_json(req).await?;
            let ns = ns.unwrap_or_default();
            Ok(json_response(201, &lock().create(&r, &ns, body)?))
        }
        (Target::Item { r, ns, name }, Method::GET) => {
            Ok(json_response(200, &lock().get(&r, &ns, &name)?))
        }
        (Target::Item { r, ns, name }, Method::PUT) => {
            let (_, body) = read_json(req).await?;
            Ok(json_response(200, &lock().update(&r, &ns, &name, body)?))
        }
        (Target::Item { r, ns, name }, Method::PATCH) => {
            let (ctype, patch) = read_json(req).await?;
            let o = if ctype.starts_with("application/json-patch+json") {
                lock().patch(&r, &ns, &name, |o| store::json_patch(o, &patch))?
            } else if ctype.starts_with("application/merge-patch+json")
                || ctype.starts_with("application/strategic-merge-patch+json")
            {
                lock().patch(&r, &ns, &name, |o| {
                    store::merge_patch(o, &patch);
                    Ok(())
                })?
            } else {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the stand-in takes JSON, merge and strategic merge patches, not {ctype}"
                    ),
                ));
            };
            Ok(json_response(200, &o))
        }
        (Target::Item { r, ns, name }, Method::DELETE) => {
            Ok(json_response(200, &lock().delete(&r, &ns, &name)?))
        }
        (_, m) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{m} is not supported here ({path})"),
        )),
    }
}

/// A watch stream: one JSON event per line, until the client goes, the timeout passes, or it
/// falls too far behind (then it ends, and the client watches again from its last version).
fn watch(
    shared: &Arc<Shared>,
    r: Resource,
    filter: Filter,
    q: &HashMap<String, String>,
) -> Response<Body> {
    let from = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse::<u64>().ok());
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| truthy(v));
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let line = |v: Value| Bytes::from(format!("{v}\n"));
    let start = shared
        .store
        .lock()
        .expect("not poisoned")
        .watch(&r, &filter, from);
    let interval = shared.bookmark_interval;
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut start = match start {
            Ok(s) => s,
            Err(e) => {
                let _ = tx
                    .send(line(json!({"type": "ERROR", "object": e.status()})))
                    .await;
                return;
            }
        };
        let mut last = from.unwrap_or(0);
        for e in start.initial {
            last = last.max(e.rv);
            if tx.send(line(e.to_json())).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                e = start.live.recv() => match e {
                    Ok(e) if e.rv > last && e.resource == r && filter.matches(&e.object) => {
                        last = e.rv;
                        if tx.send(line(e.to_json())).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let rv = shared.store.lock().expect("not poisoned").resource_version();
                    let b = json!({"type": "BOOKMARK", "object": {
                        "kind": r.kind, "apiVersion": r.api_version,
                        "metadata": {"resourceVersion": rv.to_string()},
                    }});
                    if tx.send(line(b)).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn query_components_are_decoded() {
        assert_eq!(decode("app%3Dweb%2Ctier%21%3Ddb"), "app=web,tier!=db");
        assert_eq!(decode("a+b%"), "a b%");
    }
}
