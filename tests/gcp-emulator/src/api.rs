//! Secret Manager methods: one routed [`Operation`] in, one JSON value or [`ApiError`] out.
//!
//! The checks run in the order Google's front end applies them: credentials (401), request
//! shape (unknown query parameters), permission on the requested resource (403, which also
//! hides whether it exists), quota (429), then the method itself with its validation (400),
//! existence (404) and state rules. Only the last step touches the store, under its lock.
//! System parameters (`system`) were read before any of this; they shape the response, and
//! only the API key among them matters here.

use std::collections::HashMap;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::http::request::Parts;
use serde_json::{Value, json};

use crate::auth::{Caller, Role};
use crate::filter::{Filter, Filterable};
use crate::names::{LOCATIONS, VersionSelector, is_valid_secret_id};
use crate::routes::{Operation, SecretPath, VersionPath};
use crate::rules;
use crate::service::App;
use crate::status::ApiError;
use crate::store::{SecretRecord, Store, Transition, VersionRecord};
use crate::system::{SystemParameters, is_system_parameter};
use crate::wire::{self, AddVersionBody, SecretBody, StateChangeBody};

/// List pages are capped at this size, and it is the size when the client asks for 0.
const MAX_PAGE_SIZE: usize = 25_000;

pub(crate) type Query = HashMap<String, String>;

pub(crate) fn parse_query(query: Option<&str>) -> Query {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect()
}

/// Runs one Secret Manager call to completion.
pub(crate) fn call(
    app: &App,
    operation: &Operation,
    parts: &Parts,
    query: &Query,
    system: &SystemParameters,
    body: &[u8],
) -> Result<Value, ApiError> {
    let now = app.clock.now();
    let role = authenticate(app, operation, parts, query, system, now)?;
    check_query_parameters(operation, query)?;
    let Some(permission) = operation.permission() else {
        return Err(ApiError::unimplemented(&operation.rpc_name()));
    };
    let project = &operation.parent().project;
    let ours = *project == app.project_id || *project == app.project_number.to_string();
    if !ours || !role.is_some_and(|role| role.grants(permission)) {
        return Err(ApiError::permission_denied(permission, &operation.requested_resource()));
    }
    if let Some(kind) = operation.method().and_then(|m| m.quota_kind()) {
        app.faults.admit(kind, now).map_err(|limit| {
            let (metric, limit_name, limit_id) = kind.labels();
            ApiError::quota_exceeded(metric, limit_name, limit_id, limit, app.project_number)
        })?;
    }
    if let Some(location) = &operation.parent().location
        && !LOCATIONS.contains(&location.as_str())
    {
        return Err(ApiError::invalid_argument(format!("Location [{location}] is not a Secret Manager location.")));
    }
    let mut store = app.lock_store();
    store.sweep(now);
    execute(app, &mut store, operation, query, body, now)
}

/// The caller's role, from `Authorization: Bearer` or the `access_token` (`oauth_token`) query
/// parameter: an issued token or a self-signed JWT; `None` for a principal granted no role. An
/// API key alone is refused as Google refuses it for APIs that need a principal.
fn authenticate(
    app: &App,
    operation: &Operation,
    parts: &Parts,
    query: &Query,
    system: &SystemParameters,
    now: SystemTime,
) -> Result<Option<Role>, ApiError> {
    let header = parts.headers.get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = match header {
        Some(value) => match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim().to_owned()),
            _ => {
                return Err(ApiError::unauthenticated("ACCESS_TOKEN_TYPE_UNSUPPORTED", &operation.rpc_name()));
            }
        },
        None => query.get("access_token").or_else(|| query.get("oauth_token")).cloned(),
    };
    let Some(token) = token else {
        return if app.allow_anonymous {
            Ok(Some(Role::Admin))
        } else if system.api_key {
            Err(ApiError::api_key_not_supported(&operation.rpc_name()))
        } else {
            Err(ApiError::unauthenticated("CREDENTIALS_MISSING", &operation.rpc_name()))
        };
    };
    match app.lock_identities().caller(&token, now) {
        Caller::Principal { role, .. } => Ok(role),
        Caller::Expired => Err(ApiError::unauthenticated("ACCESS_TOKEN_EXPIRED", &operation.rpc_name())),
        Caller::Unknown => Err(ApiError::unauthenticated("ACCESS_TOKEN_TYPE_UNSUPPORTED", &operation.rpc_name())),
        Caller::WrongScope => Err(ApiError::insufficient_scopes(&operation.rpc_name())),
    }
}

