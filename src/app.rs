//! Turns a validated configuration into real stores and tasks, runs a command, and owns every
//! task it starts. The only module that names concrete backends.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::cli::{Cli, Command, StoreCommand};
use crate::config::{self, Config, ConfigErrors, StoreConfig, System};
use crate::control::socket;
use crate::deliver::{BundleWriter, DeliverError};
use crate::engine::{AbortOnDrop, Engine, Shared};
use crate::error_chain;
use crate::report::events::Reporter;
use crate::report::metrics::Metrics;
use crate::report::status::Status;
use crate::secret::{SecretBytes, SecretId, VersionId};
use crate::store::file::FileStore;
use crate::store::gcp::GcpStore;
use crate::store::{AliasMove, AnyStore, Metered, SecretStore, SecretUpdate, Selector, StoreError};
use crate::sys;

/// How long file-change events gather before one reload: editors write a file in several
/// steps (truncate, write, rename), and one reload should see the result.
const RELOAD_SETTLE: Duration = Duration::from_millis(300);
/// How often `store put` retries its alias move when another writer got there first.
const PROMOTE_ATTEMPTS: usize = 5;

/// Side effects the process decides once, at its edge, and hands in.
#[derive(Debug, Clone, Default)]
pub struct Seams {
    /// `KEYTURN_TEST_PAUSE_AT`: a named step (`bundle:swapped`) at which the agent stops
    /// forever, so that crash tests can SIGKILL it at exactly that point.
    pub pause_at: Option<String>,
}

impl Seams {
    pub fn from_process() -> Self {
        Seams { pause_at: std::env::var("KEYTURN_TEST_PAUSE_AT").ok() }
    }

    fn bundle_pause(&self) -> Option<String> {
        self.pause_at.as_deref().and_then(|p| p.strip_prefix("bundle:")).map(String::from)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("policy {policy}: {source}")]
    Rotation {
        policy: String,
        #[source]
        source: crate::rotation::protocol::RotationError,
    },
    #[error(
        "policy {policy}: another rotation holds the lease ({holder}); it ends when that rotation finishes or the lease expires"
    )]
    Busy { policy: String, holder: String },
    #[error("{0}")]
    Agent(String),
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl AppError {
    /// 64 for anything the operator must fix in configuration or on the command line; 1 for
    /// failures that may pass.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_) | AppError::Usage(_) | AppError::Deliver(DeliverError::NotVolatile { .. }) => 64,
            _ => 1,
        }
    }
}

pub async fn run(cli: Cli, seams: Seams) -> Result<ExitCode, AppError> {
    // Values pass through every command except `validate`; none of them may end up in a core
    // dump. Failure here (an unusual kernel) is worth a warning, not a refusal.
    if let Err(e) = sys::forbid_core_dumps() {
        tracing::warn!(error = %e, "cannot mark the process non-dumpable");
    }
    let config_path = std::path::absolute(&cli.config).unwrap_or_else(|_| cli.config.clone());
    match cli.command {
        Command::Validate => validate(&config_path),
        Command::Status { json } => status(&config_path, json).await,
        Command::Store { command } => store_command(&config_path, command).await,
        Command::Sync { once } => {
            if !once {
                return Err(AppError::Usage(
                    "`keyturn sync` runs one pass: write `keyturn sync --once`, or run `keyturn agent` to keep running"
                        .into(),
                ));
            }
            sync_once(&config_path, &seams).await
        }
        Command::Agent => agent(&config_path, &seams).await,
        Command::Rotate { policy, now, revoke } => rotate(&config_path, &policy, now, revoke, &seams).await,
        Command::Reload => ask_agent(&config_path, socket::Request::Reload).await,
        Command::Probe { store, requests, location, secret, json } => {
            probe(&config_path, &store, requests, &location, secret.as_deref(), json).await
        }
        Command::Resync => ask_agent(&config_path, socket::Request::Resync).await,
    }
}

fn load(path: &Path) -> Result<Config, ConfigErrors> {
    config::load(path, &System, &System)
}

fn validate(path: &Path) -> Result<ExitCode, AppError> {
    let config = load(path)?;
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    println!(
        "{}: valid: {} in {}, {}",
        path.display(),
        count(config.policies.len(), "policy").replace("policys", "policies"),
        count(config.bundles().len(), "bundle"),
        count(config.stores.len(), "store")
    );
    Ok(ExitCode::SUCCESS)
}

