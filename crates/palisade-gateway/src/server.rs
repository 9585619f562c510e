//! Assembling a gateway: its state folder, the guard stacks and the HTTP router.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt as _;
use rand::RngCore as _;
use tower::ServiceBuilder;

use crate::GatewayError;
use crate::admin::{self, AdminState};
use crate::audit::{AuditLog, CheckpointPolicy, CheckpointSigner, Durability, SqliteAuditLog};
use crate::deadline::{self, DeadlineBody};
use crate::grpc::GrpcGateway;
use crate::grpc::audit::AuditUnreached;
use crate::grpc::keyfirst::KeyFirst;
use crate::grpc::prescan::Prescan;
use crate::grpc::stream;
use crate::guard::admit::Admit;
use crate::guard::allow::AllowedMethods;
use crate::guard::audit::{Audit, WriteAhead};
use crate::guard::authn::Authenticate;
use crate::guard::authz::Authorise;
use crate::guard::harden::Harden;
use crate::guard::ratelimit::{ChargeBatch, LimitStore, LocalLimits, RateLimit};
use crate::guard::validate::Validate;
use crate::guard::{GuardLayer, Next, error_response, json_response};
use crate::infer::ModelService;
use crate::keys::{KeyStore, NewKey, Role, SqliteKeyStore};
use crate::metrics::{Measure, Metrics};
use crate::model::ModelRepository;
use crate::pool::InferencePool;

/// Everything a running gateway shares between requests.
#[derive(Clone)]
pub struct Gateway {
    /// Served models.
    pub models: Arc<ModelRepository>,
    /// API keys.
    pub keys: Arc<dyn KeyStore>,
    /// The audit log.
    pub audit: Arc<dyn AuditLog>,
    /// Rate limits and daily budgets.
    pub limits: Arc<dyn LimitStore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Public key of the audit checkpoints.
    pub audit_public_key: [u8; 32],
    /// Where the admin API loads new versions from (`None`: hot-swap is off).
    pub source: Option<crate::loader::ModelSource>,
    /// Where rollbacks are kept across restarts (`None`: in memory only).
    pub withdrawn: Option<Arc<crate::loader::Withdrawn>>,
    /// How long a gRPC stream may wait for its next message, and its answers for the client,
    /// before it is closed ([`crate::grpc::stream::STREAM_IDLE`] by default).
    pub stream_idle: std::time::Duration,
    /// The process's logger, for Triton's logging extension (`None`: not served).
    pub log: Option<Arc<dyn crate::logging::LogControl>>,
    /// The tracer, for Triton's trace extension (`None`: not served).
    pub trace: Option<Arc<crate::trace::Tracer>>,
    /// The threads that run the models (one per core unless set otherwise).
    pub inference: Arc<InferencePool>,
    /// Permits for admin requests running in tasks of their own (`Gateway::detached_actions`).
    admin_tasks: Arc<tokio::sync::Semaphore>,
    /// Requests whose client went away, finished for their audit entries: those of the model
    /// routes, and those of the admin and audit routes, bounded apart so that requests left
    /// behind a model call that never returns cannot hold up the admin API.
    orphans: [Arc<crate::guard::audit::Orphans>; 2],
    /// The passages of gRPC streams' messages through the stack, each a task of its own
    /// (`crate::grpc::stream`), which shutdown waits for with the orphans: one the audit guard
    /// has not taken yet is among no orphans.
    stream_passages: tokio_util::task::TaskTracker,
}

/// Admin requests that may run in tasks of their own at once; past it an admin request runs in
/// its connection's task, as every other request does (and is dropped with it).
const ADMIN_TASKS: u32 = 64;

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("models", &self.models)
            .finish_non_exhaustive()
    }
}

/// The files of a gateway's state folder.
#[derive(Debug, Clone)]
pub struct StatePaths {
    /// The folder.
    pub dir: PathBuf,
}

