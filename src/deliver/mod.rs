//! Delivery: turning a secret version into files that applications read.
//!
//! [`format`] renders a value into file contents; [`bundle`] swaps whole directories of files
//! atomically on tmpfs. [`render`] is the bridge the engine calls: a policy and a version in,
//! the update for one bundle out.

pub mod bundle;
pub mod format;
pub mod template;

use std::collections::BTreeMap;
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

/// What a policy's files are rendered from: its secret's current version, the `[secrets.NAME]`
/// values its templates use, and the previous public key its JWK sets list.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub version: &'a Version,
    pub extras: &'a BTreeMap<String, Version>,
    pub previous: Option<&'a Previous>,
    pub node: &'a str,
}

impl Inputs<'_> {
    /// A checksum of every value the files are made from: the secret's own CRC32C, or, with
    /// template secrets, one over all of them with their names and versions.
    pub fn crc32c(&self) -> u32 {
        if self.extras.is_empty() {
            return self.version.crc32c;
        }
        let mut summary = format!("{}:{}", self.version.id, self.version.crc32c);
        for (name, extra) in self.extras {
            summary.push_str(&format!("|{name}={}:{}", extra.id, extra.crc32c));
        }
        crc32c::crc32c(summary.as_bytes())
    }
}

/// Renders the files `policy` delivers into `bundle`.
pub fn render(policy: &Policy, bundle: &str, inputs: &Inputs<'_>) -> Result<PolicyUpdate, DeliverError> {
    let values: BTreeMap<String, crate::secret::SecretBytes> =
        inputs.extras.iter().map(|(name, v)| (name.clone(), v.value.clone())).collect();
    let files = policy
        .deliver
        .iter()
        .filter(|d| d.bundle == bundle)
        .map(|d| {
            let contents = match &d.format {
                crate::config::Format::Template { source } => {
                    let context = template::Context {
                        secret: &inputs.version.value,
                        extras: &values,
                        node: inputs.node,
                        policy: &policy.name,
                        version: inputs.version.id.as_str(),
                    };
                    template::render(source, &context)
                }
                other => format::render(other, &inputs.version.value, inputs.previous.map(|p| &p.public)),
            };
            let contents = contents.map_err(|source| DeliverError::Render {
                policy: policy.name.clone(),
                path: d.display_path(),
                source,
            })?;
            Ok(RenderedFile { path: d.file.clone(), contents, mode: d.mode, owner: d.owner, group: d.group })
        })
        .collect::<Result<Vec<_>, DeliverError>>()?;
    Ok(PolicyUpdate {
        policy: policy.name.clone(),
        version: inputs.version.id.clone(),
        crc32c: inputs.crc32c(),
        spec: spec(policy, bundle),
        previous: inputs.previous.map(|p| p.version.clone()),
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
