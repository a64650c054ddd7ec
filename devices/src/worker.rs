//! How device models start their worker threads.
//!
//! A device never calls `std::thread::spawn` itself: it asks the [`WorkerSpawner`] it was given. The
//! VMM's spawner runs every worker inside its seccomp sandbox (docs/security.md): the thread is
//! created by a dedicated spawner thread, not by the vCPU thread that happened to activate the device
//! (a thread inherits its creator's seccomp filters, and a vCPU's filter allows neither thread
//! creation nor file I/O), and the worker installs the device-I/O filter before its body runs. This
//! crate knows nothing of seccomp; [`WorkerSpawner::default`] spawns plain threads, for unit tests.

use std::sync::Arc;
use std::thread::JoinHandle;

/// A worker thread's body.
pub type WorkerBody = Box<dyn FnOnce() + Send + 'static>;

/// Starts device worker threads.
pub trait SpawnWorker: Send + Sync {
    /// Starts a thread named `name` that runs `body`, and returns its handle. The implementation may
    /// run set-up code in the new thread before `body` (and must not run `body` if that fails).
    fn spawn(&self, name: &str, body: WorkerBody) -> std::io::Result<JoinHandle<()>>;
}

/// Spawns plain, unsandboxed threads.
struct PlainThreads;

impl SpawnWorker for PlainThreads {
    fn spawn(&self, name: &str, body: WorkerBody) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name(name.into()).spawn(body)
    }
}

/// A shareable handle on a [`SpawnWorker`].
#[derive(Clone)]
pub struct WorkerSpawner(Arc<dyn SpawnWorker>);

impl WorkerSpawner {
    /// Workers are started by `spawner`.
    pub fn new(spawner: Arc<dyn SpawnWorker>) -> Self {
        Self(spawner)
    }

    /// Starts worker thread `name` running `body`.
    pub fn spawn(&self, name: &str, body: WorkerBody) -> std::io::Result<JoinHandle<()>> {
        self.0.spawn(name, body)
    }
}

impl Default for WorkerSpawner {
    /// Plain threads, without a sandbox (unit tests, tools).
    fn default() -> Self {
        Self(Arc::new(PlainThreads))
    }
}

impl std::fmt::Debug for WorkerSpawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerSpawner")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the threads it starts, to show that devices go through the spawner.
    struct Counting(AtomicUsize);

    impl SpawnWorker for Counting {
        fn spawn(&self, name: &str, body: WorkerBody) -> std::io::Result<JoinHandle<()>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            PlainThreads.spawn(name, body)
        }
    }

    #[test]
    fn spawner_runs_the_body_in_a_named_thread() {
        let counting = Arc::new(Counting(AtomicUsize::new(0)));
        let spawner = WorkerSpawner::new(counting.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = spawner
            .spawn(
                "test-worker",
                Box::new(move || {
                    let name = std::thread::current().name().map(str::to_string);
                    tx.send(name).unwrap();
                }),
            )
            .unwrap();
        handle.join().unwrap();
        assert_eq!(rx.recv().unwrap().as_deref(), Some("test-worker"));
        assert_eq!(counting.0.load(Ordering::SeqCst), 1);
    }
}
