//! The fleet's monitoring in `examples/monitoring/`, checked with Prometheus' own tools: the
//! alert rules through `promtool check rules` and their unit tests through `promtool test
//! rules` (every alert fires in one case and stays quiet in another), the PrometheusRule
//! against the rules it is generated from, every query of the Grafana dashboard through
//! promtool's parser, and every `keyturn_*` metric the files name against what a real agent
//! exports. Last, a real Prometheus scrapes two real agents, one of which lags a rotation, and
//! evaluates the rules and the dashboard's queries on what it scraped.
//!
//! Needs `promtool` and `prometheus` (Debian: the `prometheus` package) and PyYAML from the
//! venv `scripts/test.sh` makes (`.venv`, or `KEYTURN_TEST_VENV`): the crate has no YAML parser.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{World, read, sample, text, wait_for, wait_for_every};
use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const RULES: &str = "keyturn-alerts.yaml";
const RULE_TESTS: &str = "keyturn-alerts.test.yaml";
const OPERATOR_RULE: &str = "prometheus-rule.yaml";
const DASHBOARD: &str = "grafana-dashboard.json";
const RUNBOOK: &str = "https://github.com/keyturn/keyturn/blob/main/examples/monitoring/README.md#";

/// Metrics an agent exports only in some situations, so the agent started below does not show
/// them: a waiting retirement, a rebuild from the sealed cache, a refused regression, a
/// retirement. These names are checked against the names `src/report/metrics.rs` registers
/// (read from the file; a counter gets `_total`, as the client library adds it), not against
/// `/metrics`, which omits a family until its first series (no `# HELP` line either).
const SITUATIONAL: [&str; 5] = [
    "keyturn_retirement_waiting_nodes",
    "keyturn_retirement_waiting_since_timestamp_seconds",
    "keyturn_retirements_total",
    "keyturn_secret_stale_seconds",
    "keyturn_version_regressions_refused_total",
];

/// Grafana's own variables the dashboard's queries use, with what stands in for each when
/// promtool parses them. The dashboard's variables (`$node`, ...) stand for regular
/// expressions, so `.*` stands in for them.
const GRAFANA_VARIABLES: [(&str, &str); 3] = [("__rate_interval", "1m"), ("__interval", "1m"), ("__range", "1h")];

fn monitoring() -> PathBuf {
    Path::new(REPO).join("examples/monitoring")
}

fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool").args(args).current_dir(monitoring()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("promtool is not installed: scripts/test.sh installs it (Debian: apt-get install prometheus)")
        }
        Err(e) => panic!("promtool: {e}"),
    }
}

fn venv() -> PathBuf {
    std::env::var_os("KEYTURN_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| Path::new(REPO).join(".venv"))
}

/// The one document of a YAML file, read by PyYAML and handed over as JSON.
fn yaml(path: &Path) -> Value {
    let python = venv().join("bin/python");
    assert!(python.exists(), "{} is missing: run scripts/test.sh, which creates the venv", python.display());
    let script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = Command::new(&python).args(["-c", script]).arg(path).output().unwrap();
    assert!(out.status.success(), "{} is not YAML PyYAML can read: {}", path.display(), text(&out));
    let mut documents: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(documents.len(), 1, "{} holds one document", path.display());
    documents.remove(0)
}

fn rules() -> Vec<Value> {
    let file = yaml(&monitoring().join(RULES));
    let groups = file["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "one group");
    assert_eq!(groups[0]["name"], "keyturn");
    groups[0]["rules"].as_array().expect("rules").clone()
}

fn alerts() -> Vec<Value> {
    rules().into_iter().filter(|r| r.get("alert").is_some()).collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&read(monitoring().join(DASHBOARD))).expect("the dashboard is JSON")
}

#[test]
fn the_alert_rules_pass_promtool_check_rules() {
    let out = promtool(&["check", "rules", RULES]);
    assert!(out.status.success(), "promtool check rules {RULES}: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"), "{}", text(&out));
}

