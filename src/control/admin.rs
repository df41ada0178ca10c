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

use crate::engine::Shared;

/// Serves until dropped. Each connection is a task of its own, so a slow client delays no
/// one; connections end when the server task is aborted.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
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
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&request, &shared)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn respond<B>(request: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, shared.metrics.render());
            response
                .headers_mut()
                .insert("content-type", "text/plain; version=0.0.4; charset=utf-8".parse().expect("a header value"));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            if shared.is_ready() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                let waiting: Vec<String> = shared
                    .status()
                    .policies
                    .iter()
                    .filter(|(_, p)| p.required && p.version.is_none())
                    .map(|(name, _)| name.clone())
                    .collect();
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