/// `keyturn probe`: a store's latencies from this node.
async fn probe(
    path: &Path,
    name: &str,
    requests: usize,
    locations: &[String],
    secret: Option<&str>,
    json: bool,
) -> Result<ExitCode, AppError> {
    let config = load(path)?;
    let store_config = config.stores.get(name).ok_or_else(|| {
        let names: Vec<&str> = config.stores.keys().map(String::as_str).collect();
        AppError::Usage(format!("no store named \"{name}\" in {}; stores: {}", path.display(), names.join(", ")))
    })?;
    let secret = secret.map(SecretId::parse).transpose().map_err(AppError::Usage)?;
    let store = open_store(name, store_config).await?;
    let report = crate::probe::run(&config, name, store, secret, requests, locations).await.map_err(AppError::Usage)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("json serializes"));
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends `request` to the running agent; an error if none is running.
async fn ask_agent(path: &Path, request: socket::Request) -> Result<ExitCode, AppError> {
    let agent = config::load_agent_file(path, &System, &System)?.agent;
    match socket::call(&agent.runtime_dir, &request, |line| eprintln!("{line}")).await {
        Ok(Some(Ok(answer))) => {
            println!("{}", serde_json::to_string_pretty(&answer).expect("json serializes"));
            Ok(ExitCode::SUCCESS)
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
async fn status(path: &Path, json: bool) -> Result<ExitCode, AppError> {
    let agent = config::load_agent_file(path, &System, &System)?.agent;
    match socket::call(&agent.runtime_dir, &socket::Request::Status, |_| {}).await {
        Ok(Some(Ok(value))) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&value).expect("json serializes"));
            } else {
                let status: Status = serde_json::from_value(value).map_err(|e| AppError::Agent(e.to_string()))?;
                print!("{}", status.render_table(true));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Ok(Some(Err(message))) => return Err(AppError::Agent(message)),
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
        let mut value = serde_json::to_value(&status).expect("status serializes");
        value["agent_running"] = running.into();
        println!("{}", serde_json::to_string_pretty(&value).expect("json serializes"));
    } else {
        print!("{}", status.render_table(running));
    }
    Ok(ExitCode::SUCCESS)
}

async fn open_store(name: &str, config: &StoreConfig) -> Result<AnyStore, StoreError> {
    match config {
        StoreConfig::File(file) => Ok(AnyStore::File(FileStore::open(name, file).await?)),
        StoreConfig::Gcp(gcp) => Ok(AnyStore::Gcp(GcpStore::new(name, gcp)?)),
    }
}

/// The stores the engine uses, each counted in the metrics.
type Stores = BTreeMap<String, Arc<Metered<AnyStore>>>;

async fn open_stores(config: &Config, metrics: &Arc<Metrics>) -> Result<Stores, StoreError> {
    let mut stores = BTreeMap::new();
    for (name, store) in &config.stores {
        let store = Metered::new(name, open_store(name, store).await?, metrics.clone());
        stores.insert(name.clone(), Arc::new(store));
    }
    Ok(stores)
}

async fn store_command(path: &Path, command: StoreCommand) -> Result<ExitCode, AppError> {
    // The agent file alone: a broken policy must not lock an operator out of the store.
    let config = config::load_agent_file(path, &System, &System)?;
    let named = |name: &str| {
        config.stores.get(name).ok_or_else(|| {
            let names: Vec<&str> = config.stores.keys().map(String::as_str).collect();
            AppError::Usage(format!("no store named \"{name}\" in {}; stores: {}", path.display(), names.join(", ")))
        })
    };
    match command {
        StoreCommand::Put { store: name, id } => {
            let id = SecretId::parse(&id).map_err(AppError::Usage)?;
            let store = open_store(&name, named(&name)?).await?;
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
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::Get { store: name, id, version } => {
            let id = SecretId::parse(&id).map_err(AppError::Usage)?;
            let store = open_store(&name, named(&name)?).await?;
            let selector = match version.as_str() {
                "latest" => Selector::Latest,
                v if v.bytes().all(|b| b.is_ascii_digit()) => Selector::Id(VersionId::new(v)),
                alias => Selector::Alias(alias.to_string()),
            };
            let version = store.access(&id, &selector).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(version.value.expose())
                .and_then(|()| out.flush())
                .map_err(|source| AppError::Io { what: "cannot write to standard output".into(), source })?;
            Ok(ExitCode::SUCCESS)
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

fn writer(config: &Config, seams: &Seams) -> Result<BundleWriter, DeliverError> {
    let mut writer = BundleWriter::new(config.agent.runtime_dir.clone(), seams.bundle_pause());
    writer.prepare_root(config.agent.allow_persistent)?;
    Ok(writer)
}

async fn sync_once(path: &Path, seams: &Seams) -> Result<ExitCode, AppError> {
    let config = Arc::new(load(path)?);
    let shared = Shared::new(writer(&config, seams)?, &config.agent.node, Arc::new(Metrics::new()), None);
    let engine = Engine::new(
        config.clone(),
        open_stores(&config, &shared.metrics).await?,
        shared.clone(),
        seams.pause_at.clone(),
    );
    let summary = engine.sync_all().await;
    engine.flush_notifications().await;
    shared.save_status(&config.agent.state_dir);
    if summary.failed_required > 0 {
        eprintln!(
            "keyturn: {} of {} policies failed ({}); see `keyturn status` or the log above",
            summary.failed.len(),
            config.policies.len(),
            summary.failed.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn agent(path: &Path, seams: &Seams) -> Result<ExitCode, AppError> {
    let mut config = Arc::new(load(path)?);
    let metrics = Arc::new(Metrics::new());
    let reporter = match &config.report {
        Some(report) => Some(Arc::new(
            Reporter::open(report, &config.agent.node, &config.agent.state_dir, metrics.clone()).map_err(|source| {
                AppError::Io {
                    what: format!("cannot open the report spool in {}", config.agent.state_dir.display()),
                    source,
                }
            })?,
        )),
        None => None,
    };
    let sender = reporter.clone().map(|r| AbortOnDrop(tokio::spawn(r.send())));
    let shared = Shared::new(writer(&config, seams)?, &config.agent.node, metrics, reporter);
    let mut stores = open_stores(&config, &shared.metrics).await?;
    let signal_error = |source| AppError::Io { what: "cannot install signal handlers".into(), source };
    let mut stop = Stop {
        terminate: signal(SignalKind::terminate()).map_err(signal_error)?,
        interrupt: signal(SignalKind::interrupt()).map_err(signal_error)?,
    };
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let mut resync = signal(SignalKind::user_defined1()).map_err(signal_error)?;

    // The admin listener and the control socket live as long as the process; a reload does not
    // move them (a changed [admin] or [control] takes a restart, and says so).
    let admin = match config.admin.listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address).await.map_err(|source| AppError::Io {
                what: format!("cannot listen on {address} for /metrics, /healthz and /readyz; change [admin] listen"),
                source,
            })?;
            let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(address = %bound, "admin listener serving /metrics, /healthz and /readyz");
            shared.status().admin = Some(bound);
            Some(AbortOnDrop(tokio::spawn(crate::control::admin::serve(listener, shared.clone()))))
        }
        None => None,
    };
    let (engine_tx, engine_rx) = tokio::sync::watch::channel(None);
    let (reload_tx, mut reload_requests) = mpsc::channel(4);
    let socket = socket::bind(&config.agent.runtime_dir, &config.control).map_err(|source| AppError::Io {
        what: format!("cannot create the control socket {}", socket::path(&config.agent.runtime_dir).display()),
        source,
    })?;
    let control =
        AbortOnDrop(tokio::spawn(socket::serve(socket, config.control.clone(), shared.clone(), engine_rx, reload_tx)));
    let systemd = AbortOnDrop(tokio::spawn(crate::control::systemd::report(shared.clone())));
    crate::control::systemd::status("starting: delivering every policy");

    // At once, not after the first delivery: the file names this process, so `keyturn status`
    // and `keyturn rotate` find the agent while it is still starting.
    shared.save_status(&config.agent.state_dir);
    let status_task = AbortOnDrop(tokio::spawn(shared.clone().persist_status(config.agent.state_dir.clone())));
    tracing::info!(
        node = %config.agent.node,
        policies = config.policies.len(),
        runtime_dir = %config.agent.runtime_dir.display(),
        "agent starting"
    );

    loop {
        let (changes_tx, mut changes) = mpsc::channel(16);
        let _watcher = watch_files(path, &config.agent.policies_dir, changes_tx);
        let engine = Engine::new(config.clone(), stores.clone(), shared.clone(), seams.pause_at.clone());
        let Ok(summary) = stop.unless_stopped(engine.sync_all()).await else { break };
        let watchers = engine.spawn_watchers(&summary.failed);
        engine_tx.send_replace(Some(engine.clone()));

        let next = loop {
            let (reason, reply) = tokio::select! {
                _ = stop.recv() => break None,
                _ = hangup.recv() => ("SIGHUP", None),
                Some(request) = reload_requests.recv() => ("keyturn reload", Some(request.reply)),
                _ = resync.recv() => {
                    // `keyturn rotate` made a new version: pull everything now, not at the next poll.
                    tracing::info!("SIGUSR1: pulling every policy now");
                    if stop.unless_stopped(engine.sync_all()).await.is_err() {
                        break None;
                    }
                    continue;
                }
                Some(()) = changes.recv() => {
                    tokio::time::sleep(RELOAD_SETTLE).await;
                    while changes.try_recv().is_ok() {}
                    ("a configuration file changed", None)
                }
            };
            let answer = match reload(path, &config, seams, &shared.metrics).await {
                Ok(Some(next)) => {
                    tracing::info!(reason, policies = next.0.policies.len(), "configuration reloaded");
                    if next.0.admin != config.admin
                        || next.0.control != config.control
                        || next.0.report != config.report
                    {
                        tracing::warn!("[admin], [control] and [report] changes take effect at the next restart");
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(format!("reloaded: {} policies", next.0.policies.len())));
                    }
                    break Some(next);
                }
                Ok(None) => {
                    tracing::info!(reason, "configuration unchanged");
                    Ok("configuration unchanged".to_string())
                }
                Err(e) => {
                    if let AppError::Config(ConfigErrors(problems)) = &e {
                        for problem in problems {
                            tracing::error!(%problem, "configuration problem");
                        }
                    }
                    tracing::error!(reason, error = %error_chain(&e), "new configuration refused; the running one stays");
                    Err(format!("{}; the running configuration stays", error_chain(&e)))
                }
            };
            if let Some(reply) = reply {
                let _ = reply.send(answer);
            }
        };
        drop(watchers);
        // This engine's dispatchers go with it: what they still have to tell applications
        // (a change in its coalescing window, a notifier running) goes out first, so a change
        // delivered just before a stop or a reload is never left unannounced.
        if tokio::time::timeout(config.agent.shutdown_grace, engine.flush_notifications()).await.is_err() {
            tracing::warn!(grace = ?config.agent.shutdown_grace, "notifications still running after the shutdown grace were abandoned");
        }
        match next {
            None => break,
            Some((next_config, next_stores, next_writer)) => {
                if let Some(next_writer) = next_writer {
                    *shared.writer() = next_writer;
                }
                config = Arc::new(next_config);
                stores = next_stores;
            }
        }
    }

    tracing::info!("shutting down");
    crate::control::systemd::stopping();
    drop((control, systemd, admin, status_task, sender));
    let _ = std::fs::remove_file(socket::path(&config.agent.runtime_dir));
    let state_dir = config.agent.state_dir.clone();
    shared.save_status(&state_dir);
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT, which stop the agent whatever it is doing.
///
/// A sync can take as long as its slowest store or check command (a store retrying through
/// an outage, a rotation's `check`), longer than `[agent] shutdown_grace` and systemd's stop
/// timeout; so every sync races these signals, and a signal that wins drops the sync where
/// it stands. That is safe at any await point: a bundle is written by synchronous code, whole
/// or not at all; the file store's lock is held only across synchronous code; a `check`
/// command still running is killed with the future that owns it; and a rotation
/// stopped between steps is one the protocol recovers from, as after a crash: the lease it
/// held is free at once to this node's next agent and to other nodes when it expires, and the
/// next rotator finishes or discards the version it left pending.
struct Stop {
    terminate: Signal,
    interrupt: Signal,
}

impl Stop {
    /// Waits for either signal; returns its name, for the log.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }

    /// Runs a sync to the end, unless a stop signal comes first: then the sync is dropped
    /// unfinished and the signal's name returned. A signal that arrived before the call wins.
    async fn unless_stopped<T>(&mut self, sync: impl Future<Output = T>) -> Result<T, &'static str> {
        tokio::select! {
            biased;
            signal = self.recv() => {
                tracing::info!(signal, "stop signal during a sync: abandoning it");
                Err(signal)
            }
            done = sync => Ok(done),
        }
    }
}

/// `keyturn rotate POLICY --now [--revoke]`: the protocol, run by this process, with a
/// progress line per step. A running agent is then told (SIGUSR1) to deliver the new version
/// at once; the lease makes it safe for both to rotate, only one ever does.
async fn rotate(path: &Path, name: &str, now: bool, revoke: bool, seams: &Seams) -> Result<ExitCode, AppError> {
    use crate::rotation::protocol::{Outcome, Rotator, Step, Trigger};
    if !now {
        return Err(AppError::Usage(
            "the agent rotates on schedule by itself; `keyturn rotate POLICY --now` rotates immediately".into(),
        ));
    }
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
    // Through the running agent when there is one: it rotates, delivers at once, and reports.
    let request = socket::Request::Rotate { policy: name.to_string(), revoke };
    match socket::call(&config.agent.runtime_dir, &request, |line| eprintln!("{line}")).await {
        Ok(Some(Ok(answer))) => {
            let previous = answer["previous"].as_str().unwrap_or("none");
            println!("{name}: version {} is current (previous: {previous})", answer["version"].as_str().unwrap_or("?"));
            let disabled: Vec<&str> =
                answer["disabled"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
            if revoke && !disabled.is_empty() {
                eprintln!(
                    "keyturn: REVOKED {name}: disabled version(s) {}; they are out of every verification set",
                    disabled.join(", ")
                );
            }
            eprintln!("keyturn: rotated by the running agent, which delivered it");
            return Ok(ExitCode::SUCCESS);
        }
        Ok(Some(Err(message))) => return Err(AppError::Agent(format!("policy {name}: {message}"))),
        Ok(None) | Err(_) => {}
    }
    let rotate = policy.rotate.as_ref().ok_or_else(|| {
        AppError::Usage(format!("policy {name} has no [rotate] section: add one to say how new values are made"))
    })?;
    let store = open_store(&policy.store, &config.stores[&policy.store]).await?;
    let progress = |step: Step, detail: &str| eprintln!("[{}/{}] {detail}", step.number(), Step::COUNT);
    let rotator = Rotator {
        store: &store,
        policy,
        rotate,
        node: &config.agent.node,
        pid: std::process::id(),
        pause_at: seams.pause_at.as_deref(),
        progress: &progress,
        now: std::time::SystemTime::now,
    };
    let trigger = if revoke { Trigger::Revoke } else { Trigger::Now };
    let outcome =
        rotator.run(trigger).await.map_err(|source| AppError::Rotation { policy: name.to_string(), source })?;
    match outcome {
        Outcome::Rotated { version, previous, disabled } => {
            let previous = previous.map_or("none".to_string(), |p| p.to_string());
            println!("{name}: version {version} is current (previous: {previous})");
            if revoke && !disabled.is_empty() {
                let disabled: Vec<String> = disabled.iter().map(ToString::to_string).collect();
                eprintln!(
                    "keyturn: REVOKED {name}: disabled version(s) {}; they are out of every verification set",
                    disabled.join(", ")
                );
            }
            if let Ok(status) = Status::load(&config.agent.state_dir)
                && status.pid != 0
                && sys::process_exists(status.pid)
                && sys::nudge(status.pid).is_ok()
            {
                eprintln!("keyturn: told the running agent (pid {}) to deliver it now", status.pid);
            }
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Busy { holder } => Err(AppError::Busy { policy: name.to_string(), holder }),
        Outcome::NotDue { .. } | Outcome::Present { .. } => {
            unreachable!("an immediate rotation is always due and never waits for a missing version")
        }
    }
}

type Reloaded = (Config, Stores, Option<BundleWriter>);

/// Loads the configuration again; `None` if nothing changed. Everything that can fail is
/// done here, before the running configuration is touched.
async fn reload(
    path: &Path,
    current: &Config,
    seams: &Seams,
    metrics: &Arc<Metrics>,
) -> Result<Option<Reloaded>, AppError> {
    let next = load(path)?;
    if next == *current {
        return Ok(None);
    }
    let stores = open_stores(&next, metrics).await?;
    let writer = if next.agent.runtime_dir != current.agent.runtime_dir
        || next.agent.allow_persistent != current.agent.allow_persistent
    {
        Some(writer(&next, seams)?)
    } else {
        None
    };
    if next.agent.state_dir != current.agent.state_dir || next.agent.node != current.agent.node {
        tracing::warn!("state_dir and node changes take effect at the next restart");
    }
    Ok(Some((next, stores, writer)))
}

/// Watches the agent file and the policy directory; sends `()` when either changes. The
/// watcher stops when the returned value is dropped. A failure to watch is logged, and SIGHUP
/// still reloads.
fn watch_files(
    agent_file: &Path,
    policies_dir: &Path,
    changes: mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};

    let agent_file = agent_file.to_path_buf();
    let policies: PathBuf = policies_dir.to_path_buf();
    let watched = (agent_file.clone(), policies.clone());
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            *p == watched.0 || (p.parent() == Some(watched.1.as_path()) && p.extension().is_some_and(|e| e == "toml"))
        });
        if relevant {
            let _ = changes.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch configuration files; reload with SIGHUP");
            return None;
        }
    };
    let agent_dir = agent_file.parent().unwrap_or(Path::new("/")).to_path_buf();
    for dir in [&agent_dir, &policies] {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a configuration directory; reload with SIGHUP");
        }
    }
    Some(watcher)
}
