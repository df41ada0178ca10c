//! The real-systemd tier: keyturn installed as an operator installs it, on a real systemd
//! booted for each test (`common::machine`: systemd 252 as PID 1 of fresh namespaces, on an
//! overlay of the host's root; about a second to boot, nothing written to the host).
//!
//! - the install steps of `systemd/README.md`, run as written, then the unit's life: start to
//!   READY, delivery with the unit's user and modes, `keyturn status` and `reload` as root,
//!   journal priorities, reloads (good, bad, and one the file watch applied first), a store
//!   change, a restart after SIGKILL that rewrites nothing, the watchdog, `systemd-analyze
//!   security` on the running unit, and `systemctl stop`;
//! - README.md's short unit install, then `owners.conf` as systemd/README.md adds it:
//!   `/etc/keyturn` stays read-only even to an `exec` notifier holding CAP_CHOWN, the `systemd`
//!   notifier reloads a real second unit through polkit, and operators in `keyturn-admin` by
//!   primary or supplementary group;
//! - the Debian package (`common::release::deb`): `dpkg -i`, not started until configured,
//!   `systemctl enable --now` delivering the packaged examples, an upgrade that restarts it,
//!   remove, and purge leaving nothing but the administrator's own files.
//!
//! The release binary and the package come from `common::release` (one release build, by the
//! container recipe's steps). Where a machine cannot boot (not root, no cgroup2, no systemd),
//! each test says why and does nothing, unless `KEYTURN_SYSTEMD_TIER=required`, which
//! `scripts/test.sh` sets when it runs as root (as CI does): then it fails.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::machine::Machine;
use common::{read, release, text};
use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// How long a unit may take to come back after a kill: RestartSec (5 s) plus a start, on a
/// loaded 2-core CI.
const RESTART: Duration = Duration::from_secs(60);
/// For a condition the agent reaches within a poll or two (2 s here) or a reload.
const SOON: Duration = Duration::from_secs(30);

/// The agent file the README test installs as `your-agent.toml`: the unit's directories and
/// a local file store seeded from `/etc/keyturn/seed.toml`.
const AGENT: &str = r#"[agent]
node = "${HOSTNAME}"
runtime_dir = "/run/keyturn"
state_dir = "/var/lib/keyturn"
policies = "/etc/keyturn/policies"
poll = "2s"
jitter = "0%"

[stores.dev]
kind = "file"
dir = "/var/lib/keyturn/store"
seed = "seed.toml"
"#;

/// The operators' access of systemd/README.md ("The control socket for operators").
const CONTROL: &str = r#"
[control]
mode = "0660"
group = "keyturn-admin"
allow_users = ["root", "keyturn"]
allow_groups = ["keyturn-admin"]
"#;

const SEED: &str = r#"db-password = "systemd-tier-db-password-1"
api-config = '{"API_USER": "tier", "API_TOKEN": "systemd-tier-token-1"}'
session-key = "systemd-tier-session-key-1"
"#;

const DB: &str = r#"[secret]
store = "dev"
id = "db-password"

[[deliver]]
path = "app/db-password"

[[deliver]]
path = "app/db.env"
format = "env"
key = "DB_PASSWORD"
mode = "0440"
"#;

const API: &str = r#"[secret]
store = "dev"
id = "api-config"

[[deliver]]
path = "app/api.json"
format = "json"
"#;

/// Not required, and its secret never exists: a warning at every poll.
const MISSING: &str = r#"[secret]
store = "dev"
id = "not-in-the-store"
required = false

[[deliver]]
path = "other/missing"
"#;

const SESSION: &str = r#"[secret]
store = "dev"
id = "session-key"

[[deliver]]
path = "web/session.key"
format = "base64"
"#;

