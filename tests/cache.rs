//! The sealed last-known-good cache, end to end: the real binary against the Secret Manager
//! emulator, a node that reboots while its uplink is down (runtime directory wiped, store out
//! of reach), entries that must be refused, revocations, and what stays on disk.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{World, google, read, text, wait_for};
use gcp_emulator::{Method, Role, blocking};

const CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";

/// A node with a `gcp` store on the emulator and a cache key in a file beside (not inside) its
/// state directory.
struct Node {
    world: World,
    emu: blocking::Emulator,
    admin: PathBuf,
    reader: PathBuf,
    key: PathBuf,
}

impl Node {
    fn new(cache: &str) -> Node {
        let world = World::new("poll = \"1s\"\njitter = \"0%\"");
        let emu = google::emulator();
        let admin = google::key_file(&world, &emu, "operator", Role::Admin);
        let reader = google::key_file(&world, &emu, "node", Role::Admin);
        let cache_key = world.disk.path().join("keys/cache.key");
        write_key(&cache_key, 7);
        let extra = format!("request_timeout = \"2s\"\n\n[cache]\nkey_file = \"{}\"\n{cache}\n", cache_key.display());
        google::add_edge_store(&world, &emu, &extra);
        Node { world, emu, admin, reader, key: cache_key }
    }

    fn put(&self, id: &str, value: &str) {
        let out = self.world.put_into("edge", id, value, &[(CREDENTIALS, &self.admin)]);
        assert!(out.status.success(), "{}", text(&out));
    }

    fn sync(&self) -> std::process::Output {
        self.world.command(&["sync", "--once"]).env(CREDENTIALS, &self.reader).output().unwrap()
    }

    /// The uplink goes down: every connection to the store is closed on accept.
    fn cut_off(&self) {
        self.emu.faults().drop_next_connections(1_000_000);
    }

    fn reconnect(&self) {
        self.emu.faults().clear();
    }

    /// A reboot: the runtime directory (tmpfs) is empty again.
    fn wipe_runtime(&self) {
        for entry in std::fs::read_dir(self.world.run_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { std::fs::remove_dir_all(&path).unwrap() } else { std::fs::remove_file(&path).unwrap() }
        }
    }

    fn entry(&self, policy: &str) -> PathBuf {
        self.world.state().join("cache").join(format!("{policy}.sealed"))
    }
}

fn write_key(path: &Path, byte: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    common::write(path, &String::from_utf8(vec![b'A' + byte % 26; 32]).unwrap());
}

