//! Which methods exist, and how many times each was called.
//!
//! [`Method`] names every Secret Manager RPC the emulator serves plus the identity endpoints
//! (the OAuth token endpoint, STS and IAM Credentials); fault rules and quota kinds are keyed by it. [`RequestCounts`] is a snapshot that
//! benchmarks read to prove, for example, that a cache saved `access` calls. A request is counted
//! when it has been routed, before any fault, authentication or quota check, so a request that
//! failed still counts (it reached the server, as it would have reached Google).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::faults::QuotaKind;

/// One served method. The string forms (`access`, `getVersion`, …) are the ones the admin API
/// and [`RequestCounts`]' JSON use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `secrets.versions.access`
    Access,
    /// `secrets.get`
    Get,
    /// `secrets.list`
    List,
    /// `secrets.versions.get`
    GetVersion,
    /// `secrets.versions.list`
    ListVersions,
    /// `secrets.addVersion`
    AddVersion,
    /// `secrets.patch`
    Patch,
    /// `secrets.versions.enable`
    Enable,
    /// `secrets.versions.disable`
    Disable,
    /// `secrets.versions.destroy`
    Destroy,
    /// `secrets.create`
    Create,
    /// `secrets.delete`
    Delete,
    /// `POST /token`, the OAuth 2.0 JWT-bearer exchange.
    Token,
    /// `POST /v1/token`, the Security Token Service's token exchange (RFC 8693).
    Sts,
    /// `POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken` (IAM Credentials).
    GenerateAccessToken,
}

impl Method {
    pub const ALL: [Method; 15] = [
        Method::Access,
        Method::Get,
        Method::List,
        Method::GetVersion,
        Method::ListVersions,
        Method::AddVersion,
        Method::Patch,
        Method::Enable,
        Method::Disable,
        Method::Destroy,
        Method::Create,
        Method::Delete,
        Method::Token,
        Method::Sts,
        Method::GenerateAccessToken,
    ];

    /// The identity methods: the token endpoint, STS and IAM Credentials. Not Secret Manager's.
    pub fn is_identity(self) -> bool {
        matches!(self, Method::Token | Method::Sts | Method::GenerateAccessToken)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Access => "access",
            Method::Get => "get",
            Method::List => "list",
            Method::GetVersion => "getVersion",
            Method::ListVersions => "listVersions",
            Method::AddVersion => "addVersion",
            Method::Patch => "patch",
            Method::Enable => "enable",
            Method::Disable => "disable",
            Method::Destroy => "destroy",
            Method::Create => "create",
            Method::Delete => "delete",
            Method::Token => "token",
            Method::Sts => "sts",
            Method::GenerateAccessToken => "generateAccessToken",
        }
    }

    /// The per-project quota the method draws from (CONTRACT §12); the identity endpoints are
    /// not Secret Manager methods and have none.
    pub fn quota_kind(self) -> Option<QuotaKind> {
        match self {
            Method::Access => Some(QuotaKind::Access),
            Method::Get | Method::List | Method::GetVersion | Method::ListVersions => Some(QuotaKind::Read),
            Method::AddVersion
            | Method::Patch
            | Method::Enable
            | Method::Disable
            | Method::Destroy
            | Method::Create
            | Method::Delete => Some(QuotaKind::Write),
            Method::Token | Method::Sts | Method::GenerateAccessToken => None,
        }
    }

    fn index(self) -> usize {
        Method::ALL.iter().position(|m| *m == self).unwrap_or_default()
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A method name that is not one of [`Method::as_str`]'s spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown method {0:?} (expected one of access, get, list, getVersion, listVersions, addVersion, patch, enable, disable, destroy, create, delete, token, sts, generateAccessToken)"
)]
pub struct UnknownMethod(pub String);

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Method::ALL.into_iter().find(|m| m.as_str() == text).ok_or_else(|| UnknownMethod(text.to_owned()))
    }
}

/// Live counters, shared by every connection.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    counts: [AtomicU64; 15],
}

impl Counters {
    pub(crate) fn record(&self, method: Method) {
        self.counts[method.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RequestCounts {
        RequestCounts { counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)) }
    }

    pub(crate) fn reset(&self) {
        for count in &self.counts {
            count.store(0, Ordering::Relaxed);
        }
    }
}

/// How many requests of each method the emulator has received since start or reset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    counts: [u64; 15],
}

impl RequestCounts {
    pub fn get(&self, method: Method) -> u64 {
        self.counts[method.index()]
    }

    /// Every Secret Manager request, not counting the identity endpoints.
    pub fn secret_manager_total(&self) -> u64 {
        Method::ALL.into_iter().filter(|m| !m.is_identity()).map(|m| self.get(m)).sum()
    }

    /// `{"access": 3, "get": 0, …, "token": 1}` — the admin API's `/emulator/requests` body.
    pub fn to_json(&self) -> serde_json::Value {
        let map =
            Method::ALL.into_iter().map(|m| (m.as_str().to_owned(), serde_json::Value::from(self.get(m)))).collect();
        serde_json::Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for method in Method::ALL {
            assert_eq!(method.as_str().parse::<Method>(), Ok(method));
        }
        assert!("versions.access".parse::<Method>().is_err());
    }

    #[test]
    fn counters_snapshot_and_reset() {
        let counters = Counters::default();
        counters.record(Method::Access);
        counters.record(Method::Access);
        counters.record(Method::Token);
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.get(Method::Access), 2);
        assert_eq!(snapshot.secret_manager_total(), 2);
        assert_eq!(snapshot.to_json()["token"], 1);
        counters.reset();
        assert_eq!(counters.snapshot(), RequestCounts::default());
    }
}