/// `promtool test rules` passes, and its cases make every alert fire (with exact labels and
/// annotations, which promtool compares) and stay quiet at least once each.
#[test]
fn every_alert_fires_and_stays_quiet_in_promtool_test_rules() {
    let out = promtool(&["test", "rules", RULE_TESTS]);
    assert!(out.status.success(), "promtool test rules {RULE_TESTS}: {}", text(&out));

    let cases = yaml(&monitoring().join(RULE_TESTS));
    assert_eq!(cases["rule_files"], serde_json::json!([RULES]), "the cases test the rules file itself");
    for series in cases["tests"].as_array().unwrap().iter().flat_map(|t| t["input_series"].as_array()).flatten() {
        // Quoted: unquoted, `0x120` is a hexadecimal number to PyYAML (and to the cases this
        // file's other tests build from these), while promtool reads the string.
        assert!(series["values"].is_string(), "{RULE_TESTS}: quote the values of {}", series["series"]);
    }
    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in cases["tests"].as_array().expect("tests").iter().flat_map(|t| t["alert_rule_test"].as_array()).flatten()
    {
        let name = case["alertname"].as_str().unwrap().to_string();
        match case["exp_alerts"].as_array() {
            Some(expected) if !expected.is_empty() => {
                for alert in expected {
                    for annotation in ["summary", "description", "runbook_url"] {
                        assert!(alert["exp_annotations"][annotation].is_string(), "{name}: {annotation} is compared");
                    }
                    assert!(alert["exp_labels"]["severity"].is_string(), "{name}: severity is compared");
                }
                fired.insert(name);
            }
            _ => {
                quiet.insert(name);
            }
        }
    }
    for alert in alerts() {
        let name = alert["alert"].as_str().unwrap();
        assert!(fired.contains(name), "{name} has no case where it fires");
        assert!(quiet.contains(name), "{name} has no case where it stays quiet");
    }
}