impl StatePaths {
    /// Paths under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StatePaths { dir: dir.into() }
    }
    /// API keys (SQLite).
    pub fn keys_db(&self) -> PathBuf {
        self.dir.join("keys.db")
    }
    /// The audit log (SQLite).
    pub fn audit_db(&self) -> PathBuf {
        self.dir.join("audit.db")
    }
    /// The daily query budgets' ledger (SQLite).
    pub fn limits_db(&self) -> PathBuf {
        self.dir.join("limits.db")
    }
    /// The versions rolled back through the admin API ([`crate::loader::Withdrawn`]).
    pub fn rolled_back(&self) -> PathBuf {
        self.dir.join("rolled-back.json")
    }
    /// Where Triton's trace extension writes its traces (`trace.json.{n}`, [`crate::trace`]).
    pub fn trace_file(&self) -> PathBuf {
        self.dir.join("traces").join("trace.json")
    }
    /// The checkpoint signing key (32-byte Ed25519 seed, mode 0600).
    pub fn signing_key(&self) -> PathBuf {
        self.dir.join("audit-ed25519.key")
    }
    /// The checkpoint public key (hex).
    pub fn public_key(&self) -> PathBuf {
        self.dir.join("audit-ed25519.pub")
    }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename), private to the owner.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), GatewayError> {
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| GatewayError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| GatewayError::io(&tmp, e))?;
    f.sync_all().map_err(|e| GatewayError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| GatewayError::io(path, e))?;
    Ok(())
}

/// Reads the checkpoint signing key of a state folder, creating it on first use.
pub fn load_or_create_signer(paths: &StatePaths) -> Result<CheckpointSigner, GatewayError> {
    let p = paths.signing_key();
    let signer = match fs::read(&p) {
        Ok(b) => {
            let seed: [u8; 32] = b.as_slice().try_into().map_err(|_| {
                GatewayError::State(format!("{} is not a 32-byte Ed25519 seed", p.display()))
            })?;
            CheckpointSigner::from_seed(&seed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A new key for a log that another key signed would leave the log unverifiable and
            // the gateway unable to extend it: the key was lost, not never made.
            let db = paths.audit_db();
            if crate::audit::has_checkpoints(&db) {
                return Err(GatewayError::State(format!(
                    "the audit signing key {} is missing, but the audit log {} holds checkpoints signed with it: restore the key (and {}), or move the log aside, with its -wal, -shm and .journal-* files, to start a new one",
                    p.display(),
                    db.display(),
                    paths.public_key().display()
                )));
            }
            let mut seed = [0u8; 32];
            rand::rng().fill_bytes(&mut seed);
            write_private(&p, &seed)?;
            CheckpointSigner::from_seed(&seed)
        }
        Err(e) => return Err(GatewayError::io(&p, e)),
    };
    let pubhex = crate::hexfmt::encode(&signer.public_key());
    let pp = paths.public_key();
    if fs::read_to_string(&pp).ok().as_deref().map(str::trim) != Some(pubhex.as_str()) {
        write_private(&pp, format!("{pubhex}\n").as_bytes())?;
    }
    Ok(signer)
}

/// Reads a hex public key file.
pub fn read_public_key(path: &Path) -> Result<[u8; 32], GatewayError> {
    let s = fs::read_to_string(path).map_err(|e| GatewayError::io(path, e))?;
    crate::hexfmt::decode_32(s.trim()).ok_or_else(|| {
        GatewayError::State(format!(
            "{} is not a hex Ed25519 public key",
            path.display()
        ))
    })
}

/// The operator named in the audit entry of the first admin key.
const FIRST_START: &str = "palisade serve (first start)";

/// How often `palisade serve` moves entries queued by operators into the audit log
/// ([`LocalState::drain_key_outbox`]).
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// [`LocalState::drain_key_outbox`]'s work, on a blocking thread (`runtime` runs the appends'
/// futures; called from an async task it would panic).
fn drain_outbox(
    keys: &SqliteKeyStore,
    audit: &SqliteAuditLog,
    runtime: &tokio::runtime::Handle,
) -> Result<usize, GatewayError> {
    let mut moved = 0;
    loop {
        let queued = keys.outbox(64)?;
        if queued.is_empty() {
            return Ok(moved);
        }
        for q in queued {
            // Noted as tried: the entry may be in the log, from the size noted on.
            let there = match q.tried_at {
                Some(from) => audit.find_from(from, &q.entry)?.is_some(),
                None => false,
            };
            if !there {
                // Noting the size now also moves a search that found nothing past what it read.
                keys.outbox_trying(q.seq, audit.size()?)?;
                runtime.block_on(audit.append(q.entry))?;
                moved += 1;
            }
            // The change it stands for is fsynced in the key database: before the queue lets
            // go of the entry, the log holds it through a power cut too (with `process`
            // durability its append alone does not).
            audit.sync()?;
            keys.outbox_done(q.seq)?;
        }
    }
}

/// The embedded state of one gateway: a folder with the key database, the audit log and the
/// checkpoint key.
pub struct LocalState {
    /// The folder's paths.
    pub paths: StatePaths,
    /// Keys.
    pub keys: Arc<SqliteKeyStore>,
    /// The audit log.
    pub audit: Arc<SqliteAuditLog>,
    /// Checkpoint public key.
    pub public_key: [u8; 32],
    /// Rate limits (in memory) and daily budgets (in `limits.db`, kept across restarts), opened
    /// by the first gateway that keeps its limits here ([`LocalState::local_limits`]): a
    /// gateway whose limits live elsewhere ([`LocalState::gateway_on`]) leaves no `limits.db`.
    limits: Mutex<Option<Arc<LocalLimits>>>,
    /// How `limits.db` commits: as the audit log does.
    durability: Durability,
    /// Held by [`LocalState::drain_key_outbox`] (by its blocking thread): one drain at a time.
    drain: Arc<tokio::sync::Mutex<()>>,
    /// An exclusive lock on `<dir>/lock`, held while this value, its audit log or its limits
    /// live (they hold it too: they may write to the folder after this value is dropped, when
    /// they close): two gateways on one state folder would interleave their audit logs.
    lock: Arc<fs::File>,
}

impl std::fmt::Debug for LocalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalState")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

/// Creates the state folder `dir` (and its parents) when missing, and makes it readable by its
/// owner only (0700): it holds the key database, with the TOTP secrets of admin keys, and the
/// audit signing key. A folder whose mode cannot be set (a mount that does not allow it) is
/// used as it is, with a warning.
pub fn make_private_dir(dir: &Path) -> Result<(), GatewayError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| GatewayError::io(dir, e))?;
        if let Err(e) = fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
            tracing::warn!(folder = %dir.display(), error = %e, "cannot make the state folder private (mode 0700)");
        }
    }
    #[cfg(not(unix))]
    fs::create_dir_all(dir).map_err(|e| GatewayError::io(dir, e))?;
    Ok(())
}

