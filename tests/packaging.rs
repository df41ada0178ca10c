//! Packaging, checked offline with the tools operators use: the systemd unit with
//! `systemd-analyze` (verify, and the security exposure score as a gate), the Kubernetes
//! manifests with `kubernetes-validate --strict`, and the example ConfigMap's configuration
//! with `keyturn validate`. Nothing here starts the agent.
//!
//! Needs `systemd-analyze` (Debian: the `systemd` package) and the Python tools
//! `scripts/test.sh` installs in `.venv` (or `KEYTURN_TEST_VENV`): kubernetes-validate, and the
//! PyYAML it brings, which reads the manifests here (the crate has no YAML parser).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Exposure ceilings in tenths, as `--threshold` takes them. The unit runs as its own user with
/// no capability: 1.4 (systemd/README.md itemizes it). owners.conf adds CAP_CHOWN, CAP_FOWNER
/// and CAP_KILL for deployments that hand files to other users: 1.9.
const UNIT_THRESHOLD: u32 = 15;
const OWNERS_THRESHOLD: u32 = 19;

/// The oldest Kubernetes minor the manifests claim, and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];

/// Kinds from CRDs, which kubernetes-validate has no schema for: it warns and passes them, so
/// these are checked here instead. Any other kind it does not know is a typo and fails.
const CRD_KINDS: [&str; 1] = ["PodMonitor"];

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    for variant in [Variant::Plain, Variant::Owners, Variant::FederatedIdentity] {
        let dir = tempfile::tempdir().unwrap();
        let unit = install_unit(dir.path(), variant);
        let mut out = systemd_analyze(&["verify", "--man=no"], &unit);
        if let Variant::FederatedIdentity = variant {
            // The path unit, and the one-shot it starts, beside the agent's unit.
            for file in ["keyturn-identity.path", "keyturn-identity.service"] {
                common::write(&dir.path().join(file), &common::read(Path::new(REPO).join("systemd").join(file)));
            }
            let path_unit = systemd_analyze(&["verify", "--man=no"], &dir.path().join("keyturn-identity.path"));
            out.status = if path_unit.status.success() { out.status } else { path_unit.status };
            out.stderr.extend(path_unit.stderr);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        // verify exits 0 even for unknown keys and unparsable values; it reports them on stderr,
        // naming the file. Lines about other units (of the host) are not ours to fix.
        let problems: Vec<&str> =
            stderr.lines().filter(|l| l.contains("keyturn") || l.contains(&*dir.path().to_string_lossy())).collect();
        assert!(out.status.success() && problems.is_empty(), "{variant:?}: {}", common::text(&out));
    }
}

#[test]
fn the_unit_scores_1_5_or_better_in_systemd_analyze_security() {
    let dir = tempfile::tempdir().unwrap();
    let score = security_score(&install_unit(dir.path(), Variant::Plain), UNIT_THRESHOLD);
    println!("systemd/keyturn.service: exposure {score}");
}

#[test]
fn the_unit_with_a_federated_identity_keeps_its_exposure() {
    let dir = tempfile::tempdir().unwrap();
    let score = security_score(&install_unit(dir.path(), Variant::FederatedIdentity), UNIT_THRESHOLD);
    println!("systemd/keyturn.service + federated-identity.conf: exposure {score}");
    // The configuration it names is one keyturn reads, with the credential systemd hands over.
    use keyturn::store::gcp::identity::credential_config::{ExternalAccountConfig, SubjectTokenSource};
    let text = common::read(Path::new(REPO).join("systemd/gcp-credentials.json"));
    let config = ExternalAccountConfig::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let drop_in = common::read(Path::new(REPO).join("systemd/federated-identity.conf"));
    let credential =
        drop_in.lines().find_map(|l| l.strip_prefix("LoadCredential=")).unwrap().split(':').next().unwrap();
    let SubjectTokenSource::File { path, .. } = &config.source else { panic!("{:?}", config.source) };
    assert_eq!(path, &Path::new("/run/credentials/keyturn.service").join(credential));
    assert!(drop_in.contains("Environment=GOOGLE_APPLICATION_CREDENTIALS=/etc/keyturn/gcp-credentials.json"));
}

