//! The `valet` command line: every subcommand, callable without spawning
//! the binary (`run(Cli::try_parse_from([...])?)`).

use crate::config::{self, LogFormat};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for a configuration error (EX_CONFIG-style, as in sysexits: 64 = usage/config).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "valet",
    version,
    about = "An OAuth sidecar gateway: TLS-terminating reverse proxy that validates bearer tokens"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file; prints every error with file, line and column.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Work with access tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage the authorization server's clients (never prints stored secrets).
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// The audit log of administrative changes (in the state store).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Work with the state store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Print an argon2id hash of a password read from standard input (one line),
    /// for `password_hash` / `secret_hash` in the config.
    HashPassword,
    /// Probe a health endpoint over plain HTTP; exit 0 on 200 (for container HEALTHCHECKs).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// After a Redis store lost its contents (restarted empty), let the
    /// authorities write again: what the store held is gone (validators keep
    /// the revocations they hold), and refresh tokens and assertions issued
    /// before now are refused. Run it after restoring a backup too (what was
    /// recorded since the backup is gone).
    Reseed {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit log's chain: every record's digest its own, each
    /// carrying the digest of the one before; prints the count and the
    /// last digest. Exit 1 when a record was edited, deleted or inserted.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        /// A record known from elsewhere (the stdout lines a log system
        /// kept), as SEQ:DIGEST: it must still be in the chain, so a chain
        /// rewritten or cut short after it is caught (repeatable).
        #[arg(long = "anchor")]
        anchors: Vec<String>,
    },
    /// Print the audit records (JSON lines), oldest first.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// The fields of a client the `add` and `update` commands set by flag.
#[derive(clap::Args)]
struct ClientFields {
    /// Grant types, e.g. client_credentials or password (repeatable).
    #[arg(long = "grant")]
    grants: Vec<String>,
    /// client_credentials: the service identity tokens are issued to.
    #[arg(long)]
    operator: Option<String>,
    /// Space-separated scopes the client may ask for.
    #[arg(long)]
    scope: Option<String>,
    /// Space-separated scopes granted when a request names none.
    #[arg(long)]
    default_scope: Option<String>,
    /// The tokens' audience (default: tokens.audiences[0]).
    #[arg(long)]
    audience: Option<String>,
    /// Access token lifetime, e.g. 15m (default 1h).
    #[arg(long)]
    access_token_ttl: Option<String>,
    /// Refresh token lifetime, e.g. 12h (default 24h).
    #[arg(long)]
    refresh_token_ttl: Option<String>,
    /// Password grant: also issue refresh tokens (true or false).
    #[arg(long)]
    refresh_tokens: Option<bool>,
    /// More fields, as YAML or JSON: the client's fields as in the config
    /// (the JWT and SAML bearer identity mapping, for one); the flags
    /// above win. For `update`, a merge patch: `null` resets a field.
    #[arg(long)]
    spec: Option<PathBuf>,
}

impl ClientFields {
    /// The fields as a JSON object (the spec file's, then the flags').
    fn to_json(&self) -> Result<serde_json::Value, String> {
        let mut v = match &self.spec {
            None => serde_json::Value::Object(Default::default()),
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
                let mut v: serde_json::Value =
                    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
                // Its relative paths are the spec file's folder's.
                if let Some(dir) = f.parent() {
                    absolute_spec_paths(&mut v, dir);
                }
                v
            }
        };
        let serde_json::Value::Object(m) = &mut v else {
            return Err("the spec is not a mapping of client fields".into());
        };
        let words = |s: &str| -> serde_json::Value {
            s.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
                .into()
        };
        if !self.grants.is_empty() {
            m.insert("grant_types".into(), self.grants.clone().into());
        }
        let mut set = |k: &str, x: Option<serde_json::Value>| {
            if let Some(x) = x {
                m.insert(k.into(), x);
            }
        };
        set("operator", self.operator.clone().map(Into::into));
        set("scopes", self.scope.as_deref().map(words));
        set("default_scopes", self.default_scope.as_deref().map(words));
        set("audience", self.audience.clone().map(Into::into));
        set(
            "access_token_ttl",
            self.access_token_ttl.clone().map(Into::into),
        );
        set(
            "refresh_token_ttl",
            self.refresh_token_ttl.clone().map(Into::into),
        );
        set("use_refresh_token", self.refresh_tokens.map(Into::into));
        Ok(v)
    }
}

