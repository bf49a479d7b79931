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
use std::sync::Arc;

use axum::Router as Http;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use ipnet::Ipv4Net;
use tokio::sync::oneshot;
use weft_core::ipam::IpamError;

use crate::api::{ApiError, App, ask_control};
use crate::control::{ControlInput, IpamCmd};

pub fn routes() -> Http<Arc<App>> {
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

/// Sends an IPAM command to the control task and waits for the answer.
pub async fn ipam<T>(
    app: &App,
    make: impl FnOnce(oneshot::Sender<T>) -> IpamCmd,
) -> Result<T, ApiError> {
    ask_control(app, |tx| ControlInput::Ipam(make(tx))).await
}

pub fn ipam_error(e: IpamError) -> ApiError {
    let status = match &e {
        IpamError::InUse { .. } | IpamError::OwnedByPeer { .. } | IpamError::Cancelled => {
            StatusCode::CONFLICT
        }
        IpamError::OutOfRange { .. } | IpamError::InvalidSubnet(_) => StatusCode::BAD_REQUEST,
        IpamError::Timeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
        IpamError::Refused(_) => StatusCode::NOT_FOUND,
    };
    ApiError::new(status, e.to_string())
}

fn subnet(ip: &str, len: &str) -> Result<Ipv4Net, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid subnet {ip}/{len}"),
        )
    };
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    Ipv4Net::new(ip, len).map_err(|_| bad())
}

fn cidr_text(n: Ipv4Net) -> Response {
    format!("{n}\n").into_response()
}

async fn do_allocate(
    app: &App,
    ident: String,
    subnet: Option<Ipv4Net>,
) -> Result<Response, ApiError> {
    let r = ipam(app, |reply| IpamCmd::Allocate {
        ident,
        subnet,
        reply,
    })
    .await?;
    r.map(cidr_text).map_err(ipam_error)
}

async fn allocate(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    do_allocate(&app, id, None).await
}

async fn allocate_in(
    State(app): State<Arc<App>>,
    Path((id, ip, len)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let s = subnet(&ip, &len)?;
    do_allocate(&app, id, Some(s)).await
}

async fn do_claim(app: &App, ident: String, net: Ipv4Net) -> Result<Response, ApiError> {
    // Outside the range: nothing for the ring to record or agree on.
    if !app.allocator_owns(&net) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let r = ipam(app, |reply| IpamCmd::Claim { ident, net, reply }).await?;
    r.map(|_| StatusCode::NO_CONTENT.into_response())
        .map_err(ipam_error)
}

async fn claim(
    State(app): State<Arc<App>>,
    Path((id, ip, len)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let net = subnet(&ip, &len)?;
    do_claim(&app, id, net).await
}

/// `PUT /ip/{id}/{ip}`: the prefix length of the default subnet.
async fn claim_default(
    State(app): State<Arc<App>>,
    Path((id, ip)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let addr: Ipv4Addr = ip
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid address {ip}")))?;
    let net = Ipv4Net::new(addr, app.default_subnet.prefix_len()).expect("valid prefix");
    do_claim(&app, id, net).await
}

async fn do_lookup(
    app: &App,
    ident: String,
    subnet: Option<Ipv4Net>,
) -> Result<Response, ApiError> {
    let id = ident.clone();
    let nets = ipam(app, |reply| IpamCmd::Lookup {
        ident,
        subnet,
        reply,
    })
    .await?;
    // As Weave's API: an id holding nothing (never allocated, or released) is not found.
    if nets.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no addresses for {id}"),
        ));
    }
    let text: Vec<String> = nets.iter().map(ToString::to_string).collect();
    Ok(format!("{}\n", text.join(" ")).into_response())
}

async fn lookup(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let d = app.default_subnet;
    do_lookup(&app, id, Some(d)).await
}

async fn lookup_in(
    State(app): State<Arc<App>>,
    Path((id, ip, len)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let s = subnet(&ip, &len)?;
    do_lookup(&app, id, Some(s)).await
}

async fn do_release(
    app: &App,
    ident: String,
    addr: Option<Ipv4Addr>,
) -> Result<Response, ApiError> {
    let id = ident.clone();
    let freed = ipam(app, |reply| IpamCmd::Release { ident, addr, reply }).await?;
    if freed.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Delete: no addresses for {id}"),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn release(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    do_release(&app, id, None).await
}

async fn release_one(
    State(app): State<Arc<App>>,
    Path((id, ip)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let addr: Ipv4Addr = ip
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid address {ip}")))?;
    do_release(&app, id, Some(addr)).await
}

async fn prime(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let r = ipam(&app, |reply| IpamCmd::Prime { reply }).await?;
    r.map(|_| StatusCode::OK.into_response())
        .map_err(ipam_error)
}

async fn default_subnet(State(app): State<Arc<App>>) -> Response {
    format!("{}\n", app.default_subnet).into_response()
}

async fn rmpeer(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let who = id.clone();
    let r = ipam(&app, |reply| IpamCmd::RmPeer { who, reply }).await?;
    match r {
        Ok(n) => Ok(format!("{n} IPs taken over from {id}\n").into_response()),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string())),
    }
}
