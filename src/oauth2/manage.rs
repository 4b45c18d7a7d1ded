//! Client management, as the seed product's buttons: add, list, show,
//! update (an update that narrows what the client may do revokes its
//! tokens), delete (tombstoned: the id is never used again, and the
//! client's tokens are revoked), regenerate secret (which revokes every
//! token issued so far), revoke all tokens. Shared by the `valet client`
//! commands and the admin API; every change is an audit record
//! (`app::audit`). Managed clients live in the state store
//! (`app::managed_clients`); valet never rewrites the operator's config.

use crate::app::{audit, managed_clients};
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
    #[error("client id `{0}` belonged to a deleted client: ids are never used again (a new client would inherit what upstreams know of the old one); choose another")]
    Deleted(String),
    #[error("the change was made, but its audit record could not be written: {0}")]
    Audit(crate::store::StoreError),
}

/// Writes the audit record of a change just made.
fn audited(
    store: &dyn Store,
    who: &str,
    action: &str,
    client_id: &str,
    details: serde_json::Value,
) -> Result<(), ManageError> {
    audit::record(store, who, action, Some(client_id), details)
        .map(|_| ())
        .map_err(|e| {
            tracing::error!(target: "valet::admin", admin = %who, action, client_id, error = %e, "the audit record of a change could not be written");
            ManageError::Audit(e)
        })
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
    who: &str,
) -> Result<Added, ManageError> {
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
    // The store itself, not only this process's view of it (another
    // authority may have added or deleted a twin it has not followed yet).
    let stored = store.clients()?;
    if let Some((id, r)) = stored
        .iter()
        .find(|(id, _)| id.eq_ignore_ascii_case(&client.client_id))
    {
        return Err(if managed_clients::is_tombstone(r) {
            ManageError::Deleted(id.clone())
        } else if *id == client.client_id {
            ManageError::Exists(id.clone())
        } else {
            ManageError::Invalid(format!(
                "client_id `{}` differs from `{id}` only by case: ids must be told apart by more",
                client.client_id
            ))
        });
    }
    managed_clients::absolute_paths(&mut client, &config_dir(config));
    let secret = generate_secret();
    client.secret_hash = hmac_hash(pepper, &secret);
    // Validate exactly as the config loader will.
    let probe = ClientsFile {
        clients: vec![client.clone()],
    };
    crate::config::check_clients_file(config, &probe, None).map_err(ManageError::Invalid)?;
    let record = managed_clients::record(&client);
    if !store.put_client(&client.client_id, Some(&record), ClientWrite::Create)? {
        return Err(ManageError::Exists(client.client_id));
    }
    // Everything the client may do, as stored (never the hash).
    let mut details = serde_json::to_value(&client).expect("json");
    if let Some(m) = details.as_object_mut() {
        m.remove("secret_hash");
    }
    let audit_error = audited(store, who, "client.add", &client.client_id, details)
        .err()
        .map(|e| e.to_string());
    Ok(Added {
        client_id: client.client_id,
        secret,
        audit_error,
    })
}

/// A client just added: its id and secret (shown this once), and why its
/// audit record could not be written, if it could not (the client exists
/// all the same: hiding its secret would only orphan it).
pub struct Added {
    pub client_id: String,
    pub secret: String,
    pub audit_error: Option<String>,
}

/// A new client from its fields as JSON (a client record without its
/// secret: valet generates that), `client_id` left out for a generated one.
pub fn client_from_spec(spec: serde_json::Value) -> Result<RawClient, ManageError> {
    let serde_json::Value::Object(mut fields) = spec else {
        return Err(ManageError::Invalid(
            "a client is a JSON object of its fields".into(),
        ));
    };
    if fields.contains_key("secret_hash") {
        return Err(ManageError::Invalid(
            "`secret_hash` cannot be chosen: valet generates the secret and shows it once".into(),
        ));
    }
    match fields.get("client_id") {
        None | Some(serde_json::Value::Null) => {
            fields.insert("client_id".into(), "".into());
        }
        Some(serde_json::Value::String(id)) if id.is_empty() => {
            return Err(ManageError::Invalid(format!(
                "{}; leave client_id out for a generated one",
                crate::config::CLIENT_ID_RULE
            )))
        }
        Some(_) => {}
    }
    fields.insert("secret_hash".into(), "".into());
    serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| ManageError::Invalid(format!("the client: {e}")))
}