/// The key files a spec names, made absolute from the spec's folder.
fn absolute_spec_paths(v: &mut serde_json::Value, dir: &std::path::Path) {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let fix = |p: &mut serde_json::Value| {
        if let Some(s) = p.as_str().filter(|s| std::path::Path::new(s).is_relative()) {
            *p = dir.join(s).display().to_string().into();
        }
    };
    if let Some(f) = v.pointer_mut("/saml2_bearer/idp_certificate_file") {
        fix(f);
    }
    if let Some(serde_json::Value::Array(issuers)) = v.pointer_mut("/jwt_bearer/issuers") {
        for i in issuers {
            for k in ["jwks_file", "public_key_file"] {
                if let Some(f) = i.get_mut(k) {
                    fix(f);
                }
            }
        }
    }
}

#[derive(Subcommand)]
enum ClientCommand {
    /// List registered clients.
    List {
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one client (never its secret or hash), as JSON.
    Show {
        #[arg(long, short)]
        config: PathBuf,
        id: String,
    },
    /// Register a client with a new generated secret (printed once).
    Add {
        #[arg(long, short)]
        config: PathBuf,
        /// The new client's id (default: a generated one).
        id: Option<String>,
        #[command(flatten)]
        fields: ClientFields,
        /// Also write the secret to this new file (mode 0600).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Write the id, the secret and valet's token, revocation and
        /// metadata URLs to this new file (JSON, mode 0600).
        #[arg(long)]
        credentials_file: Option<PathBuf>,
    },
    /// Change a client's fields; an update that narrows what it may do
    /// (grants, scopes, audience, operator, lifetimes, identity mapping)
    /// revokes every token issued to it so far.
    Update {
        #[arg(long, short)]
        config: PathBuf,
        id: String,
        #[command(flatten)]
        fields: ClientFields,
    },
    /// Delete a client and revoke every token issued to it; its id is
    /// never used again.
    Delete {
        #[arg(long, short)]
        config: PathBuf,
        id: String,
    },
    /// Give a client a new secret and revoke every token issued to it so far.
    RegenerateSecret {
        #[arg(long, short)]
        config: PathBuf,
        id: String,
        /// Also write the secret to this new file (mode 0600).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Write the id, the new secret and valet's URLs to this new file
        /// (JSON, mode 0600).
        #[arg(long)]
        credentials_file: Option<PathBuf>,
    },
    /// Revoke every token issued to a client so far.
    RevokeTokens {
        #[arg(long, short)]
        config: PathBuf,
        id: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a signed access token made with the configured signing key.
    Issue {
        #[arg(long, short)]
        config: PathBuf,
        /// The token's subject (`sub`).
        #[arg(long)]
        sub: String,
        /// Space-separated scopes, e.g. "read write".
        #[arg(long, default_value = "")]
        scope: String,
        /// The token's `client_id`.
        #[arg(long, default_value = "valet-cli")]
        client_id: String,
        /// Lifetime in seconds (default: tokens.access_token_ttl).
        #[arg(long)]
        ttl: Option<u64>,
        /// Print a JSON object with the token, its `jti` and lifetime.
        #[arg(long)]
        json: bool,
    },
}

/// Where each trusted issuer's keys come from, and where a discovered key
/// set may live (`valet check` says which rule applies).
fn issuer_notes(c: &crate::config::Config) -> Vec<String> {
    use crate::tokens::issuers::KeySource;
    c.tokens
        .issuers
        .iter()
        .filter_map(|i| match &i.keys {
            KeySource::Remote(r) if r.jwks_uri.is_some() => Some(format!(
                "issuer `{}`: keys from the configured jwks_uri {}",
                i.name,
                r.jwks_uri.as_deref().unwrap_or("")
            )),
            KeySource::Remote(r) => {
                let hosts: Vec<String> = r.jwks_hosts.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                let rule = if hosts.len() <= 1 {
                    "the issuer's own host"
                } else {
                    "the issuer's own host or jwks_hosts"
                };
                Some(format!(
                    "issuer `{}`: keys by discovery; the discovered jwks_uri must be on {rule} ({})",
                    i.name,
                    hosts.join(", ")
                ))
            }
            KeySource::Files(_) => None,
        })
        .collect()
}

/// Loads and validates; writes nothing (`valet check`, and `serve`, whose
/// start writes what `generate_if_missing` asks for).
fn load(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    config::load(path).map_err(|errors| config_failed(path, &errors))
}

/// Loads for a command that uses the keys and pepper: creates them first
/// if `generate_if_missing` asks for it.
fn load_for_use(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    config::load_for_use(path).map_err(|errors| config_failed(path, &errors))
}

fn config_failed(path: &std::path::Path, errors: &config::ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    eprintln!("{} error(s) in {}", errors.0.len(), path.display());
    ExitCode::from(EXIT_CONFIG)
}

fn init_tracing(c: &config::LoggingConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&c.level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match c.format {
        LogFormat::Json => b.json().init(),
        LogFormat::Human => b.init(),
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Client { command } => client_command(command),
        Command::Audit { command } => audit_command(command),
        Command::Store {
            command: StoreCommand::Reseed { config },
        } => reseed(&config),
        Command::HashPassword => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err()
                || line.trim_end_matches(['\r', '\n']).is_empty()
            {
                eprintln!("error: write the password on standard input");
                return ExitCode::FAILURE;
            }
            println!(
                "{}",
                crate::credentials::argon2id_hash(line.trim_end_matches(['\r', '\n']))
            );
            ExitCode::SUCCESS
        }
        Command::Check { config } => match load(&config).and_then(|c| {
            crate::app::managed_clients::check(&config, c)
                .map_err(|errors| config_failed(&config, &errors))
        }) {
            Ok(c)
                if std::env::var_os(crate::app::KUBERNETES_ENV).is_some()
                    && c.store_redis.is_none()
                    && !c.store_single_replica =>
            {
                eprintln!(
                    "{}: under Kubernetes ({} is set) the embedded store is refused unless store.single_replica: true (each pod would keep revocations of its own): use store.redis",
                    config.display(),
                    crate::app::KUBERNETES_ENV
                );
                ExitCode::FAILURE
            }
            Ok(c) => {
                for w in c.authorization_server.iter().flat_map(|a| &a.warnings) {
                    eprintln!("warning: {w}");
                }
                for note in issuer_notes(&c) {
                    eprintln!("note: {note}");
                }
                for f in &c.new_files {
                    eprintln!(
                        "note: `valet serve` would create the {} {} (generate_if_missing)",
                        f.what,
                        f.path.display()
                    );
                }
                println!(
                    "{}: OK ({} listener(s), {} route(s))",
                    config.display(),
                    c.listeners.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Token {
            command:
                TokenCommand::Issue {
                    config,
                    sub,
                    scope,
                    client_id,
                    ttl,
                    json,
                },
        } => {
            let c = match load_for_use(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let req = crate::tokens::issue::TokenRequest {
                subject: &sub,
                client_id: &client_id,
                scope: &scope,
                ttl: ttl.map(Duration::from_secs),
                ..Default::default()
            };
            match crate::tokens::issue::mint(&c.tokens, &req, crate::revocation::now()) {
                Ok(m) if json => {
                    let out = serde_json::json!({
                        "access_token": m.token,
                        "token_type": "Bearer",
                        "expires_in": m.expires_in,
                        "jti": m.jti,
                    });
                    println!("{out}");
                    ExitCode::SUCCESS
                }
                Ok(m) => {
                    println!("{}", m.token);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Healthcheck { url } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(probe(&url)) {
                Ok(200) => ExitCode::SUCCESS,
                Ok(status) => {
                    eprintln!("{url}: HTTP {status}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("{url}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { config } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_tracing(&c.logging);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(crate::server::run(c)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// GET `url` (plain http) and return the status code, within 5 seconds.
async fn probe(url: &str) -> Result<u16, Box<dyn std::error::Error>> {
    let req = http::Request::get(url).body(Default::default())?;
    let limits = crate::outbound::Limits {
        tls: None,
        timeout: Duration::from_secs(5),
        max_answer: 64 * 1024,
    };
    Ok(crate::outbound::send(req, &limits).await?.status().as_u16())
}

fn reseed(path: &std::path::Path) -> ExitCode {
    let c = match load_for_use(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(r) = &c.store_redis else {
        eprintln!("error: {} uses the embedded store (a file): restore it from a backup, or delete it to start anew; there is nothing to reseed", path.display());
        return ExitCode::from(64);
    };
    let store = match crate::store::redis::RedisStore::open(r, true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match store.reseed() {
        Ok(_) => {
            let who = crate::app::audit::cli_actor();
            if let Err(e) = crate::app::audit::record(
                &store,
                &who,
                "store.reseed",
                None,
                serde_json::Value::Null,
            ) {
                eprintln!("warning: the store was reseeded, but its audit record could not be written: {e}");
            }
            println!("reseeded: authorities write to the store again.");
            println!("What the store held before is gone: its revocations (validators still hold theirs in memory until they restart), refresh-token rotations and single-use assertion ids. Refresh tokens and assertions issued before now are refused; users sign in again.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the credentials file of a new secret, if one was asked for.
fn write_credentials(c: &config::Config, id: &str, secret: &str, file: &Option<PathBuf>) {
    if let Some(f) = file {
        let doc = crate::oauth2::manage::credentials(c, id, secret);
        if let Err(e) = crate::oauth2::manage::write_credentials_file(f, &doc) {
            eprintln!("warning: cannot write {}: {e}", f.display());
        }
    }
}

fn audit_command(cmd: AuditCommand) -> ExitCode {
    let (AuditCommand::Verify { config, .. } | AuditCommand::List { config }) = &cmd;
    let c = match load_for_use(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Read only: verifying never writes (a validator may run it too).
    let store = match crate::app::open_store(&c, false) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cmd {
        AuditCommand::List { .. } => {
            let mut after = 0;
            loop {
                match store.audit(after, 1024) {
                    Ok(b) if b.is_empty() => return ExitCode::SUCCESS,
                    Ok(b) => {
                        for (seq, line) in b {
                            println!("{line}");
                            after = seq;
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
        AuditCommand::Verify { anchors, .. } => {
            let mut parsed = Vec::new();
            for a in &anchors {
                match a
                    .split_once(':')
                    .and_then(|(n, d)| Some((n.parse().ok()?, d.to_string())))
                {
                    Some(x) => parsed.push(x),
                    None => {
                        eprintln!("error: --anchor {a}: write it as SEQ:DIGEST");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                }
            }
            match crate::app::audit::verify(store.as_ref(), &parsed) {
                Ok(v) => {
                    println!(
                        "ok: {} records, the chain holds; last digest {}",
                        v.records, v.head
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("the audit log does not verify: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn client_command(cmd: ClientCommand) -> ExitCode {
    use crate::oauth2::manage;
    let path = match &cmd {
        ClientCommand::List { config, .. }
        | ClientCommand::Show { config, .. }
        | ClientCommand::Add { config, .. }
        | ClientCommand::Update { config, .. }
        | ClientCommand::Delete { config, .. }
        | ClientCommand::RegenerateSecret { config, .. }
        | ClientCommand::RevokeTokens { config, .. } => config.clone(),
    };
    let c = match load_for_use(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    };
    let print_secret = |id: &str, secret: &str, file: &Option<PathBuf>| -> ExitCode {
        if let Some(f) = file {
            if let Err(e) = manage::write_secret_file(f, secret) {
                eprintln!("warning: cannot write {}: {e}", f.display());
            }
        }
        println!("client_id: {id}");
        println!("client_secret: {secret}");
        eprintln!("Store this secret now: valet keeps only its hash and cannot show it again.");
        ExitCode::SUCCESS
    };
    if c.role == crate::config::Role::Validator {
        // A validator writes nothing: client management is the authority's.
        eprintln!(
            "error: {} is a validator's config (role: validator); manage clients with the authority's config",
            c.path.display()
        );
        return ExitCode::from(64);
    }
    // Managed clients live in the state store: open it, import the clients
    // file of earlier versions once, and see the config with them.
    let r = match crate::app::open_store(&c, true)
        .and_then(|s| crate::revocation::Revocations::on_store(&c.revocation_file, s, true))
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let store = r.store().as_ref();
    let loaded = crate::app::managed_clients::import_clients_file(&c, store)
        .and_then(|()| crate::app::managed_clients::load(&c.path, store, &c.store_path));
    let c = match loaded {
        Ok((c, _)) => c,
        Err(errors) => return config_failed(&path, &errors),
    };
    let who = crate::app::audit::cli_actor();
    match cmd {
        ClientCommand::List { json, .. } => match manage::list(&c) {
            Ok(list) if json => {
                println!("{}", serde_json::to_string_pretty(&list).expect("json"));
                ExitCode::SUCCESS
            }
            Ok(list) => {
                println!(
                    "{:<24} {:<12} {:<32} {:<20} scopes",
                    "client_id", "source", "grants", "operator"
                );
                for i in list {
                    println!(
                        "{:<24} {:<12} {:<32} {:<20} {}",
                        i.client_id,
                        i.source,
                        i.grant_types.join(","),
                        i.operator.as_deref().unwrap_or("-"),
                        i.scopes.join(" ")
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        ClientCommand::Show { id, .. } => match manage::show(&c, &id) {
            Ok(info) => {
                println!("{}", serde_json::to_string_pretty(&info).expect("json"));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        ClientCommand::Add {
            id,
            fields,
            secret_file,
            credentials_file,
            ..
        } => {
            let mut spec = match fields.to_json() {
                Ok(v) => v,
                Err(e) => return fail(&e),
            };
            if let Some(id) = id {
                spec["client_id"] = id.into();
            }
            match manage::client_from_spec(spec).and_then(|raw| manage::add(&c, store, raw, &who)) {
                Ok(added) => {
                    if let Some(e) = &added.audit_error {
                        eprintln!("warning: {e}");
                    }
                    write_credentials(&c, &added.client_id, &added.secret, &credentials_file);
                    print_secret(&added.client_id, &added.secret, &secret_file)
                }
                Err(e) => fail(&e),
            }
        }
        ClientCommand::Update { id, fields, .. } => {
            let patch = match fields.to_json() {
                Ok(v) => v,
                Err(e) => return fail(&e),
            };
            if patch.as_object().is_some_and(|m| m.is_empty()) {
                return fail(&"nothing to change: give the fields to change as flags or --spec");
            }
            // The running gateway follows the store before it honours any
            // client, and so sees the new record before the cut-off.
            match manage::update(&c, &r, &id, &patch, &who, || true) {
                Ok(u) => {
                    if u.tokens_revoked {
                        eprintln!(
                            "The update narrows what {id} may do ({}): every token issued to it so far is revoked.",
                            u.narrowed.join(", ")
                        );
                    }
                    println!("{}", serde_json::to_string_pretty(&u.client).expect("json"));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        ClientCommand::Delete { id, .. } => match manage::delete(&c, &r, &id, &who, || true) {
            Ok(_) => {
                println!("deleted {id}: every token issued to it is revoked, and the id is never used again");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        ClientCommand::RegenerateSecret {
            id,
            secret_file,
            credentials_file,
            ..
        } => {
            // The running gateway follows the store before it honours any
            // secret, and so sees the new one before the cut-off.
            match manage::regenerate_secret(&c, &r, &id, &who, || true) {
                Ok(r) => {
                    if let Some(e) = &r.audit_error {
                        eprintln!("warning: {e}");
                    }
                    eprintln!("Every token issued to {id} so far is revoked.");
                    write_credentials(&c, &id, &r.secret, &credentials_file);
                    print_secret(&id, &r.secret, &secret_file)
                }
                Err(e) => fail(&e),
            }
        }
        ClientCommand::RevokeTokens { id, .. } => match manage::revoke_tokens(&c, &r, &id, &who) {
            Ok(()) => {
                println!("every token issued to {id} so far is revoked");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
    }
}
