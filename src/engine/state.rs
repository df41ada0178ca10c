//! What outlives one configuration: the bundles on disk, what is known of each policy's current
//! version, which policies are rotating, and the recorder; plus the seams the engine reads time
//! and randomness through.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::cache::Cache;
use crate::clock::SharedClock;
use crate::deliver::{BundleWriter, Previous};
use crate::report::Recorder;
use crate::secret::VersionId;

/// Side effects the engine does not decide itself, passed in so that tests replace them.
#[derive(Debug, Clone)]
pub struct Seams {
    /// Every "now" the engine uses: due times, grace ends, status timestamps.
    pub clock: SharedClock,
    /// A number in `[0, 1)` for each jitter and backoff spread.
    pub random: fn() -> f64,
    /// Test seam: a `rotate:STEP` pause point for the rotation protocol.
    pub pause_at: Option<Arc<str>>,
}

impl Default for Seams {
    fn default() -> Self {
        Seams { clock: crate::clock::system(), random: crate::backoff::unit_random, pause_at: None }
    }
}

/// What the store last said about a policy's `current` version, besides its value.
#[derive(Debug, Clone)]
pub(super) enum Known {
    /// The secret or its `current` alias does not exist (yet).
    Missing,
    Current {
        version: VersionId,
        created: Option<SystemTime>,
        /// The previous version's public key, for policies that deliver a JWK set; `None`
        /// when there is none, or it is disabled (revoked) or not a key. Boxed: most policies
        /// have none, and each keeps an entry here for as long as the agent runs.
        previous: Option<Box<Previous>>,
    },
}

/// State that outlives one configuration: a reload makes a new engine over the same state.
#[derive(Debug)]
pub struct State {
    writer: Mutex<BundleWriter>,
    known: Mutex<HashMap<String, Known>>,
    /// One rotation at a time per policy in this process: a scheduled rotation and one asked
    /// for on the control socket share a pid, so the lease alone cannot tell them apart.
    rotating: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub recorder: Arc<Recorder>,
    /// The sealed last-known-good cache, when a key is configured.
    cache: Option<Arc<Cache>>,
    /// What each policy's cache entry was sealed from ([`crate::cache::Header::inputs`]), so a
    /// delivery is sealed once, not at every poll.
    sealed: Mutex<HashMap<String, String>>,
    /// Policies this node rotated whose old versions wait for the fleet to move on: tried
    /// again at every poll until none waits.
    retiring: Mutex<std::collections::BTreeSet<String>>,
}

impl State {
    pub fn new(writer: BundleWriter, recorder: Arc<Recorder>) -> Arc<Self> {
        State::with_cache(writer, recorder, None)
    }

    /// A state that seals what it delivers into `cache`; what the cache holds already (read
    /// from its entries' headers, without the key) is not sealed again.
    pub fn with_cache(writer: BundleWriter, recorder: Arc<Recorder>, cache: Option<(Cache, PathBuf)>) -> Arc<Self> {
        let mut sealed = HashMap::new();
        let cache = cache.map(|(cache, dir)| {
            for (policy, header) in crate::cache::list(&dir).unwrap_or_default() {
                if let Ok(header) = header {
                    sealed.insert(policy, header.inputs);
                }
            }
            Arc::new(cache)
        });
        Arc::new(State {
            writer: Mutex::new(writer),
            known: Mutex::new(HashMap::new()),
            rotating: Mutex::new(HashMap::new()),
            recorder,
            cache,
            sealed: Mutex::new(sealed),
            retiring: Mutex::default(),
        })
    }

    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_deref()
    }

    /// What `policy`'s entry was sealed from, as far as this process knows.
    pub(super) fn sealed(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.sealed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The policies whose retirements wait (see [`State::retiring`]'s field).
    pub(super) fn retiring(&self) -> MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.retiring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn writer(&self) -> MutexGuard<'_, BundleWriter> {
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes room for `policies` policies delivered into `bundles` bundles at once. A map
    /// grown one doubling at a time leaves each old table behind as a hole in the heap, which
    /// stays resident (issue 17: about 0.3 MiB at a thousand policies).
    pub(super) fn reserve(&self, policies: usize, bundles: usize) {
        let mut known = self.known();
        let more = policies.saturating_sub(known.len());
        known.reserve(more);
        drop(known);
        self.writer().reserve(bundles);
    }

    pub(super) fn known(&self) -> MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lock that lets one rotation of `policy` run at a time in this process.
    pub(super) fn rotation_turn(&self, policy: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut rotating = self.rotating.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        rotating.entry(policy.to_string()).or_default().clone()
    }
}
