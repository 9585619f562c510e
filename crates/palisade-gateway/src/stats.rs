//! Triton's statistics extension: for each version of each model, how many inferences it
//! served and where their time went, in Triton's terms (`GET /v2/models[/{m}[/versions/{v}]]/stats`,
//! gRPC `ModelStatistics`, which tritonclient's `get_inference_statistics` and perf_analyzer ask).
//!
//! What each figure counts, for one version:
//! - `success`: infer requests answered with outputs, and their time from the moment validation
//!   took them (reading the body included) to the moment their outputs were encoded: the model
//!   call and the guards' work from validation in; not authentication, the rate limits or
//!   sending the answer;
//! - `fail`: infer requests for the version that reached validation and got no outputs (a body
//!   that does not validate, a batch over a budget, a model call that failed, timed out or was
//!   not run because its client had left, or whose answer the audit log could not take and so
//!   was withheld), timed the same way. Requests refused earlier (no key, a role that does not
//!   allow it, a rate limit, a gRPC call refused while it was translated, such as one naming too
//!   many tensors) name a model but were never its work: they are in the audit log and the
//!   metrics, not here;
//! - `queue`: the wait for an inference thread; `compute_input`: decoding and checking the body;
//!   `compute_infer`: the model call; `compute_output`: hardening and encoding the outputs. Each
//!   counts the successful requests (Palisade batches no requests together, so an execution is
//!   a request), and `batch_stats` splits the same three by the number of rows a request sent;
//! - `inference_count` is the rows inferred, `execution_count` the model calls that produced
//!   outputs, `last_inference` the time of the last one in milliseconds since the epoch (0:
//!   never).
//!
//! `cache_hit` and `cache_miss` stay zero (no response cache) and `memory_usage` and
//! `response_stats` empty (no such accounting; no decoupled models). The counts start at zero
//! when a version is loaded and live as long as it is served.
//!
//! The figures are of every caller of a version together, and any key that may query the model
//! reads them, as in Triton: a key learns how busy the model is, never who sent what (the
//! audit log, readable with the `audit` role only, says that).
//!
//! Recording costs one uncontended lock per request: the counts of a version are read and
//! written together, so that a snapshot is of one instant.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A count of events and their total duration, as Triton's `StatisticDuration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatDuration {
    /// How many.
    pub count: u64,
    /// Their total duration, in nanoseconds.
    pub ns: u64,
}

impl StatDuration {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns = self
            .ns
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
}

/// Triton's `InferStatistics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferStatistics {
    /// Requests answered with outputs.
    pub success: StatDuration,
    /// Requests that reached validation and got no outputs.
    pub fail: StatDuration,
    /// Waiting for an inference thread.
    pub queue: StatDuration,
    /// Decoding and checking the body.
    pub compute_input: StatDuration,
    /// The model call.
    pub compute_infer: StatDuration,
    /// Hardening and encoding the outputs.
    pub compute_output: StatDuration,
    /// Always zero: there is no response cache.
    pub cache_hit: StatDuration,
    /// Always zero: there is no response cache.
    pub cache_miss: StatDuration,
}

/// Triton's `InferBatchStatistics`: the compute times of requests of one batch size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchStatistics {
    /// Rows in the request.
    pub batch_size: u64,
    /// Decoding and checking the body.
    pub compute_input: StatDuration,
    /// The model call.
    pub compute_infer: StatDuration,
    /// Hardening and encoding the outputs.
    pub compute_output: StatDuration,
}

/// One version's statistics, as Triton's `ModelStatistics` (REST JSON and gRPC message alike).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStatistics {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Milliseconds since the epoch of the last successful inference; 0 if none.
    pub last_inference: u64,
    /// Rows inferred.
    pub inference_count: u64,
    /// Model calls that produced outputs.
    pub execution_count: u64,
    /// Where the time went.
    pub inference_stats: InferStatistics,
    /// Always empty (no decoupled models).
    pub response_stats: BTreeMap<String, ()>,
    /// By batch size, smallest first.
    pub batch_stats: Vec<BatchStatistics>,
    /// Always empty (no memory accounting).
    pub memory_usage: Vec<()>,
}

