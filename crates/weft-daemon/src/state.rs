//! What the router keeps across restarts, in its state directory:
//! - `peer-name`: this host's peer name, chosen once;
//! - `static-key`: with a password, this host's long-term Curve25519 key (hex, mode 0600),
//!   which peers see in every handshake;
//! - `targets.json`: the direct targets, for `weft launch --resume`;
//! - `containers.json`: containers attached to the overlay, for `ps`, `detach` and cleanup.
//!
//! Every write goes to a temporary file that is fsynced and renamed over the old one, so a
//! crash leaves either the old or the new version, never a torn one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Serialize, de::DeserializeOwned};
use weft_proto::PeerName;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt ({detail}); move it away or run 'weft reset'")]
    Corrupt { path: PathBuf, detail: String },
}

#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn open(root: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(root).map_err(|source| StateError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    /// The persisted peer name; `given` (from `--name`) replaces it.
    pub fn peer_name(&self, given: Option<PeerName>, random: u64) -> Result<PeerName, StateError> {
        let path = self.path("peer-name");
        if let Some(n) = given {
            self.write_atomic("peer-name", format!("{n}\n").as_bytes())?;
            return Ok(n);
        }
        match std::fs::read_to_string(&path) {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|e: weft_proto::PeerNameError| StateError::Corrupt {
                    path: path.clone(),
                    detail: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let n = PeerName::from_random(random);
                self.write_atomic("peer-name", format!("{n}\n").as_bytes())?;
                Ok(n)
            }
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// This host's static key for encrypted connections, created on first use (only this
    /// user may read it).
    pub fn static_key(
        &self,
        entropy: &weft_core::crypto::SharedEntropy,
    ) -> Result<weft_core::crypto::Secret, StateError> {
        const FILE: &str = "static-key";
        let path = self.path(FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let s = zeroize::Zeroizing::new(s);
                let corrupt = || StateError::Corrupt {
                    path: path.clone(),
                    detail: "want 64 hex digits".into(),
                };
                let hex = s.trim();
                if hex.len() != 64 || !hex.is_ascii() {
                    return Err(corrupt());
                }
                let mut key = weft_core::crypto::Secret::new([0u8; 32]);
                for (i, b) in key.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| corrupt())?;
                }
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (key, _) = weft_core::crypto::generate_static_key(entropy);
                let mut hex = zeroize::Zeroizing::new(String::with_capacity(65));
                for b in key.iter() {
                    hex.push_str(&format!("{b:02x}"));
                }
                hex.push('\n');
                self.write_atomic_mode(FILE, hex.as_bytes(), 0o600)?;
                Ok(key)
            }
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    pub fn load_json<T: DeserializeOwned + Default>(&self, file: &str) -> Result<T, StateError> {
        let path = self.path(file);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StateError::Corrupt {
                path,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    pub fn save_json<T: Serialize>(&self, file: &str, value: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(value).expect("state types serialize to JSON");
        self.write_atomic(file, &bytes)
    }

    /// As [`StateDir::save_json`] without pretty-printing, for files that grow large.
    pub fn save_json_compact<T: Serialize>(&self, file: &str, value: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value).expect("state types serialize to JSON");
        self.write_atomic(file, &bytes)
    }

    fn write_atomic(&self, file: &str, bytes: &[u8]) -> Result<(), StateError> {
        self.write_atomic_mode(file, bytes, 0o644)
    }

    fn write_atomic_mode(&self, file: &str, bytes: &[u8], mode: u32) -> Result<(), StateError> {
        let path = self.path(file);
        let tmp = self.path(&format!(".{file}.tmp"));
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        // The rename is durable only once the directory is synced.
        std::fs::File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> PathBuf {
        std::env::temp_dir().join(format!(
            "weft-state-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ))
    }

    #[test]
    fn peer_name_is_generated_once() {
        let d = tmpdir();
        let s = StateDir::open(&d).unwrap();
        let a = s.peer_name(None, 42).unwrap();
        let b = s.peer_name(None, 7).unwrap();
        assert_eq!(a, b);
        let given: PeerName = "6e:b2:81:6c:ac:b3".parse().unwrap();
        assert_eq!(s.peer_name(Some(given), 1).unwrap(), given);
        assert_eq!(s.peer_name(None, 1).unwrap(), given);
        std::fs::write(s.path("peer-name"), "garbage").unwrap();
        assert!(matches!(
            s.peer_name(None, 1),
            Err(StateError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn static_key_is_created_once_and_private() {
        let d = tmpdir();
        let s = StateDir::open(&d).unwrap();
        let e = weft_core::crypto::SeededEntropy::new(3);
        let a = s.static_key(&e).unwrap();
        let b = s.static_key(&e).unwrap();
        assert_eq!(*a, *b, "read back, not regenerated");
        let meta = std::fs::metadata(s.path("static-key")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
        std::fs::write(s.path("static-key"), "zz").unwrap();
        assert!(matches!(s.static_key(&e), Err(StateError::Corrupt { .. })));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn json_round_trip_and_missing_is_default() {
        let d = tmpdir();
        let s = StateDir::open(&d).unwrap();
        let v: Vec<String> = s.load_json("targets.json").unwrap();
        assert!(v.is_empty());
        s.save_json("targets.json", &vec!["10.0.0.1".to_string()])
            .unwrap();
        let v: Vec<String> = s.load_json("targets.json").unwrap();
        assert_eq!(v, vec!["10.0.0.1".to_string()]);
        std::fs::remove_dir_all(d).unwrap();
    }
}
