//! The command line as an operator meets it: validation, usage errors, exit codes, and the
//! store commands. Each test runs the real binary in its own scratch world.

mod common;

use common::{World, read, text, wait_for};

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
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.starts_with(&format!("keyturn {} (commit ", env!("CARGO_PKG_VERSION"))), "{version}");
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

/// `keyturn validate ARGS` with no agent file around (as on a CI runner).
fn validate(args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::BIN)
        .arg("validate")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("KEYTURN_CONFIG", "/nonexistent/keyturn.toml")
        // The quickstart delivers under the user's own runtime directory.
        .env("XDG_RUNTIME_DIR", "/run/user/1000")
        .env("HOME", "/home/someone")
        .output()
        .unwrap()
}

/// The repository's policies, as CI checks them: no agent file, the store they name declared,
/// the node's group `api` absent (listed as left to the node).
#[test]
fn the_repository_policies_validate() {
    let out = validate(&["--portable", "--json", "--policies", "policies", "--store", "fleet=gcp"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["valid"].as_bool(), report["policies"].as_u64()), (Some(true), Some(2)), "{report}");
    let not_checked = report["not_checked"].as_array().unwrap();
    assert!(
        not_checked.iter().all(|p| p["key"].as_str().unwrap().ends_with(".group")
            && p["message"].as_str().unwrap().contains("group \"api\" is not on this machine")),
        "{report}"
    );
    // Without --portable the node's checks are made, and fail where the node's group is missing.
    if common::group_exists("api") {
        return;
    }
    let out = validate(&["--policies", "policies", "--store", "fleet"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("group \"api\" does not exist on this machine"));
}

/// A broken copy of the policies fails with every problem as structured data: file, line, key
/// and message, and what was not checked apart.
#[test]
fn portable_validation_fails_a_broken_copy_with_structured_problems() {
    let dir = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for name in ["api-db.toml", "api-session.toml"] {
        common::write(&dir.path().join(name), &read(repo.join(name)));
    }
    let broken =
        read(repo.join("api-db.toml")).replace("store = \"fleet\"", "store = \"flet\"").replace("0440", "0666");
    common::write(&dir.path().join("api-db.toml"), &broken);
    let dir_arg = dir.path().display().to_string();
    let out = validate(&["--portable", "--json", "--policies", &dir_arg, "--store", "fleet=gcp"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    let problems: Vec<(String, u64, String)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let file = p["file"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
            (file, p["line"].as_u64().unwrap(), p["key"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        problems,
        [
            ("api-db.toml".to_string(), 4, "secret.store".to_string()),
            ("api-db.toml".to_string(), 9, "deliver[0].mode".to_string()),
            ("api-db.toml".to_string(), 16, "deliver[1].mode".to_string()),
        ],
        "{report}"
    );
    assert!(report["problems"][0]["message"].as_str().unwrap().contains("store \"flet\" is not defined"));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "keyturn: configuration has 3 problems");
}

#[test]
fn the_examples_validate() {
    for example in [
        "examples/quickstart/keyturn.toml",
        "examples/fastapi/keyturn.toml",
        "examples/gcp/keyturn.toml",
        "examples/gcp/keyturn-emulator.toml",
    ] {
        let out = validate(&["--config", example]);
        assert_eq!(out.status.code(), Some(0), "{example}: {}", text(&out));
        let out = validate(&["--portable", "--json", "--config", example]);
        assert_eq!(out.status.code(), Some(0), "{example}: {}", text(&out));
    }
    // The CI job's agent file runs on a CI runner, not on a node: the repository's policies
    // name the nodes' application groups, which a runner (or this machine) does not have.
    let out = validate(&["--portable", "--json", "--config", "examples/ci/keyturn.toml"]);
    assert_eq!(out.status.code(), Some(0), "examples/ci/keyturn.toml: {}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["not_checked"].as_array().unwrap().iter().all(|p| p["key"].as_str().unwrap().ends_with(".group")),
        "{report}"
    );
}

/// The README's first command, end to end: the quickstart's own files (agent file, seed and
/// policies; its /dev/shm directory moved into this test's own, and `HOME` a temp dir), deliver
/// every bundle the README shows, and a second run writes nothing.
#[test]
fn the_quickstart_delivers_what_the_readme_shows() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
    let home = tempfile::tempdir().unwrap();
    let shm = tempfile::Builder::new().prefix("keyturn-test-").tempdir_in("/dev/shm").unwrap();
    let runtime = shm.path().join("keyturn-quickstart");
    let example = read(repo.join("keyturn.toml"));
    assert!(example.contains("runtime_dir = \"/dev/shm/keyturn-quickstart\""), "the README says /dev/shm");
    // Its own copy, beside copies of its seed and policies (relative paths resolve there).
    let copy = home.path().join("quickstart");
    let config = copy.join("keyturn.toml");
    common::write(&config, &example.replace("/dev/shm/keyturn-quickstart", &runtime.display().to_string()));
    for file in common::walk(&repo).into_iter().filter(|f| f.extension().is_some_and(|e| e == "toml")) {
        let relative = file.strip_prefix(&repo).unwrap();
        if relative != std::path::Path::new("keyturn.toml") {
            common::write(&copy.join(relative), &read(&file));
        }
    }

    let sync = || {
        std::process::Command::new(common::BIN)
            .args(["sync", "--once", "--config"])
            .arg(&config)
            .env_remove("KEYTURN_CONFIG")
            .env("HOME", home.path())
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

/// Errors that say what to do next.
#[test]
fn errors_name_the_next_step() {
    // No agent file at the default path: say how to name one.
    let out = std::process::Command::new(common::BIN).arg("status").env_remove("KEYTURN_CONFIG").output().unwrap();
    if !std::path::Path::new("/etc/keyturn/keyturn.toml").exists() {
        assert_eq!(out.status.code(), Some(64), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("/etc/keyturn/keyturn.toml: cannot read")
                && stderr.contains("--config PATH or KEYTURN_CONFIG")
        );
    }

    // A credentials file that is not there is found by `validate`, which names it.
    let world = World::new("");
    world
        .add_stores("[stores.edge]\nkind = \"gcp\"\nproject = \"acme-edge\"\ncredentials = \"/nonexistent/sa.json\"\n");
    let out = world.keyturn(&["validate"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stores.edge.credentials: cannot read /nonexistent/sa.json: No such file"), "{stderr}");
    let out = world.keyturn(&["validate", "--portable", "--json"]);
    assert_eq!(out.status.code(), Some(0), "on another machine it is left to the node: {}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["not_checked"][0]["key"], "stores.edge.credentials", "{report}");
}

/// A user who may neither use the control socket nor read the status file is told both, and
/// what would let it in.
#[test]
fn status_for_a_user_the_agent_does_not_serve_says_why_and_what_to_do() {
    if !common::is_root() {
        return;
    }
    let world = World::new("poll = \"1s\"");
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "v1");
    // Everyone may reach the files' directories, so only the socket's and the state's own modes
    // keep nobody out.
    for dir in [world.disk.path(), world.run_dir()] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let _agent = world.agent(&[]);
    let socket = world.run_dir().join(".keyturn.sock");
    common::wait_for("the control socket", std::time::Duration::from_secs(10), || socket.exists());
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", common::BIN, "status", "--config"])
        .arg(world.config())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot use the agent's control socket {}", socket.display())), "{stderr}");
    assert!(stderr.contains("[control] allow_users") && stderr.contains("status.json"), "{stderr}");
}

/// `status` exits 1 while a required policy is failing, so a script or probe can rely on it.
#[test]
fn status_exits_1_while_a_required_policy_fails() {
    let world = World::new("");
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "v1");
    assert!(world.sync_once().status.success());
    let out = world.keyturn(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().nth(1).unwrap().contains("NEXT ROTATION"), "{table}");
    // The file store has no clock but this node's: nothing to measure, and said so.
    assert!(table.contains("STORE  CLOCK\ndev    this node's own clock (a local store has no other)\n"), "{table}");
    world.simple_policy("api", "missing", &[("api/key", "raw")]);
    assert_eq!(world.sync_once().status.code(), Some(1));
    let out = world.keyturn(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("required policies are failing: api"), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["policies"]["api"]["last_error"].as_str().unwrap().contains("does not exist"), "{status}");
    assert_eq!(status["stores"]["dev"], serde_json::json!({"clock": "node"}), "{status}");
}

/// With `--log-format json`, every line on standard error is JSON: log lines, configuration
/// problems (one each, with file, line and key), and the final error.
#[test]
fn json_mode_writes_only_json_lines() {
    let world = World::new("");
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.policy("broken", "[secret]\nstore = \"nowhere\"\nid = \"x\"\n[[deliver]]\npath = \"b/x\"\n");
    let out = world.keyturn(&["validate", "--log-format", "json"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let problem = lines.iter().find(|l| l["message"] == "configuration problem").expect("a problem line");
    assert_eq!((problem["key"].as_str(), problem["line"].as_u64()), (Some("secret.store"), Some(2)), "{problem}");
    assert!(lines.last().unwrap()["message"].as_str().unwrap().contains("configuration has 1 problem"));

    std::fs::remove_file(world.policies().join("broken.toml")).unwrap();
    world.simple_policy("api", "missing", &[("api/key", "raw")]);
    world.put("db-password", "v1");
    let out = world.keyturn(&["sync", "--once", "--json", "--log-format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((summary["delivered"].as_u64(), summary["failed"][0].as_str()), (Some(1), Some("api")), "{summary}");
}

#[test]
fn unknown_log_levels_are_refused() {
    let world = World::new("");
    for level in ["warning", "info,keyturn=loud"] {
        let out = world.keyturn(&["--log", level, "validate"]);
        assert_eq!(out.status.code(), Some(64), "{level}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("is not a level"), "{}", text(&out));
    }
    let out = world.keyturn(&["--log", "warn", "validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn completions_a_manual_page_and_a_version_that_names_its_commit() {
    let world = World::new("");
    let out = world.keyturn(&["completions", "bash"]);
    assert!(out.status.success(), "{}", text(&out));
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("complete -F") && script.contains("rotate") && script.contains("--revoke"), "{script}");
    let out = world.keyturn(&["completions", "zsh"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("#compdef keyturn"));
    let out = world.keyturn(&["man"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && page.contains(".TH keyturn 1"), "{page}");
    assert!(page.contains("keyturn\\-validate(1)") && page.contains("KEYTURN_CONFIG"), "{page}");
    let out = world.keyturn(&["man", "rotate"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && page.contains(".TH keyturn-rotate 1") && page.contains("revoke"), "{page}");
    assert_eq!(world.keyturn(&["man", "frobnicate"]).status.code(), Some(64));
    let out = world.keyturn(&["--version"]);
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.contains("(commit ") && version.contains("stores: file, gcp"), "{version}");
}

/// `store put` does not wait silently on a terminal, and shows nothing as typed unless asked.
#[test]
fn store_put_refuses_a_terminal_unless_asked() {
    let world = World::new("");
    // `script` gives the command a terminal on standard input.
    let command = format!("{} store put dev db --config {} </dev/tty", common::BIN, world.config().display());
    let out = std::process::Command::new("script").args(["-qec", &command, "/dev/null"]).output().unwrap();
    let output = String::from_utf8_lossy(&out.stdout);
    assert!(output.contains("standard input is a terminal") && output.contains("--from-tty"), "{}", text(&out));
    assert!(!world.store().join("db").exists(), "nothing was stored");
}

/// `store list` and `store versions` say what a store holds: names, states, aliases, times,
/// never a value.
#[test]
fn store_list_and_versions_show_names_states_and_aliases() {
    let world = World::new("");
    world.put("db-password", "FIXTURE-v1");
    world.put("db-password", "FIXTURE-v2");
    world.put("api-key", "FIXTURE-k");
    let out = world.keyturn(&["store", "list", "dev"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "api-key\ndb-password\n", "{}", text(&out));
    let out = world.keyturn(&["store", "versions", "dev", "db-password", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let versions = listed["versions"].as_array().unwrap();
    assert_eq!(versions[0]["version"], "2");
    assert_eq!(versions[0]["aliases"], serde_json::json!(["current"]));
    assert_eq!((versions[1]["version"].as_str(), versions[1]["state"].as_str()), (Some("1"), Some("enabled")));
    assert_eq!(versions[1]["aliases"], serde_json::json!(["previous"]));
    assert!(versions[0]["created"].as_str().unwrap().ends_with('Z'));
    let table = world.keyturn(&["store", "versions", "dev", "db-password"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("VERSION") && table.contains("current") && table.contains("enabled"), "{table}");
    for out in [&listed.to_string(), &table.to_string()] {
        assert!(!out.contains("FIXTURE"), "no value: {out}");
    }
    let out = world.keyturn(&["store", "put", "dev", "x", "--json"]);
    assert_eq!(out.status.code(), Some(64), "an empty value is refused: {}", text(&out));
}

/// The examples a person runs on one machine: the quickstart, the FastAPI walkthrough, and the
/// Secret Manager example against the emulator. (`examples/gcp/keyturn.toml` is a node's own
/// agent file, with the paths of an installed agent.)
const RUNNABLE_EXAMPLES: &[&str] =
    &["examples/quickstart/keyturn.toml", "examples/fastapi/keyturn.toml", "examples/gcp/keyturn-emulator.toml"];

/// Every directory and port an example's agent file names.
fn example_places(example: &str) -> Vec<String> {
    let text = read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(example));
    let file: toml::Table = toml::from_str(&text).unwrap();
    let agent = file["agent"].as_table().unwrap();
    let mut places: Vec<String> =
        ["runtime_dir", "state_dir"].iter().map(|k| agent[*k].as_str().unwrap().to_string()).collect();
    for store in file["stores"].as_table().unwrap().values() {
        if let Some(dir) = store.get("dir") {
            places.push(dir.as_str().unwrap().to_string());
        }
    }
    let listen = file.get("admin").and_then(|a| a.get("listen")).and_then(|l| l.as_str()).unwrap_or("127.0.0.1:9464");
    places.push(format!("port {}", listen.rsplit(':').next().unwrap()));
    places
}

/// Two examples never share a directory or a port, so any of them run side by side.
#[test]
fn examples_have_paths_and_ports_of_their_own() {
    let mut seen: std::collections::BTreeMap<String, &str> = std::collections::BTreeMap::new();
    for example in RUNNABLE_EXAMPLES {
        for place in example_places(example) {
            let inside = seen.iter().find(|(other, _)| {
                place == **other || place.starts_with(&format!("{other}/")) || other.starts_with(&format!("{place}/"))
            });
            assert!(inside.is_none(), "{example} and {} both use {place}", inside.unwrap().1);
            seen.insert(place, example);
        }
    }
    assert!(seen.keys().all(|p| p != "port 9464"), "the default port stays free for an installed agent: {seen:?}");
}

/// The quickstart and the FastAPI walkthrough run at the same time: each delivers its bundles
/// and answers on its own admin port. (Their directories move into this test's temp dirs; the
/// ports are the examples' own.)
#[test]
fn two_examples_run_side_by_side() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shm = tempfile::Builder::new().prefix("keyturn-test-").tempdir_in("/dev/shm").unwrap();
    let disk = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for (name, bundle) in [("quickstart", "app/db-password"), ("fastapi", "api/jwks.json")] {
        let example = repo.join("examples").join(name);
        let home = disk.path().join(name);
        std::fs::create_dir_all(home.join("policies")).unwrap();
        let moved = read(example.join("keyturn.toml"))
            .replace(&format!("/dev/shm/keyturn-{name}"), &shm.path().join(name).display().to_string())
            .replace(&format!("/var/tmp/keyturn-{name}"), &home.join("var").display().to_string());
        common::write(&home.join("keyturn.toml"), &moved);
        for entry in std::fs::read_dir(&example).unwrap().chain(std::fs::read_dir(example.join("policies")).unwrap()) {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(&example).unwrap();
            if path.extension().is_some_and(|e| e == "toml") && relative != std::path::Path::new("keyturn.toml") {
                common::write(
                    &home.join(relative),
                    &read(&path).replace("/var/tmp/keyturn-", &format!("{}/", home.display())),
                );
            }
        }
        let log = std::fs::File::create(home.join("agent.log")).unwrap();
        let child = std::process::Command::new(common::BIN)
            .args(["agent", "--config"])
            .arg(home.join("keyturn.toml"))
            .env_remove("KEYTURN_CONFIG")
            // The quickstart keeps its store and state under HOME.
            .env("HOME", &home)
            .stderr(log)
            .spawn()
            .unwrap();
        agents.push(common::Agent { child: Some(child), log: home.join("agent.log") });
        let file = shm.path().join(name).join(bundle);
        wait_for(&format!("{name}: {bundle}"), std::time::Duration::from_secs(20), || file.exists());
    }
    for (agent, port) in agents.iter().zip(["9471", "9472"]) {
        let (code, body) = common::http::request(&format!("127.0.0.1:{port}"), "GET", "/readyz", None)
            .unwrap_or_else(|e| panic!("port {port}: {e}\n{}", agent.log_text()));
        assert_eq!((code, body.trim()), (200, "ready"), "{}", agent.log_text());
    }
}

/// Every `keyturn` command line in the README and the examples' and deployments' docs parses
/// with the CLI as it is, so the docs cannot drift from the flags.
#[test]
fn the_commands_in_the_docs_parse() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = [
        "README.md",
        "examples/fastapi/README.md",
        "examples/kubernetes/README.md",
        "systemd/README.md",
        "policies/README.md",
    ];
    let mut checked = 0;
    for doc in docs {
        let text = read(repo.join(doc));
        let mut in_code = false;
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            let Some(args) = in_code.then(|| command_in(line)).flatten() else { continue };
            let parsed = keyturn::cli::parse_from(std::iter::once("keyturn".to_string()).chain(args.clone()));
            assert!(parsed.is_ok(), "{doc}:{}: `keyturn {}`: {}", number + 1, args.join(" "), parsed.unwrap_err());
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} commands found: the extraction is broken");
}

/// The arguments of a `keyturn` command on a shell line (`keyturn ...`, `$ keyturn ...`,
/// `cargo run --release -- ...`, after a pipe too), up to a redirection, pipe or comment.
fn command_in(line: &str) -> Option<Vec<String>> {
    let line = line.trim().trim_start_matches("$ ");
    let rest = line.split(" | ").find_map(|part| {
        let part = part.trim();
        part.strip_prefix("keyturn ")
            .or_else(|| part.strip_prefix("cargo run --release -- "))
            .or_else(|| part.strip_prefix("cargo run -- "))
    })?;
    let mut words = Vec::new();
    let (mut word, mut quote, mut started) = (String::new(), None, false);
    for c in rest.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, '#' | '|' | '>' | '<' | ';' | '&') if word.is_empty() => break,
            (None, ' ') => {
                if started {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            (None, '\\') => {}
            (None, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    Some(words)
}
