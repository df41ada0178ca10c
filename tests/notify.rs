//! Notifications, against real processes: a shell that counts the signals it gets and reads
//! the bundle when it does, a stand-in `systemctl` first on the agent's PATH, a command that
//! records its environment, a local HTTP server that records what it is sent; coalescing;
//! retries; and a hung notifier that times out without delaying another policy.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::Recorder;
use common::{World, read, text, wait_for};

const POLL: &str = "poll = \"1s\"\njitter = \"0%\"";

/// A shell that, on each SIGHUP, appends what the bundle holds to `seen`. Killed on drop.
struct Counter {
    child: Child,
}

impl Counter {
    fn start(world: &World, pidfile: &Path, seen: &Path, file: &Path) -> Counter {
        // `sleep` runs in the foreground, so the trap runs when it returns: at most 50ms late.
        let script = format!(
            "trap 'printf \"%s\\n\" \"$(cat {file})\" >> {seen}' HUP; echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; while true; do sleep 0.05; done",
            file = file.display(),
            seen = seen.display(),
            pidfile = pidfile.display()
        );
        let child = Command::new("sh").args(["-c", &script]).stdin(Stdio::null()).spawn().unwrap();
        wait_for("the counter's pidfile", Duration::from_secs(5), || pidfile.exists());
        let _ = world;
        Counter { child }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}

/// Writes `script` as an executable `systemctl` in a directory of its own, and returns the
/// PATH that finds it before the real one.
fn fake_systemctl(world: &World, script: &str) -> String {
    let bin = world.disk.path().join("bin");
    let program = bin.join("systemctl");
    common::write(&program, &format!("#!/bin/sh\n{script}"));
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// Waits until the agent, having delivered `version` of `policy`, has asked the store again: a
/// poll that found nothing new, and would have notified twice if notifying were not once per
/// change. Status times have whole seconds, and RFC 3339 times in UTC order as strings.
fn wait_for_an_unchanged_poll(world: &World, policy: &str, version: &str) {
    wait_for(&format!("a poll after delivering version {version}"), Duration::from_secs(10), || {
        let status = &world.status_json()["policies"][policy];
        match (status["version"].as_str(), status["checked_at"].as_str(), status["delivered_at"].as_str()) {
            (Some(delivered_version), Some(checked), Some(delivered)) => {
                delivered_version == version && checked > delivered
            }
            _ => false,
        }
    });
}

#[test]
fn a_signal_reaches_the_process_once_per_change_after_the_bundle_is_in_place() {
    let world = World::new(POLL);
    let pidfile = world.disk.path().join("app.pid");
    let seen = world.disk.path().join("seen");
    world.policy(
        "db",
        &format!(
            "[secret]\nstore = \"dev\"\nid = \"db\"\n[[deliver]]\npath = \"app/db\"\n[notify]\nsignal = {{ pidfile = \"{}\", signal = \"HUP\" }}\ncoalesce = \"3s\"\n",
            pidfile.display()
        ),
    );
    world.put("db", "one");
    let _counter = Counter::start(&world, &pidfile, &seen, &world.bundle("app/db"));
    let agent = world.agent(&[]);
    wait_for("the first signal", Duration::from_secs(10), || lines(&seen) == ["one"]);

    // Two changes in quick succession: one signal (even if a poll falls between them, the
    // 3s coalescing window, fixed from the first delivery, covers the next poll's delivery
    // with room for a slow `store put`), and the process sees the newest.
    world.put("db", "two");
    world.put("db", "three");
    wait_for("the second signal", Duration::from_secs(10), || lines(&seen).len() == 2);
    world.put("db", "four");
    wait_for("the third signal", Duration::from_secs(10), || lines(&seen).len() == 3);
    // No fourth signal, though the agent goes on polling and finding nothing new. A poll that
    // notified again would open another 3 s window: five more reads of the store span four
    // polls, so such a window opened at the first of them or before has closed, and its signal
    // gone out, a whole poll before the last.
    agent.wait_log("notified policy=db version=4", 1);
    world.wait_store_reads("dev", 5);
    assert_eq!(lines(&seen), ["one", "three", "four"], "every signal came after its bundle was whole");
    wait_for("notified_at in status", Duration::from_secs(5), || {
        world.status_json()["policies"]["db"]["notified_at"].is_string()
    });
    assert!(agent.log_text().contains("notified policy=db version=4 notifier=\"signal\""), "{}", agent.log_text());
}

#[test]
fn a_missing_pidfile_is_not_a_failure() {
    let world = World::new("");
    world.policy(
        "db",
        "[secret]\nstore = \"dev\"\nid = \"db\"\n[[deliver]]\npath = \"app/db\"\n[notify]\nsignal = { pidfile = \"/nonexistent/app.pid\" }\n",
    );
    world.put("db", "one");
    let out = world.sync_once();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to notify"), "{}", text(&out));
    assert!(world.status_json()["policies"]["db"]["notify_error"].is_null());
}

#[test]
fn a_signal_to_a_unit_reaches_its_main_process_once_per_change_and_a_stopped_unit_is_skipped() {
    let world = World::new(POLL);
    let pidfile = world.disk.path().join("api.pid");
    let seen = world.disk.path().join("seen");
    let main_pid = world.disk.path().join("main-pid");
    let calls = world.disk.path().join("systemctl-calls");
    world.policy(
        "api",
        "[secret]\nstore = \"dev\"\nid = \"api\"\n[[deliver]]\npath = \"app/api\"\n[notify]\nsignal = { unit = \"api.service\", signal = \"HUP\" }\n",
    );
    world.put("api", "one");
    let _counter = Counter::start(&world, &pidfile, &seen, &world.bundle("app/api"));
    common::write(&main_pid, &read(&pidfile));
    // Answers only the question the notifier should ask, with whatever `main-pid` holds.
    let path = fake_systemctl(
        &world,
        &format!(
            "printf '%s\\n' \"$*\" >> {calls}\n\
             [ \"$*\" = 'show --property=MainPID --value api.service' ] || {{ echo \"unexpected: $*\" >&2; exit 1; }}\n\
             cat {main_pid}\n",
            calls = calls.display(),
            main_pid = main_pid.display()
        ),
    );
    let agent = world.agent(&[("PATH", &path)]);
    wait_for("the first signal", Duration::from_secs(10), || !lines(&seen).is_empty());
    assert_eq!(lines(&seen), ["one"], "the process was signalled after the bundle was whole");

    world.put("api", "two");
    wait_for("the second signal", Duration::from_secs(10), || lines(&seen).len() >= 2);
    wait_for_an_unchanged_poll(&world, "api", "2");

    // The unit stops: systemd says MainPID 0. Nothing to signal, and nothing wrong.
    common::write(&main_pid, "0\n");
    world.put("api", "three");
    agent.wait_log("unit api.service has no main process: it is not running", 1);
    assert_eq!(lines(&seen), ["one", "two"], "one signal per change, none once the unit stopped");
    assert_eq!(lines(&calls), ["show --property=MainPID --value api.service"; 3], "one question per change");
    let log = agent.log_text();
    assert!(log.contains("nothing to notify policy=api notifier=\"signal\""), "{log}");
    assert!(!log.contains("notification failed"), "{log}");
    // The status took the notifier's outcome just after that log line, a poll before this.
    wait_for_an_unchanged_poll(&world, "api", "3");
    let status = world.status_json();
    assert!(status["policies"]["api"]["notified_at"].is_string(), "{status}");
    assert!(status["policies"]["api"]["notify_error"].is_null(), "a stopped unit is not a failure: {status}");
}

#[test]
fn a_systemd_notifier_reloads_the_unit_once_per_change_and_reports_a_failed_reload() {
    let world = World::new(POLL);
    let calls = world.disk.path().join("systemctl-calls");
    let fail = world.disk.path().join("fail");
    world.policy(
        "api",
        "[secret]\nstore = \"dev\"\nid = \"api\"\n[[deliver]]\npath = \"app/api\"\n[notify]\nsystemd = { unit = \"api.service\", action = \"reload\" }\nattempts = 1\n",
    );
    world.put("api", "one");
    // Records its arguments and what the bundle holds when it runs; fails while `fail` exists.
    let path = fake_systemctl(
        &world,
        &format!(
            "printf '%s: %s\\n' \"$*\" \"$(cat {file})\" >> {calls}\n\
             if [ -e {fail} ]; then echo 'Job for api.service failed.' >&2; exit 1; fi\n",
            file = world.bundle("app/api").display(),
            calls = calls.display(),
            fail = fail.display()
        ),
    );
    let agent = world.agent(&[("PATH", &path)]);
    wait_for("the first reload", Duration::from_secs(10), || !lines(&calls).is_empty());
    assert_eq!(lines(&calls), ["reload api.service: one"], "reloaded after the bundle was whole");
    agent.wait_log("notified policy=api version=1 notifier=\"systemd\"", 1);

    world.put("api", "two");
    wait_for("the second reload", Duration::from_secs(10), || lines(&calls).len() >= 2);
    wait_for_an_unchanged_poll(&world, "api", "2");

    // The reload fails: reported in the log and the status, and not retried (attempts = 1).
    common::write(&fail, "");
    world.put("api", "three");
    agent.wait_log("notification failed after every attempt", 1);
    assert_eq!(
        lines(&calls),
        ["reload api.service: one", "reload api.service: two", "reload api.service: three"],
        "one reload per change, each after its bundle was whole"
    );
    let error = "systemctl reload api.service exited with exit status: 1: Job for api.service failed.";
    let log = agent.log_text();
    assert!(log.contains(error), "{log}");
    wait_for("the error in status", Duration::from_secs(5), || {
        world.status_json()["policies"]["api"]["notify_error"].as_str() == Some(&format!("systemd: {error}"))
    });
}

#[test]
fn an_exec_notifier_gets_policy_version_and_bundle_but_never_the_value() {
    let world = World::new("");
    let record = world.disk.path().join("env");
    world.policy(
        "db",
        &format!(
            "[secret]\nstore = \"dev\"\nid = \"db\"\n[[deliver]]\npath = \"app/db\"\n[[deliver]]\npath = \"more/db.env\"\nformat = \"env\"\nkey = \"DB\"\n\
             [notify]\nexec = {{ command = [\"sh\", \"-c\", \"env > {}\"], timeout = \"5s\" }}\n",
            record.display()
        ),
    );
    world.put("db", "FIXTURE-exec-8a1f");
    let out = world.sync_once();
    assert!(out.status.success(), "{}", text(&out));
    // `sync --once` waits for its notifications before it exits.
    let env = read(&record);
    assert!(env.contains("KEYTURN_POLICY=db\n"), "{env}");
    assert!(env.contains("KEYTURN_VERSION=1\n"), "{env}");
    assert!(env.contains(&format!("KEYTURN_BUNDLE={}\n", world.bundle("app").display())), "{env}");
    assert!(
        env.contains(&format!(
            "KEYTURN_BUNDLES={}:{}\n",
            world.bundle("app").display(),
            world.bundle("more").display()
        )),
        "{env}"
    );
    assert!(!env.contains("FIXTURE-exec"), "the value is never in the environment");
}

#[test]
fn an_http_notifier_posts_with_the_bearer_token_and_retries_a_failure() {
    let world = World::new("");
    let server = Recorder::start(TcpListener::bind("127.0.0.1:0").unwrap(), vec![503]);
    let url = format!("http://{}/-/reload", server.address);
    let token = world.disk.path().join("reload-token");
    common::write(&token, "reload-token-value\n");
    world.policy(
        "db",
        &format!(
            "[secret]\nstore = \"dev\"\nid = \"db\"\n[[deliver]]\npath = \"app/db\"\n[notify]\nhttp = {{ url = \"{}\", bearer_token_file = \"{}\", timeout = \"2s\" }}\n",
            url,
            token.display()
        ),
    );
    world.put("db", "FIXTURE-http-55c0");
    let out = world.sync_once();
    assert!(out.status.success(), "{}", text(&out));
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "the 503 was retried: {requests:#?}");
    let last = &requests[1];
    assert!(last.head.starts_with("post /-/reload http/1.1"), "{}", last.head);
    assert_eq!(last.header("authorization").as_deref(), Some("bearer reload-token-value"));
    let body = last.json();
    assert_eq!(body["policy"], "db");
    assert_eq!(body["version"], "1");
    let everything: String =
        requests.iter().map(|r| format!("{}{}", r.head, String::from_utf8_lossy(&r.body))).collect();
    assert!(!everything.to_ascii_lowercase().contains("fixture-http"), "the value is never sent");
    assert!(String::from_utf8_lossy(&out.stderr).contains("notification failed; retrying"), "{}", text(&out));
}

#[test]
fn a_hung_notifier_times_out_and_is_reported_without_delaying_another_policy() {
    let world = World::new(POLL);
    let record = world.disk.path().join("fast-notified");
    world.policy(
        "slow",
        "[secret]\nstore = \"dev\"\nid = \"slow\"\n[[deliver]]\npath = \"slow/x\"\n[notify]\nexec = { command = [\"sleep\", \"60\"], timeout = \"10s\" }\nattempts = 1\ncoalesce = \"0s\"\n",
    );
    world.policy(
        "fast",
        &format!(
            "[secret]\nstore = \"dev\"\nid = \"fast\"\n[[deliver]]\npath = \"fast/x\"\n[notify]\nexec = {{ command = [\"sh\", \"-c\", \"echo $KEYTURN_VERSION >> {}\"] }}\ncoalesce = \"0s\"\n",
            record.display()
        ),
    );
    world.put("slow", "s1");
    world.put("fast", "f1");
    let agent = world.agent(&[]);
    wait_for("the first fast notification", Duration::from_secs(10), || lines(&record) == ["1"]);

    // Both change together; the slow policy's notifier hangs for its whole timeout.
    world.put("slow", "s2");
    world.put("fast", "f2");
    let changed = Instant::now();
    wait_for("the fast notification", Duration::from_secs(10), || lines(&record) == ["1", "2"]);
    // The bound is the behaviour under test. Held up, it would come after the hang (10 s from
    // start-up); in time, within a poll (1 s), here with five polls of room.
    assert!(changed.elapsed() < Duration::from_secs(5), "not held up by the hung notifier: {:?}", changed.elapsed());
    // Delivery is never held up by a notifier either: the slow policy takes s2 at its own next
    // poll (each policy polls on its own phase), while its notifier for s1 still hangs.
    wait_for("the slow bundle to take s2", Duration::from_secs(10), || read(world.bundle("slow/x")) == "s2");
    assert!(changed.elapsed() < Duration::from_secs(5), "slow delivery held up: {:?}", changed.elapsed());

    agent.wait_log("notification failed after every attempt", 1);
    let log = agent.log_text();
    assert!(log.contains("sleep took longer than 10s and was killed"), "{log}");
    wait_for("the error in status", Duration::from_secs(5), || {
        world.status_json()["policies"]["slow"]["notify_error"]
            .as_str()
            .is_some_and(|e| e.contains("took longer than 10s"))
    });
}

#[test]
fn notify_settings_are_validated() {
    let world = World::new("");
    world.policy(
        "bad",
        "[secret]\nstore = \"dev\"\nid = \"x\"\n[[deliver]]\npath = \"x/y\"\n[notify]\nsignal = { pidfile = \"relative.pid\", signal = \"KILL\" }\nhttp = { url = \"http://10.1.2.3/reload\" }\nexec = { command = [] }\nattempts = 0\n",
    );
    world.policy(
        "none",
        "[secret]\nstore = \"dev\"\nid = \"z\"\n[[deliver]]\npath = \"z/y\"\n[notify]\ncoalesce = \"1s\"\n",
    );
    let out = world.keyturn(&["validate"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "bad.toml:7: notify.signal.pidfile: \"relative.pid\" must be an absolute path",
        "bad.toml:7: notify.signal.signal: \"KILL\" is not a signal keyturn sends",
        "bad.toml:8: notify.http.url: \"http://10.1.2.3/reload\": plain http is allowed only to a loopback address",
        "bad.toml:9: notify.exec.command: must name a program",
        "bad.toml:10: notify.attempts: 0 is out of range",
        "none.toml: notify: names no notifier",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in\n{stderr}");
    }
}

/// A change delivered just before a stop is told before the agent exits: the notification
/// waiting out its coalescing window goes out at once, not with the agent.
#[test]
fn a_stop_sends_the_notification_still_waiting_for_its_window() {
    let world = World::new(POLL);
    let record = world.disk.path().join("notified");
    world.policy(
        "db",
        &format!(
            "[secret]\nstore = \"dev\"\nid = \"db\"\n[[deliver]]\npath = \"app/db\"\n[notify]\nexec = {{ command = [\"sh\", \"-c\", \"echo $KEYTURN_VERSION >> {}\"] }}\ncoalesce = \"30s\"\n",
            record.display()
        ),
    );
    world.put("db", "one");
    let mut agent = world.agent(&[]);
    wait_for("the first delivery", Duration::from_secs(10), || world.bundle("app/db").exists());
    assert!(lines(&record).is_empty(), "still inside its 30 s window");
    let stopping = Instant::now();
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(10)), Some(0));
    // The bound is the behaviour under test: the 30 s window (or the 10 s shutdown grace) is
    // not waited out. Running `sh -c echo` takes milliseconds; 5 s is room for a loaded machine.
    assert!(stopping.elapsed() < Duration::from_secs(5), "the window is cut short, not waited out");
    assert_eq!(lines(&record), ["1"], "told before the agent exited");
}

