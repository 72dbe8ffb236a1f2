//! The `tokenhook` command: parse flags, load config (exit 64 if invalid), bind, serve until a signal, drain.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokenhook::config::{self, ConfigError, Overrides};
use tokenhook::kubeconfig::{Kubeconfig, Source};
use tokenhook::{Running, Server, dev};

/// Exit code for configuration errors (sysexits `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "tokenhook",
    version,
    about = "Kubernetes webhook token authenticator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a configuration file (flags override it).
    Serve {
        /// TOML configuration file.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Override server.listen.
        #[arg(long)]
        listen: Option<String>,
        /// Override log.level (a tracing filter).
        #[arg(long)]
        log_level: Option<String>,
        /// Override log.format (json or text).
        #[arg(long)]
        log_format: Option<String>,
        /// A kube-apiserver AuthenticationConfiguration file (YAML or JSON) whose `jwt`
        /// authenticators join the chain; reloaded when it changes.
        #[arg(long)]
        authentication_config: Option<PathBuf>,
    },
    /// Generate a development setup into DIR (reusing what exists) and serve it.
    Dev {
        /// Directory for certificates, tokens, config and kubeconfigs.
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
        /// Listen address (default 127.0.0.1:8443, or what DIR/tokenhook.toml says).
        #[arg(long)]
        listen: Option<String>,
        /// A kube-apiserver AuthenticationConfiguration file whose `jwt` authenticators join
        /// the chain; reloaded when it changes.
        #[arg(long)]
        authentication_config: Option<PathBuf>,
    },
    /// Print a kubeconfig for kube-apiserver's --authentication-token-webhook-config-file.
    Kubeconfig {
        /// Full URL of the review endpoint, e.g. https://tokenhook.auth.svc:8443/authenticate.
        #[arg(long)]
        server: String,
        /// CA (PEM) that signed tokenhook's serving certificate.
        #[arg(long)]
        certificate_authority: PathBuf,
        /// Client certificate (PEM) kube-apiserver presents.
        #[arg(long, requires = "client_key")]
        client_certificate: Option<PathBuf>,
        /// Key (PEM) of --client-certificate.
        #[arg(long, requires = "client_certificate")]
        client_key: Option<PathBuf>,
        /// File holding a bearer token kube-apiserver sends.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Embed certificates and keys as *-data instead of referencing the files.
        #[arg(long)]
        embed_certs: bool,
        /// Name of the user entry.
        #[arg(long, default_value = "kube-apiserver")]
        user: String,
    },
    /// Read a token on stdin, print the value to store in a token file instead of it.
    HashToken,
    /// Service-account signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new private key (PKCS#8 PEM, mode 0600) for [mint] signing_key_file.
    Generate {
        /// RS256 (default), ES256, ES384, ES512 or EdDSA.
        #[arg(long, default_value = "RS256")]
        algorithm: String,
        /// File to create; it must not exist.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::HashToken => hash_token(),
        Command::Keys {
            command: KeysCommand::Generate { algorithm, out },
        } => generate_key(&algorithm, &out),
        Command::Kubeconfig {
            server,
            certificate_authority,
            client_certificate,
            client_key,
            token_file,
            embed_certs,
            user,
        } => kubeconfig(
            server,
            certificate_authority,
            client_certificate.zip(client_key),
            token_file,
            embed_certs,
            user,
        ),
        Command::Serve {
            config,
            listen,
            log_level,
            log_format,
            authentication_config,
        } => {
            let o = Overrides {
                listen,
                log_level,
                log_format,
                authentication_config,
            };
            run(Some(config), o, None)
        }
        Command::Dev {
            dir,
            listen,
            authentication_config,
        } => match dev::prepare(&dir, listen.as_deref().unwrap_or("127.0.0.1:8443")) {
            Ok((files, created)) => {
                for p in created {
                    println!("created {}", p.display());
                }
                let o = Overrides {
                    listen,
                    authentication_config,
                    ..Overrides::default()
                };
                run(Some(files.config.clone()), o, Some(files))
            }
            Err(e) => Err(anyhow::Error::new(e)),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tokenhook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn hash_token() -> anyhow::Result<ExitCode> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the token from stdin")?;
    let token = input.strip_suffix('\n').unwrap_or(&input);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.is_empty() {
        anyhow::bail!("no token on stdin");
    }
    println!("{}", tokenhook::verify::static_file::hash_entry(token));
    Ok(ExitCode::SUCCESS)
}

fn generate_key(algorithm: &str, out: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use tokenhook::mint::keys::{Alg, KeySet, generate_pem};
    let alg = match algorithm {
        "RS256" => Alg::RS256,
        "ES256" => Alg::ES256,
        "ES384" => Alg::ES384,
        "ES512" => Alg::ES512,
        "EdDSA" => Alg::EdDSA,
        other => {
            anyhow::bail!("unknown --algorithm {other:?}: RS256, ES256, ES384, ES512 or EdDSA")
        }
    };
    let pem = generate_pem(alg).context("generating the key")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    f.write_all(&pem)
        .with_context(|| format!("writing {}", out.display()))?;
    let keys = KeySet::load(out, &[]).context("reading the new key back")?;
    println!(
        "wrote {} ({}, kid {})",
        out.display(),
        alg.as_str(),
        keys.signing.public.kid
    );
    Ok(ExitCode::SUCCESS)
}

fn kubeconfig(
    server: String,
    ca: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
    token_file: Option<PathBuf>,
    embed: bool,
    user: String,
) -> anyhow::Result<ExitCode> {
    let src = |p: &PathBuf| -> anyhow::Result<Source> {
        if embed {
            Ok(Source::Data(
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            ))
        } else {
            let abs =
                std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
            Ok(Source::Path(abs.to_string_lossy().into_owned()))
        }
    };
    if !server.starts_with("https://") {
        anyhow::bail!("--server must be an https:// URL: tokenhook serves TLS only");
    }
    let token = match token_file {
        Some(p) => Some(
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let client_cert = match &client {
        Some((c, k)) => Some((src(c)?, src(k)?)),
        None => None,
    };
    let k = Kubeconfig {
        cluster: "tokenhook".into(),
        server,
        certificate_authority: src(&ca)?,
        user,
        client_cert,
        token,
        context: "webhook".into(),
    };
    print!("{}", k.render());
    Ok(ExitCode::SUCCESS)
}

fn run(
    file: Option<PathBuf>,
    o: Overrides,
    dev_files: Option<dev::DevFiles>,
) -> anyhow::Result<ExitCode> {
    let config = match config::load(file.as_deref(), "TOKENHOOK_", &o) {
        Ok(c) => c,
        Err(e @ (ConfigError::Parse(_) | ConfigError::Invalid(_))) => {
            eprintln!("tokenhook: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    // Lives until `run` returns, after the runtime (declared later, dropped first): the last
    // lines, "stopped" among them, are flushed to stderr before the process exits.
    let _log_guard = tokenhook::logging::init(&config.log);
    // 8 MiB worker stacks (tokio's default is 2): configuration reloads compile CEL, whose
    // parser and evaluator recurse per nesting level; the address space is reserved, not used.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Handlers first: a signal that arrives while starting must not kill the process
        // with its default action (the dev banner tells scripts we are up).
        let signals = Signals::install()?;
        let webhook_path = config.webhook_path.clone();
        let running = match Server::bind(config).await {
            Ok(r) => r,
            Err(e) if e.is_config() => {
                eprintln!("tokenhook: {:#}", anyhow::Error::new(e));
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
            Err(e) => return Err(anyhow::Error::new(e)),
        };
        tracing::info!(addr = %running.addr, "serving TokenReviews over TLS");
        if let Some(files) = dev_files {
            for p in dev::write_kubeconfigs(&files, running.addr, &webhook_path)? {
                println!("created {}", p.display());
            }
            banner(&files, &running, &webhook_path);
        }
        serve_until_signal(running, signals).await;
        Ok(ExitCode::SUCCESS)
    })
}

fn banner(files: &dev::DevFiles, running: &Running, webhook_path: &str) {
    let host = dev::url_host(running.addr);
    println!("tokenhook dev: serving on https://{host}");
    println!("  review URL for kube-apiserver: https://{host}{webhook_path}");
    for (what, path) in files.listing() {
        println!("  {what:<36} {}", path.display());
    }
    println!(
        "  kube-apiserver flags: --authentication-token-webhook-config-file={} --authentication-token-webhook-version=v1",
        files.webhook_kubeconfig.display()
    );
    match dev::demo_token(files) {
        Some((token, user)) => {
            println!("Review {user}'s demo token:");
            println!("  {}", dev::curl_command(files, running.addr, &token));
        }
        None => println!("(tokens.csv holds no plain token to demonstrate with)"),
    }
}

/// SIGTERM, SIGINT and SIGHUP streams.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }
}

async fn serve_until_signal(running: Running, mut s: Signals) {
    loop {
        tokio::select! {
            _ = s.term.recv() => break,
            _ = s.int.recv() => break,
            _ = s.hup.recv() => {
                tracing::info!("SIGHUP: checking every watched file now");
                running.reload_now();
            }
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    tracing::info!("stopped");
}
