//! Configuration: figment layering (defaults < TOML file < `TOKENHOOK_*` env < flags) into a validated `Config`.

pub mod file;
pub mod validate;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

pub use file::FileConfig;
pub use validate::{
    CallerPolicy, Config, Limits, LogConfig, MetricsConfig, MintConfig, VerifierSpec,
};

/// Why configuration could not be loaded. Loading binds no ports and reads no key material.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or env var could not be parsed, or has an unknown key.
    #[error("configuration: {0}")]
    Parse(Box<figment::Error>),
    /// Values parsed but are not acceptable; every problem is listed.
    #[error("configuration is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Flag values that override every other layer (only the ones given).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Overrides {
    /// `server.listen`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `log.level`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// `log.format`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// `--authentication-config FILE`: appends a verifier for that kube
    /// AuthenticationConfiguration file (relative to the working directory).
    #[serde(skip)]
    pub authentication_config: Option<PathBuf>,
}

/// The layered figment: what `load` extracts.
pub fn figment(file: Option<&Path>, env_prefix: &str, o: &Overrides) -> Figment {
    let mut fig = Figment::from(Serialized::defaults(FileConfig::default()));
    if let Some(file) = file {
        fig = fig.merge(Toml::file_exact(file));
    }
    fig = fig.merge(Env::prefixed(env_prefix).split("__"));
    if let Some(l) = &o.listen {
        fig = fig.merge(Serialized::default("server.listen", l));
    }
    if let Some(l) = &o.log_level {
        fig = fig.merge(Serialized::default("log.level", l));
    }
    if let Some(l) = &o.log_format {
        fig = fig.merge(Serialized::default("log.format", l));
    }
    fig
}

/// Loads and validates. `env_prefix` is `TOKENHOOK_` outside tests. Relative paths (from any
/// layer) are relative to the configuration file's directory.
///
/// # Errors
/// Parse errors (naming the key and the file) or every validation problem.
pub fn load(file: Option<&Path>, env_prefix: &str, o: &Overrides) -> Result<Config, ConfigError> {
    let mut raw: FileConfig = figment(file, env_prefix, o)
        .extract()
        .map_err(|e| ConfigError::Parse(Box::new(e)))?;
    if let Some(p) = &o.authentication_config {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
        raw.verifiers
            .push(file::VerifierConfig::AuthenticationConfig { file: abs });
    }
    let base = file
        .and_then(Path::parent)
        .map_or_else(PathBuf::new, Path::to_path_buf);
    validate::validate(&raw, &base).map_err(ConfigError::Invalid)
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    // The tests read the environment under a prefix of their own, so that the runner's
    // TOKENHOOK_* variables cannot change what they see.

    #[test]
    fn layering_and_relative_paths() {
        Jail::expect_with(|jail| {
            jail.create_dir("etc")?;
            jail.create_file(
                "etc/t.toml",
                r#"
                [server]
                listen = "127.0.0.1:9000"
                cert_file = "tls/server.crt"
                key_file = "/abs/server.key"
                [[verifiers]]
                type = "static"
                file = "tokens.csv"
                "#,
            )?;
            jail.set_env("TOKENHOOK_UNIT_CACHE__TTL_SECONDS", "7");
            jail.set_env("TOKENHOOK_UNIT_SERVER__LISTEN", "127.0.0.1:9001");
            let path = jail.directory().join("etc/t.toml");
            let c = load(Some(&path), "TOKENHOOK_UNIT_", &Overrides::default()).unwrap();
            assert_eq!(c.listen.to_string(), "127.0.0.1:9001");
            assert_eq!(c.cache.ttl.as_secs(), 7);
            assert_eq!(c.cert_file, jail.directory().join("etc/tls/server.crt"));
            assert_eq!(c.key_file, Path::new("/abs/server.key"));
            let o = Overrides {
                listen: Some("127.0.0.1:9002".into()),
                ..Overrides::default()
            };
            let c = load(Some(&path), "TOKENHOOK_UNIT_", &o).unwrap();
            assert_eq!(c.listen.to_string(), "127.0.0.1:9002");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_name_key_and_file() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[server]\nlisten_addr = \"x\"\n")?;
            let path = jail.directory().join("t.toml");
            let err = load(Some(&path), "TOKENHOOK_UNIT_", &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("listen_addr"), "{err}");
            assert!(err.contains("t.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn every_problem_is_reported() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[server]\nlisten = \"nope\"\nmax_body_bytes = 0\n[log]\nformat = \"xml\"\n",
            )?;
            let path = jail.directory().join("t.toml");
            let ConfigError::Invalid(errs) =
                load(Some(&path), "TOKENHOOK_UNIT_", &Overrides::default()).unwrap_err()
            else {
                panic!("expected Invalid")
            };
            let keys: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
            assert_eq!(
                keys,
                [
                    "server.listen",
                    "server.cert_file",
                    "server.key_file",
                    "server.max_body_bytes",
                    "log.format",
                    "verifiers"
                ]
            );
            Ok(())
        });
    }

    #[test]
    fn rendered_template_round_trips() {
        Jail::expect_with(|jail| {
            let mut f = FileConfig::default();
            f.server.cert_file = Some("server.crt".into());
            f.server.key_file = Some("server.key".into());
            f.callers.client_ca_file = Some("ca.crt".into());
            f.callers.allowed_names = vec!["kube-apiserver".into()];
            f.review.api_audiences = vec!["https://kubernetes.default.svc".into()];
            f.cache.ttl_seconds = 99;
            f.verifiers = vec![file::VerifierConfig::Static {
                file: "tokens.csv".into(),
            }];
            jail.create_file("t.toml", &file::render_commented(&f))?;
            let path = jail.directory().join("t.toml");
            let back: FileConfig = figment(Some(&path), "NOPE_", &Overrides::default())
                .extract()
                .unwrap();
            assert_eq!(back, f);
            assert_eq!(file::render_commented(&back), file::render_commented(&f));
            Ok(())
        });
    }
}