/// The stop asks every policy's dispatcher at once: a hung notifier of one policy uses up the
/// shutdown grace, and still another policy's waiting notification goes out.
#[test]
fn a_hung_notifier_does_not_keep_another_policy_from_being_told_at_a_stop() {
    let world = World::new(&format!("{POLL}\nshutdown_grace = \"2s\""));
    let record = world.disk.path().join("notified");
    let started = world.disk.path().join("hung-started");
    world.policy(
        "hung",
        &format!(
            "[secret]\nstore = \"dev\"\nid = \"hung\"\n[[deliver]]\npath = \"hung/x\"\n[notify]\nexec = {{ command = [\"sh\", \"-c\", \"touch {}; sleep 60\"], timeout = \"50s\" }}\nattempts = 1\n",
            started.display()
        ),
    );
    // (Dispatchers are kept in a hash map: a one-at-a-time flush would ask this one after the
    // hung one about half the time.)
    world.policy(
        "waiting",
        &format!(
            "[secret]\nstore = \"dev\"\nid = \"waiting\"\n[[deliver]]\npath = \"waiting/x\"\n[notify]\nexec = {{ command = [\"sh\", \"-c\", \"echo $KEYTURN_VERSION >> {}\"] }}\ncoalesce = \"30s\"\n",
            record.display()
        ),
    );
    world.put("hung", "h1");
    world.put("waiting", "w1");
    let mut agent = world.agent(&[]);
    wait_for("the hung notifier to start", Duration::from_secs(10), || started.exists());
    assert!(lines(&record).is_empty(), "still inside its 30 s window");
    let stopping = Instant::now();
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(15)), Some(0));
    // The bound is the behaviour under test: the 2 s grace, four times over for a loaded
    // machine; waiting for the hung notifier would take its 50 s timeout.
    assert!(stopping.elapsed() < Duration::from_secs(8), "bounded by the 2 s grace: {:?}", stopping.elapsed());
    assert_eq!(lines(&record), ["1"], "the other policy was told before the agent exited");
    assert!(agent.log_text().contains("abandoned"), "the hung one is said to be abandoned: {}", agent.log_text());
}
