//! Fleet truth, end to end: real agents on one Secret Manager emulator, a real Prometheus
//! server scraping them, `keyturn fleet status` reading it, adoption-gated retirement, versions
//! that never go backwards under a lagging replica, and `keyturn rollback`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::prometheus::Prometheus;
use common::proxy::Proxy;
use common::{Agent, World, google, read, text, wait_for, wait_for_every};
use gcp_emulator::{Role, blocking};

const CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";

/// A signing key rotated by node-a alone; its grace is short, so a replaced key is past it by
/// the next rotation.
const SIGNING: &str = "[secret]\nstore = \"edge\"\nid = \"signing-key\"\n[rotate]\nevery = \"30d\"\ngrace = \"1s\"\n\
    generate = \"ed25519\"\n[[deliver]]\npath = \"web/signing.pem\"\nformat = \"pem\"\n";

/// An emulator, and nodes of one world on it, each with its own agent file.
struct Fleet {
    world: World,
    emu: blocking::Emulator,
    key: PathBuf,
}

impl Fleet {
    fn new(fleet_section: &str) -> Fleet {
        let world = World::new("poll = \"1s\"\njitter = \"0%\"");
        let emu = google::emulator();
        let key = google::key_file(&world, &emu, "node", Role::Admin);
        google::add_edge_store(&world, &emu, &format!("request_timeout = \"2s\"\n{fleet_section}\n"));
        world.policy("signing", SIGNING);
        Fleet { world, emu, key }
    }

    /// Node `name`'s agent file: it rotates only if `rotates`, and reaches the store through
    /// `endpoint` when given (a proxy the test can cut).
    fn node(&self, name: &str, rotates: bool, endpoint: Option<&str>) -> PathBuf {
        let config = self.world.node(name);
        let mut text = read(&config);
        if !rotates {
            text = text.replace("poll = \"1s\"", "poll = \"1s\"\nrotate = false");
        }
        if let Some(endpoint) = endpoint {
            text = text.replace(&self.emu.base_url(), endpoint);
        }
        common::write(&config, &text);
        config
    }

    fn agent(&self, config: &Path) -> Agent {
        self.world.agent_for(config, &[], &[(CREDENTIALS, &self.key)])
    }

    fn keyturn(&self, config: &Path, args: &[&str]) -> std::process::Output {
        self.world.command_for(config, args).env(CREDENTIALS, &self.key).output().unwrap()
    }

    fn bundle(&self, node: &str) -> PathBuf {
        self.world.run_dir().join(node).join("web/signing.pem")
    }

    /// The version node `name` has on disk, from its status file.
    fn held(&self, name: &str) -> Option<String> {
        let status = std::fs::read_to_string(self.world.disk.path().join(format!("state-{name}/status.json"))).ok()?;
        let status: serde_json::Value = serde_json::from_str(&status).ok()?;
        status["policies"]["signing"]["version"].as_str().map(String::from)
    }

    /// The admin address node `name` listens on, from its status file.
    fn admin(&self, name: &str) -> String {
        let mut address = String::new();
        wait_for(&format!("{name}'s admin address"), Duration::from_secs(20), || {
            let status = std::fs::read_to_string(self.world.disk.path().join(format!("state-{name}/status.json")))
                .unwrap_or_default();
            let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
            address = status["admin"].as_str().unwrap_or_default().to_string();
            !address.is_empty()
        });
        address
    }

