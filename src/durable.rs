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

/// A secret file the config asks valet to create (`generate_if_missing`):
/// made in memory by the config compiler, which never writes, and written
/// by [`NewFile::create`] when valet starts to use the config.
#[derive(Clone)]
pub struct NewFile {
    pub path: PathBuf,
    /// What it is, for `valet check` and the log ("signing key", ...).
    pub what: &'static str,
    contents: String,
}

impl std::fmt::Debug for NewFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewFile({}, {})", self.what, self.path.display())
    }
}

impl NewFile {
    pub fn new(path: &Path, what: &'static str, contents: String) -> NewFile {
        NewFile {
            path: path.to_path_buf(),
            what,
            contents,
        }
    }

    /// Creates the file (mode 0600) unless it exists: `Ok(false)` if another
    /// process made it first, whose content then is the one to use. Written
    /// to a temporary file, synced, then linked into place, which fails
    /// rather than replaces.
    pub fn create(&self) -> std::io::Result<bool> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(d) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d)?;
        }
        let tmp = sibling(&self.path, ".new");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(self.contents.as_bytes())?;
        f.sync_all()?;
        drop(f);
        let linked = std::fs::hard_link(&tmp, &self.path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }
}
