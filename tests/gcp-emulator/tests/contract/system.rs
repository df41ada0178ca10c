//! System parameters (Discovery "parameters" and Google's "System parameters" page) and the
//! enum encoding `$alt=json;enum-encoding=int` asks for.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::*;

/// `db` with versions 1 (destroyed), 2 (disabled), 3 (enabled), and the secret typed OTHER.
async fn versions_in_every_state(h: &Harness) {
    let (code, body) = h
        .post(
            &format!("projects/{PROJECT_ID}/secrets?secretId=db"),
            json!({"replication": {"automatic": {}}, "secretType": "OTHER"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    for data in [b"1", b"2", b"3"] {
        h.add_version("db", data).await;
    }
    let base = format!("projects/{PROJECT_ID}/secrets/db/versions");
    assert_eq!(h.post(&format!("{base}/1:destroy"), json!({})).await.0, 200);
    assert_eq!(h.post(&format!("{base}/2:disable"), json!({})).await.0, 200);
}

fn states(list: &Value) -> Vec<Value> {
    list["versions"].as_array().expect("versions").iter().map(|v| v["state"].clone()).collect()
}

#[tokio::test]
async fn enum_encoding_int_renders_every_enum_as_its_number() {
    let h = Harness::new().await;
    versions_in_every_state(&h).await;
    let alt = "$alt=json;enum-encoding=int";
    let base = format!("projects/{PROJECT_ID}/secrets/db");
    let (_, list) = h.get(&format!("{base}/versions?{}", alt.replace(';', "%3B"))).await;
    assert_eq!(states(&list), [json!(1), json!(2), json!(3)]);
    // The same, as Google's Python client encodes it.
    let (_, list) = h.get(&format!("{base}/versions?%24alt=json%3Benum-encoding%3Dint")).await;
    assert_eq!(states(&list), [json!(1), json!(2), json!(3)]);
    let (_, version) = h.get(&format!("{base}/versions/2?{alt}")).await;
    assert_eq!(version["state"], 2);
    let (_, version) = h.post(&format!("{base}/versions/2:enable?{alt}"), json!({})).await;
    assert_eq!(version["state"], 1);
    let (_, secret) = h.get(&format!("{base}?{alt}")).await;
    assert_eq!(secret["secretType"], 50, "OTHER is 50 in resources.proto");
    let (_, secrets) = h.get(&format!("projects/{PROJECT_ID}/secrets?alt=json;enum-encoding=int")).await;
    assert_eq!(secrets["secrets"][0]["secretType"], 50);
    let (code, access) = h.get(&format!("{base}/versions/latest:access?{alt}")).await;
    assert_eq!(code, 200, "no enums in the access response, and nothing else changes");
    assert_eq!(access["payload"]["dataCrc32c"], json!(crc32c("3")), "int64 stays a string");
}

fn crc32c(data: &str) -> String {
    gcp_emulator::crc32c(data.as_bytes()).to_string()
}

#[tokio::test]
async fn enums_are_names_by_default_and_with_alt_json() {
    let h = Harness::new().await;
    versions_in_every_state(&h).await;
    let base = format!("projects/{PROJECT_ID}/secrets/db/versions");
    for query in ["", "?alt=json", "?$alt=json"] {
        let (_, list) = h.get(&format!("{base}{query}")).await;
        assert_eq!(states(&list), [json!("ENABLED"), json!("DISABLED"), json!("DESTROYED")], "{query:?}");
    }
    let (_, secret) = h.get(&format!("projects/{PROJECT_ID}/secrets/db")).await;
    assert_eq!(secret["secretType"], "OTHER");
}

#[tokio::test]
async fn enum_values_may_be_sent_as_numbers() {
    let h = Harness::new().await;
    let (code, body) = h
        .post(
            &format!("projects/{PROJECT_ID}/secrets?secretId=typed"),
            json!({"replication": {"automatic": {}}, "secretType": 3}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["secretType"], "CERTIFICATE");
    let reply = h
        .post(
            &format!("projects/{PROJECT_ID}/secrets?secretId=badly-typed"),
            json!({"replication": {"automatic": {}}, "secretType": 7}),
        )
        .await;
    assert_error(
        &reply,
        400,
        "INVALID_ARGUMENT",
        "Invalid value at 'secret.secret_type' (type.googleapis.com/google.cloud.secretmanager.v1.Secret.SecretType), \"7\"",
    );
}

#[tokio::test]
async fn alt_values_other_than_json_are_refused() {
    let h = Harness::new().await;
    let path = format!("projects/{PROJECT_ID}/secrets");
    assert_error(
        &h.get(&format!("{path}?alt=proto")).await,
        501,
        "UNIMPLEMENTED",
        "alt=proto (binary protobuf responses) is not implemented by the Secret Manager emulator.",
    );
    assert_error(
        &h.get(&format!("{path}?alt=media")).await,
        400,
        "INVALID_ARGUMENT",
        "alt=media is not supported by this method: Secret Manager methods answer JSON only.",
    );
    assert_error(
        &h.get(&format!("{path}?alt=xml")).await,
        400,
        "INVALID_ARGUMENT",
        "Invalid value at 'alt' (TYPE_ENUM), \"xml\"",
    );
    assert_error_prefix(
        &h.get(&format!("{path}?$alt=json;enum-encoding=string")).await,
        400,
        "INVALID_ARGUMENT",
        "Invalid option [enum-encoding=string]",
    );
    assert_error_prefix(
        &h.get(&format!("{path}?alt=json&$alt=json;enum-encoding=int")).await,
        400,
        "INVALID_ARGUMENT",
        "Conflicting values for the system parameter",
    );
}

#[tokio::test]
async fn system_parameters_are_read_before_credentials() {
    let h = Harness::new().await;
    let reply = h.call_as(None, Method::GET, &format!("projects/{PROJECT_ID}/secrets?alt=xml"), None).await;
    assert_eq!(reply.0, 400, "{}", reply.1);
    // And shape the 401 itself.
    let reply = h.call_as(None, Method::GET, &format!("projects/{PROJECT_ID}/secrets?$.xgafv=1"), None).await;
    assert_eq!(reply.0, 401);
    assert_eq!(reply.1["error"]["errors"][0]["reason"], "unauthorized");
}

#[tokio::test]
async fn pretty_print_is_the_default_and_false_sends_compact_json() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let path = format!("projects/{PROJECT_ID}/secrets/db");
    let pretty = h.get_raw(&path, &[]).await;
    assert_eq!(pretty.code, 200);
    assert!(pretty.text.starts_with("{\n  \""), "two-space indentation: {}", pretty.text);
    for query in ["prettyPrint=false", "$prettyPrint=false", "prettyPrint=0"] {
        let compact = h.get_raw(&format!("{path}?{query}"), &[]).await;
        assert!(!compact.text.contains('\n'), "{query}: {}", compact.text);
        assert_eq!(
            serde_json::from_str::<Value>(&compact.text).unwrap(),
            serde_json::from_str::<Value>(&pretty.text).unwrap()
        );
    }
    assert!(h.get_raw(&format!("{path}?prettyPrint=true"), &[]).await.text.contains('\n'));
    let compact_error = h.get_raw(&format!("projects/{PROJECT_ID}/secrets/missing?prettyPrint=false"), &[]).await;
    assert_eq!(compact_error.code, 404);
    assert!(!compact_error.text.contains('\n'), "errors follow prettyPrint too");
    assert_error(
        &h.get(&format!("{path}?prettyPrint=maybe")).await,
        400,
        "INVALID_ARGUMENT",
        "Invalid value at 'prettyPrint' (TYPE_BOOL), \"maybe\"",
    );
}

#[tokio::test]
async fn fields_selects_a_partial_response() {
    let h = Harness::new().await;
    let secret = h.create_secret("db").await;
    h.create_secret("api").await;
    let path = format!("projects/{PROJECT_ID}/secrets");
    let (_, body) = h.get(&format!("{path}/db?fields=name,etag")).await;
    assert_eq!(body, json!({"name": secret_name("db"), "etag": secret["etag"]}));
    let (_, body) = h.get(&format!("{path}/db?$fields=replication")).await;
    assert_eq!(body, json!({"replication": {"automatic": {}}}));
    let (_, body) = h.get(&format!("{path}?pageSize=1&fields=secrets(name),nextPageToken")).await;
    assert_eq!(body["secrets"], json!([{"name": secret_name("api")}]));
    assert!(body["nextPageToken"].is_string());
    assert!(body.get("totalSize").is_none(), "not selected");
    let (_, body) = h.get(&format!("{path}?fields=secrets/name")).await;
    assert_eq!(body, json!({"secrets": [{"name": secret_name("api")}, {"name": secret_name("db")}]}));
    // The header form.
    let raw = h.get_raw(&format!("{path}/db"), &[("X-Goog-FieldMask", "createTime")]).await;
    let body: Value = serde_json::from_str(&raw.text).unwrap();
    assert_eq!(body.as_object().unwrap().keys().collect::<Vec<_>>(), ["createTime"]);
    // Errors come whole, and a malformed selection is a 400.
    let reply = h.get(&format!("{path}/missing?fields=name")).await;
    assert_error(
        &reply,
        404,
        "NOT_FOUND",
        &format!("Secret [{}] not found or has no versions.", secret_name("missing")),
    );
    assert_error_prefix(
        &h.get(&format!("{path}/db?fields=secrets(name")).await,
        400,
        "INVALID_ARGUMENT",
        "Invalid field selection",
    );
}

#[tokio::test]
async fn fields_and_numeric_enums_combine() {
    let h = Harness::new().await;
    versions_in_every_state(&h).await;
    let (_, body) = h
        .get(&format!("projects/{PROJECT_ID}/secrets/db/versions?$alt=json;enum-encoding=int&fields=versions/state"))
        .await;
    assert_eq!(body, json!({"versions": [{"state": 1}, {"state": 2}, {"state": 3}]}));
}

#[tokio::test]
async fn xgafv_chooses_the_error_envelope() {
    let h = Harness::new().await;
    let path = format!("projects/{PROJECT_ID}/secrets/missing");
    let message = format!("Secret [{}] not found or has no versions.", secret_name("missing"));
    let (_, v2) = h.get(&path).await;
    assert_eq!(v2, json!({"error": {"code": 404, "message": message, "status": "NOT_FOUND"}}));
    let (_, explicit) = h.get(&format!("{path}?$.xgafv=2")).await;
    assert_eq!(explicit, v2);
    let (code, v1) = h.get(&format!("{path}?$.xgafv=1")).await;
    assert_eq!(code, 404);
    assert_eq!(
        v1,
        json!({"error": {
            "code": 404,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": "notFound"}],
            "status": "NOT_FOUND",
        }})
    );
    let (code, _) = h.get(&format!("projects/{PROJECT_ID}/secrets?$.xgafv=1")).await;
    assert_eq!(code, 200, "success responses do not change");
    assert_error(
        &h.get(&format!("{path}?$.xgafv=3")).await,
        400,
        "INVALID_ARGUMENT",
        "Invalid value at '$.xgafv' (TYPE_ENUM), \"3\"",
    );
}

#[tokio::test]
async fn callback_wraps_the_answer_in_jsonp() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let path = format!("projects/{PROJECT_ID}/secrets/db");
    let raw = h.get_raw(&format!("{path}?callback=handle.reply&prettyPrint=false"), &[]).await;
    assert_eq!(raw.code, 200);
    assert_eq!(raw.content_type, "text/javascript; charset=UTF-8");
    let json = raw.text.strip_prefix("// API callback\nhandle.reply(").and_then(|t| t.strip_suffix(");\n"));
    let body: Value = serde_json::from_str(json.expect("wrapped in the callback")).unwrap();
    assert_eq!(body["name"], secret_name("db"));
    let missing = h.get_raw(&format!("projects/{PROJECT_ID}/secrets/missing?$callback=cb"), &[]).await;
    assert_eq!(missing.code, 404);
    assert!(missing.text.starts_with("// API callback\ncb("), "{}", missing.text);
    assert_error_prefix(
        &h.get(&format!("{path}?callback=alert(1)")).await,
        400,
        "INVALID_ARGUMENT",
        "Invalid JSONP callback name",
    );
}

#[tokio::test]
async fn an_api_key_alone_is_refused_and_beside_a_token_ignored() {
    let h = Harness::new().await;
    let path = format!("projects/{PROJECT_ID}/secrets");
    let reply = h.call_as(None, Method::GET, &format!("{path}?key=AIzaSyFakeKey"), None).await;
    assert_error(
        &reply,
        401,
        "UNAUTHENTICATED",
        "API keys are not supported by this API. Expected OAuth2 access token or other authentication \
         credentials that assert a principal. See https://cloud.google.com/docs/authentication",
    );
    assert_eq!(reply.1["error"]["details"][0]["reason"], "CREDENTIALS_MISSING");
    assert_eq!(h.get(&format!("{path}?key=AIzaSyFakeKey")).await.0, 200);
    assert_eq!(h.get_raw(&path, &[("X-Goog-Api-Key", "AIzaSyFakeKey")]).await.code, 200);
}

#[tokio::test]
async fn token_and_quota_parameters_are_accepted() {
    let h = Harness::new().await;
    let path = format!("projects/{PROJECT_ID}/secrets");
    let token = h.admin_token.clone();
    for query in [format!("access_token={token}"), format!("oauth_token={token}")] {
        let reply = h.call_as(None, Method::GET, &format!("{path}?{query}"), None).await;
        assert_eq!(reply.0, 200, "{query}: {}", reply.1);
    }
    for query in ["quotaUser=node-7", "uploadType=media", "upload_protocol=raw"] {
        assert_eq!(h.get(&format!("{path}?{query}")).await.0, 200, "{query}");
    }
}

#[tokio::test]
async fn unknown_parameters_are_still_refused_even_with_a_dollar() {
    let h = Harness::new().await;
    for name in ["colour", "$colour", "$quotaUser", "passwd"] {
        let reply = h.get(&format!("projects/{PROJECT_ID}/secrets?{name}=x")).await;
        assert_error(
            &reply,
            400,
            "INVALID_ARGUMENT",
            &format!(
                "Invalid JSON payload received. Unknown name \"{name}\": Cannot bind query parameter. \
                 Field '{name}' could not be found in request message."
            ),
        );
    }
}
