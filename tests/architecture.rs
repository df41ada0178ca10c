//! The module map's rules, checked against the source: the "never" arrows of the architecture
//! (`../shared/design/ARCHITECTURE.md`, summarised in `src/lib.rs`), and the rule that only
//! `src/clock.rs` reads the wall clock. Comments are not code: lines starting with `//` are
//! skipped, so docs may name what code must not use.

use std::fs;
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Every `.rs` file under `dir`, with its code lines: comments dropped, and unit tests (the
/// `mod tests` at the end of a file, test-only files) left out, since the rules are about
/// what the agent does.
fn code(dir: &str) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut pending = vec![Path::new(SRC).join(dir)];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).unwrap();
            let code: Vec<&str> = text
                .lines()
                .take_while(|l| !["mod tests {", "pub(super) mod tests {", "pub(crate) mod fixtures {"].contains(l))
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            let test_only =
                text.starts_with("//! The engine under tokio's paused clock") || path.ends_with("store/memory.rs");
            if !test_only {
                files.push((path, code.join("\n")));
            }
        }
    }
    files.sort();
    files
}

/// Fails naming every file under `dir` whose code contains one of `forbidden`.
fn never(dir: &str, forbidden: &[&str], why: &str) {
    let mut found = Vec::new();
    for (path, code) in code(dir) {
        for needle in forbidden {
            if code.contains(needle) {
                found.push(format!("{} uses {needle}", path.strip_prefix(SRC).unwrap().display()));
            }
        }
    }
    assert!(found.is_empty(), "{why}:\n{}", found.join("\n"));
}

/// The modules registered in a `name! { Variant => module::Type, ... }` list.
fn registered(file: &str, list: &str) -> Vec<String> {
    let text = fs::read_to_string(Path::new(SRC).join(file)).unwrap();
    let start = text.find(&format!("{list}! {{")).unwrap_or_else(|| panic!("no {list}! list in {file}"));
    let body = &text[start..text[start..].find('}').unwrap() + start];
    body.lines().filter_map(|l| l.split("=>").nth(1)?.trim().split("::").next().map(str::to_string)).collect()
}

#[test]
fn only_the_clock_reads_the_wall_clock() {
    let mut found = Vec::new();
    for (path, code) in code("") {
        if path.ends_with("clock.rs") {
            continue;
        }
        if code.contains("SystemTime::now") || code.contains("std::time::Instant::now") {
            found.push(path.strip_prefix(SRC).unwrap().display().to_string());
        }
    }
    assert!(found.is_empty(), "read the time through crate::clock (or tokio::time::Instant): {found:?}");
    assert!(code("clock.rs")[0].1.contains("SystemTime::now"), "the check looks at the right thing");
}

#[test]
fn delivery_never_reaches_into_stores() {
    never("deliver", &["crate::store"], "deliver renders and writes what it is given; it never reads a store");
}

#[test]
fn notify_never_reaches_into_delivery() {
    never("notify", &["crate::deliver"], "a notifier tells applications about files; it never writes them");
}

#[test]
fn nothing_reaches_into_app() {
    for dir in ["backoff.rs", "clock.rs", "cli.rs", "config", "control", "deliver", "engine", "generate", "notify"] {
        never(dir, &["crate::app"], "app builds and runs everything; nothing depends on it");
    }
    for dir in ["probe.rs", "process.rs", "report", "rotation", "secret.rs", "store", "sys.rs", "task.rs"] {
        never(dir, &["crate::app"], "app builds and runs everything; nothing depends on it");
    }
}

#[test]
fn the_engine_names_no_kind() {
    let mut forbidden: Vec<String> = vec!["AnyStore".into()];
    for store in registered("store/mod.rs", "stores") {
        forbidden.push(format!("store::{store}"));
    }
    for notifier in registered("notify/mod.rs", "notifiers") {
        forbidden.push(format!("notify::{notifier}"));
    }
    for format in registered("deliver/format/mod.rs", "formats") {
        forbidden.push(format!("format::{format}"));
        forbidden.push(format!("Format::{}", format[..1].to_uppercase() + &format[1..]));
    }
    let forbidden: Vec<&str> = forbidden.iter().map(String::as_str).collect();
    never("engine", &forbidden, "the engine is generic: it never names a store backend, a notifier or a format");
}

#[test]
fn a_backend_never_reaches_into_another_or_into_configuration_internals() {
    let stores = registered("store/mod.rs", "stores");
    assert!(stores.len() >= 2, "{stores:?}");
    for store in &stores {
        let dir = if Path::new(SRC).join(format!("store/{store}")).is_dir() {
            format!("store/{store}")
        } else {
            format!("store/{store}.rs")
        };
        let others: Vec<String> = stores
            .iter()
            .filter(|other| *other != store)
            .flat_map(|other| [format!("super::{other}"), format!("store::{other}")])
            .collect();
        let mut forbidden: Vec<&str> = others.iter().map(String::as_str).collect();
        forbidden.extend(["config::validate", "config::raw"]);
        never(&dir, &forbidden, "a backend talks only to its own store and the configuration's public tools");
    }
}

#[test]
fn rotation_asks_the_fleet_through_a_trait() {
    never(
        "rotation",
        &["fleet::", "reqwest", "crate::http"],
        "the rotation protocol asks who holds a version through rotation::protocol::Adoption; it knows no HTTP and no Prometheus",
    );
}

#[test]
fn configuration_never_uses_a_client() {
    let mut forbidden: Vec<String> = vec!["reqwest".into()];
    for store in registered("store/mod.rs", "stores") {
        forbidden.push(format!("store::{store}::"));
    }
    let forbidden: Vec<&str> = forbidden.iter().map(String::as_str).collect();
    let mut found = Vec::new();
    for (path, code) in code("config") {
        for needle in &forbidden {
            if code.contains(needle) {
                found.push(format!("{} uses {needle}", path.strip_prefix(SRC).unwrap().display()));
            }
        }
    }
    assert!(found.is_empty(), "configuration reaches kinds only through their registries:\n{}", found.join("\n"));
}

#[test]
fn control_sees_the_recorder_and_a_narrow_engine_handle() {
    never(
        "control",
        &["engine::Engine", "engine::State", "engine::Seams"],
        "control reaches the engine only through engine::Handle",
    );
}
