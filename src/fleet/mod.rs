//! The fleet's view: which node holds which version of a secret, read from Prometheus' HTTP
//! query API over the series every agent exports (see [`crate::report::metrics`]). It answers
//! `keyturn fleet status` and, for a rotator, whether an old version may be retired
//! ([`crate::rotation::protocol::Adoption`]).
//!
//! Two instant queries per secret, whatever the fleet's size:
//!
//! - `last_over_time(keyturn_secret_delivered_timestamp_seconds{store, secret}[lookback])`:
//!   every (node, policy, version) seen within `lookback`, with when the node delivered it.
//!   A node's version is the one it delivered last (versions never go backwards on a node).
//! - the same series without a range: those still reported now. A node that is not is
//!   *silent* (Prometheus marks a target's series stale on its first failed scrape); when it
//!   was last seen is asked only for the silent ones (`timestamp()` over a subquery).
//!
//! The fleet's *newest* version is the one whose first delivery anywhere is the latest; a node
//! *lags* while it holds another. That needs no ordering of version ids, so it holds for stores
//! whose versions are not numbers.

pub mod prometheus;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::{Prometheus, any_of, quote};

use crate::config::Fleet as FleetConfig;
use crate::rotation::protocol::{Adoption, Holders};
use crate::secret::VersionId;

/// The series the fleet's view is read from.
pub const DELIVERED: &str = "keyturn_secret_delivered_timestamp_seconds";

/// The fleet's Prometheus, with how nodes are named in it.
#[derive(Debug)]
pub struct Client {
    prometheus: Prometheus,
    node_label: String,
    silent_after: Duration,
    lookback: Duration,
}

/// What one node holds for one policy naming the secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holding {
    pub node: String,
    pub policy: String,
    pub version: String,
    /// When the node delivered it.
    #[serde(serialize_with = "rfc3339")]
    pub delivered: SystemTime,
    /// `None` while the node reports; when it was last seen once it stopped.
    #[serde(serialize_with = "optional_rfc3339")]
    pub silent_since: Option<SystemTime>,
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::clock::rfc3339(*time))
}

fn optional_rfc3339<S: serde::Serializer>(time: &Option<SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => rfc3339(time, serializer),
        None => serializer.serialize_none(),
    }
}

/// One secret across the fleet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretView {
    pub store: String,
    pub secret: String,
    /// The version nodes moved to last, and when the first node did.
    pub newest: Option<String>,
    #[serde(serialize_with = "optional_rfc3339")]
    pub newest_since: Option<SystemTime>,
    /// Every node's holding, by node then policy.
    pub holdings: Vec<Holding>,
}

impl SecretView {
    /// Reporting nodes by version, newest version first.
    pub fn versions(&self) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for holding in self.holdings.iter().filter(|h| h.silent_since.is_none()) {
            *counts.entry(&holding.version).or_default() += 1;
        }
        let mut versions: Vec<(String, usize)> = counts.into_iter().map(|(v, n)| (v.to_string(), n)).collect();
        versions.sort_by_key(|(v, _)| (Some(v) != self.newest.as_ref(), std::cmp::Reverse(v.clone())));
        versions
    }

    /// Reporting nodes that hold another version than the newest.
    pub fn lagging(&self) -> impl Iterator<Item = &Holding> {
        self.holdings.iter().filter(|h| h.silent_since.is_none() && Some(&h.version) != self.newest.as_ref())
    }

    /// Nodes that stopped reporting.
    pub fn silent(&self) -> impl Iterator<Item = &Holding> {
        self.holdings.iter().filter(|h| h.silent_since.is_some())
    }
}

impl Client {
    pub fn new(config: &FleetConfig, google: Option<prometheus::GoogleTokens>) -> Result<Client, String> {
        Ok(Client {
            prometheus: Prometheus::new(config, google)?,
            node_label: config.node_label.clone(),
            silent_after: config.silent_after,
            lookback: config.lookback,
        })
    }

    /// Where the view is read, for messages.
    pub fn shown(&self) -> String {
        self.prometheus.shown()
    }

    pub fn silent_after(&self) -> Duration {
        self.silent_after
    }

