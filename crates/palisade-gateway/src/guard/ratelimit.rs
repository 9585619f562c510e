//! Rate limits: GCRA per key and model and per model, and a daily budget per key and model.
//! Infer requests only (metadata and readiness are not metered). "Key" here is a key's line
//! ([`crate::keys::KeyRecord::lineage`]): a key and its successors by rotation share their limits
//! and budgets.
//!
//! Responses carry the IETF `RateLimit-Policy` and `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers), one item per limit: `"key"`, `"model"` and `"day"`,
//! with `q` the quota, `w` the window in seconds, `r` what remains and `t` the seconds until the
//! quota is whole again. A refused request gets 429 with `Retry-After`.
//!
//! The counters sit behind [`LimitStore`], charged in one call for all of a request's limits
//! (a batch's other samples in a second call, [`ChargeBatch`]), so that a store shared by several
//! gateways ([`RedisLimits`](super::redis_limits::RedisLimits), whose script does the whole
//! charge) takes one round trip per call and sees no other gateway's call half done. A store that cannot
//! answer refuses the request with 503: the limits fail closed. [`LocalLimits`] keeps the rates
//! in process memory (governor's GCRA), which a restart resets, and the daily budgets either in
//! memory too ([`LocalLimits::default`]) or in a ledger file that a restart or a crash does not
//! refill ([`LocalLimits::open`], what `palisade serve` uses; see `budgets.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};

pub use super::budgets::MAX_BLOCK as MAX_BUDGET_BLOCK;
use super::budgets::{Budgets, Spend};
use super::{
    Decision, Guard, Next, Principal, ValidatedInfer, call_next, call_next_meanwhile, reject,
    reject_retry,
};
use crate::audit::Durability;
use crate::metrics::Metrics;
use crate::model::ModelRepository;
use crate::now_ms;
use crate::oip::{ModelAction, Target, target_of};
use crate::policy::{Count, LimitPolicy, Rate};

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

/// Units of one infer request to charge to the limits of its model version's policy.
pub struct Charge<'a> {
    /// How many units: 1 for a request, or for a batch's first sample before its body is read;
    /// the rest of the batch once validated (`LimitPolicy::count`). At least 1.
    pub units: NonZeroU32,
    /// Units the same request charged before these (1 for a batch's other samples, else 0),
    /// which its retry charges again first: a refusal's wait covers them too, so that a client
    /// retrying after `Retry-After` is not refused again for want of them.
    pub before: u32,
    /// The caller's key line ([`crate::keys::KeyRecord::lineage`]).
    pub key: &'a String,
    /// The model's name (all its versions' requests count against the same model).
    pub model: &'a str,
    /// The limits of the version asked for.
    pub limits: &'a LimitPolicy,
    /// Milliseconds since the Unix epoch: the UTC day of the daily budget.
    pub t_ms: u64,
    /// The limit policies of the versions of `model` served now: a store may drop what it keeps
    /// for rates none of them has. Listing them takes a lock; a store calls it only when it
    /// would drop something.
    pub live: &'a (dyn Fn() -> Vec<LimitPolicy> + Sync),
}

/// What a [`LimitStore`] decided.
#[derive(Debug)]
pub enum Admission {
    /// Served; the items of the `RateLimit` fields, in the order `"key"`, `"model"`, `"day"`
    /// (those the policy sets).
    Admitted(Vec<Item>),
    /// Refused with 429.
    Refused(Refusal),
}

/// A [`LimitStore`] that could not decide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// The store's state could not be read or written (a shared store out of reach, say).
    #[error("the rate-limit state is unavailable: {0}")]
    Unavailable(String),
    /// The store was set up wrongly (an address that does not parse, say): no retry mends it.
    #[error("the rate-limit store is misconfigured: {0}")]
    Config(String),
}

/// The longest the rate-limit guard waits for a [`LimitStore`] (an in-memory one answers at
/// once; a shared one out of reach must not hold every request).
pub const STORE_TIMEOUT: Duration = Duration::from_millis(250);

/// The answer of [`LimitStore::admit`].
pub type AdmitFuture<'a> = Pin<Box<dyn Future<Output = Result<Admission, LimitError>> + Send + 'a>>;

/// The answer of [`LimitStore::reset_budget`].
pub type ResetFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<GivenBack>, LimitError>> + Send + 'a>>;

/// A daily budget given back by [`LimitStore::reset_budget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GivenBack {
    /// The UTC day it counted (days since the epoch): today's, or a later one if the clock was
    /// ahead when it was spent.
    pub day: u64,
    /// The units it had spent (after a restart of a gateway keeping its budgets in `limits.db`,
    /// up to one reservation block more: see [`LocalLimits::open`]).
    pub spent: u64,
}

