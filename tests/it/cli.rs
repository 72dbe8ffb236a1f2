//! The `tokenhook` binary: dev mode, bad config, SIGTERM with a request in flight, hash-token, kubeconfig.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::dev::{BIN, admin_client, kubectl, signal, start, token_of, wait_exit};
use crate::support::{Client, Leaf};

fn kubectl_view(path: &Path) -> serde_json::Value {
    let out = Command::new("kubectl")
        .args(["config", "view", "--raw", "-o", "json", "--kubeconfig"])
        .arg(path)
        .output()
        .expect("kubectl is required for the tests (it is installed on these machines)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const FILES: &[&str] = &[
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "apiserver-client.crt",
    "apiserver-client.key",
    "admin.crt",
    "admin.key",
    "tokens.csv",
    "sa-signing.key",
    "tokenhook.toml",
    "webhook-kubeconfig.yaml",
    "admin-kubeconfig.yaml",
];

#[tokio::test]
async fn dev_mode_generates_everything_then_reuses_it() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let (mut child, base, lines) = start(&dir, &[]);
    for f in FILES {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    for key in [
        "ca.key",
        "server.key",
        "apiserver-client.key",
        "admin.key",
        "tokens.csv",
    ] {
        let mode = std::fs::metadata(dir.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let curl = lines
        .iter()
        .find(|l| l.trim_start().starts_with("curl "))
        .unwrap();
    assert!(curl.contains(&format!(
        "{base}/apis/authentication.k8s.io/v1/tokenreviews"
    )));

    // The demo token from tokens.csv authenticates through the admin certificate.
    let alice = token_of(&dir, "alice");
    assert!(curl.contains(&alice));
    let v = admin_client(&dir, &base).review(&alice, &[]).await.json();
    assert_eq!(v["status"]["user"]["username"], "alice");

    // The webhook kubeconfig is what kube-apiserver's flag takes.
    let k = kubectl_view(&dir.join("webhook-kubeconfig.yaml"));
    assert_eq!(k["current-context"], "webhook");
    let cluster = &k["clusters"][0]["cluster"];
    assert_eq!(cluster["server"], format!("{base}/authenticate"));
    assert!(
        cluster["certificate-authority-data"]
            .as_str()
            .unwrap()
            .len()
            > 100
    );
    let user = &k["users"][0]["user"];
    assert!(user["client-certificate-data"].is_string());
    assert!(user["client-key-data"].is_string());
    assert_eq!(k["contexts"][0]["context"]["user"], k["users"][0]["name"]);
    let a = kubectl_view(&dir.join("admin-kubeconfig.yaml"));
    assert_eq!(a["clusters"][0]["cluster"]["server"], base);

    // kube-apiserver's own client certificate may call the webhook path.
    let apiserver = Leaf {
        cert: std::fs::read_to_string(dir.join("apiserver-client.crt")).unwrap(),
        key: std::fs::read_to_string(dir.join("apiserver-client.key")).unwrap(),
    };
    let c = Client::new(
        base.trim_start_matches("https://").parse().unwrap(),
        &std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        Some(&apiserver),
    );
    let r = c
        .post_json(
            "/authenticate",
            &crate::support::review_body("authentication.k8s.io/v1beta1", &alice, &[]),
        )
        .await;
    assert_eq!(r.json()["apiVersion"], "authentication.k8s.io/v1beta1");
    assert_eq!(r.json()["status"]["authenticated"], true);

    signal(&child, "-TERM");
    assert!(wait_exit(&mut child).await.success());

    // Second start: nothing is regenerated.
    let before: Vec<Vec<u8>> = FILES
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    let (mut child, _, lines) = start(&dir, &[]);
    assert!(
        !lines.iter().any(|l| l.starts_with("created ")),
        "{lines:?}"
    );
    let after: Vec<Vec<u8>> = FILES
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    assert_eq!(before, after);
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child).await.success());
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let (mut child, base, _) = start(&dir, &[]);
    let c = admin_client(&dir, &base);
    let bob = token_of(&dir, "bob");
    let body = format!(r#"{{"apiVersion":"authentication.k8s.io/v1","spec":{{"token":"{bob}"}}}}"#);
    let half = body.len() / 2;
    let mut tls = c.partial_review(body.as_bytes(), half).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&child, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Still draining: new connections are refused, ours completes.
    tls.write_all(&body.as_bytes()[half..]).await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    assert!(resp.contains("\"username\":\"bob\""), "{resp}");
    assert!(wait_exit(&mut child).await.success());
}

/// Issue 12: the binary logs through the non-blocking writer: start and stop still reach
/// stderr (the guard flushes on exit), an accepted review writes no line at the default
/// level while a refused one does, and `/metrics` counts dropped lines.
#[tokio::test]
async fn logs_start_stop_and_refusals_but_not_each_accepted_review() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let (child, base, _) = start(&dir, &[]);
    let c = admin_client(&dir, &base);
    let alice = token_of(&dir, "alice");
    for _ in 0..3 {
        let r = c.review(&alice, &[]).await;
        assert_eq!(r.json()["status"]["authenticated"], true);
    }
    let r = c.review("not-a-known-token-at-all", &[]).await;
    assert_ne!(r.json()["status"]["authenticated"], true);
    let metrics = c.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text()
            .lines()
            .any(|l| l == "tokenhook_log_lines_dropped_total 0"),
        "{}",
        metrics.text()
    );
    let (status, logs) = crate::support::dev::stop(&dir, child).await;
    assert!(status.success());
    let first = logs
        .lines()
        .position(|l| l.contains("serving TokenReviews over TLS"));
    let last = logs.lines().position(|l| l.contains("stopped"));
    assert!(
        matches!((first, last), (Some(a), Some(b)) if a < b),
        "start and stop lines missing: {logs}"
    );
    let reviews: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" review ") || l.contains(": review"))
        .collect();
    assert_eq!(reviews.len(), 1, "{logs}");
    assert!(
        reviews.iter().all(|l| l.contains("unauthenticated")),
        "{logs}"
    );
}

