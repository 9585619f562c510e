//! Rate limits: GCRA (governor) per key and model and per model, and a daily budget per key and
//! model. Infer requests only (metadata and readiness are not metered).
//!
//! Responses carry the IETF `RateLimit-Policy` and `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers), one item per limit: `"key"`, `"model"` and `"day"`,
//! with `q` the quota, `w` the window in seconds, `r` what remains and `t` the seconds until the
//! quota is whole again. A refused request gets 429 with `Retry-After`.
//!
//! State is in memory ([`Limits`]); the daily budget sits behind [`BudgetStore`] so that
//! several gateways can share it (e.g. in Redis). A restart resets the counters.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};

use super::{Guard, Next, Principal, call_next, call_next_meanwhile, reject, reject_retry};
use crate::model::ModelRepository;
use crate::now_ms;
use crate::oip::{ModelAction, Target, target_of};
use crate::policy::{LimitPolicy, Rate};

type KeyedLimiter = RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    DefaultClock,
    StateInformationMiddleware,
>;
type DirectLimiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    StateInformationMiddleware,
>;

/// Daily budgets: how many requests a key has spent on a model today.
pub trait BudgetStore: Send + Sync + 'static {
    /// Spends one unit of `key`'s budget on `model` for UTC day `day` if fewer than `limit` have
    /// been spent; returns what remains after spending, or `None` when the budget is exhausted.
    fn spend(&self, key: &str, model: &str, day: u64, limit: u64) -> Option<u64>;
}

/// Budgets in process memory.
#[derive(Debug, Default)]
pub struct MemoryBudgets {
    /// Key → model → (day, spent). Nested, so that a lookup borrows the names (a map keyed by
    /// the pair would copy both into a new key on every request).
    used: Mutex<HashMap<String, HashMap<String, Spent>>>,
}

/// The UTC day and how many requests were spent on it.
type Spent = (u64, u64);

impl BudgetStore for MemoryBudgets {
    fn spend(&self, key: &str, model: &str, day: u64, limit: u64) -> Option<u64> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if !used.contains_key(key) {
            used.insert(key.to_string(), HashMap::new());
        }
        // Both present from here on (inserted above when missing).
        let per_model = used.get_mut(key)?;
        if !per_model.contains_key(model) {
            per_model.insert(model.to_string(), (day, 0));
        }
        let e = per_model.get_mut(model)?;
        if e.0 != day {
            *e = (day, 0);
        }
        if e.1 >= limit {
            return None;
        }
        e.1 += 1;
        Some(limit - e.1)
    }
}

fn quota(r: Rate) -> Option<Quota> {
    let per = Duration::from_millis(r.period_ms) / r.rate.max(1);
    Some(Quota::with_period(per)?.allow_burst(NonZeroU32::new(r.burst)?))
}

struct ModelLimiters {
    policy: LimitPolicy,
    per_key: Option<(Rate, KeyedLimiter)>,
    per_model: Option<(Rate, DirectLimiter)>,
}

impl ModelLimiters {
    fn new(policy: &LimitPolicy) -> Self {
        ModelLimiters {
            policy: policy.clone(),
            per_key: policy
                .per_key
                .and_then(|r| Some((r, RateLimiter::keyed(quota(r)?).with_middleware()))),
            per_model: policy
                .per_model
                .and_then(|r| Some((r, RateLimiter::direct(quota(r)?).with_middleware()))),
        }
    }
}

/// The rate-limit state of a gateway.
pub struct Limits {
    models: RwLock<HashMap<String, Arc<ModelLimiters>>>,
    budgets: Arc<dyn BudgetStore>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").finish_non_exhaustive()
    }
}

impl Limits {
    /// Limits with budgets kept in `budgets`.
    pub fn new(budgets: Arc<dyn BudgetStore>) -> Self {
        Limits {
            models: RwLock::default(),
            budgets,
            clock: DefaultClock::default(),
        }
    }

