//! Google Secret Manager, end to end: the real `keyturn` binary against the emulator in
//! `tests/gcp-emulator`, authenticating with generated service-account keys through
//! `GOOGLE_APPLICATION_CREDENTIALS` (whose `token_uri` is the emulator's token endpoint).
//! The agent holds an accessor key, as a pulling node should; the operator's `store put`
//! holds an admin key.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Agent, World, google, read, text, wait_for};
use gcp_emulator::{Emulator, Failure, Method, Role, blocking};

const CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";

struct Gcp {
    world: World,
    emu: blocking::Emulator,
    admin: PathBuf,
    accessor: PathBuf,
}

impl Gcp {
    /// A world with store `edge` on the emulator (regional if `location` is given).
    fn new(location: Option<&str>) -> Gcp {
        let world = World::new("poll = \"1s\"\njitter = \"0%\"");
        let emu = google::emulator();
        let admin = google::key_file(&world, &emu, "operator", Role::Admin);
        let accessor = google::key_file(&world, &emu, "node", Role::Accessor);
        let location = location.map(|l| format!("location = \"{l}\"\n")).unwrap_or_default();
        google::add_edge_store(&world, &emu, &location);
        Gcp { world, emu, admin, accessor }
    }

    fn key(&self, name: &str, role: Role) -> PathBuf {
        google::key_file(&self.world, &self.emu, name, role)
    }

    /// `keyturn store put edge ID` as the operator.
    fn put(&self, id: &str, value: &str) {
        let out = self.world.put_into("edge", id, value, &[(CREDENTIALS, &self.admin)]);
        assert!(out.status.success(), "store put failed: {}", text(&out));
    }

    fn agent(&self) -> Agent {
        self.agent_as(&self.accessor)
    }

    fn agent_as(&self, key: &Path) -> Agent {
        self.world.agent_with(&[], &[(CREDENTIALS, key)])
    }

    fn policy(&self, name: &str, id: &str) {
        self.world.policy(
            name,
            &format!("[secret]\nstore = \"edge\"\nid = \"{id}\"\n[[deliver]]\npath = \"{name}/value\"\n"),
        );
    }

    fn delivered(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.world.bundle(name).join("value")).ok()
    }

    fn wait_delivered(&self, name: &str, value: &str) {
        wait_for(&format!("{name} = {value:?}"), Duration::from_secs(15), || {
            self.delivered(name).as_deref() == Some(value)
        });
    }

    /// Disables a version through the library, as an operator would in the console.
    fn disable_version(&self, id: &str, version: u64) {
        use keyturn::store::SecretStore;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let id = keyturn::secret::SecretId::new(id);
        runtime.block_on(self.admin_store().disable(&id, &keyturn::secret::VersionId::from(version))).unwrap();
    }

    /// The store `edge` as the operator sees it, through the library.
    fn admin_store(&self) -> keyturn::store::gcp::GcpStore {
        let config = keyturn::store::gcp::GcpStoreConfig {
            project: "acme-edge".into(),
            location: None,
            endpoint: Some(self.emu.base_url()),
            credentials: Some(self.admin.clone()),
            request_timeout: Duration::from_secs(10),
            token_timeout: Duration::from_secs(10),
            retry_backoff: Duration::from_millis(50),
        };
        keyturn::store::gcp::GcpStore::new("edge", &config, &keyturn::store::OpenContext::default()).unwrap()
    }

    /// Adds a version through the library without moving `current`, as a rotation that
    /// stopped after its first step would leave it.
    fn add_unpromoted(&self, id: &str, value: &str) {
        use keyturn::store::SecretStore;
        let store = self.admin_store();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let id = keyturn::secret::SecretId::new(id);
        runtime.block_on(store.add_version(&id, &keyturn::secret::SecretBytes::copy_from(value.as_bytes()))).unwrap();
    }
}

