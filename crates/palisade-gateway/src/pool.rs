//! The inference threads: a fixed set of threads that run model calls, fed by one queue.
//!
//! Inference is CPU-bound and runs for hundreds of microseconds, too long for the async workers.
//! Tokio's blocking pool would take it, but it grows a thread for every call in flight (dozens
//! under load on a 2-core machine), and the operating system then time-slices that many
//! inference threads against the workers that parse, guard and answer requests. Like Triton's
//! model instances, a fixed number of threads (by default one per core) take calls from a queue
//! instead: while the queue is not empty they do not sleep, so a loaded server pays no wake-up
//! per call, and no more inferences run at once than there are cores to run them.

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

use crossbeam_channel as channel;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of inference threads.
pub struct InferencePool {
    queue: Mutex<Option<channel::Sender<Job>>>,
    threads: usize,
}

impl std::fmt::Debug for InferencePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferencePool")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// Why a call on the pool gave no result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The call panicked; the thread that ran it goes on serving.
    #[error("the inference call panicked")]
    Panicked,
    /// The pool was shut down before the call ran.
    #[error("the inference threads have stopped")]
    Stopped,
}

impl InferencePool {
    /// Starts `threads` inference threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (tx, rx) = channel::unbounded::<Job>();
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("palisade-infer-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        job();
                    }
                })?;
        }
        Ok(InferencePool {
            queue: Mutex::new(Some(tx)),
            threads,
        })
    }

    /// One thread per core the process may use.
    pub fn per_core() -> std::io::Result<Self> {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// How many threads run calls.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls waiting for a thread.
    pub fn queued(&self) -> usize {
        lock(&self.queue).as_ref().map_or(0, channel::Sender::len)
    }

    /// Runs `f` on an inference thread and returns its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let out =
                std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| PoolError::Panicked);
            let _ = tx.send(out);
        });
        {
            let q = lock(&self.queue);
            let Some(q) = q.as_ref() else {
                return Err(PoolError::Stopped);
            };
            q.send(job).map_err(|_| PoolError::Stopped)?;
        }
        rx.await.unwrap_or(Err(PoolError::Stopped))
    }

    /// Stops taking calls; the threads finish the calls queued and exit.
    pub fn shutdown(&self) {
        lock(&self.queue).take();
    }
}

/// The queue's lock guards no invariant a panic could break (it only holds the sender).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for InferencePool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn no_more_calls_run_at_once_than_there_are_threads() {
        let pool = Arc::new(InferencePool::new(2).unwrap());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let results = runtime().block_on(async {
            let calls = (0..8).map(|i| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
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
        let pool = InferencePool::new(1).unwrap();
        let rt = runtime();
        let err = rt
            .block_on(pool.run(|| -> u32 { panic!("a model bug") }))
            .unwrap_err();
        assert!(matches!(err, PoolError::Panicked), "{err}");
        // The one thread survived the panic and runs the next call.
        assert_eq!(rt.block_on(pool.run(|| 7)).unwrap(), 7);
    }

    #[test]
    fn a_stopped_pool_refuses_calls_and_finishes_the_queued_ones() {
        let pool = Arc::new(InferencePool::new(1).unwrap());
        let rt = runtime();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let first = {
            let pool = pool.clone();
            rt.spawn(async move {
                pool.run(move || {
                    started_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(50));
                    1
                })
                .await
            })
        };
        started_rx.recv().unwrap();
        let queued = {
            let pool = pool.clone();
            rt.spawn(async move { pool.run(|| 2).await })
        };
        while pool.queued() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        pool.shutdown();
        assert!(matches!(
            rt.block_on(pool.run(|| 3)).unwrap_err(),
            PoolError::Stopped
        ));
        assert_eq!(rt.block_on(first).unwrap().unwrap(), 1);
        assert_eq!(rt.block_on(queued).unwrap().unwrap(), 2);
    }
}
