//! `palisade serve`: the guarded Open Inference Protocol gateway.
//!
//! With no arguments it serves the bundled MNIST model (`models/` in the repository, embedded in
//! the binary with its policy and its OMS signature) from a state folder, verifying the signature
//! against the bundled public key like any other model, and prints a first admin key once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use palisade_gateway::audit::Durability;
use palisade_gateway::guard::redis_limits::{RedisLimits, RedisTls};
use palisade_gateway::loader::{self, LoadedModel, ModelSource, Runtime, Trust};
use palisade_gateway::pool::InferencePool;
use palisade_gateway::tls::{TlsFiles, TlsServer};
use palisade_gateway::{LocalState, ModelRepository};
use palisade_model::onnx::{OnnxModel, OnnxOptions};
use serde::Serialize;

use crate::cmd::Outcome;
use crate::output::Ctx;

/// The bundled model, its policy and its signature (made with the bundled key, whose private half
/// was destroyed after signing).
const BUNDLED_MODEL: &[u8] = include_bytes!("../../../../models/mnist_cnn_public.onnx");
const BUNDLED_POLICY: &[u8] = include_bytes!("../../../../models/mnist-policy.toml");
const BUNDLED_SIGNATURE: &[u8] = include_bytes!("../../../../models/mnist.sig");
const BUNDLED_PUBLIC_KEY: &[u8] = include_bytes!("../../../../models/palisade-bundled.pub");

