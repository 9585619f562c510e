//! A gateway on 127.0.0.1:0 serving small linear models, and a raw HTTP/1.1 client that can say
//! things a well-behaved client would not.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ndarray::{Array1, Array2, ArrayViewD};
use palisade_core::{Classifier, InputRange, LinearClassifier, ModelError, ModelInfo};
use palisade_gateway::audit::{AuditLog, CheckpointPolicy, Durability};
use palisade_gateway::guard::ratelimit::LimitStore;
use palisade_gateway::keys::{KeyStore, NewKey, Role};
use palisade_gateway::pool::InferencePool;
use palisade_gateway::{Gateway, LocalState, ModelRepository, Policy, ServedModel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<LocalState>,
    pub models: Arc<ModelRepository>,
    pub admin: NewKey,
    pub query: NewKey,
    pub auditor: NewKey,
    pub dir: tempfile::TempDir,
    /// The gateway serving (a clone: what it shares is shared), for [`Gateway::settle`].
    pub gateway: Gateway,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The linear model every test uses: input [N, 1, 2, 2] in [0, 1], 3 classes.
pub fn linear(name: &str) -> LinearClassifier {
    let w = Array2::from_shape_fn((3, 4), |(i, j)| (i as f32 + 1.0) * (j as f32 - 1.5) * 0.5);
    LinearClassifier::new(
        name,
        vec![1, 2, 2],
        InputRange::default(),
        w,
        Array1::from(vec![0.1, -0.2, 0.3]),
    )
    .unwrap()
}

pub fn served(name: &str, version: &str, policy: &str) -> ServedModel {
    ServedModel {
        name: name.into(),
        version: version.into(),
        classifier: Arc::new(linear(name)),
        policy: Policy::from_toml(policy).unwrap(),
        input_name: "input".into(),
        output_name: "logits".into(),
        platform: "palisade-linear".into(),
        stats: Default::default(),
    }
}

pub const LIN_POLICY: &str = "[input]\nmax_body_bytes = 4096\nmax_batch = 4\n";

pub async fn start() -> Server {
    start_with(None).await
}

/// A gateway whose admin API can load versions from `source`.
pub async fn start_with(source: Option<palisade_gateway::loader::ModelSource>) -> Server {
    start_on(source, None).await
}

/// A gateway running its models on `inference` (default: one thread per core).
pub async fn start_on(
    source: Option<palisade_gateway::loader::ModelSource>,
    inference: Option<Arc<InferencePool>>,
) -> Server {
    start_full(source, inference, |_| {}).await
}

/// A gateway serving over TLS with `tls`.
pub async fn start_tls(tls: Arc<palisade_gateway::tls::TlsServer>) -> Server {
    start_serving(None, None, |_| {}, Some(tls)).await
}

/// A gateway running its models on `inference`, changed by `tweak` before its routers are made.
pub async fn start_tweaked(
    inference: Option<Arc<InferencePool>>,
    tweak: impl FnOnce(&mut Gateway),
) -> Server {
    start_full(None, inference, tweak).await
}

/// A gateway counting its rate limits in `limits`.
pub async fn start_limited_by(limits: Arc<dyn LimitStore>) -> Server {
    start_full(None, None, |gw| gw.limits = limits).await
}

/// A gateway whose guards and admin API write to the log `wrap` makes of the state's own (the
/// one [`Server::audit_entries`] reads).
pub async fn start_audited_by(wrap: impl FnOnce(Arc<dyn AuditLog>) -> Arc<dyn AuditLog>) -> Server {
    start_full(None, None, |gw| gw.audit = wrap(gw.audit.clone())).await
}

async fn start_full(
    source: Option<palisade_gateway::loader::ModelSource>,
    inference: Option<Arc<InferencePool>>,
    tweak: impl FnOnce(&mut Gateway),
) -> Server {
    start_serving(source, inference, tweak, None).await
}

async fn start_serving(
    source: Option<palisade_gateway::loader::ModelSource>,
    inference: Option<Arc<InferencePool>>,
    tweak: impl FnOnce(&mut Gateway),
    tls: Option<Arc<palisade_gateway::tls::TlsServer>>,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(
        LocalState::open(dir.path(), CheckpointPolicy::default(), Durability::Full).unwrap(),
    );
    let admin = state.first_admin_key().unwrap().unwrap();
    let now = now_ms();
    let query = state
        .keys
        .create(
            "q",
            &[Role::Query("lin".into()), Role::Query("limited".into())],
            None,
            now,
        )
        .unwrap();
    let auditor = state.keys.create("a", &[Role::Audit], None, now).unwrap();
    let models = Arc::new(ModelRepository::new());
    models.deploy(served("lin", "1", LIN_POLICY)).unwrap();
    models
        .deploy(served(
            "limited",
            "1",
            "[limits]\nper_key = { rate = 1, period_ms = 60000, burst = 3 }\n",
        ))
        .unwrap();
    models
        .deploy(served("top2", "1", "[output]\ntop_k = 2\nround = 2\n"))
        .unwrap();
    models
        .deploy(served("label", "1", "[output]\nreveal = \"label\"\n"))
        .unwrap();
    let mut gw = match inference {
        Some(pool) => state.gateway_with(models.clone(), pool).unwrap(),
        None => state.gateway(models.clone()).unwrap(),
    };
    // A gateway that loads from a repository keeps its rollbacks in its state folder, as
    // `palisade serve` does.
    if source.is_some() {
        gw.withdrawn = Some(Arc::new(
            palisade_gateway::loader::Withdrawn::open(&state.paths.rolled_back()).unwrap(),
        ));
    }
    gw.source = source;
    tweak(&mut gw);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = gw.router();
    let gateway = gw.clone();
    let task = tokio::spawn(async move {
        palisade_gateway::serve_tls_with(
            listener,
            router,
            async {
                let _ = rx.await;
            },
            Default::default(),
            palisade_gateway::listen::Connections::for_open_files(),
            tls,
        )
        .await
        .unwrap();
    });
    Server {
        addr,
        state,
        models,
        admin,
        query,
        auditor,
        dir,
        gateway,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl Server {
    /// The audit log's entries from `from` on, as JSON.
    pub fn audit_entries(&self, from: u64) -> Vec<serde_json::Value> {
        use palisade_gateway::audit::AuditLog as _;
        let n = self.state.audit.size().unwrap();
        (from..n)
            .map(|i| serde_json::from_slice(&self.state.audit.entry(i).unwrap().unwrap()).unwrap())
            .collect()
    }

    /// The audit log's last entry, as JSON.
    pub fn last_audit_entry(&self) -> serde_json::Value {
        use palisade_gateway::audit::AuditLog as _;
        let n = self.state.audit.size().unwrap();
        let last = n.checked_sub(1).expect("the audit log is empty");
        self.audit_entries(last).remove(0)
    }

    /// Stops the server; returns the state folder (deleted when dropped).
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.dir
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// A JSON `{"error": "..."}` with the JSON content type; returns the message.
    pub fn error(&self) -> String {
        assert_eq!(
            self.headers.get("content-type").map(String::as_str),
            Some("application/json"),
            "{self:?}"
        );
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {self:?}"))
            .to_string()
    }
}

/// Sends raw bytes and reads the response (the request should say `Connection: close`).
pub async fn raw(addr: SocketAddr, bytes: &[u8], close_write: bool) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close_write {
        s.shutdown().await.unwrap();
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    parse_reply(&buf)
}

fn parse_reply(buf: &[u8]) -> Reply {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(p) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..p]).trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[p + 2..p + 2 + n]);
        b = &b[p + 2 + n + 2..];
    }
}

