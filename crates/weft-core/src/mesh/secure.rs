//! The encryption side of one control connection: the Noise handshake, the control-channel
//! cipher, and the data-plane keys with their rekeying (see [`crate::crypto`] for the design).
//!
//! Rekey protocol (only the connection's outbound side starts one, every
//! [`crypto::REKEY_INTERVAL`]):
//! 1. initiator → `Rekey{epoch, msg1}`;
//! 2. responder derives the new keys, starts *accepting* the new epoch, keeps *sending* with
//!    the old one, answers `RekeyAck{epoch, msg2}`;
//! 3. initiator derives the same keys, sends and accepts the new epoch (still accepting the
//!    old one for [`crypto::KEY_OVERLAP`]), answers `RekeyDone{epoch}`;
//! 4. responder switches sending to the new epoch and retires the old one after the overlap.
//!
//! At every moment each side accepts whatever the other may be sending, so no packet is lost
//! to a rekey.

use std::sync::Arc;
use std::time::Instant;

use weft_proto::control::ControlMsg;

use crate::crypto::{
    self, ControlCipher, CryptoError, Handshake, PeerKeys, Rekey, Secret, SessionKeys,
    SharedEntropy,
};

/// Per-connection crypto state.
#[derive(Default)]
pub(super) struct Secure {
    pub handshake: Option<Handshake>,
    pub cipher: Option<ControlCipher>,
    pub remote_static: Option<[u8; 32]>,
    /// Keys from the handshake, until the hello exchange decides whether data is encrypted.
    session: Option<SessionKeys>,
    /// Data is encrypted on this connection (not a trusted pair).
    pub data_encrypted: bool,
    /// The AEAD the headers chose for data (see [`crypto::DataCipher::negotiate`]).
    pub data_cipher: crypto::DataCipher,
    chaining: Option<Secret>,
    epoch: u8,
    keys: PeerKeys,
    /// Responder: the next epoch's send key, used once the initiator says it is ready.
    pending_send: Option<(u8, Arc<Secret>)>,
    /// Initiator: the rekey exchange in flight, and the password it proves.
    rekey: Option<(u8, Rekey, Secret)>,
    /// The password this connection last proved (handshake or rekey).
    pub auth_psk: Option<Secret>,
    pub next_rekey: Option<Instant>,
    pub retire_at: Option<Instant>,
}

impl std::fmt::Debug for Secure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secure")
            .field("data_encrypted", &self.data_encrypted)
            .field("data_cipher", &self.data_cipher)
            .finish_non_exhaustive()
    }
}

impl Secure {
    pub fn handshake_done(&mut self, keys: SessionKeys, psk: Option<Secret>) {
        self.auth_psk = psk;
        self.remote_static = Some(keys.remote_static);
        self.session = Some(keys);
    }

    /// After the hello exchange: turn the handshake's keys into the data plane's epoch 0 (or
    /// forget them for a trusted pair). Returns the keys for the data plane.
    pub fn start_data(
        &mut self,
        encrypt: bool,
        outbound: bool,
        now: Instant,
        interval: std::time::Duration,
    ) -> Option<PeerKeys> {
        let s = self.session.take()?;
        self.data_encrypted = encrypt;
        if !encrypt {
            return None;
        }
        self.chaining = Some(s.chaining);
        self.epoch = 0;
        self.keys = PeerKeys {
            send: Some((0, Arc::new(s.data_send))),
            recv: vec![(0, Arc::new(s.data_recv))],
            cipher: self.data_cipher,
        };
        if outbound {
            self.next_rekey = Some(now + interval);
        }
        Some(self.keys.clone())
    }

    pub fn keys(&self) -> &PeerKeys {
        &self.keys
    }

    pub fn epoch(&self) -> u8 {
        self.epoch
    }

