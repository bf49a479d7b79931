//! The Docker API proxy: `DOCKER_HOST=unix:///run/weft/weft.sock` (or a `tcp://` address) and
//! every `docker` command goes through weft to the real engine.
//!
//! Requests pass through untouched — bodies streamed both ways, long polls without timeouts,
//! and `attach`/`exec` connection upgrades (101) spliced into a byte pipe — except two:
//! - `POST /containers/create` of a qualifying container is rewritten ([`crate::engine::rewrite`]):
//!   weft-wait as entrypoint, hostname in the weft domain, weftDNS as resolver;
//! - `POST /containers/{id}/start` (and `/restart`) is answered only once the container is
//!   attached; if attaching fails the container is killed and the client gets the reason, so
//!   no container runs unconnected.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::engine::rewrite::{self, CreateSettings};
use crate::engine::{DockerSettings, DockerStatus, Engine, ROUTER_LABEL, tls};
use crate::service::Service;

type Body = BoxBody<Bytes, hyper::Error>;

/// Largest container configuration the proxy reads to rewrite.
const MAX_CREATE_BODY: usize = 16 << 20;

pub struct Proxy {
    pub service: Service,
    pub engine: Arc<Engine>,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A Docker-style error: `{"message": ...}`, which the docker CLI prints.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Where the proxy listens: a unix socket (the default) or TCP (`-H tcp://127.0.0.1:12375`).
pub enum Listener {
    Unix(tokio::net::UnixListener),
    /// With TLS when the proxy has it (`--tls`, `--tlsverify`, or the daemon's settings).
    Tcp(tokio::net::TcpListener, Option<tokio_rustls::TlsAcceptor>),
}

/// Serves one listener until shutdown.
pub async fn serve(proxy: Arc<Proxy>, listener: Listener, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            r = async {
                match &listener {
                    Listener::Unix(l) => l.accept().await.map(|(s, _)| {
                        connection(proxy.clone(), s);
                    }),
                    Listener::Tcp(l, tls) => l.accept().await.map(|(s, peer)| {
                        let _ = s.set_nodelay(true);
                        match tls {
                            None => connection(proxy.clone(), s),
                            Some(acceptor) => {
                                let (acceptor, proxy) = (acceptor.clone(), proxy.clone());
                                // The handshake in the connection's own task: a slow or
                                // silent client holds up no one else.
                                tokio::spawn(async move {
                                    match acceptor.accept(s).await {
                                        Ok(t) => connection(proxy, t),
                                        Err(e) => info!(%peer, "Docker proxy: TLS handshake refused: {e}"),
                                    }
                                });
                            }
                        }
                    }),
                }
            } => r,
            _ = shutdown.changed() => return,
        };
        if let Err(e) = accepted {
            warn!("Docker proxy: accepting a connection failed: {e}");
            // Out of descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Serves one client connection in its own task.
fn connection<S>(proxy: Arc<Proxy>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req).await) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades()
            .await
        {
            debug!("Docker proxy connection: {e}");
        }
    });
}

