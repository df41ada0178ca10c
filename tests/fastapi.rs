//! End to end with a real consumer: the FastAPI app in `examples/fastapi/` under uvicorn,
//! signing JWTs with the Ed25519 key keyturn delivers and verifying them against the delivered
//! JWK set, while the agent rotates the key every few seconds and tells the app with SIGHUP.
//! A steady stream of requests must see no failure; every token must keep verifying until the
//! grace of its key ends; the app must reload once per change and never load a partial bundle.
//!
//! Needs the Python tools `scripts/test.sh` installs in `.venv` (or `KEYTURN_TEST_VENV`).

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{World, wait_for};

const PERIOD: Duration = Duration::from_secs(6);
const GRACE: Duration = Duration::from_secs(5);
/// How long before a key's grace ends the test stops insisting its tokens verify. The grace
/// counts from the creation of the version that replaced the key, read from the store; the
/// margin covers only the way from the test's check to the app answering a request.
const MARGIN: Duration = Duration::from_secs(1);

/// When the store made the version whose key `kid` names: the moment that key replaced the
/// one before it, from which the replaced key's grace counts.
fn created(world: &World, kid: &str) -> SystemTime {
    use keyturn::store::{SecretStore, Selector};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let config = keyturn::store::file::FileStoreConfig { dir: world.store(), seed: None };
        let store = keyturn::store::file::FileStore::open("dev", &config).await.unwrap();
        let id = keyturn::secret::SecretId::new("api-signing-key");
        for info in store.versions(&id).await.unwrap() {
            // Disabled versions cannot be read; the one wanted is current.
            let Ok(version) = store.access(&id, &Selector::Id(info.id.clone())).await else { continue };
            if keyturn::generate::PrivateKey::parse(&version.value).unwrap().public_key().kid() == kid {
                return info.created.unwrap();
            }
        }
        panic!("no version of api-signing-key has the key {kid}");
    })
}

fn venv() -> PathBuf {
    let venv = std::env::var_os("KEYTURN_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    assert!(
        venv.join("bin/uvicorn").exists(),
        "{} has no uvicorn: run scripts/test.sh, which installs the test-only Python tools",
        venv.display()
    );
    venv
}

