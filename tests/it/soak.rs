//! Faults under load: the real binary serves a steady load while its serving certificate, token file and signing keys rotate, the JWT issuer stops and comes back, SIGHUP and then SIGTERM arrive; every answer is checked, memory must stay flat and the exit must be clean.
//!
//! `cargo test --release --test it soak -- --nocapture` with `SOAK_SECONDS=60`
//! is the full run; the suite runs it for 10 s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::issuer::Issuer;
use crate::support::{self, Ca, Client, Opts, replace_file, secrets};

const V1: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const BUILDER: &str = "/api/v1/namespaces/ci/serviceaccounts/builder/token";
const SA_USER: &str = "system:serviceaccount:ci:builder";
const JSON: (&str, &str) = ("content-type", "application/json");

/// What the workers may assume about the token file's churning entries.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    Yes,
    No,
    /// Being rewritten: either answer is right, so the workers leave it alone.
    Unsettled,
}

struct Shared {
    churn: Mutex<Vec<(String, Expect)>>,
    term_sent: AtomicBool,
    stop: AtomicBool,
    requests: AtomicU64,
    expected_failures: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn username(r: &Value) -> Option<&str> {
    (r["status"]["authenticated"] == true)
        .then(|| r["status"]["user"]["username"].as_str())
        .flatten()
}

/// One review; `Ok(username or None)` when answered, `Err` on transport failure.
async fn review(c: &Client, token: &str, audiences: &[&str]) -> Result<Option<String>, String> {
    let body = support::review_body("authentication.k8s.io/v1", token, audiences);
    let r = c
        .try_request(Method::POST, V1, &[JSON], body.to_string())
        .await
        .map_err(|e| e.to_string())?;
    if r.status != 201 {
        return Ok(Some(format!("HTTP {} {}", r.status, r.text())));
    }
    Ok(username(&r.json()).map(str::to_owned))
}

async fn mint(admin: &Client) -> Result<String, String> {
    let body = json!({"spec": {"audiences": ["vault"], "expirationSeconds": 600}});
    let r = admin
        .try_request(Method::POST, BUILDER, &[JSON], body.to_string())
        .await
        .map_err(|e| e.to_string())?;
    match r.json()["status"]["token"].as_str() {
        Some(t) if r.status == 201 => Ok(t.to_owned()),
        _ => Err(format!("mint answered {} {}", r.status, r.text())),
    }
}

/// One worker: a request every `period`, cycling through the scenarios.
#[allow(clippy::too_many_arguments)]
async fn worker(
    id: usize,
    period: Duration,
    c: Client,
    admin: Client,
    shared: Arc<Shared>,
    jwt: String,
    sa_token: String,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = id;
    while !shared.stop.load(Ordering::SeqCst) {
        tick.tick().await;
        i += 1;
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let (what, got, want): (String, Result<Option<String>, String>, Option<String>) =
            match i % 6 {
                0 => (
                    "static".into(),
                    review(&c, "soak-stable-token", &[]).await,
                    Some("soak-stable".into()),
                ),
                1 => {
                    let pick = {
                        let churn = shared.churn.lock().unwrap();
                        churn
                            .iter()
                            .filter(|(_, e)| *e != Expect::Unsettled)
                            .nth(i / 6 % 2)
                            .cloned()
                    };
                    let Some((token, expect)) = pick else {
                        continue;
                    };
                    let got = review(&c, &token, &[]).await;
                    // The driver may have started rewriting since the pick.
                    let still = shared
                        .churn
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|(t, e)| *t == token && *e == expect);
                    if !still {
                        continue;
                    }
                    let want = (expect == Expect::Yes).then(|| token.replace("-token", ""));
                    (format!("churn {token}"), got, want)
                }
                2 => (
                    "jwt".into(),
                    review(&c, &jwt, &[]).await,
                    Some("oidc:jane".into()),
                ),
                3 => (
                    "service account".into(),
                    review(&c, &sa_token, &["vault"]).await,
                    Some(SA_USER.into()),
                ),
                4 => match mint(&admin).await {
                    Ok(t) => (
                        "freshly minted".into(),
                        review(&c, &t, &["vault"]).await,
                        Some(SA_USER.into()),
                    ),
                    Err(e) => ("mint".into(), Err(e), None),
                },
                _ => (
                    "unknown".into(),
                    review(&c, &format!("unknown-{}", uuid::Uuid::new_v4()), &[]).await,
                    None,
                ),
            };
        match got {
            Ok(user) if user == want => {}
            Ok(user) => shared.fail(format!("{what}: answered {user:?}, expected {want:?}")),
            // After SIGTERM the listener closes: refused connections are the fault's own.
            Err(_) if shared.term_sent.load(Ordering::SeqCst) => {
                shared.expected_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => shared.fail(format!("{what}: {e}")),
        }
    }
}

fn soak_seconds() -> u64 {
    std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// Waits until `check` holds (polling), failing the test after 10 s.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tokens_csv(churn: &str) -> String {
    format!("soak-stable-token,soak-stable,2001\n{churn}-token,{churn},2002\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_faults() {
    let seconds = soak_seconds();
    let total = Duration::from_secs(seconds);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("soak CA");
    let issuer = Issuer::start(&ca).await;
    let ca_yaml: String = ca.pem.lines().map(|l| format!("      {l}\n")).collect();
    std::fs::write(
        dir.path().join("authn.yaml"),
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n- issuer:\n    url: {}\n    audiences: [my-app]\n    certificateAuthority: |\n{ca_yaml}  claimMappings:\n    username:\n      claim: sub\n      prefix: \"oidc:\"\n",
            issuer.url
        ),
    )
    .unwrap();
    let opts = Opts {
        mint: true,
        tokens: tokens_csv("soak-churn-1"),
        reload_interval_ms: 200,
        extra_toml: "[log]\nlevel = \"debug\"\n[cache]\nmax_entries = 200\n[jwt]\nrefresh_interval_seconds = 1\nmin_refresh_interval_seconds = 0\n[[verifiers]]\ntype = \"authentication_config\"\nfile = \"authn.yaml\"\n".into(),
        ..Opts::default()
    };
    let (config, caller, tokens_path) = support::write_setup(dir.path(), &ca, &opts);
    let log_path = dir.path().join("tokenhook.log");
    let mut child = tokio::process::Command::new(support::dev::BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(&log_path).unwrap())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "serving TokenReviews over TLS")
            .and_then(|v| v["addr"].as_str()?.parse::<std::net::SocketAddr>().ok());
        if let Some(a) = found {
            break a;
        }
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "tokenhook did not start ({exited:?}): {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let c = Client::new(addr, &ca.pem, Some(&caller));
    let admin = Client::new(addr, &ca.pem, Some(&ca.client("tokenhook-admin")));
    let jwt = issuer.sign("k1", &issuer.claims(json!({"exp": 4_000_000_000u64})));
    let sa_token = mint(&admin).await.unwrap();
    secrets::late_secret(&sa_token);
    let kid_of = |t: &str| -> String {
        let h = t.split('.').next().unwrap();
        let h: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, h).unwrap(),
        )
        .unwrap();
        h["kid"].as_str().unwrap().to_owned()
    };
    let first_kid = kid_of(&sa_token);

    let shared = Arc::new(Shared {
        churn: Mutex::new(vec![
            ("soak-churn-1-token".into(), Expect::Yes),
            ("soak-churn-0-token".into(), Expect::No),
        ]),
        term_sent: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        expected_failures: AtomicU64::new(0),
        failures: Mutex::new(Vec::new()),
    });
    // Six workers at 25 requests/s each: a steady 150/s.
    let workers: Vec<_> = (0..6)
        .map(|id| {
            tokio::spawn(worker(
                id,
                Duration::from_millis(40),
                c.clone(),
                admin.clone(),
                shared.clone(),
                jwt.clone(),
                sa_token.clone(),
            ))
        })
        .collect();

    let started = Instant::now();
    let at = |fraction: f64| started + total.mul_f64(fraction);
    let sleep_until = |t: Instant| tokio::time::sleep_until(t.into());

    sleep_until(at(0.2)).await;
    let steady_rss = rss_kib(pid);

    // Serving certificate: a new one from the same CA; new connections get it.
    let fresh = ca.server();
    support::key_secrets(&fresh.key);
    replace_file(&dir.path().join("server.key"), &fresh.key);
    replace_file(&dir.path().join("server.crt"), &fresh.cert);
    let want = rustls::pki_types::pem::PemObject::from_pem_slice(fresh.cert.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    until("the new serving certificate", || {
        let c = c.clone();
        let want = want.clone();
        async move {
            let Ok(tls) = c.connect().await else {
                return false;
            };
            tls.get_ref()
                .1
                .peer_certificates()
                .and_then(|p| p.first())
                .is_some_and(|p| p.as_ref() == want.as_slice())
        }
    })
    .await;

    // Token file: soak-churn-1 leaves, soak-churn-2 arrives.
    sleep_until(at(0.3)).await;
    {
        let mut churn = shared.churn.lock().unwrap();
        churn.retain(|(t, _)| t != "soak-churn-0-token");
        for e in churn.iter_mut() {
            e.1 = Expect::Unsettled;
        }
        churn.push(("soak-churn-2-token".into(), Expect::Unsettled));
    }
    replace_file(&tokens_path, &tokens_csv("soak-churn-2"));
    until("the rewritten token file", || {
        let c = c.clone();
        async move {
            review(&c, "soak-churn-2-token", &[]).await == Ok(Some("soak-churn-2".into()))
                && review(&c, "soak-churn-1-token", &[]).await == Ok(None)
        }
    })
    .await;
    *shared.churn.lock().unwrap() = vec![
        ("soak-churn-1-token".into(), Expect::No),
        ("soak-churn-2-token".into(), Expect::Yes),
    ];

    // The JWT issuer goes away (connections refused); its keys stay in use.
    sleep_until(at(0.4)).await;
    issuer.stop();

    // Signing keys: the current key becomes verify-only, a new one signs.
    sleep_until(at(0.5)).await;
    let old = openssl::pkey::PKey::private_key_from_pem(
        &std::fs::read(dir.path().join("sa.key")).unwrap(),
    )
    .unwrap();
    replace_file(
        &dir.path().join("old.pub"),
        &String::from_utf8(old.public_key_to_pem().unwrap()).unwrap(),
    );
    let new_key = String::from_utf8(
        tokenhook::mint::keys::generate_pem(tokenhook::mint::keys::Alg::ES256).unwrap(),
    )
    .unwrap();
    support::key_secrets(&new_key);
    replace_file(&dir.path().join("sa.key"), &new_key);
    until("tokens signed by the new key", || {
        let admin = admin.clone();
        let first_kid = first_kid.clone();
        async move {
            mint(&admin).await.is_ok_and(|t| {
                secrets::late_secret(&t);
                kid_of(&t) != first_kid
            })
        }
    })
    .await;

    // The issuer comes back; SIGHUP makes every source re-check at once.
    sleep_until(at(0.6)).await;
    issuer.restart().await;
    sleep_until(at(0.7)).await;
    support::dev::signal_pid(pid, "-HUP");

    sleep_until(at(0.95)).await;
    let end_rss = rss_kib(pid);
    let metrics = c.get("/metrics").await.text();
    let metric = |name: &str, selector: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && selector.split(',').all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };

    // SIGTERM with a request in flight: its body arrives after the signal, and it is
    // answered before the process exits.
    sleep_until(at(1.0)).await;
    let body = serde_json::to_vec(&support::review_body(
        "authentication.k8s.io/v1",
        "soak-stable-token",
        &[],
    ))
    .unwrap();
    let half = body.len() / 2;
    let mut slow = c.partial_review(&body, half).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    shared.term_sent.store(true, Ordering::SeqCst);
    support::dev::signal_pid(pid, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow.write_all(&body[half..]).await.unwrap();
    slow.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("tokenhook did not exit after SIGTERM")
        .unwrap();
    shared.stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    let requests = shared.requests.load(Ordering::SeqCst);
    let failures = shared.failures.lock().unwrap().clone();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "soak: {seconds} s, {requests} requests ({:.0}/s), {} failures, {} refused after SIGTERM, RSS {steady_rss} KiB at 20% -> {end_rss} KiB at 95% ({:+.1}%)",
        requests as f64 / elapsed,
        failures.len(),
        shared.expected_failures.load(Ordering::SeqCst),
        (end_rss as f64 / steady_rss as f64 - 1.0) * 100.0
    );
    assert!(failures.is_empty(), "failed or wrong: {failures:#?}");
    assert!(
        requests as f64 >= 150.0 * seconds as f64 * 0.5,
        "the load did not run: {requests} requests"
    );
    assert!(exit.success(), "exit status {exit}");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains(r#""username":"soak-stable""#), "{answer}");
    assert!(
        end_rss as f64 <= steady_rss as f64 * 1.10,
        "memory grew: {steady_rss} KiB -> {end_rss} KiB"
    );
    // Every fault was seen by the server, and survived.
    for (source, min) in [("tls", 1.0), ("static_tokens", 1.0), ("signing_keys", 1.0)] {
        assert!(
            metric(
                "tokenhook_reloads_total",
                &format!("source=\"{source}\",result=\"success\"")
            ) >= min,
            "no successful {source} reload"
        );
    }
    assert!(metric("tokenhook_jwks_refreshes_total", "result=\"failure\"") >= 1.0);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("draining connections"), "no drain in the log");
    // The binary's own debug log leaks nothing either.
    secrets::observe(&log);
    secrets::check();
}
