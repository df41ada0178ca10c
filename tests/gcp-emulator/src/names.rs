//! Resource names and identifiers: what a valid secret ID, alias or version selector is, and
//! how names are spelled in responses.
//!
//! Requests may name the project by ID or by number; responses always use the number
//! (CONTRACT §1), so every name the emulator emits is built here from the configured number.

/// Regional endpoints listed in Discovery revision 20261021 (CONTRACT §1). A regional path
/// naming any other location is rejected, as no such endpoint exists.
pub(crate) const LOCATIONS: &[&str] = &[
    "me-central2",
    "africa-south1",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast2",
    "asia-northeast3",
    "asia-south1",
    "asia-south2",
    "asia-southeast1",
    "asia-southeast2",
    "asia-southeast3",
    "australia-southeast1",
    "australia-southeast2",
    "europe-central2",
    "europe-north1",
    "europe-north2",
    "europe-southwest1",
    "europe-west1",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "europe-west10",
    "europe-west12",
    "europe-west15",
    "me-central1",
    "me-west1",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "northamerica-south1",
    "southamerica-east1",
    "southamerica-west1",
    "us-central1",
    "us-central2",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-east7",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
    "us",
    "eu",
    "ca",
    "in",
    "ch",
    "sa",
];

/// Secret IDs: 1–255 characters of `[A-Za-z0-9_-]`.
pub(crate) fn is_valid_secret_id(id: &str) -> bool {
    (1..=255).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Alias syntax: at most 63 characters of `[A-Za-z0-9_-]`, starting with a letter. Whether the
/// alias is one of the reserved words is checked separately, because a path segment spelled
/// `latest` is a selector, not an alias.
pub(crate) fn is_alias_syntax(alias: &str) -> bool {
    alias.len() <= 63
        && alias.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && alias.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `latest` and `NEW` are reserved in any letter case (the docs' note on aliases).
pub(crate) fn is_reserved_alias(alias: &str) -> bool {
    alias.eq_ignore_ascii_case("latest") || alias.eq_ignore_ascii_case("new")
}

/// What the `{secret_version}` path segment names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VersionSelector {
    Number(u64),
    /// The most recently created version, whatever its state.
    Latest,
    Alias(String),
}

impl VersionSelector {
    /// `None` when the segment can be neither a version number (≥ 1), `latest`, nor an alias.
    pub(crate) fn parse(segment: &str) -> Option<Self> {
        if segment == "latest" {
            return Some(VersionSelector::Latest);
        }
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            return match segment.parse::<u64>() {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(VersionSelector::Number(n)),
            };
        }
        is_alias_syntax(segment).then(|| VersionSelector::Alias(segment.to_owned()))
    }
}

/// `projects/NUM` or `projects/NUM/locations/LOC`.
pub(crate) fn parent_name(project: &str, location: Option<&str>) -> String {
    match location {
        None => format!("projects/{project}"),
        Some(location) => format!("projects/{project}/locations/{location}"),
    }
}

pub(crate) fn secret_name(project: &str, location: Option<&str>, secret: &str) -> String {
    format!("{}/secrets/{secret}", parent_name(project, location))
}

pub(crate) fn version_name(project: &str, location: Option<&str>, secret: &str, version: &str) -> String {
    format!("{}/versions/{version}", secret_name(project, location, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_ids() {
        assert!(is_valid_secret_id("a"));
        assert!(is_valid_secret_id("db_password-2"));
        assert!(is_valid_secret_id(&"x".repeat(255)));
        for bad in ["", "has space", "dot.ted", "slash/ed", "ünï", &"x".repeat(256)] {
            assert!(!is_valid_secret_id(bad), "{bad}");
        }
    }

    #[test]
    fn aliases() {
        assert!(is_alias_syntax("current"));
        assert!(is_alias_syntax(&format!("a{}", "b".repeat(62))));
        for bad in ["", "1st", "_x", "-x", "with.dot", &"a".repeat(64)] {
            assert!(!is_alias_syntax(bad), "{bad}");
        }
        for reserved in ["latest", "Latest", "LATEST", "NEW", "new", "New"] {
            assert!(is_reserved_alias(reserved), "{reserved}");
        }
        assert!(!is_reserved_alias("newest"));
    }

    #[test]
    fn version_selectors() {
        assert_eq!(VersionSelector::parse("latest"), Some(VersionSelector::Latest));
        assert_eq!(VersionSelector::parse("12"), Some(VersionSelector::Number(12)));
        assert_eq!(VersionSelector::parse("current"), Some(VersionSelector::Alias("current".into())));
        for bad in ["0", "", "-1", "1a!", "99999999999999999999999"] {
            assert_eq!(VersionSelector::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_use_the_given_project_and_location() {
        assert_eq!(version_name("42", None, "s", "3"), "projects/42/secrets/s/versions/3");
        assert_eq!(secret_name("42", Some("europe-west1"), "s"), "projects/42/locations/europe-west1/secrets/s");
    }
}
