//! A real OAuth 2.0 authorization server for the tests: node-oidc-provider from the npm registry (`tests/it/peers/oidc-provider/`), installed once per target dir with `npm ci`, run with the machine's Node.js over HTTPS on 127.0.0.1; start, stop, restart, tokens and revocation.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{Ca, Client, key_secrets, secrets};

/// The peer's sources, checked in.
const SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/peers/oidc-provider");

/// The application client whose tokens are reviewed: client credentials, and introspection
/// answers carrying `sub`, `groups` and `username` besides `client_id` and `scope`.
pub const APP: &str = "app";
/// A second application client whose tokens carry no extra members (no `sub`).
pub const ROBOT: &str = "robot";
/// tokenhook's client, authenticating with `client_secret_basic`.
pub const BASIC: &str = "tokenhook";
/// tokenhook's client, authenticating with `client_secret_post`.
pub const POST: &str = "tokenhook-post";
/// tokenhook's client, authenticating with `private_key_jwt` (RFC 7523, RS256).
pub const JWT: &str = "tokenhook-jwt";
/// Scopes the application clients may ask for.
pub const SCOPES: &str = "kube:read kube:write";

/// Installs the peer's npm packages (once per process; the install is kept in the target dir
/// and redone only when `package-lock.json` changes, so later runs need no network) and
/// returns the folder that holds `node_modules` and the script.
fn install() -> PathBuf {
    static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut dir = DIR.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = dir.as_ref() {
        return d.clone();
    }
    super::ensure_debian_package("node", "nodejs");
    super::ensure_debian_package("npm", "npm");
    // oidc-provider 9 needs Node.js 20.19 or later (the machine image has 20; Debian
    // bookworm's own nodejs is 18, which is refused here with a clear message).
    let version = std::process::Command::new("node")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let parts: Vec<u32> = version
        .trim_start_matches('v')
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(
        parts.as_slice() >= [20, 19].as_slice(),
        "the oidc-provider peer needs Node.js 20.19 or later, found {version:?}"
    );
    let to = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peers/oidc-provider");
    std::fs::create_dir_all(&to).unwrap();
    let lock = std::fs::read_to_string(Path::new(SOURCES).join("package-lock.json")).unwrap();
    let marker = to.join("node_modules/.tokenhook-installed");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(lock.as_str()) {
        for f in ["package.json", "package-lock.json"] {
            std::fs::copy(Path::new(SOURCES).join(f), to.join(f)).unwrap();
        }
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&to)
            .output()
            .unwrap_or_else(|e| panic!("running npm: {e}"));
        assert!(
            out.status.success(),
            "npm ci in {} failed: {}",
            to.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&marker, &lock).unwrap();
    }
    // The script is copied next to its node_modules (ESM resolves packages from the script's
    // own folder), every run, so that edits to it take effect.
    std::fs::copy(
        Path::new(SOURCES).join("provider.mjs"),
        to.join("provider.mjs"),
    )
    .unwrap();
    *dir = Some(to.clone());
    to
}

/// A running provider (a `node` child process, killed when this drops).
pub struct OidcProvider {
    /// `https://127.0.0.1:PORT`, also the discovery document's `issuer`.
    pub issuer: String,
    pub port: u16,
    /// The CA that signed the provider's serving certificate.
    pub ca: Ca,
    /// Config, certificate, state (tokens survive a restart), logs, and the client secret
    /// and key files tokenhook reads.
    pub dir: tempfile::TempDir,
    /// Secret of [`BASIC`], [`POST`], [`APP`] and [`ROBOT`], by client id.
    secrets: Vec<(&'static str, String)>,
    child: Option<tokio::process::Child>,
}

/// Requests the provider received since it (re)started, by endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Stats {
    pub introspections: u64,
    pub revocations: u64,
    pub tokens: u64,
}

