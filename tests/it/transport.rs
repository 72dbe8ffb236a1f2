//! TLS only, and caller authentication: client certificates (with names) and bearer tokens.

use std::io::{Read, Write};

use crate::support::{Ca, Client, Opts, TestServer};

#[tokio::test]
async fn plain_http_gets_no_answer() {
    let s = TestServer::start(Opts::default()).await;
    let addr = s.addr;
    let got = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        tcp.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let _ = tcp.read_to_end(&mut buf);
        buf
    })
    .await
    .unwrap();
    assert!(
        !got.starts_with(b"HTTP/"),
        "plaintext HTTP was answered: {got:?}"
    );
    // The TLS port still serves TLS clients.
    assert_eq!(s.client().get("/livez").await.status, 200);
}

#[tokio::test]
async fn client_certificates() {
    let s = TestServer::start(Opts::default()).await;
    // Signed by the CA and named kube-apiserver: allowed.
    assert_eq!(s.client().review("bob-token", &[]).await.status, 201);
    // No certificate: 401 Status.
    let r = s.anonymous().review("bob-token", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "Unauthorized");
    // Signed by the CA, but a name not on the list: 403 naming the user.
    let other = s.ca.client("someone-else");
    let r = Client::new(s.addr, &s.ca.pem, Some(&other))
        .review("bob-token", &[])
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["message"],
        "tokenreviews.authentication.k8s.io is forbidden: User \"someone-else\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope"
    );
    // A certificate from another CA fails the handshake.
    let stranger = Ca::new("other CA").client("kube-apiserver");
    let c = Client::new(s.addr, &s.ca.pem, Some(&stranger));
    let failed = match c.connect().await {
        Err(_) => true,
        // TLS 1.3: the client learns of the rejection on its first read.
        Ok(_) => c
            .send(
                http::Request::builder()
                    .uri("/livez")
                    .header("host", "localhost")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await
            .is_err(),
    };
    assert!(failed, "a certificate from another CA was accepted");
    // Health needs no credential.
    assert_eq!(s.anonymous().get("/readyz").await.status, 200);
}

#[tokio::test]
async fn caller_bearer_tokens() {
    let s = TestServer::start(Opts {
        client_names: None,
        caller_tokens: Some("apiserver-secret,kube-apiserver,1\n".into()),
        ..Opts::default()
    })
    .await;
    let c = s.anonymous();
    let post = |auth: Option<&'static str>| {
        let c = c.clone();
        async move {
            let mut h = vec![("content-type", "application/json")];
            if let Some(a) = auth {
                h.push(("authorization", a));
            }
            c.request(
                http::Method::POST,
                "/authenticate",
                &h,
                serde_json::to_vec(&crate::support::review_body(
                    "authentication.k8s.io/v1beta1",
                    "bob-token",
                    &[],
                ))
                .unwrap(),
            )
            .await
        }
    };
    assert_eq!(post(Some("Bearer apiserver-secret")).await.status, 201);
    assert_eq!(post(Some("Bearer wrong")).await.status, 401);
    assert_eq!(post(None).await.status, 401);
    // /metrics is guarded the same way.
    assert_eq!(c.get("/metrics").await.status, 401);
}

#[tokio::test]
async fn open_endpoint_without_callers_section() {
    let s = TestServer::start(Opts {
        client_names: None,
        ..Opts::default()
    })
    .await;
    assert_eq!(s.anonymous().review("bob-token", &[]).await.status, 201);
}

#[tokio::test]
async fn over_max_in_flight_is_429_with_retry_after() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start(Opts {
        server_toml: "max_in_flight = 1\n".into(),
        ..Opts::default()
    })
    .await;
    let body = r#"{"apiVersion":"authentication.k8s.io/v1","spec":{"token":"bob-token"}}"#;
    // One review holds the only slot while its body trickles in.
    let mut slow = s.client().partial_review(body.as_bytes(), 10).await;
    let c = s.client();
    crate::assert_eventually!(
        10,
        c.review("bob-token", &[]).await.status == 429,
        "no 429 while the slot is held"
    );
    let r = c.review("bob-token", &[]).await;
    assert_eq!(r.headers["retry-after"], "1");
    let v = r.json();
    assert_eq!(v["reason"], "TooManyRequests");
    assert_eq!(v["details"]["retryAfterSeconds"], 1);
    // Health and metrics are not API work: still answered.
    assert_eq!(c.get("/readyz").await.status, 200);
    // The held request completes, its body read from the part that came first and the
    // rest, and the slot is free again.
    slow.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains(r#""username":"bob""#) {
            let n = slow.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer: {}", String::from_utf8_lossy(&answer)));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains(r#""token":"bob-token""#), "{answer}");
    crate::assert_eventually!(
        10,
        c.review("bob-token", &[]).await.status == 201,
        "slot not released"
    );
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_while_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start(Opts {
        server_toml: "header_read_timeout_seconds = 1\n".into(),
        ..Opts::default()
    })
    .await;
    let mut slow = s.client().connect().await.unwrap();
    slow.write_all(
        b"POST /apis/authentication.k8s.io/v1/tokenreviews HTTP/1.1\r\nHost: localhost\r\n",
    )
    .await
    .unwrap();
    slow.flush().await.unwrap();
    let started = std::time::Instant::now();
    // Dribble a header byte now and then; the server must not wait forever.
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if slow.write_all(b"X").await.is_err() || slow.flush().await.is_err() {
            closed = true;
            break;
        }
        // Meanwhile other callers are answered.
        assert_eq!(s.client().review("bob-token", &[]).await.status, 201);
        let mut buf = [0u8; 64];
        if let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(10), slow.read(&mut buf)).await
        {
            // An error response or EOF: either way the server gave up on the slow client.
            let _ = n;
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a client dribbling headers held its connection for {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
}
