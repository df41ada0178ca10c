//! Atomic bundle updates on tmpfs.
//!
//! A bundle is a directory under the runtime directory whose files change together. Its
//! layout follows Kubernetes' atomic writer, which applications and their file watchers
//! already understand:
//!
//! ```text
//! RUNTIME_DIR/api/
//!   ..2026_11_28_18_30_01.123456789/   a version directory: every file of the bundle
//!     signing.pem  db.env  ..keyturn.json
//!   ..data -> ..2026_11_28_18_30_01.123456789
//!   signing.pem -> ..data/signing.pem   the names applications open
//!   db.env -> ..data/db.env
//! ```
//!
//! An update writes a complete new version directory (each file created with its final mode
//! and owner before a byte is written, then fsync'd), and then replaces `..data` with one
//! `rename(2)`. Until that rename, readers see only the old set; after it, only the new one.
//! A crash or a full disk at any step before the rename leaves the old set untouched and some
//! garbage that the next update removes; after it, only cleanup is left. The version directory
//! that was live before an update is kept until the next one, so a reader that resolved
//! `..data` just before the swap can finish reading a consistent set.
//!
//! Several policies may deliver into one bundle. Files of policies that did not change are
//! hard-linked from the live version directory into the new one, so an update never needs
//! their values in memory. `..keyturn.json` records which policy, version and files each
//! member delivered; it is how a restarted agent knows what is already on disk.
//!
//! The runtime directory must be keyturn's own: a real directory (not a link), owned by the
//! agent's user or root, writable by no one else, and so must every directory above it be
//! (or sticky, as `/dev/shm` is). It is opened once and held; every write is made relative
//! to a directory handle opened from it without following links, so a name swapped in the
//! path after the check leads nowhere. A bundle counts as current only if its visible links
//! still lead where keyturn put them, and only directories keyturn made (a version directory
//! with its manifest) are ever removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::DeliverError;
use crate::clock::{Clock, SharedClock};
use crate::config::DirAccess;
use crate::secret::{SecretBytes, VersionId};
use crate::sys;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
const LINK_TMP: &str = "..link_tmp_";
const MANIFEST: &str = "..keyturn.json";
const DIR_MODE: u32 = 0o755;
/// A manifest is a few hundred bytes per member policy.
const MANIFEST_MAX: u64 = 4 * 1024 * 1024;

/// What one bundle holds, per member policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub policies: Members,
}

/// A manifest's member policies by name: a JSON object on disk, a sorted vector in memory.
/// The writer keeps every bundle's manifest for as long as the agent runs, and most bundles
/// have one member: a `BTreeMap` would hold a node of eleven entries (1.7 KB) for it, a
/// vector holds exactly one (issue 17).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Members(Vec<(String, Delivered)>);

impl Members {
    pub fn get(&self, policy: &str) -> Option<&Delivered> {
        self.find(policy).ok().map(|index| &self.0[index].1)
    }

    pub fn contains_key(&self, policy: &str) -> bool {
        self.find(policy).is_ok()
    }

    /// Adds or replaces `policy`'s part.
    pub fn insert(&mut self, policy: String, delivered: Delivered) {
        match self.find(&policy) {
            Ok(index) => self.0[index].1 = delivered,
            Err(index) => self.0.insert(index, (policy, delivered)),
        }
    }

    /// In name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Delivered)> {
        self.0.iter().map(|(policy, delivered)| (policy, delivered))
    }

    pub fn values(&self) -> impl Iterator<Item = &Delivered> {
        self.0.iter().map(|(_, delivered)| delivered)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same members in no more memory than they need, for a manifest that is kept.
    fn shrunk(mut self) -> Self {
        self.0.shrink_to_fit();
        self
    }

    fn find(&self, policy: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(name, _)| name.as_str().cmp(policy))
    }
}

impl Serialize for Members {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, Delivered>::deserialize(deserializer)?;
        Ok(Members(map.into_iter().collect()))
    }
}

/// One policy's part of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    pub version: VersionId,
    /// The value's CRC32C, to notice a store that rewrote a version in place. This file is
    /// private to the agent, which can read the values themselves anyway.
    pub crc32c: u32,
    /// A fingerprint of the policy's delivery settings (paths, formats, modes, owners), so a
    /// changed policy is redelivered even when the value did not change.
    pub spec: u32,
    /// The previous version listed beside the current one in JWK sets, while in its grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<VersionId>,
    pub files: Vec<PathBuf>,
    /// When this version was written, RFC 3339.
    pub at: String,
    /// How the version was chosen (the policy's `version`, e.g. `alias current`): a read
    /// that names an older version the same way is a lagging replica, not a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<String>,
}

/// One file to write, rendered and ready.
#[derive(Debug)]
pub struct RenderedFile {
    pub path: PathBuf,
    pub contents: SecretBytes,
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// A member policy's new files.
#[derive(Debug)]
pub struct PolicyUpdate {
    pub policy: String,
    pub version: VersionId,
    pub crc32c: u32,
    pub spec: u32,
    pub previous: Option<VersionId>,
    pub files: Vec<RenderedFile>,
    /// See [`Delivered::read`].
    pub read: String,
}

/// What a policy's part of a bundle is made from; equal fingerprints mean equal files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint<'a> {
    pub version: &'a VersionId,
    pub crc32c: u32,
    pub spec: u32,
    pub previous: Option<&'a VersionId>,
}