#[test]
fn bad_config_exits_64_naming_every_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("t.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.listen",
        "server.cert_file",
        "server.key_file",
        "verifiers",
    ] {
        assert!(err.contains(key), "{key} not in {err}");
    }
    std::fs::write(&cfg, "[server]\nlisten_address = \"x\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen_address") && err.contains("t.toml"),
        "{err}"
    );
    // A token file that does not parse is a configuration error too, found before binding.
    std::fs::write(tmp.path().join("tokens.csv"), "a,b\n").unwrap();
    std::fs::write(tmp.path().join("c.pem"), "").unwrap();
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\ncert_file = \"c.pem\"\nkey_file = \"c.pem\"\n[[verifiers]]\ntype = \"static\"\nfile = \"tokens.csv\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hash_token_prints_the_stored_form() {
    let mut child = Command::new(BIN)
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        tokenhook::verify::static_file::hash_entry("s3cret")
    );
}

#[test]
fn kubeconfig_command_renders_a_valid_webhook_kubeconfig() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = crate::support::Ca::new("ca");
    let leaf = ca.client("kube-apiserver");
    for (n, s) in [
        ("ca.crt", &ca.pem),
        ("c.crt", &leaf.cert),
        ("c.key", &leaf.key),
    ] {
        std::fs::write(tmp.path().join(n), s).unwrap();
    }
    for embed in [false, true] {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(tmp.path()).args([
            "kubeconfig",
            "--server",
            "https://tokenhook.auth.svc:8443/authenticate",
            "--certificate-authority",
            "ca.crt",
            "--client-certificate",
            "c.crt",
            "--client-key",
            "c.key",
        ]);
        if embed {
            cmd.arg("--embed-certs");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = tmp.path().join(format!("k{embed}.yaml"));
        std::fs::write(&path, &out.stdout).unwrap();
        let k = kubectl_view(&path);
        assert_eq!(
            k["clusters"][0]["cluster"]["server"],
            "https://tokenhook.auth.svc:8443/authenticate"
        );
        let ca_key = if embed {
            "certificate-authority-data"
        } else {
            "certificate-authority"
        };
        assert!(k["clusters"][0]["cluster"][ca_key].is_string(), "{k}");
    }
}

