//! valet as Kubernetes runs it (issue 20): files mounted from ConfigMaps and
//! Secrets, laid out as the kubelet lays them out, and updated as it
//! updates them: never a write to a file, but a new timestamped folder and
//! an atomic rename of the `..data` symlink that every file links through.

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use support::process::*;
use support::*;

/// A mounted ConfigMap or Secret volume, as the kubelet's atomic writer
/// makes it: `..<timestamp>/` holds the files, `..data` links to it, and
/// each file is a link `name -> ..data/name`.
struct Projected {
    root: PathBuf,
    current: Option<String>,
    generation: u32,
}

impl Projected {
    fn new(root: &Path, files: &[(&str, Vec<u8>)]) -> Projected {
        std::fs::create_dir_all(root).unwrap();
        let mut p = Projected {
            root: root.to_path_buf(),
            current: None,
            generation: 0,
        };
        p.update(files);
        p
    }

    /// The kubelet's update: write a new timestamped folder, point
    /// `..data_tmp` at it, rename that over `..data` (the one atomic
    /// step), link any new names, remove the old folder.
    fn update(&mut self, files: &[(&str, Vec<u8>)]) {
        self.generation += 1;
        let ts = format!(
            "..2026_12_02_06_00_{:02}.{:09}",
            self.generation, self.generation
        );
        let dir = self.root.join(&ts);
        std::fs::create_dir(&dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let tmp = self.root.join("..data_tmp");
        symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.root.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        if let Some(old) = self.current.replace(ts) {
            std::fs::remove_dir_all(self.root.join(old)).unwrap();
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

fn jti_of(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    v["jti"].as_str().unwrap().to_string()
}

/// The config a pod would mount, its paths in the other volumes.
fn pod_config(root: &Path, routes: &str) -> Vec<u8> {
    format!(
        r#"listeners:
  - address: "127.0.0.1:0"
    tls:
      cert_file: "{tls}/tls.crt"
      key_file: "{tls}/tls.key"
metrics:
  address: "127.0.0.1:0"
tokens:
  issuer: "{ISSUER}"
  audiences: ["{AUDIENCE}"]
  clock_skew: 5s
  keys:
    - id: {KID}
      algorithm: EdDSA
      private_key_file: "{keys}/signing.pem"
revocation:
  file: "{rev}/revocations.yaml"
store:
  path: "{state}/valet-state.db"
routes:
{routes}"#,
        tls = root.join("tls").display(),
        keys = root.join("keys").display(),
        rev = root.join("revocations").display(),
        state = root.join("state").display(),
    )
    .into_bytes()
}

/// The config (a ConfigMap), the operator's revocations (another) and the
/// serving certificate (a Secret) are each updated the way the kubelet
/// does it; valet picks up every one without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn configmap_and_secret_updates_by_symlink_swap_are_picked_up() {
    let up = Upstream::start().await;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let scratch = tempfile::tempdir().unwrap();
    let ca = TestCa::new(scratch.path());
    let key = TestKey::new();
    let read = |p: &Path| std::fs::read(p).unwrap();
    let mut tls = Projected::new(
        &r.join("tls"),
        &[
            ("tls.crt", read(&ca.cert_file)),
            ("tls.key", read(&ca.key_file)),
        ],
    );
    Projected::new(
        &r.join("keys"),
        &[("signing.pem", key.pem.clone().into_bytes())],
    );
    let mut revocations = Projected::new(
        &r.join("revocations"),
        &[("revocations.yaml", b"tokens: []\n".to_vec())],
    );
    std::fs::create_dir(r.join("state")).unwrap();
    let routes = default_routes(up.addr);
    let mut config = Projected::new(&r.join("config"), &[("valet.yaml", pod_config(r, &routes))]);

    let (child, addr, metrics) = spawn(&config.path("valet.yaml"), Stdio::null()).await;
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    let client = || Client::new(addr, ca.client_config(Proto::H1.alpn()), Proto::H1);
    let token = sign(&key, &claims("alice", "read"));
    let other = sign(&key, &claims("bob", "read"));
    let status = |path: &'static str, t: Option<String>| {
        let c = client();
        async move { c.get(path, t.as_deref()).await.status.as_u16() }
    };
    assert_eq!(status("/api/x", Some(token.clone())).await, 200);
    let reloads = |kind: &'static str| async move {
        metric_value(
            &client::plain_get(metrics, "/metrics").await.1,
            &format!("valet_reloads_total{{kind=\"{kind}\",result=\"success\"}}"),
        )
    };

    // The operator's revocations.
    let exp = now() + 300;
    revocations.update(&[(
        "revocations.yaml",
        format!(
            "tokens:\n  - jti: {}\n    expires_at: {exp}\n",
            jti_of(&token)
        )
        .into_bytes(),
    )]);
    assert!(
        eventually(PICKUP, || async {
            status("/api/x", Some(token.clone())).await == 401
        })
        .await,
        "the revocation ConfigMap's update was not picked up"
    );
    assert_eq!(status("/api/x", Some(other.clone())).await, 200);

    // The config: a new route.
    assert_eq!(status("/k8s/x", None).await, 404);
    let before = reloads("config").await;
    let more = format!(
        "{routes}  - name: added\n    match: {{ path_prefix: /k8s }}\n    upstream: \"http://{}\"\n    auth: {{ required: false }}\n",
        up.addr
    );
    config.update(&[("valet.yaml", pod_config(r, &more))]);
    assert!(
        eventually(PICKUP, || async { status("/k8s/x", None).await == 200 }).await,
        "the config ConfigMap's update was not picked up"
    );
    assert!(reloads("config").await > before);
    assert_eq!(
        status("/api/x", Some(token.clone())).await,
        401,
        "still revoked"
    );

    // The serving certificate (a Secret).
    let served = || {
        let c = client();
        async move {
            let s = c.tls_stream().await;
            s.get_ref().1.peer_certificates().unwrap()[0]
                .as_ref()
                .to_vec()
        }
    };
    let first = served().await;
    ca.issue_leaf("leaf-2");
    let new_der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(&ca.cert_file)
            .unwrap()
            .as_ref()
            .to_vec()
    };
    assert_ne!(first, new_der);
    tls.update(&[
        ("tls.crt", read(&ca.cert_file)),
        ("tls.key", read(&ca.key_file)),
    ]);
    assert!(
        eventually(PICKUP, || async { served().await == new_der }).await,
        "the certificate Secret's update was not picked up"
    );
    assert!(reloads("tls").await >= 1.0);
    // The old timestamped folders are gone: nothing was read from them.
    assert_eq!(
        std::fs::read_dir(r.join("config"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("..2026"))
            .count(),
        1
    );
}
