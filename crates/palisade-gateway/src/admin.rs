//! The admin and audit API, behind the same guards as the model routes (the roles and the TOTP
//! check are the authorise guard's; every call is audited).
//!
//! | method | path | role |
//! |---|---|---|
//! | GET | `/v2/admin/keys` | admin |
//! | POST | `/v2/admin/keys` `{"name", "roles", "expires_in_s"?, "client_cert_sha256"?}` | admin |
//! | POST | `/v2/admin/keys/{id}/revoke` | admin |
//! | POST | `/v2/admin/keys/{id}/rotate` `{"overlap_s", "client_cert_sha256"?}` | admin |
//! | POST | `/v2/admin/keys/{id}/budget/reset` `{"model"?}` | admin |
//! | POST | `/v2/admin/models/{m}/load` `{"version"}` | deploy |
//! | POST | `/v2/admin/models/{m}/rollback` | deploy |
//! | POST | `/v2/repository/models/{m}/load` `{"parameters"?}` (Triton's) | deploy |
//! | POST | `/v2/repository/models/{m}/unload` `{"parameters"?}` (Triton's) | deploy |
//! | GET | `/v2/logging` (Triton's) | admin, no TOTP |
//! | POST | `/v2/logging` `{"log_info"?, "log_verbose_level"?, …}` (Triton's) | admin |
//! | GET | `/v2[/models/{m}]/trace/setting` (Triton's) | admin, no TOTP |
//! | POST | `/v2[/models/{m}]/trace/setting` `{"trace_level"?, "trace_rate"?, …}` (Triton's) | admin |
//! | GET | `/v2/audit/checkpoint` | audit |
//! | GET | `/v2/audit/entries/{i}` | audit |
//! | GET | `/v2/audit/proof/inclusion?index=I&size=N` | audit |
//! | GET | `/v2/audit/proof/consistency?first=M&second=N` | audit |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;

use crate::audit::{AuditError, AuditLog};
use crate::guard::{Decision, error_response, json_response, off_worker_if};
use crate::hexfmt;
use crate::keys::{ClientBinding, KeyError, KeyStore, Role};
use crate::model::{ModelRepository, RepositoryError};
use crate::now_ms;
use base64::Engine as _;

/// What the admin API works on.
#[derive(Clone)]
pub struct AdminState {
    /// Keys.
    pub keys: Arc<dyn KeyStore>,
    /// Models.
    pub models: Arc<ModelRepository>,
    /// The audit log.
    pub audit: Arc<dyn AuditLog>,
    /// The checkpoint public key.
    pub audit_public_key: [u8; 32],
    /// Where new versions are loaded from (`None`: loading is refused).
    pub source: Option<crate::loader::ModelSource>,
    /// Where rollbacks are kept across restarts (`None`: in memory only).
    pub withdrawn: Option<Arc<crate::loader::Withdrawn>>,
    /// The rate limits and daily budgets, for giving a budget back.
    pub limits: Arc<dyn crate::guard::ratelimit::LimitStore>,
    /// The process's logger (`None`: `/v2/logging` answers 404).
    pub log: Option<Arc<dyn crate::logging::LogControl>>,
    /// The tracer (`None`: the trace settings answer 404).
    pub trace: Option<Arc<crate::trace::Tracer>>,
}