/// Where the rate limits and daily budgets are counted.
///
/// One call charges [`Charge::units`] to every limit its policy sets, all of them or none of
/// each, in this order: a key whose daily budget has fewer left is refused first, charging
/// nothing; otherwise the key's rate, then the model's, then the budget are charged in turn,
/// and a refusal by a later one leaves the earlier ones charged. More units than a rate's burst
/// are refused with the time the whole burst takes to come back. A refusal's `Retry-After` is at least the time until each limit it charged can
/// take the request again, with the units it charged before ([`Charge::before`]), so that the
/// retry does not meet the key's own limit.
///
/// What is counted together, as [`LocalLimits`] does: a rate's state belongs to the model and
/// the pair of rates (`per_key`, `per_model`) of the version asked for (versions with the same
/// pair share it; per key, also to the key's line); a budget belongs to the key's line, the model
/// and the UTC day of [`Charge::t_ms`], whatever the version, and a day earlier than the one
/// counted counts against it (a clock stepping back does not refill it; the day's item and a
/// [`DAY_SPENT`] refusal then wait for the end of the day counted). GCRA runs on the store's
/// own clock, with each rate's emission interval ([`Rate::interval`]) and burst; the items are
/// made with [`Item::gcra`] and [`Item::day`], the refusals' reasons are [`KEY_EXCEEDED`],
/// [`MODEL_EXCEEDED`] and [`DAY_SPENT`].
///
/// The guard waits at most [`STORE_TIMEOUT`] for an answer; past it, or on an error, the request
/// is refused with 503 (the limits fail closed).
pub trait LimitStore: Send + Sync + 'static {
    /// Charges [`Charge::units`] to a request's limits (see the trait's documentation).
    fn admit<'a>(&'a self, charge: Charge<'a>) -> AdmitFuture<'a>;

    /// Gives back key line `line`'s daily budget on `model`: nothing counts as spent, whatever
    /// day it counted, and the next charge starts today's count afresh (the rates are left as
    /// they are). Answers once the store holds that; what was given back (`None`: nothing was
    /// spent on the UTC day of `t_ms`, milliseconds after the epoch, or on a later one).
    fn reset_budget<'a>(&'a self, line: &'a str, model: &'a str, t_ms: u64) -> ResetFuture<'a>;

    /// Called once the gateway has stopped serving: writes what must outlive the process (the
    /// exact budget counts of [`LocalLimits::open`]). Admissions after it may fail.
    fn close(&self) {}
}

/// The longest time a limiter may span (interval × burst): governor keeps its times in u64
/// nanoseconds and overflows past 584 years. A checked policy stays within 366 days
/// ([`crate::policy::MAX_PERIOD_MS`]); this bounds one built in code without the check.
const MAX_SPAN: Duration = Duration::from_nanos(u64::MAX / 4);

/// `r` as the limiter keeps it: its emission interval within 1 ns..=[`MAX_SPAN`] and its burst
/// within 1..=`MAX_SPAN / interval`, so that the limiter always exists and its arithmetic
/// cannot overflow. Unchanged for a policy that passed [`crate::policy::Policy::check`].
pub(crate) fn gcra_params(r: Rate) -> (Duration, NonZeroU32) {
    let per = r.interval().clamp(Duration::from_nanos(1), MAX_SPAN);
    let most = u32::try_from(MAX_SPAN.as_nanos() / per.as_nanos()).unwrap_or(u32::MAX);
    (
        per,
        NonZeroU32::new(r.burst.min(most)).unwrap_or(NonZeroU32::MIN),
    )
}

fn quota(r: Rate) -> Option<Quota> {
    let (per, burst) = gcra_params(r);
    Some(Quota::with_period(per)?.allow_burst(burst))
}

/// What a set of limiters is made from: a policy's two rates (its daily budget is kept apart,
/// in [`Budgets`], so that versions differing only by it share their limiters).
type Rates = (Option<Rate>, Option<Rate>);

fn rates(policy: &LimitPolicy) -> Rates {
    (policy.per_key, policy.per_model)
}

struct ModelLimiters {
    rates: Rates,
    per_key: Option<(Rate, KeyedLimiter)>,
    per_model: Option<(Rate, DirectLimiter)>,
}

impl ModelLimiters {
    fn new(policy: &LimitPolicy) -> Self {
        ModelLimiters {
            rates: rates(policy),
            per_key: policy
                .per_key
                .and_then(|r| Some((r, RateLimiter::keyed(quota(r)?).with_middleware()))),
            per_model: policy
                .per_model
                .and_then(|r| Some((r, RateLimiter::direct(quota(r)?).with_middleware()))),
        }
    }
}

