//! A real OIDC issuer on loopback: HTTPS discovery and JWKS served by hyper, tokens signed by the `jsonwebtoken` crate (not tokenhook's code).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use openssl::pkey::PKey;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use super::Ca;

struct State {
    /// kid -> (algorithm, encoding key, public JWK)
    keys: Vec<(
        String,
        jsonwebtoken::Algorithm,
        jsonwebtoken::EncodingKey,
        Value,
    )>,
}

/// The running issuer.
pub struct Issuer {
    pub url: String,
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    down: Arc<AtomicBool>,
    pub jwks_hits: Arc<AtomicUsize>,
    task: Mutex<tokio::task::JoinHandle<()>>,
    shared: Shared,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.lock().unwrap().abort();
    }
}

/// What every connection of the issuer needs.
#[derive(Clone)]
struct Shared {
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<Mutex<State>>,
    down: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    url: String,
}

/// Accepts on `listener`; aborting the returned task closes the listener and every
/// connection (they live in its JoinSet), as a stopped process would.
fn serve(listener: tokio::net::TcpListener, shared: Shared) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            while conns.try_join_next().is_some() {}
            let Shared {
                acceptor,
                state: st,
                down: dn,
                hits,
                url: u,
            } = shared.clone();
            conns.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (st, dn, hits, u) = (st.clone(), dn.clone(), hits.clone(), u.clone());
                    async move {
                        let (code, body) = if dn.load(Ordering::SeqCst) {
                            (503, json!({"error": "down"}))
                        } else {
                            match req.uri().path() {
                                "/.well-known/openid-configuration" => (
                                    200,
                                    json!({"issuer": u, "jwks_uri": format!("{u}/jwks"),
                                           "id_token_signing_alg_values_supported": ["RS256"]}),
                                ),
                                "/jwks" => {
                                    hits.fetch_add(1, Ordering::SeqCst);
                                    let keys: Vec<Value> = st
                                        .lock()
                                        .unwrap()
                                        .keys
                                        .iter()
                                        .map(|k| k.3.clone())
                                        .collect();
                                    (200, json!({ "keys": keys }))
                                }
                                _ => (404, json!({})),
                            }
                        };
                        let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
                        *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    })
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Generates a key pair for `alg`: the jsonwebtoken signing key and a public JWK built
/// here from openssl's key components.
pub fn keypair(
    alg: &str,
    kid: &str,
) -> (jsonwebtoken::Algorithm, jsonwebtoken::EncodingKey, Value) {
    use jsonwebtoken::{Algorithm, EncodingKey};
    match alg {
        "RS256" | "PS256" | "RS384" | "RS512" => {
            let k = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
            let rsa = k.rsa().unwrap();
            let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": alg,
                             "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
            let a = match alg {
                "PS256" => Algorithm::PS256,
                "RS384" => Algorithm::RS384,
                "RS512" => Algorithm::RS512,
                _ => Algorithm::RS256,
            };
            (
                a,
                EncodingKey::from_rsa_pem(&k.private_key_to_pem_pkcs8().unwrap()).unwrap(),
                jwk,
            )
        }
        "ES256" => {
            let group =
                openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
            let ec = openssl::ec::EcKey::generate(&group).unwrap();
            let mut ctx = openssl::bn::BigNumContext::new().unwrap();
            let (mut x, mut y) = (
                openssl::bn::BigNum::new().unwrap(),
                openssl::bn::BigNum::new().unwrap(),
            );
            ec.public_key()
                .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
                .unwrap();
            let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                             "x": b64(&x.to_vec_padded(32).unwrap()), "y": b64(&y.to_vec_padded(32).unwrap())});
            let k = PKey::from_ec_key(ec).unwrap();
            (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(&k.private_key_to_pem_pkcs8().unwrap()).unwrap(),
                jwk,
            )
        }
        "EdDSA" => {
            let k = PKey::generate_ed25519().unwrap();
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA",
                             "x": b64(&k.raw_public_key().unwrap())});
            (
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(&k.private_key_to_pem_pkcs8().unwrap()).unwrap(),
                jwk,
            )
        }
        other => panic!("no test key for {other}"),
    }
}

