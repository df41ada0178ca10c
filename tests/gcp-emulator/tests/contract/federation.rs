//! Workload Identity Federation (`shared/reference/gcp-identity/CONTRACT.md`): the STS token
//! exchange and what it checks of the request and the subject token, IAM Credentials
//! `generateAccessToken` and its refusals, the federated and impersonated tokens on Secret
//! Manager, the test issuer's documents, and the `Date` every answer carries.

use std::time::Duration;

use gcp_emulator::{Method, Role, SigningAlgorithm, SubjectToken};
use serde_json::{Value, json};

use crate::support::{Harness, PROJECT_ID, PROJECT_NUMBER, Reply, assert_error, assert_error_prefix, reply};

const NODE: &str = "system:serviceaccount:keyturn:keyturn";
const ACCOUNT: &str = "keyturn-node@acme-edge.iam.gserviceaccount.com";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The form Google's libraries post, for `audience` and `subject_token`.
fn form(audience: &str, subject_token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".into()),
        ("audience", audience.into()),
        ("scope", SCOPE.into()),
        ("requested_token_type", "urn:ietf:params:oauth:token-type:access_token".into()),
        ("subject_token", subject_token.into()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt".into()),
    ]
}

/// A form-encoded POST to STS, as Google's libraries send it.
fn post_form(h: &Harness, form: &[(&str, String)]) -> reqwest::RequestBuilder {
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    h.http.post(h.emu.sts_uri()).header("content-type", "application/x-www-form-urlencoded").body(body)
}

async fn exchange(h: &Harness, form: &[(&str, String)]) -> Reply {
    reply(post_form(h, form).send().await.expect("STS answers")).await
}

