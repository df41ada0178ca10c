//! The one-shot commands: each loads what it needs, does one thing, prints what it did, and
//! returns. Only `sync --once` and `rotate` (when no agent runs) build an engine or a rotator.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use super::build::{self, load, load_agent_file};
use super::{AppError, Seams, Voice};
use crate::cache::KeySource;
use crate::cli::{CacheCommand, StoreCommand};
use crate::config::{self, Config, ConfigErrors, Declared, Machine, Policy, Problem, System};
use crate::control::socket::{self, Answer};
use crate::engine::{Engine, State};
use crate::report::metrics::Metrics;
use crate::report::status::Status;
use crate::secret::{SecretBytes, SecretId, VersionId};
use crate::store::{AliasMove, AnyStore, KINDS, MAX_VALUE_BYTES, SecretStore, SecretUpdate, Selector, StoreError};
use crate::sys;

/// How often `store put` retries its alias move when another writer got there first.
const PROMOTE_ATTEMPTS: usize = 5;

/// `keyturn validate`: every problem of the agent file and its policies, or of a policy
/// directory against declared stores; on the node, also what the settings name on disk
/// (credentials and seed files). `--portable` leaves what depends on the machine to the node and
/// lists it.
pub fn validate(
    path: &Path,
    portable: bool,
    policies: Option<&Path>,
    stores: &[String],
    json: bool,
) -> Result<(), AppError> {
    let machine = if portable { Machine::Portable } else { Machine::Node };
    let mut declared = Declared::new();
    for store in stores {
        let (name, kind) = match store.split_once('=') {
            Some((name, kind)) => (name, Some(kind)),
            None => (store.as_str(), None),
        };
        if let Some(kind) = kind.filter(|k| !KINDS.contains(k)) {
            return Err(AppError::Usage(format!(
                "--store {store}: unknown store kind \"{kind}\"; expected one of {}",
                KINDS.join(", ")
            )));
        }
        declared.insert(name.to_string(), kind.map(String::from));
    }
    let sources = config::read_for_check(path, policies, !declared.is_empty(), &System, &System)?;
    let mut checked = config::check(&sources, &declared, &System, &System, machine);
    // What the settings name on this machine: the node's business in portable mode.
    let agent_file = sources.agent.path.clone();
    let mut found: Vec<(String, String)> = Vec::new();
    if let Some(config) = &checked.config {
        for (name, store) in &config.stores {
            found.extend(
                store.preflight().into_iter().map(|(field, message)| (format!("stores.{name}.{field}"), message)),
            );
        }
        // The cache key: what the agent will read at start, read now, never shown.
        if let Some(source) = KeySource::find(config.cache.key_file.as_deref(), None) {
            found.extend(crate::cache::key_id_of(&source).err().map(|message| ("cache.key_file".to_string(), message)));
        }
    }
    for (key, message) in found {
        checked.node_problem(Problem { file: agent_file.clone(), line: None, key, message, skipped: portable });
    }
    let (policies, bundles) = match (&checked.config, checked.problems.is_empty()) {
        (Some(config), true) => (config.policies.len(), config.bundles().len()),
        _ => (0, 0),
    };
    let store_count = checked.config.as_ref().map_or(0, |c| c.stores.len()) + declared.len();
    if json {
        let report = serde_json::json!({
            "valid": checked.problems.is_empty(),
            "config": sources.agent.path,
            "portable": portable,
            "policies": policies,
            "bundles": bundles,
            "stores": store_count,
            "problems": checked.problems,
            "not_checked": checked.skipped,
        });
        println!("{}", serde_json::to_string_pretty(&report).expect("json serializes"));
    } else if checked.problems.is_empty() {
        let count = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        println!(
            "{}: valid: {} in {}, {}",
            sources.agent.path.display(),
            count(policies, "policy", "policies"),
            count(bundles, "bundle", "bundles"),
            count(store_count, "store", "stores")
        );
        if !checked.skipped.is_empty() {
            println!("not checked on this machine ({} left to the node):", checked.skipped.len());
            for skipped in &checked.skipped {
                println!("  {skipped}");
            }
        }
    }
    match checked.problems.len() {
        0 => Ok(()),
        n if json => Err(AppError::Invalid { problems: n }),
        _ => Err(AppError::Config(ConfigErrors(checked.problems))),
    }
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
    let failed = report.failed();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(AppError::ProbeFailed { endpoints: failed.iter().map(ToString::to_string).collect() })
    }
}