/// A well-formed request with the given headers and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes, false).await
}

pub fn bearer(k: &NewKey) -> String {
    format!("Bearer {}", k.key)
}

/// `Bearer …` for a new key that may query `model` only.
pub fn query_auth(s: &Server, model: &str) -> String {
    let key = s
        .state
        .keys
        .create(model, &[Role::Query(model.into())], None, now_ms())
        .unwrap();
    bearer(&key)
}

/// POSTs a JSON infer `body` to `model` with the key `auth` (`Bearer …`).
pub async fn post_infer(addr: SocketAddr, model: &str, auth: &str, body: &[u8]) -> Reply {
    request(
        addr,
        "POST",
        &format!("/v2/models/{model}/infer"),
        &[
            ("Authorization", auth),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .await
}

/// Starts a JSON infer request to `model` that sends its headers and half of `body`, then
/// stalls; the connection is returned open.
pub async fn stalled_infer(
    addr: SocketAddr,
    model: &str,
    auth: &str,
    body: &[u8],
) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v2/models/{model}/infer HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..body.len() / 2]).await.unwrap();
    conn
}

/// Sends the rest of a stalled request's body (`rest`) on `conn` and reads its response (which
/// must have a `Content-Length`; the connection stays open).
pub async fn finish_stalled(mut conn: tokio::net::TcpStream, rest: &[u8]) -> Reply {
    conn.write_all(rest).await.unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("a Content-Length");
            if buf.len() >= end + 4 + len {
                return parse_reply(&buf[..end + 4 + len]);
            }
        }
    }
}

