//! Secrets: get, patch, delete, list; labels, annotations, aliases, expiry, rotation, etags.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::*;

fn secret_path(id: &str) -> String {
    format!("projects/{PROJECT_ID}/secrets/{id}")
}

async fn patch(h: &Harness, id: &str, mask: &str, body: Value) -> Reply {
    h.call(Method::PATCH, &format!("{}?updateMask={mask}", secret_path(id)), Some(body)).await
}

/// RFC 3339 UTC with `Z` and fractional digits, e.g. `2026-10-02T13:02:50.882009Z`.
fn assert_timestamp(value: &Value) {
    let text = value.as_str().expect("timestamp string");
    let bytes = text.as_bytes();
    assert_eq!(bytes.len(), 27, "{text}");
    assert_eq!((bytes[4], bytes[10], bytes[19], bytes[26]), (b'-', b'T', b'.', b'Z'), "{text}");
}

fn assert_quoted_etag(value: &Value) {
    let etag = value.as_str().expect("etag string");
    assert!(etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'), "{etag}");
}

#[tokio::test]
async fn created_secret_has_google_output_shape() {
    let h = Harness::new().await;
    let secret = h.create_secret("db").await;
    assert_eq!(secret["name"], secret_name("db"));
    assert_eq!(secret["replication"], json!({"automatic": {}}));
    assert_timestamp(&secret["createTime"]);
    assert_quoted_etag(&secret["etag"]);
    assert!(secret.get("labels").is_none(), "empty maps are omitted");
    let (code, fetched) = h.get(&secret_path("db")).await;
    assert_eq!(code, 200);
    assert_eq!(fetched, secret);
}

#[tokio::test]
async fn missing_secret_is_404_not_found() {
    let h = Harness::new().await;
    let message = format!("Secret [{}] not found or has no versions.", secret_name("ghost"));
    assert_error(&h.get(&secret_path("ghost")).await, 404, "NOT_FOUND", &message);
    assert_error(&h.call(Method::DELETE, &secret_path("ghost"), None).await, 404, "NOT_FOUND", &message);
    assert_error(
        &h.post(&format!("{}:addVersion", secret_path("ghost")), json!({"payload": {"data": "eA=="}})).await,
        404,
        "NOT_FOUND",
        &message,
    );
}

#[tokio::test]
async fn patch_requires_an_update_mask() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let reply = h.call(Method::PATCH, &secret_path("db"), Some(json!({"labels": {"a": "b"}}))).await;
    assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "update_mask is required");
    let reply = patch(&h, "db", "replication", json!({"replication": {"automatic": {}}})).await;
    assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "update_mask path [replication] names an immutable field");
}

#[tokio::test]
async fn patch_replaces_masked_fields_only() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let (code, secret) = patch(
        &h,
        "db",
        "labels,annotations",
        json!({
            "labels": {"env": "prod"},
            "annotations": {"keyturn.owner": "edge"},
        }),
    )
    .await;
    assert_eq!(code, 200, "{secret}");
    assert_eq!(secret["labels"], json!({"env": "prod"}));
    assert_eq!(secret["annotations"], json!({"keyturn.owner": "edge"}));
    // Fields not in the mask are untouched even when the body carries them.
    let (_, secret) = patch(
        &h,
        "db",
        "annotations",
        json!({
            "labels": {"env": "dev"},
            "annotations": {},
        }),
    )
    .await;
    assert_eq!(secret["labels"], json!({"env": "prod"}));
    assert!(secret.get("annotations").is_none(), "masked and absent means cleared");
}

#[tokio::test]
async fn label_rules_are_enforced() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    for bad in [json!({"Env": "prod"}), json!({"env": "Prod"}), json!({"1env": "x"})] {
        let reply = patch(&h, "db", "labels", json!({ "labels": bad })).await;
        assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "Label ");
    }
    let many: serde_json::Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!(""))).collect();
    let reply = patch(&h, "db", "labels", json!({ "labels": many })).await;
    assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "A secret can have at most 64 labels");
}

#[tokio::test]
async fn annotation_rules_and_16_kib_total() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    for bad in ["-lead", "trail.", "has/slash", ""] {
        let reply = patch(&h, "db", "annotations", json!({ "annotations": { bad: "v" } })).await;
        assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "Annotation key [");
    }
    let fits = "v".repeat(16 * 1024 - 2);
    let reply = patch(&h, "db", "annotations", json!({ "annotations": { "k": fits } })).await;
    assert_eq!(reply.0, 200, "16383 bytes in total is under the limit");
    let too_big = "v".repeat(16 * 1024 - 1);
    let reply = patch(&h, "db", "annotations", json!({ "annotations": { "k": too_big } })).await;
    assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "The total size of annotation keys and values is 16384 bytes");
}

