//! One control connection's state machine, in the manner of quinn-proto's `Connection`: what
//! the peer sent goes in (`handle_*`), frames come out one at a time ([`Connection::poll_frame`]),
//! bytes to write are queued as [`Action::Send`], and every deadline lives in one
//! [`TimerTable`] whose earliest entry is [`Connection::next_timeout`].
//!
//! Life cycle: `Dialing` (outbound only) → `Header` (both sides send `weft` and their
//! versions) → `Handshake` (Noise, encrypted connections only) → `Hello` (identities) →
//! `Ready` (registered by the router; gossip flows; UDP heartbeats start) → *established* once
//! the peer acknowledges one of our UDP heartbeats over TCP.
//!
//! Invariants:
//! - before `Ready` only the handshake timer runs; from `Ready` on, the idle, heartbeat and
//!   UDP-silence timers always run, the UDP heartbeat timer once the peer's sleeve address is
//!   known, and the rekey and retire timers mirror the crypto state;
//! - a connection never decides anything about other connections: duplicates, the connection
//!   limit and topology are the router's.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::info;
use weft_proto::PeerName;
use weft_proto::control::{self, Channel, ControlMsg, FrameReader, Hello, PeerVersion};
use weft_proto::sleeve;

use super::ConnId;
use super::maker::TargetKey;
use super::router::{Action, CryptoSettings, Timing};
use super::secure::Secure;
use crate::crypto::{CryptoError, PeerKeys};

/// Largest message accepted before the peer has said who it is.
pub(super) const MAX_PRE_HELLO_FRAME: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Dialing,
    Header,
    /// Noise handshake (encrypted connections only).
    Handshake,
    Hello,
    Ready,
}

#[derive(Debug)]
pub(super) struct Remote {
    pub name: PeerName,
    pub nickname: String,
    pub conn_uid: u64,
}

/// Why a connection is being closed, which decides what happens to its target.
pub(super) enum Close {
    /// Retry later with backoff.
    Failure(String),
    /// The peer's password differs from ours: a failure, also kept for status even on a
    /// connection we dialled.
    AuthFailed(String),
    /// Another connection to the same peer won the tie-break; nothing to retry.
    Duplicate(String),
    /// A half-open inbound connection dropped to make room (a flood of them): not worth a
    /// log line or a status entry each.
    Shed(String),
    /// Never retry this target.
    Suspend(String),
    /// One side refuses the other (e.g. their IP allocation rings differ): retried with
    /// backoff like a failure, and shown on both sides even without a target.
    Refused(String),
}

impl Close {
    pub fn reason(&self) -> &str {
        match self {
            Close::Failure(r)
            | Close::AuthFailed(r)
            | Close::Duplicate(r)
            | Close::Shed(r)
            | Close::Suspend(r)
            | Close::Refused(r) => r,
        }
    }
}

/// Our side of every hello.
#[derive(Clone, Debug)]
pub(super) struct Identity {
    pub name: PeerName,
    pub nickname: String,
    pub uid: u64,
    pub tcp_port: u16,
    pub udp_port: u16,
}

/// A connection's deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// Header, handshake and hello must be done by then.
    Handshake,
    /// Nothing received for the read timeout: the connection is dead.
    Idle,
    /// Our next TCP heartbeat.
    Heartbeat,
    /// No UDP heartbeat from the peer for the UDP timeout: its sleeve does not reach us.
    UdpSilence,
    /// Our next UDP heartbeat.
    UdpHeartbeat,
    /// Renew the data keys (the side that dialled).
    Rekey,
    /// Stop accepting the previous data keys.
    Retire,
}

impl Timer {
    const ALL: [Timer; 7] = [
        Timer::Handshake,
        Timer::Idle,
        Timer::Heartbeat,
        Timer::UdpSilence,
        Timer::UdpHeartbeat,
        Timer::Rekey,
        Timer::Retire,
    ];
}

