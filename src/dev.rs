//! `tokenhook dev`: generates a complete development setup (PKI, tokens, config, kubeconfigs) into a directory, reusing what exists.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::clock::Clock;
use crate::config::file::{FileConfig, VerifierConfig, render_commented};
use crate::kubeconfig::{Kubeconfig, Source};
use crate::mint::accounts::{AccountEntry, ObjectEntry};
use crate::mint::policy::Rule;
use crate::verify::static_file::HASH_PREFIX;

/// Name (CN) of the client certificate kube-apiserver presents.
pub const APISERVER_CN: &str = "kube-apiserver";
/// Name (CN) of the admin client certificate in `admin-kubeconfig.yaml`.
pub const ADMIN_CN: &str = "tokenhook-admin";

/// Why the dev setup could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A file could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed, or an existing CA could not be used.
    #[error("certificates in {dir}: {reason}")]
    Pki {
        /// The dev directory.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Every file of the dev setup.
#[derive(Debug, Clone)]
pub struct DevFiles {
    /// The directory.
    pub dir: PathBuf,
    /// `ca.crt`
    pub ca_crt: PathBuf,
    /// `ca.key`
    pub ca_key: PathBuf,
    /// `server.crt`
    pub server_crt: PathBuf,
    /// `server.key`
    pub server_key: PathBuf,
    /// `apiserver-client.crt`
    pub apiserver_crt: PathBuf,
    /// `apiserver-client.key`
    pub apiserver_key: PathBuf,
    /// `admin.crt`
    pub admin_crt: PathBuf,
    /// `admin.key`
    pub admin_key: PathBuf,
    /// `tokens.csv`
    pub tokens: PathBuf,
    /// `sa-signing.key`: signs minted service-account tokens.
    pub signing_key: PathBuf,
    /// `tokenhook.toml`
    pub config: PathBuf,
    /// `webhook-kubeconfig.yaml`
    pub webhook_kubeconfig: PathBuf,
    /// `admin-kubeconfig.yaml`
    pub admin_kubeconfig: PathBuf,
}

impl DevFiles {
    /// The file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        let f = |n: &str| dir.join(n);
        DevFiles {
            dir: dir.to_owned(),
            ca_crt: f("ca.crt"),
            ca_key: f("ca.key"),
            server_crt: f("server.crt"),
            server_key: f("server.key"),
            apiserver_crt: f("apiserver-client.crt"),
            apiserver_key: f("apiserver-client.key"),
            admin_crt: f("admin.crt"),
            admin_key: f("admin.key"),
            tokens: f("tokens.csv"),
            signing_key: f("sa-signing.key"),
            config: f("tokenhook.toml"),
            webhook_kubeconfig: f("webhook-kubeconfig.yaml"),
            admin_kubeconfig: f("admin-kubeconfig.yaml"),
        }
    }

    /// Every path with a one-line description, for the startup banner.
    pub fn listing(&self) -> Vec<(&'static str, &Path)> {
        vec![
            ("CA certificate", &self.ca_crt),
            ("serving certificate", &self.server_crt),
            ("kube-apiserver client certificate", &self.apiserver_crt),
            ("static tokens", &self.tokens),
            ("service-account signing key", &self.signing_key),
            ("configuration", &self.config),
            (
                "kube-apiserver webhook kubeconfig",
                &self.webhook_kubeconfig,
            ),
            ("kubectl admin kubeconfig", &self.admin_kubeconfig),
        ]
    }
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DevError + 'a {
    move |source| DevError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to a new file (never replacing one), `0600` when `private`.
fn create(path: &Path, contents: &[u8], private: bool) -> Result<(), DevError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io_err("creating", path))?;
    f.write_all(contents).map_err(io_err("writing", path))
}

fn random_token() -> Result<String, DevError> {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| DevError::Pki {
        dir: PathBuf::new(),
        reason: "no system randomness".into(),
    })?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// Creates whatever is missing in `dir` except the kubeconfigs (they need the bound
