//! System parameters: the query parameters (and their headers) every Google API accepts
//! besides a method's own fields, and what each does to the response.
//!
//! The Discovery document lists them (`$.xgafv`, `access_token`, `alt`, `callback`, `fields`,
//! `key`, `oauth_token`, `prettyPrint`, `quotaUser`, `uploadType`, `upload_protocol`), and
//! Google's "System parameters" page adds the `$`-prefixed spellings (`$alt`, `$callback`,
//! `$fields`, `$key`, `$prettyPrint`) and the `X-Goog-FieldMask` and `X-Goog-Api-Key` headers.
//! Google's generated REST clients send `$alt=json;enum-encoding=int` on every call.
//!
//! [`SystemParameters::parse`] reads them once per request, before authentication, because
//! they decide how every answer is rendered, errors included. What each one does:
//!
//! | parameter | effect |
//! |---|---|
//! | `$alt`/`alt` | `json` (default); `json;enum-encoding=int` renders enums as numbers; `proto` gets 501 (not emulated); `media`, `sse` and anything else get 400 |
//! | `prettyPrint`/`$prettyPrint` | `true` (default) indents the JSON; `false` sends it compact |
//! | `fields`/`$fields`/`X-Goog-FieldMask` | partial response: only the selected fields of a successful answer |
//! | `$.xgafv` | `2` (default): the `google.rpc.Status` error envelope; `1`: the legacy one with `errors[]` |
//! | `callback`/`$callback` | JSONP: the answer wrapped in a call to the named function |
//! | `access_token`/`oauth_token` | a bearer token (read by `api::authenticate`) |
//! | `key`/`$key`/`X-Goog-Api-Key` | an API key: ignored beside a token; alone it gets Google's 401 for APIs without API-key access |
//! | `quotaUser`, `uploadType`, `upload_protocol` | accepted and ignored (quotas are per project; no method uploads media) |
//!
//! The wording of the 400s for malformed values is the emulator's own; Google's is not
//! documented. Rendering itself (numeric enums by message schema) lives in `wire`.

use std::collections::BTreeMap;

use hyper::HeaderMap;
use serde_json::{Map, Value, json};

use crate::api::Query;
use crate::status::{ApiError, Code};
use crate::wire::{self, Message};

/// Every query parameter name that is a system parameter. Anything else must bind to a field
/// of the method's request, or the request is refused.
pub(crate) const NAMES: &[&str] = &[
    "$.xgafv",
    "$alt",
    "alt",
    "$callback",
    "callback",
    "$fields",
    "fields",
    "$key",
    "key",
    "access_token",
    "oauth_token",
    "$prettyPrint",
    "prettyPrint",
    "quotaUser",
    "uploadType",
    "upload_protocol",
];

pub(crate) fn is_system_parameter(name: &str) -> bool {
    NAMES.contains(&name)
}

/// How enum fields are written in a JSON response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum EnumEncoding {
    /// `"ENABLED"`: the proto3 JSON default.
    #[default]
    Names,
    /// `1`: asked for with `$alt=json;enum-encoding=int`.
    Numbers,
}

/// Which error envelope `$.xgafv` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum ErrorFormat {
    /// `1`: `{"error":{"code","message","errors":[{"message","domain","reason"}],"status"}}`.
    V1,
    /// `2` (default): `{"error":{"code","message","status","details"}}`.
    #[default]
    V2,
}

/// The system parameters of one request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SystemParameters {
    pub(crate) enums: EnumEncoding,
    pub(crate) pretty: bool,
    pub(crate) fields: Option<FieldSelection>,
    pub(crate) error_format: ErrorFormat,
    /// JSONP callback name.
    pub(crate) callback: Option<String>,
    /// Whether an API key came with the request (its value is never used).
    pub(crate) api_key: bool,
}

impl Default for SystemParameters {
    fn default() -> Self {
        SystemParameters {
            enums: EnumEncoding::Names,
            pretty: true,
            fields: None,
            error_format: ErrorFormat::V2,
            callback: None,
            api_key: false,
        }
    }
}

