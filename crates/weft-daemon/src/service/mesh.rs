//! The mesh's controls: peers to connect to or forget, and passwords changed at run time.

use std::net::SocketAddr;

use weft_core::crypto::PasswordChange;

use super::{Result, Service, ServiceError};
use crate::control::ControlInput;

impl Service {
    /// `weft connect`: adds (or with `replace`, sets) the peers to connect to.
    pub async fn connect(&self, peers: &[String], replace: bool) -> Result<()> {
        let targets = resolve_peers(peers, self.default_port)
            .await
            .map_err(|e| ServiceError::Invalid(e.join("\n")))?;
        self.ask(|reply| ControlInput::Connect {
            targets,
            replace,
            reply,
        })
        .await
    }

    /// `weft forget`: peers not to connect to any more.
    pub async fn forget(&self, targets: Vec<String>) -> Result<()> {
        self.ask(|reply| ControlInput::Forget { targets, reply })
            .await
    }

    /// `weft password add|use|drop`; returns how many passwords are accepted now.
    pub async fn password(&self, action: &str, password: &str) -> Result<usize> {
        let change = match action {
            "add" => PasswordChange::Add,
            "use" => PasswordChange::Use,
            "drop" => PasswordChange::Drop,
            other => {
                return Err(ServiceError::Invalid(format!(
                    "unknown password action {other:?}: use add, use or drop"
                )));
            }
        };
        // Refused before the (deliberately slow, memory-hard) derivation, which a caller could
        // otherwise have the router run for nothing.
        if !self.encryption {
            return Err(ServiceError::Password(
                crate::control::ENCRYPTION_OFF.into(),
            ));
        }
        let Some(pw) = crate::secrets::Password::new(password.as_bytes()) else {
            return Err(ServiceError::Invalid("the password is empty".into()));
        };
        // One derivation at a time (64 MiB each): a burst of requests queues, it does not add
        // up.
        static DERIVING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let psk = {
            let _one = DERIVING.lock().await;
            pw.derive().await
        };
        self.ask(|reply| ControlInput::Password { change, psk, reply })
            .await?
            .map_err(ServiceError::Password)
    }
}

/// Splits `host[:port]` and resolves it (once, as Weave does); says whether a port was given.
async fn resolve_peer(spec: &str, default_port: u16) -> Result<(SocketAddr, bool), String> {
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Ok((sa, true));
    }
    if let Ok(ip) = spec.parse::<std::net::IpAddr>() {
        return Ok((SocketAddr::new(ip, default_port), false));
    }
    let (host, port, given) = match spec.rsplit_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("invalid peer {spec:?}: bad port {p:?}"))?;
            (h.to_string(), port, true)
        }
        None => (spec.to_string(), default_port, false),
    };
    if host.is_empty() {
        return Err(format!("invalid peer {spec:?}: empty host"));
    }
    let mut addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve peer {host:?}: {e}"))?;
    let first = addrs
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("cannot resolve peer {host:?}: no IPv4 address"))?;
    Ok((first, given))
}

/// Resolves peer arguments; every one that fails is reported.
pub async fn resolve_peers(
    specs: &[String],
    default_port: u16,
) -> Result<Vec<(String, SocketAddr, bool)>, Vec<String>> {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for s in specs {
        match resolve_peer(s, default_port).await {
            Ok((addr, given)) => ok.push((s.clone(), addr, given)),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(errors)
    }
}
