//! Durable file replacement shared by valet's writers (revocation list,
//! clients file): an exclusive lock on a sibling `.lock` file (also across
//! processes), then write a temporary file, fsync, rename over the target,
//! fsync the directory. A reader sees the old file or the new one, never a
//! torn one, and after `Ok` the new one survives a crash.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `path` with `suffix` appended to its file name.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Holds the writer lock of `path` until dropped.
pub struct WriteLock(#[allow(dead_code)] File);

pub fn lock(path: &Path) -> std::io::Result<WriteLock> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(sibling(path, ".lock"))?;
    f.lock()?;
    Ok(WriteLock(f))
}

/// Replaces `path` with `contents` durably. Call it holding [`lock`].
/// `mode` sets the permissions of the new file (e.g. 0o600 for secrets).
pub fn replace(_lock: &WriteLock, path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = sibling(path, ".tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