/// Sends `request` to the running agent and prints its answer; an error if none is running.
pub async fn ask_agent(path: &Path, request: socket::Request, voice: Voice) -> Result<(), AppError> {
    let agent = load_agent_file(path)?.agent;
    let socket = socket::path(&agent.runtime_dir);
    match socket::call(&agent.runtime_dir, &request, |line| voice.progress(line)).await {
        Ok(Some(Ok(answer))) => {
            println!("{}", serde_json::to_string_pretty(&answer).expect("json serializes"));
            Ok(())
        }
        Ok(Some(Err(message))) => Err(AppError::Agent(message)),
        Ok(None) => Err(AppError::Agent(format!(
            "no agent is running with this configuration (no control socket at {})",
            socket.display()
        ))),
        Err(source) => Err(AppError::Io { what: socket_error(&socket, &source), source }),
    }
}

/// Why the control socket could not be used, and what to do about it.
fn socket_error(socket: &Path, error: &std::io::Error) -> String {
    let advice = if error.kind() == std::io::ErrorKind::PermissionDenied {
        ": run as the agent's user or root, or ask for this user in [control] allow_users or a group in \
         allow_groups (with mode = \"0660\" and group = \"NAME\")"
    } else {
        ""
    };
    format!("cannot use the agent's control socket {}{advice}", socket.display())
}

/// `keyturn status`: from the running agent if there is one, else from the status file.
/// Exits 1 while a required policy is failing.
pub async fn status(path: &Path, json: bool) -> Result<(), AppError> {
    let agent = load_agent_file(path)?.agent;
    let socket = socket::path(&agent.runtime_dir);
    let (status, running) = match socket::call(&agent.runtime_dir, &socket::Request::Status, |_| {}).await {
        Ok(Some(Ok(Answer::Status(running)))) => (running.status, true),
        Ok(Some(Ok(other))) => {
            return Err(AppError::Agent(format!("the agent answered a status request with {other:?}")));
        }
        // Refused (this user is not on the socket's allow-list), or the agent could not
        // answer: the status file, which the agent keeps current, says what is known.
        Ok(Some(Err(message))) => {
            eprintln!("keyturn: the running agent did not answer ({message}); showing its status file instead");
            (status_file(&agent.state_dir, None)?, false)
        }
        // No agent, or a socket this user may not open: the status file says what is known.
        Ok(None) => (status_file(&agent.state_dir, None)?, false),
        Err(e) => (status_file(&agent.state_dir, Some(socket_error(&socket, &e)))?, false),
    };
    let running = running || status.running_agent().is_some();
    let failing: Vec<String> = status
        .policies
        .iter()
        .filter(|(_, p)| p.required && p.last_error.is_some())
        .map(|(name, _)| name.clone())
        .collect();
    if json {
        let running = socket::RunningStatus { status, agent_running: running };
        println!("{}", serde_json::to_string_pretty(&running).expect("json serializes"));
    } else {
        print!("{}", status.render_table(running));
    }
    if failing.is_empty() { Ok(()) } else { Err(AppError::Failing { policies: failing }) }
}

/// The status file an agent or `sync --once` left, when no agent answers on the socket
/// (`socket` says why, if it could not be used).
fn status_file(state_dir: &Path, socket: Option<String>) -> Result<Status, AppError> {
    Status::load(state_dir).map_err(|e| {
        let also = socket.map_or(String::new(), |why| format!("; and {why}"));
        let what = if e.kind() == std::io::ErrorKind::NotFound {
            format!("no status yet in {}: no agent or sync has run with this configuration{also}", state_dir.display())
        } else {
            format!("cannot read {}{also}", Status::path(state_dir).display())
        };
        AppError::Io { what, source: e }
    })
}