#[test]
fn the_unit_with_owners_conf_scores_1_9_or_better_in_systemd_analyze_security() {
    let dir = tempfile::tempdir().unwrap();
    let score = security_score(&install_unit(dir.path(), Variant::Owners), OWNERS_THRESHOLD);
    println!("systemd/keyturn.service + owners.conf: exposure {score}");
}

#[test]
fn every_kubernetes_manifest_passes_kubernetes_validate_strict() {
    let tool = venv().join("bin/kubernetes-validate");
    assert!(
        tool.exists(),
        "{} is missing: run scripts/test.sh, which installs it (or `pip install kubernetes-validate` into {})",
        tool.display(),
        venv().display()
    );
    let manifests = manifests();
    assert!(manifests.len() >= 5, "expected the example's manifests in examples/kubernetes: {manifests:?}");

    for version in KUBERNETES_VERSIONS {
        let out = Command::new(&tool).args(["--strict", "-k", version]).args(&manifests).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "kubernetes {version}: {}", common::text(&out));
        for file in &manifests {
            // Each line: LEVEL FILE MESSAGE, with FILE as given.
            let name = file.to_string_lossy();
            let lines: Vec<&str> = stdout.lines().filter(|l| l.split_whitespace().nth(1) == Some(&*name)).collect();
            assert!(!lines.is_empty(), "kubernetes {version}: nothing said about {name}:\n{stdout}");
            for line in lines {
                let crd = CRD_KINDS.iter().any(|kind| line.contains(&format!("Couldn't find schema for kind {kind} ")));
                assert!(line.starts_with("INFO") && line.contains(" passed ") || crd, "kubernetes {version}: {line}");
            }
        }
    }

    // The PodMonitor, as YAML: it must scrape the DaemonSet's pods on the admin port.
    let daemonset = document("daemonset.yaml", "DaemonSet");
    let monitor = document("podmonitor.yaml", "PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["namespace"], daemonset["metadata"]["namespace"]);
    assert_eq!(monitor["spec"]["selector"]["matchLabels"], daemonset["spec"]["selector"]["matchLabels"]);
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let port = container(&daemonset)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == endpoint["port"])
        .unwrap_or_else(|| panic!("the DaemonSet has no port named {}", endpoint["port"]));
    let annotations = &daemonset["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port["containerPort"].to_string());
}

#[test]
fn the_configmap_holds_a_valid_keyturn_configuration() {
    let configmap = document("configmap.yaml", "ConfigMap");
    let daemonset = document("daemonset.yaml", "DaemonSet");
    let data = configmap["data"].as_object().expect("the ConfigMap has data");

    // The volume's `items` place each key; a key left out of them is never mounted.
    let volume = daemonset["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == configmap["metadata"]["name"])
        .expect("a volume from the ConfigMap");
    let items: Vec<(&str, &str)> = volume["configMap"]["items"]
        .as_array()
        .expect("the volume lists its items")
        .iter()
        .map(|i| (i["key"].as_str().unwrap(), i["path"].as_str().unwrap()))
        .collect();
    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, items.iter().map(|(key, _)| *key).collect(), "ConfigMap keys and volume items differ");
    let mount = |name: &Value| {
        let mounts = container(&daemonset)["volumeMounts"].as_array().unwrap();
        mounts.iter().find(|m| &m["name"] == name).map(|m| m["mountPath"].as_str().unwrap().to_string())
    };
    assert_eq!(mount(&volume["name"]).as_deref(), Some("/etc/keyturn"));

    let disk = tempfile::Builder::new().prefix("keyturn-test-").tempdir().unwrap();
    let runtime = tempfile::Builder::new().prefix("keyturn-test-").tempdir_in("/dev/shm").unwrap();
    for (key, path) in &items {
        common::write(&disk.path().join(path), data[*key].as_str().unwrap());
    }

    // The pod's paths, which the DaemonSet mounts, become scratch directories here.
    let agent_file = disk.path().join("keyturn.toml");
    let mut agent = common::read(&agent_file);
    for (setting, scratch) in [("runtime_dir", runtime.path()), ("state_dir", &disk.path().join("state"))] {
        let line = agent.lines().find(|l| l.starts_with(&format!("{setting} = "))).expect(setting).to_string();
        let path = line.split('"').nth(1).unwrap();
        assert!(
            container(&daemonset)["volumeMounts"].as_array().unwrap().iter().any(|m| m["mountPath"] == path),
            "{setting} {path} is not a volume of the DaemonSet"
        );
        agent = agent.replace(&line, &format!("{setting} = \"{}\"", scratch.display()));
    }
    let listen = agent.lines().find(|l| l.starts_with("listen = ")).expect("[admin] listen");
    let port = container(&daemonset)["ports"][0]["containerPort"].to_string();
    assert!(listen.contains(&format!(":{port}\"")), "{listen} is not the container port {port}");
    common::write(&agent_file, &agent);

    let out = Command::new(common::BIN)
        .args(["validate", "--config"])
        .arg(&agent_file)
        .env("KEYTURN_NODE", "gke-edge-pool-1-abcd")
        .env("HOME", disk.path())
        .env_remove("KEYTURN_CONFIG")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
}

