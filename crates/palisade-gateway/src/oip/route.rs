//! What a request path asks for. Every guard reads the target from here, so routing and the
//! guards can never disagree about which model a request is for.

use std::sync::Arc;

use axum::extract::Request;

/// The target of `req`, parsed once per request: the first layer to ask parses the path and
/// leaves the result on the request for the layers inside it (no layer rewrites the path).
pub fn target_of(req: &mut Request) -> Arc<Target> {
    if let Some(t) = req.extensions().get::<Arc<Target>>() {
        return t.clone();
    }
    let t = Arc::new(Target::parse(req.uri().path()));
    req.extensions_mut().insert(t.clone());
    t
}

/// What is asked of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelAction {
    /// `GET /v2/models/{m}[/versions/{v}]`
    Metadata,
    /// `GET /v2/models/{m}[/versions/{v}]/ready`
    Ready,
    /// `POST /v2/models/{m}[/versions/{v}]/infer`
    Infer,
    /// `GET /v2/models/{m}[/versions/{v}]/config` (Triton's model configuration extension)
    Config,
    /// `GET /v2/models/{m}[/versions/{v}]/stats` (Triton's statistics extension)
    Statistics,
}

impl ModelAction {
    /// Name used in the audit log and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelAction::Metadata => "metadata",
            ModelAction::Ready => "ready",
            ModelAction::Infer => "infer",
            ModelAction::Config => "config",
            ModelAction::Statistics => "stats",
        }
    }
}

/// The target of a request, parsed from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A model route.
    Model {
        /// Model name.
        name: String,
        /// Explicit version, if any.
        version: Option<String>,
        /// What is asked.
        action: ModelAction,
    },
    /// `GET /v2/models/stats`: Triton's statistics of every model (those the key may query).
    /// No model may be called `stats` (the loader refuses the name), as in Triton, where this
    /// path is the statistics route too.
    Statistics,
    /// `POST /v2/repository/index`: Triton's repository index, of the models the key may query.
    RepositoryIndex,
    /// `/v2/admin/keys…`: key management (role `admin`, with TOTP).
    AdminKeys,
    /// `/v2/admin/models…`, and Triton's `POST /v2/repository/models/{m}/load` and `…/unload`:
    /// deployment (role `deploy`, with TOTP).
    AdminModels,
    /// `/v2/audit…`: the audit log (role `audit`).
    Audit,
    /// `/v2/logging`: Triton's log settings (role `admin`; a change with TOTP).
    Logging,
    /// `/v2[/models/{m}]/trace/setting`: Triton's trace settings, global or of model `model`
    /// (role `admin`; a change with TOTP).
    Trace {
        /// The model whose own settings are asked for, if any.
        model: Option<String>,
    },
    /// Anything else under a guarded prefix (denied by default).
    Unknown,
}

/// The path segment after `/v2/models/` that names every model's statistics, and so cannot
/// name a model.
pub const STATISTICS: &str = "stats";

impl Target {
    /// Parses a request path. Names must be valid model names (see [`crate::model::valid_name`]).
    pub fn parse(path: &str) -> Target {
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        match segs.as_slice() {
            ["", "v2", "models", STATISTICS] => Target::Statistics,
            ["", "v2", "trace", "setting"] => Target::Trace { model: None },
            ["", "v2", "models", name, "trace", "setting"] if crate::model::valid_name(name) => {
                Target::Trace {
                    model: Some((*name).to_string()),
                }
            }
            ["", "v2", "models", name, rest @ ..] if crate::model::valid_name(name) => {
                let (version, rest) = match rest {
                    ["versions", v, tail @ ..] if crate::model::valid_name(v) => {
                        (Some((*v).to_string()), tail)
                    }
                    _ => (None, rest),
                };
                let action = match rest {
                    [] => ModelAction::Metadata,
                    ["ready"] => ModelAction::Ready,
                    ["infer"] => ModelAction::Infer,
                    ["config"] => ModelAction::Config,
                    ["stats"] => ModelAction::Statistics,
                    _ => return Target::Unknown,
                };
                Target::Model {
                    name: (*name).to_string(),
                    version,
                    action,
                }
            }
            ["", "v2", "repository", "index"] => Target::RepositoryIndex,
            ["", "v2", "repository", "models", _, "load" | "unload"] => Target::AdminModels,
            ["", "v2", "admin", "keys", ..] => Target::AdminKeys,
            ["", "v2", "admin", "models", ..] => Target::AdminModels,
            ["", "v2", "audit", ..] => Target::Audit,
            ["", "v2", "logging"] => Target::Logging,
            _ => Target::Unknown,
        }
    }

