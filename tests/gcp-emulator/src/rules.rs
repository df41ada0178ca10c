//! Validation of client-supplied secret fields and payloads: raw wire bodies in, typed store
//! values out (CONTRACT §3, §6, §8, §9).
//!
//! Every limit the contract lists is enforced here — labels, annotations, aliases, topics,
//! rotation, expiry, delayed destroy, replication, payload size and CRC32C — so the store only
//! ever sees valid values. Google does not publish the wording of most of these rejections;
//! all are 400 INVALID_ARGUMENT, and the messages name the field and the offending value.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::clock::{parse_duration, parse_timestamp};
use crate::names::{is_alias_syntax, is_reserved_alias};
use crate::status::ApiError;
use crate::store::{Replica, Replication, Rotation, SecretSettings, SecretUpdate};
use crate::wire::{
    AddVersionBody, CmekBody, EnumInput, Int64, ReplicationBody, RotationBody, SECRET_TYPES, SecretBody, TopicBody,
};

/// Largest decoded payload Google accepts.
pub(crate) const MAX_PAYLOAD_BYTES: usize = 65_536;
const MAX_LABELS: usize = 64;
const MAX_ALIASES: usize = 50;
const MAX_TOPICS: usize = 10;
/// Annotation keys and values together must be *less than* 16 KiB.
const ANNOTATIONS_SIZE_LIMIT: usize = 16 * 1024;
const DAY: u64 = 86_400;

fn invalid(message: String) -> ApiError {
    ApiError::invalid_argument(message)
}

/// Settings for `secrets.create`. Global secrets need `replication`; regional ones must not
/// have it (their location is the replication).
pub(crate) fn create_settings(body: SecretBody, regional: bool, now: SystemTime) -> Result<SecretSettings, ApiError> {
    let replication = match (body.replication, regional) {
        (None, false) => {
            return Err(invalid(
                "Secret.replication is required for a global secret: set replication.automatic \
                 or replication.userManaged."
                    .into(),
            ));
        }
        (Some(_), true) => {
            return Err(invalid(
                "Regional secrets do not take replication: the location in the resource name \
                 decides where the secret is stored."
                    .into(),
            ));
        }
        (Some(replication), false) => Some(replication_from(replication)?),
        (None, true) => None,
    };
    let topics = topics(body.topics)?;
    let rotation = rotation(body.rotation, now)?;
    require_topics_for_rotation(&rotation, &topics)?;
    Ok(SecretSettings {
        replication,
        labels: labels(body.labels)?,
        topics,
        expire_time: expiration(body.expire_time.as_deref(), body.ttl.as_deref(), now)?,
        rotation,
        version_aliases: aliases(body.version_aliases)?,
        annotations: annotations(body.annotations)?,
        version_destroy_ttl: version_destroy_ttl(body.version_destroy_ttl.as_deref())?,
        kms_key_name: regional_cmek(body.customer_managed_encryption, regional)?,
        secret_type: secret_type(body.secret_type)?,
    })
}