#[tokio::test]
async fn kubectl_create_token_against_dev_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let (mut child, base, _) = start(&dir, &[]);
    let admin = admin_client(&dir, &base);

    let out = kubectl(&dir, &["create", "token", "default"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let v = admin.review(token.trim(), &[]).await.json();
    assert_eq!(
        v["status"]["user"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(
        v["status"]["user"]["groups"],
        serde_json::json!(["system:serviceaccounts", "system:serviceaccounts:default"])
    );
    // Minted for the default audience (the issuer), which is what an empty spec means.
    let issuer = admin.get("/.well-known/openid-configuration").await.json()["issuer"].clone();
    assert_eq!(v["status"]["audiences"], serde_json::json!([issuer]));

    let out = kubectl(
        &dir,
        &[
            "create",
            "token",
            "default",
            "-n",
            "default",
            "--audience",
            "vault",
            "--audience",
            "nomad",
            "--duration",
            "15m",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "demo",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let v = admin.review(token.trim(), &["nomad"]).await.json();
    assert_eq!(v["status"]["audiences"], serde_json::json!(["nomad"]));
    assert_eq!(
        v["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        serde_json::json!(["demo"])
    );
    let payload = token.trim().split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        900
    );

    // kube's errors come through kubectl as kube's.
    for (args, want) in [
        (
            vec!["create", "token", "nosuch"],
            "serviceaccounts \"nosuch\" not found",
        ),
        (
            vec!["create", "token", "default", "--duration", "1m"],
            "may not specify a duration less than 10 minutes",
        ),
        (
            vec![
                "create",
                "token",
                "default",
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                "ghost",
            ],
            "pods \"ghost\" not found",
        ),
    ] {
        let out = kubectl(&dir, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Over the maximum: kubectl shows kube's warning and still gets a token.
    let out = kubectl(&dir, &["create", "token", "default", "--duration", "48h"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("requested expiration of 172800 seconds shortened to 86400 seconds")
    );
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child).await.success());
}

#[test]
fn keys_generate_writes_a_private_key_once() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    for alg in ["RS256", "ES256", "EdDSA"] {
        let out_path = tmp.path().join(format!("{alg}.key"));
        let out = Command::new(BIN)
            .args(["keys", "generate", "--algorithm", alg, "--out"])
            .arg(&out_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("({alg}, kid ")));
        let mode = std::fs::metadata(&out_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let keys = tokenhook::mint::keys::KeySet::load(&out_path, &[]).unwrap();
        assert_eq!(keys.signing.public.alg.as_str(), alg);
        // Never overwrites.
        let again = Command::new(BIN)
            .args(["keys", "generate", "--algorithm", alg, "--out"])
            .arg(&out_path)
            .output()
            .unwrap();
        assert!(!again.status.success());
    }
    let bad = Command::new(BIN)
        .args(["keys", "generate", "--algorithm", "HS256", "--out"])
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test]
async fn authentication_config_flag_adds_its_issuers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let authn = tmp.path().join("authn.yaml");
    // An issuer nobody serves: the flag's issuer must show up (not ready) in /readyz.
    std::fs::write(
        &authn,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n- issuer:\n    url: https://127.0.0.1:1\n    audiences: [my-app]\n  claimMappings:\n    username:\n      claim: sub\n      prefix: \"\"\n",
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["dev", "--dir"])
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0", "--authentication-config"])
        .arg(&authn);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut base = String::new();
    use std::io::BufRead;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(b) = line.strip_prefix("tokenhook dev: serving on ") {
            base = b.to_owned();
        }
        if line.trim_start().starts_with("curl ") {
            break;
        }
    }
    let r = admin_client(&dir, &base).get("/readyz?verbose").await;
    assert_eq!(r.status, 500);
    assert!(
        r.text()
            .contains("[-]jwt-issuer https://127.0.0.1:1 failed"),
        "{}",
        r.text()
    );
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child).await.success());
}