impl LocalState {
    /// Opens (creating when needed) the state folder `dir`; the audit log commits with
    /// `durability`.
    pub fn open(
        dir: &Path,
        checkpoints: CheckpointPolicy,
        durability: Durability,
    ) -> Result<Self, GatewayError> {
        make_private_dir(dir)?;
        let lock_path = dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| GatewayError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(GatewayError::InUse(dir.to_path_buf()));
            }
            Err(fs::TryLockError::Error(e)) => return Err(GatewayError::io(&lock_path, e)),
        }
        let paths = StatePaths::new(dir);
        let signer = load_or_create_signer(&paths)?;
        let public_key = signer.public_key();
        let keys = Arc::new(SqliteKeyStore::open(&paths.keys_db())?);
        let audit = Arc::new(SqliteAuditLog::open(
            &paths.audit_db(),
            signer,
            checkpoints,
            durability,
        )?);
        let lock = Arc::new(lock);
        audit.hold(lock.clone());
        Ok(LocalState {
            paths,
            keys,
            audit,
            public_key,
            limits: Mutex::default(),
            durability,
            drain: Arc::default(),
            lock,
        })
    }

    /// The limits kept in this folder: rate limits in memory, daily budgets in `limits.db`,
    /// opened (created when needed) on the first call; every gateway of this state shares them.
    pub fn local_limits(&self) -> Result<Arc<LocalLimits>, GatewayError> {
        let mut held = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = held.as_ref() {
            return Ok(l.clone());
        }
        let l = Arc::new(LocalLimits::open(&self.paths.limits_db(), self.durability)?);
        l.hold(self.lock.clone());
        *held = Some(l.clone());
        Ok(l)
    }

    /// On first start (no keys at all), makes the first admin key: roles admin, deploy, audit
    /// and query:*, with a TOTP secret. Returns `None` when keys exist.
    pub fn first_admin_key(&self) -> Result<Option<NewKey>, GatewayError> {
        if !self.keys.is_empty()? {
            return Ok(None);
        }
        let roles = [
            Role::Admin,
            Role::Deploy,
            Role::Audit,
            Role::Query("*".into()),
        ];
        Ok(Some(self.keys.create_by(
            FIRST_START,
            "first-admin",
            &roles,
            None,
            crate::now_ms(),
        )?))
    }

    /// Moves the audit entries that operators queued in the key database (`palisade keys`, the
    /// first admin key: [`SqliteKeyStore::for_operator`]) into the audit log, oldest first, each
    /// exactly once; returns how many it appended. Before appending an entry it notes the log's
    /// size in the queue ([`SqliteKeyStore::outbox_trying`]), and removes the entry from the queue
    /// once the log holds it; an entry found already noted (the gateway died in between) is
    /// looked for in the log from that size on, and only appended if it is not there.
    /// An entry leaves the queue only once the log holds it through a power cut
    /// ([`AuditLog::sync`]), as the key database holds the change it stands for.
    /// `palisade serve` calls it at start and every [`DRAIN_EVERY`]. The work (queries on the
    /// key database, its fsyncs, waits for the audit log) runs on a blocking thread, not on the
    /// async workers that serve requests.
    pub async fn drain_key_outbox(&self) -> Result<usize, GatewayError> {
        // The blocking thread holds the lock for as long as it works, even if this future is
        // dropped meanwhile: two drains never run at once.
        let one_at_a_time = self.drain.clone().lock_owned().await;
        let (keys, audit) = (self.keys.clone(), self.audit.clone());
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _held = one_at_a_time;
            drain_outbox(&keys, &audit, &runtime)
        })
        .await
        .map_err(|e| GatewayError::State(format!("key outbox drain: {e}")))?
    }

    /// A gateway over this state serving `models`, with one inference thread per core.
    pub fn gateway(&self, models: Arc<ModelRepository>) -> Result<Gateway, GatewayError> {
        let inference = InferencePool::new(None, None).map_err(GatewayError::Threads)?;
        self.gateway_with(models, Arc::new(inference))
    }

    /// A gateway over this state serving `models` on the threads of `inference`, its limits in
    /// this folder ([`LocalState::local_limits`]).
    pub fn gateway_with(
        &self,
        models: Arc<ModelRepository>,
        inference: Arc<InferencePool>,
    ) -> Result<Gateway, GatewayError> {
        self.gateway_on(models, inference, self.local_limits()?)
    }

    /// A gateway over this state's keys and audit log serving `models` on the threads of
    /// `inference`, with its rate limits and budgets in `limits` (a shared store, such as Redis).
    pub fn gateway_on(
        &self,
        models: Arc<ModelRepository>,
        inference: Arc<InferencePool>,
        limits: Arc<dyn LimitStore>,
    ) -> Result<Gateway, GatewayError> {
        Ok(Gateway {
            models,
            keys: self.keys.clone(),
            audit: self.audit.clone(),
            limits,
            metrics: Arc::new(Metrics::new().map_err(|e| GatewayError::State(e.to_string()))?),
            audit_public_key: self.public_key,
            source: None,
            withdrawn: None,
            stream_idle: crate::grpc::stream::STREAM_IDLE,
            log: None,
            trace: None,
            inference,
            admin_tasks: Arc::new(tokio::sync::Semaphore::new(ADMIN_TASKS as usize)),
            orphans: Default::default(),
            stream_passages: tokio_util::task::TaskTracker::new(),
        })
    }
}