/// A patch from the body and `updateMask`: only masked fields change, each replaced whole
/// (absent in the body means cleared). Returns the body's etag for the optimistic check.
pub(crate) fn patch_update(
    body: SecretBody,
    update_mask: &str,
    regional: bool,
    now: SystemTime,
) -> Result<(SecretUpdate, Option<String>), ApiError> {
    let paths: Vec<String> = update_mask.split(',').map(str::trim).filter(|p| !p.is_empty()).map(snake_case).collect();
    if paths.is_empty() {
        return Err(invalid("update_mask is required and must name at least one field.".into()));
    }
    let mut update = SecretUpdate::default();
    for path in &paths {
        match path.as_str() {
            "labels" => update.labels = Some(labels(body.labels.clone())?),
            "topics" => update.topics = Some(topics(clone_topics(&body.topics))?),
            "annotations" => update.annotations = Some(annotations(body.annotations.clone())?),
            "version_aliases" => update.version_aliases = Some(aliases(body.version_aliases.clone())?),
            "version_destroy_ttl" => {
                update.version_destroy_ttl = Some(version_destroy_ttl(body.version_destroy_ttl.as_deref())?)
            }
            "expire_time" => update.expire_time = Some(expiration(body.expire_time.as_deref(), None, now)?),
            "ttl" => update.expire_time = Some(expiration(None, body.ttl.as_deref(), now)?),
            "rotation" | "rotation.next_rotation_time" | "rotation.rotation_period" => {
                update.rotation = Some(rotation(clone_rotation(&body.rotation), now)?)
            }
            "customer_managed_encryption" => {
                update.kms_key_name = Some(regional_cmek(clone_cmek(&body.customer_managed_encryption), regional)?)
            }
            "replication" | "secret_type" | "tags" => {
                return Err(invalid(format!("update_mask path [{path}] names an immutable field.")));
            }
            "name" | "create_time" | "etag" | "policy_member" => {
                return Err(invalid(format!("update_mask path [{path}] names an output-only field.")));
            }
            _ => {
                return Err(invalid(format!("update_mask path [{path}] is not a field of Secret.")));
            }
        }
    }
    Ok((update, body.etag))
}

/// Rotation needs somewhere to publish: a secret with a rotation policy must name at least
/// one topic (CONTRACT §8 [B]). Patches check this against the merged result.
pub(crate) fn require_topics_for_rotation(rotation: &Option<Rotation>, topics: &[String]) -> Result<(), ApiError> {
    if rotation.is_some() && topics.is_empty() {
        return Err(invalid("A rotation policy needs at least one Pub/Sub topic in Secret.topics.".into()));
    }
    Ok(())
}