    /// The state of each version of the signing key, by number.
    fn states(&self, config: &Path) -> Vec<(String, String)> {
        let out = self.keyturn(config, &["store", "versions", "edge", "signing-key", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut states: Vec<(String, String)> = listed["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["version"].as_str().unwrap().to_string(), v["state"].as_str().unwrap().to_string()))
            .collect();
        states.sort();
        states
    }

    fn state_of(&self, config: &Path, version: &str) -> String {
        self.states(config).into_iter().find(|(v, _)| v == version).map(|(_, s)| s).unwrap_or_default()
    }
}

/// `keyturn fleet status --json` and its exit code.
fn fleet_status(fleet: &Fleet, config: &Path) -> (Option<i32>, serde_json::Value, String) {
    let out = fleet.keyturn(config, &["fleet", "status", "--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (out.status.code(), report, text(&out))
}

fn lagging(report: &serde_json::Value) -> Vec<(String, String)> {
    report["secrets"][0]["lagging"]
        .as_array()
        .map(|l| {
            l.iter().map(|h| (h["node"].as_str().unwrap().into(), h["version"].as_str().unwrap().into())).collect()
        })
        .unwrap_or_default()
}

/// Three nodes, one rotating; a real Prometheus scrapes them. node-c loses its store: `fleet
/// status` names it lagging, and the next rotation keeps the version it holds enabled past its
/// grace, until it catches up; then that version is retired and the view clears. A revoke
/// retires at once whoever holds the version, and says so.
#[test]
fn retirement_waits_for_the_node_that_still_holds_the_old_version() {
    let prometheus = Prometheus::start();
    let fleet = Fleet::new(&format!("[fleet]\nprometheus = \"{}\"\nsilent_after = \"30s\"\n", prometheus.url()));
    let proxy = Proxy::to(fleet.emu.base_url().trim_start_matches("http://"));
    let a = fleet.node("node-a", true, None);
    let b = fleet.node("node-b", false, None);
    let c = fleet.node("node-c", false, Some(&proxy.url()));
    // node-a makes the first version; the others deliver it.
    let _agent_a = fleet.agent(&a);
    wait_for("node-a's first key", Duration::from_secs(20), || fleet.bundle("node-a").exists());
    let _agent_b = fleet.agent(&b);
    let _agent_c = fleet.agent(&c);
    for node in ["node-b", "node-c"] {
        wait_for(&format!("{node}'s first key"), Duration::from_secs(20), || fleet.bundle(node).exists());
    }
    let targets: Vec<String> = ["node-a", "node-b", "node-c"].iter().map(|n| fleet.admin(n)).collect();
    prometheus.scrape(&targets.iter().map(String::as_str).collect::<Vec<_>>());

    // Every node on version 1, as Prometheus sees it.
    wait_for_every("the fleet on version 1 in Prometheus", Duration::from_secs(60), Duration::from_millis(500), || {
        let (code, report, _) = fleet_status(&fleet, &a);
        code == Some(0) && report["secrets"][0]["versions"]["1"] == 3
    });

    // node-c's uplink goes down; a rotation moves the others to version 2.
    proxy.cut();
    let out = fleet.keyturn(&a, &["rotate", "signing", "--now"]);
    assert!(out.status.success(), "{}", text(&out));
    for node in ["node-a", "node-b"] {
        wait_for(&format!("{node} on version 2"), Duration::from_secs(20), || fleet.held(node).as_deref() == Some("2"));
    }
    // Version 2 existed before node-a held it: version 1's grace (1s) ends a second from now.
    let held_2 = std::time::Instant::now();
    wait_for_every("fleet status to name node-c lagging", Duration::from_secs(60), Duration::from_millis(500), || {
        let (code, report, _) = fleet_status(&fleet, &a);
        code == Some(1) && lagging(&report) == [("node-c".to_string(), "1".to_string())]
    });
    let table = fleet.keyturn(&a, &["fleet", "status", "signing"]);
    let table = text(&table);
    assert!(table.contains("LAGGING   node-c (signing) holds 1"), "{table}");
    assert!(table.contains("newest    2"), "{table}");

    wait_for("version 1's grace to end", Duration::from_secs(10), || held_2.elapsed() > Duration::from_millis(1100));
    let out = fleet.keyturn(&a, &["rotate", "signing", "--now"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("version 1 stays enabled: still held by 1 live node(s): node-c"), "{}", text(&out));
    assert_eq!(fleet.state_of(&a, "1"), "enabled", "node-c still holds version 1");
    // node-a's agent keeps trying, and says whom it waits for.
    let metrics = common::http::request(&fleet.admin("node-a"), "GET", "/metrics", None).unwrap().1;
    assert!(
        metrics.contains(
            "keyturn_retirement_waiting_nodes{policy=\"signing\",store=\"edge\",secret=\"signing-key\",version=\"1\"} 1"
        ),
        "{metrics}"
    );

    // node-c comes back and catches up: version 1 is retired, and nobody lags.
    proxy.restore();
    wait_for("node-c on version 3", Duration::from_secs(30), || fleet.held("node-c").as_deref() == Some("3"));
    let retired = common::poll_until(Duration::from_secs(60), Duration::from_millis(500), || {
        fleet.state_of(&a, "1") == "disabled"
    });
    assert!(retired, "version 1 is not retired:\n{}", _agent_a.log_text());
    wait_for_every("fleet status to clear", Duration::from_secs(60), Duration::from_millis(500), || {
        let (code, report, _) = fleet_status(&fleet, &a);
        code == Some(0) && lagging(&report).is_empty() && report["secrets"][0]["versions"]["3"] == 3
    });
    let log = _agent_a.log_text();
    assert!(log.contains("retirement waits for the nodes that still hold the old version"), "{log}");
    assert!(log.contains("old version disabled"), "{log}");

    // A leak: revoked at once, though node-c (cut off again) still holds version 3.
    proxy.cut();
    let out = fleet.keyturn(&a, &["rotate", "signing", "--now", "--revoke"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fleet.state_of(&a, "3"), "disabled", "revoked at once");
    let said = text(&out);
    assert!(said.contains("REVOKED version 3: disabled now, grace and adoption skipped; still held by"), "{said}");
    assert!(said.contains("without waiting for grace or for nodes to move on"), "{said}");
    drop(prometheus);
}

/// A replica that lags on alias reads: no node ever goes back to the version it read, the
/// refusal is counted, and `keyturn rollback` brings every node to an older value as a newer
/// version.
#[test]
fn a_lagging_replica_never_takes_a_node_back_and_rollback_rolls_forward() {
    let fleet = Fleet::new("");
    let a = fleet.node("node-a", true, None);
    let b = fleet.node("node-b", false, None);
    let agent_a = fleet.agent(&a);
    wait_for("node-a's first key", Duration::from_secs(20), || fleet.bundle("node-a").exists());
    let agent_b = fleet.agent(&b);
    wait_for("node-b's first key", Duration::from_secs(20), || fleet.held("node-b").as_deref() == Some("1"));
    let mut keys = vec![read(fleet.bundle("node-a"))];
    for version in ["2", "3"] {
        let out = fleet.keyturn(&a, &["rotate", "signing", "--now"]);
        assert!(out.status.success(), "{}", text(&out));
        for node in ["node-a", "node-b"] {
            wait_for(&format!("{node} on version {version}"), Duration::from_secs(20), || {
                fleet.held(node).as_deref() == Some(version)
            });
        }
        keys.push(read(fleet.bundle("node-a")));
    }

    // Alias reads now answer from a replica one change behind: `current` is 2 again.
    fleet.emu.faults().lag_alias_reads(1);
    let refused = |agent: &Agent, node: &str| {
        let metrics = common::http::request(&fleet.admin(node), "GET", "/metrics", None).unwrap().1;
        common::sample(&metrics, "keyturn_version_regressions_refused_total{policy=\"signing\"}").unwrap_or(0.0) >= 3.0
            && agent.log_text().contains("the store named an older version than the one on disk")
    };
    for (agent, node) in [(&agent_a, "node-a"), (&agent_b, "node-b")] {
        wait_for(&format!("{node} to refuse version 2 three times"), Duration::from_secs(30), || refused(agent, node));
        assert_eq!(fleet.held(node).as_deref(), Some("3"));
        assert_eq!(read(fleet.bundle(node)), keys[2], "{node} keeps version 3's key");
    }

    // Going back on purpose: version 1's value as version 4, promoted; every node takes it.
    let out = fleet.keyturn(&a, &["rollback", "signing", "--to", "1", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((answer["version"].as_str(), answer["value_of"].as_str()), (Some("4"), Some("1")), "{answer}");
    fleet.emu.faults().clear();
    for node in ["node-a", "node-b"] {
        wait_for(&format!("{node} on version 4"), Duration::from_secs(20), || fleet.held(node).as_deref() == Some("4"));
        assert_eq!(read(fleet.bundle(node)), keys[0], "{node} delivers version 1's key as version 4");
    }

    // What a rollback refuses: the version delivered already, and a retired one.
    let out = fleet.keyturn(&a, &["rollback", "signing", "--to", "4"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let out = fleet.keyturn(&a, &["store", "versions", "edge", "signing-key"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A pull-only policy on the file store that delivers `latest` (a secret made the gcloud way):
/// a rollback adds the older value as the newest version; a pinned policy is refused.
#[test]
fn rollback_of_a_secret_without_rotation_adds_the_older_value_as_the_newest() {
    let world = World::new("");
    world
        .policy("db", "[secret]\nstore = \"dev\"\nid = \"db\"\nversion = \"latest\"\n[[deliver]]\npath = \"app/db\"\n");
    world.policy("pinned", "[secret]\nstore = \"dev\"\nid = \"db\"\nversion = 1\n[[deliver]]\npath = \"pin/db\"\n");
    world.put("db", "first-value");
    world.put("db", "second-value");
    let out = world.keyturn(&["rollback", "db"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("db: version 3 is current, with the value of version 1"));
    assert!(world.keyturn(&["sync", "--once"]).status.success());
    assert_eq!(read(world.bundle("app/db")), "first-value");
    let out = world.keyturn(&["rollback", "pinned"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("pins version 1"), "{}", text(&out));
}
