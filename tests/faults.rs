//! Faults: whatever goes wrong (a store that fails, an empty or corrupt value, a crash between
//! any two steps of a bundle update, a full tmpfs), the files applications read stay whole and
//! stay the last good ones, and a reader looping over a bundle never sees a partial or mixed
//! set. Real processes, real SIGKILL, real tmpfs.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{World, read, text, version_dirs, wait_for};

/// Edits the file store's metadata the way a damaged or hostile store would look.
fn edit_meta(world: &World, id: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = world.store().join(id).join("secret.json");
    let mut meta: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
    edit(&mut meta);
    common::write(&path, &serde_json::to_string_pretty(&meta).unwrap());
}

#[test]
fn a_failing_store_keeps_the_last_good_files_and_recovers() {
    let world = World::new("poll = \"1s\"\njitter = \"0%\"");
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "good-value");
    let agent = world.agent(&[]);
    wait_for("delivery", Duration::from_secs(10), || world.bundle("app/db").exists());

    let meta = world.store().join("db-password/secret.json");
    let saved = read(&meta);
    common::write(&meta, "{ this is not json");
    agent.wait_log("store read failed; the last good files stay in place", 2);
    assert_eq!(read(world.bundle("app/db")), "good-value");
    wait_for("the error in status", Duration::from_secs(5), || {
        let status = world.status_json();
        status["policies"]["db"]["consecutive_failures"].as_u64() >= Some(2)
    });
    let status = world.status_json();
    let error = status["policies"]["db"]["last_error"].as_str().unwrap();
    assert!(error.contains("cannot parse") && error.contains("secret.json"), "{error}");
    assert_eq!(status["policies"]["db"]["version"], "1", "the delivered version is still shown");

    common::write(&meta, &saved);
    wait_for("recovery", Duration::from_secs(10), || world.status_json()["policies"]["db"]["last_error"].is_null());
    assert_eq!(world.status_json()["policies"]["db"]["consecutive_failures"], 0);
}

#[test]
fn an_empty_value_is_never_delivered() {
    let world = World::new("");
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "good-value");
    assert!(world.sync_once().status.success());

    // Version 2 is empty and made current behind keyturn's back.
    common::write(&world.store().join("db-password/versions/2"), "");
    edit_meta(&world, "db-password", |meta| {
        meta["versions"]["2"] = serde_json::json!({"state": "enabled", "created": "2026-01-01T00:00:00Z", "crc32c": 0});
        meta["aliases"]["current"] = "2".into();
    });
    let out = world.sync_once();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("version 2 of secret \"db-password\" is empty"),
        "{}",
        text(&out)
    );
    assert_eq!(read(world.bundle("app/db")), "good-value");
}

#[test]
fn a_checksum_mismatch_is_never_delivered() {
    let world = World::new("");
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "good-value");
    assert!(world.sync_once().status.success());
    world.put("db-password", "next-value");
    // Flip the stored bytes of version 2 without updating its checksum: bit rot, or tampering.
    common::write(&world.store().join("db-password/versions/2"), "nExt-value");
    let out = world.sync_once();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed its CRC32C check") && stderr.contains("nothing was delivered"), "{stderr}");
    assert_eq!(read(world.bundle("app/db")), "good-value");
}

