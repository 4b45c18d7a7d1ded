//! The OAuth 1.0 token store: access tokens and their secrets obtained for a
//! (provider, subject), kept for reuse across restarts.
//!
//! The file is written durably (lock, temp file, fsync, rename, fsync dir)
//! with mode 0600. Each entry's token and secret are sealed with AES-256-GCM
//! under the store key; the provider and subject are the associated data, so
//! an entry cannot be moved to another subject. A file that does not parse
//! or decrypt at start is reported, moved aside (kept for inspection, never
//! overwritten) and valet carries on with an empty store.
//!
//! The file is the truth, so several valet processes may share it: every
//! change is made under the file lock to what is on disk, and `reload`
//! (driven by the file watcher) picks up changes made by others. A file
//! damaged while running is refused, never overwritten: the tokens in
//! memory stay in force and writes fail until it is repaired.

use crate::credentials::Secret;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub use crate::oauth1_signature::Credentials;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    #[serde(default)]
    tokens: Vec<StoredToken>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredToken {
    provider: String,
    subject: String,
    /// base64(nonce || AES-256-GCM(token "\n" secret)).
    sealed: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the token store key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("cannot write the token store {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token store {path} is damaged ({reason}); it was left as it is")]
    Damaged { path: PathBuf, reason: String },
}

/// What opening the store found wrong (reported, never fatal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub reason: String,
    pub moved_to: PathBuf,
}

type Entries = HashMap<String, HashMap<String, Arc<Credentials>>>;

pub struct TokenStore {
    path: PathBuf,
    key: LessSafeKey,
    /// provider → subject → credentials (nested so that a lookup on the
    /// request path borrows its keys instead of allocating them).
    entries: RwLock<Entries>,
    /// SHA-256 of the file content `entries` was last read from or written as.
    seen: std::sync::Mutex<[u8; 32]>,
}

fn aad(provider: &str, subject: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(provider.len() + subject.len() + 1);
    v.extend_from_slice(provider.as_bytes());
    v.push(0);
    v.extend_from_slice(subject.as_bytes());
    v
}

impl TokenStore {
    /// An AES-256-GCM key from 32 raw bytes.
    pub fn key_from_bytes(b: &[u8]) -> Result<LessSafeKey, StoreError> {
        let unbound = UnboundKey::new(&AES_256_GCM, b).map_err(|_| StoreError::BadKey)?;
        Ok(LessSafeKey::new(unbound))
    }

