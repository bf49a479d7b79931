//! The control task: drives the sans-IO mesh [`Router`] from sockets and timers.
//!
//! One task owns the router. Everything else talks to it through [`ControlInput`]: the accept
//! loop hands over new TCP streams, per-connection reader tasks forward bytes, the data plane
//! forwards UDP heartbeats, the API asks for status and changes targets. After each input the
//! task carries out the router's actions (dial, write, close, send UDP), passes routes to the
//! data plane, persists targets, and sleeps until the router's next timer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use weft_core::mesh::{Action, ConnId, Event, Router, RouterStatus};

use crate::dataplane::DataPlaneMsg;
use crate::state::StateDir;

/// How long a dial may take before it counts as failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for one connection before we decide the peer is not reading.
const SEND_QUEUE: usize = 4096;

pub enum ControlInput {
    Accepted {
        stream: TcpStream,
        remote: SocketAddr,
    },
    Dialed {
        conn: ConnId,
        result: Result<TcpStream, String>,
    },
    Data {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    Closed {
        conn: ConnId,
        reason: String,
    },
    Udp {
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Status(oneshot::Sender<RouterStatus>),
    /// Targets already resolved: `(as given, address, port given)`.
    Connect {
        targets: Vec<(String, SocketAddr, bool)>,
        replace: bool,
        reply: oneshot::Sender<()>,
    },
    Forget {
        targets: Vec<String>,
        reply: oneshot::Sender<()>,
    },
}

struct ConnIo {
    tx: mpsc::Sender<Vec<u8>>,
    reader: JoinHandle<()>,
}

pub struct Control {
    router: Router,
    rx: mpsc::Receiver<ControlInput>,
    tx: mpsc::Sender<ControlInput>,
    conns: HashMap<ConnId, ConnIo>,
    udp: Arc<UdpSocket>,
    dataplane: mpsc::Sender<DataPlaneMsg>,
    state: StateDir,
    bind_ip: Option<IpAddr>,
}

impl Control {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        router: Router,
        rx: mpsc::Receiver<ControlInput>,
        tx: mpsc::Sender<ControlInput>,
        udp: Arc<UdpSocket>,
        dataplane: mpsc::Sender<DataPlaneMsg>,
        state: StateDir,
        bind_ip: Option<IpAddr>,
    ) -> Self {
        Control {
            router,
            rx,
            tx,
            conns: HashMap::new(),
            udp,
            dataplane,
            state,
            bind_ip,
        }
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.carry_out().await;
            let deadline = self.router.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = self.rx.recv() => match m {
                    Some(m) => self.handle(m),
                    None => break,
                },
                _ = sleep => self.router.handle_timeout(Instant::now()),
                _ = shutdown.changed() => break,
            }
        }
        for (_, io) in self.conns.drain() {
            io.reader.abort();
        }
    }

    fn handle(&mut self, m: ControlInput) {
        let now = Instant::now();
        match m {
            ControlInput::Accepted { stream, remote } => {
                if let Some(conn) = self.router.handle_accept(now, remote) {
                    self.start_io(conn, stream);
                }
            }
            ControlInput::Dialed { conn, result } => match result {
                Ok(stream) => {
                    self.start_io(conn, stream);
                    self.router.handle_dialed(now, conn, Ok(()));
                }
                Err(e) => self.router.handle_dialed(now, conn, Err(e)),
            },
            ControlInput::Data { conn, bytes } => self.router.handle_conn_data(now, conn, &bytes),
            ControlInput::Closed { conn, reason } => {
                if let Some(io) = self.conns.remove(&conn) {
                    io.reader.abort();
                }
                self.router.handle_conn_closed(now, conn, reason);
            }
            ControlInput::Udp { from, bytes } => self.router.handle_udp(now, from, &bytes),
            ControlInput::Status(reply) => {
                let _ = reply.send(self.router.status(now));
            }
            ControlInput::Connect {
                targets,
                replace,
                reply,
            } => {
                self.router.connect(now, targets, replace);
                let _ = reply.send(());
            }
            ControlInput::Forget { targets, reply } => {
                self.router.forget(now, &targets);
                let _ = reply.send(());
            }
        }
    }

    async fn carry_out(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(a) = self.router.poll_action() {
                progressed = true;
                self.act(a);
            }
            while let Some(e) = self.router.poll_event() {
                progressed = true;
                match e {
                    Event::DataPlane(t) => {
                        let _ = self.dataplane.send(DataPlaneMsg::Table(t)).await;
                    }
                    Event::PeerRemoved(p) => {
                        let _ = self.dataplane.send(DataPlaneMsg::ForgetPeer(p)).await;
                    }
                    Event::TargetsChanged(t) => {
                        if let Err(e) = self.state.save_json(crate::TARGETS_FILE, &t) {
                            warn!("could not persist targets: {e}");
                        }
                    }
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Dial { conn, addr } => {
                let tx = self.tx.clone();
                let bind = self.bind_ip;
                tokio::spawn(async move {
                    let result = dial(addr, bind).await;
                    let _ = tx.send(ControlInput::Dialed { conn, result }).await;
                });
            }
            Action::Send { conn, bytes } => {
                let overflow = match self.conns.get(&conn) {
                    Some(io) => io.tx.try_send(bytes).is_err(),
                    None => false,
                };
                if overflow {
                    if let Some(io) = self.conns.remove(&conn) {
                        io.reader.abort();
                    }
                    self.router.handle_conn_closed(
                        Instant::now(),
                        conn,
                        "peer is not reading its messages (send queue full)".into(),
                    );
                }
            }
            Action::Close { conn } => {
                if let Some(io) = self.conns.remove(&conn) {
                    // Dropping the sender ends the writer task, which shuts the socket down.
                    io.reader.abort();
                }
            }
            Action::SendUdp { to, bytes } => {
                if let Err(e) = self.udp.try_send_to(&bytes, to) {
                    debug!(%to, "UDP heartbeat send failed: {e}");
                }
            }
        }
    }

    fn start_io(&mut self, conn: ConnId, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(SEND_QUEUE);
        let ctl = self.tx.clone();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if let Err(e) = wr.write_all(&b).await {
                    let _ = ctl
                        .send(ControlInput::Closed {
                            conn,
                            reason: format!("write: {e}"),
                        })
                        .await;
                    return;
                }
            }
            let _ = wr.shutdown().await;
        });
        let ctl = self.tx.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let reason = loop {
                match rd.read(&mut buf).await {
                    Ok(0) => break "connection closed by peer".to_string(),
                    Ok(n) => {
                        let msg = ControlInput::Data {
                            conn,
                            bytes: buf[..n].to_vec(),
                        };
                        if ctl.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => break format!("read: {e}"),
                }
            };
            let _ = ctl.send(ControlInput::Closed { conn, reason }).await;
        });
        self.conns.insert(conn, ConnIo { tx, reader });
    }
}

