//! Methods: each model route answers the method the Open Inference Protocol gives it, `GET` (or
//! `HEAD`) for a model's metadata, readiness, configuration and statistics (every model's too)
//! and `POST` for infer. Another method gets 405
//! with `Allow`, audited as `denied:method` with the key that sent it, after authentication and
//! before any guard reads the body: the routes had been told apart by their paths alone, so a
//! `GET` with a body was served as an infer, and a `POST` to a metadata path answered with the
//! metadata (review, 2026-12-06).

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;

use super::{Guard, Next, call_next, reject};
use crate::oip::{ModelAction, Target, target_of};

/// The method guard.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowedMethods;

/// The methods a model route answers, as its `Allow` header lists them, and whether `method`
/// is one of them.
fn allowed(action: ModelAction, method: &Method) -> (&'static str, bool) {
    match action {
        ModelAction::Infer => ("POST", method == Method::POST),
        ModelAction::Metadata
        | ModelAction::Ready
        | ModelAction::Config
        | ModelAction::Statistics => ("GET, HEAD", method == Method::GET || method == Method::HEAD),
    }
}

impl Guard for AllowedMethods {
    async fn handle(self, mut req: Request, next: Next) -> Response {
        let target = target_of(&mut req);
        // Every model's statistics are read as one model's are; the repository index is asked
        // with a `POST`, as Triton's is.
        let (allow, ok) = match *target {
            Target::Model { action, .. } => allowed(action, req.method()),
            Target::Statistics => allowed(ModelAction::Statistics, req.method()),
            Target::RepositoryIndex => ("POST", req.method() == Method::POST),
            _ => return call_next(next, req).await,
        };
        if ok {
            return call_next(next, req).await;
        }
        let route = match &*target {
            Target::Model { action, .. } => format!("a model's {}", action.as_str()),
            other => format!("the {} route", other.action()),
        };
        let mut r = reject(
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
            &format!("{} is not a method of {route}; use {allow}", req.method()),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_model_route_answers_its_own_methods() {
        assert_eq!(allowed(ModelAction::Infer, &Method::POST), ("POST", true));
        for m in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
            assert!(!allowed(ModelAction::Infer, &m).1, "{m}");
        }
        for action in [
            ModelAction::Metadata,
            ModelAction::Ready,
            ModelAction::Config,
            ModelAction::Statistics,
        ] {
            assert!(allowed(action, &Method::GET).1);
            assert!(allowed(action, &Method::HEAD).1);
            assert!(!allowed(action, &Method::POST).1);
            assert!(!allowed(action, &Method::DELETE).1);
        }
    }
}
