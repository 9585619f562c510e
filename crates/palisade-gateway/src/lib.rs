//! The Palisade gateway: a model server speaking the Open Inference Protocol (KServe v2), with
//! its security guards in the same process.
//!
//! # The guard stack
//!
//! Each guard is a tower layer with one concern, in its own module under [`guard`], configured
//! per model by a [`policy::Policy`]. A request goes in through the layers and its response comes
//! back out through them, like the layers of an onion:
//!
//! ```text
//!                    requests                                   responses
//!                     │                                             ▲
//!   ┌─────────────────┼─────────────── metrics ─────────────────────┼─────────────────┐
//!   │ ┌───────────────┼─────────────── audit ───────────────────────┼───────────────┐ │  entry durable, then released
//!   │ │ ┌─────────────┼─────────────── authenticate ────────────────┼─────────────┐ │ │
//!   │ │ │ ┌───────────┼─────────────── methods ─────────────────────┼───────────┐ │ │ │  405 for another method
//!   │ │ │ │ ┌─────────┼─────────────── authorise ───────────────────┼─────────┐ │ │ │ │
//!   │ │ │ │ │ ┌───────┼─────────────── admit ───────────────────────┼───────┐ │ │ │ │ │  503 when the queue is full
//!   │ │ │ │ │ │ ┌─────┼─────────────── rate limit ──────────────────┼─────┐ │ │ │ │ │ │  + RateLimit headers
//!   │ │ │ │ │ │ │ ┌───┼─────────────── validate ────────────────────┼───┐ │ │ │ │ │ │ │
//!   │ │ │ │ │ │ │ │ ┌─┼─────────────── charge batch ────────────────┼─┐ │ │ │ │ │ │ │ │  the batch's other samples
//!   │ │ │ │ │ │ │ │ │ │ ┌───────────── harden output ─────────────┐ │ │ │ │ │ │ │ │ │ │  logits → body
//!   │ │ │ │ │ │ │ │ │ │ │              infer (model)              │ │ │ │ │ │ │ │ │ │ │
//!   │ │ │ │ │ │ │ │ │ │ └─────────────────────────────────────────┘ │ │ │ │ │ │ │ │ │ │
//!   └─┴─┴─┴─┴─┴─┴─┴─┴─┴─────────────────────────────────────────────┴─┴─┴─┴─┴─┴─┴─┴─┴─┘
//! ```
//!
//! - **metrics** ([`metrics::Measure`]): counts and times every request (no per-client labels).
//! - **audit** ([`guard::audit`]): appends every request's outcome to the Merkle log and waits
//!   until it is durable before the response leaves; fails closed. It also records an infer
//!   request's statistics ([`stats::Tally`]), a success only if it releases the answer.
//! - **authenticate** ([`guard::authn`]): API key → 401.
//! - **methods** ([`guard::allow`]): a model route's methods (`POST` for infer and the
//!   repository index, `GET` or `HEAD` for the rest) → 405 with `Allow`.
//! - **authorise** ([`guard::authz`]): role for the route, TOTP for admin actions → 403/401,
//!   429 once a key's TOTP is locked after wrong codes.
//! - **admit** ([`guard::admit`]): the inference queue at its limit → 503 with `Retry-After`,
//!   before any quota is charged (it looks at the queue and reserves nothing).
//! - **rate limit** ([`guard::ratelimit`]): GCRA per key (a key and its successors by rotation
//!   count as one) and per model, daily budget → 429, counted in a
//!   [`guard::ratelimit::LimitStore`] (503 when it cannot answer). A model's versions with
//!   different rates are limited apart. Limits count samples: one is charged here, before the
//!   body is read.
//! - **validate** ([`guard::validate`]): body size and arrival time, decompression, OIP decoding,
//!   shape, dtype, range, NaN/Inf → 413/408/415/400; a batch larger than the limits could ever
//!   let through → 400.
//! - **charge batch** ([`guard::ratelimit::ChargeBatch`]): a batch's other samples → 429.
//! - **harden output** ([`guard::harden`]): the only code that turns logits into a response body.
//! - **infer** ([`infer::ModelService`]): runs the classifier on one of a fixed set of
//!   inference threads ([`pool::InferencePool`]).
//!
//! A refusal by any guard is a JSON `{"error": …}` with the right status (a 4xx, or 503 for an
//! overload), and still passes back out
//! through audit and metrics. Guards pass facts along only as typed extensions
//! ([`guard::Principal`], [`guard::ValidatedInfer`], [`guard::Decision`], …).
//!
//! The admin and audit API has a stack of its own: audit, authenticate, authorise (TOTP for
//! admin actions), write-ahead ([`guard::audit::WriteAhead`]: an `intent` entry on the log
//! before an admin action runs; 503 and no action when the log cannot take it). A request that can change something, from a valid `admin` or `deploy` key,
//! runs in a task of its own (at most 64 at once), so that an action whose client leaves still
//! runs to its end and its audit entry; [`Gateway::settle`] waits for those tasks at shutdown.
//!
//! gRPC calls are translated into REST requests and sent through the same stack ([`grpc`]); the
//! calls refused before they can be (tonic could not decode them, say) get their audit entries
//! from [`grpc::audit::AuditUnreached`], around the gRPC service.
//!
//! # State
//!
//! Keys ([`keys::KeyStore`]), the audit log ([`audit::AuditLog`]) and the rate limits with the
//! daily budgets ([`guard::ratelimit::LimitStore`]) are traits; the embedded implementations keep
//! them in an SQLite folder ([`server::LocalState`]: `keys.db`, `audit.db`, and `limits.db` for
//! the daily budgets) and, for the rates, in memory.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::path::Path;