/// The admin and audit routes.
pub fn router(state: AdminState) -> Router {
    // The router sends the trace paths with a trailing slash here too, as the guards read them.
    let global_trace = get(global_trace_settings).post(update_global_trace_settings);
    let model_trace = get(model_trace_settings).post(update_model_trace_settings);
    Router::new()
        .route("/v2/admin/keys", get(list_keys).post(create_key))
        .route("/v2/admin/keys/{id}/revoke", post(revoke_key))
        .route("/v2/admin/keys/{id}/rotate", post(rotate_key))
        .route("/v2/admin/keys/{id}/budget/reset", post(reset_budget))
        .route("/v2/admin/models/{model}/load", post(load_model))
        .route("/v2/admin/models/{model}/rollback", post(rollback))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route("/v2/logging", get(log_settings).post(update_log_settings))
        .route("/v2/trace/setting", global_trace.clone())
        .route("/v2/trace/setting/", global_trace)
        .route("/v2/models/{model}/trace/setting", model_trace.clone())
        .route("/v2/models/{model}/trace/setting/", model_trace)
        .route("/v2/audit/checkpoint", get(checkpoint))
        .route("/v2/audit/entries/{index}", get(entry))
        .route("/v2/audit/proof/inclusion", get(inclusion))
        .route("/v2/audit/proof/consistency", get(consistency))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(crate::server::method_not_allowed)
        .with_state(state)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

fn bad_request(message: &str) -> Response {
    let mut r = error_response(StatusCode::BAD_REQUEST, message);
    r.extensions_mut().insert(Decision::Denied("validate"));
    r
}

fn key_error(e: KeyError) -> Response {
    let status = match e {
        KeyError::NotFound(_) => StatusCode::NOT_FOUND,
        KeyError::Role(_) | KeyError::Invalid(_) => StatusCode::BAD_REQUEST,
        _ => return internal("the key store failed", &e).answer(),
    };
    error_response(status, &e.to_string())
}

/// A corrupt log is said as such, with what is wrong (no file's path: those come from opening
/// the log, not from reading it): for an auditor that is the finding itself.
fn audit_error(e: AuditError) -> Response {
    match e {
        AuditError::OutOfRange(_) => error_response(StatusCode::BAD_REQUEST, &e.to_string()),
        AuditError::Corrupt(_) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        AuditError::Closed => error_response(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        _ => internal("the audit log could not be read", &e).answer(),
    }
}

/// A 500 whose cause goes to the log only: a storage error's text names the state folder's
/// files and the database's own words, which are for the operator reading the log, not for a
/// caller. `what` says, in the answer and the log line, what failed.
fn internal(what: &str, e: &dyn std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "{what}");
    Refusal::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("{what} (the gateway's log has the details)"),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    roles: Vec<String>,
    #[serde(default)]
    expires_in_s: Option<u64>,
    /// The client certificate to bind the key to (`keys::ClientCertificate`).
    #[serde(default)]
    client_cert_sha256: Option<String>,
    /// The subject alternative name to bind the key to (`keys::SubjectName`), instead.
    #[serde(default)]
    client_san: Option<String>,
}

/// The binding a request asks for: a thumbprint or a name, parsed ([`ClientBinding::one_of`]).
fn binding(
    thumbprint: Option<&str>,
    name: Option<&str>,
) -> Result<Option<ClientBinding>, KeyError> {
    ClientBinding::one_of(
        thumbprint.map(str::parse).transpose()?,
        name.map(str::parse).transpose()?,
    )
}

/// Runs `f` off the async workers ([`off_worker_if`]): the key database and the audit log are
/// read and written there, since a write is fsynced and either may wait for a lock another
/// process holds; so are model loads, deploys and rollbacks. Its error, if any, is answered by
/// `answer`.
async fn off_workers<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
    answer: fn(E) -> Response,
) -> Result<T, Response>
where
    T: Send + 'static,
    E: Send + 'static,
{
    off_worker_if(true, "admin action", f)
        .await?
        .map_err(answer)
}

async fn list_keys(State(s): State<AdminState>) -> Response {
    let keys = s.keys.clone();
    match off_workers(move || keys.list(), key_error).await {
        Ok(k) => json_response(StatusCode::OK, &k),
        Err(r) => r,
    }
}

async fn create_key(State(s): State<AdminState>, body: Bytes) -> Response {
    let req: CreateKey = match parse_json(&body) {
        Ok(r) => r,
        Err(m) => return bad_request(&m),
    };
    let roles: Result<Vec<Role>, KeyError> = req.roles.iter().map(|r| r.parse()).collect();
    let roles = match roles {
        Ok(r) => r,
        Err(e) => return key_error(e),
    };
    let bind = match binding(req.client_cert_sha256.as_deref(), req.client_san.as_deref()) {
        Ok(b) => b,
        Err(e) => return key_error(e),
    };
    let now = now_ms();
    let expires = req
        .expires_in_s
        .map(|s| now.saturating_add(s.saturating_mul(1000)));
    let keys = s.keys.clone();
    match off_workers(
        move || keys.create_bound(&req.name, &roles, expires, bind, now),
        key_error,
    )
    .await
    {
        Ok(k) => json_response(StatusCode::CREATED, &k),
        Err(r) => r,
    }
}

/// Path parameters. The outer router's wildcard is among them, so handlers take them all and
/// pick theirs by name.
type Params = Path<HashMap<String, String>>;

fn param(p: &HashMap<String, String>, name: &str) -> String {
    p.get(name).cloned().unwrap_or_default()
}

