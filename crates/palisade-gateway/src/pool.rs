//! The inference threads: a fixed set of threads that run model calls, fed by one queue.
//!
//! Inference is CPU-bound and runs for hundreds of microseconds, too long for the async workers.
//! Tokio's blocking pool would take it, but it grows a thread for every call in flight (dozens
//! under load on a 2-core machine), and the operating system then time-slices that many
//! inference threads against the workers that parse, guard and answer requests. Like Triton's
//! model instances, a fixed number of threads (by default one per core) take calls from a queue
//! instead: while the queue is not empty an inference thread does not sleep, so a loaded server
//! wakes none per call (the caller's task is still woken when its result is ready), and no more
//! inferences run at once than there are threads.
//!
//! A thread that finds the queue empty blocks at once; it does not spin first in wait for the
//! next call. Spinning for 100 µs before blocking served 7-19% more requests per second at one
//! connection, where the caller otherwise wakes a sleeping thread (8-11 µs of the caller's CPU
//! per call there on a 2-vCPU VM, sampled by `perf` with call graphs, perf's own cost included),
//! but 2-5% fewer at 16 connections on 2 cores, where the spinning thread takes CPU that the
//! async worker needs (bare endpoint and gateway, 3 rounds each, 2026-12-05).
//!
//! A call whose caller has gone (its future dropped while it waited) is taken out of the queue,
//! or skipped if a thread had just taken it (in the gateway a request whose client left keeps its caller, for its audit entry, and the
//! model service skips the call itself). By default the queue is not bounded: what bounds it is
//! the callers in flight, one per HTTP/1 connection or HTTP/2 stream. With a limit
//! ([`InferencePool::new`]) a call that finds the queue full is refused without waiting for a
//! thread ([`PoolError::Busy`], which the gateway answers 503 with `Retry-After`): under
//! overload, latency stays bounded and clients can go elsewhere. [`InferencePool::check`] says whether a call made now would be
//! refused, without queueing one: the gateway asks it before the rate limiter charges a request
//! to the caller's quota, and makes the call later with [`InferencePool::run_admitted`], which
//! queues it even if the queue has filled in between (a request is not refused after it has
//! been charged). [`InferencePool::queued`] is exported as the `palisade_inference_queue` gauge.
//!
//! A call may have a deadline ([`InferencePool::run_admitted_until`]). One still queued then is
//! taken out of the queue, with what it holds; one running cannot be stopped, so its thread is
//! given up on and another takes its place (see [`STAND_INS_PER_THREAD`]). The queue is a
//! `VecDeque` under a mutex rather than a channel so that a call can be taken out of it: a
//! channel kept every call dropped at its deadline, and its input, until a thread came to it,
//! which with every thread held was never, while their count filled the queue's limit (review,
//! 2026-12-06). A caller wakes a thread only when one sleeps.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A queued call: its number (to take it out of the queue), when its caller stops waiting for it
/// (µs since the pool began, plus one; 0: never), and the call, told by the thread that takes
/// it whether that time has passed.
struct Job {
    id: u64,
    deadline: u64,
    run: Box<dyn FnOnce(bool) + Send>,
}

/// A fixed set of inference threads.
pub struct InferencePool {
    /// Most calls `run` lets wait.
    limit: Option<usize>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InferencePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferencePool")
            .field("threads", &self.shared.count)
            .field("queued", &self.queued())
            .finish()
    }
}

/// What the pool and its threads share.
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a call is queued for a sleeping thread, or the queue closes.
    ready: Condvar,
    /// Calls queued and not yet taken by a thread (kept beside the queue, so that admission reads
    /// it without the lock).
    waiting: AtomicUsize,
    /// Set once the pool is shut down (kept beside the queue, as `waiting` is).
    closed: AtomicBool,
    /// The threads the pool keeps taking calls.
    count: usize,
    born: Instant,
    /// Per slot (a thread's place; [`STAND_INS_PER_THREAD`] more than `count`), when its
    /// running call began, as microseconds since `born` plus one (0: no call running): see
    /// [`InferencePool::longest_running`].
    running: Box<[AtomicU64]>,
    /// Per slot, the running call's deadline, in the same unit (0: none).
    deadline: Box<[AtomicU64]>,
    /// Per slot, set once its thread is given up on: its call ran past its deadline and a
    /// thread was started (or would have been, within the bound) in its place.
    given_up: Box<[AtomicBool]>,
    crew: Mutex<Crew>,
    /// Signalled when a thread ends or is given up on ([`InferencePool::shutdown_and_join`]).
    changed: Condvar,
}

/// The calls waiting for a thread.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for a call.
    sleepers: usize,
    closed: bool,
    next_id: u64,
}