#[tokio::test]
async fn version_aliases_are_a_whole_map_of_int64_strings() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"one").await;
    h.add_version("db", b"two").await;
    let (code, secret) =
        patch(&h, "db", "versionAliases", json!({"versionAliases": {"current": "2", "previous": 1}})).await;
    assert_eq!(code, 200, "{secret}");
    assert_eq!(secret["versionAliases"], json!({"current": "2", "previous": "1"}));
    let (_, secret) = patch(&h, "db", "version_aliases", json!({"version_aliases": {"stable": 1}})).await;
    assert_eq!(secret["versionAliases"], json!({"stable": "1"}), "replaced whole, not merged");
}

#[tokio::test]
async fn alias_rules_are_enforced() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"one").await;
    for bad in ["latest", "Latest", "NEW", "new", "1st", "has.dot"] {
        let reply = patch(&h, "db", "versionAliases", json!({"versionAliases": { bad: "1" }})).await;
        assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", &format!("Version alias [{bad}] is invalid"));
    }
    let long = format!("a{}", "b".repeat(63));
    let reply = patch(&h, "db", "versionAliases", json!({"versionAliases": { long.clone(): "1" }})).await;
    assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "Version alias [");
    let many: serde_json::Map<String, Value> = (0..51).map(|i| (format!("a{i}"), json!("1"))).collect();
    let reply = patch(&h, "db", "versionAliases", json!({ "versionAliases": many })).await;
    assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "A secret can have at most 50 version aliases");
    let fifty: serde_json::Map<String, Value> = (0..50).map(|i| (format!("a{i}"), json!("1"))).collect();
    assert_eq!(patch(&h, "db", "versionAliases", json!({ "versionAliases": fifty })).await.0, 200);
}

#[tokio::test]
async fn alias_to_a_missing_version_is_rejected() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"one").await;
    let reply = patch(&h, "db", "versionAliases", json!({"versionAliases": {"current": "9"}})).await;
    assert_error(
        &reply,
        400,
        "INVALID_ARGUMENT",
        &format!(
            "Version alias [current] refers to Secret Version [{}], which does not exist or is destroyed.",
            version_name("db", "9")
        ),
    );
}

#[tokio::test]
async fn secret_etag_mismatch_is_400_failed_precondition() {
    let h = Harness::new().await;
    let created = h.create_secret("db").await;
    let etag = created["etag"].as_str().unwrap().to_owned();
    let stale = "\"1a2b3c\"";
    let reply = patch(&h, "db", "labels", json!({"labels": {"a": "b"}, "etag": stale})).await;
    assert_error(
        &reply,
        400,
        "FAILED_PRECONDITION",
        &format!("The etag {stale} does not match the current etag {etag} of [{}].", secret_name("db")),
    );
    let (code, updated) = patch(&h, "db", "labels", json!({"labels": {"a": "b"}, "etag": etag})).await;
    assert_eq!(code, 200, "matching etag succeeds");
    assert_ne!(updated["etag"], created["etag"], "a write changes the etag");
    let (code, again) = patch(&h, "db", "labels", json!({"labels": {"a": "b"}})).await;
    assert_eq!(code, 200, "omitted etag: no check");
    assert_ne!(again["etag"], updated["etag"], "even a no-op write changes the etag");
}

#[tokio::test]
async fn delete_checks_the_etag_and_removes_versions() {
    let h = Harness::new().await;
    let created = h.create_secret("db").await;
    h.add_version("db", b"x").await;
    let reply = h.call(Method::DELETE, &format!("{}?etag=%22stale%22", secret_path("db")), None).await;
    assert_error_prefix(&reply, 400, "FAILED_PRECONDITION", "The etag \"stale\" does not match");
    let etag = created["etag"].as_str().unwrap();
    let url = format!("{}?etag={}", secret_path("db"), etag.replace('"', "%22"));
    let (code, body) = h.call(Method::DELETE, &url, None).await;
    assert_eq!((code, body), (200, json!({})));
    let reply = h.get(&format!("{}/versions/1", secret_path("db"))).await;
    assert_eq!(reply.0, 404);
}

