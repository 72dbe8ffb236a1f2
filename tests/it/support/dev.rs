//! Running the `tokenhook` binary in dev mode for tests: start, signal, stop, and clients for what it generated.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Client, Leaf};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tokenhook");

/// Where a dev process started on `dir` writes its logs (beside the directory, so that the
/// generated files stay exactly as tokenhook wrote them).
pub fn log_path(dir: &Path) -> PathBuf {
    dir.with_extension("log")
}

/// Starts `tokenhook dev` in `dir` on a free port with extra environment; returns the
/// child, the https base URL and the stdout lines up to the banner's end.
pub fn start(dir: &Path, env: &[(&str, &str)]) -> (Child, String, Vec<String>) {
    let mut cmd = Command::new(BIN);
    cmd.args(["dev", "--dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = File::create(log_path(dir)).unwrap();
    let mut child = cmd.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
    let mut lines = Vec::new();
    let mut base = String::new();
    let out = BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(b) = line.strip_prefix("tokenhook dev: serving on ") {
            base = b.to_owned();
        }
        let done = line.trim_start().starts_with("curl ");
        lines.push(line);
        if done {
            break;
        }
    }
    assert!(!base.is_empty(), "no banner: {lines:?}");
    (child, base, lines)
}

/// Sends `signal` (e.g. `-TERM`, `-HUP`) to the child.
pub fn signal(child: &Child, signal: &str) {
    signal_pid(child.id(), signal);
}

/// Sends `signal` to process `pid`.
pub fn signal_pid(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits (bounded) for the child to exit.
pub async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    panic!("tokenhook did not exit");
}

/// SIGTERM, wait, and return the exit status and everything it logged.
pub async fn stop(dir: &Path, mut child: Child) -> (std::process::ExitStatus, String) {
    signal(&child, "-TERM");
    let status = wait_exit(&mut child).await;
    (
        status,
        std::fs::read_to_string(log_path(dir)).unwrap_or_default(),
    )
}

/// A client presenting the dev admin certificate.
pub fn admin_client(dir: &Path, base: &str) -> Client {
    let addr = base.trim_start_matches("https://").parse().unwrap();
    let leaf = Leaf {
        cert: std::fs::read_to_string(dir.join("admin.crt")).unwrap(),
        key: std::fs::read_to_string(dir.join("admin.key")).unwrap(),
    };
    Client::new(
        addr,
        &std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        Some(&leaf),
    )
}

/// Runs kubectl with the dev admin kubeconfig.
pub fn kubectl(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(dir.join("admin-kubeconfig.yaml"))
        .args(args)
        .output()
        .expect("kubectl is required for the tests (it is installed on these machines)")
}

/// The token of `user` in the dev `tokens.csv`.
pub fn token_of(dir: &Path, user: &str) -> String {
    let tokens = std::fs::read_to_string(dir.join("tokens.csv")).unwrap();
    tokens
        .lines()
        .find(|l| l.contains(&format!(",{user},")))
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_owned()
}
