//! A real browser for the flows people follow in one: Debian's chromium,
//! headless, driven over WebDriver (W3C) through its chromedriver. Host
//! names are mapped to loopback ports, so the URLs a test checks are the
//! configured ones (`https://valet.example:8443/...`).

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The element id key of the W3C protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = s.send_request(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

impl Browser {
    /// Starts chromedriver and a headless chromium whose resolver sends
    /// each `(host, addr)` host name to `addr` (any port in the URL).
    pub async fn start(hosts: &[(&str, SocketAddr)]) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian packages chromium and chromium-driver; .ci/run installs them)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // Owned from here: dropped (killed) if anything below fails.
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: tempfile::tempdir().unwrap(),
        };
        let up = super::eventually(Duration::from_secs(20), || async {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => call(addr, "GET", "/status", None).await["value"]["ready"] == true,
                Err(_) => false,
            }
        })
        .await;
        assert!(up, "chromedriver did not start");
        let rules = hosts
            .iter()
            .map(|(h, a)| format!("MAP {h} {a}"))
            .collect::<Vec<_>>()
            .join(", ");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    // The test CAs are made at test time; the browser is
                    // told to go on, as a person clicking through would not.
                    "--ignore-certificate-errors",
                    format!("--host-resolver-rules={rules}"),
                    format!("--user-data-dir={}", b._profile.path().display()),
                ],
            },
        }}});
        let r = call(addr, "POST", "/session", Some(caps)).await;
        b.session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        b
    }

    async fn cmd(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        call(self.addr, method, &path, body).await["value"].clone()
    }

    /// Navigates to `url` (and waits for the load, as WebDriver does).
    pub async fn go(&self, url: &str) {
        self.cmd("POST", "url", Some(json!({ "url": url }))).await;
    }

    /// The URL of the page shown now.
    pub async fn url(&self) -> String {
        self.cmd("GET", "url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's source.
    pub async fn source(&self) -> String {
        self.cmd("GET", "source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Clicks the first element `css` selects.
    pub async fn click(&self, css: &str) {
        let e = self
            .cmd(
                "POST",
                "element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = e[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {e}"))
            .to_string();
        self.cmd("POST", &format!("element/{id}/click"), Some(json!({})))
            .await;
    }

    /// Waits (up to `within`) until the URL shown starts with `prefix`.
    pub async fn wait_for_url(&self, prefix: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let u = self.url().await;
            if u.starts_with(prefix) || std::time::Instant::now() > deadline {
                return u;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
