//! Shared harness for the black-box tests: a scratch world per test (runtime directory on
//! real tmpfs, state and store on disk), the real `keyturn` binary, and polling helpers.
//! Everything a test starts is stopped when its handle drops.

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod google;
pub mod http;
pub mod machine;
pub mod prometheus;
pub mod proxy;
pub mod release;

pub const BIN: &str = env!("CARGO_BIN_EXE_keyturn");

/// One test's world. Runtime files live on /dev/shm (tmpfs), the rest in a disk temp dir.
pub struct World {
    pub runtime: tempfile::TempDir,
    pub disk: tempfile::TempDir,
}

impl World {
    /// A world with one file store named `dev` and the given agent settings appended.
    pub fn new(extra_agent: &str) -> World {
        let world = World {
            runtime: tempfile::Builder::new().prefix("keyturn-test-").tempdir_in("/dev/shm").unwrap(),
            disk: tempfile::Builder::new().prefix("keyturn-test-").tempdir().unwrap(),
        };
        fs::create_dir_all(world.policies()).unwrap();
        world.write_agent(extra_agent);
        world
    }

    pub fn write_agent(&self, extra_agent: &str) {
        let text = format!(
            "[agent]\nnode = \"test-node\"\nruntime_dir = \"{}\"\nstate_dir = \"state\"\npolicies = \"policies\"\n{extra_agent}\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n[stores.dev]\nkind = \"file\"\ndir = \"store\"\n",
            self.runtime.path().display()
        );
        write(&self.config(), &text);
    }

    pub fn config(&self) -> PathBuf {
        self.disk.path().join("keyturn.toml")
    }

    pub fn policies(&self) -> PathBuf {
        self.disk.path().join("policies")
    }

    pub fn state(&self) -> PathBuf {
        self.disk.path().join("state")
    }

    pub fn store(&self) -> PathBuf {
        self.disk.path().join("store")
    }

    pub fn run_dir(&self) -> &Path {
        self.runtime.path()
    }

    pub fn bundle(&self, name: &str) -> PathBuf {
        self.runtime.path().join(name)
    }

    pub fn policy(&self, name: &str, text: &str) {
        write(&self.policies().join(format!("{name}.toml")), text);
    }

    /// A policy delivering secret `id` of store `dev` to each `(path, format)`.
    pub fn simple_policy(&self, name: &str, id: &str, deliveries: &[(&str, &str)]) {
        let mut text = format!("[secret]\nstore = \"dev\"\nid = \"{id}\"\n");
        for (path, format) in deliveries {
            text.push_str(&format!("\n[[deliver]]\npath = \"{path}\"\nformat = \"{format}\"\n"));
            if *format == "env" {
                text.push_str("key = \"VALUE\"\n");
            }
        }
        self.policy(name, &text);
    }

    /// `keyturn ARGS --config CONFIG`, waited for.
    pub fn keyturn(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_for(&self.config(), args)
    }

    /// `keyturn ARGS --config CONFIG` for another node's agent file (see [`World::node`]).
    pub fn command_for(&self, config: &Path, args: &[&str]) -> Command {
        self.command_via(&Binary::plain(Path::new(BIN)), config, args)
    }

    /// [`World::command_for`] with another binary, or its clock moved (see [`Binary`]).
    pub fn command_via(&self, binary: &Binary, config: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(&binary.path);
        command.envs(binary.env.iter().map(|(k, v)| (k, v)));
        command.args(args).arg("--config").arg(config).env_remove("KEYTURN_CONFIG");
        command.env_remove("KEYTURN_TEST_PAUSE_AT").env_remove("KEYTURN_LOG").env_remove("KEYTURN_LOG_FORMAT");
        // Never the developer's own Google credentials, and never a metadata-server probe:
        // tests that talk to the emulator name their key file.
        command
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .env_remove("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES")
            .env("HOME", self.disk.path());
        command
    }

    /// Another node sharing this world's policies and stores: its own agent file, node name,
    /// runtime directory (`RUNTIME/NAME`, still tmpfs) and state directory. Returns the file.
    pub fn node(&self, name: &str) -> PathBuf {
        let config = read(self.config())
            .replace("node = \"test-node\"", &format!("node = \"{name}\""))
            .replace(
                &format!("runtime_dir = \"{}\"", self.runtime.path().display()),
                &format!("runtime_dir = \"{}\"", self.runtime.path().join(name).display()),
            )
            .replace("state_dir = \"state\"", &format!("state_dir = \"state-{name}\""));
        let path = self.disk.path().join(format!("{name}.toml"));
        write(&path, &config);
        path
    }