    /// Which node holds which version of `secret` in `store`, and which version is newest.
    pub async fn secret(&self, store: &str, secret: &str) -> Result<SecretView, String> {
        let selector = format!("{{store=\"{}\",secret=\"{}\"}}", quote(store), quote(secret));
        let seen = self
            .prometheus
            .query(&format!("last_over_time({DELIVERED}{selector}[{}])", promql_duration(self.lookback)))
            .await?;
        let live = self.prometheus.query(&format!("{DELIVERED}{selector}")).await?;
        let key = |labels: &BTreeMap<String, String>| {
            let get = |name: &str| labels.get(name).cloned().unwrap_or_default();
            (get(&self.node_label), get("policy"), get("version"))
        };
        let live: std::collections::BTreeSet<_> = live.iter().map(|s| key(&s.labels)).collect();

        // Each node's version for each policy: the one it delivered last.
        let mut latest: BTreeMap<(String, String), Holding> = BTreeMap::new();
        let mut first_delivery: BTreeMap<String, SystemTime> = BTreeMap::new();
        for sample in &seen {
            let (node, policy, version) = key(&sample.labels);
            if node.is_empty() {
                continue;
            }
            let delivered = sample.time();
            first_delivery.entry(version.clone()).and_modify(|t| *t = (*t).min(delivered)).or_insert(delivered);
            let holding =
                Holding { node: node.clone(), policy: policy.clone(), version, delivered, silent_since: None };
            match latest.get(&(node.clone(), policy.clone())) {
                Some(held) if held.delivered >= delivered => {}
                _ => {
                    latest.insert((node, policy), holding);
                }
            }
        }
        let mut holdings: Vec<Holding> = latest.into_values().collect();
        let silent: Vec<&str> = holdings
            .iter()
            .filter(|h| !live.contains(&(h.node.clone(), h.policy.clone(), h.version.clone())))
            .map(|h| h.node.as_str())
            .collect();
        let last_seen = if silent.is_empty() { BTreeMap::new() } else { self.last_seen(&selector, &silent).await? };
        for holding in &mut holdings {
            if !live.contains(&(holding.node.clone(), holding.policy.clone(), holding.version.clone())) {
                holding.silent_since = Some(last_seen.get(&holding.node).copied().unwrap_or(holding.delivered));
            }
        }
        // Newest: the version the fleet moved to last, among those a node still holds.
        let newest = holdings
            .iter()
            .filter_map(|h| first_delivery.get(&h.version).map(|at| (at, &h.version)))
            .max()
            .map(|(at, version)| (version.clone(), *at));
        Ok(SecretView {
            store: store.to_string(),
            secret: secret.to_string(),
            newest_since: newest.as_ref().map(|(_, at)| *at),
            newest: newest.map(|(version, _)| version),
            holdings,
        })
    }

    /// When each of `nodes` last reported a series of the secret.
    async fn last_seen(&self, selector: &str, nodes: &[&str]) -> Result<BTreeMap<String, SystemTime>, String> {
        let inner = selector.trim_end_matches('}');
        let selector = format!("{inner},{}=~\"{}\"}}", self.node_label, any_of(nodes.iter().copied()));
        // The subquery's step: fine enough to tell "just now" from "longer than silent_after".
        let step = (self.silent_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let query = format!(
            "max by ({}) (max_over_time(timestamp({DELIVERED}{selector})[{}:{}]))",
            self.node_label,
            promql_duration(self.lookback),
            promql_duration(step)
        );
        let samples = self.prometheus.query(&query).await?;
        Ok(samples.iter().map(|s| (s.label(&self.node_label).to_string(), s.time())).collect())
    }

    /// Who holds `version` of `secret` in `store`: reporting nodes, and nodes silent for less
    /// than `silent_after`, are live (a node that is down for a moment comes back holding
    /// it); nodes silent for longer are gone.
    pub async fn holders(&self, store: &str, secret: &str, version: &str, now: SystemTime) -> Result<Holders, String> {
        let view = self.secret(store, secret).await?;
        let mut holders = Holders::default();
        for holding in view.holdings.into_iter().filter(|h| h.version == version) {
            let gone =
                holding.silent_since.is_some_and(|at| now.duration_since(at).unwrap_or_default() > self.silent_after);
            let list = if gone { &mut holders.gone } else { &mut holders.live };
            if !list.contains(&holding.node) {
                list.push(holding.node);
            }
        }
        Ok(holders)
    }
}

/// The adoption gate of one policy's secret, over the fleet's view.
pub struct SecretAdoption {
    pub client: Arc<Client>,
    pub store: String,
    pub secret: String,
    pub clock: crate::clock::SharedClock,
}

impl std::fmt::Debug for SecretAdoption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretAdoption")
            .field("store", &self.store)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Adoption for SecretAdoption {
    async fn holders(&self, version: &VersionId) -> Result<Holders, String> {
        self.client.holders(&self.store, &self.secret, version.as_str(), self.clock.now()).await
    }
}

/// A duration as PromQL writes one: whole seconds.
fn promql_duration(duration: Duration) -> String {
    format!("{}s", duration.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(node: &str, version: &str, delivered: u64, silent: Option<u64>) -> Holding {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        Holding {
            node: node.into(),
            policy: "signing".into(),
            version: version.into(),
            delivered: at(delivered),
            silent_since: silent.map(at),
        }
    }

    #[test]
    fn lagging_and_silent_nodes_are_told_apart() {
        let view = SecretView {
            store: "edge".into(),
            secret: "signing-key".into(),
            newest: Some("3".into()),
            newest_since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(300)),
            holdings: vec![
                holding("a", "3", 300, None),
                holding("b", "3", 310, None),
                holding("c", "2", 200, None),
                holding("d", "2", 200, Some(250)),
            ],
        };
        assert_eq!(view.versions(), [("3".to_string(), 2), ("2".to_string(), 1)]);
        assert_eq!(view.lagging().map(|h| h.node.as_str()).collect::<Vec<_>>(), ["c"]);
        assert_eq!(view.silent().map(|h| h.node.as_str()).collect::<Vec<_>>(), ["d"]);
    }
}