/// The answer of `GET /v2/models[/{m}[/versions/{v}]]/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatisticsResponse {
    /// One entry per version, by model name then version order.
    pub model_stats: Vec<ModelStatistics>,
}

/// Where a successful request's time went (response extension from the harden guard, which
/// the validate guard puts in the request's [`Tally`]).
#[derive(Debug, Clone, Copy)]
pub struct Served {
    /// Rows inferred.
    pub rows: usize,
    /// When the request was handed to the inference threads (for its trace; the model call
    /// began `queue` later and ended `infer` after that).
    pub queued_at: std::time::Instant,
    /// When its outputs were hardened and encoded (for its trace).
    pub encoded_at: std::time::Instant,
    /// Waiting for an inference thread.
    pub queue: Duration,
    /// The model call.
    pub infer: Duration,
    /// Hardening and encoding.
    pub output: Duration,
}

/// An infer request's part in its version's statistics, recorded once the audit guard has
/// released or withheld its answer (response extension from the validate guard): an answer the
/// audit log could not take leaves without its outputs, and counts as a failure (review,
/// 2026-12-07: validate had counted it a success).
#[derive(Debug, Clone)]
pub struct Tally {
    stats: Arc<VersionStats>,
    total: Duration,
    input: Duration,
    served: Option<Served>,
}

impl Tally {
    /// A request of the version counted by `stats` that took `total` from validation's start to
    /// its outputs encoded (or its refusal), `input` of it decoding and checking its body, and
    /// was `served` (the harden guard's extension) or not.
    pub fn new(
        stats: Arc<VersionStats>,
        total: Duration,
        input: Duration,
        served: Option<Served>,
    ) -> Self {
        Tally {
            stats,
            total,
            input,
            served,
        }
    }

    /// Where a served request's time went (`None`: it was not served).
    pub fn served(&self) -> Option<&Served> {
        self.served.as_ref()
    }

    /// Records the request: a success if it was served and its answer `released` with its
    /// outputs at `now_ms`, a failure otherwise.
    pub fn record(self, released: bool, now_ms: u64) {
        match (released, &self.served) {
            (true, Some(s)) => self.stats.succeeded(self.total, self.input, s, now_ms),
            _ => self.stats.failed(self.total),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    last_inference: u64,
    inference_count: u64,
    execution_count: u64,
    stats: InferStatistics,
    batches: BTreeMap<u64, BatchStatistics>,
}

/// The statistics of one served version (see the module documentation).
#[derive(Debug, Default)]
pub struct VersionStats {
    counts: Mutex<Counts>,
}

impl VersionStats {
    /// A request answered with outputs: `total` from validation's start to its outputs encoded,
    /// `input` of it decoding and checking, `served` the rest, at `now_ms`.
    pub fn succeeded(&self, total: Duration, input: Duration, served: &Served, now_ms: u64) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.last_inference = c.last_inference.max(now_ms);
        c.inference_count += served.rows as u64;
        c.execution_count += 1;
        let s = &mut c.stats;
        s.success.add(total);
        s.queue.add(served.queue);
        s.compute_input.add(input);
        s.compute_infer.add(served.infer);
        s.compute_output.add(served.output);
        let rows = served.rows as u64;
        let b = c.batches.entry(rows).or_insert_with(|| BatchStatistics {
            batch_size: rows,
            ..BatchStatistics::default()
        });
        b.compute_input.add(input);
        b.compute_infer.add(served.infer);
        b.compute_output.add(served.output);
    }

    /// A request that reached validation and got no outputs, after `total`.
    pub fn failed(&self, total: Duration) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.stats.fail.add(total);
    }

