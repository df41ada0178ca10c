//! The engine under tokio's paused clock: an in-memory store, a real bundle writer on tmpfs,
//! and time moved by the test, so that hours of polls, backoffs, rotations and grace periods
//! run in milliseconds and always the same way.
//!
//! Each test starts the engine as the agent does (one `sync_all`, then the watchers) and
//! samples what the store saw and what is on disk just before and just after the moments the
//! engine should act. The test's own sleeps move tokio's clock: every timer due before the
//! end of a sleep fires, in order, before the sleep returns.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::{Clock, TokioClock};
use crate::config::validate::fixtures::{Fake, sources};
use crate::deliver::BundleWriter;
use crate::report::metrics::Metrics;
use crate::store::memory::MemoryStore;

/// One engine's world: a clock that starts at `START`, a memory store named `dev`, a runtime
/// directory on tmpfs, and the state a reload keeps.
struct World {
    runtime: tempfile::TempDir,
    clock: Arc<TokioClock>,
    store: Arc<MemoryStore>,
    state: Arc<State>,
    random: fn() -> f64,
}

const START: &str = "2026-12-01T00:00:00Z";

impl World {
    fn new(random: fn() -> f64) -> World {
        let runtime = tempfile::Builder::new().prefix("keyturn-engine-").tempdir_in("/dev/shm").unwrap();
        let clock = Arc::new(TokioClock::starting_at(humantime::parse_rfc3339(START).unwrap()));
        let store = Arc::new(MemoryStore::new("dev", clock.clone()));
        let recorder = Arc::new(Recorder::new("node-a", clock.clone(), Arc::new(Metrics::new()), None));
        let mut writer = BundleWriter::new(runtime.path().to_path_buf(), None, clock.clone());
        writer.prepare_root(false).unwrap();
        let state = State::new(writer, recorder);
        World { runtime, clock, store, state, random }
    }

    /// The engine of an agent file with `agent` settings and these policies.
    fn engine(&self, agent: &str, policies: &[(&str, &str)]) -> Engine<MemoryStore> {
        let agent = format!(
            "[agent]\nnode = \"node-a\"\nruntime_dir = \"{}\"\n{agent}\n[stores.dev]\nkind = \"file\"\ndir = \"/unused\"\n",
            self.runtime.path().display()
        );
        let config = match crate::config::validate(&sources(&agent, policies), &Fake, &Fake) {
            Ok(config) => config,
            Err(errors) => panic!("{errors}"),
        };
        let stores = BTreeMap::from([("dev".to_string(), self.store.clone())]);
        let seams = Seams { clock: self.clock.clone(), random: self.random, pause_at: None };
        Engine::new(Arc::new(config), stores, self.state.clone(), seams)
    }

    /// Starts an engine as the agent does: one pass, then a watcher per policy.
    async fn start(&self, engine: &Engine<MemoryStore>) -> JoinSet<()> {
        let summary = engine.sync_all().await;
        engine.spawn_watchers(&summary.failed)
    }

    /// Moves tokio's clock to `at` after the start, firing every timer due before it.
    async fn at(&self, at: Duration) {
        let now = self.clock.now().duration_since(humantime::parse_rfc3339(START).unwrap()).unwrap();
        tokio::time::sleep(at.saturating_sub(now)).await;
    }

    fn file(&self, path: &str) -> String {
        std::fs::read_to_string(self.runtime.path().join(path)).unwrap_or_default()
    }

