//! weftDNS: the per-host DNS server (hickory-server) answering from the gossiped records.
//!
//! - Names in the domain: A records of every live entry, shuffled per answer (load balancing),
//!   TTL `--dns-ttl`, authoritative; the name exists but not the type (AAAA...): empty NOERROR;
//!   no such name: NXDOMAIN, never forwarded. A single-label name means one in the domain.
//! - Reverse lookups (`in-addr.arpa` PTR) of our addresses answer from the records; others are
//!   forwarded.
//! - Everything else goes to the upstream resolvers from `--resolv-conf` (re-read when it
//!   changes, checked at most every 5 s; our own address excluded), tried in order over the
//!   client's transport with a fresh query id; the first reply is relayed, SERVFAIL if none.
//! - UDP answers fit the client's EDNS size (512 without EDNS): longer ones are cut and carry TC,
//!   and the client gets all of them over TCP. hickory answers undecodable queries with FORMERR
//!   and ignores ones too short to have a header.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, info, warn};
use weft_core::dns::{QueryType, Records, Resolution, resolve};
use weft_core::rng::Rng;

use crate::DaemonError;

#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub domain: String,
    pub listen: SocketAddr,
    pub ttl: u32,
    pub resolv_conf: PathBuf,
    pub fallback_timeout: Duration,
}

/// Counters for `weft report` and metrics.
#[derive(Debug, Default)]
pub struct DnsStats {
    pub queries: AtomicU64,
    pub local_answers: AtomicU64,
    pub nxdomain: AtomicU64,
    pub forwarded: AtomicU64,
    pub upstream_failures: AtomicU64,
    /// Queries from outside the containers and the host: refused.
    pub refused: AtomicU64,
}

/// Forwarded queries in flight at most: more get SERVFAIL at once rather than piling up.
pub const MAX_FORWARDS: usize = 64;

#[derive(Debug)]
struct Upstream {
    path: PathBuf,
    servers: Vec<SocketAddr>,
    mtime: Option<SystemTime>,
    checked: Option<Instant>,
}

/// `nameserver` lines of a resolv.conf, port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "nameserver")
                .then(|| f.next())
                .flatten()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

impl Upstream {
    fn servers(&mut self, exclude: IpAddr) -> Vec<SocketAddr> {
        let now = Instant::now();
        if self
            .checked
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
        {
            self.checked = Some(now);
            let mtime = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if mtime != self.mtime {
                self.mtime = mtime;
                self.servers = std::fs::read_to_string(&self.path)
                    .map(|t| parse_resolv_conf(&t))
                    .unwrap_or_default();
                info!(resolv_conf = %self.path.display(), servers = ?self.servers, "DNS upstream servers");
            }
        }
        self.servers
            .iter()
            .copied()
            .filter(|s| s.ip() != exclude)
            .collect()
    }
}

/// State shared by the DNS handler and the control task.
pub struct DnsShared {
    pub config: DnsConfig,
    /// The records as last published by the control task.
    pub records: RwLock<Arc<Records>>,
    pub stats: DnsStats,
    upstream: Mutex<Upstream>,
    rng: Mutex<Rng>,
    /// Who may ask: the subnets of the host's bridges (weft's, docker0), the allocation
    /// range, loopback, and the host's own addresses. Not the underlay's subnet, nor the
    /// internet: weftDNS is not an open resolver.
    clients: RwLock<Vec<ipnet::IpNet>>,
    forwards: tokio::sync::Semaphore,
}

impl DnsShared {
    pub fn new(config: DnsConfig, records: Records, seed: u64) -> Self {
        let upstream = Upstream {
            path: config.resolv_conf.clone(),
            servers: Vec::new(),
            mtime: None,
            checked: None,
        };
        DnsShared {
            config,
            records: RwLock::new(Arc::new(records)),
            stats: DnsStats::default(),
            upstream: Mutex::new(upstream),
            rng: Mutex::new(Rng::new(seed)),
            clients: RwLock::new(Vec::new()),
            forwards: tokio::sync::Semaphore::new(MAX_FORWARDS),
        }
    }

    /// Sets who may ask (see [`DnsShared::client_allowed`]); loopback always may.
    pub fn set_clients(&self, clients: Vec<ipnet::IpNet>) {
        *self.clients.write().expect("clients lock") = clients;
    }