    /// The counts now, as Triton reports them for `name` version `version`.
    pub fn snapshot(&self, name: &str, version: &str) -> ModelStatistics {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        ModelStatistics {
            name: name.into(),
            version: version.into(),
            last_inference: c.last_inference,
            inference_count: c.inference_count,
            execution_count: c.execution_count,
            inference_stats: c.stats,
            response_stats: BTreeMap::new(),
            batch_stats: c.batches.values().copied().collect(),
            memory_usage: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A served request counts as a success only if its answer was released.
    #[test]
    fn a_tally_is_a_success_only_when_served_and_released() {
        let stats = Arc::new(VersionStats::default());
        let served = Served {
            rows: 3,
            queued_at: std::time::Instant::now(),
            encoded_at: std::time::Instant::now(),
            queue: ms(1),
            infer: ms(2),
            output: ms(3),
        };
        let tally = |served| Tally::new(stats.clone(), ms(10), ms(1), served);
        tally(Some(served)).record(true, 5);
        tally(Some(served)).record(false, 6);
        tally(None).record(true, 7);
        let got = stats.snapshot("m", "1");
        assert_eq!((got.execution_count, got.inference_count), (1, 3));
        assert_eq!(got.last_inference, 5);
        let st = got.inference_stats;
        assert_eq!((st.success.count, st.fail.count), (1, 2));
        assert_eq!(st.fail.ns, 20_000_000);
    }

    #[test]
    fn successes_and_failures_add_up_by_kind_and_batch_size() {
        let s = VersionStats::default();
        let fresh = s.snapshot("m", "1");
        assert_eq!(fresh.last_inference, 0);
        assert_eq!(fresh.inference_stats, InferStatistics::default());
        assert!(fresh.batch_stats.is_empty());

        let served = |rows, q, i, o| Served {
            rows,
            queued_at: std::time::Instant::now(),
            encoded_at: std::time::Instant::now(),
            queue: ms(q),
            infer: ms(i),
            output: ms(o),
        };
        s.succeeded(ms(10), ms(1), &served(4, 2, 5, 1), 1_000);
        s.succeeded(ms(20), ms(3), &served(1, 4, 7, 2), 900);
        s.succeeded(ms(30), ms(5), &served(4, 6, 9, 3), 2_000);
        s.failed(ms(8));
        let got = s.snapshot("m", "1");
        assert_eq!((got.name.as_str(), got.version.as_str()), ("m", "1"));
        // The latest time seen, not the last recorded.
        assert_eq!(got.last_inference, 2_000);
        assert_eq!(got.inference_count, 9);
        assert_eq!(got.execution_count, 3);
        let d = |count, ms: u64| StatDuration {
            count,
            ns: ms * 1_000_000,
        };
        let st = got.inference_stats;
        assert_eq!(st.success, d(3, 60));
        assert_eq!(st.fail, d(1, 8));
        assert_eq!(st.queue, d(3, 12));
        assert_eq!(st.compute_input, d(3, 9));
        assert_eq!(st.compute_infer, d(3, 21));
        assert_eq!(st.compute_output, d(3, 6));
        assert_eq!((st.cache_hit, st.cache_miss), (d(0, 0), d(0, 0)));
        let sizes: Vec<_> = got.batch_stats.iter().map(|b| b.batch_size).collect();
        assert_eq!(sizes, [1, 4]);
        assert_eq!(got.batch_stats[1].compute_infer, d(2, 14));
        assert_eq!(got.batch_stats[0].compute_output, d(1, 2));
    }

    /// The REST JSON is Triton's: the names tritonclient reads, durations as `{count, ns}`.
    #[test]
    fn the_json_has_tritons_fields() {
        let s = VersionStats::default();
        s.failed(Duration::from_nanos(5));
        let v = serde_json::to_value(StatisticsResponse {
            model_stats: vec![s.snapshot("m", "2")],
        })
        .unwrap();
        let m = &v["model_stats"][0];
        assert_eq!(m["name"], "m");
        assert_eq!(m["version"], "2");
        assert_eq!(m["inference_stats"]["fail"]["count"], 1);
        assert_eq!(m["inference_stats"]["fail"]["ns"], 5);
        for k in [
            "success",
            "queue",
            "compute_input",
            "compute_infer",
            "compute_output",
            "cache_hit",
            "cache_miss",
        ] {
            assert_eq!(m["inference_stats"][k]["count"], 0, "{k}");
        }
        assert_eq!(m["response_stats"], serde_json::json!({}));
        assert_eq!(m["memory_usage"], serde_json::json!([]));
        assert_eq!(m["batch_stats"], serde_json::json!([]));
    }
}