/// `keyturn store ...`: read or write a configured store directly.
pub async fn store(path: &Path, command: StoreCommand, seams: &Seams) -> Result<(), AppError> {
    let config = load_agent_file(path)?;
    // The id is checked by the store's backend before anything is opened.
    let opened = async |name: &str, id: &str| -> Result<(AnyStore, SecretId), AppError> {
        let id = build::named(path, &config.stores, name)?.check_secret_id(id).map_err(AppError::Usage)?;
        Ok((build::store(path, &config.stores, &config.agent, name, seams).await?, id))
    };
    match command {
        StoreCommand::Put { store: name, id, from_tty, json } => {
            let (store, id) = opened(&name, &id).await?;
            if std::io::stdin().is_terminal() && !from_tty {
                return Err(AppError::Usage(format!(
                    "standard input is a terminal: pipe the value in (`printf %s VALUE | keyturn store put {name} {id}`), \
                     or add --from-tty to type it (it is shown as typed; end with Ctrl-D)"
                )));
            }
            let mut input = Zeroizing::new(Vec::new());
            std::io::stdin()
                .take(MAX_VALUE_BYTES as u64 + 1)
                .read_to_end(&mut input)
                .map_err(|source| AppError::Io { what: "cannot read the value from standard input".into(), source })?;
            if input.is_empty() {
                return Err(AppError::Usage("standard input was empty; an empty secret is never stored".into()));
            }
            if input.len() > MAX_VALUE_BYTES {
                return Err(AppError::Usage(format!(
                    "standard input holds more than {MAX_VALUE_BYTES} bytes, the most a secret may hold"
                )));
            }
            let value = SecretBytes::copy_from(&input);
            let version = store.add_version(&id, &value).await?;
            let previous = promote(&store, &id, &version).await?;
            if json {
                let answer = serde_json::json!({ "store": name, "secret": id.as_str(), "version": version, "previous": previous });
                println!("{answer}");
            } else {
                let previous = previous.map_or(String::new(), |p| format!(" (previous: {p})"));
                println!("store {name}: secret {id} version {version} is now current{previous}");
            }
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
        StoreCommand::List { store: name, json } => {
            let store = build::store(path, &config.stores, &config.agent, &name, seams).await?;
            let mut secrets = store.list().await?;
            secrets.sort();
            if json {
                let names: Vec<&str> = secrets.iter().map(SecretId::as_str).collect();
                println!("{}", serde_json::json!({ "store": name, "secrets": names }));
            } else {
                for secret in &secrets {
                    println!("{secret}");
                }
            }
            Ok(())
        }
        StoreCommand::Versions { store: name, id, json } => {
            let (store, id) = opened(&name, &id).await?;
            let meta = store.describe(&id).await?;
            let mut versions = store.versions(&id).await?;
            versions.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.number().cmp(&a.id.number())));
            let aliases_of = |version: &VersionId| -> Vec<&str> {
                meta.aliases.iter().filter(|(_, v)| *v == version).map(|(alias, _)| alias.as_str()).collect()
            };
            if json {
                let rows: Vec<serde_json::Value> = versions
                    .iter()
                    .map(|v| {
                        serde_json::json!({
                            "version": v.id,
                            "state": v.state.as_str(),
                            "created": v.created.map(crate::clock::rfc3339),
                            "aliases": aliases_of(&v.id),
                        })
                    })
                    .collect();
                println!("{}", serde_json::json!({ "store": name, "secret": id.as_str(), "versions": rows }));
            } else {
                println!("{:<8} {:<10} {:<22} ALIASES", "VERSION", "STATE", "CREATED");
                for v in &versions {
                    let created = v.created.map_or("-".to_string(), crate::clock::rfc3339);
                    let aliases = aliases_of(&v.id);
                    let aliases = if aliases.is_empty() { "-".to_string() } else { aliases.join(", ") };
                    println!("{:<8} {:<10} {:<22} {aliases}", v.id, v.state.as_str(), created);
                }
            }
            Ok(())
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
pub async fn sync_once(path: &Path, json: bool, seams: &Seams) -> Result<(), AppError> {
    let config = Arc::new(load(path)?);
    let metrics = Arc::new(Metrics::new());
    let recorder = build::recorder(&config, metrics.clone(), None, seams);
    let cache = build::cache(&config, seams)?;
    let state = State::with_cache(build::writer(&config, seams)?, recorder.clone(), cache);
    let stores = build::stores(&config, &metrics, seams).await?;
    let engine = Engine::new(config.clone(), stores, state, seams.engine());
    let summary = engine.sync_all().await;
    engine.flush_notifications().await;
    recorder.save_stopped(&config.agent.state_dir);
    if json {
        let answer = serde_json::json!({
            "policies": config.policies.len(),
            "delivered": summary.delivered,
            "unchanged": summary.unchanged,
            "failed": summary.failed,
            "failed_required": summary.failed_required,
        });
        println!("{answer}");
    }
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
pub async fn rotate(
    path: &Path,
    name: &str,
    revoke: bool,
    json: bool,
    seams: &Seams,
    voice: Voice,
) -> Result<(), AppError> {
    use crate::rotation::protocol::{Outcome, Step, Trigger};
    let config = load(path)?;
    let policy = named_policy(&config, name)?;
    if revoke {
        voice.warn(&format!(
            "REVOKE {name}: the current version will be disabled as soon as its replacement is current, \
             without grace; anything still using it will fail"
        ));
    }
    let request = socket::Request::Rotate { policy: name.to_string(), revoke };
    match socket::call(&config.agent.runtime_dir, &request, |line| voice.progress(line)).await {
        Ok(Some(Ok(Answer::Rotated { version, previous, disabled }))) => {
            print_rotated(name, &version, previous.as_ref(), &disabled, revoke, "agent", json, voice);
            voice.note("rotated by the running agent, which delivered it");
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
    let parts = RotationParts::build(path, &config, policy, seams).await?;
    let deliverable = |version: &crate::secret::Version| {
        crate::deliver::check_renders(policy, version, &parts.extras, &config.agent.node)
    };
    let progress = |step: Step, detail: &str| voice.progress(&format!("[{}/{}] {detail}", step.number(), Step::COUNT));
    let rotator = parts.rotator(&config, policy, rotate, seams, &progress, &deliverable);
    let trigger = if revoke { Trigger::Revoke } else { Trigger::Now };
    let outcome = rotator
        .run(trigger)
        .await
        .map_err(|source| AppError::Rotation { policy: name.to_string(), source: Box::new(source) })?;
    match outcome {
        Outcome::Rotated { version, previous, disabled, .. } => {
            print_rotated(name, &version, previous.as_ref(), &disabled, revoke, "this process", json, voice);
            nudge_agent(&config, voice);
            Ok(())
        }
        Outcome::Busy { holder } => Err(AppError::Busy { policy: name.to_string(), holder }),
        Outcome::NotDue { .. } | Outcome::Present { .. } => {
            unreachable!("an immediate rotation is always due and never waits for a missing version")
        }
    }
}

/// What a rotation run by this process needs besides the policy: its store, the template
/// secrets every file must render with, and the fleet to ask before retiring old versions.
struct RotationParts {
    store: AnyStore,
    extras: std::collections::BTreeMap<String, crate::secret::Version>,
    adoption: Option<crate::fleet::SecretAdoption>,
}

impl RotationParts {
    async fn build(path: &Path, config: &Config, policy: &Policy, seams: &Seams) -> Result<RotationParts, AppError> {
        let store = build::store(path, &config.stores, &config.agent, &policy.store, seams).await?;
        // A new value must render into every file with the template secrets as they are now.
        let mut extras = std::collections::BTreeMap::new();
        for (extra_name, extra) in &policy.extras {
            let extra_store = build::store(path, &config.stores, &config.agent, &extra.store, seams).await?;
            extras.insert(extra_name.clone(), extra_store.access(&extra.secret, &Selector::current()).await?);
        }
        // Retiring old versions asks the fleet first, as the agent would.
        let adoption = build::fleet(config).await?.map(|client| crate::fleet::SecretAdoption {
            client,
            store: policy.store.clone(),
            secret: policy.secret.to_string(),
            clock: seams.clock.clone(),
        });
        Ok(RotationParts { store, extras, adoption })
    }

    fn rotator<'a>(
        &'a self,
        config: &'a Config,
        policy: &'a Policy,
        rotate: &'a crate::config::Rotate,
        seams: &'a Seams,
        progress: &'a (dyn Fn(crate::rotation::protocol::Step, &str) + Send + Sync),
        deliverable: &'a (dyn Fn(&crate::secret::Version) -> Result<(), String> + Send + Sync),
    ) -> crate::rotation::protocol::Rotator<'a, AnyStore> {
        crate::rotation::protocol::Rotator {
            store: &self.store,
            policy,
            rotate,
            node: &config.agent.node,
            pid: std::process::id(),
            pause_at: seams.pause_at.as_deref(),
            progress,
            clock: seams.clock.as_ref(),
            deliverable,
            retire: rotate.retire(config.fleet.is_some()),
            adoption: self.adoption.as_ref().map(|a| a as &dyn crate::rotation::protocol::Adoption),
        }
    }
}

/// The policy called `name`, or a usage error that lists the policies there are.
pub(super) fn named_policy<'a>(config: &'a Config, name: &str) -> Result<&'a Policy, AppError> {
    config.policy(name).ok_or_else(|| {
        let names: Vec<&str> = config.policies.iter().map(|p| p.name.as_str()).collect();
        AppError::Usage(format!("no policy named \"{name}\"; policies: {}", names.join(", ")))
    })
}

/// Tells a running agent on this node (SIGUSR1) to pull now, if there is one.
fn nudge_agent(config: &Config, voice: Voice) {
    if let Ok(status) = Status::load(&config.agent.state_dir)
        && let (Some(pid), Some(identity)) = (status.running_agent(), status.process.as_deref())
        && sys::nudge(pid, identity).is_ok()
    {
        voice.note(&format!("told the running agent (pid {pid}) to deliver it now"));
    }
}

/// `keyturn rollback POLICY [--to N]`: the value of an older version, added as a new version
/// and promoted the way a rotation is (lease, check, promote; with `[rotate]`), or by moving
/// the policy's alias (without): every node moves forward onto it, since a node never goes
/// back to an older version because a read said so.
pub async fn rollback(
    path: &Path,
    name: &str,
    to: Option<&str>,
    json: bool,
    seams: &Seams,
    voice: Voice,
) -> Result<(), AppError> {
    use crate::rotation::protocol::{Outcome, Step};
    use crate::secret::{CURRENT, PREVIOUS};
    use crate::store::VersionState;
    let config = load(path)?;
    let policy = named_policy(&config, name)?;
    let id = &policy.secret;
    let alias = match &policy.version {
        Selector::Id(pinned) => {
            return Err(AppError::Usage(format!(
                "policy {name} pins version {pinned}: to deliver another, change `version` in its policy file"
            )));
        }
        Selector::Alias(alias) => Some(alias.clone()),
        Selector::Latest => None,
    };
    let parts = RotationParts::build(path, &config, policy, seams).await?;
    let store = &parts.store;
    let meta = store.describe(id).await?;
    let current = match &alias {
        Some(alias) => meta.aliases.get(alias).cloned(),
        None => Some(store.access(id, &Selector::Latest).await?.id),
    };
    let target = match to {
        Some(version) => VersionId::new(version),
        None => match meta.aliases.get(PREVIOUS).filter(|_| alias.as_deref() == Some(CURRENT)) {
            Some(previous) => previous.clone(),
            None => {
                let mut older: Vec<_> = store
                    .versions(id)
                    .await?
                    .into_iter()
                    .filter(|v| v.state == VersionState::Enabled && Some(&v.id) != current.as_ref())
                    .filter(|v| match (v.id.number(), current.as_ref().and_then(VersionId::number)) {
                        (Some(n), Some(c)) => n < c,
                        _ => true,
                    })
                    .collect();
                older.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.number().cmp(&b.id.number())));
                older.pop().map(|v| v.id).ok_or_else(|| {
                    AppError::Usage(format!("{id} has no enabled version older than the current one to roll back to"))
                })?
            }
        },
    };
    if Some(&target) == current.as_ref() {
        return Err(AppError::Usage(format!("version {target} of {id} is the one delivered already")));
    }
    let info = store.version_info(id, &target).await?;
    if info.state != VersionState::Enabled {
        return Err(AppError::Usage(format!(
            "version {target} of {id} is {}: a retired or revoked value is never brought back by a rollback (it may have leaked); \
             if you are sure, enable it in the store first",
            info.state.as_str()
        )));
    }
    let value = store.access(id, &Selector::Id(target.clone())).await?.value;
    voice.progress(&format!("rolling {name} back to the value of version {target}, as a new version"));
    let (version, previous) = match &policy.rotate {
        Some(rotate) => {
            let deliverable = |version: &crate::secret::Version| {
                crate::deliver::check_renders(policy, version, &parts.extras, &config.agent.node)
            };
            let progress =
                |step: Step, detail: &str| voice.progress(&format!("[{}/{}] {detail}", step.number(), Step::COUNT));
            let rotator = parts.rotator(&config, policy, rotate, seams, &progress, &deliverable);
            match rotator
                .rollback(&value)
                .await
                .map_err(|source| AppError::Rotation { policy: name.to_string(), source: Box::new(source) })?
            {
                Outcome::Rotated { version, previous, .. } => (version, previous),
                Outcome::Busy { holder } => return Err(AppError::Busy { policy: name.to_string(), holder }),
                Outcome::NotDue { .. } | Outcome::Present { .. } => {
                    unreachable!("a rollback is an immediate rotation: always due, never waiting for a missing version")
                }
            }
        }
        None => {
            let version = store.add_version(id, &value).await?;
            if let Some(alias) = &alias {
                move_alias(store, id, alias, &version).await?;
            }
            (version, current.clone())
        }
    };
    if json {
        let answer = serde_json::json!({
            "policy": name,
            "version": version,
            "value_of": target,
            "previous": previous,
        });
        println!("{answer}");
    } else {
        println!("{name}: version {version} is current, with the value of version {target}");
    }
    nudge_agent(&config, voice);
    Ok(())
}

