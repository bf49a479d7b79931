//! Every wire decoder on arbitrary bytes: none may panic, whatever it is given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proto::EtherFrame;
use weft_proto::control::{self, ControlMsg, FrameReader, TopologyUpdate};
use weft_proto::dns::DnsUpdate;
use weft_proto::fastdp::{self, FastDpMsg};
use weft_proto::ipam::IpamMsg;
use weft_proto::sleeve::Datagram;

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..control::HEADER_LEN) {
        let _ = control::negotiate(h.try_into().unwrap(), 1, 1);
    }
    let mut r = FrameReader::default();
    // Fed in two pieces, as TCP may split it anywhere.
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    r.push(&data[..cut]);
    while let Ok(Some(_)) = r.next_frame(1 << 16) {}
    r.push(&data[cut..]);
    while let Ok(Some(_)) = r.next_frame(1 << 16) {}
    let _ = ControlMsg::decode(data);
    let _ = TopologyUpdate::decode(data);
    let _ = IpamMsg::decode(data);
    let _ = DnsUpdate::decode(data);
    let _ = FastDpMsg::decode(data);
    let _ = fastdp::decode_heartbeat(data);
    if let Some((h, rest)) = data.split_first_chunk::<10>() {
        let g = weft_proto::offload::Gso(*h);
        let _ = g.validate(rest.len());
        let mut f = rest.to_vec();
        let _ = weft_proto::offload::finish_checksum(
            &mut f,
            g.csum_start().into(),
            g.csum_offset().into(),
        );
    }
    let _ = Datagram::decode(data);
    let _ = Datagram::kind(data);
    let _ = EtherFrame::from_bytes(data);
});