/// Every regular file of a directory tree, with its bytes, by path inside it.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = common::walk(dir)
        .into_iter()
        .filter(|p| p.is_file() && !p.to_string_lossy().contains("/."))
        .map(|p| (p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

const POLICIES: &[(&str, &str)] = &[
    (
        "db",
        "[secret]\nstore = \"edge\"\nid = \"db-password\"\n[[deliver]]\npath = \"app/db-password\"\n[[deliver]]\npath = \"app/db.env\"\nformat = \"env\"\nkey = \"DB_PASSWORD\"\n",
    ),
    (
        "api",
        "[secret]\nstore = \"edge\"\nid = \"api-token\"\n[secrets.db]\nstore = \"edge\"\nid = \"db-password\"\n[[deliver]]\npath = \"api/config.ini\"\nformat = \"template\"\ntemplate = \"token={{ secret }}\\ndb={{ secrets.db }}\\n\"\n",
    ),
    (
        "signing",
        "[secret]\nstore = \"edge\"\nid = \"signing-key\"\n[rotate]\nevery = \"30d\"\ngrace = \"1d\"\ngenerate = \"ed25519\"\n[[deliver]]\npath = \"web/signing.pem\"\nformat = \"pem\"\n[[deliver]]\npath = \"web/jwks.json\"\nformat = \"jwks\"\n",
    ),
];

/// The node delivers, loses its uplink and reboots: the agent rebuilds every bundle byte for
/// byte from the sealed cache and says READY without any answer from the store; the bundles are
/// marked stale. When the store is back with a newer version, the node converges and the mark
/// clears.
#[test]
fn a_node_that_reboots_offline_comes_back_with_its_secrets_and_converges_when_the_store_returns() {
    let node = Node::new("");
    for (name, text) in POLICIES {
        node.world.policy(name, text);
    }
    node.put("db-password", "FIXTURE-db-1");
    node.put("api-token", "FIXTURE-token-1");
    let first = node.sync();
    assert!(first.status.success(), "{}", text(&first));
    // The signing key rotates once more, so its JWK set lists a previous key too.
    let rotated = node.world.command(&["rotate", "signing", "--now"]).env(CREDENTIALS, &node.admin).output().unwrap();
    assert!(rotated.status.success(), "{}", text(&rotated));
    assert!(node.sync().status.success());
    let delivered = snapshot(node.world.run_dir());
    assert_eq!(delivered.len(), 5, "{:?}", delivered.iter().map(|f| &f.0).collect::<Vec<_>>());
    for (name, _) in POLICIES {
        assert!(node.entry(name).exists(), "{name} is sealed");
    }

    node.cut_off();
    node.wipe_runtime();
    let answered = node.emu.request_counts().get(Method::Access);
    let socket_path = node.world.disk.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let agent = node.world.agent_with(&[], &[("NOTIFY_SOCKET", &socket_path), (CREDENTIALS, &node.reader)]);
    let mut heard = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buffer = [0u8; 4096];
    while !heard.lines().any(|l| l == "READY=1") && Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buffer) {
            heard.push_str(&String::from_utf8_lossy(&buffer[..n]));
            heard.push('\n');
        }
    }
    assert!(heard.lines().any(|l| l == "READY=1"), "READY from the cache: {heard}\n{}", agent.log_text());
    assert_eq!(snapshot(node.world.run_dir()), delivered, "every bundle back, byte for byte");
    assert_eq!(node.emu.request_counts().get(Method::Access), answered, "no store answer was needed");
    let status = node.world.status_json();
    for (name, _) in POLICIES {
        let stale = &status["policies"][name]["stale"];
        assert!(stale["sealed_at"].is_string(), "{name} is marked stale: {status}");
    }
    let metrics = common::http::request(&node.world.admin(), "GET", "/metrics", None).unwrap().1;
    assert!(metrics.contains("keyturn_secret_stale_seconds{policy=\"db\"}"), "{metrics}");

    // The uplink returns, with a newer version of one secret.
    node.reconnect();
    node.put("db-password", "FIXTURE-db-2");
    wait_for("the newer version", Duration::from_secs(20), || {
        read(node.world.bundle("app/db-password")) == "FIXTURE-db-2"
    });
    wait_for("every stale mark cleared", Duration::from_secs(20), || {
        let status = node.world.status_json();
        POLICIES.iter().all(|(name, _)| status["policies"][name]["stale"].is_null())
    });
    let metrics = common::http::request(&node.world.admin(), "GET", "/metrics", None).unwrap().1;
    assert!(!metrics.contains("keyturn_secret_stale_seconds{"), "{metrics}");
    wait_for("the template's secret too", Duration::from_secs(20), || {
        read(node.world.bundle("api/config.ini")).contains("db=FIXTURE-db-2")
    });
}