async fn revoke_key(State(s): State<AdminState>, Path(p): Params) -> Response {
    let id = param(&p, "id");
    // A revocation also waits out the other gateways' key caches (`keys::SETTLE`).
    let keys = s.keys.clone();
    let key = id.clone();
    match off_workers(move || keys.revoke(&key, now_ms()), key_error).await {
        Ok(changed) => json_response(
            StatusCode::OK,
            &serde_json::json!({ "id": id, "revoked": true, "was_active": changed }),
        ),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    overlap_s: u64,
    /// The client certificate to bind the successor to, in place of the old key's binding.
    #[serde(default)]
    client_cert_sha256: Option<String>,
    /// The subject alternative name to bind the successor to, in place of the old key's.
    #[serde(default)]
    client_san: Option<String>,
}

async fn rotate_key(State(s): State<AdminState>, Path(p): Params, body: Bytes) -> Response {
    let id = param(&p, "id");
    let req: Rotate = match parse_json(&body) {
        Ok(r) => r,
        Err(m) => return bad_request(&m),
    };
    let bind = match binding(req.client_cert_sha256.as_deref(), req.client_san.as_deref()) {
        Ok(b) => b,
        Err(e) => return key_error(e),
    };
    let keys = s.keys.clone();
    let overlap = Duration::from_secs(req.overlap_s);
    let rotate = move || keys.rotate_rebinding(&id, overlap, bind, now_ms());
    match off_workers(rotate, key_error).await {
        Ok(k) => json_response(StatusCode::CREATED, &k),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBudget {
    #[serde(default)]
    model: Option<String>,
}

/// Gives back the daily budget of key `id`'s line (the key, the key it was rotated from and
/// those rotated from it) on one model, or on every model served when the body names none (an
/// empty body does): its count starts afresh, whatever day it counted. For a customer refused
/// by mistake, or a budget spent while the clock ran days ahead, which would otherwise stay
/// spent until the clock reached that day. The rates are left as they are.
async fn reset_budget(State(s): State<AdminState>, Path(p): Params, body: Bytes) -> Response {
    let id = param(&p, "id");
    let req: ResetBudget = if body.iter().all(u8::is_ascii_whitespace) {
        ResetBudget { model: None }
    } else {
        match parse_json(&body) {
            Ok(r) => r,
            Err(m) => return bad_request(&m),
        }
    };
    let models = match req.model {
        Some(m) if s.models.get(&m, None).is_none() => {
            return error_response(
                StatusCode::NOT_FOUND,
                &format!("no model named {m:?} is served"),
            );
        }
        Some(m) => vec![m],
        None => s.models.names(),
    };
    let keys = s.keys.clone();
    let wanted = id.clone();
    let record = match off_workers(move || keys.find(&wanted), key_error).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(record) = record else {
        return key_error(KeyError::NotFound(id));
    };
    let mut budgets = Vec::with_capacity(models.len());
    let now = now_ms();
    for model in models {
        match s.limits.reset_budget(&record.lineage, &model, now).await {
            Ok(given_back) => {
                budgets.push(serde_json::json!({ "model": model, "given_back": given_back }));
            }
            Err(e) => {
                tracing::error!(error = %e, key = %id, model, "giving back a daily budget failed");
                // What was given back before the failure is said here: a retry finds those
                // budgets already given back. A retry repeats nothing harmful, so the TOTP code
                // is given back for it.
                let mut r = json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({
                        "error": format!(
                            "giving back the budget on {model:?} failed (the gateway's log has \
                             the details); retry"
                        ),
                        "id": id,
                        "line": record.lineage,
                        "budgets": budgets,
                    }),
                );
                r.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                );
                r.extensions_mut().insert(crate::guard::RetryAsIs);
                return r;
            }
        }
    }
    json_response(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "line": record.lineage, "budgets": budgets }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBody {
    version: String,
}

/// Hot-swap: loads `<repo>/<model>/<version>` through the signature and scan checks and makes it
/// the active version. 422 when it fails a check, 409 when that version is already served.
async fn load_model(State(s): State<AdminState>, Path(p): Params, body: Bytes) -> Response {
    let model = param(&p, "model");
    let Some(source) = s.source.clone() else {
        return error_response(
            StatusCode::CONFLICT,
            "this gateway was started without a model repository to load from",
        );
    };
    let body: LoadBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(&format!("expected {{\"version\": \"…\"}}: {e}")),
    };
    if s.models.versions(&model).contains(&body.version) {
        return error_response(
            StatusCode::CONFLICT,
            &format!("{model} version {} is already loaded", body.version),
        );
    }
    let name = model.clone();
    let version = body.version.clone();
    let load = move || {
        source
            .load(&name, &version)
            .map_err(|e| load_refused(&source.repo, e))
    };
    let served = match off_workers(load, Refusal::answer).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    deploy(&s, served, Chosen::Named).await
}

/// Why a version was not loaded: 422 with the check it failed (a signature, the scan, the
/// policy), which the deployer needs to mend it; 500 when the folder could not be read, whose
/// cause goes to the log. The checks name the files they judged by their paths on this machine;
/// the answer names them relative to the repository folder `repo` (`lin/2/model.sig`), and the
/// log keeps the whole message.
fn load_refused(repo: &std::path::Path, e: crate::GatewayError) -> Refusal {
    match e {
        crate::GatewayError::Io { .. } => internal("could not read the model repository", &e),
        _ => {
            let full = e.to_string();
            let answer = relative_to(repo, &full);
            if answer != full {
                tracing::warn!(refused = %full, "a model version failed its checks");
            }
            Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, &answer)
        }
    }
}

