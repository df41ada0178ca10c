//! The running agent: delivery, pick-up of new versions within one poll, reload on SIGHUP and
//! on file changes, refusal of a bad reload, and shutdown on signals. Real processes, real
//! signals, runtime files on real tmpfs.

mod common;

use std::time::{Duration, Instant};

use common::{World, read, text, version_dirs, wait_for};

const POLL: &str = "poll = \"1s\"\njitter = \"0%\"";

/// "Within one poll" (1 s) on a loaded 2-core machine: five polls of room. Missing the poll
/// altogether means the 60 s default poll, a restart or a reload: far past it.
const WITHIN_ONE_POLL: Duration = Duration::from_secs(5);

/// A prompt stop: the exit itself takes milliseconds; what a stop must not wait for (a sync's
/// 20-30 s store or check command below, or the 10 s default `shutdown_grace`) is far past it.
const PROMPTLY: Duration = Duration::from_secs(5);

#[test]
fn a_new_current_version_is_delivered_by_the_next_poll_and_shown_by_status() {
    let world = World::new(POLL);
    world.simple_policy("db", "db-password", &[("app/db-password", "raw"), ("app/db.env", "env")]);
    world.put("db-password", "value-one");
    let agent = world.agent(&[]);
    let bundle = world.bundle("app");
    wait_for("first delivery", Duration::from_secs(10), || bundle.join("db-password").exists());
    assert_eq!(read(bundle.join("db-password")), "value-one");
    assert_eq!(read(bundle.join("db.env")), "VALUE=value-one\n");
    assert_eq!(common::mode(bundle.join("..data/db-password")), 0o400);

    world.put("db-password", "value-two");
    let put_at = Instant::now();
    // Every read sees one whole value or the other, never an empty or partial file.
    wait_for("the new value", Duration::from_secs(15), || {
        let now = read(bundle.join("db-password"));
        assert!(now == "value-one" || now == "value-two", "saw {now:?}");
        now == "value-two"
    });
    // The bound is the behaviour under test: picked up by the next poll, not some later event.
    assert!(put_at.elapsed() < WITHIN_ONE_POLL, "picked up within one poll (1s), took {:?}", put_at.elapsed());
    assert_eq!(read(bundle.join("db.env")), "VALUE=value-two\n");
    assert!(version_dirs(&bundle).len() <= 2, "{:?}", version_dirs(&bundle));

    wait_for("status file", Duration::from_secs(5), || {
        let status = world.status_json();
        status["policies"]["db"]["version"] == "2"
    });
    let status = world.status_json();
    assert_eq!(status["agent_running"], true, "{status}");
    assert_eq!(status["node"], "test-node");
    assert!(status["policies"]["db"]["delivered_at"].is_string(), "{status}");
    assert!(status["policies"]["db"]["last_error"].is_null(), "{status}");
    // A clean stop writes the status file one last time.
    let mut agent = agent;
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(5)), Some(0));

    let table = world.keyturn(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("agent not running"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("db ") && l.contains(" 2 ")), "{table}");
}

#[test]
fn a_version_added_but_not_made_current_is_not_delivered() {
    let world = World::new(POLL);
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "current-value");
    let agent = world.agent(&[]);
    wait_for("delivery", Duration::from_secs(10), || world.bundle("app/db").exists());
    // Add a version by hand-writing the store the way a half-done rotation would leave it:
    // through the library, without moving the alias.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use keyturn::store::SecretStore;
        let config = keyturn::store::file::FileStoreConfig { dir: world.store(), seed: None };
        let store = keyturn::store::file::FileStore::open("dev", &config).await.unwrap();
        let value = keyturn::secret::SecretBytes::copy_from(b"pending-value");
        store.add_version(&keyturn::secret::SecretId::new("db-password"), &value).await.unwrap();
    });
    agent.wait_log("sync finished", 1);
    // Three more reads of the store: the second began after the version was added, and the
    // third only once the second's delivery was done. An agent that delivered the newest
    // version rather than `current` has written it by then.
    world.wait_store_reads("dev", 3);
    assert_eq!(read(world.bundle("app/db")), "current-value");
}