#[test]
fn the_agent_authenticates_delivers_current_and_picks_up_a_promotion_within_one_poll() {
    let gcp = Gcp::new(None);
    gcp.policy("db", "db-password");
    gcp.put("db-password", "first");
    let agent = gcp.agent();
    gcp.wait_delivered("db", "first");
    assert!(gcp.emu.request_counts().get(Method::Token) >= 1, "the agent fetched a token");

    gcp.put("db-password", "second");
    let promoted = Instant::now();
    gcp.wait_delivered("db", "second");
    // The bound is the behaviour under test: the next poll (1 s) picks it up. Five polls of
    // room for a loaded machine; missing the poll means the 60 s default or never.
    assert!(promoted.elapsed() < Duration::from_secs(5), "within one poll (1s): {:?}", promoted.elapsed());

    // Added but not promoted: never delivered.
    gcp.add_unpromoted("db-password", "pending-third");
    let accesses = gcp.emu.request_counts().get(Method::Access);
    wait_for("two more polls", Duration::from_secs(10), || {
        gcp.emu.request_counts().get(Method::Access) >= accesses + 2
    });
    assert_eq!(gcp.delivered("db").as_deref(), Some("second"));
    drop(agent);
    assert_eq!(gcp.world.status_json()["policies"]["db"]["version"], "2");
}

#[test]
fn steady_state_costs_one_access_per_policy_per_poll_and_no_metadata_reads() {
    let gcp = Gcp::new(None);
    for name in ["a", "b", "c"] {
        gcp.policy(name, name);
        gcp.put(name, &format!("value-{name}"));
    }
    let before = gcp.emu.request_counts();
    let started = Instant::now();
    let agent = gcp.agent();
    gcp.wait_delivered("c", "value-c");
    // Run until the start-up reads and six polls of each policy have been made.
    wait_for("six polls of each policy", Duration::from_secs(30), || {
        gcp.emu.request_counts().get(Method::Access) >= before.get(Method::Access) + 3 + 3 * 6
    });
    drop(agent);
    let lifetime = started.elapsed();
    let after = gcp.emu.request_counts();
    let delta = |m: Method| after.get(m) - before.get(m);
    assert_eq!(delta(Method::Get) + delta(Method::List) + delta(Method::GetVersion) + delta(Method::ListVersions), 0);
    assert_eq!(delta(Method::AddVersion) + delta(Method::Patch), 0, "a pulling agent never writes");
    // 3 policies: one access each at start, one at its first poll (anywhere in the first
    // second), then one a second. `lifetime` began before the agent and ended after it died,
    // so load only lengthens it and loosens the bound, never fails an agent that keeps to one
    // access per policy per poll; two per poll would reach the wait's count in about half
    // the time, past the bound.
    let polls = lifetime.as_secs_f64().ceil() as u64 + 2;
    let accesses = delta(Method::Access);
    assert!((9..=3 * polls).contains(&accesses), "{accesses} accesses in {lifetime:?}");
}

/// Delivers `first`, breaks access with `break_it`, promotes `second`, and checks that the
/// files stay `first` while broken and become `second` once `mend` is called.
fn keeps_the_last_good_files(break_it: impl Fn(&Gcp), failure_log: &str) {
    let gcp = Gcp::new(None);
    gcp.policy("db", "db-password");
    gcp.put("db-password", "first");
    let agent = gcp.agent();
    gcp.wait_delivered("db", "first");

    break_it(&gcp);
    gcp.put("db-password", "second");
    agent.wait_log(failure_log, 2);
    assert_eq!(gcp.delivered("db").as_deref(), Some("first"));
    wait_for("the failure in status", Duration::from_secs(5), || {
        gcp.world.status_json()["policies"]["db"]["last_error"].as_str().is_some_and(|e| e.contains(failure_log))
    });
    assert_eq!(gcp.world.status_json()["policies"]["db"]["version"], "1");

    gcp.emu.faults().clear();
    gcp.wait_delivered("db", "second");
}

#[test]
fn the_last_good_files_stay_through_429s() {
    keeps_the_last_good_files(
        |gcp| gcp.emu.faults().fail_next(10_000, Failure::ResourceExhausted, Some(Method::Access)),
        "quota exceeded",
    );
}

#[test]
fn the_last_good_files_stay_through_503s() {
    keeps_the_last_good_files(
        |gcp| gcp.emu.faults().fail_next(10_000, Failure::Unavailable, Some(Method::Access)),
        "unavailable, will retry",
    );
}

#[test]
fn the_last_good_files_stay_through_dropped_connections() {
    keeps_the_last_good_files(
        |gcp| gcp.emu.faults().drop_next_requests(10_000, Some(Method::Access)),
        "unavailable, will retry",
    );
}