    /// Initiator: start a rekey proving `psk` (our current password). Returns the message to
    /// send.
    pub fn begin_rekey(
        &mut self,
        psk: &Secret,
        entropy: &SharedEntropy,
    ) -> Result<Option<ControlMsg>, CryptoError> {
        self.next_rekey = None;
        let Some(chaining) = &self.chaining else {
            return Ok(None);
        };
        if self.rekey.is_some() {
            // One exchange at a time; the answer to the one in flight is still due.
            return Ok(None);
        }
        let (rk, msg) = Rekey::start(chaining, psk, entropy)?;
        let epoch = self.epoch.wrapping_add(1);
        self.rekey = Some((epoch, rk, psk.clone()));
        Ok(Some(ControlMsg::Rekey { epoch, msg }))
    }

    /// Responder: answer a rekey made with any of our accepted `psks`; accept the new epoch
    /// now, send with it later. Only the side that dialled starts one (`outbound` is ours),
    /// one at a time, each for the next epoch: anything else is a broken peer, and would
    /// otherwise make us hold keys without end.
    pub fn on_rekey(
        &mut self,
        outbound: bool,
        epoch: u8,
        msg: &[u8],
        psks: &[Secret],
        entropy: &SharedEntropy,
    ) -> Result<(ControlMsg, PeerKeys), CryptoError> {
        if outbound || self.pending_send.is_some() || epoch != self.epoch.wrapping_add(1) {
            return Err(CryptoError::Malformed);
        }
        let chaining = self.chaining.as_ref().ok_or(CryptoError::Malformed)?;
        let (reply, k, idx) = Rekey::respond(chaining, psks, msg, entropy)?;
        self.auth_psk = Some(psks[idx].clone());
        self.chaining = Some(k.chaining);
        self.keys.recv.push((epoch, Arc::new(k.recv)));
        bound_recv_keys(&mut self.keys);
        self.pending_send = Some((epoch, Arc::new(k.send)));
        Ok((
            ControlMsg::RekeyAck { epoch, msg: reply },
            self.keys.clone(),
        ))
    }

    /// Initiator: complete the rekey; send and accept the new epoch.
    pub fn on_rekey_ack(
        &mut self,
        epoch: u8,
        msg: &[u8],
        now: Instant,
        interval: std::time::Duration,
    ) -> Result<(ControlMsg, PeerKeys), CryptoError> {
        let (e, rk, psk) = self.rekey.take().ok_or(CryptoError::Malformed)?;
        if e != epoch {
            return Err(CryptoError::Malformed);
        }
        let k = rk.finish(msg)?;
        self.auth_psk = Some(psk);
        self.chaining = Some(k.chaining);
        self.epoch = epoch;
        self.keys.send = Some((epoch, Arc::new(k.send)));
        self.keys.recv.push((epoch, Arc::new(k.recv)));
        bound_recv_keys(&mut self.keys);
        self.retire_at = Some(now + crypto::KEY_OVERLAP);
        self.next_rekey = Some(now + interval);
        Ok((ControlMsg::RekeyDone { epoch }, self.keys.clone()))
    }

    /// Responder: the initiator uses the new epoch; so do we.
    pub fn on_rekey_done(&mut self, epoch: u8, now: Instant) -> Result<PeerKeys, CryptoError> {
        match self.pending_send.take() {
            Some((e, k)) if e == epoch => {
                self.epoch = epoch;
                self.keys.send = Some((e, k));
                self.retire_at = Some(now + crypto::KEY_OVERLAP);
                Ok(self.keys.clone())
            }
            _ => Err(CryptoError::Malformed),
        }
    }

    /// Drops receive keys older than the current epoch (after the overlap).
    pub fn retire(&mut self) -> PeerKeys {
        self.retire_at = None;
        let current = self.epoch;
        let pending = self.pending_send.as_ref().map(|p| p.0);
        self.keys
            .recv
            .retain(|(e, _)| *e == current || Some(*e) == pending);
        self.keys.clone()
    }
}

/// Receive keys held at most: the current epoch's, the one before it (still in flight during
/// the overlap) and the next one (accepted before we send with it).
pub(super) const MAX_RECV_KEYS: usize = 3;