/// Arguments of `palisade serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model repository: `<dir>/<model>/<version>/{model.onnx, policy.toml, model.sig}`.
    /// Default: the bundled MNIST model, as `mnist` version 1.
    #[arg(long)]
    models: Option<PathBuf>,
    /// State folder: API keys, the audit log, the checkpoint key.
    #[arg(long, default_value = "palisade-state")]
    state: PathBuf,
    /// HTTP (REST and gRPC) address.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,
    /// A second address for gRPC clients that expect Triton's port (`none` to turn it off).
    #[arg(long, default_value = "127.0.0.1:8001")]
    grpc_listen: String,
    /// Public key (PEM) that model signatures must verify against. Default for the bundled
    /// model: the bundled key; required with --models unless --allow-unsigned.
    #[arg(long)]
    trusted_key: Option<PathBuf>,
    /// Load models without a signature check (development only; every load logs a warning).
    #[arg(long, conflicts_with = "trusted_key")]
    allow_unsigned: bool,
    /// Load only versions whose signature names the model and the version (`palisade sign
    /// --name MODEL/VERSION`), refusing those that name the version alone, which verify for a
    /// copy of the folder under any model's name.
    #[arg(long, conflicts_with = "allow_unsigned")]
    require_signed_names: bool,
    /// When an answered request's audit entry is durable: `full` fsyncs the audit log before
    /// each answer (survives power loss); `process` appends it to a journal beside the log
    /// without an fsync (survives `kill -9` of the gateway, not a power cut). The daily budgets'
    /// reservations (limits.db) are committed with the same durability.
    #[arg(long, value_enum, default_value_t = AuditDurability::Full)]
    audit_durability: AuditDurability,
    /// Threads that run inference, taking requests from one queue (default: one per core).
    /// More threads than cores only time-slice the same cores.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    inference_threads: Option<u16>,
    /// Threads that parse requests, run the guards and answer (default: a quarter of the cores,
    /// at least one). The model's work, most of a request's CPU, is on the inference threads.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    async_threads: Option<u16>,
    /// Model calls that may wait for an inference thread (1 to 65536); a request that finds that
    /// many waiting is answered 503 with `Retry-After` (checked before the rate limiter, so the
    /// refusal costs the caller no quota). Default: no limit (the requests in flight bound the
    /// queue).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    inference_queue: Option<u32>,
    /// How long a gRPC stream (Triton's streaming inference) may wait for its next message, and
    /// its answers for the client to take them, before it is closed with DEADLINE_EXCEEDED
    /// (1 to 86400 s). An open stream holds a task and an HTTP/2 stream of its connection.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    grpc_stream_idle_s: u32,
    /// Connections held at once, on both addresses together. At the bound, a new connection
    /// closes another: first one that has not completed a request within 2 s, then the
    /// keep-alive one idle longest; never one with a request in progress or a response being
    /// sent (if all are so, the new one waits until one is not). Default: 10000, or fewer if
    /// the open-file limit (raised at start to its hard limit) would not leave 128 files for the
    /// gateway's own; a larger value is lowered to that, with a warning.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Connections one client address may hold at once (an IPv6 address counted by its /64
    /// prefix, a link-local one whole); a connection past it is closed as soon as it is accepted, and counted in
    /// `palisade_connections_refused_total`. Default: no bound per address. Leave it off behind
    /// a reverse proxy or a NAT, where clients share an address.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_address: Option<u32>,
    /// Serve over TLS (REST and gRPC, on both addresses) with this certificate chain (PEM, the
    /// server's own certificate first); needs --tls-key. The files are read again when they
    /// change (looked at every 10 s): new connections get a renewed certificate. Without TLS,
    /// API keys and TOTP codes cross the network in clear: keep a plain listener on loopback,
    /// or behind a proxy that terminates TLS.
    #[arg(
        long,
        env = "PALISADE_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key",
        value_parser = any_path
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(
        long,
        env = "PALISADE_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert",
        value_parser = any_path
    )]
    tls_key: Option<PathBuf>,
    /// With --tls-cert: require a client certificate issued by one of the CAs in this PEM file
    /// (mutual TLS). API keys are still required.
    #[arg(
        long,
        env = "PALISADE_TLS_CLIENT_CA",
        value_name = "PEM",
        requires = "tls_cert",
        value_parser = any_path
    )]
    tls_client_ca: Option<PathBuf>,
    /// Keep the rate limits and daily budgets in this Redis server, shared with every gateway
    /// pointed at it (`redis://[user:password@]host:port[/db]`, `rediss://…` over TLS, or
    /// `redis+unix:///path`), instead of in this process and limits.db. The environment
    /// variable keeps a password off the command line. Infer requests are refused (503) while
    /// Redis cannot be reached. Give the limits a Redis whose maxmemory-policy is noeviction
    /// (the default): an evicted key is a refilled limit.
    #[arg(long, env = "PALISADE_LIMITS_REDIS", hide_env_values = true)]
    limits_redis: Option<String>,
    /// With --limits-redis: it names nodes of a Redis Cluster, comma-separated
    /// (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`; one is enough, the others are found from
    /// it; a comma in a password is written %2C), not one server.
    #[arg(
        long,
        env = "PALISADE_LIMITS_REDIS_CLUSTER",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    limits_redis_cluster: bool,
    /// With --limits-redis: the prefix of the keys this gateway counts under (gateways that
    /// share limits share a prefix).
    #[arg(
        long,
        default_value = palisade_gateway::guard::redis_limits::DEFAULT_PREFIX,
        requires = "limits_redis"
    )]
    limits_prefix: String,
    /// With a `rediss://` --limits-redis: trust the CAs in this PEM file instead of the system's
    /// roots.
    #[arg(
        long,
        env = "PALISADE_LIMITS_REDIS_CA",
        value_name = "PEM",
        requires = "limits_redis"
    )]
    limits_redis_ca: Option<PathBuf>,
    /// With a `rediss://` --limits-redis: present this client certificate (PEM, the chain) to a
    /// server that asks for one; needs --limits-redis-key.
    #[arg(
        long,
        env = "PALISADE_LIMITS_REDIS_CERT",
        value_name = "PEM",
        requires_all = ["limits_redis", "limits_redis_key"]
    )]
    limits_redis_cert: Option<PathBuf>,
    /// The private key (PEM) of --limits-redis-cert.
    #[arg(
        long,
        env = "PALISADE_LIMITS_REDIS_KEY",
        value_name = "PEM",
        requires = "limits_redis_cert"
    )]
    limits_redis_key: Option<PathBuf>,
}

/// `--audit-durability` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AuditDurability {
    Full,
    Process,
}

impl From<AuditDurability> for Durability {
    fn from(d: AuditDurability) -> Self {
        match d {
            AuditDurability::Full => Durability::Full,
            AuditDurability::Process => Durability::Process,
        }
    }
}