    /// Whether a query from `ip` is answered.
    pub fn client_allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        ip.is_loopback()
            || self
                .clients
                .read()
                .expect("clients lock")
                .iter()
                .any(|n| n.contains(&ip))
    }

    pub fn publish(&self, records: Records) {
        *self.records.write().expect("records lock") = Arc::new(records);
    }

    pub fn upstream_servers(&self) -> Vec<SocketAddr> {
        self.upstream
            .lock()
            .expect("upstream lock")
            .servers(self.config.listen.ip())
    }
}

pub struct Handler {
    shared: Arc<DnsShared>,
}

/// Binds UDP and TCP on the listen address and starts serving.
pub async fn start(shared: Arc<DnsShared>) -> Result<Server<Handler>, DaemonError> {
    let addr = shared.config.listen;
    let hint = "use --dns-listen-address to pick another address, or --no-dns";
    let udp = UdpSocket::bind(addr).await.map_err(|e| DaemonError::Io {
        what: format!("listening for DNS on UDP {addr} ({hint})"),
        source: e,
    })?;
    let tcp = TcpListener::bind(addr).await.map_err(|e| DaemonError::Io {
        what: format!("listening for DNS on TCP {addr} ({hint})"),
        source: e,
    })?;
    let mut server = Server::new(Handler { shared });
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(10), 64);
    info!(%addr, "DNS server listening");
    Ok(server)
}

fn edns_for(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|e| {
        let mut r = Edns::new();
        r.set_max_payload(e.max_payload().max(512));
        r.set_version(0);
        r
    })
}

async fn send<R: ResponseHandler>(
    mut rh: R,
    request: &Request,
    metadata: Metadata,
    answers: &[Record],
    authorities: &[Record],
    additionals: &[Record],
    edns: Option<&Edns>,
) -> ResponseInfo {
    let mut b = MessageResponseBuilder::new(&request.queries, None);
    if let Some(e) = edns {
        b.edns(e);
    }
    let resp = b.build(
        metadata,
        answers.iter(),
        authorities.iter(),
        std::iter::empty(),
        additionals.iter(),
    );
    match rh.send_response(resp).await {
        Ok(info) => info,
        Err(e) => {
            debug!("sending a DNS response failed: {e}");
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_proto::op::Header {
                metadata: m,
                counts: Default::default(),
            })
        }
    }
}

async fn error<R: ResponseHandler>(
    rh: R,
    request: &Request,
    code: ResponseCode,
    edns: Option<&Edns>,
) -> ResponseInfo {
    let mut m = Metadata::response_from_request(&request.metadata);
    m.response_code = code;
    m.recursion_available = true;
    send(rh, request, m, &[], &[], &[], edns).await
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        rh: R,
    ) -> ResponseInfo {
        let s = &self.shared;
        s.stats.queries.fetch_add(1, Ordering::Relaxed);
        let edns = edns_for(request);
        if !s.client_allowed(request.src().ip()) {
            s.stats.refused.fetch_add(1, Ordering::Relaxed);
            return error(rh, request, ResponseCode::Refused, edns.as_ref()).await;
        }
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            return error(rh, request, ResponseCode::NotImp, edns.as_ref()).await;
        }
        let queries = request.queries.queries();
        if queries.len() != 1 {
            return error(rh, request, ResponseCode::FormErr, edns.as_ref()).await;
        }
        let q = &queries[0];
        let asked: Name = q.original().name().clone();
        let qtype = match q.query_type() {
            RecordType::A => QueryType::A,
            RecordType::PTR => QueryType::Ptr,
            _ => QueryType::Other,
        };
        let records = s.records.read().expect("records lock").clone();
        let ttl = s.config.ttl;
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        match resolve(&records, &asked.to_ascii(), qtype) {
            Resolution::Addresses(mut addrs) => {
                s.stats.local_answers.fetch_add(1, Ordering::Relaxed);
                s.rng.lock().expect("rng lock").shuffle(&mut addrs);
                let answers: Vec<Record> = addrs
                    .into_iter()
                    .map(|a| Record::from_rdata(asked.clone(), ttl, RData::A(A(a))))
                    .collect();
                meta.authoritative = true;
                send(rh, request, meta, &answers, &[], &[], edns.as_ref()).await
            }
            Resolution::NoData => {
                s.stats.local_answers.fetch_add(1, Ordering::Relaxed);
                meta.authoritative = true;
                send(rh, request, meta, &[], &[], &[], edns.as_ref()).await
            }
            Resolution::NxDomain => {
                s.stats.nxdomain.fetch_add(1, Ordering::Relaxed);
                error(rh, request, ResponseCode::NXDomain, edns.as_ref()).await
            }
            Resolution::Ptr(host) => {
                s.stats.local_answers.fetch_add(1, Ordering::Relaxed);
                let target = Name::from_ascii(&host).unwrap_or_default();
                let answer = Record::from_rdata(asked.clone(), ttl, RData::PTR(PTR(target)));
                meta.authoritative = true;
                send(rh, request, meta, &[answer], &[], &[], edns.as_ref()).await
            }
            Resolution::Forward => {
                s.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                let Ok(_slot) = s.forwards.try_acquire() else {
                    s.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
                    return error(rh, request, ResponseCode::ServFail, edns.as_ref()).await;
                };
                match self.forward(request).await {
                    Some(reply) => {
                        let mut m = reply.metadata;
                        m.id = request.metadata.id;
                        send(
                            rh,
                            request,
                            m,
                            &reply.answers,
                            &reply.authorities,
                            &reply.additionals,
                            edns.as_ref(),
                        )
                        .await
                    }
                    None => {
                        s.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
                        error(rh, request, ResponseCode::ServFail, edns.as_ref()).await
                    }
                }
            }
        }
    }
}