async fn dial(addr: SocketAddr, bind: Option<IpAddr>) -> Result<TcpStream, String> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    if let Some(ip) = bind {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    match tokio::time::timeout(DIAL_TIMEOUT, sock.connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: connection timed out".into()),
    }
}

/// Accepts control connections, at most `burst` at once and `rate` per second after that, so
/// a flood of connection attempts cannot starve the router.
pub async fn accept_loop(
    listener: TcpListener,
    tx: mpsc::Sender<ControlInput>,
    mut shutdown: watch::Receiver<bool>,
) {
    const BURST: f64 = 20.0;
    const PER_SEC: f64 = 20.0;
    let mut tokens = BURST;
    let mut last = Instant::now();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, remote)) => {
                    let now = Instant::now();
                    tokens = (tokens + now.duration_since(last).as_secs_f64() * PER_SEC).min(BURST);
                    last = now;
                    if tokens < 1.0 {
                        tokio::time::sleep(Duration::from_secs_f64((1.0 - tokens) / PER_SEC)).await;
                        tokens = 1.0;
                        last = Instant::now();
                    }
                    tokens -= 1.0;
                    if tx.send(ControlInput::Accepted { stream, remote }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!("accepting a control connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => {
                info!("no longer accepting connections");
                return;
            }
        }
    }
}
