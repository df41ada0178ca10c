//! A policy's `[rotate]`: how and when new versions are made.

use std::time::Duration;

use toml::Spanned;

use super::source::Section;
use crate::config::units::optional_duration;
use crate::config::{OnAdoptionTimeout, Owner, Retire, Rotate, raw};
use crate::generate::{Charset, Generator};
use crate::rotation::schedule::Schedule;

/// How long a replaced version stays enabled and in verification sets, by default.
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_LEASE: Duration = Duration::from_secs(600);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// The `[rotate]` settings, and the generator alone when it is valid: the policy checks its
/// formats against the generator even when another rotate setting is wrong. The first is
/// `None` when anything in the section is wrong.
///
/// `fleet`: whether the agent file has a `[fleet]` (`None`: unknown), which retiring after
/// adoption needs.
pub(super) fn section(section: &mut Section<'_, '_>, fleet: Option<bool>) -> (Option<Rotate>, Option<Generator>) {
    let Some(raw) = section.parse::<raw::Rotate>() else { return (None, None) };
    let schedule = match (&raw.every, &raw.cron) {
        (Some(every), None) => section.duration(Some(every), Duration::ZERO, "every").map(Schedule::Every),
        (None, Some(cron)) => {
            Schedule::cron(cron.get_ref()).map_err(|m| section.problem(Some(cron.span()), "cron", m)).ok()
        }
        (Some(_), Some(cron)) => {
            section.problem(Some(cron.span()), "cron", "set either every or cron, not both");
            None
        }
        (None, None) => {
            section.problem(None, "", "missing a schedule: set every = \"30d\" or cron = \"0 3 * * SUN\"");
            None
        }
    };
    let parsed = Generator::parse(raw.generate.get_ref())
        .map_err(|m| section.problem(Some(raw.generate.span()), "generate", m))
        .ok();
    let generator_with_charset = parsed.clone().and_then(|generator| match &raw.charset {
        None => Some(generator),
        Some(charset) => Charset::parse(charset.get_ref())
            .and_then(|c| generator.with_charset(c))
            .map_err(|m| section.problem(Some(charset.span()), "charset", m))
            .ok(),
    });
    let owner = match raw.owner.as_ref().map(|o| (o.get_ref().as_str(), o.span())) {
        None | Some(("fleet", _)) => Some(Owner::Fleet),
        Some(("node", _)) => Some(Owner::Node),
        Some((other, span)) => {
            section.problem(Some(span), "owner", format!("\"{other}\" is not an owner; expected \"fleet\" (one node rotates, under a lease) or \"node\" (a per-node secret)"));
            None
        }
    };
    // A JWK set lists the current and the previous key, so a key replaced twice within its grace
    // would leave verification sets early: the grace must end before the next rotation. By
    // default it is a day, or half the period if that is shorter.
    let default_grace = match &schedule {
        Some(Schedule::Every(period)) => DEFAULT_GRACE.min(*period / 2),
        _ => DEFAULT_GRACE,
    };
    let grace = section.duration(raw.grace.as_ref(), default_grace, "grace");
    if let (Some(Schedule::Every(period)), Some(grace), Some(value)) = (&schedule, grace, &raw.grace)
        && grace >= *period
    {
        section.problem(
            Some(value.span()),
            "grace",
            format!(
                "\"{}\" is not shorter than the rotation period ({}): a replaced key must leave verification sets before the next one is replaced",
                value.get_ref(),
                humantime::format_duration(*period)
            ),
        );
    }
    let keep = match &raw.keep {
        None => Some(2),
        Some(keep) => {
            match usize::try_from(*keep.get_ref()) {
                Ok(n) if (2..=100).contains(&n) => Some(n),
                _ => {
                    section.problem(Some(keep.span()), "keep", format!("{} is out of range: keep 2 to 100 versions enabled (the current and the previous at least)", keep.get_ref()));
                    None
                }
            }
        }
    };
    let lease = section.duration(raw.lease.as_ref(), DEFAULT_LEASE, "lease");
    let jitter = match (&raw.jitter, &schedule) {
        (Some(value), _) => {
            optional_duration(value.get_ref()).map_err(|m| section.problem(Some(value.span()), "jitter", m)).ok()
        }
        (None, Some(schedule)) => Some(schedule.default_jitter()),
        (None, None) => None,
    };
    let check = match &raw.check {
        Some(command) if command.get_ref().is_empty() || command.get_ref()[0].is_empty() => {
            section.problem(
                Some(command.span()),
                "check",
                "must name a program: [\"/usr/local/bin/check-key\", \"--strict\"]",
            );
            None
        }
        Some(command) => Some(Some(command.get_ref().clone())),
        None => Some(None),
    };
    let check_timeout = section.duration(raw.check_timeout.as_ref(), DEFAULT_CHECK_TIMEOUT, "check_timeout");
    // A rotator still running its check when its lease ends could be overtaken by another node.
    // (A per-node secret is rotated without a lease.)
    if let (Some(lease), Some(timeout), Some(_), Some(Owner::Fleet)) = (lease, check_timeout, &raw.check, owner)
        && timeout >= lease
    {
        let message = format!(
            "the lease ({}) must outlast the check command's timeout ({}): a rotator still checking when its lease ends could be overtaken by another node",
            humantime::format_duration(lease),
            humantime::format_duration(timeout)
        );
        let at: Option<(&Spanned<String>, &str)> = match (&raw.check_timeout, &raw.lease) {
            (Some(value), _) => Some((value, "check_timeout")),
            (None, Some(value)) => Some((value, "lease")),
            (None, None) => None,
        };
        if let Some((value, field)) = at {
            section.problem(Some(value.span()), field, message);
        }
    }
    let retire = retire(section, &raw);
    if let (Some(Some(Retire::AfterAdoption { .. })), Some(false)) = (retire, fleet) {
        let span = [&raw.retire, &raw.adoption_timeout, &raw.on_adoption_timeout]
            .into_iter()
            .flatten()
            .next()
            .map(Spanned::span);
        section.problem(span, "retire", "retiring after adoption asks the fleet who still holds a version: add [fleet] prometheus = \"URL\" to the agent file, or set retire = \"after-grace\"");
    }
    let rotate = (|| {
        Some(Rotate {
            schedule: schedule?,
            generator: generator_with_charset.clone()?,
            owner: owner?,
            grace: grace?,
            keep: keep?,
            lease: lease?,
            jitter: jitter?,
            check: check?,
            check_timeout: check_timeout?,
            retire: retire?,
        })
    })();
    // With its charset, when that is valid: formats refuse some characters (issue 14).
    let checked = rotate.as_ref().map(|r| r.generator.clone()).or(generator_with_charset).or(parsed);
    (rotate, checked)
}