#[test]
fn log_lines_carry_syslog_priorities_only_on_the_journal_stream() {
    // Without a booted systemd: JOURNAL_STREAM names stderr's device and inode when systemd
    // connects stderr to the journal; journald reads `<N>` at a line's start as its priority.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyturn.toml");
    common::write(&config, "[agent]\npolicies = \"policies\"\npoll = \"often\"\n");
    fs::create_dir(dir.path().join("policies")).unwrap();
    let log = dir.path().join("stderr");
    let run = |journal_stream: &dyn Fn(&Path) -> String| {
        let file = fs::File::create(&log).unwrap();
        let stream = journal_stream(&log);
        let out = Command::new(common::BIN)
            .args(["validate", "--config"])
            .arg(&config)
            .env("JOURNAL_STREAM", stream)
            .stderr(file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        read(&log)
    };
    let this_file = |path: &Path| {
        let meta = fs::metadata(path).unwrap();
        format!("{}:{}", std::os::unix::fs::MetadataExt::dev(&meta), std::os::unix::fs::MetadataExt::ino(&meta))
    };
    let journal = run(&this_file);
    assert!(journal.starts_with("<3>keyturn: configuration has 1 problem"), "{journal}");
    assert!(journal.lines().all(|l| l.starts_with("<3>")), "every line of the error, at priority 3:\n{journal}");
    // Inherited by a process whose stderr is another file: plain lines.
    let elsewhere = run(&|_: &Path| "1:1".to_string());
    assert!(elsewhere.starts_with("keyturn: configuration has 1 problem"), "{elsewhere}");
}

#[test]
fn the_readme_install_runs_and_the_unit_lives_through_reloads_a_kill_the_watchdog_and_a_stop() {
    let Some(machine) = Machine::boot("the README install") else { return };
    machine.put("/etc/keyturn/seed.toml", SEED.as_bytes(), 0o644);
    install_as_the_readme_says(&machine, AGENT, &[("db", DB), ("api", API), ("missing", MISSING)]);

    // `systemctl enable --now` returned: systemd saw READY=1, so the required files are there.
    let unit = show(&machine, "keyturn");
    assert_eq!(
        (unit["ActiveState"].as_str(), unit["SubState"].as_str()),
        (Some("active"), Some("running")),
        "{unit:?}"
    );
    assert_eq!(unit["StatusText"], "2 of 3 policies delivered, 1 failing", "{unit:?}");
    let main_pid = unit["MainPID"].clone();

    // Delivered as the unit's user, with the policies' modes, the values as stored.
    let listing = machine.ok(
        "cd /run/keyturn && stat -c '%U:%G %a %n' . app app/..data/db-password app/..data/db.env app/..data/api.json",
    );
    let expected = [
        "keyturn:keyturn 755 .",
        "keyturn:keyturn 755 app",
        "keyturn:keyturn 400 app/..data/db-password",
        "keyturn:keyturn 440 app/..data/db.env",
        "keyturn:keyturn 400 app/..data/api.json",
    ];
    assert_eq!(listing.lines().collect::<Vec<_>>(), expected);
    assert_eq!(read(machine.path("/run/keyturn/app/db-password")), "systemd-tier-db-password-1");

    // Bug: root's `keyturn status` and `keyturn reload` were refused by the control socket
    // (only the agent's uid was allowed), and status did not fall back to the status file.
    let status = machine.sh("keyturn status --json");
    assert!(status.status.success(), "keyturn status as root: {}", text(&status));
    assert!(status.stderr.is_empty(), "a live answer, not the status file: {}", text(&status));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["agent_running"], true);
    assert_eq!(status["pid"].to_string(), main_pid.as_str().unwrap());
    let table = machine.ok("keyturn status");
    assert!(table.contains(&format!("agent running, pid {}", main_pid.as_str().unwrap())), "{table}");
    let reload = machine.ok("keyturn reload");
    assert!(reload.contains("configuration unchanged"), "{reload}");

    // Bug: every line reached the journal at priority 6. Now each line's priority is its level.
    machine.wait_until(
        "the missing secret's warning at priority warning",
        SOON,
        "journalctl -u keyturn -p warning -o cat | grep -q 'store read failed'",
    );
    let levels = agent_lines(&machine);
    let priority = |level: &str| match level {
        "ERROR" => "3",
        "WARN" => "4",
        "INFO" => "6",
        _ => "7",
    };
    for (line, got) in &levels {
        assert_eq!(got, priority(line["level"].as_str().unwrap()), "{line}");
    }
    assert!(levels.iter().any(|(l, _)| l["level"] == "INFO") && levels.iter().any(|(l, _)| l["level"] == "WARN"));

    // A new policy file: the file watch reloads, and a `keyturn reload` right after says the
    // running configuration already has it (it used to answer just "configuration unchanged").
    machine.put("/etc/keyturn/policies/session.toml", SESSION.as_bytes(), 0o644);
    machine.wait_until("the watched change delivered", SOON, "test -e /run/keyturn/web/session.key");
    let reloaded = journal_count(&machine, "configuration reloaded");
    assert!(reloaded >= 1);
    let reload = machine.ok("keyturn reload");
    assert!(reload.contains("3 policies, was loaded at") || reload.contains("4 policies, was loaded at"), "{reload}");
    assert!(reload.contains("(a configuration file changed)"), "{reload}");

    // A bad configuration: refused with every problem at priority err; the agent keeps running.
    machine.put(
        "/etc/keyturn/policies/broken.toml",
        b"[secret]\nstore = \"dev\"\nid = \"db-password\"\n\n[[deliver]]\npath = \"../escape/x\"\n",
        0o644,
    );
    machine.wait_until(
        "the watched bad file refused",
        SOON,
        "journalctl -u keyturn -p err -o cat | grep -q 'new configuration refused'",
    );
    let refused = journal_count(&machine, "new configuration refused");
    machine.ok("systemctl reload keyturn");
    machine.wait_until(
        "the refusal after systemctl reload",
        SOON,
        &format!("test $(journalctl -u keyturn -o cat | grep -c 'new configuration refused') -gt {refused}"),
    );
    let problems = machine.ok("journalctl -u keyturn -p err -o cat | grep 'configuration problem'");
    assert!(problems.contains("broken.toml:6: deliver[0].path"), "{problems}");
    let reload = machine.sh("keyturn reload");
    assert_eq!(reload.status.code(), Some(1), "{}", text(&reload));
    assert!(String::from_utf8_lossy(&reload.stderr).contains("broken.toml:6"), "{}", text(&reload));
    assert_eq!(show(&machine, "keyturn")["MainPID"], main_pid, "the agent kept running");
    machine.ok("rm /etc/keyturn/policies/broken.toml && keyturn reload");
    // And a good one through `systemctl reload` (SIGHUP): taken, not refused.
    let hangups = journal_count(&machine, "\"reason\":\"SIGHUP\"");
    machine.ok("systemctl reload keyturn");
    machine.wait_until(
        "the SIGHUP reload",
        SOON,
        &format!("test $(journalctl -u keyturn -o cat | grep -c '\"reason\":\"SIGHUP\"') -gt {hangups}"),
    );
    let last = machine.ok("journalctl -u keyturn -o cat | grep '\"reason\":\"SIGHUP\"' | tail -1");
    assert!(last.contains("configuration unchanged") || last.contains("configuration reloaded"), "{last}");

    // A change in the store is delivered within a poll.
    machine.ok("printf %s systemd-tier-db-password-2 | runuser -u keyturn -- keyturn store put dev db-password");
    machine.wait_until(
        "the new value on disk",
        SOON,
        "test \"$(cat /run/keyturn/app/db-password)\" = systemd-tier-db-password-2",
    );

    // SIGKILL: systemd restarts it (Restart=on-failure); the new agent finds every file
    // current, rewrites nothing, and (bug) keeps each policy's delivery time.
    let status_file = machine.path("/var/lib/keyturn/status.json");
    let mut before = Value::Null;
    common::wait_for("version 2 in the status file", SOON, || {
        before = fs::read_to_string(&status_file).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        before["policies"]["db"]["version"] == "2"
    });
    let bundles_before = machine.ok("readlink /run/keyturn/app/..data /run/keyturn/web/..data");
    machine.ok("systemctl kill -s KILL keyturn");
    machine.wait_until(
        "the restart after SIGKILL",
        RESTART,
        "test \"$(systemctl show -P NRestarts keyturn)\" = 1 && systemctl is-active -q keyturn",
    );
    assert_ne!(show(&machine, "keyturn")["MainPID"], main_pid);
    let after: Value = serde_json::from_str(&machine.ok("keyturn status --json")).unwrap();
    for policy in ["db", "api", "session"] {
        let (was, is) = (&before["policies"][policy], &after["policies"][policy]);
        assert_eq!(is["version"], was["version"], "{policy}");
        assert_eq!(is["delivered_at"], was["delivered_at"], "{policy}: DELIVERED after a restart that rewrote nothing");
    }
    assert_eq!(machine.ok("readlink /run/keyturn/app/..data /run/keyturn/web/..data"), bundles_before);

    // The watchdog: pings arrive, and a hung agent is killed and restarted. A short interval
    // so the test waits seconds, not the unit's minute; the agent pings at half of it.
    machine.put(
        "/etc/systemd/system/keyturn.service.d/watchdog.conf",
        b"[Service]\nWatchdogSec=3s\nRestartSec=1s\n",
        0o644,
    );
    machine.ok("systemctl daemon-reload && systemctl restart keyturn");
    let first = show(&machine, "keyturn")["WatchdogTimestampMonotonic"].clone();
    machine.wait_until(
        "two watchdog pings",
        SOON,
        &format!(
            "test \"$(systemctl show -P WatchdogTimestampMonotonic keyturn)\" != {} && sleep 0.1 && \
             test \"$(systemctl show -P WatchdogTimestampMonotonic keyturn)\" != 0",
            first.as_str().unwrap()
        ),
    );
    let hung = show(&machine, "keyturn");
    machine.ok("kill -STOP $(systemctl show -P MainPID keyturn)");
    machine.wait_until(
        "the watchdog to restart the hung agent",
        RESTART,
        &format!(
            "test \"$(systemctl show -P NRestarts keyturn)\" -gt {} && systemctl is-active -q keyturn",
            hung["NRestarts"].as_str().unwrap()
        ),
    );
    let journal = machine.ok("journalctl -u keyturn -o cat");
    assert!(journal.contains("Watchdog timeout"), "{journal}");
    machine.ok("rm /etc/systemd/system/keyturn.service.d/watchdog.conf && systemctl daemon-reload && systemctl restart keyturn");

    // The running unit's own exposure, as systemd computes it live: no higher than the gate
    // tests/packaging.rs applies to the file.
    let security = machine.sh("systemd-analyze security --threshold=15 keyturn.service");
    let overall = String::from_utf8_lossy(&security.stdout).lines().last().unwrap_or_default().to_string();
    assert!(security.status.success(), "{overall}\n{}", text(&security));
    println!("running unit: {overall}");

    // No value in the journal, raw or base64.
    let journal = machine.ok("journalctl -o cat --no-pager");
    for value in ["systemd-tier-db-password", "systemd-tier-token", "systemd-tier-session-key", "c3lzdGVtZC10aWVy"] {
        assert!(!journal.contains(value), "{value} in the journal");
    }

    // Stop: clean exit, files kept for the applications (RuntimeDirectoryPreserve=yes).
    machine.ok("systemctl stop keyturn");
    let unit = show(&machine, "keyturn");
    assert_eq!(
        (unit["ActiveState"].as_str(), unit["Result"].as_str(), unit["ExecMainStatus"].as_str()),
        (Some("inactive"), Some("success"), Some("0")),
        "{unit:?}"
    );
    assert_eq!(read(machine.path("/run/keyturn/app/db-password")), "systemd-tier-db-password-2");
    assert!(!machine.path("/run/keyturn/.keyturn.sock").exists(), "the control socket goes with the agent");
}

