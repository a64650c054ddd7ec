//! The worker spawner: the one thread that creates device workers.
//!
//! A thread inherits the seccomp filters of the thread that creates it. Virtio devices start their
//! workers when the driver sets DRIVER_OK, which happens on a vCPU thread; a worker created there
//! would be bound by the vCPU's filter too, so the vCPU's list would have to allow file I/O and
//! thread creation. Instead every worker is created by this thread, whose filter is the device
//! list plus what making a thread takes; the worker then adds the device filter. Requests arrive
//! over a channel and the caller waits for the handle (the spawner takes no lock a vCPU holds, so
//! a vCPU waiting here cannot deadlock).

use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::worker::{SpawnWorker, WorkerBody, WorkerSpawner};

use super::{Sandbox, ThreadClass};
use crate::exit::{ExitController, VmOutcome};

struct Request {
    name: String,
    body: WorkerBody,
    reply: SyncSender<std::io::Result<JoinHandle<()>>>,
}

/// Hands spawn requests to the spawner thread.
struct SandboxedSpawner {
    requests: Sender<Request>,
}

impl SpawnWorker for SandboxedSpawner {
    fn spawn(&self, name: &str, body: WorkerBody) -> std::io::Result<JoinHandle<()>> {
        let (reply, answer) = sync_channel(1);
        let request = Request {
            name: name.to_string(),
            body,
            reply,
        };
        let gone = || std::io::Error::other("the worker spawner thread is gone");
        self.requests.send(request).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

/// Starts a worker: the new thread installs the device filter before it runs `body`, and the handle
/// is returned only once it has, so a device never hands guest work to an unfiltered thread. If the
/// filter cannot be installed the body never runs and the VM stops.
fn start_worker(
    request: Request,
    sandbox: &Arc<Sandbox>,
    exit: &Arc<ExitController>,
) -> std::io::Result<JoinHandle<()>> {
    let (sandbox, exit, body) = (sandbox.clone(), exit.clone(), request.body);
    let (filtered_tx, filtered) = sync_channel::<Result<(), String>>(1);
    let handle = std::thread::Builder::new()
        .name(request.name)
        .spawn(move || match sandbox.install(ThreadClass::Device) {
            Ok(()) => {
                let _ = filtered_tx.send(Ok(()));
                body()
            }
            Err(e) => {
                exit.stop(VmOutcome::Error(e.to_string()));
                let _ = filtered_tx.send(Err(e.to_string()));
            }
        })?;
    match filtered.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(why)) => Err(std::io::Error::other(why)),
        Err(_) => Err(std::io::Error::other(
            "the worker thread ended before it was sandboxed",
        )),
    }
}

/// Starts the spawner thread, sandboxed as [`ThreadClass::Spawner`], and returns the handle devices
/// start their workers through. Fails if the thread or its filter cannot be set up.
pub fn start(sandbox: Arc<Sandbox>, exit: Arc<ExitController>) -> anyhow::Result<WorkerSpawner> {
    let (requests, incoming) = channel::<Request>();
    let (ready_tx, ready) = sync_channel(1);
    std::thread::Builder::new()
        .name("worker-spawner".into())
        .spawn(move || {
            if let Err(e) = sandbox.install(ThreadClass::Spawner) {
                let _ = ready_tx.send(Err(e));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            // Ends when the last device holding a WorkerSpawner is dropped.
            for request in incoming {
                let reply = request.reply.clone();
                let _ = reply.send(start_worker(request, &sandbox, &exit));
            }
        })?;
    ready
        .recv()
        .map_err(|_| anyhow::anyhow!("the worker spawner thread ended before it was ready"))??;
    Ok(WorkerSpawner::new(Arc::new(SandboxedSpawner { requests })))
}