impl OidcProvider {
    /// Installs (first time only) and starts the provider with tokenhook's clients ([`BASIC`],
    /// [`POST`], [`JWT`]) and the application clients ([`APP`], [`ROBOT`]); access tokens
    /// live an hour.
    pub async fn start() -> OidcProvider {
        let root = install();
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("oidc-provider CA");
        let leaf = ca.server();
        key_secrets(&leaf.key);
        let w = |name: &str, s: &str| std::fs::write(dir.path().join(name), s).unwrap();
        w("ca.crt", &ca.pem);
        w("server.crt", &leaf.cert);
        w("server.key", &leaf.key);

        let secret = |name: &str| {
            let s = format!("{name}-{}", uuid::Uuid::new_v4().simple());
            secrets::secret(&s);
            s
        };
        let secrets = vec![
            (BASIC, secret(BASIC)),
            (POST, secret(POST)),
            (APP, secret(APP)),
            (ROBOT, secret(ROBOT)),
        ];
        for (id, s) in &secrets {
            w(&format!("{id}.secret"), s);
        }
        // private_key_jwt: tokenhook signs with the private key, the provider knows the JWK.
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let pkey = openssl::pkey::PKey::from_rsa(rsa.clone()).unwrap();
        let key_pem = String::from_utf8(pkey.private_key_to_pem_pkcs8().unwrap()).unwrap();
        key_secrets(&key_pem);
        w(&format!("{JWT}.key"), &key_pem);
        // The `kid` tokenhook puts in its assertions' header: kube's key id,
        // base64url(SHA-256(DER SubjectPublicKeyInfo)), computed here independently.
        let kid = URL_SAFE_NO_PAD.encode(openssl::sha::sha256(&pkey.public_key_to_der().unwrap()));
        let jwk = json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(rsa.n().to_vec()),
            "e": URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
        });
        w(
            &format!("{JWT}.jwks.json"),
            &json!({"keys": [jwk.clone()]}).to_string(),
        );

        let by_id = |id: &str| {
            secrets
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, s)| s.clone())
                .unwrap()
        };
        // Resource-server clients: no grants of their own, only authentication.
        let resource_server = |id: &str, method: &str| {
            json!({"client_id": id, "client_secret": by_id(id), "grant_types": [],
                   "response_types": [], "redirect_uris": [], "token_endpoint_auth_method": method})
        };
        let app = |id: &str| {
            json!({"client_id": id, "client_secret": by_id(id), "grant_types": ["client_credentials"],
                   "response_types": [], "redirect_uris": [], "scope": SCOPES,
                   "token_endpoint_auth_method": "client_secret_basic"})
        };
        let config = json!({
            "cert_file": dir.path().join("server.crt"),
            "key_file": dir.path().join("server.key"),
            "state_file": dir.path().join("state.json"),
            "port": 0,
            "access_token_ttl": 3600,
            "scopes": SCOPES.split(' ').collect::<Vec<_>>(),
            "clients": [
                resource_server(BASIC, "client_secret_basic"),
                resource_server(POST, "client_secret_post"),
                {"client_id": JWT, "grant_types": [], "response_types": [], "redirect_uris": [],
                 "token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [jwk]}},
                app(APP),
                app(ROBOT),
            ],
            "token_claims": {
                APP: {"sub": "robot-1", "username": "deployer", "groups": ["ci", "deployers"]},
            },
        });
        w("config.json", &config.to_string());

        let mut p = OidcProvider {
            issuer: String::new(),
            port: 0,
            ca,
            dir,
            secrets,
            child: None,
        };
        p.spawn(&root).await;
        p
    }

    /// Starts the node process on `self.port` (0 the first time) and waits for its line.
    async fn spawn(&mut self, root: &Path) {
        let config_path = self.dir.path().join("config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        config["port"] = json!(self.port);
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut child = tokio::process::Command::new("node")
            .arg(root.join("provider.mjs"))
            .arg(&config_path)
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting node: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .ok()
            .and_then(|l| l.ok().flatten())
            .unwrap_or_else(|| {
                panic!(
                    "oidc-provider did not start; its log:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                )
            });
        let hello: Value = serde_json::from_str(&line).unwrap();
        self.issuer = hello["issuer"].as_str().unwrap().to_owned();
        self.port = u16::try_from(hello["port"].as_u64().unwrap()).unwrap();
        self.child = Some(child);
    }

    /// The provider's stderr (notices and errors; never tokens).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("provider.log")
    }

    /// A file of the provider's folder: `ca.crt`, `tokenhook.secret`,
    /// `tokenhook-post.secret`, `tokenhook-jwt.key` (PKCS#8 PEM), `tokenhook-jwt.jwks.json`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The client secret of `client_id`.
    pub fn secret(&self, client_id: &str) -> &str {
        self.secrets
            .iter()
            .find(|(i, _)| *i == client_id)
            .map(|(_, s)| s.as_str())
            .unwrap()
    }

    /// Kills the provider (as a crash would: no goodbye to open connections).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// Starts it again on the same port, with the tokens it had issued.
    pub async fn restart(&mut self) {
        self.stop().await;
        let root = install();
        // The same port, so that tokenhook's configured URL reaches it again; `stop` waited
        // for the old process to exit, so the port is free.
        self.spawn(&root).await;
    }

    fn client(&self) -> Client {
        Client::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            &self.ca.pem,
            None,
        )
    }

    /// POSTs a form to `path`, authenticating as `client_id` with `client_secret_basic`.
    async fn post_form(&self, path: &str, client_id: &str, form: &[(&str, &str)]) -> super::Resp {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{client_id}:{}", self.secret(client_id)));
        secrets::secret(&basic);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.client()
            .request(
                Method::POST,
                path,
                &[
                    ("authorization", &format!("Basic {basic}")),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                body,
            )
            .await
    }

    /// A fresh opaque access token for the application client `client_id` ([`APP`] or
    /// [`ROBOT`]) with `scope` (space-separated, within [`SCOPES`]), through the real
    /// client-credentials grant. Registered with the leak detector.
    pub async fn token(&self, client_id: &str, scope: &str) -> String {
        let r = self
            .post_form(
                "/token",
                client_id,
                &[("grant_type", "client_credentials"), ("scope", scope)],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "token request: {}", r.text());
        let v = r.json();
        let token = v["access_token"].as_str().unwrap().to_owned();
        secrets::secret(&token);
        token
    }

    /// Revokes `token` (issued to `client_id`) at the real RFC 7009 endpoint.
    pub async fn revoke(&self, client_id: &str, token: &str) {
        let r = self
            .post_form(
                "/token/revocation",
                client_id,
                &[("token", token), ("token_type_hint", "access_token")],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "revocation: {}", r.text());
    }

    /// What RFC 7662 introspection says about `token`, asked as [`BASIC`] (the test's own
    /// look, independent of tokenhook; it counts in [`Stats::introspections`]).
    pub async fn introspect(&self, token: &str) -> Value {
        let r = self
            .post_form("/token/introspection", BASIC, &[("token", token)])
            .await;
        assert_eq!(r.status, StatusCode::OK, "introspection: {}", r.text());
        r.json()
    }

    /// Requests received since the provider (re)started.
    pub async fn stats(&self) -> Stats {
        let r = self.client().get("/peer/stats").await;
        assert_eq!(r.status, StatusCode::OK);
        serde_json::from_slice(&r.body).unwrap()
    }
}
