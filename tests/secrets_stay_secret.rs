//! Invariant 3: no secret byte reaches a log line, an error message or a status output.
//!
//! Fixture values go through every path the agent has (delivery in every format, a render
//! failure, a checksum failure, trace-level and JSON logs, status in both forms), and then
//! everything the agent wrote outside the runtime directory and the store is searched for
//! them, raw and base64-encoded.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{World, text, wait_for};

const FIXTURES: [&str; 5] = [
    "FIXTURE-db-9f3a71c2",
    "FIXTURE-api-5be08d44",
    "FIXTURE-multi\nline-77e1",
    "FIXTURE-db-second-0c1d",
    "FIXTURE-api-second-aa01",
];

fn assert_clean(what: &str, haystack: &str) {
    for value in FIXTURES {
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        for needle in [value, encoded.as_str(), value.split('\n').next().unwrap()] {
            assert!(!haystack.contains(needle), "{what} contains the secret {needle:?}:\n{haystack}");
        }
    }
}

#[test]
fn no_value_appears_in_logs_errors_or_status() {
    let world = World::new("poll = \"1s\"\njitter = \"0%\"");
    world.simple_policy("db", "db-password", &[("app/db", "raw"), ("app/db.b64", "base64"), ("app/db.env", "env")]);
    world.policy(
        "api",
        "[secret]\nstore = \"dev\"\nid = \"api\"\n[[deliver]]\npath = \"api/api.json\"\nformat = \"json\"\nkey = \"token\"\n",
    );
    // A value that cannot be rendered as an env line: a render error must not quote it.
    world.simple_policy("multi", "multi", &[("multi/value.env", "env")]);
    world.put("db-password", FIXTURES[0]);
    world.put("api", FIXTURES[1]);
    world.put("multi", FIXTURES[2]);

    let mut outputs = Vec::new();
    let sync = world.command(&["sync", "--once", "--log", "trace", "--log-format", "json"]).output().unwrap();
    assert_eq!(sync.status.code(), Some(1), "the multi-line env value fails: {}", text(&sync));
    assert!(
        String::from_utf8_lossy(&sync.stderr).contains("the value has a control character, a single quote"),
        "{}",
        text(&sync)
    );
    outputs.push(("sync --once", text(&sync)));
    assert_eq!(common::read(world.bundle("app/db")), FIXTURES[0], "the values are delivered");

    let agent = world.agent(&[("KEYTURN_LOG", "trace")]);
    agent.wait_log("sync finished", 1);
    world.put("db-password", FIXTURES[3]);
    wait_for("the second value", Duration::from_secs(10), || common::read(world.bundle("app/db")) == FIXTURES[3]);
    // A corrupt value in the store: the checksum error must not quote it either.
    world.put("api", FIXTURES[4]);
    common::write(&world.store().join("api/versions/2"), FIXTURES[1]);
    agent.wait_log("failed its CRC32C check", 1);
    outputs.push(("status", text(&world.keyturn(&["status"]))));
    outputs.push(("status --json", text(&world.keyturn(&["status", "--json"]))));
    outputs.push(("validate", text(&world.keyturn(&["validate"]))));
    drop(agent);

    for (what, output) in &outputs {
        assert_clean(what, output);
    }
    // Agent logs, the status file, configuration: everything but the store and the bundles.
    let written = world.readable_outputs();
    assert!(written.contains("delivered") && written.contains("CRC32C"), "the logs were collected");
    assert_clean("files the agent wrote", &written);
}
