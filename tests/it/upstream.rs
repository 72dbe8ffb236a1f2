//! `type = "tokenreview"`: a second tokenhook as the upstream webhook, reached through a kube webhook kubeconfig (issue 14).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tokenhook::kubeconfig::{Kubeconfig, Source};

use crate::support::{Opts, TestServer, replace_file, review_body};

/// The upstream's users: carol (audience-agnostic, groups, extra) and vaulty (bound to
/// the audiences vault and consul).
const UPSTREAM_TOKENS: &str = "\
up-carol-token,carol,3001,\"ops,dev\",,\"example.com/team=b\"
up-vault-token,vaulty,3002,,\"vault,consul\"
";

async fn upstream() -> TestServer {
    TestServer::start(Opts {
        tokens: UPSTREAM_TOKENS.into(),
        ..Opts::default()
    })
    .await
}

/// A webhook kubeconfig for `up` at `port` (default: its own), presenting its caller
/// certificate unless `anonymous`.
fn kubeconfig(up: &TestServer, port: Option<u16>, anonymous: bool) -> String {
    Kubeconfig {
        cluster: "cluster-b".into(),
        server: format!(
            "https://127.0.0.1:{}/authenticate",
            port.unwrap_or(up.addr.port())
        ),
        certificate_authority: Source::Data(up.ca.pem.as_bytes().to_vec()),
        user: "tokenhook".into(),
        client_cert: (!anonymous).then(|| {
            (
                Source::Data(up.caller.cert.as_bytes().to_vec()),
                Source::Data(up.caller.key.as_bytes().to_vec()),
            )
        }),
        token: None,
        context: "webhook".into(),
    }
    .render()
}

/// The downstream tokenhook: a `tokenreview` verifier (named cluster-b, kubeconfig at
/// `path`, plus `extra` keys) before a static file of its own.
async fn downstream(path: &Path, extra: &str) -> TestServer {
    TestServer::start(Opts {
        extra_toml: format!(
            "[[verifiers]]\ntype = \"tokenreview\"\nname = \"cluster-b\"\nkubeconfig = {:?}\n{extra}\n",
            path.display().to_string()
        ),
        tokens: "local-token,local,1\n".into(),
        ..Opts::default()
    })
    .await
}

fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let p = dir.path().join("webhook.kubeconfig");
    replace_file(&p, text);
    p
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn upstream_reviews(up: &TestServer) -> f64 {
    up.metric("tokenhook_http_requests_total", "route=\"webhook\"")
        .await
}

#[tokio::test]
async fn both_versions_with_prefixes_and_extra() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = write(&dir, &kubeconfig(&up, None, false));
    for version in ["v1", "v1beta1"] {
        let down = downstream(
            &kc,
            &format!(
                "version = \"{version}\"\nusername_prefix = \"cluster-b:\"\ngroups_prefix = \"cluster-b:\""
            ),
        )
        .await;
        let c = down.client();
        for (path, api) in [
            (
                "/apis/authentication.k8s.io/v1/tokenreviews",
                "authentication.k8s.io/v1",
            ),
            (
                "/apis/authentication.k8s.io/v1beta1/tokenreviews",
                "authentication.k8s.io/v1beta1",
            ),
        ] {
            let r = c
                .post_json(path, &review_body(api, "up-carol-token", &[]))
                .await;
            assert_eq!(r.status, 201, "{version} {path}: {}", r.text());
            let v = r.json();
            assert_eq!(v["apiVersion"], api);
            assert_eq!(
                v["status"],
                json!({
                    "authenticated": true,
                    "user": {
                        "username": "cluster-b:carol",
                        "uid": "3001",
                        "groups": ["cluster-b:ops", "cluster-b:dev"],
                        "extra": {"example.com/team": ["b"]}
                    }
                }),
                "{version} {path}"
            );
        }
        // The chain goes on past the upstream's "no" only for tokens it did not select:
        // the default selector sends this one up, and the upstream's "no" is final.
        let v = c.review("local-token", &[]).await.json();
        assert_eq!(v["status"], json!({"user": {}}), "{version}");
        let v = c.review("nobody-has-this", &[]).await.json();
        assert_eq!(v["status"], json!({"user": {}}), "{version}");
        assert!(
            down.metric(
                "tokenhook_rejections_total",
                "verifier=\"tokenreview\",reason=\"upstream_rejected\""
            )
            .await
                >= 2.0
        );
    }
}