#[test]
fn with_owners_conf_etc_keyturn_stays_read_only_and_notifiers_reach_a_real_unit() {
    let Some(machine) = Machine::boot("owners.conf") else { return };
    // An application unit for the `systemd` notifier to reload, and the README's polkit rule
    // that lets keyturn do it (the rule names api.service).
    machine.put(
        "/etc/systemd/system/api.service",
        b"[Unit]\nDescription=an application keyturn reloads\n\n[Service]\nExecStart=/bin/sleep infinity\n\
          ExecReload=/bin/sh -c 'echo reloaded >>/run/api-reloads'\n",
        0o644,
    );
    let rule = fenced_block(&read(Path::new(REPO).join("systemd/README.md")), "```js");
    machine.put("/etc/polkit-1/rules.d/50-keyturn.rules", rule.as_bytes(), 0o644);
    machine.ok("systemctl daemon-reload && systemctl start api.service");
    machine.put("/etc/keyturn/seed.toml", SEED.as_bytes(), 0o644);
    // An exec notifier that tries what a compromised notifier would: hand the policies to
    // the agent's user, so it could rewrite them.
    let chown = format!(
        "{DB}\n[notify]\nexec = {{ command = [\"/bin/chown\", \"keyturn\", \"/etc/keyturn/policies\"] }}\nattempts = 1\n"
    );
    let api = format!("{API}\n[notify]\nsystemd = {{ unit = \"api.service\", action = \"reload\" }}\n");
    // This time the short install of README.md ("The unit, by hand"), with the configuration
    // written first, as its last step asks.
    machine.put("/etc/keyturn/keyturn.toml", format!("{AGENT}{CONTROL}").as_bytes(), 0o644);
    machine.put("/etc/keyturn/policies/db.toml", chown.as_bytes(), 0o644);
    machine.put("/etc/keyturn/policies/api.toml", api.as_bytes(), 0o644);
    let readme = read(Path::new(REPO).join("README.md"));
    let install = section(&readme, "## Install");
    let by_hand = &install[install.find("**The unit, by hand**").expect("README.md: The unit, by hand")..];
    run_install_steps(&machine, &fenced_block(by_hand, "```sh"));
    assert_eq!(machine.ok("systemctl is-active keyturn"), "active\n");

    // owners.conf, as the README installs it.
    let readme = read(Path::new(REPO).join("systemd/README.md"));
    let owners = section(&readme, "## Handing files to other users");
    let steps = fenced_block(owners, "```sh");
    assert!(steps.contains("owners.conf") && steps.contains("systemctl restart keyturn"), "{steps}");
    machine.ok(&format!("cd {CHECKOUT}\n{steps}"));
    let caps = machine.ok("grep CapAmb /proc/$(systemctl show -P MainPID keyturn)/status");
    assert!(!caps.trim().ends_with("0000000000000000"), "owners.conf gives ambient capabilities: {caps}");

    // Bug: ConfigurationDirectory= bind-mounted /etc/keyturn read-write inside the unit.
    let options = machine.ok("nsenter -t $(systemctl show -P MainPID keyturn) -m findmnt -no OPTIONS -T /etc/keyturn");
    assert!(options.starts_with("ro,") || options.starts_with("ro\n"), "/etc/keyturn inside the unit: {options}");
    // ...so a notifier with CAP_CHOWN could take it. Make a change, and watch it try.
    machine.ok("printf %s systemd-tier-db-password-2 | runuser -u keyturn -- keyturn store put dev db-password");
    machine.wait_until(
        "the chown notifier's attempt",
        SOON,
        "keyturn status --json | grep -A30 '\"db\"' | grep -q '\"notify_error\"'",
    );
    let status: Value = serde_json::from_str(&machine.ok("keyturn status --json")).unwrap();
    let error = status["policies"]["db"]["notify_error"].as_str().unwrap_or_default();
    assert!(error.contains("Read-only file system"), "{error}");
    assert_eq!(machine.ok("stat -c %U:%G /etc/keyturn /etc/keyturn/policies"), "root:root\nroot:root\n");

    // The `systemd` notifier: `systemctl reload api.service` as the keyturn user, through
    // D-Bus and the polkit rule, from inside the sandbox.
    machine.wait_until("api.service reloaded at the first delivery", SOON, "test -s /run/api-reloads");
    let reloads = read(machine.path("/run/api-reloads")).lines().count();
    machine.ok("printf %s '{\"API_TOKEN\": \"systemd-tier-token-2\"}' | runuser -u keyturn -- keyturn store put dev api-config");
    machine.wait_until(
        "api.service reloaded for the change",
        SOON,
        &format!("test $(wc -l </run/api-reloads) -gt {reloads}"),
    );
    let status: Value = serde_json::from_str(&machine.ok("keyturn status --json")).unwrap();
    assert!(status["policies"]["api"].get("notify_error").is_none_or(Value::is_null), "{status}");

    // Operators: keyturn-admin as the primary group is enough; as a supplementary group it is
    // not (the unit's ProtectProc=invisible hides the caller's groups), and the refusal says so.
    machine.ok("useradd --system -g keyturn-admin ops-primary && useradd --system -G keyturn-admin ops-supplementary");
    let status = machine.ok("runuser -u ops-primary -- keyturn status --json");
    assert_eq!(serde_json::from_str::<Value>(&status).unwrap()["agent_running"], true);
    let refused = machine.sh("runuser -u ops-supplementary -- keyturn reload");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(stderr.contains("is not allowed to use the control socket"), "{stderr}");
    assert!(stderr.contains("supplementary groups cannot be read") && stderr.contains("ProtectProc"), "{stderr}");
}

