//! Network namespaces: naming containers, and running code inside them.
//!
//! A namespace switch (`setns`) applies to one thread, and netlink sockets stay in the
//! namespace they were opened in, so [`run_in`] starts a dedicated OS thread, moves it into the
//! target namespace, and runs a future there on a fresh single-threaded runtime. Never call
//! `setns` on a tokio worker.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::{Error, Result};

/// Where named namespaces live (`ip netns add NAME`).
pub const NAMED_NETNS_DIR: &str = "/run/netns";

/// Turns a container reference into the path of its network namespace file:
/// a PID (`1234`), a path (`/proc/1234/ns/net`, `/run/netns/foo`), or a name from `ip netns`.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let bad = |why: &str| {
        Error::Other(format!(
            "container {spec:?} not found: {why} (give a name from 'ip netns', a path to a network namespace file, or a PID)"
        ))
    };
    if spec.is_empty() {
        return Err(bad("empty name"));
    }
    let path = if spec.bytes().all(|b| b.is_ascii_digit()) {
        PathBuf::from(format!("/proc/{spec}/ns/net"))
    } else if spec.starts_with('/') {
        PathBuf::from(spec)
    } else if spec.contains('/') || spec == "." || spec == ".." {
        return Err(bad("not a valid namespace name"));
    } else {
        Path::new(NAMED_NETNS_DIR).join(spec)
    };
    if !path.exists() {
        return Err(bad("no such namespace"));
    }
    Ok(path)
}

/// An open namespace file: holding it keeps the namespace alive while we work in it.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .map_err(|e| Error::io(format!("opening namespace {}", path.display()), e))?;
        Ok(Netns {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Device and inode: equal for two handles on the same namespace.
    pub fn id(&self) -> Result<(u64, u64)> {
        let st = nix::sys::stat::fstat(&self.file).map_err(|e| {
            Error::io(
                format!("stat {}", self.path.display()),
                std::io::Error::from(e),
            )
        })?;
        Ok((st.st_dev, st.st_ino))
    }

    /// The namespace this process started in (our host's).
    pub fn current() -> Result<Self> {
        Netns::open(Path::new("/proc/self/ns/net"))
    }
}

/// The PID a `/proc/PID/ns/net` path names (what [`resolve`] makes of a PID).
pub fn pid_of(path: &Path) -> Option<u32> {
    path.to_str()?
        .strip_prefix("/proc/")?
        .strip_suffix("/ns/net")?
        .parse()
        .ok()
}

/// Runs `f` on a new thread inside namespace `ns` and returns its output.
pub async fn run_in<F, Fut, T>(ns: &Netns, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let file = ns
        .file
        .try_clone()
        .map_err(|e| Error::io("duplicating namespace handle", e))?;
    let path = ns.path.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || {
            let result = (|| {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    Error::io(format!("entering namespace {}", path.display()), e.into())
                })?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("starting namespace runtime", e))?;
                Ok(rt.block_on(f()))
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| Error::io("spawning namespace thread", e))?;
    rx.await
        .map_err(|_| Error::Other("namespace worker thread panicked".into()))?
}

/// The hostname in the UTS namespace of process `pid` (its container's hostname).
pub async fn uts_hostname(pid: u32) -> Option<String> {
    let file = File::open(format!("/proc/{pid}/ns/uts")).ok()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("weft-uts".into())
        .spawn(move || {
            let r = setns(file.as_fd(), CloneFlags::CLONE_NEWUTS)
                .ok()
                .and_then(|_| nix::unistd::gethostname().ok())
                .and_then(|h| h.into_string().ok());
            let _ = tx.send(r);
        })
        .ok()?;
    rx.await.ok().flatten()
}