/// Entries that must not be delivered are refused, each with a message that says why, and
/// nothing from them is written: a wrong key, a flipped bit, an entry moved to another policy's
/// name, and one older than max_stale.
#[test]
fn entries_that_must_not_be_delivered_are_refused_with_a_reason() {
    let node = Node::new("max_stale = \"1h\"");
    node.world.policy("db", POLICIES[0].1);
    node.world.policy("other", "[secret]\nstore = \"edge\"\nid = \"other\"\n[[deliver]]\npath = \"other/value\"\n");
    node.put("db-password", "FIXTURE-db-1");
    node.put("other", "FIXTURE-other");
    assert!(node.sync().status.success());
    node.cut_off();
    let sealed = std::fs::read(node.entry("db")).unwrap();

    let offline_sync = |why: &str| -> String {
        node.wipe_runtime();
        let out = node.sync();
        assert_eq!(out.status.code(), Some(1), "{why}: {}", text(&out));
        assert!(!node.world.bundle("app").exists(), "{why}: nothing from the entry is delivered");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // A wrong key.
    write_key(&node.key, 9);
    let stderr = offline_sync("wrong key");
    assert!(stderr.contains("sealed with another key") && stderr.contains(&node.key.display().to_string()), "{stderr}");
    write_key(&node.key, 7);

    // A flipped bit, in the header and in the ciphertext.
    for at in [20, sealed.len() / 2, sealed.len() - 1] {
        let mut flipped = sealed.clone();
        flipped[at] ^= 0x10;
        common::write_bytes(&node.entry("db"), &flipped);
        let stderr = offline_sync("a flipped bit");
        assert!(stderr.contains("cannot restore from the sealed cache"), "{stderr}");
    }

    // Another policy's entry under this policy's name.
    std::fs::copy(node.entry("other"), node.entry("db")).unwrap();
    let stderr = offline_sync("a moved entry");
    assert!(
        stderr.contains("sealed for node test-node, policy other") && stderr.contains("not node test-node, policy db"),
        "{stderr}"
    );

    // Older than max_stale: the policy allows one second, and the entry is older than that.
    common::write_bytes(&node.entry("db"), &sealed);
    node.world.policy("db", &format!("{}[cache]\nmax_stale = \"1s\"\n", POLICIES[0].1));
    let sealed_at = std::fs::metadata(node.entry("db")).unwrap().modified().unwrap();
    wait_for("the entry to be older than a second", Duration::from_secs(5), || {
        sealed_at.elapsed().is_ok_and(|age| age > Duration::from_millis(1500))
    });
    let stderr = offline_sync("too old");
    assert!(stderr.contains("longer than max_stale (1s)"), "{stderr}");
}

/// A revocation is never undone by the cache. The node that saw it (its own agent revoked the
/// key) comes back offline without the revoked version; a node that was away when it happened
/// comes back with what it had, and replaces it as soon as its store answers. A version the
/// store reports disabled is dropped from the cache of every node that reads it.
#[test]
fn a_revoked_or_disabled_version_never_comes_back_from_the_cache() {
    let node = Node::new("");
    let signing = POLICIES[2].1;
    node.world.policy("signing", signing);
    let away = node.world.node("away");
    let sync_as = |config: &Path| {
        node.world.command_for(config, &["sync", "--once"]).env(CREDENTIALS, &node.reader).output().unwrap()
    };
    assert!(sync_as(&node.world.config()).status.success());
    let rotate = |args: &[&str]| {
        let mut all = vec!["rotate", "signing", "--now"];
        all.extend_from_slice(args);
        let out = node.world.command(&all).env(CREDENTIALS, &node.admin).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    };
    rotate(&[]);
    assert!(sync_as(&node.world.config()).status.success());
    assert!(sync_as(&away).status.success());
    let away_runtime = node.world.run_dir().join("away");
    let leaked = read(away_runtime.join("web/signing.pem"));
    assert_eq!(leaked, read(node.world.bundle("web/signing.pem")), "both nodes deliver version 2");

    // The key leaks; this node's agent revokes it, the other node is away.
    let agent = node.world.agent_with(&[], &[(CREDENTIALS, &node.reader)]);
    agent.wait_log("sync finished", 1);
    rotate(&["--revoke"]);
    wait_for("this node delivers version 3", Duration::from_secs(10), || {
        read(node.world.bundle("web/signing.pem")) != leaked
    });
    drop(agent);

    // Both reboot while the uplink is down.
    node.cut_off();
    node.wipe_runtime();
    let here = sync_as(&node.world.config());
    assert_eq!(here.status.code(), Some(1), "the store cannot be read: {}", text(&here));
    let restored = read(node.world.bundle("web/signing.pem"));
    assert_ne!(restored, leaked, "the node that saw the revocation does not bring the revoked key back");
    let jwks = read(node.world.bundle("web/jwks.json"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&jwks).unwrap()["keys"].as_array().unwrap().len(),
        1,
        "{jwks}"
    );

    let there = sync_as(&away);
    assert_eq!(there.status.code(), Some(1), "{}", text(&there));
    assert_eq!(read(away_runtime.join("web/signing.pem")), leaked, "the node that was away had not seen it");
    // As soon as its store answers, it is replaced.
    node.reconnect();
    let there = sync_as(&away);
    assert!(there.status.success(), "{}", text(&there));
    assert_eq!(read(away_runtime.join("web/signing.pem")), restored, "replaced by the version that revoked it");

    // The current version disabled by hand in the store: whoever reads it drops its entry.
    disable(&node, "signing-key", 3);
    let out = sync_as(&node.world.config());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("purged from the sealed cache"), "{}", text(&out));
    assert!(!node.entry("signing").exists(), "the entry of a disabled version is gone");
    node.wipe_runtime();
    node.cut_off();
    let out = sync_as(&node.world.config());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!node.world.bundle("web/signing.pem").exists(), "nothing is restored after the store disabled it");
}

