//! TLS: builds rustls `ServerConfig`s from PEM files and swaps in a new one when the files change.
//!
//! The whole config is swapped (not only the certificate resolver) so that the client CA
//! reloads too; each new connection takes the config current at accept time, and
//! established connections keep the one they started with.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

/// Why a certificate/key/CA set was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file holds no PEM certificate.
    #[error("no PEM certificate found in the certificate file")]
    NoCertificate,
    /// The key file holds no usable PEM private key.
    #[error("no usable PEM private key in the key file")]
    NoKey,
    /// The key does not belong to the certificate, or rustls cannot use it.
    #[error("certificate and key do not form a usable pair")]
    Pair(#[source] rustls::Error),
    /// The client CA file holds no usable certificate.
    #[error("client CA file holds no usable CA certificate")]
    ClientCa,
    /// rustls refused the configuration.
    #[error("building the TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The crypto provider everything uses: aws-lc-rs, the one rustls backend we ship.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A built config plus facts for metrics.
pub struct Built {
    /// Ready to hand to a `TlsAcceptor`.
    pub config: Arc<ServerConfig>,
    /// Leaf `notAfter` as a Unix timestamp (0 if unreadable).
    pub not_after: i64,
}

/// Builds a server config: TLS 1.2+, ALPN h2 and http/1.1, and (with `client_ca`) client
/// certificates verified against it but not required, so that bearer-token callers can still
/// connect and get a 401 `Status` rather than a bare handshake failure.
///
/// # Errors
/// Unusable certificate, key, pair or CA.
pub fn build(cert_pem: &[u8], key_pem: &[u8], client_ca: Option<&[u8]>) -> Result<Built, TlsError> {
    let provider = provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    let leaf = chain.first().ok_or(TlsError::NoCertificate)?;
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or(0);
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NoKey)?;
    // from_der checks that the key matches the leaf's public key.
    let certified = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
        .map_err(TlsError::Pair)?;
    drop(certified);

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca).filter_map(Result::ok) {
                roots.add(c).map_err(|_| TlsError::ClientCa)?;
            }
            if roots.is_empty() {
                return Err(TlsError::ClientCa);
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|_| TlsError::ClientCa)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Pair)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Built {
        config: Arc::new(config),
        not_after,
    })
}

/// The config new connections get; swapped on reload.
pub struct Current(ArcSwap<ServerConfig>);

impl Current {
    /// Starts with `config`.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Current(ArcSwap::new(config))
    }

    /// The config for a connection accepted now.
    pub fn get(&self) -> Arc<ServerConfig> {
        self.0.load_full()
    }

    /// Installs a new config.
    pub fn set(&self, config: Arc<ServerConfig>) {
        self.0.store(config);
    }
}
