//! Who is calling tokenhook (client certificate or bearer token) and whether they may review tokens.

use http::HeaderMap;
use x509_parser::extensions::GeneralName;

use crate::config::CallerPolicy;
use crate::k8s::Status;
use crate::k8s::token_review::GROUP;
use crate::verify::{StaticFile, Token};

/// Names read from a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientCert {
    /// Subject CN (kube's username for a certificate), empty if none.
    pub common_name: String,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// Subject O values (kube's groups for a certificate).
    pub organizations: Vec<String>,
}

impl ClientCert {
    /// Reads CN and DNS SANs from a DER certificate rustls already verified.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let dns_names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some((*d).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let organizations = cert
            .subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_owned))
            .collect();
        Some(ClientCert {
            common_name,
            dns_names,
            organizations,
        })
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.common_name.as_str())
            .filter(|s| !s.is_empty())
            .chain(self.dns_names.iter().map(String::as_str))
    }
}

/// Decides whether a request's caller may use the review endpoint.
pub struct CallerAuth {
    policy: CallerPolicy,
    tokens: Option<StaticFile>,
}

impl CallerAuth {
    /// `tokens` is the loaded `callers.tokens_file`, if configured.
    pub fn new(policy: CallerPolicy, tokens: Option<StaticFile>) -> Self {
        CallerAuth { policy, tokens }
    }

    /// Whether the caller may go on, or the `Status` to answer: 401 when no acceptable
    /// credential was presented, 403 when a certificate's names are not allowed. (Nothing
    /// is returned on success: the name, unused, cost an allocation per review.)
    ///
    /// # Errors
    /// As above.
    pub fn check(
        &self,
        cert: Option<&ClientCert>,
        headers: &HeaderMap,
        resource: &str,
    ) -> Result<(), Status> {
        if self.policy.is_open() {
            return Ok(());
        }
        if let Some(cert) = cert {
            let allowed = &self.policy.allowed_names;
            if allowed.is_empty() || cert.names().any(|n| allowed.iter().any(|a| a == n)) {
                return Ok(());
            }
            return Err(Status::forbidden(
                GROUP,
                resource,
                &cert.common_name,
                "create",
            ));
        }
        if let (Some(tokens), Some(bearer)) = (&self.tokens, bearer(headers)) {
            let token = Token::new(bearer.to_owned());
            if tokens.table().lookup(token.digest()).is_some() {
                return Ok(());
            }
        }
        Err(Status::unauthorized())
    }
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