impl SystemParameters {
    pub(crate) fn parse(query: &Query, headers: &HeaderMap) -> Result<Self, ApiError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let mut parameters = SystemParameters::default();
        if let Some(format) = one_of(query, &["$.xgafv"], None)? {
            parameters.error_format = match format {
                "1" => ErrorFormat::V1,
                "2" => ErrorFormat::V2,
                other => return Err(invalid_value("$.xgafv", "TYPE_ENUM", other)),
            };
        }
        if let Some(pretty) = one_of(query, &["prettyPrint", "$prettyPrint"], None)? {
            parameters.pretty = match pretty.to_ascii_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(invalid_value("prettyPrint", "TYPE_BOOL", pretty)),
            };
        }
        if let Some(alt) = one_of(query, &["$alt", "alt"], None)? {
            parameters.enums = parse_alt(alt)?;
        }
        if let Some(fields) = one_of(query, &["fields", "$fields"], header("x-goog-fieldmask"))? {
            parameters.fields = FieldSelection::parse(fields)?;
        }
        if let Some(callback) = one_of(query, &["callback", "$callback"], None)? {
            if !is_callback_name(callback) {
                return Err(ApiError::invalid_argument(format!(
                    "Invalid JSONP callback name [{callback}]: expected a JavaScript identifier path."
                )));
            }
            parameters.callback = Some(callback.to_owned());
        }
        parameters.api_key = one_of(query, &["key", "$key"], header("x-goog-api-key"))?.is_some();
        Ok(parameters)
    }

    /// A successful answer: numeric enums if asked, then the field selection.
    pub(crate) fn render_success(&self, message: Message, mut value: Value) -> Value {
        if self.enums == EnumEncoding::Numbers {
            wire::numeric_enums(message, &mut value);
        }
        match &self.fields {
            Some(selection) => selection.apply(&value),
            None => value,
        }
    }

    /// A failed call in the envelope `$.xgafv` asks for. `fields` does not apply to errors.
    pub(crate) fn render_error(&self, error: &ApiError) -> Value {
        match self.error_format {
            ErrorFormat::V2 => error.to_json(),
            ErrorFormat::V1 => json!({
                "error": {
                    "code": error.code.http_status(),
                    "message": error.message,
                    "errors": [{
                        "message": error.message,
                        "domain": "global",
                        "reason": legacy_reason(error.code),
                    }],
                    "status": error.code.name(),
                }
            }),
        }
    }
}

/// The value of a system parameter that has several spellings (and maybe a header). Two
/// spellings with different values are refused rather than one silently winning.
fn one_of<'a>(query: &'a Query, names: &[&str], header: Option<&'a str>) -> Result<Option<&'a str>, ApiError> {
    let mut found: Option<(&str, &'a str)> = None;
    let given = names.iter().filter_map(|name| query.get(*name).map(|v| (*name, v.as_str())));
    for (name, value) in given.chain(header.map(|v| ("the header", v))) {
        match found {
            Some((first, seen)) if seen != value => {
                return Err(ApiError::invalid_argument(format!(
                    "Conflicting values for the system parameter {first} and {name}: \"{seen}\" and \"{value}\"."
                )));
            }
            Some(_) => {}
            None => found = Some((name, value)),
        }
    }
    Ok(found.map(|(_, value)| value))
}

/// Worded like the front end's other bad-value errors (`Invalid value at 'page_size'
/// (TYPE_INT32), "x"`).
fn invalid_value(name: &str, kind: &str, value: &str) -> ApiError {
    ApiError::invalid_argument(format!("Invalid value at '{name}' ({kind}), \"{value}\""))
}

/// `json`, optionally with `;enum-encoding=int`.
fn parse_alt(alt: &str) -> Result<EnumEncoding, ApiError> {
    let mut parts = alt.split(';').map(str::trim);
    let format = parts.next().unwrap_or_default();
    match format {
        "json" => {}
        "proto" => {
            return Err(ApiError::new(
                Code::Unimplemented,
                "alt=proto (binary protobuf responses) is not implemented by the Secret Manager emulator.",
            ));
        }
        "media" | "sse" => {
            return Err(ApiError::invalid_argument(format!(
                "alt={format} is not supported by this method: Secret Manager methods answer JSON only."
            )));
        }
        other => return Err(invalid_value("alt", "TYPE_ENUM", other)),
    }
    let mut encoding = EnumEncoding::Names;
    for option in parts {
        match option.split_once('=') {
            Some(("enum-encoding", "int")) => encoding = EnumEncoding::Numbers,
            _ => {
                return Err(ApiError::invalid_argument(format!(
                    "Invalid option [{option}] in alt=\"{alt}\": only enum-encoding=int is supported."
                )));
            }
        }
    }
    Ok(encoding)
}

fn is_callback_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.'))
}

/// The legacy (`$.xgafv=1`) `errors[].reason` for each code, as Google's older JSON APIs
/// spell them. A design choice: Secret Manager's legacy reasons are not documented.
fn legacy_reason(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "badRequest",
        Code::FailedPrecondition => "failedPrecondition",
        Code::Unauthenticated => "unauthorized",
        Code::PermissionDenied => "forbidden",
        Code::NotFound => "notFound",
        Code::AlreadyExists => "conflict",
        Code::ResourceExhausted => "rateLimitExceeded",
        Code::Unimplemented => "notImplemented",
        Code::Unavailable => "backendError",
    }
}

