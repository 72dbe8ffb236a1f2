//! Transport: binds nothing itself, but accepts TLS connections on a listener it is given, serves HTTP/1.1 and HTTP/2 through a handler, and drains on shutdown.
//!
//! Nothing here knows the handlers: `app` hands `serve` the router as a [`Handler`], and the
//! handlers use this module's body, caller and error helpers.

pub mod body;
pub mod caller;
pub mod http_error;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::metrics::Metrics;
use caller::ClientCert;
use http_error::Body;

/// Per-connection facts.
pub struct ConnInfo {
    /// Accepted on the metrics-only listener.
    pub metrics_only: bool,
    /// Remote address.
    pub peer: SocketAddr,
    /// The verified client certificate, if one was presented.
    pub client_cert: Option<ClientCert>,
}

/// What the transport needs: the current TLS configuration, the limits, and the connection
/// metrics.
pub struct Transport {
    /// The TLS configuration new connections take (swapped on reload).
    pub tls: tls::Current,
    /// Deadlines and limits (`[server]`).
    pub limits: Limits,
    /// Connection metrics are counted here.
    pub metrics: Metrics,
}

/// Serves one request: the router. Returns a boxed future, boxed once per request (see
/// `routes::handle`).
pub type Handler = Arc<
    dyn Fn(Arc<ConnInfo>, Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// Accepts until `stop`, then drains.
pub async fn serve(
    listener: TcpListener,
    metrics_only: bool,
    transport: Arc<Transport>,
    handler: Handler,
    mut stop: watch::Receiver<bool>,
) {
    let limits = transport.limits.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper starts the header deadline as soon as an HTTP/1.1 connection waits for a request,
    // so it also bounds keep-alive idleness there.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // Rapid reset (CVE-2023-44487) and reset floods: GOAWAY after this many streams reset
    // before we accept them, or reset by us for protocol errors. Headers are bounded too
    // (CONTINUATION floods).
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024))
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Each connection task holds a clone; when every clone is dropped, all have finished.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);

    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // EMFILE and friends: back off rather than spin.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let (transport, handler) = (transport.clone(), handler.clone());
        let builder = builder.clone();
        let (alive, stop) = (alive.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _alive = alive;
            transport.metrics.connections_open.inc();
            let reason =
                connection(metrics_only, &transport, handler, builder, stop, tcp, peer).await;
            transport.metrics.connections_open.dec();
            transport
                .metrics
                .connections_closed
                .with_label_values(&[reason])
                .inc();
        });
    }
    drop(listener);
    drop(alive);
    tracing::info!(
        grace_seconds = limits.shutdown_grace.as_secs(),
        "draining connections"
    );
    if tokio::time::timeout(limits.shutdown_grace, all_done.recv())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

/// Requests started and finished on one connection, for the idle timeout: two counters
/// rather than a clock read per request (issue 12); `supervise` samples them.
#[derive(Default)]
struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.started.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }

    /// The number of requests served so far, when none is in flight: equal readings at two
    /// ticks mean nothing started in between.
    fn idle_count(&self) -> Option<u64> {
        let finished = self.finished.load(Ordering::Acquire);
        let started = self.started.load(Ordering::Acquire);
        (started == finished).then_some(finished)
    }
}

struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
    }
}

/// Decides when a connection closes by itself: on shutdown, and once it has been idle (no
/// request in flight and none started) for `idle_timeout`. It runs as a task of its own so
/// that the connection's task, woken for every request, polls no timer or watch of its own,
/// only two one-shot channels (a timer and a watch, polled on every wake, showed in
/// benches/load/profile.py's per-hit counts).
async fn supervise(
    peer: SocketAddr,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
    idle_timeout: Duration,
    graceful: oneshot::Sender<&'static str>,
    now: oneshot::Sender<()>,
) {
    let (mut graceful, mut now) = (Some(graceful), Some(now));
    let mut tick = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(50)));
    // The first tick that saw the current idle count: the connection has been idle at least
    // since then.
    let mut idle: Option<(u64, Instant)> = None;
    let mut goaway_at: Option<Instant> = None;
    loop {
        tokio::select! {
            // (The watch's guard is dropped inside: it must not live across the send.)
            _ = async { stop.wait_for(|s| *s).await.is_ok() }, if goaway_at.is_none() => {
                if let Some(g) = graceful.take() {
                    let _ = g.send("shutdown");
                }
                return;
            }
            _ = tick.tick() => {
                let at = Instant::now();
                let idle_for = match (activity.idle_count(), idle) {
                    (None, _) => {
                        idle = None;
                        continue;
                    }
                    (Some(n), Some((seen, since))) if n == seen => at - since,
                    (Some(n), _) => {
                        idle = Some((n, at));
                        continue;
                    }
                };
                if idle_for < idle_timeout {
                    continue;
                }
                match goaway_at {
                    None => {
                        tracing::debug!(%peer, "closing idle connection");
                        goaway_at = Some(at);
                        if let Some(g) = graceful.take() {
                            let _ = g.send("idle");
                        }
                    }
                    // HTTP/2's graceful close waits for the peer to answer a PING; a peer
                    // that never does is dropped once it has been idle that long again.
                    Some(sent) if at - sent >= idle_timeout => {
                        if let Some(n) = now.take() {
                            let _ = n.send(());
                        }
                        return;
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// Serves one connection to its end; returns why it ended (a `connections_closed` reason).
async fn connection(
    metrics_only: bool,
    transport: &Transport,
    handler: Handler,
    builder: auto::Builder<TokioExecutor>,
    stop: watch::Receiver<bool>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> &'static str {
    let _ = tcp.set_nodelay(true);
    let limits = &transport.limits;
    let acceptor = TlsAcceptor::from(transport.tls.get());
    let stream = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return "handshake_failed";
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return "handshake_timeout";
        }
    };
    let client_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| ClientCert::from_der(c));
    let conn = Arc::new(ConnInfo {
        metrics_only,
        peer,
        client_cert,
    });
    let activity = Arc::new(Activity::default());
    let svc = {
        let activity = activity.clone();
        service_fn(move |req| {
            let busy = activity.begin();
            let response = handler(conn.clone(), req);
            async move {
                let response = response.await;
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let served = builder.serve_connection(TokioIo::new(stream), svc);
    let mut served = std::pin::pin!(served);
    let (graceful_tx, mut graceful) = oneshot::channel();
    let (now_tx, mut now) = oneshot::channel();
    let supervisor = tokio::spawn(supervise(
        peer,
        activity,
        stop,
        limits.idle_timeout,
        graceful_tx,
        now_tx,
    ));
    let mut closing = None;
    // A receiver is never polled again once it has answered (or its sender is gone).
    let (mut graceful_open, mut now_open) = (true, true);
    let reason = loop {
        tokio::select! {
            biased;
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break closing.unwrap_or("ended");
            }
            c = &mut graceful, if graceful_open => {
                graceful_open = false;
                if let Ok(reason) = c {
                    closing = Some(reason);
                    served.as_mut().graceful_shutdown();
                }
            }
            c = &mut now, if now_open && closing == Some("idle") => {
                now_open = false;
                if c.is_ok() {
                    break "idle";
                }
            }
        }
    };
    supervisor.abort();
    reason
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