impl Handler {
    /// Asks the upstream servers in order; the first decodable reply with our id wins.
    async fn forward(&self, request: &Request) -> Option<Message> {
        let s = &self.shared;
        let servers = s.upstream_servers();
        let id: u16 = s.rng.lock().expect("rng lock").next_u64() as u16;
        let mut query = request.as_slice().to_vec();
        if query.len() < 12 {
            return None;
        }
        query[0..2].copy_from_slice(&id.to_be_bytes());
        for server in servers {
            let r = tokio::time::timeout(s.config.fallback_timeout, async {
                if request.protocol() == Protocol::Tcp {
                    tcp_exchange(server, &query).await
                } else {
                    udp_exchange(server, &query, id).await
                }
            })
            .await;
            match r {
                Ok(Ok(bytes)) => match Message::from_vec(&bytes) {
                    Ok(m) if m.metadata.id == id => return Some(m),
                    Ok(_) => debug!(%server, "upstream reply with a wrong id"),
                    Err(e) => debug!(%server, "undecodable upstream reply: {e}"),
                },
                Ok(Err(e)) => debug!(%server, "upstream failed: {e}"),
                Err(_) => debug!(%server, "upstream timed out"),
            }
        }
        if s.upstream_servers().is_empty() {
            warn!("no upstream DNS servers to forward to (check --resolv-conf)");
        }
        None
    }
}

async fn udp_exchange(server: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await?;
        if n >= 2 && buf[0..2] == id.to_be_bytes() {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server).await?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.write_all(&framed).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_containers_and_the_host_may_ask() {
        let shared = DnsShared::new(
            DnsConfig {
                domain: "weave.local.".into(),
                listen: "0.0.0.0:53".parse().unwrap(),
                ttl: 1,
                resolv_conf: "/nonexistent".into(),
                fallback_timeout: Duration::from_secs(1),
            },
            Records::new(
                weft_proto::PeerName::from_bytes([2, 0, 0, 0, 0, 1]),
                "weave.local.",
            ),
            1,
        );
        shared.set_clients(vec![
            "10.32.0.0/12".parse().unwrap(),
            "172.17.0.0/16".parse().unwrap(),
            "198.18.0.1/32".parse().unwrap(),
        ]);
        for ok in [
            "127.0.0.1",
            "::1",
            "10.32.4.5",
            "172.17.0.2",
            "198.18.0.1",
            "::ffff:10.32.0.9",
        ] {
            assert!(shared.client_allowed(ok.parse().unwrap()), "{ok}");
        }
        for no in ["198.18.0.2", "8.8.8.8", "2001:db8::1"] {
            assert!(!shared.client_allowed(no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn resolv_conf_parsing() {
        let t = "# comment\nnameserver 198.18.0.9\nsearch example\nnameserver 2001:db8::1\nnameserver bogus\n";
        assert_eq!(
            parse_resolv_conf(t),
            vec![
                "198.18.0.9:53".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ]
        );
    }
}
