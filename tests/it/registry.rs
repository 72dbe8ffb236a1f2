//! The `kubernetes` registry source against a real kube-apiserver: minting reads the cluster's ServiceAccounts, Pods and Nodes, reviews re-check them from the watch caches, and a deleted pod's tokens stop working.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::support::k8s::{self, ApiServer};
use crate::support::{Client, Opts, TestServer};

const NS: &str = "default";
const TOKEN_PATH: &str = "/api/v1/namespaces/default/serviceaccounts/builder/token";

/// `[mint]` reading the cluster through `kubeconfig` (the admin certificate may mint anything),
/// and the `service_account` verifier ahead of the static one.
fn mint_toml(kubeconfig: &std::path::Path) -> String {
    format!(
        r#"
[mint]
issuer = "https://tokenhook.test"
signing_key_file = "sa.key"

[mint.registry]
source = "kubernetes"
kubeconfig = {kubeconfig:?}

[[mint.policy]]
users = ["tokenhook-admin"]
namespaces = ["*"]
service_accounts = ["*"]
audiences = ["*"]

[[verifiers]]
type = "service_account"
"#
    )
}

/// kubectl's client-side validation reads the apiserver's OpenAPI, which this v1.36 build
/// serves in a form kubectl cannot always read (503): validation is left to the server.
fn apply(api: &ApiServer, manifest: &Value) {
    k8s::ok(
        &api.kubectl_stdin(
            &["apply", "--validate=false", "-f", "-"],
            &manifest.to_string(),
        ),
        "kubectl apply",
    );
}

fn uid(api: &ApiServer, what: &[&str]) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "jsonpath={.metadata.uid}"]);
    let uid = k8s::ok(&api.kubectl(&args), "kubectl get uid");
    assert!(!uid.is_empty(), "{what:?} has a uid");
    uid
}

