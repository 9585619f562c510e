//! Triton's trace extension (`GET` and `POST /v2[/models/{m}]/trace/setting`, gRPC
//! `TraceSetting`; tritonclient's `get_trace_settings` and `update_trace_settings`): the
//! timestamps of sampled infer requests, written in Triton's trace file format (per trace, an
//! object naming its model, then one of its timestamps). Settings are read with the `admin`
//! role and changed with it and a TOTP code, written ahead in the audit log as every admin
//! action is.
//!
//! The settings are Triton's: `trace_level` (`OFF` or `TIMESTAMPS`), `trace_rate` (one request
//! of every that many is traced), `trace_count` (traces left to take, `-1` for no end) and
//! `log_frequency` (a file every that many traces; `0`, when tracing stops). They are global,
//! and a model may have its own: the first change for a model copies the global settings it
//! does not name, and a setting sent as `null` follows the global one again. Each setting (the
//! global one, each model's own) counts its requests apart.
//!
//! Where Palisade differs from Triton, and why:
//! - `TENSORS` is refused: a request's inputs and outputs leave the gateway only as digests (in
//!   the audit log), and a trace file is not the place to keep them.
//! - `trace_file` is fixed when the gateway starts (in its state folder) and cannot be changed
//!   through the API, as in recent Triton releases: an admin key must not be able to make the
//!   gateway write where it likes.
//! - Every batch of traces goes to a file of its own, `{trace_file}.{n}`, numbered on from the
//!   files already there and never overwriting one: every `log_frequency` traces; with 0, when a
//!   setting stops tracing (set `OFF`, its count used up), at shutdown, or when [`MAX_HELD`]
//!   traces wait in memory. The settings share one series of files: a batch may hold several
//!   models' traces, and is cut at the frequency of the setting of the trace that fills it.
//! - A run of the gateway writes at most [`MAX_FILES`] files and [`MAX_BYTES`] bytes of traces:
//!   past either, no more traces are taken until it restarts (logged once; the settings then
//!   say so in `palisade_trace_stopped`, and a change that would trace again is refused, 409),
//!   so that one run's tracing cannot fill the disk the audit log is on.
//! - A trace is taken once the request's audit entry is appended, as its answer leaves with
//!   its outputs: only infer requests that were served are counted and sampled.
//!
//! The timestamps (`ns` since the Unix epoch) are Triton's names for Palisade's stages:
//! `REQUEST_START` when the audit guard took the request (before authentication),
//! `QUEUE_START` when the validated request was handed to the inference threads,
//! `COMPUTE_START` and `COMPUTE_INPUT_END` when a thread called the model (inputs are decoded
//! and checked before the queue), `COMPUTE_OUTPUT_START` when the call returned, `COMPUTE_END`
//! when the outputs were hardened and encoded, and `REQUEST_END` when the audit entry was
//! appended (the answer leaves then). Each trace's model object carries the request's
//! `audit_index`, its entry in the audit log.
//!
//! A request pays for tracing only when some setting is on: one atomic load otherwise; while one
//! is, each served request takes the settings' lock (uncontended but for an instant) to be
//! counted. Traces go to a writer thread through a bounded queue; a trace that finds it full is
//! dropped and counted in the log rather than held up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// Triton's default `trace_rate`.
pub const DEFAULT_RATE: u32 = 1000;

/// Most traces held in memory before they are written, whatever `log_frequency` says.
pub const MAX_HELD: usize = 10_000;

/// Most trace files one run of the gateway writes.
pub const MAX_FILES: u64 = 10_000;

/// Most bytes of trace files one run of the gateway writes.
pub const MAX_BYTES: u64 = 1 << 30;

/// Traces that may wait for the writer thread.
const QUEUE: usize = 4096;

/// Why no trace is taken once the writer's limit is reached.
const STOPPED: &str = "trace files reached this run's limit (10,000 files or 1 GiB): no more \
                       traces are taken until the gateway restarts";

/// How long [`Tracer::flush`] waits for the writer.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// What is traced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Nothing.
    Off,
    /// The timestamps of a request's stages.
    Timestamps,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Off => "OFF",
            Level::Timestamps => "TIMESTAMPS",
        }
    }
}

