//! Authentication: who is calling. A request without a valid API key stops here with 401.
//!
//! The key is read from `Authorization: Bearer <key>` or `X-API-Key: <key>`. A key bound to a
//! client certificate, or to a name, is valid only on a connection that presented that
//! certificate, or one with that name (the listener puts the connection's [`ClientIdentity`] on
//! each of its requests). On success the
//! caller's [`Principal`] goes on the request (for the guards inside) and on the response (for
//! the audit guard outside).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::{Guard, Next, PresentedKeyId, Principal, call_next, error_response, reject};
use crate::keys::{Authn, ClientIdentity, KeyStore};
use crate::now_ms;

/// The authentication guard.
#[derive(Clone)]
pub struct Authenticate {
    keys: Arc<dyn KeyStore>,
}

impl Authenticate {
    /// Checks keys against `keys`.
    pub fn new(keys: Arc<dyn KeyStore>) -> Self {
        Authenticate { keys }
    }
}

/// The key presented in `headers`, if any.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        return v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(str::trim);
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Why `outcome` lets no request through, as the refusal's message; `None` for a valid key.
/// The one wording of these refusals: REST's 401 here, gRPC's `UNAUTHENTICATED` before a
/// message is read (`grpc::keyfirst`), and an admin action's check just before it runs
/// (`guard::audit::WriteAhead`).
pub(crate) fn why_refused(outcome: &Authn) -> Option<&'static str> {
    match outcome {
        Authn::Valid(_) => None,
        Authn::Malformed => Some("malformed API key"),
        Authn::Unknown(_) => Some("invalid API key"),
        Authn::Revoked(_) => Some("API key revoked"),
        Authn::Expired(_) => Some("API key expired"),
        Authn::WrongClient(_) => Some(
            "API key bound to a client certificate (or to a name in one) that this connection \
             did not present (connect with mutual TLS and a certificate the key is bound to)",
        ),
    }
}

/// The answer when the key store itself failed: 503, logged, its details kept out of it.
pub(crate) fn key_store_failed(e: &crate::keys::KeyError) -> Response {
    tracing::error!(error = %e, "key store failed");
    let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, "key store unavailable");
    r.extensions_mut().insert(super::Decision::Error);
    r
}

/// A 401 with `WWW-Authenticate`, naming the key presented when it is known.
pub(crate) fn unauthorised(message: &str, id: Option<String>) -> Response {
    let mut r = reject(StatusCode::UNAUTHORIZED, "authenticate", message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"palisade\""),
    );
    if let Some(id) = id {
        r.extensions_mut().insert(PresentedKeyId(id));
    }
    r
}

impl Guard for Authenticate {
    async fn handle(self, mut req: Request, next: Next) -> Response {
        let Some(key) = presented_key(req.headers()) else {
            return unauthorised("missing API key (send 'Authorization: Bearer pal_…')", None);
        };
        let client = req.extensions().get::<ClientIdentity>();
        let outcome = match self.keys.authenticate_from(key, client, now_ms()) {
            Ok(o) => o,
            Err(e) => return key_store_failed(&e),
        };
        let record = match outcome {
            Authn::Valid(r) => r,
            other => {
                let why = why_refused(&other).unwrap_or("invalid API key");
                let id = match other {
                    Authn::Unknown(id) => id,
                    Authn::Revoked(id) | Authn::Expired(id) | Authn::WrongClient(id) => Some(id),
                    Authn::Malformed | Authn::Valid(_) => None,
                };
                return unauthorised(why, id);
            }
        };
        let principal = Principal(record);
        req.extensions_mut().insert(principal.clone());
        let mut resp = call_next(next, req).await;
        resp.extensions_mut().insert(principal);
        resp
    }
}
