//! Prometheus metrics, declared once here and nowhere else.
//!
//! Names follow Prometheus conventions: the `keyturn_` prefix, `_total` counters (the crate
//! adds the suffix), `_timestamp_seconds` gauges. Labels are low-cardinality names: policy,
//! store, method, notifier, result; a version is an opaque id, never a value. The store
//! counters are filled by [`crate::store::Metered`], a wrapper around the store, not by the
//! code that calls it. Process metrics are read from `/proc` at each scrape.
//!
//! The fleet's view (`keyturn fleet status`, adoption-gated retirement, the dashboard and the
//! alert rules in `examples/monitoring/`) is built from two families that name the node, the
//! store and the secret as well as the policy: `keyturn_secret_info` and
//! `keyturn_secret_delivered_timestamp_seconds`, one series per policy per node (the series of
//! a replaced version is removed, so a rotation adds no series). `node` is the agent's own
//! `[agent] node`, so a query needs no relabelling; a scrape configuration that attaches a
//! `node` target label too makes Prometheus rename this one `exported_node` (set `[fleet]
//! node_label` to match).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub policy: String,
}

/// Which version of which secret a node holds for a policy.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretVersion {
    pub node: String,
    pub policy: String,
    pub store: String,
    pub secret: String,
    pub version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

