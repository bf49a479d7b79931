//! Encryption: password → pre-shared key, the Noise handshake on control connections, the
//! control-channel cipher, data-plane session keys with rekeying, and the replay window.
//!
//! Design (WireGuard-grade properties with one shared password):
//! - The password becomes a 32-byte PSK through Argon2id (64 MiB, 3 passes) with a fixed
//!   salt, so guessing it offline from a captured handshake costs a memory-hard KDF per guess.
//! - Each control connection runs `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s`: the PSK is mixed in
//!   before the first message, so a peer without the password fails at once; both sides prove
//!   their (persisted) static keys; ephemeral Diffie-Hellman gives forward secrecy — a leaked
//!   password does not open recorded sessions. A responder may accept several PSKs (password
//!   rotation).
//! - From the handshake's split keys, HMAC-BLAKE2s derives independent keys for the control
//!   channel and for data epoch 0. Every [`REKEY_INTERVAL`] the connection's initiator runs a
//!   new ephemeral exchange (`Noise_NNpsk0`, keyed by the current chaining key) inside the
//!   encrypted control channel, giving the data plane a fresh epoch; old and new receive keys
//!   overlap for [`KEY_OVERLAP`] so nothing in flight is lost.
//! - Data packets: an AEAD with the 64-bit packet counter as nonce, the clear header as
//!   associated data, a sliding window that rejects replays and very old packets. The AEAD
//!   is AES-256-GCM when both routers' CPUs have AES instructions (about 3.5 times faster
//!   there), else ChaCha20-Poly1305 (see [`DataCipher`]). Both headers, which carry that
//!   choice, are bound into the handshake's prologue, so a changed header fails it.
//! - Every secret we hold (PSKs, keys, chaining keys) is wiped on drop (`zeroize`). The
//!   control channel's AEAD is RustCrypto's `chacha20poly1305` (its key state is wiped on drop
//!   too); the data plane's is ring's, which does not wipe its key copy (see [`DataKey`]).

use std::sync::{Arc, Mutex};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hmac::{Mac, SimpleHmac};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::{Zeroize, Zeroizing};

/// Data keys are replaced this often.
pub const REKEY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(120);
/// After a rekey, the previous receive key keeps working this long.
pub const KEY_OVERLAP: std::time::Duration = std::time::Duration::from_secs(30);
/// A data key is never used for more than this many packets (rekeying comes far sooner).
pub const MAX_PACKETS_PER_KEY: u64 = 1 << 60;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;

const HANDSHAKE: &str = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";
const REKEY: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// The prologue of protocol versions 1 to 3.
const PROLOGUE: &[u8] = b"weft control v1";
/// From version 4 the prologue continues with the initiator's and the responder's headers.
const PROLOGUE_BOUND: &[u8] = b"weft control v4";
const PSK_SALT: &[u8] = b"weft overlay network psk v1";

pub type Secret = Zeroizing<[u8; 32]>;

/// The Noise prologue of a connection that negotiated `version`, whose dialling side sent
/// `initiator_header` and whose accepting side sent `responder_header`. From version 4 it
/// holds both headers: a header changed in transit (a flag stripped to steer the cipher, a
/// version range narrowed) makes the two sides' prologues differ, and the handshake fails.
pub fn prologue(version: u8, initiator_header: &[u8], responder_header: &[u8]) -> Vec<u8> {
    if version < weft_proto::control::VERSION_BOUND_HEADERS {
        return PROLOGUE.to_vec();
    }
    [PROLOGUE_BOUND, initiator_header, responder_header].concat()
}

/// The data plane's AEAD on one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DataCipher {
    /// RFC 8439, the only cipher of routers before protocol version 4, and the choice
    /// whenever either side lacks AES instructions (constant time in software).
    #[default]
    ChaCha20Poly1305,
    /// AES-256-GCM: on CPUs with AES and carry-less multiply instructions (every x86-64
    /// server since 2010, ARMv8 with the crypto extension) ring seals 1400-byte packets
    /// about 3 times and 64 KB super-frames about 3.7 times faster than ChaCha20-Poly1305.
    Aes256Gcm,
}

impl DataCipher {
    pub fn name(self) -> &'static str {
        match self {
            DataCipher::ChaCha20Poly1305 => "chacha20-poly1305",
            DataCipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// Whether this CPU runs AES-GCM in hardware. Without it ring's AES is a slow
    /// (bit-sliced) fallback, so such a router does not offer it.
    pub fn aes_in_hardware() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("aes")
                && std::arch::is_x86_feature_detected!("pclmulqdq")
        }
        #[cfg(target_arch = "aarch64")]
        {
            std::arch::is_aarch64_feature_detected!("aes")
                && std::arch::is_aarch64_feature_detected!("pmull")
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            false
        }
    }

    /// The cipher two routers use: AES-256-GCM when the negotiated version binds the
    /// headers and both offered it.
    pub fn negotiate(version: u8, ours: bool, theirs: bool) -> DataCipher {
        if version >= weft_proto::control::VERSION_BOUND_HEADERS && ours && theirs {
            DataCipher::Aes256Gcm
        } else {
            DataCipher::ChaCha20Poly1305
        }
    }
}

