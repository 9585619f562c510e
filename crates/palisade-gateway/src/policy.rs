//! The per-model policy file (TOML): what the guards enforce for one model.
//!
//! ```toml
//! [input]                 # validate
//! max_body_bytes = 4194304
//! max_batch = 64
//! range = [0.0, 1.0]      # default: the model's declared input range
//! body_timeout_ms = 30000 # a REST body must arrive whole within this (else 408)
//!
//! [limits]                # rate limit (GCRA)
//! per_key = { rate = 100, period_ms = 1000, burst = 200 }
//! per_model = { rate = 2000, period_ms = 1000, burst = 4000 }
//! daily_budget = 100000   # samples per key per UTC day
//! count = "samples"       # what the rates and the budget count: samples | requests
//!
//! [inference]             # the model call
//! timeout_ms = 30000      # answered 504 (gRPC: DEADLINE_EXCEEDED) if not done within this
//!
//! [output]                # harden
//! reveal = "logits"       # logits | probabilities | label
//! top_k = 3
//! round = 4               # decimals
//! noise = { kind = "laplace", scale = 0.01 }
//! ```
//!
//! Every section and field is optional; unknown fields are an error (a typo must not silently
//! turn a guard off).
//!
//! The rates and the daily budget count samples (`count = "samples"`, the default): a request
//! of a batch of N images costs N of each. One is charged before the body is read, so that a
//! key over its limits is refused without reading what it sends; the other N - 1 once
//! validation has read the batch (a refusal then leaves the first charged). A daily budget is a
//! bound on how many queries a key can make of the model, against extraction: counted in
//! requests, batches would multiply it by up to `max_batch`. A batch larger than a rate's burst
//! or the daily budget could never pass, so with `count = "samples"` the largest batch accepted
//! is the least of `input.max_batch`, the bursts and the budget ([`Policy::batch_limit`]).
//! `count = "requests"` counts a request once whatever its batch (the gateway says in its log
//! when it loads such a model with a budget and batches).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A policy that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or an unknown field.
    #[error("policy: {0}")]
    Parse(#[from] toml::de::Error),
    /// Parsed, but a value makes no sense.
    #[error("policy: {0}")]
    Invalid(String),
}

/// Everything the guards need to know about one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Input validation.
    pub input: InputPolicy,
    /// Rate limits and budgets.
    pub limits: LimitPolicy,
    /// The model call.
    pub inference: InferencePolicy,
    /// Output hardening.
    pub output: OutputPolicy,
}

/// Input validation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputPolicy {
    /// Largest request body, after decompression, in bytes.
    pub max_body_bytes: usize,
    /// Largest batch.
    pub max_batch: usize,
    /// Allowed value range; `None` uses the model's declared range.
    pub range: Option<[f32; 2]>,
    /// How long the whole request body may take to arrive, in milliseconds, from when
    /// validation starts reading it. A client that sends its headers and then trickles or
    /// stalls its body is answered 408 when it runs out, instead of holding a connection and a
    /// request in flight for as long as it likes.
    pub body_timeout_ms: u64,
}

/// [`InputPolicy::body_timeout_ms`] unless the policy says otherwise.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 30_000;

impl Default for InputPolicy {
    fn default() -> Self {
        InputPolicy {
            max_body_bytes: 4 << 20,
            max_batch: 64,
            range: None,
            body_timeout_ms: DEFAULT_BODY_TIMEOUT_MS,
        }
    }
}

/// The model call's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferencePolicy {
    /// How long a request may wait for the model, in milliseconds, from when the model service
    /// queues its call (after every guard before it has passed): then it is answered 504
    /// (gRPC: `DEADLINE_EXCEEDED`). A request's own shorter deadline (the OIP `timeout`
    /// parameter, gRPC's `grpc-timeout`) wins. A call not yet started is dropped; one running
    /// cannot be stopped, and another inference thread takes its place (see
    /// [`crate::pool::STAND_INS_PER_THREAD`]).
    pub timeout_ms: u64,
}

/// [`InferencePolicy::timeout_ms`] unless the policy says otherwise.
pub const DEFAULT_INFER_TIMEOUT_MS: u64 = 30_000;