/// Points `alias` at `version` by compare-and-swap, retried while another writer gets there
/// first (as `store put` does).
async fn move_alias(store: &AnyStore, id: &SecretId, alias: &str, version: &VersionId) -> Result<(), AppError> {
    let moved =
        AliasMove { set: std::collections::BTreeMap::from([(alias.to_string(), version.clone())]), remove: Vec::new() };
    for _ in 0..PROMOTE_ATTEMPTS {
        let meta = store.describe(id).await?;
        match store.update(id, &meta, &SecretUpdate::aliases(moved.clone())).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AppError::Agent(format!("{id}: the {alias} alias kept changing under this rollback; try again")))
}

/// The result of a rotation: on stdout, as a line or JSON; a revoke is said as what it did (the
/// old version is disabled, and no version is `previous`).
#[allow(clippy::too_many_arguments, reason = "one result, said in one place for both paths")]
fn print_rotated(
    name: &str,
    version: &VersionId,
    old: Option<&VersionId>,
    disabled: &[VersionId],
    revoke: bool,
    by: &str,
    json: bool,
    voice: Voice,
) {
    let (previous, revoked) = if revoke { (None, old) } else { (old, None) };
    if json {
        let answer = serde_json::json!({
            "policy": name,
            "version": version,
            "previous": previous,
            "revoked": revoked,
            "disabled": disabled,
            "rotated_by": by,
        });
        println!("{answer}");
    } else {
        let previous = match (previous, revoked) {
            (Some(previous), _) => previous.to_string(),
            (None, Some(revoked)) => format!("none: version {revoked} is revoked"),
            (None, None) => "none".to_string(),
        };
        println!("{name}: version {version} is current (previous: {previous})");
    }
    if revoke && !disabled.is_empty() {
        let disabled: Vec<String> = disabled.iter().map(ToString::to_string).collect();
        voice.warn(&format!(
            "REVOKED {name}: disabled version(s) {} at once, without waiting for grace or for nodes to move on; they are out of every verification set",
            disabled.join(", ")
        ));
    }
}

