//! Versions: addVersion, `latest`, aliases, states and transitions, version etags, delayed
//! destroy, versions.list.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::*;

fn version_path(id: &str, version: &str) -> String {
    format!("projects/{PROJECT_ID}/secrets/{id}/versions/{version}")
}

async fn transition(h: &Harness, id: &str, version: &str, verb: &str, etag: Option<&str>) -> Reply {
    let body = etag.map(|e| json!({ "etag": e }));
    h.call(Method::POST, &format!("{}:{verb}", version_path(id, version)), body).await
}

async fn set_alias(h: &Harness, id: &str, alias: &str, version: u64) {
    let (code, body) = h
        .call(
            Method::PATCH,
            &format!("projects/{PROJECT_ID}/secrets/{id}?updateMask=versionAliases"),
            Some(json!({"versionAliases": { alias: version.to_string() }})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn add_version_returns_an_enabled_version() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let version = h.add_version("db", b"pw").await;
    assert_eq!(version["name"], version_name("db", "1"));
    assert_eq!(version["state"], "ENABLED");
    assert!(version["etag"].as_str().unwrap().starts_with('"'));
    assert!(version.get("destroyTime").is_none());
    assert!(version.get("clientSpecifiedPayloadChecksum").is_none(), "false is omitted");
    let second = h.add_version("db", b"pw2").await;
    assert_eq!(second["name"], version_name("db", "2"), "numbers increase per secret");
}

#[tokio::test]
async fn access_by_number_latest_and_alias() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"one").await;
    h.add_version("db", b"two").await;
    set_alias(&h, "db", "stable", 1).await;
    for (selector, data, resolved) in [("1", "one", "1"), ("latest", "two", "2"), ("stable", "one", "1")] {
        let (code, body) = h.get(&format!("{}:access", version_path("db", selector))).await;
        assert_eq!(code, 200, "{selector}: {body}");
        assert_eq!(body["name"], version_name("db", resolved), "the name is the resolved version");
        assert_eq!(decode(&body["payload"]["data"]), data.as_bytes());
        let crc = gcp_emulator::crc32c(data.as_bytes()).to_string();
        assert_eq!(body["payload"]["dataCrc32c"], json!(crc), "int64 as a JSON string");
        let (code, version) = h.get(&version_path("db", selector)).await;
        assert_eq!(code, 200, "versions.get by {selector}");
        assert_eq!(version["name"], version_name("db", resolved));
    }
}

#[tokio::test]
async fn latest_of_a_secret_without_versions_is_404() {
    let h = Harness::new().await;
    h.create_secret("empty").await;
    let reply = h.get(&format!("{}:access", version_path("empty", "latest"))).await;
    assert_error(&reply, 404, "NOT_FOUND", &format!("Secret [{}] not found or has no versions.", secret_name("empty")));
}

#[tokio::test]
async fn missing_version_and_unknown_alias_are_404() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"one").await;
    let reply = h.get(&format!("{}:access", version_path("db", "7"))).await;
    assert_error(&reply, 404, "NOT_FOUND", &format!("Secret Version [{}] not found.", version_name("db", "7")));
    let reply = h.get(&version_path("db", "nosuch")).await;
    assert_error(&reply, 404, "NOT_FOUND", &format!("Secret Version [{}] not found.", version_name("db", "nosuch")));
}

#[tokio::test]
async fn latest_is_the_newest_version_even_when_disabled() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"one").await;
    h.add_version("db", b"two").await;
    assert_eq!(transition(&h, "db", "2", "disable", None).await.0, 200);
    let reply = h.get(&format!("{}:access", version_path("db", "latest"))).await;
    assert_error(
        &reply,
        400,
        "FAILED_PRECONDITION",
        &format!("Secret Version [{}] is in DISABLED state.", version_name("db", "2")),
    );
    assert_eq!(transition(&h, "db", "2", "destroy", None).await.0, 200);
    let reply = h.get(&format!("{}:access", version_path("db", "latest"))).await;
    assert_error(
        &reply,
        400,
        "FAILED_PRECONDITION",
        &format!("Secret Version [{}] is in DESTROYED state.", version_name("db", "2")),
    );
    let (code, _) = h.get(&format!("{}:access", version_path("db", "1"))).await;
    assert_eq!(code, 200, "older enabled versions stay reachable by number");
}

