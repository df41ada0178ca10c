//! The one-shot commands: each loads what it needs, does one thing, prints what it did, and
//! returns. Only `sync --once` and `rotate` (when no agent runs) build an engine or a rotator.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::build::{self, load, load_agent_file};
use super::{AppError, Seams};
use crate::cli::StoreCommand;
use crate::control::socket::{self, Answer};
use crate::engine::{Engine, State};
use crate::report::metrics::Metrics;
use crate::report::status::Status;
use crate::secret::{SecretBytes, SecretId, VersionId};
use crate::store::{AliasMove, AnyStore, SecretStore, SecretUpdate, Selector, StoreError};
use crate::sys;

/// How often `store put` retries its alias move when another writer got there first.
const PROMOTE_ATTEMPTS: usize = 5;

pub fn validate(path: &Path) -> Result<(), AppError> {
    let config = load(path)?;
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    println!(
        "{}: valid: {} in {}, {}",
        path.display(),
        count(config.policies.len(), "policy").replace("policys", "policies"),
        count(config.bundles().len(), "bundle"),
        count(config.stores.len(), "store")
    );
    Ok(())
}

/// `keyturn probe`: a store's latencies from this node.
pub async fn probe(
    path: &Path,
    name: &str,
    requests: usize,
    locations: &[String],
    secret: Option<&str>,
    json: bool,
) -> Result<(), AppError> {
    let config = load(path)?;
    let store = build::named(path, &config.stores, name)?;
    let secret = secret.map(|id| store.check_secret_id(id)).transpose().map_err(AppError::Usage)?;
    let report = crate::probe::run(&config, name, secret, requests, locations).await.map_err(AppError::Usage)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("json serializes"));
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

/// Sends `request` to the running agent and prints its answer; an error if none is running.
pub async fn ask_agent(path: &Path, request: socket::Request) -> Result<(), AppError> {
    let agent = load_agent_file(path)?.agent;
    match socket::call(&agent.runtime_dir, &request, |line| eprintln!("{line}")).await {
        Ok(Some(Ok(answer))) => {
            println!("{}", serde_json::to_string_pretty(&answer).expect("json serializes"));
            Ok(())
        }
        Ok(Some(Err(message))) => Err(AppError::Agent(message)),
        Ok(None) => Err(AppError::Agent(format!(
            "no agent is running with this configuration (no control socket at {})",
            socket::path(&agent.runtime_dir).display()
        ))),
        Err(source) => Err(AppError::Io { what: "cannot talk to the agent's control socket".into(), source }),
    }
}

/// `keyturn status`: from the running agent if there is one, else from the status file.
pub async fn status(path: &Path, json: bool) -> Result<(), AppError> {
    let agent = load_agent_file(path)?.agent;
    match socket::call(&agent.runtime_dir, &socket::Request::Status, |_| {}).await {
        Ok(Some(Ok(Answer::Status(running)))) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&running).expect("json serializes"));
            } else {
                print!("{}", running.status.render_table(true));
            }
            return Ok(());
        }
        Ok(Some(Ok(other))) => {
            return Err(AppError::Agent(format!("the agent answered a status request with {other:?}")));
        }
        // Refused (this user is not on the socket's allow-list), or the agent could not
        // answer: the status file, which the agent keeps current, says what is known.
        Ok(Some(Err(message))) => {
            eprintln!("keyturn: the running agent did not answer ({message}); showing its status file instead");
        }
        // No agent, or a socket this user may not open: the status file says what is known.
        Ok(None) | Err(_) => {}
    }
    let status = match Status::load(&agent.state_dir) {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AppError::Io {
                what: format!(
                    "no status yet in {}: no agent or sync has run with this configuration",
                    agent.state_dir.display()
                ),
                source: e,
            });
        }
        Err(e) => {
            return Err(AppError::Io {
                what: format!("cannot read {}", Status::path(&agent.state_dir).display()),
                source: e,
            });
        }
    };
    let running = status.pid != 0 && sys::process_exists(status.pid) && status.pid != std::process::id();
    if json {
        let running = socket::RunningStatus { status, agent_running: running };
        println!("{}", serde_json::to_string_pretty(&running).expect("json serializes"));
    } else {
        print!("{}", status.render_table(running));
    }
    Ok(())
}

/// `keyturn store put|get`: read or write a configured store directly.
pub async fn store(path: &Path, command: StoreCommand, seams: &Seams) -> Result<(), AppError> {
    let config = load_agent_file(path)?;
    // The id is checked by the store's backend before anything is opened.
    let opened = async |name: &str, id: &str| -> Result<(AnyStore, SecretId), AppError> {
        let id = build::named(path, &config.stores, name)?.check_secret_id(id).map_err(AppError::Usage)?;
        Ok((build::store(path, &config.stores, name, seams).await?, id))
    };
    match command {
        StoreCommand::Put { store: name, id } => {
            let (store, id) = opened(&name, &id).await?;
            let mut input = Zeroizing::new(Vec::new());
            std::io::stdin()
                .read_to_end(&mut input)
                .map_err(|source| AppError::Io { what: "cannot read the value from standard input".into(), source })?;
            if input.is_empty() {
                return Err(AppError::Usage("standard input was empty; an empty secret is never stored".into()));
            }
            let value = SecretBytes::copy_from(&input);
            let version = store.add_version(&id, &value).await?;
            let previous = promote(&store, &id, &version).await?;
            let previous = previous.map_or(String::new(), |p| format!(" (previous: {p})"));
            println!("store {name}: secret {id} version {version} is now current{previous}");
            Ok(())
        }
        StoreCommand::Get { store: name, id, version } => {
            let (store, id) = opened(&name, &id).await?;
            let selector = match version.as_str() {
                "latest" => Selector::Latest,
                v if v.bytes().all(|b| b.is_ascii_digit()) => Selector::Id(VersionId::new(v)),
                alias => Selector::Alias(alias.to_string()),
            };
            let version = store.access(&id, &selector).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(version.value.expose())
                .and_then(|()| out.flush())
                .map_err(|source| AppError::Io { what: "cannot write to standard output".into(), source })
        }
    }
}

