//! OAuth 1.0 state in the state store: the access tokens and secrets
//! obtained for a (provider, subject), kept for reuse across restarts and
//! shared by every authority process on the store, and the flows waiting
//! for the provider's callback.
//!
//! Everything is sealed here with AES-256-GCM under the token store key
//! before it reaches the store: the store (a file, a backup, a replica)
//! never holds a token secret in clear. The associated data names what an
//! entry belongs to (provider and subject; for a flow, its temporary token
//! too), so an entry moved to another subject no longer opens.
//!
//! Tokens are held in memory for the request path (signing needs them at
//! once); every change goes to the store first and is in its change log,
//! which the app follows ([`TokenStore::refresh`]), so a token stored or
//! forgotten through one process is in force in all within a second.
//!
//! The YAML file of earlier versions is imported once (when its entries
//! open with the key) and never written again.

use crate::credentials::Secret;
use crate::store::{Flow, Store};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

pub use crate::oauth1_signature::Credentials;

/// Flows in progress at once, all subjects together; beyond it new flows
/// are refused (503) until some finish or expire.
pub const MAX_PENDING_FLOWS: usize = 10_000;
/// Flows one subject may have in progress with one provider; starting
/// another ends the oldest (so one caller cannot fill the table).
pub const MAX_PENDING_PER_SUBJECT: usize = 5;

/// The name of the one import of the token file (not its path: a path that
/// changes must not bring back tokens forgotten since).
const IMPORT_MARKER: &str = "oauth1-token-file";

/// The file of earlier versions, read once for the import.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyFile {
    version: u32,
    #[serde(default)]
    tokens: Vec<LegacyToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyToken {
    provider: String,
    subject: String,
    /// base64(nonce || AES-256-GCM(token "\n" secret)).
    sealed: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the token store key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A flow waiting for the provider's callback.
pub struct Pending {
    pub provider: String,
    pub subject: Box<str>,
    pub token_secret: Secret,
    /// SHA-256 of the state cookie's value.
    pub state_digest: [u8; 32],
    pub return_url: String,
    /// Unix milliseconds.
    pub expires_at_ms: i64,
    /// The level of access asked for (the provider's `permissions`).
    pub access: Option<String>,
    /// Started from a browser link: the callback holds the token for the
    /// application to redeem (with the subject's bearer) instead of
    /// storing it.
    pub redeem: bool,
}

/// How long a browser start link lasts.
pub const LINK_TTL_SECS: i64 = 300;

/// How long a token waits, held, for the application to redeem its code.
pub const CODE_TTL_MS: i64 = 300_000;

/// What a start link carries (sealed: nobody reads or changes it).
#[derive(Debug, Clone, serde::Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    /// Single use: recorded as used when the flow starts.
    pub id: String,
    /// Unix seconds.
    pub exp: i64,
    pub sub: String,
    pub ret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc: Option<String>,
    /// The application's state, returned with the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub st: Option<String>,
}

/// A token held for the application to redeem.
pub struct Held {
    pub subject: String,
    pub creds: Credentials,
    pub access: Option<String>,
    pub expires_at_ms: i64,
}

/// The store key of a redemption code (its digest: the store never holds
/// a code that could be redeemed).
fn code_key(code: &str) -> String {
    format!("code-{}", crate::digest::sha256_hex(code.as_bytes()))
}

type Entries = HashMap<String, HashMap<String, Arc<Credentials>>>;

pub struct TokenStore {
    store: Arc<dyn Store>,
    key: LessSafeKey,
    /// provider → subject → credentials (nested so that a lookup on the
    /// request path borrows its keys instead of allocating them).
    entries: RwLock<Entries>,
    /// Tokens the provider refused as such (revoked, expired): kept in the
    /// store, marked, never used; (provider, subject) → (problem, when).
    invalid: RwLock<HashMap<(String, String), (String, i64)>>,
    /// The level of access each token was granted with, where the
    /// provider has levels: (provider, subject) → level.
    access: RwLock<HashMap<(String, String), String>>,
}

