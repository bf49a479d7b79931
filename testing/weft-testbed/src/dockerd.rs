//! A Docker daemon of a test's own, in a network namespace of the test's: entered with
//! nsenter (which keeps the host's cgroups in view where `ip netns exec` would hide them), so
//! what it does to links there (it deletes any docker0 when it runs without a bridge), and
//! the "host network" of its containers, stay there. It shares the machine's containerd under
//! a containerd namespace of its own; no bridge, firewall or forwarding of its own. Stopped
//! with SIGTERM, by PID, when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::Testbed;

pub struct Dockerd {
    child: Child,
    /// Its API socket.
    pub socket: PathBuf,
}

impl Dockerd {
    /// Starts one in namespace `netns`, keeping its state in `dir`, its containerd objects
    /// under `tag`; `extra` are more dockerd arguments (listeners, TLS).
    pub fn start(netns: &str, dir: &Path, tag: &str, extra: &[String]) -> Result<Dockerd> {
        let containerd = [
            "/var/run/docker/containerd/containerd.sock",
            "/run/containerd/containerd.sock",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("no containerd socket to share")?;
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("d.sock");
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("dockerd")
            .args(["--data-root", &dir.join("data").display().to_string()])
            .args(["--exec-root", &dir.join("exec").display().to_string()])
            .args(["--pidfile", &dir.join("pid").display().to_string()])
            .args(["-H", &format!("unix://{}", socket.display())])
            .args(extra)
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .args(["--ip-forward=false", "--ip-masq=false"])
            .args(["--containerd", containerd])
            .args([
                "--containerd-namespace",
                tag,
                "--containerd-plugins-namespace",
            ])
            .arg(format!("{tag}-plugins"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let d = Dockerd { child, socket };
        Testbed::wait_for(Duration::from_secs(30), || match d.docker(&["version"]) {
            Ok(_) => Ok(()),
            Err(e) => bail!("the test's dockerd is not up: {e}"),
        })?;
        Ok(d)
    }

    /// `docker` aimed at this daemon.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.args(["-H", &format!("unix://{}", self.socket.display())])
            .env_remove("DOCKER_HOST");
        c
    }

    /// `docker ARGS` against this daemon; fails unless it exits 0. Returns stdout.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd().args(args).output()?;
        if !out.status.success() {
            bail!(
                "docker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .output();
        for _ in 0..150 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