    /// The file the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Parses a base64 store key (32 bytes).
    pub fn key_from_base64(s: &str) -> Result<LessSafeKey, StoreError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| StoreError::BadKey)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| StoreError::BadKey)?;
        Ok(LessSafeKey::new(unbound))
    }

    /// Opens the store. A damaged file is moved aside and reported in the
    /// second value; the store then starts empty.
    pub fn open(path: &Path, key: LessSafeKey) -> (TokenStore, Option<Recovered>) {
        let store = TokenStore {
            path: path.to_path_buf(),
            key,
            entries: RwLock::new(HashMap::new()),
            seen: Default::default(),
        };
        let recovered = match store.reload() {
            Ok(_) => None,
            Err(reason) => {
                let moved_to = crate::durable::sibling(
                    path,
                    &format!(".corrupt-{}", crate::revocation::now()),
                );
                let _ = std::fs::rename(path, &moved_to);
                tracing::error!(file = %path.display(), moved_to = %moved_to.display(), %reason, "the OAuth 1.0 token store is unreadable; it was moved aside and valet starts with an empty store");
                Some(Recovered { reason, moved_to })
            }
        };
        (store, recovered)
    }

    /// Reads and unseals the file: its entries and the digest of its
    /// bytes (a missing file is an empty store).
    fn read_file(&self) -> Result<(Entries, [u8; 32]), String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Entries::new(), crate::digest::sha256(b"")))
            }
            Err(e) => return Err(format!("cannot read: {e}")),
        };
        let file: StoreFile =
            serde_yaml::from_str(&text).map_err(|e| format!("not a token store: {e}"))?;
        if file.version != 1 {
            return Err(format!("unknown token store version {}", file.version));
        }
        let mut map = Entries::new();
        for t in file.tokens {
            let creds = self
                .unseal(&t.provider, &t.subject, &t.sealed)
                .ok_or_else(|| {
                    format!(
                        "the entry for ({}, {}) does not decrypt (wrong key, or tampered)",
                        t.provider, t.subject
                    )
                })?;
            map.entry(t.provider)
                .or_default()
                .insert(t.subject, Arc::new(creds));
        }
        Ok((map, crate::digest::sha256(text.as_bytes())))
    }

    /// Re-reads the file if it changed since valet last read or wrote it
    /// (`Ok(false)`: unchanged). On error the tokens in force stay.
    pub fn reload(&self) -> Result<bool, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot read: {e}")),
        };
        if *self.seen.lock().expect("not poisoned") == crate::digest::sha256(&bytes) {
            return Ok(false);
        }
        let (map, digest) = self.read_file()?;
        *self.entries.write().expect("not poisoned") = map;
        *self.seen.lock().expect("not poisoned") = digest;
        Ok(true)
    }

    fn seal(&self, provider: &str, subject: &str, c: &Credentials) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system randomness");
        let mut data = Vec::with_capacity(c.token.len() + c.secret.expose().len() + 1 + 16);
        data.extend_from_slice(c.token.as_bytes());
        data.push(b'\n');
        data.extend_from_slice(c.secret.expose());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(provider, subject)),
                &mut data,
            )
            .expect("AES-GCM sealing cannot fail for these sizes");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    fn unseal(&self, provider: &str, subject: &str, sealed: &str) -> Option<Credentials> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let mut buf = rest.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(provider, subject)), &mut buf)
            .ok()?;
        let text = std::str::from_utf8(plain).ok()?;
        let (token, secret) = text.split_once('\n')?;
        Some(Credentials {
            token: token.to_string(),
            secret: Secret::new(secret.as_bytes().to_vec()),
        })
    }

    pub fn get(&self, provider: &str, subject: &str) -> Option<Arc<Credentials>> {
        self.entries
            .read()
            .expect("not poisoned")
            .get(provider)
            .and_then(|m| m.get(subject))
            .cloned()
    }

    /// The subjects holding a token for `provider`, sorted.
    pub fn subjects(&self, provider: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .entries
            .read()
            .expect("not poisoned")
            .get(provider)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Stores credentials durably, then puts them in force.
    pub fn put(&self, provider: &str, subject: &str, creds: Credentials) -> Result<(), StoreError> {
        self.update(|m| {
            m.entry(provider.to_string())
                .or_default()
                .insert(subject.to_string(), Arc::new(creds));
        })
    }

    /// Forgets a subject's token; `Ok(true)` if there was one.
    pub fn remove(&self, provider: &str, subject: &str) -> Result<bool, StoreError> {
        let mut had = false;
        self.update(|m| {
            had = m
                .get_mut(provider)
                .and_then(|s| s.remove(subject))
                .is_some()
        })?;
        Ok(had)
    }

    fn update(&self, f: impl FnOnce(&mut Entries)) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let lock = crate::durable::lock(&self.path).map_err(err)?;
        // Change what is on disk (another process may have written since).
        let (mut next, _) = self.read_file().map_err(|reason| StoreError::Damaged {
            path: self.path.clone(),
            reason,
        })?;
        f(&mut next);
        next.retain(|_, subjects| !subjects.is_empty());
        let mut tokens: Vec<StoredToken> = next
            .iter()
            .flat_map(|(p, subjects)| subjects.iter().map(move |(s, c)| (p, s, c)))
            .map(|(p, s, c)| StoredToken {
                provider: p.clone(),
                subject: s.clone(),
                sealed: self.seal(p, s, c),
            })
            .collect();
        tokens.sort_by(|a, b| (&a.provider, &a.subject).cmp(&(&b.provider, &b.subject)));
        let text = format!(
            "# valet OAuth 1.0 token store: tokens and secrets are sealed (AES-256-GCM).\n{}",
            serde_yaml::to_string(&StoreFile { version: 1, tokens }).expect("serializable")
        );
        crate::durable::replace(&lock, &self.path, text.as_bytes(), 0o600).map_err(err)?;
        *self.entries.write().expect("not poisoned") = next;
        *self.seen.lock().expect("not poisoned") = crate::digest::sha256(text.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const OTHER_KEY: &str = "HxAdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

    fn creds(t: &str, s: &str) -> Credentials {
        Credentials {
            token: t.into(),
            secret: Secret::new(s.as_bytes().to_vec()),
        }
    }

    fn open(path: &Path, key: &str) -> (TokenStore, Option<Recovered>) {
        TokenStore::open(path, TokenStore::key_from_base64(key).unwrap())
    }

    #[test]
    fn tokens_survive_a_restart_sealed_in_a_0600_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth1-tokens.yaml");
        let (s, rec) = open(&path, KEY);
        assert!(rec.is_none());
        s.put("legacy", "alice", creds("tok-alice", "sec-alice"))
            .unwrap();
        s.put("legacy", "bob", creds("tok-bob", "sec-bob")).unwrap();
        assert!(s.remove("legacy", "bob").unwrap());
        assert!(!s.remove("legacy", "bob").unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("tok-alice") && !text.contains("sec-alice"),
            "sealed at rest: {text}"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (again, rec) = open(&path, KEY);
        assert!(rec.is_none());
        let c = again.get("legacy", "alice").unwrap();
        assert_eq!(
            (c.token.as_str(), c.secret.expose()),
            ("tok-alice", &b"sec-alice"[..])
        );
        assert!(again.get("legacy", "bob").is_none());
    }

    #[test]
    fn a_wrong_key_or_swapped_entry_is_reported_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.yaml");
        let (s, _) = open(&path, KEY);
        s.put("legacy", "alice", creds("t", "s")).unwrap();
        let (empty, rec) = open(&path, OTHER_KEY);
        let rec = rec.expect("reported");
        assert!(rec.reason.contains("does not decrypt"), "{rec:?}");
        assert!(
            rec.moved_to.exists() && !path.exists(),
            "kept aside, never overwritten"
        );
        assert!(empty.get("legacy", "alice").is_none());
        // Moving an entry to another subject breaks its seal.
        std::fs::copy(&rec.moved_to, &path).unwrap();
        let swapped = std::fs::read_to_string(&path)
            .unwrap()
            .replace("subject: alice", "subject: mallory");
        std::fs::write(&path, swapped).unwrap();
        let (_, rec) = open(&path, KEY);
        assert!(rec.expect("reported").reason.contains("(legacy, mallory)"));
    }

    #[test]
    fn two_stores_on_one_file_merge_and_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.yaml");
        let (a, _) = open(&path, KEY);
        let (b, _) = open(&path, KEY);
        a.put("p", "alice", creds("ta", "sa")).unwrap();
        b.put("p", "bob", creds("tb", "sb")).unwrap();
        assert!(b.get("p", "alice").is_some(), "b wrote on top of a's entry");
        assert!(a.get("p", "bob").is_none());
        assert!(a.reload().unwrap());
        assert!(!a.reload().unwrap(), "unchanged file: no reload");
        assert_eq!(a.get("p", "bob").unwrap().token, "tb");
        assert!(b.remove("p", "alice").unwrap());
        a.reload().unwrap();
        assert!(a.get("p", "alice").is_none());
        // Damaged while running: the tokens in force stay, writes refuse.
        std::fs::write(&path, "tokens: [").unwrap();
        assert!(a.reload().unwrap_err().contains("not a token store"));
        assert_eq!(a.get("p", "bob").unwrap().token, "tb");
        let e = a.put("p", "carol", creds("t", "s")).unwrap_err();
        assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "tokens: [");
    }

    #[test]
    fn a_corrupt_file_does_not_stop_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.yaml");
        std::fs::write(&path, "tokens: [ {provider: x").unwrap();
        let (s, rec) = open(&path, KEY);
        assert!(rec.expect("reported").reason.contains("not a token store"));
        s.put("p", "u", creds("t", "s")).unwrap();
        assert!(s.get("p", "u").is_some());
        assert!(TokenStore::key_from_base64("c2hvcnQ=").is_err());
    }
}