    /// Appends `text` (more `[stores.NAME]` sections) to the agent file.
    pub fn add_stores(&self, text: &str) {
        let config = read(self.config());
        write(&self.config(), &format!("{config}\n{text}\n"));
    }

    /// `keyturn store put dev ID` with `value` on stdin; panics unless it succeeds.
    pub fn put(&self, id: &str, value: &str) {
        let out = self.put_into("dev", id, value, &[]);
        assert!(out.status.success(), "store put failed: {}", text(&out));
    }

    /// `keyturn store put STORE ID` with `value` on stdin and `env` added.
    pub fn put_into(&self, store: &str, id: &str, value: &str, env: &[(&str, &Path)]) -> Output {
        let mut child = self
            .command(&["store", "put", store, id])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn sync_once(&self) -> Output {
        self.keyturn(&["sync", "--once"])
    }

    /// Starts `keyturn agent`, logging to a file, with `env` added.
    pub fn agent(&self, env: &[(&str, &str)]) -> Agent {
        self.agent_with(env, &[])
    }

    /// Starts `keyturn agent` with `env` and `paths` (variables naming files) added.
    pub fn agent_with(&self, env: &[(&str, &str)], paths: &[(&str, &Path)]) -> Agent {
        self.agent_for(&self.config(), env, paths)
    }

    /// Starts `keyturn agent` for the agent file `config`.
    pub fn agent_for(&self, config: &Path, env: &[(&str, &str)], paths: &[(&str, &Path)]) -> Agent {
        self.agent_via(&Binary::plain(Path::new(BIN)), config, env, paths)
    }

    /// [`World::agent_for`] with another binary, or its clock moved (see [`Binary`]).
    pub fn agent_via(&self, binary: &Binary, config: &Path, env: &[(&str, &str)], paths: &[(&str, &Path)]) -> Agent {
        let log = self.disk.path().join(format!("agent-{}.log", unique()));
        // `--log` wins over KEYTURN_LOG, so a test that sets the variable gets its filter.
        let filter = env.iter().find(|(k, _)| *k == "KEYTURN_LOG").map_or("debug", |(_, v)| *v);
        let mut command = self.command_via(binary, config, &["agent", "--log", filter]);
        command
            .envs(env.iter().copied())
            .envs(paths.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(fs::OpenOptions::new().append(true).open(&log).unwrap()));
        Agent { child: Some(command.spawn().unwrap()), log }
    }

    /// The status as `keyturn status --json` prints it (which exits 1, after printing it, while
    /// a required policy is failing).
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.keyturn(&["status", "--json"]);
        let failing = String::from_utf8_lossy(&out.stderr).contains("required policies are failing");
        assert!(out.status.success() || (out.status.code() == Some(1) && failing), "status failed: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The running agent's admin listener (`127.0.0.1:PORT`), from the status file it writes
    /// at start.
    pub fn admin(&self) -> String {
        let mut address = String::new();
        wait_for("the admin address in status.json", Duration::from_secs(10), || {
            let status = fs::read_to_string(self.state().join("status.json")).unwrap_or_default();
            let value: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
            address = value["admin"].as_str().unwrap_or_default().to_string();
            !address.is_empty()
        });
        address
    }

    /// How many times the running agent has read a secret from `store`, successfully or not:
    /// `keyturn_store_requests_total{method="access"}` on its `/metrics`.
    pub fn store_reads(&self, store: &str) -> u64 {
        let (status, metrics) = http::request(&self.admin(), "GET", "/metrics", None).unwrap();
        assert_eq!(status, 200, "{metrics}");
        let reads = |result: &str| {
            let series =
                format!("keyturn_store_requests_total{{store=\"{store}\",method=\"access\",result=\"{result}\"}}");
            sample(&metrics, &series).unwrap_or(0.0) as u64
        };
        reads("ok") + reads("error")
    }

    /// Waits until the running agent has read from `store` `more` times since the call.
    ///
    /// The barrier for a test that asserts something does *not* happen: reads are what the
    /// agent does anyway, one per policy per poll, so K more reads span K-1 whole polls of its
    /// own time and work, however loaded the machine. A read is counted as it completes; with
    /// one policy on the store, the next starts only after its delivery is done. So of 3 more
    /// reads, the second began after the call, and the third proves that poll finished.
    pub fn wait_store_reads(&self, store: &str, more: u64) {
        let target = self.store_reads(store) + more;
        wait_for(&format!("{more} more reads of store {store}"), Duration::from_secs(10 + 5 * more), || {
            self.store_reads(store) >= target
        });
    }

    /// Every byte the test's files hold outside the runtime directory and store: logs,
    /// status, configuration.
    pub fn readable_outputs(&self) -> String {
        let mut all = String::new();
        for entry in walk(self.disk.path()) {
            if entry.starts_with(self.store()) {
                continue;
            }
            if let Ok(bytes) = fs::read(&entry) {
                all.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        all
    }
}

/// Which `keyturn` a command runs: a binary, with variables of its own.
#[derive(Debug, Clone)]
pub struct Binary {
    pub path: PathBuf,
    pub env: Vec<(String, String)>,
}

/// libfaketime, from Debian's `faketime` package (`scripts/test.sh` installs it), as the
/// `faketime` command preloads it; `$LIB` is the dynamic loader's own (`lib/x86_64-linux-gnu`).
/// The multi-threaded build: keyturn's blocking pool reads the clock from other threads.
pub const LIBFAKETIME: &str = "/usr/$LIB/faketime/libfaketimeMT.so.1";

impl Binary {
    pub fn plain(path: &Path) -> Binary {
        Binary { path: path.to_path_buf(), env: Vec::new() }
    }

    /// `path` with its wall clock moved by `offset` (`+2h`, `-2h`, `+1d`), as `faketime -f
    /// OFFSET` runs it: libfaketime preloaded, `FAKETIME` set. Not through the `faketime`
    /// command itself, which forks and waits, so that the process the test holds (and kills)
    /// is keyturn. The monotonic clock, which tokio's timers follow, stays real.
    pub fn faketime(path: &Path, offset: &str) -> Binary {
        let library = LIBFAKETIME.replace("$LIB", "lib/x86_64-linux-gnu");
        assert!(
            Path::new(&library).exists() || !cfg!(target_arch = "x86_64"),
            "{library} is missing: install the Debian package faketime (scripts/test.sh does)"
        );
        Binary {
            path: path.to_path_buf(),
            env: vec![
                ("LD_PRELOAD".into(), LIBFAKETIME.into()),
                ("FAKETIME".into(), offset.into()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ],
        }
    }
}

/// A running agent. Dropping it kills the process.
pub struct Agent {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Agent {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success());
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub fn wait_log(&self, needle: &str, count: usize) {
        wait_for(&format!("{count}x {needle:?} in the agent log"), Duration::from_secs(15), || {
            self.log_text().matches(needle).count() >= count
        });
        let _ = self.log_text();
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "agent did not exit within {timeout:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp-write");
    let mut file = fs::File::create(&tmp).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.sync_all().unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// [`write`] for bytes.
pub fn write_bytes(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp-write");
    let mut file = fs::File::create(&tmp).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
    fs::rename(&tmp, path).unwrap();
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub fn mode(path: impl AsRef<Path>) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Polls `done` every 20 ms until it holds, or panics after `timeout` naming `what`.
pub fn wait_for(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    wait_for_every(what, timeout, Duration::from_millis(20), done);
}

/// Whether `done` became true within `timeout`, checked every `every`: for a wait whose
/// failure message needs more than its name (an agent's log).
pub fn poll_until(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
    true
}

/// [`wait_for`] for a condition that is costly to check (a store listing, a child process):
/// polled every `every`, so the waiting does not load the machine it waits on.
pub fn wait_for_every(what: &str, timeout: Duration, every: Duration, done: impl FnMut() -> bool) {
    assert!(poll_until(timeout, every, done), "timed out after {timeout:?} waiting for {what}");
}

/// The value of one series (name and labels exactly as exposed) in a Prometheus exposition.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// Whether the tests run as root (CI does): tests that switch users need it.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// Whether this machine has a group named `name`.
pub fn group_exists(name: &str) -> bool {
    Command::new("getent").args(["group", name]).output().is_ok_and(|out| out.status.success())
}

/// The version directories of a bundle (`..2026_...`).
pub fn version_dirs(bundle: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = fs::read_dir(bundle)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..2"))
        .collect();
    dirs.sort();
    dirs
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}
