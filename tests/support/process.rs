//! The `valet` binary run as a child process on pre-picked loopback ports.

use super::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const VALET: &str = env!("CARGO_BIN_EXE_valet");

pub struct Proc {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    pub metrics: std::net::SocketAddr,
    pub ca: std::sync::Arc<TestCa>,
    pub key: std::sync::Arc<TestKey>,
    pub config: std::path::PathBuf,
    dir: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub async fn start(routes: &str) -> Proc {
        Self::start_with(routes, "", Stdio::null()).await
    }

    pub async fn start_with(routes: &str, extra: &str, stderr: Stdio) -> Proc {
        Self::start_with_limits(routes, "  shutdown_grace: 10s\n", extra, stderr).await
    }

    /// `limits` is the body of the `limits:` section.
    pub async fn start_with_limits(routes: &str, limits: &str, extra: &str, stderr: Stdio) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let key = TestKey::new();
        std::fs::write(dir.path().join("signing.pem"), &key.pem).unwrap();
        // Port 0 everywhere: valet binds and says which ports it got.
        let text = config_text(&ca, &dir, routes, &format!("limits:\n{limits}{extra}"));
        let config = dir.path().join("valet.yaml");
        std::fs::write(&config, text).unwrap();
        let (child, addr, metrics) = spawn(&config, stderr).await;
        Proc {
            child,
            addr,
            metrics,
            ca: std::sync::Arc::new(ca),
            key: std::sync::Arc::new(key),
            config,
            dir: dir.path().to_path_buf(),
            _dir: Some(dir),
        }
    }

    /// Another valet on the same directory (key, certificate, revocation
    /// file), on its own ports.
    pub async fn sibling(&self) -> Proc {
        // The same config: its ports are 0, so the sibling gets its own.
        self.with_config(&self.config.clone()).await
    }

    /// Another valet in the same directory, on `config` (ports 0).
    pub async fn with_config(&self, config: &std::path::Path) -> Proc {
        let p = self.with_config_unready(config).await;
        let ready = eventually(Duration::from_secs(20), || async {
            client::plain_get(p.metrics, "/readyz").await.0 == 200
        })
        .await;
        assert!(ready, "valet did not become ready");
        p
    }

    /// The same, without waiting for it to be ready (it may never be).
    pub async fn with_config_unready(&self, config: &std::path::Path) -> Proc {
        let (child, addr, metrics) = spawn_unready(config, Stdio::null()).await;
        Proc {
            child,
            addr,
            metrics,
            ca: self.ca.clone(),
            key: self.key.clone(),
            config: config.to_path_buf(),
            dir: self.dir.clone(),
            _dir: None,
        }
    }

    /// An access token by the client credentials grant of `client`.
    pub async fn issue_token(&self, client: &str, secret: &str) -> String {
        let r = self
            .client(Proto::H1)
            .post_form(
                "/oauth2/token",
                &[("grant_type", "client_credentials")],
                Some((client, secret)),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.json()["access_token"].as_str().unwrap().to_string()
    }

    pub fn client(&self, proto: Proto) -> Client {
        Client::new(self.addr, self.ca.client_config(proto.alpn()), proto)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Peak resident memory of the gateway process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Resident memory of the gateway process now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// Starts `valet serve` and reads the addresses it bound from its standard
/// output; then waits for it to be ready.
/// What each child printed on stdout, by process id.
#[allow(clippy::type_complexity)]
static STDOUT: std::sync::Mutex<
    std::collections::BTreeMap<u32, std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
> = std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The lines a valet started by `spawn` printed on stdout so far.
#[allow(dead_code)]
pub fn stdout_lines(child: &Child) -> Vec<String> {
    STDOUT
        .lock()
        .unwrap()
        .get(&child.id())
        .map(|k| k.lock().unwrap().clone())
        .unwrap_or_default()
}

pub async fn spawn(
    config: &std::path::Path,
    stderr: Stdio,
) -> (Child, std::net::SocketAddr, std::net::SocketAddr) {
    let (child, addr, metrics) = spawn_unready(config, stderr).await;
    let ready = eventually(Duration::from_secs(20), || async {
        client::plain_get(metrics, "/readyz").await.0 == 200
    })
    .await;
    assert!(ready, "valet did not become ready");
    (child, addr, metrics)
}

/// Starts `valet serve` and reads the addresses it bound.
pub async fn spawn_unready(
    config: &std::path::Path,
    stderr: Stdio,
) -> (Child, std::net::SocketAddr, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = Command::new(VALET)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "debug")
        // (A test runner inside a pod: the tests choose their store.)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    STDOUT.lock().unwrap().insert(child.id(), kept.clone());
    // Reads every line to the end, so valet never blocks on a full pipe;
    // keeps the first lines for `stdout_lines`.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            {
                let mut k = kept.lock().unwrap();
                if k.len() < 10_000 {
                    k.push(line.clone());
                }
            }
            let _ = tx.send(line);
        }
    });
    let (mut addr, mut metrics) = (None, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while addr.is_none() || metrics.is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("valet did not say which addresses it bound");
        if let Some(a) = line.strip_prefix("valet: listening on ") {
            addr.get_or_insert(a.parse::<std::net::SocketAddr>().unwrap());
        } else if let Some(a) = line.strip_prefix("valet: metrics on ") {
            metrics = Some(a.parse::<std::net::SocketAddr>().unwrap());
        }
    }
    (child, addr.unwrap(), metrics.unwrap())
}