/// One complete trace setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// `trace_level`.
    pub level: Level,
    /// `trace_rate`: one request of every `rate` is traced.
    pub rate: u32,
    /// `trace_count`: traces left to take; -1 for no end.
    pub count: i64,
    /// `log_frequency`: a file every that many traces; 0, when tracing stops.
    pub log_frequency: u32,
}

impl Default for Setting {
    /// Triton's defaults: off, one in 1000, no end, a file when tracing stops.
    fn default() -> Self {
        Setting {
            level: Level::Off,
            rate: DEFAULT_RATE,
            count: -1,
            log_frequency: 0,
        }
    }
}

impl Setting {
    fn traces(&self) -> bool {
        self.level == Level::Timestamps && self.count != 0
    }
}

/// A model's own setting: each `None` follows the global one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Own {
    level: Option<Level>,
    rate: Option<u32>,
    count: Option<i64>,
    log_frequency: Option<u32>,
}

impl Own {
    fn over(&self, g: &Setting) -> Setting {
        Setting {
            level: self.level.unwrap_or(g.level),
            rate: self.rate.unwrap_or(g.rate),
            count: self.count.unwrap_or(g.count),
            log_frequency: self.log_frequency.unwrap_or(g.log_frequency),
        }
    }

    fn copy_of(g: &Setting) -> Own {
        Own {
            level: Some(g.level),
            rate: Some(g.rate),
            count: Some(g.count),
            log_frequency: Some(g.log_frequency),
        }
    }
}

/// A change to one setting: `None` is JSON `null` (a model's setting follows the global one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Change {
    level: Option<Option<Level>>,
    rate: Option<Option<u32>>,
    count: Option<Option<i64>>,
    log_frequency: Option<Option<u32>>,
}

#[derive(Debug, Default)]
struct Settings {
    global: Setting,
    /// Requests the global setting has counted.
    global_seen: u64,
    /// Each model's own setting and the requests it has counted.
    models: HashMap<String, (Own, u64)>,
}

impl Settings {
    fn any_on(&self) -> bool {
        self.global.traces()
            || self
                .models
                .values()
                .any(|(own, _)| own.over(&self.global).traces())
    }
}

/// A trace taken, on its way to the writer.
#[derive(Debug, Clone)]
struct Trace {
    id: u64,
    model: String,
    version: String,
    audit_index: Option<u64>,
    stamps: Vec<(&'static str, u64)>,
    log_frequency: u32,
    /// The last trace its setting's count allowed: written at once, with those held.
    flush_after: bool,
}

enum Msg {
    Trace(Trace),
    /// Write what is held; then say so, if asked.
    Flush(Option<mpsc::SyncSender<()>>),
}

/// Why a trace setting was not read or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// The settings sent cannot be taken (answered 400); nothing changed.
    #[error("{0}")]
    Refused(String),
    /// Tracing has stopped for this run ([`MAX_FILES`], [`MAX_BYTES`]): a change that would
    /// trace again is refused (answered 409); nothing changed.
    #[error("{0}")]
    Stopped(String),
}

/// The gateway's tracer: its settings, and the thread that writes its traces.
#[derive(Debug)]
pub struct Tracer {
    file: PathBuf,
    /// Whether any setting traces now: all a request reads while none does.
    on: AtomicBool,
    settings: Mutex<Settings>,
    next_id: AtomicU64,
    dropped: AtomicU64,
    queue: mpsc::SyncSender<Msg>,
    /// Set by the writer once [`MAX_FILES`] or [`MAX_BYTES`] is reached: no more traces.
    full: std::sync::Arc<AtomicBool>,
    /// Where `Instant`s are put on the Unix clock.
    anchor: (Instant, u64),
}