fn snake_case(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn clone_topics(topics: &Option<Vec<TopicBody>>) -> Option<Vec<TopicBody>> {
    topics.as_ref().map(|list| list.iter().map(|t| TopicBody { name: t.name.clone() }).collect())
}

fn clone_rotation(rotation: &Option<RotationBody>) -> Option<RotationBody> {
    rotation.as_ref().map(|r| RotationBody {
        next_rotation_time: r.next_rotation_time.clone(),
        rotation_period: r.rotation_period.clone(),
        managed_rotation_status: None,
    })
}

fn clone_cmek(cmek: &Option<CmekBody>) -> Option<CmekBody> {
    cmek.as_ref().map(|c| CmekBody { kms_key_name: c.kms_key_name.clone() })
}

fn kms_name(cmek: Option<CmekBody>) -> Result<Option<String>, ApiError> {
    match cmek {
        None => Ok(None),
        Some(CmekBody { kms_key_name: Some(name) }) if !name.is_empty() => Ok(Some(name)),
        Some(_) => Err(invalid(
            "customerManagedEncryption.kmsKeyName is required when customerManagedEncryption \
             is set."
                .into(),
        )),
    }
}

fn regional_cmek(cmek: Option<CmekBody>, regional: bool) -> Result<Option<String>, ApiError> {
    if cmek.is_some() && !regional {
        return Err(invalid(
            "Secret.customerManagedEncryption applies to regional secrets only; global secrets \
             set it per replication policy."
                .into(),
        ));
    }
    kms_name(cmek)
}

fn replication_from(body: ReplicationBody) -> Result<Replication, ApiError> {
    match (body.automatic, body.user_managed) {
        (Some(automatic), None) => {
            Ok(Replication::Automatic { kms_key_name: kms_name(automatic.customer_managed_encryption)? })
        }
        (None, Some(user_managed)) => {
            let replicas = user_managed.replicas.unwrap_or_default();
            if replicas.is_empty() {
                return Err(invalid("Secret.replication.userManaged.replicas must list at least one replica.".into()));
            }
            let mut seen = Vec::new();
            let mut out = Vec::new();
            for replica in replicas {
                let location = replica.location.unwrap_or_default();
                if location.is_empty() {
                    return Err(invalid("Every replica in Secret.replication.userManaged needs a location.".into()));
                }
                if seen.contains(&location) {
                    return Err(invalid(format!("Replica location [{location}] is listed more than once.")));
                }
                seen.push(location.clone());
                out.push(Replica { location, kms_key_name: kms_name(replica.customer_managed_encryption)? });
            }
            Ok(Replication::UserManaged(out))
        }
        _ => Err(invalid("Secret.replication must set exactly one of automatic or userManaged.".into())),
    }
}

fn is_label_letter(c: char) -> bool {
    // \p{Ll} or \p{Lo}: lowercase letters, or letters that have no case (e.g. CJK).
    c.is_lowercase() || (c.is_alphabetic() && !c.is_uppercase())
}

fn is_label_char(c: char) -> bool {
    is_label_letter(c) || c.is_numeric() || c == '_' || c == '-'
}

/// Keys `[\p{Ll}\p{Lo}][\p{Ll}\p{Lo}\p{N}_-]{0,62}`, values `[\p{Ll}\p{Lo}\p{N}_-]{0,63}`, each
/// at most 128 bytes, at most 64 labels.
pub(crate) fn labels(input: Option<BTreeMap<String, String>>) -> Result<BTreeMap<String, String>, ApiError> {
    let labels = input.unwrap_or_default();
    if labels.len() > MAX_LABELS {
        return Err(invalid(format!("A secret can have at most {MAX_LABELS} labels; {} were given.", labels.len())));
    }
    for (key, value) in &labels {
        let key_ok = key.chars().next().is_some_and(is_label_letter)
            && key.chars().all(is_label_char)
            && key.chars().count() <= 63
            && key.len() <= 128;
        if !key_ok {
            return Err(invalid(format!(
                "Label key [{key}] is invalid: it must start with a lowercase letter and contain \
                 only lowercase letters, digits, '_' and '-', at most 63 characters."
            )));
        }
        let value_ok = value.chars().all(is_label_char) && value.chars().count() <= 63 && value.len() <= 128;
        if !value_ok {
            return Err(invalid(format!(
                "Label value [{value}] of key [{key}] is invalid: it may contain only lowercase \
                 letters, digits, '_' and '-', at most 63 characters."
            )));
        }
    }
    Ok(labels)
}

/// Keys 1–63 characters (≤ 128 bytes), starting and ending alphanumeric, with `-_.` allowed
/// inside; keys and values together under 16 KiB.
pub(crate) fn annotations(input: Option<BTreeMap<String, String>>) -> Result<BTreeMap<String, String>, ApiError> {
    let annotations = input.unwrap_or_default();
    let mut total = 0usize;
    for (key, value) in &annotations {
        let bytes = key.as_bytes();
        let key_ok = (1..=63).contains(&key.chars().count())
            && bytes.len() <= 128
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !key_ok {
            return Err(invalid(format!(
                "Annotation key [{key}] is invalid: it must be 1-63 characters, begin and end \
                 with [a-zA-Z0-9], and contain only alphanumerics, '-', '_' and '.'."
            )));
        }
        total += key.len() + value.len();
    }
    if total >= ANNOTATIONS_SIZE_LIMIT {
        return Err(invalid(format!(
            "The total size of annotation keys and values is {total} bytes; it must be less \
             than {ANNOTATIONS_SIZE_LIMIT} bytes."
        )));
    }
    Ok(annotations)
}

/// Alias names: at most 63 of `[A-Za-z0-9_-]`, starting with a letter, not `latest`/`NEW` in
/// any case; at most 50 per secret; targets are positive version numbers (existence is the
/// store's check).
pub(crate) fn aliases(input: Option<BTreeMap<String, Int64>>) -> Result<BTreeMap<String, u64>, ApiError> {
    let input = input.unwrap_or_default();
    if input.len() > MAX_ALIASES {
        return Err(invalid(format!(
            "A secret can have at most {MAX_ALIASES} version aliases; {} were given.",
            input.len()
        )));
    }
    let mut out = BTreeMap::new();
    for (alias, Int64(target)) in input {
        if !is_alias_syntax(&alias) || is_reserved_alias(&alias) {
            return Err(invalid(format!(
                "Version alias [{alias}] is invalid: it must start with a letter, contain only \
                 [A-Za-z0-9_-], be at most 63 characters, and not be 'latest' or 'NEW'."
            )));
        }
        let target = u64::try_from(target).ok().filter(|n| *n > 0).ok_or_else(|| {
            invalid(format!(
                "Version alias [{alias}] must point to a version number of 1 or more; got \
                     {target}."
            ))
        })?;
        out.insert(alias, target);
    }
    Ok(out)
}

fn topics(input: Option<Vec<TopicBody>>) -> Result<Vec<String>, ApiError> {
    let input = input.unwrap_or_default();
    if input.len() > MAX_TOPICS {
        return Err(invalid(format!("A secret can have at most {MAX_TOPICS} topics; {} were given.", input.len())));
    }
    input
        .into_iter()
        .map(|topic| {
            let name = topic.name.unwrap_or_default();
            let parts: Vec<&str> = name.split('/').collect();
            let ok = matches!(parts.as_slice(), ["projects", p, "topics", t] if !p.is_empty() && !t.is_empty());
            if ok {
                Ok(name)
            } else {
                Err(invalid(format!("Topic name [{name}] must have the form projects/*/topics/*.")))
            }
        })
        .collect()
}

/// `nextRotationTime` at least 300 s and at most 100 years ahead; `rotationPeriod` whole
/// seconds between 3600 s and 3,153,600,000 s, and only with a `nextRotationTime`.
fn rotation(input: Option<RotationBody>, now: SystemTime) -> Result<Option<Rotation>, ApiError> {
    let Some(body) = input else {
        return Ok(None);
    };
    let next = match body.next_rotation_time.as_deref() {
        None => None,
        Some(text) => {
            let next = parse_timestamp(text).ok_or_else(|| {
                invalid(format!(
                    "Invalid value at 'secret.rotation.next_rotation_time' \
                     (type.googleapis.com/google.protobuf.Timestamp), \"{text}\""
                ))
            })?;
            let earliest = now + Duration::from_secs(300);
            let latest = now + Duration::from_secs(100 * 365 * DAY);
            if next < earliest || next > latest {
                return Err(invalid(
                    "rotation.next_rotation_time must be at least 300 seconds and at most 100 \
                     years in the future."
                        .into(),
                ));
            }
            Some(next)
        }
    };
    let period = match body.rotation_period.as_deref() {
        None => None,
        Some(text) => {
            let period = parse_duration(text).ok_or_else(|| {
                invalid(format!(
                    "Invalid value at 'secret.rotation.rotation_period' \
                     (type.googleapis.com/google.protobuf.Duration), \"{text}\""
                ))
            })?;
            if period.subsec_nanos() != 0 || !(3_600..=3_153_600_000).contains(&period.as_secs()) {
                return Err(invalid(
                    "rotation.rotation_period must be whole seconds between 3600s and \
                     3153600000s."
                        .into(),
                ));
            }
            if next.is_none() {
                return Err(invalid(
                    "rotation.next_rotation_time is required when rotation.rotation_period is \
                     set."
                        .into(),
                ));
            }
            Some(period)
        }
    };
    Ok(Some(Rotation { next_rotation_time: next, rotation_period: period }))
}

/// `ttl` and `expireTime` are a oneof; `ttl` becomes `expireTime`. The expiry must be in the
/// future.
fn expiration(expire_time: Option<&str>, ttl: Option<&str>, now: SystemTime) -> Result<Option<SystemTime>, ApiError> {
    let at = match (expire_time, ttl) {
        (Some(_), Some(_)) => {
            return Err(invalid("Only one of Secret.expire_time and Secret.ttl may be set.".into()));
        }
        (Some(text), None) => parse_timestamp(text).ok_or_else(|| {
            invalid(format!(
                "Invalid value at 'secret.expire_time' \
                 (type.googleapis.com/google.protobuf.Timestamp), \"{text}\""
            ))
        })?,
        (None, Some(text)) => {
            now + parse_duration(text).ok_or_else(|| {
                invalid(format!(
                    "Invalid value at 'secret.ttl' (type.googleapis.com/google.protobuf.Duration), \
                     \"{text}\""
                ))
            })?
        }
        (None, None) => return Ok(None),
    };
    if at <= now {
        return Err(invalid("The secret's expiration must be in the future.".into()));
    }
    Ok(Some(at))
}

/// Delayed destroy: between 1 day and 1000 days (gcloud's documented range). `0s` means off.
fn version_destroy_ttl(input: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(text) = input else {
        return Ok(None);
    };
    let ttl = parse_duration(text).ok_or_else(|| {
        invalid(format!(
            "Invalid value at 'secret.version_destroy_ttl' \
             (type.googleapis.com/google.protobuf.Duration), \"{text}\""
        ))
    })?;
    if ttl.is_zero() {
        return Ok(None);
    }
    if !(DAY..=1000 * DAY).contains(&ttl.as_secs()) || ttl.subsec_nanos() != 0 {
        return Err(invalid("version_destroy_ttl must be between 86400s (1 day) and 86400000s (1000 days).".into()));
    }
    Ok(Some(ttl))
}

/// By name or by number (clients asking for numeric enums send numbers); stored by name.
fn secret_type(input: Option<EnumInput>) -> Result<Option<String>, ApiError> {
    let Some(input) = input else {
        return Ok(None);
    };
    match input.resolve(SECRET_TYPES) {
        Ok("SECRET_TYPE_UNSPECIFIED") => Ok(None),
        Ok(name) => Ok(Some(name.to_owned())),
        Err(other) => Err(invalid(format!(
            "Invalid value at 'secret.secret_type' \
             (type.googleapis.com/google.cloud.secretmanager.v1.Secret.SecretType), \"{other}\""
        ))),
    }
}

/// A validated payload: its bytes, the CRC32C to store, and whether the client sent it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Payload {
    pub(crate) data: Vec<u8>,
    pub(crate) crc32c: u32,
    pub(crate) client_specified_checksum: bool,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload").field("data", &"[redacted]").field("crc32c", &self.crc32c).finish_non_exhaustive()
    }
}

