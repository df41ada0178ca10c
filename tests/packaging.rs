//! Packaging, checked offline with the tools operators use: the systemd units (the shipped one
//! and the Debian package's) with `systemd-analyze` (verify, and the security exposure score as
//! a gate), the man page with `man`, the Kubernetes manifests with `kubernetes-validate
//! --strict` and against the Pod Security Standards' published rules, the example ConfigMaps'
//! configurations with `keyturn validate`, and the container recipe: its build stage run
//! without a container engine (`common::release`), its runtime stage checked against the
//! manifests. Nothing here starts the agent; `tests/systemd.rs` installs and runs it.
//!
//! Needs `systemd-analyze` (Debian: the `systemd` package) and the Python tools
//! `scripts/test.sh` installs in `.venv` (or `KEYTURN_TEST_VENV`): kubernetes-validate, and the
//! PyYAML it brings, which reads the manifests here (the crate has no YAML parser).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::release;
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
    for variant in [Variant::Plain, Variant::Owners, Variant::Cache, Variant::FederatedIdentity, Variant::Package] {
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

/// Issue 14: no core dump, even from the watchdog's SIGABRT. The agent's own setrlimit is
/// filtered by the unit's system call filter, so the unit sets the limit.
#[test]
fn the_unit_allows_no_core_dump() {
    let unit = fs::read_to_string(Path::new(REPO).join("systemd/keyturn.service")).unwrap();
    let lines: Vec<&str> = unit.lines().filter(|l| l.starts_with("LimitCORE=")).collect();
    assert_eq!(lines, ["LimitCORE=0"], "systemd/keyturn.service");
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
fn the_package_unit_scores_1_5_or_better_in_systemd_analyze_security() {
    let dir = tempfile::tempdir().unwrap();
    let score = security_score(&install_unit(dir.path(), Variant::Package), UNIT_THRESHOLD);
    println!("packaging/debian/keyturn.service: exposure {score}");
}

#[test]
fn the_package_unit_is_the_shipped_unit_with_the_package_paths() {
    // One unit, two install locations: /usr/local/bin by hand (systemd/README.md), /usr/bin
    // from the package. Nothing else may differ, so a hardening change reaches both.
    let shipped = common::read(Path::new(REPO).join("systemd/keyturn.service"));
    let package = common::read(Path::new(REPO).join("packaging/debian/keyturn.service"));
    assert!(
        package == shipped.replace("/usr/local/bin/keyturn", "/usr/bin/keyturn"),
        "packaging/debian/keyturn.service differs from systemd/keyturn.service by more than the binary's path; \
         regenerate it: sed 's#/usr/local/bin/keyturn#/usr/bin/keyturn#g' systemd/keyturn.service \
         > packaging/debian/keyturn.service"
    );
}

#[test]
fn the_man_page_names_every_command_and_renders_without_warnings() {
    let page = Path::new(REPO).join("packaging/debian/keyturn.8");
    let out = Command::new("man").args(["--warnings", "-l", "-Tutf8"]).arg(&page).env("MANWIDTH", "100").output();
    let out = out.expect("man (Debian: man-db)");
    assert!(out.status.success() && out.stderr.is_empty(), "{}", common::text(&out));
    // man draws bold as "c\bc": keep the last of each such pair.
    let mut rendered = String::new();
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        if c == '\u{8}' {
            rendered.pop();
        } else {
            rendered.push(c);
        }
    }
    let help = Command::new(common::BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 9, "{help}");
    for command in commands {
        assert!(rendered.contains(&format!("       {command}")), "`keyturn {command}` is not in keyturn(8)");
    }
    let version = format!("keyturn {}", env!("CARGO_PKG_VERSION"));
    assert!(common::read(&page).contains(&version), "keyturn(8) names another version than {version}");
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
    configmap_is_valid_for("configmap.yaml", "daemonset.yaml", "DaemonSet");
}

#[test]
fn the_sidecar_configmap_holds_a_valid_keyturn_configuration() {
    configmap_is_valid_for("sidecar/configmap.yaml", "sidecar/deployment.yaml", "Deployment");
}

/// The ConfigMap in `file` is mounted whole by the workload in `workload_file` and holds a
/// configuration `keyturn validate` accepts, with the workload's paths and port.
fn configmap_is_valid_for(file: &str, workload_file: &str, kind: &str) {
    let configmap = document(file, "ConfigMap");
    let daemonset = document(workload_file, kind);
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
    // A cache key is a file of a Secret volume the workload mounts; a scratch key stands in.
    if let Some(line) = agent.lines().find(|l| l.starts_with("key_file = ")).map(String::from) {
        let path = Path::new(line.split('"').nth(1).unwrap());
        let mounts = container(&daemonset)["volumeMounts"].as_array().unwrap().clone();
        let mount = mounts
            .iter()
            .find(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
            .expect("key_file is in a volume");
        let volumes = daemonset["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        assert!(volume["secret"]["secretName"].is_string(), "the cache key comes from a Secret: {volume}");
        assert_eq!(mount["readOnly"], true);
        let key = disk.path().join("cache.key");
        common::write_bytes(&key, &[7u8; 32]);
        agent = agent.replace(&line, &format!("key_file = \"{}\"", key.display()));
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

#[test]
fn the_container_recipe_builds_the_release_binary_without_an_engine() {
    // Cargo loads the whole workspace even to build one binary: a member the recipe does not
    // copy (bench/ once) fails the build before it starts.
    let manifest: toml::Table = common::read(Path::new(REPO).join("Cargo.toml")).parse().unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    let stages = release::stages();
    let build = release::build_stage(&stages);
    let copied: Vec<&str> =
        build.copies.iter().flat_map(|(_, sources, _)| sources.iter().map(String::as_str)).collect();
    for member in members.iter().map(|m| m.as_str().unwrap()).filter(|m| *m != ".") {
        assert!(
            copied.iter().any(|c| Path::new(member).starts_with(c)),
            "{} does not copy the workspace member {member}",
            release::RECIPE
        );
    }
    for file in ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml", "src"] {
        assert!(copied.contains(&file), "{} does not copy {file}", release::RECIPE);
    }
    // BuildKit sends only what the .dockerignore beside the recipe lets through.
    let ignore = common::read(Path::new(REPO).join(format!("{}.dockerignore", release::RECIPE)));
    for source in &copied {
        assert!(ignore.lines().any(|l| l == format!("!{source}")), "the .dockerignore hides {source}");
    }
    // The Rust the build image has is the one the repository pins.
    let toolchain: toml::Table = common::read(Path::new(REPO).join("rust-toolchain.toml")).parse().unwrap();
    let channel = toolchain["toolchain"]["channel"].as_str().unwrap();
    assert_eq!(build.from, format!("rust:{channel}-bookworm"), "the build image's Rust is not rust-toolchain.toml's");

    // Its steps, run here: the same files copied, the same cargo command.
    let binary = release::binary();
    let out = Command::new(&binary).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    let first = version.lines().next().unwrap_or_default();
    assert!(first.starts_with(&format!("keyturn {} (commit ", env!("CARGO_PKG_VERSION"))), "{version}");
    assert!(version.contains("stores: file, gcp"), "every backend is in the default build: {version}");
    let size = fs::metadata(&binary).unwrap().len();
    println!("{}: {} bytes", binary.display(), size);
    assert!(size < 10_000_000, "the stripped release binary is {size} bytes, over the 10 MB budget");
}

#[test]
fn the_container_recipe_and_the_manifests_agree() {
    let stages = release::stages();
    let runtime = stages.last().unwrap();
    let recipe = common::read(Path::new(REPO).join(release::RECIPE));

    // The image: what the recipe says to build and tag, and what every manifest runs.
    let tag = recipe
        .lines()
        .find_map(|l| l.split_once("docker build ").and_then(|(_, rest)| rest.split(" -t ").nth(1)))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the recipe says how to build and tag the image");
    assert_eq!(tag, format!("ghcr.io/keyturn/keyturn:{}", env!("CARGO_PKG_VERSION")));
    assert!(runtime.labels.contains(&("org.opencontainers.image.version".into(), env!("CARGO_PKG_VERSION").into())));
    let readme = common::read(Path::new(REPO).join("examples/kubernetes/README.md"));
    assert!(readme.contains(&format!("-t {tag} ")), "examples/kubernetes/README.md builds another tag than {tag}");

    // No shell, no package manager: a distroless base, and no RUN in the runtime stage.
    assert!(runtime.from.starts_with("gcr.io/distroless/"), "{}", runtime.from);
    assert!(runtime.runs.is_empty(), "the runtime image has no shell to RUN with");
    // The binary: copied from the build stage to what ENTRYPOINT runs.
    let (_, sources, dest) = runtime.copies.iter().find(|(from, _, _)| from.is_some()).unwrap();
    assert_eq!(sources, &["/src/target/release/keyturn"]);
    assert_eq!(runtime.entrypoint, [dest.as_str()]);
    // The user: a number (the kubelet checks runAsNonRoot against it), not root.
    let user = runtime.user.as_deref().expect("the image names its user");
    let (uid, gid) = user.split_once(':').unwrap();
    let (uid, gid): (u64, u64) = (uid.parse().unwrap(), gid.parse().unwrap());
    assert_ne!(uid, 0, "the image runs as root");

    let workloads = [
        ("daemonset.yaml", "DaemonSet", "configmap.yaml"),
        ("sidecar/deployment.yaml", "Deployment", "sidecar/configmap.yaml"),
    ];
    for (file, kind, configmap) in workloads {
        let workload = document(file, kind);
        let pod = &workload["spec"]["template"]["spec"];
        let keyturn = container(&workload);
        assert_eq!(keyturn["image"], tag, "{file}");
        // The same user as the image's, and nothing of the image to write to.
        let setting =
            |field: &str| keyturn["securityContext"][field].as_u64().or_else(|| pod["securityContext"][field].as_u64());
        assert_eq!((setting("runAsUser"), setting("runAsGroup")), (Some(uid), Some(gid)), "{file}");
        assert_eq!(keyturn["securityContext"]["readOnlyRootFilesystem"], true, "{file}");
        // The command: the image's, restated; its configuration is the ConfigMap's mount.
        assert!(keyturn["command"].is_null(), "{file}: the image's ENTRYPOINT runs");
        let args: Vec<&str> = keyturn["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(args, runtime.cmd, "{file}");
        let config = &args[args.iter().position(|a| *a == "--config").unwrap() + 1];
        let config_dir = Path::new(config).parent().unwrap();
        let configmap_volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["configMap"].is_object()).unwrap();
        let mount =
            keyturn["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == configmap_volume["name"]).unwrap();
        assert_eq!(mount["mountPath"], config_dir.to_str().unwrap(), "{file}");
        // The probes: on the admin port the configuration listens on.
        let listen = document(configmap, "ConfigMap")["data"]["keyturn.toml"]
            .as_str()
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("listen = ").map(|v| v.trim_matches('"').to_string()))
            .unwrap();
        let port = keyturn["ports"].as_array().unwrap().iter().find(|p| p["name"] == "admin").unwrap();
        assert!(listen.ends_with(&format!(":{}", port["containerPort"])), "{file}: {listen}");
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(keyturn[probe]["httpGet"]["path"], path, "{file} {probe}");
            assert_eq!(keyturn[probe]["httpGet"]["port"], "admin", "{file} {probe}");
        }
    }
    // The sidecar gates the application's start on its startup probe: every secret on disk.
    let sidecar = document("sidecar/deployment.yaml", "Deployment");
    let keyturn = container(&sidecar);
    assert_eq!(keyturn["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(keyturn["startupProbe"]["httpGet"]["path"], "/readyz");
    let secrets = sidecar["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "secrets")
        .unwrap();
    assert_eq!(secrets["emptyDir"]["medium"], "Memory", "delivery must be onto tmpfs");
    for app in sidecar["spec"]["template"]["spec"]["containers"].as_array().unwrap() {
        let mount = app["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "secrets");
        assert_eq!(
            mount.map(|m| &m["readOnly"]),
            Some(&Value::Bool(true)),
            "{} mounts the secrets read-only",
            app["name"]
        );
    }
}

#[test]
fn each_workload_passes_the_pod_security_level_its_namespace_enforces() {
    for (file, kind, namespace) in [
        ("daemonset.yaml", "DaemonSet", "namespace.yaml"),
        ("sidecar/deployment.yaml", "Deployment", "sidecar/namespace.yaml"),
    ] {
        let workload = document(file, kind);
        let namespace = document(namespace, "Namespace");
        assert_eq!(workload["metadata"]["namespace"], namespace["metadata"]["name"]);
        let enforced = namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str().unwrap();
        let pod = &workload["spec"]["template"];
        let level = pod_security::strictest(pod);
        println!("{file}: {level:?}; above it: {:?}", pod_security::violations(pod, pod_security::Level::Restricted));
        // The label is the strictest level the pods pass: no looser than needed.
        assert_eq!(format!("{level:?}").to_lowercase(), enforced, "{file}");
    }
    let sidecar = document("sidecar/deployment.yaml", "Deployment");
    assert_eq!(
        pod_security::violations(&sidecar["spec"]["template"], pod_security::Level::Restricted),
        Vec::<String>::new()
    );
}

#[test]
fn the_pod_security_rules_catch_each_thing_they_forbid() {
    use pod_security::{Level, violations};
    let restricted: Value = serde_json::json!({
        "metadata": {},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "v", "emptyDir": {}}]
        }
    });
    assert_eq!(violations(&restricted, Level::Restricted), Vec::<String>::new());
    assert_eq!(pod_security::strictest(&restricted), Level::Restricted);
    // (a change, the level it breaks, a word of the violation)
    let cases: &[(&str, Value, Level, &str)] = &[
        ("/spec/hostNetwork", Value::Bool(true), Level::Baseline, "host namespaces"),
        ("/spec/hostPID", Value::Bool(true), Level::Baseline, "host namespaces"),
        (
            "/spec/securityContext/windowsOptions",
            serde_json::json!({"hostProcess": true}),
            Level::Baseline,
            "HostProcess",
        ),
        ("/spec/containers/0/securityContext/privileged", Value::Bool(true), Level::Baseline, "privileged"),
        (
            "/spec/containers/0/securityContext/capabilities/add",
            serde_json::json!(["SYS_ADMIN"]),
            Level::Baseline,
            "capabilities",
        ),
        ("/spec/volumes/0", serde_json::json!({"name": "v", "hostPath": {"path": "/"}}), Level::Baseline, "hostPath"),
        (
            "/spec/containers/0/ports",
            serde_json::json!([{"containerPort": 80, "hostPort": 80}]),
            Level::Baseline,
            "host ports",
        ),
        ("/spec/securityContext/seccompProfile/type", Value::from("Unconfined"), Level::Baseline, "seccomp"),
        (
            "/spec/securityContext/sysctls",
            serde_json::json!([{"name": "kernel.msgmax", "value": "1"}]),
            Level::Baseline,
            "sysctls",
        ),
        ("/spec/containers/0/securityContext/procMount", Value::from("Unmasked"), Level::Baseline, "procMount"),
        (
            "/metadata/annotations",
            serde_json::json!({"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}),
            Level::Baseline,
            "AppArmor",
        ),
        (
            "/spec/containers/0/securityContext/appArmorProfile",
            serde_json::json!({"type": "Unconfined"}),
            Level::Baseline,
            "AppArmor",
        ),
        (
            "/spec/containers/0/securityContext/seLinuxOptions",
            serde_json::json!({"type": "spc_t"}),
            Level::Baseline,
            "SELinux",
        ),
        (
            "/spec/containers/0/securityContext/allowPrivilegeEscalation",
            Value::Null,
            Level::Restricted,
            "allowPrivilegeEscalation",
        ),
        ("/spec/securityContext/runAsNonRoot", Value::Null, Level::Restricted, "runAsNonRoot"),
        ("/spec/containers/0/securityContext/runAsNonRoot", Value::Bool(false), Level::Restricted, "runAsNonRoot"),
        ("/spec/containers/0/securityContext/runAsUser", Value::from(0), Level::Restricted, "runAsUser"),
        ("/spec/securityContext/seccompProfile", Value::Null, Level::Restricted, "seccomp"),
        (
            "/spec/containers/0/securityContext/capabilities/drop",
            serde_json::json!(["NET_RAW"]),
            Level::Restricted,
            "drop",
        ),
        (
            "/spec/containers/0/securityContext/capabilities/add",
            serde_json::json!(["CHOWN"]),
            Level::Restricted,
            "capabilities",
        ),
        (
            "/spec/volumes/0",
            serde_json::json!({"name": "v", "nfs": {"server": "x", "path": "/"}}),
            Level::Restricted,
            "volume",
        ),
        (
            "/spec/initContainers",
            serde_json::json!([{"name": "init", "securityContext": {"allowPrivilegeEscalation": true}}]),
            Level::Restricted,
            "allowPrivilegeEscalation",
        ),
    ];
    for (pointer, value, level, word) in cases {
        let mut pod = restricted.clone();
        set(&mut pod, pointer, value.clone());
        let found = violations(&pod, *level);
        assert!(
            found.iter().any(|v| v.contains(word)),
            "{pointer} = {value}: {level:?} should say {word:?}, said {found:?}"
        );
        if *level == Level::Restricted {
            assert_eq!(violations(&pod, Level::Baseline), Vec::<String>::new(), "{pointer} = {value} is baseline");
            assert_eq!(pod_security::strictest(&pod), Level::Baseline);
        } else {
            assert_eq!(pod_security::strictest(&pod), Level::Privileged, "{pointer} = {value}");
        }
    }
}

/// Sets the JSON pointer `pointer` in `value` (`null` removes it), creating objects on the way.
fn set(value: &mut Value, pointer: &str, new: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut at = value;
    for part in parent.split('/').skip(1) {
        at = match at {
            Value::Array(items) => &mut items[part.parse::<usize>().unwrap()],
            _ => at.as_object_mut().unwrap().entry(part).or_insert_with(|| Value::Object(Default::default())),
        };
    }
    match (at, new) {
        (Value::Array(items), new) => items[key.parse::<usize>().unwrap()] = new,
        (Value::Object(map), Value::Null) => {
            map.remove(key);
        }
        (Value::Object(map), new) => {
            map.insert(key.to_string(), new);
        }
        (other, _) => panic!("{pointer}: not an object or array: {other}"),
    }
}

/// The Pod Security Standards, as the Kubernetes documentation lists them
/// (kubernetes.io/docs/concepts/security/pod-security-standards, v1.33): each rule checks the
/// fields it names, with the values it allows, on the pod's spec and every container
/// (`containers`, `initContainers`, `ephemeralContainers`). Linux pods only.
mod pod_security {
    use serde_json::Value;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub enum Level {
        Privileged,
        Baseline,
        Restricted,
    }

    /// The strictest level `pod` (a pod template: metadata and spec) passes.
    pub fn strictest(pod: &Value) -> Level {
        if violations(pod, Level::Restricted).is_empty() {
            Level::Restricted
        } else if violations(pod, Level::Baseline).is_empty() {
            Level::Baseline
        } else {
            Level::Privileged
        }
    }

    const BASELINE_CAPABILITIES: &[&str] = &[
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    const SAFE_SYSCTLS: &[&str] = &[
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    ];
    const SELINUX_TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];
    const RESTRICTED_VOLUMES: &[&str] =
        &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

    /// Every rule of `level` (and the levels below it) that `pod` breaks, in words.
    pub fn violations(pod: &Value, level: Level) -> Vec<String> {
        let mut found = Vec::new();
        if level == Level::Privileged {
            return found;
        }
        let spec = &pod["spec"];
        let pod_context = &spec["securityContext"];
        let containers: Vec<&Value> = ["containers", "initContainers", "ephemeralContainers"]
            .iter()
            .flat_map(|list| spec[*list].as_array().into_iter().flatten())
            .collect();
        let name = |c: &Value| c["name"].as_str().unwrap_or("?").to_string();
        let truthy = |v: &Value| v.as_bool() == Some(true);

        // Baseline.
        if truthy(&pod_context["windowsOptions"]["hostProcess"])
            || containers.iter().any(|c| truthy(&c["securityContext"]["windowsOptions"]["hostProcess"]))
        {
            found.push("HostProcess: windowsOptions.hostProcess must be unset or false".into());
        }
        for field in ["hostNetwork", "hostPID", "hostIPC"] {
            if truthy(&spec[field]) {
                found.push(format!("host namespaces: {field} must be unset or false"));
            }
        }
        for c in &containers {
            let context = &c["securityContext"];
            if truthy(&context["privileged"]) {
                found.push(format!("privileged containers: {} is privileged", name(c)));
            }
            for capability in context["capabilities"]["add"].as_array().into_iter().flatten() {
                let capability = capability.as_str().unwrap_or_default();
                if !BASELINE_CAPABILITIES.contains(&capability) {
                    found.push(format!("capabilities: {} adds {capability}", name(c)));
                }
            }
            for port in c["ports"].as_array().into_iter().flatten() {
                if port["hostPort"].as_u64().is_some_and(|p| p != 0) {
                    found.push(format!("host ports: {} uses hostPort {}", name(c), port["hostPort"]));
                }
            }
            if !matches!(context["procMount"].as_str(), None | Some("Default")) {
                found.push(format!("/proc mount type: {} sets procMount {}", name(c), context["procMount"]));
            }
        }
        for volume in spec["volumes"].as_array().into_iter().flatten() {
            if !volume["hostPath"].is_null() {
                found.push(format!("hostPath volumes: {}", volume["name"]));
            }
        }
        let contexts: Vec<(String, &Value)> = std::iter::once(("the pod".to_string(), pod_context))
            .chain(containers.iter().map(|c| (name(c), &c["securityContext"])))
            .collect();
        for (who, context) in &contexts {
            if !matches!(context["appArmorProfile"]["type"].as_str(), None | Some("RuntimeDefault" | "Localhost")) {
                found.push(format!("AppArmor: {who} sets profile {}", context["appArmorProfile"]["type"]));
            }
            let selinux = &context["seLinuxOptions"];
            if !selinux["type"].as_str().is_none_or(|t| SELINUX_TYPES.contains(&t))
                || !selinux["user"].as_str().is_none_or(str::is_empty)
                || !selinux["role"].as_str().is_none_or(str::is_empty)
            {
                found.push(format!("SELinux: {who} sets {selinux}"));
            }
            if context["seccompProfile"]["type"].as_str() == Some("Unconfined") {
                found.push(format!("seccomp: {who} is Unconfined"));
            }
        }
        for (key, value) in pod["metadata"]["annotations"].as_object().into_iter().flatten() {
            if key.starts_with("container.apparmor.security.beta.kubernetes.io/") {
                let value = value.as_str().unwrap_or_default();
                if value != "runtime/default" && !value.starts_with("localhost/") {
                    found.push(format!("AppArmor: annotation {key}: {value}"));
                }
            }
        }
        for sysctl in pod_context["sysctls"].as_array().into_iter().flatten() {
            let sysctl = sysctl["name"].as_str().unwrap_or_default();
            if !SAFE_SYSCTLS.contains(&sysctl) {
                found.push(format!("sysctls: {sysctl} is not in the safe set"));
            }
        }
        if level == Level::Baseline {
            return found;
        }

        // Restricted.
        for volume in spec["volumes"].as_array().into_iter().flatten() {
            let kinds: Vec<&String> = volume.as_object().unwrap().keys().filter(|k| *k != "name").collect();
            if !kinds.iter().all(|k| RESTRICTED_VOLUMES.contains(&k.as_str())) {
                found.push(format!("volume types: {} is {kinds:?}", volume["name"]));
            }
        }
        for c in &containers {
            let context = &c["securityContext"];
            if context["allowPrivilegeEscalation"].as_bool() != Some(false) {
                found.push(format!("privilege escalation: {} must set allowPrivilegeEscalation: false", name(c)));
            }
            let non_root = context["runAsNonRoot"].as_bool().or(pod_context["runAsNonRoot"].as_bool());
            if non_root != Some(true) || context["runAsNonRoot"].as_bool() == Some(false) {
                found.push(format!("running as non-root: {} needs runAsNonRoot: true (its own or the pod's)", name(c)));
            }
            let seccomp = context["seccompProfile"]["type"].as_str().or(pod_context["seccompProfile"]["type"].as_str());
            if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
                found.push(format!("seccomp: {} needs RuntimeDefault or Localhost (its own or the pod's)", name(c)));
            }
            let capabilities = &context["capabilities"];
            if !capabilities["drop"].as_array().is_some_and(|d| d.iter().any(|c| c == "ALL")) {
                found.push(format!("capabilities: {} must drop ALL", name(c)));
            }
            for capability in capabilities["add"].as_array().into_iter().flatten() {
                if capability != "NET_BIND_SERVICE" {
                    found.push(format!("capabilities: {} may add only NET_BIND_SERVICE, not {capability}", name(c)));
                }
            }
        }
        for (who, context) in &contexts {
            if context["runAsUser"].as_u64() == Some(0) {
                found.push(format!("running as non-root user: {who} sets runAsUser 0"));
            }
        }
        found
    }
}

#[derive(Debug, Clone, Copy)]
enum Variant {
    /// `systemd/keyturn.service` as shipped.
    Plain,
    /// With `systemd/owners.conf` as a drop-in.
    Owners,
    /// With `systemd/cache.conf` as a drop-in.
    Cache,
    /// With `systemd/federated-identity.conf` as a drop-in.
    FederatedIdentity,
    /// The Debian package's unit, `packaging/debian/keyturn.service`.
    Package,
}

/// Copies the unit into `dir`, running the binary under test instead of
/// /usr/local/bin/keyturn (verify requires it to exist), with its drop-in for `variant`.
/// `systemd-analyze` reads `NAME.service.d/*.conf` beside the unit file.
fn install_unit(dir: &Path, variant: Variant) -> PathBuf {
    let (file, binary) = match variant {
        Variant::Package => ("packaging/debian/keyturn.service", "/usr/bin/keyturn"),
        Variant::Plain | Variant::Owners | Variant::Cache | Variant::FederatedIdentity => {
            ("systemd/keyturn.service", "/usr/local/bin/keyturn")
        }
    };
    let unit = common::read(Path::new(REPO).join(file));
    assert!(unit.contains(&format!("{binary} ")), "the unit no longer runs {binary}");
    let path = dir.join("keyturn.service");
    common::write(&path, &unit.replace(binary, common::BIN));
    let drop_in = match variant {
        Variant::Plain | Variant::Package => None,
        Variant::Owners => Some("owners.conf"),
        Variant::Cache => Some("cache.conf"),
        Variant::FederatedIdentity => Some("federated-identity.conf"),
    };
    if let Some(name) = drop_in {
        let text = common::read(Path::new(REPO).join("systemd").join(name));
        common::write(&dir.join("keyturn.service.d").join(name), &text);
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

/// `examples/kubernetes/**/*.yaml` (the DaemonSet layout and the sidecar's), sorted.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = common::walk(&Path::new(REPO).join("examples/kubernetes"))
        .into_iter()
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

/// The workload's keyturn container: a container (the DaemonSet) or a native sidecar (an
/// init container, in the sidecar layout).
fn container(workload: &Value) -> &Value {
    let spec = &workload["spec"]["template"]["spec"];
    let containers = spec["containers"].as_array().into_iter().chain(spec["initContainers"].as_array()).flatten();
    containers.into_iter().find(|c| c["name"] == "keyturn").expect("a container named keyturn")
}