/// The threads, under a lock taken only to start, give up on or retire one.
#[derive(Default)]
struct Crew {
    /// Per slot, its thread if one lives there.
    threads: Vec<Option<JoinHandle<()>>>,
    /// Threads alive.
    live: usize,
    /// Threads given up on and still running their call.
    stuck: usize,
}

/// A model call cannot be stopped from outside its thread. One that runs past its deadline is
/// given up on: its caller is answered, and another thread takes its place, so that the pool
/// goes on with `count` threads taking calls. The thread given up on ends once its call returns
/// if the pool has enough threads by then. At most this many stand-ins per configured thread run
/// at once: calls that never return could otherwise make threads without end. With every thread
/// and every stand-in held, calls wait in the queue until their deadline and are then taken out
/// of it without running.
pub const STAND_INS_PER_THREAD: usize = 1;

/// Why a call on the pool gave no result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The call panicked; the thread that ran it goes on.
    #[error("the inference call panicked")]
    Panicked,
    /// The pool was shut down before the call ran.
    #[error("the inference threads have stopped")]
    Stopped,
    /// The call did not finish before its deadline: it was dropped unrun if no thread had
    /// taken it yet, else its result will be thrown away (see [`STAND_INS_PER_THREAD`]).
    #[error("the model call did not finish before its deadline")]
    TimedOut,
    /// The queue was full: the call was not queued.
    #[error("{}", busy_message(*.limit))]
    Busy {
        /// The queue's limit, which it had reached.
        limit: usize,
    },
}

/// How many async worker threads (parsing, guards, answers) a server on `cores` cores runs
/// beside its inference threads: a quarter of the cores, at least one.
///
/// The async work of a request is a small part of its CPU time beside the model's (on the
/// bundled model at 16 connections, 35-50 µs of 245-265 µs, bare endpoint and gateway), and the
/// inference threads already take one thread per core, so tokio's default of one worker per core
/// time-slices twice as many busy threads as there are cores. On 2 cores one worker instead of
/// two served 3 to 10% more requests per second, bare endpoint and gateway alike, at 1, 16 and
/// 64 connections (`bench/gateway_ab.sh`, 3 rounds, 2026-12-04).
pub fn async_threads_for(cores: usize) -> usize {
    cores.div_ceil(4).max(1)
}

