//! The accept loop: owns the listener and every connection task, and stops them all on
//! shutdown.
//!
//! Hyper is used directly (HTTP/1.1 only) rather than through a framework because two faults
//! need connection-level control: closing a connection as soon as it is accepted, and closing
//! it after reading a request without answering (the service returns an error, and hyper then
//! drops the connection without writing a response).

use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::service::{App, handle};

/// Serves until `shutdown` flips to true (or its sender is dropped). Connection tasks live in
/// a `JoinSet`, so leaving this function aborts every one of them.
pub(crate) async fn serve(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else {
                    // Accept errors (e.g. too many open files) are transient; keep serving.
                    continue;
                };
                if app.faults.take_connection_drop() {
                    tracing::debug!("fault: closing an accepted connection");
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(app.clone(), request));
                    // Errors here are clients hanging up or injected drops; neither is ours to report.
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}