/// Runs `sync --once` paused at `step` of the bundle update, SIGKILLs it there, and returns.
fn kill_at(world: &World, step: &str) {
    let log = world.disk.path().join(format!("paused-{step}.log"));
    let mut child = world
        .command(&["sync", "--once"])
        .env("KEYTURN_TEST_PAUSE_AT", format!("bundle:{step}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let marker = format!("paused at bundle:{step}");
    wait_for(&marker, Duration::from_secs(10), || read(&log).contains(&marker));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
}

#[test]
fn a_crash_between_any_two_steps_of_a_bundle_update_leaves_whole_files() {
    let steps = ["created", "files-written", "carried", "manifest-written", "linked", "swapped", "cleaned"];
    let committed_from = steps.iter().position(|s| *s == "swapped").unwrap();
    for (index, step) in steps.iter().enumerate() {
        let world = World::new("");
        world.simple_policy("pair", "pair", &[("app/value", "raw"), ("app/value.env", "env")]);
        world.simple_policy("other", "other", &[("app/other", "raw")]);
        world.put("pair", "one");
        world.put("other", "unchanged");
        assert!(world.sync_once().status.success());
        world.put("pair", "two");

        kill_at(&world, step);
        let app = world.bundle("app");
        let want = if index >= committed_from { "two" } else { "one" };
        assert_eq!(read(app.join("value")), want, "after a crash at {step}");
        assert_eq!(read(app.join("value.env")), format!("VALUE={want}\n"), "after a crash at {step}");
        assert_eq!(read(app.join("other")), "unchanged", "after a crash at {step}");

        // The next run finishes the job and removes what the crash left behind.
        let out = world.sync_once();
        assert!(out.status.success(), "{step}: {}", text(&out));
        assert_eq!(read(app.join("value")), "two");
        assert_eq!(read(app.join("other")), "unchanged");
        assert!(version_dirs(&app).len() <= 2, "{step}: {:?}", version_dirs(&app));
        let leftovers: Vec<String> = fs::read_dir(&app)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{step}: {leftovers:?}");
    }
}

/// What a reader saw of a bundle: a generation number, or the reason it was not whole.
fn read_generation(dir: &Path) -> Result<Option<u64>, String> {
    let value = match fs::read_to_string(dir.join("value")) {
        Ok(value) => value,
        // The version directory this reader resolved was removed two swaps later.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let generation = value.strip_prefix("gen-").and_then(|n| n.parse::<u64>().ok());
    generation.map(Some).ok_or_else(|| format!("partial or empty value file: {value:?}"))
}

#[test]
fn a_reader_looping_over_a_bundle_never_sees_a_partial_or_mixed_set() {
    let world = World::new("");
    world.simple_policy("pair", "pair", &[("app/value", "raw"), ("app/value.env", "env")]);
    world.put("pair", "gen-0");
    assert!(world.sync_once().status.success());
    let app = world.bundle("app");

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, reads, app) = (stop.clone(), reads.clone(), app.clone());
        std::thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                // Through the visible names: each file whole.
                if let Some(n) = read_generation(&app)? {
                    let env = fs::read_to_string(app.join("value.env")).map_err(|e| e.to_string())?;
                    let ok = env.strip_prefix("VALUE=gen-").and_then(|r| r.strip_suffix('\n')).is_some();
                    if !ok {
                        return Err(format!("partial env file {env:?} next to gen-{n}"));
                    }
                }
                // Through `..data` resolved once: the whole set from one version.
                let Ok(target) = fs::read_link(app.join("..data")) else { return Err("no ..data".into()) };
                let dir: PathBuf = app.join(target);
                if let Some(n) = read_generation(&dir)? {
                    match fs::read_to_string(dir.join("value.env")) {
                        Ok(env) if env == format!("VALUE=gen-{n}\n") => {}
                        Ok(env) => return Err(format!("mixed set: value gen-{n}, env {env:?}")),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e.to_string()),
                    }
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    for generation in 1..=40 {
        world.put("pair", &format!("gen-{generation}"));
        let out = world.sync_once();
        assert!(out.status.success(), "{}", text(&out));
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap().unwrap();
    assert_eq!(read(app.join("value")), "gen-40");
    assert!(reads.load(Ordering::Relaxed) > 100, "the reader ran {} times", reads.load(Ordering::Relaxed));
}

#[test]
fn a_full_tmpfs_keeps_the_last_good_files() {
    let world = World::new("");
    // The runtime directory is a 256 KiB tmpfs mounted in a private mount namespace, so the
    // test neither needs nor touches a system mount.
    let run = world.disk.path().join("small-tmpfs");
    fs::create_dir_all(&run).unwrap();
    let config = read(world.config()).replace(&world.run_dir().display().to_string(), &run.display().to_string());
    common::write(&world.config(), &config);
    world.simple_policy("pair", "pair", &[("app/value", "raw"), ("app/value.env", "env")]);
    world.put("pair", "first-value");

    let script = r#"
set -eu
mount -t tmpfs -o size=256k,mode=0755 tmpfs "$RUN"
"$BIN" sync --once --config "$CFG" 2>/dev/null
echo "first: $(cat "$RUN/app/value")"
dd if=/dev/zero of="$RUN/filler" bs=4096 2>/dev/null || true
printf '%s' second-value | "$BIN" store put dev pair --config "$CFG" >/dev/null
set +e
"$BIN" sync --once --config "$CFG" 2>"$ERR"
echo "full-exit: $?"
set -e
echo "while-full: $(cat "$RUN/app/value") / $(cat "$RUN/app/value.env")"
echo "entries: $(ls -a "$RUN/app" | tr '\n' ' ')"
rm "$RUN/filler"
"$BIN" sync --once --config "$CFG" 2>/dev/null
echo "after-free: $(cat "$RUN/app/value")"
"#;
    let root = rustix_is_root();
    let mut command = Command::new("unshare");
    command.args(if root { &["-m", "--propagation", "private"][..] } else { &["-rm", "--propagation", "private"][..] });
    let err = world.disk.path().join("full.err");
    let out = command
        .args(["sh", "-c", script])
        .env("RUN", &run)
        .env("BIN", common::BIN)
        .env("CFG", world.config())
        .env("ERR", &err)
        .env_remove("KEYTURN_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout.contains("first: first-value"), "{stdout}");
    assert!(stdout.contains("full-exit: 1"), "{stdout}");
    assert!(stdout.contains("while-full: first-value / VALUE=first-value"), "{stdout}");
    // Only the live version directory: the failed one was removed.
    let entries = stdout.lines().find(|l| l.starts_with("entries:")).unwrap();
    assert_eq!(entries.matches("..2").count(), 1, "{entries}");
    assert!(stdout.contains("after-free: second-value"), "{stdout}");
    let mut errors = String::new();
    fs::File::open(&err).unwrap().read_to_string(&mut errors).unwrap();
    assert!(errors.contains("No space left on device"), "{errors}");
    // The namespace is gone with the process: nothing stays mounted.
    assert!(!run.join("app").exists());
}

fn rustix_is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}
