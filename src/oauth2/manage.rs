//! Client management, as the seed product's buttons: add, list, regenerate
//! secret (which revokes every token issued so far), revoke all tokens.
//! Shared by the `valet client` commands and the admin API. Managed clients
//! live in the state store (`app::managed_clients`); valet never rewrites
//! the operator's config.

use crate::app::managed_clients;
use crate::config::{ClientsFile, Config, RawClient};
use crate::credentials::{generate_secret, hmac_hash, Client};
use crate::revocation::time::Timestamp;
use crate::revocation::{Change, ClientCutoff, RevocationError, Revocations};
use crate::store::{ClientWrite, Store};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("the config has no authorization_server section")]
    NoAuthServer,
    #[error("no secret pepper is configured (secret_pepper_file or VALET_SECRET_PEPPER)")]
    NoPepper,
    #[error("no client `{0}`")]
    UnknownClient(String),
    #[error("client `{0}` is defined in the config file; valet does not rewrite it. Change its secret_hash there by hand, or remove it there and add it with `valet client add`")]
    NotManaged(String),
    #[error("client `{0}` already exists")]
    Exists(String),
    #[error("invalid client: {0}")]
    Invalid(String),
    #[error(
        "client `{0}` was changed by another process meanwhile; nothing was written: try again"
    )]
    Conflict(String),
    #[error("cannot write the client to the state store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot record the revocation: {0}")]
    Revocation(#[from] RevocationError),
}

/// What `list` shows of a client: never its secret or hash.
#[derive(Debug, Serialize)]
pub struct ClientInfo {
    pub client_id: String,
    pub source: &'static str,
    pub grant_types: Vec<&'static str>,
    pub operator: Option<String>,
    pub scopes: Vec<String>,
    pub audience: String,
    pub access_token_ttl: u64,
    pub refresh_token_ttl: u64,
    pub use_refresh_token: bool,
    /// Written by hand in the config: valet never rewrites it (change it
    /// there).
    pub read_only: bool,
}

impl From<&Client> for ClientInfo {
    fn from(c: &Client) -> Self {
        ClientInfo {
            client_id: c.id.clone(),
            source: if c.managed { "store" } else { "config" },
            grant_types: c.grants.iter().map(|g| g.as_str()).collect(),
            operator: c.operator.clone(),
            scopes: c.scopes.clone(),
            audience: c.audience.clone(),
            access_token_ttl: c.access_ttl.as_secs(),
            refresh_token_ttl: c.refresh_ttl.as_secs(),
            use_refresh_token: c.use_refresh_token,
            read_only: !c.managed,
        }
    }
}

/// One client as `list` shows it: never its secret or hash.
pub fn show(config: &Config, client_id: &str) -> Result<ClientInfo, ManageError> {
    let a = config
        .authorization_server
        .as_ref()
        .ok_or(ManageError::NoAuthServer)?;
    a.registry
        .clients
        .get(client_id)
        .map(|c| ClientInfo::from(&**c))
        .ok_or_else(|| ManageError::UnknownClient(client_id.to_string()))
}

pub fn list(config: &Config) -> Result<Vec<ClientInfo>, ManageError> {
    let a = config
        .authorization_server
        .as_ref()
        .ok_or(ManageError::NoAuthServer)?;
    let mut v: Vec<ClientInfo> = a
        .registry
        .clients
        .values()
        .map(|c| ClientInfo::from(&**c))
        .collect();
    v.sort_by(|x, y| x.client_id.cmp(&y.client_id));
    Ok(v)
}