#[tokio::test]
async fn state_cycle_enabled_disabled_enabled_destroyed() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"x").await;
    let (code, disabled) = transition(&h, "db", "1", "disable", None).await;
    assert_eq!((code, disabled["state"].clone()), (200, json!("DISABLED")));
    let (code, enabled) = transition(&h, "db", "1", "enable", None).await;
    assert_eq!((code, enabled["state"].clone()), (200, json!("ENABLED")));
    let (code, destroyed) = transition(&h, "db", "1", "destroy", None).await;
    assert_eq!((code, destroyed["state"].clone()), (200, json!("DESTROYED")));
    assert!(destroyed["destroyTime"].as_str().unwrap().ends_with('Z'));
    // versions.get works in every state, including DESTROYED.
    let (code, got) = h.get(&version_path("db", "1")).await;
    assert_eq!((code, got["state"].clone()), (200, json!("DESTROYED")));
    let reply = h.get(&format!("{}:access", version_path("db", "1"))).await;
    assert_error(
        &reply,
        400,
        "FAILED_PRECONDITION",
        &format!("Secret Version [{}] is in DESTROYED state.", version_name("db", "1")),
    );
}

#[tokio::test]
async fn destroyed_is_terminal() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"x").await;
    transition(&h, "db", "1", "destroy", None).await;
    let message = format!("Secret Version [{}] is in DESTROYED state.", version_name("db", "1"));
    for verb in ["enable", "disable", "destroy"] {
        let reply = transition(&h, "db", "1", verb, None).await;
        assert_error(&reply, 400, "FAILED_PRECONDITION", &message);
    }
}

#[tokio::test]
async fn version_etags_change_on_every_write_even_no_ops() {
    let h = Harness::new().await;
    let secret = h.create_secret("db").await;
    let added = h.add_version("db", b"x").await;
    let (_, again) = transition(&h, "db", "1", "enable", None).await;
    assert_eq!(again["state"], "ENABLED");
    assert_ne!(again["etag"], added["etag"], "enabling an enabled version bumps the etag");
    let (_, secret_now) = h.get(&format!("projects/{PROJECT_ID}/secrets/db")).await;
    assert_eq!(secret_now["etag"], secret["etag"], "version writes leave the secret's etag alone");
}

#[tokio::test]
async fn version_etag_mismatch_is_400_failed_precondition() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let added = h.add_version("db", b"x").await;
    let current = added["etag"].as_str().unwrap();
    let reply = transition(&h, "db", "1", "disable", Some("\"0\"")).await;
    assert_error(
        &reply,
        400,
        "FAILED_PRECONDITION",
        &format!("The etag \"0\" does not match the current etag {current} of [{}].", version_name("db", "1")),
    );
    let (code, disabled) = transition(&h, "db", "1", "disable", Some(current)).await;
    assert_eq!(code, 200, "{disabled}");
}

#[tokio::test]
async fn destroying_a_version_drops_its_aliases() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"one").await;
    h.add_version("db", b"two").await;
    let (code, _) = h
        .call(
            Method::PATCH,
            &format!("projects/{PROJECT_ID}/secrets/db?updateMask=versionAliases"),
            Some(json!({"versionAliases": {"old": "1", "current": "2"}})),
        )
        .await;
    assert_eq!(code, 200);
    transition(&h, "db", "1", "destroy", None).await;
    let (_, secret) = h.get(&format!("projects/{PROJECT_ID}/secrets/db")).await;
    assert_eq!(secret["versionAliases"], json!({"current": "2"}));
    let reply = h.get(&format!("{}:access", version_path("db", "old"))).await;
    assert_eq!(reply.0, 404);
    // An alias cannot be pointed at a destroyed version either.
    let reply = h
        .call(
            Method::PATCH,
            &format!("projects/{PROJECT_ID}/secrets/db?updateMask=versionAliases"),
            Some(json!({"versionAliases": {"old": "1"}})),
        )
        .await;
    assert_eq!(reply.0, 400);
}

#[tokio::test]
async fn transitions_take_numbers_only() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"x").await;
    set_alias(&h, "db", "current", 1).await;
    for selector in ["latest", "current"] {
        let reply = transition(&h, "db", selector, "disable", None).await;
        assert_error(
            &reply,
            400,
            "INVALID_ARGUMENT",
            &format!("Resource ID [{}] is not in a valid format.", version_name("db", selector)),
        );
    }
}

