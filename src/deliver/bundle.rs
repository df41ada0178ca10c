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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::DeliverError;
use crate::clock::{Clock, SharedClock};
use crate::config::DirAccess;
use crate::secret::{SecretBytes, VersionId};
use crate::sys;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
const MANIFEST: &str = "..keyturn.json";
const DIR_MODE: u32 = 0o755;

/// What one bundle holds, per member policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub policies: BTreeMap<String, Delivered>,
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

/// Writes bundles under one runtime directory, remembering what each holds.
#[derive(Debug)]
pub struct BundleWriter {
    root: PathBuf,
    /// Test seam: stop forever at this step (`KEYTURN_TEST_PAUSE_AT=bundle:STEP`) so a test
    /// can SIGKILL the agent there.
    pause_at: Option<String>,
    manifests: HashMap<String, Manifest>,
    /// Bundles known to hold nothing but `..data`, the live version, the version before it
    /// (the value here) and the links the manifest names: created by this process, or
    /// scanned clean after an update. Their next cleanup removes what that update made
    /// obsolete instead of reading the whole directory again.
    tidy: HashMap<String, Option<PathBuf>>,
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
}

impl Disk {
    fn sync_dir(self, dir: &Path) -> io::Result<()> {
        if self.durable { sys::sync_dir(dir) } else { Ok(()) }
    }

    fn sync_file(self, file: &fs::File) -> io::Result<()> {
        if self.durable { file.sync_all() } else { Ok(()) }
    }

    /// Whether creating something with `mode` may leave bits out.
    fn masks(self, mode: u32) -> bool {
        mode & self.umask != 0
    }
}

