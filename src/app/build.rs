//! Configuration → the real parts: stores (through the store registry, each counted in the
//! metrics), the bundle writer, the event reporter, the recorder. The agent, `sync --once`,
//! `rotate` and `store` all build through here, so each part is built one way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{AppError, Seams};
use crate::cache::{Cache, KeySource};
use crate::config::{self, AgentFile, Config, System};
use crate::deliver::{BundleWriter, DeliverError};
use crate::report::Recorder;
use crate::report::events::Reporter;
use crate::report::metrics::Metrics;
use crate::report::status::Status;
use crate::store::{AnyStore, Metered, OpenContext, StoreConfig, StoreError};

/// The stores the engine uses, each counted in the metrics.
pub type Stores = BTreeMap<String, Arc<Metered<AnyStore>>>;

pub fn load(path: &Path) -> Result<Config, config::ConfigErrors> {
    config::load(path, &System, &System)
}

/// The agent file alone: a broken policy must not lock an operator out of `status` or `store`.
pub fn load_agent_file(path: &Path) -> Result<AgentFile, config::ConfigErrors> {
    config::load_agent_file(path, &System, &System)
}

fn context(agent: &config::Agent, seams: &Seams) -> OpenContext {
    OpenContext { clock: seams.clock.clone(), max_clock_skew: agent.max_clock_skew }
}

/// The store named `name` among `stores` (of the agent file at `path`), opened.
pub async fn store(
    path: &Path,
    stores: &BTreeMap<String, StoreConfig>,
    agent: &config::Agent,
    name: &str,
    seams: &Seams,
) -> Result<AnyStore, AppError> {
    let config = named(path, stores, name)?;
    Ok(AnyStore::open(name, config, &context(agent, seams)).await?)
}

/// The settings of the store named `name`, or a usage error listing the stores there are.
pub fn named<'a>(
    path: &Path,
    stores: &'a BTreeMap<String, StoreConfig>,
    name: &str,
) -> Result<&'a StoreConfig, AppError> {
    stores.get(name).ok_or_else(|| {
        let names: Vec<&str> = stores.keys().map(String::as_str).collect();
        AppError::Usage(format!("no store named \"{name}\" in {}; stores: {}", path.display(), names.join(", ")))
    })
}

/// Every configured store, opened and counted.
pub async fn stores(config: &Config, metrics: &Arc<Metrics>, seams: &Seams) -> Result<Stores, StoreError> {
    let context = context(&config.agent, seams);
    let mut stores = BTreeMap::new();
    for (name, store) in &config.stores {
        let store = Metered::new(name, AnyStore::open(name, store, &context).await?, metrics.clone());
        stores.insert(name.clone(), Arc::new(store));
    }
    Ok(stores)
}

/// The bundle writer for the runtime directory, which it checks (tmpfs, unless allowed).
pub fn writer(config: &Config, seams: &Seams) -> Result<BundleWriter, DeliverError> {
    let mut writer = BundleWriter::new(config.agent.runtime_dir.clone(), seams.bundle_pause(), seams.clock.clone());
    writer.prepare_root(config.agent.allow_persistent)?;
    Ok(writer)
}

/// The central event reporter with its spool, when `[report]` is configured.
pub fn reporter(config: &Config, metrics: &Arc<Metrics>, seams: &Seams) -> Result<Option<Arc<Reporter>>, AppError> {
    let Some(report) = &config.report else { return Ok(None) };
    let state_dir = &config.agent.state_dir;
    let reporter =
        Reporter::open(report, &config.agent.node, state_dir, metrics.clone(), seams.clock.clone()).map_err(
            |source| AppError::Io { what: format!("cannot open the report spool in {}", state_dir.display()), source },
        )?;
    Ok(Some(Arc::new(reporter)))
}

/// The sealed cache and its directory, when a key is found (`[cache] key_file`, or the systemd
/// credential); a key that is named but cannot be read is an error, never a cache without one.
pub fn cache(config: &Config, seams: &Seams) -> Result<Option<(Cache, PathBuf)>, AppError> {
    let Some(source) = KeySource::find(config.cache.key_file.as_deref(), seams.credentials_directory.as_deref()) else {
        return Ok(None);
    };
    let dir = config.agent.state_dir.join("cache");
    let cache = Cache::open(&dir, source, &config.agent.node, seams.clock.clone())?;
    tracing::info!(key = %cache.source(), key_id = cache.key_id(), dir = %dir.display(), "sealed cache open");
    Ok(Some((cache, dir)))
}

/// The recorder every outcome goes to.
pub fn recorder(
    config: &Config,
    metrics: Arc<Metrics>,
    reporter: Option<Arc<Reporter>>,
    seams: &Seams,
) -> Arc<Recorder> {
    let recorder = Recorder::new(&config.agent.node, seams.clock.clone(), metrics, reporter);
    // A restart that rewrites nothing keeps the delivery times its predecessor recorded.
    if let Ok(earlier) = Status::load(&config.agent.state_dir) {
        recorder.resume(&earlier);
    }
    Arc::new(recorder)
}

/// The fleet's view, when the agent file has a `[fleet]`.
pub async fn fleet(config: &Config) -> Result<Option<Arc<crate::fleet::Client>>, AppError> {
    let Some(settings) = &config.fleet else { return Ok(None) };
    let google = match &settings.auth {
        config::FleetAuth::Google { store } => match config.stores.get(store) {
            #[cfg(feature = "gcp")]
            Some(StoreConfig::Gcp(gcp)) => Some(google_tokens(gcp).await.map_err(AppError::Fleet)?),
            _ => return Err(AppError::Fleet(format!("[fleet] store {store} is not a gcp store"))),
        },
        _ => None,
    };
    crate::fleet::Client::new(settings, google).map(|client| Some(Arc::new(client))).map_err(AppError::Fleet)
}

#[cfg(feature = "gcp")]
/// The identity of a `gcp` store, for `[fleet] auth = "google"`: Application Default
/// Credentials in Google's order, from the store's `credentials` if it names a file.
async fn google_tokens(
    config: &crate::store::gcp::GcpStoreConfig,
) -> Result<crate::fleet::prometheus::GoogleTokens, String> {
    use crate::store::gcp::identity;
    let environment = identity::Environment::from_process();
    let discovery = identity::Discovery {
        configured: config.credentials.as_deref(),
        environment: &environment,
        request_timeout: config.request_timeout,
        time: Arc::new(identity::server_time::ServerTime::new(crate::clock::system())),
        clock: crate::clock::system(),
    };
    match tokio::time::timeout(config.token_timeout, identity::find(discovery)).await {
        Ok(Ok(identity)) => Ok(identity.provider),
        Ok(Err(message)) => Err(format!("no usable Google credentials for [fleet]: {message}")),
        Err(_) => Err(format!("finding Google credentials took longer than {:?}", config.token_timeout)),
    }
}
