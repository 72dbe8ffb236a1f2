//! Polls files for changed contents and hands them to a source's loader; a bad new version keeps the old one.
//!
//! Kubernetes updates Secret and ConfigMap volumes by swapping a symlink, so inode watches
//! miss changes: this reads the files by path and compares content digests instead.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::verify::Digest;

/// Loader for one source: gets the contents of every watched file (in order) and either
/// installs them, returning a summary for the log, or refuses them with a reason.
pub type Apply = Box<dyn FnMut(&[Vec<u8>]) -> Result<String, String> + Send>;

/// A set of files that are loaded together (e.g. certificate + key).
pub struct Watched {
    /// Metric label and log name.
    pub source: &'static str,
    /// The files.
    pub paths: Vec<PathBuf>,
    /// Digests of the contents already installed.
    pub loaded: Vec<Digest>,
    /// The loader.
    pub apply: Apply,
}

impl Watched {
    /// Reads every file; `None` (logged) when one cannot be read.
    fn read(&self) -> Option<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(self.paths.len());
        for p in &self.paths {
            match std::fs::read(p) {
                Ok(b) => out.push(b),
                Err(e) => {
                    tracing::warn!(source = self.source, path = %p.display(), error = %e, "cannot read watched file; keeping the loaded version");
                    return None;
                }
            }
        }
        Some(out)
    }

    /// Reloads if any file's contents differ from what was last seen. Each distinct content
    /// is tried once, so a broken file is reported once, not at every poll.
    pub fn check(&mut self, metrics: &Metrics) {
        let Some(contents) = self.read() else { return };
        let digests: Vec<Digest> = contents.iter().map(|c| Digest::of(c)).collect();
        if digests == self.loaded {
            return;
        }
        self.loaded = digests;
        match (self.apply)(&contents) {
            Ok(summary) => {
                metrics.reloaded(self.source, true);
                tracing::info!(source = self.source, %summary, "reloaded");
            }
            Err(reason) => {
                metrics.reloaded(self.source, false);
                tracing::error!(source = self.source, %reason, "reload refused; keeping the previous version");
            }
        }
    }
}

/// Spawns the poller: checks every `interval`, at once when `now` changes (SIGHUP), and
/// stops when `stop` turns true.
pub fn spawn(
    mut sources: Vec<Watched>,
    interval: Duration,
    mut now: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
    metrics: Metrics,
) -> JoinHandle<()> {
    // Both results exist (at zero) from the start: Prometheus's `increase()` cannot see the
    // first failure of a series that appears with it, and the reload alert needs it.
    for s in &sources {
        for result in ["success", "failure"] {
            metrics.reloads.with_label_values(&[s.source, result]);
        }
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = now.changed() => {}
                _ = stop.changed() => return,
            }
            for s in &mut sources {
                s.check(&metrics);
            }
        }
    })
}
