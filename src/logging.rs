//! The process's log output: the `tracing` subscriber `main.rs` installs, writing through a bounded, lossy, non-blocking stderr writer whose dropped lines `/metrics` counts (`metrics.rs` reads [`dropped_lines`]).
//!
//! A worker thread formats a line and queues it; one writer thread owns stderr. A runtime
//! worker therefore never waits on a slow pipe or a full terminal: when the queue is full the
//! line is dropped and counted instead (`tokenhook_log_lines_dropped_total`), because on the
//! authentication path of a cluster a stalled review costs more than a lost log line. Tests
//! install their own subscriber (the leak detector) and never call [`init`].

use std::fmt;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

use tracing_subscriber::Registry;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::{FormatFields, Writer};
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
                .fmt_fields(SpanFields)
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

/// A span's fields as the JSON object a line's `span` member is read back from, written
/// straight into the span's buffer. tracing-subscriber's `JsonFields` builds a map of
/// `serde_json::Value`s and a second string for every span it formats: about 2.8k
/// instructions for the request span's one field, per review that makes it (issue 12;
/// counted with `profile.py --scenario upstream`). Same JSON values, fields in the order
/// they are recorded rather than sorted.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanFields;

impl<'w> FormatFields<'w> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut object = JsonObject {
            out: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut object);
        object.close()
    }

    /// Fields recorded after the span was made (rare): merged into the object it has, a
    /// later value replacing an earlier one, as `JsonFields` does.
    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut added = String::new();
        self.format_fields(Writer::new(&mut added), fields)?;
        if current.fields.is_empty() {
            current.fields = added;
            return Ok(());
        }
        let parse = |text: &str| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
                .map_err(|_| fmt::Error)
        };
        let mut merged = parse(&current.fields)?;
        merged.extend(parse(&added)?);
        current.fields = serde_json::Value::Object(merged).to_string();
        Ok(())
    }
}

/// Writes `{"name":value,...}` as fields are visited; `close` ends it.
struct JsonObject<'a, 'w> {
    out: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl JsonObject<'_, '_> {
    /// Starts the member `name` (`r#` dropped, as `JsonFields` does for raw identifiers).
    fn key(&mut self, name: &str) -> fmt::Result {
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.out.write_char(if self.first { '{' } else { ',' })?;
        self.first = false;
        json_string(self.out, name)?;
        self.out.write_char(':')
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field.name()).and_then(|()| value(self.out));
        }
    }

    /// Any other value, written as `serde_json` writes it (numbers, booleans, byte arrays).
    fn value(&mut self, field: &Field, v: serde_json::Value) {
        self.member(field, |w| write!(w, "{v}"));
    }

    fn close(self) -> fmt::Result {
        self.result?;
        self.out.write_str(if self.first { "{}" } else { "}" })
    }
}

impl Visit for JsonObject<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| json_string(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `log` crate metadata is written by the event formatter itself.
        if field.name().starts_with("log.") {
            return;
        }
        let text = format!("{value:?}");
        self.member(field, |w| json_string(w, &text));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.value(field, serde_json::Value::from(value));
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.value(field, serde_json::Value::from(value));
    }
}

/// `s` as a JSON string, escaped by `serde_json` itself.
fn json_string(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    serde_json::to_writer(Utf8Sink(w), s).map_err(|_| fmt::Error)
}

/// The span buffer as the `io::Write` serde_json writes into; serde_json writes whole UTF-8
/// runs (it splits a string only at the ASCII bytes it escapes).
struct Utf8Sink<'a, 'w>(&'a mut Writer<'w>);

impl std::io::Write for Utf8Sink<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = std::str::from_utf8(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.0.write_str(text).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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

    /// One JSON line logged inside a span with fields of every kind, through the JSON layer
    /// with `SpanFields` (`ours`) or tracing-subscriber's own `JsonFields`.
    fn line_in_span(ours: bool) -> serde_json::Value {
        use std::sync::{Arc, Mutex};
        #[derive(Clone)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf(Arc::new(Mutex::new(Vec::new())));
        let w = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(move || w.clone());
        let log = || {
            let span = tracing::info_span!(
                "request",
                id = "a\"b\\c\n\t\u{1}\u{7f}é/",
                n = 42u64,
                neg = -3i64,
                ok = true,
                f = 1.5f64,
                dbg = ?vec![1, 2],
                disp = %"x y",
                r#type = "raw",
                later = tracing::field::Empty,
            );
            span.record("later", 7u64);
            span.in_scope(|| tracing::info!("inside"));
        };
        if ours {
            let subscriber = tracing_subscriber::registry().with(layer.fmt_fields(SpanFields));
            tracing::subscriber::with_default(subscriber, log);
        } else {
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        serde_json::from_str(text.trim()).unwrap()
    }

    #[test]
    fn span_fields_are_what_json_fields_write() {
        let (ours, theirs) = (line_in_span(true), line_in_span(false));
        assert_eq!(ours["span"], theirs["span"]);
        assert_eq!(ours["span"]["id"], "a\"b\\c\n\t\u{1}\u{7f}é/");
        assert_eq!(ours["span"]["later"], 7);
        assert_eq!(ours["span"]["type"], "raw");
        assert_eq!(ours["message"], "inside");
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
