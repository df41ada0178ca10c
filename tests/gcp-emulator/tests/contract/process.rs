//! The blocking wrapper from plain `#[test]`s, and the real binary driven as a script would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gcp_emulator::{Role, blocking};

use crate::support::*;

/// A minimal HTTP/1.1 exchange over a fresh connection: (status, body).
fn http(base_url: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let address = base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().expect("status code");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[test]
fn blocking_emulator_works_from_a_plain_test() {
    let emu = blocking::Emulator::start(
        gcp_emulator::Emulator::builder().project_id(PROJECT_ID).project_number(PROJECT_NUMBER),
    )
    .expect("starts");
    let token = emu.access_token(ADMIN, Role::Admin);
    let base = emu.base_url();
    let (code, body) = http(
        &base,
        "POST",
        &format!("/v1/projects/{PROJECT_ID}/secrets?secretId=db"),
        Some(&token),
        r#"{"replication":{"automatic":{}}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(
        &base,
        "POST",
        &format!("/v1/projects/{PROJECT_ID}/secrets/db:addVersion"),
        Some(&token),
        r#"{"payload":{"data":"cHc="}}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(emu.request_counts().get(gcp_emulator::Method::AddVersion), 1);
    emu.faults().fail_next(1, gcp_emulator::Failure::Unavailable, None);
    let path = format!("/v1/projects/{PROJECT_ID}/secrets/db/versions/latest:access");
    assert_eq!(http(&base, "GET", &path, Some(&token), "").0, 503);
    assert_eq!(http(&base, "GET", &path, Some(&token), "").0, 200);
    emu.shutdown();
    assert!(TcpStream::connect(base.trim_start_matches("http://")).is_err(), "the port is closed");
}

#[test]
fn blocking_emulator_stops_on_drop() {
    let emu = blocking::Emulator::start(gcp_emulator::Emulator::builder()).expect("starts");
    let address = emu.local_addr();
    drop(emu);
    // The runtime shuts down in the background; give it a moment.
    let mut closed = false;
    for _ in 0..50 {
        if TcpStream::connect(address).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(closed, "nothing listens after drop");
}

/// Kills the child on drop so a failing assertion never leaks a process.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_prints_its_url_writes_a_key_and_serves_the_admin_api() {
    let dir = std::env::temp_dir().join(format!("gcp-emulator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_path = dir.join("key.json");
    let child = Command::new(env!("CARGO_BIN_EXE_gcp-emulator"))
        .args(["--port", "0", "--project-id", PROJECT_ID, "--project-number", "435468002770"])
        .arg("--print-key")
        .arg(&key_path)
        .args(["--key-role", "accessor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("binary starts");
    let mut running = Running(child);
    let mut line = String::new();
    BufReader::new(running.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let key = std::fs::read_to_string(&key_path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is private");
    let key_json: serde_json::Value = serde_json::from_str(&key).unwrap();
    assert_eq!(key_json["token_uri"], format!("{base}/token"));
    assert_eq!(key_json["client_email"], "emulator@acme-edge.iam.gserviceaccount.com");

    let (code, info) = http(&base, "GET", "/emulator/info", None, "");
    assert_eq!(code, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["projectNumber"], "435468002770");

    // The printed key is an accessor: access is allowed (404, it exists not), create is not.
    let (code, tokens) = http(
        &base,
        "POST",
        "/emulator/tokens",
        None,
        r#"{"email":"a@acme-edge.iam.gserviceaccount.com","role":"admin"}"#,
    );
    assert_eq!(code, 200);
    let token: serde_json::Value = serde_json::from_str(&tokens).unwrap();
    let token = token["access_token"].as_str().unwrap();
    let (code, _) = http(&base, "GET", &format!("/v1/projects/{PROJECT_ID}/secrets"), Some(token), "");
    assert_eq!(code, 200);
    let (code, counts) = http(&base, "GET", "/emulator/requests", None, "");
    assert_eq!(code, 200);
    assert!(counts.contains("\"list\": 1"), "{counts}");

    // SIGTERM stops it cleanly with exit code 0.
    let pid = running.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let mut status = None;
    for _ in 0..100 {
        status = running.0.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "clean exit on SIGTERM");
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binary_rejects_bad_usage_with_64() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_gcp-emulator")).args(["--port", "not-a-port"]).output().expect("runs");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--port"));
}

/// `--print-external-account` and `--subject-token`: two files that let a person (or keyturn)
/// federate at once. The configuration is Google's `external_account` format pointing at this
/// emulator, the token is its issuer's, and the subject (through the account it impersonates)
/// holds the role.
#[test]
fn binary_prints_a_working_external_account_and_subject_token() {
    let dir = std::env::temp_dir().join(format!("gcp-emulator-wif-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (config_path, token_path) = (dir.join("wif.json"), dir.join("token.jwt"));
    let account = "reader@acme-edge.iam.gserviceaccount.com";
    let child = Command::new(env!("CARGO_BIN_EXE_gcp-emulator"))
        .args(["--project-id", PROJECT_ID, "--project-number", "435468002770", "--key-role", "accessor"])
        .arg("--print-external-account")
        .arg(&config_path)
        .arg("--subject-token")
        .arg(&token_path)
        .args(["--impersonate", account, "--subject", "edge-node-7"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("binary starts");
    let mut running = Running(child);
    let mut line = String::new();
    BufReader::new(running.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap().to_owned();

    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    assert_eq!(config["type"], "external_account");
    assert_eq!(config["token_url"], format!("{base}/v1/token"));
    assert_eq!(config["credential_source"]["file"], token_path.to_str().unwrap());
    assert_eq!(
        config["service_account_impersonation_url"],
        format!("{base}/v1/projects/-/serviceAccounts/{account}:generateAccessToken")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777, 0o600);

    let token = std::fs::read_to_string(&token_path).unwrap();
    let exchange = serde_json::json!({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "audience": config["audience"],
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_token": token,
        "subject_token_type": config["subject_token_type"],
    });
    let (code, federated) = http(&base, "POST", "/v1/token", None, &exchange.to_string());
    assert_eq!(code, 200, "{federated}");
    let federated: serde_json::Value = serde_json::from_str(&federated).unwrap();
    let url = config["service_account_impersonation_url"].as_str().unwrap().trim_start_matches(&base).to_owned();
    let body = r#"{"scope":["https://www.googleapis.com/auth/cloud-platform"]}"#;
    let (code, issued) = http(&base, "POST", &url, federated["access_token"].as_str(), body);
    assert_eq!(code, 200, "{issued}");
    let issued: serde_json::Value = serde_json::from_str(&issued).unwrap();
    // An accessor: reading a missing secret is a 404, listing is a 403.
    let token = issued["accessToken"].as_str();
    assert_eq!(http(&base, "GET", &format!("/v1/projects/{PROJECT_ID}/secrets/x/versions/1:access"), token, "").0, 404);
    assert_eq!(http(&base, "GET", &format!("/v1/projects/{PROJECT_ID}/secrets"), token, "").0, 403);
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}