/// `retire`, `adoption_timeout` and `on_adoption_timeout`: `Some(None)` when none is set.
fn retire(section: &mut Section<'_, '_>, raw: &raw::Rotate) -> Option<Option<Retire>> {
    let adoption_timeout =
        section.duration(raw.adoption_timeout.as_ref(), Duration::from_secs(3 * 86_400), "adoption_timeout");
    let on_timeout = match raw.on_adoption_timeout.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("wait", _)) => Some(OnAdoptionTimeout::Wait),
        Some(("retire", _)) => Some(OnAdoptionTimeout::Retire),
        Some((other, span)) => {
            section.problem(Some(span), "on_adoption_timeout", format!("\"{other}\" is not a choice; expected \"wait\" (keep the version enabled while a live node holds it) or \"retire\" (disable it anyway)"));
            None
        }
    };
    let explicit = raw.adoption_timeout.is_some() || raw.on_adoption_timeout.is_some();
    match raw.retire.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None if !explicit => Some(None),
        None | Some(("after-adoption", _)) => {
            Some(Some(Retire::AfterAdoption { timeout: adoption_timeout?, on_timeout: on_timeout? }))
        }
        Some(("after-grace", span)) => {
            if explicit {
                section.problem(Some(span), "retire", "\"after-grace\" takes no adoption_timeout or on_adoption_timeout: those are for \"after-adoption\"");
                return None;
            }
            Some(Some(Retire::AfterGrace))
        }
        Some((other, span)) => {
            section.problem(Some(span), "retire", format!("\"{other}\" is not a choice; expected \"after-adoption\" (once no live node holds the old version, as [fleet] reports) or \"after-grace\" (on the timer alone)"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::fixtures::*;
    use super::super::validate;
    use crate::config::Owner;
    use crate::deliver::Format;
    use crate::generate::Generator;
    use crate::rotation::schedule::Schedule;

    #[test]
    fn rotate_sections() {
        let signing = r#"
[secret]
store = "dev"
id = "api-signing"

[rotate]
every = "30d"
generate = "ed25519"
grace = "24h"

[[deliver]]
path = "api/signing.pem"
format = "pem"

[[deliver]]
path = "api/jwks.json"
format = "jwks"
mode = "0444"
"#;
        let per_node = r#"
[secret]
store = "dev"
id = "mtls-${NODE}"

[rotate]
cron = "0 3 * * SUN"
generate = "password:32"
charset = "hex"
owner = "node"
keep = 3
jitter = "0s"
check = ["/usr/bin/true"]

[[deliver]]
path = "mtls/password"
"#;
        let config = validate(&sources(AGENT, &[("signing", signing), ("per-node", per_node)]), &Fake, &Fake).unwrap();
        let rotate = config.policy("signing").unwrap().rotate.clone().unwrap();
        assert_eq!(rotate.schedule, Schedule::Every(Duration::from_secs(30 * 86_400)));
        assert_eq!(rotate.generator, Generator::Ed25519);
        assert_eq!((rotate.owner, rotate.keep, rotate.grace), (Owner::Fleet, 2, Duration::from_secs(86_400)));
        assert_eq!(rotate.jitter, Duration::from_secs(600), "5% of 30 days, capped at 10 minutes");
        assert_eq!(
            config.policy("signing").unwrap().deliver[1].format,
            Format::Jwks(crate::deliver::format::jwks::Jwks)
        );
        let node = config.policy("per-node").unwrap();
        assert_eq!(node.secret.as_str(), "mtls-node-a");
        let rotate = node.rotate.clone().unwrap();
        assert_eq!((rotate.owner, rotate.keep, rotate.jitter), (Owner::Node, 3, Duration::ZERO));
        assert_eq!(rotate.generator.name(), "password:32");
        assert_eq!(rotate.check, Some(vec!["/usr/bin/true".to_string()]));

        let bad = r#"
[secret]
store = "dev"
id = "shared-id"

[rotate]
every = "30d"
cron = "0 3 * * *"
generate = "hmac-sha256"
charset = "hex"
owner = "everyone"
keep = 1

[[deliver]]
path = "x/jwks.json"
format = "jwks"
"#;
        let got = problems(AGENT, &[("bad", bad)]);
        let want = [
            "bad.toml:8: rotate.cron: set either every or cron, not both",
            "bad.toml:10: rotate.charset:",
            "bad.toml:11: rotate.owner: \"everyone\" is not an owner",
            "bad.toml:12: rotate.keep: 1 is out of range",
            "bad.toml:16: deliver[0].format: \"jwks\" needs a private key, but generate = \"hmac-sha256\"",
        ];
        for want in want {
            assert!(got.iter().any(|p| p.contains(want)), "missing {want:?} in {got:#?}");
        }
        let shared = "[secret]\nstore = \"dev\"\nid = \"same-for-all\"\n[rotate]\nevery = \"1d\"\ngenerate = \"aes-256\"\nowner = \"node\"\n[[deliver]]\npath = \"y/key\"\n";
        let got = problems(AGENT, &[("shared", shared)]);
        assert!(got.iter().any(|p| p.contains("needs ${NODE} in its id")), "{got:#?}");
        let long_grace = "[secret]\nstore = \"dev\"\nid = \"g\"\n[rotate]\nevery = \"1h\"\ngrace = \"2h\"\ngenerate = \"aes-256\"\n[[deliver]]\npath = \"g/key\"\n";
        let got = problems(AGENT, &[("long-grace", long_grace)]);
        assert!(
            got.iter()
                .any(|p| p
                    .contains("long-grace.toml:6: rotate.grace: \"2h\" is not shorter than the rotation period (1h)")),
            "{got:#?}"
        );
        let short = "[secret]\nstore = \"dev\"\nid = \"h\"\n[rotate]\nevery = \"1h\"\ngenerate = \"aes-256\"\n[[deliver]]\npath = \"h/key\"\n";
        let config = validate(&sources(AGENT, &[("short", short)]), &Fake, &Fake).unwrap();
        assert_eq!(config.policies[0].rotate.as_ref().unwrap().grace, Duration::from_secs(1800), "half the period");
        let unknown = "[secret]\nstore = \"dev\"\nid = \"z\"\n[rotate]\nevery = \"1d\"\ngenerate = \"dsa-1024\"\n[[deliver]]\npath = \"z/key\"\n";
        let got = problems(AGENT, &[("unknown", unknown)]);
        assert!(got.iter().any(|p| p.contains("rotate.generate:") && p.contains("dsa-1024")), "{got:#?}");
        let short_lease = "[secret]\nstore = \"dev\"\nid = \"l\"\n[rotate]\nevery = \"1d\"\ngenerate = \"aes-256\"\nlease = \"20s\"\ncheck = [\"true\"]\n[[deliver]]\npath = \"l/key\"\n";
        let got = problems(AGENT, &[("short-lease", short_lease)]);
        assert!(
            got.iter().any(|p| p.contains(
                "short-lease.toml:7: rotate.lease: the lease (20s) must outlast the check command's timeout (30s)"
            )),
            "{got:#?}"
        );
        // Without a check command the timeout never runs: a short lease is fine.
        let no_check = short_lease.replace("check = [\"true\"]\n", "");
        assert!(validate(&sources(AGENT, &[("no-check", &no_check)]), &Fake, &Fake).is_ok());
        // Nor for a per-node secret, which is rotated without a lease.
        let per_node = short_lease
            .replace("id = \"l\"", "id = \"l-${NODE}\"")
            .replace("lease = \"20s\"", "lease = \"20s\"\nowner = \"node\"");
        assert!(validate(&sources(AGENT, &[("per-node", &per_node)]), &Fake, &Fake).is_ok(), "{per_node}");
        let slow_check = "[secret]\nstore = \"dev\"\nid = \"c\"\n[rotate]\nevery = \"1d\"\ngenerate = \"aes-256\"\ncheck = [\"true\"]\ncheck_timeout = \"1h\"\n[[deliver]]\npath = \"c/key\"\n";
        let got = problems(AGENT, &[("slow-check", slow_check)]);
        assert!(got.iter().any(|p| p.contains("slow-check.toml:8: rotate.check_timeout: the lease (10m)")), "{got:#?}");
    }
}
