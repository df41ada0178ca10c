//! The command line as an operator meets it: validation, usage errors, exit codes, and the
//! store commands. Each test runs the real binary in its own scratch world.

mod common;

use common::{World, read, text};

#[test]
fn validate_lists_every_mistake_in_one_run_and_exits_64() {
    let world = World::new("poll = \"often\"\nshutdown_grace = 5\nflavour = \"x\"");
    world.policy("unknown-key", "[secret]\nstore = \"dev\"\nid = \"a\"\nversoin = 2\n[[deliver]]\npath = \"a/x\"\n");
    world.policy("escape", "[secret]\nstore = \"dev\"\nid = \"b\"\n[[deliver]]\npath = \"../../etc/cron.d/x\"\n");
    world.policy("absolute", "[secret]\nstore = \"dev\"\nid = \"c\"\n[[deliver]]\npath = \"/etc/shadow\"\n");
    world.policy("first", "[secret]\nstore = \"dev\"\nid = \"d\"\n[[deliver]]\npath = \"shared/key\"\n");
    world.policy("second", "[secret]\nstore = \"dev\"\nid = \"e\"\n[[deliver]]\npath = \"shared/key\"\n");
    world.policy("no-store", "[secret]\nstore = \"vault\"\nid = \"f\"\n[[deliver]]\npath = \"f/x\"\n");
    world.policy(
        "wrong-type",
        "[secret]\nstore = \"dev\"\nid = \"g\"\nrequired = \"yes\"\n[[deliver]]\npath = \"g/x\"\nformat = \"yaml\"\n",
    );

    let out = world.keyturn(&["validate"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = [
        "keyturn.toml:6: agent.poll: \"often\" is not a duration",
        "keyturn.toml:7: agent: invalid type: integer `5`, expected a string",
        "keyturn.toml:8: agent: unknown field `flavour`",
        "unknown-key.toml:4: secret: unknown field `versoin`",
        "escape.toml:5: deliver[0].path: \"../../etc/cron.d/x\" escapes the runtime directory",
        "absolute.toml:5: deliver[0].path: \"/etc/shadow\" is absolute",
        "second.toml:5: deliver.path: \"shared/key\" is also delivered by policy \"first\"",
        "no-store.toml:2: secret.store: store \"vault\" is not defined; defined stores: \"dev\"",
        "wrong-type.toml:4: secret: invalid type: string \"yes\", expected a boolean",
        "wrong-type.toml:7: deliver[0].format: unknown format \"yaml\"",
    ];
    for line in expected {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
    assert!(stderr.contains("configuration has 10 problems"), "{stderr}");
}

#[test]
fn a_valid_configuration_is_summarised() {
    let world = World::new("");
    world.simple_policy("db", "db-password", &[("app/db", "raw"), ("app/db.env", "env")]);
    let out = world.keyturn(&["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid: 1 policy in 1 bundle, 1 store"), "{}", text(&out));
}

#[test]
fn usage_errors_exit_64_and_help_and_version_exit_0() {
    let world = World::new("");
    for args in [&["frobnicate"][..], &["sync"], &["store", "put", "dev"], &["--log", "info,keyturn=loud", "validate"]]
    {
        let out = world.keyturn(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out));
    }
    let out = world.keyturn(&["sync"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("keyturn sync --once"), "{}", text(&out));

    let help = world.keyturn(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["agent", "sync", "validate", "status", "store"] {
        assert!(help.contains(command), "{help}");
    }
    let version = world.keyturn(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("keyturn {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_missing_config_file_is_a_configuration_error() {
    let world = World::new("");
    let out = std::process::Command::new(common::BIN)
        .args(["validate", "--config"])
        .arg(world.disk.path().join("nope.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml: cannot read"), "{}", text(&out));
}

#[test]
fn the_config_path_comes_from_keyturn_config_when_no_flag_is_given() {
    let world = World::new("");
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    let out =
        std::process::Command::new(common::BIN).arg("validate").env("KEYTURN_CONFIG", world.config()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn store_put_makes_a_new_current_version_and_get_reads_any() {
    let world = World::new("");
    world.put("api-token", "first-value");
    world.put("api-token", "second-value");
    let get = |version: &str| {
        let out = world.keyturn(&["store", "get", "dev", "api-token", "--version", version]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(get("current"), "second-value");
    assert_eq!(get("previous"), "first-value");
    assert_eq!(get("1"), "first-value");
    assert_eq!(get("latest"), "second-value");
    let default = world.keyturn(&["store", "get", "dev", "api-token"]);
    assert_eq!(String::from_utf8_lossy(&default.stdout), "second-value");

    let missing = world.keyturn(&["store", "get", "dev", "api-token", "--version", "9"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("secret \"api-token\" in store \"dev\" has no version 9")
    );
    let no_store = world.keyturn(&["store", "get", "prod", "api-token"]);
    assert_eq!(no_store.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&no_store.stderr).contains("no store named \"prod\""), "{}", text(&no_store));
    let bad_id = world.keyturn(&["store", "get", "dev", "../../etc/passwd"]);
    assert_eq!(bad_id.status.code(), Some(64), "{}", text(&bad_id));

    // The store's own files are private.
    assert_eq!(common::mode(world.store()), 0o700);
    assert_eq!(common::mode(world.store().join("api-token/versions/2")), 0o600);
    assert!(read(world.store().join("api-token/secret.json")).contains("\"current\": \"2\""));
}

#[test]
fn store_put_refuses_an_empty_value() {
    let world = World::new("");
    let out = world.command(&["store", "put", "dev", "x"]).stdin(std::process::Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"), "{}", text(&out));
}

#[test]
fn status_before_any_run_says_so() {
    let world = World::new("");
    let out = world.keyturn(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no status yet"), "{}", text(&out));
}

#[test]
fn a_runtime_directory_on_disk_is_refused_unless_allowed() {
    let world = World::new("");
    let on_disk = world.disk.path().join("run");
    let config =
        common::read(world.config()).replace(&world.run_dir().display().to_string(), &on_disk.display().to_string());
    common::write(&world.config(), &config);
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "v1");

    let out = world.sync_once();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("runtime directory {} is on", on_disk.display())), "{stderr}");
    assert!(stderr.contains("not tmpfs or ramfs") && stderr.contains("allow_persistent = true"), "{stderr}");
    assert!(!on_disk.join("app").exists());

    common::write(&world.config(), &config.replace("[agent]\n", "[agent]\nallow_persistent = true\n"));
    let out = world.sync_once();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(read(on_disk.join("app/db")), "v1");
}

#[test]
fn the_repository_policies_validate() {
    let world = World::new("");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = common::read(world.config())
        .replace("policies = \"policies\"", &format!("policies = \"{}\"", repo.join("policies").display()))
        .replace("[stores.dev]", "[stores.fleet]");
    common::write(&world.config(), &config);
    let out = world.keyturn(&["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn the_examples_validate() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for example in [
        "examples/quickstart/keyturn.toml",
        "examples/gcp/keyturn.toml",
        "examples/gcp/keyturn-emulator.toml",
        "examples/ci/keyturn.toml",
    ] {
        let out = std::process::Command::new(common::BIN)
            .arg("validate")
            .arg("--config")
            .arg(repo.join(example))
            .env_remove("KEYTURN_CONFIG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{example}: {}", text(&out));
    }
}

/// The README's first command, end to end: the quickstart's own files (agent file, seed and
/// policies), with only its fixed directories moved into this test's temp dirs, deliver every
/// bundle the README shows, and a second run writes nothing.
#[test]
fn the_quickstart_delivers_what_the_readme_shows() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
    let disk = tempfile::tempdir().unwrap();
    let shm = tempfile::Builder::new().prefix("keyturn-test-").tempdir_in("/dev/shm").unwrap();
    let runtime = shm.path().join("keyturn-quickstart");
    let agent = read(repo.join("keyturn.toml"));
    let moved = agent
        .replace("/dev/shm/keyturn-quickstart", &runtime.display().to_string())
        .replace("/var/tmp/keyturn-quickstart", &disk.path().join("var").display().to_string());
    assert_ne!(moved, agent, "the quickstart no longer uses the directories this test moves");
    let config = disk.path().join("keyturn.toml");
    common::write(&config, &moved);
    common::write(&disk.path().join("seed.toml"), &read(repo.join("seed.toml")));
    std::fs::create_dir(disk.path().join("policies")).unwrap();
    for policy in std::fs::read_dir(repo.join("policies")).unwrap() {
        let policy = policy.unwrap().path();
        common::write(&disk.path().join("policies").join(policy.file_name().unwrap()), &read(&policy));
    }

    let sync = || {
        std::process::Command::new(common::BIN)
            .args(["sync", "--once", "--config"])
            .arg(&config)
            .env_remove("KEYTURN_CONFIG")
            .output()
            .unwrap()
    };
    let first = sync();
    assert!(first.status.success(), "{}", text(&first));
    for file in [
        "app/api.env",
        "app/api.json",
        "app/db-password",
        "app/db.env",
        "web/jwks.json",
        "web/session.key",
        "web/signing.pem",
    ] {
        let path = runtime.join(file);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{file}: {e}\n{}", text(&first)));
        assert!(meta.len() > 0, "{file} is empty");
    }
    assert!(read(runtime.join("web/signing.pem")).starts_with("-----BEGIN PRIVATE KEY-----"));
    let jwks: serde_json::Value = serde_json::from_str(&read(runtime.join("web/jwks.json"))).unwrap();
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1), "one key before the first rotation: {jwks}");

    let again = sync();
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("delivered=0"), "a second run writes nothing: {}", text(&again));
}