/// Each alert has a severity, a summary and a description that says what to do with keyturn's
/// own commands, and a runbook link to its own section of the README beside the rules.
#[test]
fn every_alert_has_a_severity_what_to_do_and_a_runbook_section() {
    let readme = read(monitoring().join("README.md"));
    let sections: BTreeSet<&str> = readme.lines().filter_map(|l| l.strip_prefix("### Keyturn")).collect();
    let mut names = BTreeSet::new();
    for alert in alerts() {
        let name = alert["alert"].as_str().unwrap();
        let severity = alert["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["critical", "warning", "info"].contains(&severity), "{name}: severity {severity:?}");
        let annotations = &alert["annotations"];
        assert!(!annotations["summary"].as_str().unwrap_or_default().is_empty(), "{name}: summary");
        let description = annotations["description"].as_str().unwrap_or_default();
        assert!(
            description.contains("`keyturn status`") || description.contains("`keyturn fleet status`"),
            "{name}: the description points at keyturn status or keyturn fleet status: {description}"
        );
        let runbook = annotations["runbook_url"].as_str().unwrap_or_default();
        assert_eq!(runbook, format!("{RUNBOOK}{}", name.to_lowercase()), "{name}: runbook_url");
        assert!(
            sections.contains(name.strip_prefix("Keyturn").unwrap()),
            "{name}: no `### {name}` section in examples/monitoring/README.md"
        );
        names.insert(name.strip_prefix("Keyturn").unwrap().to_string());
    }
    let sections: BTreeSet<String> = sections.into_iter().map(String::from).collect();
    assert_eq!(sections, names, "one README section per alert, and no section for an alert that is gone");
}

/// prometheus-rule.yaml is keyturn-alerts.yaml's group under a PrometheusRule's `spec`: the
/// same text, indented (so comments agree too), and the same rules as YAML reads them.
#[test]
fn the_prometheus_rule_holds_the_same_rules_as_the_rules_file() {
    let rules = read(monitoring().join(RULES));
    let operator = read(monitoring().join(OPERATOR_RULE));
    let (head, spec) = operator.split_once("\nspec:\n").expect("a top-level spec:");
    let groups = &rules[rules.find("\ngroups:\n").expect("a top-level groups:") + 1..];
    let indented: String =
        groups.lines().map(|l| if l.is_empty() { "\n".to_string() } else { format!("  {l}\n") }).collect();
    assert!(
        spec == indented,
        "{OPERATOR_RULE} is not {RULES} indented under spec: regenerate it with the command in its header"
    );

    let document = yaml(&monitoring().join(OPERATOR_RULE));
    assert_eq!(document["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(document["kind"], "PrometheusRule");
    assert_eq!(document["metadata"]["namespace"], "keyturn", "the namespace of examples/kubernetes");
    assert_eq!(document["spec"]["groups"], yaml(&monitoring().join(RULES))["groups"]);
    assert!(head.contains("sed"), "the header says how to regenerate the file");
}

/// The dashboard imports into Grafana 10 and 11 with any Prometheus data source: a `datasource`
/// variable, the filters, a data source and a query on every panel, and every query parses
/// (promtool checks them as recording rules, with the variables replaced).
#[test]
fn the_dashboard_has_a_datasource_variable_filters_and_queries_that_parse() {
    let dashboard = dashboard();
    assert_eq!(dashboard["schemaVersion"], 39, "the schema of Grafana 10.3 to 11");
    assert!(dashboard["uid"].as_str().is_some_and(|uid| !uid.is_empty() && uid.len() <= 40));
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    let variable = |name: &str| {
        variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no ${name} variable")).clone()
    };
    let datasource = variable("datasource");
    assert_eq!((datasource["type"].as_str(), datasource["query"].as_str()), (Some("datasource"), Some("prometheus")));
    for name in ["store", "secret", "policy", "node"] {
        let filter = variable(name);
        assert_eq!(filter["type"], "query", "${name}");
        assert_eq!(filter["datasource"]["uid"], "${datasource}", "${name}");
        assert_eq!((filter["includeAll"].as_bool(), filter["allValue"].as_str()), (Some(true), Some(".*")), "${name}");
    }
    let names: BTreeSet<String> = variables.iter().map(|v| v["name"].as_str().unwrap().to_string()).collect();

    let panels = panels(&dashboard);
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut recording = Vec::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(ids.insert(panel["id"].as_u64().expect("a numeric id")), "{title}: panel ids are unique");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24 && grid["h"].as_u64().unwrap() > 0, "{title}: gridPos {grid}");
        assert!(!panel["description"].as_str().unwrap_or_default().is_empty(), "{title}: a description");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}: the panel's data source");
        let targets =
            panel["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("{title}: no query"));
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}: the query's data source");
            let expr = target["expr"].as_str().filter(|e| !e.trim().is_empty()).expect("an expr");
            recording.push((format!("{title} ({})", target["refId"].as_str().unwrap()), substitute(expr, &names)));
        }
    }

    // Every query as a recording rule: promtool parses and checks each.
    let dir = tempfile::tempdir().unwrap();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (what, expr)) in recording.iter().enumerate() {
        let literal = serde_json::to_string(expr).unwrap();
        file.push_str(&format!("      # {what}\n      - record: dashboard:query_{i}\n        expr: {literal}\n"));
    }
    let path = dir.path().join("dashboard-queries.yaml");
    common::write(&path, &file);
    let out = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(out.status.success(), "the dashboard's queries: {}\n{file}", text(&out));
}