impl std::str::FromStr for DataCipher {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [DataCipher::ChaCha20Poly1305, DataCipher::Aes256Gcm]
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown cipher {s:?}: use aes-256-gcm or chacha20-poly1305"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("authentication failed")]
    AuthFailed,
    #[error("malformed handshake message")]
    Malformed,
    #[error("decryption failed")]
    Decrypt,
    #[error("{0}")]
    Internal(String),
}

/// Where key material's randomness comes from: the OS in the daemon, a seed in the simulator.
pub trait Entropy: Send + Sync {
    fn fill(&self, buf: &mut [u8]);
}

pub type SharedEntropy = Arc<dyn Entropy>;

/// Deterministic entropy for simulations and tests. Never for real keys.
pub struct SeededEntropy(Mutex<crate::rng::Rng>);

impl SeededEntropy {
    #[allow(clippy::new_ret_no_self)] // always used shared
    pub fn new(seed: u64) -> SharedEntropy {
        Arc::new(SeededEntropy(Mutex::new(crate::rng::Rng::new(seed))))
    }
}

impl Entropy for SeededEntropy {
    fn fill(&self, buf: &mut [u8]) {
        let mut r = self.0.lock().expect("entropy lock");
        for chunk in buf.chunks_mut(8) {
            let v = r.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

struct SnowRandom(SharedEntropy);

impl Random for SnowRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

/// snow's default primitives with our randomness.
struct Resolver(SharedEntropy);

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SnowRandom(self.0.clone())))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

fn internal(e: snow::Error) -> CryptoError {
    CryptoError::Internal(e.to_string())
}

/// The pre-shared key for a password (slow on purpose: Argon2id, 64 MiB, 3 passes).
pub fn derive_psk(password: &[u8]) -> Secret {
    derive_psk_with(password, 64 * 1024, 3)
}

/// [`derive_psk`] with explicit Argon2 cost (tests use a cheap one).
pub fn derive_psk_with(password: &[u8], memory_kib: u32, passes: u32) -> Secret {
    let params =
        argon2::Params::new(memory_kib, passes, 1, Some(32)).expect("valid Argon2 parameters");
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(password, PSK_SALT, out.as_mut())
        .expect("Argon2 with valid parameters and a 32-byte output");
    out
}

/// A new X25519 static key pair: (private, public).
pub fn generate_static_key(entropy: &SharedEntropy) -> (Secret, [u8; 32]) {
    let mut dh = DefaultResolver
        .resolve_dh(&DHChoice::Curve25519)
        .expect("curve25519 is built in");
    dh.generate(&mut SnowRandom(entropy.clone()))
        .expect("our entropy never fails");
    let mut private = Zeroizing::new([0u8; 32]);
    private.copy_from_slice(dh.privkey());
    let mut public = [0u8; 32];
    public.copy_from_slice(dh.pubkey());
    (private, public)
}

/// The public key of a static private key.
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    let mut dh = DefaultResolver
        .resolve_dh(&DHChoice::Curve25519)
        .expect("curve25519 is built in");
    dh.set(private);
    let mut public = [0u8; 32];
    public.copy_from_slice(dh.pubkey());
    public
}

type HmacBlake2s = SimpleHmac<blake2::Blake2s256>;