/// Which of [`Gateway`]'s bounds on requests whose client left a stack uses.
const MODEL_ROUTES: usize = 0;
const ADMIN_ROUTES: usize = 1;

impl Gateway {
    /// Finishes at most `most` requests whose client left at once on the model routes, and as
    /// many on the admin and audit routes; past that, new requests on those routes wait
    /// ([`crate::guard::audit::Orphans`]; default [`crate::guard::audit::MAX_ORPHANS`]). Call it
    /// before the routers are made.
    pub fn bound_orphans(&mut self, most: usize) {
        self.orphans =
            std::array::from_fn(|_| Arc::new(crate::guard::audit::Orphans::at_most(most)));
    }

    /// Waits until the admin requests running in tasks of their own, the requests whose client
    /// left being finished for their entries ([`crate::guard::audit::Orphans`]), and the
    /// passages of gRPC streams' messages have ended: call it once the servers have stopped,
    /// before the process exits, so that an action or a request whose client left just before
    /// the shutdown still gets its audit entry.
    pub async fn settle(&self) {
        self.stream_passages.close();
        self.stream_passages.wait().await;
        // Every permit back means no such task is left; closed, the semaphore admits no more.
        if let Ok(all) = self.admin_tasks.acquire_many(ADMIN_TASKS).await {
            all.forget();
            self.admin_tasks.close();
        }
        for o in &self.orphans {
            o.settled().await;
        }
    }