/// A token marked invalid, to be written to the store.
pub struct Invalidation {
    store: Arc<dyn Store>,
    provider: String,
    subject: String,
    sealed: Vec<u8>,
}

impl Invalidation {
    /// Writes the mark durably (and to the log: every process stops using
    /// the token). Blocking I/O.
    pub fn record(self) -> Result<(), crate::store::StoreError> {
        self.store
            .set_oauth1_token(&self.provider, &self.subject, Some(&self.sealed))
            .map(drop)
    }
}

/// The start of a sealed token the provider refused: then the problem, the
/// time, the token and the secret, a line each. Not UTF-8: a valet older
/// than the mark refuses the record (as undecryptable) instead of signing
/// with a token it would misread.
const INVALID: &[u8] = b"\xffinvalid\n";

/// Then the level of access granted, a line (after the mark of a refused
/// token, if any). Not UTF-8 either, for the same reason.
const ACCESS: &[u8] = b"\xfeaccess\n";

/// A sealed token, opened.
struct Unsealed {
    creds: Credentials,
    invalid: Option<(String, i64)>,
    access: Option<String>,
}

/// Splits off the first line of `b` (as UTF-8).
fn line(b: &[u8]) -> Option<(&str, &[u8])> {
    let i = b.iter().position(|&x| x == b'\n')?;
    Some((std::str::from_utf8(&b[..i]).ok()?, &b[i + 1..]))
}

/// The sealed text of a token: [ACCESS level "\n"] token "\n" secret.
fn token_plain(creds: &Credentials, access: Option<&str>) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(a) = access {
        v.extend_from_slice(ACCESS);
        v.extend_from_slice(a.as_bytes());
        v.push(b'\n');
    }
    v.extend_from_slice(creds.token.as_bytes());
    v.push(b'\n');
    v.extend_from_slice(creds.secret.expose());
    v
}

fn token_aad(provider: &str, subject: &str) -> Vec<u8> {
    [provider.as_bytes(), b"\0", subject.as_bytes()].concat()
}

fn flow_aad(token: &str, provider: &str, subject: &str) -> Vec<u8> {
    [
        b"flow\0",
        token.as_bytes(),
        b"\0",
        provider.as_bytes(),
        b"\0",
        subject.as_bytes(),
    ]
    .concat()
}

impl TokenStore {
    /// An AES-256-GCM key from 32 raw bytes.
    pub fn key_from_bytes(b: &[u8]) -> Result<LessSafeKey, StoreError> {
        let unbound = UnboundKey::new(&AES_256_GCM, b).map_err(|_| StoreError::BadKey)?;
        Ok(LessSafeKey::new(unbound))
    }

