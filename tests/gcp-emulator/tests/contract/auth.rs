//! The OAuth token endpoint (JWT-bearer grant), bearer-token authentication and roles.

use std::time::Duration;

use gcp_auth::TokenProvider;
use gcp_emulator::Role;
use reqwest::Method;
use serde_json::json;

use crate::support::*;

const PULLER: &str = "puller@acme-edge.iam.gserviceaccount.com";
const UNAUTHENTICATED: &str = "Request had invalid authentication credentials. Expected OAuth 2 \
     access token, login cookie or other valid authentication credential. See \
     https://developers.google.com/identity/sign-in/web/devconsole-project.";

fn assertion<'a>(h: &Harness, key: &'a str) -> Assertion<'a> {
    Assertion {
        key_json: key,
        audience: h.emu.token_uri(),
        issued_at: now_seconds(),
        lifetime: 3595,
        scope: Some(CLOUD_PLATFORM),
        padded: true,
    }
}

#[tokio::test]
async fn service_account_key_file_has_googles_shape() {
    let h = Harness::new().await;
    let key: serde_json::Value = serde_json::from_str(&h.emu.service_account_key(PULLER, Role::Accessor)).unwrap();
    assert_eq!(key["type"], "service_account");
    assert_eq!(key["project_id"], PROJECT_ID);
    assert_eq!(key["client_email"], PULLER);
    assert_eq!(key["token_uri"], h.emu.token_uri());
    assert_eq!(key["private_key_id"].as_str().unwrap().len(), 40);
    let pem = key["private_key"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
}

#[tokio::test]
async fn padded_assertion_gets_a_bearer_token_that_works() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"pw").await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let signed = assertion(&h, &key).sign();
    assert!(signed.contains('='), "gcp_auth pads its segments");
    let (code, body) = exchange(&h, JWT_BEARER, &signed).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599, "a number, not a string");
    let token = body["access_token"].as_str().unwrap();
    let (code, body) = h
        .call_as(Some(token), Method::GET, &format!("projects/{PROJECT_ID}/secrets/db/versions/latest:access"), None)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(decode(&body["payload"]["data"]), b"pw");
}

#[tokio::test]
async fn unpadded_assertion_is_accepted_too() {
    let h = Harness::new().await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let signed = Assertion { padded: false, ..assertion(&h, &key) }.sign();
    let (code, body) = exchange(&h, JWT_BEARER, &signed).await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn assertion_signed_by_another_key_is_rejected() {
    let h = Harness::new().await;
    h.emu.service_account_key(PULLER, Role::Accessor);
    let other = h.emu.service_account_key("other@acme-edge.iam.gserviceaccount.com", Role::Admin);
    // Claims say PULLER, signature is other's key.
    let forged = other.replace("other@acme-edge.iam.gserviceaccount.com", PULLER);
    let reply = exchange(&h, JWT_BEARER, &assertion(&h, &forged).sign()).await;
    assert_eq!(reply.0, 400);
    assert_eq!(reply.1["error"], "invalid_grant");
    assert_eq!(reply.1["error_description"], "Invalid JWT Signature.");
}

#[tokio::test]
async fn assertion_for_another_audience_is_rejected() {
    let h = Harness::new().await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let signed = Assertion { audience: "https://oauth2.googleapis.com/token".into(), ..assertion(&h, &key) }.sign();
    let reply = exchange(&h, JWT_BEARER, &signed).await;
    assert_eq!(reply.0, 400);
    assert_eq!(reply.1["error"], "invalid_grant");
    assert_eq!(
        reply.1["error_description"],
        format!("Invalid JWT: Failed audience check. The right audience is {}", h.emu.token_uri())
    );
}

#[tokio::test]
async fn expired_future_and_long_lived_assertions_are_rejected() {
    let h = Harness::new().await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let timeframe = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a \
                     reasonable timeframe. Check your iat and exp values in the JWT claim.";
    let cases = [
        ("expired", now_seconds() - 4000, 3595),
        ("issued in the future", now_seconds() + 3600, 3595),
        ("valid for two hours", now_seconds(), 7200),
    ];
    for (label, issued_at, lifetime) in cases {
        let signed = Assertion { issued_at, lifetime, ..assertion(&h, &key) }.sign();
        let reply = exchange(&h, JWT_BEARER, &signed).await;
        assert_eq!(reply.0, 400, "{label}");
        assert_eq!(reply.1["error"], "invalid_grant", "{label}");
        assert_eq!(reply.1["error_description"], timeframe, "{label}");
    }
}

/// Google's window, judged on the emulator's own clock as Google judges it on its own: `iat`
/// up to five minutes ahead is taken, further is refused, and so is an `exp` already past. A
/// refusal carries the emulator's `Date` like every answer, which is how a client measures how
/// far its clock is off when it cannot get a token at all.
#[tokio::test]
async fn the_window_is_on_the_emulators_clock_and_a_refusal_carries_its_date() {
    let mut h = Harness::new().await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let timeframe = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a \
                     reasonable timeframe. Check your iat and exp values in the JWT claim.";
    let audience = h.emu.token_uri();
    let at = |issued_at: i64| {
        let (key_json, audience) = (key.as_str(), audience.clone());
        Assertion { key_json, audience, issued_at, lifetime: 3600, scope: Some(CLOUD_PLATFORM), padded: false }.sign()
    };
    assert_eq!(exchange(&h, JWT_BEARER, &at(now_seconds() + 240)).await.0, 200, "four minutes ahead");
    let reply = exchange(&h, JWT_BEARER, &at(now_seconds() + 360)).await;
    assert_eq!((reply.0, reply.1["error_description"].as_str()), (400, Some(timeframe)), "six minutes ahead");

    // Two hours later on the emulator's clock, an assertion signed with the real time (a node
    // two hours behind) is past its exp; one signed with the emulator's time is taken.
    h.advance_clock(Duration::from_secs(7200));
    let body = |assertion: &str| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", JWT_BEARER)
            .append_pair("assertion", assertion)
            .finish()
    };
    let response = h
        .http
        .post(h.emu.token_uri())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body(&at(now_seconds())))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let date = httpdate::parse_http_date(response.headers()["date"].to_str().unwrap()).unwrap();
    let ahead = date.duration_since(std::time::SystemTime::now()).unwrap().as_secs();
    assert!((7195..=7200).contains(&ahead), "the Date is the emulator's, two hours ahead: {ahead} s");
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        (answer["error"].as_str(), answer["error_description"].as_str()),
        (Some("invalid_grant"), Some(timeframe))
    );
    assert_eq!(exchange(&h, JWT_BEARER, &at(now_seconds() + 7200)).await.0, 200, "signed on the emulator's time");
}

