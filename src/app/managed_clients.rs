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

/// Copies the clients file of `config` (if it names one that exists) into
/// the store, once per store and file. Logged; the file is left as it is.
pub fn import_clients_file(config: &Config, store: &dyn Store) -> Result<(), ConfigErrors> {
    let Some(path) = config
        .authorization_server
        .as_ref()
        .and_then(|a| a.clients_file.as_ref())
    else {
        return Ok(());
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(error(path, format!("cannot read the clients file: {e}"))),
    };
    let file: ClientsFile =
        serde_yaml::from_str(&text).map_err(|e| error(path, format!("not a clients file: {e}")))?;
    let import = crate::store::Import {
        clients: file
            .clients
            .iter()
            .map(|c| (c.client_id.clone(), record(c)))
            .collect(),
        ..Default::default()
    };
    let marker = format!(
        "clients-file:{}",
        std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
    );
    let done = store
        .import_once(&marker, &import)
        .map_err(|e| error(path, format!("cannot import the clients file: {e}")))?;
    if done {
        tracing::info!(file = %path.display(), clients = import.clients.len(), "copied the clients file into the state store, once; the file is left as it was and is never written");
    }
    Ok(())
}

/// A client as the store keeps it.
pub fn record(c: &RawClient) -> String {
    serde_json::to_string(c).expect("a client serialises")
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
    let clients = parse(&records, store_path)?;
    let config = config::parse_with(path, &text, Some(&clients))?;
    Ok((config, records))
}
