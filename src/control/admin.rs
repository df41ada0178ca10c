//! The admin HTTP listener: `/metrics` (Prometheus text format), `/healthz` (the process
//! answers) and `/readyz` (every required policy is on disk). It serves no value and changes
//! nothing, so it needs no authentication; it listens on loopback unless configured otherwise.
//!
//! Whoever can reach the port is a neighbour, and may be hostile: a flood of idle or
//! half-sent connections must cost the agent neither its file descriptors (store reads and
//! bundle writes need them) nor its health probe. So the listener holds at most
//! [`MAX_CONNECTIONS`] at once, and when a new one comes at the limit it drops the oldest
//! (a probe's request is read within a moment of connecting, so the oldest is the idlest); a
//! request's head must arrive within [`HEADER_TIMEOUT`]; every connection serves one request
//! and ends within [`CONNECTION_DEADLINE`]; and a failing `accept` (out of descriptors, say)
//! is logged at most once per [`ACCEPT_LOG_EVERY`], with a count of what was not logged.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::report::Recorder;

/// Connections served at once: scrapers and probes need a handful.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last, reading the request and writing the answer included.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// At most one warning about failing accepts this often.
pub const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Serves until dropped. Each connection is a task of its own, so a slow client delays no
/// one; connections end when the server task is aborted.
pub async fn serve(listener: TcpListener, recorder: Arc<Recorder>) {
    let mut connections = tokio::task::JoinSet::new();
    // Oldest first: what is dropped when a new connection comes at the limit.
    let mut open: VecDeque<tokio::task::AbortHandle> = VecDeque::new();
    let mut failures = AcceptFailures::default();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                failures.failed(&e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        failures.accepted();
        while connections.try_join_next().is_some() {}
        open.retain(|handle| !handle.is_finished());
        while open.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = open.pop_front() {
                oldest.abort();
            }
        }
        let recorder = recorder.clone();
        let handle = connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let recorder = recorder.clone();
                async move { Ok::<_, Infallible>(respond(&request, &recorder)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
        });
        open.push_back(handle);
    }
}

/// Rate-limits the warning about failing accepts.
#[derive(Debug, Default)]
struct AcceptFailures {
    last_warning: Option<Instant>,
    unreported: u64,
}

impl AcceptFailures {
    fn failed(&mut self, error: &std::io::Error) {
        let now = Instant::now();
        if self.last_warning.is_some_and(|at| now.duration_since(at) < ACCEPT_LOG_EVERY) {
            self.unreported += 1;
            return;
        }
        tracing::warn!(error = %error, unreported = self.unreported, "admin listener: accept failed");
        self.last_warning = Some(now);
        self.unreported = 0;
    }

    fn accepted(&mut self) {
        if self.unreported > 0 {
            tracing::info!(unreported = self.unreported, "admin listener: accepting again");
            self.unreported = 0;
        }
    }
}

fn respond<B>(request: &Request<B>, recorder: &Recorder) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, recorder.metrics.render());
            response
                .headers_mut()
                .insert("content-type", "text/plain; version=0.0.4; charset=utf-8".parse().expect("a header value"));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            // Readiness is the files on disk; a clock beyond max_clock_skew is said beside it.
            let warnings: String = recorder.clock_warnings().iter().map(|w| format!("{w}\n")).collect();
            if recorder.is_ready() {
                text(StatusCode::OK, format!("ready\n{warnings}"))
            } else {
                let waiting = recorder.waiting_for();
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: waiting for {}\n{warnings}", waiting.join(", ")),
                )
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "text/plain; charset=utf-8".parse().expect("a header value"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn accept_failures_are_logged_once_a_minute() {
        let mut failures = AcceptFailures::default();
        let error = std::io::Error::from_raw_os_error(24);
        failures.failed(&error);
        let first = failures.last_warning;
        for _ in 0..100 {
            failures.failed(&error);
        }
        assert_eq!((failures.last_warning, failures.unreported), (first, 100));
        tokio::time::advance(ACCEPT_LOG_EVERY).await;
        failures.failed(&error);
        assert_eq!(failures.unreported, 0);
        assert_ne!(failures.last_warning, first);
    }
}