/// Every deadline of one connection; the earliest is when it next needs attention.
#[derive(Clone, Debug, Default)]
pub(super) struct TimerTable([Option<Instant>; Timer::ALL.len()]);

impl TimerTable {
    pub fn set(&mut self, t: Timer, at: Instant) {
        self.0[t as usize] = Some(at);
    }

    pub fn stop(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }

    pub fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize]
    }

    /// Whether `t` is running and due at `now`.
    pub fn expired(&self, t: Timer, now: Instant) -> bool {
        self.get(t).is_some_and(|at| at <= now)
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

/// What a connection's timers asked for that only the router can do.
pub(super) enum Expired {
    Close(String),
    /// The data plane's keys for the peer changed.
    Keys(PeerKeys),
}

#[derive(Debug)]
pub(super) struct Connection {
    pub id: ConnId,
    pub outbound: bool,
    pub addr: SocketAddr,
    pub phase: Phase,
    /// Negotiated protocol version, once headers are exchanged.
    version: u8,
    /// The header we sent.
    sent_header: [u8; control::HEADER_LEN],
    reader: FrameReader,
    pub our_conn_id: u64,
    pub remote: Option<Remote>,
    pub target: Option<TargetKey>,
    pub ready_at: Instant,
    /// Where the peer's sleeve is: known at once when we dialled, learned from its first
    /// heartbeat when it dialled us (which also follows NAT rebinding).
    pub udp_addr: Option<SocketAddr>,
    /// The peer acknowledged one of our UDP heartbeats.
    pub established: bool,
    /// We acknowledged one of the peer's.
    acked_remote: bool,
    pub last_gossip_request: Option<Instant>,
    /// When we last answered the peer's request for our full topology.
    pub last_full_reply: Option<Instant>,
    /// Channels whose last full state to this peer is still in the shell's queue.
    pub full_unsent: Vec<Channel>,
    /// Channels whose full state was held back meanwhile, to send once that one is out.
    pub full_held: Vec<Channel>,
    /// The versions of the peer's last request for what it lacks that had to wait for our
    /// previous answer to be written (protocol 2).
    pub held_versions: Option<Vec<PeerVersion>>,
    /// When we last answered the peer's topology digest with our versions.
    pub last_versions_reply: Option<Instant>,
    /// When each channel's digest from this neighbour was last compared, and when its full
    /// state was last sent on request (each at most once a second).
    pub last_state_digest: Vec<(Channel, Instant)>,
    pub last_state_reply: Vec<(Channel, Instant)>,
    /// The peer was told to connect to us and redials if dropped ([`ControlMsg::Pinned`]).
    pub pinned: bool,
    /// Entries sent in answer to [`ControlMsg::TopologyHave`] wants since the instant.
    pub want_sent: Option<(Instant, usize)>,
    secure: Secure,
    timers: TimerTable,
}

impl Connection {
    pub fn new(
        id: ConnId,
        outbound: bool,
        addr: SocketAddr,
        phase: Phase,
        now: Instant,
        conn_id: u64,
        t: &Timing,
    ) -> Self {
        let mut timers = TimerTable::default();
        let deadline = if outbound {
            t.handshake_timeout
        } else {
            t.pending_timeout
        };
        timers.set(Timer::Handshake, now + deadline);
        Connection {
            id,
            outbound,
            addr,
            phase,
            version: 0,
            sent_header: [0; control::HEADER_LEN],
            reader: FrameReader::default(),
            our_conn_id: conn_id,
            remote: None,
            target: None,
            ready_at: now,
            udp_addr: None,
            established: false,
            acked_remote: false,
            last_gossip_request: None,
            last_full_reply: None,
            full_unsent: Vec::new(),
            full_held: Vec::new(),
            held_versions: None,
            last_versions_reply: None,
            last_state_digest: Vec::new(),
            last_state_reply: Vec::new(),
            want_sent: None,
            pinned: false,
            secure: Secure::default(),
            timers,
        }
    }

    /// The negotiated protocol version (0 before the headers are exchanged).
    /// Whether something keyed by `channel` in `log` last happened at least `every` ago (and
    /// notes that it happens now).
    pub fn due(
        log: &mut Vec<(Channel, Instant)>,
        channel: Channel,
        now: Instant,
        every: Duration,
    ) -> bool {
        match log.iter_mut().find(|(c, _)| *c == channel) {
            Some((_, t)) if now < *t + every => false,
            Some((_, t)) => {
                *t = now;
                true
            }
            None => {
                log.push((channel, now));
                true
            }
        }
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    /// When [`Connection::handle_timeout`] must next be called.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    pub fn secure(&self) -> &Secure {
        &self.secure
    }

    /// `->` for a connection we dialled, `<-` for one we accepted (Weave's log prefixes).
    pub fn arrow(&self) -> &'static str {
        if self.outbound { "->" } else { "<-" }
    }

    // ---- inputs ---------------------------------------------------------------------------

    /// The dial finished: the handshake starts now.
    pub fn handle_dialed(&mut self, now: Instant, t: &Timing) {
        self.phase = Phase::Header;
        self.timers.set(Timer::Handshake, now + t.handshake_timeout);
    }

    /// Bytes arrived.
    pub fn handle_data(&mut self, now: Instant, bytes: &[u8], t: &Timing) {
        if self.phase == Phase::Ready {
            self.timers.set(Timer::Idle, now + t.read_timeout);
        }
        self.reader.push(bytes);
    }

    /// The peer's header, once it is all here: negotiates the version and starts the
    /// handshake (or the hello). Returns whether it was here.
    pub fn handle_header(
        &mut self,
        me: &Identity,
        crypto: Option<&CryptoSettings>,
        protocol_max: u8,
        out: &mut VecDeque<Action>,
    ) -> Result<bool, Close> {
        let Some(h) = self.reader.take_raw(control::HEADER_LEN) else {
            return Ok(false);
        };
        let header: [u8; control::HEADER_LEN] = h
            .try_into()
            .expect("take_raw returns exactly HEADER_LEN bytes");
        let (version, flags) = control::negotiate(&header, control::PROTOCOL_MIN, protocol_max)
            .map_err(|e| Close::Failure(e.to_string()))?;
        self.version = version;
        let remote_encrypted = flags & control::FLAG_ENCRYPTED != 0;
        self.secure.data_cipher = crate::crypto::DataCipher::negotiate(
            version,
            control::header_flags(&self.sent_header) & control::FLAG_AES_GCM != 0,
            flags & control::FLAG_AES_GCM != 0,
        );
        let prologue = if self.outbound {
            crate::crypto::prologue(version, &self.sent_header, &header)
        } else {
            crate::crypto::prologue(version, &header, &self.sent_header)
        };
        match (crypto, remote_encrypted) {
            (Some(_), false) => Err(Close::Failure(
                "password specified, but the peer requested an unencrypted connection".into(),
            )),
            (None, true) => Err(Close::Failure(
                "no password specified, but the peer requested an encrypted connection".into(),
            )),
            (None, false) => {
                self.phase = Phase::Hello;
                self.send_hello(me, false, out);
                Ok(true)
            }
            (Some(cr), true) => {
                self.phase = Phase::Handshake;
                let failed = |e: CryptoError| Close::Failure(format!("handshake: {e}"));
                if self.outbound {
                    let (hs, m1) = crate::crypto::Handshake::initiator(
                        &cr.static_key,
                        &cr.psks[0],
                        &prologue,
                        &cr.entropy,
                    )
                    .map_err(failed)?;
                    self.secure.handshake = Some(hs);
                    self.send_handshake(control::HANDSHAKE_MSG, &m1, out);
                } else {
                    let hs = crate::crypto::Handshake::responder(
                        &cr.static_key,
                        &cr.psks,
                        &prologue,
                        &cr.entropy,
                    )
                    .map_err(failed)?;
                    self.secure.handshake = Some(hs);
                }
                Ok(true)
            }
        }
    }

    /// One Noise handshake frame from the peer; once the handshake is done, our hello goes
    /// out.
    pub fn handle_handshake(
        &mut self,
        body: &[u8],
        me: &Identity,
        crypto: Option<&CryptoSettings>,
        out: &mut VecDeque<Action>,
    ) -> Result<(), Close> {
        let (kind, msg) = body
            .split_first()
            .ok_or_else(|| Close::Failure("empty handshake message".into()))?;
        if *kind == control::HANDSHAKE_ERROR {
            return Err(Close::Failure(
                "authentication failed: the peer refused our password (every peer needs the same --password)".into(),
            ));
        }
        if *kind != control::HANDSHAKE_MSG {
            return Err(Close::Failure("malformed handshake message".into()));
        }
        let hs = self
            .secure
            .handshake
            .as_mut()
            .ok_or_else(|| Close::Failure("unexpected handshake message".into()))?;
        match hs.read(msg) {
            Err(CryptoError::AuthFailed) => {
                // Tell the peer, so both sides can say what is wrong; nothing else is revealed.
                self.send_handshake(control::HANDSHAKE_ERROR, b"authentication failed", out);
                Err(Close::AuthFailed(
                    "authentication failed: the peer's password differs from ours".into(),
                ))
            }
            Err(e) => Err(Close::Failure(format!("handshake: {e}"))),
            Ok(reply) => {
                let finished = hs.is_finished();
                if let Some(r) = reply {
                    self.send_handshake(control::HANDSHAKE_MSG, &r, out);
                }
                if finished {
                    let hs = self.secure.handshake.take().expect("checked above");
                    let keys = hs
                        .finish()
                        .map_err(|e| Close::Failure(format!("handshake: {e}")))?;
                    self.secure.cipher = Some(crate::crypto::ControlCipher::new(&keys));
                    let psk = crypto.and_then(|cr| cr.psks.get(keys.psk_index).cloned());
                    self.secure.handshake_done(keys, psk);
                    self.phase = Phase::Hello;
                    let trusts = trusts(crypto, self.addr);
                    self.send_hello(me, trusts, out);
                }
                Ok(())
            }
        }
    }

    /// The peer's hello passed the router's checks: the connection is ready, and its
    /// heartbeats start.
    pub fn handle_ready(&mut self, now: Instant, hello: &Hello, conn_uid: u64, t: &Timing) {
        self.remote = Some(Remote {
            name: hello.name,
            nickname: hello.nickname.clone(),
            conn_uid,
        });
        self.phase = Phase::Ready;
        self.ready_at = now;
        self.timers.stop(Timer::Handshake);
        self.timers.set(Timer::Idle, now + t.read_timeout);
        self.timers
            .set(Timer::Heartbeat, now + t.heartbeat_interval);
        self.timers
            .set(Timer::UdpSilence, now + t.udp_heartbeat_timeout);
        if self.outbound {
            self.udp_addr = Some(SocketAddr::new(self.addr.ip(), hello.udp_port));
            self.timers.set(Timer::UdpHeartbeat, now);
        }
        info!(
            "{}[{}|{}({})]: connection ready; using protocol version {}",
            self.arrow(),
            self.addr,
            hello.name,
            hello.nickname,
            self.version
        );
    }

    /// The peer acknowledged one of our UDP heartbeats; returns whether the connection just
    /// became established.
    pub fn handle_heartbeat_ack(&mut self, now: Instant, conn_uid: u64, t: &Timing) -> bool {
        let Some(r) = self.remote.as_ref().filter(|r| r.conn_uid == conn_uid) else {
            return false;
        };
        if self.established {
            return false;
        }
        self.established = true;
        self.timers
            .set(Timer::UdpHeartbeat, now + t.udp_slow_heartbeat);
        info!(
            "{}[{}|{}({})]: connection fully established",
            self.arrow(),
            self.addr,
            r.name,
            r.nickname
        );
        true
    }

    /// A UDP heartbeat from the peer of this connection, from `from`. `None` if it is not for
    /// this connection; else whether to acknowledge it and whether the peer's sleeve address
    /// changed.
    pub fn handle_udp_heartbeat(
        &mut self,
        now: Instant,
        from: SocketAddr,
        conn_uid: u64,
        t: &Timing,
    ) -> Option<(bool, bool)> {
        if self.remote.as_ref().is_none_or(|r| r.conn_uid != conn_uid) {
            return None;
        }
        self.timers
            .set(Timer::UdpSilence, now + t.udp_heartbeat_timeout);
        let addr_changed = self.udp_addr != Some(from);
        if addr_changed {
            self.udp_addr = Some(from);
            self.timers.set(Timer::UdpHeartbeat, now);
        }
        let ack = !self.acked_remote;
        self.acked_remote = true;
        Some((ack, addr_changed))
    }

    /// Whatever is due at `now`: heartbeats go out, a rekey starts, old keys retire, or the
    /// connection is found dead.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        t: &Timing,
        local: PeerName,
        crypto: Option<&CryptoSettings>,
        out: &mut VecDeque<Action>,
    ) -> Option<Expired> {
        if self.phase != Phase::Ready {
            return self
                .timers
                .expired(Timer::Handshake, now)
                .then(|| Expired::Close("handshake timed out".into()));
        }
        if self.timers.expired(Timer::Idle, now) {
            let secs = t.read_timeout.as_secs();
            return Some(Expired::Close(format!(
                "no message received for {secs}s; connection dead"
            )));
        }
        if self.timers.expired(Timer::UdpSilence, now) {
            return Some(Expired::Close("timed out waiting for UDP heartbeat".into()));
        }
        if self.timers.expired(Timer::Heartbeat, now) {
            self.timers
                .set(Timer::Heartbeat, now + t.heartbeat_interval);
            self.send_msg(&ControlMsg::Heartbeat, out);
        }
        if let Some(to) = self.udp_addr
            && self.timers.expired(Timer::UdpHeartbeat, now)
        {
            let every = if self.established {
                t.udp_slow_heartbeat
            } else {
                t.udp_fast_heartbeat
            };
            self.timers.set(Timer::UdpHeartbeat, now + every);
            let (conn_uid, peer) = self
                .remote
                .as_ref()
                .map_or((0, weft_proto::BROADCAST_PEER), |r| (r.conn_uid, r.name));
            let bytes = sleeve::encode_heartbeat(local, conn_uid).to_vec();
            out.push_back(Action::SendUdp { to, peer, bytes });
        }
        if self.timers.expired(Timer::Rekey, now) {
            let msg = match crypto {
                Some(cr) => self.secure.begin_rekey(&cr.psks[0], &cr.entropy),
                None => Ok(None),
            };
            self.sync_crypto_timers();
            match msg {
                Ok(Some(m)) => self.send_msg(&m, out),
                Ok(None) => {}
                Err(e) => return Some(Expired::Close(format!("rekey: {e}"))),
            }
        }
        if self.timers.expired(Timer::Retire, now) {
            let keys = self.secure.retire();
            self.sync_crypto_timers();
            return Some(Expired::Keys(keys));
        }
        None
    }

    /// The next frame's body, decrypted on encrypted connections; `None` until it is all
    /// here.
    pub fn poll_frame(&mut self, max: usize) -> Result<Option<Vec<u8>>, Close> {
        let Some(body) = self
            .reader
            .next_frame(max)
            .map_err(|e| Close::Failure(e.to_string()))?
        else {
            return Ok(None);
        };
        if self.phase == Phase::Handshake {
            return Ok(Some(body));
        }
        match &mut self.secure.cipher {
            Some(cipher) => cipher.open(body).map(Some).map_err(|_| {
                Close::Failure(
                    "control message failed to decrypt (tampered with, or out of order)".into(),
                )
            }),
            None => Ok(Some(body)),
        }
    }

    // ---- crypto ---------------------------------------------------------------------------

    /// After the hello: the handshake's keys become the data plane's (or are forgotten for a
    /// trusted pair). Returns the keys for the data plane.
    pub fn start_data(
        &mut self,
        encrypt: bool,
        now: Instant,
        rekey_interval: std::time::Duration,
    ) -> Option<PeerKeys> {
        let keys = self
            .secure
            .start_data(encrypt, self.outbound, now, rekey_interval);
        self.sync_crypto_timers();
        keys
    }

    /// The peer renews the data keys: returns our answer and the keys to use.
    pub fn handle_rekey(
        &mut self,
        epoch: u8,
        msg: &[u8],
        crypto: &CryptoSettings,
    ) -> Result<(ControlMsg, PeerKeys), CryptoError> {
        let r = self
            .secure
            .on_rekey(self.outbound, epoch, msg, &crypto.psks, &crypto.entropy);
        self.sync_crypto_timers();
        r
    }

    /// The peer answered our rekey: returns what to tell it and the keys to use.
    pub fn handle_rekey_ack(
        &mut self,
        epoch: u8,
        msg: &[u8],
        now: Instant,
        interval: std::time::Duration,
    ) -> Result<(ControlMsg, PeerKeys), CryptoError> {
        let r = self.secure.on_rekey_ack(epoch, msg, now, interval);
        self.sync_crypto_timers();
        r
    }

    /// The peer sends with the new keys now.
    pub fn handle_rekey_done(&mut self, epoch: u8, now: Instant) -> Result<PeerKeys, CryptoError> {
        let r = self.secure.on_rekey_done(epoch, now);
        self.sync_crypto_timers();
        r
    }

    /// The password this connection last proved is no longer accepted: a connection we
    /// dialled renews its keys at once, proving the current one.
    pub fn reprove_password(&mut self, now: Instant, accepted: &[crate::crypto::Secret]) {
        let stale = self
            .secure
            .auth_psk
            .as_ref()
            .is_some_and(|p| !accepted.iter().any(|a| **a == **p));
        if stale && self.outbound && self.secure.next_rekey.is_some() {
            self.secure.next_rekey = Some(now);
            self.sync_crypto_timers();
        }
    }

    fn sync_crypto_timers(&mut self) {
        for (timer, at) in [
            (Timer::Rekey, self.secure.next_rekey),
            (Timer::Retire, self.secure.retire_at),
        ] {
            match at {
                Some(at) => self.timers.set(timer, at),
                None => self.timers.stop(timer),
            }
        }
    }

    // ---- outputs --------------------------------------------------------------------------

    pub fn send_raw(&self, bytes: Vec<u8>, out: &mut VecDeque<Action>) {
        out.push_back(Action::Send {
            conn: self.id,
            bytes,
        });
    }

    /// Our header: the versions we speak, whether we encrypt and (if so) whether we offer
    /// AES-256-GCM for data. Kept: from version 4 the handshake binds it.
    pub fn send_header(
        &mut self,
        crypto: Option<&CryptoSettings>,
        protocol_max: u8,
        out: &mut VecDeque<Action>,
    ) {
        let flags = match crypto {
            None => 0,
            Some(c) if c.offer_aes_gcm => control::FLAG_ENCRYPTED | control::FLAG_AES_GCM,
            Some(_) => control::FLAG_ENCRYPTED,
        };
        self.sent_header = control::encode_header(control::PROTOCOL_MIN, protocol_max, flags);
        self.send_raw(self.sent_header.to_vec(), out);
    }

    /// Frames a message body, encrypting it first on encrypted connections.
    pub fn send_body(&mut self, body: Vec<u8>, out: &mut VecDeque<Action>) {
        let body = match &mut self.secure.cipher {
            Some(cipher) => cipher.seal(body),
            None => body,
        };
        self.send_raw(control::frame(&body), out);
    }

    pub fn send_msg(&mut self, msg: &ControlMsg, out: &mut VecDeque<Action>) {
        self.send_body(msg.encode_body(), out);
    }

    fn send_handshake(&self, kind: u8, msg: &[u8], out: &mut VecDeque<Action>) {
        let mut body = Vec::with_capacity(1 + msg.len());
        body.push(kind);
        body.extend_from_slice(msg);
        self.send_raw(control::frame(&body), out);
    }

    fn send_hello(&mut self, me: &Identity, trusts_you: bool, out: &mut VecDeque<Action>) {
        let hello = ControlMsg::Hello(Hello {
            name: me.name,
            nickname: me.nickname.clone(),
            uid: me.uid,
            conn_id: self.our_conn_id,
            tcp_port: me.tcp_port,
            udp_port: me.udp_port,
            trusts_you,
        });
        self.send_msg(&hello, out);
    }
}