/// A gRPC `ModelInfer` call sent by hand over HTTP/2 with the key `auth` (`Bearer …`) and the
/// request body `body` (gRPC-framed, see [`grpc_frame`], or not: whatever the test needs);
/// returns the call's `grpc-status` and `grpc-message` (percent-decoded for spaces, the only
/// escapes the gateway's messages use), from the headers or the trailers.
pub async fn grpc_raw<B>(addr: SocketAddr, auth: &str, body: B) -> (String, String)
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    grpc_raw_to(addr, "ModelInfer", auth, body).await
}

/// [`grpc_raw`] to another method of the inference service.
pub async fn grpc_raw_to<B>(addr: SocketAddr, method: &str, auth: &str, body: B) -> (String, String)
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    grpc_raw_with(addr, method, &[("authorization", auth)], body).await
}

/// [`grpc_raw_to`] with the request headers `headers` (the key among them, if any).
pub async fn grpc_raw_with<B>(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: B,
) -> (String, String)
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await.unwrap();
    let uri = format!("http://{addr}/inference.GRPCInferenceService/{method}");
    grpc_call_over(tcp, &uri, headers, body).await
}

/// A gRPC call to `uri` over HTTP/2 on the connection `io` (a socket, or TLS over one), with
/// `headers` and the request body `body`: its `grpc-status` and `grpc-message` (as
/// [`grpc_raw`] returns them).
pub async fn grpc_call_over<IO, B>(
    io: IO,
    uri: &str,
    headers: &[(&str, &str)],
    body: B,
) -> (String, String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt as _;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (mut h2, conn) =
        hyper::client::conn::http2::handshake::<_, _, B>(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = axum::http::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(body).unwrap();
    let (parts, body) = h2.send_request(req).await.unwrap().into_parts();
    let trailers = body
        .collect()
        .await
        .ok()
        .and_then(|c| c.trailers().cloned())
        .unwrap_or_default();
    let get = |name: &str| {
        parts
            .headers
            .get(name)
            .or_else(|| trailers.get(name))
            .map(|v| v.to_str().unwrap().replace("%20", " "))
            .unwrap_or_default()
    };
    (get("grpc-status"), get("grpc-message"))
}

/// A gRPC client of `s`.
pub async fn grpc_client(
    s: &Server,
) -> palisade_gateway::grpc::inference::grpc_inference_service_client::GrpcInferenceServiceClient<
    tonic::transport::Channel,
> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    palisade_gateway::grpc::inference::grpc_inference_service_client::GrpcInferenceServiceClient::new(
        channel,
    )
}

/// A `ModelInferRequest` for one sample of the linear model `model`, encoded.
pub fn lin_infer_message(model: &str) -> Vec<u8> {
    use palisade_gateway::grpc::inference::ModelInferRequest;
    use palisade_gateway::grpc::inference::model_infer_request::InferInputTensor;
    use tonic_prost::prost::Message as _;
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 1, 2, 2],
            ..Default::default()
        }],
        raw_input_contents: vec![
            [0.1f32, 0.2, 0.3, 0.4]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ],
        ..Default::default()
    }
    .encode_to_vec()
}

/// `message` as one gRPC length-prefixed frame (not compressed).
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// A JSON infer body for `n` samples of the linear model.
pub fn json_infer(values: &[f32], n: usize) -> Vec<u8> {
    serde_json::json!({
        "id": "t",
        "inputs": [{"name": "input", "shape": [n, 1, 2, 2], "datatype": "FP32", "data": values}]
    })
    .to_string()
    .into_bytes()
}

/// A binary-extension infer body; returns (body, header length).
pub fn binary_infer(values: &[f32], shape: &[usize], declared: usize) -> (Vec<u8>, usize) {
    let header = serde_json::json!({
        "inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                     "parameters": {"binary_data_size": declared}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    for v in values {
        body.extend_from_slice(&v.to_le_bytes());
    }
    (body, header.len())
}

pub fn totp_now(k: &NewKey, offset_steps: i64) -> String {
    let t = (now_ms() as i64 + offset_steps * 30_000) as u64;
    palisade_gateway::keys::totp_code(k.totp_secret.as_deref().unwrap(), t).unwrap()
}

/// The test's linear model, whose calls wait until the gate opens.
pub struct Gated {
    pub inner: LinearClassifier,
    pub gate: Arc<(Mutex<bool>, Condvar)>,
    /// Calls that have reached the model.
    pub entered: Arc<AtomicUsize>,
}

impl Classifier for Gated {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }

    fn logits(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>, ModelError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let (open, cv) = &*self.gate;
        let guard = open.lock().unwrap();
        // Bounded, so a broken test fails on its assertions instead of hanging.
        let _ = cv
            .wait_timeout_while(guard, Duration::from_secs(20), |o| !*o)
            .unwrap();
        self.inner.logits(x)
    }
}