/// `message` with each path under `repo` said relative to it (the folder itself as `.`).
fn relative_to(repo: &std::path::Path, message: &str) -> String {
    let root = repo.display().to_string();
    let root = root.trim_end_matches(std::path::MAIN_SEPARATOR);
    if root.is_empty() {
        return message.to_string();
    }
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(root) {
        out.push_str(&rest[..at]);
        let after = &rest[at + root.len()..];
        // Only a whole path: `models/` is not the end of `mnist-models/` (what came before, in
        // `out`, ends with something that cannot be on a path).
        if out.chars().next_back().is_some_and(path_char) {
            out.push_str(root);
            rest = after;
            continue;
        }
        // Only a whole path component: `/srv/models` is not the start of `/srv/models-old`.
        if let Some(tail) = after.strip_prefix(std::path::MAIN_SEPARATOR) {
            rest = tail;
        } else if after.is_empty() || after.starts_with(|c: char| !path_char(c)) {
            out.push('.');
            rest = after;
        } else {
            out.push_str(root);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Whether `c` can go on a path in a message (a name character or a separator): what follows
/// the repository folder's own path in a message, when it is not one of these, ends that path.
fn path_char(c: char) -> bool {
    c.is_alphanumeric() || "._-~+@".contains(c) || std::path::is_separator(c)
}

/// How a load chose the version it deploys.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chosen {
    /// Named by the caller (the admin API's load).
    Named,
    /// The repository folder's highest version neither rolled back nor kept down (Triton's
    /// load; [`crate::loader::highest_version`]).
    Highest,
}

/// Makes `served`, loaded through every check, the active version of its model, and notes it
/// loaded first ([`crate::loader::Withdrawn::loaded`]: off the rolled-back versions; if its
/// model was unloaded, the model off the unloaded ones and its other versions in the folder kept
/// down, so that a restart serves what is served then). A version chosen as the highest not
/// rolled back is refused (409) if a rollback took it down meanwhile.
async fn deploy(s: &AdminState, served: crate::model::ServedModel, chosen: Chosen) -> Response {
    // A version refused here (loaded meanwhile) is freed where it is dropped: off the workers.
    let models = s.models.clone();
    let withdrawn = s.withdrawn.clone();
    let repo = s.source.as_ref().map(|src| src.repo.clone());
    let deploy = move || {
        let _swapping = withdrawn.as_ref().map(|w| w.swapping());
        if let Some(w) = &withdrawn {
            let (name, version) = (&served.name, &served.version);
            // Chosen as the highest version not kept down: still so, under the lock.
            if chosen == Chosen::Highest
                && let Some(repo) = &repo
            {
                let (_, highest) =
                    crate::loader::highest_version(repo, name, Some(w)).map_err(Swap::Listing)?;
                if w.contains(name, version) {
                    return Err(Swap::Conflict(format!(
                        "version '{version}' of '{name}' was taken down while it was being \
                         loaded (rolled back, or kept down by a load of another version)"
                    )));
                }
                if highest.as_deref() != Some(version.as_str()) {
                    return Err(Swap::Conflict(format!(
                        "the repository changed while '{name}' was being loaded (its highest \
                         version not kept down is now '{}'): load it again",
                        highest.unwrap_or_default()
                    )));
                }
            }
            let others = match (&repo, w.unloaded(name)) {
                (Some(repo), true) => crate::loader::versions(repo, name).map_err(Swap::Listing)?,
                _ => Vec::new(),
            };
            w.loaded(name, version, &others).map_err(Swap::State)?;
        }
        match models.deploy(served) {
            // Two of Triton's loads at once (a retry, say): the second finds done what it asked.
            Err(RepositoryError::Exists(name, version)) if chosen == Chosen::Highest => models
                .get(&name, None)
                .filter(|m| m.version == version)
                .ok_or(Swap::Repository(RepositoryError::Exists(name, version))),
            done => done.map_err(Swap::Repository),
        }
    };
    match off_workers(deploy, Swap::answer).await {
        Ok(m) => json_response(
            StatusCode::OK,
            &serde_json::json!({ "model": m.name, "active_version": m.version }),
        ),
        Err(r) => r,
    }
}

/// Why a request is refused: its status and message (small, where a `Response` is not).
struct Refusal(StatusCode, String);

impl Refusal {
    fn new(status: StatusCode, message: &str) -> Self {
        Refusal(status, message.to_string())
    }

    fn bad(message: &str) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, message)
    }

    fn answer(self) -> Response {
        error_response(self.0, &self.1)
    }
}

/// The body of Triton's load and unload requests: empty, `{}` or `{"parameters": {…}}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

/// Checks the body of Triton's load (`unload` false) or unload request. Of Triton's parameters,
/// an unload's `unload_dependents` is taken (Palisade serves no ensembles: no model has
/// dependents); a load's `config` and `file:…`, which would replace what the repository folder
/// holds, are refused, as is anything else.
fn repository_request(body: &[u8], unload: bool) -> Result<(), Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let r: RepositoryRequest = serde_json::from_slice(body).map_err(|e| {
        Refusal::bad(&format!(
            "expected an empty body or {{\"parameters\": {{…}}}}: {e}"
        ))
    })?;
    for (name, value) in &r.parameters {
        match name.as_str() {
            "unload_dependents" if unload && value.is_boolean() => {}
            "unload_dependents" if unload => {
                return Err(Refusal::bad(
                    "parameter 'unload_dependents' must be true or false",
                ));
            }
            "config" if !unload => {
                return Err(Refusal::bad(
                    "Palisade loads only the signed versions in its repository folder: a load's \
                     'config' parameter, which would replace the version's configuration, is \
                     refused",
                ));
            }
            n if !unload && n.starts_with("file:") => {
                return Err(Refusal::bad(&format!(
                    "Palisade loads only the signed versions in its repository folder: a load's \
                     file parameters ('{n}'), which would replace its files, are refused"
                )));
            }
            n => return Err(Refusal::bad(&format!("unknown parameter '{n}'"))),
        }
    }
    Ok(())
}

