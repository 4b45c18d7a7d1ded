//! What several config sections share below them: paths relative to the
//! config file, and key entries (`tokens.keys`, an issuer's `keys`).
//! `compile` and the section files use it; it uses neither.

use super::error::Collector;
use super::raw::RawKey;
use crate::tokens::keys::{self, KeyConfig, LoadedKey};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Relative paths in the config are relative to the config file's directory.
pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Key entries (`tokens.keys`, an issuer's `keys`), loaded; a bad one is
/// reported and left out.
pub(super) fn load_keys(
    raw: &[RawKey],
    at: &str,
    base: &Path,
    c: &mut Collector<'_>,
) -> Vec<Arc<LoadedKey>> {
    let mut loaded: Vec<Arc<LoadedKey>> = Vec::new();
    for (i, k) in raw.iter().enumerate() {
        let p = format!("{at}[{i}]");
        if raw[..i].iter().any(|o| o.id == k.id) {
            c.at(
                &format!("{p}.id"),
                format!("key id `{}` is used twice", k.id),
            );
        }
        let Some(algorithm) = keys::parse_algorithm(&k.algorithm) else {
            c.at(
                &format!("{p}.algorithm"),
                format!(
                    "algorithm `{}` is not supported; use {} (symmetric algorithms are refused)",
                    k.algorithm,
                    keys::ALGORITHMS.join(", ")
                ),
            );
            continue;
        };
        let kc = KeyConfig {
            id: k.id.clone(),
            algorithm,
            private_key_file: k.private_key_file.as_deref().map(|f| resolve(base, f)),
            public_key_file: k.public_key_file.as_deref().map(|f| resolve(base, f)),
            generate_if_missing: k.generate_if_missing,
        };
        match keys::load(&kc, &mut c.new_files) {
            Ok(key) => loaded.push(Arc::new(key)),
            Err(e) => c.at(&p, e.to_string()),
        }
    }
    loaded
}
