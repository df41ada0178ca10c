//! `keyturn probe`: how fast a store answers from this node, before a fleet depends on it.
//!
//! For one configured store (and, for Google, each regional endpoint named with `--location`)
//! it measures two things, each on an instance of the store of its own:
//!
//! - First, a cold sync: what a node pays at boot. A store instance nothing has used yet (its
//!   own HTTP client, so new connections, and its own credentials and token exchange) reads
//!   the `current` version of every policy on that store, as many at once as the agent's first
//!   sync. Its time counts everything between the first read starting and the last one ending.
//! - Then, on another fresh instance: getting credentials and a token, the first access of a
//!   secret (connection set-up included), and the p50/p99 of K more accesses over the warm
//!   connection.
//!
//! The cold sync is not the whole of `sync --once`: it reads each policy's own secret once,
//! and leaves out the reads only some policies make (template secrets, a rotating secret's
//! creation time, a JWKS's previous key) and every write. It prints names, versions, counts
//! and times, never a value: each value is dropped as soon as it is read.

use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::engine::SYNC_CONCURRENCY;
use crate::secret::SecretId;
use crate::store::{AnyStore, OpenContext, SecretStore, Selector};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub store: String,
    pub kind: String,
    pub secret: String,
    pub requests: usize,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Endpoint {
    /// The location probed (a region), "global", or "local".
    pub location: String,
    /// Finding credentials and getting a token (Google only), on a store instance of its own.
    pub token_ms: Option<f64>,
    /// Why finding credentials or getting a token failed.
    pub token_error: Option<String>,
    /// The first access after the token: connection set-up and one round trip.
    pub first_access_ms: f64,
    /// Latencies of the accesses after the first (an error answer still measures a round
    /// trip); `None` when every access failed, since then they measure nothing worth knowing.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Accesses made after the token: the first one and the `requests` after it.
    pub accesses: usize,
    /// How many of those failed.
    pub errors: usize,
    pub first_error: Option<String>,
    /// How many policies the cold sync read, and how many of those reads failed.
    pub sync_policies: usize,
    pub sync_errors: usize,
    /// The cold sync, measured first: a store instance nothing has used yet reads every policy,
    /// 32 at a time, so this includes finding credentials, the token exchange and opening
    /// connections, as at a node's boot.
    pub sync_ms: f64,
}

/// Probes `store_name` of `config`, accessing `secret` (default: the first policy's secret on
/// that store) `requests` times per endpoint: the configured endpoint, then each of
/// `locations` where the backend has regional endpoints. Every measurement opens instances of
/// the store of its own.
pub async fn run(
    config: &Config,
    store_name: &str,
    secret: Option<SecretId>,
    requests: usize,
    locations: &[String],
) -> Result<Report, String> {
    let policies: Vec<SecretId> =
        config.policies.iter().filter(|p| p.store == store_name).map(|p| p.secret.clone()).collect();
    let secret = secret
        .or_else(|| policies.first().cloned())
        .ok_or_else(|| format!("no policy uses store \"{store_name}\": name a secret to access with --secret ID"))?;
    let store_config = &config.stores[store_name];
    let endpoints = store_config.probe_endpoints(locations)?;
    let context = OpenContext::default();
    let mut measured = Vec::with_capacity(endpoints.len());
    for (label, endpoint) in &endpoints {
        let open = || AnyStore::open(store_name, endpoint, &context);
        let (cold, warm) = (open().await.map_err(|e| e.to_string())?, open().await.map_err(|e| e.to_string())?);
        measured.push(measure(label, cold, warm, &secret, &policies, requests).await);
    }
    let kind = store_config.kind().to_string();
    Ok(Report { store: store_name.to_string(), kind, secret: secret.to_string(), requests, endpoints: measured })
}

