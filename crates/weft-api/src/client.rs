//! A small HTTP/1.1 client for the router's API, used by the CLI and the tests.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the API address.
    #[error(
        "the weft router is not running (nothing answers on {addr}); start it with 'weft launch'"
    )]
    NotRunning { addr: SocketAddr },
    #[error("request to the weft router at {addr} failed: {detail}")]
    Transport { addr: SocketAddr, detail: String },
    /// The router answered with an error status; `body` says why.
    #[error("{body}")]
    Status { status: u16, body: String },
    #[error("unexpected answer from the weft router: {0}")]
    Decode(String),
}

#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(3)));
        conn.set_nodelay(true);
        Client {
            addr,
            http: HyperClient::builder(TokioExecutor::new()).build(conn),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends a request; a non-2xx answer becomes [`ClientError::Status`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<String, ClientError> {
        let uri = format!("http://{}{}", self.addr, path);
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header("accept", "application/json, text/plain");
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        let req = b
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Transport {
                addr: self.addr,
                detail: e.to_string(),
            })?;
        let resp = self.http.request(req).await.map_err(|e| {
            if e.is_connect() {
                ClientError::NotRunning { addr: self.addr }
            } else {
                ClientError::Transport {
                    addr: self.addr,
                    detail: e.to_string(),
                }
            }
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport {
                addr: self.addr,
                detail: e.to_string(),
            })?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status.is_success() {
            Ok(text)
        } else {
            Err(ClientError::Status {
                status: status.as_u16(),
                body: text.trim_end().to_string(),
            })
        }
    }

    pub async fn get(&self, path: &str) -> Result<String, ClientError> {
        self.request(Method::GET, path, None, Vec::new()).await
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, ClientError> {
        let text = self.get(path).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn post_json<B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<String, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.request(Method::POST, path, Some("application/json"), body)
            .await
    }

    pub async fn delete(&self, path: &str) -> Result<String, ClientError> {
        self.request(Method::DELETE, path, None, Vec::new()).await
    }
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => StatusCode::from_u16(*status).ok(),
            _ => None,
        }
    }
}
