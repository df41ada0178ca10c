//! The public handle: build, start, inspect, drive and stop an emulator.
//!
//! An [`Emulator`] owns one server task bound to `127.0.0.1`. Dropping it (or calling
//! [`Emulator::shutdown`]) stops the server and every open connection; nothing outlives its
//! owner. All inspection and fault methods are synchronous — they touch shared state, never
//! the network — so the blocking wrapper can offer the same methods.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{Identities, Role};
use crate::clock::Clock;
use crate::counts::{Counters, RequestCounts};
use crate::faults::{Faults, QuotaKind};
use crate::server::serve;
use crate::service::App;
use crate::store::Store;

/// Why an emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding 127.0.0.1:{port}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the bound address")]
    LocalAddr(#[source] std::io::Error),
    #[error("project id {0:?} is not valid: it must be non-empty and not all digits (that is a project number)")]
    ProjectId(String),
    #[error("starting the blocking emulator's runtime")]
    Runtime(#[source] std::io::Error),
}

/// Configuration of an emulator; see [`Emulator::builder`].
#[derive(Debug, Clone)]
pub struct EmulatorBuilder {
    project_id: String,
    project_number: u64,
    allow_anonymous: bool,
    port: u16,
    quotas: [Option<u32>; 3],
}

impl Default for EmulatorBuilder {
    fn default() -> Self {
        EmulatorBuilder {
            project_id: "emulator-project".to_owned(),
            project_number: 123_456_789_012,
            allow_anonymous: false,
            port: 0,
            quotas: [None; 3],
        }
    }
}

impl EmulatorBuilder {
    /// The project ID accepted in request paths (besides the number).
    pub fn project_id(mut self, project_id: impl Into<String>) -> Self {
        self.project_id = project_id.into();
        self
    }

    /// The project number: accepted in paths and used in every returned name and message.
    pub fn project_number(mut self, project_number: u64) -> Self {
        self.project_number = project_number;
        self
    }

    /// Lets requests without credentials through as an admin (for benchmarks). Requests that
    /// do carry a token are still checked. Default: false.
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.allow_anonymous = allow;
        self
    }

    /// The port to bind on 127.0.0.1. Default 0: any free port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Enforces a per-minute quota of `kind` (off by default). [`Faults::clear`] and reset
    /// return to these values.
    pub fn quota(mut self, kind: QuotaKind, per_minute: u32) -> Self {
        self.quotas[kind as usize] = Some(per_minute);
        self
    }

    /// Enforces Google's published quotas: 90,000 access, 600 read, 600 write per minute.
    pub fn google_quotas(mut self) -> Self {
        for kind in QuotaKind::ALL {
            self.quotas[kind as usize] = Some(kind.google_limit());
        }
        self
    }

    /// Binds `127.0.0.1:port` and starts serving on the current tokio runtime.
    pub async fn start(self) -> Result<Emulator, StartError> {
        if self.project_id.is_empty() || self.project_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StartError::ProjectId(self.project_id));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, self.port))
            .await
            .map_err(|source| StartError::Bind { port: self.port, source })?;
        let address = listener.local_addr().map_err(StartError::LocalAddr)?;
        let app = Arc::new(App {
            project_id: self.project_id,
            project_number: self.project_number,
            base_url: format!("http://{address}"),
            allow_anonymous: self.allow_anonymous,
            clock: Clock::default(),
            store: Mutex::new(Store::new(self.project_number)),
            identities: Mutex::new(Identities::default()),
            faults: Faults::with_quotas(self.quotas),
            counters: Counters::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, app.clone(), stopped));
        Ok(Emulator { app, address, stop, server: Some(server) })
    }
}

/// A running Secret Manager emulator. Stops on drop.
#[derive(Debug)]
pub struct Emulator {
    app: Arc<App>,
    address: SocketAddr,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

impl Emulator {
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder::default()
    }

    /// `http://127.0.0.1:PORT`: the Secret Manager REST root (`/v1/…`), for global and
    /// regional paths alike.
    pub fn base_url(&self) -> String {
        self.app.base_url.clone()
    }

    /// `http://127.0.0.1:PORT/token`, the OAuth token endpoint written into key files.
    pub fn token_uri(&self) -> String {
        self.app.token_uri()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    pub fn project_id(&self) -> &str {
        &self.app.project_id
    }

    pub fn project_number(&self) -> u64 {
        self.app.project_number
    }

    /// A new service-account JSON key file for `email` (RSA 2048, PKCS#8 PEM, `token_uri`
    /// pointing here). The emulator keeps the public half and grants `role` project-wide;
    /// calling again for the same email adds a key and replaces the role.
    ///
    /// # Panics
    /// If aws-lc fails to generate an RSA key, which leaves nothing sensible to return.
    pub fn service_account_key(&self, email: &str, role: Role) -> String {
        self.app.create_service_account_key(email, role).expect("aws-lc-rs RSA-2048 key generation")
    }

    /// A valid access token for `email` with `role`, skipping the JWT exchange — for tests
    /// that call the REST API directly.
    ///
    /// # Panics
    /// If the system random generator fails.
    pub fn access_token(&self, email: &str, role: Role) -> String {
        let now = self.app.clock.now();
        self.app.lock_identities().issue_token_directly(email, role, now).expect("system random generator")
    }

    /// The fault-injection handle. Clones drive the same emulator.
    pub fn faults(&self) -> Faults {
        self.app.faults.clone()
    }

    pub fn request_counts(&self) -> RequestCounts {
        self.app.counters.snapshot()
    }

    /// Moves the emulator's clock forward: tokens expire, scheduled destructions and
    /// expirations happen, quota windows roll — without sleeping.
    pub fn advance_clock(&self, by: Duration) {
        self.app.clock.advance(by);
    }

    /// Clears secrets, faults (back to the built quotas), request counts and tokens. Service
    /// accounts and their keys stay valid.
    pub fn reset(&self) {
        self.app.reset();
    }

    /// Stops accepting, closes every connection, and waits until the listener is closed.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            // Aborting drops the listener and the JoinSet of connections with it.
            server.abort();
        }
    }
}
