//! Operations: what a platform team watches and talks to. The real `/metrics` output checked
//! by Prometheus' own `promtool`; `/healthz` and `/readyz`; systemd's notification socket
//! played by the test; the control socket refusing a caller outside its allow-list; and
//! central event reports surviving a collector outage and an agent restart.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::Recorder;
use common::{Agent, World, read, sample, text, wait_for};

const POLL: &str = "poll = \"1s\"\njitter = \"0%\"";

fn get(address: &str, path: &str) -> (u16, String) {
    common::http::request(address, "GET", path, None).unwrap()
}

fn promtool(exposition: &str) -> std::process::Output {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed: scripts/test.sh installs it (Debian package prometheus)");
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn metrics_pass_promtool_and_follow_deliveries_and_rotations() {
    let world = World::new(POLL);
    world.policy(
        "signing",
        "[secret]\nstore = \"dev\"\nid = \"signing\"\n[rotate]\nevery = \"30d\"\ngenerate = \"ed25519\"\n[[deliver]]\npath = \"api/key.pem\"\nformat = \"pem\"\n",
    );
    let _agent = world.agent(&[]);
    let address = world.admin();
    wait_for("the first key", Duration::from_secs(15), || world.bundle("api/key.pem").exists());
    wait_for("the first delivery in metrics", Duration::from_secs(5), || {
        sample(
            &get(&address, "/metrics").1,
            "keyturn_secret_info{node=\"test-node\",policy=\"signing\",store=\"dev\",secret=\"signing\",version=\"1\"}",
        ) == Some(1.0)
    });

    let (status, before) = get(&address, "/metrics");
    assert_eq!(status, 200);
    let checked = promtool(&before);
    assert!(checked.status.success(), "promtool check metrics: {}\n{before}", text(&checked));
    for series in [
        "keyturn_deliveries_total{policy=\"signing\",result=\"ok\"}",
        "keyturn_rotations_total{policy=\"signing\",result=\"ok\"}",
        "keyturn_store_requests_total{store=\"dev\",method=\"access\",result=\"ok\"}",
        "keyturn_last_success_timestamp_seconds{policy=\"signing\"}",
        "keyturn_next_rotation_timestamp_seconds{policy=\"signing\"}",
        "keyturn_ready",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(sample(&before, series).is_some(), "{series} missing:\n{before}");
    }

    let out = world.keyturn(&["rotate", "signing", "--now"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the rotation in metrics", Duration::from_secs(5), || {
        sample(
            &get(&address, "/metrics").1,
            "keyturn_secret_info{node=\"test-node\",policy=\"signing\",store=\"dev\",secret=\"signing\",version=\"2\"}",
        ) == Some(1.0)
    });
    let after = get(&address, "/metrics").1;
    assert!(promtool(&after).status.success());
    assert!(
        !after.contains(
            "keyturn_secret_info{node=\"test-node\",policy=\"signing\",store=\"dev\",secret=\"signing\",version=\"1\"}"
        ),
        "the old version's series is gone"
    );
    let count = |text: &str, series| sample(text, series).unwrap_or(0.0);
    let rotations = "keyturn_rotations_total{policy=\"signing\",result=\"ok\"}";
    let deliveries = "keyturn_deliveries_total{policy=\"signing\",result=\"ok\"}";
    assert_eq!(count(&after, rotations), count(&before, rotations) + 1.0);
    assert_eq!(count(&after, deliveries), count(&before, deliveries) + 1.0);
    // The store was read for the new version, and the timestamps moved with it.
    let reads = "keyturn_store_requests_total{store=\"dev\",method=\"access\",result=\"ok\"}";
    assert!(count(&after, reads) > count(&before, reads), "store reads counted");
    let success = "keyturn_last_success_timestamp_seconds{policy=\"signing\"}";
    assert!(count(&after, success) >= count(&before, success), "last success never goes back");
    let next = "keyturn_next_rotation_timestamp_seconds{policy=\"signing\"}";
    wait_for("the next rotation moved past the new version", Duration::from_secs(5), || {
        count(&get(&address, "/metrics").1, next) > count(&before, next)
    });
    assert!(!after.contains("BEGIN PRIVATE KEY"));
}

/// Notifications are counted per notifier and result: one that runs, one that fails.
#[test]
fn notifications_are_counted_by_notifier_and_result() {
    let world = World::new(POLL);
    world.policy(
        "db",
        "[secret]\nstore = \"dev\"\nid = \"db\"\n[[deliver]]\npath = \"app/db\"\n[notify]\nexec = { command = [\"true\"] }\n",
    );
    world.policy(
        "broken",
        "[secret]\nstore = \"dev\"\nid = \"broken\"\n[[deliver]]\npath = \"broken/x\"\n[notify]\nexec = { command = [\"false\"] }\nattempts = 1\n",
    );
    world.put("db", "FIXTURE-metrics-1");
    world.put("broken", "FIXTURE-metrics-2");
    let _agent = world.agent(&[]);
    let address = world.admin();
    let ok = "keyturn_notifications_total{policy=\"db\",notifier=\"exec\",result=\"ok\"}";
    let failed = "keyturn_notifications_total{policy=\"broken\",notifier=\"exec\",result=\"error\"}";
    wait_for("both notifications counted", Duration::from_secs(10), || {
        let metrics = get(&address, "/metrics").1;
        sample(&metrics, ok) == Some(1.0) && sample(&metrics, failed) == Some(1.0)
    });
    let metrics = get(&address, "/metrics").1;
    assert!(promtool(&metrics).status.success());
    assert!(!metrics.contains("FIXTURE-metrics"), "no value in any label");
}

#[test]
fn healthz_answers_at_once_and_readyz_waits_for_every_required_policy() {
    let world = World::new(POLL);
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.policy(
        "optional",
        "[secret]\nstore = \"dev\"\nid = \"nowhere\"\nrequired = false\n[[deliver]]\npath = \"opt/x\"\n",
    );
    let _agent = world.agent(&[]);
    let address = world.admin();
    assert_eq!(get(&address, "/healthz"), (200, "ok\n".into()));
    let (status, body) = get(&address, "/readyz");
    assert_eq!((status, body.as_str()), (503, "not ready: waiting for db\n"));

    world.put("db-password", "v1");
    wait_for("readiness", Duration::from_secs(10), || get(&address, "/readyz").0 == 200);
    assert!(world.bundle("app/db").exists(), "ready means the files exist");
    assert_eq!(get(&address, "/nope").0, 404);
}

#[test]
fn systemd_hears_ready_only_once_the_files_exist_then_watchdog_and_stopping() {
    let world = World::new(POLL);
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    let socket_path = world.disk.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut agent = world.agent_with(&[("WATCHDOG_USEC", "400000")], &[("NOTIFY_SOCKET", &socket_path)]);

    let mut heard: Vec<String> = Vec::new();
    let listen = |heard: &mut Vec<String>, until: Duration| {
        let deadline = Instant::now() + until;
        let mut buffer = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buffer) {
                heard.extend(String::from_utf8_lossy(&buffer[..n]).lines().map(String::from));
            }
        }
    };
    // The secret does not exist yet: status lines and watchdog pings, but no READY. Heard
    // until the agent has tried the secret three more times (its retries are at most a poll
    // apart): a second and more of its own time, however long a loaded machine takes for it.
    let target = world.store_reads("dev") + 3;
    wait_for("three more reads of the missing secret", Duration::from_secs(25), || {
        listen(&mut heard, Duration::from_millis(100));
        world.store_reads("dev") >= target
    });
    assert!(!heard.iter().any(|l| l == "READY=1"), "READY before the files exist: {heard:?}");
    assert!(heard.iter().filter(|l| *l == "WATCHDOG=1").count() >= 3, "watchdog every 200ms: {heard:?}");
    assert!(heard.iter().any(|l| l.starts_with("STATUS=")), "{heard:?}");

    world.put("db-password", "v1");
    let mut ready_at = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready_at.is_none() && Instant::now() < deadline {
        let mut more = Vec::new();
        listen(&mut more, Duration::from_millis(200));
        if more.iter().any(|l| l == "READY=1") {
            ready_at = Some(world.bundle("app/db").exists());
        }
        heard.extend(more);
    }
    assert_eq!(ready_at, Some(true), "READY=1 arrives, and the file exists when it does: {heard:?}");
    assert!(heard.iter().any(|l| l == "STATUS=1 of 1 policies delivered, 0 failing"), "{heard:?}");

    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(5)), Some(0));
    let mut last = Vec::new();
    listen(&mut last, Duration::from_millis(500));
    assert!(last.iter().any(|l| l == "STOPPING=1"), "{last:?}");
}

