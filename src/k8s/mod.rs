//! Kubernetes wire types and their codec: what goes over HTTP, and nothing about how it is decided.

pub mod codec;
pub mod discovery;
pub mod meta;
pub mod openapi_v2;
pub mod protobuf;
pub mod query;
pub mod status;
pub mod token_request;
pub mod token_review;

pub use status::{Reason, Status, StatusCause, StatusDetails};
