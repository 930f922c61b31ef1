//! `/healthz`, `/readyz` and `/metrics` over a deliberately tiny HTTP/1.1
//! server (GET only, one request per connection): probes and Prometheus need
//! nothing more, and it keeps a web framework out of the binary.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::telemetry::Metrics;

/// What the probes report.
///
/// # Readiness
///
/// Ready (`/readyz` 200, `segstream_ready` 1) means: a model is loaded, the
/// consumer group gave every stream thread of this instance its assignment
/// (possibly empty, when the group has more members than partitions) and
/// every assigned partition's state is restored from the changelog. Not ready while waiting for the
/// first assignment, between a revocation and the next assignment (a
/// rebalance), while any partition restores or state is rebuilt after an
/// aborted transaction, while stopping, or after a fatal stall.
///
/// # Liveness
///
/// Healthy (`/healthz` 200) unless the watchdog found a stall: a client call
/// past `pipeline.call_deadline` (the instance then exits) or no committed
/// cycle for `pipeline.stall_timeout` while records wait.
#[derive(Debug, Default)]
pub struct Health {
    /// A model is loaded.
    pub model_loaded: AtomicBool,
    /// Stream threads whose current assignment is received and every
    /// partition of it restored.
    pub assigned: AtomicUsize,
    /// Stream threads in the instance.
    pub threads: AtomicUsize,
    /// Partitions being restored right now.
    pub restoring: AtomicUsize,
    /// The instance is stopping.
    pub stopping: AtomicBool,
    /// No committed cycle for `pipeline.stall_timeout` while records wait.
    pub stalled: AtomicBool,
    /// A client call overran its deadline; the process is exiting.
    pub fatal: AtomicBool,
}

impl Health {
    /// See [the type's docs](Health).
    pub fn ready(&self) -> bool {
        self.model_loaded.load(Ordering::Relaxed)
            && self.threads.load(Ordering::Relaxed) > 0
            && self.assigned.load(Ordering::Relaxed) >= self.threads.load(Ordering::Relaxed)
            && self.restoring.load(Ordering::Relaxed) == 0
            && !self.stopping.load(Ordering::Relaxed)
            && self.healthy()
    }

    /// See [the type's docs](Health).
    pub fn healthy(&self) -> bool {
        !self.stalled.load(Ordering::Relaxed) && !self.fatal.load(Ordering::Relaxed)
    }
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Metrics) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "Serving /healthz, /readyz and /metrics.");
    }
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "Accepting an HTTP connection failed.");
                continue;
            }
        };
        let health = health.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut read = 0;
            // Read until the end of the request line and headers (or 2 KiB).
            while read < buf.len() {
                match stream.read(&mut buf[read..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
                if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let request = String::from_utf8_lossy(&buf[..read]);
            let path = request
                .lines()
                .next()
                .and_then(|l| {
                    let mut parts = l.split_whitespace();
                    (parts.next() == Some("GET"))
                        .then(|| parts.next())
                        .flatten()
                })
                .unwrap_or("");
            let (status, content_type, body) = match path {
                "/healthz" if health.healthy() => ("200 OK", "text/plain", "ok\n".to_string()),
                "/healthz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "unhealthy: stalled (no committed cycle while records wait, or a Kafka call past its deadline)\n"
                        .to_string(),
                ),
                "/readyz" if health.ready() => ("200 OK", "text/plain", "ready\n".to_string()),
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready: waiting for a model, a partition assignment or a partition restore\n".to_string(),
                ),
                "/metrics" => {
                    metrics.ready.set(i64::from(health.ready()));
                    (
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        metrics.render(),
                    )
                }
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