#[test]
fn a_service_manager_that_stops_reading_never_blocks_the_agent() {
    let world = World::new(POLL);
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "v1");
    let socket_path = world.disk.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    // Fill the socket's queue from another sender, as a service manager that hangs would let
    // it fill: the next blocking send anyone makes would wait for good.
    let filler = UnixDatagram::unbound().unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut queued = 0;
    while filler.send_to(b"STATUS=filler\n", &socket_path).is_ok() {
        queued += 1;
    }
    assert!(queued > 0);

    let mut agent = world.agent_with(&[("WATCHDOG_USEC", "400000")], &[("NOTIFY_SOCKET", &socket_path)]);
    wait_for("db delivered", Duration::from_secs(10), || world.bundle("app/db").exists());
    agent.wait_log("not reading its notify socket", 1);
    // Three more polls of the store: two seconds and more of the agent's own time since the
    // warning, in which it tried READY=1 every 100 ms and a watchdog ping every 200 ms, each
    // into the full queue. Warning at every failed send would have logged a score by now.
    world.wait_store_reads("dev", 3);
    assert_eq!(agent.log_text().matches("not reading its notify socket").count(), 1, "warned once");

    // Once the queue drains, READY=1 still arrives: it is retried, not dropped.
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut heard = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !heard.iter().any(|l| l == "READY=1") && Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buffer) {
            heard.extend(String::from_utf8_lossy(&buffer[..n]).lines().map(String::from));
        }
    }
    assert!(heard.iter().any(|l| l == "READY=1"), "{} lines, no READY=1", heard.len());
    agent.wait_log("reads its notify socket again", 1);

    // And a full queue again does not keep SIGTERM from stopping it.
    while filler.send_to(b"STATUS=filler\n", &socket_path).is_ok() {}
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(5)), Some(0));
}