/// The versions of `model` in the repository folder `repo`, in the repository's order.
fn versions_in(repo: &std::path::Path, model: &str) -> Result<Vec<String>, Refusal> {
    crate::loader::versions(repo, model).map_err(listing_failed)
}

/// The answer to a repository folder that could not be listed.
fn listing_failed(e: crate::GatewayError) -> Refusal {
    internal("could not list the model repository", &e)
}

/// Triton's load (`POST /v2/repository/models/{m}/load`, tritonclient's `load_model`): serves
/// the highest version of `m` in the repository folder neither rolled back nor kept down, loaded
/// through the signature and scan checks, as the admin API's load does. Nothing to do (200) when
/// that version is already the active one; 409 when it is served but another is active (a
/// rollback through the admin API says which), or when every version is down (the admin API
/// loads one by its version); 404 when the folder has no such model.
async fn repository_load(State(s): State<AdminState>, Path(p): Params, body: Bytes) -> Response {
    let model = param(&p, "model");
    if let Err(r) = repository_request(&body, false) {
        return r.answer();
    }
    let Some(source) = s.source.clone() else {
        return error_response(
            StatusCode::CONFLICT,
            "this gateway was started without a model repository to load from",
        );
    };
    let models = s.models.clone();
    let withdrawn = s.withdrawn.clone();
    let name = model.clone();
    // The version chosen, loaded; or, when it is served already, its name.
    let load = move || -> Result<Result<crate::model::ServedModel, String>, Refusal> {
        let (versions, highest) =
            crate::loader::highest_version(&source.repo, &name, withdrawn.as_deref())
                .map_err(listing_failed)?;
        let Some(version) = highest.as_ref() else {
            return Err(if versions.is_empty() {
                Refusal::new(
                    StatusCode::NOT_FOUND,
                    &format!("the repository folder holds no model '{name}'"),
                )
            } else {
                Refusal::new(
                    StatusCode::CONFLICT,
                    &format!(
                        "every version of '{name}' in the repository folder was rolled back or \
                         kept down: load one by its version through POST \
                         /v2/admin/models/{name}/load"
                    ),
                )
            });
        };
        if models.get(&name, Some(version)).is_some() {
            return Ok(Err(version.clone()));
        }
        let served = source
            .load(&name, version)
            .map_err(|e| load_refused(&source.repo, e))?;
        Ok(Ok(served))
    };
    let served = match off_workers(load, Refusal::answer).await {
        Ok(Ok(served)) => served,
        Ok(Err(version)) => {
            let active = s.models.get(&model, None).map(|m| m.version.clone());
            return match active {
                Some(active) if active == version => json_response(
                    StatusCode::OK,
                    &serde_json::json!({ "model": model, "active_version": version }),
                ),
                Some(active) => error_response(
                    StatusCode::CONFLICT,
                    &format!(
                        "version '{version}' of '{model}', the highest not kept down, is \
                         served, but version '{active}' is active: roll back to it through POST \
                         /v2/admin/models/{model}/rollback"
                    ),
                ),
                None => error_response(
                    StatusCode::CONFLICT,
                    &format!("'{model}' was unloaded while it was being loaded: load it again"),
                ),
            };
        }
        Err(r) => return r,
    };
    deploy(&s, served, Chosen::Highest).await
}

/// Triton's unload (`POST /v2/repository/models/{m}/unload`, tritonclient's `unload_model`):
/// stops serving every version of `m`, and notes it in the state folder first, so that a restart
/// does not serve it again (a load, Triton's or the admin API's, does). A request under way
/// keeps its version. 200 too when `m` is in the repository folder but not served (unloaded
/// already, or never loaded: now kept from a restart); 404 when it is neither.
async fn repository_unload(State(s): State<AdminState>, Path(p): Params, body: Bytes) -> Response {
    let model = param(&p, "model");
    if let Err(r) = repository_request(&body, true) {
        return r.answer();
    }
    let models = s.models.clone();
    let withdrawn = s.withdrawn.clone();
    let repo = s.source.as_ref().map(|src| src.repo.clone());
    let name = model.clone();
    let unload = move || -> Result<Vec<String>, Refusal> {
        let gone = {
            let _swapping = withdrawn.as_ref().map(|w| w.swapping());
            if models.versions(&name).is_empty() {
                let in_folder = match &repo {
                    Some(repo) => !versions_in(repo, &name)?.is_empty(),
                    None => false,
                };
                if !in_folder {
                    return Err(Refusal::new(
                        StatusCode::NOT_FOUND,
                        &RepositoryError::NotFound(name.clone()).to_string(),
                    ));
                }
            }
            if let Some(w) = &withdrawn {
                w.set_unloaded(&name, true)
                    .map_err(|e| internal("the state folder could not note the unload", &e))?;
            }
            models.unload(&name).unwrap_or_default()
        };
        // Freed here, off the workers and after the swap lock, unless a request holds a
        // version still.
        Ok(gone.iter().map(|m| m.version.clone()).collect())
    };
    match off_workers(unload, Refusal::answer).await {
        Ok(versions) => json_response(
            StatusCode::OK,
            &serde_json::json!({ "model": model, "unloaded_versions": versions }),
        ),
        Err(r) => r,
    }
}

