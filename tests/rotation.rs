//! Rotation across a fleet: several real agents on one store (the file store, and the Secret
//! Manager emulator), all due at the same moment, make exactly one new version per period and
//! converge on it; a rotator killed after any step leaves the secret valid and the next run
//! finishes or cleans up; JWK sets list the previous key through its grace and not after;
//! `--revoke` disables the old value at once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime};

use common::{Agent, World, read, text, wait_for, wait_for_every};
use gcp_emulator::{Emulator, Role, blocking};

const CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";

/// One world, on one of the two stores that can rotate.
struct Fleet {
    world: World,
    /// The emulator and an admin key, for the Google variant.
    gcp: Option<(blocking::Emulator, PathBuf)>,
    store: &'static str,
}

impl Fleet {
    fn file(agent: &str) -> Fleet {
        Fleet { world: World::new(agent), gcp: None, store: "dev" }
    }

    fn gcp(agent: &str) -> Fleet {
        let world = World::new(agent);
        let emu = blocking::Emulator::start(Emulator::builder().project_id("acme-edge")).unwrap();
        // Rotating nodes need secrets.update, which only the emulator's Admin role has (on
        // Google: the custom role in policies/iam/gcp-rotator-role.yaml).
        let key = world.disk.path().join("rotator.json");
        common::write(&key, &emu.service_account_key("rotator@acme-edge.iam.gserviceaccount.com", Role::Admin));
        world.add_stores(&format!(
            "[stores.edge]\nkind = \"gcp\"\nproject = \"acme-edge\"\nendpoint = \"{}\"\nretry_backoff = \"50ms\"\n",
            emu.base_url()
        ));
        Fleet { world, gcp: Some((emu, key)), store: "edge" }
    }

    fn env(&self) -> Vec<(&'static str, &Path)> {
        self.gcp.iter().map(|(_, key)| (CREDENTIALS, key.as_path())).collect()
    }

    /// A policy rotating an Ed25519 key, delivered as PEM and as a JWK set.
    fn signing_policy(&self, rotate: &str) {
        self.world.policy(
            "signing",
            &format!(
                "[secret]\nstore = \"{}\"\nid = \"signing-key\"\n\n[rotate]\ngenerate = \"ed25519\"\n{rotate}\n\n\
                 [[deliver]]\npath = \"api/signing.pem\"\nformat = \"pem\"\n\n\
                 [[deliver]]\npath = \"api/jwks.json\"\nformat = \"jwks\"\nmode = \"0444\"\n",
                self.store
            ),
        );
    }

    fn keyturn(&self, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.world.command_for(config, args).envs(self.env()).envs(env.iter().copied()).output().unwrap()
    }

    fn rotate_now(&self, config: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["rotate", "signing", "--now"];
        args.extend_from_slice(extra);
        self.keyturn(config, &args, &[])
    }

    /// The store's view: `store get` of a version or alias, as text (None if it fails).
    fn get(&self, version: &str) -> Option<String> {
        let out =
            self.keyturn(&self.world.config(), &["store", "get", self.store, "signing-key", "--version", version], &[]);
        out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
    }

    fn agent(&self, config: &Path) -> Agent {
        self.world.agent_for(config, &[], &self.env())
    }
}

/// Version numbers and creation times, from the library (the CLI shows values, not metadata).
fn versions(fleet: &Fleet) -> Vec<(u64, SystemTime, keyturn::store::VersionState)> {
    use keyturn::store::SecretStore;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let id = keyturn::secret::SecretId::new("signing-key");
    let mut all = runtime.block_on(async {
        match &fleet.gcp {
            None => {
                let config = keyturn::store::file::FileStoreConfig { dir: fleet.world.store(), seed: None };
                let store = keyturn::store::file::FileStore::open("dev", &config).await.unwrap();
                store.versions(&id).await.unwrap()
            }
            Some((emu, key)) => {
                let config = keyturn::store::gcp::GcpStoreConfig {
                    project: "acme-edge".into(),
                    location: None,
                    endpoint: Some(emu.base_url()),
                    credentials: Some(key.clone()),
                    request_timeout: Duration::from_secs(10),
                    token_timeout: Duration::from_secs(10),
                    retry_backoff: Duration::from_millis(50),
                };
                keyturn::store::gcp::GcpStore::new("edge", &config, &keyturn::store::OpenContext::default())
                    .unwrap()
                    .versions(&id)
                    .await
                    .unwrap()
            }
        }
    });
    all.sort_by_key(|v| v.id.number());
    all.into_iter().map(|v| (v.id.number().unwrap(), v.created.unwrap(), v.state)).collect()
}

