//! End to end against the real kube-apiserver: its webhook (deploy/apiserver/ flags and kubeconfig) points at a tokenhook started here, users log in through the real kubectl; the chart's objects are applied to it.
//!
//! Start-ups are few: one apiserver (and tokenhook, and OIDC issuer) per webhook version is
//! shared by the read-only stories, on a process-wide runtime (each `#[tokio::test]` has its
//! own); the story that stops and restarts tokenhook gets its own apiserver.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::support::issuer::Issuer;
use crate::support::k8s::{self, ApiServer, Binaries, SA_ISSUER};
use crate::support::{Ca, Client, Opts, TOKENS, TestServer};

/// Where deploy/ keeps the apiserver side, and the paths its files name.
const DEPLOY_APISERVER: &str = "deploy/apiserver";
const MOUNT: &str = "/etc/kubernetes/tokenhook/";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The runtime the shared stacks' in-process servers live on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A static token for minting (tokenhook-admin may mint anything, see `MINT_TOML`).
const MINTER: &str = "minter-token-0123456789,tokenhook-admin,9000";

fn tokens() -> String {
    format!("{TOKENS}{MINTER}\n")
}

/// An OIDC issuer in tokenhook's AuthenticationConfiguration: `oidc:` + sub, groups, and a
/// tenant extra.
fn authn_yaml(iss: &Issuer, ca_pem: &str) -> String {
    let ca: String = ca_pem.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n- issuer:\n    url: {}\n    audiences: [\"my-app\"]\n    certificateAuthority: |\n{ca}  claimMappings:\n    username:\n      claim: sub\n      prefix: \"oidc:\"\n    groups:\n      claim: groups\n      prefix: \"\"\n    extra:\n    - key: example.com/tenant\n      valueExpression: 'claims.tenant'\n",
        iss.url
    )
}

fn hook_opts(tokens: String, listen: &str) -> Opts {
    Opts {
        tokens,
        mint: true,
        listen: listen.into(),
        extra_toml: "[jwt]\nmin_refresh_interval_seconds = 0\n\n[[verifiers]]\ntype = \"authentication_config\"\nfile = \"authn.yaml\"\n".into(),
        ..Opts::default()
    }
}

/// Renders deploy/apiserver/webhook-kubeconfig.yaml for this machine: the server is
/// tokenhook's review URL on loopback, the mounted files are those in `dir`.
fn render_webhook_kubeconfig(hook: &TestServer, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(
        repo()
            .join(DEPLOY_APISERVER)
            .join("webhook-kubeconfig.yaml"),
    )
    .unwrap();
    let mut v: Value = serde_yaml_ng::from_str(&text).unwrap();
    let server = &mut v["clusters"][0]["cluster"]["server"];
    let url = server.as_str().unwrap().to_owned();
    let path = &url[url.find("://").unwrap() + 3..];
    let path = &path[path.find('/').unwrap()..];
    assert_eq!(
        path, "/authenticate",
        "the deploy/ kubeconfig names tokenhook's review path"
    );
    *server = json!(format!("https://127.0.0.1:{}{path}", hook.addr.port()));
    let mut files = Vec::new();
    remount(&mut v, dir, &mut files);
    files.sort();
    assert_eq!(
        files,
        ["apiserver-client.crt", "apiserver-client.key", "ca.crt"],
        "the files the deploy/ kubeconfig names"
    );
    std::fs::write(dir.join("ca.crt"), &hook.ca.pem).unwrap();
    std::fs::write(dir.join("apiserver-client.crt"), &hook.caller.cert).unwrap();
    std::fs::write(dir.join("apiserver-client.key"), &hook.caller.key).unwrap();
    let out = dir.join("webhook-kubeconfig.yaml");
    std::fs::write(&out, v.to_string()).unwrap();
    out
}

/// Rewrites every string under [`MOUNT`] to the same file name in `dir`.
fn remount(v: &mut Value, dir: &Path, files: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix(MOUNT) {
                files.push(name.to_owned());
                *s = dir.join(name).display().to_string();
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| remount(x, dir, files)),
        Value::Object(o) => o.values_mut().for_each(|x| remount(x, dir, files)),
        _ => {}
    }
}