/// Google's front end refuses query parameters that bind to no request field.
fn check_query_parameters(operation: &Operation, query: &Query) -> Result<(), ApiError> {
    let own: &[&str] = match operation {
        Operation::CreateSecret(_) => &["secretId", "secret_id"],
        Operation::ListSecrets(_) | Operation::ListVersions(_) => {
            &["pageSize", "page_size", "pageToken", "page_token", "filter"]
        }
        Operation::PatchSecret(_) => &["updateMask", "update_mask"],
        Operation::DeleteSecret(_) => &["etag"],
        _ => &[],
    };
    match query.keys().find(|k| !own.contains(&k.as_str()) && !is_system_parameter(k)) {
        Some(unknown) => Err(ApiError::invalid_json(format!(
            "Unknown name \"{unknown}\": Cannot bind query parameter. Field '{unknown}' could \
             not be found in request message."
        ))),
        None => Ok(()),
    }
}

fn query_value<'q>(query: &'q Query, camel: &str, snake: &str) -> Option<&'q str> {
    query.get(camel).or_else(|| query.get(snake)).map(String::as_str)
}

fn checked_secret<'p>(store: &Store, path: &'p SecretPath) -> Result<&'p str, ApiError> {
    let location = path.parent.location.as_deref();
    if is_valid_secret_id(&path.secret) {
        Ok(&path.secret)
    } else {
        Err(ApiError::invalid_resource_id(&store.secret_name(location, &path.secret)))
    }
}

fn checked_selector(store: &Store, path: &VersionPath) -> Result<VersionSelector, ApiError> {
    let location = path.secret.parent.location.as_deref();
    checked_secret(store, &path.secret)?;
    VersionSelector::parse(&path.version)
        .ok_or_else(|| ApiError::invalid_resource_id(&store.version_name(location, &path.secret.secret, &path.version)))
}