/// The dashboard's "Lagging nodes" table computes lagging nodes without the recording rules (it
/// works without them loaded). In every case of the rules' own tests, at every time a case
/// looks at KeyturnNodeLagging, it names the same node series and newest versions as the rules.
#[test]
fn the_dashboard_lists_the_nodes_the_rules_find_lagging_in_every_case() {
    let dashboard = dashboard();
    let names: BTreeSet<String> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().into())
        .collect();
    let table = panels(&dashboard).into_iter().find(|p| p["title"] == "Lagging nodes").expect("a Lagging nodes table");
    let table = substitute(table["targets"][0]["expr"].as_str().unwrap(), &names);
    let record = "keyturn:node_lagging_since_timestamp_seconds";
    let same = "on (node, policy, store, secret, version, newest_version)";

    let cases = yaml(&monitoring().join(RULE_TESTS));
    let mut tests = Vec::new();
    let mut lagging_at = 0;
    for case in cases["tests"].as_array().unwrap() {
        let times: BTreeSet<&str> = case["alert_rule_test"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["alertname"] == "KeyturnNodeLagging")
            .map(|t| t["eval_time"].as_str().unwrap())
            .collect();
        if times.is_empty() {
            continue;
        }
        lagging_at += times.len();
        let mut checks = Vec::new();
        for time in times {
            for (left, right) in [(table.as_str(), record), (record, table.as_str())] {
                let expr = format!("({left}) unless {same} ({right})");
                checks.push(serde_json::json!({"expr": expr, "eval_time": time, "exp_samples": []}));
            }
        }
        tests.push(serde_json::json!({
            "name": case["name"],
            "interval": case["interval"],
            "input_series": case["input_series"],
            "promql_expr_test": checks,
        }));
    }
    assert!(lagging_at >= 5, "the cases look at KeyturnNodeLagging {lagging_at} times");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-lagging.test.json");
    let rules = monitoring().join(RULES);
    let suite = serde_json::json!({"rule_files": [rules], "evaluation_interval": "1m", "tests": tests});
    common::write(&file, &serde_json::to_string_pretty(&suite).unwrap());
    let out = promtool(&["test", "rules", file.to_str().unwrap()]);
    assert!(out.status.success(), "the Lagging nodes table and the rules disagree: {}", text(&out));
}

/// Every `keyturn_*` metric the rules, their cases and the dashboard name is one a real agent
/// exports, with the labels the rules join on.
#[test]
fn every_keyturn_metric_the_rules_and_the_dashboard_name_is_one_the_agent_exports() {
    let world = World::new("poll = \"1s\"\njitter = \"0%\"");
    rotating_policy(&world);
    world.policy(
        "db",
        "[secret]\nstore = \"dev\"\nid = \"db\"\n[[deliver]]\npath = \"app/db\"\n[notify]\nexec = { command = [\"true\"] }\n",
    );
    world.put("db", "FIXTURE-monitoring-db");
    let _agent = world.agent(&[]);
    let address = world.admin();
    let notified = "keyturn_notifications_total{policy=\"db\",notifier=\"exec\",result=\"ok\"}";
    let mut exposition = String::new();
    wait_for("the first rotation and notification in /metrics", Duration::from_secs(15), || {
        exposition = metrics(&address);
        sample(&exposition, "keyturn_rotations_total{policy=\"signing\",result=\"ok\"}").is_some()
            && sample(&exposition, notified).is_some()
    });
    let exported = exported_names(&exposition);
    let registered = registered_names();
    assert!(
        exported.iter().filter(|n| n.starts_with("keyturn_")).all(|n| registered.contains(n)),
        "the names read from src/report/metrics.rs cover /metrics: {registered:?} vs {exported:?}"
    );
    for name in SITUATIONAL {
        assert!(registered.contains(name), "{name} is not registered in src/report/metrics.rs");
    }

    let mut used = BTreeMap::new();
    for file in [RULES, RULE_TESTS, DASHBOARD] {
        for name in keyturn_names(&read(monitoring().join(file))) {
            used.entry(name).or_insert(file);
        }
    }
    assert!(used.contains_key("keyturn_secret_info") && used.len() >= 12, "{used:?}");
    for (name, file) in &used {
        if SITUATIONAL.contains(&name.as_str()) {
            continue;
        }
        assert!(exported.contains(name), "{file} names {name}, which the agent does not export:\n{exposition}");
    }

    // The labels the rules group and join by.
    let fleet = ["node", "policy", "store", "secret", "version"];
    for family in ["keyturn_secret_info", "keyturn_secret_delivered_timestamp_seconds"] {
        assert_eq!(labels_of(&exposition, family), fleet.map(String::from).to_vec(), "{family}");
    }
    assert_eq!(labels_of(&exposition, "keyturn_poll_interval_seconds"), vec!["node".to_string()]);
    assert!(!exposition.contains("FIXTURE-monitoring"), "no value in any label");
}