#[track_caller]
fn assert_oauth_error(reply: &Reply, error: &str, description_part: &str) {
    let (code, body) = reply;
    assert_eq!(*code, 400, "{body}");
    assert_eq!(body["error"], error, "{body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.contains(description_part), "{description_part:?} in {body}");
}

async fn federated_token(h: &Harness, subject: &str) -> String {
    let token = h.emu.subject_token(&SubjectToken::new(subject));
    let (code, body) = exchange(h, &form(&h.emu.workload_identity_audience(), &token)).await;
    assert_eq!(code, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

async fn access(h: &Harness, token: &str) -> Reply {
    h.call_as(
        Some(token),
        reqwest::Method::GET,
        &format!("projects/{PROJECT_ID}/secrets/db/versions/current:access"),
        None,
    )
    .await
}

async fn generate(h: &Harness, bearer: Option<&str>, account: &str, body: Value) -> Reply {
    let mut request = h.http.post(h.emu.impersonation_url(account)).json(&body);
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    reply(request.send().await.expect("IAM Credentials answers")).await
}

#[tokio::test]
async fn a_subject_token_of_the_trusted_issuer_is_exchanged_for_a_federated_token() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"v1").await;
    let token = h.emu.subject_token(&SubjectToken::new(NODE));
    let (code, body) = exchange(&h, &form(&h.emu.workload_identity_audience(), &token)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(h.emu.request_counts().get(Method::Sts), 1);

    // Granted nothing, the principal is known but may not read: 403, not 401.
    let federated = body["access_token"].as_str().unwrap();
    let (code, denied) = access(&h, federated).await;
    assert_eq!(code, 403, "{denied}");
    h.emu.grant_federated(NODE, Role::Accessor);
    let (code, _) = h
        .call_as(
            Some(federated),
            reqwest::Method::GET,
            &format!("projects/{PROJECT_ID}/secrets/db/versions/1:access"),
            None,
        )
        .await;
    assert_eq!(code, 200, "the federated token reads once its principal is granted");
    assert_eq!(
        h.emu.workload_principal(NODE),
        format!(
            "principal://iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global/workloadIdentityPools/emulator-pool/subject/{NODE}"
        )
    );
}

#[tokio::test]
async fn the_exchange_takes_json_with_the_apis_names_and_es256_tokens() {
    let h = Harness::new().await;
    let mut spec = SubjectToken::new(NODE);
    spec.algorithm = SigningAlgorithm::Es256;
    let token = h.emu.subject_token(&spec);
    let body = json!({
        "grantType": "urn:ietf:params:oauth:grant-type:token-exchange",
        "audience": h.emu.workload_identity_audience(),
        "scope": SCOPE,
        "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
        "subjectToken": token,
        "subjectTokenType": "urn:ietf:params:oauth:token-type:id_token",
    });
    let (code, body) = reply(h.http.post(h.emu.sts_uri()).json(&body).send().await.unwrap()).await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn the_request_is_checked_before_the_token() {
    let h = Harness::new().await;
    let audience = h.emu.workload_identity_audience();
    let token = h.emu.subject_token(&SubjectToken::new(NODE));
    let mut malformed = form(&audience, &token);
    malformed[1].1 = audience.trim_start_matches("//iam.googleapis.com/").to_owned();
    assert_oauth_error(
        &exchange(&h, &malformed).await,
        "invalid_request",
        "Invalid value for \"audience\". This value should be the full resource name of the Identity Provider.",
    );
    let mut unknown = form(&audience, &token);
    unknown[1].1 = audience.replace("emulator-pool", "no-such-pool");
    assert_oauth_error(&exchange(&h, &unknown).await, "invalid_target", "the pool or provider is disabled or deleted");
    let mut grant = form(&audience, &token);
    grant[0].1 = "urn:ietf:params:oauth:grant-type:jwt-bearer".into();
    assert_oauth_error(&exchange(&h, &grant).await, "unsupported_grant_type", "jwt-bearer");
    let missing: Vec<_> = form(&audience, &token).into_iter().filter(|(k, _)| *k != "subject_token").collect();
    assert_oauth_error(&exchange(&h, &missing).await, "invalid_request", "subject_token");
    // No Authorization header: the subject token is the credential.
    let response = post_form(&h, &form(&audience, &token)).bearer_auth("x").send().await.unwrap();
    assert_oauth_error(&reply(response).await, "invalid_request", "Authorization");
    // A workforce pool bills a user project.
    let workforce = h.emu.workforce_audience();
    let mut spec = SubjectToken::new("alice@example.com");
    spec.audience = Some(workforce.clone());
    let user_token = h.emu.subject_token(&spec);
    assert_oauth_error(&exchange(&h, &form(&workforce, &user_token)).await, "invalid_request", "userProject");
    let mut with_project = form(&workforce, &user_token);
    with_project.push(("options", json!({ "userProject": PROJECT_ID }).to_string()));
    assert_eq!(exchange(&h, &with_project).await.0, 200);
}

#[tokio::test]
async fn bad_subject_tokens_are_invalid_grant() {
    let h = Harness::new().await;
    let audience = h.emu.workload_identity_audience();
    let refused = |spec: SubjectToken, part: &'static str| {
        let token = h.emu.subject_token(&spec);
        let form = form(&audience, &token);
        let h = &h;
        async move { assert_oauth_error(&exchange(h, &form).await, "invalid_grant", part) }
    };
    let mut expired = SubjectToken::new(NODE);
    expired.issued_ago = Duration::from_secs(7200);
    refused(expired, "has expired").await;
    let mut elsewhere = SubjectToken::new(NODE);
    elsewhere.audience = Some("https://example.com".into());
    refused(elsewhere, "does not match the expected audience").await;
    let mut forged = SubjectToken::new(NODE);
    forged.foreign_key = true;
    refused(forged, "signature").await;
    let mut unknown_key = SubjectToken::new(NODE);
    unknown_key.key_id = Some("rs-unknown".into());
    refused(unknown_key, "no key with kid rs-unknown").await;
    let mut other_issuer = SubjectToken::new(NODE);
    other_issuer.issuer = Some("https://token.actions.githubusercontent.com".into());
    refused(other_issuer, "does not match the expected issuer").await;
    let mut long = SubjectToken::new(NODE);
    long.lifetime = Duration::from_secs(49 * 3600);
    refused(long, "48 hours").await;
    assert_oauth_error(&exchange(&h, &form(&audience, "not.a.jwt")).await, "invalid_grant", "Invalid JWT");

    // The default allowed audiences are the provider's name with either prefix.
    let mut https = SubjectToken::new(NODE);
    https.audience = Some(audience.replace("//iam.googleapis.com/", "https://iam.googleapis.com/"));
    assert_eq!(exchange(&h, &form(&audience, &h.emu.subject_token(&https))).await.0, 200);
    // The emulator's clock decides: a valid token expires when it is moved.
    let token = h.emu.subject_token(&SubjectToken::new(NODE));
    h.emu.advance_clock(Duration::from_secs(3601));
    assert_oauth_error(&exchange(&h, &form(&audience, &token)).await, "invalid_grant", "has expired");
}

#[tokio::test]
async fn generate_access_token_impersonates_only_for_granted_principals() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"v1").await;
    let federated = federated_token(&h, NODE).await;
    let body = json!({ "scope": [SCOPE], "lifetime": "1800s" });

    let denied = generate(&h, Some(&federated), ACCOUNT, body.clone()).await;
    assert_error(
        &denied,
        403,
        "PERMISSION_DENIED",
        "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
    );
    assert_eq!(denied.1["error"]["details"][0]["metadata"]["permission"], "iam.serviceAccounts.getAccessToken");
    let unknown = generate(&h, Some(&federated), "nobody@acme-edge.iam.gserviceaccount.com", body.clone()).await;
    assert_eq!(unknown.1["error"]["message"], denied.1["error"]["message"], "existence is not revealed");

    h.emu.allow_impersonation(NODE, ACCOUNT, Role::Accessor);
    let (code, issued) = generate(&h, Some(&federated), ACCOUNT, body).await;
    assert_eq!(code, 200, "{issued}");
    let expire_time = issued["expireTime"].as_str().unwrap();
    assert!(expire_time.ends_with('Z') && !expire_time.contains('.'), "RFC 3339 in whole seconds: {expire_time}");
    let token = issued["accessToken"].as_str().unwrap();
    let (code, _) = h
        .call_as(
            Some(token),
            reqwest::Method::GET,
            &format!("projects/{PROJECT_ID}/secrets/db/versions/1:access"),
            None,
        )
        .await;
    assert_eq!(code, 200, "the token acts as the account, with its role");
    // It lives the lifetime asked for.
    h.emu.advance_clock(Duration::from_secs(1801));
    let (code, _) = h
        .call_as(
            Some(token),
            reqwest::Method::GET,
            &format!("projects/{PROJECT_ID}/secrets/db/versions/1:access"),
            None,
        )
        .await;
    assert_eq!(code, 401);
    assert_eq!(h.emu.request_counts().get(Method::GenerateAccessToken), 3);
}

