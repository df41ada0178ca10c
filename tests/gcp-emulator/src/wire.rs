//! The JSON wire format: request bodies in, resources out (proto3 JSON mapping, CONTRACT §1).
//!
//! Input structs accept lowerCamelCase and snake_case field names, refuse unknown fields (as
//! Google's front end does), and take int64 values as JSON numbers or strings and enum values
//! as names or numbers. Output is built from store records in lowerCamelCase, with int64s as
//! strings, timestamps in RFC 3339 `Z`, enums as names, and default values (empty maps,
//! `false`) omitted, as Google omits them. [`numeric_enums`] rewrites the enums of a response
//! as numbers, for `$alt=json;enum-encoding=int`.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::{Map, Value, json};

use crate::clock::{format_duration, format_timestamp};
use crate::status::ApiError;
use crate::store::{Replication, SecretRecord, State, VersionRecord};

/// A proto3 int64: a JSON number or a decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Int64(pub(crate) i64);

impl<'de> Deserialize<'de> for Int64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Int64Visitor;
        impl Visitor<'_> for Int64Visitor {
            type Value = Int64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an int64 as a JSON number or decimal string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int64, E> {
                Ok(Int64(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int64, E> {
                i64::try_from(v).map(Int64).map_err(|_| E::custom(format!("{v} is out of range for int64")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Int64, E> {
                // Protobuf JSON parsers accept integral floats such as 3.0 or 1e3.
                if v.fract() == 0.0 && v.abs() < 9.2e18 {
                    Ok(Int64(v as i64))
                } else {
                    Err(E::custom(format!("{v} is not an integer")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Int64, E> {
                v.trim().parse().map(Int64).map_err(|_| E::custom(format!("{v:?} is not an int64")))
            }
        }
        deserializer.deserialize_any(Int64Visitor)
    }
}

/// A proto3 enum value: its name, or its number (what clients that ask for numeric enums send).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(crate) enum EnumInput {
    Name(String),
    Number(i64),
}

impl EnumInput {
    /// The value's name in `table`, or the text to quote in an error.
    pub(crate) fn resolve(&self, table: &[(&'static str, i64)]) -> Result<&'static str, String> {
        let found = match self {
            EnumInput::Name(name) => table.iter().find(|(n, _)| n == name),
            EnumInput::Number(number) => table.iter().find(|(_, v)| v == number),
        };
        found.map(|(name, _)| *name).ok_or_else(|| match self {
            EnumInput::Name(name) => name.clone(),
            EnumInput::Number(number) => number.to_string(),
        })
    }
}

/// `SecretVersion.State` (resources.proto).
pub(crate) const VERSION_STATES: &[(&str, i64)] =
    &[("STATE_UNSPECIFIED", 0), ("ENABLED", 1), ("DISABLED", 2), ("DESTROYED", 3)];
/// `Secret.SecretType`. `OTHER` is 50, not 5.
pub(crate) const SECRET_TYPES: &[(&str, i64)] = &[
    ("SECRET_TYPE_UNSPECIFIED", 0),
    ("CLOUD_SQL_DB_CREDENTIALS", 1),
    ("ACCESS_KEY", 2),
    ("CERTIFICATE", 3),
    ("OTHER_DB_CREDENTIALS", 4),
    ("OTHER", 50),
];
/// `Rotation.ManagedRotationStatus.State`. The emulator never sets it; listed so the numeric
/// rendering covers every enum of the resources.
pub(crate) const MANAGED_ROTATION_STATES: &[(&str, i64)] = &[("STATE_UNSPECIFIED", 0), ("ACTIVE", 1), ("INACTIVE", 2)];

/// The response message of each method, which decides where its enum fields are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    Secret,
    SecretVersion,
    ListSecretsResponse,
    ListSecretVersionsResponse,
    AccessSecretVersionResponse,
    Empty,
}

/// Rewrites every enum field of `value` (a `message`) from its name to its number. Secret
/// Manager v1 has three enums in its resources (the replication messages have none).
pub(crate) fn numeric_enums(message: Message, value: &mut Value) {
    fn number(field: Option<&mut Value>, table: &[(&str, i64)]) {
        if let Some(field) = field
            && let Some(found) = field.as_str().and_then(|name| table.iter().find(|(n, _)| *n == name))
        {
            *field = json!(found.1);
        }
    }
    fn secret(value: &mut Value) {
        number(value.get_mut("secretType"), SECRET_TYPES);
        let status = value.get_mut("rotation").and_then(|r| r.get_mut("managedRotationStatus"));
        number(status.and_then(|s| s.get_mut("state")), MANAGED_ROTATION_STATES);
    }
    fn version(value: &mut Value) {
        number(value.get_mut("state"), VERSION_STATES);
    }
    fn each(list: Option<&mut Value>, apply: fn(&mut Value)) {
        if let Some(Value::Array(items)) = list {
            items.iter_mut().for_each(apply);
        }
    }
    match message {
        Message::Secret => secret(value),
        Message::SecretVersion => version(value),
        Message::ListSecretsResponse => each(value.get_mut("secrets"), secret),
        Message::ListSecretVersionsResponse => each(value.get_mut("versions"), version),
        Message::AccessSecretVersionResponse | Message::Empty => {}
    }
}

/// `Secret`, as sent to create and patch. Output-only fields are accepted and ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SecretBody {
    #[allow(dead_code)]
    pub(crate) name: Option<String>,
    pub(crate) replication: Option<ReplicationBody>,
    #[serde(alias = "create_time")]
    #[allow(dead_code)]
    pub(crate) create_time: Option<Value>,
    pub(crate) labels: Option<BTreeMap<String, String>>,
    pub(crate) topics: Option<Vec<TopicBody>>,
    #[serde(alias = "expire_time")]
    pub(crate) expire_time: Option<String>,
    pub(crate) ttl: Option<String>,
    pub(crate) etag: Option<String>,
    pub(crate) rotation: Option<RotationBody>,
    #[serde(alias = "version_aliases")]
    pub(crate) version_aliases: Option<BTreeMap<String, Int64>>,
    pub(crate) annotations: Option<BTreeMap<String, String>>,
    #[serde(alias = "version_destroy_ttl")]
    pub(crate) version_destroy_ttl: Option<String>,
    #[serde(alias = "customer_managed_encryption")]
    pub(crate) customer_managed_encryption: Option<CmekBody>,
    /// Input-only and immutable; the emulator accepts and forgets them.
    #[allow(dead_code)]
    pub(crate) tags: Option<BTreeMap<String, String>>,
    #[serde(alias = "secret_type")]
    pub(crate) secret_type: Option<EnumInput>,
    #[serde(alias = "policy_member")]
    #[allow(dead_code)]
    pub(crate) policy_member: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ReplicationBody {
    pub(crate) automatic: Option<AutomaticBody>,
    #[serde(alias = "user_managed")]
    pub(crate) user_managed: Option<UserManagedBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AutomaticBody {
    #[serde(alias = "customer_managed_encryption")]
    pub(crate) customer_managed_encryption: Option<CmekBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UserManagedBody {
    pub(crate) replicas: Option<Vec<ReplicaBody>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ReplicaBody {
    pub(crate) location: Option<String>,
    #[serde(alias = "customer_managed_encryption")]
    pub(crate) customer_managed_encryption: Option<CmekBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CmekBody {
    #[serde(alias = "kms_key_name")]
    pub(crate) kms_key_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TopicBody {
    pub(crate) name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RotationBody {
    #[serde(alias = "next_rotation_time")]
    pub(crate) next_rotation_time: Option<String>,
    #[serde(alias = "rotation_period")]
    pub(crate) rotation_period: Option<String>,
    #[serde(alias = "managed_rotation_status")]
    #[allow(dead_code)]
    pub(crate) managed_rotation_status: Option<Value>,
}

/// `AddSecretVersionRequest` minus the path-bound `parent`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddVersionBody {
    pub(crate) payload: Option<PayloadBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PayloadBody {
    pub(crate) data: Option<String>,
    #[serde(rename = "dataCrc32c", alias = "data_crc32c")]
    pub(crate) data_crc32c: Option<Int64>,
}

/// The body of `:enable`, `:disable` and `:destroy`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateChangeBody {
    pub(crate) etag: Option<String>,
}

/// Parses a request body; an empty body is `{}`. Errors read like Google's front end.
pub(crate) fn parse_body<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|error| {
        let text = error.to_string();
        match text.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()) {
            Some(field) => ApiError::invalid_json(format!("Unknown name \"{field}\": Cannot find field.")),
            None => ApiError::invalid_json(text),
        }
    })
}

// ---- output ----

fn cmek(kms_key_name: &Option<String>) -> Option<Value> {
    kms_key_name.as_ref().map(|k| json!({ "kmsKeyName": k }))
}

fn replication_json(replication: &Replication) -> Value {
    match replication {
        Replication::Automatic { kms_key_name } => {
            let mut automatic = Map::new();
            if let Some(c) = cmek(kms_key_name) {
                automatic.insert("customerManagedEncryption".into(), c);
            }
            json!({ "automatic": automatic })
        }
        Replication::UserManaged(replicas) => {
            let replicas: Vec<Value> = replicas
                .iter()
                .map(|r| {
                    let mut replica = Map::new();
                    replica.insert("location".into(), json!(r.location));
                    if let Some(c) = cmek(&r.kms_key_name) {
                        replica.insert("customerManagedEncryption".into(), c);
                    }
                    Value::Object(replica)
                })
                .collect();
            json!({ "userManaged": { "replicas": replicas } })
        }
    }
}

fn replication_status_json(replication: &Replication) -> Value {
    match replication {
        Replication::Automatic { .. } => json!({ "automatic": {} }),
        Replication::UserManaged(replicas) => {
            let replicas: Vec<Value> = replicas.iter().map(|r| json!({ "location": r.location })).collect();
            json!({ "userManaged": { "replicas": replicas } })
        }
    }
}

pub(crate) fn secret_json(name: String, secret: &SecretRecord) -> Value {
    let settings = &secret.settings;
    let mut out = Map::new();
    out.insert("name".into(), json!(name));
    if let Some(replication) = &settings.replication {
        out.insert("replication".into(), replication_json(replication));
    }
    out.insert("createTime".into(), json!(format_timestamp(secret.create_time)));
    if !settings.labels.is_empty() {
        out.insert("labels".into(), json!(settings.labels));
    }
    if !settings.topics.is_empty() {
        let topics: Vec<Value> = settings.topics.iter().map(|t| json!({ "name": t })).collect();
        out.insert("topics".into(), Value::Array(topics));
    }
    if let Some(expire) = settings.expire_time {
        out.insert("expireTime".into(), json!(format_timestamp(expire)));
    }
    out.insert("etag".into(), json!(secret.etag));
    if let Some(rotation) = &settings.rotation {
        let mut r = Map::new();
        if let Some(next) = rotation.next_rotation_time {
            r.insert("nextRotationTime".into(), json!(format_timestamp(next)));
        }
        // INPUT_ONLY in the proto, yet real responses echo it (CONTRACT §8).
        if let Some(period) = rotation.rotation_period {
            r.insert("rotationPeriod".into(), json!(format_duration(period)));
        }
        out.insert("rotation".into(), Value::Object(r));
    }
    if !settings.version_aliases.is_empty() {
        let aliases: Map<String, Value> =
            settings.version_aliases.iter().map(|(alias, n)| (alias.clone(), json!(n.to_string()))).collect();
        out.insert("versionAliases".into(), Value::Object(aliases));
    }
    if !settings.annotations.is_empty() {
        out.insert("annotations".into(), json!(settings.annotations));
    }
    if let Some(ttl) = settings.version_destroy_ttl {
        out.insert("versionDestroyTtl".into(), json!(format_duration(ttl)));
    }
    if let Some(c) = cmek(&settings.kms_key_name) {
        out.insert("customerManagedEncryption".into(), c);
    }
    if let Some(secret_type) = &settings.secret_type {
        out.insert("secretType".into(), json!(secret_type));
    }
    Value::Object(out)
}

pub(crate) fn version_json(name: String, version: &VersionRecord) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), json!(name));
    out.insert("createTime".into(), json!(format_timestamp(version.create_time)));
    if let Some(destroyed) = version.destroy_time {
        out.insert("destroyTime".into(), json!(format_timestamp(destroyed)));
    }
    out.insert("state".into(), json!(version.state.as_str()));
    if let Some(replication) = &version.replication {
        out.insert("replicationStatus".into(), replication_status_json(replication));
    }
    out.insert("etag".into(), json!(version.etag));
    if version.client_specified_checksum {
        out.insert("clientSpecifiedPayloadChecksum".into(), json!(true));
    }
    if let Some(scheduled) = version.scheduled_destroy_time {
        out.insert("scheduledDestroyTime".into(), json!(format_timestamp(scheduled)));
    }
    Value::Object(out)
}

/// `AccessSecretVersionResponse`. `crc32c` is passed in so a fault can corrupt it without
/// touching the stored version.
pub(crate) fn access_json(name: String, version: &VersionRecord, crc32c: u32) -> Value {
    debug_assert_eq!(version.state, State::Enabled);
    json!({
        "name": name,
        "payload": {
            "data": STANDARD.encode(&version.data),
            "dataCrc32c": crc32c.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int64_accepts_numbers_and_strings() {
        let body: PayloadBody = serde_json::from_str(r#"{"data":"aGVsbG8=","data_crc32c":2591144780}"#).unwrap();
        assert_eq!(body.data_crc32c, Some(Int64(2_591_144_780)));
        let body: PayloadBody = serde_json::from_str(r#"{"data":"aGVsbG8=","dataCrc32c":"2591144780"}"#).unwrap();
        assert_eq!(body.data_crc32c, Some(Int64(2_591_144_780)));
        assert!(serde_json::from_str::<PayloadBody>(r#"{"dataCrc32c":"x"}"#).is_err());
    }

    #[test]
    fn snake_and_camel_case_are_both_accepted() {
        let camel: SecretBody =
            serde_json::from_str(r#"{"versionAliases":{"a":"1"},"versionDestroyTtl":"86400s"}"#).unwrap();
        let snake: SecretBody =
            serde_json::from_str(r#"{"version_aliases":{"a":1},"version_destroy_ttl":"86400s"}"#).unwrap();
        assert_eq!(camel.version_aliases, snake.version_aliases);
        assert_eq!(camel.version_destroy_ttl, snake.version_destroy_ttl);
    }

    #[test]
    fn enums_are_read_by_name_or_number() {
        let by_name: SecretBody = serde_json::from_str(r#"{"secretType":"OTHER"}"#).unwrap();
        let by_number: SecretBody = serde_json::from_str(r#"{"secret_type":50}"#).unwrap();
        assert_eq!(by_name.secret_type.unwrap().resolve(SECRET_TYPES), Ok("OTHER"));
        assert_eq!(by_number.secret_type.unwrap().resolve(SECRET_TYPES), Ok("OTHER"));
        assert_eq!(EnumInput::Number(5).resolve(SECRET_TYPES), Err("5".into()));
        assert_eq!(EnumInput::Name("Other".into()).resolve(SECRET_TYPES), Err("Other".into()));
    }

    #[test]
    fn numeric_enums_follow_each_message() {
        let mut version = json!({"name": "v", "state": "DESTROYED"});
        numeric_enums(Message::SecretVersion, &mut version);
        assert_eq!(version["state"], 3);
        let mut list = json!({"versions": [{"state": "ENABLED"}, {"state": "DISABLED"}], "nextPageToken": "t"});
        numeric_enums(Message::ListSecretVersionsResponse, &mut list);
        assert_eq!(list, json!({"versions": [{"state": 1}, {"state": 2}], "nextPageToken": "t"}));
        let mut secrets = json!({"secrets": [{"name": "s", "secretType": "OTHER", "rotation": {
            "managedRotationStatus": {"state": "ACTIVE"}}}]});
        numeric_enums(Message::ListSecretsResponse, &mut secrets);
        assert_eq!(secrets["secrets"][0]["secretType"], 50);
        assert_eq!(secrets["secrets"][0]["rotation"]["managedRotationStatus"]["state"], 1);
        let mut access = json!({"name": "n", "payload": {"data": "c3RhdGU=", "dataCrc32c": "1"}});
        let before = access.clone();
        numeric_enums(Message::AccessSecretVersionResponse, &mut access);
        assert_eq!(access, before, "no enum fields");
    }

    #[test]
    fn unknown_fields_are_named_in_the_error() {
        let error = parse_body::<SecretBody>(br#"{"colour":"red"}"#).unwrap_err();
        assert_eq!(error.message, "Invalid JSON payload received. Unknown name \"colour\": Cannot find field.");
        assert!(parse_body::<SecretBody>(b"  ").is_ok(), "empty body is {{}}");
    }
}