#[test]
fn the_last_good_files_stay_through_a_checksum_mismatch() {
    keeps_the_last_good_files(|gcp| gcp.emu.faults().corrupt_next_checksums(10_000), "failed its CRC32C check");
}

#[test]
fn a_short_outage_is_absorbed_by_access_retries() {
    let gcp = Gcp::new(None);
    gcp.policy("db", "db-password");
    gcp.put("db-password", "first");
    gcp.emu.faults().fail_next(2, Failure::Unavailable, Some(Method::Access));
    gcp.emu.faults().fail_next(2, Failure::ResourceExhausted, Some(Method::Access));
    let out =
        gcp.world.command(&["sync", "--once", "--log", "debug"]).env(CREDENTIALS, &gcp.accessor).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr).matches("access retried").count(), 4, "{}", text(&out));
    assert_eq!(gcp.delivered("db").as_deref(), Some("first"));
}

#[test]
fn permission_errors_name_the_permission_and_the_role_to_grant() {
    let gcp = Gcp::new(None);
    gcp.policy("db", "db-password");
    gcp.put("db-password", "first");

    // A pulling node's accessor key cannot write.
    let out = gcp.world.put_into("edge", "db-password", "x", &[(CREDENTIALS, &gcp.accessor)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission 'secretmanager.versions.add' denied"), "{stderr}");
    assert!(stderr.contains("grant roles/secretmanager.secretVersionAdder"), "{stderr}");

    // A viewer can see the secret but not read its value.
    let viewer = gcp.key("viewer", Role::Viewer);
    let out = gcp.world.command(&["sync", "--once"]).env(CREDENTIALS, &viewer).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("secretmanager.versions.access") && stderr.contains("roles/secretmanager.secretAccessor"),
        "{stderr}"
    );
    assert!(gcp.delivered("db").is_none());
}

#[test]
fn credentials_the_token_endpoint_refuses_are_reported_as_such() {
    let gcp = Gcp::new(None);
    gcp.policy("db", "db-password");
    gcp.put("db-password", "first");
    // A key from another emulator: well formed, signed, but unknown to this token endpoint.
    let other = blocking::Emulator::start(Emulator::builder().project_id("acme-edge")).unwrap();
    let foreign = other.service_account_key("stranger@acme-edge.iam.gserviceaccount.com", Role::Admin);
    let foreign = foreign.replace(&other.token_uri(), &gcp.emu.token_uri());
    let path = gcp.world.disk.path().join("foreign.json");
    common::write(&path, &foreign);
    let out = gcp.world.command(&["sync", "--once"]).env(CREDENTIALS, &path).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("token request failed") && stderr.contains("check the node's credentials"), "{stderr}");

    // A key file that does not exist: said plainly, not as a panic.
    let out = gcp
        .world
        .command(&["sync", "--once"])
        .env(CREDENTIALS, gcp.world.disk.path().join("none.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no usable credentials"), "{}", text(&out));
}

#[test]
fn a_regional_secret_is_reached_on_its_regional_path() {
    let gcp = Gcp::new(Some("europe-west3"));
    gcp.world.add_stores(&format!(
        "[stores.global]\nkind = \"gcp\"\nproject = \"acme-edge\"\nendpoint = \"{}\"\n",
        gcp.emu.base_url()
    ));
    gcp.policy("db", "db-password");
    gcp.put("db-password", "in-region");
    let _agent = gcp.agent();
    gcp.wait_delivered("db", "in-region");

    let get = |store: &str| {
        gcp.world.command(&["store", "get", store, "db-password"]).env(CREDENTIALS, &gcp.admin).output().unwrap()
    };
    let regional = get("edge");
    assert_eq!(String::from_utf8_lossy(&regional.stdout), "in-region", "{}", text(&regional));
    gcp.put("db-password", "in-region-2");
    let by_number = gcp
        .world
        .command(&["store", "get", "edge", "db-password", "--version", "1"])
        .env(CREDENTIALS, &gcp.admin)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&by_number.stdout), "in-region", "{}", text(&by_number));
    gcp.wait_delivered("db", "in-region-2");
    // The same id on the global endpoint is another secret, which does not exist.
    let global = get("global");
    assert_eq!(global.status.code(), Some(1), "{}", text(&global));
    assert!(
        String::from_utf8_lossy(&global.stderr).contains("secret \"db-password\" does not exist in store \"global\"")
    );
}

