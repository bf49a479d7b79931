//! DNS endpoints, in Weave's shapes:
//!
//! | request | meaning |
//! |---|---|
//! | `PUT /name/{container}/{ip}` with `fqdn=` (query or form) | register a name |
//! | `DELETE /name/{container}/{ip}[?fqdn=]`, `DELETE /name/{container}` | remove our names |
//! | `GET /name` | the live entries (JSON) |
//! | `GET /domain`, `GET /dns-address`, `GET /dns-address-port` | where and what we serve |

use std::net::Ipv4Addr;

use axum::Router as Http;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

use super::{ApiError, form_value, no_content};
use crate::service::Service;

type S = State<Service>;

pub(super) fn routes() -> Http<Service> {
    Http::new()
        .route("/name/{container}/{ip}", put(add).delete(remove_one))
        .route("/name/{container}", axum::routing::delete(remove_all))
        .route("/name", get(entries))
        .route("/domain", get(domain))
        .route("/dns-address", get(address))
        .route("/dns-address-port", get(address_port))
}

fn parse_ip(ip: &str) -> Result<Ipv4Addr, ApiError> {
    ip.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid IPv4 address {ip:?}")))
}

async fn add(
    State(service): S,
    Path((container, ip)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let addr = parse_ip(&ip)?;
    let fqdn = form_value(q, &body, "fqdn")
        .ok_or_else(|| ApiError::bad_request("missing fqdn (e.g. fqdn=web.weave.local.)"))?;
    service.dns_add(container, addr, &fqdn).await?;
    Ok(no_content())
}

async fn remove_one(
    State(service): S,
    Path((container, ip)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let addr = parse_ip(&ip)?;
    let fqdn = form_value(q, &Bytes::new(), "fqdn");
    service.dns_remove(container, Some(addr), fqdn).await?;
    Ok(no_content())
}

async fn remove_all(
    State(service): S,
    Path(container): Path<String>,
) -> Result<Response, ApiError> {
    service.dns_remove(container, None, None).await?;
    Ok(no_content())
}

async fn entries(State(service): S) -> Result<Response, ApiError> {
    Ok(axum::Json(service.dns_entries()?).into_response())
}

async fn domain(State(service): S) -> Result<Response, ApiError> {
    Ok(format!("{}\n", service.dns_domain()?).into_response())
}

async fn address(State(service): S) -> Result<Response, ApiError> {
    let a = service.dns_address().await?;
    Ok(format!("{}\n", a.ip()).into_response())
}

async fn address_port(State(service): S) -> Result<Response, ApiError> {
    let a = service.dns_address().await?;
    Ok(format!("{a}\n").into_response())
}
