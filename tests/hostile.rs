//! Hostile neighbours and hostile input (issue 14): the real agent, as root, next to an
//! unprivileged user who attacks it, and inputs built to hurt it. Each test names what a
//! red-team read found and proves it no longer works: a flood of idle admin connections, a
//! pidfile that is a FIFO, a link to `/dev/zero` or another user's process, a runtime
//! directory made by someone else first, stale pids in the status file, proxies and
//! redirects for outbound HTTP, hostile names and oversized store values.
//!
//! Tests that need a second user create one (`useradd`) and remove it when they end; they run
//! as root, as CI does.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::Recorder;
use common::{World, read, text, wait_for};

const POLL: &str = "poll = \"1s\"\njitter = \"0%\"";

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX) == 0
}

/// An unprivileged user of its own, removed on drop.
struct Neighbour {
    name: String,
    uid: u32,
    gid: u32,
}

impl Neighbour {
    fn create() -> Neighbour {
        assert!(is_root(), "this test creates a second user and runs as root, as CI does");
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("kt-nb-{}-{n}", std::process::id());
        let out = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", &name])
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd: {}", text(&out));
        let id = |flag: &str| {
            let out = Command::new("id").args([flag, &name]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        Neighbour { name, uid, gid }
    }

    /// `program args` as this user, with no capability.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--clear-groups", "--inh-caps=-all", program])
            .args(args);
        command
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program, args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?} as {}: {}", self.name, text(&out));
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-KILL", "-u", &self.name]).status();
        let _ = Command::new("userdel").arg(&self.name).output();
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// A process that is killed on drop.
struct Process(Child);

impl Process {
    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sleeper(command: &mut Command) -> Process {
    Process(command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
}

/// `keyturn agent` with `prefix` (shell commands: limits) run first in the same process.
fn agent_after(world: &World, prefix: &str, env: &[(&str, &str)]) -> common::Agent {
    let log = world.disk.path().join(format!("agent-{}.log", std::process::id()));
    let keyturn = world.command(&["agent", "--log", "debug"]);
    let mut command = Command::new("sh");
    command.arg("-c").arg(format!("{prefix}; exec \"$0\" \"$@\"")).arg(keyturn.get_program());
    command.args(keyturn.get_args()).env("HOME", world.disk.path()).env_remove("KEYTURN_CONFIG");
    command.envs(env.iter().copied());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(std::fs::OpenOptions::new().append(true).open(&log).unwrap()));
    common::Agent { child: Some(command.spawn().unwrap()), log }
}

fn limit(pid: i32, name: &str) -> (String, String) {
    let limits = read(format!("/proc/{pid}/limits"));
    let line = limits.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {limits}"));
    let fields: Vec<&str> = line[name.len()..].split_whitespace().collect();
    (fields[0].to_string(), fields[1].to_string())
}

fn healthz(address: &str) -> Result<u16, String> {
    common::http::request(address, "GET", "/healthz", None).map(|(status, _)| status)
}

// 1. -----------------------------------------------------------------------------------------

/// Hundreds of idle connections to the admin port used to take every file descriptor the
/// agent had: `/healthz` stopped answering and store reads failed with "Too many open files".
#[test]
fn idle_admin_connections_neither_silence_healthz_nor_starve_the_store() {
    let world = World::new(POLL);
    world.simple_policy("db", "db", &[("app/db", "raw")]);
    world.put("db", "v1");
    // A soft limit below the hard one, as a default shell gives: the agent raises it.
    let agent = agent_after(&world, "ulimit -Sn 100; ulimit -Hn 400", &[]);
    let address = world.admin();
    wait_for("the first delivery", Duration::from_secs(10), || world.bundle("app/db").exists());
    assert_eq!(limit(agent.pid(), "Max open files"), ("400".into(), "400".into()), "the soft limit is raised");

    // More idle connections than the agent has descriptors.
    let idle: Vec<TcpStream> = (0..600).filter_map(|_| TcpStream::connect(&address).ok()).collect();
    assert!(idle.len() >= 300, "{} connections", idle.len());
    let asked = Instant::now();
    let mut answered = None;
    wait_for("/healthz during the flood", Duration::from_secs(20), || {
        answered = healthz(&address).ok();
        answered.is_some()
    });
    assert_eq!(answered, Some(200));
    // The bound is the behaviour: a probe waits at most for the oldest idle connection to be
    // dropped, not for the flood to end (it never does here).
    assert!(asked.elapsed() < Duration::from_secs(15), "{:?}", asked.elapsed());
    world.put("db", "v2");
    wait_for("delivery during the flood", Duration::from_secs(15), || read(world.bundle("app/db")) == "v2");
    assert!(!agent.log_text().contains("Too many open files"), "{}", agent.log_text());
    drop(idle);
}

// 2. -----------------------------------------------------------------------------------------

fn signal_policy(world: &World, pidfile: &Path, signal: &str) {
    world.policy(
        "app",
        &format!(
            "[secret]\nstore = \"dev\"\nid = \"app\"\n[[deliver]]\npath = \"app/key\"\n\
             [notify]\nsignal = {{ pidfile = \"{}\", signal = \"{signal}\" }}\nattempts = 1\n",
            pidfile.display()
        ),
    );
}

fn wait_notify_error(world: &World, needle: &str) -> String {
    let mut error = String::new();
    // From the status file, not the control socket: an agent frozen by the bug would hang a
    // socket client, and the test would wait forever instead of failing.
    wait_for(&format!("a notify error with {needle:?}"), Duration::from_secs(15), || {
        let status = std::fs::read_to_string(world.state().join("status.json")).unwrap_or_default();
        let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
        error = status["policies"]["app"]["notify_error"].as_str().unwrap_or_default().to_string();
        error.contains(needle)
    });
    error
}

/// A FIFO as pidfile froze the whole agent on its one runtime thread: every policy,
/// `/healthz` and the control socket.
#[test]
fn a_fifo_pidfile_freezes_nothing() {
    let world = World::new(POLL);
    let pidfile = world.disk.path().join("app.pid");
    let made = Command::new("mkfifo").arg(&pidfile).status().unwrap();
    assert!(made.success());
    signal_policy(&world, &pidfile, "HUP");
    world.simple_policy("other", "other", &[("other/value", "raw")]);
    world.put("app", "a1");
    world.put("other", "o1");
    let agent = world.agent(&[]);
    let address = world.admin();
    let error = wait_notify_error(&world, "not a regular file");
    assert!(error.contains(&pidfile.display().to_string()), "{error}");
    assert_eq!(healthz(&address), Ok(200));
    world.put("other", "o2");
    wait_for("the other policy", Duration::from_secs(10), || read(world.bundle("other/value")) == "o2");
    drop(agent);
}

/// A pidfile linked to `/dev/zero` made the agent read without end. The agent runs here with
/// a 2 GiB address-space limit, so that the bug, if it came back, would end the agent
/// rather than the test machine.
#[test]
fn a_pidfile_linked_to_dev_zero_is_refused_without_reading_it() {
    let world = World::new(POLL);
    let pidfile = world.disk.path().join("app.pid");
    std::os::unix::fs::symlink("/dev/zero", &pidfile).unwrap();
    signal_policy(&world, &pidfile, "HUP");
    world.put("app", "a1");
    let mut agent = agent_after(&world, "ulimit -v 2097152", &[]);
    let error = wait_notify_error(&world, "symbolic link");
    assert!(error.contains(&pidfile.display().to_string()), "{error}");
    assert!(agent.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the agent runs on");
}

/// The application writes its pidfile: it may name any process. Only a process of the
/// pidfile's owner is signalled, and never the agent itself.
#[test]
fn a_pidfile_naming_another_users_process_or_the_agent_signals_nothing() {
    let neighbour = Neighbour::create();
    let world = World::new(POLL);
    let dir = world.disk.path().join("app-run");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(world.disk.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&dir, Some(neighbour.uid), Some(neighbour.gid)).unwrap();
    let pidfile = dir.join("app.pid");
    // Root's process, which SIGHUP would end.
    let mut victim = sleeper(Command::new("sleep").arg("1000"));
    let victim_pid = victim.0.id();
    neighbour.run("sh", &["-c", &format!("echo {victim_pid} > {}", pidfile.display())]);
    signal_policy(&world, &pidfile, "HUP");
    world.put("app", "a1");
    let agent = world.agent(&[]);
    let error = wait_notify_error(&world, "not signalled");
    assert!(error.contains(&format!("process {victim_pid}")), "{error}");
    assert!(victim.alive(), "root's process was not signalled");

    // The agent itself, named by a root-owned pidfile.
    let own = world.disk.path().join("own.pid");
    common::write(&own, &format!("{}\n", agent.pid()));
    signal_policy(&world, &own, "TERM");
    // The new notifier must be running before the next version arrives: were a2 delivered
    // under the old policy, nothing would be left to notify. `keyturn reload` returns once the
    // agent runs the files as they are (whether it or the file watch applied them).
    let reloaded = world.keyturn(&["reload"]);
    assert!(reloaded.status.success(), "{}", text(&reloaded));
    world.put("app", "a2");
    wait_notify_error(&world, "the agent itself");
    let mut agent = agent;
    assert!(agent.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the agent did not stop itself");
}

// 3. -----------------------------------------------------------------------------------------

/// A runtime directory someone else made first (world-writable, as `/dev/shm` lets anyone)
/// was accepted: its owner could later swap a bundle and feed the application a value.
#[test]
fn a_runtime_directory_made_by_another_user_is_refused() {
    let neighbour = Neighbour::create();
    let world = World::new("");
    let taken = Path::new("/dev/shm").join(format!("keyturn-taken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&taken);
    neighbour.run("mkdir", &["-m", "0777", &taken.display().to_string()]);
    let config = read(world.config()).replace(
        &format!("runtime_dir = \"{}\"", world.run_dir().display()),
        &format!("runtime_dir = \"{}\"", taken.display()),
    );
    common::write(&world.config(), &config);
    world.simple_policy("db", "db", &[("app/db", "raw")]);
    world.put("db", "v1");
    let out = world.sync_once();
    let _ = std::fs::remove_dir_all(&taken);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("owned by uid {}", neighbour.uid)), "{stderr}");
}

/// A bundle whose visible link was pointed elsewhere is not "already current".
#[test]
fn a_bundle_whose_visible_link_was_changed_is_delivered_again() {
    let world = World::new("");
    world.simple_policy("db", "db", &[("app/db", "raw")]);
    world.put("db", "v1");
    assert!(world.sync_once().status.success());
    let decoy = world.disk.path().join("decoy");
    common::write(&decoy, "attacker");
    std::fs::remove_file(world.bundle("app/db")).unwrap();
    std::os::unix::fs::symlink(&decoy, world.bundle("app/db")).unwrap();
    let out = world.sync_once();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(world.bundle("app/db")), "v1");
    assert_eq!(std::fs::read_link(world.bundle("app/db")).unwrap(), Path::new("..data/db"));
}

/// Only bundles keyturn made are removed when no policy delivers them any more.
#[test]
fn a_directory_keyturn_did_not_make_is_never_removed() {
    let world = World::new("");
    world.simple_policy("db", "db", &[("app/db", "raw")]);
    world.put("db", "v1");
    let foreign = world.bundle("foreign");
    std::fs::create_dir_all(foreign.join("..2020_01_01_00_00_00.000000001")).unwrap();
    common::write(&foreign.join("..2020_01_01_00_00_00.000000001/precious"), "keep me");
    std::os::unix::fs::symlink("..2020_01_01_00_00_00.000000001", foreign.join("..data")).unwrap();
    let out = world.sync_once();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(foreign.join("..data/precious")), "keep me");
}

// 4. -----------------------------------------------------------------------------------------

#[test]
fn a_generator_whose_values_a_format_cannot_deliver_is_refused_by_validate() {
    let world = World::new("");
    world.policy(
        "db",
        "[secret]\nstore = \"dev\"\nid = \"db\"\n[rotate]\nevery = \"30d\"\ngenerate = \"password:32\"\ncharset = \"printable\"\n\
         [[deliver]]\npath = \"app/db.env\"\nformat = \"env\"\nkey = \"DB\"\n",
    );
    let out = world.keyturn(&["validate"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("db.toml:10: deliver[0].format:") && stderr.contains("charset"), "{stderr}");
}

/// A new value that a delivery of the policy cannot render is discarded, never promoted.
#[test]
fn a_rotation_whose_value_cannot_be_rendered_promotes_nothing() {
    let world = World::new("");
    world.policy(
        "db",
        "[secret]\nstore = \"dev\"\nid = \"db\"\n[rotate]\nevery = \"30d\"\ngenerate = \"password:16\"\n\
         [[deliver]]\npath = \"app/user\"\nformat = \"template\"\ntemplate = \"{{ (secret | fromjson).user }}\"\n",
    );
    world.put("db", "{\"user\": \"app\"}");
    let out = world.keyturn(&["rotate", "db", "--now"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("app/user"), "the delivery that failed is named: {stderr}");
    let current = world.keyturn(&["store", "get", "dev", "db"]);
    assert_eq!(String::from_utf8_lossy(&current.stdout), "{\"user\": \"app\"}", "nothing promoted");
}

// 6. -----------------------------------------------------------------------------------------

/// Proxy variables redirected loopback traffic, bearer token included; redirects were
/// followed and the body posted again.
#[test]
fn outbound_http_to_loopback_ignores_proxies_and_follows_no_redirect() {
    let world = World::new("");
    let proxy = Recorder::start(TcpListener::bind("127.0.0.1:0").unwrap(), vec![]);
    let target = Recorder::start(TcpListener::bind("127.0.0.1:0").unwrap(), vec![]);
    let redirector = TcpListener::bind("127.0.0.1:0").unwrap();
    let redirect_address = redirector.local_addr().unwrap().to_string();
    let location = format!("http://{}/stolen", target.address);
    std::thread::spawn(move || {
        for stream in redirector.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = write!(
                stream,
                "HTTP/1.1 307 X\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    let token = world.disk.path().join("token");
    common::write(&token, "bearer-fixture-7c1\n");
    world.policy(
        "app",
        &format!(
            "[secret]\nstore = \"dev\"\nid = \"app\"\n[[deliver]]\npath = \"app/key\"\n\
             [notify]\nhttp = {{ url = \"http://{}/reload\", bearer_token_file = \"{}\" }}\nattempts = 1\n\
             [secrets.other]\nstore = \"dev\"\nid = \"other\"\n",
            target.address,
            token.display()
        ),
    );
    world.policy(
        "moved",
        &format!(
            "[secret]\nstore = \"dev\"\nid = \"moved\"\n[[deliver]]\npath = \"moved/key\"\n\
             [notify]\nhttp = {{ url = \"http://{redirect_address}/reload?sig=query-fixture-91\", bearer_token_file = \"{}\" }}\nattempts = 1\n",
            token.display()
        ),
    );
    world.put("app", "a1");
    world.put("other", "o1");
    world.put("moved", "m1");
    let proxy_url = format!("http://{}", proxy.address);
    let out = world
        .command(&["sync", "--once"])
        .env("http_proxy", &proxy_url)
        .env("HTTP_PROXY", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .env("all_proxy", &proxy_url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(proxy.requests().is_empty(), "nothing went through the proxy: {:#?}", proxy.requests());
    let reached: Vec<String> = target.requests().iter().map(|r| r.head.lines().next().unwrap().to_string()).collect();
    assert_eq!(reached, ["post /reload http/1.1"], "the redirect was not followed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("307"), "{stderr}");
    assert!(!stderr.contains("query-fixture-91"), "no query string in messages: {stderr}");
    assert!(!stderr.contains("bearer-fixture-7c1"), "no token in messages: {stderr}");
}

#[test]
fn outbound_urls_with_credentials_are_refused_without_printing_them() {
    let world = World::new("");
    world.policy(
        "app",
        "[secret]\nstore = \"dev\"\nid = \"app\"\n[[deliver]]\npath = \"app/key\"\n\
         [notify]\nhttp = { url = \"https://user:pw-fixture-3e@example.com/reload?token=query-fixture-3e\" }\n",
    );
    let out = world.keyturn(&["validate"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("credentials"), "{stderr}");
    assert!(!stderr.contains("fixture-3e"), "{stderr}");
}

// 7. -----------------------------------------------------------------------------------------

/// Child processes inherited the agent's whole environment, and a timeout killed only the
/// child: what it started ran on. A grandchild holding the output pipe made a quick command
/// look hung.
#[test]
fn child_processes_get_their_own_environment_and_process_group() {
    let world = World::new("");
    let env = world.disk.path().join("env");
    let grandchild = world.disk.path().join("grandchild.pid");
    let quick = world.disk.path().join("quick.pid");
    let policy = |name: &str, script: &str, timeout: &str| {
        world.policy(
            name,
            &format!(
                "[secret]\nstore = \"dev\"\nid = \"{name}\"\n[[deliver]]\npath = \"{name}/key\"\n\
                 [notify]\nexec = {{ command = [\"sh\", \"-c\", \"{script}\"], timeout = \"{timeout}\" }}\nattempts = 1\n"
            ),
        );
        world.put(name, "v1");
    };
    policy("env", &format!("env > {}", env.display()), "10s");
    policy("hung", &format!("sleep 1000 & echo $! > {}; wait", grandchild.display()), "1s");
    // Its background `sleep` keeps the output pipe open.
    policy("quick", &format!("sleep 1000 & echo $! > {}", quick.display()), "20s");
    let started = Instant::now();
    let out = world
        .command(&["sync", "--once"])
        .env("AGENT_ONLY_CREDENTIAL", "credential-fixture-5d")
        .env("GOOGLE_APPLICATION_CREDENTIALS", "/etc/keyturn/credential-fixture-5d.json")
        .output()
        .unwrap();
    let took = started.elapsed();
    let pid = |path: &Path| read(path).trim().parse::<i32>().unwrap();
    let alive = |pid: i32| {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        !state.is_empty() && !state.rsplit(')').next().unwrap_or("").trim_start().starts_with(['Z', 'X'])
    };
    let (hung, quick_child) = (pid(&grandchild), pid(&quick));
    let leftovers: Vec<i32> = [hung, quick_child].into_iter().filter(|p| alive(*p)).collect();
    for leftover in &leftovers {
        let _ = Command::new("kill").args(["-KILL", &leftover.to_string()]).status();
    }
    assert!(out.status.success(), "{}", text(&out));
    let environment = read(&env);
    assert!(!environment.contains("credential-fixture-5d"), "{environment}");
    assert!(environment.contains("KEYTURN_POLICY=env"), "{environment}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sh took longer than 1s and was killed"), "{stderr}");
    wait_for("the timed-out notifier's grandchild to be gone", Duration::from_secs(5), || !alive(hung));
    // The quick notifier exits at once; its backgrounded children are its own business, and
    // one of them holding the output must not make it look hung (20 s, its timeout).
    assert!(!stderr.contains("sh took longer than 20s"), "{stderr}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(leftovers, [quick_child], "only the quick notifier's own background process outlived it");
}

// 8. -----------------------------------------------------------------------------------------

/// A version file far beyond Google's 64 KiB is refused before it is read.
#[test]
fn an_oversized_store_value_is_refused_by_its_size() {
    let world = World::new("");
    world.simple_policy("db", "db", &[("app/db", "raw")]);
    world.put("db", "v1");
    let version = world.store().join("db/versions/1");
    std::fs::set_permissions(&version, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&version).unwrap();
    file.set_len(64 * 1024 * 1024).unwrap();
    let out = world.sync_once();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("larger than 65536 bytes"), "{stderr}");
}

#[test]
fn an_oversized_value_is_refused_by_store_put() {
    let world = World::new("");
    let out = world.put_into("dev", "big", &"x".repeat(70 * 1024), &[]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("65536 bytes"), "{}", text(&out));
}

/// A seed file's mistakes are placed by line, and never quote a value.
#[test]
fn a_bad_seed_file_is_named_by_line_without_its_values() {
    let world = World::new("");
    common::write(&world.disk.path().join("seed.toml"), "good = \"fine\"\nbad = 918273645\n");
    let config = read(world.config()).replace("dir = \"store\"", "dir = \"store\"\nseed = \"seed.toml\"");
    common::write(&world.config(), &config);
    let out = world.keyturn(&["store", "get", "dev", "good"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("seed.toml") && stderr.contains("line 2"), "{stderr}");
    assert!(!stderr.contains("918273645"), "{stderr}");
}

/// A control-socket caller that sends nothing, or a line without end, is cut off.
#[test]
fn a_silent_or_endless_control_request_is_cut_off() {
    let world = World::new("");
    world.simple_policy("db", "db", &[("app/db", "raw")]);
    world.put("db", "v1");
    let _agent = world.agent(&[]);
    let socket = world.run_dir().join(".keyturn.sock");
    wait_for("the control socket", Duration::from_secs(10), || socket.exists());

    let mut endless = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    endless.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < 16 * 1024 * 1024 {
        if endless.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let mut answer = String::new();
    let _ = endless.read_to_string(&mut answer);
    assert!(answer.contains("too long"), "{answer:?} after {sent} bytes");

    let mut silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let started = Instant::now();
    let mut answer = String::new();
    let _ = silent.read_to_string(&mut answer);
    // The bound is the behaviour: the agent hangs up on its own, long before the client's
    // 60 s read timeout (its limit is 10 s).
    assert!(started.elapsed() < Duration::from_secs(40), "{:?}", started.elapsed());
    assert!(answer.contains("no request"), "{answer:?}");
}

// 9. -----------------------------------------------------------------------------------------

/// A stopped agent's pid stayed in status.json; after pid reuse, `keyturn rotate --now` sent
/// SIGUSR1 to whatever process had it.
#[test]
fn a_stale_pid_in_the_status_file_is_never_signalled() {
    let world = World::new("");
    world.policy(
        "db",
        "[secret]\nstore = \"dev\"\nid = \"db\"\n[rotate]\nevery = \"30d\"\ngenerate = \"password:16\"\n[[deliver]]\npath = \"app/db\"\n",
    );
    let mut agent = world.agent(&[]);
    wait_for("the first delivery", Duration::from_secs(10), || world.bundle("app/db").exists());
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(20)), Some(0));
    let status: serde_json::Value = serde_json::from_str(&read(world.state().join("status.json"))).unwrap();
    assert_eq!(status["pid"], 0, "a stopped agent leaves no pid: {status}");
    let out = world.keyturn(&["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("agent not running"), "{}", text(&out));

    // The pid of an unrelated process (SIGUSR1 ends `sleep`), as after pid reuse.
    let mut stranger = sleeper(Command::new("sleep").arg("1000"));
    let mut status = status;
    status["pid"] = serde_json::json!(stranger.0.id());
    common::write(&world.state().join("status.json"), &status.to_string());
    let out = world.keyturn(&["rotate", "db", "--now"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stranger.alive(), "the stranger got no signal: {}", text(&out));
    let out = world.keyturn(&["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("agent not running"), "{}", text(&out));
}

// 10. ----------------------------------------------------------------------------------------

#[test]
fn the_agent_can_write_no_core_dump() {
    let world = World::new("");
    world.simple_policy("db", "db", &[("app/db", "raw")]);
    world.put("db", "v1");
    let agent = agent_after(&world, "ulimit -c unlimited", &[]);
    world.admin();
    assert_eq!(limit(agent.pid(), "Max core file size"), ("0".into(), "0".into()));
}

// 11. ----------------------------------------------------------------------------------------

#[test]
fn delivery_paths_with_control_bidi_or_colon_characters_are_refused() {
    let world = World::new("");
    for (name, path) in [("bidi", "app/\\u202Etxt.exe"), ("control", "app/a\\u0007b"), ("colon", "app:x/key")] {
        world.policy(name, &format!("[secret]\nstore = \"dev\"\nid = \"{name}\"\n[[deliver]]\npath = \"{path}\"\n"));
    }
    let out = world.keyturn(&["validate"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in ["bidi.toml:5: deliver[0].path", "control.toml:5: deliver[0].path", "colon.toml:5: deliver[0].path"] {
        assert!(stderr.contains(name), "missing {name} in {stderr}");
    }
}