/// The named points of an update, in order; tests stop the agent at each to prove that a
/// crash anywhere leaves readers a whole bundle.
pub const STEPS: &[&str] = &["created", "files-written", "carried", "manifest-written", "linked", "swapped", "cleaned"];

/// A bundle's manifest as last read or written, and the version directory it is in.
#[derive(Debug, Clone, Default)]
struct Known {
    manifest: Manifest,
    /// The name `..data` pointed at; `None` when the bundle has no live version.
    live: Option<String>,
}

/// Writes bundles under one runtime directory, remembering what each holds.
#[derive(Debug)]
pub struct BundleWriter {
    root: PathBuf,
    /// The runtime directory, opened once and checked ([`BundleWriter::prepare_root`]):
    /// every write is made relative to it.
    root_dir: Option<Arc<OwnedFd>>,
    /// Test seam: stop forever at this step (`KEYTURN_TEST_PAUSE_AT=bundle:STEP`) so a test
    /// can SIGKILL the agent there.
    pause_at: Option<String>,
    manifests: HashMap<String, Known>,
    /// Bundles known to hold nothing but `..data`, the live version, the version before it
    /// (the value here) and the links the manifest names: created by this process, or
    /// scanned clean after an update. Their next cleanup removes what that update made
    /// obsolete instead of reading the whole directory again.
    tidy: HashMap<String, Option<String>>,
    disk: Disk,
    /// Names version directories and stamps manifests.
    clock: SharedClock,
}

/// What the runtime directory's filesystem and the process need from a writer.
#[derive(Debug, Clone, Copy)]
struct Disk {
    /// Whether fsync does anything: not on tmpfs and ramfs, where the page cache is the
    /// storage (every finished call is visible to every reader) and a machine crash loses
    /// everything anyway. Until the root is checked, assume it does.
    durable: bool,
    /// The process umask: a mode it leaves whole needs no chmod after creation.
    umask: u32,
    /// The agent's effective user: what owns the directories and manifests keyturn makes.
    uid: u32,
}

impl Disk {
    fn sync(self, handle: impl AsFd) -> io::Result<()> {
        if self.durable { Ok(rustix::fs::fsync(handle)?) } else { Ok(()) }
    }

    /// Whether creating something with `mode` may leave bits out.
    fn masks(self, mode: u32) -> bool {
        mode & self.umask != 0
    }

    /// Whether the agent (or root) owns what `stat` describes.
    fn owns(self, stat: &rustix::fs::Stat) -> bool {
        stat.st_uid == self.uid || stat.st_uid == 0
    }
}

/// Flags for a directory opened to work in, never through a link.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn open_dir(parent: impl AsFd, name: impl rustix::path::Arg) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(parent, name, dir_flags(), Mode::empty())?)
}

/// Whether `name` is a version directory's name: `..` and a time stamp.
fn is_version_name(name: &str) -> bool {
    name.strip_prefix("..").is_some_and(|stamp| {
        stamp.starts_with(|c: char| c.is_ascii_digit())
            && stamp.chars().all(|c| c.is_ascii_digit() || "_.-".contains(c))
    })
}

impl BundleWriter {
    pub fn new(root: PathBuf, pause_at: Option<String>, clock: SharedClock) -> Self {
        // Unknown umask: chmod everything.
        let uid = rustix::process::geteuid().as_raw();
        let disk = Disk { durable: true, umask: sys::umask().unwrap_or(0o777), uid };
        BundleWriter { root, root_dir: None, pause_at, manifests: HashMap::new(), tidy: HashMap::new(), disk, clock }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the runtime directory if needed, checks that it is keyturn's own (see the
    /// module's opening) and memory-backed, and holds it open.
    pub fn prepare_root(&mut self, allow_persistent: bool) -> Result<(), DeliverError> {
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source: io::Error| DeliverError::Io { bundle: String::new(), action, path, source }
        };
        sys::create_dir(&self.root, DIR_MODE).map_err(io("create", &self.root))?;
        let handle =
            rustix::fs::open(&self.root, dir_flags(), Mode::empty()).map_err(|e| io("open", &self.root)(e.into()))?;
        let unsafe_dir =
            |path: &Path, problem: String| DeliverError::UnsafeRuntimeDir { path: path.to_path_buf(), problem };
        let stat = rustix::fs::fstat(&handle).map_err(|e| io("stat", &self.root)(e.into()))?;
        if let Some(problem) = self.foreign_dir(&stat, false) {
            return Err(unsafe_dir(&self.root, problem));
        }
        // Every directory above it: whoever may rename entries there may swap it.
        let real = std::fs::canonicalize(&self.root).map_err(io("resolve", &self.root))?;
        for ancestor in real.ancestors().skip(1) {
            let stat = rustix::fs::stat(ancestor).map_err(|e| io("stat", ancestor)(e.into()))?;
            if let Some(problem) = self.foreign_dir(&stat, true) {
                return Err(unsafe_dir(&self.root, format!("{} above it is {problem}", ancestor.display())));
            }
        }
        let filesystem = sys::filesystem(&self.root).map_err(io("statfs", &self.root))?;
        self.disk.durable = !filesystem.is_volatile();
        if !filesystem.is_volatile() && !allow_persistent {
            return Err(DeliverError::NotVolatile { path: self.root.clone(), filesystem: filesystem.name() });
        }
        self.root_dir = Some(Arc::new(handle));
        Ok(())
    }