    /// Writes the traces taken and not yet written ([`crate::trace::Tracer::flush`], up to
    /// 30 s): call it last at shutdown, whatever came of [`Gateway::settle`].
    pub async fn write_traces(&self) {
        if let Some(t) = self.trace.clone() {
            let _ = tokio::task::spawn_blocking(move || t.flush()).await;
        }
    }

    /// `admin` (the admin and audit stack, audit outermost) with each admin action run in a
    /// task of its own, to its end and its audit entry even when the client goes away meanwhile:
    /// dropped with the connection, the stack would lose the entry of a revocation or rotation
    /// that its blocking task still commits. Only a request that can change something (not a
    /// `GET`, `HEAD` or `OPTIONS`) and presents a valid key with the `admin` or `deploy` role
    /// gets a task, at most [`ADMIN_TASKS`] at once; any other runs in its connection's task, as
    /// every request does, so that clients without such a key can neither pile tasks up (a reset
    /// stream no longer cancels a task) nor use up the permits. [`Gateway::settle`] waits for the
    /// tasks.
    fn detached_actions<S>(
        &self,
        admin: S,
    ) -> impl tower::Service<
        axum::extract::Request,
        Response = Response,
        Error = std::convert::Infallible,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + 'static
    where
        S: tower::Service<
                axum::extract::Request,
                Response = Response,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        use tower::ServiceExt as _;
        let permits = self.admin_tasks.clone();
        let keys = self.keys.clone();
        tower::service_fn(move |req: axum::extract::Request| {
            let admin = admin.clone();
            let acting = !matches!(
                *req.method(),
                axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
            ) && crate::guard::authn::presented_key(req.headers()).is_some_and(|k| {
                matches!(
                    keys.authenticate_from(
                        k,
                        req.extensions().get::<crate::keys::ClientIdentity>(),
                        crate::now_ms()
                    ),
                    Ok(crate::keys::Authn::Valid(r)) if r.roles.iter().any(Role::needs_mfa)
                )
            });
            let permit = acting
                .then(|| permits.clone().try_acquire_owned().ok())
                .flatten();
            async move {
                let Some(permit) = permit else {
                    return admin.oneshot(req).await;
                };
                let task = tokio::spawn(async move {
                    let r = admin.oneshot(req).await;
                    drop(permit);
                    r
                });
                task.await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "an admin request's task failed");
                    Ok(error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal error",
                    ))
                })
            }
        })
    }

    /// The HTTP router: OIP REST, admin and audit API, health and metrics.
    ///
    /// The guard order, outside in, is documented in the crate root.
    pub fn router(&self) -> Router {
        let models = self.model_stack();
        // gRPC bodies are read by tonic before the guards: they get their deadline here (see
        // `deadline`), a call without a usable key is refused before its body is read
        // (`grpc::keyfirst`), a ModelInfer message that names more than a request can need
        // before it is decoded (`grpc::prescan`), and the calls refused before the guards get
        // their audit entries.
        let (repo, keys) = (self.models.clone(), self.keys.clone());
        let stream_idle = self.stream_idle;
        let unreached =
            AuditUnreached::new(self.audit.clone(), self.keys.clone(), self.metrics.clone());
        let admin = ServiceBuilder::new()
            .layer(GuardLayer(Audit::new(
                self.audit.clone(),
                self.metrics.clone(),
                self.orphans[ADMIN_ROUTES].clone(),
            )))
            .layer(GuardLayer(Authenticate::new(self.keys.clone())))
            .layer(GuardLayer(Authorise::new(self.keys.clone())))
            .layer(GuardLayer(WriteAhead::new(
                self.audit.clone(),
                self.metrics.clone(),
                self.keys.clone(),
            )))
            .service(admin::router(AdminState {
                keys: self.keys.clone(),
                models: self.models.clone(),
                audit: self.audit.clone(),
                audit_public_key: self.audit_public_key,
                source: self.source.clone(),
                withdrawn: self.withdrawn.clone(),
                limits: self.limits.clone(),
                log: self.log.clone(),
                trace: self.trace.clone(),
            }));
        let admin = self.detached_actions(admin);
        let grpc = ServiceBuilder::new()
            .map_request(move |mut req: axum::extract::Request| {
                let clock = deadline::BodyClock::start();
                req.extensions_mut().insert(clock.clone());
                let limit =
                    deadline::grpc_body_limit(&repo, &*keys, req.headers(), req.extensions().get());
                // A stream's body lasts as long as the stream: each of its messages gets the
                // deadline instead (`grpc::stream`).
                if req.uri().path() == stream::MODEL_STREAM_INFER {
                    let times = stream::MessageTimes::default();
                    req.extensions_mut().insert(times.clone());
                    return req.map(|b| {
                        Body::new(stream::MessageBody::new(b, limit, stream_idle, times))
                    });
                }
                req.map(|b| {
                    Body::new(DeadlineBody::clocked(b, limit, clock).map_err(deadline::for_grpc))
                })
            })
            .layer(GuardLayer(unreached.clone()))
            .layer(GuardLayer(KeyFirst::new(self.keys.clone())))
            .layer(GuardLayer(Prescan))
            .map_response(|r: axum::http::Response<tonic::body::Body>| r.map(Body::new))
            .service(
                GrpcGateway::new(models.clone(), self.models.clone(), unreached)
                    .with_admin(Next::new(admin.clone()))
                    .with_stream_idle(self.stream_idle)
                    .with_passages(self.stream_passages.clone())
                    .with_withdrawn(self.withdrawn.clone())
                    .with_extensions(extensions(self.log.is_some(), self.trace.is_some()))
                    .into_service(),
            );
        let ready_models = self.models.clone();
        let ready_withdrawn = self.withdrawn.clone();
        let (logging, traced) = (self.log.is_some(), self.trace.is_some());
        let metrics = self.metrics.clone();
        let inference = self.inference.clone();
        let orphans = self.orphans.clone();
        Router::new()
            .route("/v2/health/live", get(|| async { StatusCode::OK }))
            .route(
                "/v2/health/ready",
                get(move || async move {
                    if !crate::loader::ready(&ready_models, ready_withdrawn.as_deref()) {
                        error_response(StatusCode::SERVICE_UNAVAILABLE, "no model loaded")
                    } else {
                        StatusCode::OK.into_response()
                    }
                }),
            )
            .route("/v2", get(move || server_metadata(logging, traced)))
            .route(
                "/metrics",
                get(move || async move {
                    metrics.inference_pool(
                        inference.queued(),
                        inference.longest_running(),
                        inference.stuck(),
                    );
                    metrics.client_left(orphans.iter().map(|o| o.running()).sum());
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                        .into_response()
                }),
            )
            .route_service("/v2/repository/index", models.clone())
            .route_service("/v2/models/{*rest}", models_or_trace(models, admin.clone()))
            .route_service("/inference.GRPCInferenceService/{*rest}", grpc)
            .route_service("/v2/repository/models/{*rest}", admin.clone())
            .route_service("/v2/logging", admin.clone())
            .route_service("/v2/trace/setting", admin.clone())
            .route_service("/v2/trace/setting/", admin.clone())
            .route_service("/v2/admin/{*rest}", admin.clone())
            .route_service("/v2/audit/{*rest}", admin)
            .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such route") })
            .method_not_allowed_fallback(method_not_allowed)
            .layer(GuardLayer(Measure(self.metrics.clone())))
    }
}

