//! `keyturn probe` against the Secret Manager emulator with added latency, and against the
//! file store: the figures it reports are there, plausible, and never carry a value.

mod common;

use std::time::Duration;

use common::{World, text};
use gcp_emulator::{Emulator, Method, Role, blocking};

const CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";

#[test]
fn probe_measures_token_first_access_percentiles_and_a_cold_sync_on_the_emulator() {
    let world = World::new("");
    let emu = blocking::Emulator::start(Emulator::builder().project_id("acme-edge")).unwrap();
    let admin = world.disk.path().join("admin.json");
    common::write(&admin, &emu.service_account_key("operator@acme-edge.iam.gserviceaccount.com", Role::Admin));
    world.add_stores(&format!(
        "[stores.edge]\nkind = \"gcp\"\nproject = \"acme-edge\"\nendpoint = \"{0}\"\nretry_backoff = \"50ms\"\n\n\
         [stores.edge-eu]\nkind = \"gcp\"\nproject = \"acme-edge\"\nlocation = \"europe-west3\"\nendpoint = \"{0}\"\nretry_backoff = \"50ms\"\n",
        emu.base_url()
    ));
    for name in ["a", "b", "c"] {
        world.policy(name, &format!("[secret]\nstore = \"edge\"\nid = \"{name}\"\n[[deliver]]\npath = \"{name}/v\"\n"));
        let out = world.put_into("edge", name, &format!("FIXTURE-probe-{name}"), &[(CREDENTIALS, &admin)]);
        assert!(out.status.success(), "{}", text(&out));
    }
    // The first secret exists in europe-west3 too, so the regional endpoint can be measured.
    let out = world.put_into("edge-eu", "a", "FIXTURE-probe-eu", &[(CREDENTIALS, &admin)]);
    assert!(out.status.success(), "{}", text(&out));
    // Every request waits this long, token exchanges included. Large enough that a cold sync
    // of three reads at once (a token round trip, then one read round trip: two latencies) and
    // one read after another (four) stay apart on a loaded machine.
    const LATENCY_MS: f64 = 300.0;
    emu.faults().set_latency(Duration::from_millis(LATENCY_MS as u64));
    let tokens_before = emu.request_counts().get(Method::Token);

    let out = world
        .command(&["probe", "--store", "edge", "--requests", "5", "--location", "europe-west3", "--json"])
        .env(CREDENTIALS, &admin)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Per endpoint, the cold sync and the measurements after it each exchange a token of
    // their own (the cold sync's three reads wait for one): nothing the cold sync used was warm.
    assert_eq!(emu.request_counts().get(Method::Token) - tokens_before, 4, "two token exchanges per endpoint");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("FIXTURE-probe"), "no value in the report");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (report["store"].as_str(), report["kind"].as_str(), report["secret"].as_str()),
        (Some("edge"), Some("gcp"), Some("a"))
    );
    let global = &report["endpoints"][0];
    assert_eq!(global["location"], "global");
    assert!(global["token_ms"].as_f64().unwrap() >= LATENCY_MS, "the token exchange is one round trip: {global}");
    for field in ["first_access_ms", "p50_ms", "p99_ms"] {
        assert!(global[field].as_f64().unwrap() >= LATENCY_MS, "{field} includes the latency: {global}");
    }
    assert!(global["p99_ms"].as_f64() >= global["p50_ms"].as_f64());
    assert_eq!((global["errors"].as_u64(), global["accesses"].as_u64()), (Some(0), Some(6)), "{global}");
    assert_eq!(global["sync_policies"], 3);
    assert_eq!(global["sync_errors"], 0);
    // Cold: the token round trip, then the three reads at once (one round trip), so at least
    // two latencies; the token and then three reads one after another would take four. The
    // bound between leaves a latency of room on either side.
    let sync_ms = global["sync_ms"].as_f64().unwrap();
    assert!(sync_ms >= 2.0 * LATENCY_MS, "the cold sync includes its token exchange: {global}");
    assert!(sync_ms < 3.0 * LATENCY_MS, "the cold sync reads in parallel: {global}");

    // The regional endpoint: the secret exists there, and its round trips are measured; the
    // cold sync's other two policies do not, and are counted apart from the accesses.
    let regional = &report["endpoints"][1];
    assert_eq!(regional["location"], "europe-west3");
    assert!(regional["p50_ms"].as_f64().unwrap() >= LATENCY_MS, "{regional}");
    assert_eq!((regional["errors"].as_u64(), regional["sync_errors"].as_u64()), (Some(0), Some(2)), "{regional}");
    assert!(regional["first_error"].as_str().unwrap().contains("does not exist"), "{regional}");

    // A regional store's own endpoint is named after its location, not "global".
    let out = world
        .command(&["probe", "--store", "edge-eu", "--requests", "1", "--secret", "a", "--json"])
        .env(CREDENTIALS, &admin)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["endpoints"][0]["location"], "europe-west3", "{report}");

    // An endpoint where no access succeeds: no percentiles, errors counted once per access,
    // and a failing exit for CI.
    let out = world
        .command(&["probe", "--store", "edge", "--requests", "4", "--secret", "missing", "--json"])
        .env(CREDENTIALS, &admin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let missing = &report["endpoints"][0];
    assert_eq!((missing["errors"].as_u64(), missing["accesses"].as_u64()), (Some(5), Some(5)), "{missing}");
    assert!(missing["p50_ms"].is_null() && missing["p99_ms"].is_null() && missing["max_ms"].is_null(), "{missing}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("keyturn: no access succeeded on global"), "{}", text(&out));

    emu.faults().set_latency(Duration::ZERO);
    let table =
        world.command(&["probe", "--store", "edge", "--requests", "3"]).env(CREDENTIALS, &admin).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("ENDPOINT") && table.contains("global") && table.contains("3 pol"), "{table}");
    assert!(table.contains("COLD SYNC, measured first: a new client's credentials, token"), "{table}");
}

#[test]
fn probe_works_on_the_file_store_and_says_what_it_needs() {
    let world = World::new("");
    world.simple_policy("db", "db-password", &[("app/db", "raw")]);
    world.put("db-password", "FIXTURE-probe-file");
    let out = world.keyturn(&["probe", "--store", "dev", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["endpoints"][0]["location"], "local");
    assert!(report["endpoints"][0]["token_ms"].is_null());
    assert_eq!(report["endpoints"][0]["errors"], 0);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("FIXTURE"));
    assert!(!world.bundle("app").exists(), "probe delivers nothing");

    let out = world.keyturn(&["probe", "--store", "dev", "--location", "us"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--location applies to Google Secret Manager stores only"));
    let empty = World::new("");
    let out = empty.keyturn(&["probe", "--store", "dev"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("name a secret to access with --secret ID"),
        "{}",
        text(&out)
    );
}
