//! Prometheus metrics. Labels are routes, status codes, guards and models: never a key, a client
//! address or anything else per client (cardinality stays bounded and no caller is tracked).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::StatusCode;
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
    limits_check: Histogram,
    limits_failures: IntCounter,
    audit_failures: IntCounter,
    inference_queue: IntGauge,
    inference_longest: prometheus::Gauge,
    inference_stuck: IntGauge,
    inference_timeouts: IntCounterVec,
    client_left: IntGauge,
    connections_open: IntGauge,
    connections_max: IntGauge,
    /// The connections counted in `connections_*`, once given ([`Metrics::watch_connections`]).
    connections: Arc<std::sync::OnceLock<crate::listen::Connections>>,
    /// The series of every route in [`ROUTES`], looked up once here rather than per request.
    routes: Arc<[RouteSeries]>,
}

/// Every value of the `route` label ([`route_label`]).
const ROUTES: [&str; 16] = [
    "health",
    "server",
    "metrics",
    "grpc",
    "metadata",
    "ready",
    "infer",
    "config",
    "stats",
    "index",
    "admin.keys",
    "admin.models",
    "audit",
    "logging",
    "trace",
    "unknown",
];

/// A route's request duration and its count of `200` answers, resolved once: finding a series by
/// its label values hashes them and takes a read lock, several times per request otherwise.
#[derive(Debug)]
struct RouteSeries {
    route: &'static str,
    duration: Histogram,
    ok: IntCounter,
}