impl Default for InferencePolicy {
    fn default() -> Self {
        InferencePolicy {
            timeout_ms: DEFAULT_INFER_TIMEOUT_MS,
        }
    }
}

/// A GCRA rate: `rate` requests per `period_ms`, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per period.
    pub rate: u32,
    /// The period, in milliseconds.
    pub period_ms: u64,
    /// Largest burst.
    pub burst: u32,
}

/// The longest [`Rate::period_ms`], and the longest a full burst may take to come back: 366
/// days. Longer is surely a mistake (a daily budget covers long spans), and the limiter keeps
/// its times in 64-bit nanoseconds, which run out after 584 years.
pub const MAX_PERIOD_MS: u64 = 366 * 86_400_000;

impl Rate {
    /// The emission interval: one request per `period_ms / rate` (truncated to whole
    /// nanoseconds; zero when `rate` is zero or above one per nanosecond, which
    /// [`Policy::check`] refuses).
    pub fn interval(self) -> Duration {
        Duration::from_millis(self.period_ms)
            .checked_div(self.rate)
            .unwrap_or(Duration::ZERO)
    }
}

/// Rate limits and budgets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitPolicy {
    /// Limit for each key on this model.
    pub per_key: Option<Rate>,
    /// Limit for the model, all keys together.
    pub per_model: Option<Rate>,
    /// Samples (or requests, with [`Count::Requests`]) per key per UTC day.
    pub daily_budget: Option<u64>,
    /// What the rates and the budget count.
    pub count: Count,
}

/// What a rate limit or a daily budget counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Count {
    /// Each sample of a batch (a request of N costs N).
    #[default]
    Samples,
    /// Each request, whatever its batch.
    Requests,
}

impl Default for LimitPolicy {
    fn default() -> Self {
        LimitPolicy {
            per_key: Some(Rate {
                rate: 1000,
                period_ms: 1000,
                burst: 2000,
            }),
            per_model: None,
            daily_budget: None,
            count: Count::Samples,
        }
    }
}

/// What the client sees of the model's output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reveal {
    /// Raw logits.
    #[default]
    Logits,
    /// Softmax probabilities.
    Probabilities,
    /// Only the predicted class.
    Label,
}

/// Noise added to scores before they leave.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noise {
    /// Distribution.
    pub kind: NoiseKind,
    /// Laplace scale b, or Gaussian standard deviation.
    pub scale: f32,
}

/// A noise distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseKind {
    /// Laplace(0, b).
    Laplace,
    /// Normal(0, σ²).
    Gaussian,
}

/// Output hardening settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputPolicy {
    /// What is revealed.
    pub reveal: Reveal,
    /// Reveal only the k best classes (their scores and indices).
    pub top_k: Option<usize>,
    /// Round scores to this many decimals.
    pub round: Option<u32>,
    /// Add noise to scores.
    pub noise: Option<Noise>,
}

