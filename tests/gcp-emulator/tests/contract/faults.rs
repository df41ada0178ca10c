//! Fault injection (library and admin API), quotas, request counts and reset.

use std::time::{Duration, Instant};

use gcp_emulator::{Failure, Method, QuotaKind};
use serde_json::json;

use crate::support::*;

fn access_path() -> String {
    format!("projects/{PROJECT_ID}/secrets/db/versions/latest:access")
}

async fn with_secret() -> Harness {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"pw").await;
    h
}

#[tokio::test]
async fn latency_is_added_to_every_request() {
    let h = with_secret().await;
    h.emu.faults().set_latency(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(h.get(&access_path()).await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    h.emu.faults().set_latency(Duration::ZERO);
    let started = Instant::now();
    h.get(&access_path()).await;
    assert!(started.elapsed() < Duration::from_millis(150));
}

#[tokio::test]
async fn next_n_requests_fail_with_503_unavailable() {
    let h = with_secret().await;
    h.emu.faults().fail_next(2, Failure::Unavailable, None);
    for _ in 0..2 {
        let reply = h.get(&access_path()).await;
        assert_error(&reply, 503, "UNAVAILABLE", "The service is currently unavailable.");
    }
    assert_eq!(h.get(&access_path()).await.0, 200);
}

#[tokio::test]
async fn failures_can_target_one_method_with_429() {
    let h = with_secret().await;
    h.emu.faults().fail_next(1, Failure::ResourceExhausted, Some(Method::Access));
    assert_eq!(h.get(&format!("projects/{PROJECT_ID}/secrets/db")).await.0, 200, "get is not targeted");
    let reply = h.get(&access_path()).await;
    assert_error(
        &reply,
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Access requests' and limit 'Access requests per minute per project' of service 'secretmanager.googleapis.com' for consumer 'project_number:435468002770'.",
    );
    assert_eq!(h.get(&access_path()).await.0, 200);
}

#[tokio::test]
async fn quota_produces_real_429s_and_rolls_over_after_a_minute() {
    let h = Harness::with(gcp_emulator::Emulator::builder().quota(QuotaKind::Read, 2)).await;
    h.create_secret("db").await;
    let path = format!("projects/{PROJECT_ID}/secrets/db");
    assert_eq!(h.get(&path).await.0, 200);
    assert_eq!(h.get(&path).await.0, 200);
    let reply = h.get(&path).await;
    assert_error(
        &reply,
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute per project' of service 'secretmanager.googleapis.com' for consumer 'project_number:435468002770'.",
    );
    let detail = &reply.1["error"]["details"][0];
    assert_eq!(detail["reason"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(detail["metadata"]["quota_limit_value"], "2");
    h.add_version("db", b"writes are a separate quota").await;
    h.emu.advance_clock(Duration::from_secs(61));
    assert_eq!(h.get(&path).await.0, 200, "a new minute, a new budget");
}

#[tokio::test]
async fn quota_set_at_runtime_on_access() {
    let h = with_secret().await;
    h.emu.faults().set_quota(QuotaKind::Access, Some(1));
    assert_eq!(h.get(&access_path()).await.0, 200);
    assert_eq!(h.get(&access_path()).await.0, 429);
    h.emu.faults().set_quota(QuotaKind::Access, None);
    assert_eq!(h.get(&access_path()).await.0, 200);
}

#[tokio::test]
async fn dropped_requests_get_no_http_response() {
    let h = with_secret().await;
    h.emu.faults().drop_next_requests(1, Some(Method::Access));
    let url = h.url(&access_path());
    let result = send(&h.http, Some(&h.admin_token), reqwest::Method::GET, &url, None).await;
    assert!(result.is_err(), "connection closed without a response: {result:?}");
    assert_eq!(h.get(&access_path()).await.0, 200, "only one was dropped");
    assert_eq!(h.emu.request_counts().get(Method::Access), 2, "the dropped request was received");
}

#[tokio::test]
async fn dropped_connections_are_closed_on_accept() {
    let h = with_secret().await;
    h.emu.faults().drop_next_connections(2);
    let url = h.url(&access_path());
    for _ in 0..2 {
        let result = send(&h.http, Some(&h.admin_token), reqwest::Method::GET, &url, None).await;
        assert!(result.is_err(), "{result:?}");
    }
    assert_eq!(h.get(&access_path()).await.0, 200);
    assert_eq!(h.emu.request_counts().get(Method::Access), 1, "dropped connections carried no request");
}

#[tokio::test]
async fn corrupted_checksums_leave_the_data_alone() {
    let h = with_secret().await;
    h.emu.faults().corrupt_next_checksums(1);
    let (code, bad) = h.get(&access_path()).await;
    assert_eq!(code, 200);
    assert_eq!(decode(&bad["payload"]["data"]), b"pw");
    let honest = gcp_emulator::crc32c(b"pw").to_string();
    assert_ne!(bad["payload"]["dataCrc32c"], json!(honest));
    let (_, good) = h.get(&access_path()).await;
    assert_eq!(good["payload"]["dataCrc32c"], json!(honest));
}

#[tokio::test]
async fn request_counts_are_per_method() {
    let h = with_secret().await;
    h.get(&access_path()).await;
    h.get(&access_path()).await;
    h.get(&format!("projects/{PROJECT_ID}/secrets")).await;
    let counts = h.emu.request_counts();
    assert_eq!(counts.get(Method::Create), 1);
    assert_eq!(counts.get(Method::AddVersion), 1);
    assert_eq!(counts.get(Method::Access), 2);
    assert_eq!(counts.get(Method::List), 1);
    assert_eq!(counts.get(Method::Get), 0);
    assert_eq!(counts.secret_manager_total(), 5);
}

#[tokio::test]
async fn admin_api_drives_faults_counts_and_reset() {
    let h = with_secret().await;
    let (code, _) = h.admin("faults/fail", json!({"count": 1, "status": "UNAVAILABLE", "method": "access"})).await;
    assert_eq!(code, 200);
    assert_eq!(h.get(&access_path()).await.0, 503);
    h.admin("faults/corrupt-checksums", json!({"count": 1})).await;
    let (_, bad) = h.get(&access_path()).await;
    assert_ne!(bad["payload"]["dataCrc32c"], gcp_emulator::crc32c(b"pw").to_string());
    h.admin("faults/quota", json!({"kind": "access", "perMinute": 0})).await;
    assert_eq!(h.get(&access_path()).await.0, 429);
    h.admin("faults/clear", json!({})).await;
    assert_eq!(h.get(&access_path()).await.0, 200);
    h.admin("faults/drop-requests", json!({"count": 1})).await;
    assert!(send(&h.http, Some(&h.admin_token), reqwest::Method::GET, &h.url(&access_path()), None).await.is_err());
    h.admin("faults/drop-connections", json!({"count": 1})).await;
    assert!(send(&h.http, Some(&h.admin_token), reqwest::Method::GET, &h.url(&access_path()), None).await.is_err());
    h.admin("faults/latency", json!({"millis": 0})).await;

    let response = h.http.get(format!("{}/emulator/requests", h.emu.base_url())).send().await.unwrap();
    let (code, counts) = reply(response).await;
    assert_eq!(code, 200);
    assert_eq!(counts["access"], 5, "a connection dropped on accept carried no request");
    assert_eq!(counts["create"], 1);
    assert_eq!(counts["token"], 0);

    let (code, _) = h.admin("reset", json!({})).await;
    assert_eq!(code, 200);
    assert_eq!(h.emu.request_counts().secret_manager_total(), 0);
    let token = h.emu.access_token(ADMIN, gcp_emulator::Role::Admin);
    let reply = h.call_as(Some(&token), reqwest::Method::GET, &format!("projects/{PROJECT_ID}/secrets/db"), None).await;
    assert_eq!(reply.0, 404, "reset cleared the secrets");
    let (code, body) = h.admin("faults/fail", json!({"count": 1, "status": "TEAPOT"})).await;
    assert_eq!(code, 400, "{body}");
}

#[tokio::test]
async fn admin_api_issues_keys_tokens_and_moves_the_clock() {
    let h = with_secret().await;
    let (code, key) =
        h.admin("service-accounts", json!({"email": "ci@acme-edge.iam.gserviceaccount.com", "role": "accessor"})).await;
    assert_eq!(code, 200);
    assert_eq!(key["token_uri"], h.emu.token_uri());
    let key_text = key.to_string();
    let signed = Assertion {
        key_json: &key_text,
        audience: h.emu.token_uri(),
        issued_at: now_seconds(),
        lifetime: 3595,
        scope: Some(CLOUD_PLATFORM),
        padded: true,
    }
    .sign();
    assert_eq!(exchange(&h, JWT_BEARER, &signed).await.0, 200);
    let (code, token) =
        h.admin("tokens", json!({"email": "v@acme-edge.iam.gserviceaccount.com", "role": "viewer"})).await;
    assert_eq!(code, 200);
    let token = token["access_token"].as_str().unwrap().to_owned();
    let path = format!("projects/{PROJECT_ID}/secrets");
    assert_eq!(h.call_as(Some(&token), reqwest::Method::GET, &path, None).await.0, 200);
    h.admin("clock/advance", json!({"seconds": 3600})).await;
    assert_eq!(h.call_as(Some(&token), reqwest::Method::GET, &path, None).await.0, 401);
}

/// A lagging replica: alias and `latest` reads (get and access) answer as of N changes ago;
/// reads by number stay current, as Google's are strongly consistent. The admin route does the
/// same; clearing the faults ends it.
#[tokio::test]
async fn lagging_alias_reads_answer_from_an_older_view() {
    let h = with_secret().await;
    h.add_version("db", b"pw2").await;
    h.add_version("db", b"pw3").await;
    let alias = |n: u64| {
        let path = format!("projects/{PROJECT_ID}/secrets/db?updateMask=version_aliases");
        let body = json!({"versionAliases": {"current": n}});
        let h = &h;
        async move { h.call(reqwest::Method::PATCH, &path, Some(body)).await }
    };
    for n in [1, 2, 3] {
        assert_eq!(alias(n).await.0, 200);
    }
    let current = format!("projects/{PROJECT_ID}/secrets/db/versions/current");
    let named = |reply: &Reply| reply.1["name"].as_str().unwrap().rsplit('/').next().unwrap().to_string();

    h.emu.faults().lag_alias_reads(1);
    assert_eq!(named(&h.get(&format!("{current}:access")).await), "2", "current as it was one change ago");
    assert_eq!(named(&h.get(&current).await), "2", "get reads the same replica");
    assert_eq!(named(&h.get(&access_path()).await), "2", "latest one version back");
    let by_number = h.get(&format!("projects/{PROJECT_ID}/secrets/db/versions/3:access")).await;
    assert_eq!(decode(&by_number.1["payload"]["data"]), b"pw3", "reads by number are current");

    // Further back than the history goes: the oldest view, where `current` named nothing yet.
    assert_eq!(h.admin("faults/lag-aliases", json!({"count": 10})).await.0, 200);
    let reply = h.get(&format!("{current}:access")).await;
    assert_eq!(reply.0, 404, "{:?}", reply.1);
    assert_eq!(named(&h.get(&access_path()).await), "1");

    h.emu.faults().clear();
    assert_eq!(named(&h.get(&format!("{current}:access")).await), "3");
}