/// A `fields` selection (Google's partial-response syntax): `a,b/c,d(e,f)`, with `.` as well
/// as `/` between path steps and `*` for every field at a level. Field names may be
/// lowerCamelCase or snake_case. Over a list, a selection applies to each element.
///
/// Names are not checked against the schema: a name that is no field selects nothing, where
/// Google may refuse it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelection {
    /// field → its sub-selection (`None`: the whole field).
    fields: BTreeMap<String, Option<FieldSelection>>,
}

impl FieldSelection {
    /// `None` for an empty selection, which means every field.
    pub(crate) fn parse(text: &str) -> Result<Option<Self>, ApiError> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let mut parser = SelectionParser { text, bytes: text.as_bytes(), at: 0 };
        let selection = parser.selection()?;
        if parser.at != parser.bytes.len() {
            return Err(parser.error("unexpected character"));
        }
        Ok(Some(selection))
    }

    fn insert(&mut self, path: &[String], sub: Option<FieldSelection>) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        if rest.is_empty() {
            let entry = self.fields.entry(first.clone()).or_insert_with(|| Some(FieldSelection::default()));
            match (entry.as_mut(), sub) {
                // A whole field wins over any part of it.
                (_, None) => *entry = None,
                (Some(existing), Some(more)) => existing.merge(more),
                (None, Some(_)) => {}
            }
        } else {
            let entry = self.fields.entry(first.clone()).or_insert_with(|| Some(FieldSelection::default()));
            if let Some(existing) = entry {
                existing.insert(rest, sub);
            }
        }
    }

    fn merge(&mut self, other: FieldSelection) {
        for (name, sub) in other.fields {
            self.insert(&[name], sub);
        }
    }

    pub(crate) fn apply(&self, value: &Value) -> Value {
        match value {
            Value::Array(items) => Value::Array(items.iter().map(|item| self.apply(item)).collect()),
            Value::Object(object) => {
                let mut out = Map::new();
                for (key, field) in object {
                    let sub = self.fields.get(key).or_else(|| self.fields.get("*"));
                    match sub {
                        None => {}
                        Some(None) => {
                            out.insert(key.clone(), field.clone());
                        }
                        Some(Some(selection)) => {
                            out.insert(key.clone(), selection.apply(field));
                        }
                    }
                }
                Value::Object(out)
            }
            scalar => scalar.clone(),
        }
    }
}

/// Recursive descent over `selection := item (',' item)*`, `item := path ('(' selection ')')?`,
/// `path := name (('/' | '.') name)*`.
struct SelectionParser<'t> {
    text: &'t str,
    bytes: &'t [u8],
    at: usize,
}

impl SelectionParser<'_> {
    fn error(&self, what: &str) -> ApiError {
        ApiError::invalid_argument(format!("Invalid field selection \"{}\": {what} at offset {}.", self.text, self.at))
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn selection(&mut self) -> Result<FieldSelection, ApiError> {
        let mut selection = FieldSelection::default();
        loop {
            let path = self.path()?;
            let sub = if self.peek() == Some(b'(') {
                self.at += 1;
                let inner = self.selection()?;
                if self.peek() != Some(b')') {
                    return Err(self.error("expected ')'"));
                }
                self.at += 1;
                Some(inner)
            } else {
                None
            };
            selection.insert(&path, sub);
            if self.peek() == Some(b',') {
                self.at += 1;
            } else {
                return Ok(selection);
            }
        }
    }

    fn path(&mut self) -> Result<Vec<String>, ApiError> {
        let mut path = vec![self.name()?];
        while matches!(self.peek(), Some(b'/' | b'.')) {
            self.at += 1;
            path.push(self.name()?);
        }
        Ok(path)
    }

    fn name(&mut self) -> Result<String, ApiError> {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'*' | b'-' | b'@')) {
            self.at += 1;
        }
        if start == self.at {
            return Err(self.error("expected a field name"));
        }
        let name = lower_camel(&self.text[start..self.at]);
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
        Ok(name)
    }
}

