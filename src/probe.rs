//! `keyturn probe`: how fast a store answers from this node, before a fleet depends on it.
//!
//! For one configured store (and, for Google, each regional endpoint named with `--location`)
//! it measures: getting credentials and a token, the first access of a secret (connection
//! and TLS set-up included), the p50/p99 of K more accesses, and a cold pass over every policy
//! of that store — the reads of `sync --once` without writing any file. It prints names,
//! versions, counts and times, never a value: each value is dropped as soon as it is read.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Config, StoreConfig};
use crate::secret::SecretId;
use crate::store::gcp::GcpStore;
use crate::store::{AnyStore, SecretStore, Selector};

/// How many policies the cold pass reads at once, as the agent's first sync does.
const SYNC_CONCURRENCY: usize = 32;

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
    /// The location probed, or "global" / "local".
    pub location: String,
    /// Finding credentials and getting a token (Google only).
    pub token_ms: Option<f64>,
    pub first_access_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Accesses that failed (an error answer still measures the round trip).
    pub errors: usize,
    pub first_error: Option<String>,
    /// Reading every policy of this store once, 32 at a time.
    pub sync_policies: usize,
    pub sync_ms: f64,
}

/// Probes `store_name` of `config`, accessing `secret` (default: the first policy's secret on
/// that store) `requests` times per endpoint.
pub async fn run(
    config: &Config,
    store_name: &str,
    store: AnyStore,
    secret: Option<SecretId>,
    requests: usize,
    locations: &[String],
) -> Result<Report, String> {
    let policies: Vec<SecretId> =
        config.policies.iter().filter(|p| p.store == store_name).map(|p| p.secret.clone()).collect();
    let secret = secret
        .or_else(|| policies.first().cloned())
        .ok_or_else(|| format!("no policy uses store \"{store_name}\": name a secret to access with --secret ID"))?;
    let mut endpoints = vec![measure(&store, &secret, &policies, requests, None).await];
    if !locations.is_empty() {
        let StoreConfig::Gcp(gcp) = &config.stores[store_name] else {
            return Err("--location applies to Google Secret Manager stores only".into());
        };
        for location in locations {
            let regional = crate::config::GcpStoreConfig { location: Some(location.clone()), ..gcp.clone() };
            let store = AnyStore::Gcp(GcpStore::new(store_name, &regional).map_err(|e| e.to_string())?);
            endpoints.push(measure(&store, &secret, &policies, requests, Some(location)).await);
        }
    }
    let kind = config.stores[store_name].kind().to_string();
    Ok(Report { store: store_name.to_string(), kind, secret: secret.to_string(), requests, endpoints })
}

async fn measure(
    store: &AnyStore,
    secret: &SecretId,
    policies: &[SecretId],
    requests: usize,
    location: Option<&String>,
) -> Endpoint {
    let label = match (store, location) {
        (_, Some(location)) => location.clone(),
        (AnyStore::Gcp(_), None) => "global".into(),
        (AnyStore::File(_), None) => "local".into(),
    };
    let mut errors = 0;
    let mut first_error = None;
    let token_ms = match store {
        AnyStore::Gcp(gcp) => {
            let started = Instant::now();
            if let Err(e) = gcp.token_ready().await {
                errors += 1;
                first_error = Some(crate::error_chain(&e));
            }
            Some(ms(started.elapsed()))
        }
        AnyStore::File(_) => None,
    };
    let mut access = async || {
        let started = Instant::now();
        if let Err(e) = store.access(secret, &Selector::current()).await {
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
    samples.sort();
    let quantile = |q: f64| samples.get(((samples.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |d| ms(*d));

    // The cold pass: every policy of the store, as the agent's first sync reads them.
    let started = Instant::now();
    let current = Selector::current();
    for chunk in policies.chunks(SYNC_CONCURRENCY) {
        let reads = chunk.iter().map(|id| store.access(id, &current));
        for result in join_all(reads).await {
            if result.is_err() {
                errors += 1;
            }
        }
    }
    let sync_ms = ms(started.elapsed());

    Endpoint {
        location: label,
        token_ms,
        first_access_ms,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        max_ms: samples.last().map_or(0.0, |d| ms(*d)),
        errors,
        first_error,
        sync_policies: policies.len(),
        sync_ms,
    }
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

impl Report {
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
        for e in &self.endpoints {
            let token = e.token_ms.map_or("-".to_string(), |t| format!("{t:.1}ms"));
            out.push_str(&format!(
                "{:<22} {:>9} {:>11.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7} {:>16}\n",
                e.location,
                token,
                e.first_access_ms,
                e.p50_ms,
                e.p99_ms,
                e.max_ms,
                e.errors,
                format!("{:.1}ms/{} pol", e.sync_ms, e.sync_policies)
            ));
        }
        for e in self.endpoints.iter().filter(|e| e.first_error.is_some()) {
            out.push_str(&format!("{}: first error: {}\n", e.location, e.first_error.as_deref().unwrap_or("")));
        }
        out
    }
}