#[tokio::test]
async fn wrong_grant_type_unknown_issuer_and_missing_scope_are_rejected() {
    let h = Harness::new().await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let signed = assertion(&h, &key).sign();
    let reply = exchange(&h, "client_credentials", &signed).await;
    assert_eq!(reply.0, 400);
    assert_eq!(reply.1["error"], "unsupported_grant_type");

    let stranger = key.replace(PULLER, "nobody@acme-edge.iam.gserviceaccount.com");
    let reply = exchange(&h, JWT_BEARER, &assertion(&h, &stranger).sign()).await;
    assert_eq!(reply.0, 400);
    assert_eq!(reply.1["error_description"], "Invalid grant: account not found");

    let unscoped = Assertion { scope: None, ..assertion(&h, &key) }.sign();
    let reply = exchange(&h, JWT_BEARER, &unscoped).await;
    assert_eq!(reply.0, 400);
    assert_eq!(reply.1["error"], "invalid_scope");

    let reply = exchange(&h, JWT_BEARER, "not.a.jwt").await;
    assert_eq!(reply.0, 400);
    assert_eq!(reply.1["error"], "invalid_grant");
}

#[tokio::test]
async fn gcp_auth_custom_service_account_gets_a_token_end_to_end() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"from gcp_auth").await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let account = gcp_auth::CustomServiceAccount::from_json(&key).expect("gcp_auth reads the key");
    let token = tokio::time::timeout(Duration::from_secs(20), account.token(&[CLOUD_PLATFORM]))
        .await
        .expect("no hang")
        .expect("gcp_auth gets a token");
    let (code, body) = h
        .call_as(
            Some(token.as_str()),
            Method::GET,
            &format!("projects/{PROJECT_NUMBER}/secrets/db/versions/1:access"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(decode(&body["payload"]["data"]), b"from gcp_auth");
    assert_eq!(h.emu.request_counts().get(gcp_emulator::Method::Token), 1);
}

#[tokio::test]
async fn missing_token_is_401_unauthenticated() {
    let h = Harness::new().await;
    let reply = h.call_as(None, Method::GET, &format!("projects/{PROJECT_ID}/secrets"), None).await;
    assert_error(&reply, 401, "UNAUTHENTICATED", UNAUTHENTICATED);
    assert_eq!(reply.1["error"]["details"][0]["reason"], "CREDENTIALS_MISSING");
}

#[tokio::test]
async fn unknown_and_expired_tokens_are_401() {
    let h = Harness::new().await;
    let path = format!("projects/{PROJECT_ID}/secrets");
    let reply = h.call_as(Some("ya29.made-up"), Method::GET, &path, None).await;
    assert_error(&reply, 401, "UNAUTHENTICATED", UNAUTHENTICATED);

    let token = h.emu.access_token(PULLER, Role::Viewer);
    assert_eq!(h.call_as(Some(&token), Method::GET, &path, None).await.0, 200);
    h.emu.advance_clock(Duration::from_secs(3600));
    let reply = h.call_as(Some(&token), Method::GET, &path, None).await;
    assert_error(&reply, 401, "UNAUTHENTICATED", UNAUTHENTICATED);
    assert_eq!(reply.1["error"]["details"][0]["reason"], "ACCESS_TOKEN_EXPIRED");
}

#[tokio::test]
async fn anonymous_mode_lets_credential_less_requests_through() {
    let h = Harness::with(gcp_emulator::Emulator::builder().allow_anonymous(true)).await;
    let reply = h.call_as(None, Method::GET, &format!("projects/{PROJECT_ID}/secrets"), None).await;
    assert_eq!(reply.0, 200, "{}", reply.1);
    let reply = h.call_as(Some("ya29.bad"), Method::GET, &format!("projects/{PROJECT_ID}/secrets"), None).await;
    assert_eq!(reply.0, 401, "a bad token is still refused");
}

#[tokio::test]
async fn accessor_cannot_read_metadata_403_permission_denied() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let token = h.emu.access_token(PULLER, Role::Accessor);
    let reply = h.call_as(Some(&token), Method::GET, &format!("projects/{PROJECT_ID}/secrets/db"), None).await;
    assert_error(
        &reply,
        403,
        "PERMISSION_DENIED",
        "Permission 'secretmanager.secrets.get' denied for resource \
         'projects/acme-edge/secrets/db' (or it may not exist).",
    );
    let detail = &reply.1["error"]["details"][0];
    assert_eq!(detail["@type"], "type.googleapis.com/google.rpc.ErrorInfo");
    assert_eq!(detail["reason"], "IAM_PERMISSION_DENIED");
    assert_eq!(detail["domain"], "iam.googleapis.com");
    assert_eq!(detail["metadata"]["permission"], "secretmanager.secrets.get");
}