    fn bundle_exists(&self, bundle: &str) -> bool {
        Path::new(&self.runtime.path().join(bundle)).exists()
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

const RAW_DB: &str = "[secret]\nstore = \"dev\"\nid = \"db\"\n[[deliver]]\npath = \"app/db\"\n";

/// Polls come one poll interval apart, spread by the jitter: at its low end with the random
/// seam at 0, at its high end near 1. The first poll is anywhere in the first interval.
#[tokio::test(start_paused = true)]
async fn polls_come_one_interval_apart_spread_by_the_jitter() {
    // The random seam, and the times of the reads after the initial sync, in seconds.
    type Case = (fn() -> f64, [f64; 3]);
    let cases: [Case; 2] = [(|| 0.0, [0.0, 8.0, 16.0]), (|| 0.999, [9.99, 21.986, 33.982])];
    for (random, times) in cases {
        let world = World::new(random);
        world.store.put("db", "v1");
        let engine = world.engine("poll = \"10s\"\njitter = \"20%\"", &[("db", RAW_DB)]);
        let _watchers = world.start(&engine).await;
        assert_eq!(world.store.accesses(), 1, "the initial sync reads once");
        for (n, at) in times.into_iter().enumerate() {
            if at > 0.0 {
                world.at(secs(at - 0.005)).await;
                assert_eq!(world.store.accesses(), n + 1, "poll {n} has not happened before {at}s");
            }
            world.at(secs(at + 0.005)).await;
            assert_eq!(world.store.accesses(), n + 2, "poll {n} is the read at {at}s");
        }
        assert_eq!(world.store.metadata_requests(), 0, "steady state makes no metadata reads");
        assert_eq!(world.file("app/db"), "v1");
    }
}

/// A store that fails is retried after 1 s, 2 s, 4 s ... (half fixed, half spread by the
/// random seam), never more often; the last good file stays; a success brings back the poll.
#[tokio::test(start_paused = true)]
async fn failed_reads_back_off_exponentially_and_keep_the_last_good_files() {
    let world = World::new(|| 0.5);
    world.store.put("db", "v1");
    let engine = world.engine("poll = \"10s\"\njitter = \"20%\"", &[("db", RAW_DB)]);
    let _watchers = world.start(&engine).await;
    world.store.fail_next_reads(3);
    // First poll at 5 s fails; then 0.75 s, 1.5 s and 3 s (1, 2, 4 s at 0.5 + 0.5 × 0.5); the
    // fourth read succeeds and the next comes one poll (10 s, the jitter at its middle) later.
    let expected = [5.0, 5.75, 7.25, 10.25, 20.25];
    for (n, at) in expected.into_iter().enumerate() {
        world.at(secs(at - 0.01)).await;
        assert_eq!(world.store.accesses(), n + 1, "not yet read {} at {at}s", n + 2);
        world.at(secs(at + 0.01)).await;
        assert_eq!(world.store.accesses(), n + 2, "read {} at {at}s", n + 2);
        assert_eq!(world.file("app/db"), "v1", "the last good file stays");
        let status = world.state.recorder.snapshot();
        let failures = status.policies["db"].consecutive_failures;
        assert_eq!(failures, if n < 3 { n as u32 + 1 } else { 0 }, "after read {}", n + 2);
    }
}

/// A rotating secret is rotated when its current version's age reaches the period (the wake
/// comes at the due time, not at the next poll), and the new version is delivered at once.
#[tokio::test(start_paused = true)]
async fn a_rotation_becomes_due_and_the_new_version_is_delivered_at_once() {
    let world = World::new(|| 0.5);
    world.store.put("key", "initial-value-0123456789abcdef");
    let policy = "[secret]\nstore = \"dev\"\nid = \"key\"\n[rotate]\nevery = \"1h\"\ngenerate = \"password:24\"\njitter = \"0s\"\n[[deliver]]\npath = \"app/key\"\n";
    let engine = world.engine("poll = \"25m\"", &[("key", policy)]);
    let _watchers = world.start(&engine).await;
    let next = |world: &World| world.state.recorder.snapshot().policies["key"].next_rotation.clone();
    world.at(secs(1.0)).await;
    assert_eq!(next(&world).as_deref(), Some("2026-12-01T01:00:00Z"));

    // Polls at 12.5 and 37.5 min; the due time (60 min) falls before the next poll (62.5 min).
    world.at(secs(3599.0)).await;
    assert_eq!(world.store.alias("key", "current").unwrap().as_str(), "1");
    world.at(secs(3601.0)).await;
    assert_eq!(world.store.alias("key", "current").unwrap().as_str(), "2", "rotated at the due time");
    assert_eq!(world.store.alias("key", "previous").unwrap().as_str(), "1");
    let delivered = world.file("app/key");
    assert_eq!(delivered.len(), 24, "the generated password is delivered: {}", delivered.len());
    assert_ne!(delivered, "initial-value-0123456789abcdef");
    let status = world.state.recorder.snapshot();
    assert_eq!(status.policies["key"].version.as_ref().map(VersionId::as_str), Some("2"));
    let last = status.policies["key"].last_rotation.clone().unwrap();
    assert!(last.version.as_str() == "2" && last.at.starts_with("2026-12-01T01:00:0"), "{last:?}");
    assert_eq!(next(&world).as_deref(), Some("2026-12-01T02:00:00Z"), "due again a period after the new version");
    let metrics = world.state.recorder.metrics.render();
    assert!(metrics.contains("keyturn_rotations_total{policy=\"key\",result=\"ok\"} 1"), "{metrics}");
}

/// After a rotation a JWK set lists the previous key beside the new one; at the end of the
/// grace period the engine wakes (between polls) and delivers the set without it.
#[tokio::test(start_paused = true)]
async fn the_previous_key_leaves_the_jwk_set_when_its_grace_ends() {
    let world = World::new(|| 0.5);
    let first = crate::generate::Generator::Ed25519.generate().unwrap();
    world.store.put("signing", std::str::from_utf8(first.expose()).unwrap());
    let policy = "[secret]\nstore = \"dev\"\nid = \"signing\"\n[rotate]\nevery = \"1h\"\ngrace = \"30m\"\ngenerate = \"ed25519\"\njitter = \"0s\"\n[[deliver]]\npath = \"api/jwks.json\"\nformat = \"jwks\"\n";
    let engine = world.engine("poll = \"7m\"", &[("signing", policy)]);
    let _watchers = world.start(&engine).await;
    let keys = |world: &World| {
        let set: serde_json::Value = serde_json::from_str(&world.file("api/jwks.json")).unwrap();
        set["keys"].as_array().unwrap().len()
    };
    assert_eq!(keys(&world), 1);
    // Rotated at 60 min; polls at 3.5, 10.5, ... 59.5, then 67, 74, 81, 88, 95 min: the grace
    // ends at 90 min, between two polls.
    world.at(secs(60.0 * 60.0 + 1.0)).await;
    assert_eq!(keys(&world), 2, "the previous key is listed during its grace");
    world.at(secs(89.0 * 60.0 + 59.0)).await;
    assert_eq!(keys(&world), 2);
    world.at(secs(90.0 * 60.0 + 1.0)).await;
    assert_eq!(keys(&world), 1, "the previous key left the set when its grace ended, not at the next poll");
}

/// A reload is a new engine over the same state: a policy that is gone takes its bundle and
/// its status with it, a new one is delivered, and an unchanged one is not written again.
#[tokio::test(start_paused = true)]
async fn a_reload_keeps_what_is_unchanged_and_applies_the_rest() {
    let world = World::new(|| 0.5);
    world.store.put("db", "db-1");
    world.store.put("api", "api-1");
    world.store.put("web", "web-1");
    let api = "[secret]\nstore = \"dev\"\nid = \"api\"\n[[deliver]]\npath = \"api/key\"\n";
    let web = "[secret]\nstore = \"dev\"\nid = \"web\"\n[[deliver]]\npath = \"web/key\"\n";
    let first = world.engine("poll = \"10s\"", &[("api", api), ("db", RAW_DB)]);
    let watchers = world.start(&first).await;
    assert!(world.bundle_exists("api") && !world.bundle_exists("web"));
    let db_version_dir = std::fs::read_link(world.runtime.path().join("app/..data")).unwrap();

    drop(watchers);
    let second = world.engine("poll = \"10s\"", &[("db", RAW_DB), ("web", web)]);
    let summary = second.sync_all().await;
    assert_eq!((summary.delivered, summary.unchanged, summary.failed.len()), (1, 1, 0));
    assert!(!world.bundle_exists("api"), "the removed policy's bundle is gone");
    assert_eq!(world.file("web/key"), "web-1");
    assert_eq!(
        std::fs::read_link(world.runtime.path().join("app/..data")).unwrap(),
        db_version_dir,
        "db not rewritten"
    );
    let status = world.state.recorder.snapshot();
    assert_eq!(status.policies.keys().collect::<Vec<_>>(), ["db", "web"]);

    // The new engine's watchers poll its policies; the old ones are gone.
    let _watchers = second.spawn_watchers(&[]);
    world.store.put("web", "web-2");
    world.at(world.clock.now().duration_since(humantime::parse_rfc3339(START).unwrap()).unwrap() + secs(12.0)).await;
    assert_eq!(world.file("web/key"), "web-2");
}

const ROTATING_KEY: &str = "[secret]\nstore = \"dev\"\nid = \"key\"\n[rotate]\nevery = \"1h\"\ngenerate = \"password:24\"\njitter = \"0s\"\n[[deliver]]\npath = \"app/key\"\n";

/// A node whose clock runs a day ahead of its store decides on the store's clock: the secret
/// is due an hour after the store made its version, by the store's time, not at once (which is
/// what the node's own clock would say: the version looks a day old to it). The skew is in the
/// metric and the status, beyond max_clock_skew.
#[tokio::test(start_paused = true)]
async fn a_node_a_day_ahead_rotates_on_the_stores_clock() {
    let world = World::new(|| 0.5);
    world.store.set_clock(crate::store::StoreClock::Measured { skew: 86_400.0 });
    world.store.put("key", "initial-value-0123456789abcdef");
    let engine = world.engine("poll = \"25m\"", &[("key", ROTATING_KEY)]);
    let _watchers = world.start(&engine).await;
    world.at(secs(1.0)).await;
    let status = world.state.recorder.snapshot();
    assert_eq!(status.policies["key"].next_rotation.as_deref(), Some("2026-11-30T01:00:00Z"), "on the store's clock");
    let dev = &status.stores["dev"];
    assert_eq!(
        (dev.clock.as_str(), dev.clock_skew_seconds, dev.clock_skew_exceeds),
        ("measured", Some(86_400.0), Some(120.0))
    );
    let metrics = world.state.recorder.metrics.render();
    assert!(metrics.contains("keyturn_clock_skew_seconds{store=\"dev\"} 86400"), "{metrics}");

    world.at(secs(3599.0)).await;
    assert_eq!(world.store.alias("key", "current").unwrap().as_str(), "1", "not early");
    world.at(secs(3601.0)).await;
    assert_eq!(world.store.alias("key", "current").unwrap().as_str(), "2", "rotated when due on the store's clock");
}

/// Until a remote store's clock is measured, a fleet rotation is not started: its due time
/// and the lease would be judged on this node's clock alone. It starts once the clock is known.
#[tokio::test(start_paused = true)]
async fn a_fleet_rotation_waits_until_the_stores_clock_is_measured() {
    let world = World::new(|| 0.5);
    world.store.set_clock(crate::store::StoreClock::Unmeasured);
    world.store.put("key", "initial-value-0123456789abcdef");
    let engine = world.engine("poll = \"25m\"", &[("key", ROTATING_KEY)]);
    let _watchers = world.start(&engine).await;
    world.at(secs(3601.0)).await;
    assert_eq!(world.store.alias("key", "current").unwrap().as_str(), "1", "no rotation on an unmeasured clock");
    let status = world.state.recorder.snapshot();
    let error = status.policies["key"].rotation_error.clone().unwrap_or_default();
    assert!(error.contains("clock of store \"dev\" is not measured yet"), "{error}");
    assert_eq!(status.stores["dev"].clock, "unmeasured");
    let metrics = world.state.recorder.metrics.render();
    assert!(!metrics.contains("keyturn_clock_skew_seconds{"), "no skew to show: {metrics}");

    // Measured: the next try (a poll later) rotates.
    world.store.set_clock(crate::store::StoreClock::Measured { skew: 0.4 });
    world.at(secs(3601.0 + 25.0 * 60.0 + 1.0)).await;
    assert_eq!(world.store.alias("key", "current").unwrap().as_str(), "2");
}

/// Another node's lease is live until its `until` on the store's clock: a node a day ahead
/// (to which that time is a day past) does not take it over, and takes it once it has run out.
#[tokio::test(start_paused = true)]
async fn another_nodes_lease_is_live_by_the_stores_clock() {
    use crate::rotation::lease::{ANNOTATION, Lease};
    let world = World::new(|| 0.5);
    world.store.set_clock(crate::store::StoreClock::Measured { skew: 86_400.0 });
    world.store.put("key", "initial-value-0123456789abcdef");
    let store_now = world.clock.now() - Duration::from_secs(86_400);
    let theirs = Lease::new("node-b", 1, store_now, Duration::from_secs(600)).encode();
    let meta = world.store.describe(&crate::secret::SecretId::new("key")).await.unwrap();
    let take = crate::store::SecretUpdate {
        set_annotations: BTreeMap::from([(ANNOTATION.to_string(), theirs.clone())]),
        ..Default::default()
    };
    world.store.update(&crate::secret::SecretId::new("key"), &meta, &take).await.unwrap();
    let engine = world.engine("poll = \"1h\"", &[("key", ROTATING_KEY)]);
    let policy = engine.config().policy("key").unwrap().clone();
    let outcome = engine.rotate(&policy, Trigger::Now).await.unwrap();
    assert_eq!(outcome, Outcome::Busy { holder: theirs }, "live on the store's clock");
    world.at(secs(601.0)).await;
    let outcome = engine.rotate(&policy, Trigger::Now).await.unwrap();
    assert!(matches!(outcome, Outcome::Rotated { .. }), "expired on the store's clock: {outcome:?}");
}