/// The limits of one gateway: governor's GCRA limiters in its memory, and the daily budgets in
/// its memory or in a ledger file of its own.
#[derive(Default)]
pub struct LocalLimits {
    /// Model name → its limiters, one set per distinct pair of rates among its versions. Each
    /// version of a model has its own policy: keyed by name alone, a client alternating versions
    /// with different limits would rebuild (and so refill) them on every request; versions with
    /// equal rates share one set, so alternating them gains nothing. A set is dropped only when
    /// no version served uses its rates (never to make room: a client cycling through versions
    /// could then refill them all).
    models: RwLock<HashMap<String, Vec<Arc<ModelLimiters>>>>,
    budgets: Budgets,
    clock: DefaultClock,
    /// Values kept until the budgets have been written and closed ([`LocalLimits::hold`]):
    /// declared last, dropped last.
    held: Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
}

impl std::fmt::Debug for LocalLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimits").finish_non_exhaustive()
    }
}

impl LimitStore for LocalLimits {
    fn admit<'a>(&'a self, c: Charge<'a>) -> AdmitFuture<'a> {
        Box::pin(async move {
            Ok(
                match self
                    .charge(
                        c.key,
                        c.model,
                        c.limits,
                        (c.units, c.before),
                        c.t_ms,
                        c.live,
                    )
                    .await?
                {
                    Ok(items) => Admission::Admitted(items),
                    Err(refusal) => Admission::Refused(refusal),
                },
            )
        })
    }

    fn reset_budget<'a>(&'a self, line: &'a str, model: &'a str, t_ms: u64) -> ResetFuture<'a> {
        Box::pin(async move {
            Ok(self
                .budgets
                .reset(line, model)
                .await?
                .filter(|&(day, _)| day >= t_ms / DAY_MS)
                .map(|(day, spent)| GivenBack { day, spent }))
        })
    }

    fn close(&self) {
        self.budgets.close();
    }
}

impl LocalLimits {
    /// Rates in memory, daily budgets in the ledger at `path` (an SQLite file, made when
    /// missing), committed with `durability`: budgets resume from it after a restart or a crash,
    /// which may cost a client up to 1/64 of a day's budget (at most
    /// [`MAX_BUDGET_BLOCK`] requests) but never refill it.
    pub fn open(path: &std::path::Path, durability: Durability) -> Result<Self, LimitError> {
        Ok(LocalLimits {
            budgets: Budgets::open(path, durability, now_ms() / DAY_MS)?,
            ..LocalLimits::default()
        })
    }