/// A real Prometheus scrapes two real agents with the rules loaded. One node rotates; the other
/// polls hourly and still holds the old version: the rules name it as lagging, with its own
/// poll as the limit, every rule evaluates without an error, and every dashboard query runs.
#[test]
fn a_real_prometheus_names_the_node_that_lags_a_rotation_and_runs_every_query() {
    let world = World::new("poll = \"1s\"\njitter = \"0%\"");
    rotating_policy(&world);
    let _rotator = world.agent(&[]);
    let rotator = world.admin();
    let held = |address: &str, node: &str, version: &str| {
        let series = format!(
            "keyturn_secret_info{{node=\"{node}\",policy=\"signing\",store=\"dev\",secret=\"signing\",version=\"{version}\"}}"
        );
        sample(&metrics(address), &series) == Some(1.0)
    };
    // The second node starts once version 1 exists: it reads the store once an hour.
    wait_for("the rotator holds version 1", Duration::from_secs(15), || held(&rotator, "test-node", "1"));
    let hourly = world.node("edge-2");
    common::write(&hourly, &read(&hourly).replace("poll = \"1s\"", "poll = \"1h\""));
    let _hourly_agent = world.agent_for(&hourly, &[], &[]);
    let edge2 = admin_of(&world.disk.path().join("state-edge-2"));
    wait_for("edge-2 holds version 1", Duration::from_secs(15), || held(&edge2, "edge-2", "1"));

    let prometheus = Prometheus::start(&world, &[&rotator, &edge2]);
    wait_for_every("Prometheus to scrape both agents", Duration::from_secs(30), Duration::from_millis(250), || {
        prometheus.query("count(keyturn_secret_info)").first().map(|s| s.1) == Some(2.0)
    });

    let out = world.keyturn(&["rotate", "signing", "--now"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the rotator holds version 2", Duration::from_secs(10), || held(&rotator, "test-node", "2"));
    let delivered = sample(
        &metrics(&rotator),
        "keyturn_secret_delivered_timestamp_seconds{node=\"test-node\",policy=\"signing\",store=\"dev\",secret=\"signing\",version=\"2\"}",
    )
    .expect("version 2's delivery time");

    let mut lagging = Vec::new();
    wait_for_every("the rules to name the lagging node", Duration::from_secs(30), Duration::from_millis(250), || {
        lagging = prometheus.query("keyturn:node_lagging_since_timestamp_seconds");
        !lagging.is_empty()
    });
    assert_eq!(lagging.len(), 1, "only edge-2 lags: {lagging:?}");
    let (labels, since) = &lagging[0];
    for (label, value) in [("node", "edge-2"), ("policy", "signing"), ("store", "dev"), ("secret", "signing")] {
        assert_eq!(labels[label], value, "{label}: {labels:?}");
    }
    assert_eq!((labels["version"].as_str(), labels["newest_version"].as_str()), ("1", "2"), "{labels:?}");
    // The rotator's delivery of version 2 (its first report has the fraction of a second; later
    // ones the whole second the status file keeps).
    assert!((since - delivered).abs() < 1.0, "it lags since the rotator delivered version 2: {since} vs {delivered}");
    let newest = prometheus.query("keyturn:newest_version_first_delivered_timestamp_seconds");
    assert_eq!(newest.iter().map(|s| s.0["version"].as_str()).collect::<Vec<_>>(), vec!["2"], "{newest:?}");

    // KeyturnNodeLagging's limit for edge-2, joined as the alert joins it: its own hourly poll
    // × 1.5 plus 5 minutes. Far away, so the alert itself does not fire here.
    let limit = prometheus.query(
        "keyturn:node_lagging_since_timestamp_seconds * 0 + on (job, instance) group_left 1.5 * keyturn_poll_interval_seconds + 300",
    );
    assert_eq!(limit.iter().map(|s| s.1).collect::<Vec<_>>(), vec![5700.0], "{limit:?}");

    // Every rule has been evaluated on these series without an error (a join that matches
    // many series to many, say, is an error only at evaluation).
    let mut unhealthy = Vec::new();
    wait_for_every("every rule evaluated", Duration::from_secs(15), Duration::from_millis(250), || {
        let rules = prometheus.get("/api/v1/rules");
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array())
            .flatten()
            .collect();
        unhealthy = all.iter().filter(|r| r["health"] != "ok").map(|r| r.to_string()).collect();
        all.len() == rules_count() && unhealthy.is_empty()
    });

    // Every dashboard query runs, with every filter at All; the lagging table names edge-2.
    let dashboard = dashboard();
    let names: BTreeSet<String> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().into())
        .collect();
    let mut lagging_table = false;
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().unwrap() {
            let expr = substitute(target["expr"].as_str().unwrap(), &names);
            let answer = prometheus.get(&format!("/api/v1/query?query={}", encode(&expr)));
            assert_eq!(answer["status"], "success", "{}: {answer}", panel["title"]);
            if panel["title"] == "Lagging nodes" {
                let rows = answer["data"]["result"].as_array().unwrap();
                assert_eq!(rows.len(), 1, "{answer}");
                let row = &rows[0]["metric"];
                assert!(row["node"] == "edge-2" && row["version"] == "1" && row["newest_version"] == "2", "{answer}");
                lagging_table = true;
            }
        }
    }
    assert!(lagging_table, "the dashboard has a \"Lagging nodes\" table");
}