/// deploy/apiserver/flags.txt for this machine, with this webhook version and cache TTL.
fn webhook_flags(dir: &Path, version: &str, ttl: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(DEPLOY_APISERVER).join("flags.txt")).unwrap();
    let flags: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("--"))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            let v = match k {
                "--authentication-token-webhook-version" => version.to_owned(),
                "--authentication-token-webhook-cache-ttl" => ttl.to_owned(),
                _ => match v.strip_prefix(MOUNT) {
                    Some(name) => dir.join(name).display().to_string(),
                    None => v.to_owned(),
                },
            };
            format!("{k}={v}")
        })
        .collect();
    let names: Vec<&str> = flags.iter().map(|f| f.split('=').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "--authentication-token-webhook-config-file",
            "--authentication-token-webhook-version",
            "--authentication-token-webhook-cache-ttl"
        ],
        "deploy/apiserver/flags.txt"
    );
    flags
}

/// tokenhook (static tokens, OIDC issuer, minting) behind a kube-apiserver.
struct Stack {
    api: ApiServer,
    hook: TestServer,
    issuer: Issuer,
}

impl Stack {
    /// Starts the stack: tokenhook and the issuer on the current runtime, the apiserver
    /// (blocking) on a helper thread.
    /// `issuer_down`: the OIDC issuer answers 503 from the start, so tokenhook has no keys.
    async fn start(
        bins: Binaries,
        version: &'static str,
        ttl: &'static str,
        issuer_down: bool,
    ) -> Stack {
        let ca = Ca::new("e2e CA");
        let issuer = Issuer::start(&ca).await;
        issuer.set_down(issuer_down);
        let dir = tempfile::tempdir().unwrap();
        k8s::remove_on_exit(dir.path());
        std::fs::write(dir.path().join("authn.yaml"), authn_yaml(&issuer, &ca.pem)).unwrap();
        let hook = TestServer::start_with(dir, ca, hook_opts(tokens(), "127.0.0.1:0")).await;
        let tmp = ApiServer::prepare_dir();
        render_webhook_kubeconfig(&hook, tmp.path());
        let flags = webhook_flags(tmp.path(), version, ttl);
        let api = tokio::task::spawn_blocking(move || ApiServer::start_in(&bins, tmp, &flags))
            .await
            .unwrap();
        Stack { api, hook, issuer }
    }

    /// The shared stack of webhook `version` (cache TTL 10 s), `None` without binaries.
    fn shared(version: &'static str) -> Option<&'static Stack> {
        static V1: OnceLock<Option<Stack>> = OnceLock::new();
        static V1BETA1: OnceLock<Option<Stack>> = OnceLock::new();
        let cell = if version == "v1" { &V1 } else { &V1BETA1 };
        cell.get_or_init(|| {
            let bins = k8s::binaries()?;
            // A thread of its own: the caller may be on a test's runtime.
            let started = std::thread::spawn(move || {
                runtime().block_on(Stack::start(bins, version, "10s", false))
            })
            .join();
            Some(started.unwrap_or_else(|e| std::panic::resume_unwind(e)))
        })
        .as_ref()
    }

    fn minter(&self) -> Client {
        self.hook.anonymous()
    }
}

/// kubectl as a user with `token`, off the async runtime.
async fn kubectl_as(api: &ApiServer, token: &str, args: &[&str]) -> Output {
    let (url, ca, dir) = (api.url.clone(), api.ca_file.clone(), api.dir.clone());
    let token = token.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        crate::support::secrets::secret(&token);
        let path = dir.join(format!("user-{}.kubeconfig", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, k8s::kubeconfig_yaml(&url, &ca, "user", &token)).unwrap();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = k8s::kubectl(&path, &args);
        let _ = std::fs::remove_file(&path);
        out
    })
    .await
    .unwrap()
}

/// `kubectl auth whoami -o json` as `token`: the user info, or the error text.
async fn whoami(api: &ApiServer, token: &str) -> Result<Value, String> {
    let out = kubectl_as(api, token, &["auth", "whoami", "-o", "json"]).await;
    if out.status.success() {
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        Ok(v["status"]["userInfo"].clone())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Asserts the apiserver refused `token` as unauthenticated (401).
async fn assert_401(api: &ApiServer, token: &str, what: &str) {
    match whoami(api, token).await {
        Ok(u) => panic!("{what}: admitted as {u}"),
        Err(e) => assert!(e.contains("Unauthorized"), "{what}: {e}"),
    }
}

/// Mints a token for ci/builder with `audiences` through tokenhook's TokenRequest.
async fn mint(s: &Stack, audiences: &[&str]) -> String {
    let auth = format!("Bearer {}", MINTER.split(',').next().unwrap());
    let r = s
        .minter()
        .request(
            http::Method::POST,
            "/api/v1/namespaces/ci/serviceaccounts/builder/token",
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"audiences": audiences, "expirationSeconds": 3600}})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["status"]["token"].as_str().unwrap().to_owned()
}