/// HKDF (RFC 5869) with HMAC-BLAKE2s, as WireGuard: one 32-byte output per `info`.
pub fn kdf(key: &[u8], info: &[u8]) -> Secret {
    let mut mac = <HmacBlake2s as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(info);
    mac.update(&[1]);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// Keys derived from a finished handshake, for one side of a connection.
pub struct SessionKeys {
    pub control_send: Secret,
    pub control_recv: Secret,
    pub data_send: Secret,
    pub data_recv: Secret,
    /// Mixed into every rekey so new keys depend on the authenticated session.
    pub chaining: Secret,
    pub remote_static: [u8; 32],
    /// Which of the accepted PSKs the peer used (0 = our current password).
    pub psk_index: usize,
}

fn derive_session(
    hs: &mut snow::HandshakeState,
    psk_index: usize,
) -> Result<SessionKeys, CryptoError> {
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let (i2r, r2i) = (Zeroizing::new(i2r), Zeroizing::new(r2i));
    let (send, recv) = if hs.is_initiator() {
        (&i2r, &r2i)
    } else {
        (&r2i, &i2r)
    };
    let mut remote_static = [0u8; 32];
    remote_static.copy_from_slice(hs.get_remote_static().ok_or(CryptoError::Malformed)?);
    Ok(SessionKeys {
        control_send: kdf(send.as_ref(), b"weft control"),
        control_recv: kdf(recv.as_ref(), b"weft control"),
        data_send: kdf(send.as_ref(), b"weft data"),
        data_recv: kdf(recv.as_ref(), b"weft data"),
        chaining: kdf(hs.get_handshake_hash(), b"weft chaining"),
        remote_static,
        psk_index,
    })
}

/// The Noise handshake of one control connection, as a state machine over messages.
pub struct Handshake {
    /// The responder keeps one candidate per accepted PSK until the first message decides.
    states: Vec<(usize, snow::HandshakeState)>,
    decided: bool,
}

impl Handshake {
    /// Starts as initiator with our current PSK; returns the first message to send.
    pub fn initiator(
        static_key: &[u8; 32],
        psk: &[u8; 32],
        prologue: &[u8],
        entropy: &SharedEntropy,
    ) -> Result<(Handshake, Vec<u8>), CryptoError> {
        let mut hs = builder(entropy)
            .local_private_key(static_key)
            .and_then(|b| b.psk(0, psk))
            .and_then(|b| b.prologue(prologue))
            .and_then(|b| b.build_initiator())
            .map_err(internal)?;
        let mut msg = vec![0u8; 256];
        let n = hs.write_message(&[], &mut msg).map_err(internal)?;
        msg.truncate(n);
        Ok((
            Handshake {
                states: vec![(0, hs)],
                decided: true,
            },
            msg,
        ))
    }

    /// Starts as responder accepting any of `psks`.
    pub fn responder(
        static_key: &[u8; 32],
        psks: &[Secret],
        prologue: &[u8],
        entropy: &SharedEntropy,
    ) -> Result<Handshake, CryptoError> {
        let mut states = Vec::new();
        for (i, psk) in psks.iter().enumerate() {
            let hs = builder(entropy)
                .local_private_key(static_key)
                .and_then(|b| b.psk(0, psk))
                .and_then(|b| b.prologue(prologue))
                .and_then(|b| b.build_responder())
                .map_err(internal)?;
            states.push((i, hs));
        }
        Ok(Handshake {
            states,
            decided: false,
        })
    }

    /// Takes a message from the peer; returns our reply, if any. A first message that no
    /// accepted PSK opens is [`CryptoError::AuthFailed`].
    pub fn read(&mut self, msg: &[u8]) -> Result<Option<Vec<u8>>, CryptoError> {
        let mut payload = vec![0u8; msg.len()];
        if !self.decided {
            // The responder's first message: find the PSK that opens it.
            let winner = self
                .states
                .iter_mut()
                .position(|(_, hs)| hs.read_message(msg, &mut payload).is_ok())
                .ok_or(CryptoError::AuthFailed)?;
            let chosen = self.states.swap_remove(winner);
            self.states = vec![chosen];
            self.decided = true;
        } else {
            let hs = &mut self.states[0].1;
            hs.read_message(msg, &mut payload).map_err(|_| {
                if hs.is_initiator() {
                    CryptoError::AuthFailed
                } else {
                    CryptoError::Malformed
                }
            })?;
        }
        let hs = &mut self.states[0].1;
        if hs.is_handshake_finished() || !hs.is_my_turn() {
            return Ok(None);
        }
        let mut out = vec![0u8; 256];
        let n = hs.write_message(&[], &mut out).map_err(internal)?;
        out.truncate(n);
        Ok(Some(out))
    }

    pub fn is_finished(&self) -> bool {
        self.decided && self.states[0].1.is_handshake_finished()
    }

    pub fn finish(mut self) -> Result<SessionKeys, CryptoError> {
        if !self.is_finished() {
            return Err(CryptoError::Internal("handshake not finished".into()));
        }
        let (idx, mut hs) = self.states.pop().expect("one state when finished");
        derive_session(&mut hs, idx)
    }
}

fn builder(entropy: &SharedEntropy) -> snow::Builder<'static> {
    let params = HANDSHAKE.parse().expect("valid Noise pattern");
    snow::Builder::with_resolver(params, Box::new(Resolver(entropy.clone())))
}

/// One rekey exchange: `Noise_NNpsk0` keyed by the session's chaining key mixed with a
/// password's PSK, so that only the two authenticated ends can complete it, and only while
/// they still share a password (a dropped password stops authenticating old connections at
/// their next rekey). Each completed exchange yields the next epoch's data keys and chaining
/// key.
pub struct Rekey {
    hs: snow::HandshakeState,
}

/// The next epoch's data keys.
pub struct EpochKeys {
    pub send: Secret,
    pub recv: Secret,
    pub chaining: Secret,
}

impl Rekey {
    fn build(
        chaining: &[u8; 32],
        psk: &[u8; 32],
        entropy: &SharedEntropy,
        initiator: bool,
    ) -> Result<snow::HandshakeState, CryptoError> {
        let params = REKEY.parse().expect("valid Noise pattern");
        let key = kdf(chaining, psk);
        let b = snow::Builder::with_resolver(params, Box::new(Resolver(entropy.clone())))
            .psk(0, &key)
            .and_then(|b| b.prologue(b"weft rekey v1"))
            .map_err(internal)?;
        if initiator {
            b.build_initiator().map_err(internal)
        } else {
            b.build_responder().map_err(internal)
        }
    }

