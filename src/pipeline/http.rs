//! The HTTP surface: `/healthz`, `/readyz`, `/metrics` and the customer
//! lookup `GET /v1/customers/{id}`, served with axum on hyper's HTTP/1.1
//! server with bounded headers, a header read timeout, a per-request
//! timeout and a cap on open connections (the lookup takes input from the
//! network). No customer id is logged or used as a metric label.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tracing::{info, warn};

use super::directory::{Directory, LookupRequest, Whereabouts};
use crate::telemetry::Metrics;

/// Longest request head (request line and headers) accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A client must send its request head within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a lookup waits for the owning stream thread (between cycles).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Most connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 256;
/// Longest customer id looked up (as the input's validation allows).
const MAX_ID_BYTES: usize = 256;

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

/// What the endpoints need.
#[derive(Clone)]
pub struct Api {
    /// Probes.
    pub health: Arc<Health>,
    /// `/metrics`.
    pub metrics: Metrics,
    /// Lookups.
    pub directory: Arc<Directory>,
}

/// The routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/customers/{id}", get(lookup))
        .with_state(api)
}

/// Serves [`router`] on `listener` until `stop` (connections being served finish on their own).
pub async fn serve(listener: TcpListener, api: Api, stop: tokio::sync::oneshot::Receiver<()>) {
    let mut stop = std::pin::pin!(stop);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "Serving /healthz, /readyz, /metrics and /v1/customers/{{id}}.");
    }
    let app = router(api);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "Accepting an HTTP connection failed.");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move {
                    use tower::ServiceExt as _;
                    let answer = tokio::time::timeout(
                        LOOKUP_TIMEOUT + Duration::from_secs(3),
                        app.oneshot(req),
                    )
                    .await;
                    Ok::<_, std::convert::Infallible>(match answer {
                        Ok(Ok(r)) => r,
                        Ok(Err(never)) => match never {},
                        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out\n").into_response(),
                    })
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            // A client that goes away or sends garbage only ends its own
            // connection.
            let _ = conn.await;
            drop(permit);
        });
    }
}

async fn healthz(State(api): State<Api>) -> Response {
    if api.health.healthy() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: stalled (no committed cycle while records wait, or a Kafka call past its deadline)\n",
        )
            .into_response()
    }
}

async fn readyz(State(api): State<Api>) -> Response {
    if api.health.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for a model, a partition assignment or a partition restore\n",
        )
            .into_response()
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    api.metrics.ready.set(i64::from(api.health.ready()));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        api.metrics.render(),
    )
        .into_response()
}

fn answer(
    status: StatusCode,
    outcome: &'static str,
    api: &Api,
    body: serde_json::Value,
) -> Response {
    api.metrics.lookups.with_label_values(&[outcome]).inc();
    let mut r = (status, Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// `GET /v1/customers/{id}`: the customer's current classification from the
/// owning stream thread's state (200), 404 when that partition has no state
/// for them, 307 to the owning instance when another one owns them, 503
/// while their partition restores or its owner is unknown, 400 for an
/// unusable id.
async fn lookup(State(api): State<Api>, Path(id): Path<String>) -> Response {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return answer(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &api,
            json!({"error": format!("a customer id is 1 to {MAX_ID_BYTES} bytes without control characters")}),
        );
    }
    let Some(partition) = api.directory.partition_of(&id) else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            &api,
            json!({"customer_id": id, "error": "the instance is starting (topics not checked yet)"}),
        );
    };
    match api.directory.whereabouts(partition) {
        Whereabouts::Local(owned) if owned.restoring => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "restoring",
            &api,
            json!({
                "customer_id": id,
                "partition": partition,
                "error": format!("partition {partition} is restoring its state from the changelog; retry shortly"),
            }),
        ),
        Whereabouts::Local(owned) => {
            let Some(thread) = api.directory.thread(owned.thread) else {
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    &api,
                    json!({"customer_id": id, "partition": partition, "error": "no stream thread to ask"}),
                );
            };
            let (tx, rx) = oneshot::channel();
            let request = LookupRequest {
                customer_id: api.directory.stored_id(&id),
                partition,
                reply: tx,
            };
            if thread.try_send(request).is_err() {
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    &api,
                    json!({"customer_id": id, "partition": partition, "error": "too many lookups waiting; retry shortly"}),
                );
            }
            match tokio::time::timeout(LOOKUP_TIMEOUT, rx).await {
                Ok(Ok(Some(mut found))) => {
                    if let Some(obj) = found.as_object_mut() {
                        obj.insert("owner".into(), json!(api.directory.advertised_url()));
                    }
                    answer(StatusCode::OK, "found", &api, found)
                }
                Ok(Ok(None)) => answer(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &api,
                    json!({
                        "customer_id": id,
                        "partition": partition,
                        "error": "no state for this customer in its partition (never seen, or evicted)",
                    }),
                ),
                // The partition moved away while asking, or the thread is
                // inside a long cycle.
                Ok(Err(_)) | Err(_) => answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    &api,
                    json!({"customer_id": id, "partition": partition, "error": "the owning stream thread did not answer in time; retry shortly"}),
                ),
            }
        }
        Whereabouts::Remote(Some(url)) => {
            let location = format!("{url}/v1/customers/{}", encode_segment(&id));
            let mut r = answer(
                StatusCode::TEMPORARY_REDIRECT,
                "redirected",
                &api,
                json!({"customer_id": id, "partition": partition, "owner": url}),
            );
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Whereabouts::Remote(None) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "owner_unknown",
            &api,
            json!({
                "customer_id": id,
                "partition": partition,
                "owner": null,
                "error": format!("partition {partition} is not owned by this instance and its owner is not known \
                                  (a rebalance, or the owner advertises no pipeline.advertised_url)"),
            }),
        ),
    }
}

/// Percent-encodes a path segment (everything but unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_segment("cust-1_a.b~"), "cust-1_a.b~");
        assert_eq!(encode_segment("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
    }
}