#[test]
fn store_get_tells_a_missing_secret_from_a_missing_alias() {
    let gcp = Gcp::new(None);
    gcp.add_unpromoted("fresh", "only-latest");
    let get = |id: &str, version: &str| {
        gcp.world
            .command(&["store", "get", "edge", id, "--version", version])
            .env(CREDENTIALS, &gcp.admin)
            .output()
            .unwrap()
    };
    let no_alias = get("fresh", "current");
    assert!(String::from_utf8_lossy(&no_alias.stderr).contains("has no alias current"), "{}", text(&no_alias));
    let latest = get("fresh", "latest");
    assert_eq!(String::from_utf8_lossy(&latest.stdout), "only-latest", "{}", text(&latest));
    let missing = get("nothing-here", "current");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"), "{}", text(&missing));
}

/// `--log debug` makes a Google problem diagnosable: the endpoint and parent, the credential
/// file, its kind and where it was named, and the principal, never the key or a token.
#[test]
fn debug_lines_name_the_endpoint_the_credentials_and_the_principal() {
    let gcp = Gcp::new(Some("europe-west3"));
    gcp.policy("db", "db-password");
    let out =
        gcp.world.command(&["sync", "--once", "--log", "debug"]).env(CREDENTIALS, &gcp.accessor).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let endpoint = gcp.emu.base_url();
    for needle in [
        format!("endpoint={endpoint}"),
        "parent=projects/acme-edge/locations/europe-west3".to_string(),
        "kind=\"service_account\"".to_string(),
        format!("file={}", gcp.accessor.display()),
        "source=\"GOOGLE_APPLICATION_CREDENTIALS\"".to_string(),
        "principal=\"node@acme-edge.iam.gserviceaccount.com\"".to_string(),
    ] {
        assert!(stderr.contains(&needle), "{needle} missing in:\n{stderr}");
    }
    let key: serde_json::Value = serde_json::from_str(&read(&gcp.accessor)).unwrap();
    let key_body = key["private_key"].as_str().unwrap().lines().nth(2).unwrap().to_string();
    for needle in [key_body.as_str(), "Bearer ", "assertion="] {
        assert!(!stderr.contains(needle), "{needle:?} in the debug log");
    }
}

#[test]
fn no_value_key_or_token_reaches_the_logs() {
    let gcp = Gcp::new(None);
    gcp.policy("db", "db-password");
    gcp.put("db-password", "FIXTURE-gcp-3c9e0b");
    // Dependencies stay at info unless named: name every one that touches a request.
    let filter = "trace,gcp_auth=trace,reqwest=trace,hyper=trace,hyper_util=trace,h2=trace,rustls=trace";
    let agent = gcp.world.agent_with(&[("KEYTURN_LOG", filter)], &[(CREDENTIALS, &gcp.accessor)]);
    gcp.wait_delivered("db", "FIXTURE-gcp-3c9e0b");
    gcp.emu.faults().corrupt_next_checksums(1);
    gcp.put("db-password", "FIXTURE-gcp-second-71aa");
    agent.wait_log("failed its CRC32C check", 1);
    gcp.wait_delivered("db", "FIXTURE-gcp-second-71aa");
    let log = agent.log.clone();
    drop(agent);

    let logs = read(&log) + &read(gcp.world.state().join("status.json"));
    let key: serde_json::Value = serde_json::from_str(&read(&gcp.accessor)).unwrap();
    let key_body = key["private_key"].as_str().unwrap().lines().nth(2).unwrap().to_string();
    assert!(
        logs.contains("delivered") && logs.contains("gcp_auth") && logs.contains("TRACE"),
        "dependency logs were collected:\n{logs}"
    );
    for needle in ["FIXTURE-gcp", &key_body, "Bearer ", "assertion="] {
        assert!(!logs.contains(needle), "{needle:?} in the logs");
    }
}