    /// Parses a base64 store key (32 bytes).
    pub fn key_from_base64(s: &str) -> Result<LessSafeKey, StoreError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| StoreError::BadKey)?;
        Self::key_from_bytes(&bytes)
    }

    /// Opens the tokens on `store`: imports the `legacy` file once (if
    /// given and there), then reads every token. Returns what went wrong
    /// (logged here; valet carries on with the tokens it could read).
    pub fn open(
        store: Arc<dyn Store>,
        key: LessSafeKey,
        legacy: Option<&Path>,
    ) -> (TokenStore, Vec<String>) {
        let s = TokenStore {
            store,
            key,
            entries: Default::default(),
            invalid: Default::default(),
            access: Default::default(),
        };
        let mut problems = Vec::new();
        if let Some(path) = legacy {
            if let Err(e) = s.import(path) {
                tracing::error!(file = %path.display(), error = %e, "the OAuth 1.0 token file was not imported; it is left as it is, and the import is tried again at the next start");
                problems.push(e);
            }
        }
        if let Err(e) = s.load_all() {
            problems.push(e);
        }
        (s, problems)
    }

    /// Copies the legacy file's entries into the store, once per store:
    /// all of them or none (an entry that does not open with the key stops
    /// the import, so a wrong key never silently drops tokens).
    fn import(&self, path: &Path) -> Result<(), String> {
        if self
            .store
            .imported(IMPORT_MARKER)
            .map_err(|e| e.to_string())?
        {
            return Ok(());
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read: {e}")),
        };
        let file: LegacyFile =
            serde_yaml::from_str(&text).map_err(|e| format!("not a token file: {e}"))?;
        if file.version != 1 {
            return Err(format!("unknown token file version {}", file.version));
        }
        let mut import = crate::store::Import::default();
        for t in file.tokens {
            let sealed = base64::engine::general_purpose::STANDARD
                .decode(&t.sealed)
                .ok()
                .filter(|b| {
                    self.open_sealed(&token_aad(&t.provider, &t.subject), b)
                        .is_some()
                })
                .ok_or_else(|| {
                    format!(
                        "the entry for ({}, {}) does not decrypt (wrong key, or tampered)",
                        t.provider, t.subject
                    )
                })?;
            import.oauth1_tokens.push((t.provider, t.subject, sealed));
        }
        let n = import.oauth1_tokens.len();
        if self
            .store
            .import_once(IMPORT_MARKER, &import)
            .map_err(|e| e.to_string())?
        {
            tracing::info!(file = %path.display(), tokens = n, "copied the OAuth 1.0 token file into the state store, once; the file is left as it was and is never written");
        }
        Ok(())
    }

    /// Reads every token from the store again (at start, and when the log
    /// could not be resumed). Entries that do not open are skipped and
    /// reported.
    pub fn load_all(&self) -> Result<(), String> {
        let rows = self.store.oauth1_tokens().map_err(|e| e.to_string())?;
        let mut map = Entries::new();
        let mut invalid = HashMap::new();
        let mut access = HashMap::new();
        let mut closed = 0;
        for (provider, subject, sealed) in rows {
            let Some(u) = self.unseal_token(&provider, &subject, &sealed) else {
                closed += 1;
                continue;
            };
            if let Some(a) = u.access {
                access.insert((provider.clone(), subject.clone()), a);
            }
            match u.invalid {
                Some(i) => {
                    invalid.insert((provider, subject), i);
                }
                None => {
                    map.entry(provider)
                        .or_default()
                        .insert(subject, Arc::new(u.creds));
                }
            }
        }
        *self.entries.write().expect("not poisoned") = map;
        *self.invalid.write().expect("not poisoned") = invalid;
        *self.access.write().expect("not poisoned") = access;
        if closed > 0 {
            let e = format!("{closed} OAuth 1.0 tokens in the state store do not decrypt with the configured key (wrong key, or tampered); they are not used");
            tracing::error!("{e}");
            return Err(e);
        }
        Ok(())
    }

    /// Reads the token of (provider, subject) from the store again (another
    /// process changed it).
    pub fn refresh(&self, provider: &str, subject: &str) -> Result<(), String> {
        let sealed = self
            .store
            .oauth1_token(provider, subject)
            .map_err(|e| e.to_string())?;
        match sealed.and_then(|b| self.unseal_token(provider, subject, &b)) {
            Some(Unsealed {
                invalid: Some(i),
                access,
                ..
            }) => self.set(provider, subject, None, Some(i), access),
            Some(u) => self.set(provider, subject, Some(u.creds), None, u.access),
            None => self.set(provider, subject, None, None, None),
        }
        Ok(())
    }

    fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system randomness");
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut data,
            )
            .expect("AES-GCM sealing cannot fail for these sizes");
        [&nonce[..], &data].concat()
    }

    fn open_sealed(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let mut buf = rest.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }

    fn unseal_token(&self, provider: &str, subject: &str, sealed: &[u8]) -> Option<Unsealed> {
        let plain = self.open_sealed(&token_aad(provider, subject), sealed)?;
        let (invalid, rest) = match plain.strip_prefix(INVALID) {
            Some(rest) => {
                let (problem, rest) = line(rest)?;
                let (at, rest) = line(rest)?;
                (Some((problem.to_string(), at.parse().ok()?)), rest)
            }
            None => (None, &plain[..]),
        };
        let (access, rest) = match rest.strip_prefix(ACCESS) {
            Some(rest) => {
                let (a, rest) = line(rest)?;
                (Some(a.to_string()), rest)
            }
            None => (None, rest),
        };
        let (token, secret) = line(rest)?;
        Some(Unsealed {
            creds: Credentials {
                token: token.to_string(),
                secret: Secret::new(secret.to_vec()),
            },
            invalid,
            access,
        })
    }

    /// The level of access `subject`'s token was granted with, if the
    /// provider has levels.
    pub fn access(&self, provider: &str, subject: &str) -> Option<String> {
        self.access
            .read()
            .expect("not poisoned")
            .get(&(provider.to_string(), subject.to_string()))
            .cloned()
    }

    /// The subjects whose token the provider refused: (subject, problem,
    /// when), sorted.
    pub fn invalid_subjects(&self, provider: &str) -> Vec<(String, String, i64)> {
        let mut v: Vec<_> = self
            .invalid
            .read()
            .expect("not poisoned")
            .iter()
            .filter(|((p, _), _)| p == provider)
            .map(|((_, s), (problem, at))| (s.clone(), problem.clone(), *at))
            .collect();
        v.sort();
        v
    }

    /// Why the provider refused `subject`'s token, and when, if it did.
    pub fn invalid(&self, provider: &str, subject: &str) -> Option<(String, i64)> {
        self.invalid
            .read()
            .expect("not poisoned")
            .get(&(provider.to_string(), subject.to_string()))
            .cloned()
    }

    /// Marks `subject`'s token `token` invalid, as the provider said
    /// (`problem`): kept in the store for the operator to see, never used
    /// again; the subject is asked to authorize anew. A token replaced
    /// meanwhile (the subject authorized again) is left alone: `None`.
    /// Out of use in memory at once; [`Invalidation::record`] writes it.
    pub fn invalidate(
        &self,
        provider: &str,
        subject: &str,
        token: &str,
        problem: &str,
    ) -> Option<Invalidation> {
        let creds = self.get(provider, subject).filter(|c| c.token == token)?;
        let at = crate::revocation::now();
        let access = self.access(provider, subject);
        let mut token = token_plain(&creds, access.as_deref());
        let mut plain = [
            INVALID,
            problem.as_bytes(),
            b"\n",
            at.to_string().as_bytes(),
            b"\n",
            &token,
        ]
        .concat();
        let sealed = self.seal(&token_aad(provider, subject), &plain);
        zeroize::Zeroize::zeroize(&mut plain);
        zeroize::Zeroize::zeroize(&mut token);
        self.set(
            provider,
            subject,
            None,
            Some((problem.to_string(), at)),
            access,
        );
        Some(Invalidation {
            store: self.store.clone(),
            provider: provider.to_string(),
            subject: subject.to_string(),
            sealed,
        })
    }

    /// Puts one subject's state in force in memory.
    fn set(
        &self,
        provider: &str,
        subject: &str,
        creds: Option<Credentials>,
        invalid: Option<(String, i64)>,
        access: Option<String>,
    ) {
        {
            let mut m = self.entries.write().expect("not poisoned");
            match creds {
                Some(c) => {
                    m.entry(provider.to_string())
                        .or_default()
                        .insert(subject.to_string(), Arc::new(c));
                }
                None => {
                    if let Some(s) = m.get_mut(provider) {
                        s.remove(subject);
                    }
                }
            }
        }
        let key = (provider.to_string(), subject.to_string());
        {
            let mut m = self.access.write().expect("not poisoned");
            match access {
                Some(a) => m.insert(key.clone(), a),
                None => m.remove(&key),
            };
        }
        let mut inv = self.invalid.write().expect("not poisoned");
        match invalid {
            Some(i) => {
                inv.insert(key, i);
            }
            None => {
                inv.remove(&key);
            }
        }
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

    /// Stores credentials (granted with level `access`, where the provider
    /// has levels) durably, then puts them in force. Blocking I/O.
    pub fn put(
        &self,
        provider: &str,
        subject: &str,
        creds: Credentials,
        access: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut plain = token_plain(&creds, access);
        let sealed = self.seal(&token_aad(provider, subject), &plain);
        zeroize::Zeroize::zeroize(&mut plain);
        self.store
            .set_oauth1_token(provider, subject, Some(&sealed))?;
        self.set(
            provider,
            subject,
            Some(creds),
            None,
            access.map(str::to_owned),
        );
        Ok(())
    }

    /// Forgets a subject's token; `Ok(true)` if there was one. Blocking I/O.
    pub fn remove(&self, provider: &str, subject: &str) -> Result<bool, StoreError> {
        let had = self.store.set_oauth1_token(provider, subject, None)?;
        self.set(provider, subject, None, None, None);
        Ok(had)
    }

    /// Records a flow under its temporary token (sealed), within the
    /// bounds; `Ok(false)` when too many are pending. Blocking I/O.
    pub fn start_flow(&self, token: &str, p: &Pending) -> Result<bool, StoreError> {
        let url = p.return_url.as_bytes();
        // The level, if any, between the URL and the secret: a mark no
        // secret starts with (secrets are UTF-8), its length, its name.
        let mut access = p.access.as_deref().map_or(Vec::new(), |a| {
            let a = &a.as_bytes()[..a.len().min(255)];
            [&[FLOW_ACCESS, a.len() as u8][..], a].concat()
        });
        if p.redeem {
            access.push(FLOW_REDEEM);
        }
        let mut plain = [
            &p.state_digest[..],
            &(url.len() as u32).to_be_bytes(),
            url,
            &access,
            p.token_secret.expose(),
        ]
        .concat();
        let flow = Flow {
            provider: p.provider.clone(),
            subject: p.subject.to_string(),
            sealed: self.seal(&flow_aad(token, &p.provider, &p.subject), &plain),
            expires_at_ms: p.expires_at_ms,
        };
        zeroize::Zeroize::zeroize(&mut plain);
        Ok(self.store.start_flow(
            token,
            &flow,
            MAX_PENDING_PER_SUBJECT,
            MAX_PENDING_FLOWS,
            crate::revocation::now_ms(),
        )?)
    }

    /// Takes out the flow of `token` with `provider`: a temporary token is
    /// usable once, whatever follows (in any process on the store). A flow
    /// that does not open is as good as unknown. Blocking I/O.
    pub fn take_flow(&self, token: &str, provider: &str) -> Result<Option<Pending>, StoreError> {
        let Some(f) = self.store.take_flow(token, provider)? else {
            return Ok(None);
        };
        let Some(mut plain) =
            self.open_sealed(&flow_aad(token, &f.provider, &f.subject), &f.sealed)
        else {
            tracing::error!(provider, "a pending OAuth 1.0 flow in the state store does not decrypt (wrong key, or tampered); refused");
            return Ok(None);
        };
        let pending = parse_flow(&plain).map(|(digest, url, access, redeem, secret)| Pending {
            provider: f.provider,
            subject: f.subject.into(),
            token_secret: Secret::new(secret.to_vec()),
            state_digest: *digest,
            return_url: String::from_utf8_lossy(url).into_owned(),
            expires_at_ms: f.expires_at_ms,
            access: access.map(|a| String::from_utf8_lossy(a).into_owned()),
            redeem,
        });
        zeroize::Zeroize::zeroize(&mut plain);
        Ok(pending)
    }
}

