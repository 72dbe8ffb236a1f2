//! A real control plane for tests: etcd and kube-apiserver from `K8S_BIN_DIR` or `../shared/k8s/`, unpacked once, started on loopback, killed on drop; plus kubectl against it.
//!
//! Usage (blocking calls; from an async test run them through `spawn_blocking` or on a
//! multi-thread runtime, so that servers living on the test's runtime keep serving):
//!
//! ```ignore
//! let Some(bins) = k8s::binaries() else { return }; // loud skip, or a failure under CI=true
//! let api = k8s::ApiServer::start(&bins, &["--authentication-token-webhook-version=v1".into()]);
//! let out = api.kubectl(&["get", "ns"]);            // as admin (system:masters)
//! let who = api.kubectl_with_token("some-token", &["auth", "whoami", "-o", "json"]);
//! ```

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The service-account issuer the apiserver is started with; it sends it as the webhook's
/// `spec.audiences` (its API audiences default to the issuer).
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// How long a start may take on a loaded 2-core machine before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The unpacked binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub apiserver: PathBuf,
}

/// Where the provided binaries are: `K8S_BIN_DIR`, else `../shared/k8s/` beside the
/// repository (CI clones the repository next to `shared/`).
pub fn source_dir() -> PathBuf {
    match std::env::var_os("K8S_BIN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/k8s"),
    }
}

/// The binaries, unpacked once into the cargo target's temporary folder. `None` (after a loud
/// line on stderr) when they are absent; under `CI=true` absence fails the calling test.
pub fn binaries() -> Option<Binaries> {
    static CACHE: Mutex<Option<Result<Binaries, String>>> = Mutex::new(None);
    let mut g = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let found = g.get_or_insert_with(unpack).clone();
    drop(g);
    match found {
        Ok(b) => Some(b),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and the Kubernetes binaries are missing: {why}")
        }
        Err(why) => {
            // Straight to the process's stderr, once: the test harness captures eprintln!
            // of passing tests, and a skip must be seen.
            static LOUD: std::sync::Once = std::sync::Once::new();
            LOUD.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n!!!!!!!! SKIPPED: the kube-apiserver end-to-end tests: {why}\n!!!!!!!! set K8S_BIN_DIR to a folder with etcd[.xz] and kube-apiserver[.xz] (CI=true makes this a failure)\n"
                );
            });
            None
        }
    }
}

fn unpack() -> Result<Binaries, String> {
    let src = source_dir();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("k8s-bin");
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let one = |name: &str| -> Result<PathBuf, String> {
        let plain = src.join(name);
        if plain.is_file() {
            return Ok(plain);
        }
        let xz = src.join(format!("{name}.xz"));
        let meta = std::fs::metadata(&xz)
            .map_err(|e| format!("no {name} nor {name}.xz in {} ({e})", src.display()))?;
        // Keyed by the archive's size and mtime, so a new archive is unpacked again.
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let out = cache.join(format!("{name}-{}-{mtime}", meta.len()));
        if out.is_file() {
            return Ok(out);
        }
        // Unpack beside, then rename: concurrent test processes never run a partial file.
        let tmp = cache.join(format!("{name}.{}.tmp", std::process::id()));
        let file = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let status = Command::new("xz")
            .arg("-dc")
            .arg(&xz)
            .stdout(file)
            .status()
            .map_err(|e| format!("xz is needed to unpack {}: {e}", xz.display()))?;
        if !status.success() {
            return Err(format!("xz -dc {} failed: {status}", xz.display()));
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &out).map_err(|e| e.to_string())?;
        Ok(out)
    };
    Ok(Binaries {
        etcd: one("etcd")?,
        apiserver: one("kube-apiserver")?,
    })
}