fn epoch_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Tracer {
    /// A tracer, off, that writes its traces to `{file}.{n}` (`file`'s folder is made when the
    /// first traces are written). Starts the writer thread.
    pub fn new(file: impl Into<PathBuf>) -> std::io::Result<Tracer> {
        Tracer::limited(file.into(), MAX_FILES, MAX_BYTES)
    }

    /// [`Tracer::new`] with a writer that stops at `files` files or `bytes` bytes.
    fn limited(file: PathBuf, files: u64, bytes: u64) -> std::io::Result<Tracer> {
        let (queue, rx) = mpsc::sync_channel(QUEUE);
        let target = file.clone();
        let full = std::sync::Arc::new(AtomicBool::new(false));
        let limit = Limit {
            files,
            bytes,
            full: full.clone(),
        };
        std::thread::Builder::new()
            .name("palisade-trace".into())
            .spawn(move || write_traces(&target, &rx, limit))?;
        Ok(Tracer {
            file,
            on: AtomicBool::new(false),
            settings: Mutex::new(Settings::default()),
            next_id: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
            queue,
            full,
            anchor: (Instant::now(), epoch_ns(SystemTime::now())),
        })
    }

    /// Whether any setting traces now (a request that finds none need not be handed over).
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed) && !self.full.load(Ordering::Relaxed)
    }

    /// Whether `model` has a setting of its own (which it keeps while it is not served, so that
    /// it can still be read and turned off).
    pub fn has_own(&self, model: &str) -> bool {
        self.lock().models.contains_key(model)
    }

    /// Where traces are written (`{file}.{n}`).
    pub fn file(&self) -> &Path {
        &self.file
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ns(&self, at: Instant) -> u64 {
        let (i, ns) = self.anchor;
        if at >= i {
            ns.saturating_add(u64::try_from((at - i).as_nanos()).unwrap_or(u64::MAX))
        } else {
            ns.saturating_sub(u64::try_from((i - at).as_nanos()).unwrap_or(u64::MAX))
        }
    }

    /// Counts a served request of `model` (version `version`, entry `audit_index` of the audit
    /// log) and, if its setting samples it, traces it with the timestamps `stamps` gives.
    pub fn served(
        &self,
        model: &str,
        version: &str,
        audit_index: Option<u64>,
        stamps: impl FnOnce() -> Vec<(&'static str, Instant)>,
    ) {
        if !self.on() {
            return;
        }
        let mut s = self.lock();
        let global = s.global;
        let Settings {
            global: g,
            global_seen,
            models,
        } = &mut *s;
        let (setting, seen, count) = match models.get_mut(model) {
            Some((own, seen)) => {
                let setting = own.over(&global);
                let count = if own.count.is_some() {
                    own.count.as_mut()
                } else {
                    Some(&mut g.count)
                };
                (setting, seen, count)
            }
            None => (global, global_seen, Some(&mut g.count)),
        };
        if !setting.traces() {
            return;
        }
        *seen += 1;
        if *seen % u64::from(setting.rate.max(1)) != 0 {
            return;
        }
        let mut last = false;
        if let Some(c) = count
            && *c > 0
        {
            *c -= 1;
            last = *c == 0;
        }
        if last {
            let on = s.any_on();
            self.on.store(on, Ordering::Relaxed);
        }
        let trace = Trace {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            model: model.to_string(),
            version: version.to_string(),
            audit_index,
            stamps: stamps()
                .into_iter()
                .map(|(name, at)| (name, self.ns(at)))
                .collect(),
            log_frequency: setting.log_frequency,
            flush_after: last,
        };
        // Sent under the lock (it does not block), so that the traces a count allowed are all
        // ahead of its last, which writes them: Triton writes a setting's traces once its count
        // is used up.
        self.send(Msg::Trace(trace));
    }

    fn send(&self, msg: Msg) {
        match self.queue.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(Msg::Trace(_))) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped = n,
                        "traces dropped: the trace writer is behind (lower trace_rate)"
                    );
                }
            }
            // A flush that finds the queue full: the traces ahead of it will be written by the
            // frequency, the bound held, or the next flush.
            Err(mpsc::TrySendError::Full(Msg::Flush(_))) => {}
            Err(mpsc::TrySendError::Disconnected(_)) => {
                tracing::error!("the trace writer has stopped: traces are lost");
            }
        }
    }

    /// Writes the traces held and waits until they are written (at most 30 s): call it at
    /// shutdown. Blocks: not on an async worker.
    pub fn flush(&self) {
        let until = Instant::now() + FLUSH_WAIT;
        let (done, wait) = mpsc::sync_channel(1);
        let mut msg = Msg::Flush(Some(done));
        // Queued within the time allowed too: a writer stuck on its disk holds up no shutdown.
        loop {
            match self.queue.try_send(msg) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Full(m)) if Instant::now() < until => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {
                    tracing::error!("the trace writer did not take the last traces in time");
                    return;
                }
            }
        }
        if wait
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .is_err()
        {
            tracing::error!("the trace writer did not finish writing in time");
        }
    }

    /// The settings in force for `model` (the global ones with `None`), as Triton answers them.
    pub fn settings(&self, model: Option<&str>) -> Map<String, Value> {
        let s = self.lock();
        self.view(&s, model)
    }

    fn view(&self, s: &Settings, model: Option<&str>) -> Map<String, Value> {
        let setting = model
            .and_then(|m| s.models.get(m))
            .map_or(s.global, |(own, _)| own.over(&s.global));
        let mut m = Map::new();
        m.insert(
            "trace_file".into(),
            Value::from(self.file.display().to_string()),
        );
        m.insert(
            "trace_level".into(),
            Value::from(vec![setting.level.as_str()]),
        );
        m.insert("trace_rate".into(), Value::from(setting.rate.to_string()));
        m.insert("trace_count".into(), Value::from(setting.count.to_string()));
        m.insert(
            "log_frequency".into(),
            Value::from(setting.log_frequency.to_string()),
        );
        if self.full.load(Ordering::Relaxed) {
            m.insert("palisade_trace_stopped".into(), Value::from(STOPPED));
        }
        m
    }

    /// Applies `update` (a JSON object of some of Triton's settings, each a string, a number,
    /// a list of strings for `trace_level`, or `null`) to `model`'s own setting, or to the
    /// global one with `None`: the settings after, or why it cannot be (nothing changed then).
    pub fn update(
        &self,
        model: Option<&str>,
        update: &Value,
    ) -> Result<Map<String, Value>, TraceError> {
        let change = self
            .parse(model.is_some(), update)
            .map_err(TraceError::Refused)?;
        if self.full.load(Ordering::Relaxed) && change.level == Some(Some(Level::Timestamps)) {
            return Err(TraceError::Stopped(STOPPED.into()));
        }
        let mut s = self.lock();
        let traced = tracing_settings(&s);
        match model {
            None => {
                let g = &mut s.global;
                if let Some(Some(l)) = change.level {
                    g.level = l;
                }
                if let Some(Some(r)) = change.rate {
                    g.rate = r;
                }
                if let Some(Some(c)) = change.count {
                    g.count = c;
                }
                if let Some(Some(f)) = change.log_frequency {
                    g.log_frequency = f;
                }
            }
            Some(m) => {
                let global = s.global;
                let (own, _) = s
                    .models
                    .entry(m.to_string())
                    .or_insert_with(|| (Own::copy_of(&global), 0));
                if let Some(l) = change.level {
                    own.level = l;
                }
                if let Some(r) = change.rate {
                    own.rate = r;
                }
                if let Some(c) = change.count {
                    own.count = c;
                }
                if let Some(f) = change.log_frequency {
                    own.log_frequency = f;
                }
            }
        }
        let on = s.any_on();
        self.on.store(on, Ordering::Relaxed);
        let view = self.view(&s, model);
        // A setting that stops tracing (this one, or a model's that follows a global value
        // changed) writes what it took, as when its count is used up (sent under the lock,
        // behind every trace taken).
        if traced.difference(&tracing_settings(&s)).next().is_some() {
            self.send(Msg::Flush(None));
        }
        drop(s);
        let now = Value::Object(view.clone());
        tracing::warn!(
            model = model.unwrap_or("(global)"),
            settings = %now,
            "trace settings changed through the admin API"
        );
        Ok(view)
    }

    fn parse(&self, for_model: bool, update: &Value) -> Result<Change, String> {
        let Some(fields) = update.as_object() else {
            return Err("expected a JSON object of trace settings".into());
        };
        let mut c = Change::default();
        for (name, value) in fields {
            if value.is_null() && !for_model && name != "trace_file" {
                return Err(format!(
                    "'{name}' cannot be null here: null returns a model's setting to the global \
                     one, and this is the global one"
                ));
            }
            match name.as_str() {
                "trace_level" => c.level = Some(nullable(value, level)?),
                "trace_rate" => {
                    c.rate = Some(nullable(value, |v| {
                        whole(v)
                            .and_then(|n| u32::try_from(n).ok().filter(|&n| n >= 1).ok_or(()))
                            .map_err(|()| {
                                "'trace_rate' must be a whole number from 1 to 4294967295".into()
                            })
                    })?);
                }
                "trace_count" => {
                    c.count = Some(nullable(value, |v| {
                        whole(v).ok().filter(|&n| n >= -1).ok_or_else(|| {
                            "'trace_count' must be -1 (no end) or a whole number from 0".into()
                        })
                    })?);
                }
                "log_frequency" => {
                    c.log_frequency = Some(nullable(value, |v| {
                        whole(v)
                            .ok()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| {
                                "'log_frequency' must be a whole number from 0 to 4294967295".into()
                            })
                    })?);
                }
                "trace_file" => {
                    let same = value.is_null()
                        || value.as_str() == Some(self.file.display().to_string().as_str());
                    if !same {
                        return Err(format!(
                            "traces are written to {} (in the gateway's state folder): \
                             'trace_file' cannot be changed through the API",
                            self.file.display()
                        ));
                    }
                }
                other => return Err(format!("unknown trace setting '{other}'")),
            }
        }
        Ok(c)
    }
}