    /// Why a directory is not safe to hold bundles (or to sit above them), if it is not.
    fn foreign_dir(&self, stat: &rustix::fs::Stat, above: bool) -> Option<String> {
        let mode = stat.st_mode;
        if FileType::from_raw_mode(mode) != FileType::Directory {
            return Some("not a directory".into());
        }
        if !self.disk.owns(stat) {
            return Some(format!(
                "owned by uid {}, not by the agent's user (uid {}) or root; remove it, or give it to the agent's user",
                stat.st_uid, self.disk.uid
            ));
        }
        // Others may write into a sticky directory, but not rename or remove what they do
        // not own: /dev/shm and /tmp are fine above a runtime directory of our own.
        let sticky = mode & 0o1000 != 0;
        if mode & 0o022 != 0 && !(above && sticky) {
            return Some(format!(
                "writable by others (mode {:04o}), who could swap a bundle; chmod go-w it",
                mode & 0o7777
            ));
        }
        None
    }

    /// The runtime directory's handle, opened (and checked) on first use.
    fn root_handle(&mut self) -> Result<BorrowedFd<'_>, DeliverError> {
        if self.root_dir.is_none() {
            // A writer that was never prepared: its root is what its owner says it is, but it
            // is still checked and held (writing to persistent storage is allowed here; the
            // agent always prepares its writer first).
            self.prepare_root(true)?;
        }
        Ok(self.root_dir.as_ref().expect("prepared").as_fd())
    }

    /// Makes room for `bundles` bundles at once (see `engine::state::State::reserve`).
    pub fn reserve(&mut self, bundles: usize) {
        self.manifests.reserve(bundles.saturating_sub(self.manifests.len()));
        self.tidy.reserve(bundles.saturating_sub(self.tidy.len()));
    }

    /// What `bundle` holds now, read from disk the first time it is asked for.
    pub fn manifest(&mut self, bundle: &str) -> &Manifest {
        &self.known(bundle).manifest
    }

    fn known(&mut self, bundle: &str) -> &Known {
        if !self.manifests.contains_key(bundle) {
            let disk = self.disk;
            let known = match self.root_handle() {
                Ok(root) => read_known(disk, root, bundle),
                Err(_) => Known::default(),
            };
            self.manifests.insert(bundle.to_string(), known);
        }
        &self.manifests[bundle]
    }

    /// Whether `policy` is delivered in `bundle` as `want` describes: its manifest says so,
    /// `..data` still names the version it was written to, the names applications open still
    /// lead through `..data`, and its files are there.
    pub fn holds(&mut self, bundle: &str, policy: &str, want: &Fingerprint<'_>) -> bool {
        let Some(delivered) = self.known(bundle).manifest.policies.get(policy).cloned() else { return false };
        let same = &delivered.version == want.version
            && delivered.crc32c == want.crc32c
            && delivered.spec == want.spec
            && delivered.previous.as_ref() == want.previous;
        if !same {
            return false;
        }
        let live = self.manifests[bundle].live.clone();
        let Ok(root) = self.root_handle() else { return false };
        let Ok(dir) = open_dir(root, bundle) else { return false };
        let data = rustix::fs::readlinkat(&dir, DATA, Vec::new()).ok();
        if data.as_ref().map(|d| d.as_bytes()) != live.as_deref().map(str::as_bytes) {
            // Swapped by someone else since it was read: read it again next time.
            self.manifests.remove(bundle);
            return false;
        }
        let Some(live) = live else { return false };
        delivered.files.iter().all(|file| {
            let Some(Component::Normal(top)) = file.components().next() else { return false };
            let link_ok = rustix::fs::readlinkat(&dir, top, Vec::new())
                .is_ok_and(|target| Path::new(OsStr::from_bytes(target.as_bytes())) == Path::new(DATA).join(top));
            link_ok && rustix::fs::statat(&dir, Path::new(&live).join(file), AtFlags::SYMLINK_NOFOLLOW).is_ok()
        })
    }

    /// Swaps in a new version of `bundle` holding `updates` and the unchanged files of the
    /// other `members`. Policies not in `members` are dropped from the bundle.
    pub fn write(
        &mut self,
        bundle: &str,
        members: &BTreeSet<&str>,
        access: DirAccess,
        updates: Vec<PolicyUpdate>,
    ) -> Result<(), DeliverError> {
        let path = self.root.join(bundle);
        let io = |action: &'static str, path: &Path| {
            let bundle = bundle.to_string();
            let path = path.to_path_buf();
            move |source: io::Error| DeliverError::Io { bundle, action, path, source }
        };
        let disk = self.disk;
        // Shared, not duplicated: held across the updates of `self` below.
        self.root_handle()?;
        let root = self.root_dir.clone().expect("prepared");
        let created = match rustix::fs::mkdirat(&root, bundle, Mode::from_raw_mode(access.mode)) {
            Ok(()) => {
                self.tidy.insert(bundle.to_string(), None);
                true
            }
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(io("create", &path)(e.into())),
        };
        let dir = open_dir(&root, bundle).map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
                || e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
            {
                DeliverError::Foreign { bundle: bundle.to_string(), path: path.clone() }
            } else {
                io("open", &path)(e)
            }
        })?;
        if !created {
            let stat = rustix::fs::fstat(&dir).map_err(|e| io("stat", &path)(e.into()))?;
            if !disk.owns(&stat) {
                return Err(DeliverError::Foreign { bundle: bundle.to_string(), path });
            }
        }
        // An existing directory may have the access an older configuration gave it.
        set_access(disk, &dir, access, created).map_err(io("set the owner and mode of", &path))?;
        let old = if created { Known::default() } else { self.known(bundle).clone() };
        // A directory made just now holds nothing to read or clear.
        let live = if created {
            None
        } else {
            rustix::fs::readlinkat(&dir, DATA, Vec::new())
                .ok()
                .and_then(|target| target.into_string().ok())
                .filter(|name| is_version_name(name))
        };
        if !created {
            remove_if_exists(&dir, DATA_TMP).map_err(io("remove", &path.join(DATA_TMP)))?;
        }

        let (name, version_dir) = create_version_dir(disk, self.clock.as_ref(), &dir, access)
            .map_err(io("create a version directory in", &path))?;
        self.pause("created");
        let mut linked = Vec::new();
        let staged = self.stage(
            bundle,
            &dir,
            &version_dir,
            access,
            created,
            live.as_deref(),
            &old.manifest,
            members,
            updates,
            &mut linked,
        );
        let manifest = match staged {
            Ok(manifest) => manifest,
            Err(e) => {
                // Nothing live changed: drop what was staged. Links created for new names
                // point through `..data` at names the live version does not have, so they
                // dangle exactly as the absent names did; remove them anyway.
                let _ = remove_tree_at(&dir, &name);
                for link in linked {
                    let _ = rustix::fs::unlinkat(&dir, link.as_str(), AtFlags::empty());
                }
                // Whatever could not be removed is found by the next update's full scan.
                self.tidy.remove(bundle);
                return Err(e);
            }
        };

        // The commit point.
        rustix::fs::symlinkat(name.as_str(), &dir, DATA_TMP).map_err(|e| io("link", &path.join(DATA_TMP))(e.into()))?;
        rustix::fs::renameat(&dir, DATA_TMP, &dir, DATA).map_err(|e| io("rename", &path.join(DATA_TMP))(e.into()))?;
        disk.sync(&dir).map_err(io("sync", &path))?;
        let kept = Manifest { policies: manifest.policies.clone().shrunk() };
        self.manifests.insert(bundle.to_string(), Known { manifest: kept, live: Some(name.clone()) });
        self.pause("swapped");

        // Cleanup. Failures here leave garbage, never a wrong bundle; the next update retries.
        let visible = top_level_names(&manifest);
        let removed = if let Some(before_live) = self.tidy.get(bundle) {
            // Only what this update made obsolete: the version before the one it swapped
            // out, and links to names the new version no longer has.
            let stale_version = before_live.as_deref().filter(|v| Some(*v) != live.as_deref() && *v != name);
            let stale_names = top_level_names(&old.manifest).into_iter().filter(|n| !visible.contains(n));
            let garbage: Vec<String> = stale_version.map(String::from).into_iter().chain(stale_names).collect();
            garbage.iter().filter(|entry| remove_ours(disk, &dir, entry)).count()
        } else {
            // Anything else keyturn may have left: versions and temporary links of updates
            // cut short by a crash, links to names no version has any more.
            let mut removed = 0;
            for entry in entries(&dir) {
                let keep = if entry.starts_with("..") {
                    entry == DATA || entry == name || live.as_deref() == Some(entry.as_str())
                } else {
                    visible.contains(&entry)
                };
                if !keep && remove_ours(disk, &dir, &entry) {
                    removed += 1;
                }
            }
            removed
        };
        if removed > 0 {
            let _ = disk.sync(&dir);
        }
        self.tidy.insert(bundle.to_string(), live);
        self.pause("cleaned");
        Ok(())
    }

    /// Fills the new version directory and links new names; returns the new manifest.
    #[allow(clippy::too_many_arguments, reason = "one step of `write`, split out for its error path")]
    fn stage(
        &self,
        bundle: &str,
        dir: &OwnedFd,
        version_dir: &OwnedFd,
        access: DirAccess,
        created: bool,
        live: Option<&str>,
        old: &Manifest,
        members: &BTreeSet<&str>,
        updates: Vec<PolicyUpdate>,
        linked: &mut Vec<String>,
    ) -> Result<Manifest, DeliverError> {
        let bundle_path = self.root.join(bundle);
        let io = |action: &'static str, path: &Path| {
            let bundle = bundle.to_string();
            let path = path.to_path_buf();
            move |source: io::Error| DeliverError::Io { bundle, action, path, source }
        };
        let at = humantime::format_rfc3339_seconds(self.clock.now()).to_string();
        let mut manifest = Manifest::default();

        let updated: BTreeSet<String> = updates.iter().map(|u| u.policy.clone()).collect();
        for update in updates {
            for file in &update.files {
                write_file(self.disk, version_dir, access, &file.path, file)
                    .map_err(io("write", &bundle_path.join(&file.path)))?;
            }
            manifest.policies.insert(
                update.policy,
                Delivered {
                    version: update.version,
                    crc32c: update.crc32c,
                    spec: update.spec,
                    previous: update.previous,
                    files: update.files.into_iter().map(|f| f.path).collect(),
                    at: at.clone(),
                    read: Some(update.read),
                },
            );
        }
        self.pause("files-written");

        // Unchanged members keep their files: hard links into the new version directory.
        if let Some(live) = live {
            let live_dir = open_dir(dir, live).map_err(io("open", &bundle_path.join(live)))?;
            for (policy, delivered) in old.policies.iter() {
                if updated.contains(policy) || !members.contains(policy.as_str()) {
                    continue;
                }
                let carried = delivered.files.iter().try_for_each(|file| {
                    let parent = create_parents(self.disk, version_dir, access, file)?;
                    let name = file.file_name().unwrap_or_default();
                    rustix::fs::linkat(&live_dir, file, &parent, name, AtFlags::empty()).map_err(|e| {
                        needs_capability(e.into(), "CAP_FOWNER", "carry another user's file into the new version")
                    })
                });
                match carried {
                    Ok(()) => {
                        manifest.policies.insert(policy.clone(), delivered.clone());
                    }
                    // A file removed by hand: the policy is dropped from the manifest, so the
                    // engine sees it as undelivered and writes it again.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        tracing::warn!(
                            bundle,
                            policy,
                            "files missing from the live bundle; they will be delivered again"
                        );
                    }
                    Err(e) => return Err(io("link", &bundle_path.join(live))(e)),
                }
            }
        }
        self.pause("carried");

        let text = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        let own = RenderedFile {
            path: MANIFEST.into(),
            contents: SecretBytes::new(text),
            mode: 0o400,
            owner: None,
            group: None,
        };
        write_file(self.disk, version_dir, access, Path::new(MANIFEST), &own)
            .map_err(io("write", &bundle_path.join(MANIFEST)))?;
        sync_version(self.disk, version_dir, &manifest).map_err(io("sync", &bundle_path))?;
        self.pause("manifest-written");

        // New visible names, created before the swap: they dangle until `..data` points at a
        // version that has them, which readers see as the same "no such file" as before.
        let mut relinked = false;
        for name in top_level_names(&manifest) {
            let target = Path::new(DATA).join(&name);
            let link_path = bundle_path.join(&name);
            // A bundle directory made by this update has no names yet.
            let existing = if created {
                Err(rustix::io::Errno::NOENT)
            } else {
                rustix::fs::readlinkat(dir, name.as_str(), Vec::new())
            };
            match existing {
                Ok(existing) if Path::new(OsStr::from_bytes(existing.as_bytes())) == target => continue,
                Ok(_) => {
                    let tmp = format!("{LINK_TMP}{name}");
                    remove_if_exists(dir, &tmp).map_err(io("remove", &bundle_path.join(&tmp)))?;
                    rustix::fs::symlinkat(&target, dir, tmp.as_str())
                        .map_err(|e| io("link", &bundle_path.join(&tmp))(e.into()))?;
                    rustix::fs::renameat(dir, tmp.as_str(), dir, name.as_str())
                        .map_err(|e| io("rename", &bundle_path.join(&tmp))(e.into()))?;
                    relinked = true;
                }
                Err(rustix::io::Errno::NOENT) => {
                    rustix::fs::symlinkat(&target, dir, name.as_str()).map_err(|e| io("link", &link_path)(e.into()))?;
                    linked.push(name);
                    relinked = true;
                }
                Err(rustix::io::Errno::INVAL) => {
                    return Err(DeliverError::Foreign { bundle: bundle.to_string(), path: link_path });
                }
                Err(e) => return Err(io("read", &link_path)(e.into())),
            }
        }
        if relinked {
            // Durable before the swap, so that no crash leaves a new version live without the
            // names that lead to it.
            self.disk.sync(dir).map_err(io("sync", &bundle_path))?;
        }
        self.pause("linked");
        Ok(manifest)
    }

    /// Removes bundles under the root that keyturn wrote but no policy delivers any more:
    /// directories of the agent's user whose `..data` leads to a version directory holding
    /// keyturn's manifest. Anything else is not keyturn's and is left alone.
    pub fn remove_stale(&mut self, keep: &BTreeSet<&str>) -> Vec<String> {
        let disk = self.disk;
        let Ok(root) = self.root_handle().and_then(|r| {
            r.try_clone_to_owned().map_err(|source| DeliverError::Io {
                bundle: String::new(),
                action: "open",
                path: PathBuf::new(),
                source,
            })
        }) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for name in entries(&root) {
            if name.starts_with('.') || keep.contains(name.as_str()) || !is_our_bundle(disk, &root, &name) {
                continue;
            }
            if remove_tree_at(&root, &name).is_ok() {
                self.manifests.remove(&name);
                self.tidy.remove(&name);
                removed.push(name);
            }
        }
        removed
    }

    fn pause(&self, step: &str) {
        if self.pause_at.as_deref() == Some(step) {
            eprintln!("keyturn: paused at bundle:{step}");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

/// What a bundle holds, read through `..data` (which must name a version directory) from a
/// manifest the agent's user owns; empty when any of that is not so.
fn read_known(disk: Disk, root: BorrowedFd<'_>, bundle: &str) -> Known {
    let read = || -> Option<Known> {
        let dir = open_dir(root, bundle).ok()?;
        let live = rustix::fs::readlinkat(&dir, DATA, Vec::new()).ok()?.into_string().ok()?;
        if !is_version_name(&live) {
            return None;
        }
        let version = open_dir(&dir, live.as_str()).ok()?;
        let manifest = rustix::fs::openat(
            &version,
            MANIFEST,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .ok()?;
        let stat = rustix::fs::fstat(&manifest).ok()?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile || stat.st_uid != disk.uid {
            return None;
        }
        let mut bytes = Vec::new();
        std::fs::File::from(manifest).take(MANIFEST_MAX).read_to_end(&mut bytes).ok()?;
        let manifest = serde_json::from_slice(&bytes).ok()?;
        Some(Known { manifest, live: Some(live) })
    };
    read().unwrap_or_default()
}

/// Whether `name` under the root is a bundle keyturn made.
fn is_our_bundle(disk: Disk, root: &OwnedFd, name: &str) -> bool {
    let Ok(dir) = open_dir(root, name) else { return false };
    if !rustix::fs::fstat(&dir).is_ok_and(|stat| stat.st_uid == disk.uid) {
        return false;
    }
    read_known(disk, root.as_fd(), name).live.is_some()
}

/// The names in a directory, `.` and `..` left out; names that are not UTF-8 are not
/// keyturn's and are left out too.
fn entries(dir: &OwnedFd) -> Vec<String> {
    let Ok(listing) = rustix::fs::Dir::read_from(dir) else { return Vec::new() };
    listing
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().ok().map(String::from))
        .filter(|name| name != "." && name != "..")
        .collect()
}

/// Removes `name` under `dir` and everything in it, never following a link.
fn remove_tree_at(dir: &OwnedFd, name: &str) -> io::Result<()> {
    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?);
    }
    let inside = open_dir(dir, name)?;
    for entry in entries(&inside) {
        remove_tree_at(&inside, &entry)?;
    }
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

/// The names applications see at the top of the bundle.
fn top_level_names(manifest: &Manifest) -> BTreeSet<String> {
    manifest
        .policies
        .values()
        .flat_map(|d| d.files.iter())
        .filter_map(|f| f.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect()
}

/// Removes what keyturn leaves in a bundle: a version directory of the agent's user, a
/// temporary link, or a visible link into `..data`; anything else (a file, a directory, a
/// link of someone else) stays. True when it was removed.
fn remove_ours(disk: Disk, dir: &OwnedFd, name: &str) -> bool {
    let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else { return false };
    let kind = FileType::from_raw_mode(stat.st_mode);
    let ours = if name == DATA_TMP || name.starts_with(LINK_TMP) {
        kind == FileType::Symlink
    } else if name.starts_with("..") {
        kind == FileType::Directory && is_version_name(name) && stat.st_uid == disk.uid
    } else {
        kind == FileType::Symlink
            && rustix::fs::readlinkat(dir, name, Vec::new()).is_ok_and(|t| t.as_bytes().starts_with(DATA.as_bytes()))
    };
    ours && remove_tree_at(dir, name).is_ok()
}

fn remove_if_exists(dir: &OwnedFd, name: &str) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Err(rustix::io::Errno::NOENT) | Ok(()) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `..YYYY_MM_DD_hh_mm_ss.nnnnnnnnn`, made unique with a counter if two updates share a
/// nanosecond.
fn create_version_dir(
    disk: Disk,
    clock: &dyn Clock,
    bundle_dir: &OwnedFd,
    access: DirAccess,
) -> io::Result<(String, OwnedFd)> {
    let stamp = humantime::format_rfc3339_nanos(clock.now()).to_string();
    let stamp = stamp.trim_end_matches('Z').replace(['-', 'T', ':'], "_");
    for attempt in 0..100 {
        let name = if attempt == 0 { format!("..{stamp}") } else { format!("..{stamp}-{attempt}") };
        match rustix::fs::mkdirat(bundle_dir, name.as_str(), Mode::from_raw_mode(access.mode)) {
            Ok(()) => {
                let handle = open_dir(bundle_dir, name.as_str())?;
                set_access(disk, &handle, access, true)?;
                return Ok((name, handle));
            }
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free version directory name"))
}

/// Opens (creating as needed) the directories of `path` inside `version_dir`; returns the
/// handle of its parent.
fn create_parents<'a>(disk: Disk, version_dir: &'a OwnedFd, access: DirAccess, path: &Path) -> io::Result<Parent<'a>> {
    let mut current = Parent::Version(version_dir);
    for name in path.parent().into_iter().flat_map(Path::components).map(|c| c.as_os_str()) {
        let next = match rustix::fs::mkdirat(&current, name, Mode::from_raw_mode(access.mode)) {
            Ok(()) => {
                let handle = open_dir(&current, name)?;
                set_access(disk, &handle, access, true)?;
                handle
            }
            Err(rustix::io::Errno::EXIST) => open_dir(&current, name)?,
            Err(e) => return Err(e.into()),
        };
        current = Parent::Inside(next);
    }
    Ok(current)
}

/// The directory a file of a version goes in: the version directory itself (most files, and
/// no handle of its own to open), or one opened inside it.
enum Parent<'a> {
    Version(&'a OwnedFd),
    Inside(OwnedFd),
}

impl AsFd for Parent<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Parent::Version(dir) => dir.as_fd(),
            Parent::Inside(dir) => dir.as_fd(),
        }
    }
}

