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
    let mut queues = open_queues(name, mtu, offload, 1)?;
    Ok(queues.remove(0))
}

/// Creates the TAP `name` with `queues` queues (at least one), each read and written on its
/// own: the kernel hands each flow's frames to one queue, so workers reading different
/// queues see every flow in order.
pub fn open_queues(name: &str, mtu: u16, offload: bool, queues: usize) -> Result<Vec<AsyncDevice>> {
    let what = || format!("creating TAP device {name}");
    let first = DeviceBuilder::new()
        .name(name)
        .layer(Layer::L2)
        .mtu(mtu)
        .offload(offload)
        .multi_queue(queues > 1)
        .build_async()
        .map_err(|e| Error::io(what(), e))?;
    let mut all = vec![first];
    for _ in 1..queues {
        let queue = all[0].try_clone().map_err(|e| Error::io(what(), e))?;
        all.push(queue);
    }
    Ok(all)
}