async fn logins(version: &'static str) {
    let Some(s) = Stack::shared(version) else {
        return;
    };
    // A static token, with its groups and extra.
    let alice = whoami(&s.api, "alice-token").await.unwrap();
    assert_eq!(
        alice,
        json!({"username": "alice", "uid": "1001",
               "groups": ["developers", "viewers", "system:authenticated"],
               "extra": {"example.com/team": ["platform", "infra"]}}),
        "{version}"
    );
    // An OIDC token from the loopback issuer.
    let t = s.issuer.sign(
        "k1",
        &s.issuer
            .claims(json!({"groups": ["dev", "ops"], "tenant": "acme"})),
    );
    let jane = whoami(&s.api, &t).await.unwrap();
    assert_eq!(jane["username"], "oidc:jane", "{version}: {jane}");
    assert_eq!(
        jane["groups"],
        json!(["dev", "ops", "system:authenticated"]),
        "{version}"
    );
    assert_eq!(
        jane["extra"]["example.com/tenant"],
        json!(["acme"]),
        "{version}"
    );
    // Unknown, and an OIDC token for an audience the issuer is not configured with.
    assert_401(&s.api, "no-such-token-at-all", version).await;
    let other = s
        .issuer
        .sign("k1", &s.issuer.claims(json!({"aud": "someone-else"})));
    assert_401(&s.api, &other, version).await;
}

#[tokio::test]
async fn e2e_static_and_oidc_logins_v1() {
    logins("v1").await;
}

#[tokio::test]
async fn e2e_static_and_oidc_logins_v1beta1() {
    logins("v1beta1").await;
}

async fn minted(version: &'static str) {
    let Some(s) = Stack::shared(version) else {
        return;
    };
    // The apiserver sends spec.audiences = [its service-account issuer].
    let t = mint(s, &[SA_ISSUER]).await;
    let u = whoami(&s.api, &t).await.unwrap();
    assert_eq!(u["username"], "system:serviceaccount:ci:builder", "{u}");
    assert_eq!(u["uid"], "11111111-2222-3333-4444-555555555555", "{u}");
    assert_eq!(
        u["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:ci",
            "system:authenticated"
        ]),
        "{u}"
    );
    let vault = mint(s, &["vault"]).await;
    assert_401(&s.api, &vault, "a token minted for vault").await;
}

#[tokio::test]
async fn e2e_minted_tokens_log_in_for_the_apiservers_audience_only_v1() {
    minted("v1").await;
}

#[tokio::test]
async fn e2e_minted_tokens_log_in_for_the_apiservers_audience_only_v1beta1() {
    minted("v1beta1").await;
}

/// The sum of tokenhook's `tokenhook_http_requests_total` series with `code`.
async fn answered(hook: &TestServer, code: &str) -> f64 {
    hook.metric("tokenhook_http_requests_total", &format!("code=\"{code}\""))
        .await
}

