//! TLS for the Docker proxy's TCP listeners, with Docker's and Weave's flags (`--tls`,
//! `--tlsverify`, `--tlscacert`, `--tlscert`, `--tlskey`), and detection of the settings of
//! the Docker daemon weft fronts, as Weave's `docker-tls-args` did.
//!
//! rustls with the ring provider (which the data plane and bollard already use); no OpenSSL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde_json::Value;

/// TLS on the proxy's TCP listeners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// `--tlsverify`: clients need a certificate signed by `ca`.
    pub verify: bool,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsSettings {
    /// Docker's defaults for paths not given: `$DOCKER_CERT_PATH`, else `~/.docker`, with
    /// `ca.pem`, `cert.pem` and `key.pem` in it.
    pub fn with_defaults(
        verify: bool,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> TlsSettings {
        let dir = std::env::var_os("DOCKER_CERT_PATH")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))
            .unwrap_or_else(|| PathBuf::from("/root/.docker"));
        TlsSettings {
            verify,
            ca: ca.unwrap_or_else(|| dir.join("ca.pem")),
            cert: cert.unwrap_or_else(|| dir.join("cert.pem")),
            key: key.unwrap_or_else(|| dir.join("key.pem")),
        }
    }

    /// Reads and checks the files; the error names the file and what is wrong with it.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider();
        let certs = read_certs("--tlscert", &self.cert)?;
        let key = read_key("--tlskey", &self.key)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if self.verify {
            let roots = read_roots("--tlscacert", &self.ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::File {
                    what: "--tlscacert".into(),
                    path: self.ca.clone(),
                    detail: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Pair {
                cert: format!("--tlscert {}", self.cert.display()),
                key: format!("--tlskey {}", self.key.display()),
                detail: e.to_string(),
            })?;
        Ok(Arc::new(config))
    }
}

/// rustls on ring, which the data plane and bollard already build. rustls 0.23.48 deprecates
/// it for lacking post-quantum key exchange (that needs aws-lc-rs, a second crypto library
/// and a long C build here); clients then agree on X25519, as with Docker before Go 1.24.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why TLS cannot be set up: each names the file (and the flag that gave it).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {}: {detail}", path.display())]
    File {
        what: String,
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("{cert} and {key} do not go together: {detail}")]
    Pair {
        cert: String,
        key: String,
        detail: String,
    },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(what: &str, path: &Path, detail: String) -> TlsError {
    TlsError::File {
        what: what.to_string(),
        path: path.to_path_buf(),
        detail,
    }
}

fn read_certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| file_error(flag, path, pem_error(&e)))?;
    if certs.is_empty() {
        return Err(file_error(
            flag,
            path,
            "no PEM certificate in the file".into(),
        ));
    }
    Ok(certs)
}

fn read_key(what: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        file_error(
            what,
            path,
            format!("cannot read a PEM private key: {}", pem_error(&e)),
        )
    })
}

fn read_roots(what: &str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(what, path)? {
        roots
            .add(c)
            .map_err(|e| file_error(what, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM item of that kind in the file".into()
        }
        other => format!("{other:?}"),
    }
}

/// The TLS settings of a Docker daemon from its arguments (`--tlsverify`, `--tlscacert=F` or
/// `--tlscacert F`, ...) and its `daemon.json` (arguments win); `None` if it runs without
/// TLS.
pub fn from_daemon(args: &[String], daemon_json: Option<&Value>) -> Option<TlsSettings> {
    let mut tls = false;
    let mut verify = false;
    let (mut ca, mut cert, mut key) = (None, None, None);
    if let Some(j) = daemon_json {
        tls |= j.get("tls").and_then(Value::as_bool).unwrap_or(false);
        verify |= j.get("tlsverify").and_then(Value::as_bool).unwrap_or(false);
        let path = |k: &str| j.get(k).and_then(Value::as_str).map(PathBuf::from);
        ca = path("tlscacert");
        cert = path("tlscert");
        key = path("tlskey");
    }
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (a, None),
        };
        let mut value = || {
            inline.clone().or_else(|| {
                let next = args.get(i + 1).filter(|n| !n.starts_with('-')).cloned();
                if next.is_some() {
                    i += 1;
                }
                next
            })
        };
        match flag {
            "--tls" => tls = inline.as_deref() != Some("false"),
            "--tlsverify" => verify = inline.as_deref() != Some("false"),
            "--tlscacert" => ca = value().map(PathBuf::from),
            "--tlscert" => cert = value().map(PathBuf::from),
            "--tlskey" => key = value().map(PathBuf::from),
            _ => {}
        }
        i += 1;
    }
    (tls || verify).then(|| TlsSettings::with_defaults(verify, ca, cert, key))
}