#[tokio::test]
async fn selectors_keep_other_tokens_in_the_chain() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = write(&dir, &kubeconfig(&up, None, false));
    let down = downstream(&kc, "token_prefix = \"up-\"").await;
    let c = down.client();
    let before = upstream_reviews(&up).await;
    // Not selected: never sent upstream, decided by the local static file.
    let v = c.review("local-token", &[]).await.json();
    assert_eq!(v["status"]["user"]["username"], "local");
    assert_eq!(upstream_reviews(&up).await, before);
    let v = c.review("up-carol-token", &[]).await.json();
    assert_eq!(v["status"]["user"]["username"], "carol");
    assert_eq!(upstream_reviews(&up).await, before + 1.0);
}

#[tokio::test]
async fn audiences_are_forwarded_and_intersected() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = write(&dir, &kubeconfig(&up, None, false));
    let down = downstream(&kc, "version = \"v1\"").await;
    let c = down.client();
    let v = c.review("up-vault-token", &["vault"]).await.json();
    assert_eq!(v["status"]["authenticated"], true);
    assert_eq!(v["status"]["audiences"], json!(["vault"]));
    let v = c
        .review("up-vault-token", &["nomad", "consul"])
        .await
        .json();
    assert_eq!(v["status"]["audiences"], json!(["consul"]));
    // Bound to other audiences: the upstream says no, and so does tokenhook.
    let v = c.review("up-vault-token", &["nomad"]).await.json();
    assert_eq!(v["status"], json!({"user": {}}));
    // Asked for no audience: the upstream checks its own (none here), and says no to a
    // token bound elsewhere.
    let v = c.review("up-vault-token", &[]).await.json();
    assert_eq!(v["status"], json!({"user": {}}));
    // An audience-agnostic upstream identity, no API audiences anywhere: valid.
    let v = c.review("up-carol-token", &["x"]).await.json();
    assert_eq!(v["status"]["authenticated"], true);
    assert_eq!(v["status"]["user"]["username"], "carol");
}