/// The `route` label of `req`: one of [`ROUTES`].
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
        let limits_check = Histogram::with_opts(
            HistogramOpts::new(
                "limits_check_seconds",
                "Time the rate-limit store took to charge an infer request (twice for a batch: its first \
                 sample, then the others)",
            )
            .buckets(vec![
                0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                0.025, 0.1, 0.25,
            ]),
        )?;
        let limits_failures = IntCounter::new(
            "limits_check_failures_total",
            "Infer requests refused (503) because the rate-limit store could not answer",
        )?;
        let inference_queue = IntGauge::new(
            "inference_queue",
            "Model calls waiting for an inference thread (when /metrics was read)",
        )?;
        let inference_longest = prometheus::Gauge::new(
            "inference_longest_running_seconds",
            "How long the longest model call running now has run, 0 if none (when /metrics was \
             read): a call that never returns holds its inference thread for good",
        )?;
        let inference_stuck = IntGauge::new(
            "inference_threads_stuck",
            "Inference threads given up on, still running a model call past its deadline (when \
             /metrics was read); another thread took the place of each, within a bound",
        )?;
        let inference_timeouts = IntCounterVec::new(
            Opts::new(
                "inference_timeouts_total",
                "Infer requests answered 504 because the model did not answer before their \
                 deadline (the policy's inference.timeout_ms or the request's own), by model",
            ),
            &["model"],
        )?;
        let client_left = IntGauge::new(
            "requests_client_left_finishing",
            "Requests whose client went away before the answer, still being finished for their \
             audit entry (when /metrics was read); at the bound, new requests wait",
        )?;
        let connections_open = IntGauge::new(
            "connections_open",
            "Client connections open (when /metrics was read)",
        )?;
        let connections_max = IntGauge::new(
            "connections_max",
            "Client connections the gateway holds at most",
        )?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_max.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(samples.clone()))?;
        registry.register(Box::new(audit_append.clone()))?;
        registry.register(Box::new(audit_failures.clone()))?;
        registry.register(Box::new(limits_check.clone()))?;
        registry.register(Box::new(limits_failures.clone()))?;
        registry.register(Box::new(inference_queue.clone()))?;
        registry.register(Box::new(inference_longest.clone()))?;
        registry.register(Box::new(inference_stuck.clone()))?;
        registry.register(Box::new(inference_timeouts.clone()))?;
        registry.register(Box::new(client_left.clone()))?;
        let routes = ROUTES
            .iter()
            .map(|&route| {
                Ok(RouteSeries {
                    route,
                    duration: duration.get_metric_with_label_values(&[route])?,
                    ok: requests.get_metric_with_label_values(&[route, "200"])?,
                })
            })
            .collect::<Result<Vec<_>, prometheus::Error>>()?
            .into();
        Ok(Metrics {
            registry,
            requests,
            duration,
            rejections,
            samples,
            audit_append,
            audit_failures,
            limits_check,
            limits_failures,
            inference_queue,
            inference_longest,
            inference_stuck,
            inference_timeouts,
            client_left,
            connections_open,
            connections_max,
            connections: Default::default(),
            routes,
        })
    }

    /// Records an audit append.
    pub fn audit_append(&self, took: Duration, ok: bool) {
        self.audit_append.observe(took.as_secs_f64());
        if !ok {
            self.audit_failures.inc();
        }
    }

    /// Records a rate-limit store's charge: how long it took, and whether it answered (a
    /// refusal by the limits is an answer; an error or no answer in time is not).
    pub fn limits_check(&self, took: Duration, answered: bool) {
        self.limits_check.observe(took.as_secs_f64());
        if !answered {
            self.limits_failures.inc();
        }
    }

    /// Records how many model calls wait for an inference thread, how long the longest
    /// running one has run (`None`: none runs), and how many threads were given up on.
    pub fn inference_pool(&self, queued: usize, longest: Option<Duration>, stuck: usize) {
        self.inference_queue
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
        self.inference_longest
            .set(longest.map_or(0.0, |d| d.as_secs_f64()));
        self.inference_stuck
            .set(i64::try_from(stuck).unwrap_or(i64::MAX));
    }

    /// Counts an infer request answered 504 because `model` did not answer before its deadline.
    pub fn inference_timeout(&self, model: &str) {
        self.inference_timeouts.with_label_values(&[model]).inc();
    }

    /// Records how many requests whose client left are being finished.
    pub fn client_left(&self, finishing: usize) {
        self.client_left
            .set(i64::try_from(finishing).unwrap_or(i64::MAX));
    }

    /// Records `n` samples through `model`.
    pub fn samples(&self, model: &str, n: usize) {
        self.samples.with_label_values(&[model]).inc_by(n as u64);
    }

    /// Counts `connections` in the `connections_*` metrics (the first given only): the open and
    /// most gauges as /metrics is read, their own counters of connections closed to make room
    /// and refused for the bound per address, and `tls_handshake_failures_total` by reason.
    pub fn watch_connections(&self, connections: crate::listen::Connections) {
        let tls = connections.tls_failures_counter();
        // Each reason shows from the start, at 0, rather than only once it has happened.
        for why in crate::listen::HandshakeFailure::ALL {
            tls.with_label_values(&[why.label()]);
        }
        let counters: [Box<dyn prometheus::core::Collector>; 3] = [
            Box::new(connections.shed_counter()),
            Box::new(connections.refused_counter()),
            Box::new(tls),
        ];
        if self.connections.set(connections).is_ok() {
            for c in counters {
                if let Err(e) = self.registry.register(c) {
                    tracing::error!(error = %e, "a connection counter could not be registered");
                }
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        if let Some(c) = self.connections.get() {
            self.connections_open
                .set(i64::try_from(c.open()).unwrap_or(i64::MAX));
            self.connections_max
                .set(i64::try_from(c.max()).unwrap_or(i64::MAX));
        }
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
        let took = t.elapsed().as_secs_f64();
        let status = resp.status();
        // A label missing from ROUTES would still be counted, through the vectors.
        let series = m.routes.iter().find(|s| s.route == route);
        match series {
            Some(s) => s.duration.observe(took),
            None => m.duration.with_label_values(&[route]).observe(took),
        }
        match series.filter(|_| status == StatusCode::OK) {
            Some(s) => s.ok.inc(),
            None => m
                .requests
                .with_label_values(&[route, status.as_str()])
                .inc(),
        }
        if let Some(Decision::Denied(g)) = resp.extensions().get::<Decision>() {
            m.rejections.with_label_values(&[g]).inc();
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::Body;

    use super::*;
    use crate::guard::{GuardLayer, error_response};

    fn request(method: &str, path: &str) -> Request {
        axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn every_route_label_is_one_whose_series_are_resolved() {
        for (method, path) in [
            ("GET", "/v2/health/live"),
            ("GET", "/v2/health/ready"),
            ("GET", "/v2"),
            ("GET", "/metrics"),
            ("POST", "/inference.GRPCInferenceService/ModelInfer"),
            ("GET", "/v2/models/m"),
            ("GET", "/v2/models/m/versions/2/ready"),
            ("POST", "/v2/models/m/infer"),
            ("GET", "/v2/models/m/config"),
            ("GET", "/v2/models/m/versions/1/stats"),
            ("GET", "/v2/models/stats"),
            ("POST", "/v2/repository/index"),
            ("POST", "/v2/admin/keys"),
            ("POST", "/v2/admin/models/m/deploy"),
            ("GET", "/v2/audit/entries/0"),
            ("POST", "/v2/repository/models/m/load"),
            ("POST", "/v2/logging"),
            ("GET", "/v2/trace/setting"),
            ("POST", "/v2/models/m/trace/setting"),
            ("GET", "/nowhere"),
        ] {
            let route = route_label(&mut request(method, path));
            assert!(ROUTES.contains(&route), "{path}: {route}");
        }
    }

    #[tokio::test]
    async fn answers_are_counted_by_route_and_code_resolved_or_not() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let stack: Next = tower::ServiceBuilder::new()
            .layer(GuardLayer(Measure(metrics.clone())))
            .service(tower::service_fn(|req: Request| async move {
                let status = match req.uri().path() {
                    "/v2/models/m/infer" => StatusCode::OK,
                    _ => StatusCode::NOT_FOUND,
                };
                Ok::<_, Infallible>(error_response(status, "x"))
            }));
        for _ in 0..3 {
            stack.run(request("POST", "/v2/models/m/infer")).await;
        }
        stack.run(request("GET", "/nowhere")).await;
        let text = metrics.render();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            line(r#"palisade_requests_total{code="200",route="infer"}"#),
            "3"
        );
        assert_eq!(
            line(r#"palisade_requests_total{code="404",route="unknown"}"#),
            "1"
        );
        assert_eq!(
            line(r#"palisade_request_duration_seconds_count{route="infer"}"#),
            "3"
        );
        assert_eq!(
            line(r#"palisade_request_duration_seconds_count{route="unknown"}"#),
            "1"
        );
    }
}
