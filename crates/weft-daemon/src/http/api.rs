//! weft's own endpoints: status, report, metrics, peers, passwords, containers and the
//! host's addresses.

use axum::Router as Http;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use weft_api::render;
use weft_api::types::*;

use super::{ApiError, json_body};
use crate::service::Service;

type S = State<Service>;

/// The read-only part of the API: status, report, metrics (also served on `--status-addr`).
pub fn read_only_router(service: Service) -> Http {
    read_only().with_state(service)
}

fn read_only() -> Http<Service> {
    Http::new()
        .route("/status", get(status))
        .route("/status/{sub}", get(status_sub))
        .route("/report", get(report))
        .route("/metrics", get(metrics))
}

/// Only `/metrics` (for `--metrics-addr`, which may face a scraper on the network).
pub fn metrics_router(service: Service) -> Http {
    Http::new()
        .route("/metrics", get(metrics))
        .with_state(service)
}

pub(super) fn routes() -> Http<Service> {
    read_only()
        .route("/connect", post(connect))
        .route("/forget", post(forget))
        .route("/attach", post(attach))
        .route("/detach", post(detach))
        .route("/ps", get(ps))
        .route("/expose", post(expose))
        .route("/hide", post(hide))
        .route("/peer", delete(leave))
        .route("/password", post(password))
        .route("/proxyaddrs", get(proxy_addrs))
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn status(State(service): S) -> Result<Response, ApiError> {
    let r = service.report().await?;
    Ok(text(render::status(&r)))
}

async fn status_sub(State(service): S, Path(sub): Path<String>) -> Result<Response, ApiError> {
    let r = service.report().await?;
    let body = match sub.as_str() {
        "connections" => render::connections(&r),
        "peers" => render::peers(&r),
        "targets" => render::targets(&r),
        "ipam" => render::ipam(&r),
        "dns" => render::dns(&r),
        other => {
            return Err(ApiError::not_found(format!(
                "Invalid 'weft status' sub-command: {other} (use targets, connections, peers, ipam or dns)"
            )));
        }
    };
    Ok(text(body))
}

async fn metrics(State(service): S) -> Result<Response, ApiError> {
    let body = service.metrics_text().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// `GET /report`: JSON, or with `?format=TEMPLATE` the template's output over it (Weave's
/// `weave report -f`).
async fn report(State(service): S, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let r = service.report().await?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&q.unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?;
    let formats: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k == "format")
        .map(|(_, v)| v)
        .collect();
    match formats.as_slice() {
        [] => {
            let body = serde_json::to_string_pretty(&r).expect("report serializes");
            Ok(([(header::CONTENT_TYPE, "application/json")], body + "\n").into_response())
        }
        [t] => {
            let v = serde_json::to_value(&r).expect("report serializes");
            weft_api::template::render(t, &v)
                .map(IntoResponse::into_response)
                .map_err(|e| ApiError::bad_request(e.to_string()))
        }
        _ => Err(ApiError::bad_request(
            "error: must supply one format parameter",
        )),
    }
}

/// Reads a peers request as JSON, or as a form/query with repeated `peer=` keys (as Weave's
/// API takes it).
fn peers_request(
    headers: &HeaderMap,
    query: Option<String>,
    body: &Bytes,
) -> Result<PeersRequest, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return json_body(body);
    }
    let mut req = PeersRequest::default();
    let form = [
        query.unwrap_or_default(),
        String::from_utf8_lossy(body).into_owned(),
    ];
    for part in form {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&part)
            .map_err(|e| ApiError::bad_request(format!("bad form: {e}")))?;
        for (k, v) in pairs {
            match k.as_str() {
                "peer" => req.peers.push(v),
                "replace" => req.replace = v == "true",
                _ => {}
            }
        }
    }
    Ok(req)
}

async fn connect(
    State(service): S,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = peers_request(&headers, q, &body)?;
    service.connect(&req.peers, req.replace).await?;
    Ok(StatusCode::OK.into_response())
}

async fn forget(
    State(service): S,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = peers_request(&headers, q, &body)?;
    service.forget(req.peers).await?;
    Ok(StatusCode::OK.into_response())
}

/// `POST /password`: add, use or drop a password at run time (see `weft password`).
async fn password(State(service): S, body: Bytes) -> Result<Response, ApiError> {
    let req: PasswordRequest = json_body(&body)?;
    let accepted = service.password(&req.action, &req.password).await?;
    Ok(axum::Json(PasswordResponse { accepted }).into_response())
}

async fn attach(State(service): S, body: Bytes) -> Result<Response, ApiError> {
    let req: AttachRequest = json_body(&body)?;
    Ok(axum::Json(service.attach(req).await?).into_response())
}

/// Detach: `net:` arguments mean "the container's addresses in that subnet".
async fn detach(State(service): S, body: Bytes) -> Result<Response, ApiError> {
    let req: DetachRequest = json_body(&body)?;
    Ok(axum::Json(service.detach(req).await?).into_response())
}

/// `weft expose`: addresses for the host itself on the bridge.
async fn expose(State(service): S, body: Bytes) -> Result<Response, ApiError> {
    let req: ExposeRequest = json_body(&body)?;
    Ok(axum::Json(service.expose(req).await?).into_response())
}

/// `weft hide`: removes the host's addresses from the bridge (all, or those given).
async fn hide(State(service): S, body: Bytes) -> Result<Response, ApiError> {
    let req: ExposeRequest = json_body(&body)?;
    Ok(axum::Json(service.hide(req).await?).into_response())
}

async fn ps(State(service): S, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&q.unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?;
    let only: Vec<String> = pairs
        .into_iter()
        .filter(|(k, _)| k == "container")
        .map(|(_, v)| v)
        .collect();
    Ok(axum::Json(service.ps(only).await?).into_response())
}

/// `DELETE /peer`: this peer is leaving the mesh for good (`weft reset`): its address ranges
/// go to a live peer. Answers once the hand-over has been sent.
async fn leave(State(service): S) -> Result<Response, ApiError> {
    Ok(match service.leave().await? {
        Some(h) => format!("address ranges handed over to {h}\n").into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// `GET /proxyaddrs`: the Docker proxy's addresses, one per line (Weave's; `weft env` uses it).
async fn proxy_addrs(State(service): S) -> Response {
    let mut s = service.docker_status.proxy_addrs.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s.into_response()
}
