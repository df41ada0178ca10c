//! A wrong clock: the release binary with its wall clock moved by libfaketime (Debian's
//! `faketime`, see [`common::Binary::faketime`]) against the emulator, whose clock is the
//! test's own plus whatever the test has advanced it by (`advance_clock`).
//!
//! - Two hours ahead and two hours behind, with a service-account key: Google's window refuses
//!   the token request (its `iat`/`exp` are the node's time); the error names the clock and its
//!   fix and gives no credential advice; the skew, measured from the refusal's `Date`, is in the
//!   metric, the status, `/readyz` and one warning.
//! - Three minutes ahead: inside the window, so it delivers, and says once that the clock is
//!   off.
//! - Two agents on one emulator, one a day ahead: it neither rotates early nor takes a live
//!   lease; the node with the right clock rotates on time.
//!
//! The skews are measured by the binary itself: with libfaketime not in effect (the library
//! missing, or not intercepting the Rust binary's `clock_gettime`) every assertion on the
//! metric fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use common::{Agent, Binary, World, read, sample, text, wait_for};
use gcp_emulator::{Emulator, Role, SubjectToken, blocking};

const CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";
const NODE_ACCOUNT: &str = "node@acme-edge.iam.gserviceaccount.com";
const TIMEFRAME: &str = "invalid_grant: Invalid JWT: Token must be a short-lived token (60 minutes) and in a \
                         reasonable timeframe. Check your iat and exp values in the JWT claim.";

/// A world with the store `edge` on the emulator, a policy `db` on it, a value in it, and a
/// service-account key for the node.
struct Skewed {
    world: World,
    /// Kept running as long as the world.
    _emu: blocking::Emulator,
    key: PathBuf,
}

impl Skewed {
    fn new() -> Skewed {
        let world = World::new("poll = \"1s\"\njitter = \"0%\"");
        let emu = blocking::Emulator::start(Emulator::builder().project_id("acme-edge")).unwrap();
        world.add_stores(&format!(
            "[stores.edge]\nkind = \"gcp\"\nproject = \"acme-edge\"\nendpoint = \"{}\"\nretry_backoff = \"50ms\"\n",
            emu.base_url()
        ));
        let key = world.disk.path().join("node.json");
        common::write(&key, &emu.service_account_key(NODE_ACCOUNT, Role::Accessor));
        let operator = world.disk.path().join("operator.json");
        common::write(&operator, &emu.service_account_key("operator@acme-edge.iam.gserviceaccount.com", Role::Admin));
        let out = world.put_into("edge", "db-password", "first", &[(CREDENTIALS, &operator)]);
        assert!(out.status.success(), "{}", text(&out));
        world.policy("db", "[secret]\nstore = \"edge\"\nid = \"db-password\"\n[[deliver]]\npath = \"db/value\"\n");
        Skewed { world, _emu: emu, key }
    }

    fn sync(&self, binary: &Binary) -> Output {
        self.world
            .command_via(binary, &self.world.config(), &["sync", "--once"])
            .env(CREDENTIALS, &self.key)
            .output()
            .unwrap()
    }

    fn agent(&self, binary: &Binary) -> Agent {
        self.world.agent_via(binary, &self.world.config(), &[], &[(CREDENTIALS, &self.key)])
    }
}

/// The release binary (built once for every test that needs it) with its clock moved.
fn release(offset: &str) -> Binary {
    Binary::faketime(&common::release::binary(), offset)
}

/// What says "check your credentials": never for a clock problem. (The debug line that names
/// where the key file came from, `source="GOOGLE_APPLICATION_CREDENTIALS"`, is not advice.)
fn assert_no_credential_advice(text: &str) {
    for advice in ["check the node's credentials", "(GOOGLE_APPLICATION_CREDENTIALS", "workload identity"] {
        assert!(!text.contains(advice), "credential advice ({advice:?}) for a clock problem:\n{text}");
    }
}

/// `/metrics` of the agent whose status file is `status`, once it is the running `agent`'s.
fn admin_of(status: &Path, agent: &Agent) -> String {
    let mut address = String::new();
    wait_for("the agent's admin address in its status file", Duration::from_secs(20), || {
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(status).unwrap_or_default()).unwrap_or_default();
        address = value["admin"].as_str().unwrap_or_default().to_string();
        value["pid"].as_i64() == Some(i64::from(agent.pid())) && !address.is_empty()
    });
    address
}

