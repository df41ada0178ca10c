//! What applications get: files rendered from templates over several secrets, and files and
//! directories owned by the users and groups the policies name.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{World, read, text};

fn template_policy(world: &World, template: &str) {
    world.policy(
        "app",
        &format!(
            "[secret]\nstore = \"dev\"\nid = \"db-credentials\"\n\n[secrets.api_token]\nstore = \"dev\"\nid = \"api-token\"\n\n\
             [[deliver]]\npath = \"app/settings.env\"\nformat = \"template\"\ntemplate = \"\"\"\n{template}\"\"\"\n"
        ),
    );
}

#[test]
fn a_template_renders_several_secrets_and_follows_each_of_them() {
    let world = World::new("");
    template_policy(
        &world,
        "# rendered by keyturn for {{ policy }} on {{ node }}\n{% set db = secret | fromjson %}\
         DATABASE_URL=postgres://{{ db.user }}:{{ db.password }}@db.internal/app\nAPI_TOKEN={{ secrets.api_token }}\n",
    );
    world.put("db-credentials", r#"{"user": "app", "password": "pw-1"}"#);
    world.put("api-token", "token-1");
    let out = world.sync_once();
    assert!(out.status.success(), "{}", text(&out));
    let settings = world.bundle("app/settings.env");
    assert_eq!(
        read(&settings),
        "# rendered by keyturn for app on test-node\nDATABASE_URL=postgres://app:pw-1@db.internal/app\nAPI_TOKEN=token-1\n"
    );

    // Only the template's second secret changes: the file is rendered again.
    world.put("api-token", "token-2");
    assert!(world.sync_once().status.success());
    assert!(read(&settings).ends_with("API_TOKEN=token-2\n"), "{}", read(&settings));
    // Nothing changed: nothing is written (the version directory stays the same).
    let before = common::version_dirs(&world.bundle("app"));
    assert!(world.sync_once().status.success());
    assert_eq!(common::version_dirs(&world.bundle("app")), before);
}

#[test]
fn validate_reports_an_undefined_name_and_a_syntax_error_with_their_lines() {
    let world = World::new("");
    template_policy(&world, "API_TOKEN={{ secrets.api_token }}\nPASSWORD={{ secrets.password }}\n");
    world.policy(
        "broken",
        "[secret]\nstore = \"dev\"\nid = \"x\"\n\n[[deliver]]\npath = \"broken/file\"\nformat = \"template\"\ntemplate = \"\"\"\nline one\n{% if secret %}\nno end\n\"\"\"\n",
    );
    world.policy(
        "nothing",
        "[secret]\nstore = \"dev\"\nid = \"y\"\n[[deliver]]\npath = \"n/file\"\nformat = \"template\"\n",
    );
    let out = world.keyturn(&["validate"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        // The policy file's own line of the template text, not the template's.
        "app.toml:13: deliver[0].template: template uses {{ secrets.password }}, which is not defined; defined: secret, node, policy, version, secrets.api_token",
        // minijinja places the error at the block left open.
        "broken.toml:10: deliver[0].template: template syntax error: unexpected end of input, expected end of block",
        "nothing.toml:6: deliver[0].format: \"template\" needs template =",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in\n{stderr}");
    }
}

#[test]
fn files_and_directories_get_the_owner_group_and_mode_of_their_policy() {
    assert!(
        rustix_uid() == 0,
        "this test checks chown and runs as root (scripts/test.sh runs as root in CI); it cannot prove ownership otherwise"
    );
    let world = World::new("");
    // A bundle whose files all name one group: its directories belong to that group, 0750.
    world.policy(
        "shared",
        "[secret]\nstore = \"dev\"\nid = \"shared\"\n\
         [[deliver]]\npath = \"api/key\"\nmode = \"0440\"\nuser = \"nobody\"\ngroup = \"nogroup\"\n\
         [[deliver]]\npath = \"api/tls/cert-key\"\nmode = \"0400\"\nuser = 4242\ngroup = \"nogroup\"\n",
    );
    // A bundle with no group: 0755 directories, files owned by the agent's user, 0400.
    world.policy("plain", "[secret]\nstore = \"dev\"\nid = \"plain\"\n[[deliver]]\npath = \"plain/value\"\n");
    world.put("shared", "s");
    world.put("plain", "p");
    let out = world.sync_once();
    assert!(out.status.success(), "{}", text(&out));

    let nobody = uid_of("nobody");
    let nogroup = gid_of("nogroup");
    let stat = |path: &Path| {
        let meta = std::fs::metadata(path).unwrap();
        (meta.uid(), meta.gid(), meta.mode() & 0o7777)
    };
    let api = world.bundle("api");
    let version = api.join(std::fs::read_link(api.join("..data")).unwrap());
    assert_eq!(stat(&api.join("key")), (nobody, nogroup, 0o440));
    assert_eq!(stat(&api.join("tls/cert-key")), (4242, nogroup, 0o400));
    for dir in [api.clone(), version.clone(), version.join("tls")] {
        assert_eq!(stat(&dir), (0, nogroup, 0o750), "{}", dir.display());
    }
    assert_eq!(stat(&version.join("..keyturn.json")), (0, 0, 0o400), "the manifest is the agent's alone");

    let plain = world.bundle("plain");
    assert_eq!(stat(&plain.join("value")), (0, 0, 0o400));
    assert_eq!(stat(&plain), (0, 0, 0o755));
}

#[test]
fn modes_are_exact_whatever_the_umask() {
    let world = World::new("");
    world.policy(
        "db",
        "[secret]\nstore = \"dev\"\nid = \"db\"\n[[deliver]]\npath = \"app/nested/db\"\nmode = \"0440\"\n",
    );
    world.put("db", "v1");
    let stat = |path: &Path| std::fs::metadata(path).unwrap().mode() & 0o7777;
    // 0277 takes away every bit keyturn asks for but the owner's read; 0 takes none.
    for umask in ["0277", "0000"] {
        let _ = std::fs::remove_dir_all(world.bundle("app"));
        let keyturn = world.command_for(&world.config(), &["sync", "--once"]);
        let mut command = std::process::Command::new("sh");
        command.arg("-c").arg(format!("umask {umask}; exec \"$0\" \"$@\"")).arg(keyturn.get_program());
        command.args(keyturn.get_args()).env("HOME", world.disk.path()).env_remove("KEYTURN_CONFIG");
        let out = command.output().unwrap();
        assert!(out.status.success(), "umask {umask}: {}", text(&out));
        let app = world.bundle("app");
        let version = app.join(std::fs::read_link(app.join("..data")).unwrap());
        assert_eq!(stat(&app.join("nested/db")), 0o440, "umask {umask}");
        assert_eq!(stat(&version.join("..keyturn.json")), 0o400, "umask {umask}");
        for dir in [app.clone(), version.clone(), version.join("nested")] {
            assert_eq!(stat(&dir), 0o755, "umask {umask}: {}", dir.display());
        }
    }
}

fn rustix_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

fn uid_of(name: &str) -> u32 {
    let out = std::process::Command::new("id").args(["-u", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn gid_of(name: &str) -> u32 {
    let out = std::process::Command::new("getent").args(["group", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split(':').nth(2).unwrap().parse().unwrap()
}

/// As the unprivileged unit runs it: an agent with no capability gives files to a group it
/// belongs to, and says which capability it lacks for one it does not.
#[test]
fn without_capabilities_files_go_to_the_agents_own_groups_and_the_rest_is_explained() {
    assert!(rustix_uid() == 0, "runs as root to drop to nobody with setpriv");
    let world = World::new("");
    world.policy(
        "grouped",
        "[secret]\nstore = \"dev\"\nid = \"grouped\"\n[[deliver]]\npath = \"app/key\"\nmode = \"0440\"\ngroup = \"nogroup\"\n",
    );
    world.put("grouped", "g1");
    // The whole world belongs to nobody, as /var/lib/keyturn and /run/keyturn belong to keyturn.
    for dir in [world.disk.path(), world.runtime.path()] {
        let status = std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(dir).status().unwrap();
        assert!(status.success());
    }
    let as_nobody = || {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                common::BIN,
                "sync",
                "--once",
                "--config",
            ])
            .arg(world.config())
            .env_remove("KEYTURN_CONFIG")
            .output()
            .unwrap()
    };
    let out = as_nobody();
    assert!(out.status.success(), "{}", text(&out));
    let meta = std::fs::metadata(world.bundle("app").join("..data/key")).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (65534, gid_of("nogroup"), 0o440));

    // A group nobody is not in: refused, with the capability and where it comes from.
    world.policy(
        "foreign",
        "[secret]\nstore = \"dev\"\nid = \"foreign\"\n[[deliver]]\npath = \"other/key\"\ngroup = \"root\"\n",
    );
    let status = std::process::Command::new("chown")
        .args(["65534:65534"])
        .arg(world.policies().join("foreign.toml"))
        .status()
        .unwrap();
    assert!(status.success());
    world.put("foreign", "f1");
    let _ = std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(world.store()).status();
    let out = as_nobody();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the agent needs CAP_CHOWN (systemd: add owners.conf"), "{stderr}");
    assert!(!world.bundle("other/key").exists(), "nothing half-delivered");
    assert_eq!(read(world.bundle("app/key")), "g1", "the other bundle is untouched");
}

/// A small deterministic generator for the round-trip values (no dependency for it).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn python() -> std::path::PathBuf {
    let venv = std::env::var_os("KEYTURN_TEST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let python = venv.join("bin/python");
    let ok = std::process::Command::new(&python).args(["-c", "import dotenv"]).status().is_ok_and(|s| s.success());
    assert!(ok, "{} with python-dotenv is missing: run scripts/test.sh, which installs it", python.display());
    python
}

/// What `python-dotenv` and `sh -c 'set -a; . FILE'` read from `file`: the variables named
/// `K...`, as JSON objects.
fn read_back(python: &Path, file: &Path) -> (serde_json::Value, serde_json::Value) {
    let dotenv = std::process::Command::new(python)
        .args([
            "-c",
            "import json, sys\nfrom dotenv import dotenv_values\nprint(json.dumps(dotenv_values(sys.argv[1])))",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(dotenv.status.success(), "{}", text(&dotenv));
    let dump = "import json, os\nprint(json.dumps({k: v for k, v in os.environ.items() if k.startswith('K')}))";
    let shell = std::process::Command::new("sh")
        .args(["-c", "set -a; . \"$1\"; exec \"$2\" -c \"$3\"", "sh"])
        .arg(file)
        .arg(python)
        .arg(dump)
        .env_clear()
        .output()
        .unwrap();
    assert!(shell.status.success(), "{}", text(&shell));
    (serde_json::from_slice(&dotenv.stdout).unwrap(), serde_json::from_slice(&shell.stdout).unwrap())
}

/// Issue 14: a value with a backslash made python-dotenv swallow the lines after it. Every
/// value format env writes must read back byte for byte in python-dotenv and a POSIX shell,
/// or be refused; so must `envquote` in a template, and `shellquote` in a shell.
#[test]
fn env_files_read_back_exactly_in_python_dotenv_and_a_posix_shell() {
    use keyturn::deliver::format::{Format, env::Env, template::Template};
    use keyturn::secret::{SecretBytes, Version};

    let python = python();
    let alphabet: Vec<char> = "abcXYZ019 _-./:@%+,=!\"#$&'()*;<>?[\\]^`{|}~\t\néü日😀".chars().collect();
    let mut random = XorShift(0x5eed_1234_abcd_ef01);
    let mut values: Vec<String> =
        (0..400).map(|_| (0..1 + random.below(16)).map(|_| alphabet[random.below(alphabet.len())]).collect()).collect();
    values.extend(
        ["ends-with\\", "a${HOME}b", "it's", "$HOME", "#not-a-comment", " lead", "trail ", "x=y"].map(String::from),
    );

    let extras = std::collections::BTreeMap::new();
    let render = |format: &Format, value: &str| {
        let version = Version::new(1, SecretBytes::copy_from(value.as_bytes()));
        let input = keyturn::deliver::format::Input {
            version: &version,
            previous: None,
            extras: &extras,
            node: "n",
            policy: "p",
        };
        format.render(&input).ok().map(|out| String::from_utf8(out.expose().to_vec()).unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, format) in
        [("env", None), ("envquote", Some(Format::Template(Template { source: "K={{ secret | envquote }}\n".into() })))]
    {
        let mut file = String::new();
        let mut kept = std::collections::BTreeMap::new();
        for (i, value) in values.iter().enumerate() {
            let format = format.clone().unwrap_or(Format::Env(Env { key: Some(format!("K{i}")) }));
            let Some(line) = render(&format, value) else {
                let refusable = value.chars().any(|c| c.is_control() || c == '\'' || c == '\\') || value.contains("${");
                assert!(refusable, "{name}: refused without cause: {value:?}");
                continue;
            };
            file.push_str(&line.replacen("K=", &format!("K{i}="), 1));
            kept.insert(format!("K{i}"), value.clone());
        }
        assert!(
            kept.len() > values.len() / 3,
            "{name}: most values are deliverable ({} of {})",
            kept.len(),
            values.len()
        );
        let path = dir.path().join(format!("{name}.env"));
        common::write(&path, &file);
        let (dotenv, shell) = read_back(&python, &path);
        for (key, value) in &kept {
            assert_eq!(dotenv[key].as_str(), Some(value.as_str()), "{name}: python-dotenv read {key} differently");
            assert_eq!(shell[key].as_str(), Some(value.as_str()), "{name}: sh read {key} differently");
        }
    }

    // shellquote: any value but a NUL is one shell word.
    let quote = Format::Template(Template { source: "K={{ secret | shellquote }}\n".into() });
    let mut script = String::new();
    for (i, value) in values.iter().enumerate() {
        let line = render(&quote, value).expect("shellquote takes every value without NUL");
        script.push_str(&line.replacen("K=", &format!("K{i}="), 1));
    }
    let path = dir.path().join("script.sh");
    common::write(&path, &script);
    let (_, shell) = read_back(&python, &path);
    for (i, value) in values.iter().enumerate() {
        assert_eq!(shell[format!("K{i}")].as_str(), Some(value.as_str()), "sh read K{i} differently");
    }
}
