//! The release build, made once for every test that needs it, by the container recipe's own
//! build steps: `examples/kubernetes/Dockerfile`'s build stage, run without a container engine
//! in `target/container-recipe/` (its WORKDIR): the files its `COPY` lines name, copied; its
//! `RUN` lines, run. The Debian package is made from that binary by cargo-deb
//! ([`deb`]), and the real-systemd tier installs both. So one release build serves the recipe
//! test, the package and the systemd tier; a later call, in this process or another, finds it
//! fresh (files whose bytes did not change keep their times, so cargo rebuilds nothing).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::text;

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
pub const RECIPE: &str = "examples/kubernetes/Dockerfile";

/// One stage of the recipe: `FROM IMAGE [AS NAME]` and what follows it.
#[derive(Debug, Clone, Default)]
pub struct Stage {
    pub from: String,
    pub name: Option<String>,
    pub workdir: Option<String>,
    /// `COPY [--from=STAGE] SOURCE... DEST`: (from, sources, dest).
    pub copies: Vec<(Option<String>, Vec<String>, String)>,
    /// `RUN` commands (shell form).
    pub runs: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    /// `ENTRYPOINT` and `CMD`, exec form (JSON arrays).
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub labels: Vec<(String, String)>,
}

/// The recipe's stages, in order. Instructions it does not know fail the test: teach it
/// here rather than let a step go unchecked.
pub fn stages() -> Vec<Stage> {
    let text = super::read(Path::new(REPO).join(RECIPE));
    // Join continuation lines, drop comments and blank lines.
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    let json = |rest: &str| -> Vec<String> {
        serde_json::from_str(rest).unwrap_or_else(|e| panic!("{RECIPE}: {rest:?} is not the exec (JSON) form: {e}"))
    };
    for line in lines {
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let rest = rest.trim();
        if instruction.eq_ignore_ascii_case("FROM") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("AS") => Some(name.to_string()),
                [_] => None,
                _ => panic!("{RECIPE}: FROM {rest}: expected IMAGE [AS NAME]"),
            };
            stages.push(Stage { from: words[0].to_string(), name, ..Stage::default() });
            continue;
        }
        let stage = stages.last_mut().unwrap_or_else(|| panic!("{RECIPE}: {instruction} before FROM"));
        match instruction.to_ascii_uppercase().as_str() {
            "WORKDIR" => stage.workdir = Some(rest.to_string()),
            "RUN" => stage.runs.push(rest.to_string()),
            "USER" => stage.user = Some(rest.to_string()),
            "ENTRYPOINT" => stage.entrypoint = json(rest),
            "CMD" => stage.cmd = json(rest),
            "ENV" | "LABEL" => {
                for pair in rest.split_whitespace() {
                    let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("{RECIPE}: {line}: KEY=VALUE"));
                    let value = value.trim_matches('"').to_string();
                    if instruction.eq_ignore_ascii_case("ENV") {
                        stage.env.push((key.to_string(), value));
                    } else {
                        stage.labels.push((key.to_string(), value));
                    }
                }
            }
            "COPY" => {
                let mut words: Vec<String> = rest.split_whitespace().map(String::from).collect();
                let mut from = None;
                while words.first().is_some_and(|w| w.starts_with("--")) {
                    let flag = words.remove(0);
                    match flag.strip_prefix("--from=") {
                        Some(stage) => from = Some(stage.to_string()),
                        None => panic!("{RECIPE}: COPY {flag}: the test knows only --from="),
                    }
                }
                let dest = words.pop().unwrap_or_else(|| panic!("{RECIPE}: {line}: COPY SOURCE... DEST"));
                assert!(!words.is_empty(), "{RECIPE}: {line}: COPY SOURCE... DEST");
                stage.copies.push((from, words, dest));
            }
            other => panic!("{RECIPE}: the test does not know the instruction {other}; teach tests/common/release.rs"),
        }
    }
    stages
}

/// The stage that builds the binary: the one the last stage copies it from.
pub fn build_stage(stages: &[Stage]) -> &Stage {
    let runtime = stages.last().expect("a stage");
    let from =
        runtime.copies.iter().find_map(|(from, _, _)| from.clone()).expect("the last stage copies from a build stage");
    stages.iter().find(|s| s.name.as_deref() == Some(from.as_str())).unwrap_or_else(|| panic!("no stage named {from}"))
}