fn metrics(admin: &str) -> String {
    common::http::request(admin, "GET", "/metrics", None).map(|(_, body)| body).unwrap_or_default()
}

fn skew_of(admin: &str) -> Option<f64> {
    sample(&metrics(admin), "keyturn_clock_skew_seconds{store=\"edge\"}")
}

/// Waits until the agent at `admin` reports a skew of `expected` seconds (within two).
fn wait_skew(admin: &str, expected: f64) {
    wait_for(&format!("keyturn_clock_skew_seconds{{store=\"edge\"}} near {expected}"), Duration::from_secs(20), || {
        skew_of(admin).is_some_and(|skew| (skew - expected).abs() < 2.0)
    });
}

/// Reads of `edge` the agent at `admin` has made, successful or not.
fn reads(admin: &str) -> u64 {
    let metrics = metrics(admin);
    ["ok", "error"]
        .iter()
        .map(|result| {
            let series =
                format!("keyturn_store_requests_total{{store=\"edge\",method=\"access\",result=\"{result}\"}}");
            sample(&metrics, &series).unwrap_or(0.0) as u64
        })
        .sum()
}

/// The barrier before asserting something did not happen: `more` reads of `edge` after the
/// call (3 prove a whole poll that began after it).
fn wait_reads(admin: &str, more: u64) {
    let target = reads(admin) + more;
    wait_for(&format!("{more} more reads"), Duration::from_secs(10 + 5 * more), || reads(admin) >= target);
}

/// Two hours ahead and two hours behind with a service-account key: every token request is
/// refused for its time. `sync --once` fails with the clock named, Google's words quoted, the
/// fix given, and no credential advice; the running agent shows the skew in the metric, the
/// status and `/readyz`, and warns about it once.
#[test]
fn a_node_hours_off_is_told_its_clock_is_wrong_not_its_credentials() {
    for (offset, ahead, skew) in [("+2h", "ahead of", 7200.0), ("-2h", "behind", -7200.0)] {
        let s = Skewed::new();
        let binary = release(offset);
        let out = s.sync(&binary);
        assert_eq!(out.status.code(), Some(1), "{offset}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("token request failed") && stderr.contains(TIMEFRAME), "{offset}: {stderr}");
        let named = format!(
            "the likely cause is this node's clock, not its credentials: this node's clock is 2h {ahead} Google's"
        );
        assert!(stderr.contains(&named), "{offset}: {stderr}");
        assert!(stderr.contains("chrony") && stderr.contains("timedatectl set-ntp true"), "{offset}: {stderr}");
        assert_no_credential_advice(&stderr);

        let agent = s.agent(&binary);
        let admin = s.world.admin();
        wait_skew(&admin, skew);
        agent.wait_log("beyond max_clock_skew (2m)", 1);
        wait_reads(&admin, 3);
        let log = agent.log_text();
        assert_eq!(log.matches("beyond max_clock_skew (2m)").count(), 1, "{offset}: warned once:\n{log}");
        assert!(log.contains(&named), "{offset}: each failed read names the clock:\n{log}");
        assert_no_credential_advice(&log);

        let status = s.world.status_json();
        let edge = &status["stores"]["edge"];
        assert_eq!(edge["clock"], "measured", "{offset}: {status}");
        assert!((edge["clock_skew_seconds"].as_f64().unwrap() - skew).abs() < 2.0, "{offset}: {status}");
        assert_eq!(edge["clock_skew_exceeds"], 120.0, "{offset}: {status}");
        assert!(status["policies"]["db"]["last_error"].as_str().unwrap().contains(&named), "{offset}: {status}");
        let table = String::from_utf8_lossy(&s.world.keyturn(&["status"]).stdout).into_owned();
        let row = format!("edge   this node's clock is 2h {ahead} store edge's, beyond max_clock_skew (2m)");
        assert!(table.contains(&row), "{offset}: {table}");

        let (code, body) = common::http::request(&admin, "GET", "/readyz", None).unwrap();
        assert_eq!(code, 503, "{offset}: nothing is delivered: {body}");
        assert!(
            body.contains("waiting for db")
                && body.contains(&format!("clock: this node's clock is 2h {ahead} store edge's")),
            "{body}"
        );
        assert!(s.world.bundle("db").join("value").symlink_metadata().is_err(), "{offset}: nothing delivered");
    }
}

/// Three minutes ahead is inside Google's window: the node delivers, and says once that its
/// clock is three minutes off, beyond the default max_clock_skew of two.
#[test]
fn a_node_three_minutes_ahead_works_and_says_so_once() {
    let s = Skewed::new();
    let binary = release("+3m");
    let out = s.sync(&binary);
    assert!(out.status.success(), "{}", text(&out));

    let agent = s.agent(&binary);
    let admin = s.world.admin();
    wait_skew(&admin, 180.0);
    agent.wait_log("beyond max_clock_skew (2m)", 1);
    wait_reads(&admin, 3);
    assert_eq!(read(s.world.bundle("db").join("value")), "first");
    let log = agent.log_text();
    assert_eq!(log.matches("beyond max_clock_skew (2m)").count(), 1, "warned once:\n{log}");
    assert!(!log.contains("store read failed"), "{log}");

    let status = s.world.status_json();
    let edge = &status["stores"]["edge"];
    assert!((edge["clock_skew_seconds"].as_f64().unwrap() - 180.0).abs() < 2.0, "{status}");
    assert_eq!(edge["clock_skew_exceeds"], 120.0, "{status}");
    assert!(status["policies"]["db"]["last_error"].is_null(), "{status}");
    let (code, body) = common::http::request(&admin, "GET", "/readyz", None).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("ready\nclock: this node's clock is ") && body.contains("ahead of store edge's"),
        "{body}"
    );
}

