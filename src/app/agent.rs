//! The long-running agent: start (listeners, status, the first sync), then serve until a
//! stop signal, reloading the configuration on SIGHUP, a file change or `keyturn reload`,
//! and pulling everything at once on SIGUSR1.
//!
//! The process-wide parts (the recorder and its status file, the admin listener, the control
//! socket, systemd notifications, the event sender) live as long as the process; each
//! configuration gets an engine of its own, which a reload replaces whole once the new
//! configuration has been loaded and its stores opened without error. A reload that fails
//! leaves the running engine untouched.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use super::build::{self, Stores, load};
use super::{AppError, Seams};
use crate::config::{Config, ConfigErrors};
use crate::control::socket;
use crate::deliver::BundleWriter;
use crate::engine::{Engine, Handle, State};
use crate::error_chain;
use crate::report::metrics::Metrics;
use crate::task::AbortOnDrop;

/// How long file-change events gather before one reload: editors write a file in several
/// steps (truncate, write, rename), and one reload should see the result.
const RELOAD_SETTLE: Duration = Duration::from_millis(300);

pub async fn run(path: &Path, seams: &Seams) -> Result<(), AppError> {
    let mut config = Arc::new(load(path)?);
    let metrics = Arc::new(Metrics::new());
    let reporter = build::reporter(&config, &metrics, seams)?;
    let sender = reporter.clone().map(|r| AbortOnDrop::spawn(r.send()));
    let recorder = build::recorder(&config, metrics.clone(), reporter, seams);
    let cache = build::cache(&config, seams)?;
    let state = State::with_cache(build::writer(&config, seams)?, recorder.clone(), cache);
    let mut stores = build::stores(&config, &metrics, seams).await?;
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
            recorder.set_admin(bound);
            Some(AbortOnDrop::spawn(crate::control::admin::serve(listener, recorder.clone())))
        }
        None => None,
    };
    let (engine_tx, engine_rx) = tokio::sync::watch::channel::<Option<Arc<dyn Handle>>>(None);
    let (reload_tx, mut reload_requests) = mpsc::channel(4);
    let socket = socket::bind(&config.agent.runtime_dir, &config.control).map_err(|source| AppError::Io {
        what: format!("cannot create the control socket {}", socket::path(&config.agent.runtime_dir).display()),
        source,
    })?;
    let control =
        AbortOnDrop::spawn(socket::serve(socket, config.control.clone(), recorder.clone(), engine_rx, reload_tx));
    let systemd = AbortOnDrop::spawn(crate::control::systemd::report(recorder.clone()));
    crate::control::systemd::status("starting: delivering every policy");

    // At once, not after the first delivery: the file names this process, so `keyturn status`
    // and `keyturn rotate` find the agent while it is still starting.
    recorder.config_loaded(None, &config);
    recorder.save(&config.agent.state_dir);
    let status_task = AbortOnDrop::spawn(recorder.clone().persist(config.agent.state_dir.clone()));
    tracing::info!(
        node = %config.agent.node,
        policies = config.policies.len(),
        runtime_dir = %config.agent.runtime_dir.display(),
        "agent starting"
    );

    // When and why the running configuration was loaded: a `keyturn reload` that finds
    // nothing new says so, since the file watch may have applied the change before it asked.
    let mut loaded = (crate::clock::rfc3339(seams.clock.now()), "agent start");
    loop {
        let (changes_tx, mut changes) = mpsc::channel(16);
        let _watcher = watch_files(path, &config.agent.policies_dir, changes_tx);
        // Without its fleet, a retirement that should wait for adoption waits (and says why).
        let fleet = build::fleet(&config).await.unwrap_or_else(|e| {
            tracing::error!(error = %crate::error_chain(&e), "cannot read the fleet's view; old versions stay enabled until it can be read");
            None
        });
        let engine = Engine::new(config.clone(), stores.clone(), state.clone(), seams.engine()).with_fleet(fleet);
        let Ok(summary) = stop.unless_stopped(engine.sync_all()).await else { break };
        let watchers = engine.spawn_watchers(&summary.failed);
        engine_tx.send_replace(Some(Arc::new(engine.clone())));

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
            let answer = match reload(path, &config, seams, &metrics).await {
                Ok(Some(next)) => {
                    recorder.config_loaded(Some(reason), &next.config);
                    if next.config.admin != config.admin
                        || next.config.control != config.control
                        || next.config.report != config.report
                    {
                        tracing::warn!("[admin], [control] and [report] changes take effect at the next restart");
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(format!("reloaded: {} policies", next.config.policies.len())));
                    }
                    loaded = (crate::clock::rfc3339(seams.clock.now()), reason);
                    break Some(next);
                }
                Ok(None) => {
                    recorder.config_unchanged(reason);
                    let (at, why) = &loaded;
                    Ok(format!(
                        "configuration unchanged: the running one, {} policies, was loaded at {at} ({why})",
                        config.policies.len()
                    ))
                }
                Err(e) => {
                    let problems: Vec<String> = match &e {
                        AppError::Config(ConfigErrors(problems)) => problems.iter().map(ToString::to_string).collect(),
                        _ => Vec::new(),
                    };
                    let error = match &e {
                        AppError::Config(ConfigErrors(problems)) => {
                            format!(
                                "configuration has {} problem{}",
                                problems.len(),
                                if problems.len() == 1 { "" } else { "s" }
                            )
                        }
                        other => error_chain(other),
                    };
                    recorder.config_rejected(reason, &error, &problems);
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
            Some(next) => {
                if let Some(writer) = next.writer {
                    *state.writer() = writer;
                }
                config = Arc::new(next.config);
                stores = next.stores;
            }
        }
    }

    tracing::info!("shutting down");
    crate::control::systemd::stopping();
    drop((control, systemd, admin, status_task, sender));
    let _ = std::fs::remove_file(socket::path(&config.agent.runtime_dir));
    // The last status write, after every task that could change it has stopped.
    recorder.save_stopped(&config.agent.state_dir);
    Ok(())
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

/// A configuration that loaded and whose parts could be built: what a reload swaps in.
struct Reloaded {
    config: Config,
    stores: Stores,
    /// A new writer when the runtime directory's settings changed.
    writer: Option<BundleWriter>,
}

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
    let stores = build::stores(&next, metrics, seams).await?;
    let writer = if next.agent.runtime_dir != current.agent.runtime_dir
        || next.agent.allow_persistent != current.agent.allow_persistent
    {
        Some(build::writer(&next, seams)?)
    } else {
        None
    };
    if next.agent.state_dir != current.agent.state_dir || next.agent.node != current.agent.node {
        tracing::warn!("state_dir and node changes take effect at the next restart");
    }
    Ok(Some(Reloaded { config: next, stores, writer }))
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