impl Policy {
    /// Parses and checks a policy.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let p: Policy = toml::from_str(text)?;
        p.check()?;
        Ok(p)
    }

    /// Reads a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// The largest batch a request may carry, and what sets it: `input.max_batch`, or, where the
    /// limits count samples, a smaller burst or daily budget (a larger batch could never pass
    /// them).
    pub fn batch_limit(&self) -> (usize, &'static str) {
        let mut most = (self.input.max_batch, "input.max_batch");
        if self.limits.count == Count::Samples {
            let limits = [
                (
                    self.limits.per_key.map(|r| u64::from(r.burst)),
                    "limits.per_key.burst",
                ),
                (
                    self.limits.per_model.map(|r| u64::from(r.burst)),
                    "limits.per_model.burst",
                ),
                (self.limits.daily_budget, "limits.daily_budget"),
            ];
            for (n, what) in limits {
                if let Some(n) = n
                    && n < most.0 as u64
                {
                    // Below max_batch, so it fits a usize.
                    most = (n as usize, what);
                }
            }
        }
        most
    }

    /// Checks the values.
    pub fn check(&self) -> Result<(), PolicyError> {
        let bad = |m: String| Err(PolicyError::Invalid(m));
        if self.input.max_body_bytes == 0 || self.input.max_body_bytes > 1 << 30 {
            return bad("input.max_body_bytes must be in 1..=1 GiB".into());
        }
        if self.input.max_batch == 0 || self.input.max_batch > 1 << 16 {
            return bad("input.max_batch must be in 1..=65536".into());
        }
        if self.input.body_timeout_ms == 0 || self.input.body_timeout_ms > 600_000 {
            return bad("input.body_timeout_ms must be in 1..=600000 (10 minutes)".into());
        }
        if self.inference.timeout_ms == 0 || self.inference.timeout_ms > 600_000 {
            return bad("inference.timeout_ms must be in 1..=600000 (10 minutes)".into());
        }
        if let Some([lo, hi]) = self.input.range
            && !(lo.is_finite() && hi.is_finite() && lo <= hi)
        {
            return bad(format!("input.range [{lo}, {hi}] is not a finite interval"));
        }
        for (name, r) in [
            ("limits.per_key", self.limits.per_key),
            ("limits.per_model", self.limits.per_model),
        ] {
            let Some(r) = r else { continue };
            if r.rate == 0 || r.period_ms == 0 || r.burst == 0 {
                return bad(format!(
                    "{name}: rate, period_ms and burst must be positive"
                ));
            }
            if r.period_ms > MAX_PERIOD_MS {
                return bad(format!(
                    "{name}: period_ms must be at most {MAX_PERIOD_MS} (366 days)"
                ));
            }
            let interval = r.interval();
            if interval.is_zero() {
                return bad(format!(
                    "{name}: rate {} per period_ms {} is more than one request per nanosecond",
                    r.rate, r.period_ms
                ));
            }
            if interval
                .checked_mul(r.burst)
                .is_none_or(|w| w > Duration::from_millis(MAX_PERIOD_MS))
            {
                return bad(format!(
                    "{name}: burst × period_ms / rate (the time a full burst takes to come back) \
                     must be at most 366 days"
                ));
            }
        }
        if self.limits.daily_budget == Some(0) {
            return bad("limits.daily_budget must be positive (remove it for no budget)".into());
        }
        if self.output.top_k == Some(0) {
            return bad("output.top_k must be at least 1".into());
        }
        if self.output.round.is_some_and(|d| d > 9) {
            return bad("output.round must be at most 9 decimals".into());
        }
        if let Some(n) = self.output.noise
            && !(n.scale.is_finite() && n.scale >= 0.0)
        {
            return bad("output.noise.scale must be finite and non-negative".into());
        }
        if self.output.reveal == Reveal::Label
            && (self.output.top_k.is_some() || self.output.round.is_some())
        {
            return bad(
                "output.reveal = \"label\" reveals no scores: top_k and round do not apply".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_policy_parses() {
        let p = Policy::from_toml(
            r#"
            [input]
            max_body_bytes = 1000
            max_batch = 8
            range = [0.0, 1.0]
            body_timeout_ms = 5000
            [limits]
            per_key = { rate = 10, period_ms = 1000, burst = 5 }
            daily_budget = 100
            [inference]
            timeout_ms = 250
            [output]
            reveal = "probabilities"
            top_k = 3
            round = 2
            noise = { kind = "gaussian", scale = 0.1 }
            "#,
        )
        .unwrap();
        assert_eq!(p.input.max_batch, 8);
        assert_eq!(p.input.body_timeout_ms, 5000);
        assert_eq!(
            Policy::default().input.body_timeout_ms,
            DEFAULT_BODY_TIMEOUT_MS
        );
        assert_eq!(p.inference.timeout_ms, 250);
        assert_eq!(
            Policy::default().inference.timeout_ms,
            DEFAULT_INFER_TIMEOUT_MS
        );
        assert_eq!(p.output.top_k, Some(3));
        assert_eq!(Policy::from_toml("").unwrap(), Policy::default());
    }

    #[test]
    fn counting_samples_caps_a_batch_at_the_smallest_limit() {
        let p = |t: &str| Policy::from_toml(t).unwrap().batch_limit();
        assert_eq!(p(""), (64, "input.max_batch"));
        let rates = "[input]\nmax_batch = 50\n[limits]\n\
                     per_key = { rate = 1, period_ms = 1000, burst = 40 }\n\
                     per_model = { rate = 1, period_ms = 1000, burst = 30 }\n";
        assert_eq!(p(rates), (30, "limits.per_model.burst"));
        assert_eq!(
            p(&format!("{rates}daily_budget = 20\n")),
            (20, "limits.daily_budget")
        );
        // Counting requests, a batch costs one: only max_batch bounds it.
        assert_eq!(
            p(&format!("{rates}daily_budget = 20\ncount = \"requests\"\n")),
            (50, "input.max_batch")
        );
        assert!(Policy::from_toml("[limits]\ncount = \"images\"").is_err());
    }

    #[test]
    fn typos_and_nonsense_are_errors() {
        assert!(matches!(
            Policy::from_toml("[input]\nmax_bach = 3"),
            Err(PolicyError::Parse(_))
        ));
        assert!(matches!(
            Policy::from_toml("[outputs]\n"),
            Err(PolicyError::Parse(_))
        ));
        assert!(matches!(
            Policy::from_toml("[output]\ntop_k = 0"),
            Err(PolicyError::Invalid(_))
        ));
        for t in ["0", "600001"] {
            assert!(matches!(
                Policy::from_toml(&format!("[input]\nbody_timeout_ms = {t}")),
                Err(PolicyError::Invalid(_))
            ));
            assert!(matches!(
                Policy::from_toml(&format!("[inference]\ntimeout_ms = {t}")),
                Err(PolicyError::Invalid(_))
            ));
        }
        assert!(matches!(
            Policy::from_toml("[inference]\ntimeout = 5"),
            Err(PolicyError::Parse(_))
        ));
        assert!(matches!(
            Policy::from_toml("[input]\nrange = [1.0, 0.0]"),
            Err(PolicyError::Invalid(_))
        ));
        assert!(matches!(
            Policy::from_toml("[output]\nreveal = \"label\"\ntop_k = 2"),
            Err(PolicyError::Invalid(_))
        ));
    }

    /// The message of the error `limits` gives, or `None` when it is a valid policy.
    fn limits_error(limits: &str) -> Option<String> {
        match Policy::from_toml(&format!("[limits]\n{limits}")) {
            Ok(_) => None,
            Err(PolicyError::Invalid(m)) => Some(m),
            Err(e) => panic!("{limits}: {e}"),
        }
    }

    #[test]
    fn rates_the_limiter_cannot_keep_are_errors() {
        // More than one request per nanosecond: the interval truncates to zero.
        let m = limits_error("per_key = { rate = 1000001, period_ms = 1, burst = 1 }").unwrap();
        assert!(
            m.starts_with("limits.per_key: ") && m.contains("nanosecond"),
            "{m}"
        );
        assert_eq!(
            limits_error("per_key = { rate = 1000000, period_ms = 1, burst = 1 }"),
            None
        );
        let m =
            limits_error("per_model = { rate = 4294967295, period_ms = 4, burst = 1 }").unwrap();
        assert!(m.starts_with("limits.per_model: "), "{m}");
        // A period past 366 days.
        let m = limits_error(&format!(
            "per_model = {{ rate = 1, period_ms = {}, burst = 1 }}",
            MAX_PERIOD_MS + 1
        ))
        .unwrap();
        assert!(m.starts_with("limits.per_model: period_ms"), "{m}");
        let m = limits_error("per_key = { rate = 1, period_ms = 18446744073709551615, burst = 1 }")
            .unwrap();
        assert!(m.starts_with("limits.per_key: period_ms"), "{m}");
        assert_eq!(
            limits_error(&format!(
                "per_key = {{ rate = 1, period_ms = {MAX_PERIOD_MS}, burst = 1 }}"
            )),
            None
        );
        // A burst that takes longer than that to come back (here 2^32 - 1 years).
        let m = limits_error(&format!(
            "per_key = {{ rate = 1, period_ms = {MAX_PERIOD_MS}, burst = 4294967295 }}"
        ))
        .unwrap();
        assert!(m.starts_with("limits.per_key: burst"), "{m}");
        assert!(
            limits_error(&format!(
                "per_key = {{ rate = 1, period_ms = {MAX_PERIOD_MS}, burst = 2 }}"
            ))
            .is_some()
        );
        assert_eq!(
            limits_error(&format!(
                "per_key = {{ rate = 2, period_ms = {MAX_PERIOD_MS}, burst = 2 }}"
            )),
            None
        );
    }
}