#[tokio::test]
async fn list_paginates_with_tokens_and_total_size() {
    let h = Harness::new().await;
    for i in 0..5 {
        h.create_secret(&format!("s{i}")).await;
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = format!("projects/{PROJECT_ID}/secrets?pageSize=2");
        if let Some(t) = &token {
            path.push_str(&format!("&pageToken={t}"));
        }
        let (code, page) = h.get(&path).await;
        assert_eq!(code, 200, "{page}");
        assert_eq!(page["totalSize"], 5);
        let secrets = page["secrets"].as_array().unwrap();
        assert!(secrets.len() <= 2);
        seen.extend(secrets.iter().map(|s| s["name"].as_str().unwrap().to_owned()));
        match page["nextPageToken"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    seen.sort();
    let expected: Vec<String> = (0..5).map(|i| secret_name(&format!("s{i}"))).collect();
    assert_eq!(seen, expected, "every secret exactly once, in whatever order");
    let reply = h.get(&format!("projects/{PROJECT_ID}/secrets?pageSize=-1")).await;
    assert_eq!(reply.0, 400);
    let reply = h.get(&format!("projects/{PROJECT_ID}/secrets?pageToken=garbage")).await;
    assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "Invalid page token");
}

#[tokio::test]
async fn list_filter_by_label_and_name() {
    let h = Harness::new().await;
    for (id, env) in [("a-db", "prod"), ("b-db", "dev"), ("c-cache", "prod")] {
        h.create_secret(id).await;
        patch(&h, id, "labels", json!({"labels": {"env": env}})).await;
    }
    let names = |page: &Value| -> Vec<String> {
        let mut names: Vec<String> = page["secrets"]
            .as_array()
            .map(|a| a.iter().map(|s| s["name"].as_str().unwrap().rsplit('/').next().unwrap().to_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    let (_, page) = h.get(&format!("projects/{PROJECT_ID}/secrets?filter=labels.env%3Dprod")).await;
    assert_eq!(names(&page), ["a-db", "c-cache"]);
    assert!(page.get("totalSize").is_none(), "totalSize is 0 (omitted) with a filter");
    let (_, page) = h.get(&format!("projects/{PROJECT_ID}/secrets?filter=name%3Adb%20AND%20labels.env%3Aprod")).await;
    assert_eq!(names(&page), ["a-db"]);
    let reply = h.get(&format!("projects/{PROJECT_ID}/secrets?filter=colour%3Ared")).await;
    assert_error(&reply, 400, "INVALID_ARGUMENT", "Invalid filter: the field [colour] is not supported");
}

#[tokio::test]
async fn ttl_becomes_expire_time_and_the_secret_vanishes_when_due() {
    let mut h = Harness::new().await;
    let (code, secret) = h
        .post(
            &format!("projects/{PROJECT_ID}/secrets?secretId=temp"),
            json!({"replication": {"automatic": {}}, "ttl": "3600s"}),
        )
        .await;
    assert_eq!(code, 200, "{secret}");
    assert_timestamp(&secret["expireTime"]);
    assert!(secret.get("ttl").is_none(), "ttl is input only");
    h.advance_clock(Duration::from_secs(3601));
    assert_eq!(h.get(&secret_path("temp")).await.0, 404);
    let reply = h
        .post(
            &format!("projects/{PROJECT_ID}/secrets?secretId=both"),
            json!({"replication": {"automatic": {}}, "ttl": "60s", "expireTime": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "Only one of Secret.expire_time and Secret.ttl");
}

#[tokio::test]
async fn rotation_needs_topics_and_is_echoed() {
    let h = Harness::new().await;
    let next = "2099-01-01T00:00:00Z";
    let reply = h
        .post(
            &format!("projects/{PROJECT_ID}/secrets?secretId=rot"),
            json!({"replication": {"automatic": {}}, "rotation": {"nextRotationTime": next, "rotationPeriod": "3600s"}}),
        )
        .await;
    assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "A rotation policy needs at least one Pub/Sub topic");
    let (code, secret) = h
        .post(
            &format!("projects/{PROJECT_ID}/secrets?secretId=rot"),
            json!({
                "replication": {"automatic": {}},
                "topics": [{"name": "projects/acme-edge/topics/rotations"}],
                "rotation": {"next_rotation_time": next, "rotation_period": "86400s"},
            }),
        )
        .await;
    assert_eq!(code, 200, "{secret}");
    assert_eq!(
        secret["rotation"],
        json!({"nextRotationTime": "2099-01-01T00:00:00.000000Z", "rotationPeriod": "86400s"})
    );
    assert_eq!(secret["topics"], json!([{"name": "projects/acme-edge/topics/rotations"}]));
    let reply =
        patch(&h, "rot", "rotation", json!({"rotation": {"nextRotationTime": next, "rotationPeriod": "60s"}})).await;
    assert_error_prefix(
        &reply,
        400,
        "INVALID_ARGUMENT",
        "rotation.rotation_period must be whole seconds between 3600s",
    );
}