/// Adds a client (with a generated id when its id is empty) and a new
/// generated secret: returns (id, secret), the secret this once.
pub fn add(
    config: &Config,
    store: &dyn Store,
    mut client: RawClient,
) -> Result<(String, String), ManageError> {
    let a = config
        .authorization_server
        .as_ref()
        .ok_or(ManageError::NoAuthServer)?;
    let pepper = a.registry.pepper.as_ref().ok_or(ManageError::NoPepper)?;
    if client.client_id.is_empty() {
        // None chosen: 80 random bits, in the id alphabet.
        let mut r = [0u8; 10];
        aws_lc_rs::rand::fill(&mut r).expect("system randomness");
        client.client_id = format!("client-{}", hex(&r));
    }
    if a.registry.clients.contains_key(&client.client_id) {
        return Err(ManageError::Exists(client.client_id));
    }
    let secret = generate_secret();
    client.secret_hash = hmac_hash(pepper, &secret);
    // Validate exactly as the config loader will.
    let probe = ClientsFile {
        clients: vec![client.clone()],
    };
    crate::config::check_clients_file(config, &probe).map_err(ManageError::Invalid)?;
    let record = managed_clients::record(&client);
    if !store.put_client(&client.client_id, Some(&record), ClientWrite::Create)? {
        return Err(ManageError::Exists(client.client_id));
    }
    Ok((client.client_id, secret))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a new client needs to start: its id and secret and valet's URLs
/// (from the configured issuer, as in the RFC 8414 metadata).
pub fn credentials(config: &Config, client_id: &str, secret: &str) -> serde_json::Value {
    let issuer = &config.tokens.issuer;
    let o = super::endpoints::origin(issuer);
    let mut doc = serde_json::json!({
        "client_id": client_id,
        "client_secret": secret,
        "issuer": issuer,
    });
    if let Some(a) = &config.authorization_server {
        doc["token_endpoint"] = format!("{o}{}", a.paths.token).into();
        doc["revocation_endpoint"] = format!("{o}{}", a.paths.revocation).into();
        doc["introspection_endpoint"] = format!("{o}{}", a.paths.introspection).into();
        doc["metadata_url"] = format!("{o}{}", a.paths.metadata).into();
    }
    doc
}

/// Writes `doc` to a new file, mode 0600 (never over an existing one).
pub fn write_credentials_file(
    path: &std::path::Path,
    doc: &serde_json::Value,
) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(doc).expect("json") + "\n";
    write_secret_file(path, text.trim_end())
}

/// Revokes every token issued to `client_id` until now (durably).
pub fn revoke_tokens(
    config: &Config,
    revocations: &Revocations,
    client_id: &str,
) -> Result<(), ManageError> {
    let a = config
        .authorization_server
        .as_ref()
        .ok_or(ManageError::NoAuthServer)?;
    if !a.registry.clients.contains_key(client_id) {
        return Err(ManageError::UnknownClient(client_id.to_string()));
    }
    // Cut-offs reject `iat < revoked_before`, and `iat` has whole seconds. So
    // each new cut-off is strictly later than the last one (a second "revoke
    // all" within the same second must still catch tokens issued between the
    // two), and the token endpoint issues later tokens at or after it.
    let previous = revocations
        .current()
        .client_cutoff(client_id)
        .unwrap_or(i64::MIN);
    let cutoff = (crate::revocation::now() + 1).max(previous.saturating_add(1));
    revocations.apply(&[Change::Client(ClientCutoff {
        client_id: client_id.to_string(),
        revoked_before: Timestamp(cutoff),
    })])?;
    Ok(())
}

/// A new secret for a managed client, and every token issued so far revoked.
///
/// The order is what makes it hold: the new secret is written first and
/// `put_in_force` makes the running process use it (the admin API follows
/// the store; the CLI leaves it to the gateway, which follows the store
/// before honouring any secret). Only then is the
/// cut-off written, so any token the old secret could still obtain was
/// issued before it, and is revoked by it. If `put_in_force` says it could
/// not (the config does not load), the cut-off is written all the same: the
/// token endpoint issues nothing for a client whose cut-off is newer than
/// its last good read of the clients file. Returns the secret and whether
/// it is in force.
pub fn regenerate_secret(
    config: &Config,
    revocations: &Revocations,
    client_id: &str,
    put_in_force: impl FnOnce() -> bool,
) -> Result<(String, bool), ManageError> {
    let a = config
        .authorization_server
        .as_ref()
        .ok_or(ManageError::NoAuthServer)?;
    let client = a
        .registry
        .clients
        .get(client_id)
        .ok_or_else(|| ManageError::UnknownClient(client_id.to_string()))?;
    if !client.managed {
        return Err(ManageError::NotManaged(client_id.to_string()));
    }
    let pepper = a.registry.pepper.as_ref().ok_or(ManageError::NoPepper)?;
    let store = revocations.store().as_ref();
    let current = store
        .clients()?
        .into_iter()
        .find(|(id, _)| id == client_id)
        .map(|(_, r)| r)
        .ok_or_else(|| ManageError::UnknownClient(client_id.to_string()))?;
    let mut client: RawClient = serde_json::from_str(&current)
        .map_err(|e| ManageError::Invalid(format!("the stored record does not parse: {e}")))?;
    let secret = generate_secret();
    client.secret_hash = hmac_hash(pepper, &secret);
    let record = managed_clients::record(&client);
    if !store.put_client(
        client_id,
        Some(&record),
        ClientWrite::Replace { current: &current },
    )? {
        return Err(ManageError::Conflict(client_id.to_string()));
    }
    let in_force = put_in_force();
    revoke_tokens(config, revocations, client_id)?;
    Ok((secret, in_force))
}

/// Writes a secret to a new 0600 file (refusing to overwrite one).
pub fn write_secret_file(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}
