//! nftables through the `nft` tool (as kube-proxy's nftables mode does): a script applied as
//! one transaction, and objects read back as JSON.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::iptables::{find_in, search_path};
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nft {
    bin: PathBuf,
}

impl Nft {
    /// Finds `nft`; the error says what to install.
    pub fn find() -> Result<Nft> {
        find_in(&search_path(), "nft")
            .map(|bin| Nft { bin })
            .ok_or_else(|| {
                Error::Other(
                    "nft not found: install nftables (apt-get install nftables) or put nft on PATH"
                        .into(),
                )
            })
    }

    /// Applies `script` (`nft -f -`): all of it, or nothing.
    pub fn apply(&self, script: &str) -> Result<()> {
        let mut child = Command::new(&self.bin)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("running {}", self.bin.display()), e))?;
        let write = child
            .stdin
            .take()
            .map(|mut s| s.write_all(script.as_bytes()));
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io(format!("waiting for {}", self.bin.display()), e))?;
        if !out.status.success() {
            return Err(Error::Other(format!(
                "nft refused the rules: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if let Some(Err(e)) = write {
            return Err(Error::io("writing to nft", e));
        }
        Ok(())
    }

    /// `nft -j list ARGS...`: the JSON nft prints.
    pub fn list_json(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .arg("-j")
            .arg("list")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("running {}", self.bin.display()), e))?;
        if !out.status.success() {
            return Err(Error::Other(format!(
                "nft list {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