fn execute(
    app: &App,
    store: &mut Store,
    operation: &Operation,
    query: &Query,
    body: &[u8],
    now: SystemTime,
) -> Result<Value, ApiError> {
    match operation {
        Operation::CreateSecret(parent) => {
            let location = parent.location.as_deref();
            let id = query_value(query, "secretId", "secret_id").unwrap_or_default();
            if id.is_empty() {
                return Err(ApiError::invalid_argument("The secretId query parameter is required."));
            }
            if !is_valid_secret_id(id) {
                return Err(ApiError::invalid_resource_id(&store.secret_name(location, id)));
            }
            let body: SecretBody = wire::parse_body(body)?;
            let settings = rules::create_settings(body, location.is_some(), now)?;
            let name = store.secret_name(location, id);
            let record = store.create(location, id, settings, now)?;
            Ok(wire::secret_json(name, record))
        }
        Operation::GetSecret(path) => {
            let location = path.parent.location.as_deref();
            let id = checked_secret(store, path)?;
            let record = store.secret(location, id)?;
            Ok(wire::secret_json(store.secret_name(location, id), record))
        }
        Operation::PatchSecret(path) => {
            let location = path.parent.location.as_deref();
            let id = checked_secret(store, path)?;
            let mask = query_value(query, "updateMask", "update_mask").unwrap_or_default();
            let body: SecretBody = wire::parse_body(body)?;
            let (update, etag) = rules::patch_update(body, mask, location.is_some(), now)?;
            let current = store.secret(location, id)?;
            let rotation = update.rotation.clone().unwrap_or_else(|| current.settings.rotation.clone());
            let topics = update.topics.clone().unwrap_or_else(|| current.settings.topics.clone());
            rules::require_topics_for_rotation(&rotation, &topics)?;
            let name = store.secret_name(location, id);
            let record = store.patch(location, id, update, etag.as_deref(), now)?;
            Ok(wire::secret_json(name, record))
        }
        Operation::DeleteSecret(path) => {
            let location = path.parent.location.as_deref();
            let id = checked_secret(store, path)?;
            store.delete(location, id, query.get("etag").map(String::as_str))?;
            Ok(json!({}))
        }
        Operation::ListSecrets(parent) => {
            let location = parent.location.as_deref();
            let page = PageRequest::from_query(query)?;
            let records = store.secrets(location);
            let named: Vec<(String, &SecretRecord)> =
                records.into_iter().map(|r| (store.secret_name(location, &r.id), r)).collect();
            let items = page.select(named, |(_, r)| r.sequence)?;
            Ok(list_json("secrets", items, |(name, record)| wire::secret_json(name.clone(), record)))
        }
        Operation::AddVersion(path) => {
            let location = path.parent.location.as_deref();
            let id = checked_secret(store, path)?;
            let body: AddVersionBody = wire::parse_body(body)?;
            // Existence before payload validation: a missing secret is 404 whatever is sent.
            store.secret(location, id)?;
            let payload = rules::payload(body)?;
            let version = store.add_version(
                location,
                id,
                payload.data,
                payload.crc32c,
                payload.client_specified_checksum,
                now,
            )?;
            let name =
                crate::names::version_name(&app.project_number.to_string(), location, id, &version.number.to_string());
            Ok(wire::version_json(name, version))
        }
        Operation::ListVersions(path) => {
            let location = path.parent.location.as_deref();
            let id = checked_secret(store, path)?;
            let page = PageRequest::from_query(query)?;
            let secret = store.secret(location, id)?;
            let named: Vec<(String, &VersionRecord)> = secret
                .versions
                .values()
                .rev()
                .map(|v| (store.version_name(location, id, &v.number.to_string()), v))
                .collect();
            let items = page.select(named, |(_, v)| v.number)?;
            Ok(list_json("versions", items, |(name, version)| wire::version_json(name.clone(), version)))
        }
        Operation::GetVersion(path) => {
            let location = path.secret.parent.location.as_deref();
            let id = &path.secret.secret;
            let selector = store.lagging(location, id, checked_selector(store, path)?, app.faults.alias_lag())?;
            let version = store.version(location, id, &selector)?;
            let name = store.version_name(location, id, &version.number.to_string());
            Ok(wire::version_json(name, version))
        }
        Operation::AccessVersion(path) => {
            let location = path.secret.parent.location.as_deref();
            let id = &path.secret.secret;
            let selector = store.lagging(location, id, checked_selector(store, path)?, app.faults.alias_lag())?;
            let version = store.access(location, id, &selector)?;
            let name = store.version_name(location, id, &version.number.to_string());
            let crc32c = if app.faults.take_checksum_corruption() {
                tracing::debug!(%name, "fault: corrupting dataCrc32c");
                version.crc32c ^ 0x5555_5555
            } else {
                version.crc32c
            };
            Ok(wire::access_json(name, version, crc32c))
        }
        Operation::EnableVersion(path) | Operation::DisableVersion(path) | Operation::DestroyVersion(path) => {
            let transition = match operation {
                Operation::EnableVersion(_) => Transition::Enable,
                Operation::DisableVersion(_) => Transition::Disable,
                _ => Transition::Destroy,
            };
            let location = path.secret.parent.location.as_deref();
            let id = &path.secret.secret;
            // Aliases and `latest` work only on get and access (CONTRACT §4).
            let VersionSelector::Number(number) = checked_selector(store, path)? else {
                return Err(ApiError::invalid_resource_id(&store.version_name(location, id, &path.version)));
            };
            let body: StateChangeBody = wire::parse_body(body)?;
            let version = store.transition(location, id, number, transition, body.etag.as_deref(), now)?;
            let name = crate::names::version_name(&app.project_number.to_string(), location, id, &number.to_string());
            Ok(wire::version_json(name, version))
        }
        Operation::Unimplemented(_, _) => Err(ApiError::unimplemented(&operation.rpc_name())),
    }
}