/// Says which capability an EPERM means, and where it comes from.
fn needs_capability(error: io::Error, capability: &str, to: &str) -> io::Error {
    if error.raw_os_error() != Some(rustix::io::Errno::PERM.raw_os_error()) {
        return error;
    }
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{error}: to {to} the agent needs {capability} (systemd: add owners.conf; see systemd/README.md)"),
    )
}

/// Gives a directory the bundle's group and mode. One just `created` with that mode already
/// has it unless it needs a group or the umask took bits away.
fn set_access(disk: Disk, dir: &OwnedFd, access: DirAccess, created: bool) -> io::Result<()> {
    if created && access.group.is_none() && !disk.masks(access.mode) {
        return Ok(());
    }
    sys::chown(dir, None, access.group)
        .map_err(|e| needs_capability(e, "CAP_CHOWN", "give a directory to a group the agent is not in"))?;
    sys::chmod(dir, access.mode)
}

/// Creates one file with its final mode and owner, then writes and syncs it.
fn write_file(
    disk: Disk,
    version_dir: &OwnedFd,
    access: DirAccess,
    path: &Path,
    file: &RenderedFile,
) -> io::Result<()> {
    let parent = create_parents(disk, version_dir, access, path)?;
    let name = path.file_name().unwrap_or_default();
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let out = rustix::fs::openat(&parent, name, flags, Mode::from_raw_mode(file.mode))?;
    let mut out = std::fs::File::from(out);
    if disk.masks(file.mode) {
        sys::chmod(&out, file.mode)?;
    }
    sys::chown(&out, file.owner, file.group).map_err(|e| {
        needs_capability(e, "CAP_CHOWN", "give a file to another user or to a group the agent is not in")
    })?;
    out.write_all(file.contents.expose())?;
    disk.sync(&out)
}