    /// Keeps `value` until these limits have been dropped, after the budgets' last counts are
    /// written: the lock on a state folder, say (see [`crate::audit::SqliteAuditLog::hold`]).
    pub fn hold(&self, value: Arc<dyn std::any::Any + Send + Sync>) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(value);
    }

    /// The limiters of `model` under `policy`, made on first use. Making a set first drops
    /// those whose rates none of `live` (the policies of the versions served) has.
    fn for_model(
        &self,
        model: &str,
        policy: &LimitPolicy,
        live: impl FnOnce() -> Vec<LimitPolicy>,
    ) -> Arc<ModelLimiters> {
        let want = rates(policy);
        let find = |sets: &[Arc<ModelLimiters>]| sets.iter().find(|m| m.rates == want).cloned();
        let r = self.models.read().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = r.get(model).and_then(|s| find(s)) {
            return m;
        }
        drop(r);
        let mut w = self.models.write().unwrap_or_else(|p| p.into_inner());
        let sets = w.entry(model.to_string()).or_default();
        if let Some(m) = find(sets) {
            return m;
        }
        let live: Vec<Rates> = live().iter().map(rates).collect();
        sets.retain(|m| live.contains(&m.rates));
        let m = Arc::new(ModelLimiters::new(policy));
        sets.push(m.clone());
        m
    }

    /// Charges `units` (with `before`: [`Charge::before`]) by `key` to `model` under `policy`,
    /// `t_ms` milliseconds after the epoch (for the daily budget): the header items, or why it
    /// is refused ([`LimitStore`] says in which order). The budget is only read before the rate
    /// limits, so a race for its last units can charge them for a request its spend then
    /// refuses.
    async fn charge(
        &self,
        key: &String,
        model: &str,
        policy: &LimitPolicy,
        (units, before): (NonZeroU32, u32),
        t_ms: u64,
        live: impl FnOnce() -> Vec<LimitPolicy>,
    ) -> Result<Result<Vec<Item>, Refusal>, LimitError> {
        let lim = self.for_model(model, policy, live);
        let mut items = Vec::with_capacity(3);
        let day = policy.daily_budget.map(|limit| {
            let item = move |remaining, day| Item::day(limit, remaining, day, t_ms);
            (limit, item)
        });
        let today = t_ms / DAY_MS;
        if let Some((limit, item)) = day
            && let (left, counted) = self.budgets.left(key, model, today, limit)
            && left < u64::from(units.get())
        {
            let spent = item(left, counted);
            let wait = spent.reset_s;
            items.push(spent);
            return Ok(Err(Refusal::new(items, wait, DAY_SPENT)));
        }
        let now = self.clock.now();
        // A later refusal keeps the unit the key has just spent: a client retrying after the
        // model's wait must not then meet its own limit, so it waits at least until the key
        // has regained one.
        let mut key_wait = 0;
        // More units than a burst holds can never pass (validation keeps batches within the
        // bursts, `Policy::batch_limit`; a policy built in code may not): refused, to retry once
        // the whole burst has come back.
        let never = |r: Rate| {
            let (per, burst) = gcra_params(r);
            ceil_secs(per.saturating_mul(burst.get()))
        };
        // A refusal's wait until `units` fit, and then the retry's `before` units first.
        let after = |r: Rate, nu: governor::NotUntil<_>| {
            ceil_secs(nu.wait_time_from(now) + gcra_params(r).0.saturating_mul(before))
        };
        if let Some((r, l)) = &lim.per_key {
            let checked = if units.get() == 1 {
                Ok(l.check_key(key))
            } else {
                l.check_key_n(key, units)
            };
            match checked {
                Ok(Ok(s)) => {
                    let remaining = s.remaining_burst_capacity();
                    key_wait = key_wait_after(*r, remaining, units.saturating_add(before));
                    items.push(Item::gcra("key", *r, remaining));
                }
                Ok(Err(nu)) => {
                    items.push(Item::gcra("key", *r, 0));
                    let wait = after(*r, nu);
                    return Ok(Err(Refusal::new(items, wait, KEY_EXCEEDED)));
                }
                Err(_) => {
                    items.push(Item::gcra("key", *r, 0));
                    return Ok(Err(Refusal::new(items, never(*r), KEY_EXCEEDED)));
                }
            }
        }
        if let Some((r, l)) = &lim.per_model {
            let checked = if units.get() == 1 {
                Ok(l.check())
            } else {
                l.check_n(units)
            };
            match checked {
                Ok(Ok(s)) => items.push(Item::gcra("model", *r, s.remaining_burst_capacity())),
                Ok(Err(nu)) => {
                    items.push(Item::gcra("model", *r, 0));
                    let wait = after(*r, nu).max(key_wait);
                    return Ok(Err(Refusal::new(items, wait, MODEL_EXCEEDED)));
                }
                Err(_) => {
                    items.push(Item::gcra("model", *r, 0));
                    let wait = never(*r).max(key_wait);
                    return Ok(Err(Refusal::new(items, wait, MODEL_EXCEEDED)));
                }
            }
        }
        if let Some((limit, item)) = day {
            let mut waited = None;
            loop {
                match self
                    .budgets
                    .spend(key, model, today, limit, units.get().into(), waited)?
                {
                    Spend::Granted { remaining, day } => {
                        items.push(item(remaining, day));
                        break;
                    }
                    Spend::Exhausted { remaining, day } => {
                        let spent = item(remaining, day);
                        let wait = spent.reset_s.max(key_wait);
                        items.push(spent);
                        return Ok(Err(Refusal::new(items, wait, DAY_SPENT)));
                    }
                    // The ledger's writer is behind: the rates stay charged, the budget is
                    // asked again once it has written (the guard's timeout bounds the wait).
                    Spend::Wait(written, failures) => {
                        waited = Some(failures);
                        written.await
                    }
                }
            }
        }
        Ok(Ok(items))
    }
}

/// [`Refusal::what`] when the key's rate refuses.
pub const KEY_EXCEEDED: &str = "rate limit for this key exceeded";
/// [`Refusal::what`] when the model's rate refuses.
pub const MODEL_EXCEEDED: &str = "rate limit for this model exceeded";
/// [`Refusal::what`] when the daily budget is spent.
pub const DAY_SPENT: &str = "daily query budget exhausted";

/// A request refused: the items checked up to the refusal, and how long to wait.
#[derive(Debug)]
pub struct Refusal {
    /// The items of the `RateLimit` fields, up to the limit that refused (its `remaining` 0).
    pub items: Vec<Item>,
    /// `Retry-After`, in seconds, at least 1.
    pub retry_after: u64,
    /// Why, for the error message.
    pub what: &'static str,
}

impl Refusal {
    /// A refusal (a `retry_after` of 0 becomes 1).
    pub fn new(items: Vec<Item>, retry_after: u64, what: &'static str) -> Self {
        Refusal {
            items,
            retry_after: retry_after.max(1),
            what,
        }
    }
}

/// The rate-limit guard.
#[derive(Clone)]
pub struct RateLimit {
    limits: Arc<dyn LimitStore>,
    models: Arc<ModelRepository>,
    metrics: Arc<Metrics>,
}

impl RateLimit {
    /// Limits requests to the models of `models`, by their policies, counting in `limits`;
    /// times each charge in `metrics`.
    pub fn new(
        limits: Arc<dyn LimitStore>,
        models: Arc<ModelRepository>,
        metrics: Arc<Metrics>,
    ) -> Self {
        RateLimit {
            limits,
            models,
            metrics,
        }
    }
}