#[tokio::test]
async fn viewer_cannot_access_payloads_and_403_hides_existence() {
    let h = Harness::new().await;
    let token = h.emu.access_token(PULLER, Role::Viewer);
    // The secret does not exist: the caller still sees 403, not 404.
    let reply = h
        .call_as(
            Some(&token),
            Method::GET,
            &format!("projects/{PROJECT_ID}/secrets/ghost/versions/latest:access"),
            None,
        )
        .await;
    assert_error(
        &reply,
        403,
        "PERMISSION_DENIED",
        "Permission 'secretmanager.versions.access' denied for resource \
         'projects/acme-edge/secrets/ghost/versions/latest' (or it may not exist).",
    );
}

#[tokio::test]
async fn version_manager_cannot_create_or_patch_but_can_add_and_destroy() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let token = h.emu.access_token(PULLER, Role::VersionManager);
    let reply = h
        .call_as(
            Some(&token),
            Method::POST,
            &format!("projects/{PROJECT_ID}/secrets?secretId=new"),
            Some(json!({"replication": {"automatic": {}}})),
        )
        .await;
    assert_error_prefix(
        &reply,
        403,
        "PERMISSION_DENIED",
        "Permission 'secretmanager.secrets.create' denied for resource 'projects/acme-edge'",
    );
    let reply = h
        .call_as(
            Some(&token),
            Method::PATCH,
            &format!("projects/{PROJECT_ID}/secrets/db?updateMask=labels"),
            Some(json!({"labels": {"a": "b"}})),
        )
        .await;
    assert_error_prefix(&reply, 403, "PERMISSION_DENIED", "Permission 'secretmanager.secrets.update'");
    let reply = h
        .call_as(
            Some(&token),
            Method::POST,
            &format!("projects/{PROJECT_ID}/secrets/db:addVersion"),
            Some(json!({"payload": {"data": "eA=="}})),
        )
        .await;
    assert_eq!(reply.0, 200, "{}", reply.1);
    let reply = h
        .call_as(Some(&token), Method::POST, &format!("projects/{PROJECT_ID}/secrets/db/versions/1:destroy"), None)
        .await;
    assert_eq!(reply.0, 200, "{}", reply.1);
}

