//! Leak detection across the whole suite: every in-process server logs at debug level into one buffer, every secret a test sends or receives is registered, and each server's end checks that no secret (nor a 16-byte piece of one) reached a log line, a metric or a `Status` message.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, Once};

/// Secrets shorter than this are checked whole; longer ones by their aligned 16-byte pieces,
/// so that a leaked fragment of 24 bytes or more is caught too.
const PIECE: usize = 16;
/// Secrets registered late (minted tokens, known only from the response) are also looked
/// for in this much of the text observed before them.
const BACKFILL: usize = 256 * 1024;

#[derive(Default)]
struct State {
    /// Log lines, `/metrics` expositions and `Status` bodies, in arrival order.
    observed: String,
    /// How much of `observed` has been checked.
    checked: usize,
    pieces: HashSet<[u8; PIECE]>,
    short: HashSet<String>,
    /// Where in `observed` each late secret was registered (for the backfill).
    late: Vec<(usize, String)>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<State>> {
    let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
    g.get_or_insert_with(State::default);
    g
}

struct Sink;

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        observe(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends this process's `tracing` output (tokenhook at debug, the rest at info, JSON as in
/// production) into the observed buffer. Idempotent.
pub fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,tokenhook=debug"))
            .with_writer(|| Sink)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init();
    });
}

/// Text that must never carry a secret.
pub fn observe(text: &str) {
    let mut g = state();
    if let Some(s) = g.as_mut() {
        s.observed.push_str(text);
    }
}

/// A value that must never be observed. Values under 8 bytes are too common to check.
pub fn secret(value: &str) {
    register(value, false);
}

/// A secret learnt from a response (so possibly logged just before this call).
pub fn late_secret(value: &str) {
    register(value, true);
}

fn register(value: &str, late: bool) {
    if let Some(s) = state().as_mut() {
        s.add(value, late);
    }
}

impl State {
    fn add(&mut self, value: &str, late: bool) {
        if value.len() < 8 {
            return;
        }
        let b = value.as_bytes();
        if b.len() < PIECE {
            self.short.insert(value.to_owned());
        } else {
            // Aligned pieces, plus the last one; a huge value contributes its ends only.
            let starts: Vec<usize> = if b.len() > 64 * 1024 {
                vec![0, b.len() / 2, b.len() - PIECE]
            } else {
                (0..=b.len() - PIECE)
                    .step_by(PIECE / 2)
                    .chain([b.len() - PIECE])
                    .collect()
            };
            for i in starts {
                if let Some(p) = b
                    .get(i..i + PIECE)
                    .and_then(|p| <[u8; PIECE]>::try_from(p).ok())
                {
                    self.pieces.insert(p);
                }
            }
        }
        if late {
            let at = self.observed.len();
            self.late.push((at, value.to_owned()));
        }
    }
}

/// Panics, naming the secret and the text around it, if anything observed so far carries
/// a registered secret.
pub fn check() {
    if std::thread::panicking() {
        return;
    }
    let found = {
        let mut g = state();
        let Some(s) = g.as_mut() else { return };
        let found = scan(s);
        s.checked = s.observed.len();
        found
    };
    if let Some((what, context)) = found {
        panic!(
            "a secret leaked ({what}); it was sent by some test of this run, not necessarily this one:\n{context}"
        );
    }
}

fn scan(s: &mut State) -> Option<(String, String)> {
    let text = s.observed.as_bytes();
    let context = |at: usize| {
        let from = text[..at]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let to = text[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| at + i);
        String::from_utf8_lossy(&text[from..to]).into_owned()
    };
    let new = s.checked.saturating_sub(PIECE)..text.len();
    if text.len() >= PIECE {
        for at in new.start..=text.len() - PIECE {
            if let Ok(p) = <[u8; PIECE]>::try_from(&text[at..at + PIECE]) {
                if s.pieces.contains(&p) {
                    return Some((
                        format!("piece {:?}", String::from_utf8_lossy(&p)),
                        context(at),
                    ));
                }
            }
        }
    }
    let fresh = &s.observed[new.start..];
    for short in &s.short {
        if let Some(i) = fresh.find(short.as_str()) {
            return Some((format!("{short:?}"), context(new.start + i)));
        }
    }
    for (at, value) in std::mem::take(&mut s.late) {
        let mut from = at.saturating_sub(BACKFILL);
        while !s.observed.is_char_boundary(from) {
            from -= 1;
        }
        if let Some(i) = s.observed[from..].find(value.as_str()) {
            return Some(("a minted token".into(), context(from + i)));
        }
    }
    None
}

#[test]
fn the_leak_detector_finds_secrets_and_their_pieces() {
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJqYW5lIn0.c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYW5kLW1vcmU";
    let found = |observed: &str, late: bool| {
        let mut s = State::default();
        if !late {
            s.add(jwt, false);
            s.add("short-secret", false);
        }
        s.observed.push_str(observed);
        if late {
            // Already checked by an earlier scan, before the token was known.
            s.checked = s.observed.len();
            s.add(jwt, true);
        }
        scan(&mut s).map(|(what, _)| what)
    };
    assert_eq!(found("nothing to see\n", false), None);
    assert!(found(&format!("a {jwt} b"), false).is_some());
    // 24 bytes from the middle of the token.
    assert!(found(&format!("x={}\n", &jwt[30..54]), false).is_some());
    assert_eq!(
        found("user short-secret!", false).as_deref(),
        Some("\"short-secret\"")
    );
    // Logged before the test learnt it (a minted token in the minting log line).
    assert_eq!(
        found(&format!("minted {jwt} and then a long enough tail\n"), true).as_deref(),
        Some("a minted token")
    );
    assert_eq!(
        found("a 16-byte hex fingerprint 1be23b07ef444b13", false),
        None
    );
}
