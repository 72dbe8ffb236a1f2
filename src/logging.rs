//! The process's log output: the `tracing` subscriber `main.rs` installs, writing through a bounded, lossy, non-blocking stderr writer whose dropped lines `/metrics` counts (`metrics.rs` reads [`dropped_lines`]).
//!
//! A worker thread formats a line and queues it; one writer thread owns stderr. A runtime
//! worker therefore never waits on a slow pipe or a full terminal: when the queue is full the
//! line is dropped and counted instead (`tokenhook_log_lines_dropped_total`), because on the
//! authentication path of a cluster a stalled review costs more than a lost log line. Tests
//! install their own subscriber (the leak detector) and never call [`init`].

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

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
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&log.filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = if log.json {
        builder
            .json()
            .flatten_event(true)
            // The request span carries the request id into every line logged while serving it.
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    guard
}

/// Log lines dropped so far because the writer's queue was full (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
}
