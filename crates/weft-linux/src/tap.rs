//! The TAP devices through which the router joins its bridge.
//!
//! Frames the bridge forwards towards remote containers come out of the sleeve's TAP; frames
//! from peers are written into it and the bridge delivers them. With `offload`, the TAP has a
//! `virtio_net_hdr` in front of every frame (`IFF_VNET_HDR`) and accepts TCP/UDP segmentation
//! and checksum offload, so the kernel hands over (and takes) 64 KiB super-frames instead of
//! MTU-sized ones (see `weft_proto::offload`).

use tun_rs::{AsyncDevice, DeviceBuilder, Layer};

use crate::{Error, Result};

/// Creates (or, if a stale one is left, re-opens) the TAP `name`; must run inside tokio.
pub fn open(name: &str, mtu: u16, offload: bool) -> Result<AsyncDevice> {
    DeviceBuilder::new()
        .name(name)
        .layer(Layer::L2)
        .mtu(mtu)
        .offload(offload)
        .build_async()
        .map_err(|e| Error::io(format!("creating TAP device {name}"), e))
}