fn rotating_policy(world: &World) {
    world.policy(
        "signing",
        "[secret]\nstore = \"dev\"\nid = \"signing\"\n[rotate]\nevery = \"30d\"\ngenerate = \"ed25519\"\n[[deliver]]\npath = \"api/key.pem\"\nformat = \"pem\"\n",
    );
}

fn metrics(address: &str) -> String {
    let (status, body) = common::http::request(address, "GET", "/metrics", None).unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// The admin listener of the agent whose state directory is `state`.
fn admin_of(state: &Path) -> String {
    let mut address = String::new();
    wait_for("the admin address in status.json", Duration::from_secs(10), || {
        let status = std::fs::read_to_string(state.join("status.json")).unwrap_or_default();
        let value: Value = serde_json::from_str(&status).unwrap_or_default();
        address = value["admin"].as_str().unwrap_or_default().to_string();
        !address.is_empty()
    });
    address
}

/// The panels that show data (not rows), including those inside collapsed rows.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten().cloned());
        } else {
            out.push(panel.clone());
        }
    }
    out
}

/// A dashboard query with Grafana's variables replaced: the dashboard's own by `.*` (each is a
/// regular expression in a `=~` matcher), Grafana's built-in ones by a duration. Panics on a
/// variable that is neither.
fn substitute(expr: &str, dashboard_variables: &BTreeSet<String>) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let braced = after.starts_with('{');
        let name: String =
            after.trim_start_matches('{').chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if name.is_empty() || name.chars().all(|c| c.is_ascii_digit()) {
            // `$1` in label_replace, not a variable.
            out.push('$');
            rest = after;
            continue;
        }
        let value = match GRAFANA_VARIABLES.iter().find(|(n, _)| *n == name) {
            Some((_, value)) => value.to_string(),
            None if dashboard_variables.contains(&name) => ".*".to_string(),
            None => panic!("${name} is neither a variable of the dashboard nor Grafana's: {expr}"),
        };
        out.push_str(&value);
        let used = name.len() + if braced { 2 } else { 0 };
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// Every distinct `keyturn_*` metric name in `text`: identifiers as PromQL reads them (letters,
/// digits, `_` and `:`), so the rules' own `keyturn:...` names are not taken for metrics.
fn keyturn_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("keyturn_") && !word.contains(':'))
        .map(String::from)
        .collect()
}

/// The metric names in a Prometheus exposition: of each sample, and of each `# TYPE` line.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(typed) => typed.split(' ').next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        names.extend(name.filter(|n| !n.is_empty()).map(String::from));
    }
    names
}

/// The label names of the first sample of `family`, in order.
fn labels_of(exposition: &str, family: &str) -> Vec<String> {
    let line = exposition
        .lines()
        .find(|l| l.strip_prefix(family).is_some_and(|rest| rest.starts_with('{')))
        .unwrap_or_else(|| panic!("no {family} sample:\n{exposition}"));
    let inside = &line[family.len() + 1..line.rfind('}').unwrap()];
    inside.split("\",").map(|pair| pair.split('=').next().unwrap().to_string()).collect()
}