    /// Name used in the audit log and metrics.
    pub fn action(&self) -> &'static str {
        match self {
            Target::Model { action, .. } => action.as_str(),
            Target::Statistics => "stats",
            Target::RepositoryIndex => "index",
            Target::AdminKeys => "admin.keys",
            Target::AdminModels => "admin.models",
            Target::Audit => "audit",
            Target::Logging => "logging",
            Target::Trace { .. } => "trace",
            Target::Unknown => "unknown",
        }
    }

    /// The model, for model routes.
    pub fn model(&self) -> Option<&str> {
        match self {
            Target::Model { name, .. } => Some(name),
            Target::Trace { model } => model.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let m = |n: &str, v: Option<&str>, a| Target::Model {
            name: n.into(),
            version: v.map(Into::into),
            action: a,
        };
        assert_eq!(
            Target::parse("/v2/models/mnist"),
            m("mnist", None, ModelAction::Metadata)
        );
        assert_eq!(
            Target::parse("/v2/models/mnist/ready"),
            m("mnist", None, ModelAction::Ready)
        );
        assert_eq!(
            Target::parse("/v2/models/mnist/versions/2/infer"),
            m("mnist", Some("2"), ModelAction::Infer)
        );
        assert_eq!(
            Target::parse("/v2/models/mnist/versions/1/config"),
            m("mnist", Some("1"), ModelAction::Config)
        );
        assert_eq!(Target::parse("/v2/models/mnist/config/x"), Target::Unknown);
        assert_eq!(
            Target::parse("/v2/models/mnist/stats"),
            m("mnist", None, ModelAction::Statistics)
        );
        assert_eq!(
            Target::parse("/v2/models/mnist/versions/3/stats"),
            m("mnist", Some("3"), ModelAction::Statistics)
        );
        assert_eq!(Target::parse("/v2/models/stats"), Target::Statistics);
        assert_eq!(Target::parse("/v2/models/stats/"), Target::Statistics);
        assert_eq!(Target::parse("/v2/models/stats/x"), Target::Unknown);
        assert_eq!(
            Target::parse("/v2/repository/index"),
            Target::RepositoryIndex
        );
        assert_eq!(
            Target::parse("/v2/repository/models/m/load"),
            Target::AdminModels
        );
        assert_eq!(
            Target::parse("/v2/repository/models/m/unload/"),
            Target::AdminModels
        );
        assert_eq!(
            Target::parse("/v2/repository/models/m/reload"),
            Target::Unknown
        );
        assert_eq!(Target::parse("/v2/repository/models/m"), Target::Unknown);
        assert_eq!(Target::parse("/v2/models/mnist/explode"), Target::Unknown);
        assert_eq!(Target::parse("/v2/models/../infer"), Target::Unknown);
        assert_eq!(
            Target::parse("/v2/admin/keys/abc/revoke"),
            Target::AdminKeys
        );
        assert_eq!(Target::parse("/v2/audit/checkpoint"), Target::Audit);
        assert_eq!(Target::parse("/v2/logging"), Target::Logging);
        assert_eq!(Target::parse("/v2/logging/x"), Target::Unknown);
        assert_eq!(
            Target::parse("/v2/trace/setting"),
            Target::Trace { model: None }
        );
        assert_eq!(
            Target::parse("/v2/models/mnist/trace/setting/"),
            Target::Trace {
                model: Some("mnist".into())
            }
        );
        assert_eq!(
            Target::parse("/v2/models/mnist/versions/1/trace/setting"),
            Target::Unknown
        );
        assert_eq!(
            Target::parse("/v2/models/../trace/setting"),
            Target::Unknown
        );
        assert_eq!(Target::parse("/v2/adminx"), Target::Unknown);
    }

    #[test]
    fn the_target_is_parsed_once_and_shared() {
        let mut req = Request::new(axum::body::Body::empty());
        *req.uri_mut() = "/v2/models/mnist/infer".parse().unwrap();
        let first = target_of(&mut req);
        assert_eq!(first.model(), Some("mnist"));
        assert!(Arc::ptr_eq(&first, &target_of(&mut req)));
    }
}