#[tokio::test]
async fn another_project_is_403() {
    let h = Harness::new().await;
    let reply = h.get("projects/someone-else/secrets").await;
    assert_error(
        &reply,
        403,
        "PERMISSION_DENIED",
        "Permission 'secretmanager.secrets.list' denied for resource 'projects/someone-else' \
         (or it may not exist).",
    );
}

// ---- self-signed JWTs (AIP-4111): what Google's own client libraries send ----

/// A key for PULLER and the claims google-auth would sign with it, for tests to vary.
fn self_signed_parts(key: &str) -> (serde_json::Value, serde_json::Value) {
    let key: serde_json::Value = serde_json::from_str(key).unwrap();
    let now = now_seconds();
    (
        json!({"typ": "JWT", "alg": "RS256", "kid": key["private_key_id"]}),
        json!({
            "iss": key["client_email"],
            "sub": key["client_email"],
            "iat": now,
            "exp": now + 3600,
            "aud": "https://secretmanager.googleapis.com/",
        }),
    )
}

async fn access_with(h: &Harness, token: &str) -> Reply {
    h.call_as(Some(token), Method::GET, &format!("projects/{PROJECT_ID}/secrets/db/versions/latest:access"), None).await
}

#[tokio::test]
async fn self_signed_jwt_is_a_bearer_token_for_its_account() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"pw").await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let (code, body) = access_with(&h, &self_signed_jwt(&key, now_seconds())).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(decode(&body["payload"]["data"]), b"pw");
    assert_eq!(h.emu.request_counts().get(gcp_emulator::Method::Token), 0, "no token exchange");
    // Also as the access_token query parameter, like any bearer credential.
    let path = format!(
        "projects/{PROJECT_ID}/secrets/db/versions/latest:access?access_token={}",
        self_signed_jwt(&key, now_seconds())
    );
    assert_eq!(h.call_as(None, Method::GET, &path, None).await.0, 200);
}

#[tokio::test]
async fn self_signed_jwt_audience_with_or_without_the_slash_or_a_cloud_platform_scope() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"pw").await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let (header, claims) = self_signed_parts(&key);
    let mut no_slash = claims.clone();
    no_slash["aud"] = json!("https://secretmanager.googleapis.com");
    assert_eq!(access_with(&h, &sign_jwt(&key, &header, &no_slash)).await.0, 200);
    let mut scoped = claims.clone();
    scoped.as_object_mut().unwrap().remove("aud");
    scoped["scope"] = json!(CLOUD_PLATFORM);
    assert_eq!(access_with(&h, &sign_jwt(&key, &header, &scoped)).await.0, 200);
    scoped["scope"] = json!("https://www.googleapis.com/auth/pubsub");
    let reply = access_with(&h, &sign_jwt(&key, &header, &scoped)).await;
    assert_error(&reply, 403, "PERMISSION_DENIED", "Request had insufficient authentication scopes.");
    assert_eq!(reply.1["error"]["details"][0]["reason"], "ACCESS_TOKEN_SCOPE_INSUFFICIENT");
}

#[tokio::test]
async fn self_signed_jwt_for_another_audience_or_none_is_401() {
    let h = Harness::new().await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let (header, claims) = self_signed_parts(&key);
    let base = h.emu.base_url();
    for aud in
        [json!(h.emu.token_uri()), json!(format!("{base}/")), json!("https://pubsub.googleapis.com/"), json!(null)]
    {
        let mut wrong = claims.clone();
        match aud {
            serde_json::Value::Null => wrong.as_object_mut().unwrap().remove("aud"),
            aud => wrong.as_object_mut().unwrap().insert("aud".into(), aud),
        };
        let reply = access_with(&h, &sign_jwt(&key, &header, &wrong)).await;
        assert_error(&reply, 401, "UNAUTHENTICATED", UNAUTHENTICATED);
        assert_eq!(reply.1["error"]["details"][0]["reason"], "ACCESS_TOKEN_TYPE_UNSUPPORTED", "aud {}", wrong["aud"]);
    }
}

