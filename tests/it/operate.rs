//! Operating it: metrics (checked by promtool and scraped by a real Prometheus), health, SIGHUP, JSON logs with request ids, kubectl discovery and whoami.

use std::process::{Command, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::assert_eventually;
use crate::jwt::issuer_yaml;
use crate::support::dev::{admin_client, signal, start, stop, token_of};
use crate::support::issuer::Issuer;
use crate::support::{Client, Opts, TOKENS, TestServer, ensure_debian_package, replace_file};

/// GET over plain HTTP (Prometheus's own API on loopback).
async fn plain_get(addr: &str, path: &str) -> Option<Value> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr)
        .body(Empty::<Bytes>::new())
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

fn promtool_check(exposition: &[u8]) -> std::process::Output {
    use std::io::Write;
    ensure_debian_package("promtool", "prometheus");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is required (Debian package prometheus; .ci/run installs it)");
    child.stdin.take().unwrap().write_all(exposition).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn exposition_passes_promtool_and_never_carries_secrets() {
    let s = TestServer::start(Opts {
        mint: true,
        ..Opts::default()
    })
    .await;
    let c = s.client();
    for t in ["alice-token", "alice-token", "bob-token", "no-such-token"] {
        c.review(t, &[]).await;
    }
    let admin = Client::new(s.addr, &s.ca.pem, Some(&s.ca.client("tokenhook-admin")));
    let r = admin
        .post_json(
            "/api/v1/namespaces/ci/serviceaccounts/builder/token",
            &json!({"spec": {"audiences": ["vault"]}}),
        )
        .await;
    let minted = r.json()["status"]["token"].as_str().unwrap().to_owned();
    c.review(&minted, &["vault"]).await;
    replace_file(&s.tokens_path, "alice-token,alice,1001\n");
    assert_eventually!(
        10,
        s.metric(
            "tokenhook_reloads_total",
            "source=\"static_tokens\",result=\"success\""
        )
        .await
            >= 1.0,
        "token file reload not counted"
    );

    let r = c.get("/metrics").await;
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let out = promtool_check(&r.body);
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = r.text();
    for name in [
        "tokenhook_http_requests_total",
        "tokenhook_http_request_duration_seconds_bucket",
        "tokenhook_reviews_total",
        "tokenhook_verifier_duration_seconds_bucket",
        "tokenhook_cache_requests_total",
        "tokenhook_cache_entries",
        "tokenhook_cache_evictions_total",
        "tokenhook_tokens_minted_total",
        "tokenhook_reloads_total",
        "tokenhook_serving_certificate_expiry_timestamp_seconds",
        "tokenhook_build_info",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing");
    }
    // Every watched source's reload results exist from the start (at zero), so that
    // `increase()` in the reload alert sees a first failure.
    for source in ["tls", "static_tokens", "signing_keys", "revocations"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("tokenhook_reloads_total{")
                    && l.contains(&format!("source=\"{source}\""))
                    && l.contains("result=\"failure\"")),
            "no failure series for {source}"
        );
    }
    // Reloading the token file cleared the cache: evictions were counted.
    assert!(
        s.metric("tokenhook_cache_evictions_total", "cause=\"explicit\"")
            .await
            >= 1.0
    );
    for secret in [
        "alice-token",
        "bob-token",
        "no-such-token",
        minted.as_str(),
        "alice",
        "bob",
        "tokenhook-admin",
    ] {
        assert!(!text.contains(secret), "{secret:?} appears in /metrics");
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_it() {
    // Minting and a JWT issuer besides the static tokens, so that the traffic below touches
    // every series the Grafana dashboard shows. The issuer needs the CA first: a probe
    // server makes it.
    // A second issuer is down from the start: until it delivers keys its tokens are
    // answered "could not check" (503) and readiness fails.
    let probe = TestServer::start(Opts::default()).await;
    let iss = Issuer::start(&probe.ca).await;
    let late = Issuer::start(&probe.ca).await;
    late.set_down(true);
    let mapping = "  claimMappings:\n    username:\n      claim: sub\n      prefix: \"oidc:\"\n";
    std::fs::write(
        probe.path("authn.yaml"),
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n{}{mapping}{}{mapping}",
            issuer_yaml(&iss, &probe.ca.pem, &["my-app"]),
            issuer_yaml(&late, &probe.ca.pem, &["my-app"]),
        ),
    )
    .unwrap();
    let s = TestServer::start_in(
        probe,
        Opts {
            client_names: Some(vec!["kube-apiserver".into(), "prometheus".into()]),
            extra_toml: "[metrics]\nlisten = \"127.0.0.1:0\"\n[jwt]\nmin_refresh_interval_seconds = 0\n[[verifiers]]\ntype = \"authentication_config\"\nfile = \"authn.yaml\"\n".into(),
            mint: true,
            ..Opts::default()
        },
    )
    .await;
    let metrics_addr = s._running.metrics_addr.unwrap();
    // The metrics listener serves metrics (with the caller rules) and health, nothing else;
    // the main listener no longer serves metrics.
    let prom = s.ca.client("prometheus");
    let mc = Client::new(metrics_addr, &s.ca.pem, Some(&prom));
    assert_eq!(mc.get("/metrics").await.status, 200);
    assert_eq!(
        mc.get("/readyz").await.status,
        500,
        "the late issuer has no keys"
    );
    assert_eq!(
        Client::new(metrics_addr, &s.ca.pem, None)
            .get("/metrics")
            .await
            .status,
        401
    );
    assert_eq!(mc.review("alice-token", &[]).await.status, 404);
    assert_eq!(s.client().get("/metrics").await.status, 404);

    let dir = s.dir.path();
    std::fs::write(dir.join("prom.crt"), &prom.cert).unwrap();
    std::fs::write(dir.join("prom.key"), &prom.key).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n- job_name: tokenhook\n  scheme: https\n  tls_config:\n    ca_file: {d}/ca.crt\n    cert_file: {d}/prom.crt\n    key_file: {d}/prom.key\n    server_name: localhost\n  static_configs:\n  - targets: [\"127.0.0.1:{port}\"]\n",
            d = dir.display(),
            port = metrics_addr.port()
        ),
    )
    .unwrap();
    ensure_debian_package("prometheus", "prometheus");
    // Prometheus needs a port of its own; ask the kernel for a free one.
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is required (Debian package prometheus; .ci/run installs it)");
    // The instant vector `q` evaluates to (None when Prometheus answers no or an error).
    let series = |q: &str| {
        let (web, q) = (web.clone(), q.to_owned());
        async move {
            let q: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
            let v = plain_get(&web, &format!("/api/v1/query?query={q}")).await?;
            (v["status"] == "success").then_some(())?;
            v["data"]["result"].as_array().cloned()
        }
    };
    let query = |q: &'static str| {
        let series = &series;
        async move {
            series(q).await?.first()?["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()
        }
    };
    let c = s.client();
    c.review("alice-token", &[]).await;
    assert_eventually!(
        60,
        query("up{job=\"tokenhook\"}").await == Some(1.0),
        "Prometheus never scraped tokenhook (up != 1)"
    );
    let total = "sum(tokenhook_reviews_total)";
    assert_eventually!(
        30,
        query("sum(tokenhook_reviews_total)").await.is_some(),
        "review counter not in Prometheus"
    );
    let before = query("sum(tokenhook_reviews_total)").await.unwrap();
    for _ in 0..5 {
        c.review("bob-token", &[]).await;
    }
    assert_eventually!(
        30,
        query("sum(tokenhook_reviews_total)")
            .await
            .is_some_and(|v| v >= before + 5.0),
        "{total} did not increase"
    );

    // Traffic for every dashboard panel: answers of each outcome and verifier, a rejection,
    // a minted token, a "could not check" (503), a reload.
    assert_eq!(
        c.review("no-such-token", &[]).await.json()["status"],
        json!({"user": {}})
    );
    let jwt = iss.sign("k1", &iss.claims(json!({})));
    assert_eq!(
        c.review(&jwt, &[]).await.json()["status"]["user"]["username"],
        "oidc:jane"
    );
    let now = tokenhook::clock::Clock::System.now().0;
    let expired = iss.sign(
        "k1",
        &iss.claims(json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600})),
    );
    let r = c.review(&expired, &[]).await;
    assert_eq!(r.status, 201);
    assert_ne!(r.json()["status"]["authenticated"], true);
    let admin = Client::new(s.addr, &s.ca.pem, Some(&s.ca.client("tokenhook-admin")));
    let r = admin
        .post_json(
            "/api/v1/namespaces/ci/serviceaccounts/builder/token",
            &json!({"spec": {"audiences": ["vault"]}}),
        )
        .await;
    let minted = r.json()["status"]["token"].as_str().unwrap().to_owned();
    assert_eq!(
        c.review(&minted, &["vault"]).await.json()["status"]["authenticated"],
        true
    );
    // The late issuer's token while it is down: could not check; once it is up: yes, and
    // the pods are ready.
    let late_jwt = late.sign("k1", &late.claims(json!({})));
    assert_eq!(c.review(&late_jwt, &[]).await.status, 503);
    late.set_down(false);
    assert_eq!(
        c.review(&late_jwt, &[]).await.json()["status"]["authenticated"],
        true
    );
    assert_eq!(mc.get("/readyz").await.status, 200);
    replace_file(&s.tokens_path, &format!("{TOKENS}# reloaded\n"));
    assert_eventually!(
        30,
        query("tokenhook_reloads_total{source=\"static_tokens\",result=\"success\"}")
            .await
            .is_some_and(|v| v >= 1.0),
        "token file reload not counted"
    );
    let errors = "sum(tokenhook_reviews_total{outcome=\"error\"})";
    assert_eventually!(
        30,
        query(errors).await.is_some(),
        "the 503 never reached Prometheus"
    );

    // A healthy issuer's failure series exists, at zero (so that the JWKS alert's
    // `increase()` would see a first failure).
    let healthy = format!(
        "tokenhook_jwks_refreshes_total{{issuer=\"{}\",result=\"failure\"}}",
        iss.url
    );
    assert_eventually!(
        30,
        series(&healthy)
            .await
            .is_some_and(|r| r.len() == 1 && r[0]["value"][1] == "0"),
        "no zero failure series for the healthy issuer"
    );
    // Every query of the Grafana dashboard (and of its variables) returns series.
    for (what, q) in crate::monitoring::dashboard_queries("tokenhook") {
        assert_eventually!(
            30,
            series(&q).await.is_some_and(|r| !r.is_empty()),
            "Grafana dashboard {what}: no series for {q}"
        );
    }
    prometheus.kill().unwrap();
    let _ = prometheus.wait();
}