/// The settings that trace now: `None` for the global one, and each model's own.
fn tracing_settings(s: &Settings) -> std::collections::HashSet<Option<String>> {
    let global = s.global.traces().then_some(None);
    let models = s
        .models
        .iter()
        .filter(|(_, (own, _))| own.over(&s.global).traces())
        .map(|(m, _)| Some(m.clone()));
    global.into_iter().chain(models).collect()
}

/// `value` parsed by `parse`, or `None` for `null`.
fn nullable<T>(
    value: &Value,
    parse: impl FnOnce(&Value) -> Result<T, String>,
) -> Result<Option<T>, String> {
    if value.is_null() {
        Ok(None)
    } else {
        parse(value).map(Some)
    }
}

/// A whole number sent as a string (Triton's form) or as a number.
fn whole(v: &Value) -> Result<i64, ()> {
    match v {
        Value::String(s) => s.trim().parse().map_err(|_| ()),
        Value::Number(n) => n.as_i64().ok_or(()),
        _ => Err(()),
    }
}

/// `trace_level`: a level, or a list of levels (Triton's form).
fn level(v: &Value) -> Result<Level, String> {
    let names: Vec<&str> = match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str().ok_or_else(|| {
                    "'trace_level' must be a string or a list of strings".to_string()
                })
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("'trace_level' must be a string or a list of strings".into()),
    };
    let mut level = None;
    for name in names {
        let l = match name.to_ascii_uppercase().as_str() {
            "OFF" => Level::Off,
            "TIMESTAMPS" => Level::Timestamps,
            "TENSORS" => {
                return Err(
                    "Palisade does not trace tensors: a request's inputs and outputs \
                            leave the gateway only as digests, in the audit log"
                        .into(),
                );
            }
            _ => {
                return Err(format!("unknown trace level '{name}': OFF or TIMESTAMPS"));
            }
        };
        if level.is_some_and(|was| was != l) {
            return Err("'trace_level' OFF cannot be combined with TIMESTAMPS".into());
        }
        level = Some(l);
    }
    level.ok_or_else(|| "'trace_level' names no level: OFF or TIMESTAMPS".into())
}