/// tokenhook answering 503, then serving again; stopped, then restarted on the same port:
/// kube-apiserver's webhook authenticator retries what kube retries (connection resets,
/// 429, 5xx with Retry-After: `DefaultShouldRetry`, and client-go honours Retry-After),
/// caches answers — yes and no alike — for `--authentication-token-webhook-cache-ttl`, and
/// never caches an error (`tokencache.New(webhook, cacheErrs=false, ttl, ttl)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_outage_retries_and_cache_ttl_as_kube_documents() {
    let Some(bins) = k8s::binaries() else {
        return;
    };
    const TTL: u64 = 30;
    let s = Stack::start(bins, "v1", "30s", true).await;
    let Stack { api, hook, issuer } = s;

    // 503: the issuer has been down since tokenhook started, so tokenhook cannot check an
    // OIDC token ("could not check", not "no"). The apiserver retries the same review
    // (several 503s for one login); nothing is admitted meanwhile, and the token logs in
    // once the issuer is back (the 503s were not cached, neither side).
    let t2 = issuer.sign(
        "k1",
        &issuer.claims(json!({"groups": ["dev"], "tenant": "t"})),
    );
    crate::support::secrets::secret(&t2);
    let before = answered(&hook, "503").await;
    let login = {
        let (url, ca, dir) = (api.url.clone(), api.ca_file.clone(), api.dir.clone());
        let t2 = t2.clone();
        tokio::task::spawn_blocking(move || {
            let path = dir.join("retry.kubeconfig");
            std::fs::write(&path, k8s::kubeconfig_yaml(&url, &ca, "user", &t2)).unwrap();
            k8s::kubectl(&path, &["auth", "whoami", "-o", "json"])
        })
    };
    crate::assert_eventually!(
        60,
        answered(&hook, "503").await >= before + 2.0,
        "the apiserver did not retry a 503: {}",
        hook.client()
            .get("/metrics")
            .await
            .text()
            .lines()
            .filter(|l| l.starts_with("tokenhook_http_requests_total")
                || l.starts_with("tokenhook_reviews_total"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let retried = answered(&hook, "503").await - before;
    let finished_while_down = login.is_finished();
    issuer.set_down(false);
    let out = login.await.unwrap();
    if finished_while_down {
        // The apiserver gave up before the issuer came back: refused, never admitted.
        assert!(!out.status.success(), "admitted while tokenhook said 503");
        assert_eq!(whoami(&api, &t2).await.unwrap()["username"], "oidc:jane");
    } else {
        let u: Value = serde_json::from_str(&k8s::ok(&out, "login across the 503s")).unwrap();
        assert_eq!(u["status"]["userInfo"]["username"], "oidc:jane");
    }
    eprintln!(
        "e2e: one login was answered 503 {retried} times before the issuer came back (finished while down: {finished_while_down})"
    );

    // tokenhook stopped: cached answers stand (alice in, the bad token out); anything new
    // is an error, hence 401, and not cached.
    assert_eq!(
        whoami(&api, "alice-token").await.unwrap()["username"],
        "alice"
    );
    assert_401(&api, "wrong-token-0123456789", "bad token").await;
    let addr = hook.addr;
    let TestServer {
        _running, dir, ca, ..
    } = hook;
    _running.shutdown().await;
    assert_eq!(
        whoami(&api, "alice-token").await.unwrap()["username"],
        "alice",
        "a cached yes stands for the cache TTL ({TTL}s)"
    );
    assert_401(&api, "wrong-token-0123456789", "cached no").await;
    assert_401(&api, "bob-token", "bob while tokenhook is down").await;

    // Restarted on the same port without alice's token: bob (whose error was not cached)
    // logs in at once; alice's cached yes lasts until the TTL, then she is refused.
    let without_alice: String = tokens()
        .lines()
        .filter(|l| !l.starts_with("alice-token,"))
        .map(|l| format!("{l}\n"))
        .collect();
    let hook = TestServer::start_with(dir, ca, hook_opts(without_alice, &addr.to_string())).await;
    assert_eq!(hook.addr, addr);
    assert_eq!(whoami(&api, "bob-token").await.unwrap()["username"], "bob");
    crate::assert_eventually!(
        TTL + 60,
        whoami(&api, "alice-token").await.is_err(),
        "alice's removed token still admitted long after the cache TTL"
    );
    assert_401(&api, "alice-token", "alice after the TTL").await;
    assert_401(
        &api,
        "wrong-token-0123456789",
        "bad token after the restart",
    )
    .await;
    drop(hook);
}

/// Kinds whose definitions (CRDs) the test apiserver does not have: deploy.rs checks them.
const CUSTOM: &[&str] = &["ServiceMonitor", "Certificate", "PrometheusRule"];

/// The chart's rendered objects: every `rendered/*.yaml` but the values files
/// (`*-values.yaml`) they were rendered with, as JSON documents.
fn rendered_objects() -> Vec<(String, Value)> {
    let dir = repo().join("deploy/helm/tokenhook/rendered");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push((f.file_name().unwrap().to_string_lossy().into_owned(), v));
            }
        }
    }
    out
}