#[tokio::test]
async fn sighup_reloads_and_json_logs_carry_request_ids_not_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    // Polling every hour: only SIGHUP can make the new token visible in time.
    let (child, base, _) = start(
        &dir,
        &[
            ("TOKENHOOK_SERVER__RELOAD_INTERVAL_MS", "3600000"),
            ("TOKENHOOK_LOG__FORMAT", "json"),
        ],
    );
    let c = admin_client(&dir, &base);
    let tokens = std::fs::read_to_string(dir.join("tokens.csv")).unwrap();
    let alice = token_of(&dir, "alice");
    let r = c.review(&alice, &[]).await;
    let request_id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{tokens}sighup-token-value,zed,9\n"),
    )
    .unwrap();
    let refused = c.review("sighup-token-value", &[]).await;
    assert_eq!(refused.json()["status"], json!({"user": {}}));
    let refused_id = refused.headers["x-request-id"].to_str().unwrap().to_owned();
    signal(&child, "-HUP");
    assert_eventually!(
        10,
        c.review("sighup-token-value", &[]).await.json()["status"]["user"]["username"] == "zed",
        "SIGHUP did not reload the token file"
    );
    let (_, logs) = stop(&dir, child).await;
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!lines.is_empty(), "no JSON log lines: {logs}");
    // Issue 12: at the default level an accepted token logs no line (it is counted in
    // /metrics); a refused one does, carrying its request id.
    assert!(
        !lines
            .iter()
            .any(|l| l["message"] == "review" && l["span"]["id"] == request_id.as_str()),
        "a review line for an accepted token at info: {logs}"
    );
    let review = lines
        .iter()
        .find(|l| l["message"] == "review" && l["span"]["id"] == refused_id.as_str())
        .unwrap_or_else(|| panic!("no review line with request id {refused_id}: {logs}"));
    assert_eq!(review["level"], "INFO");
    assert_eq!(review["verifier"], "none");
    assert_eq!(review["outcome"], "unauthenticated");
    assert_eq!(
        review["token"].as_str().unwrap().len(),
        16,
        "fingerprint, not the token"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "reloaded" && l["source"] == "static_tokens")
    );
    for secret in [alice.as_str(), "sighup-token-value"] {
        assert!(!logs.contains(secret), "a token appears in the logs");
    }
}

