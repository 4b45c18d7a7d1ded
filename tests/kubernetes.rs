//! valet as Kubernetes runs it (issue 20): files mounted from ConfigMaps and
//! Secrets, laid out as the kubelet lays them out, and updated as it
//! updates them: never a write to a file, but a new timestamped folder and
//! an atomic rename of the `..data` symlink that every file links through.

mod support;

use serde::Deserialize;
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

/// Every valet container in `deploy/kubernetes/`, its pod's files laid out
/// as the kubelet would mount them (ConfigMaps as they are; Secrets and
/// placeholders replaced by test material of the same kind; the mount
/// paths under a scratch folder), passes `valet check` in a pod's
/// environment. And the Redis there promises what valet checks, with the
/// ACL lines README documents.
#[test]
fn the_manifests_valet_configs_pass_valet_check() {
    use serde_yaml::Value;
    let docs = manifests();
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let named = |kind: &str, name: &str| -> Vec<(String, String)> {
        let d = docs
            .iter()
            .find(|d| s(&d["kind"]) == kind && s(&d["metadata"]["name"]) == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"));
        let data = if kind == "Secret" {
            &d["stringData"]
        } else {
            &d["data"]
        };
        data.as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (s(k), s(v)))
            .collect()
    };
    let scratch = tempfile::tempdir().unwrap();
    let ca = TestCa::new(scratch.path());
    let key = TestKey::new();
    // Test material of the kind a placeholder or a Secret stands for.
    let stand_in = |name: &str, value: &str| -> Vec<u8> {
        if !value.contains("REPLACE") {
            return value.as_bytes().to_vec();
        }
        match name {
            "tls.crt" => std::fs::read(&ca.cert_file).unwrap(),
            "tls.key" => std::fs::read(&ca.key_file).unwrap(),
            "signing.pem" => key.pem.clone().into_bytes(),
            n if n.ends_with(".pem") => key.public_pem().into_bytes(),
            "pepper" => b"c2VjcmV0LXBlcHBlci1vZi10aGlydHktdHdvLWJ5dGVzIQ==\n".to_vec(),
            _ => b"a-test-password\n".to_vec(),
        }
    };
    let mut checked = 0;
    for d in docs
        .iter()
        .filter(|d| matches!(s(&d["kind"]).as_str(), "Deployment" | "StatefulSet"))
    {
        let spec = &d["spec"]["template"]["spec"];
        let containers = spec["initContainers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .chain(spec["containers"].as_sequence().into_iter().flatten());
        for c in containers.filter(|c| s(&c["image"]).contains("/valet:")) {
            let root = scratch.path().join(format!("pod-{checked}"));
            let args: Vec<String> = c["args"].as_sequence().unwrap().iter().map(s).collect();
            assert_eq!(args[..2], ["serve", "--config"], "{args:?}");
            let mounts: Vec<(String, String)> = c["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|m| (s(&m["name"]), s(&m["mountPath"])))
                .collect();
            let under = |p: &str| {
                let mut t = p.to_string();
                for (_, at) in &mounts {
                    t = t.replace(&format!("{at}/"), &format!("{}{at}/", root.display()));
                }
                t
            };
            for (volume, at) in &mounts {
                let v = spec["volumes"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|v| s(&v["name"]) == *volume)
                    .unwrap();
                let target = PathBuf::from(format!("{}{at}", root.display()));
                let entries = if let Some(name) = v["configMap"]["name"].as_str() {
                    named("ConfigMap", name)
                } else if let Some(name) = v["secret"]["secretName"].as_str() {
                    named("Secret", name)
                } else {
                    // A data volume (a claim, an emptyDir): an empty folder.
                    std::fs::create_dir_all(&target).unwrap();
                    continue;
                };
                let files: Vec<(&str, Vec<u8>)> = entries
                    .iter()
                    .map(|(k, v)| {
                        let bytes = if k == "valet.yaml" {
                            under(v).into_bytes()
                        } else {
                            stand_in(k, v)
                        };
                        (k.as_str(), bytes)
                    })
                    .collect();
                Projected::new(&target, &files);
            }
            let config = under(&args[2]);
            let out = std::process::Command::new(VALET)
                .args(["check", "--config", &config])
                .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{} ({}): {}",
                s(&d["metadata"]["name"]),
                args[2],
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3, "the authority, the sidecar, the single pod");

    // Redis: the settings valet refuses to start without, and README's ACLs.
    let conf = &named("ConfigMap", "valet-redis-config")[0].1;
    for line in [
        "appendonly yes",
        "appendfsync always",
        "maxmemory-policy noeviction",
    ] {
        assert!(
            conf.lines().any(|l| l.trim() == line),
            "redis.conf lacks {line}"
        );
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let acl = &named("Secret", "valet-redis-acl")[0].1;
    for user in ["valet-authority", "valet-validator"] {
        let documented = readme
            .lines()
            .find(|l| l.trim().starts_with(&format!("ACL SETUSER {user} on >")))
            .unwrap();
        let rules = |l: &str| -> Vec<String> {
            l.split_whitespace()
                .filter(|w| !w.starts_with('>'))
                .skip_while(|w| *w != "on")
                .map(str::to_string)
                .collect()
        };
        let shipped = acl
            .lines()
            .find(|l| l.starts_with(&format!("user {user} ")))
            .unwrap();
        assert_eq!(rules(shipped), rules(documented), "{user}");
    }
}

/// The documents of every manifest.
fn manifests() -> Vec<serde_yaml::Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for d in serde_yaml::Deserializer::from_str(&text) {
            docs.push(serde_yaml::Value::deserialize(d).unwrap());
        }
    }
    docs
}

fn text(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// What a cluster would catch only at run time: a Secret the pod's user
/// cannot read (root's files, mode 0440, need the pod's fsGroup), a
/// Service or probe port no container declares (or one on an init
/// container, which Services resolve only from 1.32), a NetworkPolicy or
/// Service selecting no pod, a resource outside the namespace.
#[test]
fn the_manifests_hang_together() {
    let docs = manifests();
    let pods: Vec<(&serde_yaml::Value, &serde_yaml::Value)> = docs
        .iter()
        .filter(|d| matches!(text(&d["kind"]).as_str(), "Deployment" | "StatefulSet"))
        .map(|d| {
            (
                &d["spec"]["template"]["metadata"]["labels"],
                &d["spec"]["template"]["spec"],
            )
        })
        .collect();
    let selects = |selector: &serde_yaml::Value, labels: &serde_yaml::Value| {
        selector
            .as_mapping()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v))
    };
    for d in &docs {
        assert_eq!(
            text(&d["metadata"]["namespace"]),
            "valet",
            "{:?}",
            d["metadata"]["name"]
        );
    }
    for (labels, spec) in &pods {
        let fs_group = spec["securityContext"]["fsGroup"].as_u64();
        for v in spec["volumes"].as_sequence().into_iter().flatten() {
            if v["secret"].is_mapping() {
                let mode = v["secret"]["defaultMode"].as_u64().unwrap_or(0o644);
                let readable = mode & 0o004 != 0 || (mode & 0o040 != 0 && fs_group.is_some());
                assert!(
                    readable,
                    "{labels:?}: Secret volume {:?} unreadable to a non-root user",
                    v["name"]
                );
            }
        }
        let all = |key: &str| spec[key].as_sequence().into_iter().flatten();
        for c in all("initContainers").chain(all("containers")) {
            let ports: Vec<String> = c["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .flat_map(|p| [text(&p["name"]), text(&p["containerPort"])])
                .collect();
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                let port = &c[probe]["httpGet"]["port"];
                let port = if port.is_null() {
                    &c[probe]["tcpSocket"]["port"]
                } else {
                    port
                };
                if !port.is_null() {
                    assert!(
                        ports.contains(&text(port)),
                        "{probe} port {port:?} not declared"
                    );
                }
            }
        }
    }
    for d in docs.iter().filter(|d| text(&d["kind"]) == "Service") {
        let (_, spec) = pods
            .iter()
            .find(|(labels, _)| selects(&d["spec"]["selector"], labels))
            .unwrap_or_else(|| panic!("Service {:?} selects no pod", d["metadata"]["name"]));
        let regular: Vec<String> = spec["containers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_sequence().into_iter().flatten())
            .map(|p| text(&p["name"]))
            .collect();
        for p in d["spec"]["ports"].as_sequence().unwrap() {
            let target = &p["targetPort"];
            match target {
                serde_yaml::Value::Number(_) => {}
                // A named port must be a regular container's.
                _ => assert!(regular.contains(&text(target)), "targetPort {target:?}"),
            }
        }
    }
    for d in docs.iter().filter(|d| text(&d["kind"]) == "NetworkPolicy") {
        let selector = &d["spec"]["podSelector"]["matchLabels"];
        assert!(
            pods.iter().any(|(labels, _)| selects(selector, labels)),
            "NetworkPolicy {:?} selects no pod",
            d["metadata"]["name"]
        );
    }
}

/// The Redis the manifests ship, run by a real redis-server: its settings
/// are accepted and in force, and its ACL users can do what valet needs and
/// no more. (The harness needs a default user to ask the server anything;
/// the shipped file turns it off, which is checked as a line.)
#[test]
fn the_shipped_redis_settings_and_acl_work_on_a_real_redis() {
    let docs = manifests();
    let data = |kind: &str, name: &str, key: &str| {
        docs.iter()
            .find(|d| text(&d["kind"]) == kind && text(&d["metadata"]["name"]) == name)
            .map(|d| {
                text(
                    &d[if kind == "Secret" {
                        "stringData"
                    } else {
                        "data"
                    }][key],
                )
            })
            .unwrap()
    };
    let conf = data("ConfigMap", "valet-redis-config", "redis.conf");
    let acl = data("Secret", "valet-redis-acl", "users.acl");
    assert!(acl.lines().any(|l| l.trim() == "user default off"));
    let dir = tempfile::tempdir().unwrap();
    let acl_file = dir.path().join("users.acl");
    let harness = acl.replace("user default off", "user default on nopass ~* &* +@all");
    std::fs::write(&acl_file, harness).unwrap();
    let mut args: Vec<String> = Vec::new();
    for line in conf
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (k, v) = line.split_once(' ').unwrap();
        match k {
            "port" | "dir" => {}
            "aclfile" => args.extend(["--aclfile".into(), acl_file.display().to_string()]),
            _ => args.extend([format!("--{k}"), v.to_string()]),
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let redis = support::redis_server::RedisServer::start(&args);
    for (k, v) in [
        ("maxmemory-policy", "noeviction"),
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("maxmemory", "629145600"),
    ] {
        assert!(redis.cli(&["CONFIG", "GET", k]).contains(v), "{k}");
    }
    let password = |user: &str| {
        acl.lines()
            .find(|l| l.starts_with(&format!("user {user} ")))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix('>')))
            .unwrap()
            .to_string()
    };
    let (a, v) = (password("valet-authority"), password("valet-validator"));
    let authority = Some(("valet-authority", a.as_str()));
    let validator = Some(("valet-validator", v.as_str()));
    assert_eq!(
        redis
            .cli_as(authority, &["HSET", "valet:meta", "x", "1"])
            .trim(),
        "1"
    );
    assert_eq!(
        redis
            .cli_as(authority, &["PUBLISH", "valet:throttle", "m"])
            .trim(),
        "0"
    );
    assert!(redis
        .cli_as(authority, &["SET", "other:key", "1"])
        .contains("NOPERM"));
    assert!(redis.cli_as(authority, &["FLUSHALL"]).contains("NOPERM"));
    assert!(redis
        .cli_as(validator, &["HGET", "valet:meta", "x"])
        .contains('1'));
    assert!(redis
        .cli_as(validator, &["CONFIG", "GET", "maxmemory-policy"])
        .contains("noeviction"));
    assert!(redis
        .cli_as(validator, &["HSET", "valet:meta", "x", "2"])
        .contains("NOPERM"));
    assert!(redis
        .cli_as(validator, &["PUBLISH", "valet:throttle", "m"])
        .contains("NOPERM"));
    assert!(redis
        .cli_as(Some(("valet-validator", "guess")), &["PING"])
        .contains("WRONGPASS"));
}
