//! Authentication: who is calling. A request without a valid API key stops here with 401.
//!
//! The key is read from `Authorization: Bearer <key>` or `X-API-Key: <key>`. On success the
//! caller's [`Principal`] goes on the request (for the guards inside) and on the response (for
//! the audit guard outside).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::{Guard, Next, PresentedKeyId, Principal, call_next, error_response, reject};
use crate::keys::{Authn, KeyStore};
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

fn unauthorised(message: &str, id: Option<String>) -> Response {
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
        let outcome = self.keys.authenticate(key, now_ms());
        let record = match outcome {
            Ok(Authn::Valid(r)) => r,
            Ok(Authn::Malformed) => return unauthorised("malformed API key", None),
            Ok(Authn::Unknown(id)) => return unauthorised("invalid API key", id),
            Ok(Authn::Revoked(id)) => return unauthorised("API key revoked", Some(id)),
            Ok(Authn::Expired(id)) => return unauthorised("API key expired", Some(id)),
            Err(e) => {
                tracing::error!(error = %e, "key store failed");
                let mut r =
                    error_response(StatusCode::SERVICE_UNAVAILABLE, "key store unavailable");
                r.extensions_mut().insert(super::Decision::Error);
                return r;
            }
        };
        let principal = Principal(record);
        req.extensions_mut().insert(principal.clone());
        let mut resp = call_next(next, req).await;
        resp.extensions_mut().insert(principal);
        resp
    }
}
