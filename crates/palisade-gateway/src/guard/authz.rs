//! Authorisation, least privilege: what the caller may do. Each route needs one role:
//!
//! | route | role |
//! |---|---|
//! | `/v2/models/{m}/…` | `query:{m}` or `query:*` |
//! | `/v2/models/stats`, `/v2/repository/index` | any `query` role (the answer holds the models it covers) |
//! | `/v2/audit/…` | `audit` |
//! | `/v2/admin/keys…` | `admin` + a TOTP code |
//! | `/v2/logging` | `admin`, + a TOTP code to change them |
//! | `/v2/admin/models…`, `/v2/repository/models/{m}/load` and `…/unload` | `deploy` + a TOTP code |
//!
//! (`ingest` and `train` exist for the data and training endpoints; no route needs them yet.)
//! Anything else under a guarded prefix is refused. The TOTP code travels in `X-Palisade-TOTP`
//! and is accepted once.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::Response;

use super::{Guard, Next, Principal, call_next, reject, reject_retry};
use crate::keys::{KeyError, KeyStore, Role};
use crate::now_ms;
use crate::oip::{Target, target_of};

/// The header that carries a TOTP code.
pub const TOTP_HEADER: &str = "x-palisade-totp";

/// The authorisation guard.
#[derive(Clone)]
pub struct Authorise {
    keys: Arc<dyn KeyStore>,
}

impl Authorise {
    /// Checks TOTP codes against `keys`.
    pub fn new(keys: Arc<dyn KeyStore>) -> Self {
        Authorise { keys }
    }
}

const GUARD: &str = "authorise";

impl Guard for Authorise {
    async fn handle(self, mut req: Request, next: Next) -> Response {
        let Some(Principal(key)) = req.extensions().get::<Principal>().cloned() else {
            // The stack is built so that this cannot happen; refuse rather than serve.
            return reject(StatusCode::UNAUTHORIZED, GUARD, "not authenticated");
        };
        let target = target_of(&mut req);
        let (role, mfa) = match &*target {
            Target::Model { name, .. } => {
                if key.may_query(name) {
                    return call_next(next, req).await;
                }
                return reject(
                    StatusCode::FORBIDDEN,
                    GUARD,
                    &format!("key {} may not query model '{name}'", key.id),
                );
            }
            // Answered with the statistics, or the index entries, of the models the key may
            // query, and only those.
            Target::Statistics | Target::RepositoryIndex => {
                if key.may_query_some() {
                    return call_next(next, req).await;
                }
                return reject(
                    StatusCode::FORBIDDEN,
                    GUARD,
                    &format!("key {} may not query any model", key.id),
                );
            }
            Target::Audit => (Role::Audit, false),
            Target::AdminKeys => (Role::Admin, true),
            Target::AdminModels => (Role::Deploy, true),
            Target::Logging | Target::Trace { .. } => (
                Role::Admin,
                !matches!(*req.method(), Method::GET | Method::HEAD),
            ),
            Target::Unknown => {
                return reject(StatusCode::NOT_FOUND, GUARD, "no such route");
            }
        };
        if !key.has(&role) {
            return reject(
                StatusCode::FORBIDDEN,
                GUARD,
                &format!("key {} lacks the '{role}' role", key.id),
            );
        }
        if mfa {
            let code = req
                .headers()
                .get(TOTP_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::trim);
            let Some(code) = code else {
                return reject(
                    StatusCode::UNAUTHORIZED,
                    GUARD,
                    "this action needs a TOTP code in X-Palisade-TOTP",
                );
            };
            // A TOTP check commits (and fsyncs) its count: off the async workers.
            let code = code.to_string();
            let (keys, id, c) = (self.keys.clone(), key.id.clone(), code.clone());
            let checked = tokio::task::spawn_blocking(move || keys.check_totp(&id, &c, now_ms()))
                .await
                .unwrap_or_else(|e| Err(KeyError::Invalid(format!("the TOTP check failed: {e}"))));
            match checked {
                Ok(true) => {}
                Ok(false) => {
                    return reject(
                        StatusCode::UNAUTHORIZED,
                        GUARD,
                        "wrong, expired or already used TOTP code",
                    );
                }
                Err(KeyError::TotpLocked { until_ms, .. }) => {
                    // Refused codes in a row: perhaps someone with a stolen key trying codes.
                    let secs = until_ms.saturating_sub(now_ms()).div_ceil(1000).max(1);
                    tracing::warn!(key_id = %key.id, retry_after_s = secs, "TOTP checks locked after too many wrong codes");
                    return reject_retry(
                        StatusCode::TOO_MANY_REQUESTS,
                        GUARD,
                        &format!(
                            "too many wrong TOTP codes for key {}: try again in {secs} s",
                            key.id
                        ),
                        secs,
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "TOTP check failed");
                    return reject(
                        StatusCode::SERVICE_UNAVAILABLE,
                        GUARD,
                        "key store unavailable",
                    );
                }
            }
            let resp = call_next(next, req).await;
            if super::audit::not_taken(&resp)
                || resp.extensions().get::<super::RetryAsIs>().is_some()
            {
                // The action did not run (the audit log could not take its intent), or failed so
                // that running it again is harmless: the code its check used up is given back,
                // so the caller can retry with it.
                let (keys, id) = (self.keys.clone(), key.id.clone());
                let given =
                    tokio::task::spawn_blocking(move || keys.release_totp(&id, &code, now_ms()))
                        .await;
                if !matches!(given, Ok(Ok(_))) {
                    tracing::warn!("could not give back the TOTP code of an action to retry");
                }
            }
            return resp;
        }
        call_next(next, req).await
    }
}
