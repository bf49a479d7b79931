//! `env` and `config`: what a Docker client needs to use weft's proxy.

use anyhow::{Result, bail};
use weft_api::Client;
use weft_api::types::Report;

use super::runtime;

pub fn env(c: &Client, restore: bool) -> Result<()> {
    if restore {
        match std::env::var("ORIG_DOCKER_HOST") {
            Ok(o) if o.is_empty() => println!("unset DOCKER_HOST ORIG_DOCKER_HOST"),
            Ok(o) => println!("export DOCKER_HOST={o}; unset ORIG_DOCKER_HOST"),
            Err(_) => bail!(
                "Nothing to restore. This is most likely because there was no preceding invocation of 'eval $(weft env)' in this shell."
            ),
        }
        return Ok(());
    }
    let (addr, tls) = proxy_address(c)?;
    let old = std::env::var("DOCKER_HOST").unwrap_or_default();
    let mut vars = format!("DOCKER_HOST={addr}");
    // What the docker CLI needs to talk TLS to a TCP proxy.
    if let Some(t) = tls.filter(|_| addr.starts_with("tcp://")) {
        let dir = cert_dir(&t.ca_cert);
        if t.verify {
            vars.push_str(&format!(" DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={dir}"));
        } else {
            vars.push_str(&format!(" DOCKER_TLS=1 DOCKER_CERT_PATH={dir}"));
        }
    }
    if old == addr {
        println!("export {vars}");
    } else {
        println!("export {vars} ORIG_DOCKER_HOST={old}");
    }
    Ok(())
}

pub fn config(c: &Client) -> Result<()> {
    let (addr, tls) = proxy_address(c)?;
    match tls.filter(|_| addr.starts_with("tcp://")) {
        Some(t) if t.verify => {
            let dir = cert_dir(&t.ca_cert);
            println!(
                "-H={addr} --tlsverify --tlscacert={dir}/ca.pem --tlscert={dir}/cert.pem --tlskey={dir}/key.pem"
            );
        }
        Some(_) => println!("-H={addr} --tls"),
        None => println!("-H={addr}"),
    }
    Ok(())
}

/// The directory a CA certificate is in (Docker's `DOCKER_CERT_PATH` convention: `ca.pem`,
/// `cert.pem` and `key.pem` together).
fn cert_dir(ca: &str) -> String {
    std::path::Path::new(ca)
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| ".".into())
}

/// The Docker proxy's first address, and its TLS, from the running router.
fn proxy_address(c: &Client) -> Result<(String, Option<weft_api::types::ProxyTls>)> {
    let r: Report = runtime()?.block_on(c.get_json("/report"))?;
    if let Some(p) = r.proxy.as_ref()
        && let Some(a) = p.addresses.first()
    {
        return Ok((a.clone(), p.tls.clone()));
    }
    match r.docker_unavailable {
        Some(why) => bail!(
            "weft's Docker proxy is not running: {why}; start Docker, then 'weft stop' and 'weft launch' again"
        ),
        None => {
            bail!("weft's Docker proxy is off (launched with --proxy=false or --docker-api \"\")")
        }
    }
}
