//! Hostile input against the real server: bodies, headers, HTTP/2 abuse, TLS oddities, idle connections. Each gets a `Status` or a closed connection, never a panic or a "yes", and others keep being served meanwhile.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Client, Opts, Resp, TestServer};

const V1: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const BUILDER: &str = "/api/v1/namespaces/ci/serviceaccounts/builder/token";
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// The server still answers an honest review correctly.
async fn still_serving(s: &TestServer) {
    let r = s.client().review("bob-token", &[]).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["status"]["authenticated"], true);
}

/// `r` is a `Status` with `code`.
fn status(r: &Resp, code: u16, what: &str) -> Value {
    assert_eq!(r.status.as_u16(), code, "{what}: {}", r.text());
    let v = r.json();
    assert_eq!(v["kind"], "Status", "{what}");
    assert_eq!(v["code"], code, "{what}");
    v
}

/// `r` is an answered review that says no.
fn plain_no(r: &Resp, what: &str) {
    assert_eq!(r.status, 201, "{what}: {}", r.text());
    assert_eq!(
        r.json()["status"],
        json!({"user": {}}),
        "{what}: {}",
        r.text()
    );
}

async fn post(c: &Client, path: &str, content_type: &str, body: impl Into<Bytes>) -> Resp {
    c.request(Method::POST, path, &[("content-type", content_type)], body)
        .await
}

