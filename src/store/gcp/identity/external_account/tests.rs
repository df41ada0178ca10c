//! The provider against the emulator's STS and IAM Credentials: one exchange for many callers,
//! a stale token served while it is refreshed, failures answered at once during their backoff,
//! and a refresh that outlives a caller who stopped waiting. The freshness rule and the
//! messages are tables.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use gcp_emulator::{Emulator, Failure, Method, Role, SubjectToken as Spec};

use super::*;
use crate::store::gcp::identity::server_time::ServerTime;

const SCOPE: &[&str] = &["https://www.googleapis.com/auth/cloud-platform"];
const ACCOUNT: &str = "node@emulator-project.iam.gserviceaccount.com";

struct Fixture {
    emu: Emulator,
    _dir: tempfile::TempDir,
    token_file: PathBuf,
    provider: ExternalAccount,
    time: Arc<ServerTime>,
}

impl Fixture {
    async fn new(impersonate: bool) -> Fixture {
        let emu = Emulator::builder().start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        crate::sys::replace_file(&token_file, emu.subject_token(&Spec::new("node-1")).as_bytes(), 0o600).unwrap();
        if impersonate {
            emu.allow_impersonation("node-1", ACCOUNT, Role::Accessor);
        } else {
            emu.grant_federated("node-1", Role::Accessor);
        }
        let text = emu.external_account_config(&token_file, impersonate.then_some(ACCOUNT));
        let config = ExternalAccountConfig::parse(text.as_bytes()).unwrap();
        let time = Arc::new(ServerTime::new(crate::clock::system()));
        let provider = ExternalAccount::new(Settings {
            origin: dir.path().join("wif.json"),
            config,
            http: reqwest::Client::new(),
            allow_executables: false,
            time: time.clone(),
            clock: crate::clock::system(),
        });
        Fixture { emu, _dir: dir, token_file, provider, time }
    }

    /// What a Secret Manager answer does for the store: tells it the emulator's time.
    async fn observe_the_servers_time(&self) {
        let response = reqwest::get(format!("{}/emulator/info", self.emu.base_url())).await.unwrap();
        self.time.observe(response.headers()).unwrap();
    }

    fn count(&self, method: Method) -> u64 {
        self.emu.request_counts().get(method)
    }