    /// The initiator's first message, authenticated with our current password's `psk`.
    pub fn start(
        chaining: &[u8; 32],
        psk: &[u8; 32],
        entropy: &SharedEntropy,
    ) -> Result<(Rekey, Vec<u8>), CryptoError> {
        let mut hs = Self::build(chaining, psk, entropy, true)?;
        let mut msg = vec![0u8; 128];
        let n = hs.write_message(&[], &mut msg).map_err(internal)?;
        msg.truncate(n);
        Ok((Rekey { hs }, msg))
    }

    /// The responder answers a first message made with any of `psks` and has its new keys at
    /// once; also returns which PSK it was.
    pub fn respond(
        chaining: &[u8; 32],
        psks: &[Secret],
        msg: &[u8],
        entropy: &SharedEntropy,
    ) -> Result<(Vec<u8>, EpochKeys, usize), CryptoError> {
        let mut payload = vec![0u8; msg.len()];
        for (i, psk) in psks.iter().enumerate() {
            let mut hs = Self::build(chaining, psk, entropy, false)?;
            if hs.read_message(msg, &mut payload).is_err() {
                continue;
            }
            let mut reply = vec![0u8; 128];
            let n = hs.write_message(&[], &mut reply).map_err(internal)?;
            reply.truncate(n);
            return Ok((reply, epoch_keys(&mut hs), i));
        }
        Err(CryptoError::AuthFailed)
    }

    /// The initiator takes the answer and has its new keys.
    pub fn finish(mut self, msg: &[u8]) -> Result<EpochKeys, CryptoError> {
        let mut payload = vec![0u8; msg.len()];
        self.hs
            .read_message(msg, &mut payload)
            .map_err(|_| CryptoError::AuthFailed)?;
        Ok(epoch_keys(&mut self.hs))
    }
}

fn epoch_keys(hs: &mut snow::HandshakeState) -> EpochKeys {
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let (i2r, r2i) = (Zeroizing::new(i2r), Zeroizing::new(r2i));
    let (send, recv) = if hs.is_initiator() {
        (i2r, r2i)
    } else {
        (r2i, i2r)
    };
    EpochKeys {
        send: kdf(send.as_ref(), b"weft data"),
        recv: kdf(recv.as_ref(), b"weft data"),
        chaining: kdf(hs.get_handshake_hash(), b"weft chaining"),
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(n)
}

/// The control channel's cipher: strictly sequential nonces in each direction (TCP keeps
/// order, so any gap, replay or reordering is an attack and fails).
pub struct ControlCipher {
    send: ChaCha20Poly1305,
    recv: ChaCha20Poly1305,
    sent: u64,
    received: u64,
}

impl ControlCipher {
    pub fn new(keys: &SessionKeys) -> Self {
        ControlCipher {
            send: ChaCha20Poly1305::new(Key::from_slice(keys.control_send.as_ref())),
            recv: ChaCha20Poly1305::new(Key::from_slice(keys.control_recv.as_ref())),
            sent: 0,
            received: 0,
        }
    }

    /// Encrypts one frame body (the tag is appended).
    pub fn seal(&mut self, mut plaintext: Vec<u8>) -> Vec<u8> {
        let tag = self
            .send
            .encrypt_in_place_detached(&nonce(self.sent), &[], &mut plaintext)
            .expect("ChaCha20-Poly1305 encrypts any length we send");
        self.sent += 1;
        plaintext.extend_from_slice(&tag);
        plaintext
    }

    pub fn open(&mut self, mut ciphertext: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
        if ciphertext.len() < TAG_LEN {
            return Err(CryptoError::Decrypt);
        }
        let split = ciphertext.len() - TAG_LEN;
        let tag = Tag::clone_from_slice(&ciphertext[split..]);
        ciphertext.truncate(split);
        self.recv
            .decrypt_in_place_detached(&nonce(self.received), &[], &mut ciphertext, &tag)
            .map_err(|_| CryptoError::Decrypt)?;
        self.received += 1;
        Ok(ciphertext)
    }
}

/// Sliding-window replay protection (RFC 6479 style): remembers the last [`WINDOW`] counters.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Highest counter accepted so far, plus one (0 = none yet).
    top: u64,
    bits: [u64; WINDOW as usize / 64],
}

pub const WINDOW: u64 = 4096;

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            top: 0,
            bits: [0; WINDOW as usize / 64],
        }
    }
}

impl ReplayWindow {
    /// Whether `counter` could be new (call before decrypting; [`ReplayWindow::accept`] after).
    pub fn check(&self, counter: u64) -> bool {
        if counter >= self.top {
            return true;
        }
        if self.top - counter > WINDOW - 1 {
            return false;
        }
        let bit = counter % WINDOW;
        self.bits[(bit / 64) as usize] & (1 << (bit % 64)) == 0
    }

