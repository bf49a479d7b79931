//! A hostile peer, for tests that show a router shrugs off what it should.
//!
//! Everything here speaks weft's wire formats from the outside, the way an attacker on the
//! underlay would: plain sockets, `weft_proto` to encode, nothing of the router's own logic.
//! What it can do depends on what it knows: a stranger (no password) can hold half-open
//! connections and send UDP at the router's ports; against an unencrypted router anyone can
//! also join as a peer ([`Peer::join`]) and then ask for full states without ever reading,
//! invent peers, and send frames with random source MACs. Tests run it inside a namespace of
//! their test bed; the `weft-hostile` binary runs it by hand (`ip netns exec NS weft-hostile`).
//! It only sends to the addresses it is given.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weft_proto::control::{
    self, Channel, ConnectionSummary, ControlMsg, FrameReader, Hello, OverlayMsg, PeerSummary,
    TopologyUpdate,
};
use weft_proto::{PeerName, sleeve};

/// A small deterministic generator (xorshift64*): floods need variety, not quality.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A random peer name (never the broadcast name).
    pub fn name(&mut self) -> PeerName {
        PeerName::from_u64((self.next_u64() & PeerName::MASK).max(1))
    }

    /// A random unicast, locally administered MAC.
    pub fn mac(&mut self) -> [u8; 6] {
        let b = self.next_u64().to_be_bytes();
        [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
    }
}

/// Opens up to `n` TCP connections to `target` and sends nothing on them.
pub fn silent_connections(target: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| TcpStream::connect_timeout(&target, Duration::from_millis(300)).ok())
        .collect()
}

/// A peer joined to an unencrypted router.
pub struct Peer {
    pub name: PeerName,
    stream: TcpStream,
    /// The connection's UID, which UDP heartbeats must carry.
    pub conn_uid: u64,
    /// The router's name and sleeve address.
    pub router: PeerName,
    pub router_udp: SocketAddr,
    /// Our own address as the router sees it (for the topology we claim).
    pub local: SocketAddr,
    pub sent: u64,
}

