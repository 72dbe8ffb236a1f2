//! Renders kubeconfig files: the one kube-apiserver's `--authentication-token-webhook-config-file` takes, and kubectl's.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A credential or CA given either inline (embedded as `*-data`) or as a file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Embedded as base64 `*-data`.
    Data(Vec<u8>),
    /// Referenced by path (kube resolves relative paths against the kubeconfig's directory).
    Path(String),
}

/// What goes into a one-cluster, one-user, one-context kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubeconfig {
    /// Cluster entry name.
    pub cluster: String,
    /// Server URL (for a webhook: the full review URL).
    pub server: String,
    /// CA that signed the server's certificate.
    pub certificate_authority: Source,
    /// User entry name.
    pub user: String,
    /// Client certificate and key.
    pub client_cert: Option<(Source, Source)>,
    /// Bearer token.
    pub token: Option<String>,
    /// Context name (also current-context).
    pub context: String,
}

/// YAML double-quoted scalar: JSON string syntax is a subset of it.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn field(key: &str, s: &Source) -> String {
    match s {
        Source::Data(d) => format!("{key}-data: {}", q(&STANDARD.encode(d))),
        Source::Path(p) => format!("{key}: {}", q(p)),
    }
}

impl Kubeconfig {
    /// The YAML text.
    pub fn render(&self) -> String {
        let mut user = Vec::new();
        if let Some((cert, key)) = &self.client_cert {
            user.push(field("client-certificate", cert));
            user.push(field("client-key", key));
        }
        if let Some(t) = &self.token {
            user.push(format!("token: {}", q(t)));
        }
        let user = if user.is_empty() {
            " {}".to_owned()
        } else {
            user.iter().map(|l| format!("\n    {l}")).collect()
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\n    {ca}\nusers:\n- name: {uname}\n  user:{user}\ncontexts:\n- name: {ctx}\n  context:\n    cluster: {cluster}\n    user: {uname}\ncurrent-context: {ctx}\n",
            cluster = q(&self.cluster),
            server = q(&self.server),
            ca = field("certificate-authority", &self.certificate_authority),
            uname = q(&self.user),
            ctx = q(&self.context),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_webhook_layout() {
        let k = Kubeconfig {
            cluster: "tokenhook".into(),
            server: "https://127.0.0.1:8443/authenticate".into(),
            certificate_authority: Source::Data(b"CA".to_vec()),
            user: "kube-apiserver".into(),
            client_cert: Some((Source::Path("/c.crt".into()), Source::Path("/c.key".into()))),
            token: None,
            context: "webhook".into(),
        };
        let y = k.render();
        assert!(y.contains("certificate-authority-data: \"Q0E=\""));
        assert!(y.contains("client-certificate: \"/c.crt\""));
        assert!(y.contains("current-context: \"webhook\""));
    }
}