#[test]
fn the_debian_package_installs_starts_when_configured_upgrades_and_purges_clean() {
    let Some(machine) = Machine::boot("the Debian package") else { return };
    let first = release::deb("1");
    let second = release::deb("2");
    machine.copy(&first, "/root/keyturn_1.deb", 0o644);
    machine.copy(&second, "/root/keyturn_2.deb", 0o644);
    // The host image is a container build's: its policy-rc.d forbids maintainer scripts to
    // start or restart services (exit 101). A real host has none.
    machine.ok("rm -f /usr/sbin/policy-rc.d");
    let before = snapshot(&machine.upper());

    // Installed, not started: there is no configuration yet.
    let install = machine.ok("dpkg -i /root/keyturn_1.deb 2>&1");
    assert!(install.contains("systemctl enable --now keyturn"), "postinst says what to do next:\n{install}");
    assert_eq!(machine.sh("systemctl is-enabled keyturn").stdout, b"disabled\n");
    assert_eq!(machine.sh("systemctl is-active keyturn").stdout, b"inactive\n");
    assert_eq!(machine.ok("getent passwd keyturn | cut -d: -f6,7"), "/var/lib/keyturn:/usr/sbin/nologin\n");
    assert_eq!(
        machine.ok("stat -c '%U:%G %a' /var/lib/keyturn /etc/keyturn/policies"),
        "keyturn:keyturn 700\nroot:root 755\n"
    );
    machine.ok("keyturn --version && man -w keyturn && systemd-analyze verify keyturn.service");

    // The administrator configures it from the packaged examples, then enables it.
    let admin_files = machine
        .ok("cd /usr/share/doc/keyturn/examples && install -m 0644 keyturn.toml seed.toml /etc/keyturn/ && \
         install -m 0644 policies/*.toml /etc/keyturn/policies/ && find /etc/keyturn -type f | sort");
    machine.ok("systemctl enable --now keyturn");
    let delivered = machine
        .ok("cd /run/keyturn && stat -L -c '%n %U:%G %a' app/api.env app/api.json app/db-password app/db.env \
         web/session.key web/signing.pem web/jwks.json");
    let expected = [
        "app/api.env keyturn:keyturn 400",
        "app/api.json keyturn:keyturn 400",
        "app/db-password keyturn:keyturn 400",
        "app/db.env keyturn:keyturn 400",
        "web/session.key keyturn:keyturn 440",
        "web/signing.pem keyturn:keyturn 400",
        "web/jwks.json keyturn:keyturn 444",
    ];
    assert_eq!(delivered.lines().collect::<Vec<_>>(), expected, "the packaged examples, delivered");
    assert_eq!(read(machine.path("/run/keyturn/app/db-password")), "quickstart-db-password-1");
    let pid = show(&machine, "keyturn")["MainPID"].clone();

    // Upgrade: the new version restarts it; configuration and delivered files stay.
    let bundles = machine.ok("readlink /run/keyturn/app/..data /run/keyturn/web/..data");
    machine.ok("dpkg -i /root/keyturn_2.deb");
    let unit = show(&machine, "keyturn");
    assert_eq!(unit["ActiveState"], "active", "{unit:?}");
    assert_ne!(unit["MainPID"], pid, "restarted by the upgrade");
    assert_eq!(machine.ok("dpkg-query -W -f '${Version}' keyturn"), "0.1.0-2");
    assert_eq!(machine.ok("systemctl is-enabled keyturn"), "enabled\n");
    assert_eq!(machine.ok("readlink /run/keyturn/app/..data /run/keyturn/web/..data"), bundles);

    // Remove: stopped, the program gone; configuration, state and the user stay.
    machine.ok("dpkg -r keyturn");
    assert_eq!(machine.sh("systemctl is-active keyturn").stdout, b"inactive\n");
    assert!(!machine.path("/usr/bin/keyturn").exists());
    machine.ok("test -d /var/lib/keyturn/store && getent passwd keyturn && test -e /etc/keyturn/keyturn.toml");

    // Purge: the user, its group, the state and the delivered files go. What stays is what
    // Debian policy keeps: files the administrator created (dpkg never removes those), and
    // the system's own bookkeeping.
    let purge = machine.ok("dpkg -P keyturn 2>&1");
    machine.ok("! getent passwd keyturn && ! getent group keyturn && ! getent group keyturn-admin");
    assert!(!machine.path("/run/keyturn").exists(), "the delivered files go with the purge");
    // A path counts as left behind if it differs from what the machine had before the
    // install: its upper layer then, or else the host's root (the overlay's lower layer).
    let after = snapshot(&machine.upper());
    let mut left: Vec<String> = after
        .iter()
        .filter(|(path, state)| {
            before.get(*path).cloned().or_else(|| state_of(Path::new(path))).as_ref() != Some(state)
        })
        .map(|(path, _)| path.clone())
        .filter(|path| !bookkeeping(path))
        .collect();
    left.sort();
    let admin: Vec<String> =
        admin_files.lines().map(String::from).chain(["/etc/keyturn/policies".into(), "/etc/keyturn".into()]).collect();
    let unexpected: Vec<&String> = left.iter().filter(|p| !admin.contains(p)).collect();
    assert!(unexpected.is_empty(), "left behind by the purge: {unexpected:#?}\n(dpkg said: {purge})");

    // Configured first (configuration management), then installed: it starts, enabled.
    machine.ok("test -e /etc/keyturn/keyturn.toml && dpkg -i /root/keyturn_2.deb");
    assert_eq!(machine.ok("systemctl is-enabled keyturn; systemctl is-active keyturn"), "enabled\nactive\n");
    assert_eq!(read(machine.path("/run/keyturn/app/db-password")), "quickstart-db-password-1");
}