/// address: see [`write_kubeconfigs`]). Returns the files and which ones were created now.
///
/// # Errors
/// Unwritable directory, or a CA key that is missing while certificates must be issued.
pub fn prepare(dir: &Path, listen: &str) -> Result<(DevFiles, Vec<PathBuf>), DevError> {
    std::fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
    let files = DevFiles::in_dir(dir);
    let mut created = Vec::new();
    let pki = |reason: String| DevError::Pki {
        dir: dir.to_owned(),
        reason,
    };

    let leaves: [(&Path, &Path, &str, Option<&str>, bool); 3] = [
        (
            &files.server_crt,
            &files.server_key,
            "tokenhook",
            None,
            true,
        ),
        (
            &files.apiserver_crt,
            &files.apiserver_key,
            APISERVER_CN,
            None,
            false,
        ),
        (
            &files.admin_crt,
            &files.admin_key,
            ADMIN_CN,
            Some("system:masters"),
            false,
        ),
    ];
    let need_leaf = leaves.iter().any(|(c, k, ..)| !c.exists() || !k.exists());
    let now = OffsetDateTime::from(Clock::System.system_time());

    if !files.ca_crt.exists() || (need_leaf && !files.ca_key.exists()) {
        if files.ca_crt.exists() {
            return Err(pki(format!(
                "{} exists but {} does not, so no new certificate can be issued; remove ca.crt to start a new CA",
                files.ca_crt.display(),
                files.ca_key.display()
            )));
        }
        let key = KeyPair::generate().map_err(|e| pki(e.to_string()))?;
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, "tokenhook dev CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = now - Duration::days(1);
        p.not_after = now + Duration::days(3650);
        let cert = p.self_signed(&key).map_err(|e| pki(e.to_string()))?;
        create(&files.ca_key, key.serialize_pem().as_bytes(), true)?;
        create(&files.ca_crt, cert.pem().as_bytes(), false)?;
        created.extend([files.ca_crt.clone(), files.ca_key.clone()]);
    }

    if need_leaf {
        let ca_pem =
            std::fs::read_to_string(&files.ca_crt).map_err(io_err("reading", &files.ca_crt))?;
        let ca_key_pem =
            std::fs::read_to_string(&files.ca_key).map_err(io_err("reading", &files.ca_key))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| pki(format!("ca.key: {e}")))?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| pki(format!("ca.crt: {e}")))?;
        for (crt, key_path, cn, org, server) in leaves {
            if crt.exists() && key_path.exists() {
                continue;
            }
            let sans: Vec<String> = if server {
                vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
            } else {
                vec![]
            };
            let mut p = CertificateParams::new(sans).map_err(|e| pki(e.to_string()))?;
            p.distinguished_name.push(DnType::CommonName, cn);
            if let Some(o) = org {
                p.distinguished_name.push(DnType::OrganizationName, o);
            }
            p.extended_key_usages = vec![if server {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.not_before = now - Duration::days(1);
            p.not_after = now + Duration::days(825);
            let key = KeyPair::generate().map_err(|e| pki(e.to_string()))?;
            let cert = p.signed_by(&key, &issuer).map_err(|e| pki(e.to_string()))?;
            // Replace both halves together: a lone survivor would not match the new one.
            let _ = std::fs::remove_file(crt);
            let _ = std::fs::remove_file(key_path);
            create(key_path, key.serialize_pem().as_bytes(), true)?;
            create(crt, cert.pem().as_bytes(), false)?;
            created.extend([crt.to_owned(), key_path.to_owned()]);
        }
    }

    if !files.tokens.exists() {
        let text = format!(
            "# tokenhook dev tokens, kube --token-auth-file format plus two optional columns:\n\
             # token,user,uid,\"group1,group2\",\"audience1,audience2\",\"extra-key=value,...\"\n\
             # A token may be stored as its hash instead: run `tokenhook hash-token` and put the\n\
             # printed {HASH_PREFIX}... value in the first column.\n\
             {admin},admin,uid-admin,\"system:masters\"\n\
             {alice},alice,uid-alice,\"developers,viewers\",,\"example.com/team=platform\"\n\
             {bob},bob,uid-bob,viewers\n\
             {vault},vault-reader,uid-vault-reader,,vault\n",
            admin = random_token()?,
            alice = random_token()?,
            bob = random_token()?,
            vault = random_token()?,
        );
        create(&files.tokens, text.as_bytes(), true)?;
        created.push(files.tokens.clone());
    }

    if !files.signing_key.exists() {
        let pem = crate::mint::keys::generate_pem(crate::mint::keys::Alg::RS256)
            .map_err(|e| pki(format!("generating the signing key: {e}")))?;
        create(&files.signing_key, &pem, true)?;
        created.push(files.signing_key.clone());
    }

    if !files.config.exists() {
        let mut c = FileConfig::default();
        c.server.listen = listen.to_owned();
        c.server.cert_file = Some("server.crt".into());
        c.server.key_file = Some("server.key".into());
        c.callers.client_ca_file = Some("ca.crt".into());
        c.callers.allowed_names = vec![APISERVER_CN.into(), ADMIN_CN.into()];
        c.log.format = "text".into();
        c.verifiers = vec![
            VerifierConfig::Static {
                file: "tokens.csv".into(),
            },
            VerifierConfig::ServiceAccount {},
        ];
        c.mint.issuer = Some(format!("https://{listen}"));
        c.mint.signing_key_file = Some("sa-signing.key".into());
        c.mint.service_accounts = vec![AccountEntry {
            namespace: "default".into(),
            name: "default".into(),
            uid: None,
            pods: vec![ObjectEntry {
                name: "demo".into(),
                uid: None,
            }],
            secrets: vec![],
            nodes: vec![],
        }];
        c.mint.policy = vec![Rule {
            users: vec![ADMIN_CN.into()],
            groups: vec!["system:masters".into()],
            namespaces: vec!["*".into()],
            service_accounts: vec!["*".into()],
            audiences: vec!["*".into()],
            max_expiration_seconds: None,
        }];
        create(&files.config, render_commented(&c).as_bytes(), false)?;
        created.push(files.config.clone());
    }
    Ok((files, created))
}