/// One limit's item in the `RateLimit-Policy` and `RateLimit` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// `"key"`, `"model"` or `"day"`.
    pub name: &'static str,
    /// The quota (`q`): the burst of a rate, the requests of a budget.
    pub quota: u64,
    /// The window in seconds (`w`).
    pub window_s: u64,
    /// What remains of the quota (`r`).
    pub remaining: u64,
    /// Seconds until the quota is whole again (`t`).
    pub reset_s: u64,
}

/// What a refusal by a later limit must wait at least, once the key's rate `r` has charged
/// `units` and has `remaining` left: none while as many remain, else until they have come back,
/// so that the retry does not meet the key's own limit ([`LimitStore`]'s rule, for every store).
pub(crate) fn key_wait_after(r: Rate, remaining: u32, units: NonZeroU32) -> u64 {
    match units.get().checked_sub(remaining) {
        Some(missing) if missing > 0 => ceil_secs(
            gcra_params(r)
                .0
                .checked_mul(missing)
                .unwrap_or(Duration::MAX),
        ),
        _ => 0,
    }
}

pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

impl Item {
    /// The item of a GCRA rate (`name` `"key"` or `"model"`) with `remaining` requests of burst
    /// left: the quota is the burst, the window the time a whole burst takes to come back.
    pub fn gcra(name: &'static str, r: Rate, remaining: u32) -> Item {
        let (per, burst) = gcra_params(r);
        let burst = burst.get();
        let missing = burst.saturating_sub(remaining);
        let span = |n: u32| ceil_secs(per.checked_mul(n).unwrap_or(Duration::MAX));
        Item {
            name,
            quota: u64::from(burst),
            window_s: span(burst).max(1),
            remaining: u64::from(remaining),
            reset_s: span(missing),
        }
    }

    /// The item of a daily budget of `limit` requests with `remaining` left, counted against
    /// UTC day `day` (days since the epoch), `t_ms` milliseconds after the epoch: it is whole
    /// again once the clock reaches the end of that day. That is the next midnight, or later
    /// where the day counted is ahead of the clock (a clock that stepped back across midnight,
    /// or a gateway whose clock lags the one that counted the day: [`LimitStore`] counts an
    /// earlier day against the later one), so that a client told to retry then is not refused
    /// again. A day behind the clock counts as today.
    pub fn day(limit: u64, remaining: u64, day: u64, t_ms: u64) -> Item {
        let end = day
            .max(t_ms / DAY_MS)
            .saturating_add(1)
            .saturating_mul(DAY_MS);
        Item {
            name: "day",
            quota: limit,
            window_s: 86_400,
            remaining,
            reset_s: (end - t_ms).div_ceil(1000),
        }
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

static STATE_FIELD: HeaderName = HeaderName::from_static("ratelimit");

impl Fields {
    fn insert(self, resp: &mut Response) {
        static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
        let h = resp.headers_mut();
        if let Some(v) = self.policy {
            h.insert(POLICY.clone(), v);
        }
        if let Some(v) = self.state {
            h.insert(STATE_FIELD.clone(), v);
        }
    }
}

/// The largest integer a structured field may carry (RFC 9651, 15 digits); larger values are
/// written as it.
const MAX_SF_INTEGER: u64 = 999_999_999_999_999;

/// Written by hand into one buffer each: through `write!` these two fields cost ~6.8k
/// instructions per request (callgrind), more than any guard's own decision.
fn fields(items: &[Item]) -> Fields {
    // No limit on the request: no fields (an empty structured-field list is not sent, RFC 8941
    // §3.1), rather than two empty ones.
    if items.is_empty() {
        return Fields {
            policy: None,
            state: None,
        };
    }
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
            out.push_str(num.format(v1.min(MAX_SF_INTEGER)));
            out.push_str(k2);
            out.push_str(num.format(v2.min(MAX_SF_INTEGER)));
        }
    }
    Fields {
        policy: HeaderValue::try_from(policy).ok(),
        state: HeaderValue::try_from(state).ok(),
    }
}

fn limited(refusal: &Refusal) -> Response {
    let Refusal {
        items,
        retry_after,
        what,
    } = refusal;
    let mut r = reject_retry(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limit",
        &format!("{what}; retry after {retry_after} s"),
        *retry_after,
    );
    headers(&mut r, items);
    r
}

pub(crate) const DAY_MS: u64 = 86_400_000;

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
        let units = (NonZeroU32::MIN, 0);
        let items = match self.charge(&caller.lineage, &model, units).await {
            Ok(items) => items,
            Err(refused) => return refused,
        };
        req.extensions_mut().insert(super::Charged(model));
        // Built once the stack below waits (for the body, or for the model).
        let (mut resp, ready) = call_next_meanwhile(next, req, || fields(&items)).await;
        // A batch's later charge ([`ChargeBatch`]) put the newer state there already.
        if !resp.headers().contains_key(&STATE_FIELD) {
            ready.insert(&mut resp);
        }
        resp
    }
}