/// The config file's folder: relative paths in a client record (its
/// identity mapping's key files) are taken from there, as for the config's
/// own clients.
fn config_dir(config: &Config) -> std::path::PathBuf {
    config
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf()
}

/// A managed client as `current` in the store (its record, parsed).
fn stored(store: &dyn Store, client_id: &str) -> Result<(String, RawClient), ManageError> {
    let current = store
        .clients()?
        .into_iter()
        .find(|(id, r)| id == client_id && !managed_clients::is_tombstone(r))
        .map(|(_, r)| r)
        .ok_or_else(|| ManageError::UnknownClient(client_id.to_string()))?;
    let client = serde_json::from_str(&current)
        .map_err(|e| ManageError::Invalid(format!("the stored record does not parse: {e}")))?;
    Ok((current, client))
}

/// The client `client_id` of the config in force, if valet manages it.
fn managed<'c>(
    config: &'c Config,
    client_id: &str,
) -> Result<&'c std::sync::Arc<Client>, ManageError> {
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
    Ok(client)
}

/// What an update did.
#[derive(Debug, Serialize)]
pub struct Updated {
    pub client: ClientInfo,
    /// What the client may no longer do (empty: only widened or unchanged).
    pub narrowed: Vec<&'static str>,
    /// Tokens issued before were revoked (because it narrowed).
    pub tokens_revoked: bool,
    /// The running process uses the new record.
    pub in_force: bool,
}

/// The fields an update may not name: the id is the client, and the
/// secret changes only through regeneration.
const FIXED: [&str; 2] = ["client_id", "secret_hash"];

/// Updates a managed client with `patch`, a JSON merge patch (RFC 7396) of
/// its record: a field present replaces, `null` returns it to its default.
/// Validated as a config load would. When the update narrows what the
/// client may do (grants, scopes, audience, operator, lifetimes, refresh
/// tokens, introspection, an identity mapping changed or removed), every
/// token issued under the old record is revoked, in the order
/// `regenerate_secret` explains.
pub fn update(
    config: &Config,
    revocations: &Revocations,
    client_id: &str,
    patch: &serde_json::Value,
    who: &str,
    put_in_force: impl FnOnce() -> bool,
) -> Result<Updated, ManageError> {
    managed(config, client_id)?;
    let serde_json::Value::Object(fields) = patch else {
        return Err(ManageError::Invalid(
            "an update is a JSON object of the fields to change".into(),
        ));
    };
    if let Some(f) = FIXED.iter().find(|f| fields.contains_key(**f)) {
        return Err(ManageError::Invalid(format!(
            "`{f}` cannot be updated{}",
            if *f == "secret_hash" {
                ": regenerate the secret instead"
            } else {
                ": add a new client and delete this one"
            }
        )));
    }
    let store = revocations.store().as_ref();
    let (current, old_raw) = stored(store, client_id)?;
    let mut doc = serde_json::to_value(&old_raw).expect("json");
    merge_patch(&mut doc, patch);
    let mut new_raw: RawClient = serde_json::from_value(doc)
        .map_err(|e| ManageError::Invalid(format!("the updated client: {e}")))?;
    managed_clients::absolute_paths(&mut new_raw, &config_dir(config));
    let probe = ClientsFile {
        clients: vec![new_raw.clone()],
    };
    let compiled = crate::config::check_clients_file(config, &probe, Some(client_id))
        .map_err(ManageError::Invalid)?;
    let new = compiled
        .first()
        .ok_or_else(|| ManageError::Invalid("the updated client does not compile".into()))?;
    // What is narrowed is judged against the record replaced (the store's),
    // not this process's view, which may lag behind another authority's
    // widening.
    let old_probe = ClientsFile {
        clients: vec![old_raw.clone()],
    };
    let old = crate::config::check_clients_file(config, &old_probe, Some(client_id))
        .ok()
        .and_then(|v| v.into_iter().next());
    let record = managed_clients::record(&new_raw);
    let changes = changes(&old_raw, &new_raw);
    if changes.is_empty() {
        return Ok(Updated {
            client: ClientInfo::from(&**new),
            narrowed: Vec::new(),
            tokens_revoked: false,
            in_force: true,
        });
    }
    let narrowed = match &old {
        Some(old) => narrowed(old, new, &old_raw, &new_raw),
        // The stored record no longer compiles: anything may have changed.
        None => vec!["record"],
    };
    let (in_force, cutoff) = replace_then_cut_off(
        revocations,
        client_id,
        (&current, &record),
        put_in_force,
        !narrowed.is_empty(),
    )?;
    audited(
        store,
        who,
        "client.update",
        client_id,
        serde_json::json!({"changes": changes, "narrowed": narrowed, "cutoff": cutoff}),
    )?;
    Ok(Updated {
        client: ClientInfo::from(&**new),
        tokens_revoked: cutoff.is_some(),
        narrowed,
        in_force,
    })
}