/// The running Docker daemon's TLS settings, as Weave's launch detected them: the `dockerd`
/// whose `-H`/`--host` names `socket` (else the only `dockerd` there is), its arguments and
/// its `daemon.json` (`--config-file`, default `/etc/docker/daemon.json`).
pub fn detect(socket: Option<&Path>) -> Option<TlsSettings> {
    let mut daemons: Vec<Vec<String>> = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "dockerd" {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        daemons.push(
            cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        );
    }
    let serves = |args: &[String], sock: &Path| {
        let s = sock.display().to_string();
        args.iter().any(|a| a.ends_with(&s))
    };
    let args = match socket {
        Some(s) if daemons.iter().any(|d| serves(d, s)) => {
            daemons.into_iter().find(|d| serves(d, s))?
        }
        _ if daemons.len() == 1 => daemons.pop()?,
        _ => return None,
    };
    let config = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--config-file") {
            Some(v) if v.starts_with('=') => Some(v[1..].to_string()),
            Some("") => args.get(i + 1).cloned(),
            _ => None,
        })
        .unwrap_or_else(|| "/etc/docker/daemon.json".into());
    let json = std::fs::read(&config)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    from_daemon(&args, json.as_ref())
}

/// TLS towards an engine on TCP, decided as the docker CLI decides it: `DOCKER_TLS_VERIFY`
/// set (and not `0`) means TLS with `ca.pem`, `cert.pem` and `key.pem` from
/// `DOCKER_CERT_PATH` (default `~/.docker`).
pub fn engine_tls_from_env() -> Option<TlsSettings> {
    let on = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty() && v != "0");
    on.then(|| TlsSettings::with_defaults(true, None, None, None))
}

impl TlsSettings {
    /// The client side, towards an engine: the engine's certificate checked against `ca`,
    /// ours (`cert`, `key`) presented.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let roots = read_roots("DOCKER_CERT_PATH ca.pem", &self.ca)?;
        let certs = read_certs("DOCKER_CERT_PATH cert.pem", &self.cert)?;
        let key = read_key("DOCKER_CERT_PATH key.pem", &self.key)?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::Pair {
                cert: self.cert.display().to_string(),
                key: self.key.display().to_string(),
                detail: e.to_string(),
            })?;
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn daemon_tls_arguments_as_weave_read_them() {
        assert_eq!(from_daemon(&args("dockerd -H fd://"), None), None);
        let t = from_daemon(
            &args("dockerd --tlsverify --tlscacert /c/ca.pem --tlscert=/c/s.pem --tlskey /c/k.pem -H tcp://0.0.0.0:2376"),
            None,
        )
        .unwrap();
        assert!(t.verify);
        assert_eq!(t.ca, PathBuf::from("/c/ca.pem"));
        assert_eq!(t.cert, PathBuf::from("/c/s.pem"));
        assert_eq!(t.key, PathBuf::from("/c/k.pem"));
        // daemon.json, with the arguments winning.
        let j = serde_json::json!({"tls": true, "tlscert": "/j/cert.pem", "tlskey": "/j/key.pem"});
        let t = from_daemon(&args("dockerd --tlskey=/a/key.pem"), Some(&j)).unwrap();
        assert!(!t.verify);
        assert_eq!(t.cert, PathBuf::from("/j/cert.pem"));
        assert_eq!(t.key, PathBuf::from("/a/key.pem"));
        assert_eq!(from_daemon(&args("dockerd --tls=false"), None), None);
    }

    #[test]
    fn unreadable_files_are_named() {
        let t = TlsSettings {
            verify: true,
            ca: "/nonexistent/ca.pem".into(),
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        };
        let e = t.server_config().unwrap_err().to_string();
        assert!(e.contains("--tlscert /nonexistent/cert.pem"), "{e}");
    }
}