/// Syncs a version directory and the directories inside it (the parents of the files its
/// manifest lists), so their entries are durable before the swap makes them live.
fn sync_version(disk: Disk, version_dir: &OwnedFd, manifest: &Manifest) -> io::Result<()> {
    if !disk.durable {
        return Ok(());
    }
    let inside: BTreeSet<&Path> = manifest
        .policies
        .values()
        .flat_map(|d| d.files.iter())
        .flat_map(|file| file.ancestors().skip(1))
        .filter(|dir| !dir.as_os_str().is_empty())
        .collect();
    for dir in inside.iter().rev() {
        disk.sync(rustix::fs::openat(version_dir, *dir, dir_flags(), Mode::empty())?)?;
    }
    disk.sync(version_dir)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    const OPEN: DirAccess = DirAccess { group: None, mode: 0o755 };

    fn update(policy: &str, version: u64, files: &[(&str, &str)]) -> PolicyUpdate {
        PolicyUpdate {
            policy: policy.into(),
            version: VersionId::from(version),
            crc32c: version as u32,
            spec: 7,
            previous: None,
            read: "alias current".into(),
            files: files
                .iter()
                .map(|(path, text)| RenderedFile {
                    path: path.into(),
                    contents: SecretBytes::copy_from(text.as_bytes()),
                    mode: 0o440,
                    owner: None,
                    group: None,
                })
                .collect(),
        }
    }

    fn version_dirs(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("..2")).count()
    }

    #[test]
    fn updates_swap_whole_bundles_and_carry_other_members() {
        let root = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut writer = BundleWriter::new(root.path().to_path_buf(), None, crate::clock::system());
        writer.prepare_root(false).unwrap();
        let members = BTreeSet::from(["db", "signing"]);
        let api = root.path().join("api");

        writer
            .write(
                "api",
                &members,
                OPEN,
                vec![update("db", 1, &[("db.env", "A=1\n")]), update("signing", 1, &[("tls/key.pem", "k1")])],
            )
            .unwrap();
        assert_eq!(fs::read_to_string(api.join("db.env")).unwrap(), "A=1\n");
        assert_eq!(fs::read_to_string(api.join("tls/key.pem")).unwrap(), "k1");
        assert!(fs::symlink_metadata(api.join("db.env")).unwrap().file_type().is_symlink());
        let mode = fs::metadata(api.join("..data/db.env")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o440);

        writer.write("api", &members, OPEN, vec![update("db", 2, &[("db.env", "A=2\n")])]).unwrap();
        assert_eq!(fs::read_to_string(api.join("db.env")).unwrap(), "A=2\n");
        assert_eq!(fs::read_to_string(api.join("tls/key.pem")).unwrap(), "k1", "carried over");
        let ids: Vec<VersionId> = (0..5).map(VersionId::from).collect();
        let want = |n: usize, spec| Fingerprint { version: &ids[n], crc32c: n as u32, spec, previous: None };
        assert!(writer.holds("api", "signing", &want(1, 7)));
        assert!(writer.holds("api", "db", &want(2, 7)));
        assert!(!writer.holds("api", "db", &want(2, 8)), "spec changed");
        assert!(!writer.holds("api", "db", &Fingerprint { previous: Some(&ids[1]), ..want(2, 7) }), "previous changed");
        assert_eq!(version_dirs(&api), 2, "the live version and the one before it");

        writer.write("api", &members, OPEN, vec![update("db", 3, &[("db.env", "A=3\n")])]).unwrap();
        assert_eq!(version_dirs(&api), 2);

        // A fresh writer (a restarted agent) reads the same state back from disk.
        let mut again = BundleWriter::new(root.path().to_path_buf(), None, crate::clock::system());
        assert!(again.holds("api", "db", &want(3, 7)));

        // Dropping a member removes its files and its visible name.
        writer.write("api", &BTreeSet::from(["db"]), OPEN, vec![update("db", 4, &[("db.env", "A=4\n")])]).unwrap();
        assert!(!api.join("tls").exists() && api.join("tls").symlink_metadata().is_err());
        assert_eq!(writer.remove_stale(&BTreeSet::new()), vec!["api".to_string()]);
        assert!(!api.exists());
    }

    #[test]
    fn a_failed_write_leaves_the_live_bundle_and_no_garbage() {
        let root = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut writer = BundleWriter::new(root.path().to_path_buf(), None, crate::clock::system());
        let members = BTreeSet::from(["db"]);
        writer.write("api", &members, OPEN, vec![update("db", 1, &[("db.env", "A=1\n")])]).unwrap();
        // Two files at one path cannot both be created: the write fails after staging began.
        let clash = update("db", 2, &[("new-name", "x"), ("new-name", "y")]);
        assert!(writer.write("api", &members, OPEN, vec![clash]).is_err());
        let api = root.path().join("api");
        assert_eq!(fs::read_to_string(api.join("db.env")).unwrap(), "A=1\n");
        assert!(api.join("new-name").symlink_metadata().is_err(), "no dangling new link");
        assert_eq!(version_dirs(&api), 1);
    }

    #[test]
    fn a_restarted_writer_clears_what_a_crash_left_and_nothing_foreign() {
        let root = tempfile::tempdir_in("/dev/shm").unwrap();
        let members = BTreeSet::from(["db"]);
        let api = root.path().join("api");
        let mut writer = BundleWriter::new(root.path().to_path_buf(), None, crate::clock::system());
        writer.write("api", &members, OPEN, vec![update("db", 1, &[("db.env", "A=1\n")])]).unwrap();
        // What an update cut short leaves: a half-written version, a temporary link, a link
        // to a name no version has; and a file someone else put there.
        fs::create_dir(api.join("..2020_01_01_00_00_00.000000001")).unwrap();
        symlink("..2020_01_01_00_00_00.000000001", api.join(DATA_TMP)).unwrap();
        symlink("..data/gone", api.join("gone")).unwrap();
        fs::File::create(api.join("notes.txt")).unwrap();

        let mut restarted = BundleWriter::new(root.path().to_path_buf(), None, crate::clock::system());
        restarted.write("api", &members, OPEN, vec![update("db", 2, &[("db.env", "A=2\n")])]).unwrap();
        let mut names: Vec<String> =
            fs::read_dir(&api).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.retain(|n| !n.starts_with("..2"));
        names.sort();
        assert_eq!(names, ["..data", "db.env", "notes.txt"]);
        assert_eq!(version_dirs(&api), 2, "the live version and the one before it");
        assert_eq!(fs::read_to_string(api.join("db.env")).unwrap(), "A=2\n");
    }

    #[test]
    fn foreign_files_are_not_replaced() {
        let root = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut writer = BundleWriter::new(root.path().to_path_buf(), None, crate::clock::system());
        fs::create_dir_all(root.path().join("api")).unwrap();
        fs::File::create(root.path().join("api/db.env")).unwrap();
        let err = writer
            .write("api", &BTreeSet::from(["db"]), OPEN, vec![update("db", 1, &[("db.env", "A=1\n")])])
            .unwrap_err();
        assert!(matches!(err, DeliverError::Foreign { .. }), "{err}");
    }

    #[test]
    fn a_runtime_directory_others_may_write_or_a_link_is_refused() {
        let parent = tempfile::tempdir_in("/dev/shm").unwrap();
        let open = parent.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let mut writer = BundleWriter::new(open.clone(), None, crate::clock::system());
        let err = writer.prepare_root(false).unwrap_err().to_string();
        assert!(err.contains("writable by others (mode 0777)"), "{err}");
        // A directory above that others may write (not sticky) is refused too.
        let mut below = BundleWriter::new(open.join("run"), None, crate::clock::system());
        let err = below.prepare_root(false).unwrap_err().to_string();
        assert!(err.contains("above it is writable by others"), "{err}");
        let link = parent.path().join("link");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        symlink(&open, &link).unwrap();
        let mut linked = BundleWriter::new(link, None, crate::clock::system());
        assert!(linked.prepare_root(false).is_err(), "a link is not followed");
        let mut own = BundleWriter::new(open, None, crate::clock::system());
        own.prepare_root(false).unwrap();
    }

    #[test]
    fn a_bundle_whose_links_were_changed_is_not_current() {
        let root = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut writer = BundleWriter::new(root.path().to_path_buf(), None, crate::clock::system());
        let members = BTreeSet::from(["db"]);
        writer.write("api", &members, OPEN, vec![update("db", 1, &[("db.env", "A=1\n")])]).unwrap();
        let id = VersionId::from(1);
        let want = Fingerprint { version: &id, crc32c: 1, spec: 7, previous: None };
        assert!(writer.holds("api", "db", &want));
        let api = root.path().join("api");
        fs::remove_file(api.join("db.env")).unwrap();
        symlink("/etc/hostname", api.join("db.env")).unwrap();
        assert!(!writer.holds("api", "db", &want), "a visible link led elsewhere");
        writer.write("api", &members, OPEN, vec![update("db", 1, &[("db.env", "A=1\n")])]).unwrap();
        assert!(writer.holds("api", "db", &want));
        // `..data` swapped to another version directory.
        let other = "..2020_01_01_00_00_00.000000001";
        fs::create_dir(api.join(other)).unwrap();
        symlink(other, api.join("..data_x")).unwrap();
        fs::rename(api.join("..data_x"), api.join(DATA)).unwrap();
        assert!(!writer.holds("api", "db", &want), "..data led elsewhere");
    }

    #[test]
    fn persistent_filesystems_are_refused_unless_allowed() {
        let root = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let mut writer = BundleWriter::new(root.path().join("run"), None, crate::clock::system());
        let err = writer.prepare_root(false).unwrap_err().to_string();
        assert!(err.contains("not tmpfs or ramfs") && err.contains("allow_persistent"), "{err}");
        writer.prepare_root(true).unwrap();
    }
}
