//! The `service_account` verifier: tokens minted by this tokenhook, checked against every current key, the registry and revocations.

use std::sync::Arc;

use super::{Outcome, Token, Verifier, VerifyError};
use crate::clock::UnixTime;
use crate::mint::issuer::Issuer;

/// Verifies tokens whose `iss` is our issuer; everything else is `NotMine`.
#[derive(Clone)]
pub struct ServiceAccount {
    issuer: Arc<Issuer>,
}

impl ServiceAccount {
    /// A verifier over `issuer`'s keys.
    pub fn new(issuer: Arc<Issuer>) -> Self {
        ServiceAccount { issuer }
    }
}

impl Verifier for ServiceAccount {
    async fn verify(&self, token: &Token, now: UnixTime) -> Result<Outcome, VerifyError> {
        self.issuer.verify(token.expose(), now)
    }
}