#[test]
fn policy_changes_reload_and_a_bad_change_keeps_the_running_set() {
    let world = World::new(POLL);
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "db-1");
    world.put("api-key", "api-1");
    let agent = world.agent(&[]);
    wait_for("db delivery", Duration::from_secs(10), || world.bundle("app/db").exists());

    // A new policy file is picked up without a signal.
    world.simple_policy("api", "api-key", &[("api/key", "raw")]);
    wait_for("api delivery after a file change", Duration::from_secs(10), || world.bundle("api/key").exists());
    assert_eq!(read(world.bundle("api/key")), "api-1");

    // A broken policy file: every problem is logged, the running set keeps working.
    world.policy("broken", "[secret]\nstore = \"nowhere\"\nid = \"x\"\n[[deliver]]\npath = \"../x\"\n");
    agent.wait_log("new configuration refused", 1);
    let log = agent.log_text();
    assert!(
        log.contains("store \\\"nowhere\\\" is not defined") || log.contains("store \"nowhere\" is not defined"),
        "{log}"
    );
    assert!(log.contains("escapes the runtime directory"), "{log}");
    world.put("db-password", "db-2");
    wait_for("db-2 delivered under the old configuration", Duration::from_secs(5), || {
        read(world.bundle("app/db")) == "db-2"
    });

    // Removing the broken file brings back exactly the running set: nothing to restart.
    std::fs::remove_file(world.policies().join("broken.toml")).unwrap();
    agent.wait_log("configuration unchanged", 1);
    // SIGHUP reloads too.
    world.simple_policy("api", "api-key", &[("api/key", "raw"), ("api/key.b64", "base64")]);
    agent.signal("HUP");
    agent.wait_log("reason=\"SIGHUP\"", 1);
    wait_for("the changed policy's new file", Duration::from_secs(5), || world.bundle("api/key.b64").exists());
    assert_eq!(read(world.bundle("api/key.b64")), "YXBpLTE=");
}

#[test]
fn a_removed_policy_takes_its_bundle_with_it() {
    let world = World::new(POLL);
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.simple_policy("api", "api-key", &[("api/key", "raw")]);
    world.put("db-password", "db-1");
    world.put("api-key", "api-1");
    let agent = world.agent(&[]);
    wait_for("both bundles", Duration::from_secs(10), || {
        world.bundle("api/key").exists() && world.bundle("app/db").exists()
    });
    std::fs::remove_file(world.policies().join("api.toml")).unwrap();
    wait_for("api bundle removed", Duration::from_secs(10), || !world.bundle("api").exists());
    assert_eq!(read(world.bundle("app/db")), "db-1");
    agent.wait_log("removed a bundle that no policy delivers any more", 1);
}

#[test]
fn sigterm_and_sigint_stop_the_agent_promptly_and_cleanly() {
    for signal in ["TERM", "INT"] {
        let world = World::new(POLL);
        world.simple_policy("db", "db-password", &[("app/db", "raw")]);
        world.put("db-password", "v");
        let mut agent = world.agent(&[]);
        agent.wait_log("sync finished", 1);
        let sent = Instant::now();
        agent.signal(signal);
        assert_eq!(agent.wait_exit(Duration::from_secs(5)), Some(0), "{}", agent.log_text());
        // The bound is the behaviour under test: "promptly".
        assert!(sent.elapsed() < PROMPTLY, "SIG{signal} took {:?}", sent.elapsed());
        assert!(agent.log_text().contains("shutting down"));
        // What was delivered stays for the applications; the status says the agent is gone.
        assert_eq!(read(world.bundle("app/db")), "v");
        let status = world.status_json();
        assert_eq!(status["agent_running"], false, "{status}");
    }
}

/// Regression: SIGTERM during the start-up sync waited for the sync to end (an agent whose
/// first sync ran a 20 s check command took 19.6 s to stop), past `shutdown_grace` and past
/// systemd's stop timeout. The signal now abandons the sync, and the rotation it interrupted
/// is finished by the next start.
#[test]
fn sigterm_during_a_slow_first_sync_stops_at_once_and_the_next_start_finishes_the_rotation() {
    let world = World::new(POLL);
    let signing_policy = |check: &str| {
        world.policy(
            "signing",
            &format!(
                "[secret]\nstore = \"dev\"\nid = \"signing-key\"\n\n\
                 [rotate]\nevery = \"30d\"\ngenerate = \"ed25519\"\ncheck = {check}\ncheck_timeout = \"60s\"\n\n\
                 [[deliver]]\npath = \"api/signing.pem\"\nformat = \"pem\"\n"
            ),
        );
    };
    let store_get = |version: &str| {
        let out = world.keyturn(&["store", "get", "dev", "signing-key", "--version", version]);
        out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
    };
    // The empty store makes the first sync create the first version; its check says when it
    // started (the new version is pending by then) and takes 30 s.
    let started = world.disk.path().join("check-started");
    signing_policy(&format!(
        "[\"sh\", \"-c\", 'echo $$ > {0}.tmp && mv {0}.tmp {0} && exec sleep 30']",
        started.display()
    ));
    let mut agent = world.agent(&[]);
    wait_for("the check command to start", Duration::from_secs(15), || started.exists());
    let check_pid = read(&started).trim().to_string();

    let sent = Instant::now();
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(40)), Some(0), "{}", agent.log_text());
    // The bound is the behaviour under test: at once, not after the 30 s check.
    assert!(sent.elapsed() < PROMPTLY, "SIGTERM during the first sync took {:?}", sent.elapsed());
    let log = agent.log_text();
    assert!(log.contains("stop signal during a sync: abandoning it"), "{log}");
    assert!(log.contains("shutting down"), "{log}");
    // The check command did not outlive the agent (a zombie waiting for init is gone too).
    wait_for("the check command to be killed", Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{check_pid}/stat"))
            .map_or(true, |stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
    });
    assert_eq!(world.status_json()["agent_running"], false);
    // What the interrupted rotation left: a pending version, nothing current yet.
    let pending = store_get("pending").expect("the new version stays pending");
    assert_eq!(store_get("current"), None);

    // The next start takes over its own node's lease and finishes the pending version.
    signing_policy("[\"sh\", \"-c\", \"grep -q 'BEGIN PRIVATE KEY'\"]");
    let agent = world.agent(&[]);
    agent.wait_log("sync finished", 1);
    let log = agent.log_text();
    assert!(log.contains("resuming a pending version left by an interrupted rotation"), "{log}");
    assert_eq!(store_get("current").as_deref(), Some(pending.as_str()));
    assert_eq!(store_get("pending"), None);
    assert!(!read(world.store().join("signing-key/secret.json")).contains("keyturn.lease"));
    assert_eq!(read(world.bundle("api/signing.pem")), pending);
}