impl RateLimit {
    /// Charges `units` (with the units the request charged before, [`Charge::before`]) by the
    /// key line `key` to `model`'s limits, within [`STORE_TIMEOUT`]: the header items, or the
    /// refusal (429, or 503 when the store could not answer) to send back.
    async fn charge(
        &self,
        key: &String,
        model: &crate::ServedModel,
        (units, before): (NonZeroU32, u32),
    ) -> Result<Vec<Item>, Response> {
        let live = || {
            self.models
                .served(&model.name)
                .iter()
                .map(|m| m.policy.limits.clone())
                .collect()
        };
        let c = Charge {
            key,
            model: &model.name,
            limits: &model.policy.limits,
            units,
            before,
            t_ms: now_ms(),
            live: &live,
        };
        admit(&*self.limits, c, &self.metrics).await
    }
}

/// Asks `limits` to charge `c`, within [`STORE_TIMEOUT`] (see [`RateLimit::charge`]).
async fn admit(
    limits: &dyn LimitStore,
    c: Charge<'_>,
    metrics: &Metrics,
) -> Result<Vec<Item>, Response> {
    let model = c.model;
    let asked = std::time::Instant::now();
    let decided = tokio::time::timeout(STORE_TIMEOUT, limits.admit(c))
        .await
        .unwrap_or_else(|_| {
            Err(LimitError::Unavailable(format!(
                "no answer within {} ms",
                STORE_TIMEOUT.as_millis()
            )))
        });
    metrics.limits_check(asked.elapsed(), decided.is_ok());
    match decided {
        Ok(Admission::Admitted(items)) => Ok(items),
        Ok(Admission::Refused(refusal)) => Err(limited(&refusal)),
        Err(e) => {
            tracing::error!(error = %e, model = %model, "rate limits could not be checked; request refused");
            let mut r = reject_retry(
                StatusCode::SERVICE_UNAVAILABLE,
                "rate-limit",
                "the rate limits could not be checked; retry later",
                1,
            );
            // A failure of the gateway's state, not a client refused by its limits.
            r.extensions_mut().insert(Decision::Error);
            Err(r)
        }
    }
}

/// The rest of a batch's samples, once validation has read it: where the model's limits count
/// samples ([`Count::Samples`]), a request of N charged one before its body was read
/// ([`RateLimit`]) is charged the other N - 1 here, to the same version's limits, before the
/// model runs. A refusal (429 with `Retry-After`) leaves the first unit charged; the response
/// carries the `RateLimit` fields as this charge left them.
#[derive(Clone)]
pub struct ChargeBatch(RateLimit);

impl ChargeBatch {
    /// Charges to `limits` as [`RateLimit::new`] does.
    pub fn new(
        limits: Arc<dyn LimitStore>,
        models: Arc<ModelRepository>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ChargeBatch(RateLimit::new(limits, models, metrics))
    }
}