#[tokio::test]
async fn hostile_json_bodies() {
    let s = TestServer::start(Opts::default()).await;
    let c = s.client();
    let head = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"bob-token"}"#;
    let review = |token: Value| {
        serde_json::to_vec(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})).unwrap()
    };

    // Nesting in an unknown field is skipped without recursion (no stack to exhaust), so
    // even 100,000 levels cost one pass; in a known field the decoder's depth limit holds.
    let deep = format!(
        "{head},\"x\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = post(&c, V1, "application/json", deep).await;
    assert_eq!(r.json()["status"]["authenticated"], true, "{}", r.text());
    assert_eq!(r.warnings(), [r#"299 - "unknown field \"x\"""#]);
    let deep = format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"bob-token","audiences":{}{}}}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    status(
        &post(&c, V1, "application/json", deep).await,
        400,
        "deep audiences",
    );
    // Nesting within the limit in an unknown field is ignored (with a warning), as kube does.
    let shallow = format!("{head},\"x\":{}{}}}", "[".repeat(64), "]".repeat(64));
    let r = post(&c, V1, "application/json", shallow).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["status"]["authenticated"], true);
    assert_eq!(r.warnings(), [r#"299 - "unknown field \"x\"""#]);

    // Numbers: out of range where a string belongs, and huge in an ignored field.
    for (what, body) in [
        (
            "huge float audience",
            r#"{"apiVersion":"authentication.k8s.io/v1","spec":{"token":"bob-token","audiences":[1e999999]}}"#.to_string(),
        ),
        (
            "huge token number",
            format!(
                r#"{{"apiVersion":"authentication.k8s.io/v1","spec":{{"token":{}}}}}"#,
                "9".repeat(10_000)
            ),
        ),
        ("byte order mark", format!("\u{feff}{head}}}")),
        (
            "lone surrogate",
            r#"{"apiVersion":"authentication.k8s.io/v1","spec":{"token":"bob\ud800"}}"#.into(),
        ),
    ] {
        status(&post(&c, V1, "application/json", body).await, 400, what);
    }
    let r = post(
        &c,
        V1,
        "application/json",
        format!("{head},\"x\":{}}}", "9".repeat(10_000)),
    )
    .await;
    assert_eq!(r.json()["status"]["authenticated"], true, "{}", r.text());

    // Raw bytes that are not UTF-8 inside the token string.
    let mut bad =
        br#"{"apiVersion":"authentication.k8s.io/v1","spec":{"token":"bob-token"#.to_vec();
    bad.extend([0xff, 0xfe, b'"', b'}', b'}']);
    status(
        &post(&c, V1, "application/json", bad).await,
        400,
        "invalid UTF-8",
    );

    // Odd tokens are answered "no", never matched against a neighbour.
    for (what, token) in [
        ("NUL suffix", json!("bob-token\u{0}")),
        ("NUL only", json!("\u{0}")),
        ("NUL inside", json!("bob\u{0}-token")),
        ("one MiB", json!("b".repeat(1 << 20))),
        ("one MiB of dots", json!(".".repeat(1 << 20))),
        ("control characters", json!("bob-token\r\n\t")),
        ("spaces around", json!(" bob-token ")),
        ("comma-joined", json!("bob-token,alice-token")),
    ] {
        plain_no(&post(&c, V1, "application/json", review(token)).await, what);
    }

    // Every truncation of a valid body is a 400 Status, never an answer.
    let full = review(json!("bob-token"));
    for n in 0..full.len() {
        let r = post(&c, V1, "application/json", full[..n].to_vec()).await;
        status(&r, 400, &format!("first {n} bytes"));
    }
    still_serving(&s).await;
}

#[tokio::test]
async fn hostile_token_requests() {
    use k8s_pb::api::authentication::v1 as pb;
    let s = TestServer::start(Opts {
        mint: true,
        ..Opts::default()
    })
    .await;
    let admin = Client::new(s.addr, &s.ca.pem, Some(&s.ca.client("tokenhook-admin")));
    let spec = |seconds: &str| {
        format!(
            r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{{"audiences":["vault"],"expirationSeconds":{seconds}}}}}"#
        )
    };
    for (seconds, code) in [
        ("1e400", 400),
        ("99999999999999999999999999", 400),
        ("1.5", 400),
        ("\"600\"", 400),
        ("-1", 422),
        ("0", 422),
    ] {
        let r = post(&admin, BUILDER, "application/json", spec(seconds)).await;
        status(&r, code, seconds);
    }

    // Protobuf: kubectl's body, then broken ones.
    let good = tokenhook::k8s::protobuf::wrap(
        "authentication.k8s.io/v1",
        "TokenRequest",
        &pb::TokenRequest {
            metadata: Some(Default::default()),
            spec: Some(pb::TokenRequestSpec {
                audiences: vec!["vault".into()],
                expiration_seconds: Some(900),
                bound_object_ref: None,
            }),
            status: None,
        },
    );
    let r = post(&admin, BUILDER, PROTOBUF, good.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // An empty envelope is an empty TokenRequest, defaulted like `{}` in JSON (as kube does).
    let r = post(&admin, BUILDER, PROTOBUF, &b"k8s\0"[..]).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["spec"]["expirationSeconds"], 3600);
    let magic = b"k8s\0".to_vec();
    let with = |tail: &[u8]| {
        let mut v = magic.clone();
        v.extend_from_slice(tail);
        v
    };
    let pod = tokenhook::k8s::protobuf::wrap("v1", "Pod", &pb::TokenRequest::default());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("wrong magic", b"k9s\0\x0a\x00".to_vec()),
        ("garbage", with(&[0xff; 64])),
        (
            "varint overflow",
            with(&[
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ]),
        ),
        (
            "length past the end",
            with(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]),
        ),
        ("nested groups", with(&[0x0b; 20_000])),
        ("wrong kind", pod),
        ("raw is garbage", {
            let mut v = good.clone();
            let n = v.len();
            for b in v.iter_mut().skip(n / 2) {
                *b = 0xff;
            }
            v
        }),
    ];
    for (what, body) in cases {
        let r = post(&admin, BUILDER, PROTOBUF, body).await;
        assert!(
            r.status == 400 || r.status == 422,
            "{what}: {} {}",
            r.status,
            r.text()
        );
        assert_eq!(r.json()["kind"], "Status", "{what}");
    }
    // Every truncation: a Status, or (when only trailing optional fields were cut) a token.
    for n in 0..good.len() {
        let r = post(&admin, BUILDER, PROTOBUF, good[..n].to_vec()).await;
        let v = r.json();
        match r.status.as_u16() {
            201 => assert!(v["status"]["token"].is_string(), "first {n} bytes"),
            400 | 415 | 422 => assert_eq!(v["kind"], "Status", "first {n} bytes"),
            other => panic!("first {n} bytes: {other} {}", r.text()),
        }
    }
    // SelfSubjectReview decodes protobuf too.
    let r = post(
        &s.client(),
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        PROTOBUF,
        with(&[0xff; 16]),
    )
    .await;
    status(&r, 400, "selfsubjectreview garbage");
    still_serving(&s).await;
}

