//! A local emulator of Google Cloud Secret Manager v1 REST, for keyturn's integration tests
//! and benchmarks.
//!
//! Google ships no emulator, so this one follows Google's contract
//! (`shared/reference/gcp-secret-manager/CONTRACT.md`), not merely what keyturn sends: exact
//! status codes, `status` names and message shapes; `latest` and alias resolution; etags;
//! version states and delayed destroy; CRC32C; pagination; quotas; an OAuth token endpoint
//! that verifies the RS256 JWT assertions gcp_auth signs; and Workload Identity Federation
//! (`shared/reference/gcp-identity/CONTRACT.md`): STS, IAM Credentials and a test OIDC issuer.
//! It listens on 127.0.0.1 only.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gcp_emulator::StartError> {
//! use gcp_emulator::{Emulator, Role};
//! let emu = Emulator::builder()
//!     .project_id("acme-edge")
//!     .project_number(435468002770)
//!     .start()
//!     .await?;
//! let key_json = emu.service_account_key("puller@acme-edge.iam.gserviceaccount.com", Role::Accessor);
//! // point the client at emu.base_url(); its key file already names emu.token_uri()
//! emu.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`emulator`](Emulator) / [`blocking`]: the public handles (async, and a blocking one that
//!   owns its runtime).
//! - `server`: the accept loop (hyper HTTP/1.1), with connection-level faults.
//! - `service`: one request end to end — routing, counting, faults, then dispatch.
//! - `routes`: method + path → an `Operation` (hand-parsed gRPC-transcoding paths).
//! - `api`: Secret Manager methods: auth, permission, quota, then the store.
//! - `store`: the state machine (secrets, versions, aliases, etags, states). Pure.
//! - `rules`: validation of client-supplied fields and payloads. Pure.
//! - `wire`: JSON bodies in and resources out (proto3 JSON mapping), enums as names or numbers.
//! - `system`: the system parameters every Google API takes (`$alt`, `prettyPrint`, `fields`,
//!   `$.xgafv`, `callback`, `key`, …) and how they shape a response.
//! - `filter`: the `filter=` list language subset.
//! - `auth` / `jwt`: service-account keys, the token exchange, bearer tokens (issued or
//!   self-signed JWTs), roles, who may impersonate whom.
//! - `oidc`: the test OIDC issuer (its keys, discovery document and JWKS, minted tokens).
//! - `federation`: pools, providers and the STS token exchange with its subject-token checks.
//! - `iam_credentials`: `generateAccessToken`.
//! - `faults`: fault injection and quotas; `counts`: per-method request counts.
//! - `admin`: the `/emulator/…` HTTP API that exposes faults, time and identities to scripts.
//! - `status`, `names`, `clock`, `checksum`: errors, resource names, time, CRC32C.

#![forbid(unsafe_code)]

mod admin;
mod api;
mod auth;
pub mod blocking;
mod checksum;
mod clock;
mod counts;
mod emulator;
mod faults;
mod federation;
mod filter;
mod iam_credentials;
mod jwt;
mod names;
mod oidc;
mod routes;
mod rules;
mod server;
mod service;
mod status;
mod store;
mod system;
mod wire;

pub use auth::{Role, UnknownRole};
pub use checksum::crc32c;
pub use counts::{Method, RequestCounts, UnknownMethod};
pub use emulator::{Emulator, EmulatorBuilder, StartError, SubjectToken};
pub use faults::{Failure, Faults, QuotaKind};
pub use oidc::SigningAlgorithm;