/// Whether we trust a peer at `addr` with unencrypted data.
pub(super) fn trusts(crypto: Option<&CryptoSettings>, addr: SocketAddr) -> bool {
    match (crypto, addr.ip()) {
        (Some(cr), std::net::IpAddr::V4(ip)) => cr.trusted.iter().any(|n| n.contains(&ip)),
        _ => false,
    }
}

pub(super) fn msg_name(m: &ControlMsg) -> &'static str {
    match m {
        ControlMsg::Hello(_) => "hello",
        ControlMsg::Heartbeat => "heartbeat",
        ControlMsg::Refused { .. } => "refusal",
        ControlMsg::Gossip { .. } => "gossip",
        ControlMsg::GossipBroadcast { .. } => "gossip broadcast",
        ControlMsg::GossipUnicast { .. } => "gossip unicast",
        ControlMsg::GossipRequest { .. } => "gossip request",
        ControlMsg::TopologyVersions { .. } => "topology versions",
        ControlMsg::TopologyDigest { .. } => "topology digest",
        ControlMsg::StateDigest { .. } => "state digest",
        ControlMsg::Pinned => "pinned",
        ControlMsg::TopologyHave { .. } => "topology have",
        ControlMsg::Overlay(_) => "overlay message",
        ControlMsg::Rekey { .. } | ControlMsg::RekeyAck { .. } | ControlMsg::RekeyDone { .. } => {
            "rekey message"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_table_answers_its_earliest_deadline() {
        let now = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next_timeout(), None);
        t.set(Timer::Heartbeat, now + Duration::from_secs(10));
        t.set(Timer::Idle, now + Duration::from_secs(35));
        t.set(Timer::UdpHeartbeat, now + Duration::from_millis(500));
        assert_eq!(t.next_timeout(), Some(now + Duration::from_millis(500)));
        assert!(t.expired(Timer::UdpHeartbeat, now + Duration::from_secs(1)));
        assert!(!t.expired(Timer::Rekey, now + Duration::from_secs(1000)));
        t.stop(Timer::UdpHeartbeat);
        assert_eq!(t.next_timeout(), Some(now + Duration::from_secs(10)));
        t.set(Timer::Heartbeat, now + Duration::from_secs(40));
        assert_eq!(t.next_timeout(), Some(now + Duration::from_secs(35)));
    }

    fn conn(outbound: bool, now: Instant) -> Connection {
        let addr = "198.18.0.2:6783".parse().expect("an address");
        let phase = if outbound {
            Phase::Dialing
        } else {
            Phase::Header
        };
        Connection::new(ConnId(1), outbound, addr, phase, now, 7, &Timing::default())
    }

    fn hello() -> Hello {
        Hello {
            name: PeerName::from_bytes([0x0a, 0, 0, 0, 0, 2]),
            nickname: "two".into(),
            uid: 9,
            conn_id: 3,
            tcp_port: 6783,
            udp_port: 6783,
            trusts_you: false,
        }
    }

    #[test]
    fn before_ready_only_the_handshake_timer_runs() {
        let now = Instant::now();
        let t = Timing::default();
        let mut c = conn(true, now);
        assert_eq!(c.next_timeout(), Some(now + t.handshake_timeout));
        let later = now + Duration::from_secs(3);
        c.handle_dialed(later, &t);
        assert_eq!(c.next_timeout(), Some(later + t.handshake_timeout));
        let mut out = VecDeque::new();
        let due = c.handle_timeout(
            later + t.handshake_timeout,
            &t,
            hello().name,
            None,
            &mut out,
        );
        assert!(matches!(due, Some(Expired::Close(r)) if r == "handshake timed out"));
    }

    #[test]
    fn a_ready_connection_sends_heartbeats_and_dies_of_silence() {
        let now = Instant::now();
        let t = Timing::default();
        let mut c = conn(true, now);
        c.handle_dialed(now, &t);
        c.handle_ready(now, &hello(), 5, &t);
        // The sleeve address is known (we dialled): a UDP heartbeat is due at once.
        assert_eq!(c.next_timeout(), Some(now));
        let mut out = VecDeque::new();
        assert!(
            c.handle_timeout(now, &t, hello().name, None, &mut out)
                .is_none()
        );
        assert!(matches!(out.pop_front(), Some(Action::SendUdp { .. })));
        assert_eq!(c.next_timeout(), Some(now + t.udp_fast_heartbeat));
        // Acknowledged: established, heartbeats slow down.
        assert!(c.handle_heartbeat_ack(now, 5, &t));
        assert!(!c.handle_heartbeat_ack(now, 5, &t), "only once");
        assert_eq!(c.next_timeout(), Some(now + t.udp_slow_heartbeat));
        // The peer's UDP heartbeats keep it alive; TCP heartbeats go out.
        let at = now + t.heartbeat_interval;
        c.handle_udp_heartbeat(at, c.udp_addr.expect("known"), 5, &t);
        out.clear();
        assert!(
            c.handle_timeout(at, &t, hello().name, None, &mut out)
                .is_none()
        );
        assert!(out.iter().any(|a| matches!(a, Action::Send { .. })));
        // A heartbeat for another connection is not ours.
        assert!(
            c.handle_udp_heartbeat(at, c.udp_addr.expect("known"), 6, &t)
                .is_none()
        );
        // Nothing at all for the read timeout: dead.
        let dead = now + t.read_timeout;
        let due = c.handle_timeout(dead, &t, hello().name, None, &mut out);
        assert!(matches!(due, Some(Expired::Close(r)) if r.contains("no message received")));
    }

    #[test]
    fn an_accepted_connection_learns_the_peers_sleeve_from_its_heartbeat() {
        let now = Instant::now();
        let t = Timing::default();
        let mut c = conn(false, now);
        c.handle_ready(now, &hello(), 5, &t);
        assert_eq!(c.udp_addr, None);
        assert_eq!(c.next_timeout(), Some(now + t.heartbeat_interval));
        let from: SocketAddr = "198.18.0.2:40000".parse().expect("an address");
        assert_eq!(c.handle_udp_heartbeat(now, from, 5, &t), Some((true, true)));
        assert_eq!(c.udp_addr, Some(from));
        assert_eq!(c.next_timeout(), Some(now), "our heartbeat goes at once");
        assert_eq!(
            c.handle_udp_heartbeat(now, from, 5, &t),
            Some((false, false)),
            "acknowledged once"
        );
    }
}
