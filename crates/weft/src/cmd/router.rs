//! `status`, `report`, `connect`, `forget`, `rmpeer`, `prime`, `password`, `version`.

use anyhow::{Context, Result, bail};
use weft_api::types::{PeersRequest, Report};
use weft_api::{Client, ClientError};

use super::{runtime, urlencode};
use crate::PasswordAction;

pub fn status(c: &Client, sub: Option<&str>) -> Result<()> {
    runtime()?.block_on(async {
        match sub {
            None => {
                let s = c.get("/status").await?;
                print!("\n{s}\n");
            }
            Some(sub @ ("targets" | "connections" | "peers" | "ipam" | "dns")) => {
                print!("{}", c.get(&format!("/status/{sub}")).await?);
            }
            Some(other) => bail!(
                "Invalid 'weft status' sub-command: {other} (use: weft status [targets | connections | peers | ipam | dns])"
            ),
        }
        Ok(())
    })
}

pub fn report(c: &Client, format: Option<&str>) -> Result<()> {
    runtime()?.block_on(async {
        match format {
            None => {
                let r: Report = c.get_json("/report").await?;
                println!("{}", serde_json::to_string_pretty(&r)?);
            }
            Some(t) => {
                let body = c.get(&format!("/report?format={}", urlencode(t))).await?;
                print!("{body}");
            }
        }
        Ok(())
    })
}

/// `connect` (`forget` with `forget`): peers to dial, or to stop dialling.
pub fn peers(c: &Client, peers: &[String], replace: bool, forget: bool) -> Result<()> {
    runtime()?.block_on(async {
        let req = PeersRequest {
            peers: peers.to_vec(),
            replace,
        };
        let path = if forget { "/forget" } else { "/connect" };
        c.post_json(path, &req).await?;
        Ok(())
    })
}

pub fn rmpeer(c: &Client, peers: &[String]) -> Result<()> {
    runtime()?.block_on(async {
        let mut failed = false;
        for p in peers {
            match c.delete(&format!("/peer/{}", urlencode(p))).await {
                Ok(msg) => print!("{msg}"),
                Err(e) => {
                    eprintln!("weft: {e}");
                    failed = true;
                }
            }
        }
        if failed {
            std::process::exit(1);
        }
        Ok(())
    })
}

pub fn prime(c: &Client) -> Result<()> {
    runtime()?.block_on(async {
        c.get("/ring").await?;
        Ok(())
    })
}

pub fn password(
    c: &Client,
    action: &PasswordAction,
    password: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<()> {
    let raw = zeroize::Zeroizing::new(match (password, file) {
        (Some(p), _) => p.as_bytes().to_vec(),
        (None, Some(f)) => std::fs::read(f)
            .with_context(|| format!("reading the password from {}", f.display()))?,
        (None, None) => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.into_bytes()
        }
    });
    let password = std::str::from_utf8(raw.trim_ascii())
        .context("the password must be UTF-8 text")?
        .to_string();
    if password.is_empty() {
        bail!("the password is empty; give it as an argument, with --file, or on standard input");
    }
    let action = match action {
        PasswordAction::Add => "add",
        PasswordAction::Use => "use",
        PasswordAction::Drop => "drop",
    };
    let req = weft_api::types::PasswordRequest {
        action: action.into(),
        password,
    };
    let r: weft_api::types::PasswordResponse = runtime()?.block_on(async {
        let body = c.post_json("/password", &req).await?;
        serde_json::from_str(&body).context("the router's answer is not JSON")
    })?;
    let n = r.accepted;
    println!("{n} password{} accepted", if n == 1 { "" } else { "s" });
    Ok(())
}

pub fn version(c: &Client) -> Result<()> {
    println!("weft {}", env!("CARGO_PKG_VERSION"));
    match runtime()?.block_on(c.get_json::<Report>("/report")) {
        Ok(r) => println!("weft router {}", r.version),
        Err(ClientError::NotRunning { .. }) => println!("weft router not running"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