/// N agents, all due at the same moment (no jitter), for three periods: exactly one new
/// version per period, no orphans, and every agent ends up delivering the same key.
fn one_rotation_per_period(fleet: Fleet, agents: usize) {
    const PERIOD: Duration = Duration::from_secs(4);
    fleet.signing_policy("every = \"4s\"\njitter = \"0s\"\ngrace = \"2s\"\nlease = \"30s\"");
    let configs: Vec<PathBuf> = (0..agents).map(|i| fleet.world.node(&format!("node-{i}"))).collect();
    for config in &configs {
        let text = read(config).replace("[agent]\n", "[agent]\npoll = \"1s\"\njitter = \"0%\"\n");
        common::write(config, &text);
    }
    let running: Vec<Agent> = configs.iter().map(|c| fleet.agent(c)).collect();
    // The first version is made by exactly one of them (the others find the lease taken).
    wait_for("a first version", Duration::from_secs(20), || fleet.get("current").is_some());
    // Listing the store is a process's worth of work (and requests, on the emulator): a few
    // times a second is enough.
    let every = Duration::from_millis(250);
    wait_for_every("three rotations after the first version", PERIOD * 3 + Duration::from_secs(30), every, || {
        versions(&fleet).len() >= 4
    });
    let history = versions(&fleet);
    assert!(history.len() >= 3, "at least the first version and two rotations: {history:?}");
    for pair in history.windows(2) {
        let gap = pair[1].1.duration_since(pair[0].1).unwrap();
        // Due exactly one period after the current version was made; a node wakes for it
        // within its poll. Two versions in one period would show a gap far below the period.
        // The upper bound is the behaviour too (on schedule, not a period late): the store's
        // own creation times, with three polls of room for a loaded machine.
        assert!(
            gap >= PERIOD - Duration::from_millis(50) && gap < PERIOD + Duration::from_secs(3),
            "versions {} and {}: {gap:?} apart; {history:?}",
            pair[0].0,
            pair[1].0
        );
    }

    // Converge: every agent delivers the store's current key.
    let current = fleet.get("current").unwrap();
    let newest = history.last().unwrap().0;
    for (i, _) in configs.iter().enumerate() {
        let pem = fleet.world.run_dir().join(format!("node-{i}/api/signing.pem"));
        wait_for(&format!("node-{i} to converge"), Duration::from_secs(10), || {
            std::fs::read_to_string(&pem).is_ok_and(|p| p == current || fleet.get("current").is_some_and(|c| c == p))
        });
    }
    // Stop them just after a rotation has finished, not in the middle of the next one (a
    // kill between the pending and promoted steps rightly leaves a pending alias behind).
    let made = versions(&fleet).len();
    wait_for_every("the next rotation", PERIOD * 2 + Duration::from_secs(20), every, || versions(&fleet).len() > made);
    wait_for("no rotation in flight", Duration::from_secs(10), || fleet.get("pending").is_none());
    drop(running);
    // Nothing was left half-done: no pending alias, no lease, no version that never became current.
    let after = versions(&fleet);
    assert!(after.last().unwrap().0 >= newest);
    assert!(fleet.get("pending").is_none(), "no pending version left");
}

#[test]
fn two_agents_on_one_file_store_rotate_once_per_period() {
    one_rotation_per_period(Fleet::file(""), 2);
}

#[test]
fn five_agents_on_one_file_store_rotate_once_per_period() {
    one_rotation_per_period(Fleet::file(""), 5);
}

#[test]
fn two_agents_on_the_emulator_rotate_once_per_period() {
    one_rotation_per_period(Fleet::gcp(""), 2);
}

#[test]
fn five_agents_on_the_emulator_rotate_once_per_period() {
    one_rotation_per_period(Fleet::gcp(""), 5);
}

