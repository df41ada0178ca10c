//! Keyless identity: the real `keyturn` binary with Workload Identity Federation credentials
//! (`"type": "external_account"`) against the emulator's STS, IAM Credentials and test OIDC
//! issuer. Subject tokens from a file, a URL and an executable; with and without service
//! account impersonation; tokens replaced on disk and refreshed ahead of expiry on the
//! emulator's clock; every refusal's message; and the CI example's emergency rotation.
//! (That no token reaches a log is in `secrets_stay_secret.rs`.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::http::Responder;
use common::{Agent, World, read, text, wait_for};
use gcp_emulator::{Emulator, Method, Role, SubjectToken, blocking};
use serde_json::json;

const CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";
const ALLOW_EXECUTABLES: &str = "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES";
/// A projected Kubernetes service-account token's subject.
const NODE: &str = "system:serviceaccount:keyturn:keyturn";
const ACCOUNT: &str = "keyturn-node@acme-edge.iam.gserviceaccount.com";

struct Federated {
    world: World,
    emu: blocking::Emulator,
    /// A service-account key, for the operator's `store get`.
    admin: PathBuf,
    /// The operator's own federated identity, for `store put`: a key's JWT assertions carry the
    /// node's time, which the emulator refuses once its clock has been moved; subject tokens
    /// carry the emulator's.
    operator: PathBuf,
    /// How many `store put`s the operator ran: each made one exchange of its own.
    puts: std::cell::Cell<u64>,
    /// Where the node's identity provider leaves its token.
    token: PathBuf,
}

impl Federated {
    fn new() -> Federated {
        let world = World::new("poll = \"1s\"\njitter = \"0%\"");
        let emu = blocking::Emulator::start(Emulator::builder().project_id("acme-edge").project_number(435468002770))
            .unwrap();
        let admin = world.disk.path().join("operator.json");
        common::write(&admin, &emu.service_account_key("operator@acme-edge.iam.gserviceaccount.com", Role::Admin));
        world.add_stores(&format!(
            "[stores.edge]\nkind = \"gcp\"\nproject = \"acme-edge\"\nendpoint = \"{}\"\nretry_backoff = \"50ms\"\n",
            emu.base_url()
        ));
        let token = world.disk.path().join("tokens/gcp");
        emu.grant_federated("operator", Role::Admin);
        let operator = world.disk.path().join("operator-wif.json");
        common::write(&operator, &emu.external_account_config(&world.disk.path().join("tokens/operator"), None));
        Federated { world, emu, admin, operator, puts: std::cell::Cell::new(0), token }
    }

    /// Writes a subject token as a kubelet does: a whole new file renamed into place.
    fn write_token(&self, spec: &SubjectToken) -> String {
        let token = self.emu.subject_token(spec);
        common::write(&self.token, &token);
        token
    }

    /// The emulator's configuration for the token file, impersonating `impersonate` if given.
    fn file_config(&self, impersonate: Option<&str>) -> PathBuf {
        let path = self.world.disk.path().join("wif.json");
        common::write(&path, &self.emu.external_account_config(&self.token, impersonate));
        path
    }

    /// A configuration of our own, with `source` as its credential_source.
    fn config(&self, name: &str, source: serde_json::Value) -> PathBuf {
        let value = json!({
            "type": "external_account",
            "audience": self.emu.workload_identity_audience(),
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": self.emu.sts_uri(),
            "credential_source": source,
        });
        let path = self.world.disk.path().join(name);
        common::write(&path, &serde_json::to_string_pretty(&value).unwrap());
        path
    }

    fn put(&self, id: &str, value: &str) {
        let token = self.emu.subject_token(&SubjectToken::new("operator"));
        common::write(&self.world.disk.path().join("tokens/operator"), &token);
        let out = self.world.put_into("edge", id, value, &[(CREDENTIALS, &self.operator)]);
        self.puts.set(self.puts.get() + 1);
        assert!(out.status.success(), "store put failed: {}", text(&out));
    }

    fn policy(&self, name: &str, id: &str) {
        self.world.policy(
            name,
            &format!("[secret]\nstore = \"edge\"\nid = \"{id}\"\n[[deliver]]\npath = \"{name}/value\"\n"),
        );
    }