/// Proto3 JSON `bytes`: standard or URL-safe base64, padded or not.
const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `addVersion`'s payload: present and non-empty, at most 64 KiB decoded, and matching its
/// CRC32C when the client sent one (which is then stored as given).
pub(crate) fn payload(body: AddVersionBody) -> Result<Payload, ApiError> {
    let data = body.payload.as_ref().and_then(|p| p.data.as_deref()).unwrap_or_default();
    if data.is_empty() {
        return Err(invalid("Secret Payload cannot be empty: payload.data is required.".into()));
    }
    let bytes = STANDARD_ANY_PADDING.decode(data).or_else(|_| URL_SAFE_ANY_PADDING.decode(data)).map_err(|_| {
        let shown: String = data.chars().take(64).collect();
        invalid(format!(
            "Invalid value at 'payload.data' (TYPE_BYTES), Base64 decoding failed for \
                 \"{shown}\""
        ))
    })?;
    if bytes.is_empty() {
        return Err(invalid("Secret Payload cannot be empty: payload.data is required.".into()));
    }
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(invalid(format!(
            "Secret Payload is {} bytes; the maximum size is {MAX_PAYLOAD_BYTES} bytes.",
            bytes.len()
        )));
    }
    let computed = crate::checksum::crc32c(&bytes);
    let sent = body.payload.and_then(|p| p.data_crc32c);
    match sent {
        None => Ok(Payload { data: bytes, crc32c: computed, client_specified_checksum: false }),
        Some(Int64(value)) if value == i64::from(computed) => {
            Ok(Payload { data: bytes, crc32c: computed, client_specified_checksum: true })
        }
        Some(Int64(value)) => Err(invalid(format!(
            "Checksum mismatch: payload.data_crc32c is {value}, but the CRC32C of the decoded \
             payload data is {computed}."
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PayloadBody;

    fn map(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn label_rules() {
        assert!(labels(map(&[("env", "prod"), ("team_1", ""), ("日本", "値")])).is_ok());
        for (k, v) in [("Env", "prod"), ("1env", "x"), ("env", "Prod"), ("e.nv", "x"), ("", "x")] {
            assert!(labels(map(&[(k, v)])).is_err(), "{k}={v}");
        }
        assert!(labels(map(&[(&"k".repeat(64), "v")])).is_err());
        let many: BTreeMap<String, String> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(labels(Some(many)).is_err());
    }

    #[test]
    fn annotation_rules() {
        assert!(annotations(map(&[("keyturn.io/x", "v")])).is_err(), "slash");
        assert!(annotations(map(&[("a.b-c_d", "v"), ("Z", "")])).is_ok());
        for key in ["-a", "a-", ".a", ""] {
            assert!(annotations(map(&[(key, "v")])).is_err(), "{key}");
        }
        assert!(annotations(map(&[(&"k".repeat(64), "v")])).is_err());
        let just_under = "v".repeat(16 * 1024 - 2);
        assert!(annotations(map(&[("k", &just_under)])).is_ok());
        let at_limit = "v".repeat(16 * 1024 - 1);
        assert!(annotations(map(&[("k", &at_limit)])).is_err());
    }

    #[test]
    fn alias_rules() {
        let one = |alias: &str, n: i64| Some(BTreeMap::from([(alias.to_owned(), Int64(n))]));
        assert!(aliases(one("current", 1)).is_ok());
        for bad in ["latest", "Latest", "NEW", "new", "1st", "with.dot"] {
            assert!(aliases(one(bad, 1)).is_err(), "{bad}");
        }
        assert!(aliases(one("a", 0)).is_err());
        let many: BTreeMap<String, Int64> = (0..51).map(|i| (format!("a{i}"), Int64(1))).collect();
        assert!(aliases(Some(many)).is_err());
    }

    fn body(data: &str, crc: Option<i64>) -> AddVersionBody {
        AddVersionBody { payload: Some(PayloadBody { data: Some(data.to_owned()), data_crc32c: crc.map(Int64) }) }
    }

    #[test]
    fn payload_checksums() {
        let computed = payload(body("aGVsbG8=", None)).unwrap();
        assert_eq!(computed.crc32c, 2_591_144_780);
        assert!(!computed.client_specified_checksum);
        let sent = payload(body("aGVsbG8", Some(2_591_144_780))).unwrap();
        assert!(sent.client_specified_checksum, "unpadded base64 is accepted");
        let error = payload(body("aGVsbG8=", Some(1))).unwrap_err();
        assert_eq!(error.code, crate::status::Code::InvalidArgument);
    }

    #[test]
    fn payload_debug_is_redacted() {
        let parsed = payload(body("aHVudGVyMg==", None)).unwrap();
        let text = format!("{parsed:?}");
        assert!(!text.contains("hunter2") && !text.contains("104"), "{text}");
    }

    #[test]
    fn payload_size_and_emptiness() {
        use base64::engine::general_purpose::STANDARD;
        assert!(payload(body(&STANDARD.encode(vec![0u8; 65_536]), None)).is_ok());
        assert!(payload(body(&STANDARD.encode(vec![0u8; 65_537]), None)).is_err());
        assert!(payload(body("", None)).is_err());
        assert!(payload(AddVersionBody::default()).is_err());
        assert!(payload(body("not base64!", None)).is_err());
    }

    #[test]
    fn mask_paths_accept_both_spellings() {
        let now = SystemTime::now();
        let (update, _) = patch_update(SecretBody::default(), "versionAliases,labels", false, now).unwrap();
        assert_eq!(update.version_aliases, Some(BTreeMap::new()));
        assert_eq!(update.labels, Some(BTreeMap::new()));
        let (update, _) = patch_update(SecretBody::default(), "version_aliases", false, now).unwrap();
        assert!(update.version_aliases.is_some());
        assert!(patch_update(SecretBody::default(), "", false, now).is_err());
        assert!(patch_update(SecretBody::default(), "replication", false, now).is_err());
        assert!(patch_update(SecretBody::default(), "colour", false, now).is_err());
    }
}