    async fn wait_for_count(&self, method: Method, count: u64) {
        for _ in 0..500 {
            if self.count(method) >= count && self.provider.inner.lock().refreshing.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{method} never reached {count}");
    }
}

#[tokio::test]
async fn concurrent_callers_share_one_exchange_and_impersonation() {
    let fixture = Fixture::new(true).await;
    let p = &fixture.provider;
    let (a, b, c, d) = tokio::join!(p.access_token(SCOPE), p.access_token(SCOPE), p.access_token(SCOPE), p.access_token(SCOPE));
    let tokens = [a, b, c, d];
    let first = tokens[0].as_ref().unwrap().as_str().to_string();
    assert!(tokens.iter().all(|t| t.as_ref().unwrap().as_str() == first));
    assert_eq!((fixture.count(Method::Sts), fixture.count(Method::GenerateAccessToken)), (1, 1));
    assert!(fixture.emu.issued_tokens().contains(&first), "the impersonated token, not the federated one");
}

#[tokio::test]
async fn a_stale_token_is_served_while_it_is_refreshed_in_the_background() {
    let fixture = Fixture::new(false).await;
    let first = fixture.provider.access_token(SCOPE).await.unwrap();
    // Google's clock moves to 200 s before the token's end; the store learns it from an answer.
    fixture.emu.advance_clock(Duration::from_secs(3599 - 200));
    fixture.observe_the_servers_time().await;
    crate::sys::replace_file(&fixture.token_file, fixture.emu.subject_token(&Spec::new("node-1")).as_bytes(), 0o600)
        .unwrap();
    fixture.emu.faults().set_latency(Duration::from_secs(3));
    let during = fixture.provider.access_token(SCOPE).await.unwrap();
    // Had the call waited for the refresh (3 s of latency), it would hold the new token.
    assert_eq!(during.as_str(), first.as_str(), "the stale token, at once");
    fixture.emu.faults().clear();
    fixture.wait_for_count(Method::Sts, 2).await;
    let after = fixture.provider.access_token(SCOPE).await.unwrap();
    assert_ne!(after.as_str(), first.as_str());
    assert_eq!(fixture.count(Method::Sts), 2, "one background refresh");
}

#[tokio::test]
async fn after_a_failure_callers_get_its_error_at_once_until_the_backoff_has_passed() {
    let fixture = Fixture::new(false).await;
    fixture.emu.faults().fail_next(1, Failure::Unavailable, Some(Method::Sts));
    let error = fixture.provider.access_token(SCOPE).await.unwrap_err().to_string();
    assert!(error.contains("refused the subject token from file") && error.contains("HTTP 503"), "{error}");
    let again = fixture.provider.access_token(SCOPE).await.unwrap_err().to_string();
    assert_eq!(again, error);
    assert_eq!(fixture.count(Method::Sts), 1, "no second exchange during the backoff");
    fixture.provider.inner.lock().retry_at = None;
    assert!(fixture.provider.access_token(SCOPE).await.is_ok());
}

#[tokio::test]
async fn a_caller_that_stops_waiting_does_not_stop_the_refresh() {
    let fixture = Fixture::new(false).await;
    fixture.emu.faults().set_latency(Duration::from_millis(300));
    let gave_up = tokio::time::timeout(Duration::from_millis(20), fixture.provider.access_token(SCOPE)).await;
    assert!(gave_up.is_err());
    fixture.wait_for_count(Method::Sts, 1).await;
    fixture.emu.faults().clear();
    fixture.provider.access_token(SCOPE).await.unwrap();
    assert_eq!(fixture.count(Method::Sts), 1, "the abandoned exchange's token was kept");
}

#[test]
fn freshness_by_what_is_left() {
    let expires = UNIX_EPOCH + Duration::from_secs(10_000);
    let at = |left: u64| expires - Duration::from_secs(left);
    let table = [
        (3599, Freshness::Fresh),
        (301, Freshness::Fresh),
        (300, Freshness::Stale),
        (31, Freshness::Stale),
        (30, Freshness::Expired),
        (0, Freshness::Expired),
    ];
    for (left, want) in table {
        assert_eq!(freshness(at(left), expires), want, "{left} s left");
    }
    assert_eq!(freshness(expires + Duration::from_secs(5), expires), Freshness::Expired);
}

#[test]
fn refusals_say_what_was_answered_and_what_to_do() {
    let error = |problem: Problem| {
        ExternalAccountError {
            origin: "/etc/keyturn/wif.json".into(),
            audience: "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x".into(),
            problem,
        }
        .to_string()
    };
    let expired = error(Problem::Refused {
        refusal: Refusal::Sts {
            url: "https://sts.googleapis.com/v1/token".into(),
            status: 400,
            error: "invalid_grant".into(),
            description: "The ID Token has expired.".into(),
        },
        source: "file /var/run/secrets/tokens/gcp".into(),
        principal: None,
    });
    assert!(expired.starts_with("external account /etc/keyturn/wif.json (audience //iam.googleapis.com/projects/1/"));
    assert!(expired.contains("refused the subject token from file /var/run/secrets/tokens/gcp: invalid_grant: The ID Token has expired. (HTTP 400); the subject token is expired"), "{expired}");

    let denied = error(Problem::Refused {
        refusal: Refusal::Impersonation {
            account: ACCOUNT.into(),
            status: 403,
            code: "PERMISSION_DENIED".into(),
            message: "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).".into(),
            permission: Some("iam.serviceAccounts.getAccessToken".into()),
        },
        source: "file /t".into(),
        principal: principal(
            "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x",
            "node-1",
        ),
    });
    assert!(denied.contains("iam.serviceAccounts.getAccessToken"), "{denied}");
    assert!(
        denied.contains("grant roles/iam.workloadIdentityUser on node@emulator-project.iam.gserviceaccount.com to principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/subject/node-1"),
        "{denied}"
    );
}

#[test]
fn tokens_never_format() {
    let token = gcp_token("ya29.secret-value", Duration::from_secs(60)).unwrap();
    assert_eq!(token.as_str(), "ya29.secret-value");
    assert!(!format!("{token:?}").contains("secret-value"));
    assert_eq!(jwt_subject("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJub2RlLTEifQ.c2ln").as_deref(), Some("node-1"));
    assert_eq!(jwt_subject("not-a-jwt"), None);
}