/// The metric names `src/report/metrics.rs` registers: each `registry.register("NAME", HELP,
/// metrics.FIELD.clone())`, with `_total` added when the field's type is a counter.
fn registered_names() -> BTreeSet<String> {
    let source = read(Path::new(REPO).join("src/report/metrics.rs"));
    let mut names = BTreeSet::new();
    for call in source.split("registry.register(").skip(1) {
        let call = &call[..call.find(");").expect("a registration ends with );")];
        let name = call.split('"').nth(1).expect("the name, quoted");
        let field = call
            .rsplit("metrics.")
            .next()
            .and_then(|f| f.trim().trim_end_matches(',').strip_suffix(".clone()"))
            .unwrap_or_else(|| panic!("registry.register({name:?}, ...) registers metrics.FIELD.clone()"));
        let declaration = format!("pub {field}: ");
        let at = source.find(&declaration).unwrap_or_else(|| panic!("no `{declaration}` in metrics.rs"));
        let kind = &source[at + declaration.len()..];
        let kind = &kind[..kind.find(",\n").unwrap()];
        names.insert(if kind.contains("Counter") { format!("{name}_total") } else { name.to_string() });
    }
    // Families a collector encodes at each scrape: `encoder.encode_descriptor("NAME", HELP,
    // UNIT, MetricType::KIND)`.
    // (The process families, encoded by a helper that takes the name as a variable, are not
    // keyturn's and are left out.)
    for call in source.split("encode_descriptor(").skip(1).filter(|call| call.trim_start().starts_with("\"keyturn_")) {
        let call = &call[..call.find(")?").expect("a descriptor ends with )?")];
        let name = call.split('"').nth(1).expect("the name, quoted");
        names.insert(if call.contains("MetricType::Counter") { format!("{name}_total") } else { name.to_string() });
    }
    assert!(names.contains("keyturn_secret_info") && names.len() >= 20, "{names:?}");
    names
}

fn rules_count() -> usize {
    rules().len()
}

/// A query string for Prometheus' API: everything but letters and digits percent-encoded.
fn encode(query: &str) -> String {
    percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A real Prometheus on 127.0.0.1, scraping `targets` every second under the job `keyturn` and
/// evaluating the rules every second, its data in the world's temp dir. Killed on drop.
struct Prometheus {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Prometheus {
    fn start(world: &World, targets: &[&str]) -> Prometheus {
        let dir = world.disk.path().join("prometheus");
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        common::write(
            &config,
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: keyturn\n    static_configs:\n      - targets: [{}]\n",
                monitoring().join(RULES).display(),
                targets.join(", ")
            ),
        );
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let log = dir.join("prometheus.log");
        let child = match Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::OpenOptions::new().append(true).open(&log).unwrap()))
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("prometheus is not installed: scripts/test.sh installs it (Debian: apt-get install prometheus)")
            }
            Err(e) => panic!("prometheus: {e}"),
        };
        let prometheus = Prometheus { child, address, log };
        wait_for_every("Prometheus to be ready", Duration::from_secs(30), Duration::from_millis(100), || {
            prometheus.raw("/-/ready").is_some_and(|(status, _)| status == 200)
        });
        prometheus
    }

    /// One GET over HTTP/1.0, so the answer comes whole (never chunked).
    fn raw(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(&self.address).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.address).as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        Some((status, response.split_once("\r\n\r\n")?.1.to_string()))
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = self.raw(path).unwrap_or_else(|| panic!("GET {path}: no answer; log:\n{}", self.log()));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {status} {e}: {body}"))
    }

    /// An instant query's vector: each series' labels and value.
    fn query(&self, query: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let answer = self.get(&format!("/api/v1/query?query={}", encode(query)));
        assert_eq!(answer["status"], "success", "{query}: {answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let labels = serde_json::from_value(series["metric"].clone()).unwrap();
                (labels, series["value"][1].as_str().unwrap().parse().unwrap())
            })
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