#[tokio::test]
async fn kubectl_whoami_discovery_and_readyz() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let (child, base, _) = start(&dir, &[]);
    let kubectl = |args: &[&str]| crate::support::dev::kubectl(&dir, args);
    let out = kubectl(&["auth", "whoami", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "SelfSubjectReview");
    assert_eq!(v["status"]["userInfo"]["username"], "tokenhook-admin");
    assert_eq!(
        v["status"]["userInfo"]["groups"],
        json!(["system:masters", "system:authenticated"])
    );

    // A bearer token goes through the chain: user, groups and extra.
    let alice = token_of(&dir, "alice");
    let out = Command::new("kubectl")
        .args(["--server", &base, "--certificate-authority"])
        .arg(dir.join("ca.crt"))
        .args(["--token", &alice, "auth", "whoami"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("alice"), "{table}");
    assert!(
        table.contains("[developers viewers system:authenticated]"),
        "{table}"
    );
    assert!(table.contains("example.com/team"), "{table}");
    let out = Command::new("kubectl")
        .args(["--server", &base, "--certificate-authority"])
        .arg(dir.join("ca.crt"))
        .args(["--token", "wrong", "auth", "whoami"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    let out = kubectl(&["get", "--raw", "/readyz?verbose"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("[+]ping ok") && text.ends_with("readyz check passed\n"),
        "{text}"
    );

    let out = kubectl(&[
        "api-resources",
        "--api-group",
        "authentication.k8s.io",
        "-o",
        "name",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "selfsubjectreviews.authentication.k8s.io",
            "tokenreviews.authentication.k8s.io"
        ]
    );
    // kubectl create -f validates against the served OpenAPI (v2, as for kube-apiserver's
    // TokenReview, which has no PATCH for server-side validation), then creates.
    std::fs::write(
        dir.join("review.yaml"),
        format!(
            "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: {alice}\n"
        ),
    )
    .unwrap();
    let review = dir.join("review.yaml").display().to_string();
    let out = kubectl(&["create", "-f", &review, "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"]["user"]["username"], "alice");
    std::fs::write(
        dir.join("typo.yaml"),
        "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  tokn: x\n",
    )
    .unwrap();
    let typo = dir.join("typo.yaml").display().to_string();
    let out = kubectl(&["create", "-f", &typo]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field \"tokn\""), "{err}");

    let out = kubectl(&["version", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["serverVersion"]["major"], "1");
    stop(&dir, child).await;
}

#[tokio::test]
async fn debug_logs_never_contain_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let (child, base, _) = start(&dir, &[("TOKENHOOK_LOG__LEVEL", "debug")]);
    let admin = admin_client(&dir, &base);
    let alice = token_of(&dir, "alice");
    let mut secrets = vec![
        alice.clone(),
        token_of(&dir, "bob"),
        token_of(&dir, "admin"),
    ];
    // Every path a token takes: review (miss, hit, unknown), mint, review of the minted
    // token, bearer caller of whoami and mint, a rejected JWT.
    admin.review(&alice, &[]).await;
    admin.review(&alice, &[]).await;
    admin.review("not-a-real-token-value", &[]).await;
    secrets.push("not-a-real-token-value".into());
    let minted = admin
        .post_json(
            "/api/v1/namespaces/default/serviceaccounts/default/token",
            &json!({"spec": {"audiences": ["vault"]}}),
        )
        .await
        .json()["status"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    admin.review(&minted, &["vault"]).await;
    let mut parts: Vec<&str> = minted.split('.').collect();
    let forged_sig = "AAAA".repeat(20);
    parts[2] = &forged_sig;
    let forged = parts.join(".");
    admin.review(&forged, &["vault"]).await;
    secrets.push(minted.clone());
    secrets.push(forged.clone());
    let anon = Client::new(
        base.trim_start_matches("https://").parse().unwrap(),
        &std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        None,
    );
    anon.request(
        http::Method::POST,
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        &[("authorization", &format!("Bearer {alice}"))],
        "{}",
    )
    .await;
    anon.request(
        http::Method::POST,
        "/api/v1/namespaces/default/serviceaccounts/default/token",
        &[("authorization", "Bearer wrong-caller-secret")],
        "{}",
    )
    .await;
    secrets.push("wrong-caller-secret".into());
    let (status, logs) = stop(&dir, child).await;
    assert!(status.success());
    assert!(
        logs.contains("DEBUG") || logs.contains("debug"),
        "debug logging was not on"
    );
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a token appears in the debug logs"
        );
        // Nor a long piece of one (a signature, a payload).
        for part in secret.split('.').filter(|p| p.len() > 16) {
            assert!(
                !logs.contains(part),
                "part of a token appears in the debug logs"
            );
        }
    }
    let key = std::fs::read_to_string(dir.join("sa-signing.key")).unwrap();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(
        !logs.contains(&key_body[..40]),
        "private key material in the logs"
    );
}