/// Makes the test's directories reachable by another user, as /etc/keyturn and /run/keyturn
/// are on a real node.
fn open_up(world: &World) {
    for dir in [world.disk.path(), world.runtime.path(), &world.policies()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for file in common::walk(&world.policies()).into_iter().chain([world.config()]) {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

fn as_nobody(world: &World, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", common::BIN])
        .args(args)
        .arg("--config")
        .arg(world.config())
        .env_remove("KEYTURN_CONFIG")
        .output()
        .expect("setpriv (util-linux) runs a command as another user")
}

#[test]
fn the_control_socket_refuses_a_caller_outside_its_allow_list() {
    assert!(
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false),
        "runs as root to switch users"
    );
    let world =
        World::new(&format!("{POLL}\n\n[control]\nmode = \"0660\"\ngroup = \"nogroup\"\nallow_users = [\"root\"]"));
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "v1");
    open_up(&world);
    let agent = world.agent(&[]);
    let socket = world.run_dir().join(".keyturn.sock");
    wait_for("the control socket", Duration::from_secs(10), || socket.exists());
    assert_eq!(common::mode(&socket), 0o660);

    // nobody's group may open the socket file, but nobody is not on the allow-list.
    let out = as_nobody(&world, &["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("uid 65534 (pid")
            && String::from_utf8_lossy(&out.stderr).contains("is not allowed to use the control socket"),
        "{}",
        text(&out)
    );
    let out = as_nobody(&world, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    agent.wait_log("control socket: caller refused", 2);

    // root is on the list: status comes live from the agent, reload and resync work.
    let status = world.status_json();
    assert_eq!(status["agent_running"], true);
    let reload = world.keyturn(&["reload"]);
    assert!(
        reload.status.success() && String::from_utf8_lossy(&reload.stdout).contains("configuration unchanged"),
        "{}",
        text(&reload)
    );
    world.policy("broken", "[secret]\nstore = \"nowhere\"\nid = \"x\"\n[[deliver]]\npath = \"b/x\"\n");
    let reload = world.keyturn(&["reload"]);
    assert_eq!(reload.status.code(), Some(1), "{}", text(&reload));
    assert!(String::from_utf8_lossy(&reload.stderr).contains("store \"nowhere\" is not defined"), "{}", text(&reload));
    let resync = world.keyturn(&["resync"]);
    assert!(resync.status.success(), "{}", text(&resync));
}

#[test]
fn a_caller_in_an_allowed_group_is_served() {
    let world =
        World::new(&format!("{POLL}\n\n[control]\nmode = \"0660\"\ngroup = \"nogroup\"\nallow_groups = [\"nogroup\"]"));
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "v1");
    open_up(&world);
    let _agent = world.agent(&[]);
    wait_for("the control socket", Duration::from_secs(10), || world.run_dir().join(".keyturn.sock").exists());
    let out = as_nobody(&world, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["agent_running"], true);
}

#[test]
fn events_reach_the_collector_after_an_outage_and_an_agent_restart() {
    // A port bound but not listening: the collector is down (connections are refused), and no
    // other socket can take the port before the collector comes up on it.
    let reserved =
        rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::STREAM, None).unwrap();
    rustix::net::bind(&reserved, &std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = std::net::SocketAddrV4::try_from(rustix::net::getsockname(&reserved).unwrap()).unwrap().port();
    // A generous timeout: an answer that is slow under load must not make the sender resend.
    let world = World::new(&format!("{POLL}\n\n[report]\nurl = \"http://127.0.0.1:{port}/events\"\ntimeout = \"10s\""));
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "FIXTURE-report-1");

    let agent = world.agent(&[]);
    wait_for("v1", Duration::from_secs(10), || world.bundle("app/db").exists());
    world.put("db-password", "FIXTURE-report-2");
    wait_for("v2", Duration::from_secs(10), || read(world.bundle("app/db")) == "FIXTURE-report-2");
    agent.wait_log("cannot send report events; they stay spooled", 1);
    let mut agent = agent;
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(5)), Some(0));
    let spooled = read(world.state().join("events.jsonl"));
    assert_eq!(spooled.lines().count(), 2, "{spooled}");

    // Restarted, still without a collector: the spool carries over and grows.
    let agent: Agent = world.agent(&[]);
    world.put("db-password", "FIXTURE-report-3");
    wait_for("v3", Duration::from_secs(10), || read(world.bundle("app/db")) == "FIXTURE-report-3");
    agent.wait_log("unsent report events from an earlier run", 1);

    // The collector comes up; the next event wakes the sender, which empties the spool.
    rustix::net::listen(&reserved, 128).unwrap();
    let collector = Recorder::start(TcpListener::from(reserved), Vec::new());
    let events = || -> Vec<serde_json::Value> { collector.requests().iter().map(|r| r.json()).collect() };
    world.put("db-password", "FIXTURE-report-4");
    wait_for("every event at the collector", Duration::from_secs(20), || {
        events().iter().filter(|e| e["type"] == "dev.keyturn.secret.delivered").count() >= 4
    });
    wait_for("an empty spool", Duration::from_secs(5), || read(world.state().join("events.jsonl")).trim().is_empty());

    let content_type = collector.requests()[0].header("content-type");
    let events = events();
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let versions: BTreeSet<&str> = events
        .iter()
        .filter(|e| e["type"] == "dev.keyturn.secret.delivered")
        .map(|e| e["data"]["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, BTreeSet::from(["1", "2", "3", "4"]), "nothing lost across the outage and the restart");
    assert_eq!(ids.len(), events.len(), "each event once here; a repeat would carry the same id");
    let first = &events[0];
    assert_eq!(first["specversion"], "1.0");
    assert_eq!(first["source"], "keyturn://test-node");
    assert_eq!(first["subject"], "db");
    assert_eq!(first["data"]["node"], "test-node");
    assert_eq!(first["data"]["policy"], "db");
    assert_eq!(content_type.as_deref(), Some("application/cloudevents+json; charset=utf-8"));
    for event in events.iter().filter(|e| e["type"] == "dev.keyturn.secret.delivered") {
        assert!(event["data"]["duration_ms"].is_u64(), "a delivery says how long it took: {event}");
    }
    let all = serde_json::to_string(&events).unwrap() + &spooled;
    assert!(!all.contains("FIXTURE-report"), "no value in any event or in the spool");
}

#[test]
fn rotations_are_reported_with_their_versions_and_timing() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let collector = Recorder::start(listener, Vec::new());
    let world = World::new(&format!("{POLL}\n\n[report]\nurl = \"http://127.0.0.1:{port}/events\"\ntimeout = \"10s\""));
    world.policy(
        "signing",
        "[secret]\nstore = \"dev\"\nid = \"signing\"\n[rotate]\nevery = \"30d\"\ngenerate = \"ed25519\"\n[[deliver]]\npath = \"api/key.pem\"\nformat = \"pem\"\n",
    );
    let _agent = world.agent(&[]);
    wait_for("the first key", Duration::from_secs(15), || world.bundle("api/key.pem").exists());
    let out = world.keyturn(&["rotate", "signing", "--now"]);
    assert!(out.status.success(), "{}", text(&out));

    let rotated = || -> Vec<serde_json::Value> {
        collector.requests().iter().map(|r| r.json()).filter(|e| e["type"] == "dev.keyturn.secret.rotated").collect()
    };
    // The first version (made by the agent at start-up) and the one made on request.
    wait_for("two rotation events", Duration::from_secs(10), || rotated().len() == 2);
    let events = rotated();
    let second = &events[1]["data"];
    assert_eq!((second["version"].as_str(), second["previous"].as_str()), (Some("2"), Some("1")), "{second}");
    assert_eq!(second["result"], "ok");
    for event in &events {
        assert!(event["data"]["duration_ms"].is_u64(), "a rotation says how long it took: {event}");
    }
}

/// A refused reload is not only a log line: `status` (text and JSON) says the agent runs the
/// configuration it had and why the new one was refused, `/metrics` counts it (and passes
/// promtool), and an event goes to the collector. Readiness stays: the delivered files are
/// current. Fixing the files clears it.
#[test]
fn a_refused_reload_shows_in_status_metrics_and_events() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let collector = Recorder::start(listener, Vec::new());
    let world = World::new(&format!("{POLL}\n\n[report]\nurl = \"http://127.0.0.1:{port}/events\"\ntimeout = \"10s\""));
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "v1");
    let agent = world.agent(&[]);
    wait_for("delivery", Duration::from_secs(15), || world.bundle("app/db").exists());
    let admin = world.admin();
    assert!(get(&admin, "/metrics").1.contains("keyturn_config_last_reload_successful 1"));

    world.policy("broken", "[secret]\nstore = \"nowhere\"\nid = \"x\"\n[[deliver]]\npath = \"../x\"\n");
    agent.wait_log("new configuration refused", 1);
    let status = world.status_json();
    let rejected = &status["config"]["rejected"];
    assert_eq!(rejected["reason"], "a configuration file changed", "{status}");
    assert_eq!(rejected["error"], "configuration has 2 problems", "{status}");
    let problems: Vec<&str> = rejected["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(
        problems.iter().any(|p| p.contains("broken.toml:2: secret.store: store \"nowhere\" is not defined")),
        "{problems:?}"
    );
    assert!(status["config"]["loaded_at"].is_string(), "{status}");
    let table = world.keyturn(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("CONFIGURATION REFUSED at ") && table.contains("escapes the runtime directory"), "{table}");

    let metrics = get(&admin, "/metrics").1;
    assert!(promtool(&metrics).status.success(), "{metrics}");
    assert!(metrics.contains("keyturn_config_last_reload_successful 0"), "{metrics}");
    assert!(metrics.contains("keyturn_config_reloads_total{result=\"error\"} 1"), "{metrics}");
    assert_eq!(get(&admin, "/readyz").0, 200, "the running configuration's files are on disk and current");
    let rejected_events = || -> Vec<serde_json::Value> {
        collector.requests().iter().map(|r| r.json()).filter(|e| e["type"] == "dev.keyturn.config.rejected").collect()
    };
    wait_for("the rejection event", Duration::from_secs(15), || rejected_events().len() == 1);
    let event = &rejected_events()[0];
    assert_eq!(
        (event["subject"].as_str(), event["data"]["result"].as_str()),
        (Some("config"), Some("error")),
        "{event}"
    );

    // Fixed: the files are the running configuration again, and the refusal is gone.
    std::fs::remove_file(world.policies().join("broken.toml")).unwrap();
    agent.wait_log("configuration unchanged", 1);
    wait_for("the refusal cleared", Duration::from_secs(10), || world.status_json()["config"]["rejected"].is_null());
    assert!(get(&admin, "/metrics").1.contains("keyturn_config_last_reload_successful 1"));
}