/// The API path of `obj`'s collection (from the apiserver's discovery) and its resource.
fn collection(api: &ApiServer, obj: &Value) -> (String, String) {
    let gv = obj["apiVersion"].as_str().unwrap();
    let base = if gv.contains('/') {
        format!("/apis/{gv}")
    } else {
        format!("/api/{gv}")
    };
    let disc: Value =
        serde_json::from_str(&k8s::ok(&api.kubectl(&["get", "--raw", &base]), &base)).unwrap();
    let kind = obj["kind"].as_str().unwrap();
    let r = disc["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind && !r["name"].as_str().unwrap().contains('/'))
        .unwrap_or_else(|| panic!("{gv} has no {kind}"));
    let name = r["name"].as_str().unwrap().to_owned();
    let path = if r["namespaced"] == true {
        let ns = obj["metadata"]["namespace"].as_str().unwrap();
        format!("{base}/namespaces/{ns}/{name}")
    } else {
        format!("{base}/{name}")
    };
    let group = gv.rsplit_once('/').map_or("", |(g, _)| g);
    let resource = if group.is_empty() {
        name
    } else {
        format!("{name}.{group}")
    };
    (path, resource)
}

/// A value Go's `omitempty` leaves out of the stored object.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Every field of `want` is in `got` with the same value (the server adds defaults).
fn contains(got: &Value, want: &Value, at: &str, diffs: &mut Vec<String>) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => contains(gv, wv, &format!("{at}.{k}"), diffs),
                    None if is_zero(wv) => {}
                    None => diffs.push(format!("{at}.{k} missing")),
                }
            }
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => {
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                contains(gv, wv, &format!("{at}[{i}]"), diffs);
            }
        }
        (g, w) if g == w => {}
        // Go's omitempty: a zero value sent is not stored.
        (Value::Null, w) if is_zero(w) => {}
        (g, w) => diffs.push(format!("{at}: sent {w}, read back {g}")),
    }
}

/// The chart's objects pass `kubectl apply --dry-run=server`, strict field validation, and
/// are applied for real and read back unchanged.
#[tokio::test]
async fn e2e_chart_objects_are_accepted_by_the_apiserver() {
    let Some(s) = Stack::shared("v1") else {
        return;
    };
    let api = &s.api;
    let objects = rendered_objects();
    assert!(!objects.is_empty());
    let (custom, core): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .partition(|(_, o)| CUSTOM.contains(&o["kind"].as_str().unwrap()));
    for (_, o) in &custom {
        // Not served here: their definitions are not installed (checked offline by deploy.rs).
        let out = api.kubectl(&[
            "api-resources",
            "--api-group",
            o["apiVersion"].as_str().unwrap().split('/').next().unwrap(),
            "-o",
            "name",
        ]);
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "{} is served by the test apiserver; apply it here too",
            o["kind"]
        );
    }
    let namespaces: std::collections::BTreeSet<&str> = core
        .iter()
        .filter_map(|(_, o)| o["metadata"]["namespace"].as_str())
        .collect();
    for ns in namespaces {
        let out = api.kubectl(&["create", "namespace", ns]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("AlreadyExists"),
            "{err}"
        );
    }
    let kinds: std::collections::BTreeSet<String> = core
        .iter()
        .map(|(_, o)| o["kind"].as_str().unwrap().to_owned())
        .collect();
    for k in [
        "Deployment",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "ClusterRole",
        "ClusterRoleBinding",
    ] {
        assert!(
            kinds.contains(k),
            "no {k} among the rendered objects: {kinds:?}"
        );
    }
    let files: std::collections::BTreeSet<&str> = core.iter().map(|(f, _)| f.as_str()).collect();
    assert!(
        files.contains("default.yaml") && files.contains("cluster.yaml"),
        "{files:?}"
    );

    // Each output is a release of its own (they share names): installed, checked, removed.
    for file in files {
        let objects: Vec<&Value> = core
            .iter()
            .filter(|(f, _)| f == file)
            .map(|(_, o)| o)
            .collect();
        apply_and_read_back(api, file, &objects);
        if objects.iter().any(|o| o["kind"] == "ClusterRoleBinding") {
            registry_rbac_is_in_force(api, &objects);
        }
        let all: String = objects.iter().map(|o| format!("---\n{o}\n")).collect();
        k8s::ok(
            &api.kubectl_stdin(&["delete", "--wait=true", "-f", "-"], &all),
            &format!("{file}: kubectl delete"),
        );
    }
}