/// The sealed cache under a real systemd: the key an encrypted credential made as
/// systemd/README.md says (`systemd-creds encrypt` with the host key, `LoadCredentialEncrypted=`
/// through `cache.conf`), the agent seals what it delivers, and a start with the runtime
/// directory empty (a reboot) rebuilds every bundle from the cache, byte for byte.
#[test]
fn the_cache_key_is_an_encrypted_credential_and_a_start_after_a_reboot_delivers_from_the_cache() {
    let Some(machine) = Machine::boot("cache.conf") else { return };
    machine.put("/etc/keyturn/seed.toml", SEED.as_bytes(), 0o644);
    install_as_the_readme_says(&machine, AGENT, &[("db", DB), ("session", SESSION)]);
    assert_eq!(machine.ok("systemctl is-active keyturn"), "active\n");

    // cache.conf, as systemd/README.md installs it.
    let readme = read(Path::new(REPO).join("systemd/README.md"));
    let steps = fenced_block(section(&readme, "## Rebooting offline"), "```sh");
    assert!(steps.contains("systemd-creds encrypt") && steps.contains("cache.conf"), "{steps}");
    machine.ok(&format!("cd {CHECKOUT}\n{steps}"));
    // The credential is what the unit loads: it decrypts, under its name, with this host's key.
    assert_eq!(
        machine.ok("systemd-creds decrypt --name=keyturn-cache-key /etc/keyturn/cache-key.cred - | wc -c"),
        "32\n"
    );
    assert!(
        machine
            .ok("systemctl cat keyturn")
            .contains("LoadCredentialEncrypted=keyturn-cache-key:/etc/keyturn/cache-key.cred")
    );
    // Some namespaced test beds' systemd leaves every credentials directory empty (this one's
    // does: a trivial unit with LoadCredential= sees nothing either). Where credentials work,
    // the unit must see its key; where they do not, the rest runs on a key file, and says so.
    machine.put(
        "/etc/systemd/system/credential-probe.service",
        b"[Service]\nType=oneshot\nLoadCredential=probe:/etc/hostname\nExecStart=/bin/sh -c 'test -s $$CREDENTIALS_DIRECTORY/probe'\n",
        0o644,
    );
    let credentials_work = machine.sh("systemctl daemon-reload && systemctl start credential-probe").status.success();
    let source = if credentials_work {
        let pid = machine.ok("systemctl show -P MainPID keyturn");
        machine.ok(&format!("nsenter -t {} -m test -s /run/credentials/keyturn.service/keyturn-cache-key", pid.trim()));
        "systemd credential keyturn-cache-key"
    } else {
        println!(
            "note: systemd here populates no credentials directory; the cache key comes from [cache] key_file instead"
        );
        machine.ok("head -c 32 /dev/urandom > /etc/keyturn-cache.key && chown root:keyturn /etc/keyturn-cache.key && chmod 0440 /etc/keyturn-cache.key");
        let agent = format!("{AGENT}\n[cache]\nkey_file = \"/etc/keyturn-cache.key\"\n");
        machine.put("/etc/keyturn/keyturn.toml", agent.as_bytes(), 0o644);
        machine.ok("systemctl restart keyturn");
        "key_file /etc/keyturn-cache.key"
    };
    let sealed = common::poll_until(SOON, Duration::from_millis(200), || {
        machine.sh("test $(ls /var/lib/keyturn/cache | wc -l) -eq 2").status.success()
    });
    assert!(sealed, "both entries sealed:\n{}", machine.journal_tail());
    // The agent names the key it opened the cache with; never the key.
    assert!(journal_count(&machine, "sealed cache open") >= 1, "{}", machine.journal_tail());
    assert!(journal_count(&machine, source) >= 1, "{}", machine.journal_tail());

    // A reboot: the runtime directory is empty. The bundles come back from the cache before
    // the store is read (tests/cache.rs does this with the store out of reach), byte for byte.
    let before = machine.ok("cat /run/keyturn/app/db-password /run/keyturn/web/session.key");
    machine.ok("systemctl stop keyturn && rm -rf /run/keyturn/app /run/keyturn/web && systemctl start keyturn");
    assert_eq!(machine.ok("cat /run/keyturn/app/db-password /run/keyturn/web/session.key"), before);
    assert_eq!(journal_count(&machine, "restored from the sealed cache"), 2, "{}", machine.journal_tail());
    let sealed = machine.ok("cat /var/lib/keyturn/cache/*.sealed | strings");
    assert!(!sealed.contains("systemd-tier"), "no value in the sealed entries: {sealed}");
    machine.ok("systemctl stop keyturn");
}