    /// Records an authenticated counter; returns false for a replay or a too old packet.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter >= self.top {
            // Slide: clear the bits for the counters we skipped over.
            let advance = counter + 1 - self.top;
            if advance >= WINDOW {
                self.bits = [0; WINDOW as usize / 64];
            } else {
                for c in self.top..counter + 1 {
                    let bit = c % WINDOW;
                    self.bits[(bit / 64) as usize] &= !(1 << (bit % 64));
                }
            }
            self.top = counter + 1;
        }
        let bit = counter % WINDOW;
        self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        true
    }
}

/// A data-plane key for one direction of one epoch.
///
/// Sealed with ring's AEADs: its ChaCha20-Poly1305 is the same RFC 8439 construction and
/// nonce layout as the control channel's RustCrypto cipher and about three times faster;
/// its AES-256-GCM runs on the CPU's AES instructions, three to four times faster again.
/// ring does not wipe its key copy when dropped; the secret it is made from is wiped, and
/// data keys last two minutes (see the README's encryption section for the trade).
///
/// AES-GCM's 96-bit nonce is the same 4 zero bytes and 64-bit counter, unique per key. Its
/// bound on the data one key may seal (confidentiality lost with probability about
/// blocks² / 2¹²⁸) stays below 2⁻⁶⁰ at 10 Gbit/s for the two minutes a key lives.
pub struct DataKey {
    pub epoch: u8,
    key: ring::aead::LessSafeKey,
}

fn ring_nonce(counter: u64) -> ring::aead::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    ring::aead::Nonce::assume_unique_for_key(n)
}