/// What one run of the writer may write, and where it says it is done.
struct Limit {
    files: u64,
    bytes: u64,
    full: std::sync::Arc<AtomicBool>,
}

/// The writer thread: holds traces until a file's worth (or a flush) and writes each batch to
/// the next free `{file}.{n}`, until `limit` is reached.
fn write_traces(file: &Path, rx: &mpsc::Receiver<Msg>, limit: Limit) {
    let mut held: Vec<Trace> = Vec::new();
    let (mut next, mut files, mut bytes) = (0u64, 0u64, 0u64);
    let mut write = |held: &mut Vec<Trace>| {
        if held.is_empty() {
            return;
        }
        if limit.full.load(Ordering::Relaxed) {
            held.clear();
            return;
        }
        let body = match serde_json::to_vec_pretty(&as_json(held)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(traces = held.len(), error = %e, "could not encode traces: they are lost");
                held.clear();
                return;
            }
        };
        if files >= limit.files || bytes.saturating_add(body.len() as u64) > limit.bytes {
            limit.full.store(true, Ordering::Relaxed);
            tracing::error!(
                files,
                bytes,
                "trace files reached this run's limit ({} files, {} bytes): no more traces are \
                 taken until the gateway restarts",
                limit.files,
                limit.bytes
            );
            held.clear();
            return;
        }
        match write_batch(file, &mut next, &body) {
            Ok(path) => {
                files += 1;
                bytes += body.len() as u64;
                tracing::info!(traces = held.len(), file = %path.display(), "traces written");
            }
            Err(e) => {
                tracing::error!(traces = held.len(), error = %e, "could not write traces: they are lost");
            }
        }
        held.clear();
    };
    for msg in rx {
        match msg {
            Msg::Trace(t) => {
                let (every, now) = (t.log_frequency as usize, t.flush_after);
                held.push(t);
                if now || (every > 0 && held.len() >= every) || held.len() >= MAX_HELD {
                    write(&mut held);
                }
            }
            Msg::Flush(done) => {
                write(&mut held);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        }
    }
    write(&mut held);
}