/// Loads ONNX models with `palisade-model` (tract for inference).
struct OnnxRuntime;

impl Runtime for OnnxRuntime {
    fn load(&self, path: &Path, bytes: &[u8]) -> Result<LoadedModel, String> {
        let name = path
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let model = OnnxModel::from_bytes(bytes, &name, &OnnxOptions::default())
            .map_err(|e| e.to_string())?;
        let input_name = model.summary().inputs[0].name.clone();
        let output_name = model.summary().outputs[0].name.clone();
        Ok(LoadedModel {
            classifier: Arc::new(model),
            input_name,
            output_name,
            platform: "onnx".into(),
        })
    }
}

/// `palisade bench-endpoint` (hidden): the gateway benchmarks' bare endpoint, until SIGINT or
/// SIGTERM. A model behind `palisade_gateway::baseline`'s plain infer route: the same ONNX
/// classifier, inference pool, async runtime and OIP codec as `serve`, and no guards. It is in
/// this binary so that the benchmarks compare the guards and not two builds of tract: builds
/// whose request paths did the same work differed by 17-26 µs of CPU per request, most visibly
/// in tract's im2col (26 against 33 µs), the same machine code at another address
/// (`bench/gateway_ab.sh`). It has no keys, limits or audit, so it listens only on a loopback
/// address.
#[derive(Debug, clap::Args)]
pub struct BenchEndpointArgs {
    /// The ONNX model (default: the bundled MNIST model), served as `mnist`.
    #[arg(long)]
    model: Option<PathBuf>,
    /// A loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: std::net::SocketAddr,
}

/// Runs [`BenchEndpointArgs`] until killed. With `--json`, says where it listens on stdout once
/// bound (`{"listening": "127.0.0.1:PORT"}`: the port the system picked for port 0).
pub fn bench_endpoint(ctx: &Ctx, args: BenchEndpointArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "--listen {}: the bench endpoint has no guards, so it listens only on a loopback address",
        args.listen
    );
    let (path, bytes) = match &args.model {
        Some(p) => (
            p.clone(),
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None => (PathBuf::from("mnist/1/model.onnx"), BUNDLED_MODEL.to_vec()),
    };
    let loaded = OnnxRuntime
        .load(&path, &bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let inference = Arc::new(InferencePool::new(None, None).context("starting inference threads")?);
    let app = palisade_gateway::baseline::router(
        loaded.classifier,
        inference,
        "mnist",
        "1",
        &loaded.output_name,
    );
    let rt = palisade_gateway::pool::async_runtime(None).context("starting the async runtime")?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let at = l.local_addr().context("reading the address bound")?;
        tracing::warn!(listen = %at, "bench endpoint: no guards");
        if ctx.json {
            ctx.emit(&serde_json::json!({ "listening": at.to_string() }), |_| {
                String::new()
            })?;
        }
        palisade_gateway::baseline::serve_plain(l, app, shutdown_signal())
            .await
            .context("serving")?;
        Ok(Outcome::Success)
    })
}

/// Writes the bundled model folder under `state` (rewriting it if it differs) and returns the
/// repository folder.
fn install_bundled(state: &Path) -> anyhow::Result<PathBuf> {
    let repo = state.join("bundled-models");
    let dir = repo.join("mnist").join("1");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, bytes) in [
        ("model.onnx", BUNDLED_MODEL),
        ("policy.toml", BUNDLED_POLICY),
        (loader::SIGNATURE_FILE, BUNDLED_SIGNATURE),
    ] {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            palisade_supply::atomic::write_atomic(&path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(repo)
}

/// The bundled public key, which is embedded rather than read from a file.
fn bundled_trust(pem: &[u8], path: &Path) -> anyhow::Result<Trust> {
    let key = palisade_supply::keys::PublicKey::from_pem(pem, path)
        .with_context(|| format!("reading the trusted key {}", path.display()))?;
    Ok(Trust::Key(Arc::new(key)))
}

/// What `serve` prints on start.
#[derive(Debug, Serialize)]
struct Started<'a> {
    listening: &'a str,
    grpc_listening: Option<&'a str>,
    state: &'a Path,
    models: Vec<String>,
    trust: String,
    inference_threads: usize,
    async_threads: usize,
    /// `None`: no limit.
    inference_queue_limit: Option<usize>,
    /// Where the rate limits are counted: `local`, or `redis` and the key prefix.
    limits: String,
    /// Connections held at once, on both addresses together.
    max_connections: usize,
    /// Connections one client address may hold at once; `None`: no bound.
    max_connections_per_address: Option<usize>,
    tls: TlsMode,
    /// Only on the first start: the admin key, shown once.
    #[serde(flatten)]
    first_admin: Option<&'a palisade_gateway::keys::NewKey>,
}