#[derive(Debug, Clone, Copy)]
enum Variant {
    /// `systemd/keyturn.service` as shipped.
    Plain,
    /// With `systemd/owners.conf` as a drop-in.
    Owners,
    /// With `systemd/federated-identity.conf` as a drop-in.
    FederatedIdentity,
}

/// Copies the unit into `dir`, running the binary under test instead of
/// /usr/local/bin/keyturn (verify requires it to exist), with its drop-in for `variant`.
/// `systemd-analyze` reads `NAME.service.d/*.conf` beside the unit file.
fn install_unit(dir: &Path, variant: Variant) -> PathBuf {
    let unit = common::read(Path::new(REPO).join("systemd/keyturn.service"));
    assert!(unit.contains("/usr/local/bin/keyturn "), "the unit no longer runs /usr/local/bin/keyturn");
    let path = dir.join("keyturn.service");
    common::write(&path, &unit.replace("/usr/local/bin/keyturn", common::BIN));
    let drop_in = match variant {
        Variant::Plain => None,
        Variant::Owners => Some("owners.conf"),
        Variant::FederatedIdentity => Some("federated-identity.conf"),
    };
    if let Some(file) = drop_in {
        let text = common::read(Path::new(REPO).join("systemd").join(file));
        common::write(&dir.join("keyturn.service.d").join(file), &text);
    }
    path
}

/// `systemd-analyze security --offline=true --threshold=N UNIT`, which exits non-zero above
/// the threshold; returns the score it prints.
fn security_score(unit: &Path, threshold: u32) -> String {
    let flag = format!("--threshold={threshold}");
    let out = systemd_analyze(&["security", "--offline=true", &flag], unit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let score = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for keyturn.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{}", common::text(&out)))
        .to_string();
    // The table lists what costs exposure; shown on failure, it says what changed.
    let costs: Vec<&str> = stdout.lines().filter(|l| l.starts_with('✗')).collect();
    assert!(
        out.status.success(),
        "exposure {score} is above {}.{}:\n{}\n{}",
        threshold / 10,
        threshold % 10,
        costs.join("\n"),
        common::text(&out)
    );
    score
}

fn systemd_analyze(args: &[&str], unit: &Path) -> Output {
    match Command::new("systemd-analyze").args(args).arg(unit).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("systemd-analyze is not installed: install systemd (Debian: apt-get install systemd)")
        }
        Err(e) => panic!("systemd-analyze: {e}"),
    }
}

