//! Every HTTP server the daemon runs, each a thin adapter over the [`Service`]: weft's own API
//! (default `127.0.0.1:6784`: status text in Weave's layouts, the JSON report, metrics, and
//! the control endpoints the CLI and the CNI plugin use), the Docker API proxy, and the Docker
//! network plugin. Requests are parsed here, answered by the service, and its errors become
//! HTTP statuses in one place ([`ApiError`]'s `From<ServiceError>`).
//!
//! weft's API answers errors with a status code and a one-line plain-text reason that the CLI
//! prints as is, so every message must say what went wrong and, where it can, what to do.

mod api;
mod dns;
pub mod docker_proxy;
mod ipam;
pub mod plugin;

use std::net::SocketAddr;

use axum::Router as Http;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use weft_core::ipam::{IpamError, RmPeerError};

use crate::attach::AttachError;
use crate::service::{Service, ServiceError};

pub use api::{metrics_router, read_only_router};

/// weft's whole API: read-only parts, controls, IP allocation and DNS, served at `local`.
/// Serve it with `into_make_service_with_connect_info::<SocketAddr>()`: requests that change
/// the network are checked against who sent them (see [`privileged_only`]).
pub fn router(service: Service, local: SocketAddr) -> Http {
    api::routes()
        .merge(ipam::routes())
        .merge(dns::routes())
        .with_state(service)
        .layer(axum::middleware::from_fn_with_state(
            Callers {
                local,
                own_uid: weft_linux::peer::own_uid(),
            },
            privileged_only,
        ))
}

/// What the caller check needs: where the API listens, and the router's own uid (its user
/// may change what the router does).
#[derive(Clone, Copy)]
struct Callers {
    local: SocketAddr,
    own_uid: Option<u32>,
}

/// Requests that change the network (any method but GET and HEAD: attach, detach, passwords,
/// IP release, DNS, reset's hand-over...) come from root or the router's own user: an
/// unprivileged local user reading status over loopback, as in Weave, is fine; one changing
/// the network is not. A caller on another host (a non-loopback `--http-addr`, warned about at
/// launch) has no local identity to check.
async fn privileged_only(
    State(callers): State<Callers>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method();
    if method == Method::GET || method == Method::HEAD || !remote.ip().is_loopback() {
        return next.run(req).await;
    }
    match weft_linux::peer::tcp_uid(remote, callers.local) {
        Some(uid) if uid == 0 || Some(uid) == callers.own_uid => next.run(req).await,
        who => ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "changing the network needs root (this request came from {}): run the command with sudo",
                who.map_or("an unknown user".to_string(), |u| format!("uid {u}"))
            ),
        }
        .into_response(),
    }
}

/// An error answer: a status and a one-line reason.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.message;
        body.push('\n');
        (self.status, body).into_response()
    }
}

/// What each service error means in HTTP: the one place that decides.
pub fn status_of(e: &ServiceError) -> StatusCode {
    match e {
        ServiceError::Invalid(_) | ServiceError::IpamDisabled | ServiceError::Name(_) => {
            StatusCode::BAD_REQUEST
        }
        ServiceError::NotFound(_) | ServiceError::DnsDisabled => StatusCode::NOT_FOUND,
        ServiceError::Conflict(_) | ServiceError::Password(_) => StatusCode::CONFLICT,
        ServiceError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Ipam(e) => match e {
            IpamError::InUse { .. } | IpamError::OwnedByPeer { .. } | IpamError::Cancelled => {
                StatusCode::CONFLICT
            }
            IpamError::OutOfRange { .. } | IpamError::InvalidSubnet(_) => StatusCode::BAD_REQUEST,
            IpamError::Timeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            IpamError::Refused(_) => StatusCode::NOT_FOUND,
            IpamError::NotDurable(_) => StatusCode::SERVICE_UNAVAILABLE,
        },
        ServiceError::RmPeer(e) => match e {
            // The peer is alive: try again once it is gone (weft-kube's reclaim does).
            RmPeerError::Reachable(_) => StatusCode::CONFLICT,
            RmPeerError::Unknown(_) => StatusCode::NOT_FOUND,
            RmPeerError::Ourselves | RmPeerError::Ambiguous(_) | RmPeerError::Disabled => {
                StatusCode::BAD_REQUEST
            }
        },
        ServiceError::Attach(e) => match e {
            AttachError::NotFound(_) => StatusCode::NOT_FOUND,
            AttachError::Invalid(_) => StatusCode::BAD_REQUEST,
            AttachError::Conflict(_) => StatusCode::CONFLICT,
            AttachError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        },
        ServiceError::Firewall(_) | ServiceError::HostsFile { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError {
            status: status_of(&e),
            message: e.to_string(),
        }
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("bad request body: {e}")))
}

/// `key=value` from the query string or a form body (the query first), as Weave's API reads.
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

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_keep_their_statuses() {
        let cases = [
            (ServiceError::Invalid("x".into()), 400),
            (ServiceError::NotFound("x".into()), 404),
            (ServiceError::Conflict("x".into()), 409),
            (ServiceError::DnsDisabled, 404),
            (ServiceError::IpamDisabled, 400),
            (ServiceError::ShuttingDown, 503),
            (ServiceError::Password("x".into()), 409),
            (ServiceError::Firewall(crate::host::HostError::Stopped), 500),
        ];
        for (e, code) in cases {
            assert_eq!(status_of(&e).as_u16(), code, "{e}");
        }
    }
}
