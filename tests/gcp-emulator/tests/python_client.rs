//! Google's own published Python client (`google-cloud-secret-manager`, REST transport,
//! unmodified) against the emulator binary, with credentials from its `--print-key` file.
//!
//! The cases live in `clients/python/test_google_client.py` (unittest); this test starts
//! `gcp-emulator --print-key`, runs the script with the emulator's URL and key file in its
//! environment, and fails with the script's whole output if any case fails. The script asserts
//! how many cases ran, so none can go missing silently.
//!
//! The client comes from the test venv: `$KEYTURN_TEST_VENV` (which `scripts/test.sh`
//! exports, so CI always runs this), else `.venv` at the top of the repository. When
//! `KEYTURN_TEST_VENV` is set or `CI` is, a venv without the client fails the test. Otherwise
//! the test says on stderr how to install the client and passes without running it, so
//! `cargo test -p gcp-emulator` still works on a machine without Python.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PROJECT_ID: &str = "acme-edge";
const PROJECT_NUMBER: &str = "435468002770";
/// Generous for a loaded 2-core machine; the script takes a few seconds on a quiet one.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(600);
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python")
}

/// The venv's python, if it has Google's client. Panics when the client is required.
fn python_with_google_client() -> Option<PathBuf> {
    let explicit = std::env::var_os("KEYTURN_TEST_VENV").map(PathBuf::from);
    let required = explicit.is_some() || std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let venv = explicit.unwrap_or_else(|| repo_root().join(".venv"));
    let python = venv.join("bin/python");
    let probe = Command::new(&python)
        .args(["-c", "import google.cloud.secretmanager, google_crc32c"])
        .stdin(Stdio::null())
        .output();
    let why = match probe {
        Ok(output) if output.status.success() => return Some(python),
        Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        Err(error) => format!("{}: {error}", python.display()),
    };
    let how = format!(
        "Google's Python client is missing from {venv}: run scripts/test.sh (it installs \
         tests/gcp-emulator/clients/python/requirements.txt into the test venv), or \
         `{venv}/bin/pip install -r tests/gcp-emulator/clients/python/requirements.txt`. ({why})",
        venv = venv.display()
    );
    assert!(!required, "{how}");
    // Written past the test harness's capture on purpose: a skip must be seen.
    let _ = writeln!(std::io::stderr(), "\nSKIPPED google_python_client_passes_every_case: {how}\n");
    None
}

/// A scratch directory, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> ScratchDir {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        let path = std::env::temp_dir().join(format!("gcp-emulator-python-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("scratch directory");
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gcp-emulator --print-key KEY`, once it says it listens; returns it and its URL.
fn start_emulator(key_file: &Path) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gcp-emulator"))
        .args(["--port", "0", "--project-id", PROJECT_ID, "--project-number", PROJECT_NUMBER, "--key-role", "admin"])
        .arg("--print-key")
        .arg(key_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the gcp-emulator binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let emulator = Killed(child);
    let (lines, line) = mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = BufReader::new(stdout).read_line(&mut first);
        let _ = lines.send(first);
    });
    let first = line.recv_timeout(STARTUP_DEADLINE).expect("the emulator announces its URL");
    let url = first.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    (emulator, url.to_owned())
}

#[test]
fn google_python_client_passes_every_case() {
    let Some(python) = python_with_google_client() else {
        return;
    };
    let scratch = ScratchDir::new();
    let key_file = scratch.0.join("service-account.json");
    let (_emulator, endpoint) = start_emulator(&key_file);

    let script = client_dir().join("test_google_client.py");
    let cases = std::fs::read_to_string(&script).expect("the script reads").matches("\n    def test_").count();
    assert!(cases >= 20, "the script should hold every case; found {cases}");
    let log_path = scratch.0.join("python.log");
    let log = File::create(&log_path).expect("log file");
    let mut child = Command::new(&python)
        .arg(&script)
        .env("GCP_EMULATOR_ENDPOINT", &endpoint)
        .env("GCP_EMULATOR_KEY_FILE", &key_file)
        .env("GCP_EMULATOR_PROJECT_ID", PROJECT_ID)
        .env("GCP_EMULATOR_PROJECT_NUMBER", PROJECT_NUMBER)
        // Nothing from the environment may redirect the client: no ambient credentials, no
        // mTLS or universe-domain switch of the endpoint, no lookup that would call Google's
        // IAM, no proxy in front of 127.0.0.1, no byte-code written into the source tree.
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("GOOGLE_CLOUD_PROJECT")
        .env_remove("GOOGLE_API_USE_CLIENT_CERTIFICATE")
        .env_remove("GOOGLE_API_USE_MTLS_ENDPOINT")
        .env_remove("GOOGLE_CLOUD_UNIVERSE_DOMAIN")
        .env_remove("GOOGLE_SDK_EXPERIMENTAL_PYTHON_REGIONAL_ACCESS_BOUNDARY_LOOKUP_ENABLED")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("python starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("python status") {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let Some(status) = status else {
        panic!("the Python client's cases did not finish within {SCRIPT_DEADLINE:?}:\n{output}");
    };
    assert!(status.success(), "Google's Python client failed against the emulator ({status}):\n{output}");
    assert!(output.contains(&format!("\nRan {cases} tests in ")), "expected {cases} cases to run:\n{output}");
    assert!(output.trim_end().ends_with("OK"), "expected a plain OK, without skips:\n{output}");
    println!("{output}");
}