/// A node's place in a rotation's jitter window, as `rotation::schedule::node_unit` computes
/// it (the test checks the two agree, through the due times the agents report).
fn unit(node: &str, secret: &str, version: &str) -> f64 {
    f64::from(gcp_emulator::crc32c(format!("{node}\0{secret}\0{version}").as_bytes())) / (f64::from(u32::MAX) + 1.0)
}

/// The fleet secret's rotation window (`[rotate] jitter`), in seconds.
const WINDOW: f64 = 1200.0;

fn at(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The fleet: an emulator, two nodes with federated identities of their own, an operator.
struct Fleet {
    world: World,
    emu: blocking::Emulator,
    operator: PathBuf,
    secret: String,
    /// How far the test has moved the emulator's clock ahead of its own.
    advanced: Duration,
}

impl Fleet {
    /// The emulator's time now.
    fn emulator_now(&self) -> SystemTime {
        SystemTime::now() + self.advanced
    }

    /// Moves the emulator's clock to `target` (its time).
    fn advance_to(&mut self, target: SystemTime) {
        let by = target.duration_since(self.emulator_now()).expect("the emulator's clock only moves forward");
        self.emu.advance_clock(by);
        self.advanced += by;
    }

    /// A node's credentials: an external account on its own subject token, valid long enough
    /// for every move of the emulator's clock in the test (the emulator's STS judges it by its
    /// own clock).
    fn identity(&self, name: &str) -> PathBuf {
        let subject = format!("system:serviceaccount:keyturn:{name}");
        self.emu.grant_federated(&subject, Role::Admin);
        let token = self.world.disk.path().join(format!("tokens/{name}"));
        let spec = SubjectToken { lifetime: Duration::from_secs(40 * 3600), ..SubjectToken::new(subject) };
        common::write(&token, &self.emu.subject_token(&spec));
        let config = self.world.disk.path().join(format!("{name}-wif.json"));
        common::write(&config, &self.emu.external_account_config(&token, None));
        config
    }

    /// The secret's versions, as `keyturn store versions` lists them: (version, created,
    /// aliases), newest first.
    fn versions(&self) -> Vec<(String, SystemTime, Vec<String>)> {
        let out = self
            .world
            .command(&["store", "versions", "edge", &self.secret, "--json"])
            .env(CREDENTIALS, &self.operator)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        listing["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let aliases =
                    v["aliases"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
                (v["version"].as_str().unwrap().to_string(), at(v["created"].as_str().unwrap()), aliases)
            })
            .collect()
    }

    fn created(&self, version: &str) -> SystemTime {
        self.versions().into_iter().find(|(v, ..)| v == version).map(|(_, created, _)| created).unwrap()
    }

    fn wait_version(&self, version: &str) {
        common::wait_for_every(
            &format!("version {version} of {}", self.secret),
            Duration::from_secs(30),
            Duration::from_millis(300),
            || {
                self.versions()
                    .first()
                    .is_some_and(|(v, _, aliases)| v == version && aliases.iter().any(|a| a == "current"))
            },
        );
    }

    /// When `node` starts its rotation of `version` (created at `created`), in the emulator's time.
    fn due(&self, node: &str, version: &str, created: SystemTime) -> f64 {
        seconds(created) + 3600.0 + unit(node, &self.secret, version) * WINDOW
    }

    /// What the running agent of `node` reports as its next rotation.
    fn next_rotation(&self, node: &str) -> Option<SystemTime> {
        let status = read(self.world.disk.path().join(format!("state-{node}/status.json")));
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        status["policies"]["fleet"]["next_rotation"].as_str().map(at)
    }
}

fn rotations(admin: &str, result: &str) -> u64 {
    sample(&metrics(admin), &format!("keyturn_rotations_total{{policy=\"fleet\",result=\"{result}\"}}")).unwrap_or(0.0)
        as u64
}

/// Two agents on one emulator, node-b's clock a day ahead, a fleet secret due an hour after
/// its version was made: node-b neither rotates early nor takes node-a's live lease, and
/// node-a rotates on time.
///
/// **What "now" is to each agent.** Both decide on the store's clock: their own wall clock
/// minus the skew they measure from the emulator's answers (`Date`). The emulator's clock is
/// the test's plus what the test has advanced it by. So node-a's store time is the emulator's
/// clock, and so is node-b's: its day ahead is in the skew it measures (about +86,400 s) and
/// cancels out. When the test advances the emulator's clock, the next answer each agent reads
/// carries a `Date` that far ahead; a jump of more than 5 s is taken at once (not averaged
/// in), so both agents' store time moves with the emulator within a poll. (Their federated
/// tokens, issued on the emulator's clock, expire on such a jump: the first request after it
/// is refused and the token renewed. Federated identities, because a service-account key's
/// assertion carries the node's own time: node-b's would be refused.) An hour passes in one
/// call; nothing waits for the real clock.
///
/// **Who is due first.** Each node starts a rotation at the due time plus its own place in
/// the jitter window (a hash of node, secret and version). The secret's name is picked so that
/// node-a's place comes more than 5 minutes before node-b's for versions 1 and 2, and the
/// emulator is moved to between the two.
///
/// 1. Not early: both run while the secret is due in an hour; node-b, to whose own clock the
///    version is a day old, rotates nothing and reports its next rotation an hour away.
/// 2. On time: the emulator moves past node-a's due time (not node-b's): node-a rotates.
/// 3. No takeover of a live lease: node-a, restarted to stop just after taking the lease of the
///    next rotation, holds it; the emulator moves past node-b's due time but not the lease's
///    end: node-b finds the lease live (by its own clock it ended a day ago) and backs off.
/// 4. Once the lease has run out on the store's clock, node-b takes it and rotates.
#[test]
fn two_agents_one_a_day_ahead_decide_on_the_stores_clock() {
    let world = World::new("poll = \"1s\"\njitter = \"0%\"");
    let emu =
        blocking::Emulator::start(Emulator::builder().project_id("acme-edge").project_number(435468002770)).unwrap();
    world.add_stores(&format!(
        "[stores.edge]\nkind = \"gcp\"\nproject = \"acme-edge\"\nendpoint = \"{}\"\nretry_backoff = \"50ms\"\n",
        emu.base_url()
    ));
    let gap =
        |secret: &str, version: &str| (unit("node-b", secret, version) - unit("node-a", secret, version)) * WINDOW;
    let secret = (0..1000)
        .map(|n| format!("fleet-key-{n}"))
        .find(|s| gap(s, "1") > 300.0 && gap(s, "2") > 300.0)
        .expect("a name whose jitter puts node-a first, by 5 minutes, at versions 1 and 2");
    let mut fleet = Fleet { world, emu, operator: PathBuf::new(), secret, advanced: Duration::ZERO };
    fleet.operator = fleet.identity("operator");
    let (wif_a, wif_b) = (fleet.identity("node-a"), fleet.identity("node-b"));
    let (config_a, config_b) = (fleet.world.node("node-a"), fleet.world.node("node-b"));
    let disk = fleet.world.disk.path().to_path_buf();
    let status_of = |node: &str| disk.join(format!("state-{node}/status.json"));
    fleet.world.policy(
        "fleet",
        &format!(
            "[secret]\nstore = \"edge\"\nid = \"{}\"\n\n[rotate]\nevery = \"1h\"\ngenerate = \"password:24\"\n\
             jitter = \"20m\"\nlease = \"1h\"\n\n[[deliver]]\npath = \"fleet/key\"\n",
            fleet.secret
        ),
    );
    let out =
        fleet.world.put_into("edge", &fleet.secret, "first-value-0123456789ab", &[(CREDENTIALS, &fleet.operator)]);
    assert!(out.status.success(), "{}", text(&out));
    let created_1 = fleet.created("1");

    // 1. Not early.
    let binary = Binary::plain(&common::release::binary());
    let skewed = release("+1d");
    let agent_b = fleet.world.agent_via(&skewed, &config_b, &[], &[(CREDENTIALS, &wif_b)]);
    let mut agent_a = fleet.world.agent_via(&binary, &config_a, &[], &[(CREDENTIALS, &wif_a)]);
    let (admin_a, admin_b) = (admin_of(&status_of("node-a"), &agent_a), admin_of(&status_of("node-b"), &agent_b));
    wait_skew(&admin_b, 86_400.0);
    wait_reads(&admin_b, 3);
    wait_reads(&admin_a, 3);
    assert_eq!(fleet.versions().len(), 1, "nobody rotated early");
    assert_eq!((rotations(&admin_b, "ok"), rotations(&admin_b, "busy"), rotations(&admin_b, "error")), (0, 0, 0));
    for node in ["node-a", "node-b"] {
        let next = seconds(fleet.next_rotation(node).unwrap());
        let due = fleet.due(node, "1", created_1);
        assert!((next - due).abs() <= 1.0, "{node} is due at {due} on the store's clock, says {next}");
    }
    agent_b.wait_log("this node's clock is 1day ahead of store edge's, beyond max_clock_skew", 1);

    // 2. On time: between node-a's due time and node-b's.
    let (due_a, due_b) = (fleet.due("node-a", "1", created_1), fleet.due("node-b", "1", created_1));
    fleet.advance_to(SystemTime::UNIX_EPOCH + Duration::from_secs_f64((due_a + due_b) / 2.0));
    fleet.wait_version("2");
    let created_2 = fleet.created("2");
    assert!(seconds(created_2) >= due_a.floor(), "not before node-a's due time");
    assert!(seconds(created_2) < due_b, "on time, before node-b's");
    assert_eq!((rotations(&admin_a, "ok"), rotations(&admin_b, "ok")), (1, 0), "node-a rotated");

    // 3. Node-a takes the next lease and stops there; node-b comes due within the lease.
    drop(agent_a);
    agent_a = fleet.world.agent_via(
        &binary,
        &config_a,
        &[("KEYTURN_TEST_PAUSE_AT", "rotate:leased")],
        &[(CREDENTIALS, &wif_a)],
    );
    admin_of(&status_of("node-a"), &agent_a);
    let (due_a, due_b) = (fleet.due("node-a", "2", created_2), fleet.due("node-b", "2", created_2));
    fleet.advance_to(SystemTime::UNIX_EPOCH + Duration::from_secs_f64((due_a + due_b) / 2.0));
    agent_a.wait_log("paused at rotate:leased", 1);
    fleet.advance_to(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(due_b + 60.0));
    wait_for("node-b to find the lease held twice", Duration::from_secs(30), || rotations(&admin_b, "busy") >= 2);
    assert!(agent_b.log_text().contains("holder=node-a pid"), "{}", agent_b.log_text());
    let versions = fleet.versions();
    assert_eq!(versions[0].0, "2", "no version added over node-a's live lease: {versions:?}");
    assert_eq!(rotations(&admin_b, "ok"), 0);

    // 4. The lease runs out on the store's clock: node-b takes it over and rotates.
    drop(agent_a);
    fleet.advance_to(fleet.emulator_now() + Duration::from_secs(3600));
    fleet.wait_version("3");
    assert_eq!(rotations(&admin_b, "ok"), 1, "node-b rotated once the lease had run out");
}