/// Runs the install steps of systemd/README.md ("## Install") inside `machine`, from a copy of
/// the repository's `systemd/` with the release binary at `target/release/keyturn`,
/// `your-agent.toml` = `agent` and `your-policies/` = `policies`, as an operator would. The
/// first step (`cargo build`) is the one not run: `common::release` made the binary.
fn install_as_the_readme_says(machine: &Machine, agent: &str, policies: &[(&str, &str)]) {
    let readme = read(Path::new(REPO).join("systemd/README.md"));
    let steps = fenced_block(section(&readme, "## Install"), "```sh");
    assert!(steps.starts_with("cargo build --release --locked\n"), "the README's first install step changed");
    machine.put(&format!("{CHECKOUT}/your-agent.toml"), agent.as_bytes(), 0o644);
    for (name, text) in policies {
        machine.put(&format!("{CHECKOUT}/your-policies/{name}.toml"), text.as_bytes(), 0o644);
    }
    machine.put(&format!("{CHECKOUT}/sa.json"), b"{}\n", 0o600);
    run_install_steps(machine, &steps);
}

/// Where install steps run in a machine: a checkout's `systemd/`, with the release binary at
/// `target/release/keyturn`.
const CHECKOUT: &str = "/root/keyturn";

/// Runs `steps` (a README's shell block) in [`CHECKOUT`] inside `machine`, as root: `sudo`
/// dropped, and the build (`cargo build --release --locked`) not run, since
/// `common::release` made the binary. Fails naming the step that failed.
fn run_install_steps(machine: &Machine, steps: &str) {
    machine.copy(&release::binary(), &format!("{CHECKOUT}/target/release/keyturn"), 0o755);
    for file in common::walk(&Path::new(REPO).join("systemd")) {
        let relative = file.strip_prefix(REPO).unwrap().to_string_lossy().into_owned();
        machine.copy(&file, &format!("{CHECKOUT}/{relative}"), 0o644);
    }
    let build = "cargo build --release --locked";
    assert!(steps.contains(build), "the install steps no longer build the release binary:\n{steps}");
    let steps = steps
        .lines()
        .map(|l| l.replace("sudo ", "").replace(&format!("{build} && "), ""))
        .filter(|l| l.trim() != build)
        .collect::<Vec<_>>()
        .join("\n");
    let out = machine.sh(&format!("cd {CHECKOUT}\nset -x\n{steps}"));
    assert!(out.status.success(), "install steps failed:\n{steps}\n{}\n{}", text(&out), machine.journal_tail());
}