/// Kills `keyturn rotate --now` on `node` right after `step`.
fn kill_after(fleet: &Fleet, config: &Path, step: &str) {
    let log = fleet.world.disk.path().join(format!("rotate-{step}.log"));
    let mut child = fleet
        .world
        .command_for(config, &["rotate", "signing", "--now"])
        .envs(fleet.env())
        .env("KEYTURN_TEST_PAUSE_AT", format!("rotate:{step}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let marker = format!("paused at rotate:{step}");
    wait_for(&marker, Duration::from_secs(15), || read(&log).contains(&marker));
    child.kill().unwrap();
    child.wait().unwrap();
}

fn a_rotator_killed_after_each_step(fleet: Fleet) {
    fleet.signing_policy("every = \"30d\"\ngrace = \"1s\"\nlease = \"2s\"");
    let node_a = fleet.world.node("node-a");
    let node_b = fleet.world.node("node-b");
    let first = fleet.rotate_now(&node_a, &[]);
    assert!(first.status.success(), "{}", text(&first));

    let steps = ["leased", "added", "pending", "checked", "promoted", "cleaned"];
    for (index, step) in steps.iter().enumerate() {
        let before = fleet.get("current").unwrap();
        kill_after(&fleet, &node_a, step);
        // Valid at every point: `current` is readable and a key; the rotation is visible only
        // once promoted.
        let now = fleet.get("current").expect("current stays readable");
        assert!(now.starts_with("-----BEGIN PRIVATE KEY-----"), "{step}");
        let promoted = index >= steps.iter().position(|s| *s == "promoted").unwrap();
        assert_eq!(now != before, promoted, "after a kill at {step}");

        // Another node finishes the job once the dead rotator's lease (2s) expires; until then
        // it is refused for that reason and no other.
        let mut out = fleet.rotate_now(&node_b, &[]);
        let lease = format!("{step}: node-b to rotate once the dead rotator's lease expires");
        wait_for_every(&lease, Duration::from_secs(30), Duration::from_millis(250), || {
            if !out.status.success() {
                assert!(String::from_utf8_lossy(&out.stderr).contains("holds the lease"), "{step}: {}", text(&out));
                out = fleet.rotate_now(&node_b, &[]);
            }
            out.status.success()
        });
        assert!(out.status.success(), "{step}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if matches!(*step, "pending" | "checked") {
            assert!(
                stderr.contains("resumed version"),
                "a checked pending version is finished, not thrown away: {stderr}"
            );
        }
        assert!(fleet.get("pending").is_none(), "{step}: no pending left");
        let current = fleet.get("current").unwrap();
        assert!(current != now && current.starts_with("-----BEGIN PRIVATE KEY-----"), "{step}");
    }
    // Versions the killed runs added but never promoted (a kill after "added") are enabled but
    // never delivered; once their grace (1s) has passed, the next rotation disables them with
    // the rest, leaving only current and previous (keep = 2). A version's grace counts from
    // when the next one was made, so every grace has passed once the newest is 1s old.
    let newest = versions(&fleet).last().unwrap().1;
    wait_for("the grace of every replaced version to pass", Duration::from_secs(10), || {
        SystemTime::now() >= newest + Duration::from_secs(1)
    });
    let out = fleet.rotate_now(&node_b, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let enabled = versions(&fleet).iter().filter(|v| v.2 == keyturn::store::VersionState::Enabled).count();
    assert_eq!(enabled, 2, "{:?}", versions(&fleet));
}

#[test]
fn a_rotator_killed_after_each_step_leaves_the_file_store_valid() {
    a_rotator_killed_after_each_step(Fleet::file(""));
}

#[test]
fn a_rotator_killed_after_each_step_leaves_the_emulator_valid() {
    a_rotator_killed_after_each_step(Fleet::gcp(""));
}

/// The key a JWK set lists under `kid`, verifying `signature` over `message`.
fn jwks_verifies(jwks: &str, message: &[u8], signature: &[u8]) -> bool {
    use base64::Engine as _;
    let set: serde_json::Value = serde_json::from_str(jwks).unwrap();
    set["keys"].as_array().unwrap().iter().any(|key| {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, x)
            .verify(message, signature)
            .is_ok()
    })
}

fn kids(jwks: &str) -> usize {
    serde_json::from_str::<serde_json::Value>(jwks).unwrap()["keys"].as_array().unwrap().len()
}

#[test]
fn the_jwks_lists_the_previous_key_through_its_grace_and_not_after() {
    let fleet = Fleet::file("poll = \"1s\"\njitter = \"0%\"");
    fleet.signing_policy("every = \"30d\"\ngrace = \"5s\"");
    let agent = fleet.agent(&fleet.world.config());
    let bundle = fleet.world.bundle("api");
    wait_for("the first key", Duration::from_secs(15), || bundle.join("jwks.json").exists());
    assert_eq!(kids(&read(bundle.join("jwks.json"))), 1);

    // A token signed with the key of the moment.
    let old_pem = read(bundle.join("signing.pem"));
    let old = keyturn::generate::PrivateKey::parse(&keyturn::secret::SecretBytes::from(old_pem.clone())).unwrap();
    let token = b"header.payload-signed-before-the-rotation";
    let signature = old.sign(token);

    let out = fleet.rotate_now(&fleet.world.config(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rotated by the running agent"), "{}", text(&out));
    wait_for("the new key", Duration::from_secs(5), || read(bundle.join("signing.pem")) != old_pem);
    let during = read(bundle.join("jwks.json"));
    assert_eq!(kids(&during), 2, "{during}");
    assert!(jwks_verifies(&during, token, &signature), "a token signed before the rotation still verifies");

    wait_for("the grace to end", Duration::from_secs(15), || kids(&read(bundle.join("jwks.json"))) == 1);
    let after = read(bundle.join("jwks.json"));
    assert!(!jwks_verifies(&after, token, &signature), "after grace only the current key is listed");
    let new =
        keyturn::generate::PrivateKey::parse(&keyturn::secret::SecretBytes::from(read(bundle.join("signing.pem"))))
            .unwrap();
    assert!(jwks_verifies(&after, b"m", &new.sign(b"m")));
    drop(agent);
}

#[test]
fn revoke_disables_the_old_version_at_once_and_drops_it_from_the_jwks() {
    let fleet = Fleet::gcp("poll = \"1s\"\njitter = \"0%\"");
    fleet.signing_policy("every = \"30d\"\ngrace = \"1h\"");
    let agent = fleet.agent(&fleet.world.config());
    let bundle = fleet.world.bundle("api");
    wait_for("the first key", Duration::from_secs(15), || bundle.join("jwks.json").exists());
    let out = fleet.rotate_now(&fleet.world.config(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("two keys in grace", Duration::from_secs(5), || kids(&read(bundle.join("jwks.json"))) == 2);
    let leaked = read(bundle.join("signing.pem"));
    let leaked_key = keyturn::generate::PrivateKey::parse(&keyturn::secret::SecretBytes::from(leaked.clone())).unwrap();
    let forged = leaked_key.sign(b"forged");

    let out = fleet.rotate_now(&fleet.world.config(), &["--revoke"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("REVOKE signing") && stderr.contains("REVOKED signing: disabled version(s) 2"), "{stderr}");
    // Every line says what revoke does: no version is `previous` any more.
    let said = format!("{stderr}{}", String::from_utf8_lossy(&out.stdout));
    assert!(!said.contains("(previous: 2)"), "{said}");
    assert!(said.contains("version 3 is current (previous: none: version 2 is revoked)"), "{said}");
    // The leaked version can no longer be read from the store...
    assert!(fleet.get("2").is_none(), "the revoked version is disabled");
    // ...and leaves the verification set at the next delivery, despite the hour of grace.
    wait_for("the revoked key to leave the JWKS", Duration::from_secs(5), || {
        let jwks = read(bundle.join("jwks.json"));
        kids(&jwks) == 1 && !jwks_verifies(&jwks, b"forged", &forged)
    });

    // The log says who did what to which version, never the value.
    let log = agent.log_text() + &stderr;
    for needle in ["rotation lease taken", "rotation promoted", "REVOKED"] {
        assert!(log.contains(needle), "{needle} missing");
    }
    // The running agent did the rotation (through its control socket), so its log has the steps.
    assert!(log.contains("node=test-node version=3 previous=none revoked=2"), "{log}");
    let body = leaked.lines().nth(1).unwrap();
    assert!(!log.contains(body), "a key line leaked into the logs");
    drop(agent);
}

#[test]
fn a_failing_check_command_discards_the_new_version() {
    let fleet = Fleet::file("");
    fleet.signing_policy("every = \"30d\"\ncheck = [\"sh\", \"-c\", \"grep -q 'BEGIN PRIVATE KEY' && test \\\"$KEYTURN_VERSION\\\" = 1\"]");
    let first = fleet.rotate_now(&fleet.world.config(), &[]);
    assert!(first.status.success(), "the first version passes the check: {}", text(&first));
    let out = fleet.rotate_now(&fleet.world.config(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("version 2 failed its check and was discarded"),
        "{}",
        text(&out)
    );
    assert!(fleet.get("pending").is_none());
    assert!(fleet.get("2").is_none(), "the discarded version is disabled");
    assert_eq!(fleet.get("current"), fleet.get("1"));
}

#[test]
fn rotate_refuses_what_it_cannot_do() {
    let fleet = Fleet::file("");
    fleet.world.simple_policy("plain", "plain", &[("p/x", "raw")]);
    let out = fleet.keyturn(&fleet.world.config(), &["rotate", "plain", "--now"], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no [rotate] section"));
    let out = fleet.keyturn(&fleet.world.config(), &["rotate", "nope", "--now"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no policy named \"nope\""), "{}", text(&out));
    let out = fleet.keyturn(&fleet.world.config(), &["rotate", "plain"], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
}

#[test]
fn per_node_secrets_are_rotated_by_their_own_node_without_a_lease() {
    let fleet = Fleet::file("");
    fleet.world.policy(
        "mtls",
        "[secret]\nstore = \"dev\"\nid = \"mtls-${NODE}\"\n[rotate]\nevery = \"30d\"\ngenerate = \"ecdsa-p256\"\nowner = \"node\"\n[[deliver]]\npath = \"mtls/key.pem\"\nformat = \"pem\"\n[[deliver]]\npath = \"mtls/cert-key.pub\"\nformat = \"public-pem\"\n",
    );
    let a = fleet.world.node("node-a");
    let b = fleet.world.node("node-b");
    for config in [&a, &b] {
        let out = fleet.keyturn(config, &["sync", "--once"], &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let key = |node: &str| read(fleet.world.run_dir().join(format!("{node}/mtls/key.pem")));
    assert_ne!(key("node-a"), key("node-b"), "each node has its own key");
    assert!(read(fleet.world.store().join("mtls-node-a/secret.json")).contains("\"current\": \"1\""));
    assert!(!read(fleet.world.store().join("mtls-node-a/secret.json")).contains("keyturn.lease"));
    assert!(read(fleet.world.run_dir().join("node-a/mtls/cert-key.pub")).starts_with("-----BEGIN PUBLIC KEY-----"));
}

#[test]
fn an_agent_killed_after_each_step_of_a_scheduled_rotation_recovers_when_restarted() {
    let fleet = Fleet::file("poll = \"1s\"\njitter = \"0%\"");
    // Due two seconds after each version is made; the lease outlives the test, so recovery
    // relies on the restarted agent seeing its own node's dead pid.
    fleet.signing_policy("every = \"2s\"\njitter = \"0s\"\ngrace = \"1s\"\nlease = \"1h\"");
    let first = fleet.rotate_now(&fleet.world.config(), &[]);
    assert!(first.status.success(), "{}", text(&first));
    for step in ["leased", "added", "pending", "checked", "promoted", "cleaned"] {
        let before = fleet.get("current").unwrap();
        let agent =
            fleet.world.agent_for(&fleet.world.config(), &[("KEYTURN_TEST_PAUSE_AT", &format!("rotate:{step}"))], &[]);
        agent.wait_log(&format!("paused at rotate:{step}"), 1);
        drop(agent); // SIGKILL
        let after_kill = fleet.get("current").expect("current stays readable");
        assert!(after_kill.starts_with("-----BEGIN PRIVATE KEY-----"), "{step}");

        // Restarted, the agent takes over its own dead lease and finishes or cleans up.
        let agent = fleet.agent(&fleet.world.config());
        wait_for(&format!("recovery after {step}"), Duration::from_secs(20), || {
            fleet.get("pending").is_none()
                && fleet.get("current").is_some_and(|c| c != before)
                && !read(fleet.world.store().join("signing-key/secret.json")).contains("keyturn.lease")
        });
        wait_for("delivery of the new current", Duration::from_secs(10), || {
            std::fs::read_to_string(fleet.world.bundle("api/signing.pem")).ok() == fleet.get("current")
        });
        drop(agent);
    }
}