impl Gateway {
    /// The guarded model routes: audit → authenticate → methods → authorise → admit → rate limit
    /// → validate → harden → infer. REST and gRPC both go through this one stack.
    pub fn model_stack(&self) -> Next {
        let svc = ServiceBuilder::new()
            .layer(GuardLayer(
                Audit::new(
                    self.audit.clone(),
                    self.metrics.clone(),
                    self.orphans[MODEL_ROUTES].clone(),
                )
                .with_tracer(self.trace.clone()),
            ))
            .layer(GuardLayer(Authenticate::new(self.keys.clone())))
            .layer(GuardLayer(AllowedMethods))
            .layer(GuardLayer(Authorise::new(self.keys.clone())))
            .layer(GuardLayer(Admit::new(self.inference.clone())))
            .layer(GuardLayer(RateLimit::new(
                self.limits.clone(),
                self.models.clone(),
                self.metrics.clone(),
            )))
            .layer(GuardLayer(Validate::new(self.models.clone())))
            .layer(GuardLayer(ChargeBatch::new(
                self.limits.clone(),
                self.models.clone(),
                self.metrics.clone(),
            )))
            .layer(GuardLayer(Harden))
            .service(
                ModelService::new(
                    self.models.clone(),
                    self.metrics.clone(),
                    self.inference.clone(),
                )
                .with_repository(
                    self.source.as_ref().map(|s| s.repo.clone()),
                    self.withdrawn.clone(),
                ),
            );
        Next::new(svc)
    }
}

