//! The TAP device through which the router joins its bridge.
//!
//! Frames the bridge forwards towards remote containers come out of the TAP; frames from peers
//! are written into it and the bridge delivers them. No offloads yet: the kernel hands us
//! complete, checksummed frames no larger than the MTU.

use tun_rs::{AsyncDevice, DeviceBuilder, Layer};

use crate::{Error, Result};

/// Creates (or, if a stale one is left, re-opens) the TAP `name`; must run inside tokio.
pub fn open(name: &str, mtu: u16) -> Result<AsyncDevice> {
    DeviceBuilder::new()
        .name(name)
        .layer(Layer::L2)
        .mtu(mtu)
        .build_async()
        .map_err(|e| Error::io(format!("creating TAP device {name}"), e))
}