/// How the listeners speak (start-up JSON: `none`, `tls`, or `mutual`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum TlsMode {
    /// Plain HTTP.
    None,
    /// TLS.
    Tls,
    /// TLS, client certificates required.
    Mutual,
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// A path, empty allowed: clap's own parser refuses an empty value, which from an environment
/// variable (`${X:-}` in a compose file) means none (review, 2026-12-06).
fn any_path(s: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(s))
}

/// Runs `palisade serve` until SIGINT or SIGTERM.
pub fn run(ctx: &Ctx, mut args: ServeArgs) -> anyhow::Result<Outcome> {
    // An empty PALISADE_LIMITS_REDIS (`${X:-}` in a compose file) means no Redis, as an unset one
    // does; and a flag that only means something with Redis is refused without it (clap's
    // `requires` took PALISADE_LIMITS_REDIS_CLUSTER=false for a request of a cluster).
    if args
        .limits_redis
        .as_deref()
        .is_some_and(|u| u.trim().is_empty())
    {
        args.limits_redis = None;
    }
    // Empty TLS variables (`${X:-}` in a compose file) mean no TLS, as unset ones do.
    for p in [
        &mut args.tls_cert,
        &mut args.tls_key,
        &mut args.tls_client_ca,
    ] {
        if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            *p = None;
        }
    }
    // Read before anything else is done: a certificate that does not load stops the start.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            TlsServer::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            })
            .context("--tls-cert/--tls-key")?,
        )),
        _ => None,
    };
    if args.limits_redis.is_none() {
        let redis_only = [
            ("--limits-redis-cluster", args.limits_redis_cluster),
            ("--limits-redis-ca", args.limits_redis_ca.is_some()),
            ("--limits-redis-cert", args.limits_redis_cert.is_some()),
            ("--limits-redis-key", args.limits_redis_key.is_some()),
        ];
        if let Some((flag, _)) = redis_only.iter().find(|(_, given)| *given) {
            anyhow::bail!("{flag} needs --limits-redis (or PALISADE_LIMITS_REDIS)");
        }
    }
    // One descriptor per connection: the soft limit on open files (often 1,024) goes up to what
    // the hard one allows before the bound on connections is taken from it.
    match palisade_gateway::listen::raise_open_files_limit() {
        Ok((before, after)) if before != after => tracing::info!(
            before = before.map_or("unlimited".into(), |n| n.to_string()),
            after = after.map_or("unlimited".into(), |n| n.to_string()),
            "raised the limit on open files"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the limit on open files"),
    }
    let (connections, lowered) =
        palisade_gateway::listen::Connections::at_most(args.max_connections.map(|n| n as usize));
    connections.limit_per_address(args.max_connections_per_address.map(|n| n as usize));
    if let Some(asked) = lowered {
        tracing::warn!(
            asked,
            max = connections.max(),
            "--max-connections is more than the limit on open files leaves room for (with 128 \
             kept for the gateway's own files); using the most it allows"
        );
    }
    let given = match &args.trusted_key {
        Some(k) => Some(Trust::Key(Arc::new(
            palisade_supply::keys::PublicKey::from_pem_file(k)
                .with_context(|| format!("reading the trusted key {}", k.display()))?,
        ))),
        None => None,
    };
    let trust = match (given, args.allow_unsigned, &args.models) {
        (Some(t), _, _) => t,
        (None, true, _) => Trust::Unsigned,
        (None, false, None) => {
            bundled_trust(BUNDLED_PUBLIC_KEY, Path::new("models/palisade-bundled.pub"))?
        }
        (None, false, Some(_)) => anyhow::bail!(
            "--models needs --trusted-key KEY.pub (models load only if their signature verifies), or --allow-unsigned for development"
        ),
    };
    let trust = match trust {
        Trust::Key(k) if args.require_signed_names => Trust::KeyNamed(k),
        t => t,
    };
    // The state folder first: its lock is held before anything in it is read or written (the
    // bundled model installed, the rolled-back versions read), so that a gateway starting while
    // another is still stopping does not read what that one is still writing (review).
    let state = Arc::new(
        LocalState::open(
            &args.state,
            Default::default(),
            args.audit_durability.into(),
        )
        .with_context(|| format!("opening the state folder {}", args.state.display()))?,
    );
    let repo = match &args.models {
        None => install_bundled(&args.state)?,
        Some(r) => r.clone(),
    };
    let runtime: Arc<dyn Runtime> = Arc::new(OnnxRuntime);
    let models = Arc::new(ModelRepository::new());
    // The versions rolled back through the admin API stay down across restarts.
    let withdrawn = Arc::new(loader::Withdrawn::open(
        &palisade_gateway::StatePaths::new(&args.state).rolled_back(),
    )?);
    let loaded =
        loader::load_repository(&repo, runtime.as_ref(), &trust, &models, Some(&withdrawn))
            .with_context(|| format!("loading the models in {}", repo.display()))?;
    // A repository whose every model was unloaded (Triton's unload) starts serving none, ready,
    // so that a load can serve one again; one that holds no model, or loaded none for another
    // reason, is an error.
    if loaded.is_empty() {
        let listed = loader::list_repository(&repo)
            .with_context(|| format!("listing the models in {}", repo.display()))?;
        if listed.is_empty() || listed.iter().any(|v| !withdrawn.unloaded(&v.name)) {
            anyhow::bail!(
                "{} holds no model that may be served (expected <model>/<version>/model.onnx, \
                 not every version rolled back)",
                repo.display()
            );
        }
        tracing::warn!(
            repository = %repo.display(),
            "every model of the repository was unloaded: serving none until one is loaded (POST /v2/repository/models/<model>/load)"
        );
    }
    let queue_limit = args.inference_queue.map(|n| n as usize);
    let inference = Arc::new(
        InferencePool::new(args.inference_threads.map(usize::from), queue_limit)
            .context("starting the inference threads")?,
    );
    let rt = palisade_gateway::pool::async_runtime(args.async_threads.map(usize::from))
        .context("starting the async runtime")?;
    let async_threads = rt.metrics().num_workers();
    // With Redis, the limits live there only: the state folder gets no limits.db.
    let (mut gw, limits) = match &args.limits_redis {
        None => (state.gateway_with(models, inference)?, "local".to_string()),
        Some(url) => {
            let shared = rt.block_on(connect_redis(&args, url))?;
            let what = shared.describe();
            (state.gateway_on(models, inference, Arc::new(shared))?, what)
        }
    };
    let trust_text = match &trust {
        Trust::Key(k) => format!("signatures verified against {}", k.hint()),
        Trust::KeyNamed(k) => format!(
            "signatures naming model and version verified against {}",
            k.hint()
        ),
        Trust::Unsigned => "UNSIGNED models allowed".into(),
    };
    gw.withdrawn = Some(withdrawn);
    gw.stream_idle = std::time::Duration::from_secs(args.grpc_stream_idle_s.into());
    gw.log = crate::output::logger().map(|l| l as Arc<dyn palisade_gateway::logging::LogControl>);
    gw.trace = Some(Arc::new(
        palisade_gateway::trace::Tracer::new(
            palisade_gateway::StatePaths::new(&args.state).trace_file(),
        )
        .context("starting the trace writer")?,
    ));
    gw.source = Some(ModelSource {
        repo: repo.clone(),
        runtime,
        trust,
    });
    let inference_threads = gw.inference.threads();
    gw.metrics.watch_connections(connections.clone());
    // A key bound to a client certificate is accepted only where one was presented: without
    // mutual TLS every request with it is refused, which the operator should hear of now.
    let tls_mode = match &tls {
        None => TlsMode::None,
        Some(t) if t.files().client_ca.is_some() => TlsMode::Mutual,
        Some(_) => TlsMode::Tls,
    };
    if tls_mode != TlsMode::Mutual {
        use palisade_gateway::keys::KeyStore as _;
        let now = crate::cmd::keys::now_ms();
        let bound = state
            .keys
            .list()?
            .iter()
            .filter(|k| k.binding().is_some() && k.in_force(now))
            .count();
        if bound > 0 {
            tracing::warn!(
                keys = bound,
                "keys bound to client certificates (or their names) are refused on every \
                 request: this gateway asks for no client certificate (give --tls-cert, \
                 --tls-key and --tls-client-ca)"
            );
        }
    }
    let router = gw.router();

    rt.block_on(async move {
        let http = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let grpc = if args.grpc_listen == "none" || args.grpc_listen == args.listen {
            None
        } else {
            Some(
                tokio::net::TcpListener::bind(&args.grpc_listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", args.grpc_listen))?,
            )
        };
        // Made once the gateway can serve: a key made by a start that then fails would never
        // be shown (`palisade keys` can still make one).
        let first = state.first_admin_key()?;
        // Where the sockets are bound: a port 0 asked for is the port the system chose.
        let bound = |l: &tokio::net::TcpListener, asked: &str| {
            l.local_addr().map_or(asked.to_string(), |a| a.to_string())
        };
        let listening = bound(&http, &args.listen);
        let grpc_listening = grpc.as_ref().map(|g| bound(g, &args.grpc_listen));
        let started = Started {
            listening: &listening,
            grpc_listening: grpc_listening.as_deref(),
            state: &args.state,
            models: loaded.iter().map(|(m, v)| format!("{m}/{v}")).collect(),
            trust: trust_text,
            inference_threads,
            async_threads,
            inference_queue_limit: queue_limit,
            limits,
            max_connections: connections.max(),
            max_connections_per_address: connections.per_address(),
            tls: tls_mode,
            first_admin: first.as_ref(),
        };
        let show = |s: &Started<'_>| {
            let mut t = format!(
                "serving {} on {}://{} (gRPC also on {}), state in {}; {}; {} inference thread{}, {} async thread{}",
                s.models.join(", "),
                if s.tls == TlsMode::None { "http" } else { "https" },
                s.listening,
                s.grpc_listening.unwrap_or("the same port"),
                s.state.display(),
                s.trust,
                s.inference_threads,
                if s.inference_threads == 1 { "" } else { "s" },
                s.async_threads,
                if s.async_threads == 1 { "" } else { "s" }
            );
            if let Some(n) = s.inference_queue_limit {
                t.push_str(&format!(" (at most {n} calls waiting)"));
            }
            t.push_str(&format!("; at most {} connections", s.max_connections));
            if let Some(n) = s.max_connections_per_address {
                t.push_str(&format!(" ({n} per client address)"));
            }
            if s.tls == TlsMode::Mutual {
                t.push_str("; client certificates required");
            }
            if s.limits != "local" {
                t.push_str(&format!("; rate limits in {}", s.limits));
            }
            if let Some(k) = s.first_admin {
                t.push_str("\n\nFirst start: an admin key was made.\n");
                t.push_str(&crate::cmd::keys::show_new_key(k));
            }
            t
        };
        match &first {
            None => ctx.emit(&started, show)?,
            // A key no one saw (stdout closed, or a pipe whose reader died) is taken back, and
            // the start fails saying how to make one, rather than leave an admin key that no
            // later start shows again.
            Some(k) => {
                if let Err(e) = ctx.emit_secret(&started, show) {
                    crate::cmd::keys::take_back(&state.paths.keys_db(), &k.record.id)?;
                    return Err(e.context(format!(
                        "the first admin key {} was not shown and has been revoked; make one \
                         with `palisade keys create --state {} --name admin --role admin \
                         --role deploy --role audit`",
                        k.record.id,
                        args.state.display()
                    )));
                }
            }
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        // Key changes made with `palisade keys` (and the first admin key) reach the audit log:
        // now, every second, and once more after the shutdown.
        let drainer = {
            let (state, mut stop) = (state.clone(), rx.clone());
            tokio::spawn(async move {
                loop {
                    drain_operator_changes(&state).await;
                    tokio::select! {
                        _ = tokio::time::sleep(palisade_gateway::server::DRAIN_EVERY) => {}
                        _ = stop.wait_for(|stop| *stop) => return,
                    }
                }
            })
        };
        let mut tasks = tokio::task::JoinSet::new();
        let watcher = tls
            .clone()
            .map(|t| tokio::spawn(t.watch(std::time::Duration::from_secs(10))));
        for listener in std::iter::once(http).chain(grpc) {
            let router = router.clone();
            let mut rx = rx.clone();
            tasks.spawn(palisade_gateway::serve_tls_with(
                listener,
                router,
                async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                },
                Default::default(),
                connections.clone(),
                tls.clone(),
            ));
        }
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        let _ = tx.send(true);
        let graceful = async {
            while let Some(r) = tasks.join_next().await {
                r.context("server task")??;
            }
            // Admin actions, requests whose clients left and the messages of gRPC streams
            // still finish with their audit entries.
            if tokio::time::timeout(std::time::Duration::from_secs(30), gw.settle())
                .await
                .is_err()
            {
                tracing::error!(
                    "requests still being finished for their audit entries 30 s after the \
                     shutdown; exiting without them"
                );
            }
            anyhow::Ok(())
        };
        // A second SIGINT or SIGTERM stops the wait (up to a minute: 30 s for the connections,
        // 30 s for the requests still finishing for their entries) but not what follows: the key
        // changes still reach the audit log and the budgets' exact counts limits.db, which
        // kill -9 would skip.
        let waited = tokio::select! {
            r = graceful => r,
            _ = shutdown_signal() => {
                tracing::warn!("a second signal: stopping without waiting for the requests in flight");
                Ok(())
            }
        };
        if let Err(e) = waited {
            // The traces taken and not yet written, before the error ends the process.
            gw.write_traces().await;
            return Err(e);
        }
        if let Some(w) = watcher {
            w.abort();
        }
        // Stopped between two drains (not in the middle of one, which would append an entry
        // and leave it queued, to be appended again).
        let _ = drainer.await;
        drain_operator_changes(&state).await;
        // The servers have stopped, so no request is left to charge: the daily budgets' exact
        // counts replace their reservations in limits.db, so that this restart costs no client
        // any of its budget. (On an error above, dropping the state writes them.)
        gw.limits.close();
        // Last: the traces taken and not yet written (up to 30 s).
        gw.write_traces().await;
        anyhow::Ok(())
    })?;
    Ok(Outcome::Success)
}

