//! tokenhook: a Kubernetes webhook token authenticator.
//!
//! kube-apiserver posts `TokenReview`s here (over TLS only); each token runs through a chain of
//! verifiers behind a verdict cache, and the answer follows kube-apiserver's own semantics.
//! `main.rs` is a thin CLI over [`Config`], [`Server`] and [`Running`]; [`dev`] generates the
//! embedded development setup.

pub mod app;
pub mod cache;
pub mod clock;
pub mod config;
pub mod dev;
pub mod k8s;
pub mod kubeconfig;
pub mod logging;
pub mod metrics;
pub mod mint;
pub mod outbound;
pub mod reload;
pub mod review;
pub mod routes;
pub mod server;
pub mod verify;

pub use app::{Running, Server};
pub use config::Config;
