//! The key of a gRPC call, checked before tonic reads its message.
//!
//! REST refuses a model request without a valid key before it reads the body. tonic reads and
//! decodes a call's whole message (up to 4 MiB) before the translator, and so the guards, see
//! it; what it decodes can be far larger than what was sent (repeated empty messages, a few
//! bytes each on the wire, are a few hundred bytes each decoded). Without this check any client
//! that could reach the port, with no key at all, could make the gateway decode, and hold,
//! hundreds of megabytes per call (2026-12-06 review).
//!
//! So every call but the three the gateway answers without a key (`ServerLive`, `ServerReady`,
//! `ServerMetadata`, as REST's health and server metadata routes) must present a key that
//! authenticates and that may query at least one model (that has the role `deploy`, for
//! Triton's `RepositoryModelLoad` and `RepositoryModelUnload`; `admin`, for `LogSettings` and
//! `TraceSetting`), else
//! it is answered at once,
//! trailers-only, without its message being read: `UNAUTHENTICATED` (no key, a malformed,
//! unknown, revoked or expired one), `PERMISSION_DENIED` (a key without the role), or
//! `UNAVAILABLE` (the key store failed). [`super::audit::AuditUnreached`], outside, writes those
//! calls' entries. The guards inside check the key again, against the model the call names.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use tonic::Status;

use crate::guard::authn::{presented_key, why_refused};
use crate::guard::{Guard, Next, call_next};
use crate::keys::{Authn, ClientIdentity, KeyStore, Role};
use crate::now_ms;

/// The methods of the inference service answered without a key.
const KEYLESS: [&str; 3] = [
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ServerMetadata",
];

/// The methods of the inference service that deploy (the admin stack's, role `deploy`).
pub(crate) const DEPLOYING: [&str; 2] = [
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
];

/// The role a call of the inference service at `path` needs of its key before its message is
/// read: `None` for a query role on some model.
pub(crate) fn role_needed(path: &str) -> Option<Role> {
    if DEPLOYING.contains(&path) {
        Some(Role::Deploy)
    } else if path == "/inference.GRPCInferenceService/LogSettings"
        || path == "/inference.GRPCInferenceService/TraceSetting"
    {
        Some(Role::Admin)
    } else {
        None
    }
}

/// The guard in front of tonic that refuses a call without a usable key before its message is
/// read.
#[derive(Clone)]
pub struct KeyFirst {
    keys: Arc<dyn KeyStore>,
}

impl KeyFirst {
    /// Checks keys against `keys`.
    pub fn new(keys: Arc<dyn KeyStore>) -> Self {
        KeyFirst { keys }
    }

    /// Why a call with these headers may not go on, if it may not.
    fn refusal(&self, req: &Request) -> Option<Status> {
        if KEYLESS.contains(&req.uri().path()) {
            return None;
        }
        let path = req.uri().path();
        refusal(
            &*self.keys,
            presented_key(req.headers()),
            req.extensions().get::<ClientIdentity>(),
            role_needed(path),
        )
    }
}

/// Why the key `presented` (from the connection's client `client`) may not make a call that
/// needs one, if it may not: `UNAUTHENTICATED` for no key or one that does not authenticate,
/// `PERMISSION_DENIED` for one that may query no model (that lacks the role `needs`, when
/// given), `UNAVAILABLE` when the key store failed. A stream checks its key with it again before
/// each message (`super::stream`).
pub(crate) fn refusal(
    keys: &dyn KeyStore,
    presented: Option<&str>,
    client: Option<&ClientIdentity>,
    needs: Option<Role>,
) -> Option<Status> {
    let Some(presented) = presented else {
        return Some(Status::unauthenticated(
            "missing API key (send 'authorization: Bearer pal_…')",
        ));
    };
    match keys.authenticate_from(presented, client, now_ms()) {
        Ok(Authn::Valid(key)) => match needs {
            Some(role) => (!key.has(&role))
                .then(|| Status::permission_denied(format!("the API key lacks the '{role}' role"))),
            None => (!key.roles.iter().any(|r| matches!(r, Role::Query(_))))
                .then(|| Status::permission_denied("the API key may query no model")),
        },
        Ok(other) => why_refused(&other).map(Status::unauthenticated),
        Err(e) => {
            tracing::error!(error = %e, "key store failed");
            Some(Status::unavailable("key store unavailable"))
        }
    }
}

impl Guard for KeyFirst {
    async fn handle(self, req: Request, next: Next) -> Response {
        match self.refusal(&req) {
            // The request, and its unread body, are dropped here.
            Some(status) => status.into_http::<Body>(),
            None => call_next(next, req).await,
        }
    }
}