/// The text of `markdown` after the heading line that starts with `heading`, up to the next
/// heading of the same level.
fn section<'a>(markdown: &'a str, heading: &str) -> &'a str {
    let start = markdown.find(&format!("\n{heading}")).unwrap_or_else(|| panic!("no {heading:?} section"));
    let body = &markdown[start + 1..];
    let body = &body[body.find('\n').unwrap_or(body.len())..];
    let level = heading.split(' ').next().unwrap();
    let end = body.find(&format!("\n{level} ")).unwrap_or(body.len());
    &body[..end]
}

/// The first fenced block opened by `fence` (such as "```sh") in `markdown`.
fn fenced_block(markdown: &str, fence: &str) -> String {
    let start = markdown.find(&format!("{fence}\n")).unwrap_or_else(|| panic!("no {fence} block")) + fence.len() + 1;
    let end = markdown[start..].find("```").unwrap() + start;
    markdown[start..end].to_string()
}

/// `systemctl show UNIT`, as a map.
fn show(machine: &Machine, unit: &str) -> BTreeMap<String, Value> {
    machine
        .ok(&format!("systemctl show {unit}"))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect()
}

/// The agent's JSON log lines in the journal, each with the priority journald gave it.
fn agent_lines(machine: &Machine) -> Vec<(Value, String)> {
    machine
        .ok("journalctl -u keyturn -o json --output-fields=MESSAGE,PRIORITY,_PID")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|entry| {
            let message: Value = serde_json::from_str(entry["MESSAGE"].as_str()?).ok()?;
            Some((message, entry["PRIORITY"].as_str()?.to_string()))
        })
        .collect()
}