/// `objects` (one rendered file) pass `kubectl apply --dry-run=server` and strict field
/// validation, then are applied for real and read back as sent.
fn apply_and_read_back(api: &ApiServer, file: &str, objects: &[&Value]) {
    // kubectl's client-side validation needs OpenAPI documents this apiserver build serves
    // in a form kubectl cannot read, so it is off here; the server validates strictly below.
    let all: String = objects.iter().map(|o| format!("---\n{o}\n")).collect();
    let dry = api.kubectl_stdin(
        &["apply", "--dry-run=server", "--validate=false", "-f", "-"],
        &all,
    );
    let dry = k8s::ok(&dry, &format!("{file}: kubectl apply --dry-run=server"));
    assert_eq!(
        dry.lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count(),
        objects.len(),
        "{file}: {dry}"
    );
    // Unknown or duplicate fields are errors (fieldValidation=Strict), nothing stored.
    for o in objects {
        let (path, _) = collection(api, o);
        let f = api.dir.join("object.json");
        std::fs::write(&f, o.to_string()).unwrap();
        let out = api.kubectl(&[
            "create",
            "--raw",
            &format!("{path}?dryRun=All&fieldValidation=Strict"),
            "-f",
            f.to_str().unwrap(),
        ]);
        k8s::ok(
            &out,
            &format!(
                "{file}: strict dry-run create of {} {}",
                o["kind"], o["metadata"]["name"]
            ),
        );
    }

    // For real, then read back: every field sent is stored as sent.
    k8s::ok(
        &api.kubectl_stdin(&["apply", "--validate=false", "-f", "-"], &all),
        &format!("{file}: kubectl apply"),
    );
    for o in objects {
        let (_, resource) = collection(api, o);
        let name = o["metadata"]["name"].as_str().unwrap();
        let mut args = vec!["get", resource.as_str(), name, "-o", "json"];
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            args.extend(["-n", ns]);
        }
        let got: Value = serde_json::from_str(&k8s::ok(&api.kubectl(&args), &resource)).unwrap();
        let mut want = (*o).clone();
        // The API stores stringData as base64 data.
        if let Some(sd) = want.as_object_mut().and_then(|m| m.remove("stringData")) {
            use base64::Engine;
            for (k, v) in sd.as_object().unwrap() {
                want["data"][k] =
                    json!(base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap()));
            }
        }
        let mut diffs = Vec::new();
        contains(&got, &want, "", &mut diffs);
        assert!(
            diffs.is_empty(),
            "{file}: {} {name} read back differently:\n{}",
            o["kind"],
            diffs.join("\n")
        );
    }
}

/// With the chart's ClusterRoleBinding applied, the API server's RBAC lets the pods'
/// ServiceAccount list and watch exactly the registry's kinds, cluster-wide, and nothing more.
fn registry_rbac_is_in_force(api: &ApiServer, objects: &[&Value]) {
    let binding = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRoleBinding")
        .unwrap();
    let subject = &binding["subjects"][0];
    let user = format!(
        "system:serviceaccount:{}:{}",
        subject["namespace"].as_str().unwrap(),
        subject["name"].as_str().unwrap()
    );
    let can = |verb: &str, resource: &str| -> bool {
        let out = api.kubectl(&[
            "auth",
            "can-i",
            verb,
            resource,
            "--all-namespaces",
            "--as",
            &user,
        ]);
        // "yes", or "no" with the authorizer's reason after " - " when it gives one.
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            answer == "yes" || answer == "no" || answer.starts_with("no - "),
            "kubectl auth can-i {verb} {resource} --as {user}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        answer == "yes"
    };
    // The RBAC authorizer learns of the new binding through its informers: wait for it.
    let mut polls = 0;
    while !can("list", "pods") {
        polls += 1;
        assert!(polls < 100, "{user} never got list on pods");
        #[allow(clippy::disallowed_methods)]
        // the test's own runtime runs nothing else; kubectl blocks it too
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for resource in ["serviceaccounts", "pods", "secrets", "nodes"] {
        for verb in ["list", "watch"] {
            assert!(can(verb, resource), "{user} cannot {verb} {resource}");
        }
        for verb in ["get", "create", "update", "delete"] {
            assert!(!can(verb, resource), "{user} can {verb} {resource}");
        }
    }
    for resource in ["configmaps", "deployments", "events"] {
        assert!(!can("list", resource), "{user} can list {resource}");
    }
}

/// Absent binaries: a loud skip normally, a failure under CI=true (checked by the lookup).
#[test]
fn e2e_binaries_are_found_or_the_skip_is_loud() {
    let dir = k8s::source_dir();
    if let Some(b) = k8s::binaries() {
        assert!(b.etcd.is_file() && b.apiserver.is_file());
        let v = std::process::Command::new(&b.apiserver)
            .arg("--version")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&v.stdout).starts_with("Kubernetes v1."),
            "{}: {:?}",
            dir.display(),
            v
        );
    }
}