/// [`async_threads_for`] the cores this process may use.
pub fn default_async_threads() -> usize {
    async_threads_for(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The async runtime a gateway serves on: `threads` workers (at least one; `None`:
/// [`default_async_threads`]), with I/O and timers. Its worker count is
/// `runtime.metrics().num_workers()`.
pub fn async_runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.unwrap_or_else(default_async_threads).max(1))
        .enable_all()
        .build()
}

impl InferencePool {
    /// Starts the inference threads: `threads` of them (at least one; `None`: one per core the
    /// process may use). With `Some(limit)` (at least one: 0 is taken as 1), a call that finds
    /// `limit` calls already waiting is refused ([`PoolError::Busy`]); `None`: the queue is not
    /// bounded.
    pub fn new(threads: Option<usize>, limit: Option<usize>) -> std::io::Result<Self> {
        let threads =
            threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let count = threads.max(1);
        let slots = count * (1 + STAND_INS_PER_THREAD);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            count,
            born: Instant::now(),
            running: (0..slots).map(|_| Default::default()).collect(),
            deadline: (0..slots).map(|_| Default::default()).collect(),
            given_up: (0..slots).map(|_| Default::default()).collect(),
            crew: Mutex::new(Crew {
                threads: (0..slots).map(|_| None).collect(),
                ..Crew::default()
            }),
            changed: Condvar::new(),
        });
        let pool = InferencePool {
            limit: limit.map(|n| n.max(1)),
            shared,
        };
        {
            let mut crew = pool.shared.crew();
            for slot in 0..count {
                // On an error the pool is dropped, which closes the queue: the threads started
                // so far end.
                pool.shared.start(&mut crew, slot)?;
            }
        }
        Ok(pool)
    }

    /// How many threads run calls.
    pub fn threads(&self) -> usize {
        self.shared.count
    }

    /// Calls waiting for a thread.
    pub fn queued(&self) -> usize {
        self.shared.waiting.load(Ordering::Acquire)
    }

    /// Threads given up on that are still running their call (see [`STAND_INS_PER_THREAD`]),
    /// exported as `palisade_inference_threads_stuck`.
    pub fn stuck(&self) -> usize {
        self.shared.crew().stuck
    }

    /// How long the longest call running now has run (`None`: no call is running). A model
    /// call cannot be stopped from outside its thread: one that never returns holds its thread
    /// for good (past its deadline, another thread takes its place, within a bound: see
    /// [`STAND_INS_PER_THREAD`]). This, exported as
    /// `palisade_inference_longest_running_seconds`, is how an operator sees it.
    pub fn longest_running(&self) -> Option<Duration> {
        let now = self.shared.now();
        self.shared
            .running
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .filter(|&since| since != 0)
            .min()
            .map(|since| Duration::from_micros(now.saturating_sub(since)))
    }

    /// Whether a call made now would be refused: [`PoolError::Busy`] when the queue is at its
    /// limit, [`PoolError::Stopped`] once the pool is shut down. It reserves nothing: the queue
    /// may fill before the call is made, which [`InferencePool::run`] then refuses and
    /// [`InferencePool::run_admitted`] does not.
    pub fn check(&self) -> Result<(), PoolError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(PoolError::Stopped);
        }
        match self.limit {
            Some(limit) if self.queued() >= limit => Err(PoolError::Busy { limit }),
            _ => Ok(()),
        }
    }

    /// Runs `f` on an inference thread and returns its result; refused at once
    /// ([`PoolError::Busy`]) when the queue is at its limit. Dropping the returned future before
    /// the call starts cancels it: it is taken out of the queue.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.call(f, true, None).await
    }

    /// Runs `f` as [`InferencePool::run`] does, but never refuses it for a full queue: for a
    /// call admitted by [`InferencePool::check`] a moment before, which the queue takes even if
    /// it has filled since. The queue can then hold more calls than its limit, by as many as
    /// were admitted before it filled and came to their call after.
    pub async fn run_admitted<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.call(f, false, None).await
    }

    /// [`InferencePool::run_admitted`], waiting for the result until `deadline` at most: then
    /// [`PoolError::TimedOut`]. A call no thread has taken by then is taken out of the queue,
    /// dropping what it holds; a thread still running it is given up on and another takes its
    /// place (see [`STAND_INS_PER_THREAD`]). Needs a runtime with timers.
    pub async fn run_admitted_until<T, F>(&self, f: F, deadline: Instant) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.call(f, false, Some(deadline)).await
    }

    async fn call<T, F>(
        &self,
        f: F,
        within_limit: bool,
        deadline: Option<Instant>,
    ) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let due = deadline.map_or(0, |d| self.shared.at(d));
        let run = Box::new(move |overdue: bool| {
            if tx.is_closed() {
                return;
            }
            // Taken after its deadline, before its caller's timer has said so: not run.
            if overdue {
                let _ = tx.send(Err(PoolError::TimedOut));
                return;
            }
            let out =
                std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| PoolError::Panicked);
            let _ = tx.send(out);
        });
        let id = self
            .shared
            .push(run, due, self.limit.filter(|_| within_limit))?;
        // A caller that goes away (its future dropped) takes its call back out of the queue.
        let mut queued = Queued {
            shared: &self.shared,
            id: Some(id),
            deadline,
        };
        let Some(deadline) = deadline else {
            let out = rx.await;
            queued.id = None;
            return out.unwrap_or(Err(PoolError::Stopped));
        };
        let out = tokio::time::timeout_at(deadline.into(), rx).await;
        queued.id = None;
        match out {
            Ok(out) => out.unwrap_or(Err(PoolError::Stopped)),
            Err(_) => {
                // Still queued: out of the queue, with what it holds. Either way a thread may be
                // past a deadline: this call's, if a thread took it, or, if it waited because
                // every thread was held, that of a call whose own caller went away before its
                // deadline and so never looked (review, 2026-12-06).
                self.shared.take_back(id);
                self.shared.stand_in_for_overdue();
                Err(PoolError::TimedOut)
            }
        }
    }

    /// Stops taking calls; the threads finish the calls already queued, then exit. Dropping the
    /// pool does the same.
    pub fn shutdown(&self) {
        let mut q = self.shared.queue();
        q.closed = true;
        self.shared.closed.store(true, Ordering::Release);
        self.shared.ready.notify_all();
    }

    /// Shuts the pool down and waits until its threads have run the calls already queued and
    /// exited, except threads given up on (before or during the wait), which may never return.
    /// It blocks: call it from a plain thread, not an async worker.
    pub fn shutdown_and_join(&self) {
        self.shutdown();
        let mut crew = self.shared.crew();
        while crew.live > crew.stuck {
            crew = self
                .shared
                .changed
                .wait(crew)
                .unwrap_or_else(PoisonError::into_inner);
        }
        // The threads that ended are joined (at once); those given up on are left.
        let ended: Vec<JoinHandle<()>> = crew
            .threads
            .iter_mut()
            .filter_map(|t| t.take_if(|h| h.is_finished()))
            .collect();
        drop(crew);
        for h in ended {
            let _ = h.join();
        }
    }
}

