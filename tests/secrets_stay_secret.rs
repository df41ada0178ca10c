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

/// Workload Identity Federation handles three credentials: the subject token read from the
/// node's identity provider, the federated token STS gives for it, and the service account's
/// access token IAM Credentials gives for that. None may reach a log (every dependency at
/// trace level), the status file, `keyturn status` or a central event, through a start, a
/// refresh ahead of expiry, and a refresh STS refuses.
#[test]
fn no_subject_federated_or_access_token_appears_in_logs_status_or_events() {
    use gcp_emulator::{Emulator, Role, SubjectToken, blocking};

    let collector = common::http::Recorder::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), Vec::new());
    let world = World::new(&format!(
        "poll = \"1s\"\njitter = \"0%\"\n\n[report]\nurl = \"http://{}/events\"\ntimeout = \"10s\"",
        collector.address
    ));
    let emu =
        blocking::Emulator::start(Emulator::builder().project_id("acme-edge").project_number(435468002770)).unwrap();
    world.add_stores(&format!(
        "[stores.edge]\nkind = \"gcp\"\nproject = \"acme-edge\"\nendpoint = \"{}\"\nretry_backoff = \"50ms\"\n",
        emu.base_url()
    ));
    let node = "system:serviceaccount:keyturn:keyturn";
    let account = "keyturn-node@acme-edge.iam.gserviceaccount.com";
    emu.allow_impersonation(node, account, Role::Accessor);
    // The credentials themselves live outside the world, whose every file is searched.
    let identity = tempfile::tempdir().unwrap();
    let admin = identity.path().join("operator.json");
    common::write(&admin, &emu.service_account_key("operator@acme-edge.iam.gserviceaccount.com", Role::Admin));
    let token_file = identity.path().join("tokens/gcp");
    let mut subject_tokens = vec![emu.subject_token(&SubjectToken::new(node))];
    common::write(&token_file, &subject_tokens[0]);
    let credentials = identity.path().join("wif.json");
    common::write(&credentials, &emu.external_account_config(&token_file, Some(account)));
    world.policy("db", "[secret]\nstore = \"edge\"\nid = \"db-password\"\n[[deliver]]\npath = \"db/value\"\n");
    let out = world.put_into("edge", "db-password", "FIXTURE-wif-41d0", &[("GOOGLE_APPLICATION_CREDENTIALS", &admin)]);
    assert!(out.status.success(), "{}", text(&out));

    let filter = "trace,gcp_auth=trace,reqwest=trace,hyper=trace,hyper_util=trace,h2=trace,rustls=trace";
    let agent = world.agent_with(&[("KEYTURN_LOG", filter)], &[("GOOGLE_APPLICATION_CREDENTIALS", &credentials)]);
    wait_for("the first delivery", Duration::from_secs(20), || {
        std::fs::read_to_string(world.bundle("db/value")).is_ok_and(|v| v == "FIXTURE-wif-41d0")
    });
    let exchanges = || emu.request_counts().get(gcp_emulator::Method::Sts);
    // A refresh ahead of expiry, with a renewed subject token.
    subject_tokens.push(emu.subject_token(&SubjectToken::new(node)));
    common::write(&token_file, &subject_tokens[1]);
    emu.advance_clock(Duration::from_secs(3599 - 200));
    wait_for("a refresh", Duration::from_secs(20), || exchanges() >= 2);
    // A refresh STS refuses: a token for another audience.
    let mut stray = SubjectToken::new(node);
    stray.audience =
        Some("//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x".into());
    subject_tokens.push(emu.subject_token(&stray));
    common::write(&token_file, &subject_tokens[2]);
    emu.advance_clock(Duration::from_secs(3599 - 200));
    agent.wait_log("refreshing the access token failed", 1);
    let mut outputs = vec![
        ("status", text(&world.keyturn(&["status"]))),
        ("status --json", text(&world.keyturn(&["status", "--json"]))),
    ];
    drop(agent);

    let written = world.readable_outputs();
    assert!(written.contains("invalid_grant") && written.contains("TRACE"), "the logs were collected:\n{written}");
    let events: Vec<String> =
        collector.requests().iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
    assert!(!events.is_empty(), "events were sent");
    outputs.push(("events", events.join("\n")));
    outputs.push(("files the agent wrote", written));
    let issued = emu.issued_tokens();
    assert!(issued.len() >= 4, "federated and access tokens were issued: {}", issued.len());
    for (what, output) in &outputs {
        for token in subject_tokens.iter().chain(&issued) {
            // The whole token, and the signature or random part that makes it a credential.
            let tail = token.rsplit('.').next().unwrap();
            assert!(!output.contains(token.as_str()) && !output.contains(tail), "{what} contains a token:\n{output}");
        }
        for marker in ["subject_token=", "Bearer ya29", "\"access_token\":\"ya29", "accessToken"] {
            assert!(!output.contains(marker), "{what} contains {marker:?}:\n{output}");
        }
    }
}