/// RFC 7396: objects merge member by member, `null` removes, anything else
/// replaces.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(t) = target else {
        unreachable!("made an object above")
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Each top-level field that differs: {field: {from, to}} (never the hash).
fn changes(old: &RawClient, new: &RawClient) -> serde_json::Map<String, serde_json::Value> {
    let (serde_json::Value::Object(o), serde_json::Value::Object(n)) = (
        serde_json::to_value(old).expect("json"),
        serde_json::to_value(new).expect("json"),
    ) else {
        return Default::default();
    };
    let mut out = serde_json::Map::new();
    for k in o.keys().chain(n.keys()) {
        if k == "secret_hash" || out.contains_key(k) || o.get(k) == n.get(k) {
            continue;
        }
        out.insert(
            k.clone(),
            serde_json::json!({"from": o.get(k), "to": n.get(k)}),
        );
    }
    out
}

/// What `new` no longer allows that `old` did.
fn narrowed(
    old: &Client,
    new: &Client,
    old_raw: &RawClient,
    new_raw: &RawClient,
) -> Vec<&'static str> {
    fn json<T: Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap_or_default()
    }
    let mut n = Vec::new();
    let mut say = |cond: bool, what: &'static str| {
        if cond {
            n.push(what);
        }
    };
    say(
        !old.grants.iter().all(|g| new.grants.contains(g)),
        "grant_types",
    );
    say(!old.scopes.iter().all(|s| new.scopes.contains(s)), "scopes");
    say(old.audience != new.audience, "audience");
    say(old.operator != new.operator, "operator");
    say(
        old.use_refresh_token && !new.use_refresh_token,
        "use_refresh_token",
    );
    say(old.introspect_any && !new.introspect_any, "introspect_any");
    say(new.access_ttl < old.access_ttl, "access_token_ttl");
    say(new.refresh_ttl < old.refresh_ttl, "refresh_token_ttl");
    say(
        new.family_max_lifetime < old.family_max_lifetime,
        "refresh_token_max_lifetime",
    );
    // An identity mapping changed or removed: tokens carry subjects and
    // claims the new one may not give.
    say(
        old_raw.jwt_bearer.is_some() && json(&old_raw.jwt_bearer) != json(&new_raw.jwt_bearer),
        "jwt_bearer",
    );
    say(
        old_raw.saml2_bearer.is_some()
            && json(&old_raw.saml2_bearer) != json(&new_raw.saml2_bearer),
        "saml2_bearer",
    );
    n
}