pub mod admin;
pub mod audit;
pub mod baseline;
pub mod deadline;
pub mod grpc;
pub mod guard;
mod hexfmt;
pub mod identity;
pub mod infer;
pub mod keys;
pub mod listen;
pub mod loader;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod oip;
pub mod policy;
pub mod pool;
mod schema;
pub mod server;
pub mod stats;
pub mod tls;
pub mod trace;
#[cfg(feature = "tract")]
pub mod tract_runtime;

#[cfg(test)]
pub(crate) mod test_support {
    /// A tracing subscriber that runs its function on each warning logged.
    pub(crate) struct OnWarn(pub(crate) Box<dyn Fn() + Send + Sync>);

    impl tracing::Subscriber for OnWarn {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, e: &tracing::Event<'_>) {
            if *e.metadata().level() == tracing::Level::WARN {
                (self.0)();
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }
}

pub use listen::{ServeOptions, serve, serve_tls_with, serve_with};
pub use model::{ModelRepository, ServedModel};
pub use policy::{Count, Policy};
pub use server::{Gateway, LocalState, StatePaths};

/// Errors setting up or running a gateway.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A file or socket failed.
    #[error("cannot access {path}")]
    Io {
        /// What was being accessed.
        path: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The key store failed.
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    /// The audit log failed.
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    /// A policy is unusable.
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// The rate limits' state (the daily budgets' ledger) could not be opened.
    #[error(transparent)]
    Limits(#[from] guard::ratelimit::LimitError),
    /// The state folder is inconsistent.
    #[error("state: {0}")]
    State(String),
    /// Another process (a running gateway) holds the state folder.
    #[error("{0} is in use by another gateway (stop it, or give this one its own --state)")]
    InUse(std::path::PathBuf),
    /// A model could not be loaded or deployed.
    #[error("model: {0}")]
    Model(String),
    /// The inference threads could not be started.
    #[error("cannot start the inference threads")]
    Threads(#[source] std::io::Error),
}

impl GatewayError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        GatewayError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Hex helpers used in the JSON forms of digests and keys.
pub mod hex {
    pub use crate::hexfmt::{decode, decode_32, encode};
}