/// The other syncs race the stop signals too: SIGUSR1's, and the one after a reload, here
/// held up by a store that answers each request after 20 s.
#[test]
fn sigterm_or_sigint_during_a_resync_or_a_post_reload_sync_stops_at_once() {
    use gcp_emulator::{Emulator, Role, blocking};

    let world = World::new(POLL);
    let emu = blocking::Emulator::start(Emulator::builder().project_id("acme-edge")).unwrap();
    let key = world.disk.path().join("node.json");
    common::write(&key, &emu.service_account_key("node@acme-edge.iam.gserviceaccount.com", Role::Admin));
    let credentials = [("GOOGLE_APPLICATION_CREDENTIALS", key.as_path())];
    world.add_stores(&format!(
        "[stores.edge]\nkind = \"gcp\"\nproject = \"acme-edge\"\nendpoint = \"{}\"\nretry_backoff = \"50ms\"\n",
        emu.base_url()
    ));
    for id in ["db-password", "api-key"] {
        let out = world.put_into("edge", id, "v", &credentials);
        assert!(out.status.success(), "{}", text(&out));
    }
    world.policy("db", "[secret]\nstore = \"edge\"\nid = \"db-password\"\n[[deliver]]\npath = \"app/db\"\n");

    for (signal, sync) in [("TERM", "resync"), ("INT", "reload")] {
        emu.faults().set_latency(Duration::ZERO);
        let mut agent = world.agent_with(&[], &credentials);
        agent.wait_log("sync finished", 1);
        emu.faults().set_latency(Duration::from_secs(20));
        if sync == "resync" {
            agent.signal("USR1");
            agent.wait_log("SIGUSR1: pulling every policy now", 1);
        } else {
            world.policy("api", "[secret]\nstore = \"edge\"\nid = \"api-key\"\n[[deliver]]\npath = \"api/key\"\n");
            agent.wait_log("configuration reloaded", 1);
        }
        let sent = Instant::now();
        agent.signal(signal);
        assert_eq!(agent.wait_exit(Duration::from_secs(40)), Some(0), "{}", agent.log_text());
        // The bound is the behaviour under test: at once, not after the 20 s store answer.
        assert!(sent.elapsed() < PROMPTLY, "SIG{signal} during the {sync} took {:?}", sent.elapsed());
        assert!(agent.log_text().contains("stop signal during a sync: abandoning it"), "{}", agent.log_text());
        assert_eq!(read(world.bundle("app/db")), "v");
    }
}

#[test]
fn sync_once_exits_1_when_a_required_policy_fails_and_0_when_only_an_optional_one_does() {
    let world = World::new("");
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "v");
    world.policy(
        "optional",
        "[secret]\nstore = \"dev\"\nid = \"missing\"\nrequired = false\n[[deliver]]\npath = \"opt/x\"\n",
    );
    let out = world.sync_once();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    world.policy("needed", "[secret]\nstore = \"dev\"\nid = \"also-missing\"\n[[deliver]]\npath = \"need/x\"\n");
    let out = world.sync_once();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 of 3 policies failed (needed, optional)"), "{stderr}");
    assert!(stderr.contains("secret \"also-missing\" does not exist in store \"dev\""), "{stderr}");
}
