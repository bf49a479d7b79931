//! Passwords, the kernel's randomness, and the keys derived from them.

use std::io::Read;
use std::sync::Mutex;

use weft_core::crypto::{self, Entropy, Secret, SharedEntropy};
use zeroize::Zeroizing;

/// A network password. Never printed; wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Zeroizing<Vec<u8>>);

impl Password {
    /// A password as given; surrounding whitespace (a file's final newline) is not part of it.
    /// `None` for an empty one.
    pub fn new(raw: &[u8]) -> Option<Password> {
        let s = raw.trim_ascii();
        (!s.is_empty()).then(|| Password(Zeroizing::new(s.to_vec())))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The pre-shared key: Argon2id, deliberately slow and memory-hard, so run it off the
    /// async threads.
    pub async fn derive(self) -> Secret {
        tokio::task::spawn_blocking(move || crypto::derive_psk(self.as_bytes()))
            .await
            .expect("key derivation does not panic")
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Randomness for keys: the kernel's `/dev/urandom`.
pub struct OsEntropy(Mutex<std::fs::File>);

impl OsEntropy {
    pub fn open() -> std::io::Result<SharedEntropy> {
        let f = std::fs::File::open("/dev/urandom")?;
        Ok(std::sync::Arc::new(OsEntropy(Mutex::new(f))))
    }
}

impl Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // /dev/urandom never runs dry once the kernel is seeded; a failure here means the
        // system is unusable for cryptography, and continuing would be worse than stopping.
        f.read_exact(buf)
            .expect("reading /dev/urandom for key material");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_trimmed_and_never_printed() {
        let p = Password::new(b"  s3cret\n").unwrap();
        assert_eq!(p.as_bytes(), b"s3cret");
        assert!(!format!("{p:?}").contains("s3cret"));
        assert!(Password::new(b" \n").is_none());
    }

    #[test]
    fn os_entropy_fills() {
        let e = OsEntropy::open().unwrap();
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        e.fill(&mut a);
        e.fill(&mut b);
        assert_ne!(a, b);
    }
}