#[tokio::test]
async fn upstream_down_is_503_then_recovers_on_kubeconfig_reload() {
    let dir = tempfile::tempdir().unwrap();
    let first = upstream().await;
    let kc = write(&dir, &kubeconfig(&first, Some(closed_port()), false));
    let down = downstream(&kc, "failure_threshold = 0").await;
    let c = down.client();
    let r = c.review("up-carol-token", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(r.json()["kind"], "Status");
    // Errors are not cached: the next review asks again.
    let r = c.review("up-carol-token", &[]).await;
    assert_eq!(r.status, 503);
    assert!(
        down.metric(
            "tokenhook_upstream_requests_total",
            "upstream=\"cluster-b\",result=\"transport\""
        )
        .await
            >= 2.0
    );
    // The upstream comes up (the kubeconfig now points at it): reviews work again.
    replace_file(&kc, &kubeconfig(&first, None, false));
    let mut status = 0;
    for _ in 0..200 {
        let r = c.review("up-carol-token", &[]).await;
        status = r.status.as_u16();
        if status == 201 {
            assert_eq!(r.json()["status"]["user"]["username"], "carol");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 201);
    assert!(
        down.metric(
            "tokenhook_reloads_total",
            "source=\"tokenreview_kubeconfig\",result=\"success\""
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn upstream_stopping_is_503() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream().await;
    let kc = write(&dir, &kubeconfig(&up, None, false));
    let down = downstream(&kc, "").await;
    let c = down.client();
    assert_eq!(c.review("up-carol-token", &[]).await.status, 201);
    let TestServer { _running, .. } = up;
    _running.shutdown().await;
    // A new token (the first one's "yes" is cached, as it should be).
    let r = c.review("up-vault-token", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
}

#[tokio::test]
async fn circuit_opens_after_repeated_failures() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = write(&dir, &kubeconfig(&up, Some(closed_port()), false));
    let down = downstream(&kc, "failure_threshold = 2\ncool_down_seconds = 3600").await;
    let c = down.client();
    let r = c.get("/readyz?verbose").await;
    assert!(
        r.text().contains("[+]upstream cluster-b circuit closed ok"),
        "{}",
        r.text()
    );
    for _ in 0..3 {
        assert_eq!(c.review("up-carol-token", &[]).await.status, 503);
    }
    assert_eq!(
        down.metric(
            "tokenhook_upstream_requests_total",
            "upstream=\"cluster-b\",result=\"transport\""
        )
        .await,
        2.0
    );
    assert_eq!(
        down.metric(
            "tokenhook_upstream_requests_total",
            "upstream=\"cluster-b\",result=\"circuit_open\""
        )
        .await,
        1.0
    );
    assert_eq!(
        down.metric("tokenhook_upstream_circuit_state", "upstream=\"cluster-b\"")
            .await,
        2.0
    );
    // Shown, but not failing readiness: the other verifiers still work.
    let r = c.get("/readyz?verbose").await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("[+]upstream cluster-b circuit open ok"),
        "{}",
        r.text()
    );
    // Fixing the kubeconfig does not close the circuit before its cool-down.
    replace_file(&kc, &kubeconfig(&up, None, false));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.review("up-carol-token", &[]).await.status, 503);
}

#[tokio::test]
async fn upstream_refusing_tokenhook_is_503() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    // No client certificate: the upstream answers 401.
    let kc = write(&dir, &kubeconfig(&up, None, true));
    let down = downstream(&kc, "").await;
    let r = down.client().review("up-carol-token", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        down.metric(
            "tokenhook_upstream_requests_total",
            "upstream=\"cluster-b\",result=\"forbidden\""
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_thousand_concurrent_reviews_make_one_upstream_call() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = write(&dir, &kubeconfig(&up, None, false));
    let down = downstream(&kc, "").await;
    let before = upstream_reviews(&up).await;
    // One HTTP/2 connection carrying every review, as kube-apiserver sends them: a
    // thousand fresh connections at once would only test the kernel's accept queue.
    let tls = down.client().http2().connect().await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let body = serde_json::to_vec(&review_body(
        "authentication.k8s.io/v1",
        "up-carol-token",
        &[],
    ))
    .unwrap();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let mut send = send.clone();
        let req = http::Request::post(format!(
            "https://localhost:{}/apis/authentication.k8s.io/v1/tokenreviews",
            down.addr.port()
        ))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
        .unwrap();
        set.spawn(async move {
            use http_body_util::BodyExt;
            let r = send.send_request(req).await.unwrap();
            let status = r.status();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        let (status, v) = r.unwrap();
        assert_eq!(status, 201);
        assert_eq!(v["status"]["user"]["username"], "carol");
        ok += 1;
    }
    assert_eq!(ok, 1000);
    assert_eq!(upstream_reviews(&up).await, before + 1.0);
    assert_eq!(
        down.metric(
            "tokenhook_upstream_requests_total",
            "upstream=\"cluster-b\",result=\"success\""
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn invalid_tokenreview_settings_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        "[server]\ncert_file = \"a\"\nkey_file = \"b\"\n[[verifiers]]\ntype = \"tokenreview\"\nkubeconfig = \"\"\nversion = \"v2\"\ntoken_prefix = \"a\"\ntoken_regex = \"(\"\ntimeout_seconds = 0\nname = \"Bad Name\"\n",
    )
    .unwrap();
    let err = tokenhook::config::load(
        Some(&cfg),
        "TOKENHOOK_IT_UNUSED_",
        &tokenhook::config::Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    for want in [
        "verifiers[0].version",
        "at most one of token_prefix",
        "verifiers[0].token_regex",
        "verifiers[0].timeout_seconds",
        "verifiers[0].name",
        "verifiers[0].kubeconfig",
    ] {
        assert!(err.contains(want), "{want} missing from {err}");
    }
}

/// kubectl as the apiserver's admin, off the async runtime; its stdout, the run must succeed.
async fn kubectl_admin(api: &crate::support::k8s::ApiServer, args: &[&str]) -> String {
    let kubeconfig = api.kubeconfig.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let what = format!("kubectl {}", args.join(" "));
        crate::support::k8s::ok(&crate::support::k8s::kubectl(&kubeconfig, &args), &what)
    })
    .await
    .unwrap()
}

/// The real kube-apiserver as the upstream: a token it mints for one of its own service
/// accounts is accepted through tokenhook (with its issuer as the audience, and with none),
/// refused for another audience, and refused once the account is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kube_apiserver_accepts_its_service_account_tokens_through_tokenhook() {
    use crate::support::k8s::{self, ApiServer, SA_ISSUER};
    let Some(bins) = k8s::binaries() else {
        return;
    };
    let api = tokio::task::spawn_blocking(move || ApiServer::start(&bins, &[]))
        .await
        .unwrap();
    kubectl_admin(
        &api,
        &["create", "serviceaccount", "robot", "-n", "default"],
    )
    .await;
    let uid = kubectl_admin(
        &api,
        &[
            "get",
            "serviceaccount",
            "robot",
            "-n",
            "default",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    )
    .await;
    let token = kubectl_admin(&api, &["create", "token", "robot", "-n", "default"])
        .await
        .trim()
        .to_owned();
    crate::support::secrets::secret(&token);

    // tokenhook's upstream: the apiserver's own TokenReview API, its CA, the admin's token
    // (system:masters may create tokenreviews).
    let admin: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&api.kubeconfig).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = write(
        &dir,
        &Kubeconfig {
            cluster: "apiserver".into(),
            server: format!("{}/apis/authentication.k8s.io/v1/tokenreviews", api.url),
            certificate_authority: Source::Data(std::fs::read(&api.ca_file).unwrap()),
            user: "admin".into(),
            client_cert: None,
            token: Some(admin["users"][0]["user"]["token"].as_str().unwrap().into()),
            context: "webhook".into(),
        }
        .render(),
    );
    let down = downstream(
        &kc,
        "version = \"v1\"\nusername_prefix = \"apiserver:\"\ncache_ttl_seconds = 1",
    )
    .await;
    let c = down.client();

    for audiences in [&[SA_ISSUER][..], &[]] {
        let r = c.review(&token, audiences).await;
        assert_eq!(r.status, 201, "{audiences:?}: {}", r.text());
        let st = &r.json()["status"];
        assert_eq!(st["authenticated"], true, "{audiences:?}: {st}");
        let user = &st["user"];
        assert_eq!(
            user["username"], "apiserver:system:serviceaccount:default:robot",
            "{audiences:?}"
        );
        assert_eq!(user["uid"], uid.as_str(), "{audiences:?}");
        let groups: Vec<&str> = user["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_str().unwrap())
            .collect();
        for g in ["system:serviceaccounts", "system:serviceaccounts:default"] {
            assert!(groups.contains(&g), "{audiences:?}: {g} not in {groups:?}");
        }
        let ids = user["extra"]["authentication.kubernetes.io/credential-id"]
            .as_array()
            .unwrap_or_else(|| panic!("{audiences:?}: no credential-id in {user}"));
        assert!(
            ids.len() == 1 && ids[0].as_str().unwrap().starts_with("JTI="),
            "{audiences:?}: {ids:?}"
        );
        if !audiences.is_empty() {
            assert_eq!(st["audiences"], json!([SA_ISSUER]));
        }
    }
    // Not minted for this audience: the apiserver says no, and so does tokenhook.
    let v = c.review(&token, &["vault"]).await.json();
    assert_eq!(v["status"], json!({"user": {}}));
    let v = c
        .review("not-a-token-the-apiserver-knows", &[])
        .await
        .json();
    assert_eq!(v["status"], json!({"user": {}}));

    // The account deleted: once tokenhook's "yes" (1 s) and the apiserver's own token cache
    // (10 s by default) have expired, the apiserver refuses the token, and so does tokenhook.
    kubectl_admin(
        &api,
        &["delete", "serviceaccount", "robot", "-n", "default"],
    )
    .await;
    let mut last = json!(null);
    for _ in 0..240 {
        let r = c.review(&token, &[]).await;
        assert_eq!(r.status, 201, "{}", r.text());
        last = r.json()["status"].clone();
        if last["authenticated"] != true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        last,
        json!({"user": {}}),
        "still accepted a minute after the deletion"
    );
    let v = c.review(&token, &[SA_ISSUER]).await.json();
    assert_eq!(v["status"], json!({"user": {}}));
    assert!(
        down.metric(
            "tokenhook_rejections_total",
            "verifier=\"tokenreview\",reason=\"upstream_rejected\""
        )
        .await
            >= 3.0
    );
    drop(down);
    drop(api);
}