/// Measures one endpoint: the cold sync on `cold`, then token, first access and `requests`
/// more accesses of `secret` on `warm`. Both must be unused.
async fn measure(
    label: &str,
    cold: AnyStore,
    warm: AnyStore,
    secret: &SecretId,
    policies: &[SecretId],
    requests: usize,
) -> Endpoint {
    let mut first_error = None;
    let started = Instant::now();
    let mut sync_errors = 0;
    for result in cold_sync(&cold, policies).await {
        if let Err(e) = result {
            sync_errors += 1;
            first_error.get_or_insert_with(|| crate::error_chain(&e));
        }
    }
    let sync_ms = ms(started.elapsed());
    // Its connections close before the measurements below open their own.
    drop(cold);

    let started = Instant::now();
    let (token_ms, token_error) = match warm.authenticate().await {
        Some(result) => (Some(ms(started.elapsed())), result.err().map(|e| crate::error_chain(&e))),
        None => (None, None),
    };
    let mut errors = 0;
    let mut access = async || {
        let started = Instant::now();
        if let Err(e) = warm.access(secret, &Selector::current()).await {
            errors += 1;
            first_error.get_or_insert_with(|| crate::error_chain(&e));
        }
        started.elapsed()
    };
    let first_access_ms = ms(access().await);
    let mut samples: Vec<Duration> = Vec::with_capacity(requests);
    for _ in 0..requests {
        samples.push(access().await);
    }
    let accesses = requests + 1;
    if errors == accesses {
        samples.clear();
    }
    samples.sort();
    let quantile = |q: f64| samples.get(((samples.len() as f64 - 1.0) * q).round() as usize).map(|d| ms(*d));

    Endpoint {
        location: label.to_string(),
        token_ms,
        token_error,
        first_access_ms,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        max_ms: samples.last().map(|d| ms(*d)),
        accesses,
        errors,
        first_error,
        sync_policies: policies.len(),
        sync_errors,
        sync_ms,
    }
}

/// Reads the `current` version of every policy, [`SYNC_CONCURRENCY`] in flight and the next
/// starting as soon as one ends, as the agent's first sync does. Values are dropped at once.
async fn cold_sync(store: &AnyStore, policies: &[SecretId]) -> Vec<Result<(), crate::store::StoreError>> {
    let limit = Semaphore::new(SYNC_CONCURRENCY);
    let current = Selector::current();
    let reads = policies.iter().map(|id| {
        let (limit, current) = (&limit, &current);
        async move {
            let _permit = limit.acquire().await.expect("the semaphore is never closed");
            store.access(id, current).await.map(drop)
        }
    });
    join_all(reads).await
}

/// Runs futures concurrently on the current task and returns their outputs in order.
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

impl Endpoint {
    /// Whether no access succeeded: the store cannot be read from here.
    pub fn failed_entirely(&self) -> bool {
        self.errors == self.accesses
    }
}

impl Report {
    /// The endpoints no access succeeded on.
    pub fn failed(&self) -> Vec<&str> {
        self.endpoints.iter().filter(|e| e.failed_entirely()).map(|e| e.location.as_str()).collect()
    }

    /// A table for people.
    pub fn render(&self) -> String {
        let mut out = format!(
            "store {} ({}), secret {}, {} accesses per endpoint\n",
            self.store, self.kind, self.secret, self.requests
        );
        out.push_str(&format!(
            "{:<22} {:>9} {:>13} {:>9} {:>9} {:>9} {:>7} {:>16}\n",
            "ENDPOINT", "TOKEN", "FIRST ACCESS", "P50", "P99", "MAX", "ERRORS", "COLD SYNC"
        ));
        let millis = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{v:.1}ms"));
        for e in &self.endpoints {
            out.push_str(&format!(
                "{:<22} {:>9} {:>13} {:>9} {:>9} {:>9} {:>7} {:>16}\n",
                e.location,
                millis(e.token_ms),
                millis(Some(e.first_access_ms)),
                millis(e.p50_ms),
                millis(e.p99_ms),
                millis(e.max_ms),
                format!("{}/{}", e.errors, e.accesses),
                format!("{:.1}ms/{} pol", e.sync_ms, e.sync_policies)
            ));
        }
        out.push_str(&format!(
            "COLD SYNC, measured first: a new client's credentials, token, connections and one read per policy, {SYNC_CONCURRENCY} at a time\n"
        ));
        for e in &self.endpoints {
            if let Some(error) = &e.token_error {
                out.push_str(&format!("{}: token: {error}\n", e.location));
            }
            if let Some(error) = &e.first_error {
                out.push_str(&format!("{}: first error: {error}\n", e.location));
            }
            if e.sync_errors > 0 {
                out.push_str(&format!("{}: {} of {} cold reads failed\n", e.location, e.sync_errors, e.sync_policies));
            }
            if e.failed_entirely() {
                out.push_str(&format!("{}: FAILED: no access succeeded\n", e.location));
            }
        }
        out
    }
}
