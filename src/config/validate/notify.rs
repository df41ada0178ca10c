//! A policy's `[notify]`: the settings every notification has (`coalesce`, `attempts`), and one
//! key per notifier, whose table the notifier's own file checks (see [`crate::notify`]).

use std::time::Duration;

use super::source::Section;
use crate::config::units::optional_duration;
use crate::config::{Notify, raw};
use crate::notify::{self, NotifierConfig};

const COMMON: &[&str] = &["coalesce", "attempts"];

pub(super) fn section(section: &mut Section<'_, '_>) -> Option<Notify> {
    let (common, kinds) = section.split(COMMON);
    let raw: raw::Notify = section.with_value(common).parse()?;
    let before = section.problem_count();
    let names = notify::KINDS.join(", ");
    let mut notifiers = Vec::new();
    let mut kinds = section.with_value(kinds);
    for (name, span) in kinds.keys() {
        let Some(mut table) = kinds.child(&name) else { continue };
        match NotifierConfig::configure(&name, &mut table) {
            Some(Some(notifier)) => notifiers.push(notifier),
            Some(None) => {}
            None => kinds.problem(
                Some(span),
                &name,
                format!("unknown notifier; expected one of {names} (and coalesce, attempts)"),
            ),
        }
    }
    if notifiers.is_empty() && section.problem_count() == before {
        section.problem(None, "", format!("names no notifier; set one of {names}"));
    }
    // They run in the order they are registered, whatever the order in the file.
    notifiers.sort_by_key(|n| notify::KINDS.iter().position(|k| *k == n.kind()));
    // By default a change is told at once: the budget from change seen to application told is
    // a millisecond. A window is for stores that change a secret several times in a burst.
    let coalesce = match &raw.coalesce {
        Some(value) => {
            optional_duration(value.get_ref()).map_err(|m| section.problem(Some(value.span()), "coalesce", m)).ok()
        }
        None => Some(Duration::ZERO),
    };
    let attempts = match &raw.attempts {
        None => Some(3),
        Some(value) => match u32::try_from(*value.get_ref()) {
            Ok(n) if (1..=10).contains(&n) => Some(n),
            _ => {
                let message = format!("{} is out of range: 1 to 10 attempts", value.get_ref());
                section.problem(Some(value.span()), "attempts", message);
                None
            }
        },
    };
    if section.problem_count() > before {
        return None;
    }
    Some(Notify { notifiers, coalesce: coalesce?, attempts: attempts? })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::fixtures::*;
    use crate::notify::NotifierConfig;
    use crate::notify::exec::ExecConfig;
    use crate::notify::signal::{SignalConfig, SignalTarget};

    fn policy(notify: &str) -> String {
        format!("[secret]\nstore = \"dev\"\nid = \"a\"\n[[deliver]]\npath = \"x/a\"\n[notify]\n{notify}")
    }

    #[test]
    fn notifiers_are_checked_by_their_own_files_and_run_in_a_fixed_order() {
        let good = policy(
            "exec = { command = [\"/usr/bin/reload\"] }\nsignal = { pidfile = \"/run/api.pid\", signal = \"sigusr1\" }\ncoalesce = \"2s\"\n",
        );
        let notify = config(AGENT, &[("a", &good)]).policies[0].notify.clone().unwrap();
        assert_eq!(
            notify.notifiers,
            [
                NotifierConfig::Signal(SignalConfig {
                    target: SignalTarget::Pidfile(PathBuf::from("/run/api.pid")),
                    signal: "USR1".into(),
                    user: None,
                }),
                NotifierConfig::Exec(ExecConfig {
                    command: vec!["/usr/bin/reload".into()],
                    timeout: Duration::from_secs(30)
                }),
            ]
        );
        assert_eq!((notify.coalesce, notify.attempts), (Duration::from_secs(2), 3));

        let bad = policy(
            "signal = { pidfile = \"run/api.pid\", unit = \"api\" }\nsystemd = { unit = \"-x\", action = \"kick\" }\n\
             http = { url = \"http://10.1.1.1/reload\" }\npager = { to = \"me\" }\nattempts = 0\n",
        );
        let got = problems(AGENT, &[("bad", &bad)]);
        let want = [
            "bad.toml:7: notify.signal: set exactly one of pidfile or unit",
            "bad.toml:8: notify.systemd.unit: \"-x\" is not a systemd unit name",
            "bad.toml:8: notify.systemd.action: \"kick\" is not an action",
            "bad.toml:9: notify.http.url: \"http://10.1.1.1/reload\": plain http is allowed only to a loopback address",
            "bad.toml:10: notify.pager: unknown notifier; expected one of signal, systemd, exec, http",
            "bad.toml:11: notify.attempts: 0 is out of range: 1 to 10 attempts",
        ];
        for want in want {
            assert!(got.iter().any(|p| p.contains(want)), "missing {want:?} in {got:#?}");
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
        let none = problems(AGENT, &[("none", &policy("coalesce = \"1s\"\n"))]);
        assert!(none.iter().any(|p| p.contains("notify: names no notifier; set one of signal, systemd, exec, http")));
    }
}
