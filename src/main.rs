//! The `valet` command line: a thin layer over the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use valet::config::{self, LogFormat};

/// Exit code for a configuration error (EX_CONFIG-style, as in sysexits: 64 = usage/config).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "valet",
    version,
    about = "An OAuth sidecar gateway: TLS-terminating reverse proxy that validates bearer tokens"
)]
struct Cli {
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

fn load(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{} error(s) in {}", errors.0.len(), path.display());
        ExitCode::from(EXIT_CONFIG)
    })
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
                valet::oauth2::registry::argon2id_hash(line.trim_end_matches(['\r', '\n']))
            );
            ExitCode::SUCCESS
        }
        Command::Check { config } => match load(&config) {
            Ok(c) => {
                for w in c.authorization_server.iter().flat_map(|a| &a.warnings) {
                    eprintln!("warning: {w}");
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
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let req = valet::tokens::issue::TokenRequest {
                subject: &sub,
                client_id: &client_id,
                scope: &scope,
                ttl: ttl.map(Duration::from_secs),
                ..Default::default()
            };
            match valet::tokens::issue::mint(&c.tokens, &req, valet::revocation::now()) {
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
            match rt.block_on(valet::server::run(c)) {
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
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;
    let uri: http::Uri = url.parse()?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs can be probed".into());
    }
    let authority = uri.authority().ok_or("the URL needs a host")?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((authority.host(), port)).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(uri.path())
            .header(http::header::HOST, authority.as_str())
            .body(Empty::<bytes::Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        Ok::<_, Box<dyn std::error::Error>>(resp.status().as_u16())
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await?
}