impl TokenStore {
    /// A new start link for `subject` (single use, for `LINK_TTL_SECS`):
    /// valet's URL that opens it.
    pub fn start_link(
        &self,
        p: &crate::config::Provider,
        subject: &str,
        return_url: &str,
        access: Option<&str>,
        state: Option<&str>,
    ) -> String {
        let link = Link {
            id: crate::tokens::random_id(),
            exp: crate::revocation::now() + LINK_TTL_SECS,
            sub: subject.to_string(),
            ret: return_url.to_string(),
            acc: access.map(str::to_owned),
            st: state.map(str::to_owned),
        };
        let base = p
            .start_url
            .strip_suffix("/authorize")
            .unwrap_or(&p.start_url);
        format!("{base}/start?link={}", self.seal_link(&p.name, &link))
    }

    /// A start link's sealed form (URL-safe), bound to `provider`.
    pub fn seal_link(&self, provider: &str, link: &Link) -> String {
        let plain = serde_json::to_vec(link).expect("json");
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.seal(&[b"link\0", provider.as_bytes()].concat(), &plain))
    }

    /// A start link opened, if it is one valet sealed for `provider` (its
    /// expiry and single use are the caller's to check).
    pub fn open_link(&self, provider: &str, sealed: &str) -> Option<Link> {
        // Links are short; a long one is not valet's.
        if sealed.len() > 4096 {
            return None;
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sealed)
            .ok()?;
        let plain = self.open_sealed(&[b"link\0", provider.as_bytes()].concat(), &raw)?;
        serde_json::from_slice(&plain).ok()
    }

    /// Records single-use `id` until `expires_at` (unix s): `Ok(false)`
    /// when it was used before, in any process on the store. Blocking I/O.
    pub fn use_once(&self, id: &str, expires_at: i64) -> Result<bool, StoreError> {
        Ok(self.store.use_once(id, expires_at)?)
    }

    /// Holds `creds` for the application to redeem with `code`; `Ok(false)`
    /// when too many are waiting. Blocking I/O.
    pub fn hold(
        &self,
        code: &str,
        provider: &str,
        subject: &str,
        creds: &Credentials,
        access: Option<&str>,
    ) -> Result<bool, StoreError> {
        let key = code_key(code);
        let mut plain = token_plain(creds, access);
        let flow = Flow {
            provider: provider.to_string(),
            subject: subject.to_string(),
            sealed: self.seal(&flow_aad(&key, provider, subject), &plain),
            expires_at_ms: crate::revocation::now_ms().saturating_add(CODE_TTL_MS),
        };
        zeroize::Zeroize::zeroize(&mut plain);
        Ok(self.store.start_flow(
            &key,
            &flow,
            MAX_PENDING_PER_SUBJECT,
            MAX_PENDING_FLOWS,
            crate::revocation::now_ms(),
        )?)
    }

    /// Takes out the token held under `code` (once, in any process; expired
    /// or not: the caller checks). Blocking I/O.
    pub fn take_held(&self, code: &str, provider: &str) -> Result<Option<Held>, StoreError> {
        let key = code_key(code);
        let Some(f) = self.store.take_flow(&key, provider)? else {
            return Ok(None);
        };
        let Some(mut plain) = self.open_sealed(&flow_aad(&key, &f.provider, &f.subject), &f.sealed)
        else {
            return Ok(None);
        };
        let held = (|| {
            let (access, rest) = match plain.strip_prefix(ACCESS) {
                Some(rest) => {
                    let (a, rest) = line(rest)?;
                    (Some(a.to_string()), rest)
                }
                None => (None, &plain[..]),
            };
            let (token, secret) = line(rest)?;
            Some(Held {
                subject: f.subject.clone(),
                creds: Credentials {
                    token: token.to_string(),
                    secret: Secret::new(secret.to_vec()),
                },
                access,
                expires_at_ms: f.expires_at_ms,
            })
        })();
        zeroize::Zeroize::zeroize(&mut plain);
        Ok(held)
    }
}