/// The example app under uvicorn on a free loopback port. Killed on drop.
struct App {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl App {
    fn start(world: &World, bundle: &Path, pidfile: &Path) -> App {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = world.disk.path().join("uvicorn.log");
        let child = Command::new(venv().join("bin/uvicorn"))
            .args(["--app-dir", concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fastapi"), "app:app"])
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--no-access-log"])
            .env("KEYTURN_BUNDLE", bundle)
            .env("APP_PIDFILE", pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::OpenOptions::new().append(true).open(&log).unwrap()))
            .spawn()
            .unwrap();
        let app = App { child, port, log };
        wait_for("the app to serve", Duration::from_secs(30), || {
            app.request("GET", "/healthz", None).is_ok_and(|(s, _)| s == 200)
        });
        wait_for("the app's pidfile", Duration::from_secs(5), || pidfile.exists());
        app
    }

    fn request(&self, method: &str, path: &str, bearer: Option<&str>) -> Result<(u16, String), String> {
        common::http::request(&format!("127.0.0.1:{}", self.port), method, path, bearer)
    }

    fn json(&self, method: &str, path: &str, bearer: Option<&str>) -> Result<serde_json::Value, String> {
        match self.request(method, path, bearer)? {
            (200, body) => serde_json::from_str(&body).map_err(|e| e.to_string()),
            (status, body) => Err(format!("{method} {path}: {status} {body}")),
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_fastapi_app_serves_through_rotations_without_a_failed_request() {
    let world = World::new("poll = \"1s\"\njitter = \"0%\"");
    let pidfile = world.disk.path().join("app.pid");
    world.policy(
        "api-signing",
        &format!(
            "[secret]\nstore = \"dev\"\nid = \"api-signing-key\"\n\n\
             [rotate]\nevery = \"{}s\"\ngrace = \"{}s\"\njitter = \"0s\"\ngenerate = \"ed25519\"\n\n\
             [[deliver]]\npath = \"api/signing.pem\"\nformat = \"pem\"\n\n\
             [[deliver]]\npath = \"api/jwks.json\"\nformat = \"jwks\"\nmode = \"0444\"\n\n\
             [notify]\nsignal = {{ pidfile = \"{}\", signal = \"HUP\" }}\ncoalesce = \"200ms\"\n",
            PERIOD.as_secs(),
            GRACE.as_secs(),
            pidfile.display()
        ),
    );
    let agent = world.agent(&[]);
    wait_for("the first key", Duration::from_secs(15), || world.bundle("api/jwks.json").exists());
    // Counted before the app exists: until it writes its pidfile a change notifies nobody, and
    // every signal after that is one the app handles.
    let notified_before = agent.log_text().matches("notified policy=api-signing").count();
    let app = App::start(&world, &world.bundle("api"), &pidfile);

    let started = Instant::now();
    let mut requests = 0;
    let mut failures: Vec<String> = Vec::new();
    // Per kid: the latest token signed with it, and when the store made the key that replaced it.
    let mut tokens: HashMap<String, String> = HashMap::new();
    let mut replaced: HashMap<String, SystemTime> = HashMap::new();
    let mut current: Option<String> = None;
    let mut kids_in_order: Vec<String> = Vec::new();
    // Until the app has signed with the keys of three rotations (one every 6 s); by then the
    // first key is out of the set too.
    while kids_in_order.len() < 4 {
        assert!(
            started.elapsed() < PERIOD * 3 + Duration::from_secs(60),
            "timed out waiting for three rotations: {kids_in_order:?}"
        );
        requests += 1;
        let issued = match app.json("POST", "/token", None) {
            Ok(issued) => issued,
            Err(e) => {
                failures.push(format!("token at {:?}: {e}", started.elapsed()));
                continue;
            }
        };
        let (token, kid) = (issued["token"].as_str().unwrap().to_string(), issued["kid"].as_str().unwrap().to_string());
        if current.as_ref() != Some(&kid) {
            if let Some(old) = current.replace(kid.clone()) {
                replaced.insert(old, created(&world, &kid));
            }
            kids_in_order.push(kid.clone());
        }
        tokens.insert(kid.clone(), token.clone());
        // The token just issued verifies...
        requests += 1;
        if let Err(e) = app.json("GET", "/verify", Some(&token)) {
            failures.push(format!("fresh token of {kid} at {:?}: {e}", started.elapsed()));
        }
        // ...and so does every earlier token whose key is still inside its grace.
        for (old, token) in &tokens {
            if replaced.get(old).is_some_and(|at| SystemTime::now() + MARGIN < *at + GRACE) {
                requests += 1;
                if let Err(e) = app.json("GET", "/verify", Some(token)) {
                    failures.push(format!("token of replaced key {old} at {:?}: {e}", started.elapsed()));
                }
            }
        }
        // Pacing, not waiting: a steady stream of requests, not a flood.
        std::thread::sleep(Duration::from_millis(20));
    }

    assert!(failures.is_empty(), "{} of {requests} requests failed:\n{}", failures.len(), failures.join("\n"));
    // Throughput is not the point (a loaded machine serves fewer), only that requests kept coming.
    assert!(requests > 100, "a steady stream: {requests} requests");
    let rotations = kids_in_order.len() - 1;
    assert!(rotations >= 2, "several rotations during the run: {kids_in_order:?}");

    // After its grace, the first key is out of the verification set.
    let first = &tokens[&kids_in_order[0]];
    let (status, _) = app.request("GET", "/verify", Some(first)).unwrap();
    assert_eq!(status, 401, "a token of a key past its grace no longer verifies");

    // One reload per change the agent announced (a rotation, and the end of each grace), and
    // never a set the app had to refuse as partial or mismatched.
    // The agent keeps rotating: read both sides until they agree on the same moment.
    let (mut state, mut notified) = (serde_json::Value::Null, 0);
    wait_for("the app to have handled every notification", Duration::from_secs(15), || {
        notified = agent.log_text().matches("notified policy=api-signing").count() - notified_before;
        state = app.json("GET", "/-/state", None).unwrap();
        state["reloads"].as_u64() == Some(notified as u64)
    });
    assert_eq!(state["inconsistent"], 0, "{state}\n{}", std::fs::read_to_string(&app.log).unwrap_or_default());
    assert!(notified >= rotations, "at least one reload per rotation: {notified} for {rotations}");
    // And at most one per change: a rotation, the end of its grace, and one of each the test
    // may not have seen yet at the very end.
    assert!(notified <= 2 * rotations + 2, "one reload per change, not more: {notified} for {rotations} rotations");
    eprintln!("{requests} requests, 0 failed; {rotations} rotations; {notified} reloads, 0 inconsistent");
}