/// A version whose retirement waits for the nodes that still hold it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct Retiring {
    pub policy: String,
    pub store: String,
    pub secret: String,
    pub version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyResult {
    pub policy: String,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    pub store: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreRequest {
    pub store: String,
    pub method: &'static str,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Notification {
    pub policy: String,
    pub notifier: &'static str,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

type Timestamp = Gauge<f64, AtomicU64>;

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Per policy, the version on disk and since when: `keyturn_secret_info` and
    /// `keyturn_secret_delivered_timestamp_seconds`, encoded from this one table at each
    /// scrape (see [`OnDisk`]).
    on_disk: OnDisk,
    /// The agent's poll interval: how long a node may take to pick up a change.
    pub poll_interval: Family<NodeLabel, Gauge<f64, AtomicU64>>,
    /// Reads that named an older version than the one on disk, refused.
    pub regressions_refused: Family<PolicyLabel, Counter>,
    /// On the node that rotated: how many nodes still hold a version whose retirement waits.
    pub retirement_waiting_nodes: Family<Retiring, Gauge>,
    pub retirement_waiting_since: Family<Retiring, Timestamp>,
    /// The labels of the two families above, to remove them.
    waiting: std::sync::Mutex<std::collections::BTreeSet<Retiring>>,
    /// Old versions retired (disabled), by how: retired, retired_after_wait, revoked.
    pub retirements: Family<PolicyResult, Counter>,
    pub deliveries: Family<PolicyResult, Counter>,
    pub rotations: Family<PolicyResult, Counter>,
    pub store_requests: Family<StoreRequest, Counter>,
    /// This node's clock minus each remote store's, in seconds: absent for a store on this
    /// node's own clock (the file store) and until a store has answered.
    pub clock_skew: Family<StoreLabel, Gauge<f64, AtomicU64>>,
    pub last_success: Family<PolicyLabel, Timestamp>,
    pub next_rotation: Family<PolicyLabel, Timestamp>,
    pub notifications: Family<Notification, Counter>,
    pub report_events: Family<ResultLabel, Counter>,
    pub report_spool: Gauge,
    /// 1 once every required policy has been delivered.
    pub ready: Gauge,
    /// Seconds since the version on disk was sealed, for a policy rebuilt from the cache and
    /// not yet read from its store; absent otherwise.
    pub stale: Family<PolicyLabel, Gauge<f64, AtomicU64>>,
    pub config_reloads: Family<ResultLabel, Counter>,
    /// 1 when the files on disk are the configuration the agent runs, 0 after a refused reload.
    pub config_last_reload_successful: Gauge,
    pub config_last_reload_success: Timestamp,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics {
            on_disk: OnDisk::default(),
            poll_interval: Family::default(),
            regressions_refused: Family::default(),
            retirement_waiting_nodes: Family::default(),
            retirement_waiting_since: Family::default(),
            waiting: Default::default(),
            retirements: Family::default(),
            deliveries: Family::default(),
            rotations: Family::default(),
            store_requests: Family::default(),
            clock_skew: Family::default(),
            last_success: Family::default(),
            next_rotation: Family::default(),
            notifications: Family::default(),
            report_events: Family::default(),
            report_spool: Gauge::default(),
            ready: Gauge::default(),
            stale: Family::default(),
            config_reloads: Family::default(),
            config_last_reload_successful: Gauge::default(),
            config_last_reload_success: Timestamp::default(),
            registry: Registry::default(),
        };
        registry.register_collector(Box::new(metrics.on_disk.clone()));
        registry.register(
            "keyturn_poll_interval_seconds",
            "How often the agent reads its stores: a node picks up a change within one poll",
            metrics.poll_interval.clone(),
        );
        registry.register(
            "keyturn_version_regressions_refused",
            "Store reads that named an older version than the one on disk (a lagging replica), refused: the newer files stay",
            metrics.regressions_refused.clone(),
        );
        registry.register(
            "keyturn_retirement_waiting_nodes",
            "On the node that rotated: nodes that still hold an old version whose retirement waits for them",
            metrics.retirement_waiting_nodes.clone(),
        );
        registry.register(
            "keyturn_retirement_waiting_since_timestamp_seconds",
            "When the retirement of an old version began to wait for the nodes that hold it",
            metrics.retirement_waiting_since.clone(),
        );
        registry.register(
            "keyturn_retirements",
            "Old versions disabled by this node, by how (retired, retired_after_wait, revoked)",
            metrics.retirements.clone(),
        );
        registry.register(
            "keyturn_deliveries",
            "Bundle updates per policy, by result (ok, error)",
            metrics.deliveries.clone(),
        );
        registry.register(
            "keyturn_rotations",
            "Rotation attempts per policy, by result (ok, busy, error)",
            metrics.rotations.clone(),
        );
        registry.register(
            "keyturn_store_requests",
            "Requests to secret stores, by store, method and result (ok, error)",
            metrics.store_requests.clone(),
        );
        registry.register(
            "keyturn_clock_skew_seconds",
            "How far this node's clock is ahead of each store's (negative: behind), measured from the Date of the store's answers; absent for a store on this node's own clock",
            metrics.clock_skew.clone(),
        );
        registry.register(
            "keyturn_last_success_timestamp_seconds",
            "When each policy was last read from its store and is on disk",
            metrics.last_success.clone(),
        );
        registry.register(
            "keyturn_next_rotation_timestamp_seconds",
            "When this node will next try to rotate each policy it rotates",
            metrics.next_rotation.clone(),
        );
        registry.register(
            "keyturn_notifications",
            "Notifications to applications, by policy, notifier and result (ok, skipped, error)",
            metrics.notifications.clone(),
        );
        registry.register(
            "keyturn_report_events",
            "Central report events, by result (spooled, sent, dropped)",
            metrics.report_events.clone(),
        );
        registry.register(
            "keyturn_report_spool_events",
            "Events waiting in the spool to be sent",
            metrics.report_spool.clone(),
        );
        registry.register("keyturn_ready", "1 once every required policy has been delivered", metrics.ready.clone());
        registry.register(
            "keyturn_secret_stale_seconds",
            "How old the files on disk are, for a policy rebuilt from the sealed cache whose store has not answered yet",
            metrics.stale.clone(),
        );
        registry.register(
            "keyturn_config_reloads",
            "Configuration reloads, by result (ok, unchanged, error: refused, the running configuration stays)",
            metrics.config_reloads.clone(),
        );
        registry.register(
            "keyturn_config_last_reload_successful",
            "1 when the configuration files are what the agent runs; 0 after a reload was refused",
            metrics.config_last_reload_successful.clone(),
        );
        registry.register(
            "keyturn_config_last_reload_success_timestamp_seconds",
            "When the running configuration was loaded",
            metrics.config_last_reload_success.clone(),
        );
        let started = crate::clock::unix_seconds(crate::clock::Clock::now(&crate::clock::SystemClock));
        registry.register_collector(Box::new(Process { started }));
        Metrics { registry, ..metrics }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    /// Records which version of a policy is on disk, and since when, replacing the series of
    /// the version before.
    pub fn delivered(&self, held: SecretVersion, since: std::time::SystemTime) {
        let since = crate::clock::unix_seconds(since);
        let SecretVersion { node, policy, store, secret, version } = held;
        let mut on_disk = self.on_disk.lock();
        if on_disk.node != node {
            on_disk.node = node;
        }
        on_disk.policies.insert(policy, Holding { store, secret, version, since });
    }

    /// Records that `policy` was read and is on disk, at `at`.
    pub fn success_at(&self, policy: &str, at: std::time::SystemTime) {
        self.last_success.get_or_create(&PolicyLabel { policy: policy.into() }).set(crate::clock::unix_seconds(at));
    }

    /// Forgets every series of a policy that is no longer configured.
    pub fn forget(&self, policy: &str) {
        self.on_disk.lock().policies.remove(policy);
        self.last_success.remove(&PolicyLabel { policy: policy.into() });
        self.next_rotation.remove(&PolicyLabel { policy: policy.into() });
        self.stale.remove(&PolicyLabel { policy: policy.into() });
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        for labels in waiting.iter().filter(|r| r.policy == policy) {
            self.retirement_waiting_nodes.remove(labels);
            self.retirement_waiting_since.remove(labels);
        }
        waiting.retain(|r| r.policy != policy);
    }

    /// A retirement waits for `nodes` nodes, since `since`.
    pub fn retirement_waiting(&self, labels: Retiring, nodes: usize, since: std::time::SystemTime) {
        self.retirement_waiting_nodes.get_or_create(&labels).set(nodes as i64);
        self.retirement_waiting_since.get_or_create(&labels).set(crate::clock::unix_seconds(since));
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(labels);
    }

    /// A retirement no longer waits (done, or the version is gone).
    pub fn retirement_done(&self, labels: &Retiring) {
        self.retirement_waiting_nodes.remove(labels);
        self.retirement_waiting_since.remove(labels);
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(labels);
    }
}

/// The version of each policy that is on disk, by policy: the fleet's two families. One
/// table instead of two label-keyed families (and the labels kept a third time to replace
/// them) is about a kilobyte less per policy (issue 17); a changed version replaces its
/// policy's entry, so the old version's series is gone at the next scrape.
#[derive(Debug, Clone, Default)]
struct OnDisk(std::sync::Arc<std::sync::Mutex<Held>>);

/// The version on disk of each policy, and when it was first delivered: the node once (one
/// agent is one node) and each policy's name once, as the key.
#[derive(Debug, Default)]
struct Held {
    node: String,
    policies: std::collections::BTreeMap<String, Holding>,
}

#[derive(Debug)]
struct Holding {
    store: String,
    secret: String,
    version: String,
    since: f64,
}

impl Held {
    /// Each policy's labels, as [`SecretVersion`] has them, with its delivery time.
    fn series(&self) -> impl Iterator<Item = ([(&str, &str); 5], f64)> {
        self.policies.iter().map(|(policy, h)| {
            let labels = [
                ("node", self.node.as_str()),
                ("policy", policy.as_str()),
                ("store", h.store.as_str()),
                ("secret", h.secret.as_str()),
                ("version", h.version.as_str()),
            ];
            (labels, h.since)
        })
    }
}

impl OnDisk {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl prometheus_client::collector::Collector for OnDisk {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let held = self.lock();
        let mut info = encoder.encode_descriptor(
            "keyturn_secret_info",
            "The version of each policy's secret that is delivered, by node, policy, store and secret (value always 1)",
            None,
            MetricType::Gauge,
        )?;
        for (labels, _) in held.series() {
            ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
        }
        let mut delivered = encoder.encode_descriptor(
            "keyturn_secret_delivered_timestamp_seconds",
            "When this node first delivered the version of each policy that is on disk",
            None,
            MetricType::Gauge,
        )?;
        for (labels, since) in held.series() {
            ConstGauge::new(since).encode(delivered.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The standard `process_*` metrics, read from `/proc/self` at each scrape.
#[derive(Debug)]
struct Process {
    /// When the metrics were set up, at the agent's start: read once here, because the boot
    /// time in `/proc/stat` is hidden under systemd's `ProcSubset=pid`.
    started: f64,
}

impl prometheus_client::collector::Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(process) = ProcessStats::read() else { return Ok(()) };
        let start_time = self.started;
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64| {
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        };
        gauge(&mut encoder, "process_resident_memory_bytes", "Resident memory size in bytes", process.resident_bytes)?;
        gauge(&mut encoder, "process_virtual_memory_bytes", "Virtual memory size in bytes", process.virtual_bytes)?;
        gauge(&mut encoder, "process_open_fds", "Number of open file descriptors", process.open_fds)?;
        gauge(&mut encoder, "process_threads", "Number of threads", process.threads)?;
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch",
            start_time,
        )?;
        let cpu = ConstCounter::new(process.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)
    }
}

struct ProcessStats {
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    threads: f64,
    cpu_seconds: f64,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as f64;
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) / ticks,
            threads: field(20)?,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let metrics = Metrics::new();
        let held = |version: &str| SecretVersion {
            node: "edge-1".into(),
            policy: "db".into(),
            store: "edge".into(),
            secret: "db-password".into(),
            version: version.into(),
        };
        metrics.delivered(held("3"), std::time::UNIX_EPOCH);
        metrics.delivered(held("4"), std::time::UNIX_EPOCH + std::time::Duration::from_secs(90));
        metrics.deliveries.get_or_create(&PolicyResult { policy: "db".into(), result: "ok" }).inc();
        metrics.success_at("db", std::time::SystemTime::UNIX_EPOCH);
        let text = metrics.render();
        let labels = "node=\"edge-1\",policy=\"db\",store=\"edge\",secret=\"db-password\",version=\"4\"";
        assert!(text.contains(&format!("keyturn_secret_info{{{labels}}} 1")), "{text}");
        assert!(text.contains(&format!("keyturn_secret_delivered_timestamp_seconds{{{labels}}} 90")), "{text}");
        assert!(!text.contains("version=\"3\""), "the old version's series is gone: {text}");
        assert!(text.contains("# TYPE keyturn_deliveries_total counter"), "{text}");
        assert!(text.contains("keyturn_deliveries_total{policy=\"db\",result=\"ok\"} 1"), "{text}");
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("process_resident_memory_bytes ")), "{text}");

        metrics.forget("db");
        assert!(!metrics.render().contains("db-password"), "a policy no longer configured leaves no series");
    }
}
