//! Test harness: a throwaway PKI, the real server bound on 127.0.0.1:0 from a real config file, and a real TLS HTTP client.

pub mod dev;
pub mod issuer;
pub mod k8s;
pub mod secrets;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokenhook::config::{self, Overrides};
use tokenhook::{Running, Server};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A CA that can issue leaf certificates.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    pub fn server(&self) -> Leaf {
        self.leaf(
            "tokenhook",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    pub fn client(&self, cn: &str) -> Leaf {
        self.leaf(cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, cn: &str, sans: &[&str], eku: ExtendedKeyUsagePurpose) -> Leaf {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Writes `contents` to `path` atomically (temp file + rename), as Kubernetes volume
/// updates are atomic.
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Options for [`TestServer::start`].
pub struct Opts {
    /// Extra TOML appended to the generated config (sections other than `[server]`,
    /// `[callers]` and the verifier).
    pub extra_toml: String,
    /// Require client certificates from the test CA, with these names allowed.
    pub client_names: Option<Vec<String>>,
    /// Caller tokens file contents.
    pub caller_tokens: Option<String>,
    /// Static token file contents.
    pub tokens: String,
    /// Set up minting (issuer, a fresh RS256 key, accounts, policy) and the
    /// `service_account` verifier.
    pub mint: bool,
    /// `server.reload_interval_ms` (default 50, so that reload tests are quick).
    pub reload_interval_ms: u64,
    /// More `[server]` keys.
    pub server_toml: String,
    /// `server.listen` (default `127.0.0.1:0`; a fixed address to restart on the same port).
    pub listen: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            extra_toml: String::new(),
            client_names: Some(vec!["kube-apiserver".into()]),
            caller_tokens: None,
            tokens: TOKENS.into(),
            mint: false,
            reload_interval_ms: 50,
            server_toml: String::new(),
            listen: "127.0.0.1:0".into(),
        }
    }
}

/// Issuer of the test mint setup.
pub const ISSUER: &str = "https://tokenhook.test";

/// The `[mint]` section of the test setup: accounts `ci/builder` (pods `job-1`, `job-2`,
/// secret `s1`, node `n1`) and `ci/other` (pod `elsewhere`); `alice` (group `developers`)
/// may mint in `ci` for audiences `vault*` up to an hour; `tokenhook-admin` may mint
/// anything.
pub const MINT_TOML: &str = r#"
[mint]
issuer = "https://tokenhook.test"
signing_key_file = "sa.key"
verify_key_files = ["old.pub"]
revocations_file = "revocations.txt"
max_expiration_seconds = 86400

[[mint.service_accounts]]
namespace = "ci"
name = "builder"
uid = "11111111-2222-3333-4444-555555555555"
pods = [{ name = "job-1", uid = "pod-uid-1" }, { name = "job-2" }]
secrets = [{ name = "s1", uid = "secret-uid-1" }]
nodes = [{ name = "n1", uid = "node-uid-1" }]

[[mint.service_accounts]]
namespace = "ci"
name = "other"
pods = [{ name = "elsewhere", uid = "pod-uid-9" }]

[[mint.policy]]
groups = ["developers"]
namespaces = ["ci"]
service_accounts = ["*"]
audiences = ["vault*", "https://tokenhook.test"]
max_expiration_seconds = 3600

[[mint.policy]]
users = ["tokenhook-admin"]
namespaces = ["*"]
service_accounts = ["*"]
audiences = ["*"]
"#;

/// The standard token file used by most tests.
pub const TOKENS: &str = "\
alice-token,alice,1001,\"developers,viewers\",,\"example.com/team=platform,example.com/team=infra\"
bob-token,bob,1002
vault-token,vault-reader,1003,,\"vault,consul\"
";

/// A running server with its files and a client that presents the caller certificate.
pub struct TestServer {
    /// Kept so the server lives as long as the test's handle on it.
    pub _running: Running,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub caller: Leaf,
    pub tokens_path: PathBuf,
    /// Checks the suite's observed text for leaked secrets when the server goes away.
    pub _leaks: LeakCheck,
}

/// Runs [`secrets::check`] on drop.
pub struct LeakCheck;

impl Drop for LeakCheck {
    fn drop(&mut self) {
        secrets::check();
    }
}

/// Registers the token column of a token CSV as secrets.
fn csv_secrets(csv: &str) {
    for line in csv.lines().filter(|l| !l.starts_with('#')) {
        let token = line.split(',').next().unwrap_or_default();
        if !token.starts_with("sha256:") {
            secrets::secret(token);
        }
    }
}

/// Registers the base64 body of a PEM private key as secrets.
pub fn key_secrets(pem: &str) {
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        secrets::secret(line);
    }
}

impl TestServer {
    pub async fn start(opts: Opts) -> TestServer {
        Self::start_with(tempfile::tempdir().unwrap(), Ca::new("test CA"), opts).await
    }

    /// Stops `probe` and starts a new server in its directory with its CA (so that files
    /// written there, and other servers signed by that CA, carry over).
    pub async fn start_in(probe: TestServer, opts: Opts) -> TestServer {
        let TestServer {
            _running, dir, ca, ..
        } = probe;
        _running.shutdown().await;
        Self::start_with(dir, ca, opts).await
    }

    /// Starts a server in `dir` with `ca` (after a [`Running::shutdown`], to start again there).
    pub async fn start_with(dir: tempfile::TempDir, ca: Ca, opts: Opts) -> TestServer {
        secrets::capture_logs();
        let (config_path, caller, tokens_path) = write_setup(dir.path(), &ca, &opts);
        let config = config::load(
            Some(&config_path),
            "TOKENHOOK_IT_UNUSED_",
            &Overrides::default(),
        )
        .unwrap();
        let running = Server::bind(config).await.unwrap();
        TestServer {
            addr: running.addr,
            _running: running,
            dir,
            ca,
            caller,
            tokens_path,
            _leaks: LeakCheck,
        }
    }

    /// A client trusting the test CA and presenting the caller certificate.
    pub fn client(&self) -> Client {
        Client::new(self.addr, &self.ca.pem, Some(&self.caller))
    }

    /// A client presenting no certificate.
    pub fn anonymous(&self) -> Client {
        Client::new(self.addr, &self.ca.pem, None)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A metric's value from `/metrics`: the sum over series carrying every `label="value"`
    /// of the comma-separated `selector`.
    pub async fn metric(&self, name: &str, selector: &str) -> f64 {
        let r = self.client().get("/metrics").await;
        assert_eq!(r.status, StatusCode::OK);
        r.text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| selector.split(',').all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Writes the test PKI, token file, keys and `tokenhook.toml` (listening on 127.0.0.1:0)
/// into `dir`; returns the config path, the caller's client certificate and the token file.
pub fn write_setup(dir: &Path, ca: &Ca, opts: &Opts) -> (PathBuf, Leaf, PathBuf) {
    let server = ca.server();
    let caller = ca.client("kube-apiserver");
    key_secrets(&server.key);
    key_secrets(&caller.key);
    csv_secrets(&opts.tokens);
    csv_secrets(opts.caller_tokens.as_deref().unwrap_or_default());
    let w = |name: &str, s: &str| {
        let p = dir.join(name);
        std::fs::write(&p, s).unwrap();
        p
    };
    w("ca.crt", &ca.pem);
    w("server.crt", &server.cert);
    w("server.key", &server.key);
    let tokens_path = w("tokens.csv", &opts.tokens);
    let mut callers = String::from("[callers]\n");
    if let Some(names) = &opts.client_names {
        callers.push_str("client_ca_file = \"ca.crt\"\n");
        callers.push_str(&format!(
            "allowed_names = [{}]\n",
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(t) = &opts.caller_tokens {
        w("callers.csv", t);
        callers.push_str("tokens_file = \"callers.csv\"\n");
    }
    let mut extra = opts.extra_toml.clone();
    let mut verifiers = "[[verifiers]]\ntype = \"static\"\nfile = \"tokens.csv\"\n".to_string();
    if opts.mint {
        let old = tokenhook::mint::keys::generate_pem(tokenhook::mint::keys::Alg::ES256).unwrap();
        let old = openssl::pkey::PKey::private_key_from_pem(&old).unwrap();
        let old_key = String::from_utf8(old.private_key_to_pem_pkcs8().unwrap()).unwrap();
        key_secrets(&old_key);
        w("old.key", &old_key);
        w(
            "old.pub",
            &String::from_utf8(old.public_key_to_pem().unwrap()).unwrap(),
        );
        let key = tokenhook::mint::keys::generate_pem(tokenhook::mint::keys::Alg::RS256).unwrap();
        let key = String::from_utf8(key).unwrap();
        key_secrets(&key);
        w("sa.key", &key);
        w("revocations.txt", "# nothing revoked\n");
        extra.push_str(MINT_TOML);
        verifiers.push_str("[[verifiers]]\ntype = \"service_account\"\n");
    }
    let reload = opts.reload_interval_ms;
    let server_extra = &opts.server_toml;
    let listen = &opts.listen;
    let toml = format!(
        "[server]\nlisten = \"{listen}\"\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\nreload_interval_ms = {reload}\nshutdown_grace_seconds = 5\n{server_extra}\n{callers}\n{extra}\n{verifiers}"
    );
    let config_path = w("tokenhook.toml", &toml);
    (config_path, caller, tokens_path)
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn warnings(&self) -> Vec<String> {
        self.headers
            .get_all("warning")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
}

/// A real TLS client (rustls, aws-lc-rs) speaking HTTP/1.1 or HTTP/2 through hyper.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    h2: bool,
}

impl Client {
    pub fn new(addr: SocketAddr, ca_pem: &str, cert: Option<&Leaf>) -> Client {
        Self::with_alpn(addr, ca_pem, cert, false)
    }

    pub fn with_alpn(addr: SocketAddr, ca_pem: &str, cert: Option<&Leaf>, h2: bool) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match cert {
            Some(l) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(l.cert.as_bytes())
                        .map(|c| c.unwrap())
                        .collect(),
                    PrivateKeyDer::from_pem_slice(l.key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = if h2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Client {
            addr,
            config: Arc::new(config),
            h2,
        }
    }

    pub fn http2(&self) -> Client {
        let mut c = (*self.config).clone();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Client {
            addr: self.addr,
            config: Arc::new(c),
            h2: true,
        }
    }

    /// Opens a TLS connection and returns the stream (for handshake-level assertions).
    pub async fn connect(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        TlsConnector::from(self.config.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// One request on a fresh connection.
    pub async fn send<B>(&self, req: Request<B>) -> std::io::Result<Resp>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(t) = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            secrets::secret(t);
        }
        let metrics = req.uri().path().starts_with("/metrics");
        let tls = self.connect().await?;
        let io = TokioIo::new(tls);
        let resp = if self.h2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            send.send_request(req)
                .await
                .map_err(std::io::Error::other)?
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            send.send_request(req)
                .await
                .map_err(std::io::Error::other)?
        };
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)?
            .to_bytes();
        // What the server says back is checked for leaks too: metrics and Status messages
        // never carry a secret; a minted token is one from now on.
        if metrics {
            secrets::observe(&String::from_utf8_lossy(&body));
        } else if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
            if v["kind"] == "Status" {
                secrets::observe(&String::from_utf8_lossy(&body));
            }
            if let Some(t) = v["status"]["token"].as_str() {
                secrets::late_secret(t);
            }
        }
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        self.try_request(method, path, headers, body).await.unwrap()
    }

    /// [`Client::request`], with transport failures returned instead of panicking.
    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> std::io::Result<Resp> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("https://localhost:{}{path}", self.addr.port()));
        if !self.h2 {
            b = b.header("host", format!("localhost:{}", self.addr.port()));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let body: Bytes = body.into();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
            if let Some(t) = v["spec"]["token"].as_str() {
                secrets::secret(t);
            }
        }
        self.send(b.body(Full::new(body)).unwrap()).await
    }

    /// A review left in flight: a new HTTP/1.1 connection carrying the request head
    /// (`Content-Length` of all of `body`, `Connection: close`) and the first `sent` bytes of
    /// `body`; the caller writes the rest.
    pub async fn partial_review(
        &self,
        body: &[u8],
        sent: usize,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        use tokio::io::AsyncWriteExt;
        let mut tls = self.connect().await.unwrap();
        let head = format!(
            "POST /apis/authentication.k8s.io/v1/tokenreviews HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&body[..sent]).await.unwrap();
        tls.flush().await.unwrap();
        tls
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Resp {
        self.request(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    /// Reviews `token` (v1, spec.audiences = `audiences`) at the v1 path.
    pub async fn review(&self, token: &str, audiences: &[&str]) -> Resp {
        self.post_json(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &review_body("authentication.k8s.io/v1", token, audiences),
        )
        .await
    }
}

pub fn review_body(api_version: &str, token: &str, audiences: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": api_version,
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences},
    })
}

/// Installs a Debian package when `bin` is not on the PATH (the tests run as root on the
/// project's machines), once per test process, so that `cargo test` on a fresh machine needs
/// nothing installed by hand.
pub fn ensure_debian_package(bin: &str, package: &str) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let found = |b: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found(bin) {
        return;
    }
    for args in [
        vec!["update", "-qq"],
        vec!["install", "-y", "-qq", "--no-install-recommends", package],
    ] {
        let out = std::process::Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap_or_else(|e| panic!("apt-get is needed to install {package}: {e}"));
        assert!(
            out.status.success(),
            "apt-get {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        found(bin),
        "{package} installed but {bin} is not on the PATH"
    );
}

/// Polls `f` until it returns true, up to `secs` seconds.
#[macro_export]
macro_rules! assert_eventually {
    ($secs:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs($secs);
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!($($msg)+);
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }};
}
