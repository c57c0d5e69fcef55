//! The table writers' commit threads: a few long-lived threads that run the blocking part of
//! DML statements (key check, routing, the RocksDB write) in arrival order, except large
//! statements, which go to tokio's blocking pool so that small ones never queue behind them,
//! and one small statement at a time while none is queued, which takes the short path on its
//! own thread ([`CommitThreads::short_path`], `writer::write_statement`).
//!
//! Why not `spawn_blocking`: with many concurrent writers, tokio's blocking pool gives each
//! statement a thread of its own, woken for it and parked after it, and those threads then queue
//! on the store's commit lock: on a loaded machine most of a small statement's time went into
//! those thread switches and the lock hand-offs (docs/benchmarks.md). A fixed set of threads
//! that take the next job while there is one keeps the runnable threads few and the commit lock
//! nearly uncontended.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use datafusion::common::{DataFusionError, Result};

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    shutdown: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
}

/// The commit threads; dropping it runs the jobs still queued, then stops and joins the threads.
pub struct CommitThreads {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// A statement writes on its own thread ([`CommitThreads::short_path`]).
    short_path_taken: AtomicBool,
}

/// The short path, taken: dropping it frees it.
pub struct ShortPath<'a>(&'a AtomicBool);

impl Drop for ShortPath<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl CommitThreads {
    /// Starts `n` threads; 0: one per core, at least 2 (on 2 cores, 1 thread left the cores idle
    /// during its RocksDB writes and 4 added lock hand-offs: both were slower than 2).
    pub fn start(n: usize) -> std::io::Result<Self> {
        let n = match n {
            0 => std::thread::available_parallelism().map_or(2, |c| c.get()).max(2),
            n => n,
        };
        let shared = Arc::new(Shared::default());
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let shared = Arc::clone(&shared);
            let thread = std::thread::Builder::new()
                .name(format!("topicfusion-commit-{i}"))
                // Route filters recurse over expression trees (up to 128 levels): room as the
                // server's engine threads have (virtual memory: only the pages used are committed).
                .stack_size(256 << 20)
                .spawn(move || run(&shared))?;
            threads.push(thread);
        }
        Ok(Self { shared, threads, short_path_taken: AtomicBool::new(false) })
    }

    /// Lets one small statement at a time write on its caller's thread instead of a commit
    /// thread, while no job is queued (a lone writer then needs no thread hand-off; under load
    /// the commit threads keep the writers few). `None`: submit to the threads.
    pub fn short_path(&self) -> Option<ShortPath<'_>> {
        if !self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).jobs.is_empty() {
            return None;
        }
        self.short_path_taken
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| ShortPath(&self.short_path_taken))
    }

    /// Queues `job` for the next free commit thread. It runs to its end whatever its caller
    /// does meanwhile; it must not wait for another job (it could wait forever behind itself):
    /// table writes only take the store's commit lock.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).jobs.push_back(Box::new(job));
        self.shared.work.notify_one();
    }

    /// Runs `f` on a commit thread and returns its result ([`CommitThreads::submit`] with a reply;
    /// if the caller stops waiting, `f` still runs).
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(move || {
            let _ = tx.send(f());
        });
        rx.await.map_err(|_| DataFusionError::Execution("internal: a commit thread stopped".into()))
    }
}

impl Drop for CommitThreads {
    fn drop(&mut self) {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).shutdown = true;
        self.shared.work.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared) {
    loop {
        let job = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.shutdown {
                    return;
                }
                q = shared.work.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        // A panicking job drops its sender: its statement gets an error, the thread goes on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}
