//! Delivery: turning a secret version into files that applications read.
//!
//! [`format`] renders a value into file contents; [`bundle`] swaps whole directories of files
//! atomically on tmpfs. [`render`] is the bridge the engine calls: a policy and a version in,
//! the update for one bundle out.

pub mod bundle;
pub mod format;

use std::path::PathBuf;

pub use bundle::{BundleWriter, Fingerprint, PolicyUpdate, RenderedFile};
pub use format::RenderError;

use crate::config::Policy;
use crate::store::Version;

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(
        "runtime directory {} is on {filesystem}, not tmpfs or ramfs, so secrets written there could reach a disk; \
         mount a tmpfs there (systemd: RuntimeDirectory=keyturn) or set allow_persistent = true in [agent]",
        path.display()
    )]
    NotVolatile { path: PathBuf, filesystem: String },
    #[error("bundle {bundle}: cannot {action} {}", path.display())]
    Io {
        bundle: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle {bundle}: {} exists and is not a keyturn link; move it away", path.display())]
    Foreign { bundle: String, path: PathBuf },
    #[error("policy {policy}, file {path}: {source}")]
    Render {
        policy: String,
        path: String,
        #[source]
        source: RenderError,
    },
}

/// Renders the files `policy` delivers into `bundle` from `version`; `previous` is the public
/// key listed beside it in JWK sets (see [`format::render`]).
pub fn render(
    policy: &Policy,
    bundle: &str,
    version: &Version,
    previous: Option<&Previous>,
) -> Result<PolicyUpdate, DeliverError> {
    let files = policy
        .deliver
        .iter()
        .filter(|d| d.bundle == bundle)
        .map(|d| {
            let contents =
                format::render(&d.format, &version.value, previous.map(|p| &p.public)).map_err(|source| {
                    DeliverError::Render { policy: policy.name.clone(), path: d.display_path(), source }
                })?;
            Ok(RenderedFile { path: d.file.clone(), contents, mode: d.mode, owner: d.owner, group: d.group })
        })
        .collect::<Result<Vec<_>, DeliverError>>()?;
    Ok(PolicyUpdate {
        policy: policy.name.clone(),
        version: version.id.clone(),
        crc32c: version.crc32c,
        spec: spec(policy, bundle),
        previous: previous.map(|p| p.version.clone()),
        files,
    })
}

/// The version before `current` as a verification set sees it: its id and public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previous {
    pub version: crate::secret::VersionId,
    pub public: crate::generate::PublicKey,
}

/// A fingerprint of how `policy` delivers into `bundle`: when it changes, the files are
/// written again even if the value did not.
pub fn spec(policy: &Policy, bundle: &str) -> u32 {
    let described: Vec<String> =
        policy.deliver.iter().filter(|d| d.bundle == bundle).map(|d| format!("{d:?}")).collect();
    crc32c::crc32c(described.join("\n").as_bytes())
}