fn bound_recv_keys(keys: &mut PeerKeys) {
    let excess = keys.recv.len().saturating_sub(MAX_RECV_KEYS);
    keys.recv.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{SeededEntropy, derive_psk_with, generate_static_key};

    /// Both ends of a connection after the handshake and the hello, data encrypted:
    /// (initiator, responder, the password, entropy).
    fn pair() -> (Secure, Secure, Secret, SharedEntropy) {
        let e: SharedEntropy = SeededEntropy::new(3);
        let psk = derive_psk_with(b"secret", 64, 1);
        let (si, sr) = (generate_static_key(&e).0, generate_static_key(&e).0);
        let (mut i, m1) = Handshake::initiator(&si, &psk, b"test", &e).unwrap();
        let mut r = Handshake::responder(&sr, std::slice::from_ref(&psk), b"test", &e).unwrap();
        let m2 = r.read(&m1).unwrap().unwrap();
        let m3 = i.read(&m2).unwrap().unwrap();
        r.read(&m3).unwrap();
        let now = Instant::now();
        let interval = std::time::Duration::from_secs(60);
        let (mut a, mut b) = (Secure::default(), Secure::default());
        a.handshake_done(i.finish().unwrap(), Some(psk.clone()));
        b.handshake_done(r.finish().unwrap(), Some(psk.clone()));
        a.start_data(true, true, now, interval);
        b.start_data(true, false, now, interval);
        (a, b, psk, e)
    }

    fn rekey(a: &mut Secure, b: &mut Secure, psk: &Secret, e: &SharedEntropy) {
        let now = Instant::now();
        let interval = std::time::Duration::from_secs(60);
        let Some(ControlMsg::Rekey { epoch, msg }) = a.begin_rekey(psk, e).unwrap() else {
            panic!("a rekey starts");
        };
        let (ack, _) = b
            .on_rekey(false, epoch, &msg, std::slice::from_ref(psk), e)
            .unwrap();
        let ControlMsg::RekeyAck { epoch, msg } = ack else {
            panic!("an ack");
        };
        let (done, _) = a.on_rekey_ack(epoch, &msg, now, interval).unwrap();
        let ControlMsg::RekeyDone { epoch } = done else {
            panic!("done");
        };
        b.on_rekey_done(epoch, now).unwrap();
    }

    #[test]
    fn only_the_dialling_side_starts_a_rekey_and_one_at_a_time() {
        let (mut a, mut b, psk, e) = pair();
        let Some(ControlMsg::Rekey { epoch, msg }) = a.begin_rekey(&psk, &e).unwrap() else {
            panic!("a rekey starts");
        };
        let psks = std::slice::from_ref(&psk);
        // Arriving at the side that dialled: refused.
        assert!(a.on_rekey(true, epoch, &msg, psks, &e).is_err());
        // A skipped epoch: refused.
        assert!(
            b.on_rekey(false, epoch.wrapping_add(1), &msg, psks, &e)
                .is_err()
        );
        b.on_rekey(false, epoch, &msg, psks, &e).unwrap();
        // A second one while the first is not done: refused.
        assert!(
            b.on_rekey(false, epoch.wrapping_add(1), &msg, psks, &e)
                .is_err()
        );
    }

    #[test]
    fn receive_keys_stay_bounded_however_many_rekeys() {
        let (mut a, mut b, psk, e) = pair();
        for _ in 0..10 {
            rekey(&mut a, &mut b, &psk, &e);
            assert!(a.keys().recv.len() <= MAX_RECV_KEYS);
            assert!(b.keys().recv.len() <= MAX_RECV_KEYS);
        }
        assert_eq!(a.epoch(), 10);
        assert_eq!(b.epoch(), 10);
        assert_eq!(
            a.keys().send.as_ref().map(|k| k.0),
            b.keys().recv.last().map(|k| k.0)
        );
    }
}