impl Guard for ChargeBatch {
    async fn handle(self, req: Request, next: Next) -> Response {
        let ext = req.extensions();
        let (Some(v), Some(Principal(caller))) =
            (ext.get::<ValidatedInfer>(), ext.get::<Principal>())
        else {
            return call_next(next, req).await;
        };
        let l = &v.model.policy.limits;
        let more = v.input.shape().first().map_or(0, |n| n.saturating_sub(1));
        let limited = l.per_key.is_some() || l.per_model.is_some() || l.daily_budget.is_some();
        let Some(units) = NonZeroU32::new(u32::try_from(more).unwrap_or(u32::MAX))
            .filter(|_| l.count == Count::Samples && limited)
        else {
            return call_next(next, req).await;
        };
        let (model, caller) = (v.model.clone(), caller.clone());
        let items = match self.0.charge(&caller.lineage, &model, (units, 1)).await {
            Ok(items) => items,
            Err(refused) => return refused,
        };
        let mut resp = call_next(next, req).await;
        fields(&items).insert(&mut resp);
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
            "\"key\";r=2;t=60, \"model\";r=0;t=999999999999999"
        );
        let mut one = Response::new(axum::body::Body::empty());
        headers(&mut one, &[item("day", 5, 86_400, 5, 0)]);
        assert_eq!(one.headers()["ratelimit"], "\"day\";r=5;t=0");
    }

    fn rate(rate: u32, period_ms: u64, burst: u32) -> Option<Rate> {
        Some(Rate {
            rate,
            period_ms,
            burst,
        })
    }

    fn limits() -> LocalLimits {
        LocalLimits::default()
    }

    /// Charges without waiting: budgets in memory never make a request wait.
    fn charge_now(
        l: &LocalLimits,
        key: &str,
        model: &str,
        policy: &LimitPolicy,
        t_ms: u64,
        live: impl FnOnce() -> Vec<LimitPolicy>,
    ) -> Result<Vec<Item>, Refusal> {
        let key = key.to_string();
        let f = std::pin::pin!(l.charge(&key, model, policy, (NonZeroU32::MIN, 0), t_ms, live));
        match f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(r) => r.expect("in-memory limits cannot fail"),
            std::task::Poll::Pending => panic!("in-memory limits waited"),
        }
    }

    const T: u64 = 1_000 * DAY_MS;

    /// A batch of 3 refused after its first unit (the rate limiter's, then [`ChargeBatch`]'s 2),
    /// retried after each `Retry-After`, passes: the wait covers the unit the retry charges
    /// first (without it the client was refused with 1 s on every retry, 2026-12-06 review).
    #[tokio::test]
    async fn a_batch_retried_after_its_retry_after_passes() {
        let l = limits();
        let p = LimitPolicy {
            per_key: rate(1, 1000, 3),
            per_model: None,
            daily_budget: None,
            count: Count::Samples,
        };
        let key = key("k");
        let (one, rest) = ((NonZeroU32::MIN, 0), (NonZeroU32::new(2).unwrap(), 1));
        let none = Vec::new;
        assert!(l.charge(&key, "m", &p, one, T, none).await.unwrap().is_ok());
        assert!(
            l.charge(&key, "m", &p, rest, T, none)
                .await
                .unwrap()
                .is_ok()
        );
        let mut waits = Vec::new();
        for _ in 0..4 {
            let refused = match l.charge(&key, "m", &p, one, T, none).await.unwrap() {
                Err(r) => r,
                Ok(_) => match l.charge(&key, "m", &p, rest, T, none).await.unwrap() {
                    Err(r) => r,
                    Ok(_) => return,
                },
            };
            waits.push(refused.retry_after);
            tokio::time::sleep(Duration::from_secs(refused.retry_after)).await;
        }
        panic!("never admitted, retrying after each Retry-After: {waits:?}");
    }

    fn key(k: &str) -> String {
        k.to_string()
    }

    #[test]
    fn each_limit_policy_of_a_model_keeps_its_own_limiters() {
        let l = limits();
        let a = LimitPolicy {
            per_key: rate(1, 60_000, 1),
            per_model: None,
            daily_budget: None,
            count: Count::Samples,
        };
        let b = LimitPolicy {
            per_key: rate(1, 30_000, 1),
            ..a.clone()
        };
        let live = || vec![a.clone(), b.clone()];
        let k = key("k");
        assert!(charge_now(&l, &k, "m", &a, T, live).is_ok());
        assert!(charge_now(&l, &k, "m", &a, T, live).is_err());
        assert!(charge_now(&l, &k, "m", &b, T, live).is_ok());
        // B's request did not rebuild A's limiters (nor refill A's burst).
        let r = charge_now(&l, &k, "m", &a, T, live).err().unwrap();
        assert_eq!(r.what, KEY_EXCEEDED);
        assert!(charge_now(&l, &k, "m", &b, T, live).is_err());
        // Versions with equal rates share them, whatever their daily budgets.
        let c = LimitPolicy {
            daily_budget: Some(100),
            ..a.clone()
        };
        assert!(Arc::ptr_eq(
            &l.for_model("m", &a, live),
            &l.for_model("m", &c, live)
        ));
        assert!(!Arc::ptr_eq(
            &l.for_model("m", &a, live),
            &l.for_model("m2", &a, live)
        ));
    }

    #[test]
    fn cycling_through_versions_refills_nothing_and_unused_limiters_go() {
        let l = limits();
        let policy = |n: u64| LimitPolicy {
            per_key: rate(1, 60_000 + n, 1),
            ..LimitPolicy::default()
        };
        let all = || (0..12).map(policy).collect::<Vec<_>>();
        let k = key("k");
        for n in 0..12 {
            assert!(charge_now(&l, &k, "m", &policy(n), T, all).is_ok());
        }
        // Twelve versions' limiters, none rebuilt: every one still refuses.
        for n in 0..12 {
            assert!(charge_now(&l, &k, "m", &policy(n), T, all).is_err(), "{n}");
        }
        assert_eq!(l.models.read().unwrap()["m"].len(), 12);
        // Once only two versions are served, making a set drops the others' sets.
        let two = || vec![policy(0), policy(12)];
        assert!(charge_now(&l, &k, "m", &policy(12), T, two).is_ok());
        let kept: Vec<Rates> = l.models.read().unwrap()["m"]
            .iter()
            .map(|m| m.rates)
            .collect();
        assert_eq!(kept, [rates(&policy(0)), rates(&policy(12))]);
        assert!(charge_now(&l, &k, "m", &policy(0), T, two).is_err());
    }

    #[test]
    fn a_spent_budget_charges_no_rate_limit() {
        let l = limits();
        let p = LimitPolicy {
            per_key: rate(1000, 1000, 100),
            per_model: rate(1, 60_000, 2),
            daily_budget: Some(1),
            count: Count::Samples,
        };
        let (k1, k2) = (key("k1"), key("k2"));
        assert!(charge_now(&l, &k1, "m", &p, T, Vec::new).is_ok());
        for _ in 0..3 {
            let r = charge_now(&l, &k1, "m", &p, T, Vec::new).err().unwrap();
            assert_eq!(r.what, DAY_SPENT);
            assert_eq!(r.retry_after, 86_400);
            assert_eq!(r.items.len(), 1);
            assert_eq!((r.items[0].name, r.items[0].remaining), ("day", 0));
        }
        // k1's refused requests left the model's second unit to k2.
        let items = charge_now(&l, &k2, "m", &p, T, Vec::new).unwrap();
        assert_eq!(
            items
                .iter()
                .map(|i| (i.name, i.remaining))
                .collect::<Vec<_>>(),
            [("key", 99), ("model", 0), ("day", 0)]
        );
    }

    #[test]
    fn a_clock_stepping_back_across_midnight_waits_for_the_end_of_the_day_counted() {
        let l = limits();
        let p = LimitPolicy {
            per_key: None,
            per_model: None,
            daily_budget: Some(2),
            count: Count::Samples,
        };
        let k = key("k");
        // One second into a day, then a step back of two seconds, into the day before.
        let items = charge_now(&l, &k, "m", &p, T + 1_000, Vec::new).unwrap();
        assert_eq!((items[0].remaining, items[0].reset_s), (1, 86_399));
        let items = charge_now(&l, &k, "m", &p, T - 1_000, Vec::new).unwrap();
        assert_eq!((items[0].remaining, items[0].reset_s), (0, 86_401));
        // Refused until the clock reaches the end of the day counted, not its own midnight a
        // second away.
        let r = charge_now(&l, &k, "m", &p, T - 1_000, Vec::new)
            .err()
            .unwrap();
        assert_eq!((r.what, r.retry_after), (DAY_SPENT, 86_401));
        assert_eq!(r.items[0].reset_s, 86_401);
        assert!(charge_now(&l, &k, "m", &p, T + DAY_MS, Vec::new).is_ok());
    }

    #[test]
    fn a_model_refusal_waits_for_the_key_too() {
        let l = limits();
        let p = LimitPolicy {
            per_key: rate(1, 60_000, 1),
            per_model: rate(1, 1_000, 1),
            daily_budget: None,
            count: Count::Samples,
        };
        let (k1, k2) = (key("k1"), key("k2"));
        assert!(charge_now(&l, &k1, "m", &p, T, Vec::new).is_ok());
        // k2's check took its only unit: retrying after the model's second would meet it.
        let r = charge_now(&l, &k2, "m", &p, T, Vec::new).err().unwrap();
        assert_eq!(r.what, MODEL_EXCEEDED);
        assert_eq!(r.retry_after, 60);
        // A key with units left waits only for the model.
        let roomy = LimitPolicy {
            per_key: rate(1, 60_000, 5),
            ..p
        };
        assert!(charge_now(&l, &k1, "n", &roomy, T, Vec::new).is_ok());
        let r = charge_now(&l, &k2, "n", &roomy, T, Vec::new).err().unwrap();
        assert_eq!(r.what, MODEL_EXCEEDED);
        assert_eq!(r.retry_after, 1);
    }

    #[test]
    fn unchecked_rates_neither_vanish_nor_overflow() {
        let l = limits();
        // An interval that truncates to zero, and one burst × interval past any clock.
        let p = LimitPolicy {
            per_key: rate(u32::MAX, 1, u32::MAX),
            per_model: rate(1, u64::MAX, u32::MAX),
            daily_budget: Some(u64::MAX),
            count: Count::Samples,
        };
        let lim = l.for_model("m", &p, Vec::new);
        assert!(lim.per_key.is_some() && lim.per_model.is_some());
        let items = charge_now(&l, &key("k"), "m", &p, T, Vec::new).unwrap();
        let f = fields(&items);
        assert!(f.policy.is_some() && f.state.is_some());
        for i in &items {
            assert!(i.window_s >= 1, "{}", i.name);
        }
        let i = Item::gcra("model", rate(1, u64::MAX, u32::MAX).unwrap(), 0);
        assert!(i.reset_s > 0 && i.window_s >= i.reset_s);
    }

    #[test]
    fn gcra_items() {
        let r = Rate {
            rate: 10,
            period_ms: 1000,
            burst: 5,
        };
        let i = Item::gcra("key", r, 2);
        assert_eq!((i.quota, i.window_s, i.remaining, i.reset_s), (5, 1, 2, 1));
    }
}