/// A child process killed (and waited for) on drop; a watcher shell kills it too if the test
/// process dies first (process-wide fixtures in statics are never dropped).
pub struct Proc {
    child: Child,
    watcher: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr into `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let out = File::create(&log).unwrap();
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        let watcher = Command::new("sh")
            .args([
                "-c",
                "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; kill -9 \"$2\" 2>/dev/null",
                "watcher",
                &std::process::id().to_string(),
                &child.id().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        Proc {
            child,
            watcher,
            log,
        }
    }

    /// Whether it exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(mut w) = self.watcher.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes `path` once this test process has exited (process-wide fixtures are never
/// dropped, so their folders would otherwise stay behind).
pub fn remove_on_exit(path: &Path) {
    let _ = Command::new("sh")
        .args([
            "-c",
            "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; rm -rf \"$2\"",
            "remover",
            &std::process::id().to_string(),
        ])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// A free loopback port chosen by the kernel. kube-apiserver cannot take port 0, so the port is
/// released before the apiserver binds it: [`ApiServer::start`] retries with another one if it
/// was taken in between.
fn kernel_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// etcd on kernel-chosen loopback ports (read back from its log).
pub struct Etcd {
    pub url: String,
    /// Killed on drop.
    _proc: Proc,
}

impl Etcd {
    #[allow(dead_code)] // API for suites with no files to prepare (the registry tests)
    pub fn start(bins: &Binaries, dir: &Path) -> Etcd {
        let mut cmd = Command::new(&bins.etcd);
        cmd.arg("-data-dir")
            .arg(dir.join("etcd-data"))
            .args(["-client-url", "http://127.0.0.1:0"])
            .args(["-peer-url", "http://127.0.0.1:0"]);
        let mut proc = Proc::spawn(cmd, dir.join("etcd.log"));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // `"msg":"serving client traffic insecurely; …","address":"127.0.0.1:PORT"`:
            // logged once the client listener is up, after the member is ready.
            let log = proc.log_text();
            if let Some(addr) = log
                .lines()
                .filter(|l| l.contains("serving client traffic"))
                .find_map(|l| json_field(l, "address"))
            {
                return Etcd {
                    url: format!("http://{addr}"),
                    _proc: proc,
                };
            }
            if let Some(s) = proc.exited() {
                panic!("etcd exited ({s}):\n{}", tail(&log));
            }
            assert!(
                Instant::now() < deadline,
                "etcd not serving after {START_TIMEOUT:?}:\n{}",
                tail(&log)
            );
            #[allow(clippy::disallowed_methods)] // a blocking API, called off the runtimes
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A string field of a JSON log line.
fn json_field(line: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    v.get(key)?.as_str().map(str::to_owned)
}

/// The last lines of a log, for failure messages.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A running kube-apiserver (and its etcd) with an admin kubeconfig.
pub struct ApiServer {
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// Holds the apiserver's files: `admin-kubeconfig.yaml`, `certs/`, `sa.key`, logs.
    pub dir: PathBuf,
    /// The admin kubeconfig (user `admin`, group `system:masters`, a static token).
    pub kubeconfig: PathBuf,
    /// CA bundle the apiserver's self-signed serving certificate verifies with.
    pub ca_file: PathBuf,
    pub apiserver: Proc,
    /// Killed after the apiserver (fields drop in order).
    _etcd: Etcd,
    /// Removed on drop (not for process-wide fixtures, which are never dropped).
    _tmp: tempfile::TempDir,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver (RBAC, a service-account issuer [`SA_ISSUER`] with a
    /// fresh RSA key, an admin token) with `extra_flags` appended, and waits for `/readyz`.
    /// Files the flags name can be written beforehand into [`ApiServer::prepare_dir`]'s
    /// folder and passed with `start_in`.
    #[allow(dead_code)] // API for suites with no files to prepare (the registry tests)
    pub fn start(bins: &Binaries, extra_flags: &[String]) -> ApiServer {
        Self::start_in(bins, Self::prepare_dir(), extra_flags)
    }

    /// A fresh folder for [`ApiServer::start_in`] (under the system temp dir).
    pub fn prepare_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("tokenhook-k8s-")
            .tempdir()
            .unwrap()
    }

    /// [`ApiServer::start`] in `tmp`, where files the flags name may already be.
    pub fn start_in(bins: &Binaries, tmp: tempfile::TempDir, extra_flags: &[String]) -> ApiServer {
        let dir = tmp.path().to_path_buf();
        remove_on_exit(&dir);
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let key = openssl::rsa::Rsa::generate(2048).unwrap();
        std::fs::write(dir.join("sa.key"), key.private_key_to_pem().unwrap()).unwrap();
        std::fs::write(dir.join("sa.pub"), key.public_key_to_pem().unwrap()).unwrap();
        let admin_token = format!("admin-{}", uuid::Uuid::new_v4().simple());
        super::secrets::secret(&admin_token);
        std::fs::write(
            dir.join("admin-tokens.csv"),
            format!("{admin_token},admin,admin-uid,system:masters\n"),
        )
        .unwrap();
        let etcd = Etcd::start(bins, &dir);
        let ca_file = dir.join("certs/apiserver.crt");
        for attempt in 1.. {
            let port = kernel_port();
            let url = format!("https://127.0.0.1:{port}");
            let kubeconfig = dir.join("admin-kubeconfig.yaml");
            std::fs::write(
                &kubeconfig,
                kubeconfig_yaml(&url, &ca_file, "admin", &admin_token),
            )
            .unwrap();
            let d = |p: &str| dir.join(p).display().to_string();
            let mut cmd = Command::new(&bins.apiserver);
            cmd.arg(format!("--etcd-servers={}", etcd.url))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={port}"))
                .arg(format!("--cert-dir={}", d("certs")))
                .arg(format!("--service-account-issuer={SA_ISSUER}"))
                .arg(format!("--service-account-key-file={}", d("sa.pub")))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    d("sa.key")
                ))
                .arg("--service-cluster-ip-range=10.96.0.0/16")
                .arg("--authorization-mode=RBAC")
                .arg(format!("--token-auth-file={}", d("admin-tokens.csv")))
                .args(extra_flags);
            let mut apiserver = Proc::spawn(cmd, dir.join(format!("apiserver-{attempt}.log")));
            match wait_ready(&mut apiserver, &kubeconfig) {
                Ok(()) => {
                    return ApiServer {
                        url,
                        dir,
                        kubeconfig,
                        ca_file,
                        apiserver,
                        _etcd: etcd,
                        _tmp: tmp,
                    };
                }
                Err(log) if attempt < 5 && log.contains("address already in use") => continue,
                Err(log) => panic!("kube-apiserver did not become ready:\n{}", tail(&log)),
            }
        }
        unreachable!()
    }

    /// Runs kubectl as admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl(&self.kubeconfig, args)
    }

    /// Runs kubectl as admin with `stdin` piped in (`apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl is required for the tests");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl presenting `token` (and nothing else) to the apiserver.
    #[allow(dead_code)] // API for suites that act as a user (the registry tests)
    pub fn kubectl_with_token(&self, token: &str, args: &[&str]) -> Output {
        super::secrets::secret(token);
        let path = self
            .dir
            .join(format!("user-{}.kubeconfig", uuid::Uuid::new_v4().simple()));
        std::fs::write(
            &path,
            kubeconfig_yaml(&self.url, &self.ca_file, "user", token),
        )
        .unwrap();
        let out = kubectl(&path, args);
        let _ = std::fs::remove_file(&path);
        out
    }