/// Page size, position and filter of a list call.
struct PageRequest {
    size: usize,
    /// List keys run downwards (newest first); the page starts below this key.
    below: Option<u64>,
    filter: Option<Filter>,
}

/// A list page: the items, the token for the next page, and `totalSize` (0 when filtered).
struct Page<T> {
    items: Vec<T>,
    next_token: Option<String>,
    total_size: usize,
}

impl PageRequest {
    fn from_query(query: &Query) -> Result<Self, ApiError> {
        let size = match query_value(query, "pageSize", "page_size") {
            None => 0,
            Some(text) => text.parse::<i64>().map_err(|_| {
                ApiError::invalid_json(format!("Invalid value at 'page_size' (TYPE_INT32), \"{text}\""))
            })?,
        };
        if size < 0 {
            return Err(ApiError::invalid_argument("page_size must not be negative."));
        }
        let size = match usize::try_from(size) {
            Ok(0) | Err(_) => MAX_PAGE_SIZE,
            Ok(n) => n.min(MAX_PAGE_SIZE),
        };
        let below = match query_value(query, "pageToken", "page_token") {
            None | Some("") => None,
            Some(token) => Some(
                decode_page_token(token)
                    .ok_or_else(|| ApiError::invalid_argument(format!("Invalid page token [{token}].")))?,
            ),
        };
        let filter = match query.get("filter").map(String::as_str) {
            None | Some("") => None,
            Some(text) => Some(Filter::parse(text)?),
        };
        Ok(PageRequest { size, below, filter })
    }

    /// Filters, then takes one page of `items` (already ordered by descending key).
    fn select<T: Filterable>(&self, items: Vec<T>, key: impl Fn(&T) -> u64) -> Result<Page<T>, ApiError> {
        let matching: Vec<T> = match &self.filter {
            None => items,
            Some(filter) => {
                filter.check_fields::<T>()?;
                items.into_iter().filter(|item| filter.matches(item)).collect()
            }
        };
        let total_size = if self.filter.is_some() { 0 } else { matching.len() };
        let mut remaining: Vec<T> =
            matching.into_iter().filter(|item| self.below.is_none_or(|below| key(item) < below)).collect();
        let next_token = (remaining.len() > self.size).then(|| encode_page_token(key(&remaining[self.size - 1])));
        remaining.truncate(self.size);
        Ok(Page { items: remaining, next_token, total_size })
    }
}

fn encode_page_token(key: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("below:{key}"))
}

fn decode_page_token(token: &str) -> Option<u64> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    text.strip_prefix("below:")?.parse().ok()
}

fn list_json<T>(field: &str, page: Page<T>, render: impl Fn(&T) -> Value) -> Value {
    let mut out = serde_json::Map::new();
    if !page.items.is_empty() {
        out.insert(field.to_owned(), Value::Array(page.items.iter().map(render).collect()));
    }
    if let Some(token) = page.next_token {
        out.insert("nextPageToken".into(), json!(token));
    }
    if page.total_size > 0 {
        out.insert("totalSize".into(), json!(page.total_size));
    }
    Value::Object(out)
}

impl Filterable for (String, &SecretRecord) {
    fn supports(field: &str) -> bool {
        field == "name" || field.strip_prefix("labels.").is_some_and(|key| !key.is_empty())
    }

    fn field(&self, field: &str) -> Option<String> {
        match field.strip_prefix("labels.") {
            Some(key) => self.1.settings.labels.get(key).cloned(),
            None => Some(self.0.clone()),
        }
    }

    fn is_text(field: &str) -> bool {
        field == "name"
    }
}

impl Filterable for (String, &VersionRecord) {
    fn supports(field: &str) -> bool {
        matches!(field, "name" | "state")
    }

    fn field(&self, field: &str) -> Option<String> {
        match field {
            "state" => Some(self.1.state.as_str().to_owned()),
            _ => Some(self.0.clone()),
        }
    }

    fn is_text(field: &str) -> bool {
        field == "name"
    }
}
