//! Resource names, IDs, projects, locations, and the create-time rules.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn malformed_secret_id_is_400_invalid_argument() {
    let h = Harness::new().await;
    let reply = h
        .post(&format!("projects/{PROJECT_ID}/secrets?secretId=bad.id"), json!({"replication": {"automatic": {}}}))
        .await;
    assert_error(
        &reply,
        400,
        "INVALID_ARGUMENT",
        &format!("Resource ID [{}] is not in a valid format.", secret_name("bad.id")),
    );
    let reply = h.get(&format!("projects/{PROJECT_ID}/secrets/bad%20id")).await;
    assert_error(
        &reply,
        400,
        "INVALID_ARGUMENT",
        &format!("Resource ID [{}] is not in a valid format.", secret_name("bad id")),
    );
}

#[tokio::test]
async fn secret_id_length_is_1_to_255() {
    let h = Harness::new().await;
    let longest = "a".repeat(255);
    h.create_secret(&longest).await;
    let too_long = "a".repeat(256);
    let reply = h
        .post(&format!("projects/{PROJECT_ID}/secrets?secretId={too_long}"), json!({"replication": {"automatic": {}}}))
        .await;
    assert_error(
        &reply,
        400,
        "INVALID_ARGUMENT",
        &format!("Resource ID [{}] is not in a valid format.", secret_name(&too_long)),
    );
    let reply = h.post(&format!("projects/{PROJECT_ID}/secrets"), json!({"replication": {"automatic": {}}})).await;
    assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "The secretId query parameter is required");
}

#[tokio::test]
async fn malformed_version_id_is_400() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let reply = h.get(&format!("projects/{PROJECT_ID}/secrets/db/versions/0")).await;
    assert_error(
        &reply,
        400,
        "INVALID_ARGUMENT",
        &format!("Resource ID [{}] is not in a valid format.", version_name("db", "0")),
    );
}

#[tokio::test]
async fn project_id_and_number_both_work_and_responses_use_the_number() {
    let h = Harness::new().await;
    let created = h.create_secret("db").await;
    assert_eq!(created["name"], secret_name("db"));
    let (code, by_number) = h.get(&format!("projects/{PROJECT_NUMBER}/secrets/db")).await;
    assert_eq!(code, 200);
    assert_eq!(by_number["name"], secret_name("db"));
    let version = h.add_version("db", b"x").await;
    assert_eq!(version["name"], version_name("db", "1"));
}

#[tokio::test]
async fn duplicate_create_is_409_already_exists() {
    let h = Harness::new().await;
    h.create_secret("csrf-token").await;
    let reply = h
        .post(&format!("projects/{PROJECT_ID}/secrets?secretId=csrf-token"), json!({"replication": {"automatic": {}}}))
        .await;
    assert_error(&reply, 409, "ALREADY_EXISTS", "Secret [projects/435468002770/secrets/csrf-token] already exists.");
}

#[tokio::test]
async fn global_create_needs_replication() {
    let h = Harness::new().await;
    let path = format!("projects/{PROJECT_ID}/secrets?secretId=db");
    assert_error_prefix(&h.post(&path, json!({})).await, 400, "INVALID_ARGUMENT", "Secret.replication is required");
    let empty_replicas = json!({"replication": {"userManaged": {"replicas": []}}});
    assert_error_prefix(
        &h.post(&path, empty_replicas).await,
        400,
        "INVALID_ARGUMENT",
        "Secret.replication.userManaged.replicas",
    );
    let both = json!({"replication": {"automatic": {}, "userManaged": {"replicas": [{"location": "us-east1"}]}}});
    assert_error_prefix(&h.post(&path, both).await, 400, "INVALID_ARGUMENT", "Secret.replication must set exactly one");
}

#[tokio::test]
async fn user_managed_replication_is_echoed_and_reported_on_versions() {
    let h = Harness::new().await;
    let (code, secret) = h
        .post(
            &format!("projects/{PROJECT_ID}/secrets?secret_id=db"),
            json!({"replication": {"user_managed": {"replicas": [{"location": "us-east1"}, {"location": "europe-west1"}]}}}),
        )
        .await;
    assert_eq!(code, 200, "{secret}");
    assert_eq!(
        secret["replication"],
        json!({"userManaged": {"replicas": [{"location": "us-east1"}, {"location": "europe-west1"}]}})
    );
    let version = h.add_version("db", b"x").await;
    assert_eq!(
        version["replicationStatus"],
        json!({"userManaged": {"replicas": [{"location": "us-east1"}, {"location": "europe-west1"}]}})
    );
    h.create_secret("auto").await;
    let version = h.add_version("auto", b"x").await;
    assert_eq!(version["replicationStatus"], json!({"automatic": {}}));
}