    /// Everything the apiserver logged so far.
    #[allow(dead_code)] // API for suites that read the apiserver's log
    pub fn log(&self) -> String {
        self.apiserver.log_text()
    }
}

/// Polls `GET /readyz` as admin until it answers `ok`, the process exits, or the timeout.
fn wait_ready(p: &mut Proc, kubeconfig: &Path) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(s) = p.exited() {
            return Err(format!("exited ({s})\n{}", p.log_text()));
        }
        let out = kubectl(
            kubeconfig,
            &["get", "--raw", "/readyz", "--request-timeout=5s"],
        );
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
            return Ok(());
        }
        if Instant::now() > deadline {
            p.kill();
            return Err(format!(
                "not ready after {START_TIMEOUT:?}\n{}",
                p.log_text()
            ));
        }
        #[allow(clippy::disallowed_methods)] // a blocking API, called off the runtimes
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A kubeconfig for `server` trusting `ca_file`, authenticating with `token`.
pub fn kubeconfig_yaml(server: &str, ca_file: &Path, user: &str, token: &str) -> String {
    let v = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": ca_file}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
        "current-context": "e2e",
    });
    // JSON is YAML.
    v.to_string()
}

/// Runs the real kubectl with `kubeconfig` (nothing from the environment's own kubeconfig).
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("kubectl is required for the tests (it is installed on these machines)")
}

/// stdout of a kubectl run that must succeed.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