/// Disables a version in the store, as an operator would (through the library).
fn disable(node: &Node, id: &str, version: u64) {
    use keyturn::store::SecretStore;
    let config = keyturn::store::gcp::GcpStoreConfig {
        project: "acme-edge".into(),
        location: None,
        endpoint: Some(node.emu.base_url()),
        credentials: Some(node.admin.clone()),
        request_timeout: Duration::from_secs(10),
        token_timeout: Duration::from_secs(10),
        retry_backoff: Duration::from_millis(50),
    };
    let store = keyturn::store::gcp::GcpStore::new("edge", &config, &keyturn::store::OpenContext::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let id = keyturn::secret::SecretId::new(id);
    runtime.block_on(store.disable(&id, &keyturn::secret::VersionId::from(version))).unwrap();
}

/// What the cache puts on disk holds no value, in any encoding a format makes of it.
#[test]
fn the_state_directory_holds_no_secret_value_in_any_encoding() {
    use base64::Engine as _;
    let node = Node::new("");
    for (name, text) in POLICIES {
        node.world.policy(name, text);
    }
    node.put("db-password", "FIXTURE-db-value-3141");
    node.put("api-token", "FIXTURE-token-value-2718");
    assert!(node.sync().status.success());
    let rotated = node.world.command(&["rotate", "signing", "--now"]).env(CREDENTIALS, &node.admin).output().unwrap();
    assert!(rotated.status.success(), "{}", text(&rotated));
    assert!(node.sync().status.success());

    let mut needles: Vec<String> = Vec::new();
    for value in ["FIXTURE-db-value-3141", "FIXTURE-token-value-2718"] {
        needles.push(value.to_string());
        needles.push(base64::engine::general_purpose::STANDARD.encode(value));
        needles.push(value.trim_start_matches("FIXTURE-").to_string());
        needles.push(value.bytes().map(|b| format!("{b:02x}")).collect());
    }
    needles.push(read(node.world.bundle("app/db.env")).trim().to_string());
    needles.push(read(node.world.bundle("api/config.ini")).lines().next().unwrap().to_string());
    for line in read(node.world.bundle("web/signing.pem")).lines().filter(|l| !l.starts_with("-----")) {
        needles.push(line.to_string());
    }
    // The private key as the bytes it is made of (the PEM's body, decoded), not only as text.
    let pem = read(node.world.bundle("web/signing.pem"));
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    let mut scanned = 0;
    for file in common::walk(&node.world.state()) {
        let bytes = std::fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for needle in &needles {
            assert!(!text.contains(needle.as_str()), "{} holds {needle:?}", file.display());
        }
        assert!(
            !bytes.windows(der.len()).any(|w| w == der.as_slice()),
            "{} holds the private key's DER",
            file.display()
        );
        scanned += 1;
    }
    assert!(scanned >= 4, "the cache's entries and the status file were scanned ({scanned} files)");
}

/// A cache key that is configured but missing, or not a key, is named by `validate` and stops
/// `sync --once` with the same message; nothing is sealed without it, in any form.
#[test]
fn a_missing_or_malformed_key_is_an_error_that_names_it() {
    let node = Node::new("");
    node.world.policy("db", POLICIES[0].1);
    node.put("db-password", "FIXTURE-db-value-3141");
    for (contents, expected) in
        [(None, "cannot read the cache key"), (Some("too short"), "is not a key: expected 32 random bytes")]
    {
        match contents {
            None => std::fs::remove_file(&node.key).unwrap(),
            Some(text) => common::write(&node.key, text),
        }
        let named = format!("key_file {}", node.key.display());
        let validate = node.world.command(&["validate"]).output().unwrap();
        assert_eq!(validate.status.code(), Some(64), "{}", text(&validate));
        let stderr = String::from_utf8_lossy(&validate.stderr);
        assert!(stderr.contains("cache.key_file") && stderr.contains(&named) && stderr.contains(expected), "{stderr}");

        let sync = node.sync();
        assert_eq!(sync.status.code(), Some(1), "{}", text(&sync));
        let stderr = String::from_utf8_lossy(&sync.stderr);
        assert!(stderr.contains(&named) && stderr.contains(expected), "{stderr}");
        assert!(!node.world.bundle("app/db-password").exists(), "the agent does not run without its cache key");
        assert!(!node.entry("db").exists(), "nothing is sealed");
    }
}