/// A pod that stays Pending (no kubelet): enough to exist, with a uid, an account and a node.
fn pod(name: &str, account: &str, node: Option<&str>) -> Value {
    let mut spec = json!({
        "serviceAccountName": account,
        "automountServiceAccountToken": false,
        "containers": [{"name": "c", "image": "registry.invalid/none:1"}],
    });
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

fn claims(token: &str) -> Value {
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

async fn authenticated(c: &Client, token: &str) -> (bool, Value) {
    let r = c.review(token, &["vault"]).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let status = r.json()["status"].clone();
    (status["authenticated"] == true, status)
}

/// Polls `f` every 20 ms until it is true or `bound` has passed; returns the last answer.
async fn within<F, Fut>(bound: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_pod_bound_tokens_follow_the_cluster() {
    let Some(bins) = k8s::binaries() else {
        return;
    };
    let api = tokio::task::spawn_blocking(move || ApiServer::start(&bins, &[]))
        .await
        .unwrap();
    apply(
        &api,
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder", "namespace": NS}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "other", "namespace": NS}},
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}},
        ]}),
    );
    apply(&api, &pod("p1", "builder", Some("n1")));
    apply(&api, &pod("elsewhere", "other", None));
    let sa_uid = uid(&api, &["serviceaccount", "builder", "-n", NS]);
    let node_uid = uid(&api, &["node", "n1"]);
    let pod_uid = uid(&api, &["pod", "p1", "-n", NS]);

    // The signing key mint_toml names, written where the server's configuration will be.
    let dir = tempfile::tempdir().unwrap();
    let key = tokenhook::mint::keys::generate_pem(tokenhook::mint::keys::Alg::RS256).unwrap();
    crate::support::key_secrets(std::str::from_utf8(&key).unwrap());
    std::fs::write(dir.path().join("sa.key"), &key).unwrap();
    let s = TestServer::start_with(
        dir,
        crate::support::Ca::new("test CA"),
        Opts {
            extra_toml: mint_toml(&api.kubeconfig),
            ..Opts::default()
        },
    )
    .await;
    let c = s.client();
    let admin = Client::new(s.addr, &s.ca.pem, Some(&s.ca.client("tokenhook-admin")));
    // Readiness waits for the four initial lists.
    assert!(
        within(Duration::from_secs(60), || async {
            c.get("/readyz").await.status == 200
        })
        .await,
        "tokenhook ready: {}",
        c.get("/readyz?verbose").await.text()
    );
    let verbose = c.get("/readyz?verbose").await.text();
    for kind in ["nodes", "pods", "secrets", "serviceaccounts"] {
        assert!(
            verbose.contains(&format!("[+]registry-{kind} ok")),
            "{verbose}"
        );
        assert_eq!(
            s.metric(
                "tokenhook_registry_watch_up",
                &format!("resource=\"{kind}\"")
            )
            .await,
            1.0
        );
    }

    let mint = |spec: Value| {
        let admin = &admin;
        async move { admin.post_json(TOKEN_PATH, &json!({"spec": spec})).await }
    };
    let bound = |name: &str, uid: &str| {
        json!({"audiences": ["vault"], "boundObjectRef":
               {"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid}})
    };

    // kube's TokenRequest rules against the cluster's objects.
    let r = mint(bound("p1", "not-the-uid")).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = mint(bound("elsewhere", "")).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = mint(bound("nope", "")).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = admin
        .post_json(
            "/api/v1/namespaces/default/serviceaccounts/ghost/token",
            &json!({"spec": {"audiences": ["vault"]}}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());

    let r = mint(bound("p1", &pod_uid)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["metadata"]["uid"], sa_uid.as_str());
    let token = r.json()["status"]["token"].as_str().unwrap().to_owned();
    let k = &claims(&token)["kubernetes.io"];
    assert_eq!(
        *k,
        json!({"namespace": NS,
               "serviceaccount": {"name": "builder", "uid": sa_uid},
               "pod": {"name": "p1", "uid": pod_uid},
               "node": {"name": "n1", "uid": node_uid}})
    );

    let (yes, status) = authenticated(&c, &token).await;
    assert!(yes, "{status}");
    assert_eq!(
        status["user"]["username"],
        "system:serviceaccount:default:builder"
    );
    assert_eq!(status["user"]["uid"], sa_uid.as_str());
    let extra = &status["user"]["extra"];
    assert_eq!(
        extra["authentication.kubernetes.io/pod-name"],
        json!(["p1"])
    );
    assert_eq!(
        extra["authentication.kubernetes.io/pod-uid"],
        json!([pod_uid])
    );
    assert_eq!(
        extra["authentication.kubernetes.io/node-name"],
        json!(["n1"])
    );
    assert_eq!(
        extra["authentication.kubernetes.io/node-uid"],
        json!([node_uid])
    );
    // Now cached: the next "yes" is a hit.
    assert!(authenticated(&c, &token).await.0);

    // Deleted (at once: a pod on a node without a kubelet only goes with --force): the token
    // fails within one second, cached verdict or not.
    k8s::ok(
        &api.kubectl(&[
            "delete",
            "pod",
            "p1",
            "-n",
            NS,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ]),
        "kubectl delete pod",
    );
    let gone = within(Duration::from_secs(1), || async {
        !authenticated(&c, &token).await.0
    })
    .await;
    assert!(
        gone,
        "the deleted pod's token still authenticates after 1 s"
    );

    // A new pod with the same name has another uid: the old token stays refused, while a
    // token for the new pod is minted and verifies.
    apply(&api, &pod("p1", "builder", Some("n1")));
    let new_uid = uid(&api, &["pod", "p1", "-n", NS]);
    assert_ne!(new_uid, pod_uid);
    let deadline = Instant::now() + Duration::from_secs(30);
    let fresh = loop {
        let r = mint(bound("p1", &new_uid)).await;
        if r.status == 201 {
            break r.json()["status"]["token"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the recreated pod is seen: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!authenticated(&c, &token).await.0, "old uid refused");
    assert!(authenticated(&c, &fresh).await.0, "new pod's token");

    // The account itself: deleting it voids every token of it.
    let unbound = mint(json!({"audiences": ["vault"]})).await;
    assert_eq!(unbound.status, 201, "{}", unbound.text());
    let unbound = unbound.json()["status"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(authenticated(&c, &unbound).await.0);
    k8s::ok(
        &api.kubectl(&[
            "delete",
            "serviceaccount",
            "builder",
            "-n",
            NS,
            "--wait=false",
        ]),
        "kubectl delete serviceaccount",
    );
    assert!(
        within(Duration::from_secs(1), || async {
            !authenticated(&c, &unbound).await.0
        })
        .await,
        "the deleted account's token still authenticates after 1 s"
    );
}