/// The release binary, built by the recipe's build steps (once; see the module doc).
pub fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let lock = fs::File::create(Path::new(REPO).join("target/container-recipe.lock")).unwrap();
            lock.lock().unwrap();
            let stages = stages();
            let stage = build_stage(&stages);
            let workdir = stage.workdir.clone().expect("the build stage sets WORKDIR");
            let here = workdir_here(&workdir);
            sync_copies(stage, &here);
            for run in &stage.runs {
                let started = std::time::Instant::now();
                let mut command = Command::new("sh");
                command.args(["-c", run]).current_dir(&here);
                command.envs(stage.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                // The engine's build has none of these; a developer's shell might.
                for variable in ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"] {
                    command.env_remove(variable);
                }
                let out = command.output().unwrap();
                assert!(out.status.success(), "{RECIPE}: RUN {run} failed in {}:\n{}", here.display(), text(&out));
                eprintln!("{RECIPE}: RUN {run}: {:.1?}", started.elapsed());
            }
            let runtime = stages.last().unwrap();
            let (_, sources, _) = runtime.copies.iter().find(|(from, _, _)| from.is_some()).unwrap();
            let built = if sources[0].starts_with('/') { workdir_here(&sources[0]) } else { here.join(&sources[0]) };
            assert!(built.exists(), "{RECIPE}: the build stage made no {}", built.display());
            built
        })
        .clone()
}

/// The Debian package of [`binary`], made by cargo-deb with `--deb-revision REVISION` (two
/// revisions make an upgrade). Returns its path.
pub fn deb(revision: &str) -> PathBuf {
    let binary = binary();
    let target_dir = binary.parent().and_then(Path::parent).unwrap().to_path_buf();
    let out_dir = Path::new(REPO).join("target/container-recipe/debian");
    fs::create_dir_all(&out_dir).unwrap();
    let lock = fs::File::create(Path::new(REPO).join("target/container-recipe.lock")).unwrap();
    lock.lock().unwrap();
    let out = Command::new("cargo")
        .args(["deb", "--no-build", "--locked", "--fast", "--deb-revision", revision, "--output"])
        .arg(&out_dir)
        .current_dir(REPO)
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("no such command: `deb`"),
        "cargo-deb is not installed: scripts/test.sh installs it (cargo install --locked cargo-deb)"
    );
    assert!(out.status.success(), "cargo deb failed:\n{}", text(&out));
    // It prints the package's path last.
    let path = String::from_utf8_lossy(&out.stdout).lines().last().map(|l| PathBuf::from(l.trim())).unwrap_or_default();
    assert!(
        path.extension().is_some_and(|e| e == "deb") && path.exists(),
        "cargo deb made no package:\n{}",
        text(&out)
    );
    path
}

/// An absolute path of the build stage (`/src/x`) as a path under `target/container-recipe/`.
fn workdir_here(path: &str) -> PathBuf {
    Path::new(REPO).join("target/container-recipe").join(path.trim_start_matches('/'))
}

/// Makes `here` hold exactly what the stage's `COPY` lines copy (besides `target/`): files
/// whose bytes are already there are left alone, so cargo sees them unchanged.
fn sync_copies(stage: &Stage, here: &Path) {
    let mut wanted = BTreeSet::new();
    for (from, sources, dest) in &stage.copies {
        assert!(from.is_none(), "the build stage copies only from the build context");
        let dest = Path::new(dest);
        let dest = if dest.is_absolute() { workdir_here(&dest.to_string_lossy()) } else { here.join(dest) };
        for source in sources {
            let source_path = Path::new(REPO).join(source);
            assert!(source_path.exists(), "{RECIPE}: COPY {source}: no such file in the repository");
            if source_path.is_dir() {
                for file in super::walk(&source_path) {
                    let relative = file.strip_prefix(&source_path).unwrap();
                    wanted.insert(place(&file, &dest.join(relative)));
                }
            } else {
                // Several sources, or a destination ending in `/`: into that directory.
                let target = if sources.len() > 1 || dest.to_string_lossy().ends_with('/') || dest == here {
                    dest.join(source_path.file_name().unwrap())
                } else {
                    dest.clone()
                };
                wanted.insert(place(&source_path, &target));
            }
        }
    }
    let mut stale = Vec::new();
    for entry in fs::read_dir(here).unwrap().flatten() {
        if entry.file_name() != "target" {
            stale.extend(if entry.path().is_dir() { super::walk(&entry.path()) } else { vec![entry.path()] });
        }
    }
    for file in stale.into_iter().filter(|f| !wanted.contains(f)) {
        fs::remove_file(&file).unwrap();
    }
}

/// Copies `from` to `to` unless `to` already has its bytes; returns `to`.
fn place(from: &Path, to: &Path) -> PathBuf {
    let bytes = fs::read(from).unwrap();
    if fs::read(to).ok().as_deref() != Some(bytes.as_slice()) {
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::io::Write::write_all(&mut fs::File::create(to).unwrap(), &bytes).unwrap();
    }
    let mode = fs::metadata(from).unwrap().permissions();
    fs::set_permissions(to, mode).unwrap();
    to.to_path_buf()
}