/// Writes `body` to the first `{file}.{n}` from `*next` that does not exist yet (through a
/// temporary file, so that a reader never sees half a file), and moves `*next` past it.
fn write_batch(file: &Path, next: &mut u64, body: &[u8]) -> std::io::Result<PathBuf> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let numbered = |n: u64| {
        let mut name = file.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    while numbered(*next).exists() {
        *next += 1;
    }
    let path = numbered(*next);
    *next += 1;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Triton's trace file: per trace, an object naming its model, then one of its timestamps.
fn as_json(traces: &[Trace]) -> Value {
    let mut out = Vec::with_capacity(traces.len() * 2);
    for t in traces {
        // Triton's versions are numbers; a version name that is not one stays a string.
        let version = t
            .version
            .parse::<i64>()
            .map_or_else(|_| Value::from(t.version.as_str()), Value::from);
        let mut model = serde_json::json!({
            "id": t.id,
            "model_name": t.model,
            "model_version": version,
        });
        if let Some(i) = t.audit_index {
            model["audit_index"] = Value::from(i);
        }
        out.push(model);
        out.push(serde_json::json!({
            "id": t.id,
            "timestamps": t.stamps.iter().map(|(name, ns)| serde_json::json!({"name": name, "ns": ns})).collect::<Vec<_>>(),
        }));
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stamps() -> Vec<(&'static str, Instant)> {
        let t = Instant::now();
        vec![
            ("REQUEST_START", t),
            ("REQUEST_END", t + Duration::from_micros(5)),
        ]
    }

    /// Waits (up to 10 s) until `done`: for what the writer thread does on its own.
    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < until, "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn files(dir: &Path) -> Vec<Value> {
        // Only finished files (`trace.json.N`), not one being written (`….N.tmp`).
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        names.retain(|p: &PathBuf| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.parse::<u64>().is_ok())
        });
        names.sort_by_key(|p: &PathBuf| {
            p.extension()
                .and_then(|e| e.to_str())
                .and_then(|e| e.parse::<u64>().ok())
        });
        names
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn settings_read_back_as_triton_writes_them_and_bad_ones_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracer::new(dir.path().join("trace.json")).unwrap();
        let file = t.file().display().to_string();
        assert_eq!(
            Value::Object(t.settings(None)),
            json!({"trace_file": file, "trace_level": ["OFF"], "trace_rate": "1000",
                "trace_count": "-1", "log_frequency": "0"})
        );
        let after = t
            .update(None, &json!({"trace_level": ["TIMESTAMPS"], "trace_rate": "10", "trace_count": 5, "trace_file": file}))
            .unwrap();
        assert_eq!(after["trace_level"], json!(["TIMESTAMPS"]));
        assert_eq!(after["trace_rate"], "10");
        assert_eq!(after["trace_count"], "5");
        for (update, needle) in [
            (
                json!({"trace_level": ["TENSORS"]}),
                "does not trace tensors",
            ),
            (
                json!({"trace_level": ["OFF", "TIMESTAMPS"]}),
                "cannot be combined",
            ),
            (json!({"trace_level": []}), "names no level"),
            (json!({"trace_level": "LOUD"}), "unknown trace level"),
            (json!({"trace_rate": "0"}), "from 1"),
            (json!({"trace_rate": "ten"}), "from 1"),
            (json!({"trace_count": "-2"}), "-1 (no end)"),
            (json!({"log_frequency": -1}), "'log_frequency'"),
            (json!({"trace_file": "/etc/passwd"}), "cannot be changed"),
            (json!({"trace_rate": null}), "cannot be null here"),
            (
                json!({"trace_mode": "opentelemetry"}),
                "unknown trace setting",
            ),
            (json!(["trace_rate"]), "JSON object"),
            // One bad setting refuses the others sent with it.
            (
                json!({"trace_rate": "1", "trace_count": "x"}),
                "'trace_count'",
            ),
        ] {
            let e = t.update(None, &update).unwrap_err().to_string();
            assert!(e.contains(needle), "{update}: {e}");
        }
        assert_eq!(t.settings(None)["trace_rate"], "10");
    }

    #[test]
    fn a_model_copies_the_global_settings_it_does_not_name_and_null_follows_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracer::new(dir.path().join("trace.json")).unwrap();
        t.update(None, &json!({"trace_rate": "7"})).unwrap();
        let m = t
            .update(Some("m"), &json!({"trace_level": "TIMESTAMPS"}))
            .unwrap();
        assert_eq!(
            (m["trace_level"].clone(), m["trace_rate"].clone()),
            (json!(["TIMESTAMPS"]), json!("7"))
        );
        // Copied, not followed: the global rate changes, the model's stays.
        t.update(None, &json!({"trace_rate": "9"})).unwrap();
        assert_eq!(t.settings(Some("m"))["trace_rate"], "7");
        assert_eq!(t.settings(Some("other"))["trace_rate"], "9");
        // null: the model's rate is the global one again, and follows it.
        t.update(Some("m"), &json!({"trace_rate": null})).unwrap();
        t.update(None, &json!({"trace_rate": "11"})).unwrap();
        assert_eq!(t.settings(Some("m"))["trace_rate"], "11");
        assert_eq!(t.settings(None)["trace_level"], json!(["OFF"]));
    }

    #[test]
    fn traces_are_sampled_counted_and_written_in_batches_that_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        // A file from before: kept, and the batches numbered after it.
        std::fs::write(dir.path().join("trace.json.0"), b"[]").unwrap();
        let t = Tracer::new(dir.path().join("trace.json")).unwrap();
        // Off: nothing counted.
        t.served("m", "1", Some(0), || unreachable!("not traced while off"));
        t.update(
            None,
            &json!({"trace_level": ["TIMESTAMPS"], "trace_rate": "2", "trace_count": "3", "log_frequency": "2"}),
        )
        .unwrap();
        for i in 0..10 {
            t.served("m", "1", Some(i), stamps);
        }
        // Every second request of the first six traced (three traces: the count), in a file of
        // two (the frequency) and, the count used up, a file of the last one: written without
        // a flush asked for.
        wait_for("the count's last file", || files(dir.path()).len() == 3);
        assert_eq!(t.settings(None)["trace_count"], "0");
        assert!(
            !t.on.load(Ordering::Relaxed),
            "the count used up stops tracing"
        );
        let f = files(dir.path());
        assert_eq!(f.len(), 3, "{f:?}");
        assert_eq!(f[0], json!([]));
        let models: Vec<_> = f[1..]
            .iter()
            .flat_map(|b| {
                b.as_array()
                    .unwrap()
                    .iter()
                    .filter(|o| o.get("model_name").is_some())
            })
            .map(|o| {
                (
                    o["model_name"].clone(),
                    o["model_version"].clone(),
                    o["audit_index"].clone(),
                )
            })
            .collect();
        assert_eq!(
            models,
            [1, 3, 5].map(|i| (json!("m"), json!(1), json!(i))).to_vec()
        );
        let stamps = &f[1][1]["timestamps"];
        assert_eq!(stamps[0]["name"], "REQUEST_START");
        let (a, b) = (
            stamps[0]["ns"].as_u64().unwrap(),
            stamps[1]["ns"].as_u64().unwrap(),
        );
        assert_eq!(b - a, 5_000);
        let now = epoch_ns(SystemTime::now());
        assert!(
            a <= now && now - a < 60_000_000_000,
            "ns since the epoch: {a}"
        );
    }

    #[test]
    fn a_model_s_own_setting_samples_apart_and_turning_off_writes_what_was_taken() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracer::new(dir.path().join("t").join("trace.json")).unwrap();
        t.update(
            Some("a"),
            &json!({"trace_level": "TIMESTAMPS", "trace_rate": 1}),
        )
        .unwrap();
        for _ in 0..3 {
            t.served("a", "v2", None, stamps);
            t.served("b", "1", None, || {
                unreachable!("b follows the global setting, off")
            });
        }
        assert!(t.has_own("a") && !t.has_own("b"));
        // Set OFF, the setting writes what it took, without a flush asked for.
        t.update(Some("a"), &json!({"trace_level": "OFF"})).unwrap();
        wait_for("the file of a setting turned off", || {
            !files(&dir.path().join("t")).is_empty()
        });
        let f = files(&dir.path().join("t"));
        assert_eq!(f.len(), 1, "{f:?}");
        let batch = f[0].as_array().unwrap();
        assert_eq!(batch.len(), 6);
        assert_eq!(batch[0]["model_version"], "v2");
        assert!(batch[0].get("audit_index").is_none());
    }

    /// A model's setting that follows the global count stops with it, and writes what it took.
    #[test]
    fn a_global_change_that_stops_a_model_s_setting_writes_its_traces() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracer::new(dir.path().join("trace.json")).unwrap();
        t.update(
            Some("m"),
            &json!({"trace_level": "TIMESTAMPS", "trace_rate": "1", "trace_count": null}),
        )
        .unwrap();
        t.served("m", "1", None, stamps);
        t.update(None, &json!({"trace_count": "0"})).unwrap();
        assert!(!t.on());
        wait_for("the file of the stopped setting", || {
            files(dir.path()).len() == 1
        });
    }

    #[test]
    fn past_the_run_s_limit_no_more_traces_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracer::limited(dir.path().join("trace.json"), 2, MAX_BYTES).unwrap();
        t.update(
            None,
            &json!({"trace_level": "TIMESTAMPS", "trace_rate": "1", "log_frequency": "1"}),
        )
        .unwrap();
        for _ in 0..3 {
            t.served("m", "1", None, stamps);
        }
        wait_for("the limit", || !t.on());
        t.flush();
        assert_eq!(files(dir.path()).len(), 2);
        t.served("m", "1", None, || {
            unreachable!("no trace taken past the limit")
        });
        // Said in the settings; turning tracing off is taken, on again refused.
        assert!(t.settings(None).contains_key("palisade_trace_stopped"));
        t.update(None, &json!({"trace_level": "OFF"})).unwrap();
        let e = t
            .update(None, &json!({"trace_level": "TIMESTAMPS"}))
            .unwrap_err();
        assert!(matches!(e, TraceError::Stopped(_)), "{e}");
        // Bytes count too.
        let dir = tempfile::tempdir().unwrap();
        let t = Tracer::limited(dir.path().join("trace.json"), 100, 10).unwrap();
        t.update(
            None,
            &json!({"trace_level": "TIMESTAMPS", "trace_rate": "1"}),
        )
        .unwrap();
        t.served("m", "1", None, stamps);
        t.flush();
        assert!(files(dir.path()).is_empty() && !t.on());
    }
}