/// `/v2/models/…`: a model's trace settings (`/v2/models/{m}/trace/setting`) to `admin`, the
/// rest to `models` (axum takes no route beside the catch-all). The target is parsed here, once,
/// and left on the request for the guards ([`crate::oip::target_of`]): routing and the guards
/// read the same target.
fn models_or_trace<A>(
    models: Next,
    admin: A,
) -> impl tower::Service<
    axum::extract::Request,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static
where
    A: tower::Service<
            axum::extract::Request,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    A::Future: Send + 'static,
{
    use futures_util::future::Either;
    use tower::ServiceExt as _;
    tower::service_fn(move |mut req: axum::extract::Request| {
        if matches!(
            *crate::oip::target_of(&mut req),
            crate::oip::Target::Trace { .. }
        ) {
            Either::Left(admin.clone().oneshot(req))
        } else {
            Either::Right(models.clone().oneshot(req))
        }
    })
}

/// A route's answer to a method it does not take, as JSON like every other error (axum adds the
/// `Allow` header).
pub(crate) async fn method_not_allowed(method: axum::http::Method) -> Response {
    crate::guard::reject(
        StatusCode::METHOD_NOT_ALLOWED,
        "method",
        &format!("{method} is not a method of this route"),
    )
}

/// Triton's extensions a gateway serves over both transports (REST adds `binary_tensor_data`):
/// `logging` only when it was handed a logger, `trace` only when it was handed a tracer.
pub fn extensions(logging: bool, traced: bool) -> Vec<&'static str> {
    let mut e = vec!["model_configuration", "model_repository", "statistics"];
    if logging {
        e.push("logging");
    }
    if traced {
        e.push("trace");
    }
    e
}

