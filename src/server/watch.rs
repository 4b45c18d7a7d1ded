//! Hot reload: watches the *directories* holding the config, the revocation
//! file, the OAuth 1.0 token store and the TLS files (editors and Kubernetes ConfigMaps replace files by
//! rename, which a watch on the file itself would miss), debounces bursts of
//! events, and re-reads whatever changed. Each reload keeps the last good
//! state on error, logs the file and position, and counts in a metric.

use super::tls::CertResolver;
use crate::app::App;
use crate::config::TlsSource;
use notify::RecursiveMode;
use notify_debouncer_mini::{new_debouncer, DebounceEventResult, Debouncer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Events closer together than this are handled as one reload.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Keeps the OS watch alive; dropping it stops watching.
pub struct Watcher(#[allow(dead_code)] Debouncer<notify::RecommendedWatcher>);

fn dir_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub fn start(
    app: Arc<App>,
    resolvers: Vec<Arc<CertResolver>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Watcher, String> {
    // One slot: a burst of changes while a reload runs is one more reload,
    // never a queue (notify-debouncer-mini already folds each burst into
    // one batch).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut w = new_debouncer(DEBOUNCE, move |res: DebounceEventResult| {
        if res.is_ok() {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| e.to_string())?;
    let snap = app.snapshot();
    let mut dirs = vec![dir_of(&snap.config.path), dir_of(app.revocations.path())];
    for f in crate::app::companion_files(&snap.config) {
        let d = dir_of(&f);
        // A clients file may not exist yet; its directory must, to be watched.
        let _ = std::fs::create_dir_all(&d);
        dirs.push(d);
    }
    for r in &resolvers {
        if let TlsSource::Files { cert, key } = r.source() {
            dirs.push(dir_of(cert));
            dirs.push(dir_of(key));
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        w.watcher()
            .watch(d, RecursiveMode::NonRecursive)
            .map_err(|e| format!("{}: {e}", d.display()))?;
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                ev = rx.recv() => {
                    if ev.is_none() {
                        return;
                    }
                    let (app, resolvers) = (app.clone(), resolvers.clone());
                    // File reads and parsing stay off the async workers.
                    let _ = tokio::task::spawn_blocking(move || reload_all(&app, &resolvers)).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    });
    Ok(Watcher(w))
}

/// Re-reads config, revocations and certificates; each one independently.
pub fn reload_all(app: &App, resolvers: &[Arc<CertResolver>]) {
    app.reload_files();
    for r in resolvers {
        match r.reload() {
            Ok(false) => {}
            Ok(true) => {
                app.metrics.reload("tls", true);
                tracing::info!("TLS certificate reloaded");
            }
            Err(e) => {
                app.metrics.reload("tls", false);
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
            }
        }
    }
}