/// The Redis limits store that `--limits-redis` (and its TLS and cluster flags) name.
async fn connect_redis(args: &ServeArgs, url: &str) -> anyhow::Result<RedisLimits> {
    let read = |p: &PathBuf, flag: &str| {
        std::fs::read(p).with_context(|| format!("{flag}: cannot read {}", p.display()))
    };
    let tls = RedisTls {
        ca_pem: match &args.limits_redis_ca {
            Some(p) => Some(read(p, "--limits-redis-ca")?),
            None => None,
        },
        client: match (&args.limits_redis_cert, &args.limits_redis_key) {
            (Some(c), Some(k)) => Some((
                read(c, "--limits-redis-cert")?,
                read(k, "--limits-redis-key")?,
            )),
            _ => None,
        },
    };
    let prefix = &args.limits_prefix;
    if args.limits_redis_cluster {
        let nodes: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect();
        RedisLimits::connect_cluster(&nodes, prefix, &tls).await
    } else {
        RedisLimits::connect(url, prefix, &tls).await
    }
    .context("--limits-redis")
}

/// Moves the key changes queued by operators into the audit log, saying so in the log.
async fn drain_operator_changes(state: &LocalState) {
    match state.drain_key_outbox().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            entries = n,
            "key changes by operators moved into the audit log"
        ),
        Err(e) => {
            tracing::error!(error = %e, "could not move key changes by operators into the audit log")
        }
    }
}
