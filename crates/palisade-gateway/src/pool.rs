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
//! A call whose caller has gone (its future dropped while it waited) is skipped rather than run
//! (in the gateway a request whose client left keeps its caller, for its audit entry, and the
//! model service skips the call itself). By default the queue is not bounded: what bounds it is
//! the callers in flight, one per HTTP/1 connection or HTTP/2 stream. With a limit
//! ([`InferencePool::new`]) a call that finds the queue full is refused without waiting for a
//! thread ([`PoolError::Busy`], which the gateway answers 503 with `Retry-After`): under
//! overload, latency stays bounded and clients can go elsewhere. [`InferencePool::check`] says whether a call made now would be
//! refused, without queueing one: the gateway asks it before the rate limiter charges a request
//! to the caller's quota, and makes the call later with [`InferencePool::run_admitted`], which
//! queues it even if the queue has filled in between (a request is not refused after it has
//! been charged). [`InferencePool::queued`] is exported as the `palisade_inference_queue` gauge.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel as channel;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of inference threads.
pub struct InferencePool {
    /// `None` once the pool is shut down.
    queue: RwLock<Option<channel::Sender<Job>>>,
    /// Calls queued and not yet taken by a thread (counted here rather than by a bounded
    /// channel, so that an admitted call can go past the limit).
    waiting: Arc<AtomicUsize>,
    /// Most calls `run` lets wait.
    limit: Option<usize>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    count: usize,
    /// Per thread, when its running call began, as microseconds since `born` plus one (0: no
    /// call running): see [`InferencePool::longest_running`].
    running: Arc<[std::sync::atomic::AtomicU64]>,
    born: std::time::Instant,
}

impl std::fmt::Debug for InferencePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferencePool")
            .field("threads", &self.count)
            .field("queued", &self.queued())
            .finish()
    }
}

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
        let (tx, rx) = channel::unbounded::<Job>();
        let waiting = Arc::new(AtomicUsize::new(0));
        let born = std::time::Instant::now();
        let running: Arc<[std::sync::atomic::AtomicU64]> =
            (0..count).map(|_| Default::default()).collect();
        let mut handles = Vec::with_capacity(count);
        for i in 0..count {
            let rx = rx.clone();
            let waiting = waiting.clone();
            let running = running.clone();
            // On an error the threads started so far see the queue close and exit.
            handles.push(
                std::thread::Builder::new()
                    .name(format!("palisade-infer-{i}"))
                    .spawn(move || {
                        // Ends once the queue is closed and empty: queued calls still run.
                        for job in rx.iter() {
                            waiting.fetch_sub(1, Ordering::AcqRel);
                            let since = born.elapsed().as_micros() as u64 + 1;
                            running[i].store(since, Ordering::Release);
                            job();
                            running[i].store(0, Ordering::Release);
                        }
                    })?,
            );
        }
        Ok(InferencePool {
            queue: RwLock::new(Some(tx)),
            waiting,
            limit: limit.map(|n| n.max(1)),
            threads: Mutex::new(handles),
            count,
            running,
            born,
        })
    }

    /// How many threads run calls.
    pub fn threads(&self) -> usize {
        self.count
    }

    /// Calls waiting for a thread.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// How long the longest call running now has run (`None`: no call is running). A model
    /// call cannot be stopped from outside its thread: one that never returns holds its thread
    /// for good, and this, exported as `palisade_inference_longest_running_seconds`, is how an
    /// operator sees it (with the queue's depth growing once every thread is held).
    pub fn longest_running(&self) -> Option<std::time::Duration> {
        let now = self.born.elapsed().as_micros() as u64 + 1;
        self.running
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .filter(|&since| since != 0)
            .min()
            .map(|since| std::time::Duration::from_micros(now.saturating_sub(since)))
    }

    /// Whether a call made now would be refused: [`PoolError::Busy`] when the queue is at its
    /// limit, [`PoolError::Stopped`] once the pool is shut down. It reserves nothing: the queue
    /// may fill before the call is made, which [`InferencePool::run`] then refuses and
    /// [`InferencePool::run_admitted`] does not.
    pub fn check(&self) -> Result<(), PoolError> {
        if read(&self.queue).is_none() {
            return Err(PoolError::Stopped);
        }
        match self.limit {
            Some(limit) if self.queued() >= limit => Err(PoolError::Busy { limit }),
            _ => Ok(()),
        }
    }

    /// Runs `f` on an inference thread and returns its result; refused at once
    /// ([`PoolError::Busy`]) when the queue is at its limit. Dropping the returned future before
    /// the call starts cancels it.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.call(f, true).await
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
        self.call(f, false).await
    }

    async fn call<T, F>(&self, f: F, within_limit: bool) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                return;
            }
            let out =
                std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| PoolError::Panicked);
            let _ = tx.send(out);
        });
        {
            let q = read(&self.queue);
            let Some(q) = q.as_ref() else {
                return Err(PoolError::Stopped);
            };
            match self.limit {
                Some(limit) if within_limit => {
                    self.waiting
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                            (w < limit).then_some(w + 1)
                        })
                        .map_err(|_| PoolError::Busy { limit })?;
                }
                _ => {
                    self.waiting.fetch_add(1, Ordering::AcqRel);
                }
            }
            // The threads hold the receivers until the sender is dropped, which the lock held
            // here prevents, so this fails only if every thread has died.
            if q.send(job).is_err() {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                return Err(PoolError::Stopped);
            }
        }
        rx.await.unwrap_or(Err(PoolError::Stopped))
    }

    /// Stops taking calls; the threads finish the calls already queued, then exit. Dropping the
    /// pool does the same.
    pub fn shutdown(&self) {
        self.queue
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Shuts the pool down and waits until its threads have run the calls already queued and
    /// exited. It blocks: call it from a plain thread, not an async worker.
    pub fn shutdown_and_join(&self) {
        self.shutdown();
        let handles =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for h in handles {
            // A thread only ends by its loop ending: job panics are caught inside the job.
            let _ = h.join();
        }
    }
}

fn busy_message(limit: usize) -> String {
    match limit {
        1 => "the server is busy: 1 model call is already waiting".into(),
        n => format!("the server is busy: {n} model calls are already waiting"),
    }
}

/// The lock guards no invariant a panic could break (it only holds the sender).
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
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
        drop(release);
        // Joining waits until the thread has taken every queued call.
        pool.shutdown_and_join();
        assert!(!ran.load(Ordering::SeqCst), "the abandoned call ran");
    }
}
