//! Black-box tests of the emulator over HTTP: one test per contract case.
//!
//! Where a new test goes:
//! - `support.rs`: the harness (an emulator + an HTTP client + an admin token), request helpers,
//!   `assert_error`, and the gcp_auth-style JWT signer. No tests.
//! - `auth.rs`: the token endpoint, self-signed JWTs, 401s, 403s per role, and gcp_auth end to
//!   end.
//! - `federation.rs`: Workload Identity Federation: the STS exchange and its checks, IAM
//!   Credentials `generateAccessToken`, the test OIDC issuer, `Date` on every answer.
//! - `names.rs`: IDs, projects, locations, create/replication rules.
//! - `secrets.rs`: get, patch, delete, list, labels, annotations, aliases, expiry, etags on secrets.
//! - `versions.rs`: addVersion, `latest`, aliases, states, etags on versions, delayed destroy.
//! - `payload.rs`: base64, size, CRC32C, JSON number/string forms.
//! - `system.rs`: system parameters (`$alt`, `prettyPrint`, `fields`, `$.xgafv`, `callback`,
//!   `key`, …) and numeric enums.
//! - `faults.rs`: every fault kind, quotas, counts and the admin API.
//! - `process.rs`: the blocking wrapper and the real binary.
//!
//! Every test asserts the exact HTTP code, `status` and message shape it is about. Pure logic is
//! tested inline in `src/`.

mod auth;
mod faults;
mod federation;
mod names;
mod payload;
mod process;
mod secrets;
mod support;
mod system;
mod versions;