/// The logger, or the answer that there is none to read or change.
fn logger(s: &AdminState) -> Result<&Arc<dyn crate::logging::LogControl>, Refusal> {
    s.log.as_ref().ok_or_else(|| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            "this gateway's logging cannot be read or changed while it runs",
        )
    })
}

/// Triton's `GET /v2/logging` (tritonclient's `get_log_settings`).
async fn log_settings(State(s): State<AdminState>) -> Response {
    let log = match logger(&s) {
        Ok(l) => l,
        Err(r) => return r.answer(),
    };
    let settings = crate::logging::LogSettings::of(log.level(), log.format());
    json_response(StatusCode::OK, &settings)
}

/// Triton's `POST /v2/logging` (tritonclient's `update_log_settings`): the settings sent
/// (a JSON object of some of them) applied to the logger; the settings after. 400 for settings
/// the logger cannot take, and nothing changed (see [`crate::logging`]).
async fn update_log_settings(State(s): State<AdminState>, body: Bytes) -> Response {
    let log = match logger(&s) {
        Ok(l) => l,
        Err(r) => return r.answer(),
    };
    let update: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => return bad_request(&format!("expected a JSON object of log settings: {e}")),
    };
    match crate::logging::apply(log.as_ref(), &update) {
        Ok(applied) => json_response(StatusCode::OK, applied.settings()),
        Err(e @ crate::logging::LogError::Failed(_)) => {
            tracing::error!(error = %e, "could not change the log level");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not change the log level (the gateway's log has the details)",
            )
        }
        Err(e) => bad_request(&e.to_string()),
    }
}

/// The tracer, or the answer that there is none; and `model`, if named, served or with a
/// setting of its own (kept when it is unloaded, so that it can still be turned off).
fn tracer<'a>(
    s: &'a AdminState,
    model: Option<&str>,
) -> Result<&'a Arc<crate::trace::Tracer>, Refusal> {
    let t = s.trace.as_ref().ok_or_else(|| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            "this gateway does not trace requests",
        )
    })?;
    if let Some(m) = model
        && !s.models.names().iter().any(|n| n == m)
        && !t.has_own(m)
    {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            &format!("model '{m}' not found"),
        ));
    }
    Ok(t)
}

/// Triton's `GET /v2/trace/setting` (tritonclient's `get_trace_settings`).
async fn global_trace_settings(State(s): State<AdminState>) -> Response {
    trace_settings(&s, None)
}

/// Triton's `GET /v2/models/{m}/trace/setting`.
async fn model_trace_settings(State(s): State<AdminState>, Path(p): Params) -> Response {
    trace_settings(&s, Some(&param(&p, "model")))
}

fn trace_settings(s: &AdminState, model: Option<&str>) -> Response {
    match tracer(s, model) {
        Ok(t) => json_response(StatusCode::OK, &t.settings(model)),
        Err(r) => r.answer(),
    }
}

/// Triton's `POST /v2/trace/setting` (tritonclient's `update_trace_settings`): the settings
/// sent applied; the settings after. 400 for settings that cannot be taken, and nothing
/// changed (see [`crate::trace`]).
async fn update_global_trace_settings(State(s): State<AdminState>, body: Bytes) -> Response {
    update_trace_settings(&s, None, &body)
}

/// Triton's `POST /v2/models/{m}/trace/setting`: the model's own settings.
async fn update_model_trace_settings(
    State(s): State<AdminState>,
    Path(p): Params,
    body: Bytes,
) -> Response {
    update_trace_settings(&s, Some(&param(&p, "model")), &body)
}

fn update_trace_settings(s: &AdminState, model: Option<&str>, body: &[u8]) -> Response {
    let t = match tracer(s, model) {
        Ok(t) => t,
        Err(r) => return r.answer(),
    };
    let update: serde_json::Value = match serde_json::from_slice(body) {
        Ok(u) => u,
        Err(e) => return bad_request(&format!("expected a JSON object of trace settings: {e}")),
    };
    match t.update(model, &update) {
        Ok(settings) => json_response(StatusCode::OK, &settings),
        Err(e @ crate::trace::TraceError::Stopped(_)) => {
            error_response(StatusCode::CONFLICT, &e.to_string())
        }
        Err(e) => bad_request(&e.to_string()),
    }
}

/// Why a load or rollback was not done.
enum Swap {
    /// The repository refused it (answered 404 or 409).
    Repository(RepositoryError),
    /// The state folder could not note it (answered 500).
    State(crate::GatewayError),
    /// The repository folder could not be listed (answered 500).
    Listing(crate::GatewayError),
    /// What it was to do no longer holds (answered 409).
    Conflict(String),
}