/// A call in the queue whose caller may go away: dropped while it holds the call's number, it
/// takes the call back out of the queue (if no thread has taken it), so that what the call holds
/// is freed now rather than when a thread comes to it. A call a thread has taken, with a
/// deadline, is looked at again at its deadline, as its caller would have (review, 2026-12-06):
/// a call that then runs on is stood in for.
struct Queued<'a> {
    shared: &'a Arc<Shared>,
    id: Option<u64>,
    deadline: Option<Instant>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        if self.shared.take_back(id) {
            return;
        }
        if let (Some(deadline), Ok(rt)) = (self.deadline, tokio::runtime::Handle::try_current()) {
            let shared = self.shared.clone();
            rt.spawn(async move {
                tokio::time::sleep_until(deadline.into()).await;
                shared.stand_in_for_overdue();
            });
        }
    }
}

impl Shared {
    fn crew(&self) -> MutexGuard<'_, Crew> {
        // Nothing under the lock panics between two changes that must go together.
        self.crew.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Microseconds since the pool began, plus one.
    fn now(&self) -> u64 {
        self.born.elapsed().as_micros() as u64 + 1
    }

    /// `t` in the unit of [`Shared::now`].
    fn at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.born).as_micros() as u64 + 1
    }

    /// Queues a call (refused [`PoolError::Busy`] when `limit` calls wait already), waking a
    /// sleeping thread if there is one; returns its number.
    fn push(
        &self,
        run: Box<dyn FnOnce(bool) + Send>,
        deadline: u64,
        limit: Option<usize>,
    ) -> Result<u64, PoolError> {
        let mut q = self.queue();
        if q.closed {
            return Err(PoolError::Stopped);
        }
        if let Some(limit) = limit
            && q.jobs.len() >= limit
        {
            return Err(PoolError::Busy { limit });
        }
        let id = q.next_id;
        q.next_id += 1;
        q.jobs.push_back(Job { id, deadline, run });
        self.waiting.store(q.jobs.len(), Ordering::Release);
        if q.sleepers > 0 {
            self.ready.notify_one();
        }
        Ok(id)
    }

    /// The next call, waiting for one; `None` once the queue is closed and empty.
    fn pop(&self) -> Option<Job> {
        let mut q = self.queue();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                self.waiting.store(q.jobs.len(), Ordering::Release);
                return Some(job);
            }
            if q.closed {
                return None;
            }
            q.sleepers += 1;
            q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            q.sleepers -= 1;
        }
    }

    /// Takes call `id` out of the queue if no thread has taken it: whether it was there.
    fn take_back(&self, id: u64) -> bool {
        let job = {
            let mut q = self.queue();
            let Some(at) = q.jobs.iter().position(|j| j.id == id) else {
                return false;
            };
            let job = q.jobs.remove(at);
            self.waiting.store(q.jobs.len(), Ordering::Release);
            job
        };
        // Dropped outside the lock: what it holds may take time to free.
        drop(job);
        true
    }

    /// Starts a thread in `slot`.
    fn start(self: &Arc<Self>, crew: &mut Crew, slot: usize) -> std::io::Result<()> {
        let shared = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("palisade-infer-{slot}"))
            .spawn(move || shared.work(slot))?;
        crew.threads[slot] = Some(handle);
        crew.live += 1;
        Ok(())
    }

    /// A thread's loop: ends once the queue is closed and empty (queued calls still run), or
    /// after a call it was given up on, if the pool has threads enough without it.
    fn work(self: Arc<Self>, slot: usize) {
        while let Some(job) = self.pop() {
            self.deadline[slot].store(job.deadline, Ordering::SeqCst);
            self.running[slot].store(self.now(), Ordering::SeqCst);
            // Looked at once `running` is set: a caller whose deadline passed before then has
            // either seen this thread running its call, or the call is overdue here.
            let overdue = job.deadline != 0 && self.now() >= job.deadline;
            (job.run)(overdue);
            self.running[slot].store(0, Ordering::SeqCst);
            self.deadline[slot].store(0, Ordering::SeqCst);
            if self.given_up[slot].load(Ordering::SeqCst) && self.retire(slot) {
                return;
            }
        }
        let mut crew = self.crew();
        if self.given_up[slot].swap(false, Ordering::SeqCst) {
            crew.stuck -= 1;
        }
        crew.live -= 1;
        self.changed.notify_all();
    }

    /// A thread given up on is back from its call: it ends if the threads not held are enough
    /// without it, else it takes calls again.
    fn retire(&self, slot: usize) -> bool {
        let mut crew = self.crew();
        if !self.given_up[slot].swap(false, Ordering::SeqCst) {
            return false;
        }
        crew.stuck -= 1;
        self.changed.notify_all();
        if crew.live - crew.stuck > self.count {
            crew.live -= 1;
            // Dropping the handle detaches the thread, which ends as this returns.
            crew.threads[slot] = None;
            return true;
        }
        false
    }

    /// A caller stopped waiting at its deadline, its call taken by a thread: every thread whose
    /// call has run past its own deadline is given up on, and, unless the pool is shut down,
    /// threads are started until `count` are not held, within [`STAND_INS_PER_THREAD`].
    fn stand_in_for_overdue(self: &Arc<Self>) {
        let mut crew = self.crew();
        let now = self.now();
        let overdue = |slot: usize| {
            let due = self.deadline[slot].load(Ordering::SeqCst);
            due != 0 && due <= now && self.running[slot].load(Ordering::SeqCst) != 0
        };
        for slot in 0..crew.threads.len() {
            if crew.threads[slot].is_none()
                || !overdue(slot)
                || self.given_up[slot].swap(true, Ordering::SeqCst)
            {
                continue;
            }
            // Looked at again once marked: a call that ended (or a next one that began) since
            // the first look is not held, and the thread, which may have missed the mark, is
            // not counted.
            if overdue(slot) {
                crew.stuck += 1;
                self.changed.notify_all();
            } else {
                self.given_up[slot].store(false, Ordering::SeqCst);
            }
        }
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        while crew.live - crew.stuck < self.count {
            let Some(free) = crew.threads.iter().position(Option::is_none) else {
                break;
            };
            if let Err(e) = self.start(&mut crew, free) {
                tracing::error!(error = %e, "could not start an inference thread in place of one held past its deadline");
                break;
            }
            tracing::warn!(
                stuck = crew.stuck,
                "a model call ran past its deadline; another inference thread takes its place"
            );
        }
    }
}