#[tokio::test]
async fn delayed_destroy_disables_then_destroys_after_the_ttl() {
    let mut h = Harness::new().await;
    let (code, secret) = h
        .post(
            &format!("projects/{PROJECT_ID}/secrets?secretId=db"),
            json!({"replication": {"automatic": {}}, "versionDestroyTtl": "86400s"}),
        )
        .await;
    assert_eq!(code, 200, "{secret}");
    assert_eq!(secret["versionDestroyTtl"], "86400s");
    h.add_version("db", b"x").await;
    let (code, pending) = transition(&h, "db", "1", "destroy", None).await;
    assert_eq!(code, 200, "{pending}");
    assert_eq!(pending["state"], "DISABLED");
    assert!(pending["scheduledDestroyTime"].as_str().unwrap().ends_with('Z'));
    h.advance_clock(Duration::from_secs(86_401));
    let (_, version) = h.get(&version_path("db", "1")).await;
    assert_eq!(version["state"], "DESTROYED");
    assert!(version.get("scheduledDestroyTime").is_none());
    assert!(version.get("destroyTime").is_some());
}

#[tokio::test]
async fn enabling_cancels_a_scheduled_destroy() {
    let mut h = Harness::new().await;
    h.post(
        &format!("projects/{PROJECT_ID}/secrets?secretId=db"),
        json!({"replication": {"automatic": {}}, "version_destroy_ttl": "86400s"}),
    )
    .await;
    h.add_version("db", b"x").await;
    transition(&h, "db", "1", "destroy", None).await;
    let (_, restored) = transition(&h, "db", "1", "enable", None).await;
    assert_eq!(restored["state"], "ENABLED");
    assert!(restored.get("scheduledDestroyTime").is_none());
    h.advance_clock(Duration::from_secs(2 * 86_400));
    let (code, _) = h.get(&format!("{}:access", version_path("db", "1"))).await;
    assert_eq!(code, 200);
    let reply = h
        .post(
            &format!("projects/{PROJECT_ID}/secrets?secretId=short"),
            json!({"replication": {"automatic": {}}, "versionDestroyTtl": "60s"}),
        )
        .await;
    assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "version_destroy_ttl must be between 86400s");
}

#[tokio::test]
async fn versions_list_filters_by_state_and_paginates() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    for i in 0..4 {
        h.add_version("db", format!("v{i}").as_bytes()).await;
    }
    transition(&h, "db", "2", "disable", None).await;
    transition(&h, "db", "3", "destroy", None).await;
    let numbers = |page: &Value| -> Vec<String> {
        let mut numbers: Vec<String> = page["versions"]
            .as_array()
            .map(|a| a.iter().map(|v| v["name"].as_str().unwrap().rsplit('/').next().unwrap().to_owned()).collect())
            .unwrap_or_default();
        numbers.sort();
        numbers
    };
    let base = format!("projects/{PROJECT_ID}/secrets/db/versions");
    let (code, all) = h.get(&base).await;
    assert_eq!(code, 200);
    assert_eq!(numbers(&all), ["1", "2", "3", "4"]);
    assert_eq!(all["totalSize"], 4);
    let (_, enabled) = h.get(&format!("{base}?filter=state:ENABLED")).await;
    assert_eq!(numbers(&enabled), ["1", "4"]);
    let (_, not_destroyed) = h.get(&format!("{base}?filter=NOT%20state%3ADESTROYED")).await;
    assert_eq!(numbers(&not_destroyed), ["1", "2", "4"]);
    let (_, first) = h.get(&format!("{base}?pageSize=3")).await;
    assert_eq!(first["versions"].as_array().unwrap().len(), 3);
    let token = first["nextPageToken"].as_str().expect("a second page");
    let (_, second) = h.get(&format!("{base}?pageSize=3&pageToken={token}")).await;
    assert_eq!(second["versions"].as_array().unwrap().len(), 1);
    assert!(second.get("nextPageToken").is_none(), "the last page has no token");
    let reply = h.get(&format!("projects/{PROJECT_ID}/secrets/ghost/versions")).await;
    assert_eq!(reply.0, 404);
}
