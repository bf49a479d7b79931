//! DNS endpoints, in Weave's shapes:
//!
//! | request | meaning |
//! |---|---|
//! | `PUT /name/{container}/{ip}` with `fqdn=` (query or form) | register a name |
//! | `DELETE /name/{container}/{ip}[?fqdn=]`, `DELETE /name/{container}` | remove our names |
//! | `GET /name` | the live entries (JSON) |
//! | `GET /domain`, `GET /dns-address`, `GET /dns-address-port` | where and what we serve |

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Router as Http;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use tokio::sync::oneshot;
use weft_api::types::DnsEntryReport;

use crate::api::{ApiError, App, ask_control};
use crate::control::{ControlInput, DnsCmd};

pub fn routes() -> Http<Arc<App>> {
    Http::new()
        .route("/name/{container}/{ip}", put(add).delete(remove_one))
        .route("/name/{container}", axum::routing::delete(remove_all))
        .route("/name", get(entries))
        .route("/domain", get(domain))
        .route("/dns-address", get(address))
        .route("/dns-address-port", get(address_port))
}

fn disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "weftDNS is disabled (launched with --no-dns)",
    )
}

pub async fn dns_cmd<T>(
    app: &App,
    make: impl FnOnce(oneshot::Sender<T>) -> DnsCmd,
) -> Result<T, ApiError> {
    if app.dns.is_none() {
        return Err(disabled());
    }
    ask_control(app, |tx| ControlInput::Dns(make(tx))).await
}

/// Registers `hostname` for each address; errors (e.g. outside the domain) are reported.
pub async fn register(
    app: &App,
    hostname: &str,
    container: &str,
    addrs: &[Ipv4Addr],
) -> Result<(), ApiError> {
    for a in addrs {
        dns_cmd(app, |reply| DnsCmd::Add {
            hostname: hostname.to_string(),
            container: container.to_string(),
            addr: *a,
            reply,
        })
        .await?
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    }
    Ok(())
}

/// Removes our names for a container (all, or for one address).
pub async fn unregister(app: &App, container: &str, addr: Option<Ipv4Addr>) {
    if app.dns.is_some() {
        let _ = dns_cmd(app, |reply| DnsCmd::Remove {
            container: container.to_string(),
            addr,
            hostname: None,
            reply,
        })
        .await;
    }
}

/// The ident names are filed under: an attached container's, else the reference as given
/// (e.g. `weave:extern`); a Docker container's name stands for its id.
async fn ident_of(app: &App, container: String) -> String {
    let (spec, docker) = match crate::docker::resolve(app, &container).await {
        Ok(r) => r,
        Err(_) => return container,
    };
    match app.attacher.identify(&spec).await {
        Ok(id) if docker.is_none() || id != spec => id,
        _ => docker.map_or(container, |c| c.id),
    }
}

fn form_value(query: Option<String>, body: &Bytes, key: &str) -> Option<String> {
    for part in [
        query.unwrap_or_default(),
        String::from_utf8_lossy(body).into_owned(),
    ] {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&part).unwrap_or_default();
        if let Some((_, v)) = pairs.into_iter().find(|(k, _)| k == key) {
            return Some(v);
        }
    }
    None
}

fn parse_ip(ip: &str) -> Result<Ipv4Addr, ApiError> {
    ip.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid IPv4 address {ip:?}"),
        )
    })
}

async fn add(
    State(app): State<Arc<App>>,
    Path((container, ip)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let addr = parse_ip(&ip)?;
    let fqdn = form_value(q, &body, "fqdn").ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing fqdn (e.g. fqdn=web.weave.local.)",
        )
    })?;
    let ident = ident_of(&app, container).await;
    register(&app, &fqdn, &ident, &[addr]).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn remove_one(
    State(app): State<Arc<App>>,
    Path((container, ip)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let addr = parse_ip(&ip)?;
    let fqdn = form_value(q, &Bytes::new(), "fqdn");
    let container = ident_of(&app, container).await;
    dns_cmd(&app, |reply| DnsCmd::Remove {
        container,
        addr: Some(addr),
        hostname: fqdn,
        reply,
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn remove_all(
    State(app): State<Arc<App>>,
    Path(container): Path<String>,
) -> Result<Response, ApiError> {
    let container = ident_of(&app, container).await;
    dns_cmd(&app, |reply| DnsCmd::Remove {
        container,
        addr: None,
        hostname: None,
        reply,
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The live entries, as JSON.
pub fn entry_reports(app: &App) -> Vec<DnsEntryReport> {
    let Some(shared) = &app.dns else {
        return Vec::new();
    };
    let records = shared.records.read().expect("records lock").clone();
    records
        .live()
        .map(|e| DnsEntryReport {
            hostname: e.hostname.clone(),
            origin: e.origin.to_string(),
            container_id: e.container.clone(),
            address: Ipv4Addr::from(e.addr).to_string(),
            version: e.version,
            tombstone: e.tombstone,
        })
        .collect()
}

async fn entries(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    if app.dns.is_none() {
        return Err(disabled());
    }
    Ok(axum::Json(entry_reports(&app)).into_response())
}

async fn domain(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let d = app.dns.as_ref().ok_or_else(disabled)?;
    Ok(format!("{}\n", d.config.domain).into_response())
}

/// The address containers should query: the listen address, or, when listening on all
/// addresses, the host's own overlay address (`weft expose`) or docker0's.
pub async fn container_facing(app: &App) -> Option<SocketAddr> {
    let d = app.dns.as_ref()?;
    let listen = d.config.listen;
    if !listen.ip().is_unspecified() {
        return Some(listen);
    }
    let exposed = app
        .attacher
        .exposed()
        .await
        .ok()
        .and_then(|(_, n)| n.first().map(|n| n.addr()));
    exposed.map(|ip| SocketAddr::new(IpAddr::V4(ip), listen.port()))
}

async fn address(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let a = address_of(&app).await?;
    Ok(format!("{}\n", a.ip()).into_response())
}

async fn address_port(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let a = address_of(&app).await?;
    Ok(format!("{a}\n").into_response())
}

async fn address_of(app: &App) -> Result<SocketAddr, ApiError> {
    if app.dns.is_none() {
        return Err(disabled());
    }
    container_facing(app).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "the DNS server listens on all addresses but the host has no overlay address yet: run 'weft expose' (or launch with --dns-listen-address)",
        )
    })
}