fn venv() -> PathBuf {
    std::env::var_os("KEYTURN_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| Path::new(REPO).join(".venv"))
}

/// The DaemonSet's Google identity: `identity.yaml`'s `external_account` configuration is one
/// keyturn reads, it is what `GOOGLE_APPLICATION_CREDENTIALS` names, its subject token is the
/// projected token mounted beside it, and the token is issued for the provider it names.
#[test]
fn the_identity_configuration_reads_the_projected_token_for_its_own_provider() {
    use keyturn::store::gcp::identity::credential_config::{ExternalAccountConfig, SubjectTokenSource};

    let identity = document("identity.yaml", "ConfigMap");
    let daemonset = document("daemonset.yaml", "DaemonSet");
    let credentials = identity["data"]["credentials.json"].as_str().expect("credentials.json in identity.yaml");
    let config = ExternalAccountConfig::parse(credentials.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.impersonation.is_none() && config.token_url == "https://sts.googleapis.com/v1/token");

    let keyturn = container(&daemonset);
    let volume = daemonset["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["projected"]["sources"].is_array())
        .expect("a projected volume");
    let mount = keyturn["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == volume["name"]).unwrap();
    let dir = mount["mountPath"].as_str().unwrap();
    assert_eq!(mount["readOnly"], true);
    let env = keyturn["env"].as_array().unwrap().iter().find(|e| e["name"] == "GOOGLE_APPLICATION_CREDENTIALS");
    let sources = volume["projected"]["sources"].as_array().unwrap();
    let token = sources.iter().find_map(|s| s.get("serviceAccountToken")).expect("a projected service-account token");
    let items = sources.iter().find_map(|s| s.get("configMap")).expect("the configuration in the same volume");
    assert_eq!(items["name"], identity["metadata"]["name"]);
    assert_eq!(
        env.and_then(|e| e["value"].as_str()),
        Some(format!("{dir}/{}", items["items"][0]["path"].as_str().unwrap()).as_str())
    );
    let SubjectTokenSource::File { path, .. } = &config.source else { panic!("a file source: {:?}", config.source) };
    assert_eq!(path, &Path::new(dir).join(token["path"].as_str().unwrap()));
    assert_eq!(
        token["audience"].as_str().unwrap(),
        config.audience.replace("//iam.googleapis.com/", "https://iam.googleapis.com/"),
        "STS accepts the projected token only for the provider the configuration names"
    );
    assert!(token["expirationSeconds"].as_u64().unwrap() <= 48 * 3600, "STS refuses longer-lived tokens");
    assert!(!identity.to_string().contains("private_key"), "no key anywhere");
}

/// The CI example's workflow: YAML GitHub reads, that mints the job's OIDC token and runs the
/// script `tests/identity.rs` runs, with the agent file `tests/cli.rs` validates.
#[test]
fn the_ci_workflow_runs_the_tested_script_with_an_oidc_token() {
    let workflow = yaml(&Path::new(REPO).join("examples/ci/emergency-rotation.yml"));
    assert_eq!(workflow["permissions"]["id-token"], "write");
    assert_eq!(workflow["permissions"]["contents"], "read");
    let steps = workflow["jobs"]["rotate"]["steps"].as_array().unwrap();
    let rotate = steps.iter().find(|s| s["run"] == "sh examples/ci/rotate.sh").expect("a step runs rotate.sh");
    let config = rotate["env"]["KEYTURN_CONFIG"].as_str().unwrap();
    assert!(Path::new(REPO).join(config).is_file(), "{config}");
    for name in ["POLICY", "WORKLOAD_IDENTITY_PROVIDER", "SERVICE_ACCOUNT"] {
        assert!(rotate["env"][name].is_string(), "the step sets {name}");
    }
}

/// Every document of a YAML file, read by PyYAML; the only one when there is one.
fn yaml(path: &Path) -> Value {
    let python = venv().join("bin/python");
    let script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = Command::new(&python).args(["-c", script]).arg(path).output().unwrap();
    assert!(out.status.success(), "{} is not YAML PyYAML can read: {}", path.display(), common::text(&out));
    let mut documents: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(documents.len(), 1, "{}", path.display());
    documents.remove(0)
}

/// `examples/kubernetes/*.yaml`, sorted.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(Path::new(REPO).join("examples/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The one document of `kind` in `examples/kubernetes/FILE`, read by PyYAML and handed over as
/// JSON.
fn document(file: &str, kind: &str) -> Value {
    let path = Path::new(REPO).join("examples/kubernetes").join(file);
    let python = venv().join("bin/python");
    assert!(python.exists(), "{} is missing: run scripts/test.sh, which creates the venv", python.display());
    let script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = Command::new(&python).args(["-c", script]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{file} is not YAML PyYAML can read: {}", common::text(&out));
    let documents: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut found = documents.into_iter().filter(|d| d["kind"] == kind);
    let document = found.next().unwrap_or_else(|| panic!("no {kind} in {file}"));
    assert!(found.next().is_none(), "more than one {kind} in {file}");
    document
}

/// The DaemonSet's keyturn container.
fn container(daemonset: &Value) -> &Value {
    let containers = daemonset["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    containers.iter().find(|c| c["name"] == "keyturn").expect("a container named keyturn")
}