/// `keyturn cache status|purge`: the sealed cache's entries, read without opening them (their
/// headers need no key); the key is read only to say whether this node can open them.
pub async fn cache(path: &Path, command: CacheCommand, seams: &Seams) -> Result<(), AppError> {
    // The agent file is enough; the policies, when they load, give each entry its own limit.
    let file = load_agent_file(path)?;
    let policies = load(path).ok().map(|config| config.policies);
    let dir = file.agent.state_dir.join("cache");
    match command {
        CacheCommand::Purge { policy } => {
            let entries = crate::cache::list(&dir)?;
            let mut removed = 0;
            for (name, _) in entries.iter().filter(|(name, _)| policy.as_ref().is_none_or(|p| p == name)) {
                std::fs::remove_file(crate::cache::entry_path(&dir, name)).map_err(|source| AppError::Io {
                    what: format!("cannot remove {}", crate::cache::entry_path(&dir, name).display()),
                    source,
                })?;
                removed += 1;
            }
            if let (Some(policy), 0) = (&policy, removed) {
                return Err(AppError::Usage(format!(
                    "the cache in {} holds no entry for policy {policy}",
                    dir.display()
                )));
            }
            println!("removed {removed} sealed entr{} from {}", if removed == 1 { "y" } else { "ies" }, dir.display());
            Ok(())
        }
        CacheCommand::Status { json } => {
            let source = KeySource::find(file.cache.key_file.as_deref(), seams.credentials_directory.as_deref());
            let key_id = source.as_ref().map(crate::cache::key_id_of);
            let now = seams.clock.now();
            let mut rows = Vec::new();
            for (name, header) in crate::cache::list(&dir)? {
                let max_stale = policies
                    .as_ref()
                    .and_then(|all| all.iter().find(|p| p.name == name))
                    .and_then(|p| p.max_stale)
                    .unwrap_or(file.cache.max_stale);
                let row = match header {
                    Ok(header) => {
                        let age = now.duration_since(header.sealed_at).unwrap_or_default();
                        let state = match &key_id {
                            Some(Err(_)) => "the key cannot be read".to_string(),
                            Some(Ok(id)) if *id != header.key_id => "sealed with another key".to_string(),
                            _ if header.node != file.agent.node => format!("sealed on node {}", header.node),
                            _ if max_stale.is_zero() => "never delivered (max_stale 0)".to_string(),
                            _ if age > max_stale => "older than max_stale".to_string(),
                            Some(Ok(_)) => "deliverable".to_string(),
                            // A systemd credential is the service's alone: this shell cannot
                            // check the key, the rest holds.
                            None => "within max_stale (the key is not visible here)".to_string(),
                        };
                        serde_json::json!({
                            "policy": name,
                            "store": header.store,
                            "secret": header.secret,
                            "version": header.version,
                            "sealed_at": crate::clock::rfc3339(header.sealed_at),
                            "age_seconds": age.as_secs(),
                            "max_stale_seconds": max_stale.as_secs(),
                            "state": state,
                        })
                    }
                    Err(error) => serde_json::json!({ "policy": name, "state": format!("damaged: {error}") }),
                };
                rows.push(row);
            }
            let key = match (&source, &key_id) {
                (Some(source), Some(Ok(id))) => serde_json::json!({ "source": source.to_string(), "key_id": id }),
                (Some(source), Some(Err(error))) => serde_json::json!({ "source": source.to_string(), "error": error }),
                _ => serde_json::Value::Null,
            };
            if json {
                let status = serde_json::json!({ "dir": dir, "key": key, "entries": rows });
                println!("{}", serde_json::to_string_pretty(&status).expect("json serializes"));
                return Ok(());
            }
            match (&source, &key_id) {
                (Some(source), Some(Ok(id))) => println!("cache {}: key from {source} (key id {id})", dir.display()),
                (Some(source), Some(Err(error))) => {
                    println!("cache {}: the key from {source} cannot be read: {error}", dir.display())
                }
                _ if rows.is_empty() => println!(
                    "cache {}: no key on this node ([cache] key_file, or the systemd credential {}): nothing is sealed or restored",
                    dir.display(),
                    crate::cache::CREDENTIAL
                ),
                _ => println!(
                    "cache {}: no key visible here; a systemd credential ({}) is visible to the service alone, whose log \
                     names the key it opened the cache with (\"sealed cache open\")",
                    dir.display(),
                    crate::cache::CREDENTIAL
                ),
            }
            println!("{:<24} {:<8} {:<22} {:>10} {:>10}  STATE", "POLICY", "VERSION", "SEALED", "AGE", "MAX STALE");
            for row in &rows {
                let text = |key: &str| row[key].as_str().unwrap_or("-").to_string();
                let span = |key: &str| {
                    row[key]
                        .as_u64()
                        .map_or("-".to_string(), |s| humantime::format_duration(Duration::from_secs(s)).to_string())
                };
                println!(
                    "{:<24} {:<8} {:<22} {:>10} {:>10}  {}",
                    text("policy"),
                    text("version"),
                    text("sealed_at"),
                    span("age_seconds"),
                    span("max_stale_seconds"),
                    text("state")
                );
            }
            Ok(())
        }
    }
}
