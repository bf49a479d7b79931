//! The connection maker's bookkeeping: which addresses we want connections to, and when to
//! try them next.
//!
//! Targets are either *direct* (given on the command line or with `weft connect`, kept until
//! `weft forget`) or *discovered* (addresses of peers that other peers report being connected
//! to; dropped when nobody reports them any more, once tried). A target is tried at once
//! when added (a discovered one within a small jitter); after
//! a failure the next try is uniformly random in `[i/2, 3i/2)` where `i` starts at
//! [`Backoff::initial`] and grows by [`Backoff::factor`] per failure up to [`Backoff::max`]. A
//! connection that lived longer than [`Backoff::reset_after`] resets the interval, so a peer
//! that restarts is redialled at once. Connecting to ourselves and name collisions are never
//! retried.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_proto::PeerName;

use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub factor: f64,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(2),
            factor: 1.5,
            max: Duration::from_secs(6 * 60),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// How a target was given to us; direct targets are identified by the text the user typed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetKey {
    Direct(String),
    Discovered(SocketAddr),
}

/// What a target is doing, in the words `weft status connections` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// First dial (or handshake) in progress.
    Connecting,
    /// Dial in progress after an earlier failure.
    Retrying,
    /// Waiting to retry after an error.
    Failed,
    /// Waiting without an error (e.g. the connection limit is reached).
    Waiting,
    /// Connected; the connection itself is shown instead.
    Connected,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// The user gave an explicit port (a portless direct target is not dialled while an
    /// inbound connection from the same IP exists: that peer is already with us).
    pub port_given: bool,
    /// The peer last seen at this address.
    pub peer: Option<PeerName>,
    /// That peer's incarnation (UID) as gossip last showed it (discovered targets).
    pub peer_uid: Option<u64>,
    /// The connection currently attempting or serving this target.
    pub conn: Option<super::ConnId>,
    pub attempts: u32,
    pub interval: Duration,
    pub retry_at: Instant,
    pub last_error: Option<String>,
    /// Never retried (connect-to-self, name collision).
    pub suspended: bool,
}

impl Target {
    pub fn new(addr: SocketAddr, port_given: bool, now: Instant, backoff: &Backoff) -> Self {
        Target {
            addr,
            port_given,
            peer: None,
            peer_uid: None,
            conn: None,
            attempts: 0,
            interval: backoff.initial,
            retry_at: now,
            last_error: None,
            suspended: false,
        }
    }

    /// Records a failed attempt and schedules the next one.
    pub fn failed(&mut self, now: Instant, error: String, backoff: &Backoff, rng: &mut Rng) {
        self.conn = None;
        self.attempts += 1;
        self.last_error = Some(error);
        self.retry_at = now + rng.jitter(self.interval);
        self.interval = self.interval.mul_f64(backoff.factor).min(backoff.max);
    }

    /// Records the end of a connection that had been up since `ready_at`.
    pub fn disconnected(
        &mut self,
        now: Instant,
        ready_at: Instant,
        error: String,
        backoff: &Backoff,
        rng: &mut Rng,
    ) {
        if now.saturating_duration_since(ready_at) >= backoff.reset_after {
            self.conn = None;
            self.attempts = 0;
            self.interval = backoff.initial;
            self.retry_at = now;
            self.last_error = Some(error);
        } else {
            self.failed(now, error, backoff, rng);
        }
    }

    pub fn suspend(&mut self, error: String) {
        self.conn = None;
        self.suspended = true;
        self.last_error = Some(error);
    }

    pub fn state(&self, conn_ready: bool) -> TargetState {
        match (self.conn, conn_ready) {
            (Some(_), true) => TargetState::Connected,
            (Some(_), false) if self.last_error.is_some() => TargetState::Retrying,
            (Some(_), false) => TargetState::Connecting,
            (None, _) if self.last_error.is_some() => TargetState::Failed,
            (None, _) => TargetState::Waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let b = Backoff::default();
        let mut rng = Rng::new(1);
        let now = Instant::now();
        let mut t = Target::new("10.0.0.1:6783".parse().unwrap(), true, now, &b);
        let mut expected = b.initial;
        for _ in 0..30 {
            t.failed(now, "refused".into(), &b, &mut rng);
            let wait = t.retry_at - now;
            assert!(
                wait >= expected / 2 && wait < expected.mul_f64(1.5),
                "{wait:?} vs {expected:?}"
            );
            expected = expected.mul_f64(b.factor).min(b.max);
        }
        assert_eq!(t.interval, b.max);
        assert_eq!(t.state(false), TargetState::Failed);
    }

    #[test]
    fn long_lived_connection_resets_backoff() {
        let b = Backoff::default();
        let mut rng = Rng::new(1);
        let now = Instant::now();
        let mut t = Target::new("10.0.0.1:6783".parse().unwrap(), true, now, &b);
        t.failed(now, "x".into(), &b, &mut rng);
        t.failed(now, "x".into(), &b, &mut rng);
        let later = now + Duration::from_secs(600);
        t.disconnected(later, now, "eof".into(), &b, &mut rng);
        assert_eq!(t.retry_at, later);
        assert_eq!(t.interval, b.initial);
    }
}
