//! valet-managed clients (`valet client add`, the admin API) live in the
//! state store, one record each (the config's `RawClient`, as JSON; secrets
//! only as hashes). The config is compiled with them: they pass the same
//! checks as clients written in the config, and a record that no longer
//! does (an operator that became a user's login) fails the load like a bad
//! config, keeping the last good one in force.
//!
//! The clients file of earlier versions is imported once per store, all of
//! it or nothing, and never written again.

use crate::config::{self, ClientsFile, Config, ConfigError, ConfigErrors, RawClient};
use crate::store::Store;
use std::path::Path;

/// The records as the store holds them: (id, JSON), by id.
pub type Records = Vec<(String, String)>;

fn error(file: &Path, message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: file.to_path_buf(),
        position: None,
        message,
    }])
}

/// The name of the one import (not the file's path: a path that changes,
/// a mount moved, must not import again over what changed since).
const MARKER: &str = "clients-file";

/// Copies the clients file of `config` (if it names one that exists) into
/// the store, once per store. Logged; the file is left as it is, and not
/// read again once imported.
pub fn import_clients_file(config: &Config, store: &dyn Store) -> Result<(), ConfigErrors> {
    let Some(path) = config
        .authorization_server
        .as_ref()
        .and_then(|a| a.clients_file.as_ref())
    else {
        return Ok(());
    };
    let failed =
        |e: crate::store::StoreError| error(path, format!("cannot import the clients file: {e}"));
    if store.imported(MARKER).map_err(failed)? {
        return Ok(());
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(error(path, format!("cannot read the clients file: {e}"))),
    };
    let mut file: ClientsFile =
        serde_yaml::from_str(&text).map_err(|e| error(path, format!("not a clients file: {e}")))?;
    // Its relative paths were its own folder's; in the store they would be
    // the config's.
    let dir = path.parent().unwrap_or(Path::new("."));
    for c in &mut file.clients {
        absolute_paths(c, dir);
    }
    let import = crate::store::Import {
        clients: file
            .clients
            .iter()
            .map(|c| (c.client_id.clone(), record(c)))
            .collect(),
        ..Default::default()
    };
    if store.import_once(MARKER, &import).map_err(failed)? {
        tracing::info!(file = %path.display(), clients = import.clients.len(), "copied the clients file into the state store, once; the file is left as it was and is never read again");
    }
    Ok(())
}

/// Makes the file paths of `c` absolute, relative ones taken from `dir`.
pub fn absolute_paths(c: &mut RawClient, dir: &Path) {
    let fix = |p: &mut String| {
        if Path::new(p.as_str()).is_relative() {
            *p = dir.join(p.as_str()).display().to_string();
        }
    };
    if let Some(s) = &mut c.saml2_bearer {
        fix(&mut s.idp_certificate_file);
    }
    for i in c.jwt_bearer.iter_mut().flat_map(|j| j.issuers.iter_mut()) {
        i.jwks_file
            .iter_mut()
            .chain(i.public_key_file.iter_mut())
            .for_each(fix);
    }
}

/// For `valet check` (which writes nothing): the config at `path`, already
/// compiled as `config`, compiled again with the managed clients of an
/// existing store, read only, as `serve` will (once the clients file, if
/// any, was imported: until then the file is what `serve` imports, and
/// `config` was compiled with it).
pub fn check(path: &Path, config: Config) -> Result<Config, ConfigErrors> {
    let store_path = config.store_path.clone();
    let file = config
        .authorization_server
        .as_ref()
        .map(|a| a.clients_file.is_some());
    // (A Redis store is not opened by `check`: it may be out of reach.)
    let (Some(has_file), true, false, None) = (
        file,
        store_path.exists(),
        config.role == config::Role::Validator,
        &config.store_redis,
    ) else {
        return Ok(config);
    };
    let store = crate::store::sqlite::SqliteStore::open_read_only(&store_path)
        .map_err(|e| error(&store_path, e.to_string()))?;
    let imported = store
        .imported(MARKER)
        .map_err(|e| error(&store_path, e.to_string()))?;
    if has_file && !imported {
        return Ok(config);
    }
    load(path, &store, &store_path).map(|(c, _)| c)
}

/// A client as the store keeps it.
pub fn record(c: &RawClient) -> String {
    serde_json::to_string(c).expect("a client serialises")
}

/// What a deleted client's record becomes: its id stays taken for ever.
/// (A valet from before tombstones cannot parse it, and keeps its last
/// good config: delete clients once every authority runs this version.)
pub fn tombstone(deleted_at: i64) -> String {
    serde_json::json!({"tombstone": {"deleted_at": deleted_at}}).to_string()
}

/// Whether a stored record is a deleted client's.
pub fn is_tombstone(record: &str) -> bool {
    // Cheap before exact: a client record never starts this way.
    record.starts_with("{\"tombstone\"")
        && serde_json::from_str::<serde_json::Value>(record)
            .is_ok_and(|v| v.get("tombstone").is_some())
}

/// The managed clients in the store, as stored.
pub fn records(store: &dyn Store, store_path: &Path) -> Result<Records, ConfigErrors> {
    store
        .clients()
        .map_err(|e| error(store_path, format!("cannot read the managed clients: {e}")))
}

/// Parses the records.
pub fn parse(records: &Records, store_path: &Path) -> Result<Vec<RawClient>, ConfigErrors> {
    records
        .iter()
        .filter(|(_, r)| !is_tombstone(r))
        .map(|(id, r)| {
            serde_json::from_str(r).map_err(|e| {
                error(
                    store_path,
                    format!("the record of client `{id}` does not parse: {e}"),
                )
            })
        })
        .collect()
}

/// The config at `path` compiled with the managed clients in `store`, and
/// the records it was compiled with.
pub fn load(
    path: &Path,
    store: &dyn Store,
    store_path: &Path,
) -> Result<(Config, Records), ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| error(path, format!("cannot read the config file: {e}")))?;
    let records = records(store, store_path)?;
    let config = compile(path, &text, &records, store_path)?;
    Ok((config, records))
}

/// `text` (the config at `path`) compiled with the managed clients'
/// `records`.
pub fn compile(
    path: &Path,
    text: &str,
    records: &Records,
    store_path: &Path,
) -> Result<Config, ConfigErrors> {
    let clients = parse(records, store_path)?;
    let config = config::parse_with(path, text, Some(&clients))?;
    // A deleted client's id is never used again, by hand either.
    if let Some(a) = &config.authorization_server {
        for (id, _) in records.iter().filter(|(_, r)| is_tombstone(r)) {
            // (Written by hand only: a stored twin got past the checks of
            // an earlier version or a race, and keeps working.)
            if let Some(c) = a
                .registry
                .clients
                .values()
                .find(|c| !c.managed && c.id.eq_ignore_ascii_case(id))
                .map(|c| &c.id)
            {
                return Err(error(
                    path,
                    format!("client `{c}`: the id of a deleted client (`{id}`, tombstoned in the state store) is never used again; choose another id"),
                ));
            }
        }
    }
    Ok(config)
}