impl Issuer {
    /// Starts an issuer whose TLS certificate is signed by `ca`, with one RS256 key `k1`.
    pub async fn start(ca: &Ca) -> Issuer {
        let leaf = ca.server();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
                .map(|c| c.unwrap())
                .collect(),
            PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("https://127.0.0.1:{}", addr.port());
        let state = Arc::new(Mutex::new(State { keys: Vec::new() }));
        let down = Arc::new(AtomicBool::new(false));
        let jwks_hits = Arc::new(AtomicUsize::new(0));
        let shared = Shared {
            acceptor,
            state: state.clone(),
            down: down.clone(),
            hits: jwks_hits.clone(),
            url: url.clone(),
        };
        let task = Mutex::new(serve(listener, shared.clone()));
        let issuer = Issuer {
            url,
            addr,
            state,
            down,
            jwks_hits,
            task,
            shared,
        };
        issuer.add_key("RS256", "k1");
        issuer
    }

    /// Stops listening and drops every connection (connections are then refused).
    pub fn stop(&self) {
        self.task.lock().unwrap().abort();
    }

    /// Listens again on the same address after [`Issuer::stop`].
    pub async fn restart(&self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                // The aborted task may not have released the port yet.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        *self.task.lock().unwrap() = serve(listener, self.shared.clone());
    }

    /// Publishes a new key.
    pub fn add_key(&self, alg: &str, kid: &str) {
        let (a, k, jwk) = keypair(alg, kid);
        self.state
            .lock()
            .unwrap()
            .keys
            .push((kid.to_owned(), a, k, jwk));
    }

    /// Withdraws a key from the JWKS (its private half stays usable for signing).
    pub fn unpublish(&self, kid: &str) -> (jsonwebtoken::Algorithm, jsonwebtoken::EncodingKey) {
        let mut st = self.state.lock().unwrap();
        let i = st.keys.iter().position(|k| k.0 == kid).unwrap();
        let (_, a, k, _) = st.keys.remove(i);
        (a, k)
    }

    /// The public JWK of `kid`.
    pub fn jwk(&self, kid: &str) -> Value {
        self.state
            .lock()
            .unwrap()
            .keys
            .iter()
            .find(|k| k.0 == kid)
            .unwrap()
            .3
            .clone()
    }

    /// Makes every endpoint answer 503 (or work again).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Signs `claims` with key `kid` (header `{alg, kid, typ: JWT}`).
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let st = self.state.lock().unwrap();
        let (_, a, k, _) = st.keys.iter().find(|k| k.0 == kid).unwrap();
        let mut h = jsonwebtoken::Header::new(*a);
        h.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&h, claims, k).unwrap()
    }

    /// Signs with a caller-made header (for header attacks).
    pub fn sign_with_header(&self, h: jsonwebtoken::Header, claims: &Value) -> String {
        let st = self.state.lock().unwrap();
        let kid = h.kid.clone().unwrap_or_default();
        let (_, _, k, _) = st.keys.iter().find(|k| k.0 == kid).unwrap();
        jsonwebtoken::encode(&h, claims, k).unwrap()
    }

    /// Signs `claims` under an arbitrary JSON `header` with key `kid` (for headers that
    /// jsonwebtoken's `Header` cannot carry, such as `crit`).
    pub fn sign_raw(&self, kid: &str, header: &Value, claims: &Value) -> String {
        use base64::Engine;
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let st = self.state.lock().unwrap();
        let (_, a, k, _) = st.keys.iter().find(|k| k.0 == kid).unwrap();
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), k, *a).unwrap();
        format!("{input}.{sig}")
    }

    /// Claims valid now for audience `my-app`, merged with `extra`.
    pub fn claims(&self, extra: Value) -> Value {
        let now = tokenhook::clock::Clock::System.now().0;
        let mut c = json!({"iss": self.url, "aud": "my-app", "sub": "jane", "iat": now, "nbf": now, "exp": now + 600});
        if let (Some(m), Value::Object(e)) = (c.as_object_mut(), extra) {
            for (k, v) in e {
                m.insert(k, v);
            }
        }
        c
    }
}