#[tokio::test]
async fn generate_access_token_refusals() {
    let h = Harness::new().await;
    h.emu.allow_impersonation(NODE, ACCOUNT, Role::Accessor);
    let federated = federated_token(&h, NODE).await;
    let missing = generate(&h, None, ACCOUNT, json!({ "scope": [SCOPE] })).await;
    assert_eq!(missing.0, 401, "{}", missing.1);
    assert_eq!(missing.1["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(missing.1["error"]["details"][0]["metadata"]["service"], "iamcredentials.googleapis.com");
    assert_eq!(generate(&h, Some("ya29.unknown"), ACCOUNT, json!({ "scope": [SCOPE] })).await.0, 401);
    let long = generate(&h, Some(&federated), ACCOUNT, json!({ "scope": [SCOPE], "lifetime": "7200s" })).await;
    assert_error_prefix(&long, 400, "INVALID_ARGUMENT", "The lifetime 7200s exceeds the maximum of 3600s");
    let no_scope = generate(&h, Some(&federated), ACCOUNT, json!({ "lifetime": "60s" })).await;
    assert_error_prefix(&no_scope, 400, "INVALID_ARGUMENT", "Scope is required");
    // The federated token itself expires on the emulator's clock.
    h.emu.advance_clock(Duration::from_secs(3600));
    let expired = generate(&h, Some(&federated), ACCOUNT, json!({ "scope": [SCOPE] })).await;
    assert_eq!((expired.0, expired.1["error"]["details"][0]["reason"].as_str()), (401, Some("ACCESS_TOKEN_EXPIRED")));
}

#[tokio::test]
async fn the_issuer_publishes_its_discovery_document_and_keys_and_answers_carry_the_emulators_date() {
    let h = Harness::new().await;
    let issuer = h.emu.oidc_issuer();
    let discovery: Value =
        h.http.get(format!("{issuer}/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(discovery["issuer"], issuer);
    let jwks: Value = h.http.get(discovery["jwks_uri"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
    let kinds: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kty"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["RSA", "EC"]);

    let date = |response: &reqwest::Response| response.headers()["date"].to_str().unwrap().to_owned();
    let before = date(&h.http.get(format!("{}/emulator/info", h.emu.base_url())).send().await.unwrap());
    h.emu.advance_clock(Duration::from_secs(86_400 * 366));
    let after = date(&h.http.get(format!("{}/emulator/info", h.emu.base_url())).send().await.unwrap());
    let year = |d: &str| d.split(' ').nth(3).unwrap().parse::<i32>().unwrap();
    assert_eq!(year(&after) - year(&before), 1, "{before} → {after}");
}

#[tokio::test]
async fn the_admin_api_mints_subject_tokens_and_grants_principals() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    h.add_version("db", b"v1").await;
    let (code, minted) = h.admin("oidc/tokens", json!({ "subject": "ci-job", "lifetimeSeconds": 600 })).await;
    assert_eq!(code, 200, "{minted}");
    let (code, granted) = h.admin("federation/grants", json!({ "subject": "ci-job", "role": "accessor" })).await;
    assert_eq!(code, 200, "{granted}");
    assert!(granted["principal"].as_str().unwrap().ends_with("/subject/ci-job"));
    let (code, body) =
        exchange(&h, &form(&h.emu.workload_identity_audience(), minted["token"].as_str().unwrap())).await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = h
        .call_as(
            body["access_token"].as_str(),
            reqwest::Method::GET,
            &format!("projects/{PROJECT_ID}/secrets/db/versions/1:access"),
            None,
        )
        .await;
    assert_eq!(code, 200);
    let (code, _) = h
        .admin("federation/impersonation", json!({ "subject": "ci-job", "serviceAccount": ACCOUNT, "role": "admin" }))
        .await;
    assert_eq!(code, 200);
    let (_, info) = h.http.get(format!("{}/emulator/info", h.emu.base_url())).send().await.map(|r| (0, r)).unwrap();
    let info: Value = info.json().await.unwrap();
    assert_eq!(info["stsUri"], h.emu.sts_uri());
    assert_eq!(info["workloadIdentityAudience"], h.emu.workload_identity_audience());
}
