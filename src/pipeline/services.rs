//! The background services of an instance (the HTTP API, the model
//! watcher, the group reader for lookups, the watchdog, the inference
//! threads), started in one place and stopped in one place: in the reverse
//! order of their start, each woken at once by its stop signal (a closed
//! channel, not a polled flag) and joined before the next is stopped.

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, warn};

/// A background thread's view of the instance's shutdown.
pub(super) struct StopSignal(mpsc::Receiver<()>);

impl StopSignal {
    /// Waits `period`; returns false as soon as the service is to stop
    /// (at once when it already is), true when the period passed.
    pub fn wait(&self, period: Duration) -> bool {
        matches!(
            self.0.recv_timeout(period),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }
}

enum Running {
    Thread {
        stop: mpsc::Sender<()>,
        handle: std::thread::JoinHandle<()>,
    },
    Task {
        stop: oneshot::Sender<()>,
        handle: tokio::task::JoinHandle<()>,
    },
    /// A service that has its own threads and a stop of its own.
    Hook(Box<dyn FnOnce() + Send>),
}

/// The running services, in their order of start.
#[derive(Default)]
pub(super) struct Services {
    running: Vec<(&'static str, Running)>,
}

impl Services {
    /// Starts thread `name` running `body` until its [`StopSignal`] says stop.
    pub fn thread(
        &mut self,
        name: &'static str,
        body: impl FnOnce(StopSignal) + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop, signal) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("segstream-{name}"))
            .spawn(move || body(StopSignal(signal)))?;
        self.running.push((name, Running::Thread { stop, handle }));
        Ok(())
    }

    /// Spawns task `name`: `body` gets a future that resolves at stop.
    pub fn task<F>(&mut self, name: &'static str, body: impl FnOnce(oneshot::Receiver<()>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, signal) = oneshot::channel();
        let handle = tokio::spawn(body(signal));
        self.running.push((name, Running::Task { stop, handle }));
    }

    /// Registers the stop of a service started elsewhere.
    pub fn on_stop(&mut self, name: &'static str, stop: impl FnOnce() + Send + 'static) {
        self.running.push((name, Running::Hook(Box::new(stop))));
    }

    /// The services' names, in their order of start.
    #[cfg(test)]
    fn names(&self) -> Vec<&'static str> {
        self.running.iter().map(|(n, _)| *n).collect()
    }

    /// Stops every service, the last started first, each joined before the
    /// next is stopped.
    pub async fn stop(mut self) {
        while let Some((name, service)) = self.running.pop() {
            debug!(service = name, "Stopping.");
            match service {
                Running::Thread { stop, handle } => {
                    drop(stop);
                    let joined = tokio::task::spawn_blocking(move || handle.join()).await;
                    if !matches!(joined, Ok(Ok(()))) {
                        warn!(service = name, "A service thread had panicked.");
                    }
                }
                Running::Task { stop, handle } => {
                    // Err: the task ended already.
                    let _ = stop.send(());
                    if let Err(e) = handle.await {
                        warn!(service = name, error = %e, "A service task had failed.");
                    }
                }
                Running::Hook(stop) => stop(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use super::{Duration, Services};

    /// Services stop in the reverse order of their start, a thread is woken
    /// at once (not after its period), and a task sees its stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn services_stop_last_first_and_at_once() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut s = Services::default();
        let o = order.clone();
        s.on_stop("first", move || o.lock().unwrap().push("first"));
        let o = order.clone();
        s.thread("second", move |stop| {
            let mut rounds = 0;
            while stop.wait(Duration::from_secs(3600)) {
                rounds += 1;
            }
            assert_eq!(rounds, 0);
            assert!(!stop.wait(Duration::from_secs(3600)));
            o.lock().unwrap().push("second");
        })
        .unwrap();
        let o = order.clone();
        s.task("third", move |stop| async move {
            let _ = stop.await;
            o.lock().unwrap().push("third");
        });
        assert_eq!(s.names(), ["first", "second", "third"]);
        let started = Instant::now();
        s.stop().await;
        assert!(started.elapsed() < Duration::from_secs(60));
        assert_eq!(*order.lock().unwrap(), ["third", "second", "first"]);
    }
}