/// `version_aliases` → `versionAliases`; lowerCamelCase names pass through.
fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' && !out.is_empty() {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Query {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<SystemParameters, ApiError> {
        SystemParameters::parse(&query(pairs), &HeaderMap::new())
    }

    #[test]
    fn defaults_are_pretty_json_with_enum_names_and_v2_errors() {
        assert_eq!(parse(&[]).unwrap(), SystemParameters::default());
        let defaults = SystemParameters::default();
        assert!(defaults.pretty);
        assert_eq!(defaults.enums, EnumEncoding::Names);
        assert_eq!(defaults.error_format, ErrorFormat::V2);
    }

    #[test]
    fn alt_values() {
        let table: [(&str, Result<EnumEncoding, Code>); 8] = [
            ("json", Ok(EnumEncoding::Names)),
            ("json;enum-encoding=int", Ok(EnumEncoding::Numbers)),
            ("json; enum-encoding=int", Ok(EnumEncoding::Numbers)),
            ("json;enum-encoding=string", Err(Code::InvalidArgument)),
            ("proto", Err(Code::Unimplemented)),
            ("media", Err(Code::InvalidArgument)),
            ("sse", Err(Code::InvalidArgument)),
            ("xml", Err(Code::InvalidArgument)),
        ];
        for (alt, expected) in table {
            for name in ["alt", "$alt"] {
                let got = parse(&[(name, alt)]).map(|p| p.enums).map_err(|e| e.code);
                assert_eq!(got, expected, "{name}={alt}");
            }
        }
    }

    #[test]
    fn spellings_must_agree() {
        assert!(parse(&[("alt", "json"), ("$alt", "json")]).is_ok());
        let error = parse(&[("alt", "json"), ("$alt", "json;enum-encoding=int")]).unwrap_err();
        assert_eq!(error.code, Code::InvalidArgument);
        let mut headers = HeaderMap::new();
        headers.insert("x-goog-fieldmask", "name".parse().unwrap());
        assert!(SystemParameters::parse(&query(&[("fields", "etag")]), &headers).is_err());
        assert!(SystemParameters::parse(&query(&[("fields", "name")]), &headers).is_ok());
    }

    #[test]
    fn pretty_print_and_error_format_values() {
        assert!(!parse(&[("prettyPrint", "false")]).unwrap().pretty);
        assert!(!parse(&[("$prettyPrint", "FALSE")]).unwrap().pretty);
        assert!(parse(&[("prettyPrint", "true")]).unwrap().pretty);
        assert_eq!(
            parse(&[("prettyPrint", "maybe")]).unwrap_err().message,
            "Invalid value at 'prettyPrint' (TYPE_BOOL), \"maybe\""
        );
        assert_eq!(parse(&[("$.xgafv", "1")]).unwrap().error_format, ErrorFormat::V1);
        assert_eq!(parse(&[("$.xgafv", "2")]).unwrap().error_format, ErrorFormat::V2);
        assert!(parse(&[("$.xgafv", "3")]).is_err());
    }

    #[test]
    fn callback_names_must_be_identifiers() {
        assert_eq!(parse(&[("callback", "handle.reply_1")]).unwrap().callback.as_deref(), Some("handle.reply_1"));
        assert!(parse(&[("callback", "alert(1)")]).is_err());
        assert!(parse(&[("callback", "1x")]).is_err());
    }

    #[test]
    fn field_selection_syntax() {
        let value = json!({
            "secrets": [
                {"name": "a", "etag": "\"1\"", "labels": {"env": "prod"}, "replication": {"automatic": {}}},
                {"name": "b", "etag": "\"2\""}
            ],
            "nextPageToken": "t",
            "totalSize": 2
        });
        let select = |text: &str| FieldSelection::parse(text).unwrap().unwrap().apply(&value);
        assert_eq!(select("nextPageToken"), json!({"nextPageToken": "t"}));
        assert_eq!(
            select("secrets/name,next_page_token"),
            json!({"secrets": [{"name": "a"}, {"name": "b"}], "nextPageToken": "t"})
        );
        assert_eq!(select("secrets(name,etag)"), select("secrets.name,secrets.etag"));
        assert_eq!(select("secrets/labels/env"), json!({"secrets": [{"labels": {"env": "prod"}}, {}]}));
        assert_eq!(select("secrets(name),secrets"), json!({"secrets": value["secrets"]}), "whole field wins");
        assert_eq!(select("*"), value);
        assert_eq!(select("secrets/*"), json!({"secrets": value["secrets"]}));
        assert_eq!(select("colour"), json!({}));
        assert_eq!(FieldSelection::parse(" "), Ok(None));
        for bad in ["secrets(name", "a,,b", "a/", "(a)", "a)b"] {
            assert!(FieldSelection::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn legacy_error_envelope() {
        let parameters = parse(&[("$.xgafv", "1")]).unwrap();
        let body = parameters.render_error(&ApiError::secret_not_found("projects/1/secrets/x"));
        assert_eq!(
            body,
            json!({"error": {
                "code": 404,
                "message": "Secret [projects/1/secrets/x] not found or has no versions.",
                "errors": [{
                    "message": "Secret [projects/1/secrets/x] not found or has no versions.",
                    "domain": "global",
                    "reason": "notFound"
                }],
                "status": "NOT_FOUND"
            }})
        );
    }
}