#[test]
fn a_token_endpoint_slower_than_token_timeout_is_an_error_not_a_hang() {
    let gcp = Gcp::new(None);
    gcp.policy("db", "db-password");
    gcp.put("db-password", "first");
    let config = read(gcp.world.config())
        .replace("retry_backoff = \"50ms\"", "retry_backoff = \"50ms\"\ntoken_timeout = \"300ms\"");
    common::write(&gcp.world.config(), &config);
    gcp.emu.faults().set_latency(Duration::from_secs(20));
    let started = Instant::now();
    let out = gcp.world.command(&["sync", "--once"]).env(CREDENTIALS, &gcp.accessor).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token request took longer than 300ms"), "{}", text(&out));
    // gcp_auth itself sets no timeout: without token_timeout this would take the 20 s latency
    // times its own retries. (A bound, not a benchmark: it only proves the timeout applies,
    // with room for a loaded machine to start the process and time out after 300 ms.)
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

/// Secrets made the usual way (`gcloud secrets create`, `gcloud secrets versions add`) have no
/// alias: a policy reads them with `version = "latest"` or a pinned number. A node that may
/// only read values (secretAccessor) and asks for `current` is told the alias is missing and
/// the exact command that sets it, never that it lacks a permission it is not meant to have;
/// telling the two cases apart costs no metadata read.
#[test]
fn secrets_made_the_gcloud_way_are_delivered_with_latest_or_a_pinned_version() {
    let gcp = Gcp::new(None);
    gcp.add_unpromoted("db-password", "db-1");
    gcp.add_unpromoted("db-password", "db-2");
    gcp.add_unpromoted("api-key", "key-1");
    gcp.add_unpromoted("api-key", "key-2");
    let policy = |name: &str, id: &str, version: &str| {
        gcp.world.policy(
            name,
            &format!(
                "[secret]\nstore = \"edge\"\nid = \"{id}\"\nversion = {version}\n[[deliver]]\npath = \"{name}/value\"\n"
            ),
        );
    };
    policy("db", "db-password", "\"latest\"");
    policy("api", "api-key", "1");
    let out = gcp.world.command(&["sync", "--once"]).env(CREDENTIALS, &gcp.accessor).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(gcp.delivered("db").as_deref(), Some("db-2"), "latest is the newest version");
    assert_eq!(gcp.delivered("api").as_deref(), Some("key-1"), "a pinned version stays");

    // `current` on a secret without aliases, read by an accessor.
    let before = gcp.emu.request_counts();
    policy("api", "api-key", "\"current\"");
    let out = gcp.world.command(&["sync", "--once"]).env(CREDENTIALS, &gcp.accessor).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret \"api-key\" in store \"edge\" has no alias current"), "{stderr}");
    assert!(stderr.contains("gcloud secrets update api-key --update-version-aliases=current=2"), "{stderr}");
    assert!(!stderr.contains("ermission") && !stderr.contains("roles/"), "no permission is blamed: {stderr}");
    let after = gcp.emu.request_counts();
    assert_eq!(after.get(Method::Get), before.get(Method::Get), "no metadata read told the cases apart");
    assert_eq!(gcp.delivered("api").as_deref(), Some("key-1"), "the last good file stays");

    // A secret that does not exist at all is said to be missing, not its alias.
    policy("api", "no-such-secret", "\"current\"");
    let out = gcp.world.command(&["sync", "--once"]).env(CREDENTIALS, &gcp.accessor).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret \"no-such-secret\" does not exist in store \"edge\""), "{stderr}");

    // A disabled newest version is an error that says what `latest` means.
    policy("api", "api-key", "1");
    gcp.disable_version("db-password", 2);
    let out = gcp.world.command(&["sync", "--once"]).env(CREDENTIALS, &gcp.accessor).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("version 2 of secret \"db-password\" is disabled"), "{stderr}");
    assert!(stderr.contains("`latest` is the newest version whatever its state"), "{stderr}");
    assert_eq!(gcp.delivered("db").as_deref(), Some("db-2"), "the last good file stays");

    // A policy that rotates delivers `current`: it is how a rotation is promoted.
    gcp.world.policy(
        "signing",
        "[secret]\nstore = \"edge\"\nid = \"signing\"\nversion = \"latest\"\n[rotate]\nevery = \"1d\"\ngenerate = \"ed25519\"\n[[deliver]]\npath = \"signing/key.pem\"\nformat = \"pem\"\n",
    );
    let out = gcp.world.keyturn(&["validate"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a policy that rotates delivers version = \"current\""));
}