    /// The limiters of `model` under `policy` (rebuilt when the policy changed).
    fn for_model(&self, model: &str, policy: &LimitPolicy) -> Arc<ModelLimiters> {
        if let Some(m) = self
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            && m.policy == *policy
        {
            return m.clone();
        }
        let mut w = self.models.write().unwrap_or_else(|p| p.into_inner());
        match w.get(model) {
            Some(m) if m.policy == *policy => m.clone(),
            _ => {
                let m = Arc::new(ModelLimiters::new(policy));
                w.insert(model.to_string(), m.clone());
                m
            }
        }
    }
}

/// The rate-limit guard.
#[derive(Clone)]
pub struct RateLimit {
    limits: Arc<Limits>,
    models: Arc<ModelRepository>,
}

impl RateLimit {
    /// Limits requests to the models of `models`, by their policies.
    pub fn new(limits: Arc<Limits>, models: Arc<ModelRepository>) -> Self {
        RateLimit { limits, models }
    }
}

struct Item {
    name: &'static str,
    quota: u64,
    window_s: u64,
    remaining: u64,
    reset_s: u64,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn gcra_item(name: &'static str, r: Rate, remaining: u32) -> Item {
    let per = Duration::from_millis(r.period_ms) / r.rate.max(1);
    let missing = r.burst.saturating_sub(remaining);
    Item {
        name,
        quota: u64::from(r.burst),
        window_s: ceil_secs(per * r.burst).max(1),
        remaining: u64::from(remaining),
        reset_s: ceil_secs(per * missing),
    }
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers), on every infer
/// request the rate limiter sees (an overload refused before it carries none: it was not counted).
fn headers(resp: &mut Response, items: &[Item]) {
    fields(items).insert(resp);
}

/// The values of the two fields, ready to go on a response.
struct Fields {
    policy: Option<HeaderValue>,
    state: Option<HeaderValue>,
}

impl Fields {
    fn insert(self, resp: &mut Response) {
        static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
        static STATE: HeaderName = HeaderName::from_static("ratelimit");
        let h = resp.headers_mut();
        if let Some(v) = self.policy {
            h.insert(POLICY.clone(), v);
        }
        if let Some(v) = self.state {
            h.insert(STATE.clone(), v);
        }
    }
}

/// Written by hand into one buffer each: through `write!` these two fields cost ~6.8k
/// instructions per request (callgrind), more than any guard's own decision.
fn fields(items: &[Item]) -> Fields {
    let mut policy = String::with_capacity(40 * items.len());
    let mut state = String::with_capacity(40 * items.len());
    let mut num = itoa::Buffer::new();
    for (n, i) in items.iter().enumerate() {
        if n > 0 {
            policy.push_str(", ");
            state.push_str(", ");
        }
        for (out, [(k1, v1), (k2, v2)]) in [
            (&mut policy, [("\";q=", i.quota), (";w=", i.window_s)]),
            (&mut state, [("\";r=", i.remaining), (";t=", i.reset_s)]),
        ] {
            out.push('"');
            out.push_str(i.name);
            out.push_str(k1);
            out.push_str(num.format(v1));
            out.push_str(k2);
            out.push_str(num.format(v2));
        }
    }
    Fields {
        policy: HeaderValue::try_from(policy).ok(),
        state: HeaderValue::try_from(state).ok(),
    }
}

fn limited(items: &[Item], retry_after: u64, what: &str) -> Response {
    let mut r = reject_retry(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limit",
        &format!("{what}; retry after {retry_after} s"),
        retry_after,
    );
    headers(&mut r, items);
    r
}

const DAY_MS: u64 = 86_400_000;

impl Guard for RateLimit {
    async fn handle(self, mut req: Request, next: Next) -> Response {
        let target = target_of(&mut req);
        let Target::Model {
            name,
            version,
            action: ModelAction::Infer,
        } = &*target
        else {
            return call_next(next, req).await;
        };
        let Some(model) = self.models.get(name, version.as_deref()) else {
            // Unknown model: validation answers 404.
            return call_next(next, req).await;
        };
        // The record, shared, rather than a copy of its id.
        let caller = match req.extensions().get::<Principal>() {
            Some(Principal(k)) => k.clone(),
            None => return reject(StatusCode::UNAUTHORIZED, "rate-limit", "not authenticated"),
        };
        let lim = self.limits.for_model(name, &model.policy.limits);
        let now = self.limits.clock.now();
        let mut items = Vec::with_capacity(3);
        if let Some((r, l)) = &lim.per_key {
            match l.check_key(&caller.id) {
                Ok(s) => items.push(gcra_item("key", *r, s.remaining_burst_capacity())),
                Err(nu) => {
                    items.push(gcra_item("key", *r, 0));
                    let wait = ceil_secs(nu.wait_time_from(now)).max(1);
                    return limited(&items, wait, "rate limit for this key exceeded");
                }
            }
        }
        if let Some((r, l)) = &lim.per_model {
            match l.check() {
                Ok(s) => items.push(gcra_item("model", *r, s.remaining_burst_capacity())),
                Err(nu) => {
                    items.push(gcra_item("model", *r, 0));
                    let wait = ceil_secs(nu.wait_time_from(now)).max(1);
                    return limited(&items, wait, "rate limit for this model exceeded");
                }
            }
        }
        if let Some(limit) = lim.policy.daily_budget {
            let t = now_ms();
            let reset_s = (DAY_MS - t % DAY_MS).div_ceil(1000);
            let spent = self
                .limits
                .budgets
                .spend(&caller.id, name, t / DAY_MS, limit);
            let item = |remaining| Item {
                name: "day",
                quota: limit,
                window_s: 86_400,
                remaining,
                reset_s,
            };
            match spent {
                Some(rem) => items.push(item(rem)),
                None => {
                    items.push(item(0));
                    return limited(&items, reset_s.max(1), "daily query budget exhausted");
                }
            }
        }
        // Built once the stack below waits (for the body, or for the model).
        let (mut resp, ready) = call_next_meanwhile(next, req, || fields(&items)).await;
        ready.insert(&mut resp);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratelimit_headers_list_every_limit_in_order() {
        let item = |name, quota, window_s, remaining, reset_s| Item {
            name,
            quota,
            window_s,
            remaining,
            reset_s,
        };
        let mut r = Response::new(axum::body::Body::empty());
        headers(
            &mut r,
            &[
                item("key", 3, 180, 2, 60),
                item("model", 10_000, 1, 0, u64::MAX),
            ],
        );
        assert_eq!(
            r.headers()["ratelimit-policy"],
            "\"key\";q=3;w=180, \"model\";q=10000;w=1"
        );
        assert_eq!(
            r.headers()["ratelimit"],
            "\"key\";r=2;t=60, \"model\";r=0;t=18446744073709551615"
        );
        let mut one = Response::new(axum::body::Body::empty());
        headers(&mut one, &[item("day", 5, 86_400, 5, 0)]);
        assert_eq!(one.headers()["ratelimit"], "\"day\";r=5;t=0");
    }

    #[test]
    fn budgets_reset_daily() {
        let b = MemoryBudgets::default();
        assert_eq!(b.spend("k", "m", 1, 2), Some(1));
        assert_eq!(b.spend("k", "m", 1, 2), Some(0));
        assert_eq!(b.spend("k", "m", 1, 2), None);
        assert_eq!(b.spend("k2", "m", 1, 2), Some(1));
        assert_eq!(b.spend("k", "m", 2, 2), Some(1));
    }

    #[test]
    fn gcra_items() {
        let r = Rate {
            rate: 10,
            period_ms: 1000,
            burst: 5,
        };
        let i = gcra_item("key", r, 2);
        assert_eq!((i.quota, i.window_s, i.remaining, i.reset_s), (5, 1, 2, 1));
    }
}