#[tokio::test]
async fn regional_secrets_are_a_separate_namespace() {
    let h = Harness::new().await;
    let regional = format!("projects/{PROJECT_ID}/locations/europe-west1/secrets");
    let (code, created) = h.post(&format!("{regional}?secretId=db"), json!({})).await;
    assert_eq!(code, 200, "{created}");
    assert_eq!(created["name"], format!("projects/{PROJECT_NUMBER}/locations/europe-west1/secrets/db"));
    assert!(created.get("replication").is_none());
    // Same id globally is a different secret and does not exist yet.
    let reply = h.get(&format!("projects/{PROJECT_ID}/secrets/db")).await;
    assert_error(&reply, 404, "NOT_FOUND", &format!("Secret [{}] not found or has no versions.", secret_name("db")));
    h.create_secret("db").await;
    let (code, version) =
        h.post(&format!("{regional}/db:addVersion"), json!({"payload": {"data": "cmVnaW9uYWw="}})).await;
    assert_eq!(code, 200, "{version}");
    assert_eq!(version["name"], format!("projects/{PROJECT_NUMBER}/locations/europe-west1/secrets/db/versions/1"));
    assert!(version.get("replicationStatus").is_none(), "regional versions have none");
    let (_, access) = h.get(&format!("{regional}/db/versions/latest:access")).await;
    assert_eq!(decode(&access["payload"]["data"]), b"regional");
    let reply = h.get(&format!("projects/{PROJECT_ID}/secrets/db/versions/latest:access")).await;
    assert_error(&reply, 404, "NOT_FOUND", &format!("Secret [{}] not found or has no versions.", secret_name("db")));
    let (_, other_region) = h.get(&format!("projects/{PROJECT_ID}/locations/us-east1/secrets")).await;
    assert_eq!(other_region, json!({}), "empty list is an empty object");
}

#[tokio::test]
async fn regional_create_rejects_replication_and_unknown_locations() {
    let h = Harness::new().await;
    let reply = h
        .post(
            &format!("projects/{PROJECT_ID}/locations/us-east1/secrets?secretId=db"),
            json!({"replication": {"automatic": {}}}),
        )
        .await;
    assert_error_prefix(&reply, 400, "INVALID_ARGUMENT", "Regional secrets do not take replication");
    let reply = h.post(&format!("projects/{PROJECT_ID}/locations/mars-north1/secrets?secretId=db"), json!({})).await;
    assert_error(&reply, 400, "INVALID_ARGUMENT", "Location [mars-north1] is not a Secret Manager location.");
}

#[tokio::test]
async fn unknown_paths_and_unimplemented_methods() {
    let h = Harness::new().await;
    let reply = h.get("projects/acme-edge/widgets").await;
    assert_eq!(reply.0, 404);
    assert_eq!(reply.1["error"]["status"], "NOT_FOUND");
    let reply = h.get(&format!("projects/{PROJECT_ID}/secrets/db:getIamPolicy")).await;
    assert_error(
        &reply,
        501,
        "UNIMPLEMENTED",
        "Method google.cloud.secretmanager.v1.SecretManagerService.GetIamPolicy is not implemented by the Secret Manager emulator.",
    );
}

#[tokio::test]
async fn unknown_query_parameters_and_body_fields_are_400() {
    let h = Harness::new().await;
    let reply = h.get(&format!("projects/{PROJECT_ID}/secrets?colour=red")).await;
    assert_error(
        &reply,
        400,
        "INVALID_ARGUMENT",
        "Invalid JSON payload received. Unknown name \"colour\": Cannot bind query parameter. Field 'colour' could not be found in request message.",
    );
    let reply = h
        .post(
            &format!("projects/{PROJECT_ID}/secrets?secretId=db"),
            json!({"replication": {"automatic": {}}, "colour": "red"}),
        )
        .await;
    assert_error(
        &reply,
        400,
        "INVALID_ARGUMENT",
        "Invalid JSON payload received. Unknown name \"colour\": Cannot find field.",
    );
    // Standard parameters are accepted everywhere.
    let reply = h.get(&format!("projects/{PROJECT_ID}/secrets?prettyPrint=false&alt=json&$.xgafv=2")).await;
    assert_eq!(reply.0, 200);
}
