//! The IP allocation endpoints, in the shapes of Weave's API (§3.2 of the inventory):
//!
//! | request | meaning | answer |
//! |---|---|---|
//! | `POST /ip/{id}` | allocate in the default subnet (idempotent per id) | `10.32.0.1/12` |
//! | `POST /ip/{id}/{ip}/{len}` | allocate in that subnet | `10.40.0.1/16` |
//! | `PUT /ip/{id}/{ip}[/{len}]` | claim exactly that address | 204 |
//! | `GET /ip/{id}[/{ip}/{len}]` | the id's addresses (in the subnet); 404 if none | space-separated CIDRs |
//! | `DELETE /ip/{id}[/{ip}]` | release all (or one) | 204 |
//! | `GET /ring` | wait until IP allocation is initialised | 200 |
//! | `GET /ipinfo/defaultsubnet` | the default subnet | `10.32.0.0/12` |
//! | `DELETE /peer/{name-or-nickname}` | take over a dead peer's ranges | `N IPs taken over from X` |

use std::net::Ipv4Addr;

use axum::Router as Http;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use ipnet::Ipv4Net;

use super::{ApiError, no_content};
use crate::service::Service;

type S = State<Service>;

pub(super) fn routes() -> Http<Service> {
    Http::new()
        .route("/ip/{id}", post(allocate).get(lookup).delete(release))
        .route(
            "/ip/{id}/{ip}",
            axum::routing::put(claim_default).delete(release_one),
        )
        .route(
            "/ip/{id}/{ip}/{len}",
            post(allocate_in).put(claim).get(lookup_in),
        )
        .route("/ring", get(prime))
        .route("/ipinfo/defaultsubnet", get(default_subnet))
        .route("/peer/{id}", delete(rmpeer))
}

fn subnet(ip: &str, len: &str) -> Result<Ipv4Net, ApiError> {
    let bad = || ApiError::bad_request(format!("invalid subnet {ip}/{len}"));
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    Ipv4Net::new(ip, len).map_err(|_| bad())
}

fn address(ip: &str) -> Result<Ipv4Addr, ApiError> {
    ip.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid address {ip}")))
}

fn cidr_text(n: Ipv4Net) -> Response {
    format!("{n}\n").into_response()
}

async fn allocate(State(service): S, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(cidr_text(service.allocate(id, None).await?))
}

async fn allocate_in(
    State(service): S,
    Path((id, ip, len)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let s = subnet(&ip, &len)?;
    Ok(cidr_text(service.allocate(id, Some(s)).await?))
}

async fn claim(
    State(service): S,
    Path((id, ip, len)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let net = subnet(&ip, &len)?;
    service.claim(id, net).await?;
    Ok(no_content())
}

/// `PUT /ip/{id}/{ip}`: the prefix length of the default subnet.
async fn claim_default(
    State(service): S,
    Path((id, ip)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let net =
        Ipv4Net::new(address(&ip)?, service.default_subnet.prefix_len()).expect("valid prefix");
    service.claim(id, net).await?;
    Ok(no_content())
}

async fn do_lookup(
    service: &Service,
    ident: String,
    subnet: Option<Ipv4Net>,
) -> Result<Response, ApiError> {
    let nets = service.lookup(ident.clone(), subnet).await?;
    // As Weave's API: an id holding nothing (never allocated, or released) is not found.
    if nets.is_empty() {
        return Err(ApiError::not_found(format!("no addresses for {ident}")));
    }
    let text: Vec<String> = nets.iter().map(ToString::to_string).collect();
    Ok(format!("{}\n", text.join(" ")).into_response())
}

async fn lookup(State(service): S, Path(id): Path<String>) -> Result<Response, ApiError> {
    let d = service.default_subnet;
    do_lookup(&service, id, Some(d)).await
}

async fn lookup_in(
    State(service): S,
    Path((id, ip, len)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let s = subnet(&ip, &len)?;
    do_lookup(&service, id, Some(s)).await
}

async fn do_release(
    service: &Service,
    ident: String,
    addr: Option<Ipv4Addr>,
) -> Result<Response, ApiError> {
    let freed = service.release(ident.clone(), addr).await?;
    if freed.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Delete: no addresses for {ident}"
        )));
    }
    Ok(no_content())
}

async fn release(State(service): S, Path(id): Path<String>) -> Result<Response, ApiError> {
    do_release(&service, id, None).await
}

async fn release_one(
    State(service): S,
    Path((id, ip)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let addr = address(&ip)?;
    do_release(&service, id, Some(addr)).await
}

async fn prime(State(service): S) -> Result<Response, ApiError> {
    service.prime().await?;
    Ok(StatusCode::OK.into_response())
}

async fn default_subnet(State(service): S) -> Response {
    format!("{}\n", service.default_subnet).into_response()
}

async fn rmpeer(State(service): S, Path(id): Path<String>) -> Result<Response, ApiError> {
    let n = service.rmpeer(id.clone()).await?;
    Ok(format!("{n} IPs taken over from {id}\n").into_response())
}
