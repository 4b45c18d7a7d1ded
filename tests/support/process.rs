//! The `valet` binary run as a child process on pre-picked loopback ports.

use super::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const VALET: &str = env!("CARGO_BIN_EXE_valet");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let key = TestKey::new();
        std::fs::write(dir.path().join("signing.pem"), &key.pem).unwrap();
        let (port, mport) = (free_port(), free_port());
        let text = config_text(
            &ca,
            &dir,
            routes,
            &format!("limits:\n  shutdown_grace: 10s\n{extra}"),
        )
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1)
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{mport}"), 1);
        let config = dir.path().join("valet.yaml");
        std::fs::write(&config, text).unwrap();
        let (child, addr, metrics) = spawn(&config, port, mport, stderr).await;
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
        let text = std::fs::read_to_string(&self.config).unwrap();
        let (port, mport) = (free_port(), free_port());
        let text = text
            .replace(
                &format!("127.0.0.1:{}", self.addr.port()),
                &format!("127.0.0.1:{port}"),
            )
            .replace(
                &format!("127.0.0.1:{}", self.metrics.port()),
                &format!("127.0.0.1:{mport}"),
            );
        let config = self.dir.join(format!("valet-{port}.yaml"));
        std::fs::write(&config, text).unwrap();
        let (child, addr, metrics) = spawn(&config, port, mport, Stdio::null()).await;
        Proc {
            child,
            addr,
            metrics,
            ca: self.ca.clone(),
            key: self.key.clone(),
            config,
            dir: self.dir.clone(),
            _dir: None,
        }
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

pub async fn spawn(
    config: &std::path::Path,
    port: u16,
    mport: u16,
    stderr: Stdio,
) -> (Child, std::net::SocketAddr, std::net::SocketAddr) {
    let child = Command::new(VALET)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    let ready = eventually(Duration::from_secs(10), || async {
        match tokio::net::TcpStream::connect(metrics).await {
            Ok(_) => client::plain_get(metrics, "/readyz").await.0 == 200,
            Err(_) => false,
        }
    })
    .await;
    assert!(ready, "valet did not become ready");
    (child, format!("127.0.0.1:{port}").parse().unwrap(), metrics)
}