impl Swap {
    fn answer(self) -> Response {
        match self {
            Swap::Repository(e @ RepositoryError::NotFound(_)) => {
                error_response(StatusCode::NOT_FOUND, &e.to_string())
            }
            Swap::Repository(e) => error_response(StatusCode::CONFLICT, &e.to_string()),
            Swap::State(e) => internal("the state folder could not note the change", &e).answer(),
            Swap::Listing(e) => listing_failed(e).answer(),
            Swap::Conflict(m) => error_response(StatusCode::CONFLICT, &m),
        }
    }
}

async fn rollback(State(s): State<AdminState>, Path(p): Params) -> Response {
    let model = param(&p, "model");
    // The version rolled back from is freed where it is dropped: off the workers.
    let models = s.models.clone();
    // Noted in the state folder first: a rollback that a restart would undo is not done.
    let withdrawn = s.withdrawn.clone();
    let roll = move || {
        let _swapping = withdrawn.as_ref().map(|w| w.swapping());
        let active = models
            .get(&model, None)
            .ok_or_else(|| Swap::Repository(RepositoryError::NotFound(model.clone())))?;
        if models.versions(&model).len() < 2 {
            return Err(Swap::Repository(RepositoryError::NoPrevious(model.clone())));
        }
        let note = |rolled_back| match &withdrawn {
            Some(w) => w
                .set(&model, &active.version, rolled_back)
                .map_err(Swap::State),
            None => Ok(()),
        };
        note(true)?;
        models
            .rollback_from(&model, Some(&active.version))
            .map_err(|e| {
                // Not rolled back after all (a concurrent rollback, say): not kept down either.
                let _ = note(false);
                Swap::Repository(e)
            })
    };
    match off_workers(roll, Swap::answer).await {
        Ok(m) => json_response(
            StatusCode::OK,
            &serde_json::json!({ "model": m.name, "active_version": m.version }),
        ),
        Err(r) => r,
    }
}

async fn checkpoint(State(s): State<AdminState>) -> Response {
    let log = s.audit.clone();
    match off_workers(move || log.latest_checkpoint(), audit_error).await {
        Ok(c) => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "checkpoint": c,
                "public_key": hexfmt::encode(&s.audit_public_key),
            }),
        ),
        Err(r) => r,
    }
}

/// An audit entry as `GET /v2/audit/entries/{i}` answers it.
#[derive(serde::Serialize)]
struct Entry {
    index: u64,
    entry: Box<serde_json::value::RawValue>,
    leaf_input: String,
}

async fn entry(State(s): State<AdminState>, Path(p): Params) -> Response {
    let Ok(index) = param(&p, "index").parse::<u64>() else {
        return bad_request("the entry index must be a non-negative integer");
    };
    let log = s.audit.clone();
    match off_workers(move || log.entry(index), audit_error).await {
        Ok(Some(bytes)) => {
            // The entry as stored, byte for byte: `leaf_input` (base64, as RFC 6962's
            // get-entries has it) is what the inclusion proof's leaf is the hash of, whatever a
            // client's JSON library does to `entry`, which is the same bytes spliced in as they
            // are (parsed and written again, its keys came back in another order and hashed to
            // no leaf; review, 2026-12-06).
            let leaf_input = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let raw = String::from_utf8(bytes)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    serde_json::value::RawValue::from_string(t).map_err(|e| e.to_string())
                });
            match raw {
                Ok(entry) => json_response(
                    StatusCode::OK,
                    &Entry {
                        index,
                        entry,
                        leaf_input,
                    },
                ),
                Err(e) => error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("entry {index} is not JSON: {e}"),
                ),
            }
        }
        Ok(None) => error_response(StatusCode::NOT_FOUND, &format!("no entry {index}")),
        Err(r) => r,
    }
}

/// `a=1&b=2` → the value of `key` as u64.
fn query_u64(q: &Option<String>, key: &str) -> Result<Option<u64>, String> {
    let Some(q) = q else { return Ok(None) };
    for pair in q.split('&') {
        if let Some((k, v)) = pair.split_once('=')
            && k == key
        {
            return v
                .parse()
                .map(Some)
                .map_err(|_| format!("query parameter '{key}' must be a non-negative integer"));
        }
    }
    Ok(None)
}

async fn inclusion(State(s): State<AdminState>, RawQuery(q): RawQuery) -> Response {
    let (index, size) = match (query_u64(&q, "index"), query_u64(&q, "size")) {
        (Ok(Some(i)), Ok(size)) => (i, size),
        (Err(m), _) | (_, Err(m)) => return bad_request(&m),
        (Ok(None), _) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "query parameter 'index' is required",
            );
        }
    };
    let log = s.audit.clone();
    let proof = move || {
        let size = match size {
            Some(n) => n,
            None => log.size()?,
        };
        log.inclusion(index, size)
    };
    match off_workers(proof, audit_error).await {
        Ok(p) => json_response(StatusCode::OK, &p),
        Err(r) => r,
    }
}