async fn server_metadata(logging: bool, traced: bool) -> Response {
    let mut served = vec!["binary_tensor_data"];
    served.extend(extensions(logging, traced));
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "name": "palisade",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": served,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state folder whose databases a later Palisade wrote (a downgrade) is refused, each file
    /// left as it was, rather than misread or "migrated".
    #[test]
    fn databases_of_a_later_schema_are_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state =
            LocalState::open(dir.path(), CheckpointPolicy::default(), Durability::Full).unwrap();
        state.local_limits().unwrap();
        drop(state);
        let paths = StatePaths::new(dir.path());
        let version = |p: &Path| -> i64 {
            rusqlite::Connection::open(p)
                .unwrap()
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap()
        };
        let dbs = [
            // No key bound yet: the release before bindings can still open it.
            (paths.keys_db(), crate::schema::KEYS_UNBOUND),
            (paths.audit_db(), crate::schema::AUDIT),
            (paths.limits_db(), crate::schema::LIMITS),
        ];
        for (db, ours) in &dbs {
            assert_eq!(version(db), *ours, "{}", db.display());
        }
        for (db, ours) in dbs {
            rusqlite::Connection::open(&db)
                .unwrap()
                .pragma_update(None, "user_version", 99)
                .unwrap();
            let opened =
                LocalState::open(dir.path(), CheckpointPolicy::default(), Durability::Full)
                    .and_then(|s| s.local_limits().map(|_| s));
            let e = opened.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("later Palisade"), "{}: {e}", db.display());
            assert_eq!(version(&db), 99, "{}", db.display());
            rusqlite::Connection::open(&db)
                .unwrap()
                .pragma_update(None, "user_version", ours)
                .unwrap();
        }
        // The offline verifier refuses it too.
        rusqlite::Connection::open(paths.audit_db())
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let e = crate::audit::verify_log(&paths.audit_db(), &[0; 32], &[]).unwrap_err();
        assert!(e.to_string().contains("later Palisade"), "{e}");
    }

    #[test]
    fn one_state_folder_serves_one_gateway_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first =
            LocalState::open(dir.path(), CheckpointPolicy::default(), Durability::Full).unwrap();
        let err = LocalState::open(dir.path(), CheckpointPolicy::default(), Durability::Full)
            .unwrap_err();
        assert!(
            err.to_string().contains("in use by another gateway"),
            "{err}"
        );
        drop(first);
        LocalState::open(dir.path(), CheckpointPolicy::default(), Durability::Full).unwrap();
    }

    /// `palisade serve` captures its `Arc<LocalState>` in its async block before its `Gateway`
    /// (first use: `state.first_admin_key()`), so at the end of the block the state, and with
    /// it the folder's lock, is dropped first, and the gateway, which holds the audit log and
    /// the budgets ledger, after it. Whatever holds the log, the folder must stay locked until
    /// the log is closed: a restart racing the shutdown otherwise opens the log while the old
    /// process still ingests its journal, signs its last checkpoint and deletes journal files.
    #[test]
    fn the_folder_stays_locked_while_its_audit_log_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let open =
            || LocalState::open(dir.path(), CheckpointPolicy::default(), Durability::Process);
        let first = open().unwrap();
        let gw = first.gateway(Arc::new(ModelRepository::new())).unwrap();
        drop(first); // what `palisade serve` does before dropping its gateway
        assert!(
            matches!(open(), Err(GatewayError::InUse(_))),
            "a second gateway opened the state folder while the first one's audit log and \
             budgets ledger were still open"
        );
        // The budget ledger holds the lock too, until it has written its last counts.
        let limits = gw.limits.clone();
        drop(gw);
        assert!(
            matches!(open(), Err(GatewayError::InUse(_))),
            "a second gateway opened the state folder while the first one's budget ledger was \
             still open"
        );
        drop(limits);
        open().expect("the folder, once everything of the first gateway has closed");
    }

    /// The harm of the above with `process` durability: the first gateway's audit log, closing
    /// after its lock was released, deleted every journal file beside the database, the one the
    /// second gateway had just started included; the second then journaled acknowledged entries
    /// into a file no longer in the folder (lost to a `kill -9` before its ingester copied
    /// them). Now the second is refused until the first's log has closed, and then keeps its
    /// journal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_closing_after_its_lock_went_keeps_the_next_gateways_journal() {
        let dir = tempfile::tempdir().unwrap();
        let open =
            || LocalState::open(dir.path(), CheckpointPolicy::default(), Durability::Process);
        let first = open().unwrap();
        let gw = first.gateway(Arc::new(ModelRepository::new())).unwrap();
        drop(first);
        assert!(
            matches!(open(), Err(GatewayError::InUse(_))),
            "the folder was opened while the first gateway's audit log was still open"
        );
        drop(gw); // the first process's last Arc to its log goes: SqliteAuditLog::close
        let second = open().unwrap();
        second
            .audit
            .append(b"{\"acknowledged\":true}".to_vec())
            .await
            .unwrap();
        let journal = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("audit.db.journal-")
            })
            .count();
        assert_eq!(journal, 1, "the second gateway's journal file is gone");
    }

    /// The state folder deleted under a running gateway (an operator's `rm -rf`, a volume
    /// unmounted): SQLite and the journal go on writing to files no longer in any folder, so
    /// every later entry is acknowledged (the request answered) and lost when the process
    /// exits. Appends must fail (the request answered 503) once the log's files are gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_audit_log_whose_folder_was_deleted_refuses_appends() {
        let mut acknowledged = Vec::new();
        for durability in [Durability::Full, Durability::Process] {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("state");
            let state = LocalState::open(&dir, CheckpointPolicy::default(), durability).unwrap();
            state
                .audit
                .append(b"{\"before\":1}".to_vec())
                .await
                .unwrap();
            fs::remove_dir_all(&dir).unwrap();
            let after = state.audit.append(b"{\"after\":1}".to_vec()).await;
            let synced = state.audit.sync();
            if after.is_ok() && synced.is_ok() {
                acknowledged.push(format!("{durability:?} (index {after:?}, sync {synced:?})"));
            }
        }
        assert!(
            acknowledged.is_empty(),
            "entries acknowledged into an audit log whose folder no longer exists: {}",
            acknowledged.join(", ")
        );
    }
}