impl Peer {
    /// Connects, exchanges headers and hellos as peer `name` (with `udp_port` as our sleeve
    /// port). Only an unencrypted router lets us this far.
    pub fn join(target: SocketAddr, name: PeerName, udp_port: u16) -> Result<Peer> {
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(3))
            .with_context(|| format!("connecting to {target}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(&control::encode_header(
            control::PROTOCOL_MIN,
            control::PROTOCOL_MAX,
            0,
        ))?;
        let mut header = [0u8; control::HEADER_LEN];
        stream.read_exact(&mut header)?;
        let (_, flags) = control::negotiate(&header, control::PROTOCOL_MIN, control::PROTOCOL_MAX)?;
        if flags & control::FLAG_ENCRYPTED != 0 {
            bail!("the router at {target} is encrypted: a stranger cannot join it");
        }
        let conn_id = 0x5eed_0000_0000_0001u64 ^ name.as_u64();
        let hello = ControlMsg::Hello(Hello {
            name,
            nickname: "hostile".into(),
            uid: 0x0bad_cafe,
            conn_id,
            tcp_port: 6783,
            udp_port,
            trusts_you: false,
        });
        stream.write_all(&hello.encode_framed())?;
        let mut reader = FrameReader::default();
        let mut buf = vec![0u8; 64 * 1024];
        let theirs = loop {
            if let Some(body) = reader.next_frame(control::MAX_FRAME_LEN)? {
                match ControlMsg::decode(&body)? {
                    ControlMsg::Hello(h) => break h,
                    ControlMsg::Refused { reason } => bail!("refused: {reason}"),
                    _ => continue,
                }
            }
            let n = stream.read(&mut buf)?;
            if n == 0 {
                bail!("the router closed the connection before its hello");
            }
            reader.push(&buf[..n]);
        };
        let local = stream.local_addr()?;
        Ok(Peer {
            name,
            conn_uid: conn_id ^ theirs.conn_id,
            router: theirs.name,
            router_udp: SocketAddr::new(target.ip(), theirs.udp_port),
            local,
            stream,
            sent: 0,
        })
    }

    fn send(&mut self, m: &ControlMsg) -> Result<()> {
        let bytes = m.encode_framed();
        self.stream.write_all(&bytes)?;
        self.sent += bytes.len() as u64;
        Ok(())
    }

    /// Asks for every channel's full state `rounds` times, never reading the answers.
    pub fn ask_for_everything(&mut self, rounds: usize) -> Result<()> {
        for _ in 0..rounds {
            for c in 0..4 {
                self.send(&ControlMsg::GossipRequest {
                    channel: Channel(c),
                })?;
            }
            self.send(&ControlMsg::Heartbeat)?;
        }
        Ok(())
    }

    /// Claims `n` invented peers in a tree hanging off us (so the router's garbage
    /// collection keeps them, and no entry lists more connections than a peer may), all at
    /// our own address (so discovery dials only us).
    pub fn invent_peers(&mut self, rng: &mut Rng, n: usize, version: u64) -> Result<()> {
        const FANOUT: usize = 1000;
        let here = SocketAddr::new(self.local.ip(), 6783);
        let conn = |peer| ConnectionSummary {
            peer,
            addr: here,
            outbound: true,
            established: true,
        };
        let invented: Vec<PeerName> = (0..n).map(|_| rng.name()).collect();
        let summary = |name, connections| PeerSummary {
            name,
            nickname: "invented".into(),
            uid: 1,
            version,
            tcp_port: 6783,
            connections,
        };
        // Us → the first FANOUT invented peers → the rest, FANOUT-way.
        let mut links: Vec<Vec<ConnectionSummary>> = vec![Vec::new(); n];
        let mut ours = vec![conn(self.router)];
        for (k, &p) in invented.iter().enumerate() {
            if k < FANOUT {
                ours.push(conn(p));
                links[k].push(conn(self.name));
            } else {
                let parent = k % FANOUT;
                links[parent].push(conn(p));
                links[k].push(conn(invented[parent]));
            }
        }
        let mut peers = vec![PeerSummary {
            nickname: "hostile".into(),
            uid: 0x0bad_cafe,
            ..summary(self.name, ours)
        }];
        peers.extend(invented.iter().zip(links).map(|(&p, c)| summary(p, c)));
        for chunk in peers.chunks(2000) {
            let payload = TopologyUpdate {
                peers: chunk.to_vec(),
            }
            .encode();
            self.send(&ControlMsg::Gossip {
                channel: Channel::TOPOLOGY,
                payload,
            })?;
        }
        Ok(())
    }

    /// Makes the sleeve path look established: a UDP heartbeat from `udp`, and the
    /// acknowledgement of the router's heartbeats (sent blind: we never read them).
    pub fn establish(&mut self, udp: &UdpSocket) -> Result<()> {
        udp.send_to(
            &sleeve::encode_heartbeat(self.name, self.conn_uid),
            self.router_udp,
        )?;
        let uid = self.conn_uid;
        self.send(&ControlMsg::Overlay(OverlayMsg::HeartbeatAck {
            conn_uid: uid,
        }))
    }

    /// `n` plaintext frames to the router from `udp`, each with a random source MAC and a
    /// random unicast destination MAC.
    pub fn frames_with_random_macs(&self, udp: &UdpSocket, rng: &mut Rng, n: usize) -> Result<()> {
        let mut d = Vec::with_capacity(128);
        for _ in 0..n {
            d.clear();
            d.extend_from_slice(&sleeve::frame_header(self.name, self.name, self.router));
            d.extend_from_slice(&rng.mac());
            d.extend_from_slice(&rng.mac());
            // An experimental EtherType: no host stack acts on it.
            d.extend_from_slice(&0x88b6u16.to_be_bytes());
            d.extend_from_slice(&[0u8; 46]);
            udp.send_to(&d, self.router_udp)?;
        }
        Ok(())
    }
}

/// `n` sleeve fragments to `target`, each claiming a random sender and a datagram of up to
/// 64 KiB, or (every other one) the name `spoofed` of a real neighbour.
pub fn fragments(
    udp: &UdpSocket,
    target: SocketAddr,
    rng: &mut Rng,
    spoofed: Option<PeerName>,
    n: usize,
) -> Result<()> {
    let mut d = Vec::with_capacity(1500);
    for i in 0..n {
        let sender = match spoofed {
            Some(s) if i % 2 == 0 => s,
            _ => rng.name(),
        };
        let total = 2000 + (rng.next_u64() % 63_000) as u16;
        let offset = (rng.next_u64() % u64::from(total - 1400)) as u16;
        d.clear();
        d.extend_from_slice(&sleeve::fragment_header(
            sender,
            rng.next_u64() as u32,
            offset,
            total,
        ));
        d.extend_from_slice(&[0xa5; 1400]);
        udp.send_to(&d, target)?;
    }
    Ok(())
}

/// `n` DNS queries (type A, random names in `domain`) to `target`.
pub fn dns_queries(
    udp: &UdpSocket,
    target: SocketAddr,
    rng: &mut Rng,
    domain: &str,
    n: usize,
) -> Result<()> {
    let mut q = Vec::with_capacity(128);
    for _ in 0..n {
        q.clear();
        q.extend_from_slice(&(rng.next_u64() as u16).to_be_bytes());
        // Recursion desired, one question.
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        let label = format!("{:x}", rng.next_u64());
        for part in std::iter::once(label.as_str()).chain(domain.split('.')) {
            if part.is_empty() {
                continue;
            }
            q.push(part.len() as u8);
            q.extend_from_slice(part.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        udp.send_to(&q, target)?;
    }
    Ok(())
}

/// A UDP socket on `ip` (an ephemeral port) that never blocks for long.
pub fn udp_socket(ip: IpAddr) -> Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0))?;
    s.set_write_timeout(Some(Duration::from_secs(1)))?;
    Ok(s)
}
