//! The process's log output: the `tracing` subscriber `main.rs` installs, writing through a bounded, lossy, non-blocking stderr writer whose dropped lines `/metrics` counts (`metrics.rs` reads [`dropped_lines`]).
//!
//! A worker thread formats a line and queues it; one writer thread owns stderr. A runtime
//! worker therefore never waits on a slow pipe or a full terminal: when the queue is full the
//! line is dropped and counted instead (`tokenhook_log_lines_dropped_total`), because on the
//! authentication path of a cluster a stalled review costs more than a lost log line. Tests
//! install their own subscriber (the leak detector) and never call [`init`].

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

use tracing_subscriber::Registry;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Layer, Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogConfig;

/// Lines queued for the writer thread before new ones are dropped. About 5 MiB of JSON lines
/// at most: enough for bursts (a reload, a wave of rejections) while the writer catches up,
/// and a bound on memory when stderr stops draining.
pub const BUFFERED_LINES: usize = 16 * 1024;

/// The installed writer's drop count; unset until [`init`] runs (tests, embedders).
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the process-wide subscriber: `log.level` as the filter, `log.format` as the
/// shape, stderr behind the non-blocking writer. Keep the returned guard alive for the
/// process's lifetime: dropping it flushes the queued lines (what makes the last lines of a
/// shutdown reach stderr) and stops the writer thread.
///
/// A second call, or a subscriber installed by someone else first, leaves that one in place.
pub fn init(log: &LogConfig) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("tokenhook-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let fmt_layer: Box<dyn Layer<Filtered> + Send + Sync> = if log.json {
        Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                // The request span carries the request id into every line logged while
                // serving it.
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(writer),
        )
    } else {
        Box::new(tracing_subscriber::fmt::layer().with_writer(writer))
    };
    let _ = tracing_subscriber::registry()
        .with(filter(&log.filter))
        .with(fmt_layer)
        .try_init();
    guard
}

/// The registry behind the process's filter; the formatting layer sits on it.
type Filtered = Layered<Box<dyn Layer<Registry> + Send + Sync>, Registry>;

/// The layer that applies `log.level`. A filter of targets and levels only (`info`,
/// `info,tokenhook::review=debug`: every shipped and documented one) becomes a `Targets`,
/// decided once per callsite; `EnvFilter` is kept for span and field directives
/// (`[request{id=…}]=debug`), which need it. `EnvFilter` takes a process-wide lock on every
/// span's creation, entry, exit and close, whatever its directives: per request that is a
/// few atomic operations on cache lines every runtime worker shares.
fn filter(spec: &str) -> Box<dyn Layer<Registry> + Send + Sync> {
    if !spec.contains('[') {
        if let Ok(targets) = spec.parse::<Targets>() {
            return Box::new(targets);
        }
    }
    Box::new(
        EnvFilter::builder()
            .parse(spec)
            .unwrap_or_else(|_| EnvFilter::new("info")),
    )
}

/// Log lines dropped so far because the writer's queue was full (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    /// What `layer` enables, for a few targets and levels (`enabled!` needs literal targets).
    fn enabled(layer: Box<dyn Layer<Registry> + Send + Sync>) -> Vec<bool> {
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            vec![
                tracing::enabled!(target: "tokenhook::review", Level::DEBUG),
                tracing::enabled!(target: "tokenhook::review", Level::INFO),
                tracing::enabled!(target: "tokenhook::server", Level::DEBUG),
                tracing::enabled!(target: "tokenhook", Level::INFO),
                tracing::enabled!(target: "hyper::proto", Level::INFO),
                tracing::enabled!(target: "hyper::proto", Level::WARN),
                tracing::enabled!(target: "hyper::proto", Level::ERROR),
            ]
        })
    }

    /// The shipped and documented filters become `Targets`, which enable what `EnvFilter`
    /// enables for them; span directives keep `EnvFilter`.
    #[test]
    fn target_filters_enable_what_env_filter_does() {
        for spec in [
            "info",
            "warn",
            "debug",
            "info,tokenhook::review=debug",
            "tokenhook=debug,warn",
            "tokenhook=debug",
            "off",
        ] {
            assert!(spec.parse::<Targets>().is_ok(), "{spec}");
            let env: Box<dyn Layer<Registry> + Send + Sync> =
                Box::new(EnvFilter::builder().parse(spec).unwrap());
            assert_eq!(enabled(filter(spec)), enabled(env), "{spec}");
        }
        assert_eq!(
            enabled(filter("info,tokenhook::review=debug")),
            [true, true, false, true, true, true, true]
        );
        assert_eq!(
            enabled(filter("tokenhook=debug,warn")),
            [true, true, true, true, false, true, true]
        );
        let spans = "info,[request]=debug";
        assert_eq!(
            enabled(filter(spans)),
            enabled(Box::new(EnvFilter::builder().parse(spans).unwrap()))
        );
    }
}