impl DataKey {
    pub fn new(epoch: u8, cipher: DataCipher, key: &[u8; 32]) -> Self {
        let unbound = match cipher {
            DataCipher::ChaCha20Poly1305 => {
                ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key)
            }
            // A key of its own, so no secret ever keys two algorithms.
            DataCipher::Aes256Gcm => ring::aead::UnboundKey::new(
                &ring::aead::AES_256_GCM,
                kdf(key, b"weft data aes-256-gcm").as_ref(),
            ),
        }
        .expect("a 32-byte key fits both AEADs");
        DataKey {
            epoch,
            key: ring::aead::LessSafeKey::new(unbound),
        }
    }

    /// Encrypts `buf` in place with `aad`, returning the tag.
    pub fn seal(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(ring_nonce(counter), ring::aead::Aad::from(aad), buf)
            .expect("the AEADs seal any datagram (up to 256 GB)");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    pub fn open(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        let tag = ring::aead::Tag::try_from(tag).map_err(|_| CryptoError::Decrypt)?;
        self.key
            .open_in_place_separate_tag(
                ring_nonce(counter),
                ring::aead::Aad::from(aad),
                tag,
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// Key material shared from the control plane to the data plane: which epoch to send with,
/// which epochs to accept, and the AEAD the connection negotiated.
#[derive(Clone, Default)]
pub struct PeerKeys {
    pub send: Option<(u8, Arc<Secret>)>,
    pub recv: Vec<(u8, Arc<Secret>)>,
    pub cipher: DataCipher,
}

impl std::fmt::Debug for PeerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("PeerKeys")
            .field("cipher", &self.cipher)
            .field("send_epoch", &self.send.as_ref().map(|s| s.0))
            .field(
                "recv_epochs",
                &self.recv.iter().map(|r| r.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PartialEq for PeerKeys {
    fn eq(&self, other: &Self) -> bool {
        let s = |k: &PeerKeys| k.send.as_ref().map(|(e, k)| (*e, Arc::as_ptr(k)));
        let r = |k: &PeerKeys| {
            k.recv
                .iter()
                .map(|(e, k)| (*e, Arc::as_ptr(k)))
                .collect::<Vec<_>>()
        };
        s(self) == s(other) && r(self) == r(other) && self.cipher == other.cipher
    }
}

impl Eq for PeerKeys {}

/// A step of a password roll (see `weft password`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordChange {
    /// Accept this password too; keep dialling with the current one.
    Add,
    /// Dial and rekey with this password (accepting it if new); the others stay accepted.
    Use,
    /// Stop accepting this password.
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error(
        "this is the password in use; switch to another first with 'weft password use', then drop this one"
    )]
    DropInUse,
    #[error("this password is not one the router accepts; nothing to drop")]
    NotAccepted,
}

/// The accepted PSKs after `change` of `psk` (`current[0]` is the one in use).
pub fn change_psks(
    current: &[Secret],
    change: PasswordChange,
    psk: Secret,
) -> Result<Vec<Secret>, PasswordError> {
    let pos = current.iter().position(|p| **p == *psk);
    let mut next = current.to_vec();
    match (change, pos) {
        (PasswordChange::Add, Some(_)) => {}
        (PasswordChange::Add, None) => next.push(psk),
        (PasswordChange::Use, Some(i)) => {
            let p = next.remove(i);
            next.insert(0, p);
        }
        (PasswordChange::Use, None) => next.insert(0, psk),
        (PasswordChange::Drop, Some(0)) => return Err(PasswordError::DropInUse),
        (PasswordChange::Drop, Some(i)) => {
            next.remove(i);
        }
        (PasswordChange::Drop, None) => return Err(PasswordError::NotAccepted),
    }
    Ok(next)
}

/// Wipes a key buffer (for keys built outside [`Secret`]).
pub fn wipe(buf: &mut [u8]) {
    buf.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(entropy: &SharedEntropy) -> Secret {
        generate_static_key(entropy).0
    }

    fn cheap_psk(p: &str) -> Secret {
        derive_psk_with(p.as_bytes(), 64, 1)
    }

    /// Runs a handshake; returns both sides' keys or the first error.
    fn run(i_psk: &str, r_psks: &[&str]) -> Result<(SessionKeys, SessionKeys), CryptoError> {
        let e = SeededEntropy::new(1);
        let (si, sr) = (keys(&e), keys(&e));
        let r_psks: Vec<Secret> = r_psks.iter().map(|p| cheap_psk(p)).collect();
        let (mut i, m1) = Handshake::initiator(&si, &cheap_psk(i_psk), PROLOGUE, &e)?;
        let mut r = Handshake::responder(&sr, &r_psks, PROLOGUE, &e)?;
        let m2 = r.read(&m1)?.expect("responder answers");
        let m3 = i.read(&m2)?.expect("initiator sends the last message");
        assert!(r.read(&m3)?.is_none());
        assert!(i.is_finished() && r.is_finished());
        Ok((i.finish()?, r.finish()?))
    }

    #[test]
    fn good_handshake_gives_matching_keys() {
        let (i, r) = run("secret", &["secret"]).unwrap();
        assert_eq!(*i.control_send, *r.control_recv);
        assert_eq!(*i.data_send, *r.data_recv);
        assert_eq!(*i.data_recv, *r.data_send);
        assert_ne!(*i.data_send, *i.control_send, "independent keys per use");
        assert_eq!(*i.chaining, *r.chaining);
        let mut c1 = ControlCipher::new(&i);
        let mut c2 = ControlCipher::new(&r);
        let ct = c1.seal(b"hello".to_vec());
        assert_ne!(&ct[..5], b"hello");
        assert_eq!(c2.open(ct.clone()).unwrap(), b"hello");
        // The same ciphertext again (a replay) fails: the nonce moved on.
        assert_eq!(c2.open(ct), Err(CryptoError::Decrypt));
    }

    #[test]
    fn wrong_password_fails_at_the_first_message() {
        assert!(matches!(
            run("secret", &["other"]),
            Err(CryptoError::AuthFailed)
        ));
    }

    #[test]
    fn responder_accepts_any_of_its_passwords() {
        let (_, r) = run("new", &["old", "new"]).unwrap();
        assert_eq!(r.psk_index, 1);
    }

    #[test]
    fn truncated_or_modified_messages_fail() {
        let e = SeededEntropy::new(2);
        let (si, sr) = (keys(&e), keys(&e));
        let psk = cheap_psk("p");
        let (_, m1) = Handshake::initiator(&si, &psk, PROLOGUE, &e).unwrap();
        for bad in [
            m1[..m1.len() - 1].to_vec(),
            {
                let mut m = m1.clone();
                m[40] ^= 1;
                m
            },
            vec![],
        ] {
            let mut r =
                Handshake::responder(&sr, std::slice::from_ref(&psk), PROLOGUE, &e).unwrap();
            assert!(r.read(&bad).is_err());
        }
        // A replayed first message gets a fresh answer, but the replayer cannot finish.
        let mut r = Handshake::responder(&sr, std::slice::from_ref(&psk), PROLOGUE, &e).unwrap();
        let m2 = r.read(&m1).unwrap().unwrap();
        let mut r2 = Handshake::responder(&sr, &[psk], PROLOGUE, &e).unwrap();
        let m2b = r2.read(&m1).unwrap().unwrap();
        assert_ne!(m2, m2b, "fresh ephemeral keys each time");
        assert!(
            r.read(&m2b).is_err(),
            "a message from the wrong run does not finish it"
        );
    }

    #[test]
    fn rekey_gives_both_sides_the_same_new_keys() {
        let e = SeededEntropy::new(3);
        let (i, r) = run("p", &["p"]).unwrap();
        let (p, q) = (cheap_psk("p"), cheap_psk("q"));
        let (rk, m1) = Rekey::start(&i.chaining, &p, &e).unwrap();
        let (m2, rkeys, idx) =
            Rekey::respond(&r.chaining, &[q.clone(), p.clone()], &m1, &e).unwrap();
        assert_eq!(idx, 1, "the responder tries each accepted password");
        let ikeys = rk.finish(&m2).unwrap();
        assert_eq!(*ikeys.send, *rkeys.recv);
        assert_eq!(*ikeys.recv, *rkeys.send);
        assert_ne!(*ikeys.send, *i.data_send);
        // Someone without the chaining key cannot take part.
        let wrong = Zeroizing::new([7u8; 32]);
        assert!(Rekey::respond(&wrong, std::slice::from_ref(&p), &m1, &e).is_err());
        // Nor can the right session once the password it rekeys with is no longer accepted.
        assert_eq!(
            Rekey::respond(&r.chaining, &[q], &m1, &e).err(),
            Some(CryptoError::AuthFailed)
        );
    }

    /// What a password guess costs (and what a router pays once per password at start-up):
    /// `cargo test --release -p weft-core --lib psk_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn psk_cost() {
        let t = std::time::Instant::now();
        let _ = derive_psk(b"a password");
        eprintln!("Argon2id 64 MiB x 3: {:?} per derivation", t.elapsed());
        let e = SeededEntropy::new(1);
        let (si, sr) = (keys(&e), keys(&e));
        let psk = cheap_psk("p");
        let t = std::time::Instant::now();
        let n = 200;
        for _ in 0..n {
            let (mut i, m1) = Handshake::initiator(&si, &psk, PROLOGUE, &e).unwrap();
            let mut r =
                Handshake::responder(&sr, std::slice::from_ref(&psk), PROLOGUE, &e).unwrap();
            let m2 = r.read(&m1).unwrap().unwrap();
            let m3 = i.read(&m2).unwrap().unwrap();
            r.read(&m3).unwrap();
            let _ = (i.finish().unwrap(), r.finish().unwrap());
        }
        eprintln!(
            "Noise XXpsk0 handshake, both sides: {:?} each",
            t.elapsed() / n
        );
    }

    #[test]
    fn password_roll_steps() {
        let (a, b) = (Secret::new([1; 32]), Secret::new([2; 32]));
        let cur = vec![a.clone()];
        let added = change_psks(&cur, PasswordChange::Add, b.clone()).unwrap();
        assert_eq!(added.iter().map(|k| k[0]).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            change_psks(&added, PasswordChange::Add, b.clone())
                .unwrap()
                .len(),
            2
        );
        let used = change_psks(&added, PasswordChange::Use, b.clone()).unwrap();
        assert_eq!(used.iter().map(|k| k[0]).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(
            change_psks(&used, PasswordChange::Drop, b.clone()),
            Err(PasswordError::DropInUse)
        );
        let dropped = change_psks(&used, PasswordChange::Drop, a.clone()).unwrap();
        assert_eq!(dropped.iter().map(|k| k[0]).collect::<Vec<_>>(), [2]);
        assert_eq!(
            change_psks(&dropped, PasswordChange::Drop, a),
            Err(PasswordError::NotAccepted)
        );
        let fresh = change_psks(&dropped, PasswordChange::Use, Secret::new([3; 32])).unwrap();
        assert_eq!(fresh.iter().map(|k| k[0]).collect::<Vec<_>>(), [3, 2]);
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        for c in 0..100 {
            assert!(w.accept(c));
        }
        assert!(!w.accept(50), "duplicate");
        assert!(w.accept(200));
        assert!(w.accept(150), "reordered within the window");
        assert!(!w.accept(150));
        assert!(w.accept(200 + WINDOW));
        assert!(!w.accept(200), "too old");
        assert!(!w.accept(201), "just outside");
        assert!(w.accept(202), "just inside");
        assert!(!w.check(3));
    }

    #[test]
    fn data_keys_round_trip_and_reject_tampering() {
        for cipher in [DataCipher::ChaCha20Poly1305, DataCipher::Aes256Gcm] {
            let k = DataKey::new(0, cipher, &[9u8; 32]);
            let mut buf = b"a frame".to_vec();
            let tag = k.seal(5, b"hdr", &mut buf);
            let mut bad = buf.clone();
            bad[0] ^= 1;
            assert!(k.open(5, b"hdr", &mut bad, &tag).is_err(), "{cipher:?}");
            assert!(
                k.open(6, b"hdr", &mut buf.clone(), &tag).is_err(),
                "{cipher:?}: wrong counter"
            );
            assert!(
                k.open(5, b"hdX", &mut buf.clone(), &tag).is_err(),
                "{cipher:?}: header is authenticated"
            );
            let mut bad_tag = tag;
            bad_tag[15] ^= 0x80;
            assert!(k.open(5, b"hdr", &mut buf.clone(), &bad_tag).is_err());
            k.open(5, b"hdr", &mut buf, &tag).unwrap();
            assert_eq!(buf, b"a frame");
        }
    }

    /// One secret under the two ciphers gives unrelated keys: neither opens the other's
    /// datagrams, and AES-GCM is not keyed with the ChaCha20 key itself.
    #[test]
    fn the_two_ciphers_never_share_a_key() {
        let secret = [5u8; 32];
        let chacha = DataKey::new(0, DataCipher::ChaCha20Poly1305, &secret);
        let aes = DataKey::new(0, DataCipher::Aes256Gcm, &secret);
        let raw_aes = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &secret).unwrap(),
        );
        let plain = b"sixty-four bytes or so of a frame, sealed by one and opened by other";
        let mut a = plain.to_vec();
        let tag = aes.seal(9, b"h", &mut a);
        assert!(chacha.open(9, b"h", &mut a.clone(), &tag).is_err());
        let mut c = plain.to_vec();
        let ctag = chacha.seal(9, b"h", &mut c);
        assert!(aes.open(9, b"h", &mut c.clone(), &ctag).is_err());
        let mut r = plain.to_vec();
        let rtag = raw_aes
            .seal_in_place_separate_tag(ring_nonce(9), ring::aead::Aad::from(b"h"), &mut r)
            .unwrap();
        assert_ne!((r, rtag.as_ref().to_vec()), (a, tag.to_vec()));
    }

    #[test]
    fn cipher_is_aes_only_when_both_offer_it_on_a_bound_version() {
        use DataCipher::*;
        let v = weft_proto::control::VERSION_BOUND_HEADERS;
        assert_eq!(DataCipher::negotiate(v, true, true), Aes256Gcm);
        assert_eq!(DataCipher::negotiate(v, true, false), ChaCha20Poly1305);
        assert_eq!(DataCipher::negotiate(v, false, true), ChaCha20Poly1305);
        assert_eq!(DataCipher::negotiate(v - 1, true, true), ChaCha20Poly1305);
        for c in [ChaCha20Poly1305, Aes256Gcm] {
            assert_eq!(c.name().parse::<DataCipher>(), Ok(c));
        }
        assert!("aes".parse::<DataCipher>().is_err());
    }

    /// From version 4 the prologue holds both headers: a header changed in transit makes
    /// the handshake fail; before it, the prologue is what older routers use.
    #[test]
    fn a_header_changed_in_transit_fails_the_handshake() {
        use weft_proto::control::{FLAG_AES_GCM, FLAG_ENCRYPTED, encode_header};
        let e: SharedEntropy = SeededEntropy::new(11);
        let psk = cheap_psk("pw");
        let (si, sr) = (keys(&e), keys(&e));
        let both = FLAG_ENCRYPTED | FLAG_AES_GCM;
        let (hi, hr) = (encode_header(1, 4, both), encode_header(1, 4, both));
        let stripped = encode_header(1, 4, FLAG_ENCRYPTED);
        assert_eq!(prologue(3, &hi, &hr), PROLOGUE);
        let run = |pi: Vec<u8>, pr: Vec<u8>| -> Result<(), CryptoError> {
            let (mut i, m1) = Handshake::initiator(&si, &psk, &pi, &e)?;
            let mut r = Handshake::responder(&sr, std::slice::from_ref(&psk), &pr, &e)?;
            let m2 = r.read(&m1)?.expect("message 2");
            let m3 = i.read(&m2)?.expect("message 3");
            r.read(&m3)?;
            i.finish()?;
            r.finish()?;
            Ok(())
        };
        run(prologue(4, &hi, &hr), prologue(4, &hi, &hr)).unwrap();
        // The responder saw the initiator's AES flag stripped.
        assert!(run(prologue(4, &hi, &hr), prologue(4, &stripped, &hr)).is_err());
        // The initiator saw the responder's version range narrowed to 3.
        assert!(
            run(
                prologue(3, &hi, &encode_header(1, 3, both)),
                prologue(4, &hi, &hr)
            )
            .is_err()
        );
    }

    /// Routers from before the switch to ring sealed data with RustCrypto: both directions
    /// must still open.
    #[test]
    fn data_keys_interoperate_with_the_rustcrypto_construction() {
        let key = [7u8; 32];
        let rc = ChaCha20Poly1305::new(Key::from_slice(&key));
        let k = DataKey::new(1, DataCipher::ChaCha20Poly1305, &key);
        for len in [0usize, 1, 63, 64, 1400, 65_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let counter = 0x0102_0304_0506 + len as u64;
            let mut a = plain.clone();
            let tag = k.seal(counter, b"aad", &mut a);
            let mut b = plain.clone();
            let rc_tag = rc
                .encrypt_in_place_detached(&nonce(counter), b"aad", &mut b)
                .unwrap();
            assert_eq!(
                (a.clone(), tag.to_vec()),
                (b.clone(), rc_tag.to_vec()),
                "len {len}"
            );
            rc.decrypt_in_place_detached(
                &nonce(counter),
                b"aad",
                &mut a,
                &Tag::clone_from_slice(&tag),
            )
            .unwrap();
            assert_eq!(a, plain);
            k.open(counter, b"aad", &mut b, &rc_tag).unwrap();
            assert_eq!(b, plain);
        }
        // A short tag is an authentication failure, not a panic.
        assert!(k.open(1, b"", &mut [0u8; 4], &[0u8; 3]).is_err());
    }

    #[test]
    fn psk_is_deterministic_and_password_dependent() {
        assert_eq!(*cheap_psk("a"), *cheap_psk("a"));
        assert_ne!(*cheap_psk("a"), *cheap_psk("b"));
    }
}
