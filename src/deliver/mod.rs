//! Delivery: turning a secret version into files that applications read.
//!
//! [`format`] renders a value into file contents (one file per format, registered in one
//! place); [`bundle`] swaps whole directories of files atomically on tmpfs. [`render`] is the
//! bridge the engine calls: a policy and a version in, the update for one bundle out.

pub mod bundle;
pub mod format;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use bundle::{BundleWriter, Fingerprint, PolicyUpdate, RenderedFile};
pub use format::{Format, RenderError};

use crate::config::Policy;
use crate::secret::Version;

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(
        "runtime directory {} is on {filesystem}, not tmpfs or ramfs, so secrets written there could reach a disk; \
         mount a tmpfs there (systemd: RuntimeDirectory=keyturn) or set allow_persistent = true in [agent]",
        path.display()
    )]
    NotVolatile { path: PathBuf, filesystem: String },
    #[error("runtime directory {}: {problem}", path.display())]
    UnsafeRuntimeDir { path: PathBuf, problem: String },
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
    let input = format::Input {
        version: inputs.version,
        previous: inputs.previous.map(|p| &p.public),
        extras: inputs.extras,
        node: inputs.node,
        policy: &policy.name,
    };
    let files = policy
        .deliver
        .iter()
        .filter(|d| d.bundle == bundle)
        .map(|d| {
            let contents = d.format.render(&input).map_err(|source| DeliverError::Render {
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
        read: policy.version.to_string(),
    })
}

/// Renders every file `policy` delivers from `version` (with `extras`, its template secrets)
/// and drops them: whether the value can be delivered at all. The rotation protocol asks this
/// before it promotes a new value, so that no value a node would refuse becomes `current`.
/// The error names the file and the rule, never the value.
pub fn check_renders(
    policy: &Policy,
    version: &Version,
    extras: &BTreeMap<String, Version>,
    node: &str,
) -> Result<(), String> {
    let inputs = Inputs { version, extras, previous: None, node };
    for bundle in policy.bundles() {
        render(policy, bundle, &inputs).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The version before `current` as a verification set sees it: its id and public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previous {
    pub version: crate::secret::VersionId,
    pub public: crate::generate::PublicKey,
}

/// A fingerprint of how `policy` delivers into `bundle`: when it changes, the files are
/// written again even if the value did not. It is recorded in each bundle's manifest, so its
/// form must not change between releases: a changed form rewrites (and announces) every
/// bundle on the first start after an upgrade. The test below pins it.
pub fn spec(policy: &Policy, bundle: &str) -> u32 {
    let described: Vec<String> =
        policy.deliver.iter().filter(|d| d.bundle == bundle).map(|d| format!("{d:?}")).collect();
    crc32c::crc32c(described.join("\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Delivery;
    use crate::deliver::format::{env::Env, template::Template};

    #[test]
    fn the_settings_fingerprint_keeps_its_form_across_releases() {
        let delivery = |file: &str, format: Format| Delivery {
            bundle: "api".into(),
            file: file.into(),
            format,
            mode: 0o440,
            owner: Some(1000),
            group: None,
        };
        let policy = Policy {
            name: "db".into(),
            store: "dev".into(),
            secret: crate::secret::SecretId::new("db-password"),
            version: crate::store::Selector::current(),
            required: true,
            deliver: vec![
                delivery("db.env", Format::Env(Env { key: Some("DB_PASSWORD".into()) })),
                delivery("db", Format::default()),
                delivery("db.conf", Format::Template(Template { source: "x={{ secret }}".into() })),
            ],
            rotate: None,
            notify: None,
            extras: BTreeMap::new(),
            max_stale: None,
        };
        // Measured on the release before the formats became one file each.
        assert_eq!(spec(&policy, "api"), SPEC_OF_THE_POLICY_ABOVE);
    }

    const SPEC_OF_THE_POLICY_ABOVE: u32 = 239_829_494;
}
