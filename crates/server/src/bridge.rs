//! The one bridge from the front runtime (HTTP and PostgreSQL connections) to the engine
//! runtime, where statements, commits and long polls run.

use std::future::Future;

use tokio::runtime::Handle;

/// Runs `work` on the engine runtime. Dropping the returned future (the client went away or
/// cancelled) aborts the work at its next await point: a long poll stops waiting. Engine work
/// is cancel-safe there: each commit is one synchronous step.
pub async fn run_on<T, F>(engine: &Handle, work: F) -> Result<T, String>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut handle = AbortOnDrop(engine.spawn(work));
    match (&mut handle.0).await {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => Err(format!("engine task panicked: {e}")),
        Err(e) => Err(format!("engine task ended: {e}")),
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