impl Proxy {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let unversioned = rewrite::unversioned(&path);
        if req.method() == Method::POST && unversioned == "/containers/create" {
            return self.create(req).await;
        }
        if req.method() == Method::POST
            && let Some(id) = rewrite::started_container(&path).map(str::to_string)
        {
            let req = if unversioned.ends_with("/start") {
                self.start_request(req, &id).await
            } else {
                req.map(BodyExt::boxed)
            };
            let resp = self.forward(req).await;
            if !resp.status().is_success() {
                return resp;
            }
            return match self.service.ensure_attached(&id).await {
                Ok(_) => resp,
                Err(e) => {
                    warn!(container = %id, "attaching failed, stopping the container: {e}");
                    self.engine.kill(&id).await;
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!(
                            "weft could not attach container {id} to the network, so it was stopped: {e}"
                        ),
                    )
                }
            };
        }
        if req.method() == Method::GET
            && self.engine.settings.rewrite_inspect
            && let Some(id) = rewrite::inspected_container(&path).map(str::to_string)
        {
            let resp = self.forward(req.map(BodyExt::boxed)).await;
            return self.inspected(resp, &id).await;
        }
        self.forward(req.map(BodyExt::boxed)).await
    }

    /// `--rewrite-inspect`: the engine's answer with the container's weft interface in it.
    async fn inspected(&self, resp: Response<Body>, id: &str) -> Response<Body> {
        if resp.status() != StatusCode::OK {
            return resp;
        }
        let (mut parts, body) = resp.into_parts();
        let Ok(bytes) = Limited::new(body, MAX_CREATE_BODY).collect().await else {
            return error(
                StatusCode::BAD_GATEWAY,
                &format!("reading Docker's answer to inspect {id}"),
            );
        };
        let bytes = bytes.to_bytes();
        let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
            return Response::from_parts(parts, full(bytes));
        };
        let full_id = v
            .get("Id")
            .and_then(Value::as_str)
            .unwrap_or(id)
            .to_string();
        let Some(a) = self.service.attacher.lookup_ident(&full_id).await else {
            return Response::from_parts(parts, full(bytes));
        };
        let Some(first) = a.cidrs.first() else {
            return Response::from_parts(parts, full(bytes));
        };
        rewrite::rewrite_inspect(&mut v, &a.mac, *first);
        let out = Bytes::from(v.to_string());
        parts.headers.remove(TRANSFER_ENCODING);
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
        Response::from_parts(parts, full(out))
    }

    async fn create(&self, req: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let bytes = match Limited::new(body, MAX_CREATE_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the container configuration: {e}"),
                );
            }
        };
        let name = parts.uri.query().and_then(|q| {
            serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                .ok()?
                .into_iter()
                .find(|(k, _)| k == "name")
                .map(|(_, v)| v)
        });
        let body = match self.rewritten(&bytes, name.as_deref()).await {
            Ok(Some(b)) => Bytes::from(b),
            Ok(None) => bytes,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        parts.headers.remove(TRANSFER_ENCODING);
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        self.forward(Request::from_parts(parts, full(body))).await
    }

    /// The rewritten configuration, `None` to pass it on unchanged.
    async fn rewritten(&self, bytes: &[u8], name: Option<&str>) -> Result<Option<Vec<u8>>, String> {
        // Not JSON: the engine says what is wrong with it.
        let Ok(mut body) = serde_json::from_slice::<Value>(bytes) else {
            return Ok(None);
        };
        let s = &self.engine.settings;
        if let Some(why) = rewrite::leave_alone(&body, s.no_default_ipalloc) {
            info!(
                name = name.unwrap_or(""),
                "leaving the container off weft: {why}"
            );
            return Ok(None);
        }
        // Docker would bind-mount a missing file as an empty directory, and the container
        // would fail with "permission denied" for no visible reason.
        if !s.wait_binary.is_file() {
            return Err(format!(
                "weft-wait is missing at {}: weft's Docker proxy needs it to hold containers until they are attached (build it with scripts/build-wait.sh, or relaunch with --wait-binary PATH)",
                s.wait_binary.display()
            ));
        }
        let image = if rewrite::has_entrypoint(&body) {
            None
        } else {
            let img = body.get("Image").and_then(Value::as_str).unwrap_or("");
            match self.engine.image_command(img).await {
                Some(c) => Some(c),
                // The engine answers "No such image" itself (and the CLI may pull it and
                // create again).
                None => return Ok(None),
            }
        };
        let settings = self.settings().await;
        rewrite::rewrite_create(&mut body, name, image, &settings)?;
        Ok(Some(body.to_string().into_bytes()))
    }

    /// How containers made through the proxy are rewritten, as things stand now.
    async fn settings(&self) -> CreateSettings {
        let s = &self.engine.settings;
        let dns = if s.without_dns {
            None
        } else {
            let domain = self
                .service
                .dns
                .as_ref()
                .map(|d| d.config.domain.trim_end_matches('.').to_string());
            let addr = self.service.container_facing_dns().await;
            match (addr, domain) {
                (Some(a), Some(d)) => Some((a.ip(), d)),
                (None, Some(_)) => {
                    warn!(
                        "containers cannot reach weftDNS (it listens on all addresses and the host has no overlay address): run 'weft expose' or launch with --dns-listen-address"
                    );
                    None
                }
                _ => None,
            }
        };
        CreateSettings {
            wait_binary: s.wait_binary.display().to_string(),
            dns,
            no_multicast_route: s.no_multicast_route,
            hostname_from_label: s.hostname_from_label.clone(),
            router_label: Some((ROUTER_LABEL.into(), self.engine.router.clone())),
            hostname_match: self.engine.hostname_match.clone(),
        }
    }

    /// An old client's start body (it carries the HostConfig) for a container our proxy made:
    /// the create rewrite applied to it again (see [`rewrite::rewrite_start`]).
    async fn start_request(&self, req: Request<Incoming>, id: &str) -> Request<Body> {
        if !self.engine.made_by_our_proxy(id).await {
            return req.map(BodyExt::boxed);
        }
        let (mut parts, body) = req.into_parts();
        let bytes = match Limited::new(body, MAX_CREATE_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            // The engine will not get a body it could use either: an empty one it answers.
            Err(_) => Bytes::new(),
        };
        let body = match rewrite::rewrite_start(&bytes, &self.settings().await) {
            Some(b) => {
                debug!(container = %id, "rewrote an old client's start body");
                parts
                    .headers
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Bytes::from(b)
            }
            None => bytes,
        };
        parts.headers.remove(TRANSFER_ENCODING);
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        Request::from_parts(parts, full(body))
    }

    /// Sends the request to the engine and returns its answer, splicing upgraded connections.
    async fn forward(&self, req: Request<Body>) -> Response<Body> {
        let unreachable = |e: std::io::Error| {
            error(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "weft's Docker proxy cannot reach Docker at {}: {e}",
                    self.engine.addr
                ),
            )
        };
        match &self.engine.addr {
            crate::engine::EngineAddr::Unix(p) => match UnixStream::connect(p).await {
                Ok(s) => forward_on(s, req).await,
                Err(e) => unreachable(e),
            },
            crate::engine::EngineAddr::Tcp(hp) => {
                let s = match tokio::net::TcpStream::connect(hp.as_str()).await {
                    Ok(s) => s,
                    Err(e) => return unreachable(e),
                };
                let _ = s.set_nodelay(true);
                let Some(config) = &self.engine.engine_tls else {
                    return forward_on(s, req).await;
                };
                let host = hp.rsplit_once(':').map_or(hp.as_str(), |(h, _)| h);
                let name = match rustls::pki_types::ServerName::try_from(
                    host.trim_matches(|c| c == '[' || c == ']').to_string(),
                ) {
                    Ok(n) => n,
                    Err(e) => return unreachable(std::io::Error::other(e)),
                };
                match tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, s)
                    .await
                {
                    Ok(t) => forward_on(t, req).await,
                    Err(e) => unreachable(e),
                }
            }
        }
    }
}

