//! The host firewall through the iptables tools, in the backend the host already uses.
//!
//! Docker, kube-proxy, flannel and Calico all program netfilter through `iptables`, and a host
//! runs one of two backends: nf_tables (`iptables-nft`) or the legacy x_tables
//! (`iptables-legacy`). Rules only take effect next to theirs if they land in the same backend
//! (in nf_tables, an ACCEPT in one table does not overrule a DROP in another), so the backend is
//! chosen as kube-proxy's iptables wrapper does: the one that already holds more rules, nf_tables
//! when they tie. Hosts with a single `iptables` (no suffixed variants) use it as it is.
//!
//! Everything goes through `iptables-save` (read one table) and `iptables-restore --noflush`
//! (apply a batch atomically), so a change is all or nothing and costs two processes however
//! many rules it holds. The calls block: run them off the async runtime's threads.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// How long iptables waits for the xtables lock another program holds (legacy backend).
const LOCK_WAIT_SECS: &str = "5";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iptables {
    save: PathBuf,
    restore: PathBuf,
    /// `nf_tables`, `legacy`, or what the plain `iptables --version` says.
    backend: String,
}

/// Where the tools are looked for: `$PATH`, then the sbin directories a non-root `$PATH` lacks.
pub(crate) fn search_path() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .collect()
}

pub(crate) fn find_in(dirs: &[PathBuf], program: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(program)).find(|p| p.is_file())
}

/// Rules (`-A` lines) in every table `save` prints; `None` if it cannot run here.
fn rule_count(save: &Path) -> Option<usize> {
    let out = Command::new(save)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count()
    })
}

impl Iptables {
    /// Finds the iptables tools and the backend the host uses.
    pub fn detect() -> Result<Self> {
        Self::detect_in(&search_path())
    }

    /// [`Iptables::detect`], looking only in `dirs`.
    pub fn detect_in(dirs: &[PathBuf]) -> Result<Self> {
        let find = |program: &str| find_in(dirs, program);
        let variant = |suffix: &str| {
            Some((
                find(&format!("iptables-{suffix}-save"))?,
                find(&format!("iptables-{suffix}-restore"))?,
            ))
        };
        let nft = variant("nft");
        let legacy = variant("legacy");
        let pick = match (nft, legacy) {
            (Some(n), Some(l)) => {
                let in_nft = rule_count(&n.0).unwrap_or(0);
                match rule_count(&l.0) {
                    Some(in_legacy) if in_legacy > in_nft => Some((l, "legacy")),
                    _ => Some((n, "nf_tables")),
                }
            }
            (Some(n), None) => Some((n, "nf_tables")),
            (None, Some(l)) => Some((l, "legacy")),
            (None, None) => None,
        };
        if let Some(((save, restore), backend)) = pick {
            return Ok(Iptables {
                save,
                restore,
                backend: backend.to_string(),
            });
        }
        match (find("iptables-save"), find("iptables-restore")) {
            (Some(save), Some(restore)) => {
                let backend = Command::new(find("iptables").unwrap_or_else(|| "iptables".into()))
                    .arg("--version")
                    .output()
                    .ok()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_else(|| "iptables".into());
                Ok(Iptables {
                    save,
                    restore,
                    backend,
                })
            }
            _ => Err(Error::Other(
                "no iptables tools found: weft installs its forwarding and NAT rules with iptables-save and iptables-restore; install them (Debian and Ubuntu: apt-get install iptables)".into(),
            )),
        }
    }

    /// The backend in use, for the log.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// `iptables-save -t TABLE`.
    pub fn save(&self, table: &str) -> Result<String> {
        let out = Command::new(&self.save)
            .args(["-t", table])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("running {}", self.save.display()), e))?;
        if !out.status.success() {
            return Err(Error::Other(format!(
                "{} -t {table} failed: {}",
                self.save.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `iptables-restore --noflush` with `input`: applied whole, or not at all.
    pub fn restore(&self, input: &str) -> Result<()> {
        use std::io::Write;
        let mut child = Command::new(&self.restore)
            .args(["-w", LOCK_WAIT_SECS, "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("running {}", self.restore.display()), e))?;
        let write = child
            .stdin
            .take()
            .map(|mut s| s.write_all(input.as_bytes()));
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io(format!("waiting for {}", self.restore.display()), e))?;
        if !out.status.success() {
            return Err(Error::Other(format!(
                "{} refused weft's rules: {}",
                self.restore.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if let Some(Err(e)) = write {
            return Err(Error::io(
                format!("writing to {}", self.restore.display()),
                e,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_iptables_is_told_what_to_install() {
        let empty = std::env::temp_dir().join(format!("weft-no-iptables-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let err = Iptables::detect_in(std::slice::from_ref(&empty))
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_dir(&empty);
        assert!(err.contains("no iptables tools found"), "{err}");
        assert!(err.contains("apt-get install iptables"), "{err}");
    }
}
