//! The outbound HTTPS client every call tokenhook makes goes through (JWKS and discovery fetches today), trusting a configured CA or the system roots.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

/// Largest answer accepted (a discovery document, a JWKS).
pub const MAX_DOCUMENT: usize = 1 << 20;

/// Why an outbound call failed. Messages name the URL, never a request body (which may
/// hold a token).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum OutboundError {
    /// Transport or TLS failure, or a timeout.
    #[error("fetching {url}: {reason}")]
    Transport {
        /// What was fetched.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an unexpected status.
    #[error("{url}: status {status}")]
    Status {
        /// What was fetched.
        url: String,
        /// The status it answered.
        status: http::StatusCode,
    },
    /// The server answered, but not with a usable document.
    #[error("{url}: {reason}")]
    Document {
        /// What was fetched.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// An HTTPS client trusting either a configured CA or the system roots.
#[derive(Clone)]
pub struct HttpsClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl HttpsClient {
    /// A client for one peer. `ca_pem`: its `certificateAuthority`, else the system trust
    /// store.
    ///
    /// # Errors
    /// An unusable CA bundle.
    pub fn new(ca_pem: Option<&str>, timeout: Duration) -> Result<Self, String> {
        let provider = crate::server::tls::provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        match ca_pem {
            Some(pem) => {
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots
                        .add(c.map_err(|e| format!("certificateAuthority: {e}"))?)
                        .map_err(|e| format!("certificateAuthority: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("certificateAuthority holds no certificate".into());
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        let tls = builder.with_root_certificates(roots).with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_all_versions()
            .build();
        Ok(HttpsClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// GETs `url` and parses JSON (200 only, at most 1 MiB, within the timeout).
    ///
    /// # Errors
    /// Transport, status, size or JSON problems.
    pub async fn get_json(&self, url: &str) -> Result<Value, OutboundError> {
        let transport = |reason: String| OutboundError::Transport {
            url: url.to_owned(),
            reason,
        };
        let document = |reason: String| OutboundError::Document {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|e| document(format!("bad URL: {e}")))?;
        let fetch = async {
            let resp = self
                .client
                .get(uri)
                .await
                .map_err(|e| transport(format!("{e:#}")))?;
            if resp.status() != http::StatusCode::OK {
                return Err(OutboundError::Status {
                    url: url.to_owned(),
                    status: resp.status(),
                });
            }
            let body = Limited::new(resp.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map_err(|e| transport(e.to_string()))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| document(format!("not JSON: {e}")))
        };
        tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| transport(format!("no answer within {:?}", self.timeout)))?
    }
}