/// Points `current` at `version` (and `previous` at the old current), retrying when another
/// writer moved aliases in between. Returns the old current.
async fn promote(store: &AnyStore, id: &SecretId, version: &VersionId) -> Result<Option<VersionId>, StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let meta = store.describe(id).await?;
        let old = meta.aliases.get(crate::secret::CURRENT).cloned();
        match store.update(id, &meta, &SecretUpdate::aliases(AliasMove::promote(version, old.as_ref()))).await {
            Ok(_) => return Ok(old),
            Err(StoreError::Conflict { .. }) if attempt < PROMOTE_ATTEMPTS => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `keyturn sync --once`: one pass, then the notifications it caused, then exit.
pub async fn sync_once(path: &Path, seams: &Seams) -> Result<(), AppError> {
    let config = Arc::new(load(path)?);
    let metrics = Arc::new(Metrics::new());
    let recorder = build::recorder(&config, metrics.clone(), None, seams);
    let state = State::new(build::writer(&config, seams)?, recorder.clone());
    let stores = build::stores(&config, &metrics, seams).await?;
    let engine = Engine::new(config.clone(), stores, state, seams.engine());
    let summary = engine.sync_all().await;
    engine.flush_notifications().await;
    recorder.save(&config.agent.state_dir);
    if summary.failed_required > 0 {
        return Err(AppError::PoliciesFailed {
            failed: summary.failed.len(),
            total: config.policies.len(),
            names: summary.failed,
        });
    }
    Ok(())
}

/// `keyturn rotate POLICY --now [--revoke]`: through the running agent if there is one (it
/// rotates, delivers at once, and reports); otherwise the protocol, run by this process, with
/// a progress line per step, and a running agent told (SIGUSR1) to deliver the new version.
/// The lease makes it safe for both to rotate: only one ever does.
pub async fn rotate(path: &Path, name: &str, revoke: bool, seams: &Seams) -> Result<(), AppError> {
    use crate::rotation::protocol::{Outcome, Rotator, Step, Trigger};
    let config = load(path)?;
    let policy = config.policy(name).ok_or_else(|| {
        let names: Vec<&str> = config.policies.iter().map(|p| p.name.as_str()).collect();
        AppError::Usage(format!("no policy named \"{name}\"; policies: {}", names.join(", ")))
    })?;
    if revoke {
        eprintln!(
            "keyturn: REVOKE {name}: the current version will be disabled as soon as its replacement is current, \
             without grace; anything still using it will fail"
        );
    }
    let revoked = |disabled: &[VersionId]| {
        if revoke && !disabled.is_empty() {
            let disabled: Vec<String> = disabled.iter().map(ToString::to_string).collect();
            eprintln!(
                "keyturn: REVOKED {name}: disabled version(s) {}; they are out of every verification set",
                disabled.join(", ")
            );
        }
    };
    let request = socket::Request::Rotate { policy: name.to_string(), revoke };
    match socket::call(&config.agent.runtime_dir, &request, |line| eprintln!("{line}")).await {
        Ok(Some(Ok(Answer::Rotated { version, previous, disabled }))) => {
            let previous = previous.map_or("none".to_string(), |p| p.to_string());
            println!("{name}: version {version} is current (previous: {previous})");
            revoked(&disabled);
            eprintln!("keyturn: rotated by the running agent, which delivered it");
            return Ok(());
        }
        Ok(Some(Ok(other))) => {
            return Err(AppError::Agent(format!("policy {name}: the agent answered a rotation with {other:?}")));
        }
        Ok(Some(Err(message))) => return Err(AppError::Agent(format!("policy {name}: {message}"))),
        Ok(None) | Err(_) => {}
    }
    let rotate = policy.rotate.as_ref().ok_or_else(|| {
        AppError::Usage(format!("policy {name} has no [rotate] section: add one to say how new values are made"))
    })?;
    let store = build::store(path, &config.stores, &policy.store, seams).await?;
    let progress = |step: Step, detail: &str| eprintln!("[{}/{}] {detail}", step.number(), Step::COUNT);
    let rotator = Rotator {
        store: &store,
        policy,
        rotate,
        node: &config.agent.node,
        pid: std::process::id(),
        pause_at: seams.pause_at.as_deref(),
        progress: &progress,
        clock: seams.clock.as_ref(),
    };
    let trigger = if revoke { Trigger::Revoke } else { Trigger::Now };
    let outcome = rotator
        .run(trigger)
        .await
        .map_err(|source| AppError::Rotation { policy: name.to_string(), source: Box::new(source) })?;
    match outcome {
        Outcome::Rotated { version, previous, disabled } => {
            let previous = previous.map_or("none".to_string(), |p| p.to_string());
            println!("{name}: version {version} is current (previous: {previous})");
            revoked(&disabled);
            if let Ok(status) = Status::load(&config.agent.state_dir)
                && status.pid != 0
                && sys::process_exists(status.pid)
                && sys::nudge(status.pid).is_ok()
            {
                eprintln!("keyturn: told the running agent (pid {}) to deliver it now", status.pid);
            }
            Ok(())
        }
        Outcome::Busy { holder } => Err(AppError::Busy { policy: name.to_string(), holder }),
        Outcome::NotDue { .. } | Outcome::Present { .. } => {
            unreachable!("an immediate rotation is always due and never waits for a missing version")
        }
    }
}