/// Sends the request over `stream` to the engine and returns its answer, splicing upgraded
/// connections.
async fn forward_on<S>(stream: S, mut req: Request<Body>) -> Response<Body>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    {
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream)).await {
                Ok(x) => x,
                Err(e) => {
                    return error(StatusCode::BAD_GATEWAY, &format!("talking to Docker: {e}"));
                }
            };
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!("Docker connection: {e}");
            }
        });
        let wants_upgrade = req.headers().contains_key(hyper::header::UPGRADE);
        let client_side = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
        let mut resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_GATEWAY, &format!("talking to Docker: {e}")),
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_side) = client_side
        {
            let engine_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_side, engine_side) {
                    Ok((c, e)) => {
                        let (mut c, mut e) = (TokioIo::new(c), TokioIo::new(e));
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut e).await;
                    }
                    Err(e) => debug!("Docker proxy upgrade: {e}"),
                }
            });
        }
        resp.map(BodyExt::boxed)
    }
}

/// Listens on `unix:///path` (or a bare path) or `tcp://host:port`. A unix socket gets the
/// engine socket's mode and owner, so whoever may use Docker may use the proxy. TCP has no TLS
/// here: anyone who reaches it controls the engine, so anything but loopback is warned about.
pub fn listen(
    addr: &str,
    engine: &crate::engine::EngineAddr,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> Result<(Listener, String), String> {
    if let Some(hostport) = addr.strip_prefix("tcp://") {
        let sa: std::net::SocketAddr = hostport.trim_end_matches('/').parse().map_err(|_| {
            format!("-H {addr}: expected tcp://IP:PORT (e.g. tcp://127.0.0.1:12375)")
        })?;
        let l = std::net::TcpListener::bind(sa)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| format!("listening on {addr}: {e}"))?;
        let shown = format!("tcp://{}", l.local_addr().map_or(sa, |a| a));
        if tls.is_none() && !sa.ip().is_loopback() {
            warn!(
                "the Docker proxy listens on {shown} WITHOUT TLS (--insecure-proxy-without-tls): anyone who can reach it controls Docker on this host"
            );
        }
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        return Ok((Listener::Tcp(l, acceptor), shown));
    }
    let path = match addr
        .strip_prefix("unix://")
        .or(addr.starts_with('/').then_some(addr))
    {
        Some(p) => PathBuf::from(p),
        None => {
            return Err(format!(
                "-H {addr}: the proxy listens on unix:///PATH or tcp://IP:PORT (default unix:///run/weft/weft.sock)"
            ));
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path)
        .map_err(|e| format!("listening on {}: {e}", path.display()))?;
    // An engine on TCP has no socket whose mode and owner to copy: the proxy's keeps ours.
    if let crate::engine::EngineAddr::Unix(engine_socket) = engine
        && let Ok(meta) = std::fs::metadata(engine_socket)
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let _ =
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(meta.mode() & 0o777));
        let _ = std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid()));
    }
    Ok((Listener::Unix(l), format!("unix://{}", path.display())))
}

/// Binds every proxy address of `settings` (with TLS where configured), recording what is
/// listened on in `status`; an address that cannot be bound is an error.
pub fn bind(
    settings: &DockerSettings,
    engine: &Engine,
    status: &mut DockerStatus,
) -> Result<Vec<Listener>, String> {
    let tls = settings
        .proxy_tls
        .as_ref()
        .map(tls::TlsSettings::server_config)
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut listeners = Vec::new();
    for addr in &settings.proxy_listen {
        let (l, shown) = listen(addr, &engine.addr, tls.clone())?;
        status.proxy_addrs.push(shown);
        listeners.push(l);
    }
    if !settings.wait_binary.is_file() && !settings.proxy_listen.is_empty() {
        warn!(
            "weft-wait is missing at {}: containers created through the Docker proxy will not start (build it with scripts/build-wait.sh, or give --wait-binary)",
            settings.wait_binary.display()
        );
    }
    info!(
        api = %settings.api,
        proxy = ?status.proxy_addrs,
        plugin = ?status.plugin_driver,
        "Docker integration on"
    );
    Ok(listeners)
}