    fn sync(&self, credentials: &Path, env: &[(&str, &str)]) -> Output {
        self.world
            .command(&["sync", "--once"])
            .env(CREDENTIALS, credentials)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    fn agent(&self, credentials: &Path) -> Agent {
        self.world.agent_with(&[], &[(CREDENTIALS, credentials)])
    }

    fn delivered(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.world.bundle(name).join("value")).ok()
    }

    fn wait_delivered(&self, name: &str, value: &str) {
        wait_for(&format!("{name} = {value:?}"), Duration::from_secs(20), || {
            self.delivered(name).as_deref() == Some(value)
        });
    }

    fn count(&self, method: Method) -> u64 {
        self.emu.request_counts().get(method)
    }

    /// STS exchanges made by everyone but the operator.
    fn exchanges(&self) -> u64 {
        self.count(Method::Sts) - self.puts.get()
    }

    /// Failed reads of the store, from the running agent's `/metrics`.
    fn failed_reads(&self) -> u64 {
        let (_, metrics) = common::http::request(&self.world.admin(), "GET", "/metrics", None).unwrap();
        let series = "keyturn_store_requests_total{store=\"edge\",method=\"access\",result=\"error\"}";
        common::sample(&metrics, series).unwrap_or(0.0) as u64
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_node_whose_token_is_a_file_delivers_with_no_key() {
    let fed = Federated::new();
    fed.emu.grant_federated(NODE, Role::Accessor);
    fed.write_token(&SubjectToken::new(NODE));
    fed.policy("db", "db-password");
    fed.put("db-password", "first");
    let tokens_before = fed.count(Method::Token);
    let _agent = fed.agent(&fed.file_config(None));
    fed.wait_delivered("db", "first");
    assert_eq!(fed.exchanges(), 1, "one exchange for the agent's whole start");
    assert_eq!(fed.count(Method::GenerateAccessToken), 0, "the federated token is used directly");
    assert_eq!(fed.count(Method::Token), tokens_before, "no service-account key involved");
    fed.put("db-password", "second");
    fed.wait_delivered("db", "second");
}

#[test]
fn impersonation_trades_the_federated_token_for_the_service_accounts() {
    let fed = Federated::new();
    // The federated principal itself holds no role: only the service account can read.
    fed.emu.allow_impersonation(NODE, ACCOUNT, Role::Accessor);
    fed.write_token(&SubjectToken::new(NODE));
    fed.policy("db", "db-password");
    fed.put("db-password", "through-the-account");
    let out = fed.sync(&fed.file_config(Some(ACCOUNT)), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fed.delivered("db").as_deref(), Some("through-the-account"));
    assert_eq!((fed.exchanges(), fed.count(Method::GenerateAccessToken)), (1, 1));

    // Without impersonation the same principal is denied, with the permission named.
    let out = fed.sync(&fed.file_config(None), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("secretmanager.versions.access"), "{}", text(&out));
}

#[test]
fn a_url_source_is_fetched_with_its_headers_and_read_as_json() {
    let fed = Federated::new();
    fed.emu.grant_federated(NODE, Role::Accessor);
    let token = fed.emu.subject_token(&SubjectToken::new(NODE));
    let body = json!({ "count": 1, "value": token }).to_string();
    let server = Responder::start(move |request| match request.header("authorization").as_deref() {
        Some("bearer request-token-7c1") => (200, body.clone()),
        _ => (401, "{}".into()),
    });
    let config = fed.config(
        "url.json",
        json!({
            "url": format!("http://{}/idtoken?api-version=1", server.address),
            "headers": { "Authorization": "Bearer request-token-7c1", "Metadata": "true" },
            "format": { "type": "json", "subject_token_field_name": "value" },
        }),
    );
    fed.policy("db", "db-password");
    fed.put("db-password", "from-a-url");
    let out = fed.sync(&config, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fed.delivered("db").as_deref(), Some("from-a-url"));
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].target(), "/idtoken?api-version=1");
    assert_eq!(requests[0].header("metadata").as_deref(), Some("true"));

