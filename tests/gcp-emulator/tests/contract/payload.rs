//! Payloads: base64, the 64 KiB limit, emptiness, and CRC32C in both directions.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::support::*;

async fn add(h: &Harness, payload: Value) -> Reply {
    h.post(&format!("projects/{PROJECT_ID}/secrets/db:addVersion"), json!({ "payload": payload })).await
}

#[test]
fn crc32c_matches_the_contract_vectors() {
    assert_eq!(gcp_emulator::crc32c(b"123456789"), 3_808_858_755);
    assert_eq!(gcp_emulator::crc32c(b"hello"), 2_591_144_780);
}

#[tokio::test]
async fn checksum_is_computed_when_the_client_sends_none() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let version = h.add_version("db", b"hello").await;
    assert!(version.get("clientSpecifiedPayloadChecksum").is_none());
    let (_, access) = h.get(&format!("projects/{PROJECT_ID}/secrets/db/versions/1:access")).await;
    assert_eq!(access["payload"]["dataCrc32c"], "2591144780");
}

#[tokio::test]
async fn client_checksum_as_number_or_string_in_either_spelling() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    for payload in [
        json!({"data": "aGVsbG8=", "dataCrc32c": "2591144780"}),
        json!({"data": "aGVsbG8=", "dataCrc32c": 2591144780u64}),
        json!({"data": "aGVsbG8=", "data_crc32c": 2591144780u64}),
        json!({"data": "MTIzNDU2Nzg5", "data_crc32c": "3808858755"}),
    ] {
        let (code, version) = add(&h, payload.clone()).await;
        assert_eq!(code, 200, "{payload}: {version}");
        assert_eq!(version["clientSpecifiedPayloadChecksum"], true, "{payload}");
    }
}

#[tokio::test]
async fn checksum_mismatch_is_400_invalid_argument() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let reply = add(&h, json!({"data": "aGVsbG8=", "dataCrc32c": "1"})).await;
    assert_error(
        &reply,
        400,
        "INVALID_ARGUMENT",
        "Checksum mismatch: payload.data_crc32c is 1, but the CRC32C of the decoded payload data is 2591144780.",
    );
    let (_, versions) = h.get(&format!("projects/{PROJECT_ID}/secrets/db/versions")).await;
    assert_eq!(versions, json!({}), "nothing was stored");
}

#[tokio::test]
async fn payload_of_64_kib_is_accepted_and_one_byte_more_rejected() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let (code, _) = add(&h, json!({"data": STANDARD.encode(vec![7u8; 65_536])})).await;
    assert_eq!(code, 200);
    let reply = add(&h, json!({"data": STANDARD.encode(vec![7u8; 65_537])})).await;
    assert_error(&reply, 400, "INVALID_ARGUMENT", "Secret Payload is 65537 bytes; the maximum size is 65536 bytes.");
}

#[tokio::test]
async fn empty_or_missing_payload_is_400() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let message = "Secret Payload cannot be empty: payload.data is required.";
    assert_error(&add(&h, json!({"data": ""})).await, 400, "INVALID_ARGUMENT", message);
    assert_error(&add(&h, json!({})).await, 400, "INVALID_ARGUMENT", message);
    let reply = h.post(&format!("projects/{PROJECT_ID}/secrets/db:addVersion"), json!({})).await;
    assert_error(&reply, 400, "INVALID_ARGUMENT", message);
}

#[tokio::test]
async fn bad_base64_is_400_and_url_safe_or_unpadded_is_accepted() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let reply = add(&h, json!({"data": "not base64!"})).await;
    assert_error(
        &reply,
        400,
        "INVALID_ARGUMENT",
        "Invalid value at 'payload.data' (TYPE_BYTES), Base64 decoding failed for \"not base64!\"",
    );
    let bytes = [0xfbu8, 0xff, 0xfe];
    let (code, _) = add(&h, json!({"data": URL_SAFE_NO_PAD.encode(bytes)})).await;
    assert_eq!(code, 200, "proto3 JSON accepts URL-safe, unpadded base64");
    let (_, access) = h.get(&format!("projects/{PROJECT_ID}/secrets/db/versions/latest:access")).await;
    assert_eq!(access["payload"]["data"], STANDARD.encode(bytes), "output is standard base64");
}

#[tokio::test]
async fn binary_payloads_round_trip() {
    let h = Harness::new().await;
    h.create_secret("db").await;
    let data: Vec<u8> = (0..=255u8).collect();
    h.add_version("db", &data).await;
    let (_, access) = h.get(&format!("projects/{PROJECT_ID}/secrets/db/versions/1:access")).await;
    assert_eq!(decode(&access["payload"]["data"]), data);
    assert_eq!(access["payload"]["dataCrc32c"], gcp_emulator::crc32c(&data).to_string());
}
