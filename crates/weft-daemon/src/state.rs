//! What the router keeps across restarts, in its state directory:
//! - `peer-name`: this host's peer name, chosen once;
//! - `static-key`: with a password, this host's long-term Curve25519 key (hex, mode 0600),
//!   which peers see in every handshake;
//! - `targets.json`: the direct targets, for `weft launch --resume`;
//! - `containers.json`: containers attached to the overlay, for `ps`, `detach` and cleanup;
//! - `known-peers.json`: peers exchanged data with, redialled by `--resume`;
//! - `ipam.json`: this peer's IP allocation state (`ipam.json.<peer>`: another peer's, set
//!   aside when the router started under a new name);
//! - `kube-reclaim`: weft-kube's mark that this peer takes part in Kubernetes reclaim.
//!
//! `weft reset` removes all of them.
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

    /// Renames `file` to `file.TAG` (or `file.TAG.N` if that is taken), keeping it out of the
    /// way without losing it; returns the new path.
    pub fn set_aside(&self, file: &str, tag: &str) -> Result<PathBuf, StateError> {
        let from = self.path(file);
        let first = self.aside_path(file, tag);
        let mut to = first.clone();
        let mut n = 1;
        while to.exists() {
            to = PathBuf::from(format!("{}.{n}", first.display()));
            n += 1;
        }
        std::fs::rename(&from, &to).map_err(|source| StateError::Io {
            path: from.clone(),
            source,
        })?;
        Ok(to)
    }

    /// Where [`StateDir::set_aside`] first puts `file` for `tag` (a peer name: its colons
    /// become dashes).
    fn aside_path(&self, file: &str, tag: &str) -> PathBuf {
        self.path(&format!("{file}.{}", tag.replace(':', "-")))
    }

    /// Moves `file.TAG`, set aside earlier, back into place if there is one (and `file` is
    /// free); whether it did.
    pub fn take_back(&self, file: &str, tag: &str) -> Result<bool, StateError> {
        let (aside, to) = (self.aside_path(file, tag), self.path(file));
        if !aside.exists() || to.exists() {
            return Ok(false);
        }
        std::fs::rename(&aside, &to).map_err(|source| StateError::Io {
            path: aside,
            source,
        })?;
        Ok(true)
    }

    /// Removes every file weft keeps here (`weft reset`), set-aside ones included; returns
    /// their names.
    pub fn remove_all(&self) -> Result<Vec<String>, StateError> {
        const OURS: [&str; 7] = [
            "peer-name",
            "static-key",
            "targets.json",
            "known-peers.json",
            "containers.json",
            "ipam.json",
            "kube-reclaim",
        ];
        let mut removed = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.root.clone(),
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = OURS.iter().any(|o| {
                name == *o
                    || name.starts_with(&format!("{o}."))
                    || (name.starts_with(&format!(".{o}")) && name.ends_with(".tmp"))
            });
            if ours {
                std::fs::remove_file(entry.path()).map_err(|source| StateError::Io {
                    path: entry.path(),
                    source,
                })?;
                removed.push(name);
            }
        }
        removed.sort();
        Ok(removed)
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
    fn set_aside_keeps_every_version_and_reset_removes_all_of_ours() {
        let d = tmpdir();
        let s = StateDir::open(&d).unwrap();
        for _ in 0..2 {
            s.save_json("ipam.json", &1).unwrap();
            s.set_aside("ipam.json", "aa:bb").unwrap();
        }
        assert!(s.path("ipam.json.aa-bb").exists() && s.path("ipam.json.aa-bb.1").exists());
        assert!(!s.path("ipam.json").exists());
        s.save_json("ipam.json", &2).unwrap();
        s.peer_name(None, 5).unwrap();
        std::fs::write(d.join("not-ours"), "x").unwrap();
        let removed = s.remove_all().unwrap();
        assert_eq!(
            removed,
            [
                "ipam.json",
                "ipam.json.aa-bb",
                "ipam.json.aa-bb.1",
                "peer-name"
            ]
        );
        assert!(d.join("not-ours").exists(), "only weft's files go");
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