    // A source that refuses is named, with its status.
    let refusing = fed.config(
        "refusing.json",
        json!({ "url": format!("http://{}/idtoken", server.address), "format": { "type": "text" } }),
    );
    let out = fed.sync(&refusing, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!("the subject token URL http://{}/idtoken answered HTTP 401", server.address)),
        "{}",
        text(&out)
    );
}

#[test]
fn an_executable_source_runs_only_when_allowed_and_its_output_file_is_reused() {
    let fed = Federated::new();
    fed.emu.grant_federated(NODE, Role::Accessor);
    let dir = fed.world.disk.path();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let response = json!({
        "version": 1,
        "success": true,
        "token_type": "urn:ietf:params:oauth:token-type:jwt",
        "id_token": fed.emu.subject_token(&SubjectToken::new(NODE)),
        "expiration_time": now + 3600,
    });
    common::write(&dir.join("response.json"), &response.to_string());
    let script = dir.join("token-helper");
    common::write(
        &script,
        &format!(
            "#!/bin/sh\n\
             echo \"$*\" >> {runs}\n\
             [ \"$GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE\" = \"{audience}\" ] || {{ echo \"wrong audience\" >&2; exit 3; }}\n\
             [ \"$GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE\" = 0 ] || exit 4\n\
             cat {response} > \"$GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE\"\n\
             cat {response}\n",
            runs = dir.join("runs").display(),
            audience = fed.emu.workload_identity_audience(),
            response = dir.join("response.json").display(),
        ),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = fed.config(
        "exec.json",
        json!({ "executable": {
            "command": format!("{} --audience edge", script.display()),
            "timeout_millis": 10000,
            "output_file": dir.join("cached-token.json"),
        }}),
    );
    fed.policy("db", "db-password");
    fed.put("db-password", "from-a-command");

    let refused = fed.sync(&config, &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(stderr(&refused).contains("set GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1"), "{}", text(&refused));
    assert!(!dir.join("runs").exists(), "the command never ran");
    assert!(fed.delivered("db").is_none());

    let out = fed.sync(&config, &[(ALLOW_EXECUTABLES, "1")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fed.delivered("db").as_deref(), Some("from-a-command"));
    assert_eq!(read(dir.join("runs")), "--audience edge\n", "run once, split on whitespace, no shell");

    // Its output file still holds a valid response: the next process reads it instead.
    let out = fed.sync(&config, &[(ALLOW_EXECUTABLES, "1")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read(dir.join("runs")).lines().count(), 1);
    assert_eq!(fed.exchanges(), 2, "but every process exchanges");
}

#[test]
fn an_expiring_access_token_is_refreshed_before_google_refuses_it() {
    let fed = Federated::new();
    fed.emu.grant_federated(NODE, Role::Accessor);
    fed.write_token(&SubjectToken::new(NODE));
    fed.policy("db", "db-password");
    fed.put("db-password", "first");
    let agent = fed.agent(&fed.file_config(None));
    fed.wait_delivered("db", "first");
    assert_eq!(fed.exchanges(), 1);

    // Google's clock moves to 200 s before the token's end (STS tokens live 3599 s). The
    // agent learns it from its next answer, and refreshes while the old token still works.
    fed.emu.advance_clock(Duration::from_secs(3599 - 200));
    // Logged by the refresh task just before it stores the token, with no await between.
    agent.wait_log("external account: new access token", 2);
    // Past the old token's end: every read uses the new one.
    fed.emu.advance_clock(Duration::from_secs(400));
    fed.world.wait_store_reads("edge", 3);
    fed.put("db-password", "second");
    fed.wait_delivered("db", "second");
    assert_eq!(fed.failed_reads(), 0, "no read failed:\n{}", agent.log_text());
    assert_eq!(fed.exchanges(), 2, "one refresh, not one per poll");
    assert!(!agent.log_text().contains("credentials refused"), "{}", agent.log_text());
}

#[test]
fn a_subject_token_replaced_on_disk_is_used_at_the_next_exchange() {
    let fed = Federated::new();
    fed.emu.grant_federated(NODE, Role::Accessor);
    // The first token expires before the access token does, as projected tokens (1 h, renewed
    // by the kubelet at 80%) do against STS tokens.
    let mut short = SubjectToken::new(NODE);
    short.lifetime = Duration::from_secs(3000);
    fed.write_token(&short);
    fed.policy("db", "db-password");
    fed.put("db-password", "first");
    let agent = fed.agent(&fed.file_config(None));
    fed.wait_delivered("db", "first");

    // The identity provider renews the token on disk; then Google's clock passes the old
    // token's end and nears the access token's.
    fed.write_token(&SubjectToken::new(NODE));
    fed.emu.advance_clock(Duration::from_secs(3599 - 200));
    agent.wait_log("external account: new access token", 2);
    fed.emu.advance_clock(Duration::from_secs(400));
    fed.put("db-password", "second");
    fed.wait_delivered("db", "second");
    // Had the expired first token been sent again, STS would have refused it (invalid_grant)
    // and the refresh would have failed: logged, then reads refused once the old token ended.
    let log = agent.log_text();
    assert!(!log.contains("invalid_grant") && !log.contains("refreshing the access token failed"), "{log}");
    assert_eq!(fed.failed_reads(), 0, "{log}");
}

#[test]
fn each_refusal_names_the_file_the_audience_and_what_google_answered() {
    let fed = Federated::new();
    fed.emu.grant_federated(NODE, Role::Accessor);
    fed.policy("db", "db-password");
    fed.put("db-password", "value");
    let config = fed.file_config(None);
    let audience = fed.emu.workload_identity_audience();
    let refused = |config: &Path, needles: &[&str], token: Option<&str>| {
        let out = fed.sync(config, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let stderr = stderr(&out);
        for needle in needles {
            assert!(stderr.contains(needle), "{needle:?} in:\n{stderr}");
        }
        if let Some(token) = token {
            // Neither the token nor its signature, which is the part that makes it a credential.
            assert!(!stderr.contains(token) && !stderr.contains(token.rsplit('.').next().unwrap()), "{stderr}");
        }
    };
    let preamble = format!("external account {} (audience {audience})", config.display());

    // An expired subject token.
    let mut expired = SubjectToken::new(NODE);
    expired.issued_ago = Duration::from_secs(7200);
    let token = fed.write_token(&expired);
    refused(
        &config,
        &[&preamble, "invalid_grant", "has expired", &format!("from file {}", fed.token.display()), "check what file"],
        Some(&token),
    );

    // A token for another audience.
    let mut elsewhere = SubjectToken::new(NODE);
    elsewhere.audience =
        Some("//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/other/providers/x".into());
    let token = fed.write_token(&elsewhere);
    refused(&config, &["invalid_grant", "does not match the expected audience", "allowed audiences"], Some(&token));

    // A configuration whose audience is not a provider's resource name.
    let token = fed.write_token(&SubjectToken::new(NODE));
    let short_audience = read(&config).replace("//iam.googleapis.com/projects", "projects");
    let bad_audience = fed.world.disk.path().join("bad-audience.json");
    common::write(&bad_audience, &short_audience);
    refused(&bad_audience, &["invalid_request", "Invalid value for \"audience\"", "full resource name"], Some(&token));

    // Impersonation the principal is not allowed.
    let impersonating = fed.file_config(Some("stranger@acme-edge.iam.gserviceaccount.com"));
    refused(
        &impersonating,
        &[
            "IAM Credentials refused to impersonate stranger@acme-edge.iam.gserviceaccount.com: PERMISSION_DENIED",
            "Permission 'iam.serviceAccounts.getAccessToken' denied",
            "grant roles/iam.workloadIdentityUser on stranger@acme-edge.iam.gserviceaccount.com to principal://iam.googleapis.com/projects/435468002770/locations/global/workloadIdentityPools/emulator-pool/subject/system:serviceaccount:keyturn:keyturn",
        ],
        Some(&token),
    );

    // No token on disk at all.
    std::fs::remove_file(&fed.token).unwrap();
    let config = fed.file_config(None);
    refused(&config, &[&format!("cannot read the subject token file {}: No such file", fed.token.display())], None);

    // A configuration with problems lists them all, before any request.
    let broken = fed.config("broken.json", json!({ "url": "http://10.1.1.1/t", "format": { "type": "json" } }));
    refused(&broken, &["no subject_token_field_name", "plain http is allowed only to a loopback or link-local"], None);
}

/// The CI example (`examples/ci/`): a job's OIDC token, minted by the test issuer and served the
/// way GitHub serves it, is exchanged through `examples/ci/rotate.sh`, which runs
/// `keyturn rotate POLICY --now --revoke`; a running agent elsewhere delivers the new version.
#[test]
fn the_ci_example_rotates_with_the_jobs_oidc_token_and_a_running_agent_delivers_it() {
    let fed = Federated::new();
    let provider = fed.emu.workload_identity_audience().trim_start_matches("//iam.googleapis.com/").to_string();
    let job = "repo:acme/fleet-policies:environment:production";
    let rotator = "keyturn-ci@acme-edge.iam.gserviceaccount.com";
    fed.emu.allow_impersonation(job, rotator, Role::Admin);
    // GitHub's token endpoint: the job's request token as bearer, the audience as a parameter.
    let mut spec = SubjectToken::new(job);
    spec.audience = Some(format!("https://iam.googleapis.com/{provider}"));
    let job_token = fed.emu.subject_token(&spec);
    let wanted_audience = format!("audience=https://iam.googleapis.com/{provider}");
    let github = Responder::start(move |request| {
        let authorized = request.header("authorization").as_deref() == Some("bearer gh-request-token-51d");
        if authorized && request.target().ends_with(&wanted_audience) {
            (200, json!({ "count": 2304, "value": job_token }).to_string())
        } else {
            (403, "{\"message\":\"bad request token or audience\"}".into())
        }
    });

    // The fleet: a node pulling with its own federated identity.
    fed.emu.grant_federated(NODE, Role::Accessor);
    fed.write_token(&SubjectToken::new(NODE));
    fed.world.policy(
        "api-token",
        "[secret]\nstore = \"edge\"\nid = \"api-token\"\n[rotate]\nevery = \"30d\"\ngenerate = \"password:24\"\n\
         [[deliver]]\npath = \"api/token\"\n",
    );
    fed.put("api-token", "leaked-value");
    let _node = fed.agent(&fed.file_config(None));
    wait_for("the leaked value delivered", Duration::from_secs(20), || {
        std::fs::read_to_string(fed.world.bundle("api/token")).ok().as_deref() == Some("leaked-value")
    });

    // The CI job, in another place with its own agent file and no runtime shared with the node.
    let ci = fed.world.node("ci");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ci/rotate.sh");
    let out = std::process::Command::new("sh")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", fed.world.disk.path())
        .env("RUNNER_TEMP", fed.world.disk.path())
        .env("KEYTURN", common::BIN)
        .env("KEYTURN_CONFIG", &ci)
        .env("POLICY", "api-token")
        .env("WORKLOAD_IDENTITY_PROVIDER", &provider)
        .env("SERVICE_ACCOUNT", rotator)
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", format!("http://{}/_apis/token?api-version=2.0", github.address))
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "gh-request-token-51d")
        .env("KEYTURN_STS_URL", fed.emu.sts_uri())
        .env("KEYTURN_IAM_CREDENTIALS_URL", fed.emu.base_url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("api-token: version 2 is current"), "{}", text(&out));
    assert!(stderr(&out).contains("REVOKED api-token: disabled version(s) 1"), "{}", text(&out));
    assert_eq!(fed.count(Method::GenerateAccessToken), 1);
    assert!(!github.requests().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(fed.world.disk.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("keyturn-gcp-credentials"))
        .collect();
    assert!(leftovers.is_empty(), "the credential configuration is removed after the job");

    // The node delivers the new value within its polls; the leaked one is disabled.
    wait_for("the rotated value delivered", Duration::from_secs(20), || {
        std::fs::read_to_string(fed.world.bundle("api/token")).is_ok_and(|v| v != "leaked-value" && v.len() == 24)
    });
    let old = fed
        .world
        .command(&["store", "get", "edge", "api-token", "--version", "1"])
        .env(CREDENTIALS, &fed.admin)
        .output()
        .unwrap();
    assert_eq!(old.status.code(), Some(1), "{}", text(&old));
    assert!(stderr(&old).contains("DISABLED") || stderr(&old).contains("disabled"), "{}", text(&old));
}