impl BundleWriter {
    pub fn new(root: PathBuf, pause_at: Option<String>, clock: SharedClock) -> Self {
        // Unknown umask: chmod everything.
        let disk = Disk { durable: true, umask: sys::umask().unwrap_or(0o777) };
        BundleWriter { root, pause_at, manifests: HashMap::new(), tidy: HashMap::new(), disk, clock }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the runtime directory if needed and refuses it unless it is memory-backed.
    pub fn prepare_root(&mut self, allow_persistent: bool) -> Result<(), DeliverError> {
        sys::create_dir(&self.root, DIR_MODE).map_err(|source| DeliverError::Io {
            bundle: String::new(),
            action: "create",
            path: self.root.clone(),
            source,
        })?;
        let filesystem = sys::filesystem(&self.root).map_err(|source| DeliverError::Io {
            bundle: String::new(),
            action: "statfs",
            path: self.root.clone(),
            source,
        })?;
        self.disk.durable = !filesystem.is_volatile();
        if !filesystem.is_volatile() && !allow_persistent {
            return Err(DeliverError::NotVolatile { path: self.root.clone(), filesystem: filesystem.name() });
        }
        Ok(())
    }

    /// What `bundle` holds now, read from disk the first time it is asked for.
    pub fn manifest(&mut self, bundle: &str) -> &Manifest {
        let dir = self.root.join(bundle);
        self.manifests.entry(bundle.to_string()).or_insert_with(|| read_manifest(&dir))
    }

    /// Whether `policy` is delivered in `bundle` as `want` describes, with its files present.
    pub fn holds(&mut self, bundle: &str, policy: &str, want: &Fingerprint<'_>) -> bool {
        let dir = self.root.join(bundle).join(DATA);
        match self.manifest(bundle).policies.get(policy) {
            Some(d) => {
                &d.version == want.version
                    && d.crc32c == want.crc32c
                    && d.spec == want.spec
                    && d.previous.as_ref() == want.previous
                    && d.files.iter().all(|f| dir.join(f).symlink_metadata().is_ok())
            }
            None => false,
        }
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
        let dir = self.root.join(bundle);
        let io = |action: &'static str, path: &Path| {
            let bundle = bundle.to_string();
            let path = path.to_path_buf();
            move |source: io::Error| DeliverError::Io { bundle, action, path, source }
        };
        let disk = self.disk;
        let created = match fs::DirBuilder::new().mode(access.mode).create(&dir) {
            Ok(()) => {
                self.tidy.insert(bundle.to_string(), None);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io("create", &dir)(e)),
        };
        // An existing directory may have the access an older configuration gave it.
        set_access(disk, &dir, access, created).map_err(io("set the owner and mode of", &dir))?;
        let old = self.manifest(bundle).clone();
        // A directory made just now holds nothing to read or clear.
        let live = if created { None } else { fs::read_link(dir.join(DATA)).ok() };
        if !created {
            remove_if_exists(&dir.join(DATA_TMP)).map_err(io("remove", &dir.join(DATA_TMP)))?;
        }

        let (name, version_dir) = create_version_dir(disk, self.clock.as_ref(), &dir, access)
            .map_err(io("create a version directory in", &dir))?;
        self.pause("created");
        let mut linked = Vec::new();
        let staged =
            self.stage(bundle, &dir, &version_dir, access, live.as_deref(), &old, members, updates, &mut linked);
        let manifest = match staged {
            Ok(manifest) => manifest,
            Err(e) => {
                // Nothing live changed: drop what was staged. Links created for new names
                // point through `..data` at names the live version does not have, so they
                // dangle exactly as the absent names did; remove them anyway.
                let _ = fs::remove_dir_all(&version_dir);
                for link in linked {
                    let _ = fs::remove_file(link);
                }
                // Whatever could not be removed is found by the next update's full scan.
                self.tidy.remove(bundle);
                return Err(e);
            }
        };

        // The commit point.
        let tmp = dir.join(DATA_TMP);
        symlink(&name, &tmp).map_err(io("link", &tmp))?;
        fs::rename(&tmp, dir.join(DATA)).map_err(io("rename", &tmp))?;
        disk.sync_dir(&dir).map_err(io("sync", &dir))?;
        self.manifests.insert(bundle.to_string(), manifest.clone());
        self.pause("swapped");

        // Cleanup. Failures here leave garbage, never a wrong bundle; the next update retries.
        let visible = top_level_names(&manifest);
        let removed = if let Some(before_live) = self.tidy.get(bundle) {
            // Only what this update made obsolete: the version before the one it swapped
            // out, and links to names the new version no longer has.
            let stale_version =
                before_live.as_deref().filter(|v| Some(*v) != live.as_deref() && *v != Path::new(&name));
            let stale_names = top_level_names(&old).into_iter().filter(|n| !visible.contains(n));
            let garbage: Vec<PathBuf> =
                stale_version.into_iter().map(|v| dir.join(v)).chain(stale_names.map(|n| dir.join(n))).collect();
            garbage.iter().filter(|path| remove_ours(path)).count()
        } else {
            // Anything else keyturn may have left: versions and temporary links of updates
            // cut short by a crash, links to names no version has any more.
            let mut removed = 0;
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let entry_name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                let ours = if entry_name.starts_with("..") {
                    entry_name != DATA && entry_name != name && live.as_deref() != Some(Path::new(&entry_name))
                } else {
                    !visible.contains(&entry_name)
                };
                if ours && remove_ours(&path) {
                    removed += 1;
                }
            }
            removed
        };
        if removed > 0 {
            let _ = disk.sync_dir(&dir);
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
        dir: &Path,
        version_dir: &Path,
        access: DirAccess,
        live: Option<&Path>,
        old: &Manifest,
        members: &BTreeSet<&str>,
        updates: Vec<PolicyUpdate>,
        linked: &mut Vec<PathBuf>,
    ) -> Result<Manifest, DeliverError> {
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
                let path = version_dir.join(&file.path);
                write_file(self.disk, version_dir, access, &path, file).map_err(io("write", &path))?;
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
                },
            );
        }
        self.pause("files-written");

        // Unchanged members keep their files: hard links into the new version directory.
        if let Some(live) = live {
            let live_dir = dir.join(live);
            for (policy, delivered) in &old.policies {
                if updated.contains(policy) || !members.contains(policy.as_str()) {
                    continue;
                }
                let carried = delivered.files.iter().try_for_each(|file| {
                    let target = version_dir.join(file);
                    create_parents(self.disk, version_dir, access, &target)?;
                    fs::hard_link(live_dir.join(file), &target).map_err(|e| {
                        needs_capability(e, "CAP_FOWNER", "carry another user's file into the new version")
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
                    Err(e) => return Err(io("link", &live_dir)(e)),
                }
            }
        }
        self.pause("carried");

        let manifest_path = version_dir.join(MANIFEST);
        let text = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        let own = RenderedFile {
            path: MANIFEST.into(),
            contents: SecretBytes::new(text),
            mode: 0o400,
            owner: None,
            group: None,
        };
        write_file(self.disk, version_dir, access, &manifest_path, &own).map_err(io("write", &manifest_path))?;
        sync_version(self.disk, version_dir, &manifest).map_err(io("sync", version_dir))?;
        self.pause("manifest-written");

        // New visible names, created before the swap: they dangle until `..data` points at a
        // version that has them, which readers see as the same "no such file" as before.
        let mut relinked = false;
        for name in top_level_names(&manifest) {
            let link = dir.join(&name);
            let target = Path::new(DATA).join(&name);
            match fs::read_link(&link) {
                Ok(existing) if existing == target => continue,
                Ok(_) => {
                    let tmp = dir.join(format!("..link_tmp_{name}"));
                    remove_if_exists(&tmp).map_err(io("remove", &tmp))?;
                    symlink(&target, &tmp).map_err(io("link", &tmp))?;
                    fs::rename(&tmp, &link).map_err(io("rename", &tmp))?;
                    relinked = true;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    symlink(&target, &link).map_err(io("link", &link))?;
                    linked.push(link);
                    relinked = true;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    return Err(DeliverError::Foreign { bundle: bundle.to_string(), path: link });
                }
                Err(e) => return Err(io("read", &link)(e)),
            }
        }
        if relinked {
            // Durable before the swap, so that no crash leaves a new version live without the
            // names that lead to it.
            self.disk.sync_dir(dir).map_err(io("sync", dir))?;
        }
        self.pause("linked");
        Ok(manifest)
    }

    /// Removes bundles under the root that keyturn wrote but no policy delivers any more.
    /// Directories without a `..data` link are not keyturn's and are left alone.
    pub fn remove_stale(&mut self, keep: &BTreeSet<&str>) -> Vec<String> {
        let mut removed = Vec::new();
        for entry in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if keep.contains(name.as_str()) || !path.join(DATA).is_symlink() {
                continue;
            }
            if fs::remove_dir_all(&path).is_ok() {
                self.manifests.remove(&name);
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

fn read_manifest(dir: &Path) -> Manifest {
    fs::read(dir.join(DATA).join(MANIFEST))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
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

fn is_our_link(path: &Path) -> bool {
    fs::read_link(path).is_ok_and(|target| target.starts_with(DATA))
}

/// Removes a hidden version directory or temporary link, or a visible link into `..data`;
/// anything else under a visible name is not keyturn's and stays. True when it was removed.
fn remove_ours(path: &Path) -> bool {
    let hidden = path.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b".."));
    if hidden {
        fs::remove_dir_all(path).or_else(|_| fs::remove_file(path)).is_ok()
    } else {
        is_our_link(path) && fs::remove_file(path).is_ok()
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `..YYYY_MM_DD_hh_mm_ss.nnnnnnnnn`, made unique with a counter if two updates share a
/// nanosecond.
fn create_version_dir(
    disk: Disk,
    clock: &dyn Clock,
    bundle_dir: &Path,
    access: DirAccess,
) -> io::Result<(String, PathBuf)> {
    let stamp = humantime::format_rfc3339_nanos(clock.now()).to_string();
    let stamp = stamp.trim_end_matches('Z').replace(['-', 'T', ':'], "_");
    for attempt in 0..100 {
        let name = if attempt == 0 { format!("..{stamp}") } else { format!("..{stamp}-{attempt}") };
        let path = bundle_dir.join(&name);
        match fs::DirBuilder::new().mode(access.mode).create(&path) {
            Ok(()) => {
                set_access(disk, &path, access, true)?;
                return Ok((name, path));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free version directory name"))
}

fn create_parents(disk: Disk, version_dir: &Path, access: DirAccess, path: &Path) -> io::Result<()> {
    let parent = path.parent().unwrap_or(version_dir);
    if parent != version_dir && !parent.is_dir() {
        create_parents(disk, version_dir, access, parent)?;
        fs::DirBuilder::new().mode(access.mode).create(parent)?;
        set_access(disk, parent, access, true)?;
    }
    Ok(())
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
fn set_access(disk: Disk, dir: &Path, access: DirAccess, created: bool) -> io::Result<()> {
    if created && access.group.is_none() && !disk.masks(access.mode) {
        return Ok(());
    }
    let handle = fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW).bits() as i32)
        .open(dir)?;
    sys::chown(&handle, None, access.group)
        .map_err(|e| needs_capability(e, "CAP_CHOWN", "give a directory to a group the agent is not in"))?;
    sys::chmod(&handle, access.mode)
}

/// Creates one file with its final mode and owner, then writes and syncs it.
fn write_file(disk: Disk, version_dir: &Path, access: DirAccess, path: &Path, file: &RenderedFile) -> io::Result<()> {
    create_parents(disk, version_dir, access, path)?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(file.mode)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    if disk.masks(file.mode) {
        sys::chmod(&out, file.mode)?;
    }
    sys::chown(&out, file.owner, file.group).map_err(|e| {
        needs_capability(e, "CAP_CHOWN", "give a file to another user or to a group the agent is not in")
    })?;
    out.write_all(file.contents.expose())?;
    disk.sync_file(&out)
}

/// Syncs a version directory and the directories inside it (the parents of the files its
/// manifest lists), so their entries are durable before the swap makes them live.
fn sync_version(disk: Disk, version_dir: &Path, manifest: &Manifest) -> io::Result<()> {
    let inside: BTreeSet<&Path> = manifest
        .policies
        .values()
        .flat_map(|d| d.files.iter())
        .flat_map(|file| file.ancestors().skip(1))
        .filter(|dir| !dir.as_os_str().is_empty())
        .collect();
    for dir in inside.iter().rev() {
        disk.sync_dir(&version_dir.join(dir))?;
    }
    disk.sync_dir(version_dir)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const OPEN: DirAccess = DirAccess { group: None, mode: 0o755 };

    fn update(policy: &str, version: u64, files: &[(&str, &str)]) -> PolicyUpdate {
        PolicyUpdate {
            policy: policy.into(),
            version: VersionId::from(version),
            crc32c: version as u32,
            spec: 7,
            previous: None,
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
    fn persistent_filesystems_are_refused_unless_allowed() {
        let root = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let mut writer = BundleWriter::new(root.path().join("run"), None, crate::clock::system());
        let err = writer.prepare_root(false).unwrap_err().to_string();
        assert!(err.contains("not tmpfs or ramfs") && err.contains("allow_persistent"), "{err}");
        writer.prepare_root(true).unwrap();
    }
}
