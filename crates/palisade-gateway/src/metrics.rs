//! Prometheus metrics. Labels are routes, status codes, guards and models: never a key, a client
//! address or anything else per client (cardinality stays bounded and no caller is tracked).

use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::Response;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

use crate::guard::{Decision, Guard, Next, call_next};
use crate::oip::target_of;

/// The gateway's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    rejections: IntCounterVec,
    samples: IntCounterVec,
    audit_append: Histogram,
    audit_failures: IntCounter,
    inference_queue: IntGauge,
}

fn route_label(req: &mut Request) -> &'static str {
    let path = req.uri().path();
    match path {
        "/v2/health/live" | "/v2/health/ready" => "health",
        "/v2" => "server",
        "/metrics" => "metrics",
        _ if path.starts_with("/inference.GRPCInferenceService/") => "grpc",
        _ => target_of(req).action(),
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("palisade".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests answered, by route and status code",
            ),
            &["route", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Time to answer, by route").buckets(
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ],
            ),
            &["route"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new("guard_rejections_total", "Requests refused, by guard"),
            &["guard"],
        )?;
        let samples = IntCounterVec::new(
            Opts::new("inference_samples_total", "Samples run through a model"),
            &["model"],
        )?;
        let audit_append = Histogram::with_opts(
            HistogramOpts::new(
                "audit_append_seconds",
                "Time until an audit entry is durable",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )?;
        let audit_failures = IntCounter::new(
            "audit_append_failures_total",
            "Audit appends that failed (requests withheld)",
        )?;
        let inference_queue = IntGauge::new(
            "inference_queue",
            "Model calls waiting for an inference thread (when /metrics was read)",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(samples.clone()))?;
        registry.register(Box::new(audit_append.clone()))?;
        registry.register(Box::new(audit_failures.clone()))?;
        registry.register(Box::new(inference_queue.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            rejections,
            samples,
            audit_append,
            audit_failures,
            inference_queue,
        })
    }

    /// Records an audit append.
    pub fn audit_append(&self, took: Duration, ok: bool) {
        self.audit_append.observe(took.as_secs_f64());
        if !ok {
            self.audit_failures.inc();
        }
    }

    /// Records how many model calls wait for an inference thread.
    pub fn inference_queue(&self, queued: usize) {
        self.inference_queue
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
    }

    /// Records `n` samples through `model`.
    pub fn samples(&self, model: &str, n: usize) {
        self.samples.with_label_values(&[model]).inc_by(n as u64);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// The metrics layer: outermost, around every route.
#[derive(Debug, Clone)]
pub struct Measure(pub std::sync::Arc<Metrics>);

impl Guard for Measure {
    async fn handle(self, mut req: Request, next: Next) -> Response {
        let route = route_label(&mut req);
        let t = Instant::now();
        let resp = call_next(next, req).await;
        let m = &self.0;
        m.duration
            .with_label_values(&[route])
            .observe(t.elapsed().as_secs_f64());
        m.requests
            .with_label_values(&[route, resp.status().as_str()])
            .inc();
        if let Some(Decision::Denied(g)) = resp.extensions().get::<Decision>() {
            m.rejections.with_label_values(&[g]).inc();
        }
        resp
    }
}