/// A gateway with one inference thread and at most `queue` calls waiting, serving the model "slow"
/// (the linear model behind a gate, under `policy`); and a query key for it.
pub struct Slow {
    pub pool: Arc<InferencePool>,
    pub s: Server,
    pub gate: Arc<(Mutex<bool>, Condvar)>,
    pub entered: Arc<AtomicUsize>,
    pub auth: String,
}

impl Slow {
    pub async fn start(policy: &str, queue: Option<usize>) -> Slow {
        Slow::start_tweaked(policy, queue, |_| {}).await
    }

    /// [`Slow::start`], the gateway changed by `tweak` before its routers are made.
    pub async fn start_tweaked(
        policy: &str,
        queue: Option<usize>,
        tweak: impl FnOnce(&mut Gateway),
    ) -> Slow {
        let pool = Arc::new(InferencePool::new(Some(1), queue).unwrap());
        let s = start_tweaked(Some(pool.clone()), tweak).await;
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let entered = Arc::new(AtomicUsize::new(0));
        let mut slow = served("slow", "1", policy);
        slow.classifier = Arc::new(Gated {
            inner: linear("slow"),
            gate: gate.clone(),
            entered: entered.clone(),
        });
        s.models.deploy(slow).unwrap();
        let auth = query_auth(&s, "slow");
        Slow {
            pool,
            s,
            gate,
            entered,
            auth,
        }
    }

    /// Sends an infer request from a task.
    pub fn infer(&self, body: &[u8]) -> tokio::task::JoinHandle<Reply> {
        let (addr, auth, body) = (self.s.addr, self.auth.clone(), body.to_vec());
        tokio::spawn(async move { post_infer(addr, "slow", &auth, &body).await })
    }

    /// Fills the queue: one call holds the thread, one waits; returns both.
    pub async fn fill(&self, body: &[u8]) -> [tokio::task::JoinHandle<Reply>; 2] {
        let running = self.infer(body);
        wait_until(|| self.entered.load(Ordering::SeqCst) == 1).await;
        let waiting = self.infer(body);
        wait_until(|| self.pool.queued() == 1).await;
        [running, waiting]
    }

    /// Sends a whole infer request on a connection of its own, and returns the connection (to
    /// drop: a client that leaves before its answer).
    pub async fn send_and_keep(&self, body: &[u8]) -> TcpStream {
        let mut conn = TcpStream::connect(self.s.addr).await.unwrap();
        let head = format!(
            "POST /v2/models/slow/infer HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.auth,
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(body).await.unwrap();
        conn
    }

    /// The audit entries of model "slow" from index `from` on.
    pub fn entries(&self, from: u64) -> Vec<serde_json::Value> {
        self.s
            .audit_entries(from)
            .into_iter()
            .filter(|e| e["model"] == "slow")
            .collect()
    }

    pub fn open_gate(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }
}

/// Waits (at most 10 s) until `cond` holds.
pub async fn wait_until(cond: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// PEM of a CA, of a certificate it signed for `names` (DNS names or IP addresses), and of that
/// certificate's key.
pub struct Pki {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// A server certificate for `names` and a client certificate (named "gateway"), issued by one
/// new CA.
pub fn pki(names: &[&str]) -> (Pki, Pki) {
    let (server, mut clients) = pki_with_clients(names, &["gateway"]);
    (server, clients.remove(0))
}

/// A server certificate for `names` and a client certificate for each of `clients`, issued by
/// one new CA. A name with "://" in it is a URI (a SPIFFE ID, say); the others are DNS names
/// or IP addresses.
pub fn pki_with_clients(names: &[&str], clients: &[&str]) -> (Pki, Vec<Pki>) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
    };
    // Each with a name of its own: a leaf named as its issuer looks self-signed to OpenSSL.
    let named = |names: Vec<String>, cn: &str| {
        let (uris, others): (Vec<String>, Vec<String>) =
            names.into_iter().partition(|n| n.contains("://"));
        let mut p = CertificateParams::new(others).unwrap();
        for uri in uris {
            p.subject_alt_names
                .push(SanType::URI(uri.as_str().try_into().unwrap()));
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        p
    };
    let mut ca_params = named(Vec::new(), "palisade test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cn = names[0].clone();
        let cert = named(names, &cn).signed_by(&key, &ca).unwrap();
        Pki {
            ca: ca.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    };
    let server = leaf(names.iter().map(|n| n.to_string()).collect());
    let clients = clients.iter().map(|c| leaf(vec![c.to_string()])).collect();
    (server, clients)
}
