//! weft's boundary with the Linux kernel: links, addresses and routes over netlink, network
//! namespaces, the TAP device, the sleeve UDP socket, the host firewall (through the iptables
//! tools), sysctls and process control.
//!
//! This is the only crate allowed `unsafe`, in three small modules at the OS boundary:
//! [`process`] (setsid between fork and exec), [`udp`] (a socket option, and batch headers
//! moved between threads) and [`arp`] (a packet
//! socket for gratuitous ARP);
//! everything else is built on rtnetlink, nix, tun-rs and socket2.
#![deny(unsafe_code)]

pub mod arp;
pub mod fdb;
pub mod host;
pub mod iptables;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod peer;
pub mod process;
pub mod sysctl;
pub mod tap;
pub mod udp;

/// What went wrong talking to the kernel, with the object it concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {object}: {detail}")]
    Netlink {
        op: &'static str,
        object: String,
        detail: String,
        /// The kernel's errno, when it gave one.
        errno: Option<i32>,
    },
    #[error("no network interface named {0:?}")]
    NoSuchLink(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub(crate) fn netlink(
        op: &'static str,
        object: impl Into<String>,
        e: rtnetlink::Error,
    ) -> Self {
        let errno = match &e {
            rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
            _ => None,
        };
        let detail = match errno {
            Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
            None => e.to_string(),
        };
        Error::Netlink {
            op,
            object: object.into(),
            detail,
            errno,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The kernel said there is no such device (e.g. it went away with its veth peer).
    pub fn is_no_device(&self) -> bool {
        matches!(self, Error::Netlink { errno: Some(e), .. } if *e == libc::ENODEV)
    }

    /// The kernel said the object already exists.
    pub fn is_exists(&self) -> bool {
        matches!(self, Error::Netlink { errno: Some(e), .. } if *e == libc::EEXIST)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