fn journal_count(machine: &Machine, needle: &str) -> usize {
    machine.ok("journalctl -u keyturn -o cat").matches(needle).count()
}

/// Every path in an overlay upper layer, with what it is (see [`state_of`]).
fn snapshot(upper: &Path) -> BTreeMap<String, String> {
    let mut entries = BTreeMap::new();
    let mut pending: Vec<PathBuf> = vec![upper.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = format!("/{}", path.strip_prefix(upper).unwrap().display());
            if path.is_dir() && !path.is_symlink() {
                pending.push(path.clone());
            }
            entries.insert(name, state_of(&path).unwrap());
        }
    }
    entries
}

/// What is at `path`: a directory, a link's target, a file's bytes (fingerprinted), or
/// something else (in an upper layer: a whiteout, a lower file deleted); `None` if nothing.
fn state_of(path: &Path) -> Option<String> {
    let meta = fs::symlink_metadata(path).ok()?;
    Some(if meta.is_dir() {
        "dir".to_string()
    } else if meta.file_type().is_symlink() {
        format!("-> {}", fs::read_link(path).unwrap().display())
    } else if meta.is_file() {
        format!("{:x}", md5ish(&fs::read(path).unwrap()))
    } else {
        "whiteout".to_string()
    })
}

/// A cheap content fingerprint (FNV-1a): enough to see that a file changed.
fn md5ish(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// What the system itself keeps about what happened, not the package's: dpkg's database and
/// log, the journal, the shadow suite's backups (`/etc/passwd-`, the file before the last
/// change) and lock, man-db's index, and deb-systemd-helper's (empty) state directories.
fn bookkeeping(path: &str) -> bool {
    const KEPT: &[&str] = &[
        "/var/lib/dpkg",
        "/var/log",
        "/etc/passwd-",
        "/etc/group-",
        "/etc/shadow-",
        "/etc/gshadow-",
        "/etc/.pwd.lock",
        "/var/cache/man",
    ];
    const DIRECTORIES: &[&str] = &[
        "/var/lib/systemd/deb-systemd-helper-enabled",
        "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants",
    ];
    KEPT.iter().any(|kept| path == *kept || path.starts_with(&format!("{kept}/"))) || DIRECTORIES.contains(&path)
}