/// Marks the level of access in a flow's sealed content.
const FLOW_ACCESS: u8 = 0xfe;
/// Marks a flow whose token is held for redemption.
const FLOW_REDEEM: u8 = 0xfd;

/// A flow's sealed content: state digest, return URL, level of access (if
/// any), whether it is redeemed, token secret. (The marks are bytes no
/// UTF-8 secret starts with.)
#[allow(clippy::type_complexity)]
fn parse_flow(plain: &[u8]) -> Option<(&[u8; 32], &[u8], Option<&[u8]>, bool, &[u8])> {
    let (digest, rest) = plain.split_first_chunk::<32>()?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return None;
    }
    let (url, mut rest) = rest.split_at(len);
    let mut access = None;
    if let Some((&FLOW_ACCESS, r)) = rest.split_first() {
        let (&n, r) = r.split_first()?;
        let n = n as usize;
        if r.len() < n {
            return None;
        }
        access = Some(&r[..n]);
        rest = &r[n..];
    }
    let redeem = match rest.split_first() {
        Some((&FLOW_REDEEM, r)) => {
            rest = r;
            true
        }
        _ => false,
    };
    Some((digest, url, access, redeem, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const OTHER_KEY: &str = "HxAdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

    fn creds(t: &str, s: &str) -> Credentials {
        Credentials {
            token: t.into(),
            secret: Secret::new(s.as_bytes().to_vec()),
        }
    }

    fn store(path: &Path) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(path).unwrap())
    }

    fn open(db: &Path, key: &str, legacy: Option<&Path>) -> (TokenStore, Vec<String>) {
        TokenStore::open(store(db), TokenStore::key_from_base64(key).unwrap(), legacy)
    }

    #[test]
    fn tokens_survive_a_restart_sealed_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let (s, problems) = open(&db, KEY, None);
        assert!(problems.is_empty());
        s.put(
            "legacy",
            "alice",
            creds("tok-alice", "sec-alice"),
            Some("write"),
        )
        .unwrap();
        s.put("legacy", "bob", creds("tok-bob", "sec-bob"), None)
            .unwrap();
        assert!(s.remove("legacy", "bob").unwrap());
        assert!(!s.remove("legacy", "bob").unwrap());
        for f in ["s.db", "s.db-wal"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        drop(s);
        for f in ["s.db", "s.db-wal"] {
            let bytes = std::fs::read(dir.path().join(f)).unwrap_or_default();
            let hay = String::from_utf8_lossy(&bytes);
            assert!(
                !hay.contains("tok-alice") && !hay.contains("sec-alice"),
                "sealed at rest ({f})"
            );
        }
        let (again, problems) = open(&db, KEY, None);
        assert!(problems.is_empty());
        let c = again.get("legacy", "alice").unwrap();
        assert_eq!(
            (c.token.as_str(), c.secret.expose()),
            ("tok-alice", &b"sec-alice"[..])
        );
        assert_eq!(again.access("legacy", "alice").as_deref(), Some("write"));
        assert!(again.get("legacy", "bob").is_none());
        // Another key opens nothing, and says so.
        let (other, problems) = open(&db, OTHER_KEY, None);
        assert!(other.get("legacy", "alice").is_none());
        assert!(problems[0].contains("do not decrypt"), "{problems:?}");
    }

    #[test]
    fn a_second_process_sees_changes_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let (a, _) = open(&db, KEY, None);
        let (b, _) = open(&db, KEY, None);
        a.put("p", "alice", creds("ta", "sa"), None).unwrap();
        assert!(b.get("p", "alice").is_none());
        let crate::store::Since::Changes(log) = b.store.since(0, 10).unwrap() else {
            panic!("trimmed")
        };
        let want = crate::store::Change::OAuth1Token {
            provider: "p".into(),
            subject: "alice".into(),
        };
        assert_eq!(log.last().unwrap().1, want);
        b.refresh("p", "alice").unwrap();
        assert_eq!(b.get("p", "alice").unwrap().token, "ta");
        assert!(b.remove("p", "alice").unwrap());
        a.refresh("p", "alice").unwrap();
        assert!(a.get("p", "alice").is_none());
    }

    #[test]
    fn a_flow_is_sealed_taken_once_and_bounded_per_subject() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let (a, _) = open(&db, KEY, None);
        let (b, _) = open(&db, KEY, None);
        let now = crate::revocation::now_ms();
        let pending = |subject: &str, ttl_ms: i64| Pending {
            provider: "p".into(),
            subject: subject.into(),
            token_secret: Secret::new(b"temp-secret".to_vec()),
            state_digest: [7; 32],
            return_url: "https://app.example/done".into(),
            expires_at_ms: now + ttl_ms,
            access: Some("read".into()).filter(|_| subject == "alice"),
            redeem: subject == "alice",
        };
        assert!(a.start_flow("t1", &pending("alice", 60_000)).unwrap());
        // Taken at another process; once.
        assert!(b.take_flow("t1", "other").unwrap().is_none());
        let got = b.take_flow("t1", "p").unwrap().expect("the flow");
        assert_eq!(
            (
                &*got.subject,
                got.token_secret.expose(),
                got.return_url.as_str()
            ),
            ("alice", &b"temp-secret"[..], "https://app.example/done")
        );
        assert_eq!(got.state_digest, [7; 32]);
        assert_eq!(got.access.as_deref(), Some("read"), "the level asked for");
        assert!(got.redeem);
        assert!(a.take_flow("t1", "p").unwrap().is_none());
        // Per subject: starting a sixth ends the oldest.
        for i in 0..=MAX_PENDING_PER_SUBJECT {
            let t = format!("s{i}");
            assert!(a.start_flow(&t, &pending("bob", 1000 + i as i64)).unwrap());
        }
        assert!(a.take_flow("s0", "p").unwrap().is_none(), "oldest ended");
        let s1 = a.take_flow("s1", "p").unwrap().unwrap();
        assert_eq!(
            (s1.access, s1.redeem, s1.token_secret.expose()),
            (None, false, &b"temp-secret"[..]),
            "no level: the secret follows the URL"
        );
        // Stored sealed: a swapped subject no longer opens.
        let db2 = crate::store::sqlite::SqliteStore::open(&db).unwrap();
        assert!(a.start_flow("t2", &pending("carol", 60_000)).unwrap());
        let f = db2.take_flow("t2", "p").unwrap().unwrap();
        let moved = Flow {
            subject: "mallory".into(),
            ..f
        };
        db2.start_flow("t2", &moved, 5, 100, now).unwrap();
        assert!(a.take_flow("t2", "p").unwrap().is_none());
    }

    #[test]
    fn the_legacy_file_is_imported_once_and_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let file = dir.path().join("oauth1-tokens.yaml");
        let k = TokenStore::key_from_base64(KEY).unwrap();
        let helper = TokenStore {
            store: store(&dir.path().join("scratch.db")),
            key: k,
            entries: Default::default(),
            invalid: Default::default(),
            access: Default::default(),
        };
        let sealed = base64::engine::general_purpose::STANDARD
            .encode(helper.seal(&token_aad("legacy", "alice"), b"tok-a\nsec-a"));
        let text = format!(
            "version: 1\ntokens:\n- provider: legacy\n  subject: alice\n  sealed: {sealed}\n"
        );
        std::fs::write(&file, &text).unwrap();
        // A wrong key imports nothing, and the import is tried again.
        let (s, problems) = open(&db, OTHER_KEY, Some(&file));
        assert!(problems[0].contains("does not decrypt"), "{problems:?}");
        assert!(s.get("legacy", "alice").is_none());
        drop(s);
        let (s, problems) = open(&db, KEY, Some(&file));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.get("legacy", "alice").unwrap().token, "tok-a");
        // Forgotten after the import: a restart does not bring it back.
        assert!(s.remove("legacy", "alice").unwrap());
        let (s, _) = open(&db, KEY, Some(&file));
        assert!(s.get("legacy", "alice").is_none(), "imported twice");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    }
}