#[tokio::test]
async fn self_signed_jwt_needs_the_kid_of_a_key_of_its_issuer_that_signed_it() {
    let h = Harness::new().await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let second = h.emu.service_account_key(PULLER, Role::Accessor);
    let other = h.emu.service_account_key("other@acme-edge.iam.gserviceaccount.com", Role::Admin);
    let (header, claims) = self_signed_parts(&key);
    let id = |k: &str| serde_json::from_str::<serde_json::Value>(k).unwrap()["private_key_id"].clone();
    let cases = [
        ("no kid", json!({"typ": "JWT", "alg": "RS256"}), key.as_str()),
        ("unknown kid", json!({"typ": "JWT", "alg": "RS256", "kid": "0123456789abcdef"}), &key),
        ("kid of another account's key", json!({"typ": "JWT", "alg": "RS256", "kid": id(&other)}), &other),
        ("kid of one key, signed by another", json!({"typ": "JWT", "alg": "RS256", "kid": id(&second)}), &key),
        ("HS256", json!({"typ": "JWT", "alg": "HS256", "kid": id(&key)}), &key),
    ];
    for (case, header, signer) in cases {
        let reply = access_with(&h, &sign_jwt(signer, &header, &claims)).await;
        assert_error(&reply, 401, "UNAUTHENTICATED", UNAUTHENTICATED);
        assert_eq!(reply.0, 401, "{case}");
    }
    // Either of the account's keys works under its own kid.
    h.create_secret("db").await;
    h.add_version("db", b"pw").await;
    let (second_header, _) = self_signed_parts(&second);
    assert_eq!(access_with(&h, &sign_jwt(&second, &second_header, &claims)).await.0, 200);
    assert_eq!(access_with(&h, &sign_jwt(&key, &header, &claims)).await.0, 200);
}

#[tokio::test]
async fn self_signed_jwt_iss_and_sub_must_both_be_the_account() {
    let h = Harness::new().await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let (header, claims) = self_signed_parts(&key);
    for sub in [json!(null), json!("admin@acme-edge.iam.gserviceaccount.com")] {
        let mut wrong = claims.clone();
        wrong["sub"] = sub;
        let reply = access_with(&h, &sign_jwt(&key, &header, &wrong)).await;
        assert_error(&reply, 401, "UNAUTHENTICATED", UNAUTHENTICATED);
    }
}

#[tokio::test]
async fn self_signed_jwt_timeframe_follows_the_emulators_clock() {
    let mut h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"pw").await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let (header, claims) = self_signed_parts(&key);
    let now = now_seconds();
    for (case, iat, exp) in [("over an hour", now, now + 3601), ("issued in the future", now + 600, now + 1200)] {
        let mut wrong = claims.clone();
        wrong["iat"] = json!(iat);
        wrong["exp"] = json!(exp);
        let reply = access_with(&h, &sign_jwt(&key, &header, &wrong)).await;
        assert_eq!(reply.0, 401, "{case}: {}", reply.1);
        assert_eq!(reply.1["error"]["details"][0]["reason"], "ACCESS_TOKEN_TYPE_UNSUPPORTED", "{case}");
    }
    // Clock skew: issued up to five minutes ahead is accepted, as on the token endpoint.
    let mut skewed = claims.clone();
    skewed["iat"] = json!(now + 240);
    skewed["exp"] = json!(now + 240 + 3600);
    assert_eq!(access_with(&h, &sign_jwt(&key, &header, &skewed)).await.0, 200);

    let token = sign_jwt(&key, &header, &claims);
    assert_eq!(access_with(&h, &token).await.0, 200);
    h.advance_clock(Duration::from_secs(3600));
    let reply = access_with(&h, &token).await;
    assert_error(&reply, 401, "UNAUTHENTICATED", UNAUTHENTICATED);
    assert_eq!(reply.1["error"]["details"][0]["reason"], "ACCESS_TOKEN_EXPIRED");
}

#[tokio::test]
async fn self_signed_jwt_carries_the_accounts_role() {
    let h = Harness::new().await;
    let key = h.emu.service_account_key(PULLER, Role::Accessor);
    let reply = h
        .call_as(
            Some(&self_signed_jwt(&key, now_seconds())),
            Method::POST,
            &format!("projects/{PROJECT_ID}/secrets?secretId=db"),
            Some(json!({"replication": {"automatic": {}}})),
        )
        .await;
    assert_error(
        &reply,
        403,
        "PERMISSION_DENIED",
        "Permission 'secretmanager.secrets.create' denied for resource 'projects/acme-edge' (or it may not exist).",
    );
}