async fn consistency(State(s): State<AdminState>, RawQuery(q): RawQuery) -> Response {
    let (first, second) = match (query_u64(&q, "first"), query_u64(&q, "second")) {
        (Ok(Some(f)), Ok(second)) => (f, second),
        (Err(m), _) | (_, Err(m)) => return bad_request(&m),
        (Ok(None), _) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "query parameter 'first' is required",
            );
        }
    };
    let log = s.audit.clone();
    let proof = move || {
        let second = match second {
            Some(n) => n,
            None => log.size()?,
        };
        log.consistency(first, second)
    };
    match off_workers(proof, audit_error).await {
        Ok(p) => json_response(StatusCode::OK, &p),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_found(e: String) -> Response {
        error_response(StatusCode::NOT_FOUND, &e)
    }

    async fn body_text(r: Response) -> String {
        let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// Review: the refusal of both bindings has a run of 18 spaces in the middle of its
    /// sentence (a line break in the literal without a `\` continuation), and the admin API
    /// answers it as is.
    #[test]
    fn the_refusal_of_both_bindings_reads_as_one_sentence() {
        let thumb = "ab".repeat(32);
        let e = binding(Some(&thumb), Some("dns:scorer.example.org"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
        assert!(!e.contains("  "), "{e:?}");
    }

    #[tokio::test]
    async fn a_storage_failure_is_a_500_that_leaves_its_files_to_the_log() {
        let io = || std::io::Error::other("/var/lib/palisade/audit.db: disk I/O error");
        for (r, what) in [
            (
                audit_error(AuditError::Io(io())),
                "audit log could not be read",
            ),
            (
                key_error(KeyError::Create {
                    path: "/var/lib/palisade/keys.db".into(),
                    source: io(),
                }),
                "key store failed",
            ),
        ] {
            assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let text = body_text(r).await;
            assert!(
                text.contains(what) && text.contains("log has the details"),
                "{text}"
            );
            assert!(!text.contains("/var/lib"), "{text}");
        }
        // What an auditor is asking about is said: a corrupt log, one closed (shutting down).
        let r = audit_error(AuditError::Corrupt("entry 3 is missing".into()));
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body_text(r).await.contains("corrupt: entry 3 is missing"));
        let r = audit_error(AuditError::Closed);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body_text(r).await.contains("closed"));
        // What the caller can mend is still said.
        let r = audit_error(AuditError::OutOfRange("size 9 > 4".into()));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(body_text(r).await.contains("size 9 > 4"));
        let r = key_error(KeyError::NotFound("k1".into()));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(body_text(r).await.contains("k1"));
    }

    #[test]
    fn a_refused_load_names_files_relative_to_the_repository() {
        let repo = std::path::Path::new("/srv/palisade/models");
        for (message, said) in [
            (
                "/srv/palisade/models/lin/2: no signature at /srv/palisade/models/lin/2/model.sig",
                "lin/2: no signature at lin/2/model.sig",
            ),
            // The folder itself, and a path that only starts like it.
            ("/srv/palisade/models: empty", ".: empty"),
            (
                "/srv/palisade/models-old/lin/2 is elsewhere",
                "/srv/palisade/models-old/lin/2 is elsewhere",
            ),
            (
                "'lin'/'../x': names are 1 to 64",
                "'lin'/'../x': names are 1 to 64",
            ),
            // Its name inside another path is left alone.
            (
                "/srv/palisade/models/m/1: see /data/srv/palisade/models/m/1",
                "m/1: see /data/srv/palisade/models/m/1",
            ),
        ] {
            assert_eq!(relative_to(repo, message), said);
        }
        // A repository given with a trailing separator, or relative.
        assert_eq!(
            relative_to(
                std::path::Path::new("/srv/m/"),
                "/srv/m/a/1/policy.toml: bad"
            ),
            "a/1/policy.toml: bad"
        );
        assert_eq!(
            relative_to(
                std::path::Path::new("models"),
                "models/a/1 is over the limit"
            ),
            "a/1 is over the limit"
        );
        assert_eq!(
            relative_to(
                std::path::Path::new("models"),
                "models/mnist-models/1/model.sig: bad"
            ),
            "mnist-models/1/model.sig: bad"
        );
        assert_eq!(
            relative_to(std::path::Path::new("."), "`./m/1./model.sig`: bad"),
            "`m/1./model.sig`: bad"
        );
        let r = load_refused(
            repo,
            crate::GatewayError::Model("/srv/palisade/models/lin/2/model.sig: bad".into()),
        );
        assert_eq!(r.0, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.1, "model: lin/2/model.sig: bad");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn off_workers_gives_the_value_the_handlers_answer_or_a_plain_500() {
        let ok = off_workers(|| Ok::<_, String>(7), not_found).await;
        assert!(matches!(ok, Ok(7)));

        let Err(r) = off_workers(|| Err::<u8, _>("no such key".to_string()), not_found).await
        else {
            panic!("an error was taken for a value");
        };
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(body_text(r).await.contains("no such key"));

        // A task that panics: 500, and the panic's text stays out of the response.
        let Err(r) = off_workers(
            || -> Result<u8, String> { panic!("secret detail") },
            not_found,
        )
        .await
        else {
            panic!("a panicked task gave a value");
        };
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let text = body_text(r).await;
        assert!(text.contains("internal error"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