/// A service-account key's token requests are signed JWT assertions (a credential for an
/// hour), answered with access tokens. Neither may reach a log (every dependency at trace
/// level), the status or `keyturn status`, through a first token, a renewal ahead of expiry
/// and a renewal the token endpoint refuses (the emulator's clock moved past the assertion).
#[test]
fn no_assertion_or_access_token_of_a_service_account_key_appears_in_logs_or_status() {
    use gcp_emulator::{Emulator, Role, blocking};

    let world = World::new("poll = \"1s\"\njitter = \"0%\"");
    let emu = blocking::Emulator::start(Emulator::builder().project_id("acme-edge")).unwrap();
    world.add_stores(&format!(
        "[stores.edge]\nkind = \"gcp\"\nproject = \"acme-edge\"\nendpoint = \"{}\"\nretry_backoff = \"50ms\"\n",
        emu.base_url()
    ));
    // The keys live outside the world, whose every file is searched.
    let identity = tempfile::tempdir().unwrap();
    let admin = identity.path().join("operator.json");
    common::write(&admin, &emu.service_account_key("operator@acme-edge.iam.gserviceaccount.com", Role::Admin));
    let key = identity.path().join("node.json");
    let key_text = emu.service_account_key("node@acme-edge.iam.gserviceaccount.com", Role::Accessor);
    common::write(&key, &key_text);
    world.policy("db", "[secret]\nstore = \"edge\"\nid = \"db-password\"\n[[deliver]]\npath = \"db/value\"\n");
    let out = world.put_into("edge", "db-password", "FIXTURE-sa-77c2", &[("GOOGLE_APPLICATION_CREDENTIALS", &admin)]);
    assert!(out.status.success(), "{}", text(&out));

    let filter = "trace,gcp_auth=trace,reqwest=trace,hyper=trace,hyper_util=trace,h2=trace,rustls=trace";
    let agent = world.agent_with(&[("KEYTURN_LOG", filter)], &[("GOOGLE_APPLICATION_CREDENTIALS", &key)]);
    wait_for("the first delivery", Duration::from_secs(20), || {
        std::fs::read_to_string(world.bundle("db/value")).is_ok_and(|v| v == "FIXTURE-sa-77c2")
    });
    let token_requests = || emu.request_counts().get(gcp_emulator::Method::Token);
    let before = token_requests();
    // Renewed ahead of its end (less than 5 minutes left by the emulator's clock)...
    emu.advance_clock(Duration::from_secs(3599 - 200));
    wait_for("a renewal", Duration::from_secs(20), || token_requests() > before);
    // ...and refused, once the node's assertions are past their hour on the emulator's clock.
    emu.advance_clock(Duration::from_secs(3599));
    agent.wait_log("Invalid JWT", 1);
    let outputs =
        [("status", text(&world.keyturn(&["status"]))), ("status --json", text(&world.keyturn(&["status", "--json"])))];
    drop(agent);
    let written = world.readable_outputs();
    assert!(written.contains("TRACE") && written.contains("invalid_grant"), "the logs were collected:\n{written}");
    let issued = emu.issued_tokens();
    assert!(!issued.is_empty(), "access tokens were issued");
    let private_key: serde_json::Value = serde_json::from_str(&key_text).unwrap();
    let private_key = private_key["private_key"].as_str().unwrap().lines().nth(1).unwrap().to_string();
    for (what, output) in
        outputs.iter().map(|(w, o)| (*w, o.as_str())).chain([("files the agent wrote", written.as_str())])
    {
        for token in &issued {
            let tail = token.rsplit('.').next().unwrap();
            assert!(!output.contains(token.as_str()) && !output.contains(tail), "{what} contains a token:\n{output}");
        }
        // An assertion begins with its header, {"alg":"RS256","typ":"JWT"} in base64url.
        for marker in ["eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9", "assertion=", "Bearer ya29", private_key.as_str()] {
            assert!(!output.contains(marker), "{what} contains {marker:?}:\n{output}");
        }
    }
}