/// Deletes a managed client: its record becomes a tombstone (the id is
/// never issued again, so a new client cannot inherit what upstreams know
/// of this one through `x-valet-client-id`), then, once the running process
/// no longer knows the client, every token issued to it is revoked.
pub fn delete(
    config: &Config,
    revocations: &Revocations,
    client_id: &str,
    who: &str,
    put_in_force: impl FnOnce() -> bool,
) -> Result<bool, ManageError> {
    managed(config, client_id)?;
    let store = revocations.store().as_ref();
    let (current, _) = stored(store, client_id)?;
    // A tombstone's id is refused to every client differing only by case:
    // with a twin in place, the config would stop loading.
    let twins = store.clients()?.into_iter().map(|(id, _)| id);
    let in_config = config
        .authorization_server
        .iter()
        .flat_map(|a| a.registry.clients.keys().cloned());
    if let Some(twin) = twins
        .chain(in_config)
        .find(|id| id != client_id && id.eq_ignore_ascii_case(client_id))
    {
        return Err(ManageError::Invalid(format!(
            "client `{twin}` differs from `{client_id}` only by case, and a deleted id is never used again in any case: delete or rename `{twin}` first"
        )));
    }
    let tombstone = managed_clients::tombstone(crate::revocation::now());
    let (in_force, cutoff) = replace_then_cut_off(
        revocations,
        client_id,
        (&current, &tombstone),
        put_in_force,
        true,
    )?;
    audited(
        store,
        who,
        "client.delete",
        client_id,
        serde_json::json!({"cutoff": cutoff}),
    )?;
    Ok(in_force)
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
    who: &str,
) -> Result<(), ManageError> {
    let a = config
        .authorization_server
        .as_ref()
        .ok_or(ManageError::NoAuthServer)?;
    if !a.registry.clients.contains_key(client_id) {
        return Err(ManageError::UnknownClient(client_id.to_string()));
    }
    let cutoff = cut_off(revocations, client_id)?;
    audited(
        revocations.store().as_ref(),
        who,
        "client.revoke_tokens",
        client_id,
        serde_json::json!({"cutoff": cutoff}),
    )
}

/// Replaces the stored record `current` of `client_id` by `record`
/// (compare and set), puts it in force, then, if `cut`, revokes every token
/// issued until now: the order `regenerate_secret` explains. Returns
/// whether it is in force, and the cut-off.
fn replace_then_cut_off(
    revocations: &Revocations,
    client_id: &str,
    (current, record): (&str, &str),
    put_in_force: impl FnOnce() -> bool,
    cut: bool,
) -> Result<(bool, Option<i64>), ManageError> {
    let store = revocations.store().as_ref();
    if !store.put_client(client_id, Some(record), ClientWrite::Replace { current })? {
        return Err(ManageError::Conflict(client_id.to_string()));
    }
    let in_force = put_in_force();
    let cutoff = if cut {
        Some(cut_off(revocations, client_id)?)
    } else {
        None
    };
    Ok((in_force, cutoff))
}

/// Writes a cut-off for `client_id` (durably); returns it.
fn cut_off(revocations: &Revocations, client_id: &str) -> Result<i64, ManageError> {
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
    Ok(cutoff)
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
    who: &str,
    put_in_force: impl FnOnce() -> bool,
) -> Result<Regenerated, ManageError> {
    managed(config, client_id)?;
    let pepper = config
        .authorization_server
        .as_ref()
        .and_then(|a| a.registry.pepper.as_ref())
        .ok_or(ManageError::NoPepper)?;
    let store = revocations.store().as_ref();
    let (current, mut client) = stored(store, client_id)?;
    let secret = generate_secret();
    client.secret_hash = hmac_hash(pepper, &secret);
    let record = managed_clients::record(&client);
    let (in_force, cutoff) = replace_then_cut_off(
        revocations,
        client_id,
        (&current, &record),
        put_in_force,
        true,
    )?;
    let audit_error = audited(
        store,
        who,
        "client.regenerate_secret",
        client_id,
        serde_json::json!({"cutoff": cutoff}),
    )
    .err()
    .map(|e| e.to_string());
    Ok(Regenerated {
        secret,
        in_force,
        audit_error,
    })
}

/// A secret just regenerated (shown this once), whether it is in force, and
/// why its audit record could not be written, if it could not.
pub struct Regenerated {
    pub secret: String,
    pub in_force: bool,
    pub audit_error: Option<String>,
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
