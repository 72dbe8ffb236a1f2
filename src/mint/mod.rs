//! Minting TokenRequests: keys, claims, the account registry, the mint policy, and OIDC discovery.

pub mod accounts;
pub mod claims;
pub mod cluster;
pub mod handler;
pub mod issuer;
pub mod keys;
pub mod policy;
pub mod revocations;