/// A token from `tokens.csv` for the demo command (alice's if present), `None` if the file
/// holds only hashes.
pub fn demo_token(files: &DevFiles) -> Option<(String, String)> {
    let text = std::fs::read(&files.tokens).ok()?;
    let mut rows = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(text.as_slice());
    let plain: Vec<(String, String)> = rows
        .records()
        .filter_map(Result::ok)
        .filter_map(|r| Some((r.get(0)?.to_owned(), r.get(1)?.to_owned())))
        .filter(|(t, _)| !t.is_empty() && !t.starts_with(HASH_PREFIX))
        .collect();
    plain
        .iter()
        .find(|(_, u)| u == "alice")
        .or_else(|| plain.first())
        .cloned()
}

/// Host part of a URL for a bound address (`[::1]` for IPv6, `127.0.0.1` for unspecified).
pub fn url_host(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        SocketAddr::V6(a) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        a => a.to_string(),
    }
}

/// Writes the two kubeconfigs if missing, for a server at `addr` answering reviews at
/// `webhook_path`.
///
/// # Errors
/// Unreadable certificates or an unwritable directory.
pub fn write_kubeconfigs(
    files: &DevFiles,
    addr: SocketAddr,
    webhook_path: &str,
) -> Result<Vec<PathBuf>, DevError> {
    let mut created = Vec::new();
    let read = |p: &Path| std::fs::read(p).map_err(io_err("reading", p));
    let base = format!("https://{}", url_host(addr));
    if !files.webhook_kubeconfig.exists() {
        let k = Kubeconfig {
            cluster: "tokenhook".into(),
            server: format!("{base}{webhook_path}"),
            certificate_authority: Source::Data(read(&files.ca_crt)?),
            user: APISERVER_CN.into(),
            client_cert: Some((
                Source::Data(read(&files.apiserver_crt)?),
                Source::Data(read(&files.apiserver_key)?),
            )),
            token: None,
            context: "webhook".into(),
        };
        create(&files.webhook_kubeconfig, k.render().as_bytes(), true)?;
        created.push(files.webhook_kubeconfig.clone());
    }
    if !files.admin_kubeconfig.exists() {
        let k = Kubeconfig {
            cluster: "tokenhook".into(),
            server: base,
            certificate_authority: Source::Data(read(&files.ca_crt)?),
            user: "admin".into(),
            client_cert: Some((
                Source::Data(read(&files.admin_crt)?),
                Source::Data(read(&files.admin_key)?),
            )),
            token: None,
            context: "tokenhook".into(),
        };
        create(&files.admin_kubeconfig, k.render().as_bytes(), true)?;
        created.push(files.admin_kubeconfig.clone());
    }
    Ok(created)
}

/// A ready-to-paste `curl` that reviews `token` through the admin client certificate.
pub fn curl_command(files: &DevFiles, addr: SocketAddr, token: &str) -> String {
    let body = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    });
    format!(
        "curl --cacert {ca} --cert {crt} --key {key} -H 'Content-Type: application/json' -d '{body}' https://{host}/apis/authentication.k8s.io/v1/tokenreviews",
        ca = files.ca_crt.display(),
        crt = files.admin_crt.display(),
        key = files.admin_key.display(),
        host = url_host(addr),
    )
}