/// A request body of `total` bytes sent in 64 KiB chunks with no length announced (HTTP/1.1
/// chunked encoding; HTTP/2 without content-length), on `c`'s protocol.
async fn unannounced_body(c: &Client, total: usize) -> Resp {
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(4);
    tokio::spawn(async move {
        let mut left = total;
        while left > 0 {
            let n = left.min(64 * 1024);
            if tx.send_data(Bytes::from(vec![b'a'; n])).await.is_err() {
                return;
            }
            left -= n;
        }
    });
    let req = Request::post(format!("https://localhost{V1}"))
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    c.send(req).await.unwrap()
}

/// Writes `request` on a fresh HTTP/1.1 TLS connection and reads until the server closes it.
async fn raw_h1(c: &Client, request: &[u8]) -> String {
    let mut tls = c.connect().await.unwrap();
    let _ = tls.write_all(request).await;
    let _ = tls.flush().await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn hostile_framing_and_headers() {
    let s = TestServer::start(Opts {
        server_toml: "body_read_timeout_seconds = 2\n".into(),
        ..Opts::default()
    })
    .await;
    let c = s.client();
    // Over the limit with no Content-Length: chunked (HTTP/1.1) and unannounced (HTTP/2).
    for h2 in [false, true] {
        let client = if h2 { c.http2() } else { c.clone() };
        let r = unannounced_body(&client, 4 << 20).await;
        let v = status(&r, 413, if h2 { "h2 unannounced" } else { "chunked" });
        assert_eq!(v["message"], "Request entity too large: limit is 3145728");
    }
    // A Content-Length over the limit is refused before any of the body is read.
    let got = raw_h1(
        &c,
        format!("POST {V1} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{{").as_bytes(),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(got.contains(r#""reason":"RequestEntityTooLarge""#), "{got}");
    // A malformed chunk size is a 400, not a hang.
    let got = raw_h1(
        &c,
        format!("POST {V1} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").as_bytes(),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    // Both Content-Length and chunked (request smuggling shape): refused.
    let got = raw_h1(
        &c,
        format!("POST {V1} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    // A body that stops short of its Content-Length is cut by the body deadline.
    let started = Instant::now();
    let got = raw_h1(
        &c,
        format!("POST {V1} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"spec\"").as_bytes(),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains(r#""reason":"Timeout""#), "{got}");
    assert!(started.elapsed() < Duration::from_secs(15));
    // Too many headers, and one enormous header: 431 and the connection closed.
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let got = raw_h1(
        &c,
        format!("GET /livez HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    let huge = "v".repeat(1 << 20);
    let got = raw_h1(
        &c,
        format!("GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 431"), "{got}");
    // Not HTTP at all, inside TLS.
    let got = raw_h1(&c, b"\x00\x01\x02 garbage\r\n\r\n").await;
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 400"), "{got}");
    still_serving(&s).await;
}

/// Just enough HTTP/2 framing (RFC 9113) to misbehave on purpose.
mod h2raw {
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
    pub const END_HEADERS: u8 = 0x4;
    pub const CANCEL: u32 = 0x8;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
        f.extend((stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Connection preface, empty SETTINGS, and the ACK of the server's SETTINGS.
    pub fn preface() -> Vec<u8> {
        let mut v = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        v.extend(frame(SETTINGS, 0, 0, &[]));
        v.extend(frame(SETTINGS, 1, 0, &[]));
        v
    }

    /// HPACK for `POST path` with a JSON content type, literals without indexing only.
    pub fn post(path: &str) -> Vec<u8> {
        let mut h = vec![0x83, 0x87]; // :method POST, :scheme https
        for (index, value) in [(&[0x04][..], path), (&[0x01][..], "localhost")] {
            h.extend_from_slice(index);
            h.push(value.len() as u8);
            h.extend_from_slice(value.as_bytes());
        }
        h.extend_from_slice(&[0x0f, 0x10, 16]); // content-type (static 31)
        h.extend_from_slice(b"application/json");
        h
    }

    /// What the server sent back on one connection.
    #[derive(Debug, Default)]
    pub struct Seen {
        pub goaway: Option<u32>,
        pub resets: Vec<u32>,
        pub headers: usize,
        pub closed: bool,
    }

    /// Reads frames until the server closes the connection or `limit` passes.
    pub async fn read_all(
        mut r: impl tokio::io::AsyncRead + Unpin,
        limit: std::time::Duration,
    ) -> Seen {
        use tokio::io::AsyncReadExt;
        let mut seen = Seen::default();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut head = [0u8; 9];
            match tokio::time::timeout_at(deadline, r.read_exact(&mut head)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => {
                    seen.closed = true;
                    return seen;
                }
                Err(_) => return seen,
            }
            let n =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; n];
            match tokio::time::timeout_at(deadline, r.read_exact(&mut payload)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => {
                    seen.closed = true;
                    return seen;
                }
                Err(_) => return seen,
            }
            let code = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            match head[3] {
                GOAWAY => seen.goaway = code(4),
                RST_STREAM => seen.resets.extend(code(0)),
                HEADERS => seen.headers += 1,
                _ => {}
            }
        }
    }
}

/// Opens an HTTP/2 TLS connection as the allowed caller, sends `bytes` (stopping quietly if
/// the server closes first) and returns what came back.
async fn h2_abuse(s: &TestServer, bytes: Vec<u8>) -> h2raw::Seen {
    let tls = Client::with_alpn(s.addr, &s.ca.pem, Some(&s.caller), true)
        .connect()
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (r, mut w) = tokio::io::split(tls);
    let reader = tokio::spawn(h2raw::read_all(r, Duration::from_secs(20)));
    for chunk in bytes.chunks(16 * 1024) {
        if w.write_all(chunk).await.is_err() {
            break;
        }
    }
    let _ = w.flush().await;
    let seen = reader.await.unwrap();
    drop(w);
    seen
}

#[tokio::test]
async fn http2_rapid_reset_stream_and_continuation_floods() {
    use h2raw::*;
    let s = TestServer::start(Opts {
        server_toml: "body_read_timeout_seconds = 2\n".into(),
        ..Opts::default()
    })
    .await;
    let before = s.metric("tokenhook_http_requests_total", "").await;

    // Rapid reset (CVE-2023-44487): open and cancel 5,000 streams.
    let mut bytes = preface();
    for i in 0..5_000u32 {
        let id = 2 * i + 1;
        bytes.extend(frame(HEADERS, END_HEADERS, id, &post(V1)));
        bytes.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    let seen = h2_abuse(&s, bytes).await;
    assert_eq!(
        seen.goaway,
        Some(0xb),
        "ENHANCE_YOUR_CALM expected: {seen:?}"
    );
    assert!(seen.closed, "{seen:?}");
    still_serving(&s).await;
    // Far fewer requests reached the handlers than were opened.
    let handled = s.metric("tokenhook_http_requests_total", "").await - before;
    assert!(
        handled < 1_000.0,
        "{handled} of 5000 reset streams were handled"
    );

    // Stream flood: 2,000 requests left open (no body) on one connection; the server takes
    // its advertised 256 and refuses the rest.
    let mut bytes = preface();
    for i in 0..2_000u32 {
        bytes.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &post(V1)));
    }
    let (seen, ()) = tokio::join!(h2_abuse(&s, bytes), still_serving(&s));
    assert!(
        seen.goaway.is_some() || seen.resets.len() >= 1_000,
        "streams past the limit were not refused: {} resets, goaway {:?}",
        seen.resets.len(),
        seen.goaway
    );

    // CONTINUATION flood (CVE-2024-27316 shape): one header block that never ends.
    let mut bytes = preface();
    bytes.extend(frame(HEADERS, 0, 1, &post(V1)));
    let mut filler = Vec::new();
    for i in 0..800 {
        let name = format!("x-{i:05}");
        filler.extend_from_slice(&[0x00, name.len() as u8]);
        filler.extend_from_slice(name.as_bytes());
        filler.push(12);
        filler.extend_from_slice(b"aaaaaaaaaaaa");
    }
    for _ in 0..200 {
        bytes.extend(frame(CONTINUATION, 0, 1, &filler));
    }
    let seen = h2_abuse(&s, bytes).await;
    assert!(
        seen.closed || seen.goaway.is_some(),
        "endless CONTINUATION was not cut: {seen:?}"
    );
    assert_eq!(seen.headers, 0, "an endless header block was answered");
    still_serving(&s).await;
}

/// An OpenSSL client (independent of rustls) with knobs rustls clients do not have.
struct Ossl {
    ca: std::path::PathBuf,
    cert: String,
    key: String,
}

impl Ossl {
    fn for_server(s: &TestServer) -> Ossl {
        Ossl {
            ca: s.path("ca.crt"),
            cert: s.caller.cert.clone(),
            key: s.caller.key.clone(),
        }
    }

    /// Handshakes with `tune` applied, SNI `sni` (none when `None`), then (on success) sends
    /// `GET /livez` over HTTP/1.1 and returns the negotiated ALPN and the status line.
    fn get_livez(
        &self,
        addr: std::net::SocketAddr,
        sni: Option<&str>,
        tune: impl FnOnce(&mut openssl::ssl::SslConnectorBuilder),
    ) -> Result<(Option<Vec<u8>>, String), String> {
        use std::io::{Read, Write};
        let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
            .map_err(|e| e.to_string())?;
        b.set_ca_file(&self.ca).unwrap();
        b.set_certificate(&openssl::x509::X509::from_pem(self.cert.as_bytes()).unwrap())
            .unwrap();
        b.set_private_key(&openssl::pkey::PKey::private_key_from_pem(self.key.as_bytes()).unwrap())
            .unwrap();
        tune(&mut b);
        let mut cfg = b.build().configure().unwrap();
        cfg.set_use_server_name_indication(sni.is_some());
        cfg.set_verify_hostname(false);
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = cfg
            .connect(sni.unwrap_or("localhost"), tcp)
            .map_err(|e| e.to_string())?;
        let alpn = tls.ssl().selected_alpn_protocol().map(<[u8]>::to_vec);
        tls.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        Ok((alpn, text.lines().next().unwrap_or_default().to_owned()))
    }
}

#[tokio::test]
async fn tls_versions_sni_and_alpn() {
    use openssl::ssl::SslVersion;
    let s = TestServer::start(Opts::default()).await;
    let (o, addr) = (Ossl::for_server(&s), s.addr);
    tokio::task::spawn_blocking(move || {
        let ok = (None, "HTTP/1.1 200 OK".to_owned());
        // No SNI, an unknown SNI, no ALPN: served (the one certificate is the answer).
        assert_eq!(o.get_livez(addr, None, |_| {}), Ok(ok.clone()));
        assert_eq!(
            o.get_livez(addr, Some("evil.example"), |_| {}),
            Ok(ok.clone())
        );
        assert_eq!(o.get_livez(addr, Some("localhost"), |_| {}), Ok(ok));
        // ALPN: http/1.1 and h2 are chosen as offered; nothing in common is refused.
        let r = o.get_livez(addr, None, |b| {
            b.set_alpn_protos(b"\x02h3\x08http/1.1").unwrap()
        });
        assert_eq!(r.unwrap().0.as_deref(), Some(&b"http/1.1"[..]));
        let r = o.get_livez(addr, None, |b| b.set_alpn_protos(b"\x02h2").unwrap());
        assert_eq!(r.unwrap().0.as_deref(), Some(&b"h2"[..]));
        let e = o
            .get_livez(addr, None, |b| {
                b.set_alpn_protos(b"\x02h3\x08spdy/3.1").unwrap()
            })
            .unwrap_err();
        assert!(e.contains("no application protocol"), "{e}");
        // TLS 1.0 and 1.1: refused during the handshake.
        for v in [SslVersion::TLS1, SslVersion::TLS1_1] {
            let e = o
                .get_livez(addr, None, |b| {
                    b.set_cipher_list("DEFAULT@SECLEVEL=0").unwrap();
                    b.set_min_proto_version(Some(v)).unwrap();
                    b.set_max_proto_version(Some(v)).unwrap();
                })
                .unwrap_err();
            assert!(e.contains("alert handshake failure"), "{v:?}: {e}");
        }
        // TLS 1.2 without forward secrecy (RSA key exchange only): no shared cipher suite.
        let e = o
            .get_livez(addr, None, |b| {
                b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
                b.set_cipher_list("AES128-SHA256:AES256-SHA").unwrap();
            })
            .unwrap_err();
        assert!(e.contains("handshake failure"), "{e}");
        // TLS 1.2 with a modern suite still works.
        let r = o.get_livez(addr, None, |b| {
            b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
        });
        assert_eq!(r.unwrap().1, "HTTP/1.1 200 OK");
    })
    .await
    .unwrap();
    assert!(
        s.metric(
            "tokenhook_connections_closed_total",
            "reason=\"handshake_failed\""
        )
        .await
            >= 4.0
    );
    still_serving(&s).await;
}

#[tokio::test]
async fn idle_connections_beyond_the_limit_are_closed() {
    use h2raw::*;
    let s = TestServer::start(Opts {
        server_toml: "max_connections = 4\nidle_timeout_seconds = 1\nhandshake_timeout_seconds = 1\nheader_read_timeout_seconds = 5\n".into(),
        ..Opts::default()
    })
    .await;
    // Fill every slot: two TCP connections that never start TLS, two HTTP/2 connections
    // that never send a request.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    }
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut tls = Client::with_alpn(s.addr, &s.ca.pem, Some(&s.caller), true)
            .connect()
            .await
            .unwrap();
        tls.write_all(&preface()).await.unwrap();
        idle.push(tokio::spawn(read_all(tls, Duration::from_secs(15))));
    }
    // A real caller still gets its answer: the idle ones are cut to make room.
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(15), s.client().review("bob-token", &[]))
        .await
        .expect("a caller was locked out by idle connections");
    assert_eq!(r.json()["status"]["authenticated"], true);
    assert!(started.elapsed() < Duration::from_secs(10));
    for t in idle {
        let seen = t.await.unwrap();
        assert_eq!(
            seen.goaway,
            Some(0),
            "idle HTTP/2 gets GOAWAY(NO_ERROR): {seen:?}"
        );
        assert!(seen.closed, "{seen:?}");
    }
    for mut tcp in silent {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut b))
            .await
            .expect("a silent connection was kept open");
        assert!(matches!(n, Ok(0) | Err(_)));
    }
    assert!(
        s.metric("tokenhook_connections_closed_total", "reason=\"idle\"")
            .await
            >= 2.0
    );
    assert!(
        s.metric(
            "tokenhook_connections_closed_total",
            "reason=\"handshake_timeout\""
        )
        .await
            >= 2.0
    );
    // A request still in progress is not idle: a body dribbled for 3 s (beyond the idle
    // timeout, within the body deadline) is answered.
    let body = serde_json::to_vec(&crate::support::review_body(
        "authentication.k8s.io/v1",
        "bob-token",
        &[],
    ))
    .unwrap();
    let mut tls = s.client().partial_review(&body, 0).await;
    for piece in body.chunks(body.len().div_ceil(6)) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tls.write_all(piece).await.unwrap();
        tls.flush().await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    assert!(out.contains(r#""authenticated":true"#), "{out}");
}