fn busy_message(limit: usize) -> String {
    match limit {
        1 => "the server is busy: 1 model call is already waiting".into(),
        n => format!("the server is busy: {n} model calls are already waiting"),
    }
}

impl Drop for InferencePool {
    fn drop(&mut self) {
        // Not joined here: the last reference may be dropped on an async worker, which must
        // not wait for a model call.
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn a_quarter_of_the_cores_run_async_work_and_never_none() {
        let threads: Vec<usize> = [0, 1, 2, 3, 4, 5, 8, 16, 64]
            .into_iter()
            .map(async_threads_for)
            .collect();
        assert_eq!(threads, [1, 1, 1, 1, 1, 2, 2, 4, 16]);
        assert!(default_async_threads() >= 1);
    }

    #[test]
    fn the_async_runtime_has_the_workers_asked_for_and_at_least_one() {
        let workers = |n| async_runtime(n).unwrap().metrics().num_workers();
        assert_eq!(workers(Some(3)), 3);
        assert_eq!(workers(Some(0)), 1);
        assert_eq!(workers(None), default_async_threads());
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Waits (at most 10 s) until `f` holds.
    fn eventually(f: impl Fn() -> bool) -> bool {
        let t = Instant::now();
        while !f() {
            if t.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    #[test]
    fn no_more_calls_run_at_once_than_there_are_threads() {
        let pool = Arc::new(InferencePool::new(Some(2), None).unwrap());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let results = runtime().block_on(async {
            let calls = (0..8).map(|i| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        // Hold the thread until the other one runs a call too (or 10 s pass:
                        // then the assertion on `most` below fails instead of the test hanging).
                        eventually(|| most.load(Ordering::SeqCst) >= 2);
                        std::thread::sleep(Duration::from_millis(5));
                        running.fetch_sub(1, Ordering::SeqCst);
                        i * 10
                    })
                    .await
                })
            });
            let mut out = Vec::new();
            for c in calls.collect::<Vec<_>>() {
                out.push(c.await.unwrap().unwrap());
            }
            out
        });
        assert_eq!(results, (0..8).map(|i| i * 10).collect::<Vec<_>>());
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "both threads, and no more, ran calls"
        );
    }

    #[test]
    fn a_panicking_call_is_an_error_and_its_thread_goes_on() {
        let pool = InferencePool::new(Some(1), None).unwrap();
        let rt = runtime();
        let err = rt
            .block_on(pool.run(|| -> u32 { panic!("a model bug") }))
            .unwrap_err();
        assert!(matches!(err, PoolError::Panicked), "{err}");
        // The one thread survived the panic and runs the next call.
        assert_eq!(rt.block_on(pool.run(|| 7)).unwrap(), 7);
    }

    /// One thread, held by a call until the returned sender is dropped.
    fn held(
        pool: &Arc<InferencePool>,
        rt: &tokio::runtime::Runtime,
    ) -> std::sync::mpsc::Sender<()> {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel();
        let p = pool.clone();
        rt.spawn(async move {
            p.run(move || {
                started_tx.send(()).unwrap();
                let _ = gate.recv();
            })
            .await
        });
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        release
    }

    /// Sends `f` to the pool from a task and returns once it waits in the queue.
    fn queue_one<T: Send + 'static>(
        pool: &Arc<InferencePool>,
        rt: &tokio::runtime::Runtime,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<T, PoolError>> {
        let before = pool.queued();
        let p = pool.clone();
        let call = rt.spawn(async move { p.run(f).await });
        assert!(eventually(|| pool.queued() == before + 1), "never queued");
        call
    }

    #[test]
    fn a_stopped_pool_refuses_calls_and_finishes_the_queued_ones() {
        let pool = Arc::new(InferencePool::new(Some(1), None).unwrap());
        let rt = runtime();
        let release = held(&pool, &rt);
        let queued = queue_one(&pool, &rt, || 2);
        pool.shutdown();
        assert!(matches!(
            rt.block_on(pool.run(|| 3)).unwrap_err(),
            PoolError::Stopped
        ));
        drop(release);
        assert_eq!(rt.block_on(queued).unwrap().unwrap(), 2);
        pool.shutdown_and_join();
    }

    #[test]
    fn a_full_queue_refuses_a_call_at_once_but_not_an_admitted_one_and_takes_calls_again_once_it_drains()
     {
        let pool = Arc::new(InferencePool::new(Some(1), Some(1)).unwrap());
        let rt = runtime();
        let release = held(&pool, &rt);
        assert!(pool.check().is_ok(), "an empty queue takes a call");
        let waiting = queue_one(&pool, &rt, || 1);
        assert!(matches!(pool.check(), Err(PoolError::Busy { limit: 1 })));
        // Refused without waiting: were the call queued, it would wait for the held thread.
        let err = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), pool.run(|| 2)).await })
            .expect("a full queue refuses at once")
            .unwrap_err();
        assert!(matches!(err, PoolError::Busy { limit: 1 }), "{err}");
        assert_eq!(
            err.to_string(),
            "the server is busy: 1 model call is already waiting"
        );
        // An admitted call goes in past the limit.
        let p = pool.clone();
        let admitted = rt.spawn(async move { p.run_admitted(|| 4).await });
        assert!(
            eventually(|| pool.queued() == 2),
            "the admitted call was not queued"
        );
        drop(release);
        assert_eq!(rt.block_on(waiting).unwrap().unwrap(), 1);
        assert_eq!(rt.block_on(admitted).unwrap().unwrap(), 4);
        assert_eq!(pool.queued(), 0);
        assert!(pool.check().is_ok(), "a drained queue takes calls again");
        assert_eq!(rt.block_on(pool.run(|| 3)).unwrap(), 3);
        pool.shutdown();
        assert!(matches!(pool.check(), Err(PoolError::Stopped)));
    }

    #[test]
    fn the_longest_running_call_is_seen_while_it_runs() {
        let pool = Arc::new(InferencePool::new(Some(2), None).unwrap());
        let rt = runtime();
        assert_eq!(pool.longest_running(), None);
        let first = held(&pool, &rt);
        std::thread::sleep(Duration::from_millis(50));
        // The second call begins after this.
        let t2 = std::time::Instant::now();
        let second = held(&pool, &rt);
        // The first call's age, not the second's.
        let longest = pool.longest_running().expect("two calls run");
        assert!(longest >= Duration::from_millis(50), "{longest:?}");
        drop(first);
        let t = std::time::Instant::now();
        // Once the first has ended, the longest is the second, begun after `t2`.
        while pool.longest_running().is_some_and(|d| d > t2.elapsed()) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the first call's end was not seen"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(second);
        while pool.longest_running().is_some() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the second call's end was not seen"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_call_whose_caller_left_is_skipped() {
        let pool = Arc::new(InferencePool::new(Some(1), None).unwrap());
        let rt = runtime();
        let release = held(&pool, &rt);
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let abandoned = queue_one(&pool, &rt, move || flag.store(true, Ordering::SeqCst));
        abandoned.abort();
        let _ = rt.block_on(abandoned);
        // Taken out of the queue at once, with what it holds.
        assert_eq!(pool.queued(), 0);
        assert!(pool.shared.queue().jobs.is_empty());
        drop(release);
        // Joining waits until the thread has taken every queued call.
        pool.shutdown_and_join();
        assert!(!ran.load(Ordering::SeqCst), "the abandoned call ran");
    }

    /// Calls `f` with a deadline `after` from now, from a task.
    fn call_until<T: Send + 'static>(
        pool: &Arc<InferencePool>,
        rt: &tokio::runtime::Runtime,
        after: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<T, PoolError>> {
        let p = pool.clone();
        let deadline = Instant::now() + after;
        rt.spawn(async move { p.run_admitted_until(f, deadline).await })
    }

    /// A call that holds its thread until the returned sender is dropped, with a deadline
    /// `after` from now; returns once it runs.
    fn hang(
        pool: &Arc<InferencePool>,
        rt: &tokio::runtime::Runtime,
        after: Duration,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<(), PoolError>>,
    ) {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel();
        let call = call_until(pool, rt, after, move || {
            started_tx.send(()).unwrap();
            let _ = gate.recv();
        });
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        (release, call)
    }

    fn live(pool: &InferencePool) -> usize {
        pool.shared.crew().live
    }

    /// A call stuck past its deadline whose caller went away before it (so never looked) is
    /// stood in for when a later call times out, even one that timed out still queued: else,
    /// with every thread so held, the pool never ran anything again (review, 2026-12-06).
    #[test]
    fn a_call_stuck_past_its_deadline_is_stood_in_for_even_if_its_caller_went_away() {
        let pool = Arc::new(InferencePool::new(Some(1), None).unwrap());
        let rt = runtime();
        let (release, caller) = hang(&pool, &rt, Duration::from_millis(100));
        // The caller goes away while its call runs (before the deadline).
        caller.abort();
        let _ = rt.block_on(caller);
        std::thread::sleep(Duration::from_millis(300));
        // Well past the stuck call's deadline: calls with a deadline of their own.
        let results: Vec<_> = (0..3)
            .map(|_| {
                rt.block_on(call_until(&pool, &rt, Duration::from_millis(500), || 5))
                    .unwrap()
            })
            .collect();
        let stuck = pool.stuck();
        drop(release);
        assert!(
            results.iter().all(|r| matches!(r, Ok(5))),
            "no call ran past the stuck one (stuck threads counted: {stuck}): {results:?}"
        );
    }

    #[test]
    fn a_call_past_its_deadline_is_answered_and_another_thread_takes_its_place() {
        let pool = Arc::new(InferencePool::new(Some(1), None).unwrap());
        let rt = runtime();
        let t = Instant::now();
        let (release, stuck) = hang(&pool, &rt, Duration::from_millis(100));
        let err = rt.block_on(stuck).unwrap().unwrap_err();
        assert!(matches!(err, PoolError::TimedOut), "{err}");
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert_eq!((pool.stuck(), live(&pool)), (1, 2));
        // The one configured thread is held; the stand-in serves the next call.
        let next = call_until(&pool, &rt, Duration::from_secs(10), || 5);
        assert_eq!(rt.block_on(next).unwrap().unwrap(), 5);
        assert!(
            pool.longest_running().is_some(),
            "the held call still shows"
        );
        // Back from its call, the thread given up on ends: the pool has its one thread.
        drop(release);
        assert!(eventually(|| pool.stuck() == 0 && live(&pool) == 1));
        assert_eq!(rt.block_on(pool.run(|| 6)).unwrap(), 6);
        pool.shutdown_and_join();
    }

    #[test]
    fn a_call_still_queued_at_its_deadline_is_dropped_unrun_and_no_thread_is_given_up() {
        let pool = Arc::new(InferencePool::new(Some(1), None).unwrap());
        let rt = runtime();
        // Held by a call without a deadline: never given up on.
        let release = held(&pool, &rt);
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let late = call_until(&pool, &rt, Duration::from_millis(50), move || {
            flag.store(true, Ordering::SeqCst)
        });
        let err = rt.block_on(late).unwrap().unwrap_err();
        assert!(matches!(err, PoolError::TimedOut), "{err}");
        assert_eq!((pool.stuck(), live(&pool)), (0, 1));
        drop(release);
        pool.shutdown_and_join();
        assert!(
            !ran.load(Ordering::SeqCst),
            "the call ran after its deadline"
        );
        assert_eq!(pool.queued(), 0);
    }

    #[test]
    fn a_call_taken_after_its_deadline_is_not_run() {
        let pool = Arc::new(InferencePool::new(Some(1), None).unwrap());
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        // The deadline has passed when the thread takes the call; the timer may not have fired.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let run = Box::new(move |overdue: bool| {
            if !overdue {
                flag.store(true, Ordering::SeqCst);
            }
            let _ = tx.send(overdue);
        });
        pool.shared.push(run, 1, None).unwrap();
        assert!(rx.blocking_recv().unwrap(), "the thread saw it overdue");
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn stand_ins_are_bounded_and_calls_then_wait_until_their_deadline() {
        let pool = Arc::new(InferencePool::new(Some(1), None).unwrap());
        let rt = runtime();
        let short = Duration::from_millis(50);
        let (first, a) = hang(&pool, &rt, short);
        assert!(matches!(rt.block_on(a).unwrap(), Err(PoolError::TimedOut)));
        // The stand-in takes the next call, which hangs too.
        let (second, b) = hang(&pool, &rt, short);
        assert!(matches!(rt.block_on(b).unwrap(), Err(PoolError::TimedOut)));
        assert_eq!(
            (pool.stuck(), live(&pool)),
            (2, 1 + STAND_INS_PER_THREAD),
            "no thread beyond the bound"
        );
        // Every thread is held: a call waits in the queue until its deadline, unrun.
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let c = call_until(&pool, &rt, short, move || {
            flag.store(true, Ordering::SeqCst)
        });
        assert!(matches!(rt.block_on(c).unwrap(), Err(PoolError::TimedOut)));
        assert_eq!(live(&pool), 1 + STAND_INS_PER_THREAD);
        // Once the held calls return, one thread remains and serves again.
        drop(first);
        drop(second);
        assert!(eventually(|| pool.stuck() == 0 && live(&pool) == 1));
        assert_eq!(rt.block_on(pool.run(|| 1)).unwrap(), 1);
        pool.shutdown_and_join();
        assert!(!ran.load(Ordering::SeqCst), "a call ran after its deadline");
    }

    #[test]
    fn shutdown_and_join_does_not_wait_for_a_thread_given_up_on() {
        let pool = Arc::new(InferencePool::new(Some(1), None).unwrap());
        let rt = runtime();
        let (release, a) = hang(&pool, &rt, Duration::from_millis(20));
        assert!(matches!(rt.block_on(a).unwrap(), Err(PoolError::TimedOut)));
        let (done_tx, done) = std::sync::mpsc::channel();
        let p = pool.clone();
        std::thread::spawn(move || {
            p.shutdown_and_join();
            let _ = done_tx.send(());
        });
        done.recv_timeout(Duration::from_secs(10))
            .expect("shutdown_and_join waited for the held call");
        drop(release);
    }

    /// A call that passes its deadline while `shutdown_and_join` waits is given up on
    /// like any other (its caller is answered `TimedOut`), so the join must not wait for it.
    #[test]
    fn shutdown_and_join_does_not_wait_for_a_call_that_passes_its_deadline_during_the_join() {
        let pool = Arc::new(InferencePool::new(Some(1), None).unwrap());
        let rt = runtime();
        let (release, a) = hang(&pool, &rt, Duration::from_millis(300));
        let (done_tx, done) = std::sync::mpsc::channel();
        let p = pool.clone();
        std::thread::spawn(move || {
            p.shutdown_and_join();
            let _ = done_tx.send(());
        });
        // The caller is answered at its deadline: the thread is past it, held by the call.
        assert!(matches!(rt.block_on(a).unwrap(), Err(PoolError::TimedOut)));
        let stuck = pool.stuck();
        let joined = done.recv_timeout(Duration::from_secs(5));
        drop(release);
        assert!(
            joined.is_ok(),
            "shutdown_and_join still waits for a call 5 s past its deadline (stuck = {stuck})"
        );
    }

    /// A call answered `TimedOut` while still queued is dropped: it is no longer a call
    /// waiting for a thread, neither in `queued` (the `palisade_inference_queue` gauge) nor
    /// against the queue's limit (`check`, which the admit guard answers 503 with).
    #[test]
    fn a_call_dropped_at_its_deadline_no_longer_counts_as_waiting() {
        let pool = Arc::new(InferencePool::new(Some(1), Some(1)).unwrap());
        let rt = runtime();
        // The one thread runs a long call (its deadline far off, as the policy's 30 s).
        let (release, long) = hang(&pool, &rt, Duration::from_secs(30));
        let late = call_until(&pool, &rt, Duration::from_millis(50), || 1);
        assert!(matches!(
            rt.block_on(late).unwrap(),
            Err(PoolError::TimedOut)
        ));
        let (queued, check) = (pool.queued(), pool.check());
        drop(release);
        let _ = rt.block_on(long);
        assert_eq!(
            queued, 0,
            "a call already answered TimedOut still counts as waiting"
        );
        assert!(check.is_ok(), "a dropped call fills the queue: {check:?}");
    }

    /// With every thread and stand-in held, calls answered `TimedOut` at their deadline
    /// ("dropped without running") stay in the queue with everything they captured (in the
    /// gateway, the request's validated input) until a thread frees: without a queue limit the
    /// queue then grows with every request, though no caller waits any more (the module doc says
    /// "what bounds it is the callers in flight").
    #[test]
    fn calls_dropped_at_their_deadline_do_not_stay_queued_holding_their_captures() {
        let pool = Arc::new(InferencePool::new(Some(1), None).unwrap());
        let rt = runtime();
        let short = Duration::from_millis(30);
        let (first, a) = hang(&pool, &rt, short);
        assert!(matches!(rt.block_on(a).unwrap(), Err(PoolError::TimedOut)));
        let (second, b) = hang(&pool, &rt, short);
        assert!(matches!(rt.block_on(b).unwrap(), Err(PoolError::TimedOut)));
        let payload = Arc::new(vec![0u8; 1 << 20]);
        for _ in 0..10 {
            let p = payload.clone();
            let c = call_until(&pool, &rt, short, move || p.len());
            assert!(matches!(rt.block_on(c).unwrap(), Err(PoolError::TimedOut)));
        }
        let (kept, queued) = (Arc::strong_count(&payload) - 1, pool.queued());
        drop(first);
        drop(second);
        assert_eq!(
            (kept, queued),
            (0, 0),
            "(captures kept, calls queued) after 10 calls were answered TimedOut"
        );
    }
}
