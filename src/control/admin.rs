//! The admin HTTP listener: `/metrics` (Prometheus text format), `/healthz` (the process
//! answers) and `/readyz` (every required policy is on disk). It serves no value and changes
//! nothing, so it needs no authentication; it listens on loopback unless configured otherwise.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::report::Recorder;

/// Serves until dropped. Each connection is a task of its own, so a slow client delays no
/// one; connections end when the server task is aborted.
pub async fn serve(listener: TcpListener, recorder: Arc<Recorder>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let recorder = recorder.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let recorder = recorder.clone();
                async move { Ok::<_, Infallible>(respond(&request, &recorder)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
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
            if recorder.is_ready() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                let waiting = recorder.waiting_for();
                text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: waiting for {}\n", waiting.join(", ")))
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
